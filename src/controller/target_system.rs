//! Reconciling a TargetSystem: build (or reuse) its shared target, probe
//! its health (target), and report `Ready`, `Degraded`, `Reconciling` or
//! `Stalled` and the circuit state ([`desired`], pure).

use crate::controller::Error;
use crate::controller::status::StatusWriter;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::Context;
use super::Failure;
use crate::api::TargetSystem;
use crate::api::adapter::HttpMethod;
use crate::api::common::condition::READY;
use crate::api::common::reason;
use crate::api::target_system::{CircuitState, TargetSystemStatus};
use crate::conditions::{self, Desired};
use crate::request::{HttpCall, TargetRequests};

pub const KIND: &str = "TargetSystem";
pub use crate::api::common::condition::DEGRADED;

/// What the health probe found.
#[derive(Debug)]
pub enum Probe {
    /// No `healthCheck` in the spec.
    NotConfigured,
    /// A 2xx answer.
    Healthy,
    /// Another HTTP status.
    Answered(u16),
    /// No answer (or the call was refused: throttled, circuit open).
    Failed { reason: &'static str, message: String },
}

/// What this reconcile found.
#[derive(Debug)]
pub enum Found {
    /// The target could not be built (Adapter or Secret missing or invalid).
    AdapterFailed(Failure),
    Probed {
        probe: Probe,
        circuit: CircuitState,
    },
}

/// The conditions of a TargetSystem. `Ready=True`: the credentials are
/// loaded, the health check (if any) answers, and the circuit is closed.
/// An open or half-open circuit, or a failing probe, is `Reconciling`
/// (Tether keeps probing and recovers by itself; kstatus `InProgress`) with
/// `Degraded=True`; an Adapter or Secret that needs fixing is `Stalled`.
pub fn desired(found: &Found) -> Vec<Desired> {
    match found {
        Found::AdapterFailed(failure) => {
            let progress = if failure.permanent {
                Desired::stalled(failure.reason, failure.message.clone())
            } else {
                Desired::reconciling(failure.reason, format!("retrying: {}", failure.message))
            };
            vec![
                Desired::new(READY, false, failure.reason, failure.message.clone()),
                progress,
            ]
        }
        Found::Probed { probe, circuit } => {
            let trouble: Option<(&str, String)> = match (circuit, probe) {
                (CircuitState::Open, _) => Some((
                    reason::CIRCUIT_OPEN,
                    "calls are paused after repeated failures; a trial call is let through once the circuit's openFor has passed".into(),
                )),
                (CircuitState::HalfOpen, _) => Some((
                    reason::CIRCUIT_HALF_OPEN,
                    "a trial call decides whether calls resume".into(),
                )),
                (_, Probe::Answered(status)) => {
                    Some(("HealthCheckFailed", format!("the health check answered HTTP {status}")))
                }
                (_, Probe::Failed { reason, message }) => Some((reason, message.clone())),
                (_, Probe::Healthy | Probe::NotConfigured) => None,
            };
            match trouble {
                Some((why, message)) => vec![
                    Desired::new(READY, false, why, message.clone()),
                    Desired::new(DEGRADED, true, why, message.clone()),
                    Desired::reconciling(why, message),
                ],
                None => {
                    let ready = match probe {
                        Probe::NotConfigured => Desired::new(
                            READY,
                            true,
                            "Configured",
                            "credentials loaded; no health check configured",
                        ),
                        _ => Desired::new(READY, true, "Reachable", "the health check answered"),
                    };
                    vec![ready, Desired::new(DEGRADED, false, "Healthy", "calls flow")]
                }
            }
        }
    }
}

/// Calls the health check through the request port, if one is configured.
async fn probe(target: &impl TargetRequests, check: Option<&crate::api::target_system::HealthCheck>) -> Probe {
    let Some(check) = check else {
        return Probe::NotConfigured;
    };
    let call = HttpCall {
        operation: "health".into(),
        method: HttpMethod::Get,
        path: check.path.clone(),
        query: vec![],
        headers: vec![],
        body: None,
        base: None,
    };
    match target.send(call).await {
        Ok(answer) if answer.is_success() => Probe::Healthy,
        Ok(answer) => Probe::Answered(answer.status),
        Err(e) => Probe::Failed {
            reason: e.reason(),
            message: e.to_string(),
        },
    }
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
    let endpoint = match ctx.adapter_for(&ts).await {
        Ok(_) => ctx.target_for(&ts).await,
        Err(failure) => Err(failure),
    };
    let (found, circuit) = match endpoint {
        Err(failure) => (Found::AdapterFailed(failure), None),
        Ok(target) => {
            let probe = probe(target.as_ref(), ts.spec.health_check.as_ref()).await;
            let circuit = target.circuit_state();
            (Found::Probed { probe, circuit }, Some(circuit))
        }
    };
    let desired = desired(&found);
    let previous = ts.status.clone().unwrap_or_default();
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
        // The probe time moves only with the rest: an unchanged probe writes nothing.
        let api: Api<TargetSystem> = Api::namespaced(ctx.client.clone(), &ts.namespace().unwrap_or_default());
        StatusWriter::new(&ctx, api, ts.as_ref(), KIND, ts.status.clone())
            .unconditional()
            .write(next)
            .await?;
    }
    ctx.metrics.observe_reconcile(KIND, started.elapsed());
    Ok(Action::requeue(interval))
}

pub fn error_policy(ts: Arc<TargetSystem>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(KIND, "WriteStatusFailed");
    tracing::warn!(name = %ts.name_any(), error = %error, "TargetSystem reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::{RECONCILING, STALLED};

    fn get<'a>(desired: &'a [Desired], type_: &str) -> Option<(bool, &'a str)> {
        desired
            .iter()
            .find(|d| d.type_ == type_)
            .map(|d| (d.is_true(), d.reason.as_str()))
    }

    #[test]
    fn a_closed_circuit_and_a_healthy_probe_is_ready_and_nothing_else() {
        let d = desired(&Found::Probed {
            probe: Probe::Healthy,
            circuit: CircuitState::Closed,
        });
        assert_eq!(get(&d, READY), Some((true, "Reachable")));
        assert_eq!(get(&d, DEGRADED), Some((false, "Healthy")));
        assert_eq!(get(&d, RECONCILING), None);
        assert_eq!(get(&d, STALLED), None);
    }

    #[test]
    fn an_open_circuit_is_not_ready_even_without_a_health_check() {
        let d = desired(&Found::Probed {
            probe: Probe::NotConfigured,
            circuit: CircuitState::Open,
        });
        assert_eq!(get(&d, READY), Some((false, reason::CIRCUIT_OPEN)));
        assert_eq!(get(&d, DEGRADED), Some((true, reason::CIRCUIT_OPEN)));
        assert_eq!(get(&d, RECONCILING), Some((true, reason::CIRCUIT_OPEN)));
    }

    #[test]
    fn a_failing_probe_is_reconciling_and_a_broken_adapter_stalled() {
        let d = desired(&Found::Probed {
            probe: Probe::Answered(503),
            circuit: CircuitState::Closed,
        });
        assert_eq!(get(&d, READY), Some((false, "HealthCheckFailed")));
        assert_eq!(get(&d, RECONCILING), Some((true, "HealthCheckFailed")));
        let d = desired(&Found::AdapterFailed(Failure::permanent("AdapterInvalid", "fix it")));
        assert_eq!(get(&d, STALLED), Some((true, "AdapterInvalid")));
        assert_eq!(get(&d, READY), Some((false, "AdapterInvalid")));
    }
}
