//! The status of an ExternalResource as a pure function of the previous
//! status, the spec and what this reconcile found or did. The same inputs
//! give the same status, so a no-op resync writes nothing.
//!
//! What the conditions say (and so what kstatus and the Argo CD check in
//! `deploy/argocd` compute):
//!
//! | situation | Ready | Synced | Reconciling | Stalled | kstatus |
//! | --- | --- | --- | --- | --- | --- |
//! | exists and matches | True | True | - | - | Current |
//! | creating, or retrying a transient failure | kept / False | False | True | - | InProgress |
//! | the target's circuit is open | False `CircuitOpen` | False | True | - | InProgress |
//! | drift only reported (`driftPolicy: Report`, `ObserveOnly`) | False `DriftDetected` | False | - | True | Failed |
//! | permanent error, not found, conflict | False | False | - | True | Failed |
//!
//! Reported drift is `Stalled`, not `Reconciling`: by the user's own policy
//! Tether will not converge it, so only a change (to the target, to the
//! properties, or to `driftPolicy`) makes progress; a Flux or Argo CD wait
//! fails with the message instead of hanging.

use chrono::{DateTime, Utc};

use super::plan::applied_hash;
use crate::adapter::ExternalObject;
use crate::api::common::condition::{READY, SYNCED};
use crate::api::common::reason;
use crate::api::external_resource::{ExternalResourceSpec, ExternalResourceStatus, ManagementPolicy, PendingCreate};
use crate::conditions::{self, Desired};
use crate::diff;

/// Condition type set while another ExternalResource manages the object.
pub use crate::api::common::condition::CONFLICT;
/// Largest `status.observed`, in bytes of JSON; larger states are left out.
pub const MAX_OBSERVED_BYTES: usize = 16 * 1024;

/// What got an object in sync: the `Ready` reason of a pass that did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Created,
    Adopted,
    Updated,
    InSync,
}

impl How {
    /// The condition reason (and outcome label of logs).
    pub fn reason(self) -> &'static str {
        match self {
            How::Created => "Created",
            How::Adopted => "Adopted",
            How::Updated => "Updated",
            How::InSync => "InSync",
        }
    }
}

/// What this reconcile found or did.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The object exists and matches; `how` says what got it there.
    Synced { object: &'a ExternalObject, how: How },
    /// The object differs and is only reported.
    DriftReported {
        object: &'a ExternalObject,
        drifted: &'a [String],
    },
    /// A create is about to be sent (intent recorded before the request).
    Creating { idempotency_key: &'a str },
    /// The object does not exist and may not be created.
    NotFound,
    /// Another ExternalResource manages the object.
    Conflict { id: &'a str, owner: &'a str },
    /// This reconcile failed. `create_not_applied`: a create was refused in
    /// a way that proves nothing was created, so its intent is dropped.
    Failed {
        reason: &'static str,
        message: String,
        permanent: bool,
        create_not_applied: bool,
    },
}

pub fn compute(
    previous: Option<&ExternalResourceStatus>,
    spec: &ExternalResourceSpec,
    generation: Option<i64>,
    outcome: &Outcome<'_>,
    now: DateTime<Utc>,
) -> ExternalResourceStatus {
    let prev = previous.cloned().unwrap_or_default();
    let hash = applied_hash(&spec.properties);
    let observed =
        |object: &ExternalObject| diff::bounded(diff::project(&spec.properties, &object.state), MAX_OBSERVED_BYTES);
    let mut next = ExternalResourceStatus {
        observed_generation: generation,
        drifted_fields: vec![],
        ..prev.clone()
    };
    let conditions: Vec<Desired> = match outcome {
        Outcome::Synced { object, how } => {
            next.external_id = Some(object.id.clone());
            next.pending_create = None;
            next.observed = observed(object);
            if prev.applied_hash.as_deref() != Some(hash.as_str())
                || prev.external_id.as_deref() != Some(object.id.as_str())
            {
                next.last_sync_time = Some(now);
            }
            next.applied_hash = Some(hash);
            let message = match how {
                How::Created => format!("created {} at the target", object.id),
                How::Adopted => format!("adopted existing object {}", object.id),
                How::Updated => format!("corrected drift of {}", object.id),
                How::InSync => format!("{} matches the declared properties", object.id),
            };
            // A resync that finds nothing to do keeps the conditions that
            // say how the object got here: no new status, no write.
            let unchanged = *how == How::InSync
                && prev.external_id.as_deref() == Some(object.id.as_str())
                && conditions::is_true(&prev.conditions, READY)
                && conditions::is_true(&prev.conditions, SYNCED);
            if unchanged {
                let keep = |type_: &'static str| {
                    conditions::find(&prev.conditions, type_)
                        .map(|c| Desired::new(type_, true, c.reason.clone(), c.message.clone()))
                        .unwrap_or_else(|| Desired::new(type_, true, How::InSync.reason(), message.clone()))
                };
                vec![keep(READY), keep(SYNCED)]
            } else {
                vec![
                    Desired::new(READY, true, how.reason(), message.clone()),
                    Desired::new(SYNCED, true, "Synced", message),
                ]
            }
        }
        Outcome::DriftReported { object, drifted } => {
            next.external_id = Some(object.id.clone());
            next.pending_create = None;
            next.observed = observed(object);
            next.drifted_fields = drifted.to_vec();
            let why = if spec.management_policy == ManagementPolicy::ObserveOnly {
                "managementPolicy is ObserveOnly"
            } else {
                "driftPolicy is Report (or the Adapter has no update)"
            };
            let message = format!("{} differs at {}; not corrected: {why}", object.id, drifted.join(", "));
            vec![
                Desired::new(READY, false, reason::DRIFT_DETECTED, message.clone()),
                Desired::new(SYNCED, false, reason::DRIFT_DETECTED, message.clone()),
                Desired::stalled(
                    reason::DRIFT_DETECTED,
                    format!(
                        "{message}; correct the object at the target, change the properties, or set driftPolicy: Correct"
                    ),
                ),
            ]
        }
        Outcome::Creating { idempotency_key } => {
            next.pending_create = Some(match prev.pending_create {
                Some(p) if p.idempotency_key == *idempotency_key => p,
                _ => PendingCreate {
                    idempotency_key: (*idempotency_key).to_owned(),
                    started_at: now,
                },
            });
            // A retry keeps showing why the last attempt failed, instead of
            // flapping between "Creating" and the failure on every attempt.
            let retrying =
                conditions::find(&prev.conditions, SYNCED).filter(|c| c.status == "False" && c.reason != "Creating");
            if let Some(synced) = retrying {
                let ready = conditions::find(&prev.conditions, READY)
                    .map(|c| Desired::new(READY, c.status == "True", c.reason.clone(), c.message.clone()))
                    .unwrap_or_else(|| Desired::new(READY, false, "Creating", "creating the object at the target"));
                vec![
                    ready,
                    Desired::new(SYNCED, false, synced.reason.clone(), synced.message.clone()),
                    Desired::reconciling(
                        synced.reason.clone(),
                        format!("retrying the create: {}", synced.message),
                    ),
                ]
            } else {
                let message = "creating the object at the target".to_owned();
                vec![
                    Desired::new(READY, false, reason::CREATING, message.clone()),
                    Desired::new(SYNCED, false, reason::CREATING, message.clone()),
                    Desired::reconciling(reason::CREATING, message),
                ]
            }
        }
        Outcome::NotFound => {
            let message = match &spec.external_id {
                Some(id) => format!("no object with id {id} at the target"),
                None => {
                    "no matching object at the target, and managementPolicy ObserveOnly never creates one".to_owned()
                }
            };
            vec![
                Desired::new(READY, false, reason::NOT_FOUND, message.clone()),
                Desired::new(SYNCED, false, reason::NOT_FOUND, message.clone()),
                Desired::stalled(reason::NOT_FOUND, message),
            ]
        }
        Outcome::Conflict { id, owner } => {
            let message =
                format!("the external object {id} is managed by ExternalResource {owner}; nothing was changed");
            vec![
                Desired::new(READY, false, reason::CONFLICT, message.clone()),
                Desired::new(SYNCED, false, reason::CONFLICT, message.clone()),
                Desired::new(CONFLICT, true, "AlreadyManaged", message.clone()),
                Desired::stalled(reason::CONFLICT, message),
            ]
        }
        Outcome::Failed {
            reason,
            message,
            permanent,
            create_not_applied,
        } => {
            if *create_not_applied {
                next.pending_create = None;
            }
            // A passing failure does not make an existing object un-Ready,
            // except an open circuit: the target is known to be failing, and
            // nothing reading `Ready` may take the object as current.
            let ready = conditions::find(&prev.conditions, READY)
                .filter(|_| !permanent && *reason != reason::CIRCUIT_OPEN)
                .map(|c| Desired::new(READY, c.status == "True", c.reason.clone(), c.message.clone()))
                .unwrap_or_else(|| Desired::new(READY, false, *reason, message.clone()));
            let progress = if *permanent {
                Desired::stalled(*reason, message.clone())
            } else {
                Desired::reconciling(*reason, format!("retrying: {message}"))
            };
            vec![ready, Desired::new(SYNCED, false, *reason, message.clone()), progress]
        }
    };
    next.conditions = conditions::set_exactly(&prev.conditions, &conditions, generation, now);
    next
}

/// Whether two statuses differ in anything worth a write.
pub fn differs(a: Option<&ExternalResourceStatus>, b: &ExternalResourceStatus) -> bool {
    a != Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::{RECONCILING, STALLED};
    use serde_json::json;

    fn spec() -> ExternalResourceSpec {
        serde_json::from_value(json!({"targetRef": {"name": "crm"}, "type": "contact", "properties": {"email": "a@b"}}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A transient failure; `create_not_applied` as the target proved it.
    fn failed(reason: &'static str, create_not_applied: bool) -> Outcome<'static> {
        Outcome::Failed {
            reason,
            message: format!("{reason} happened"),
            permanent: false,
            create_not_applied,
        }
    }

    fn contact_object(id: &str) -> ExternalObject {
        ExternalObject {
            id: id.into(),
            state: json!({"email": "a@b"}),
            secrets: Default::default(),
        }
    }

    /// The status after one pass with `outcome` over `previous`.
    fn step(
        previous: Option<&ExternalResourceStatus>,
        outcome: &Outcome<'_>,
        now: DateTime<Utc>,
    ) -> ExternalResourceStatus {
        compute(previous, &spec(), Some(1), outcome, now)
    }

    /// The status after a pass that found `object` in sync (`how`).
    fn synced(
        previous: Option<&ExternalResourceStatus>,
        object: &ExternalObject,
        how: How,
        now: DateTime<Utc>,
    ) -> ExternalResourceStatus {
        step(previous, &Outcome::Synced { object, how }, now)
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    #[test]
    fn an_unchanged_resync_computes_an_identical_status() {
        let object = ExternalObject {
            id: "c-1".into(),
            state: json!({"email": "a@b", "version": 1}),
            secrets: Default::default(),
        };
        let first = synced(None, &object, How::Created, at(10));
        let again = synced(Some(&first), &object, How::Created, at(99));
        assert!(!differs(Some(&first), &again), "{first:?}\n{again:?}");
        assert_eq!(again.observed, Some(json!({"email": "a@b"})));
    }

    #[test]
    fn the_first_resync_after_a_create_writes_nothing() {
        let object = contact_object("c-1");
        let created = synced(None, &object, How::Created, at(10));
        let resync = synced(Some(&created), &object, How::InSync, at(70));
        assert!(!differs(Some(&created), &resync));
    }

    #[test]
    fn the_create_intent_survives_a_failure() {
        let creating = step(None, &Outcome::Creating { idempotency_key: "k1" }, at(10));
        let failed = failed("TargetUnavailable", false);
        let after = step(Some(&creating), &failed, at(20));
        assert_eq!(after.pending_create.map(|p| p.idempotency_key), Some("k1".into()));
    }

    #[test]
    fn a_create_refused_by_the_target_drops_its_intent() {
        let creating = step(None, &Outcome::Creating { idempotency_key: "k1" }, at(10));
        let throttled = failed("Throttled", true);
        let after = step(Some(&creating), &throttled, at(20));
        assert_eq!(
            after.pending_create, None,
            "nothing was created: the next pass creates without a lookup"
        );
    }

    #[test]
    fn retrying_a_create_keeps_the_last_failure_visible_and_writes_nothing_new() {
        let creating = step(None, &Outcome::Creating { idempotency_key: "k1" }, at(10));
        let rejected = failed("CredentialsRejected", true);
        let failed = step(Some(&creating), &rejected, at(20));
        let retry = step(Some(&failed), &Outcome::Creating { idempotency_key: "k2" }, at(30));
        assert_eq!(
            conditions::find(&retry.conditions, SYNCED).map(|c| c.reason.as_str()),
            Some("CredentialsRejected")
        );
        let failed_again = step(Some(&retry), &rejected, at(40));
        assert!(
            !differs(Some(&failed), &failed_again),
            "a repeated failure is no new status"
        );
    }

    #[test]
    fn a_transient_failure_keeps_ready_but_marks_not_synced() {
        let object = contact_object("c-1");
        let ready = synced(None, &object, How::InSync, at(10));
        let failed = failed("TargetUnavailable", false);
        let after = step(Some(&ready), &failed, at(20));
        assert!(conditions::is_true(&after.conditions, READY));
        assert!(!conditions::is_true(&after.conditions, SYNCED));
    }

    #[test]
    fn conflict_sets_a_conflict_condition_and_clears_it_later() {
        let conflict = step(
            None,
            &Outcome::Conflict {
                id: "c-1",
                owner: "ns/first",
            },
            at(10),
        );
        assert!(conditions::is_true(&conflict.conditions, CONFLICT));
        let object = contact_object("c-2");
        let later = synced(Some(&conflict), &object, How::Created, at(20));
        assert!(conditions::find(&later.conditions, CONFLICT).is_none());
    }

    fn reason_of(status: &ExternalResourceStatus, type_: &str) -> Option<String> {
        conditions::find(&status.conditions, type_).map(|c| format!("{}/{}", c.status, c.reason))
    }

    #[test]
    fn creating_is_reconciling_and_not_ready() {
        let creating = step(None, &Outcome::Creating { idempotency_key: "k1" }, at(10));
        assert_eq!(reason_of(&creating, READY).as_deref(), Some("False/Creating"));
        assert_eq!(reason_of(&creating, RECONCILING).as_deref(), Some("True/Creating"));
        assert_eq!(reason_of(&creating, STALLED), None);
    }

    #[test]
    fn a_synced_object_clears_reconciling_and_stalled() {
        let creating = step(None, &Outcome::Creating { idempotency_key: "k1" }, at(10));
        let object = contact_object("c-1");
        let created = synced(Some(&creating), &object, How::Created, at(20));
        assert_eq!(reason_of(&created, READY).as_deref(), Some("True/Created"));
        assert_eq!(reason_of(&created, RECONCILING), None);
        assert_eq!(reason_of(&created, STALLED), None);
        assert_eq!(created.observed_generation, Some(1));
    }

    #[test]
    fn reported_drift_is_stalled_and_not_ready() {
        let object = contact_object("c-1");
        let ready = synced(None, &object, How::InSync, at(10));
        let drifted = ["/plan".to_owned()];
        let after = step(
            Some(&ready),
            &Outcome::DriftReported {
                object: &object,
                drifted: &drifted,
            },
            at(20),
        );
        assert_eq!(reason_of(&after, READY).as_deref(), Some("False/DriftDetected"));
        assert_eq!(reason_of(&after, STALLED).as_deref(), Some("True/DriftDetected"));
        assert_eq!(reason_of(&after, RECONCILING), None);
    }

    #[test]
    fn an_open_circuit_makes_a_ready_object_not_ready_while_it_retries() {
        let object = contact_object("c-1");
        let ready = synced(None, &object, How::InSync, at(10));
        let after = step(Some(&ready), &failed(reason::CIRCUIT_OPEN, false), at(20));
        assert_eq!(reason_of(&after, READY).as_deref(), Some("False/CircuitOpen"));
        assert_eq!(reason_of(&after, RECONCILING).as_deref(), Some("True/CircuitOpen"));
        assert_eq!(reason_of(&after, STALLED), None);
    }

    #[test]
    fn a_permanent_failure_is_stalled_and_a_transient_one_reconciling() {
        let permanent = Outcome::Failed {
            reason: "AdapterInvalid",
            message: "fix the mapping".into(),
            permanent: true,
            create_not_applied: false,
        };
        let stalled = step(None, &permanent, at(10));
        assert_eq!(reason_of(&stalled, STALLED).as_deref(), Some("True/AdapterInvalid"));
        assert_eq!(reason_of(&stalled, READY).as_deref(), Some("False/AdapterInvalid"));
        assert_eq!(reason_of(&stalled, RECONCILING), None);
        let transient = step(Some(&stalled), &failed("TargetUnavailable", false), at(20));
        assert_eq!(
            reason_of(&transient, RECONCILING).as_deref(),
            Some("True/TargetUnavailable")
        );
        assert_eq!(reason_of(&transient, STALLED), None);
    }

    #[test]
    fn not_found_and_conflict_are_stalled() {
        let not_found = step(None, &Outcome::NotFound, at(10));
        assert_eq!(reason_of(&not_found, STALLED).as_deref(), Some("True/NotFound"));
        let conflict = step(
            None,
            &Outcome::Conflict {
                id: "c-1",
                owner: "ns/a",
            },
            at(10),
        );
        assert_eq!(reason_of(&conflict, STALLED).as_deref(), Some("True/Conflict"));
    }
}
