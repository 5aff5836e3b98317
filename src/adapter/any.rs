//! The choice of concrete adapter: a TargetSystem's Adapter is a REST
//! mapping or an adapter service, bound to the target's shared runtime
//! ([`Target`]). The reconcilers hold an [`AnyAdapter`] and see only the
//! [`ExternalSystem`] trait.

use std::sync::Arc;

use serde_json::Value;

use super::rest::{CompiledMapping, RestAdapter};
use super::service::ServiceAdapter;
use super::{ActionOutcome, Deletion, ExternalObject, ExternalSystem, ObjectRequest, Observation, Result};
use crate::api::Adapter;
use crate::http::Target;

/// Why an Adapter cannot serve a TargetSystem: its service URL or its
/// mapping is invalid (a change of the Adapter fixes it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Adapter {adapter:?}: {message}")]
pub struct AdapterInvalid {
    pub adapter: String,
    pub message: String,
}

impl AnyAdapter {
    /// The adapter `adapter` describes, calling through `target`;
    /// `mapping` compiles (or returns the cached compilation of) a REST
    /// mapping.
    pub fn build(
        adapter: &Adapter,
        target: Arc<Target>,
        mapping: impl FnOnce(&Adapter) -> Result<Arc<CompiledMapping>, String>,
    ) -> Result<Self, AdapterInvalid> {
        let invalid = |message: String| AdapterInvalid {
            adapter: adapter.metadata.name.clone().unwrap_or_default(),
            message,
        };
        if let Some(service) = &adapter.spec.service {
            let url = crate::http::url::parse_base(&service.url).map_err(|e| invalid(e.to_string()))?;
            return Ok(AnyAdapter::Service(ServiceAdapter::new(url, target)));
        }
        let mapping = mapping(adapter).map_err(invalid)?;
        Ok(AnyAdapter::Rest(RestAdapter::new(mapping, target)))
    }
}

/// The adapter of a TargetSystem, in whichever form its Adapter takes.
pub enum AnyAdapter {
    Rest(RestAdapter<Target>),
    Service(ServiceAdapter<Target>),
}

macro_rules! dispatch {
    ($self:ident, $a:ident => $call:expr) => {
        match $self {
            AnyAdapter::Rest($a) => $call,
            AnyAdapter::Service($a) => $call,
        }
    };
}

impl ExternalSystem for AnyAdapter {
    async fn observe(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        dispatch!(self, a => a.observe(request).await)
    }
    fn can_find(&self, resource_type: &str) -> bool {
        dispatch!(self, a => a.can_find(resource_type))
    }
    async fn find(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        dispatch!(self, a => a.find(request).await)
    }
    async fn create(&self, request: &ObjectRequest<'_>) -> Result<ExternalObject> {
        dispatch!(self, a => a.create(request).await)
    }
    fn can_update(&self, resource_type: &str) -> bool {
        dispatch!(self, a => a.can_update(resource_type))
    }
    async fn update(&self, request: &ObjectRequest<'_>) -> Result<Option<Value>> {
        dispatch!(self, a => a.update(request).await)
    }
    async fn delete(&self, request: &ObjectRequest<'_>) -> Result<Deletion> {
        dispatch!(self, a => a.delete(request).await)
    }
    async fn act(&self, action: &str, input: &Value, idempotency_key: &str) -> Result<ActionOutcome> {
        dispatch!(self, a => a.act(action, input, idempotency_key).await)
    }
}
