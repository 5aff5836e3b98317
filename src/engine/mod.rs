//! The workflow engine: a pure state machine. `advance(definition, status,
//! observations, now)` returns the next status and the actions to take; it
//! has no I/O, no clock and no randomness, so a run is a sequence of such
//! steps that a reconcile performs and records, and a controller that
//! restarts resumes from status alone.
//!
//! Rules: a step starts when every step it depends on has succeeded; a
//! failed attempt is retried up to the step's limit; a step that fails for
//! good (or a cancel) stops new starts and, with `onFailure: Compensate`,
//! undoes the completed steps in reverse dependency order — a step is
//! compensated only after every step that depended on it is. Every action
//! carries an idempotency key derived from run, step and attempt.

pub mod dag;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::api::workflow::{FailurePolicy, WorkflowSpec};
use crate::api::workflow_run::{RunPhase, StepPhase, StepStatus, WorkflowRunStatus};
pub use dag::{Dag, DagError};

/// What the engine needs to know of each step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Whether the step has something to undo.
    pub compensable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub dag: Dag,
    pub steps: Vec<StepInfo>,
    pub on_failure: FailurePolicy,
}

impl Definition {
    pub fn from_spec(spec: &WorkflowSpec) -> Result<Self, DagError> {
        let dag = Dag::from_spec(spec)?;
        let steps = spec
            .steps
            .iter()
            .map(|s| StepInfo {
                retries: s.retry.as_ref().map_or(0, |r| r.limit.max(0) as u32),
                compensable: s.compensate.is_some() || s.resource.is_some(),
            })
            .collect();
        Ok(Self {
            dag,
            steps,
            on_failure: spec.on_failure,
        })
    }
}

/// What happened since the last `advance`, as the reconciler saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Succeeded { step: String, outputs: Value },
    Failed { step: String, message: String },
    Compensated { step: String },
    CompensationFailed { step: String, message: String },
    Cancelled,
}

/// What the reconciler must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run {
        step: String,
        attempt: i32,
        idempotency_key: String,
    },
    Compensate {
        step: String,
        idempotency_key: String,
    },
}

/// The idempotency key of one attempt of one step of one run.
pub fn idempotency_key(run: &str, step: &str, attempt: i32) -> String {
    format!("{run}/{step}/{attempt}")
}

fn compensation_key(run: &str, step: &str) -> String {
    format!("{run}/{step}/compensate")
}

fn is_terminal(phase: RunPhase) -> bool {
    matches!(
        phase,
        RunPhase::Succeeded
            | RunPhase::Failed
            | RunPhase::Compensated
            | RunPhase::CompensationFailed
            | RunPhase::Cancelled
    )
}

/// One step of the state machine.
pub fn advance(
    def: &Definition,
    run: &str,
    status: &WorkflowRunStatus,
    observations: &[Observation],
    now: DateTime<Utc>,
) -> (WorkflowRunStatus, Vec<Action>) {
    let mut next = status.clone();
    let mut actions = Vec::new();
    if is_terminal(next.phase) {
        return (next, actions);
    }
    // One status entry per step, in definition order.
    let steps: Vec<StepStatus> = def
        .dag
        .names
        .iter()
        .map(|name| {
            status
                .steps
                .iter()
                .find(|s| &s.name == name)
                .cloned()
                .unwrap_or(StepStatus {
                    name: name.clone(),
                    phase: StepPhase::Pending,
                    attempt: 0,
                    started_at: None,
                    finished_at: None,
                    next_at: None,
                    message: None,
                    outputs: None,
                    items: None,
                    item_details: vec![],
                })
        })
        .collect();
    next.steps = steps;
    if next.phase == RunPhase::Pending {
        next.phase = RunPhase::Running;
        next.started_at = Some(now);
    }

    let mut cancelled = false;
    for observation in observations {
        match observation {
            Observation::Cancelled => cancelled = true,
            Observation::Succeeded { step, outputs } => {
                if let Some(s) = step_mut(&mut next, def, step).filter(|s| s.phase == StepPhase::Running) {
                    s.phase = StepPhase::Succeeded;
                    s.outputs = Some(outputs.clone());
                    s.finished_at = Some(now);
                    s.message = None;
                }
            }
            Observation::Failed { step, message } => {
                let Some(i) = def.dag.index(step) else { continue };
                let retries = def.steps[i].retries as i32;
                let s = &mut next.steps[i];
                if s.phase != StepPhase::Running {
                    continue;
                }
                s.message = Some(message.clone());
                if s.attempt <= retries && next.phase == RunPhase::Running {
                    s.attempt += 1;
                    actions.push(Action::Run {
                        step: s.name.clone(),
                        attempt: s.attempt,
                        idempotency_key: idempotency_key(run, &s.name, s.attempt),
                    });
                } else {
                    s.phase = StepPhase::Failed;
                    s.finished_at = Some(now);
                }
            }
            Observation::Compensated { step } => {
                if let Some(s) = step_mut(&mut next, def, step).filter(|s| s.phase == StepPhase::Compensating) {
                    s.phase = StepPhase::Compensated;
                    s.finished_at = Some(now);
                }
            }
            Observation::CompensationFailed { step, message } => {
                if let Some(s) = step_mut(&mut next, def, step).filter(|s| s.phase == StepPhase::Compensating) {
                    s.phase = StepPhase::CompensationFailed;
                    s.message = Some(message.clone());
                    s.finished_at = Some(now);
                }
            }
        }
    }

    let failed = next.steps.iter().any(|s| s.phase == StepPhase::Failed);
    if next.phase == RunPhase::Running && (failed || cancelled) {
        next.phase = match def.on_failure {
            FailurePolicy::Compensate => RunPhase::Compensating,
            FailurePolicy::Stop if cancelled => RunPhase::Cancelled,
            FailurePolicy::Stop => RunPhase::Failed,
        };
        // A retry scheduled by this very pass is not sent: its step ends
        // failed, so nothing waits for it.
        for action in actions.drain(..) {
            if let Action::Run { step, .. } = action
                && let Some(s) = step_mut(&mut next, def, &step)
            {
                s.phase = StepPhase::Failed;
                s.finished_at = Some(now);
            }
        }
    }
    let running = |next: &WorkflowRunStatus| next.steps.iter().any(|s| s.phase == StepPhase::Running);

    match next.phase {
        RunPhase::Running => {
            for &i in &def.dag.order {
                let ready = def.dag.deps[i]
                    .iter()
                    .all(|&d| next.steps[d].phase == StepPhase::Succeeded);
                let s = &mut next.steps[i];
                if s.phase == StepPhase::Pending && ready {
                    s.phase = StepPhase::Running;
                    s.attempt = 1;
                    s.started_at = Some(now);
                    next.current_step = Some(s.name.clone());
                    actions.push(Action::Run {
                        step: s.name.clone(),
                        attempt: 1,
                        idempotency_key: idempotency_key(run, &s.name, 1),
                    });
                }
            }
            if next.steps.iter().all(|s| s.phase == StepPhase::Succeeded) {
                next.phase = RunPhase::Succeeded;
                next.finished_at = Some(now);
            }
        }
        RunPhase::Compensating if !running(&next) => {
            // Reverse dependency order: a step is undone once nothing that
            // depended on it still stands.
            for &i in def.dag.order.iter().rev() {
                let blocked = def.dag.dependents[i].iter().any(|&d| {
                    matches!(
                        next.steps[d].phase,
                        StepPhase::Succeeded | StepPhase::Compensating | StepPhase::Running
                    )
                });
                let s = &mut next.steps[i];
                if s.phase != StepPhase::Succeeded || blocked {
                    continue;
                }
                if def.steps[i].compensable {
                    s.phase = StepPhase::Compensating;
                    actions.push(Action::Compensate {
                        step: s.name.clone(),
                        idempotency_key: compensation_key(run, &s.name),
                    });
                } else {
                    s.phase = StepPhase::Compensated;
                    s.message = Some("nothing to undo".into());
                }
            }
            let open = next
                .steps
                .iter()
                .any(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Compensating));
            if !open {
                next.left_to_clean_up = next
                    .steps
                    .iter()
                    .filter(|s| s.phase == StepPhase::CompensationFailed)
                    .map(|s| format!("{}: {}", s.name, s.message.as_deref().unwrap_or("compensation failed")))
                    .collect();
                next.phase = if next.left_to_clean_up.is_empty() {
                    RunPhase::Compensated
                } else {
                    RunPhase::CompensationFailed
                };
                next.finished_at = Some(now);
            }
        }
        RunPhase::Failed | RunPhase::Cancelled if running(&next) => {
            // Stop: wait for attempts in flight to report, start nothing.
            next.finished_at = None;
        }
        _ => {}
    }
    if matches!(next.phase, RunPhase::Failed | RunPhase::Cancelled) && !running(&next) {
        next.finished_at.get_or_insert(now);
    }
    let succeeded = next.steps.iter().filter(|s| s.phase == StepPhase::Succeeded).count();
    next.progress = Some(format!("{succeeded}/{}", next.steps.len()));
    (next, actions)
}

fn step_mut<'a>(status: &'a mut WorkflowRunStatus, def: &Definition, name: &str) -> Option<&'a mut StepStatus> {
    def.dag.index(name).and_then(|i| status.steps.get_mut(i))
}

#[cfg(test)]
mod tests;
