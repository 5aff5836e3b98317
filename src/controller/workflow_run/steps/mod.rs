//! Performing the engine's actions for one run. [`Scope`] reads once what a
//! round needs and sends each action to its step kind — [`call`],
//! [`resource`], [`approval`], [`wait`] — whose file fetches the
//! observation (through a port, the cache or the API), lets the pure
//! decision in `workflow::steps` say what it means, and acts. An action
//! returns the observation the engine needs, or `None` while there is
//! nothing new (an approval not decided yet, a resource not Ready yet).

pub mod approval;
pub mod call;
pub mod resource;
pub mod wait;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::adapter::AnyAdapter;
use crate::api::WorkflowRun;
use crate::api::workflow_run::{StepStatus, WorkflowRunStatus};
use crate::controller::Context;
use crate::http::Target;
use crate::telemetry::{self, StepCall};
use crate::workflow::compile::{Compiled, CompiledStep, StepKind};
use crate::workflow::engine::{Action, FailureClass, Observation};
use crate::workflow::steps::{Failure, eval_items};
use crate::workflow::vars::{Vars, run_value, steps_value};

pub use resource::{RESOURCE_MANAGER, RUN_LABEL};

/// Everything the actions of one round need, read once.
pub struct Scope<'a> {
    ctx: &'a Context,
    run: &'a WorkflowRun,
    compiled: &'a Compiled,
    params: Value,
    status: &'a WorkflowRunStatus,
    now: DateTime<Utc>,
    /// `$steps` of this round.
    steps: Value,
    /// `forEach` items of the steps the actions name, or why they could
    /// not be computed.
    items: HashMap<String, Result<Arc<Vec<Value>>, String>>,
}

/// What an action asks of a step kind (an undo goes to
/// [`call::compensate`] or [`resource::delete`]).
#[derive(Debug, Clone, Copy)]
pub enum Do<'k> {
    /// Send one attempt (or item) with its idempotency key.
    Start { item: Option<i32>, key: &'k str },
    /// Look at the waiting step.
    Check,
    /// Undo a completed step (or item).
    Compensate { item: Option<i32>, key: &'k str },
}

impl<'a> Scope<'a> {
    /// The scope of one round's `actions`: `$steps` once, and the items of
    /// every forEach step an action names, evaluated once.
    pub fn new(
        ctx: &'a Context,
        run: &'a WorkflowRun,
        compiled: &'a Compiled,
        params: Value,
        status: &'a WorkflowRunStatus,
        now: DateTime<Utc>,
        actions: &[Action],
    ) -> Self {
        let mut scope = Self {
            ctx,
            run,
            compiled,
            params,
            status,
            now,
            steps: steps_value(status),
            items: HashMap::new(),
        };
        for action in actions {
            let (Action::Run {
                step, item: Some(_), ..
            }
            | Action::Compensate {
                step, item: Some(_), ..
            }) = action
            else {
                continue;
            };
            if scope.items.contains_key(step) {
                continue;
            }
            let Some(for_each) = scope.step(step).and_then(|(c, _)| c.for_each.as_ref()) else {
                continue;
            };
            let items = eval_items(for_each, &scope.vars(None, step)).map(Arc::new);
            scope.items.insert(step.clone(), items);
        }
        scope
    }

    /// Performs one action: the step kind decides. Traced as the step's
    /// span, which the calls it makes go under.
    pub async fn perform(&self, action: &Action) -> Option<Observation> {
        let (step, verb, item, call) = match action {
            Action::Run {
                step,
                item,
                attempt,
                idempotency_key,
            } => (
                step,
                "start",
                *item,
                StepCall {
                    attempt: Some(*attempt),
                    idempotency_key: Some(idempotency_key.clone()),
                },
            ),
            Action::Check { step } => (step, "check", None, StepCall::default()),
            Action::Compensate {
                step,
                item,
                idempotency_key,
            } => (
                step,
                "compensate",
                *item,
                StepCall {
                    attempt: None,
                    idempotency_key: Some(idempotency_key.clone()),
                },
            ),
        };
        let kind = self.step(step).map_or("unknown", |(c, _)| c.kind.label());
        telemetry::in_step(step, kind, verb, item, call, self.perform_untraced(action)).await
    }

    async fn perform_untraced(&self, action: &Action) -> Option<Observation> {
        let (name, what) = match action {
            Action::Run {
                step,
                item,
                idempotency_key,
                ..
            } => (
                step,
                Do::Start {
                    item: *item,
                    key: idempotency_key,
                },
            ),
            Action::Check { step } => (step, Do::Check),
            Action::Compensate {
                step,
                item,
                idempotency_key,
            } => (
                step,
                Do::Compensate {
                    item: *item,
                    key: idempotency_key,
                },
            ),
        };
        let Some((compiled, status)) = self.step(name) else {
            return Some(Observation::Failed {
                step: name.clone(),
                item: None,
                message: format!("step {name:?} is not in the pinned definition"),
                class: FailureClass::Final,
            });
        };
        let item = match what {
            Do::Start { item, .. } | Do::Compensate { item, .. } => item,
            Do::Check => None,
        };
        if let Some(message) = self.items_error(name, item) {
            return Some(match what {
                Do::Compensate { .. } => Observation::CompensationFailed {
                    step: name.clone(),
                    item,
                    message,
                    class: FailureClass::Final,
                },
                _ => Observation::Failed {
                    step: name.clone(),
                    item,
                    message,
                    class: FailureClass::Final,
                },
            });
        }
        let step = Step { name, compiled, status };
        match (&compiled.kind, what) {
            // A resource step's ExternalResource is deleted, unless kept.
            (StepKind::Resource(resource), Do::Compensate { item, .. }) if !resource.keep => {
                resource::delete(self, &step, item).await
            }
            // Every other undo is the step's `compensate` call, if any.
            (_, Do::Compensate { item, key }) => Some(call::compensate(self, &step, item, key).await),
            (StepKind::Call(call), _) => call::perform(self, &step, call, what).await,
            (StepKind::Resource(resource), _) => resource::perform(self, &step, resource, what).await,
            (StepKind::Approval(gate), _) => approval::perform(self, &step, gate, what).await,
            (StepKind::Wait(delay), _) => Some(wait::perform(self, &step, *delay, what)),
        }
    }

    /// Why the items of `step` cannot be computed, if they cannot (their
    /// inputs are pinned, so only a broken definition gets here).
    fn items_error(&self, step: &str, item: Option<i32>) -> Option<String> {
        item?;
        match self.items.get(step) {
            Some(Err(message)) => Some(format!("forEach: {message}")),
            _ => None,
        }
    }

    fn namespace(&self) -> String {
        self.run.namespace().unwrap_or_default()
    }

    fn vars(&self, item: Option<i32>, step: &str) -> Vars {
        let (value, index) = match item {
            Some(i) => (
                self.items
                    .get(step)
                    .and_then(|items| items.as_ref().ok()?.get(usize::try_from(i).ok()?).cloned())
                    .unwrap_or(Value::Null),
                json!(i),
            ),
            None => (Value::Null, Value::Null),
        };
        Vars {
            params: self.params.clone(),
            steps: self.steps.clone(),
            item: value,
            index,
            run: run_value(self.run),
            callback: Value::Null,
        }
    }

    fn step(&self, name: &str) -> Option<(&'a CompiledStep, &'a StepStatus)> {
        let i = self.compiled.def.dag.index(name)?;
        Some((self.compiled.steps.get(i)?, self.status.steps.get(i)?))
    }

    /// The two ports of TargetSystem `target`: its adapter and its request
    /// API.
    async fn endpoints(&self, target: &str) -> Result<(AnyAdapter, Arc<Target>), Failure> {
        let ts = self.ctx.target_system(&self.namespace(), target).ok_or_else(|| {
            (
                format!(
                    "TargetSystem {target:?} does not exist in namespace {:?}",
                    self.namespace()
                ),
                FailureClass::Transient,
            )
        })?;
        let class = |f: &crate::controller::Failure| {
            if f.permanent {
                FailureClass::Permanent
            } else {
                FailureClass::Transient
            }
        };
        let adapter = self
            .ctx
            .adapter_for(&ts)
            .await
            .map_err(|f| (f.message.clone(), class(&f)))?;
        let requests = self
            .ctx
            .target_for(&ts)
            .await
            .map_err(|f| (f.message.clone(), class(&f)))?;
        Ok((adapter, requests))
    }
}

/// The step an action names, as compiled and as it stands.
pub struct Step<'a> {
    pub name: &'a str,
    pub compiled: &'a CompiledStep,
    pub status: &'a StepStatus,
}

impl Step<'_> {
    fn started(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.status.started_at.unwrap_or(now)
    }

    fn waiting(&self, until: Option<DateTime<Utc>>, outputs: Option<Value>) -> Observation {
        Observation::Waiting {
            step: self.name.to_owned(),
            until,
            outputs,
        }
    }

    fn failed(&self, item: Option<i32>, (message, class): Failure) -> Observation {
        Observation::Failed {
            step: self.name.to_owned(),
            item,
            message,
            class,
        }
    }
}
