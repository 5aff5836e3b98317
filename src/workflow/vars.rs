//! The variables of every workflow expression, by name: `$params`,
//! `$steps`, `$item`, `$index`, `$run` and `$callback`.

use serde_json::{Map, Value, json};

use crate::api::WorkflowRun;
use crate::api::workflow_run::WorkflowRunStatus;

/// The names, in the order [`Vars::refs`] gives the values.
pub const NAMES: &[&str] = &["$params", "$steps", "$item", "$index", "$run", "$callback"];

/// The values of [`NAMES`] for one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vars {
    /// `$params`: the run's parameters, defaults applied.
    pub params: Value,
    /// `$steps`: each step's phase, outputs and item count.
    pub steps: Value,
    /// `$item`: the item of a fan-out, or null.
    pub item: Value,
    /// `$index`: the item's index, or null.
    pub index: Value,
    /// `$run`: the run's name, namespace and uid.
    pub run: Value,
    /// `$callback`: the one-time URL and token of a step that waits for a
    /// callback, or null.
    pub callback: Value,
}

impl Vars {
    /// The variables of a run-level expression (`when`, `forEach`,
    /// outputs): no item, no callback.
    pub fn of_run(params: &Value, status: &WorkflowRunStatus, run: &WorkflowRun) -> Self {
        Self {
            params: params.clone(),
            steps: steps_value(status),
            run: run_value(run),
            ..Self::default()
        }
    }

    /// The values as the expression evaluator takes them, in [`NAMES`]' order.
    pub fn refs(&self) -> [&Value; 6] {
        let Self {
            params,
            steps,
            item,
            index,
            run,
            callback,
        } = self;
        [params, steps, item, index, run, callback]
    }
}

/// `$run`: the run's name, namespace and uid.
pub fn run_value(run: &WorkflowRun) -> Value {
    let meta = &run.metadata;
    json!({ "name": meta.name, "namespace": meta.namespace, "uid": meta.uid })
}

/// `$steps`: each step's phase and outputs (and item counts of a fan-out).
pub fn steps_value(status: &WorkflowRunStatus) -> Value {
    let steps: Map<String, Value> = status
        .steps
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!({
                    "phase": s.phase,
                    "outputs": s.outputs.clone().unwrap_or_else(|| json!({})),
                    "items": s.items,
                }),
            )
        })
        .collect();
    Value::Object(steps)
}
