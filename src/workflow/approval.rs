//! Which Approval decides a gate of a run: one made for this run (bound by
//! UID, or created after the run), never one applied to another run of the
//! same name. Pure.

use crate::api::{Approval, WorkflowRun};

/// Whether `approval` decides gate `step` of `run`: it names the run and
/// the step; with `runRef.uid`, that is the run's UID; without, the run was
/// created no later than the Approval; and it was not applied to another
/// run already. So an Approval of a deleted run never counts for a new run
/// that reuses the name.
pub fn approval_counts(approval: &Approval, run: &WorkflowRun, step: &str) -> bool {
    approval_verdict(approval, run, step) == Verdict::Counts
}

/// What an Approval is to one gate of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It decides this gate.
    Counts,
    /// It names another run or another gate.
    Elsewhere,
    /// It names this run and gate, but was made for another run that had
    /// the name: why.
    NotForThisRun(String),
}

/// The rule of [`approval_counts`], saying why an Approval that names the
/// run does not count.
pub fn approval_verdict(approval: &Approval, run: &WorkflowRun, step: &str) -> Verdict {
    let uid = run.metadata.uid.clone();
    if Some(&approval.spec.run_ref.name) != run.metadata.name.as_ref() || approval.spec.step != step {
        return Verdict::Elsewhere;
    }
    let current = uid.as_deref().unwrap_or_default();
    let applied = approval.status.as_ref().and_then(|s| s.run_uid.as_deref());
    if let Some(applied) = applied
        && applied != current
    {
        return Verdict::NotForThisRun(format!("it was applied to run UID {applied}, not {current}"));
    }
    match approval.spec.run_ref.uid.as_deref() {
        Some(bound) if bound == current => Verdict::Counts,
        Some(bound) => Verdict::NotForThisRun(format!("it names run UID {bound}, not {current}")),
        None => match (&approval.metadata.creation_timestamp, &run.metadata.creation_timestamp) {
            (Some(decided), Some(started)) if decided.0 >= started.0 => Verdict::Counts,
            _ => Verdict::NotForThisRun(format!(
                "it was created before run {} (UID {current}); set spec.runRef.uid, or create it anew",
                run.metadata.name.as_deref().unwrap_or_default()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::approval::Decision;
    use crate::api::approval::{ApprovalSpec, ApprovalStatus, RunRef};
    use crate::api::workflow_run::WorkflowRunSpec;
    use serde_json::Value;

    fn at(second: i64) -> Option<Time> {
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + second)
            .ok()
            .map(Time)
    }

    fn run(uid: &str, created: i64) -> WorkflowRun {
        let mut run = WorkflowRun::new(
            "deploy",
            WorkflowRunSpec {
                workflow_ref: crate::api::common::ObjectRef::new("ship"),
                parameters: Value::Null,
                cancel: false,
            },
        );
        run.metadata.uid = Some(uid.into());
        run.metadata.creation_timestamp = at(created);
        run
    }

    fn approval(uid: Option<&str>, created: i64, applied_to: Option<&str>) -> Approval {
        let mut approval = Approval::new(
            "ok",
            ApprovalSpec {
                run_ref: RunRef {
                    name: "deploy".into(),
                    uid: uid.map(str::to_owned),
                },
                step: "gate".into(),
                decision: Decision::Approve,
                reason: None,
                decided_by: None,
            },
        );
        approval.metadata.creation_timestamp = at(created);
        approval.status = applied_to.map(|uid| ApprovalStatus {
            run_uid: Some(uid.into()),
            ..ApprovalStatus::default()
        });
        approval
    }

    #[test]
    fn an_approval_counts_only_for_the_run_and_gate_it_was_made_for() {
        let current = run("uid-2", 100);
        // Bound by UID: that run only, whenever it was created.
        assert!(approval_counts(&approval(Some("uid-2"), 50, None), &current, "gate"));
        assert!(!approval_counts(&approval(Some("uid-1"), 150, None), &current, "gate"));
        // Without a UID: made no earlier than the run (same second included).
        assert!(approval_counts(&approval(None, 100, None), &current, "gate"));
        assert!(approval_counts(&approval(None, 160, None), &current, "gate"));
        assert!(!approval_counts(&approval(None, 99, None), &current, "gate"));
        // Applied to another run already: never again.
        assert!(!approval_counts(&approval(None, 160, Some("uid-1")), &current, "gate"));
        assert!(approval_counts(&approval(None, 160, Some("uid-2")), &current, "gate"));
        // Another gate.
        assert!(!approval_counts(
            &approval(Some("uid-2"), 160, None),
            &current,
            "other-gate"
        ));
        assert_eq!(
            approval_verdict(&approval(Some("uid-2"), 160, None), &current, "other-gate"),
            Verdict::Elsewhere
        );
        assert_eq!(
            approval_verdict(&approval(Some("uid-1"), 160, None), &current, "gate"),
            Verdict::NotForThisRun("it names run UID uid-1, not uid-2".into())
        );
    }
}
