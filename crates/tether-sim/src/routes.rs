//! The simulator's HTTP surface: the data API under `/v1` (what adapters
//! call, with auth, throttling and injected faults) and the control API under
//! `/_sim` (what tests and demos use to inject faults, read counters and
//! change objects behind the controller's back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::faults::{Faults, Hostile, Stats, TokenBucket};
use super::store::{Created, DEFAULT_PAGE, Store};

/// Header that carries an idempotency key on create.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header that carries an API key.
pub const API_KEY: &str = "x-api-key";

/// Who may call the data API. With no token and no key configured, anyone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Credentials {
    pub bearer_tokens: Vec<String>,
    pub api_keys: Vec<String>,
    /// OAuth2 clients (`POST /oauth/token`, client-credentials grant, HTTP
    /// Basic client authentication); their tokens are accepted as bearer
    /// tokens until they expire.
    pub oauth_clients: Vec<OAuthClient>,
    /// Lifetime of issued tokens (default 3600 s).
    pub oauth_token_ttl_seconds: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
}

/// Header of the W3C Trace Context a caller's span travels in.
pub const TRACEPARENT: &str = "traceparent";
/// How many `traceparent` headers a simulator remembers (the latest).
const TRACEPARENTS_KEPT: usize = 10_000;

/// A data request that came with a `traceparent` header: what it asked
/// (`create offers`, as in [`Stats::requests`]) and the header's value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Traced {
    pub request: String,
    pub traceparent: String,
}

/// Closes the connection a request came on, without a response.
#[derive(Clone)]
pub struct ConnectionKill(pub Arc<Notify>);

#[derive(Default)]
struct Inner {
    store: Store,
    faults: Faults,
    bucket: Option<TokenBucket>,
    stats: Stats,
    admitted: Vec<Instant>,
    retry_not_before: Option<Instant>,
    issued_tokens: std::collections::HashMap<String, Instant>,
    in_flight: u64,
    credentials: Credentials,
    traceparents: std::collections::VecDeque<Traced>,
}

/// Shared state of one simulator.
#[derive(Default)]
pub struct SimState {
    inner: std::sync::Mutex<Inner>,
}

impl SimState {
    pub fn new(credentials: Credentials) -> Self {
        let state = Self::default();
        state.lock().credentials = credentials;
        state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the store half-written
        // in a way that matters to a test double; keep serving.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        inner.bucket = faults
            .rate_limit
            .as_ref()
            .map(|r| TokenBucket::new(r.requests_per_second, r.burst, Instant::now()));
        inner.faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_credentials(&self, credentials: Credentials) {
        self.lock().credentials = credentials;
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        let mut stats = inner.stats.clone();
        stats.peak_admitted_per_second = super::faults::peak_in_window(&inner.admitted, Duration::from_secs(1));
        stats
    }

    pub fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.stats = Stats::default();
        inner.admitted.clear();
        inner.retry_not_before = None;
    }

    /// The data requests that carried a `traceparent`, oldest first (the
    /// latest 10,000): how a target's logs would join the caller's trace.
    pub fn traceparents(&self) -> Vec<Traced> {
        self.lock().traceparents.iter().cloned().collect()
    }

    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock().store.all(collection)
    }

    /// Changes an object without going through the data API: drift made by
    /// someone else. Returns the object after the change.
    pub fn drift(&self, collection: &str, id: &str, patch: &Value) -> Option<Value> {
        self.lock().store.merge(collection, id, patch)
    }

    /// Forgets every object, fault, counter and credential.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/{collection}", post(create).get(list))
        .route(
            "/v1/{collection}/{id}",
            get(read).put(replace).patch(patch).delete(delete),
        )
        .route("/_sim/faults", get(get_faults).put(put_faults).delete(clear_faults))
        .route("/_sim/stats", get(get_stats).delete(delete_stats))
        .route("/_sim/credentials", axum::routing::put(put_credentials))
        .route("/_sim/objects/{collection}", get(all_objects))
        .route("/_sim/objects/{collection}/{id}", get(one_object).patch(drift_object))
        .route("/_sim/reset", post(reset))
        .route("/oauth/token", post(token))
        // Like httpbin's /anything: answers with the request's headers, the
        // way some real APIs echo what they were sent.
        .route("/echo", axum::routing::any(echo))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

/// Decrements the in-flight count however the request ends (including a
/// dropped connection).
struct InFlight(Arc<SimState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }
}

/// Admission of a data request: counts it, checks credentials, throttles,
/// waits the injected latency and injects errors. `Ok` carries the guard
/// that keeps the request counted as in flight.
async fn admit(
    state: &Arc<SimState>,
    headers: &HeaderMap,
    operation: &str,
    collection: &str,
) -> Result<InFlight, Response> {
    let latency = {
        let mut inner = state.lock();
        let request = format!("{operation} {collection}");
        if let Some(traceparent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
            if inner.traceparents.len() >= TRACEPARENTS_KEPT {
                inner.traceparents.pop_front();
            }
            inner.traceparents.push_back(Traced {
                request: request.clone(),
                traceparent: traceparent.to_owned(),
            });
        }
        *inner.stats.requests.entry(request).or_default() += 1;
        let now = Instant::now();
        if inner.retry_not_before.is_some_and(|deadline| now < deadline) {
            inner.stats.retry_after_violations += 1;
        }
        if !authorized(&inner, headers) {
            inner.stats.unauthorized += 1;
            // Like some real APIs, echo what was presented: a client must
            // not copy this into places where secrets do not belong.
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nothing");
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("invalid credentials: {presented}"),
            ));
        }
        if let Some(hostile) = inner.faults.hostile.clone() {
            inner.stats.hostile_answers += 1;
            return Err(hostile_answer(&hostile));
        }
        if let Some(Err(wait)) = inner.bucket.as_mut().map(|bucket| bucket.take(now)) {
            inner.stats.throttled += 1;
            let announced = inner.faults.rate_limit.as_ref().and_then(|r| r.retry_after_seconds);
            let seconds = announced.unwrap_or_else(|| wait.as_secs_f64().ceil().max(1.0) as u64);
            inner.retry_not_before = Some(now + Duration::from_secs(seconds));
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return Err(response);
        }
        inner.admitted.push(now);
        inner.in_flight += 1;
        inner.stats.peak_in_flight = inner.stats.peak_in_flight.max(inner.in_flight);
        inner.faults.latency_ms
    };
    let guard = InFlight(state.clone());
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut inner = state.lock();
    let inject = if inner.faults.fail_next > 0 {
        inner.faults.fail_next -= 1;
        true
    } else {
        inner.faults.error_rate > 0.0 && rand::random::<f64>() < inner.faults.error_rate
    };
    if inject {
        inner.stats.injected_errors += 1;
        let status = inner
            .faults
            .error_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Err(error(status, "injected", "injected failure"));
    }
    Ok(guard)
}

/// The answer of a hostile target. Bodies are streamed, so a 200 MB
/// answer costs the simulator one chunk of memory.
fn hostile_answer(hostile: &Hostile) -> Response {
    use axum::body::{Body, Bytes};
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::OK);
    match hostile {
        Hostile::HugeBody { bytes } => {
            // `["aaa…","aaa…",…,"x"]`: valid JSON, so a client that reads it
            // whole also parses it whole.
            let item = Bytes::from(format!("\"{}\",", "a".repeat(1021)));
            let items = bytes / item.len() as u64;
            let chunks = futures::stream::iter(
                std::iter::once(Bytes::from_static(b"["))
                    .chain(std::iter::repeat_n(item, usize::try_from(items).unwrap_or(usize::MAX)))
                    .chain(std::iter::once(Bytes::from_static(b"\"x\"]")))
                    .map(Ok::<_, std::convert::Infallible>),
            );
            json_stream(StatusCode::OK, Body::from_stream(chunks))
        }
        Hostile::EndlessBody {
            interval_ms,
            chunk_bytes,
        } => {
            let chunk = Bytes::from(vec![b' '; *chunk_bytes as usize]);
            let interval = Duration::from_millis(*interval_ms);
            let chunks = futures::stream::unfold(true, move |first| {
                let chunk = chunk.clone();
                async move {
                    if !first && !interval.is_zero() {
                        tokio::time::sleep(interval).await;
                    }
                    let next = if first { Bytes::from_static(b"[") } else { chunk };
                    Some((Ok::<_, std::convert::Infallible>(next), false))
                }
            });
            json_stream(StatusCode::OK, Body::from_stream(chunks))
        }
        Hostile::Redirect { status: s, location } => {
            let mut response = (status(*s), "").into_response();
            if let Ok(value) = HeaderValue::from_str(location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Hostile::LongMessage {
            status: s,
            text,
            repeat,
        } => (status(*s), Json(json!({ "message": text.repeat(*repeat as usize) }))).into_response(),
        Hostile::InvalidUtf8 { status: s, bytes } => {
            let body: Vec<u8> = [0xffu8, 0xfe, 0xc3, 0x28, 0xe2, 0x82]
                .iter()
                .copied()
                .cycle()
                .take(*bytes as usize)
                .collect();
            (status(*s), body).into_response()
        }
        Hostile::OddHeaders { status: s, headers } => {
            let mut response = (status(*s), Json(json!({}))).into_response();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
    }
}

fn json_stream(status: StatusCode, body: axum::body::Body) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    let credentials = &inner.credentials;
    if credentials.bearer_tokens.is_empty() && credentials.api_keys.is_empty() && credentials.oauth_clients.is_empty() {
        return true;
    }
    let now = Instant::now();
    let issued = |t: &str| inner.issued_tokens.get(t).is_some_and(|expires| now < *expires);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let key = headers.get(API_KEY).and_then(|v| v.to_str().ok());
    bearer.is_some_and(|t| credentials.bearer_tokens.iter().any(|c| c == t) || issued(t))
        || key.is_some_and(|k| credentials.api_keys.iter().any(|c| c == k))
}

async fn create(
    State(state): State<Arc<SimState>>,
    Path(collection): Path<String>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let _guard = match admit(&state, &headers, "create", &collection).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let Some(Json(body @ Value::Object(_))) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        );
    };
    let key = headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok());
    if let Some(refused) = refuse_missing_parent(&state, &collection, &body) {
        return refused;
    }
    let (created, drop_answer, answer_delay) = {
        let mut inner = state.lock();
        let created = inner.store.create(&collection, body, key);
        let drop_answer = inner.faults.drop_create_responses > 0 && matches!(created, Created::New(_));
        if drop_answer {
            inner.faults.drop_create_responses -= 1;
            inner.stats.dropped_responses += 1;
        }
        (created, drop_answer, inner.faults.create_answer_delay_ms)
    };
    if answer_delay > 0 {
        tokio::time::sleep(Duration::from_millis(answer_delay)).await;
    }
    if drop_answer {
        // The object is committed; the caller never hears about it.
        kill.0.notify_one();
        std::future::pending::<()>().await;
    }
    match created {
        Created::New(object) => (StatusCode::CREATED, Json(object)).into_response(),
        Created::Replayed(object) => {
            let mut response = (StatusCode::OK, Json(object)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Created::KeyReused => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different body",
        ),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    #[serde(flatten)]
    filters: std::collections::BTreeMap<String, String>,
}

async fn list(
    State(state): State<Arc<SimState>>,
    Path(collection): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let _guard = match admit(&state, &headers, "list", &collection).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let filters: Vec<_> = query.filters.into_iter().collect();
    let page = state.lock().store.list(
        &collection,
        &filters,
        query.cursor.as_deref(),
        query.limit.unwrap_or(DEFAULT_PAGE),
    );
    Json(json!({ "items": page.items, "nextCursor": page.next_cursor })).into_response()
}

async fn read(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let _guard = match admit(&state, &headers, "read", &collection).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let found = state.lock().store.read(&collection, &id);
    found_or_404(found, &collection, &id)
}

async fn replace(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let _guard = match admit(&state, &headers, "update", &collection).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let Some(Json(body @ Value::Object(_))) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        );
    };
    if let Some(refused) = refuse_missing_parent(&state, &collection, &body) {
        return refused;
    }
    let replaced = state.lock().store.replace(&collection, &id, body);
    found_or_404(replaced, &collection, &id)
}

async fn patch(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let _guard = match admit(&state, &headers, "patch", &collection).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let Some(Json(body @ Value::Object(_))) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON merge patch object",
        );
    };
    if let Some(refused) = refuse_missing_parent(&state, &collection, &body) {
        return refused;
    }
    let patched = state.lock().store.merge(&collection, &id, &body);
    found_or_404(patched, &collection, &id)
}

async fn delete(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let _guard = match admit(&state, &headers, "delete", &collection).await {
        Ok(guard) => guard,
        Err(response) => return response,
    };
    let children = state.lock().store.children(&collection, &id);
    if !children.is_empty() {
        state.lock().stats.refused += 1;
        return error(
            StatusCode::CONFLICT,
            "has_children",
            format!(
                "{collection}/{id} cannot be deleted: {} still point at it ({})",
                children.len(),
                children.join(", ")
            ),
        );
    }
    if state.lock().store.delete(&collection, &id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {collection} with id {id}"),
        )
    }
}

/// 422 when `body` points at a parent that does not exist (by
/// [`super::store::RELATIONS`]), counted as refused.
fn refuse_missing_parent(state: &SimState, collection: &str, body: &Value) -> Option<Response> {
    let mut inner = state.lock();
    let (field, parent, id) = inner.store.missing_parent(collection, body)?;
    inner.stats.refused += 1;
    Some(error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_parent",
        format!("{field}: no {parent} with id {id}"),
    ))
}

fn found_or_404(found: Option<Value>, collection: &str, id: &str) -> Response {
    match found {
        Some(object) => Json(object).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {collection} with id {id}"),
        ),
    }
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.faults())
}

async fn put_faults(State(state): State<Arc<SimState>>, Json(faults): Json<Faults>) -> StatusCode {
    state.set_faults(faults);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(state): State<Arc<SimState>>) -> StatusCode {
    state.set_faults(Faults::default());
    StatusCode::NO_CONTENT
}

async fn get_stats(State(state): State<Arc<SimState>>) -> Json<Stats> {
    Json(state.stats())
}

async fn delete_stats(State(state): State<Arc<SimState>>) -> StatusCode {
    state.reset_stats();
    StatusCode::NO_CONTENT
}

async fn put_credentials(State(state): State<Arc<SimState>>, Json(credentials): Json<Credentials>) -> StatusCode {
    state.set_credentials(credentials);
    StatusCode::NO_CONTENT
}

async fn all_objects(State(state): State<Arc<SimState>>, Path(collection): Path<String>) -> Json<Vec<Value>> {
    Json(state.objects(&collection))
}

/// One object as the target holds it (for tutorials and tests).
async fn one_object(State(state): State<Arc<SimState>>, Path((collection, id)): Path<(String, String)>) -> Response {
    let found = state.lock().store.get(&collection, &id);
    found_or_404(found, &collection, &id)
}

async fn drift_object(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
    Json(patch): Json<Value>,
) -> Response {
    found_or_404(state.drift(&collection, &id, &patch), &collection, &id)
}

async fn reset(State(state): State<Arc<SimState>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

/// OAuth2 token endpoint: client-credentials grant with HTTP Basic client
/// authentication (RFC 6749 4.4).
async fn token(State(state): State<Arc<SimState>>, headers: HeaderMap, body: String) -> Response {
    use base64::Engine;
    let mut inner = state.lock();
    inner.stats.token_requests += 1;
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let client = basic.as_deref().and_then(|b| b.split_once(':')).filter(|(id, secret)| {
        inner
            .credentials
            .oauth_clients
            .iter()
            .any(|c| c.client_id == *id && c.client_secret == *secret)
    });
    if client.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    if !body.split('&').any(|pair| pair == "grant_type=client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials",
        );
    }
    let ttl = inner.credentials.oauth_token_ttl_seconds.unwrap_or(3600);
    let token = format!("oauth-{}", uuid::Uuid::new_v4().simple());
    inner
        .issued_tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})).into_response()
}

async fn echo(headers: HeaderMap, body: Option<Json<Value>>) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), Value::String(text))
        })
        .collect();
    Json(json!({ "headers": headers, "body": body.map(|Json(b)| b) }))
}
