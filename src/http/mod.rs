//! The runtime side of a TargetSystem: one HTTP client, one token bucket,
//! one concurrency limit and one circuit breaker, shared by every
//! ExternalResource and workflow step that calls the target (`Registry`).
//! `Target::send` is the only place where Tether talks HTTP to a target.

pub mod auth;
pub mod backoff;
pub mod circuit;
pub mod egress;
pub mod redirect;
pub mod registry;
pub mod url;

use crate::lock;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use reqwest::Url;
use reqwest::header::{HeaderValue, LOCATION, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::api::adapter::HttpMethod;
use crate::api::target_system::CircuitState;
use crate::metrics::{HttpLabels, Metrics, TargetLabels};
use crate::telemetry;
use auth::{Credentials, Redactor};
use circuit::Circuit;
use egress::EgressPolicy;

pub use crate::request::{CallError, FENCING_HEADER, HttpAnswer, HttpCall, error_message};

/// Longest `Retry-After` honoured: a target cannot park its callers for
/// longer (nor overflow the clock with `Retry-After: 18446744073709551615`).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of a body that is not JSON is kept as a string.
const TEXT_BODY_KEPT: usize = 512;

/// Limits of a target, from its spec.
#[derive(Debug, Clone)]
pub struct Limits {
    pub requests_per_second: Option<f64>,
    pub burst: u32,
    pub max_concurrency: u32,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub failure_threshold: u32,
    pub open_for: Duration,
    /// Longest body read from an answer.
    pub max_response_bytes: u64,
    /// Same-origin redirects below the base URL are followed.
    pub follow_redirects: bool,
}

/// The HTTP client of a target, before TLS settings: its timeouts, its
/// redirect policy (none unless opted in) and the egress resolver. Every
/// client that calls out of Tether is built here.
pub fn client_builder(limits: &Limits, base: &Url, egress: &Arc<EgressPolicy>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(limits.request_timeout)
        .connect_timeout(limits.connect_timeout)
        .pool_max_idle_per_host(limits.max_concurrency as usize)
        .redirect(redirect::policy(limits.follow_redirects, base.clone()))
        .dns_resolver(Arc::new(egress::GuardedResolver::new(egress.clone())))
        .user_agent(concat!("tether/", env!("CARGO_PKG_VERSION")))
}

/// A client from [`client_builder`] and the egress policy its resolver
/// enforces (checked again by `Target::send` for IP literals).
pub struct EgressClient {
    pub http: reqwest::Client,
    pub egress: Arc<EgressPolicy>,
}

/// A target system, ready to be called.
pub struct Target {
    /// `namespace/name`, for metrics and messages.
    pub key: String,
    base: Url,
    http: reqwest::Client,
    credentials: Credentials,
    redactor: Redactor,
    limiter: Option<DefaultDirectRateLimiter>,
    concurrency: Semaphore,
    circuit: Mutex<Circuit>,
    /// Set by a 429 with Retry-After: nobody calls before then.
    paused_until: Mutex<Option<Instant>>,
    fencing_token: String,
    metrics: Arc<Metrics>,
    egress: Arc<EgressPolicy>,
    max_response_bytes: u64,
    follow_redirects: bool,
}

impl Target {
    pub fn new(
        key: String,
        base: Url,
        client: EgressClient,
        credentials: Credentials,
        limits: &Limits,
        fencing_token: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limiter = limits.requests_per_second.map(|rate| {
            let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(burst);
            DefaultDirectRateLimiter::direct(quota)
        });
        let redactor = Redactor::new(credentials.secret_values());
        Self {
            key,
            base,
            http: client.http,
            credentials,
            redactor,
            limiter,
            concurrency: Semaphore::new(limits.max_concurrency.max(1) as usize),
            circuit: Mutex::new(Circuit::new(limits.failure_threshold, limits.open_for)),
            paused_until: Mutex::new(None),
            fencing_token,
            metrics,
            egress: client.egress,
            max_response_bytes: limits.max_response_bytes,
            follow_redirects: limits.follow_redirects,
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn circuit_state(&self) -> CircuitState {
        lock(&self.circuit).state(Instant::now())
    }

    /// Sends one call, waiting for the target's rate limit and concurrency
    /// limit. 401/403, 429 and 5xx come back as errors; every other status
    /// is an answer for the adapter to interpret.
    ///
    /// Traced as a span of its own (target, operation, method, status code,
    /// attempt, idempotency key: nothing of the URL, headers or body), whose
    /// `traceparent` the target receives.
    pub async fn send(&self, call: HttpCall) -> Result<HttpAnswer, CallError> {
        let span = telemetry::http_span(&self.key, &call.operation, call.method.as_str(), idempotency_key(&call));
        let result = self.send_inner(&call, &span).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(answer) if answer.is_success() => "success",
            Ok(_) => "client_error",
            Err(e) => e.reason(),
        };
        let status = match &result {
            Ok(answer) => Some(answer.status),
            Err(CallError::Unauthorized { status, .. } | CallError::Redirected { status, .. }) => Some(*status),
            Err(CallError::Throttled { .. }) => Some(429),
            Err(_) => None,
        };
        telemetry::http_outcome(&span, status, result.as_ref().err().map(CallError::reason));
        self.metrics
            .http_requests
            .get_or_create(&HttpLabels {
                target: self.key.clone(),
                operation: call.operation.clone(),
                outcome,
            })
            .inc();
        result
    }

    async fn send_inner(&self, call: &HttpCall, span: &tracing::Span) -> Result<HttpAnswer, CallError> {
        let url = url::join(call.base.as_ref().unwrap_or(&self.base), &call.path, &call.query)?;
        // Host names are checked when resolved; IP literals never are.
        self.egress.check_url(&url)?;
        // Bound first: the guard must be gone before set_circuit_gauge
        // locks the circuit again.
        let admitted = lock(&self.circuit).admit(Instant::now());
        if let Err(retry_after) = admitted {
            self.set_circuit_gauge();
            return Err(CallError::CircuitOpen { retry_after });
        }
        if let Some(limiter) = &self.limiter {
            let waited = Instant::now();
            limiter.until_ready().await;
            self.metrics
                .rate_limiter_wait
                .get_or_create(&TargetLabels {
                    target: self.key.clone(),
                })
                .observe(waited.elapsed().as_secs_f64());
        }
        let _permit = self.concurrency.acquire().await.map_err(|_| CallError::Unavailable {
            message: "the target is shutting down".into(),
            sent: false,
        })?;
        // Checked after taking a permit, so a call queued behind the one
        // that got the 429 waits too.
        let paused = *lock(&self.paused_until);
        if let Some(until) = paused {
            tokio::time::sleep_until(until.into()).await;
        }

        let method = match call.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
            HttpMethod::Delete => reqwest::Method::DELETE,
        };
        let mut request = self
            .http
            .request(method, url.clone())
            .header(FENCING_HEADER, &self.fencing_token);
        for (name, value) in &call.headers {
            // The credential's own header is the TargetSystem's to set: a
            // second value from a template would ride along with it.
            if self
                .credentials
                .header_name()
                .is_some_and(|h| h.as_str().eq_ignore_ascii_case(name))
            {
                continue;
            }
            request = request.header(name, value);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout.min(crate::api::target_system::MAX_REQUEST_TIMEOUT));
        }
        let request = self.credentials.apply(&self.http, &self.egress, request).await?;
        let mut request = request
            .build()
            .map_err(|err| CallError::InvalidResponse(format!("the request cannot be built: {}", describe(&err))))?;
        // Tether's own, replacing any a template set: the target's logs
        // join this call's span.
        if let Some(value) = telemetry::traceparent(span).and_then(|v| HeaderValue::from_str(&v).ok()) {
            request.headers_mut().insert(telemetry::TRACEPARENT, value);
        }
        // What went out as credentials (an OAuth2 access token, the base64
        // of a basic pair): a target that echoes them gets them redacted.
        let credentials_sent = auth::credential_values(request.headers(), None);
        let sent = egress::scoped(&url, self.http.execute(request)).await;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                if let Some(denied) = egress::find_denied(&err) {
                    return Err(denied.into());
                }
                lock(&self.circuit).failure(Instant::now());
                self.set_circuit_gauge();
                return Err(CallError::Unavailable {
                    message: self.redactor.redact(&describe(&err)),
                    sent: !err.is_connect(),
                });
            }
        };
        let status = response.status().as_u16();
        let classified = match status {
            429 => {
                let retry_after = retry_after(response.headers());
                if let Some(wait) = retry_after {
                    let until = Instant::now() + wait;
                    let mut paused = lock(&self.paused_until);
                    *paused = Some(paused.map_or(until, |p| p.max(until)));
                }
                lock(&self.circuit).neutral();
                Err(CallError::Throttled { retry_after })
            }
            500..=599 => {
                // The body is not read: nothing in it changes the outcome.
                lock(&self.circuit).failure(Instant::now());
                Err(CallError::Unavailable {
                    message: format!("HTTP {status}"),
                    sent: true,
                })
            }
            300..=399 => {
                lock(&self.circuit).neutral();
                Err(self.redirected(status, response.headers()))
            }
            _ => match read_capped(&mut response, self.max_response_bytes).await {
                Err(ReadError::TooLarge) => {
                    lock(&self.circuit).failure(Instant::now());
                    Err(CallError::ResponseTooLarge {
                        limit: self.max_response_bytes,
                    })
                }
                Err(ReadError::Transport(err)) => {
                    lock(&self.circuit).failure(Instant::now());
                    Err(CallError::Unavailable {
                        message: self.redactor.redact(&describe(&err)),
                        sent: true,
                    })
                }
                Ok(bytes) if matches!(status, 401 | 403) => {
                    lock(&self.circuit).neutral();
                    if let Credentials::OAuth2(oauth) = &self.credentials {
                        oauth.invalidate().await;
                    }
                    let mut body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    // A 401 that echoes the request's credential (an OAuth2
                    // access token) must not carry it into a condition.
                    self.redactor.redact_json(&mut body, &credentials_sent);
                    let message = self.redactor.redact(&error_message(&body));
                    Err(CallError::Unauthorized { status, message })
                }
                Ok(bytes) => {
                    lock(&self.circuit).success();
                    let mut body = if bytes.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&bytes)
                            .unwrap_or_else(|_| Value::String(crate::text::lossy_prefix(&bytes, TEXT_BODY_KEPT)))
                    };
                    self.redactor.redact_json(&mut body, &credentials_sent);
                    Ok(HttpAnswer { status, body })
                }
            },
        };
        self.set_circuit_gauge();
        classified
    }

    /// The error of a 3xx: redirects reach here only when not followed.
    fn redirected(&self, status: u16, headers: &reqwest::header::HeaderMap) -> CallError {
        let location = headers
            .get(LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .map(|l| {
                // The query may carry secrets: keep what names the place.
                let place = l.split(['?', '#']).next().unwrap_or_default();
                let place: String = place.chars().filter(|c| !c.is_control()).collect();
                crate::text::prefix(&self.redactor.redact(&place), 256).to_owned()
            })
            .unwrap_or_else(|| "nowhere (no Location header)".into());
        let why = if self.follow_redirects {
            "Tether follows redirects only to the same origin and below the baseUrl"
        } else {
            "Tether does not follow redirects unless the TargetSystem sets spec.followRedirects (same origin and below the baseUrl only)"
        };
        CallError::Redirected { status, location, why }
    }

    fn set_circuit_gauge(&self) {
        let open = i64::from(self.circuit_state() == CircuitState::Open);
        self.metrics
            .circuit_open
            .get_or_create(&TargetLabels {
                target: self.key.clone(),
            })
            .set(open);
    }
}

/// The idempotency key a call carries in the usual header, for its span.
fn idempotency_key(call: &HttpCall) -> Option<&str> {
    call.headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
        .map(|(_, value)| value.as_str())
}

/// `Retry-After` in seconds, at most [`MAX_RETRY_AFTER`]. The HTTP-date
/// form and anything unparsable count as absent.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// The body, read chunk by chunk, or `TooLarge` as soon as it passes
/// `limit` bytes (at once when `Content-Length` says so): a target cannot
/// make Tether hold more than `limit` bytes of its answer. A body that
/// never ends stops here too, or at the request timeout.
async fn read_capped(response: &mut reqwest::Response, limit: u64) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if (body.len() as u64).saturating_add(chunk.len() as u64) > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error without its URL (which could carry query values) and
/// with its root cause.
fn describe(err: &reqwest::Error) -> String {
    let mut message = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else {
        "connection closed before an answer".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests;

impl From<url::UrlError> for CallError {
    fn from(e: url::UrlError) -> Self {
        CallError::Url {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

impl From<egress::Denied> for CallError {
    fn from(e: egress::Denied) -> Self {
        CallError::EgressDenied(e.to_string())
    }
}

impl crate::request::TargetRequests for Target {
    async fn send(&self, call: HttpCall) -> Result<HttpAnswer, CallError> {
        Target::send(self, call).await
    }

    fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    fn base_url(&self) -> &str {
        self.base.as_str()
    }

    fn circuit_state(&self) -> CircuitState {
        Target::circuit_state(self)
    }
}
