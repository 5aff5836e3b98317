//! Why the webhook or callback endpoint refused a request: one variant per
//! failure site, each with its HTTP status and the stable label it is
//! counted under in `tether_webhook_requests_total{outcome}`. Pure.

use axum::http::StatusCode;

use crate::keys::Purpose;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(String),
    #[error("missing or malformed {0}")]
    BadHeader(&'static str),
    #[error("X-Tether-Signature does not sign timestamp, delivery and body")]
    BadSignature,
    #[error("X-Tether-Timestamp is more than {0}s away from the controller's clock")]
    Stale(u64),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("wrong or missing token")]
    BadToken,
    #[error("{0}")]
    Used(&'static str),
    #[error("the {} key (Secret {secret:?}, key {key:?}) is missing", purpose.label())]
    NoKey {
        purpose: Purpose,
        secret: String,
        key: String,
    },
    #[error("{0}")]
    BadPayload(String),
    #[error("{0}")]
    BadParameters(String),
    #[error("too many deliveries inside the tolerance window")]
    Busy,
    #[error("reading the run: {0}")]
    ReadRun(#[source] kube::Error),
    #[error("recording the callback: {0}")]
    RecordCallback(#[source] kube::Error),
    #[error("{0}")]
    CreateRun(#[source] crate::controller::Error),
}

impl Refusal {
    /// The outcome label it is counted under.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotFound(_) => "not_found",
            Refusal::BadHeader(_) | Refusal::BadSignature => "bad_signature",
            Refusal::Stale(_) => "stale",
            Refusal::TooLarge(_) => "too_large",
            Refusal::BadToken => "bad_token",
            Refusal::Used(_) => "used",
            Refusal::NoKey { .. } => "no_key",
            Refusal::BadPayload(_) | Refusal::BadParameters(_) => "bad_payload",
            Refusal::Busy => "busy",
            Refusal::ReadRun(_) | Refusal::RecordCallback(_) | Refusal::CreateRun(_) => "error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::BadHeader(_) | Refusal::BadSignature | Refusal::Stale(_) | Refusal::BadToken => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Used(_) => StatusCode::CONFLICT,
            Refusal::BadPayload(_) => StatusCode::BAD_REQUEST,
            Refusal::BadParameters(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Busy => StatusCode::TOO_MANY_REQUESTS,
            Refusal::NoKey { .. } | Refusal::ReadRun(_) | Refusal::RecordCallback(_) | Refusal::CreateRun(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}
