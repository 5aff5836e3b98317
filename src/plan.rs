//! `tether plan`: what Tether would do at each target for a set of
//! ExternalResources — create, update (field by field), adopt, nothing,
//! delete — without doing it. Built on the reconciler's own pure middle
//! ([`lookup`](crate::controller::external_resource::plan::lookup) and
//! [`decide`](crate::controller::external_resource::plan::decide), the same
//! diff with the same `ignoreFields`), and it reaches a target only through
//! the adapter port's two reads, `observe` and `find`: [`assess`] is
//! generic over [`ExternalSystem`] and never calls a write, which its unit
//! tests check with the fake adapter.
//!
//! This module is pure but for [`assess`] (the adapter's reads); reading
//! manifests and the cluster, and building each target's runtime with the
//! controller's egress rules and the Secrets the user may read, is
//! [`cluster`]. Nothing printed carries a credential: answers pass through
//! the target's redactor, secret fields never reach the observed state, and
//! secret properties are never compared.

pub mod cluster;

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::adapter::{ExternalSystem, ObjectRequest, Observation};
use crate::api::ExternalResource;
use crate::api::external_resource::{DeletionPolicy, DriftPolicy, ExternalResourceSpec, ManagementPolicy};
use crate::controller::external_resource::plan::{self as decision, Decision, Facts, Lookup};
use crate::controller::external_resource::{claims_id, claims_name, owner_name};
use kube::{Resource, ResourceExt};

/// One declared field whose value at the target differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// JSON pointer into `properties` (`/address/city`).
    pub field: String,
    /// The value at the target; absent when the target does not hold it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The declared value.
    pub to: Value,
}

/// What Tether would do for one ExternalResource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// No object under its id or name: it would be created.
    #[serde(rename_all = "camelCase")]
    Create {
        external_name: String,
        properties: Value,
        /// A create of unknown outcome is resent with its idempotency key
        /// (the adapter cannot `find`).
        resend: bool,
    },
    /// The object differs from the spec: these fields would be written.
    #[serde(rename_all = "camelCase")]
    Update {
        external_id: String,
        changes: Vec<FieldChange>,
    },
    /// An existing object (found by name) would be adopted, and these
    /// fields written.
    #[serde(rename_all = "camelCase")]
    Adopt {
        external_id: String,
        changes: Vec<FieldChange>,
    },
    /// The ExternalResource is being deleted: the object would be deleted.
    #[serde(rename_all = "camelCase")]
    Delete { external_id: String },
    /// Nothing to do.
    #[serde(rename_all = "camelCase")]
    NoChange {
        #[serde(skip_serializing_if = "Option::is_none")]
        external_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The object differs, but the policy only reports it.
    #[serde(rename_all = "camelCase")]
    Drift {
        external_id: String,
        changes: Vec<FieldChange>,
        why: String,
    },
    /// The object is missing and would not be created.
    #[serde(rename_all = "camelCase")]
    Missing { why: String },
    /// Another ExternalResource manages the object.
    #[serde(rename_all = "camelCase")]
    Conflict { external_id: String, owner: String },
    /// Nothing can be said before its references are Ready (nothing is
    /// sent to the target until then).
    #[serde(rename_all = "camelCase")]
    Waiting { why: String },
    /// The plan could not be made for this resource.
    #[serde(rename_all = "camelCase")]
    Error { message: String },
}

impl Action {
    /// Whether applying would change something at the target (or may:
    /// a resource waiting for its references).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Action::Create { .. }
                | Action::Update { .. }
                | Action::Adopt { .. }
                | Action::Delete { .. }
                | Action::Waiting { .. }
        )
    }

    fn label(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Update { .. } => "update",
            Action::Adopt { .. } => "adopt",
            Action::Delete { .. } => "delete",
            Action::NoChange { .. } => "no change",
            Action::Drift { .. } => "drift (reported only)",
            Action::Missing { .. } => "missing",
            Action::Conflict { .. } => "conflict",
            Action::Waiting { .. } => "waiting",
            Action::Error { .. } => "error",
        }
    }

    fn symbol(&self) -> char {
        match self {
            Action::Create { .. } => '+',
            Action::Update { .. } => '~',
            Action::Adopt { .. } => '<',
            Action::Delete { .. } => '-',
            Action::NoChange { .. } => '=',
            Action::Drift { .. } | Action::Missing { .. } | Action::Conflict { .. } => '!',
            Action::Waiting { .. } => '?',
            Action::Error { .. } => 'x',
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub namespace: String,
    pub name: String,
    pub target: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(flatten)]
    pub action: Action,
}

/// Counts by kind of action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub adopt: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub waiting: usize,
    pub problems: usize,
    pub errors: usize,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub resources: Vec<Item>,
    pub summary: Summary,
    pub changes_pending: bool,
}

/// The exit code of `tether plan`, as `terraform plan -detailed-exitcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: nothing would change.
    NoChanges,
    /// 2: changes are pending.
    ChangesPending,
    /// 1: some resource could not be planned.
    Failed,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::NoChanges => 0,
            Outcome::Failed => 1,
            Outcome::ChangesPending => 2,
        }
    }
}

impl Plan {
    pub fn new(resources: Vec<Item>) -> Self {
        let mut summary = Summary::default();
        for item in &resources {
            let count = match &item.action {
                Action::Create { .. } => &mut summary.create,
                Action::Update { .. } => &mut summary.update,
                Action::Adopt { .. } => &mut summary.adopt,
                Action::Delete { .. } => &mut summary.delete,
                Action::NoChange { .. } => &mut summary.unchanged,
                Action::Waiting { .. } => &mut summary.waiting,
                Action::Drift { .. } | Action::Missing { .. } | Action::Conflict { .. } => &mut summary.problems,
                Action::Error { .. } => &mut summary.errors,
            };
            *count += 1;
        }
        let changes_pending = resources.iter().any(|i| i.action.is_change());
        Self {
            resources,
            summary,
            changes_pending,
        }
    }

    pub fn outcome(&self) -> Outcome {
        if self.summary.errors > 0 {
            Outcome::Failed
        } else if self.changes_pending {
            Outcome::ChangesPending
        } else {
            Outcome::NoChanges
        }
    }

    /// The plan for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.resources.is_empty() {
            out.push_str("No ExternalResources to plan.\n");
            return out;
        }
        for item in &self.resources {
            let _ = writeln!(
                out,
                "{} ExternalResource {}/{} ({} {} on TargetSystem {}): {}",
                item.action.symbol(),
                item.namespace,
                item.name,
                item.type_,
                id_of(&item.action).unwrap_or("-"),
                item.target,
                item.action.label()
            );
            for line in details(&item.action) {
                let _ = writeln!(out, "      {line}");
            }
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "\nPlan: {} to create, {} to update, {} to adopt, {} to delete, {} unchanged, {} waiting, {} to look at, {} errors.",
            s.create, s.update, s.adopt, s.delete, s.unchanged, s.waiting, s.problems, s.errors
        );
        out
    }

    /// The plan as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
    }
}

fn id_of(action: &Action) -> Option<&str> {
    match action {
        Action::Update { external_id, .. }
        | Action::Adopt { external_id, .. }
        | Action::Delete { external_id }
        | Action::Drift { external_id, .. }
        | Action::Conflict { external_id, .. } => Some(external_id),
        Action::NoChange { external_id, .. } => external_id.as_deref(),
        Action::Create { .. } | Action::Missing { .. } | Action::Waiting { .. } | Action::Error { .. } => None,
    }
}

/// A value as one short line.
fn short(value: &Value) -> String {
    crate::text::shortened(&value.to_string(), 120)
}

fn change_lines(changes: &[FieldChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match &c.from {
            Some(from) => format!("{}: {} -> {}", c.field, short(from), short(&c.to)),
            None => format!("{}: (absent) -> {}", c.field, short(&c.to)),
        })
        .collect()
}

fn details(action: &Action) -> Vec<String> {
    match action {
        Action::Create {
            external_name,
            properties,
            resend,
        } => {
            let mut lines = vec![format!("external name {external_name:?}")];
            if *resend {
                lines.push("resends the pending create with its idempotency key".into());
            }
            if let Value::Object(map) = properties {
                lines.extend(map.iter().map(|(k, v)| format!("/{k}: {}", short(v))));
            }
            lines
        }
        Action::Update { changes, .. } | Action::Adopt { changes, .. } => change_lines(changes),
        Action::Drift { changes, why, .. } => {
            let mut lines = change_lines(changes);
            lines.push(format!("not corrected: {why}"));
            lines
        }
        Action::Delete { .. } => vec!["deletionPolicy Delete: the object is deleted at the target".into()],
        Action::NoChange { note, .. } => note.iter().cloned().collect(),
        Action::Missing { why } | Action::Waiting { why } => vec![why.clone()],
        Action::Conflict { owner, .. } => vec![format!("managed by ExternalResource {owner}")],
        Action::Error { message } => vec![message.clone()],
    }
}

/// The declared fields at `drifted` (JSON pointers) with their value at the
/// target and the declared one.
pub fn field_changes(drifted: &[String], desired: &Value, observed: &Value) -> Vec<FieldChange> {
    drifted
        .iter()
        .map(|field| {
            let pointer = if field == "/" { "" } else { field.as_str() };
            FieldChange {
                field: field.clone(),
                from: observed.pointer(pointer).filter(|v| !v.is_null()).cloned(),
                to: desired.pointer(pointer).cloned().unwrap_or(Value::Null),
            }
        })
        .collect()
}

/// What Tether would do for `er` (with `spec`: its properties with
/// `propertiesFrom` resolved), among `others` (the ExternalResources that
/// could claim its object). Calls `observe` or `find`, never a write.
pub async fn assess(
    adapter: &impl ExternalSystem,
    er: &ExternalResource,
    spec: &ExternalResourceSpec,
    others: &[ExternalResource],
) -> Action {
    let status = er.status.as_ref();
    let name = crate::controller::external_resource::external_name(er);
    let request = |id| ObjectRequest {
        resource_type: &spec.type_,
        external_id: id,
        external_name: &name,
        properties: &spec.properties,
        idempotency_key: None,
    };
    let known_id = status.and_then(|s| s.external_id.clone());
    if er.meta().deletion_timestamp.is_some() {
        if spec.deletion_policy == DeletionPolicy::Orphan || spec.management_policy == ManagementPolicy::ObserveOnly {
            return Action::NoChange {
                external_id: known_id,
                note: Some("being deleted; the object is left in place (deletionPolicy/managementPolicy)".into()),
            };
        }
        let found = match (&known_id, status.and_then(|s| s.pending_create.as_ref())) {
            (Some(id), _) => adapter.observe(&request(Some(id))).await,
            (None, Some(_)) => adapter.find(&request(None)).await,
            (None, None) => Ok(Observation::Absent),
        };
        return match found {
            Ok(Observation::Present(object)) => Action::Delete { external_id: object.id },
            Ok(Observation::Absent) => Action::NoChange {
                external_id: known_id,
                note: Some("being deleted; nothing to delete at the target".into()),
            },
            Err(e) => Action::Error { message: e.to_string() },
        };
    }
    let lookup = decision::lookup(spec, status, adapter.can_find(&spec.type_));
    let observation = match &lookup {
        Lookup::ById(id) => adapter.observe(&request(Some(id))).await,
        Lookup::Find => adapter.find(&request(None)).await,
        Lookup::ResendCreate(_) | Lookup::Nothing => Ok(Observation::Absent),
    };
    let observation = match observation {
        Ok(observation) => observation,
        Err(e) => return Action::Error { message: e.to_string() },
    };
    let rivals = || {
        others
            .iter()
            .filter(|o| o.namespace() != er.namespace() || o.name_any() != er.name_any())
    };
    let claimed_by = match &observation {
        Observation::Present(object) => rivals().find(|o| claims_id(er, o, &object.id)),
        Observation::Absent => rivals().find(|o| claims_name(er, o, &name)),
    }
    .map(owner_name);
    let facts = Facts {
        status,
        claimed_by,
        can_update: adapter.can_update(&spec.type_),
        fresh_key: String::new(),
    };
    let adopted = |id: &str| known_id.as_deref() != Some(id);
    match decision::decide(spec, observation, facts) {
        Decision::InSync { object } if adopted(&object.id) => Action::Adopt {
            external_id: object.id,
            changes: vec![],
        },
        Decision::InSync { object } => Action::NoChange {
            external_id: Some(object.id),
            note: None,
        },
        Decision::Correct { object, drifted } => {
            let changes = field_changes(&drifted, &spec.properties, &object.state);
            if adopted(&object.id) {
                Action::Adopt {
                    external_id: object.id,
                    changes,
                }
            } else {
                Action::Update {
                    external_id: object.id,
                    changes,
                }
            }
        }
        Decision::Report { object, drifted } => {
            let why = if spec.management_policy == ManagementPolicy::ObserveOnly {
                "managementPolicy ObserveOnly"
            } else if spec.drift_policy == DriftPolicy::Report {
                "driftPolicy Report"
            } else {
                "the Adapter has no update for this type"
            };
            Action::Drift {
                changes: field_changes(&drifted, &spec.properties, &object.state),
                external_id: object.id,
                why: why.into(),
            }
        }
        Decision::Create { .. } if spec.management_policy == ManagementPolicy::ObserveOnly => Action::Missing {
            why: "managementPolicy ObserveOnly: Tether never creates it".into(),
        },
        Decision::Create { .. } => Action::Create {
            external_name: name.clone(),
            properties: spec.properties.clone(),
            resend: matches!(lookup, Lookup::ResendCreate(_)),
        },
        Decision::NotFound if spec.management_policy == ManagementPolicy::ObserveOnly => Action::Missing {
            why: "managementPolicy ObserveOnly: Tether never creates it".into(),
        },
        Decision::NotFound => Action::Missing {
            why: "the object named by spec.externalId is not at the target".into(),
        },
        Decision::Conflict { id, owner } => Action::Conflict { external_id: id, owner },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::external_resource::ExternalResourceStatus;
    use crate::fakes::{Call, FakeSystem};

    fn resource(properties: Value, status: Option<ExternalResourceStatus>) -> ExternalResource {
        let mut er: ExternalResource = serde_json::from_value(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
            "metadata": {"name": "ada", "namespace": "demo", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"targetRef": {"name": "crm"}, "type": "contact", "properties": properties},
        }))
        .expect("resource");
        er.status = status;
        er
    }

    fn owned(id: &str) -> Option<ExternalResourceStatus> {
        Some(ExternalResourceStatus {
            external_id: Some(id.into()),
            ..Default::default()
        })
    }

    fn only_reads(system: &FakeSystem) {
        assert!(
            system
                .calls()
                .iter()
                .all(|c| matches!(c, Call::Observe(_) | Call::Find(_))),
            "a plan only reads: {:?}",
            system.calls()
        );
    }

    #[tokio::test]
    async fn a_changed_spec_plans_an_update_field_by_field_without_writing() {
        let system = FakeSystem::new().with_object("c-1", "demo-ada", json!({"plan": "free", "seats": 3, "id": "c-1"}));
        let er = resource(json!({"plan": "pro", "seats": 3, "tier": "gold"}), owned("c-1"));
        let action = assess(&system, &er, &er.spec, &[]).await;
        assert_eq!(
            action,
            Action::Update {
                external_id: "c-1".into(),
                changes: vec![
                    FieldChange {
                        field: "/plan".into(),
                        from: Some(json!("free")),
                        to: json!("pro")
                    },
                    FieldChange {
                        field: "/tier".into(),
                        from: None,
                        to: json!("gold")
                    },
                ]
            }
        );
        assert_eq!(system.calls(), vec![Call::Observe("c-1".into())]);
    }

    #[tokio::test]
    async fn ignored_fields_are_not_planned() {
        let system = FakeSystem::new().with_object("c-1", "demo-ada", json!({"plan": "free"}));
        let mut er = resource(json!({"plan": "pro"}), owned("c-1"));
        er.spec.ignore_fields = vec!["/plan".into()];
        let action = assess(&system, &er, &er.spec, &[]).await;
        assert_eq!(
            action,
            Action::NoChange {
                external_id: Some("c-1".into()),
                note: None
            }
        );
    }

    #[tokio::test]
    async fn a_new_resource_plans_a_create_or_an_adoption_of_its_default_name() {
        let er = resource(json!({"plan": "pro"}), None);
        let empty = FakeSystem::new();
        assert!(matches!(
            assess(&empty, &er, &er.spec, &[]).await,
            Action::Create { ref external_name, resend: false, .. } if external_name == "demo-ada"
        ));
        only_reads(&empty);
        let holding = FakeSystem::new().with_object("c-7", "demo-ada", json!({"plan": "free"}));
        assert_eq!(
            assess(&holding, &er, &er.spec, &[]).await,
            Action::Adopt {
                external_id: "c-7".into(),
                changes: vec![FieldChange {
                    field: "/plan".into(),
                    from: Some(json!("free")),
                    to: json!("pro")
                }]
            }
        );
        only_reads(&holding);
    }

    #[tokio::test]
    async fn a_resource_being_deleted_plans_a_delete_or_an_orphan_by_policy() {
        let system = FakeSystem::new().with_object("c-1", "demo-ada", json!({"plan": "pro"}));
        let mut er = resource(json!({"plan": "pro"}), owned("c-1"));
        er.metadata.deletion_timestamp = er.metadata.creation_timestamp.clone();
        assert_eq!(
            assess(&system, &er, &er.spec, &[]).await,
            Action::Delete {
                external_id: "c-1".into()
            }
        );
        er.spec.deletion_policy = DeletionPolicy::Orphan;
        assert!(matches!(
            assess(&system, &er, &er.spec, &[]).await,
            Action::NoChange { .. }
        ));
        only_reads(&system);
    }

    #[tokio::test]
    async fn reported_drift_and_claimed_objects_are_shown_not_planned_as_changes() {
        let system = FakeSystem::new().with_object("c-1", "demo-ada", json!({"plan": "free"}));
        let mut er = resource(json!({"plan": "pro"}), owned("c-1"));
        er.spec.drift_policy = DriftPolicy::Report;
        let action = assess(&system, &er, &er.spec, &[]).await;
        assert!(
            matches!(&action, Action::Drift { why, .. } if why == "driftPolicy Report"),
            "{action:?}"
        );
        assert!(!action.is_change());

        let mut first = resource(json!({"plan": "free"}), owned("c-7"));
        first.metadata.name = Some("first".into());
        first.metadata.uid = Some("uid-first".into());
        let holding = FakeSystem::new().with_object("c-7", "demo-ada", json!({"plan": "free"}));
        let second = resource(json!({"plan": "pro"}), None);
        assert_eq!(
            assess(&holding, &second, &second.spec, std::slice::from_ref(&first)).await,
            Action::Conflict {
                external_id: "c-7".into(),
                owner: "demo/first".into()
            }
        );
    }

    #[test]
    fn the_exit_code_says_whether_changes_are_pending() {
        let item = |action| Item {
            namespace: "demo".into(),
            name: "ada".into(),
            target: "crm".into(),
            type_: "contact".into(),
            action,
        };
        let unchanged = item(Action::NoChange {
            external_id: Some("c-1".into()),
            note: None,
        });
        assert_eq!(Plan::new(vec![unchanged.clone()]).outcome().code(), 0);
        let update = item(Action::Update {
            external_id: "c-1".into(),
            changes: vec![FieldChange {
                field: "/plan".into(),
                from: Some(json!("free")),
                to: json!("pro"),
            }],
        });
        let plan = Plan::new(vec![unchanged.clone(), update]);
        assert_eq!(plan.outcome().code(), 2);
        let text = plan.to_text();
        assert!(
            text.contains("~ ExternalResource demo/ada (contact c-1 on TargetSystem crm): update"),
            "{text}"
        );
        assert!(text.contains("/plan: \"free\" -> \"pro\""), "{text}");
        assert!(text.contains("1 to update"), "{text}");
        let json: Value = serde_json::from_str(&plan.to_json()).expect("json");
        assert_eq!(json["changesPending"], true);
        assert_eq!(json["resources"][1]["action"], "update");
        assert_eq!(json["resources"][1]["changes"][0]["field"], "/plan");
        let failed = Plan::new(vec![unchanged, item(Action::Error { message: "boom".into() })]);
        assert_eq!(failed.outcome().code(), 1);
    }
}
