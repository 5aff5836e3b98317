//! The webhook endpoint of `tether run` (`--webhook-addr`): a signed POST
//! to `/webhooks/<namespace>/<workflow>` starts a run of that workflow; one
//! to `/resync/<namespace>/<target>[/<resource>]` resyncs ExternalResources
//! now ([`resync`], signed the same way under the TargetSystem's key).
//!
//! A request carries `X-Tether-Timestamp` (unix seconds), `X-Tether-Delivery`
//! (the sender's id of this delivery) and `X-Tether-Signature:
//! sha256=<hex>`, the HMAC-SHA256 of `"{timestamp}.{delivery}.{body}"` under
//! the key in the Secret the Workflow's webhook trigger names. A timestamp
//! outside the tolerance window (`--webhook-tolerance`, 5 min) is refused,
//! so a captured request is worth nothing after it; inside the window, a
//! delivery starts at most one run: its run's name derives from the
//! delivery id, and accepted deliveries are remembered until their window
//! closes, so a replay gets the run it started even after that run was
//! deleted. Refusals are counted and cost no API call: the Workflow comes
//! from the reflector and the key from [`keys::KeyCache`].
//!
//! Step callbacks: a `call` step with `callback` sends `$callback.url`
//! (`/callbacks/<ns>/<run>/<step>/<attempt>?token=<token>`, the token an
//! HMAC of run UID, step and attempt under the step's key) to the target,
//! and waits. The first POST with the right token is recorded in an
//! annotation of the run (conditional on its resourceVersion, so two cannot
//! both win) together with a MAC over run UID, step, attempt and the body's
//! digest under the same key; the run controller counts the annotation only
//! when that MAC verifies, so a tenant who may patch runs but does not hold
//! the key cannot stand in for the callback. Bodies are read up to a limit
//! (1 MiB for webhooks, 64 KiB for callbacks) and refused beyond it.

pub mod deliveries;

pub mod refusal;

pub mod resync;

use crate::api::common::event;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use crate::api::common::SecretKeyRef;
use crate::api::workflow_run::StepPhase;
use crate::api::{Workflow, WorkflowRun};
use crate::controller::Context;
use crate::controller::workflow::{TRIGGER_LABEL, create_run};
use crate::expr::Expr;
use crate::keys::{Freshness, Purpose};
use crate::metrics::OutcomeLabels;
use crate::signing::{mac_hex, verify_hex};
use crate::workflow::callback::{self, callback_record, verify_callback_record, verify_callback_token};
use deliveries::{Admit, Deliveries};
use refusal::Refusal;
use sha2::{Digest, Sha256};

/// Header with the signature of timestamp, delivery and body.
pub const SIGNATURE_HEADER: &str = "x-tether-signature";
/// Header with the sender's delivery id (required, signed).
pub const DELIVERY_HEADER: &str = "x-tether-delivery";
/// Header with the time of signing, in unix seconds (required, signed).
pub const TIMESTAMP_HEADER: &str = "x-tether-timestamp";
/// How far a webhook's timestamp may be from the controller's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Largest webhook body read.
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// Largest callback body read.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;
/// Longest delivery id.
pub const MAX_DELIVERY_ID: usize = 128;

/// The endpoints' state: the controllers' context (stores, client, key
/// cache), the deliveries accepted, and the tolerance of timestamps.
pub struct Webhooks {
    /// The context of the controllers now running (sharded, it changes
    /// with the held shards).
    pub current: Current,
    pub deliveries: Deliveries,
    /// How far a webhook's timestamp may be from now, either way.
    pub tolerance: Duration,
}

pub use crate::workflow::callback::trigger_path as path;

/// The controllers' context as it is now, read at each request.
pub type Current = Arc<std::sync::RwLock<Arc<Context>>>;

impl Webhooks {
    /// The context to serve this request with.
    pub fn ctx(&self) -> Arc<Context> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Whether a delivery id may be signed: 1 to 128 characters of
/// `[A-Za-z0-9_:-]` (no `.`, which separates the signed fields).
pub fn valid_delivery(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DELIVERY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
}

/// `sha256=<hex>` of `"{timestamp}.{delivery}.{body}"` under `key`: what a
/// sender puts in `X-Tether-Signature`.
pub fn sign(key: &[u8], timestamp: i64, delivery: &str, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let digest = mac_hex(key, &[timestamp.as_bytes(), b".", delivery.as_bytes(), b".", body]);
    format!("sha256={digest}")
}

/// Whether `signature` (the header's value) signs timestamp, delivery and
/// body under `key`, compared in constant time.
pub fn verify(key: &[u8], timestamp: i64, delivery: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let timestamp = timestamp.to_string();
    verify_hex(
        key,
        &[timestamp.as_bytes(), b".", delivery.as_bytes(), b".", body],
        hex_digest,
    )
}

/// Whether `timestamp` is within `tolerance` of `now` (unix seconds).
pub fn fresh(timestamp: i64, now: i64, tolerance: Duration) -> bool {
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    now.checked_sub(timestamp).is_some_and(|age| age.abs() <= tolerance)
}

pub fn router(current: Current, tolerance: Duration) -> Router {
    let hooks = Webhooks {
        current,
        deliveries: Deliveries::default(),
        tolerance,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/webhooks/{namespace}/{workflow}", post(trigger))
        .route("/callbacks/{namespace}/{run}/{step}/{attempt}", post(callback))
        .route("/resync/{namespace}/{target}", post(resync::all))
        .route("/resync/{namespace}/{target}/{resource}", post(resync::one))
        .with_state(Arc::new(hooks))
}

/// The body, read up to `limit` bytes: a larger one is refused without
/// reading the rest (a `Content-Length` above the limit, unread).
async fn bounded(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refusal::TooLarge(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Refusal::TooLarge(limit))
}

/// A key that `verifies`, from the cache; when the cached key does not,
/// the key is read again (it may have been rotated), at most every few
/// seconds. `refused` is the refusal when no key verifies.
async fn key_that_verifies(
    ctx: &Context,
    purpose: Purpose,
    namespace: &str,
    secret: &SecretKeyRef,
    verifies: impl Fn(&[u8]) -> bool,
    refused: Refusal,
) -> Result<Vec<u8>, Refusal> {
    let mut found = false;
    for want in [Freshness::Cached, Freshness::Refresh] {
        let key = ctx
            .keys
            .get(&ctx.client, &ctx.metrics, purpose, namespace, secret, want)
            .await;
        if let Some(key) = key {
            if verifies(&key) {
                return Ok(key);
            }
            found = true;
        }
    }
    if found {
        Err(refused)
    } else {
        Err(Refusal::NoKey {
            purpose,
            secret: secret.name.clone(),
            key: secret.key.clone(),
        })
    }
}

/// The answer to a refused request, counted under its label.
fn refuse(ctx: &Context, refusal: &Refusal) -> Response {
    count(ctx, refusal.label());
    (refusal.status(), axum::Json(json!({ "error": refusal.to_string() }))).into_response()
}

fn count(ctx: &Context, outcome: &'static str) {
    ctx.metrics
        .webhook_requests
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn callback(
    State(hooks): State<Arc<Webhooks>>,
    Path((namespace, run, step, attempt)): Path<(String, String, String, i32)>,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let attempt = Attempt {
        namespace,
        run,
        step,
        attempt,
    };
    let ctx = hooks.ctx();
    let ctx = ctx.as_ref();
    match record(ctx, &attempt, &query.token, &headers, body).await {
        Ok(()) => {
            count(ctx, "callback");
            (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": true }))).into_response()
        }
        Err(refusal) => {
            if matches!(refusal, Refusal::BadToken) {
                tracing::info!(run = %attempt.run, step = %attempt.step, "callback refused: bad token");
            }
            refuse(ctx, &refusal)
        }
    }
}

/// The attempt a callback URL names.
struct Attempt {
    namespace: String,
    run: String,
    step: String,
    attempt: i32,
}

/// Checks a callback and records it in the run's annotation.
async fn record(ctx: &Context, at: &Attempt, token: &str, headers: &HeaderMap, body: Body) -> Result<(), Refusal> {
    let Attempt {
        namespace,
        run: run_name,
        step,
        attempt,
    } = at;
    let attempt = *attempt;
    // Everything up to the token's check comes from memory: a flood of
    // wrong tokens costs no API call.
    let missing = || Refusal::NotFound(format!("no WorkflowRun {namespace}/{run_name}"));
    let cached = match ctx.runs.get(&ObjectRef::<WorkflowRun>::new(run_name).within(namespace)) {
        Some(run) => run,
        // Sharded, a replica caches only the runs of its shards: another
        // shard's run is read from the API server (one read per callback
        // this replica receives for it; the record below is a conditional
        // write, which that shard's replica sees on its watch).
        None if !ctx.shards.holds(namespace) => Api::<WorkflowRun>::namespaced(ctx.client.clone(), namespace)
            .get_opt(run_name)
            .await
            .map_err(Refusal::ReadRun)?
            .map(Arc::new)
            .ok_or_else(missing)?,
        None => return Err(missing()),
    };
    let secret = cached
        .status
        .as_ref()
        .and_then(|s| s.pinned.as_ref())
        .and_then(|p| serde_json::from_value::<crate::api::workflow::WorkflowSpec>(p.spec.clone()).ok())
        .and_then(|spec| {
            spec.steps
                .into_iter()
                .find(|s| &s.name == step)
                .and_then(|s| s.call)
                .and_then(|c| c.callback)
                .map(|c| c.secret_ref)
        })
        .ok_or_else(|| Refusal::NotFound(format!("step {step:?} of {run_name} takes no callback")))?;
    let uid = kube::ResourceExt::uid(cached.as_ref()).unwrap_or_default();
    let token_ok = |key: &[u8]| verify_callback_token(key, &uid, step, attempt, token);
    let key = key_that_verifies(ctx, Purpose::Callback, namespace, &secret, token_ok, Refusal::BadToken).await?;
    let payload = json_body(&bounded(headers, body, MAX_CALLBACK_BYTES).await?)?;
    // The token holds: read the run as it is now, for a conditional write.
    let runs: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), namespace);
    let run = runs
        .get_opt(run_name)
        .await
        .map_err(Refusal::ReadRun)?
        .filter(|run| kube::ResourceExt::uid(run).as_deref() == Some(uid.as_str()))
        .ok_or_else(|| Refusal::NotFound(format!("no WorkflowRun {namespace}/{run_name} with this callback")))?;
    let waiting = run.status.as_ref().is_some_and(|s| {
        s.steps
            .iter()
            .any(|s| &s.name == step && s.phase == StepPhase::Waiting && s.attempt == attempt)
    });
    let annotation = callback::annotation(step);
    // Only a genuine record uses the token: a forged annotation does not
    // block the real callback.
    let used = kube::ResourceExt::annotations(&run)
        .get(&annotation)
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .is_some_and(|record| verify_callback_record(&key, &uid, step, attempt, &record));
    if used || !waiting {
        return Err(Refusal::Used(
            "this callback was used already, or the step no longer waits for it",
        ));
    }
    let record = callback_record(&key, &uid, step, attempt, &payload).to_string();
    let patch = json!({
        "metadata": { "resourceVersion": run.metadata.resource_version, "annotations": { annotation: record } }
    });
    match runs
        .patch(
            run_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Refusal::Used("another callback got there first")),
        Err(e) => Err(Refusal::RecordCallback(e)),
    }
}

/// The body as JSON (an empty body is `null`).
fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| Refusal::BadPayload(format!("the body is not JSON: {e}")))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

async fn trigger(
    State(hooks): State<Arc<Webhooks>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = hooks.ctx();
    let ctx = ctx.as_ref();
    match start(&hooks, &namespace, &name, &headers, body).await {
        Ok(Started::New(run)) => {
            count(ctx, "accepted");
            (StatusCode::ACCEPTED, axum::Json(json!({ "run": run }))).into_response()
        }
        Ok(Started::Replay(run)) => {
            count(ctx, "replayed");
            (StatusCode::OK, axum::Json(json!({ "run": run, "replayed": true }))).into_response()
        }
        Err(refusal) => {
            if matches!(refusal, Refusal::BadSignature | Refusal::Stale(_)) {
                tracing::info!(workflow = %name, %namespace, %refusal, "webhook refused");
            }
            refuse(ctx, &refusal)
        }
    }
}

/// What an accepted webhook did.
enum Started {
    /// Started this run.
    New(String),
    /// A delivery seen before: this run was started for it.
    Replay(String),
}

/// A request whose signature verified.
pub(crate) struct Signed {
    pub delivery: String,
    pub timestamp: i64,
    pub now: i64,
    pub body: Bytes,
}

/// Checks a signed request — delivery id, timestamp within the tolerance,
/// body size, HMAC under the key of `secret` — in that order, so a forged
/// one costs neither a body read past the limit nor an API call.
pub(crate) async fn signed(
    hooks: &Webhooks,
    purpose: Purpose,
    namespace: &str,
    secret: &SecretKeyRef,
    headers: &HeaderMap,
    body: Body,
) -> Result<Signed, Refusal> {
    let signature = header(headers, SIGNATURE_HEADER).unwrap_or_default();
    let delivery = header(headers, DELIVERY_HEADER)
        .filter(|d| valid_delivery(d))
        .ok_or(Refusal::BadHeader("X-Tether-Delivery (1 to 128 of A-Z a-z 0-9 - _ :)"))?;
    let timestamp = header(headers, TIMESTAMP_HEADER)
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or(Refusal::BadHeader("X-Tether-Timestamp (unix seconds)"))?;
    let now = chrono::Utc::now().timestamp();
    if !fresh(timestamp, now, hooks.tolerance) {
        return Err(Refusal::Stale(hooks.tolerance.as_secs()));
    }
    let body = bounded(headers, body, MAX_WEBHOOK_BYTES).await?;
    let verifies = |key: &[u8]| verify(key, timestamp, delivery, &body, signature);
    key_that_verifies(
        &hooks.ctx(),
        purpose,
        namespace,
        secret,
        verifies,
        Refusal::BadSignature,
    )
    .await?;
    Ok(Signed {
        delivery: delivery.to_owned(),
        timestamp,
        now,
        body,
    })
}

/// Checks a webhook (headers, window, size, signature, replay) and starts
/// its run.
async fn start(
    hooks: &Webhooks,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Started, Refusal> {
    let ctx = hooks.ctx();
    let ctx = ctx.as_ref();
    let workflow = ctx
        .workflows
        .get(&ObjectRef::<Workflow>::new(name).within(namespace))
        .ok_or_else(|| Refusal::NotFound(format!("no Workflow {namespace}/{name}")))?;
    let hook = workflow
        .spec
        .triggers
        .as_ref()
        .and_then(|t| t.webhook.as_ref())
        .ok_or_else(|| Refusal::NotFound(format!("Workflow {namespace}/{name} has no webhook trigger")))?;
    let tolerance = hooks.tolerance;
    let Signed {
        delivery,
        timestamp,
        now,
        body,
    } = signed(hooks, Purpose::Webhook, namespace, &hook.secret_ref, headers, body).await?;
    let delivery = delivery.as_str();
    match hooks.deliveries.admit(namespace, name, delivery, now) {
        Admit::New => {}
        Admit::Replay(run) => return Ok(Started::Replay(run)),
        Admit::Full => return Err(Refusal::Busy),
    }
    let payload = json_body(&body)?;
    let parameters = crate::expr::in_turn(|| {
        Expr::compile_cached("spec.triggers.webhook.parameters", &hook.parameters, &[])
            .and_then(|e| e.eval(&payload, &[]))
    })
    .await
    .map_err(|e| Refusal::BadParameters(e.to_string()))?;
    if !parameters.is_object() {
        return Err(Refusal::BadParameters(format!(
            "the parameters expression yielded {parameters}, not an object"
        )));
    }
    let digest = Sha256::digest(delivery.as_bytes());
    let short: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let run = create_run(
        ctx,
        &workflow,
        &format!("{name}-{short}"),
        None,
        parameters,
        &[(TRIGGER_LABEL, "webhook")],
    )
    .await
    .map_err(Refusal::CreateRun)?;
    let run = kube::ResourceExt::name_any(&run);
    let expires = timestamp.saturating_add(i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX));
    hooks.deliveries.record(namespace, name, delivery, &run, expires);
    ctx.publish(
        workflow.as_ref(),
        kube::runtime::events::EventType::Normal,
        event::RUN_CREATED,
        "Webhook",
        format!("webhook started run {run}"),
    )
    .await;
    Ok(Started::New(run))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::callback::callback_token;

    #[test]
    fn a_signature_verifies_only_with_its_key_timestamp_delivery_and_body() {
        let body = b"{\"a\":1}";
        let signature = sign(b"key", 1_000, "d-1", body);
        assert!(verify(b"key", 1_000, "d-1", body, &signature));
        assert!(!verify(b"other", 1_000, "d-1", body, &signature));
        assert!(!verify(b"key", 1_000, "d-1", b"{\"a\":2}", &signature));
        assert!(!verify(b"key", 1_001, "d-1", body, &signature));
        assert!(!verify(b"key", 1_000, "d-2", body, &signature));
        assert!(!verify(b"key", 1_000, "d-1", body, "sha256=zz"));
        assert!(!verify(b"key", 1_000, "d-1", body, ""));
    }

    #[test]
    fn a_delivery_id_cannot_carry_the_separator_or_be_empty() {
        assert!(valid_delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!valid_delivery(""));
        assert!(!valid_delivery("a.b"));
        assert!(!valid_delivery(&"x".repeat(MAX_DELIVERY_ID + 1)));
    }

    #[test]
    fn a_timestamp_counts_only_inside_the_tolerance_either_way() {
        let five_minutes = Duration::from_secs(300);
        assert!(fresh(1_000, 1_300, five_minutes));
        assert!(fresh(1_300, 1_000, five_minutes));
        assert!(!fresh(1_000, 1_301, five_minutes));
        assert!(!fresh(i64::MIN, i64::MAX, five_minutes));
    }

    #[test]
    fn a_callback_record_verifies_only_for_its_run_step_attempt_and_body() {
        let body = json!({"status": "done"});
        let record = callback_record(b"key", "uid-1", "export", 1, &body);
        assert!(verify_callback_record(b"key", "uid-1", "export", 1, &record));
        assert!(!verify_callback_record(b"other", "uid-1", "export", 1, &record));
        assert!(!verify_callback_record(b"key", "uid-2", "export", 1, &record));
        assert!(!verify_callback_record(b"key", "uid-1", "import", 1, &record));
        assert!(!verify_callback_record(b"key", "uid-1", "export", 2, &record));
        let mut tampered = record.clone();
        tampered["body"] = json!({"status": "failed"});
        assert!(!verify_callback_record(b"key", "uid-1", "export", 1, &tampered));
        let forged = json!({"attempt": 1, "body": body});
        assert!(!verify_callback_record(b"key", "uid-1", "export", 1, &forged));
        // The token of an attempt is not a record's MAC.
        let mut with_token = record.clone();
        with_token["mac"] = json!(callback_token(b"key", "uid-1", "export", 1));
        assert!(!verify_callback_record(b"key", "uid-1", "export", 1, &with_token));
    }
}
