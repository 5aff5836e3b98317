//! `Approval` (namespaced): a decision on one `approval` step of one run.
//! Its own kind so that RBAC can say who may approve: only subjects allowed
//! to `create` Approvals can move a run past a gate. A decision, once made,
//! cannot be edited.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::conditions_schema;

/// A decision on one approval gate.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "An Approval decides one approval gate (an approval step) of one WorkflowRun: Approve or Reject, with a reason. Only subjects bound to the tether-approver ClusterRole may create one; Tether records who decided and which run took it.",
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Approval",
    namespaced,
    status = "ApprovalStatus",
    shortname = "tap",
    category = "tether",
    printcolumn = r#"{"name":"Run","type":"string","jsonPath":".spec.runRef.name"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".spec.step"}"#,
    printcolumn = r#"{"name":"Decision","type":"string","jsonPath":".spec.decision"}"#,
    printcolumn = r#"{"name":"By","type":"string","jsonPath":".spec.decidedBy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an Approval cannot be changed once made: delete it and create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// The WorkflowRun that waits (same namespace). With `uid`, the
    /// Approval counts only for that run; without it, only for a run of
    /// that name created no later than the Approval, and only the first
    /// one it is applied to.
    pub run_ref: RunRef,
    /// Name of the `approval` step in that run.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    pub step: String,
    /// `Approve` or `Reject`.
    pub decision: Decision,
    /// Why; recorded in the run's Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub reason: Option<String>,
    /// The user who created the Approval. Set by the API server's admission
    /// (the `tether-approval-decided-by` MutatingAdmissionPolicy) from the
    /// authenticated request, whatever the client sent; immutable after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub decided_by: Option<String>,
}

/// The run an Approval decides for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RunRef {
    /// Name of the WorkflowRun.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `metadata.uid` of the WorkflowRun: binds the decision to that run,
    /// not to a later one that reuses its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub uid: Option<String>,
}

impl RunRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            uid: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Decision {
    Approve,
    Reject,
}

/// Which run took the decision, and when (Applied).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the run took the decision into account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<DateTime<Utc>>,
    /// `metadata.uid` of the run that took the decision: an Approval is
    /// applied to one run only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_uid: Option<String>,
    /// `Applied`: the run received the decision; `False` with a reason when
    /// the run or step does not exist or is not waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
