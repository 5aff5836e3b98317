//! Types shared by several kinds: references, durations, free-form JSON and
//! the condition list. Pure data: no client, no I/O.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of every Tether kind.
pub const GROUP: &str = "tether.dev";
/// API version of every Tether kind.
pub const VERSION: &str = "v1alpha1";

/// A reference to an object of a known kind in the same namespace (or, for a
/// cluster-scoped kind such as `Adapter`, in the cluster).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ObjectRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl ObjectRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// One key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the same namespace whose keys are named by the field that uses it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Regular expression for a duration: one or more `<number><unit>` with unit
/// `ms`, `s`, `m` or `h`, as in `500ms`, `30s`, `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(ms|s|m|h))+$";

/// A length of time written the way Kubernetes users write them: `30s`, `5m`,
/// `1h30m`, `250ms`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The duration as a `std::time::Duration`, or `None` when the text does
    /// not follow [`DURATION_PATTERN`] (the API server rejects such text, so
    /// `None` only appears for objects that bypassed validation).
    pub fn to_std(&self) -> Option<std::time::Duration> {
        parse_duration(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": "A duration such as 500ms, 30s, 5m or 1h30m."
        })
    }
}

/// Parses `1h30m`, `250ms`, `45s`. Returns `None` on anything else.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let (number, after) = rest.split_at_checked(digits)?;
        let value: u64 = number.parse().ok()?;
        rest = after;
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = rest.get(len..)?;
    }
    Some(total)
}

/// Schema of a JSON object whose fields the user chooses (properties sent to
/// an external system, parameters of a run).
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of any JSON value (a parameter default, an output).
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of the `conditions` list: standard `meta/v1` conditions merged by
/// `type`, so server-side apply owns each condition separately.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Condition types shared by every kind. Every kind follows the Kubernetes
/// API conventions and kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus`), so
/// `kubectl wait`, Flux, kpt and Argo CD read them the same way:
///
/// - `Ready`: the object has reached what its spec asks for (its meaning per
///   kind is in the kind's status documentation);
/// - `Reconciling` (present only while `True`): work is under way and the
///   object is expected to get there by itself; kstatus `InProgress`;
/// - `Stalled` (present only while `True`): the object cannot progress until
///   something changes (its spec, a Secret, the external object); kstatus
///   `Failed`;
/// - `status.observedGeneration` on every status write: a status older than
///   the spec reads `InProgress`.
pub mod condition {
    /// The object has reached the state its spec asks for.
    pub const READY: &str = "Ready";
    /// The last reconcile reached the external system and applied the spec.
    pub const SYNCED: &str = "Synced";
    /// Work is under way (abnormal-true: present only while `True`).
    pub const RECONCILING: &str = "Reconciling";
    /// No progress without a change (abnormal-true: present only while `True`).
    pub const STALLED: &str = "Stalled";
    /// A WorkflowRun's outcome: `Unknown` until it ends, then `True` or
    /// `False` (the Tekton / Knative convention).
    pub const SUCCEEDED: &str = "Succeeded";
    /// A TargetSystem is failing or its circuit is not closed.
    pub const DEGRADED: &str = "Degraded";
    /// Another ExternalResource manages the same external object.
    pub const CONFLICT: &str = "Conflict";
    /// The spec cannot be acted on until it is changed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// An Approval was taken by a run (`True`), or does not count for the
    /// run it names (`False`).
    pub const APPLIED: &str = "Applied";

    /// Condition types that are present only while `True` (kstatus'
    /// "abnormal-true" polarity): a status write that does not set them
    /// removes them.
    pub const ABNORMAL_TRUE: [&str; 2] = [RECONCILING, STALLED];
}

/// Condition reasons that more than one kind (or a GitOps health check)
/// relies on. A health check matches these strings: change them only with
/// the checks under `deploy/argocd`.
pub mod reason {
    /// The target's circuit breaker is open: calls are refused until a trial
    /// call succeeds.
    pub const CIRCUIT_OPEN: &str = "CircuitOpen";
    /// The circuit lets one trial call through.
    pub const CIRCUIT_HALF_OPEN: &str = "CircuitHalfOpen";
    /// The external object differs from the spec and the policy is to
    /// report, not correct.
    pub const DRIFT_DETECTED: &str = "DriftDetected";
    /// A create is in flight.
    pub const CREATING: &str = "Creating";
    /// The external object does not exist and will not be created.
    pub const NOT_FOUND: &str = "NotFound";
    /// Another ExternalResource manages the external object.
    pub const CONFLICT: &str = "Conflict";
    /// A run's steps are executing.
    pub const RUNNING: &str = "Running";
    /// A run waits for an Approval.
    pub const WAITING_FOR_APPROVAL: &str = "WaitingForApproval";
    /// A run undoes its completed steps.
    pub const COMPENSATING: &str = "Compensating";
    /// A run finished with every step succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A run failed and nothing needed undoing.
    pub const FAILED: &str = "Failed";
    /// A run failed and its completed steps were undone.
    pub const COMPENSATED: &str = "Compensated";
    /// A run failed and undoing its steps failed too.
    pub const COMPENSATION_FAILED: &str = "CompensationFailed";
    /// A run was cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// The Adapter a TargetSystem names does not exist.
    pub const ADAPTER_NOT_FOUND: &str = "AdapterNotFound";
    /// The Adapter's mapping or service URL is invalid.
    pub const ADAPTER_INVALID: &str = "AdapterInvalid";
    /// A run took an Approval's decision.
    pub const APPLIED: &str = "Applied";
    /// An Approval names a run of that name but was made for another.
    pub const APPROVAL_NOT_FOR_THIS_RUN: &str = "NotForThisRun";
    /// A callback annotation that Tether's endpoint did not write (Event).
    pub const CALLBACK_FORGED: &str = "CallbackForged";
    /// A reconcile panicked: a bug in Tether, reported on the object.
    pub const INTERNAL_ERROR: &str = "InternalError";
}

/// Reasons of the Events Tether publishes (`kubectl get events
/// --field-selector reason=...`). A run's own phase changes are published
/// as `Run<Phase>` (`RunSucceeded`, `RunCompensated`...).
pub mod event {
    pub use super::reason::{CALLBACK_FORGED, INTERNAL_ERROR};
    /// An existing external object was adopted.
    pub const ADOPTED: &str = "Adopted";
    /// Drift was written back to the target.
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    /// The external object differs and the policy only reports it.
    pub const DRIFT_DETECTED: &str = "DriftDetected";
    /// The external object was created.
    pub const CREATED: &str = "Created";
    /// Another ExternalResource manages the external object.
    pub const CONFLICT: &str = "Conflict";
    /// The external object was deleted.
    pub const DELETED: &str = "Deleted";
    /// The ExternalResource went; its external object stays (deletionPolicy Orphan).
    pub const ORPHANED: &str = "Orphaned";
    /// Deletion waits for the resources that reference this one.
    pub const WAITING_FOR_DEPENDENTS: &str = "WaitingForDependents";
    /// A Workflow does not compile.
    pub const INVALID_DEFINITION: &str = "InvalidDefinition";
    /// A schedule or a webhook started a run.
    pub const RUN_CREATED: &str = "RunCreated";
    /// A schedule replaced a running run (concurrencyPolicy Replace).
    pub const RUN_REPLACED: &str = "RunReplaced";
    /// A schedule skipped a time (concurrencyPolicy Forbid).
    pub const SCHEDULE_SKIPPED: &str = "ScheduleSkipped";
    /// A run's status cannot be written for its size.
    pub const STATUS_TOO_LARGE: &str = "StatusTooLarge";
    /// A step started an attempt.
    pub const STEP_STARTED: &str = "StepStarted";
    /// A step waits (poll, callback, resource, delay).
    pub const STEP_WAITING: &str = "StepWaiting";
    /// An approval step waits for a decision.
    pub const APPROVAL_REQUESTED: &str = "ApprovalRequested";
    /// A step succeeded.
    pub const STEP_SUCCEEDED: &str = "StepSucceeded";
    /// A step's `when` did not hold.
    pub const STEP_SKIPPED: &str = "StepSkipped";
    /// A step failed for good.
    pub const STEP_FAILED: &str = "StepFailed";
    /// A step is being undone.
    pub const COMPENSATING: &str = "Compensating";
    /// A step was undone.
    pub const COMPENSATED: &str = "Compensated";
    /// Undoing a step failed.
    pub const COMPENSATION_FAILED: &str = "CompensationFailed";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn durations_parse_the_units_users_write() {
        assert_eq!(parse_duration("30s"), Some(Std::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Std::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Std::from_millis(250)));
        assert_eq!(parse_duration("2m10s"), Some(Std::from_secs(130)));
    }

    /// The schema's pattern is the parser's contract: text the API server
    /// accepts always parses (an overflowing `99999999999h` is refused at
    /// apply instead of being read silently as a default).
    #[test]
    fn every_duration_the_schema_accepts_parses() {
        let pattern = regex_lite_match;
        for text in ["999999999h999999999m999999999s", "1h", "0ms", "999999999ms"] {
            assert!(pattern(text), "{text}");
            assert!(
                parse_duration(text).is_some(),
                "{text} matches the pattern but does not parse"
            );
        }
        for overflowing in ["99999999999h", "4294967296s"] {
            assert!(!pattern(overflowing), "{overflowing} must not match {DURATION_PATTERN}");
        }
    }

    /// [`DURATION_PATTERN`] by hand: one or more `<1 to 9 digits><unit>`.
    fn regex_lite_match(text: &str) -> bool {
        let mut rest = text;
        if rest.is_empty() {
            return false;
        }
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if !(1..=9).contains(&digits) {
                return false;
            }
            rest = rest.get(digits..).unwrap_or_default();
            rest = if let Some(r) = rest.strip_prefix("ms") {
                r
            } else if let Some(r) = rest.strip_prefix(['s', 'm', 'h']) {
                r
            } else {
                return false;
            };
        }
        true
    }

    #[test]
    fn durations_refuse_text_outside_the_pattern() {
        for bad in ["", "5", "m", "5 minutes", "-1s", "1d", "1.5s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?} should not parse");
        }
    }
}
