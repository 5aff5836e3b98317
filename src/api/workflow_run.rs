//! `WorkflowRun` (namespaced): one execution of a Workflow. Parameters go in
//! through the spec; the status holds the pinned definition and the state of
//! every step, so a restarted controller resumes where the last one stopped.
//! Large fan-outs keep aggregate counts and detail only for failures.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{ObjectRef, any_value, conditions_schema, free_form_object};

/// One execution of a Workflow.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "A WorkflowRun is one execution of a Workflow with its parameters. Its status pins the definition it started with and records every step's state, attempt and outputs, so a restarted controller resumes where the last one stopped; deleting a run cancels it.",
    group = "tether.dev",
    version = "v1alpha1",
    kind = "WorkflowRun",
    namespaced,
    status = "WorkflowRunStatus",
    shortname = "twr",
    category = "tether",
    selectable = ".spec.workflowRef.name",
    printcolumn = r#"{"name":"Workflow","type":"string","jsonPath":".spec.workflowRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.currentStep"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.retryOf) == has(oldSelf.retryOf) && (!has(self.retryOf) || self.retryOf == oldSelf.retryOf)").message("retryOf is immutable: start a new run instead"))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunSpec {
    /// The Workflow to run (same namespace). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("workflowRef is immutable: start a new run instead"))]
    pub workflow_ref: ObjectRef,

    /// Values of the workflow's parameters. Immutable.
    #[serde(default)]
    #[schemars(schema_with = "free_form_object")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("parameters are immutable: start a new run instead"))]
    pub parameters: Value,

    /// Set to true to cancel the run; completed steps are compensated.
    /// Cannot be set back to false.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("a cancelled run cannot be resumed"))]
    pub cancel: bool,

    /// The run this one retries (same namespace): a run that ended
    /// `Failed`, `Compensated` or `Cancelled`. This run executes that run's
    /// pinned definition with the same `workflowRef` and `parameters`; it
    /// keeps the outcome and outputs of every step that succeeded (or was
    /// skipped) there and whose dependencies were all kept, and runs the
    /// others again, with its own idempotency keys. `tether runs retry NAME`
    /// creates such a run. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("retryOf must be the name of a WorkflowRun"))]
    pub retry_of: Option<String>,
}

/// Phases of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RunPhase {
    #[default]
    Pending,
    Running,
    WaitingForApproval,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
    Cancelled,
}

/// Phases of one step.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StepPhase {
    #[default]
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Compensating,
    Compensated,
    CompensationFailed,
}

/// The definition a run executes, pinned when it started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinnedDefinition {
    /// `metadata.generation` of the Workflow when the run started.
    pub generation: i64,
    /// Hash of the pinned spec.
    pub hash: String,
    /// A copy of the Workflow's spec at that generation.
    #[schemars(schema_with = "free_form_object")]
    pub spec: Value,
}

/// Counts of a `forEach` step's items.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemCounts {
    /// Items the `forEach` expression yielded.
    pub total: i32,
    /// Items started so far, in index order.
    #[serde(default)]
    pub started: i32,
    /// Items under way now.
    pub running: i32,
    /// Items that succeeded.
    pub succeeded: i32,
    /// Items that failed for good.
    pub failed: i32,
    /// Items whose compensation started, in index order (failed items are
    /// skipped: they have nothing to undo).
    #[serde(default)]
    pub compensation_started: i32,
    /// Items undone.
    pub compensated: i32,
}

/// Detail of one item, kept only while it runs or when it failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemStatus {
    /// The item's position in the `forEach` array, from 0.
    pub index: i32,
    pub phase: StepPhase,
    /// Attempt number of the current or last attempt, from 1.
    #[serde(default)]
    pub attempt: i32,
    /// When the next retry of this item is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Attempts to undo this step that failed transiently (the engine
    /// retries them with the step's backoff, up to three times).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub undo_attempts: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's name in the Workflow.
    pub name: String,
    pub phase: StepPhase,
    /// Attempt number of the current or last attempt, from 1.
    #[serde(default)]
    pub attempt: i32,
    /// When the step started (its first attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the step ended (succeeded, failed, skipped or undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// When the next retry or poll is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// What happened last: why an attempt failed, what the step waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Outputs extracted from the step's response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub outputs: Option<Value>,
    /// For `forEach` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,
    /// Items running now and items that failed (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub item_details: Vec<ItemStatus>,
    /// Attempts to undo this step that failed transiently (the engine
    /// retries them with the step's backoff, up to three times).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub undo_attempts: i32,
    /// The run (`spec.retryOf`) whose outcome of this step this run kept
    /// instead of running it again; a `resource` step's ExternalResource
    /// keeps that run's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_from: Option<String>,
}

impl StepStatus {
    /// A step that has not started.
    pub fn pending(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            phase: StepPhase::Pending,
            attempt: 0,
            started_at: None,
            finished_at: None,
            next_at: None,
            message: None,
            outputs: None,
            items: None,
            item_details: vec![],
            undo_attempts: 0,
            kept_from: None,
        }
    }
}

/// The pinned definition, the phase, every step's state and the run's
/// outputs: the state store a restarted controller resumes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: RunPhase,
    /// The definition this run executes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<PinnedDefinition>,
    /// Step most recently started (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// `succeeded/total` steps (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the run started (pinned its definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The W3C trace id (32 hex digits) of the run's trace — its
    /// reconciles, steps and calls to targets — when the controller exports
    /// traces (`tether run --otlp-endpoint`); `tether runs describe` prints
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub trace_id: Option<String>,
    /// Every step of the pinned definition, in its order, with its state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub steps: Vec<StepStatus>,
    /// Outputs of the run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
    /// What a failed compensation left behind, for a human to clean up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_to_clean_up: Vec<String>,
    /// `Succeeded`: `Unknown` while the run is under way, then `True` (every
    /// step succeeded) or `False` (reason `Failed`, `Compensated`,
    /// `CompensationFailed`, `Cancelled`); `kubectl wait
    /// --for=condition=Succeeded=False` waits for a failure. `Ready`: `True`
    /// only once the run succeeded. `Reconciling` (present only while
    /// `True`): the run is under way (reason `Running`, `WaitingForApproval`,
    /// `Compensating`). `Stalled` (present only while `True`): the run ended
    /// badly and will not progress again. Every status write sets
    /// `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
