//! `Workflow` (namespaced): a definition — parameters, a DAG of steps with
//! their compensation (the saga's undo), and the triggers that start runs.
//! Runs are `WorkflowRun` objects; each pins the definition it started with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::adapter::HttpRequestTemplate;
use super::common::{Duration, ObjectRef, SecretKeyRef, any_value, conditions_schema, free_form_object};

/// A workflow definition.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "A Workflow defines a DAG of steps across external systems — calls, owned ExternalResources, approvals, waits — with retries, compensation (a saga's undo), fan-out and the triggers (schedules, a signed webhook) that start WorkflowRuns of it.",
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    status = "WorkflowStatus",
    shortname = "twf",
    category = "tether",
    printcolumn = r#"{"name":"Steps","type":"integer","jsonPath":".status.stepCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last-Run","type":"string","jsonPath":".status.lastRun"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Inputs of a run, available to expressions as `$params.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub parameters: Vec<Parameter>,

    /// The steps, run in dependency order (`dependsOn`); steps without a
    /// dependency between them run in parallel.
    #[schemars(length(min = 1, max = 100), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    // An unknown `dependsOn` entry is not refused here: a CEL rule cannot
    // name the step and the value within the API server's cost budget. The
    // Workflow's Ready condition does (`step "b" depends on "ghost"`).
    pub steps: Vec<Step>,

    /// What a failed run does: `Compensate` runs the `compensate` action of
    /// every completed step in reverse dependency order; `Stop` leaves
    /// everything as it is.
    #[serde(default)]
    pub on_failure: FailurePolicy,

    /// Outputs of a run: name to expression over `$steps`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub outputs: BTreeMap<String, String>,

    /// Longest a run may take before it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// What starts runs besides `kubectl create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Triggers>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    /// The parameter's name: `$params.<name>` in expressions.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub name: String,
    /// What the parameter is for, for the people who start runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// JSON type the value must have.
    #[serde(default, rename = "type")]
    pub type_: ParameterType,
    /// Value used when a run does not set the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub default: Option<Value>,
    /// A run without this parameter (and no default) is refused.
    #[serde(default)]
    pub required: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    #[default]
    String,
    Number,
    Boolean,
    Object,
    Array,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Compensate,
    Stop,
}

/// One node of the DAG. Exactly one of `call`, `resource`, `approval` and
/// `wait` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.call) ? 1 : 0) + (has(self.resource) ? 1 : 0) + (has(self.approval) ? 1 : 0) + (has(self.wait) ? 1 : 0) == 1").message("a step sets exactly one of call, resource, approval or wait"))]
#[x_kube(validation = Rule::new("!has(self.dependsOn) || !(self.name in self.dependsOn)").message("a step cannot depend on itself"))]
#[x_kube(validation = Rule::new("!has(self.parallelism) || has(self.forEach)").message("parallelism applies only to a step with forEach"))]
#[x_kube(validation = Rule::new("!has(self.forEach) || !(has(self.wait) || has(self.approval))").message("forEach is for call and resource steps; a wait or approval step waits once for the whole step"))]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Unique within the workflow; used by `dependsOn` and `$steps.<name>`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub name: String,

    /// Steps that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "set"), inner(length(max = 63)))]
    pub depends_on: Vec<String>,

    /// Condition; when false the step is skipped (and so are steps that
    /// depend on it only through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub when: Option<String>,

    /// Expression yielding an array: the step runs once per item (`$item`,
    /// `$index`), and dependents wait for every item (fan-in). Only for
    /// `call` and `resource` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub for_each: Option<String>,

    /// Items of a `forEach` run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallelism: Option<i32>,

    /// Retries of a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<StepRetry>,

    /// Longest the step may take, from its first attempt: retries, polls
    /// and waiting for a callback included. Past it the step fails for good
    /// (a timeout is never retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// Call an adapter action or send an HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallStep>,
    /// Ensure an ExternalResource owned by the run and wait until it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceStep>,
    /// Pause until an Approval decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalStep>,
    /// Pause for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitStep>,

    /// The saga's undo: run when a later step fails (or the run is
    /// cancelled) after this one succeeded. A `resource` step's undo is the
    /// deletion of its ExternalResource and needs no `compensate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<CallStep>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRetry {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 100))]
    pub limit: i32,
    /// Delay before the first retry; doubles each time, with jitter.
    #[serde(default = "default_step_backoff")]
    pub backoff: Duration,
    /// Longest delay between retries.
    #[serde(default = "default_step_max_backoff")]
    pub max_backoff: Duration,
    /// Which failures are retried.
    #[serde(default = "default_retry_on")]
    #[schemars(length(max = 4))]
    pub on: Vec<RetryOn>,
}

fn default_step_backoff() -> Duration {
    "1s".into()
}
fn default_step_max_backoff() -> Duration {
    "1m".into()
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Transient]
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RetryOn {
    /// 5xx, 429, timeouts and connection failures.
    Transient,
    /// `successWhen` evaluated false.
    Condition,
    /// Any failure.
    All,
}

/// A call on a TargetSystem: an adapter action by name, or a raw request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.action) != has(self.request)").message("a call sets exactly one of action (an adapter action name) or request (an HTTP request)"))]
#[serde(rename_all = "camelCase")]
pub struct CallStep {
    /// The TargetSystem that receives the call.
    pub target_ref: ObjectRef,
    /// Name of an action of the target's Adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub action: Option<String>,
    /// Input of the action: an expression over `$params`, `$steps`, `$item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub input: Option<String>,
    /// A raw HTTP request relative to the target's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpRequestTemplate>,
    /// Condition over the answer `{status, body}` (an adapter action's
    /// answer, or the raw request's) that means success; by default the
    /// adapter's verdict, or any 2xx status for a raw request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub success_when: Option<String>,
    /// Outputs: name to expression over the response (`.body`, `.status`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub outputs: BTreeMap<String, String>,
    /// Asynchronous completion: repeat a request until a condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_until: Option<PollUntil>,
    /// Asynchronous completion: the step waits for a POST to its one-time
    /// callback URL (`$callback.url` in the request), served by `tether run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollUntil {
    /// The request repeated; defaults to GET of the call's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpRequestTemplate>,
    /// Condition over the poll response that means done.
    #[schemars(length(min = 1, max = 4096))]
    pub condition: String,
    /// Condition that means failed (stop polling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub fail_when: Option<String>,
    /// Time between polls.
    #[serde(default = "default_poll_every")]
    pub interval: Duration,
    /// Give up after this long.
    #[serde(default = "default_poll_timeout")]
    pub timeout: Duration,
}

fn default_poll_every() -> Duration {
    "10s".into()
}
fn default_poll_timeout() -> Duration {
    "1h".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Callback {
    /// HMAC-SHA256 key that signs the step's one-time callback tokens.
    pub secret_ref: SecretKeyRef,
    /// Give up after this long.
    #[serde(default = "default_poll_timeout")]
    pub timeout: Duration,
    /// Condition over the callback's JSON body that means success; by
    /// default any callback succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub success_when: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStep {
    /// The TargetSystem that holds the object.
    pub target_ref: ObjectRef,
    /// The resource type of the target's Adapter.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub type_: String,
    /// Expression yielding the desired properties.
    #[schemars(length(min = 1, max = 16384))]
    pub properties: String,
    /// Wait this long for `Ready` before the step fails.
    #[serde(default = "default_poll_timeout")]
    pub ready_timeout: Duration,
    /// Keep the external object when the run ends (the ExternalResource is
    /// released, not deleted) instead of tying it to the run.
    #[serde(default)]
    pub keep: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.defaultDecision) || has(self.timeout)").message("defaultDecision needs a timeout"))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStep {
    /// What the approver is asked, shown in Events and `tether runs describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// Decide by default after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// The decision taken when the timeout passes (default `Reject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_decision: Option<super::approval::Decision>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitStep {
    /// How long to wait.
    pub duration: Duration,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// Cron schedules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<ScheduleTrigger>,
    /// An HTTP endpoint of `tether run` that starts a run per signed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTrigger>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleTrigger {
    /// The schedule's name: the label `tether.dev/schedule` of its runs.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub name: String,
    /// Cron expression: five fields (`*/5 * * * *`), or six with seconds
    /// first (`*/30 * * * * *`).
    #[schemars(length(min = 9, max = 256))]
    pub cron: String,
    /// IANA time zone of the schedule.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// What to do when a run is due while the previous one still runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Parameters of the runs it creates.
    #[serde(default)]
    #[schemars(schema_with = "free_form_object")]
    pub parameters: Value,
    /// Finished successful runs to keep.
    #[serde(default = "default_success_history")]
    #[schemars(range(min = 0, max = 1000))]
    pub successful_runs_history_limit: i32,
    /// Finished failed runs to keep.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 1000))]
    pub failed_runs_history_limit: i32,
}

fn default_time_zone() -> String {
    "UTC".into()
}
fn default_success_history() -> i32 {
    3
}
fn default_failed_history() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// The schedule's name (`spec.triggers.schedules[].name`).
    pub name: String,
    /// The last time the schedule was due (whether it created a run or its
    /// concurrency policy skipped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// The next time the schedule is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<DateTime<Utc>>,
    /// The run it last created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// Times the concurrency policy `Forbid` skipped a run.
    #[serde(default)]
    pub skipped: i64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start the new run anyway.
    #[default]
    Allow,
    /// Skip the new run.
    Forbid,
    /// Cancel the running one, then start the new one.
    Replace,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTrigger {
    /// HMAC-SHA256 key; requests carry `X-Tether-Timestamp: <unix seconds>`,
    /// `X-Tether-Delivery: <id>` and `X-Tether-Signature: sha256=<hex>` of
    /// `"{timestamp}.{delivery}.{body}"`.
    pub secret_ref: SecretKeyRef,
    /// Expression over the request body that yields the run's parameters.
    #[serde(default = "default_webhook_parameters")]
    #[schemars(length(min = 1, max = 4096))]
    pub parameters: String,
}

fn default_webhook_parameters() -> String {
    ".".into()
}

/// Whether the definition compiles (Ready) and the state of each schedule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_count: Option<i32>,
    /// Hash of the current spec; runs record the hash they pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// Name of the newest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// Per schedule: when it last fired, when it fires next, its last run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<ScheduleStatus>,
    /// The webhook path, when a webhook trigger is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
    /// `Ready`: the definition is valid (acyclic, expressions compile,
    /// schedules parse). `Stalled` (present only while `True`): the
    /// definition must be fixed; the message lists the problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
