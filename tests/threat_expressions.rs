//! Threat: a tenant's expression that never ends, allocates without bound,
//! nests past any stack or reaches for the process. Evaluated in the real
//! expression sandbox (`tether expr-worker` processes of the built binary),
//! as `tether run` does: each is a clear error within a bounded time, the
//! next expression evaluates normally, and the async runtime keeps serving
//! other tasks meanwhile.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};
use tether::expr::{Expr, ExprError, sandbox};

const TIMEOUT: Duration = Duration::from_millis(500);

fn sandboxed() {
    sandbox::install(
        env!("CARGO_BIN_EXE_tether").into(),
        sandbox::Limits {
            timeout: TIMEOUT,
            memory_bytes: 128 * 1024 * 1024,
            workers: 2,
        },
    );
}

fn eval(source: &str) -> (Result<Value, ExprError>, Duration) {
    sandboxed();
    let expr = Expr::compile("spec.steps[hostile].input", source, &[]).expect("compiles");
    let started = Instant::now();
    let result = expr.eval(&json!({"a": 1}), &[]);
    (result, started.elapsed())
}

#[track_caller]
fn assert_stopped(source: &str) {
    let (result, took) = eval(source);
    match result {
        Err(ExprError::Limit { field, message, .. }) => {
            assert_eq!(field, "spec.steps[hostile].input");
            assert!(!message.is_empty());
        }
        other => panic!("{source}: expected a limit error, got {other:?}"),
    }
    assert!(took < TIMEOUT * 6, "{source} took {took:?}");
    // The sandbox recovers: the next evaluation works.
    let (next, _) = eval(".a + 1");
    assert_eq!(next, Ok(json!(2)), "after {source}");
}

#[test]
fn threat_expression_that_never_ends_is_stopped_at_the_deadline() {
    assert_stopped("last(range(1e12))");
    assert_stopped("def f: f; f");
    assert_stopped("[repeat(1)] | length");
}

#[test]
fn threat_expression_that_allocates_without_bound_costs_only_its_worker() {
    assert_stopped("reduce range(64) as $i (\"xxxxxxxxxxxxxxxx\"; . + .) | length");
}

#[test]
fn threat_expression_that_nests_past_the_stack_costs_only_its_worker() {
    assert_stopped("reduce range(1000000) as $i (0; [.]) | tostring | length");
}

#[test]
fn threat_expression_result_nested_too_deep_for_status_is_refused() {
    let (result, _) = eval("reduce range(500) as $i (0; [.])");
    assert!(matches!(result, Err(ExprError::Limit { .. })), "{result:?}");
}

/// While `hostile` evaluations run, a timer on the same runtime still fires
/// on time (the waits were moved off the runtime's workers); then each of
/// them ends with a limit error.
async fn stopped_without_pinning_the_runtime(hostile: Vec<tokio::task::JoinHandle<Result<Value, ExprError>>>) {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        started.elapsed() < TIMEOUT,
        "the runtime was pinned for {:?}",
        started.elapsed()
    );
    for task in hostile {
        let result = task.await.expect("task");
        assert!(matches!(result, Err(ExprError::Limit { .. })), "{result:?}");
    }
}

#[test]
fn threat_hostile_evaluations_do_not_pin_the_async_runtime() {
    sandboxed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let hostile: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async {
                    let expr = Expr::compile("when", "last(range(1e12))", &[]).expect("compiles");
                    expr.eval(&Value::Null, &[])
                })
            })
            .collect();
        stopped_without_pinning_the_runtime(hostile).await;
    });
}

/// Threads of this process whose name is `name` (a runtime's threads, its
/// blocking pool included, carry the runtime's name).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim_end() == name)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn threat_a_burst_of_slow_evaluations_waits_for_turns_as_tasks_not_as_threads() {
    sandboxed();
    const NAME: &str = "expr-burst";
    const BURST: usize = 8;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(NAME)
        .enable_all()
        .build()
        .expect("runtime");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(threads_named(NAME));
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    runtime.block_on(async {
        // Each reconcile of a burst evaluates a tenant's expression that
        // runs to the deadline, two workers for eight of them.
        let burst: Vec<_> = (0..BURST)
            .map(|_| {
                tokio::spawn(async {
                    let expr = Expr::compile("when", "last(range(1e12))", &[]).expect("compiles");
                    tether::expr::in_turn(|| expr.eval(&Value::Null, &[])).await
                })
            })
            .collect();
        stopped_without_pinning_the_runtime(burst).await;
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().expect("sampler");
    // Two runtime workers, two evaluations waiting on the two sandbox
    // workers (their cores handed to two more threads), and a spare the
    // blocking pool keeps: never a thread per waiting evaluation.
    assert!(
        most <= 2 + 2 + 2,
        "{most} runtime threads for {BURST} evaluations on 2 sandbox workers"
    );
    assert!(most >= 3, "the sampler saw {most} threads: it did not watch the burst");
}

/// Pieces of jq, hostile and ordinary, glued at random.
fn program() -> impl Strategy<Value = String> {
    let atom = prop::sample::select(vec![
        ".",
        ".a",
        "1e12",
        "range(1e9)",
        "[.]",
        "tostring",
        "tojson",
        "fromjson",
        "\"é€😀\"",
        "ltrimstr(\"x\")",
        "explode",
        "implode",
        "@base64d",
        "test(\"(a+)+$\")",
        "split(\"\")",
        "[limit(1e6; repeat(.))]",
        "path(..)",
        "getpath([\"a\",\"b\"])",
        "error",
        "try error catch .",
        "keys",
        "add",
        "* 1e6",
        "tonumber",
        "utf8bytelength",
        "ascii_downcase",
        "@uri",
        "fromdate",
        "todate",
        "splits(\"a\")",
        "combinations",
        "walk(.)",
        "recurse",
        "$__loc__",
        "{}",
        "null",
    ]);
    prop::collection::vec(atom, 1..6).prop_map(|parts| parts.join(" | "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn threat_arbitrary_expressions_end_in_bounded_time_without_panicking(source in program()) {
        sandboxed();
        let Ok(expr) = Expr::compile("body", &source, &[]) else { return Ok(()) };
        let started = Instant::now();
        let _ = expr.eval(&json!({"a": "é€😀", "b": [1, 2, 3]}), &[]);
        prop_assert!(started.elapsed() < TIMEOUT * 6, "{} took {:?}", source, started.elapsed());
    }
}
