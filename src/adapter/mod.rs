//! The port to external systems. The reconcilers see only the
//! [`ExternalSystem`] trait and plain result structs; this module has no
//! transport type. Its implementations live beside it: a declarative REST
//! mapping ([`rest`]) and an adapter service ([`service`]), both speaking
//! to the target through the request port (`crate::request`); which one a
//! TargetSystem gets is decided once, in [`any`]. Tests drive the
//! reconciler logic with a hand-written fake (`crate::fakes`).

pub mod any;
pub mod rest;
pub mod service;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::expr::ExprError;
use crate::request::CallError;

/// What a call about one object concerns.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRequest<'a> {
    /// The resource type, as named by the Adapter.
    pub resource_type: &'a str,
    /// The external id, once known.
    pub external_id: Option<&'a str>,
    /// The deterministic external name (natural key for `find`).
    pub external_name: &'a str,
    /// The desired properties.
    pub properties: &'a Value,
    /// The idempotency key of a create.
    pub idempotency_key: Option<&'a str>,
}

impl ObjectRequest<'_> {
    /// The input of request templates: `.properties`, `.id`, `.name`,
    /// `.idempotencyKey`.
    pub fn context(&self) -> Value {
        json!({
            "properties": self.properties,
            "id": self.external_id,
            "name": self.external_name,
            "idempotencyKey": self.idempotency_key,
        })
    }
}

/// An object as the external system holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalObject {
    pub id: String,
    /// The observed properties (the Adapter's `observe` extraction), without
    /// the secret fields.
    pub state: Value,
    /// The answer's secret fields (the resource type's `secretFields`), for
    /// the resource's Secret only.
    pub secrets: SecretValues,
}

/// Values of an answer's secret fields. `Debug` shows the field names only,
/// so a logged object or error never carries a value.
#[derive(Clone, Default, PartialEq)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// Takes `fields` out of `body` (a JSON object): strings as they are,
    /// other values as JSON text. Fields the answer lacks are left out.
    pub fn take(body: &mut Value, fields: &[String]) -> Self {
        let mut values = BTreeMap::new();
        if let Value::Object(map) = body {
            for field in fields {
                match map.remove(field) {
                    Some(Value::String(s)) => {
                        values.insert(field.clone(), s);
                    }
                    Some(Value::Null) | None => {}
                    Some(other) => {
                        values.insert(field.clone(), other.to_string());
                    }
                }
            }
        }
        Self(values)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The result of looking for an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Absent,
    Present(ExternalObject),
}

/// The result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// Already gone (404 on delete counts as gone).
    AlreadyGone,
}

/// The result of a named action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    pub status: u16,
    pub body: Value,
    pub succeeded: bool,
    pub outputs: BTreeMap<String, Value>,
}

/// Why an adapter call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Expression(#[from] ExprError),
    /// The mapping cannot do what was asked (unknown type, no such operation).
    #[error("{0}")]
    Mapping(String),
    /// The target answered with a 4xx that retrying will not change.
    #[error("the target rejected the {operation} (HTTP {status}): {message}")]
    Rejected {
        operation: String,
        status: u16,
        message: String,
    },
}

impl AdapterError {
    /// Stable label for metrics, events and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            AdapterError::Call(e) => e.reason(),
            AdapterError::Expression(_) => "ExpressionError",
            AdapterError::Mapping(_) => "MappingError",
            AdapterError::Rejected { .. } => "RejectedByTarget",
        }
    }

    /// The target certainly did not apply the request: it refused it (429,
    /// 401/403, a 4xx other than 409), or the request never left (circuit
    /// open, connection refused, a template that failed). Timeouts, dropped
    /// connections and 5xx are ambiguous: the write may have happened.
    pub fn certainly_not_applied(&self) -> bool {
        match self {
            AdapterError::Call(call) => match call {
                CallError::Unavailable { sent, .. } => !sent,
                // The target answered: a 303 after a POST, or a body cut
                // short, may follow a write that happened.
                CallError::InvalidResponse(_) | CallError::ResponseTooLarge { .. } | CallError::Redirected { .. } => {
                    false
                }
                CallError::Throttled { .. }
                | CallError::Unauthorized { .. }
                | CallError::BadCredentials(_)
                | CallError::CircuitOpen { .. }
                | CallError::Url { .. }
                | CallError::EgressDenied(_) => true,
            },
            AdapterError::Rejected { status, .. } => *status != 409,
            AdapterError::Expression(_) | AdapterError::Mapping(_) => true,
        }
    }

    /// A failure that waits for a change of the spec (or of the Adapter)
    /// rather than for time. Bad credentials are not permanent: they recover
    /// when the Secret is fixed, so they are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            AdapterError::Expression(_)
                | AdapterError::Mapping(_)
                | AdapterError::Rejected { .. }
                | AdapterError::Call(CallError::Url { .. } | CallError::EgressDenied(_))
        )
    }
}

pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// An external system, reached through an Adapter.
///
/// Contract, for every implementation:
/// - `observe` and `find` never change anything at the target;
/// - `create` carries the request's idempotency key to the target when the
///   adapter can (a header, or the protocol's field), so a repeat with the
///   same key is never a second object;
/// - `update` and `delete` are idempotent; deleting an absent object is
///   `Ok(Deletion::AlreadyGone)`;
/// - errors tell permanent from transient ([`AdapterError::is_permanent`]).
pub trait ExternalSystem: Send + Sync {
    /// Reads the object with `request.external_id`.
    fn observe(&self, request: &ObjectRequest<'_>) -> impl Future<Output = Result<Observation>> + Send;
    /// Whether `find` can look objects up by natural key for this type.
    fn can_find(&self, resource_type: &str) -> bool;
    /// Looks the object up by its external name (natural key).
    fn find(&self, request: &ObjectRequest<'_>) -> impl Future<Output = Result<Observation>> + Send;
    /// Creates the object.
    fn create(&self, request: &ObjectRequest<'_>) -> impl Future<Output = Result<ExternalObject>> + Send;
    /// Whether `update` exists for this type (without it drift is reported only).
    fn can_update(&self, resource_type: &str) -> bool;
    /// Writes the desired properties onto the object; returns its new state
    /// when the target answers with it.
    fn update(&self, request: &ObjectRequest<'_>) -> impl Future<Output = Result<Option<Value>>> + Send;
    /// Deletes the object.
    fn delete(&self, request: &ObjectRequest<'_>) -> impl Future<Output = Result<Deletion>> + Send;
    /// Runs a named action with `input`.
    fn act(
        &self,
        action: &str,
        input: &Value,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<ActionOutcome>> + Send;
}

pub use any::AnyAdapter;
