//! Retrying a run that ended badly: a new run (`spec.retryOf`) that pins
//! the old run's definition, keeps what the old run finished, and runs the
//! rest with its own idempotency keys (its own UID). Pure: it decides from
//! the two runs as read.
//!
//! A step is kept when it succeeded (or was skipped) in the old run — or
//! was "compensated" with nothing to undo, so its effect stands — and every
//! step it depends on is kept too: a step whose dependency runs again would
//! have been computed from outputs that no longer hold. In a compensated
//! run the undone steps run again, and so does everything after them.

use serde_json::Value;

use crate::api::WorkflowRun;
use crate::api::workflow_run::{RunPhase, StepPhase, StepStatus, WorkflowRunStatus};
use crate::workflow::engine::Definition;

/// Why `retry` cannot retry `old`, if it cannot. `retry` must run the same
/// workflow with the same parameters, and `old` must have ended without
/// succeeding and without leaving anything to clean up.
pub fn refuse(old: &WorkflowRun, retry: &WorkflowRun) -> Option<String> {
    let old_name = old.metadata.name.as_deref().unwrap_or_default();
    if old.spec.workflow_ref != retry.spec.workflow_ref {
        return Some(format!(
            "run {old_name:?} ran workflow {:?}, not {:?}: a retry runs the same workflow",
            old.spec.workflow_ref.name, retry.spec.workflow_ref.name
        ));
    }
    if normalized(&old.spec.parameters) != normalized(&retry.spec.parameters) {
        return Some(format!(
            "a retry runs with the parameters of run {old_name:?}; copy them (`tether runs retry` does)"
        ));
    }
    let status = old.status.as_ref();
    let phase = status.map(|s| s.phase).unwrap_or_default();
    match phase {
        RunPhase::Failed | RunPhase::Compensated | RunPhase::Cancelled => {}
        RunPhase::Succeeded => return Some(format!("run {old_name:?} succeeded: there is nothing to retry")),
        RunPhase::CompensationFailed => {
            return Some(format!(
                "run {old_name:?} could not undo everything (left to clean up: {}); clean up, then start a new run",
                status.map(|s| s.left_to_clean_up.join("; ")).unwrap_or_default()
            ));
        }
        _ => return Some(format!("run {old_name:?} has not ended ({phase:?}); cancel it or wait")),
    }
    if status.and_then(|s| s.pinned.as_ref()).is_none() {
        return Some(format!("run {old_name:?} never started: start a new run instead"));
    }
    None
}

fn normalized(parameters: &Value) -> Value {
    match parameters {
        Value::Object(map) if map.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// The status a retry starts from: the old run's pinned definition and the
/// steps it keeps, each marked with the run it was kept from. Everything
/// else (phase, times, conditions) starts afresh.
pub fn seed(def: &Definition, old_name: &str, old: &WorkflowRunStatus) -> WorkflowRunStatus {
    let dag = &def.dag;
    let mut kept = vec![false; dag.len()];
    let mut steps = Vec::new();
    for &i in &dag.order {
        let Some(step) = old.steps.iter().find(|s| s.name == dag.names[i]) else {
            continue;
        };
        let stands = match step.phase {
            StepPhase::Succeeded | StepPhase::Skipped => true,
            // The saga passed over it: nothing was undone.
            StepPhase::Compensated => !def.steps.get(i).is_some_and(|s| s.compensable),
            _ => false,
        };
        if !stands || !dag.deps[i].iter().all(|&d| kept[d]) {
            continue;
        }
        kept[i] = true;
        let (phase, message) = match step.phase {
            StepPhase::Skipped => (StepPhase::Skipped, step.message.clone()),
            _ => (StepPhase::Succeeded, None),
        };
        steps.push(StepStatus {
            phase,
            message,
            next_at: None,
            item_details: vec![],
            undo_attempts: 0,
            kept_from: Some(step.kept_from.clone().unwrap_or_else(|| old_name.to_owned())),
            ..step.clone()
        });
    }
    WorkflowRunStatus {
        pinned: old.pinned.clone(),
        steps,
        ..WorkflowRunStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::ObjectRef;
    use crate::api::workflow::FailurePolicy;
    use crate::api::workflow_run::{PinnedDefinition, WorkflowRunSpec};
    use crate::workflow::engine::{Dag, StepInfo};
    use serde_json::json;

    fn dag() -> Definition {
        // one -> two -> three; four on its own; five after one and four.
        // One and two can be undone.
        let dag = Dag::new(&[
            ("one".into(), vec![]),
            ("two".into(), vec!["one".into()]),
            ("three".into(), vec!["two".into()]),
            ("four".into(), vec![]),
            ("five".into(), vec!["one".into(), "four".into()]),
        ])
        .expect("a DAG");
        let steps = (0..5)
            .map(|i| StepInfo {
                compensable: i < 2,
                ..StepInfo::default()
            })
            .collect();
        Definition {
            dag,
            steps,
            on_failure: FailurePolicy::Compensate,
            timeout: None,
        }
    }

    fn step(name: &str, phase: StepPhase) -> StepStatus {
        StepStatus {
            phase,
            attempt: 2,
            outputs: Some(json!({ "id": name })),
            ..StepStatus::pending(name)
        }
    }

    fn run(name: &str, parameters: Value, status: Option<WorkflowRunStatus>) -> WorkflowRun {
        let mut run = WorkflowRun::new(
            name,
            WorkflowRunSpec {
                workflow_ref: ObjectRef::new("wf"),
                parameters,
                cancel: false,
                retry_of: None,
            },
        );
        run.status = status;
        run
    }

    fn ended(phase: RunPhase) -> WorkflowRunStatus {
        WorkflowRunStatus {
            phase,
            pinned: Some(PinnedDefinition {
                generation: 1,
                hash: "h".into(),
                spec: json!({}),
            }),
            ..WorkflowRunStatus::default()
        }
    }

    #[test]
    fn a_retry_keeps_succeeded_steps_with_their_outputs_and_reruns_from_the_failure() {
        let old = WorkflowRunStatus {
            steps: vec![
                step("one", StepPhase::Succeeded),
                step("two", StepPhase::Failed),
                step("three", StepPhase::Pending),
                step("four", StepPhase::Skipped),
                step("five", StepPhase::Succeeded),
            ],
            ..ended(RunPhase::Failed)
        };
        let seeded = seed(&dag(), "old", &old);
        let names: Vec<&str> = seeded.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["one", "four", "five"]);
        assert!(seeded.steps.iter().all(|s| s.kept_from.as_deref() == Some("old")));
        assert_eq!(seeded.steps[0].outputs, Some(json!({"id": "one"})));
        assert_eq!(seeded.pinned, old.pinned);
        assert_eq!(seeded.phase, RunPhase::Pending);
    }

    #[test]
    fn a_step_after_an_undone_step_runs_again_even_if_it_succeeded() {
        let old = WorkflowRunStatus {
            steps: vec![
                step("one", StepPhase::Compensated),
                step("two", StepPhase::Succeeded),
                step("four", StepPhase::Succeeded),
            ],
            ..ended(RunPhase::Compensated)
        };
        let names: Vec<String> = seed(&dag(), "old", &old).steps.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["four"]);
    }

    #[test]
    fn a_step_the_saga_passed_over_with_nothing_to_undo_is_kept_as_succeeded() {
        let mut four = step("four", StepPhase::Compensated);
        four.message = Some("nothing to undo".into());
        let old = WorkflowRunStatus {
            steps: vec![step("one", StepPhase::Compensated), four],
            ..ended(RunPhase::Compensated)
        };
        let seeded = seed(&dag(), "old", &old);
        assert_eq!(seeded.steps.len(), 1, "{seeded:?}");
        assert_eq!(seeded.steps[0].name, "four");
        assert_eq!(seeded.steps[0].phase, StepPhase::Succeeded);
        assert_eq!(seeded.steps[0].message, None);
        assert_eq!(seeded.steps[0].outputs, Some(json!({"id": "four"})));
    }

    #[test]
    fn a_retry_of_a_retry_names_the_run_that_ran_the_step() {
        let mut kept = step("one", StepPhase::Succeeded);
        kept.kept_from = Some("first".into());
        let old = WorkflowRunStatus {
            steps: vec![kept],
            ..ended(RunPhase::Failed)
        };
        assert_eq!(
            seed(&dag(), "second", &old).steps[0].kept_from.as_deref(),
            Some("first")
        );
    }

    #[test]
    fn only_a_run_that_ended_badly_with_the_same_workflow_and_parameters_is_retried() {
        let retry = run("r2", json!({"a": 1}), None);
        let refused = |old: WorkflowRun| refuse(&old, &retry);
        assert_eq!(refused(run("r1", json!({"a": 1}), Some(ended(RunPhase::Failed)))), None);
        assert_eq!(
            refused(run("r1", json!({"a": 1}), Some(ended(RunPhase::Compensated)))),
            None
        );
        let message = |phase| refused(run("r1", json!({"a": 1}), Some(ended(phase)))).unwrap_or_default();
        assert!(message(RunPhase::Succeeded).contains("nothing to retry"));
        assert!(message(RunPhase::Running).contains("has not ended"));
        assert!(message(RunPhase::CompensationFailed).contains("clean up"));
        let other = refused(run("r1", json!({"a": 2}), Some(ended(RunPhase::Failed)))).unwrap_or_default();
        assert!(other.contains("parameters"), "{other}");
        let empty = run("r3", json!({}), None);
        assert_eq!(
            refuse(&run("r1", Value::Null, Some(ended(RunPhase::Failed))), &empty),
            None
        );
    }
}
