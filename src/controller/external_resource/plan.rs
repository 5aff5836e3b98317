//! The pure middle of an ExternalResource reconcile: which lookup to make,
//! and — given what it found — what to do. No I/O; every branch is a unit
//! test.

use serde_json::Value;

use crate::adapter::{ExternalObject, Observation};
use crate::api::external_resource::{DriftPolicy, ExternalResourceSpec, ExternalResourceStatus, ManagementPolicy};
use crate::diff;

/// How to locate the external object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Read it by this id (known from status, or named by the spec).
    ById(String),
    /// Look it up by natural key (`externalName`, default
    /// `<namespace>-<name>`): a create's outcome is unknown, or nothing is
    /// known yet and an object under that name is adopted, not duplicated.
    Find,
    /// Resend the create of unknown outcome with the same idempotency key:
    /// the adapter cannot `find`, the target dedupes by key.
    ResendCreate(String),
    /// Nothing was ever created and the adapter cannot `find`: create.
    Nothing,
}

/// Where the reconcile starts from. Before a first create the natural key
/// is always looked up when the adapter can `find` — the explicit
/// `externalName` and its default `<namespace>-<name>` alike (the CRD
/// promises adoption by either).
pub fn lookup(spec: &ExternalResourceSpec, status: Option<&ExternalResourceStatus>, can_find: bool) -> Lookup {
    let known_id = status
        .and_then(|s| s.external_id.clone())
        .or_else(|| spec.external_id.clone());
    let pending = status.and_then(|s| s.pending_create.as_ref());
    match (known_id, pending) {
        (Some(id), _) => Lookup::ById(id),
        (None, Some(_)) if can_find => Lookup::Find,
        (None, Some(p)) => Lookup::ResendCreate(p.idempotency_key.clone()),
        (None, None) if can_find => Lookup::Find,
        (None, None) => Lookup::Nothing,
    }
}

/// [`lookup`] for a pass that follows one which found no object under the
/// name and whose create the target refused before applying it (429,
/// 401/403, a 4xx): that pass looked already, so this one creates without
/// a second `find`. A target that throttles every second request in a row
/// (find, then create) would otherwise refuse every create for ever.
pub fn lookup_after_refused_create(
    spec: &ExternalResourceSpec,
    status: Option<&ExternalResourceStatus>,
    can_find: bool,
    refused_just_now: bool,
) -> Lookup {
    match lookup(spec, status, can_find) {
        Lookup::Find
            if refused_just_now
                && spec.management_policy == ManagementPolicy::Full
                && status.is_none_or(|s| s.pending_create.is_none()) =>
        {
            Lookup::Nothing
        }
        other => other,
    }
}

/// What to do once the object is located.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Exists and matches the declared properties.
    InSync { object: ExternalObject },
    /// Exists and differs: write the desired properties.
    Correct {
        object: ExternalObject,
        drifted: Vec<String>,
    },
    /// Exists and differs, and the policy (or the adapter) only reports.
    Report {
        object: ExternalObject,
        drifted: Vec<String>,
    },
    /// Does not exist: record the intent, then create.
    Create { idempotency_key: String },
    /// Does not exist and the policy forbids creating it.
    NotFound,
    /// Another ExternalResource already manages this object.
    Conflict { id: String, owner: String },
}

/// Facts the decision needs besides the spec and the observation.
pub struct Facts<'a> {
    pub status: Option<&'a ExternalResourceStatus>,
    /// The ExternalResource that already claims the observed object (or, for
    /// a create, the external name), if another one does.
    pub claimed_by: Option<String>,
    pub can_update: bool,
    /// A fresh idempotency key, used when no create is pending.
    pub fresh_key: String,
}

pub fn decide(spec: &ExternalResourceSpec, observation: Observation, facts: Facts<'_>) -> Decision {
    let Facts {
        status,
        claimed_by,
        can_update,
        fresh_key,
    } = facts;
    match observation {
        Observation::Present(object) => {
            if let Some(owner) = claimed_by {
                return Decision::Conflict { id: object.id, owner };
            }
            let drifted = diff::drifted_fields(&spec.properties, &object.state, &spec.ignore_fields);
            if drifted.is_empty() {
                Decision::InSync { object }
            } else if spec.management_policy == ManagementPolicy::Full
                && spec.drift_policy == DriftPolicy::Correct
                && can_update
            {
                Decision::Correct { object, drifted }
            } else {
                Decision::Report { object, drifted }
            }
        }
        Observation::Absent
            if spec.management_policy == ManagementPolicy::ObserveOnly || spec.external_id.is_some() =>
        {
            Decision::NotFound
        }
        Observation::Absent => match claimed_by {
            Some(owner) => Decision::Conflict {
                id: external_name_or_default(spec, ""),
                owner,
            },
            None => Decision::Create {
                idempotency_key: status
                    .and_then(|s| s.pending_create.as_ref())
                    .map_or(fresh_key, |p| p.idempotency_key.clone()),
            },
        },
    }
}

/// The natural key of the object: `spec.externalName`, else
/// `<namespace>-<name>`.
pub fn external_name_or_default(spec: &ExternalResourceSpec, default: &str) -> String {
    spec.external_name.clone().unwrap_or_else(|| default.to_owned())
}

/// The hash recorded as `appliedHash`.
pub fn applied_hash(properties: &Value) -> String {
    diff::hash(properties)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::external_resource::PendingCreate;
    use serde_json::json;

    fn spec() -> ExternalResourceSpec {
        serde_json::from_value(
            json!({"targetRef": {"name": "crm"}, "type": "contact", "properties": {"email": "a@b", "plan": "pro"}}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pending(key: &str) -> ExternalResourceStatus {
        ExternalResourceStatus {
            pending_create: Some(PendingCreate {
                idempotency_key: key.into(),
                started_at: chrono::Utc::now(),
            }),
            ..Default::default()
        }
    }

    fn object(plan: &str) -> ExternalObject {
        ExternalObject {
            id: "c-1".into(),
            state: json!({"email": "a@b", "plan": plan, "id": "c-1"}),
            secrets: Default::default(),
        }
    }

    fn facts(status: Option<&ExternalResourceStatus>) -> Facts<'_> {
        Facts {
            status,
            claimed_by: None,
            can_update: true,
            fresh_key: "fresh".into(),
        }
    }

    #[test]
    fn a_known_id_is_read_directly() {
        let status = ExternalResourceStatus {
            external_id: Some("c-9".into()),
            ..Default::default()
        };
        assert_eq!(lookup(&spec(), Some(&status), true), Lookup::ById("c-9".into()));
    }

    #[test]
    fn a_create_of_unknown_outcome_is_found_not_repeated() {
        assert_eq!(lookup(&spec(), Some(&pending("k1")), true), Lookup::Find);
    }

    #[test]
    fn without_find_a_create_of_unknown_outcome_is_resent_with_the_same_key() {
        assert_eq!(
            lookup(&spec(), Some(&pending("k1")), false),
            Lookup::ResendCreate("k1".into())
        );
        let decision = decide(&spec(), Observation::Absent, facts(Some(&pending("k1"))));
        assert_eq!(
            decision,
            Decision::Create {
                idempotency_key: "k1".into()
            }
        );
    }

    #[test]
    fn the_default_external_name_is_looked_up_before_a_first_create() {
        // No externalName: its default `<namespace>-<name>` names the
        // object to adopt, as the CRD says.
        assert_eq!(spec().external_name, None);
        assert_eq!(lookup(&spec(), None, true), Lookup::Find);
        let mut named = spec();
        named.external_name = Some("ada".into());
        assert_eq!(lookup(&named, None, true), Lookup::Find);
    }

    #[test]
    fn a_create_refused_before_it_applied_is_retried_without_a_second_lookup() {
        assert_eq!(lookup_after_refused_create(&spec(), None, true, true), Lookup::Nothing);
        assert_eq!(lookup_after_refused_create(&spec(), None, true, false), Lookup::Find);
        // A create of unknown outcome is always looked for.
        assert_eq!(
            lookup_after_refused_create(&spec(), Some(&pending("k1")), true, true),
            Lookup::Find
        );
        let mut observe = spec();
        observe.management_policy = ManagementPolicy::ObserveOnly;
        assert_eq!(lookup_after_refused_create(&observe, None, true, true), Lookup::Find);
    }

    #[test]
    fn a_fresh_resource_creates_with_a_fresh_key() {
        assert_eq!(lookup(&spec(), None, false), Lookup::Nothing);
        assert_eq!(
            decide(&spec(), Observation::Absent, facts(None)),
            Decision::Create {
                idempotency_key: "fresh".into()
            }
        );
    }

    #[test]
    fn drift_is_corrected_or_reported_by_policy() {
        let drifted = decide(&spec(), Observation::Present(object("free")), facts(None));
        assert_eq!(
            drifted,
            Decision::Correct {
                object: object("free"),
                drifted: vec!["/plan".into()]
            }
        );
        let mut report = spec();
        report.drift_policy = DriftPolicy::Report;
        assert!(matches!(
            decide(&report, Observation::Present(object("free")), facts(None)),
            Decision::Report { .. }
        ));
        let no_update = Facts {
            can_update: false,
            ..facts(None)
        };
        assert!(matches!(
            decide(&spec(), Observation::Present(object("free")), no_update),
            Decision::Report { .. }
        ));
        assert!(matches!(
            decide(&spec(), Observation::Present(object("pro")), facts(None)),
            Decision::InSync { .. }
        ));
    }

    #[test]
    fn observe_only_never_creates() {
        let mut observe = spec();
        observe.management_policy = ManagementPolicy::ObserveOnly;
        assert_eq!(lookup(&observe, None, true), Lookup::Find);
        assert_eq!(decide(&observe, Observation::Absent, facts(None)), Decision::NotFound);
        assert!(matches!(
            decide(&observe, Observation::Present(object("free")), facts(None)),
            Decision::Report { .. }
        ));
    }

    #[test]
    fn an_object_claimed_by_another_resource_is_a_conflict() {
        let claimed = Facts {
            claimed_by: Some("ns/first".into()),
            ..facts(None)
        };
        assert_eq!(
            decide(&spec(), Observation::Present(object("pro")), claimed),
            Decision::Conflict {
                id: "c-1".into(),
                owner: "ns/first".into()
            }
        );
    }
}
