//! `ExternalResource` (namespaced): one object in a target system, declared
//! by its desired properties and the policies that govern drift, ownership
//! and deletion. The status is the state store: the external id, the intent
//! of a create in flight (its idempotency key), what was last applied and
//! observed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{Duration, ObjectRef, SecretKeyRef, SecretRef, any_value, conditions_schema, free_form_object};

/// One object in a target system.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "An ExternalResource declares one object in an external system (a contact in a CRM, a bucket, a ticket): Tether creates it through the TargetSystem's Adapter, adopts an existing one, corrects or reports drift, and deletes it (or leaves it) when the ExternalResource is deleted. Its status holds the external id and the observed state.",
    group = "tether.dev",
    version = "v1alpha1",
    kind = "ExternalResource",
    namespaced,
    status = "ExternalResourceStatus",
    shortname = "xr",
    category = "tether",
    selectable = ".spec.targetRef.name",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"External-ID","type":"string","jsonPath":".status.externalId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalResourceSpec {
    /// The TargetSystem (same namespace) that holds the object. Immutable:
    /// moving an object between systems is a delete and a create.
    #[x_kube(validation = Rule::new("self == oldSelf").message("targetRef is immutable: create a new ExternalResource to move the object to another target"))]
    pub target_ref: ObjectRef,

    /// The resource type, as named in the target's Adapter. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("type is immutable"))]
    #[serde(rename = "type")]
    pub type_: String,

    /// The desired properties. Only the fields written here are compared
    /// with the external object: fields the server adds are not drift.
    #[serde(default)]
    #[schemars(schema_with = "free_form_object")]
    pub properties: Value,

    /// A deterministic name for the object at the target, used by the
    /// adapter's `find` to adopt an existing object (or one whose create
    /// answer was lost). Defaults to `<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub external_name: Option<String>,

    /// Adopt the object that already has this id instead of creating one.
    /// Once set it cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("externalId is immutable once set"))]
    pub external_id: Option<String>,

    /// `Full` creates, updates and deletes; `ObserveOnly` adopts and watches
    /// but never writes to the target.
    #[serde(default)]
    pub management_policy: ManagementPolicy,

    /// What to do when the object at the target differs from the spec.
    #[serde(default)]
    pub drift_policy: DriftPolicy,

    /// What deleting this ExternalResource does to the external object.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// How often to re-read the object to detect changes made outside
    /// Kubernetes.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,

    /// JSON pointers (`/metadata/updatedAt`) of declared fields to leave out
    /// of drift detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^(/[^/]*)+$")))]
    pub ignore_fields: Vec<String>,

    /// Other ExternalResources of this namespace that this one needs, by a
    /// name of your choice (`customer: {name: ada}`). This resource waits,
    /// without calling its target, until each is Ready; each is deleted at
    /// its target only after this one. There is no namespace field: a
    /// reference never leaves the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]{0,62}$'))").message("reference names must be identifiers (letters, digits, _), as they are used in expressions: .refs.<name>"))]
    pub references: BTreeMap<String, ResourceReference>,

    /// Properties computed from the references: property name to a jq
    /// expression over `{refs: {<name>: {name, externalId, observed}}}`,
    /// e.g. `customerId: .refs.customer.externalId`. Merged over
    /// `properties`, then compared and sent like them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub properties_from: BTreeMap<String, String>,

    /// Properties whose values are read from a Secret of this namespace when
    /// a request is sent (create, update): they reach the target, never the
    /// status. Write-only: they are not compared for drift.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub secret_properties: BTreeMap<String, SecretValueSource>,

    /// The Secret (owned by this ExternalResource, deleted with it) that
    /// receives the answer fields the Adapter's resource type declares
    /// secret (`secretFields`). Defaults to `<name>-secrets`. Those fields
    /// never appear in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_secret_ref: Option<SecretRef>,
}

/// Another ExternalResource of the same namespace, by name or by labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("set exactly one of name or selector"))]
#[serde(rename_all = "camelCase")]
pub struct ResourceReference {
    /// Name of the ExternalResource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Labels that select exactly one ExternalResource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<ReferenceSelector>,
}

/// Labels that must all match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceSelector {
    /// Labels the referenced ExternalResource must carry, all of them.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    pub match_labels: BTreeMap<String, String>,
}

/// Where a secret property's value comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretValueSource {
    /// One key of a Secret in this namespace.
    pub secret_key_ref: SecretKeyRef,
}

fn default_poll_interval() -> Duration {
    "5m".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, update and delete the object.
    #[default]
    Full,
    /// Adopt and watch; never write to the target.
    ObserveOnly,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DriftPolicy {
    /// Write the desired properties back.
    #[default]
    Correct,
    /// Record the drift in status and an Event; change nothing.
    Report,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the external object, then let the ExternalResource go.
    #[default]
    Delete,
    /// Leave the external object in place.
    Orphan,
}

/// A create that was sent (or is about to be) and whose answer has not been
/// recorded. Written to status *before* the request leaves, so that a lost
/// answer or a crash is followed by adoption, never a second object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingCreate {
    /// Sent as the adapter's idempotency key header and used to find the
    /// object afterwards.
    pub idempotency_key: String,
    /// When the intent was recorded.
    pub started_at: DateTime<Utc>,
}

/// The external object as Tether last saw it: its id, the observed
/// properties, drift, a create in flight, and the conditions (Ready, Synced).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalResourceStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The object's id at the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// A create whose outcome is not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<PendingCreate>,
    /// The declared fields as last observed at the target (bounded size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub observed: Option<Value>,
    /// Hash of the properties last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hash: Option<String>,
    /// When Tether last changed the object at the target, or first found
    /// it there (create, update, adoption). A resync that finds nothing to
    /// change writes nothing, so it does not move this time; see the
    /// `Synced` condition for the last comparison's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<DateTime<Utc>>,
    /// Declared fields that differ at the target (with `driftPolicy: Report`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted_fields: Vec<String>,
    /// `Ready`: the object exists at the target and matched the declared
    /// properties when last observed; `False` with the reason that matters
    /// (`Creating`, `DriftDetected`, `CircuitOpen`, `NotFound`, `Conflict`,
    /// or the error). `Synced`: the last reconcile reached the target and
    /// applied the spec. `Reconciling` (present only while `True`): a create
    /// or a retry is under way. `Stalled` (present only while `True`): no
    /// progress without a change: a permanent error, drift that the policy
    /// only reports, a missing object, a conflict. `Conflict`: another
    /// ExternalResource manages the object. Every status write sets
    /// `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// In Tether's cache only, never serialized: `observed` equalled
    /// `spec.properties` and was dropped so the cache keeps one copy
    /// ([`ExternalResource::slim`]); read it with
    /// [`ExternalResource::observed`].
    #[serde(skip)]
    pub observed_is_declared: bool,
}

impl ExternalResource {
    /// Keeps one copy of what is usually there twice: a status whose
    /// `observed` equals the declared properties (a resource in sync)
    /// drops it and says so. For the cache (src/cache.rs), before the
    /// object is stored.
    pub fn slim(&mut self) {
        if let Some(status) = self.status.as_mut()
            && status.observed.as_ref() == Some(&self.spec.properties)
        {
            status.observed = None;
            status.observed_is_declared = true;
        }
    }

    /// The declared fields as last observed at the target (what
    /// `status.observed` holds, also in a slimmed copy).
    pub fn observed(&self) -> Option<&Value> {
        let status = self.status.as_ref()?;
        match &status.observed {
            Some(observed) => Some(observed),
            None if status.observed_is_declared => Some(&self.spec.properties),
            None => None,
        }
    }

    /// The status as the API server holds it (a slimmed copy restored).
    pub fn full_status(&self) -> Option<ExternalResourceStatus> {
        let mut status = self.status.clone()?;
        if status.observed_is_declared {
            status.observed = Some(self.spec.properties.clone());
            status.observed_is_declared = false;
        }
        Some(status)
    }
}

#[cfg(test)]
mod slim_tests {
    use super::*;
    use serde_json::json;

    fn in_sync(observed: Value) -> ExternalResource {
        let mut er = ExternalResource::new(
            "ada",
            serde_json::from_value(json!({"targetRef": {"name": "crm"}, "type": "contact",
                "properties": {"email": "ada@example.com"}}))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        er.status = Some(ExternalResourceStatus {
            external_id: Some("c-1".into()),
            observed: Some(observed),
            ..ExternalResourceStatus::default()
        });
        er
    }

    #[test]
    fn a_slimmed_resource_keeps_its_observed_state_once_and_reads_back_the_same() {
        let original = in_sync(json!({"email": "ada@example.com"}));
        let mut slim = original.clone();
        slim.slim();
        assert_eq!(slim.status.as_ref().and_then(|s| s.observed.as_ref()), None, "one copy");
        assert_eq!(slim.observed(), original.observed());
        assert_eq!(slim.full_status(), original.status);
        assert_eq!(
            serde_json::to_value(slim.full_status()).ok(),
            serde_json::to_value(&original.status).ok()
        );
    }

    #[test]
    fn observed_state_that_differs_from_the_declared_one_is_kept() {
        let drifted = in_sync(json!({"email": "changed@example.com"}));
        let mut slim = drifted.clone();
        slim.slim();
        assert_eq!(slim.status, drifted.status);
    }
}
