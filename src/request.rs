//! The second port: one request to a TargetSystem and its answer, as plain
//! values. Raw HTTP steps, polls, health probes and the adapters all speak
//! to a target through [`TargetRequests`]; the HTTP runtime (`crate::http`)
//! is its implementation (rate limit, concurrency, circuit, credentials,
//! egress), and tests use a hand-written fake. Request templates
//! ([`CompiledRequest`]) render into an [`HttpCall`] without touching the
//! network.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::adapter::{HttpMethod, HttpRequestTemplate};
use crate::api::target_system::CircuitState;
use crate::expr::{Expr, ExprError};

/// Header carrying the fencing token: the leader identity and Lease
/// generation of the controller that sent the call, so a target (or an
/// adapter service) can refuse calls from a deposed leader.
pub const FENCING_HEADER: &str = "x-tether-fencing-token";

/// A TargetSystem as its callers see it.
///
/// Contract: `send` waits for the target's rate and concurrency limits,
/// honours its circuit, and puts the credentials on the call; 401/403, 429,
/// 5xx and transport failures come back as [`CallError`], every other
/// status as an [`HttpAnswer`]. `redact` hides the target's credential
/// values from text about to be shown (status, Events, logs).
pub trait TargetRequests: Send + Sync {
    /// Sends one call.
    fn send(&self, call: HttpCall) -> impl Future<Output = Result<HttpAnswer, CallError>> + Send;
    /// `text` with every credential value of the target replaced.
    fn redact(&self, text: &str) -> String;
    /// The target's base URL.
    fn base_url(&self) -> &str;
    /// The circuit breaker's state now.
    fn circuit_state(&self) -> CircuitState;
}

/// Why a call did not produce an answer the adapter can interpret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// 5xx, timeout, refused or dropped connection. `sent` is false only
    /// when the request certainly never reached the target.
    #[error("target unavailable: {message}")]
    Unavailable { message: String, sent: bool },
    /// 429: the target asked us to slow down.
    #[error("throttled by the target (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    Throttled { retry_after: Option<Duration> },
    /// 401 or 403, with the target's message (secrets redacted).
    #[error(
        "the target refused the credentials (HTTP {status}: {message}); check the Secret named by the TargetSystem's auth"
    )]
    Unauthorized { status: u16, message: String },
    /// Credentials that cannot be put on a request.
    #[error("unusable credentials: {0}")]
    BadCredentials(String),
    /// The circuit breaker is open after repeated failures.
    #[error("circuit open after repeated failures; next trial in {}s", retry_after.as_secs())]
    CircuitOpen { retry_after: Duration },
    /// The path would leave the base URL.
    #[error("{message}")]
    Url { reason: &'static str, message: String },
    /// The answer is not what HTTP or JSON promise.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// The answer's body is longer than the TargetSystem allows; reading
    /// stopped there.
    #[error(
        "the target's answer is larger than {limit} bytes (spec.maxResponseBytes of the TargetSystem); reading stopped there"
    )]
    ResponseTooLarge { limit: u64 },
    /// A 3xx that Tether did not follow.
    #[error("the target answered HTTP {status} redirecting to {location}; {why}")]
    Redirected {
        status: u16,
        location: String,
        why: &'static str,
    },
    /// The operator's egress deny list refused the address; nothing was sent.
    #[error("{0}")]
    EgressDenied(String),
}

impl CallError {
    /// Stable label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Unavailable { .. } => "TargetUnavailable",
            CallError::Throttled { .. } => "Throttled",
            CallError::Unauthorized { .. } => "CredentialsRejected",
            CallError::BadCredentials(_) => "CredentialsInvalid",
            CallError::CircuitOpen { .. } => "CircuitOpen",
            CallError::Url { reason, .. } => reason,
            CallError::InvalidResponse(_) => "InvalidResponse",
            CallError::ResponseTooLarge { .. } => "ResponseTooLarge",
            CallError::Redirected { .. } => "RedirectNotFollowed",
            CallError::EgressDenied(_) => "EgressDenied",
        }
    }

    /// When the target itself said when to come back.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Throttled { retry_after } => *retry_after,
            CallError::CircuitOpen { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// One HTTP request to a target, relative to its base URL.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// Label for metrics (`read`, `create`, `action:send-welcome`...).
    pub operation: String,
    pub method: HttpMethod,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    /// Send to this base instead of the target's (an adapter service).
    pub base: Option<url::Url>,
}

/// The answer to an [`HttpCall`] that was not a transport-level failure.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Value,
}

impl HttpAnswer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `{status, body}`, the input of `successWhen` and `outputs`.
    pub fn as_value(&self) -> Value {
        json!({ "status": self.status, "body": self.body })
    }
}

pub struct CompiledRequest {
    method: HttpMethod,
    path: Expr,
    query: Vec<(String, Expr)>,
    headers: Vec<(String, Expr)>,
    body: Option<Expr>,
}

impl CompiledRequest {
    pub fn compile(field: &str, template: &HttpRequestTemplate, vars: &[&str]) -> Result<Self, Vec<ExprError>> {
        let mut errors = Vec::new();
        let mut keep = |r: Result<Expr, ExprError>| r.map_err(|e| errors.push(e)).ok();
        let path = keep(Expr::template(&format!("{field}.path"), &template.path, vars, true));
        // Query and header values are plain templates (reqwest encodes them).
        let mut text_templates =
            |part: &str, values: &std::collections::BTreeMap<String, String>| -> Vec<(String, Expr)> {
                values
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            k.clone(),
                            keep(Expr::template(&format!("{field}.{part}.{k}"), v, vars, false))?,
                        ))
                    })
                    .collect()
            };
        let query = text_templates("query", &template.query);
        let headers = text_templates("headers", &template.headers);
        let body = template
            .body
            .as_ref()
            .map(|b| keep(Expr::compile(&format!("{field}.body"), b, vars)));
        for name in template.headers.keys() {
            if let Some(why) = reserved_header(name) {
                errors.push(ExprError::Compile {
                    field: format!("{field}.headers.{name}"),
                    expression: name.clone(),
                    message: why.to_owned(),
                });
            }
        }
        match (path, body) {
            (Some(path), None) if errors.is_empty() => Ok(Self {
                method: template.method,
                path,
                query,
                headers,
                body: None,
            }),
            (Some(path), Some(Some(body))) if errors.is_empty() => Ok(Self {
                method: template.method,
                path,
                query,
                headers,
                body: Some(body),
            }),
            _ => Err(errors),
        }
    }

    /// The call for `input`, with `vars` values in the order compiled.
    pub fn render(&self, operation: &str, input: &Value, vars: &[&Value]) -> Result<HttpCall, ExprError> {
        Ok(HttpCall {
            operation: operation.to_owned(),
            method: self.method,
            path: self.path.eval_string(input, vars)?,
            query: self
                .query
                .iter()
                .map(|(k, e)| Ok((k.clone(), e.eval_string(input, vars)?)))
                .collect::<Result<_, ExprError>>()?,
            headers: self
                .headers
                .iter()
                .map(|(k, e)| Ok((k.clone(), e.eval_string(input, vars)?)))
                .collect::<Result<_, ExprError>>()?,
            body: self.body.as_ref().map(|b| b.eval(input, vars)).transpose()?,
            base: None,
        })
    }
}

/// Why a request template may not set header `name`, if it may not:
/// headers that pick another virtual host or path behind the target's
/// gateway, carry credentials, frame the message, or are Tether's own
/// (fencing, idempotency).
pub fn reserved_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let reserved = matches!(
        lower.as_str(),
        "host"
            | "authorization"
            | "proxy-authorization"
            | "cookie"
            | "forwarded"
            | "x-real-ip"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-method-override"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "keep-alive"
            | "idempotency-key"
    ) || lower.starts_with("x-forwarded-")
        || lower == FENCING_HEADER;
    reserved.then_some(
        "this header is reserved: Tether sets credentials, framing, idempotency and fencing headers itself, \
         and a template may not choose another host or path behind the target",
    )
}

/// A short, single-line message from an error body.
pub fn error_message(body: &Value) -> String {
    let text = body
        .pointer("/error/message")
        .or_else(|| body.get("message"))
        .or_else(|| body.get("error"))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .unwrap_or_else(|| body.to_string());
    let mut line: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if line.is_empty() {
        line.push_str("no details");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::adapter::HttpRequestTemplate;

    #[test]
    fn threat_a_template_cannot_set_host_credential_framing_or_tethers_own_headers() {
        for name in [
            "Host",
            "authorization",
            "Cookie",
            "X-Forwarded-Host",
            "X-Original-URL",
            "Transfer-Encoding",
            "Idempotency-Key",
            "x-tether-fencing-token",
        ] {
            let template = HttpRequestTemplate {
                method: HttpMethod::Get,
                path: "/v1/x".into(),
                query: Default::default(),
                headers: [(name.to_owned(), "admin.internal".to_owned())].into(),
                body: None,
            };
            let Err(errors) = CompiledRequest::compile("spec.steps[s].call.request", &template, &[]) else {
                panic!("{name} was accepted");
            };
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            assert!(
                message.contains(&format!("spec.steps[s].call.request.headers.{name}")),
                "{message}"
            );
            assert!(message.contains("reserved"), "{message}");
        }
        let ordinary = HttpRequestTemplate {
            method: HttpMethod::Get,
            path: "/v1/x".into(),
            query: Default::default(),
            headers: [("X-Request-Source".to_owned(), "tether".to_owned())].into(),
            body: None,
        };
        assert!(CompiledRequest::compile("f", &ordinary, &[]).is_ok());
    }
}
