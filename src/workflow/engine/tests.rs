use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn def(steps: &[(&str, &[&str], u32, bool)], on_failure: FailurePolicy) -> Definition {
    let edges: Vec<(String, Vec<String>)> = steps
        .iter()
        .map(|(n, d, _, _)| ((*n).to_owned(), d.iter().map(|s| (*s).to_owned()).collect()))
        .collect();
    Definition {
        dag: Dag::new(&edges).expect("a DAG"),
        steps: steps
            .iter()
            .map(|(_, _, retries, compensable)| StepInfo {
                retries: *retries,
                compensable: *compensable,
                retry_on: vec![RetryOn::All],
                ..StepInfo::default()
            })
            .collect(),
        on_failure,
        timeout: None,
    }
}

fn plain(_: usize, _: &WorkflowRunStatus) -> Result<Start, String> {
    Ok(Start::Run)
}

/// `advance` with every step running once.
fn step(
    d: &Definition,
    run: &str,
    status: &WorkflowRunStatus,
    observations: &[Observation],
    now: DateTime<Utc>,
) -> (WorkflowRunStatus, Vec<Action>) {
    advance(d, run, status, observations, now, &plain)
}

fn later(seconds: i64) -> DateTime<Utc> {
    now() + chrono::Duration::seconds(seconds)
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_000, 0).unwrap_or_default()
}

fn ran(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Run {
                step,
                item: None,
                attempt,
                ..
            } => format!("run {step}#{attempt}"),
            Action::Run {
                step,
                item: Some(i),
                attempt,
                ..
            } => format!("run {step}[{i}]#{attempt}"),
            Action::Compensate { step, item: None, .. } => format!("undo {step}"),
            Action::Compensate {
                step, item: Some(i), ..
            } => format!("undo {step}[{i}]"),
            Action::Check { step, .. } => format!("check {step}"),
        })
        .collect()
}

fn ok(step: &str) -> Observation {
    Observation::Succeeded {
        step: step.into(),
        item: None,
        outputs: json!({}),
    }
}

fn fail(step: &str) -> Observation {
    Observation::Failed {
        step: step.into(),
        item: None,
        message: "boom".into(),
        class: FailureClass::Transient,
    }
}

fn undone(step: &str) -> Observation {
    Observation::Compensated {
        step: step.into(),
        item: None,
    }
}

#[test]
fn a_chain_runs_in_order_and_succeeds() {
    let d = def(
        &[("a", &[], 0, true), ("b", &["a"], 0, true), ("c", &["b"], 0, true)],
        FailurePolicy::Compensate,
    );
    let (s, a) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    assert_eq!(ran(&a), ["run a#1"]);
    let (s, a) = step(&d, "r", &s, &[ok("a")], now());
    assert_eq!(ran(&a), ["run b#1"]);
    let (s, a) = step(&d, "r", &s, &[ok("b")], now());
    assert_eq!(ran(&a), ["run c#1"]);
    let (s, a) = step(&d, "r", &s, &[ok("c")], now());
    assert!(a.is_empty());
    assert_eq!(s.phase, RunPhase::Succeeded);
    assert_eq!(s.progress.as_deref(), Some("3/3"));
}

#[test]
fn step_three_of_four_fails_and_two_then_one_are_compensated() {
    let d = def(
        &[
            ("one", &[], 0, true),
            ("two", &["one"], 0, true),
            ("three", &["two"], 0, true),
            ("four", &["three"], 0, true),
        ],
        FailurePolicy::Compensate,
    );
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("one")], now());
    let (s, _) = step(&d, "r", &s, &[ok("two")], now());
    let (s, a) = step(&d, "r", &s, &[fail("three")], now());
    assert_eq!(ran(&a), ["undo two"]);
    assert_eq!(s.phase, RunPhase::Compensating);
    let (s, a) = step(&d, "r", &s, &[undone("two")], now());
    assert_eq!(ran(&a), ["undo one"]);
    let (s, a) = step(&d, "r", &s, &[undone("one")], now());
    assert!(a.is_empty());
    assert_eq!(s.phase, RunPhase::Compensated);
    assert_eq!(s.steps[3].phase, StepPhase::Pending, "four never ran");
}

#[test]
fn a_failed_attempt_is_retried_after_a_backoff_with_a_new_idempotency_key() {
    let d = def(&[("a", &[], 2, false)], FailurePolicy::Compensate);
    let (s, first) = step(&d, "run-1", &WorkflowRunStatus::default(), &[], now());
    let (s, none) = step(&d, "run-1", &s, &[fail("a")], now());
    assert!(none.is_empty(), "the retry waits for its backoff: {none:?}");
    let due = s.steps[0].next_at.expect("a retry time");
    assert!(
        due > now() && due <= later(1),
        "first retry within the 1s backoff: {due}"
    );
    assert_eq!(next_wakeup(&s), Some(due));
    let (s, second) = step(&d, "run-1", &s, &[], due);
    let (s, _) = step(&d, "run-1", &s, &[fail("a")], due);
    let due = s.steps[0].next_at.expect("a retry time");
    let (s, third) = step(&d, "run-1", &s, &[], due);
    let keys: Vec<_> = [first, second, third]
        .iter()
        .flat_map(|a| {
            a.iter().map(|x| match x {
                Action::Run { idempotency_key, .. } => idempotency_key.clone(),
                _ => String::new(),
            })
        })
        .collect();
    assert_eq!(keys, ["run-1/a/1", "run-1/a/2", "run-1/a/3"]);
    let (s, _) = step(&d, "run-1", &s, &[ok("a")], due);
    assert_eq!(s.phase, RunPhase::Succeeded);
}

#[test]
fn an_attempt_not_yet_observed_is_sent_again_with_the_same_key() {
    let d = def(&[("a", &[], 0, false)], FailurePolicy::Compensate);
    let (s, first) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    // The controller died after sending: the next pass starts from status.
    let (_, again) = step(&d, "r", &s, &[], later(5));
    assert_eq!(first, again);
}

#[test]
fn only_the_failures_a_step_names_are_retried() {
    let mut d = def(&[("a", &[], 3, false)], FailurePolicy::Stop);
    d.steps[0].retry_on = vec![RetryOn::Transient];
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let rejected = Observation::Failed {
        step: "a".into(),
        item: None,
        message: "HTTP 422".into(),
        class: FailureClass::Permanent,
    };
    let (s, a) = step(&d, "r", &s, &[rejected], now());
    assert!(a.is_empty());
    assert_eq!(s.phase, RunPhase::Failed);
    assert_eq!(s.steps[0].message.as_deref(), Some("HTTP 422"));
}

#[test]
fn cancelling_compensates_what_completed_and_asks_what_was_sent_for_its_outcome() {
    let d = def(&[("a", &[], 0, true), ("b", &[], 0, true)], FailurePolicy::Compensate);
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, a) = step(&d, "r", &s, &[ok("a"), Observation::Cancelled], now());
    assert_eq!(
        ran(&a),
        ["run b#1"],
        "b was sent: its outcome decides whether it is undone"
    );
    assert_eq!(s.phase, RunPhase::Compensating);
    let (s, a) = step(&d, "r", &s, &[ok("b")], now());
    let mut undo = ran(&a);
    undo.sort();
    assert_eq!(undo, ["undo a", "undo b"]);
    let (s, _) = step(&d, "r", &s, &[undone("a"), undone("b")], now());
    assert_eq!(s.phase, RunPhase::Compensated);
}

#[test]
fn a_step_with_a_false_condition_is_skipped_and_its_dependents_run() {
    let d = def(&[("a", &[], 0, false), ("b", &["a"], 0, false)], FailurePolicy::Stop);
    let skip_a = |i: usize, _: &WorkflowRunStatus| Ok(if i == 0 { Start::Skip } else { Start::Run });
    let (s, a) = advance(&d, "r", &WorkflowRunStatus::default(), &[], now(), &skip_a);
    assert_eq!(ran(&a), ["run b#1"]);
    assert_eq!(s.steps[0].phase, StepPhase::Skipped);
    let (s, _) = advance(&d, "r", &s, &[ok("b")], now(), &skip_a);
    assert_eq!(s.phase, RunPhase::Succeeded);
    assert_eq!(s.progress.as_deref(), Some("2/2"));
}

#[test]
fn a_step_that_cannot_start_fails_with_the_reason() {
    let d = def(&[("a", &[], 0, false)], FailurePolicy::Stop);
    let broken = |_: usize, _: &WorkflowRunStatus| Err("forEach: `.x[]` did not yield an array".to_owned());
    let (s, a) = advance(&d, "r", &WorkflowRunStatus::default(), &[], now(), &broken);
    assert!(a.is_empty());
    assert_eq!(s.phase, RunPhase::Failed);
    assert_eq!(
        s.steps[0].message.as_deref(),
        Some("forEach: `.x[]` did not yield an array")
    );
}

fn item_ok(step: &str, i: i32) -> Observation {
    Observation::Succeeded {
        step: step.into(),
        item: Some(i),
        outputs: json!({}),
    }
}

fn fan_out(
    total: u32,
    parallelism: u32,
    compensable: bool,
) -> (Definition, impl Fn(usize, &WorkflowRunStatus) -> Result<Start, String>) {
    let mut d = def(
        &[("each", &[], 0, compensable), ("after", &["each"], 0, false)],
        FailurePolicy::Compensate,
    );
    d.steps[0].parallelism = Some(parallelism);
    (d, move |i: usize, _: &WorkflowRunStatus| {
        Ok(if i == 0 { Start::Items(total) } else { Start::Run })
    })
}

#[test]
fn a_fan_out_runs_at_most_parallelism_items_at_once_and_fans_in() {
    let (d, start) = fan_out(25, 10, false);
    let (mut s, mut a) = advance(&d, "r", &WorkflowRunStatus::default(), &[], now(), &start);
    let mut peak = 0;
    let mut seen = std::collections::BTreeSet::new();
    while !a.iter().any(|x| matches!(x, Action::Run { item: None, .. })) {
        peak = peak.max(a.len());
        let done: Vec<Observation> = a
            .iter()
            .map(|x| match x {
                Action::Run {
                    step, item: Some(i), ..
                } => {
                    assert!(seen.insert(*i), "item {i} runs once");
                    item_ok(step, *i)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        (s, a) = advance(&d, "r", &s, &done, now(), &start);
    }
    assert_eq!(peak, 10);
    assert_eq!(seen.len(), 25);
    assert_eq!(ran(&a), ["run after#1"], "the dependent starts once every item is done");
    let counts = s.steps[0].items.clone().expect("counts");
    assert_eq!((counts.total, counts.succeeded, counts.running), (25, 25, 0));
    assert!(s.steps[0].item_details.is_empty(), "succeeded items keep no detail");
}

#[test]
fn a_fan_out_never_succeeds_on_an_outcome_of_the_whole_step_with_items_not_done() {
    // A `wait` step with forEach answers each item with a step-level
    // `Waiting`, then a `Check` succeeds the step: 0 of 3 items done.
    let (d, start) = fan_out(3, 10, false);
    let (s, _) = advance(&d, "r", &WorkflowRunStatus::default(), &[], now(), &start);
    let waiting = Observation::Waiting {
        step: "each".into(),
        until: Some(later(1)),
        outputs: None,
    };
    let (s, _) = advance(&d, "r", &s, &[waiting], now(), &start);
    let (s, a) = advance(&d, "r", &s, &[ok("each")], later(2), &start);
    assert_eq!(s.steps[0].phase, StepPhase::Failed, "{:?}", s.steps[0]);
    assert!(
        s.steps[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("forEach is for call and resource steps")),
        "{:?}",
        s.steps[0].message
    );
    assert!(
        !ran(&a).contains(&"run after#1".to_owned()),
        "the dependent never starts"
    );
    assert_ne!(s.phase, RunPhase::Succeeded);
}

#[test]
fn a_failed_item_stops_the_fan_out_and_the_completed_items_are_undone() {
    let (d, start) = fan_out(30, 10, true);
    let (s, a) = advance(&d, "r", &WorkflowRunStatus::default(), &[], now(), &start);
    assert_eq!(a.len(), 10);
    let mut outcomes: Vec<Observation> = (0..10).map(|i| item_ok("each", i)).collect();
    outcomes[3] = Observation::Failed {
        step: "each".into(),
        item: Some(3),
        message: "HTTP 500".into(),
        class: FailureClass::Transient,
    };
    let (s, a) = advance(&d, "r", &s, &outcomes, now(), &start);
    assert_eq!(s.phase, RunPhase::Compensating);
    let mut undo = ran(&a);
    undo.sort();
    let expected: Vec<String> = [0, 1, 2, 4, 5, 6, 7, 8, 9]
        .iter()
        .map(|i| format!("undo each[{i}]"))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(undo, expected_sorted, "the nine completed items, never the failed one");
    let undone: Vec<Observation> = [0, 1, 2, 4, 5, 6, 7, 8, 9]
        .iter()
        .map(|&i| Observation::Compensated {
            step: "each".into(),
            item: Some(i),
        })
        .collect();
    let (s, a) = advance(&d, "r", &s, &undone, now(), &start);
    assert!(a.is_empty());
    assert_eq!(s.phase, RunPhase::Compensated);
    assert_eq!(s.steps[0].items.as_ref().map(|c| c.compensated), Some(9));
}

#[test]
fn a_thousand_item_fan_out_keeps_its_status_small() {
    let (d, start) = fan_out(1000, 50, false);
    let (mut s, mut a) = advance(&d, "r", &WorkflowRunStatus::default(), &[], now(), &start);
    let mut largest = 0;
    while !a.iter().any(|x| matches!(x, Action::Run { item: None, .. })) {
        largest = largest.max(serde_json::to_vec(&s).map(|v| v.len()).unwrap_or(usize::MAX));
        let done: Vec<Observation> = a
            .iter()
            .filter_map(|x| match x {
                Action::Run {
                    step, item: Some(i), ..
                } => Some(item_ok(step, *i)),
                _ => None,
            })
            .collect();
        (s, a) = advance(&d, "r", &s, &done, now(), &start);
    }
    assert!(largest < 16 * 1024, "status peaked at {largest} bytes");
}

#[test]
fn a_step_timeout_fails_the_step_and_a_run_timeout_stops_the_run() {
    let mut d = def(&[("slow", &[], 0, false)], FailurePolicy::Stop);
    d.steps[0].timeout = Some(chrono::Duration::seconds(30));
    let waiting = Observation::Waiting {
        step: "slow".into(),
        until: Some(later(10)),
        outputs: None,
    };
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[waiting], now());
    assert_eq!(s.steps[0].phase, StepPhase::Waiting);
    let (s, _) = step(&d, "r", &s, &[], later(31));
    assert_eq!(s.phase, RunPhase::Failed);
    assert_eq!(s.steps[0].message.as_deref(), Some("timed out after 30s"));

    let mut d = def(&[("slow", &[], 0, false)], FailurePolicy::Stop);
    d.timeout = Some(chrono::Duration::seconds(60));
    let waiting = Observation::Waiting {
        step: "slow".into(),
        until: None,
        outputs: None,
    };
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[waiting], now());
    let (s, _) = step(&d, "r", &s, &[], later(61));
    assert_eq!(s.phase, RunPhase::Cancelled);
    assert_eq!(
        s.steps[0].message.as_deref(),
        Some("abandoned: the run timed out after 60s")
    );
}

#[test]
fn a_run_waiting_only_on_an_approval_says_so_and_a_rejection_compensates() {
    let mut d = def(
        &[("a", &[], 0, true), ("gate", &["a"], 0, false)],
        FailurePolicy::Compensate,
    );
    d.steps[1].approval = true;
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("a")], now());
    let parked = Observation::Waiting {
        step: "gate".into(),
        until: None,
        outputs: None,
    };
    let (s, a) = step(&d, "r", &s, &[parked], now());
    assert_eq!(s.phase, RunPhase::WaitingForApproval);
    assert_eq!(ran(&a), ["check gate"]);
    let rejected = Observation::Failed {
        step: "gate".into(),
        item: None,
        message: "rejected by alice".into(),
        class: FailureClass::Final,
    };
    let (s, a) = step(&d, "r", &s, &[rejected], now());
    assert_eq!(s.phase, RunPhase::Compensating);
    assert_eq!(ran(&a), ["undo a"]);
}

#[test]
fn the_stop_policy_leaves_completed_steps_alone() {
    let d = def(&[("a", &[], 0, true), ("b", &["a"], 0, true)], FailurePolicy::Stop);
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("a")], now());
    let (s, a) = step(&d, "r", &s, &[fail("b")], now());
    assert!(a.is_empty());
    assert_eq!(s.phase, RunPhase::Failed);
    assert_eq!(s.steps[0].phase, StepPhase::Succeeded);
}

#[test]
fn a_failed_compensation_ends_the_run_with_what_is_left_to_clean_up() {
    let d = def(
        &[("a", &[], 0, true), ("b", &["a"], 0, true)],
        FailurePolicy::Compensate,
    );
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("a")], now());
    let (s, _) = step(&d, "r", &s, &[fail("b")], now());
    let failed = Observation::CompensationFailed {
        step: "a".into(),
        item: None,
        message: "HTTP 500".into(),
        class: FailureClass::Final,
    };
    let (s, _) = step(&d, "r", &s, &[failed], now());
    assert_eq!(s.phase, RunPhase::CompensationFailed);
    assert_eq!(s.left_to_clean_up, ["a: HTTP 500"]);
}

#[test]
fn a_compensation_that_fails_transiently_is_retried_by_the_engine_with_backoff_then_given_up() {
    let d = def(
        &[("a", &[], 0, true), ("b", &["a"], 0, true)],
        FailurePolicy::Compensate,
    );
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("a")], now());
    let (mut s, _) = step(&d, "r", &s, &[fail("b")], now());
    let unavailable = || Observation::CompensationFailed {
        step: "a".into(),
        item: None,
        message: "target unavailable".into(),
        class: FailureClass::Transient,
    };
    let mut at = now();
    for attempt in 1..=UNDO_RETRIES {
        let (next, actions) = step(&d, "r", &s, &[unavailable()], at);
        assert_eq!(next.phase, RunPhase::Compensating, "attempt {attempt}");
        let a = &next.steps[0];
        assert_eq!(a.undo_attempts, attempt);
        // Not sent again before its backoff is due...
        assert!(actions.is_empty(), "{actions:?}");
        let due = a.next_at.expect("a retry is scheduled");
        assert!(due > at);
        assert_eq!(next_wakeup(&next), Some(due));
        // ...and sent again, with the same idempotency key, once it is.
        let (next, actions) = step(&d, "r", &next, &[], due);
        assert_eq!(
            actions,
            vec![Action::Compensate {
                step: "a".into(),
                item: None,
                idempotency_key: compensation_key("r", "a", None),
            }]
        );
        s = next;
        at = due;
    }
    let (s, _) = step(&d, "r", &s, &[unavailable()], at);
    assert_eq!(s.phase, RunPhase::CompensationFailed);
    assert_eq!(s.left_to_clean_up, ["a: target unavailable"]);
}

/// Found by the property test below: a retry scheduled in the same pass as
/// another step's final failure must not leave its step "running" forever.
#[test]
fn a_retry_dropped_because_the_run_compensates_ends_its_step() {
    let d = def(&[("a", &[], 0, false), ("b", &[], 1, false)], FailurePolicy::Compensate);
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, a) = step(&d, "r", &s, &[fail("a"), fail("b")], now());
    assert!(a.is_empty(), "no retry is sent while compensating: {a:?}");
    assert_eq!(s.steps[1].phase, StepPhase::Failed);
    assert_eq!(s.phase, RunPhase::Compensated);
}

#[test]
fn a_finished_run_ignores_late_observations() {
    let d = def(&[("a", &[], 0, true)], FailurePolicy::Compensate);
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("a")], now());
    let (again, actions) = step(&d, "r", &s, &[fail("a"), Observation::Cancelled], now());
    assert_eq!(again, s);
    assert!(actions.is_empty());
}

/// A random DAG: step `i` may depend on any earlier step.
fn arb_definition() -> impl Strategy<Value = Definition> {
    (1usize..9)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
                proptest::collection::vec((0u32..3, any::<bool>()), n),
                any::<bool>(),
            )
        })
        .prop_map(|(n, edges, infos, compensate)| {
            let steps: Vec<(String, Vec<String>)> = (0..n)
                .map(|i| {
                    (
                        format!("s{i}"),
                        (0..i).filter(|&j| edges[i][j]).map(|j| format!("s{j}")).collect(),
                    )
                })
                .collect();
            Definition {
                dag: Dag::new(&steps).unwrap_or_else(|e| panic!("generated DAG: {e}")),
                steps: infos
                    .into_iter()
                    .map(|(retries, compensable)| StepInfo {
                        retries,
                        compensable,
                        retry_on: vec![RetryOn::All],
                        ..StepInfo::default()
                    })
                    .collect(),
                on_failure: if compensate {
                    FailurePolicy::Compensate
                } else {
                    FailurePolicy::Stop
                },
                timeout: None,
            }
        })
}

proptest! {
    /// Random DAGs with random outcomes: every attempt of a step runs at
    /// most once, no step starts before its dependencies succeeded,
    /// compensation runs in reverse dependency order over exactly the
    /// completed compensable steps, and every run terminates.
    #[test]
    fn runs_respect_dependencies_compensate_in_reverse_and_terminate(
        d in arb_definition(),
        outcomes in proptest::collection::vec(any::<u8>(), 64),
    ) {
        let mut status = WorkflowRunStatus::default();
        let mut observations = Vec::new();
        let mut started: HashMap<String, i32> = HashMap::new();
        let mut succeeded: Vec<String> = Vec::new();
        let mut compensated: Vec<String> = Vec::new();
        let mut dice = outcomes.into_iter().cycle();
        let mut clock = now();
        for _ in 0..200 {
            clock += chrono::Duration::minutes(10);
            let (next, actions) = step(&d, "run", &status, &observations, clock);
            status = next;
            observations.clear();
            if actions.is_empty() && is_terminal(status.phase) {
                break;
            }
            for action in actions {
                match action {
                    Action::Check { .. } => prop_assert!(false, "no step waits here"),
                    Action::Run { step, attempt, .. } => {
                        let i = d.dag.index(&step).unwrap_or_default();
                        for &dep in &d.dag.deps[i] {
                            prop_assert!(succeeded.contains(&d.dag.names[dep]), "{step} started before {}", d.dag.names[dep]);
                        }
                        let previous = started.insert(step.clone(), attempt).unwrap_or(0);
                        prop_assert_eq!(attempt, previous + 1, "attempts of {} run once each, in order", step);
                        if dice.next().unwrap_or(0) % 4 == 0 {
                            observations.push(fail(&step));
                        } else {
                            succeeded.push(step.clone());
                            observations.push(ok(&step));
                        }
                    }
                    Action::Compensate { step, .. } => {
                        let i = d.dag.index(&step).unwrap_or_default();
                        prop_assert!(succeeded.contains(&step), "only completed steps are compensated");
                        prop_assert!(!compensated.contains(&step), "each compensation runs once");
                        for &dependent in &d.dag.dependents[i] {
                            let name = &d.dag.names[dependent];
                            let undone_first = !succeeded.contains(name) || compensated.contains(name) || !d.steps[dependent].compensable;
                            prop_assert!(undone_first, "{} undone before its dependent {}", step, name);
                        }
                        compensated.push(step.clone());
                        observations.push(undone(&step));
                    }
                }
            }
        }
        prop_assert!(is_terminal(status.phase), "the run ends: {:?}", status);
        if status.phase == RunPhase::Compensated {
            let mut expected: Vec<&String> = succeeded.iter().filter(|s| d.steps[d.dag.index(s).unwrap_or_default()].compensable).collect();
            let mut actual: Vec<&String> = compensated.iter().collect();
            expected.sort();
            actual.sort();
            prop_assert_eq!(expected, actual, "exactly the completed compensable steps are undone");
        }
    }
}

/// Durations come from users: one beyond the calendar must not panic.
#[test]
fn absurd_durations_saturate_instead_of_panicking() {
    let mut d = def(&[("a", &[], 3, false)], FailurePolicy::Stop);
    let forever = chrono::Duration::hours(4_000_000_000);
    d.steps[0].timeout = Some(forever);
    d.steps[0].backoff = forever;
    d.steps[0].max_backoff = forever;
    d.timeout = Some(forever);
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, a) = step(&d, "r", &s, &[fail("a")], now());
    assert!(a.is_empty(), "the retry is due at the end of time");
    assert_eq!(s.steps[0].next_at, Some(DateTime::<Utc>::MAX_UTC));
    assert_eq!(s.phase, RunPhase::Running);
}

fn ok_with(step: &str, outputs: Value) -> Observation {
    Observation::Succeeded {
        step: step.into(),
        item: None,
        outputs,
    }
}

#[test]
fn threat_outputs_too_large_for_status_fail_the_step_for_good_and_compensate() {
    let d = def(
        &[("a", &[], 3, true), ("b", &["a"], 3, true)],
        FailurePolicy::Compensate,
    );
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let (s, _) = step(&d, "r", &s, &[ok("a")], now());
    let huge = json!({ "blob": "é".repeat(limits::STEP_OUTPUTS_BYTES) });
    let (s, a) = step(&d, "r", &s, &[ok_with("b", huge)], now());
    assert_eq!(
        s.steps[1].phase,
        StepPhase::Failed,
        "not retried: the same answer would not fit"
    );
    assert!(s.steps[1].outputs.is_none());
    let message = s.steps[1].message.clone().unwrap_or_default();
    assert!(
        message.contains("outputs are") && message.contains("at most"),
        "{message}"
    );
    assert_eq!(ran(&a), ["undo a"]);
    let size = serde_json::to_vec(&s).map(|b| b.len()).unwrap_or(usize::MAX);
    assert!(size < 16 * 1024, "status is {size} bytes");
}

#[test]
fn threat_outputs_of_many_steps_together_are_bounded_per_run() {
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let steps: Vec<(&str, &[&str], u32, bool)> = names.iter().map(|n| (n.as_str(), &[][..], 0, false)).collect();
    let d = def(&steps, FailurePolicy::Stop);
    let (mut s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let each = json!({ "blob": "x".repeat(limits::STEP_OUTPUTS_BYTES - 100) });
    for n in &names {
        (s, _) = step(&d, "r", &s, &[ok_with(n, each.clone())], now());
    }
    let kept: usize = s
        .steps
        .iter()
        .filter_map(|x| x.outputs.as_ref())
        .map(|o| o.to_string().len())
        .sum();
    assert!(kept <= limits::RUN_OUTPUTS_BYTES, "{kept}");
    assert!(s.steps.iter().any(|x| x.phase == StepPhase::Failed));
}

#[test]
fn threat_long_non_ascii_failure_messages_are_cut_on_a_character_boundary() {
    let d = def(&[("a", &[], 0, true)], FailurePolicy::Stop);
    let (s, _) = step(&d, "r", &WorkflowRunStatus::default(), &[], now());
    let failure = Observation::Failed {
        step: "a".into(),
        item: None,
        message: "é€😀".repeat(2000),
        class: FailureClass::Permanent,
    };
    let (s, _) = step(&d, "r", &s, &[failure], now());
    let message = s.steps[0].message.clone().unwrap_or_default();
    assert!(message.len() <= limits::MESSAGE_BYTES, "{}", message.len());
}
