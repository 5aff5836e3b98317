//! Reconciling an Adapter: compile every expression of its REST mapping (or
//! check its service URL) and report `Ready` with the errors, each naming
//! its field, so a broken mapping is visible before any resource uses it.

use crate::controller::Error;
use crate::controller::status::StatusWriter;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::Context;
use crate::api::Adapter;
use crate::api::adapter::AdapterStatus;
use crate::api::common::condition::READY;
use crate::conditions::{self, Desired};

pub const KIND: &str = "Adapter";

/// `Ready=True`: the mapping compiles (or the service URL is valid). An
/// invalid Adapter is also `Stalled`: only an edit of its spec helps.
pub fn with_progress(ready: Desired) -> Vec<Desired> {
    if ready.is_true() {
        vec![ready]
    } else {
        let stalled = Desired::stalled(ready.reason.clone(), ready.message.clone());
        vec![ready, stalled]
    }
}

pub async fn reconcile(adapter: Arc<Adapter>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let (form, types, ready) = match (&adapter.spec.rest, &adapter.spec.service) {
        (Some(rest), _) => {
            let mut names: Vec<&str> = rest.resource_types.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            let ready = match ctx.mappings.get(&adapter) {
                Ok(_) => Desired::new(READY, true, "Compiled", "every expression compiles"),
                Err(message) => Desired::new(READY, false, "ExpressionError", message),
            };
            ("Rest", Some(names.join(",")), ready)
        }
        (None, Some(service)) => {
            let ready = match crate::http::url::parse_base(&service.url) {
                Ok(_) => Desired::new(READY, true, "Configured", format!("calls {}", service.url)),
                Err(e) => Desired::new(READY, false, "InvalidURL", e.to_string()),
            };
            ("Service", None, ready)
        }
        (None, None) => (
            "None",
            None,
            Desired::new(READY, false, "InvalidSpec", "set spec.rest or spec.service"),
        ),
    };
    let previous = adapter.status.clone().unwrap_or_default();
    let next = AdapterStatus {
        observed_generation: adapter.metadata.generation,
        form: Some(form.to_owned()),
        resource_types: types,
        conditions: conditions::set_exactly(
            &previous.conditions,
            &with_progress(ready),
            adapter.metadata.generation,
            Utc::now(),
        ),
    };
    let api: Api<Adapter> = Api::all(ctx.client.clone());
    StatusWriter::new(&ctx, api, adapter.as_ref(), KIND, adapter.status.clone())
        .unconditional()
        .write(next)
        .await?;
    ctx.metrics.observe_reconcile(KIND, started.elapsed());
    Ok(Action::await_change())
}

pub fn error_policy(adapter: Arc<Adapter>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(KIND, "WriteStatusFailed");
    tracing::warn!(name = %adapter.name_any(), error = %error, "Adapter reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::STALLED;

    #[test]
    fn an_invalid_adapter_is_stalled_and_a_valid_one_only_ready() {
        let valid = with_progress(Desired::new(READY, true, "Compiled", ""));
        assert_eq!(valid.len(), 1);
        let invalid = with_progress(Desired::new(READY, false, "ExpressionError", "bad"));
        assert!(
            invalid
                .iter()
                .any(|d| d.type_ == STALLED && d.is_true() && d.reason == "ExpressionError")
        );
    }
}
