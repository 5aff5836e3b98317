//! Reconciling a TargetSystem: build (or reuse) its shared target, probe
//! its health, and report `Ready`, `Degraded` and the circuit state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::Context;
use crate::api::TargetSystem;
use crate::api::adapter::HttpMethod;
use crate::api::common::condition::READY;
use crate::api::target_system::{CircuitState, TargetSystemStatus};
use crate::conditions::{self, Desired};
use crate::target::HttpCall;

pub const KIND: &str = "TargetSystem";
pub const DEGRADED: &str = "Degraded";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of TargetSystem {name}")]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub async fn reconcile(ts: Arc<TargetSystem>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let interval = ts
        .spec
        .health_check
        .as_ref()
        .and_then(|h| h.interval.to_std())
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_secs(1));
    let (ready, degraded, circuit) = match ctx.adapter_for(&ts).await {
        Err(failure) => (Desired::new(READY, false, failure.reason, failure.message), None, None),
        Ok(adapter) => {
            let target = adapter.target();
            let probe = match &ts.spec.health_check {
                Some(check) => Some(
                    target
                        .send(HttpCall {
                            operation: "health".into(),
                            method: HttpMethod::Get,
                            path: check.path.clone(),
                            query: vec![],
                            headers: vec![],
                            body: None,
                            base: None,
                        })
                        .await,
                ),
                None => None,
            };
            let circuit = Some(target.circuit_state());
            let ready = match &probe {
                Some(Ok(answer)) if answer.is_success() => {
                    Desired::new(READY, true, "Reachable", "the health check answered")
                }
                Some(Ok(answer)) => Desired::new(
                    READY,
                    false,
                    "HealthCheckFailed",
                    format!("the health check answered HTTP {}", answer.status),
                ),
                Some(Err(e)) => Desired::new(READY, false, e.reason(), e.to_string()),
                None => Desired::new(
                    READY,
                    true,
                    "Configured",
                    "credentials loaded; no health check configured",
                ),
            };
            let degraded = match circuit {
                Some(CircuitState::Open) => Desired::new(
                    DEGRADED,
                    true,
                    "CircuitOpen",
                    "calls are paused after repeated failures",
                ),
                Some(CircuitState::HalfOpen) => Desired::new(
                    DEGRADED,
                    true,
                    "CircuitHalfOpen",
                    "a trial call decides whether calls resume",
                ),
                _ if !ready.status => Desired::new(DEGRADED, true, ready.reason.clone(), ready.message.clone()),
                _ => Desired::new(DEGRADED, false, "Healthy", "calls flow"),
            };
            (ready, Some(degraded), circuit)
        }
    };
    let previous = ts.status.clone().unwrap_or_default();
    let desired: Vec<Desired> = std::iter::once(ready).chain(degraded).collect();
    let next = TargetSystemStatus {
        observed_generation: ts.metadata.generation,
        circuit,
        last_probe_time: previous.last_probe_time,
        conditions: conditions::set_exactly(&previous.conditions, &desired, ts.metadata.generation, Utc::now()),
    };
    if ts.status.as_ref() != Some(&next) {
        let next = TargetSystemStatus {
            last_probe_time: Some(Utc::now()),
            ..next
        };
        let api: Api<TargetSystem> = Api::namespaced(ctx.client.clone(), &ts.namespace().unwrap_or_default());
        ctx.apply_status(&api, &ts.name_any(), KIND, &next)
            .await
            .map_err(|source| Error::WriteStatus {
                name: ts.name_any(),
                source,
            })?;
    }
    ctx.metrics.observe_reconcile(KIND, started.elapsed());
    Ok(Action::requeue(interval))
}

pub fn error_policy(ts: Arc<TargetSystem>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(KIND, "WriteStatusFailed");
    tracing::warn!(name = %ts.name_any(), error = %error, "TargetSystem reconcile failed");
    Action::requeue(Duration::from_secs(5))
}
