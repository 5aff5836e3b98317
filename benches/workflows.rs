//! Workflow benchmark: a 1,000-way fan-out, 1,000 three-step runs drained,
//! and the same runs all compensating — each against the API server's raw
//! write ceiling measured in the same run. It reports; it asserts nothing.
//! Method and results: BENCHMARKS.md.
//!
//!     cargo bench --bench workflows
//!     BENCH_SMALL=1 cargo bench --bench workflows   # 200 runs (quick check)

mod common;

use std::time::Duration;

use common::*;
use kube::api::Api;
use serde_json::{Value, json};
use tether::api::WorkflowRun;
use tether::api::workflow_run::RunPhase;
use tether_harness::ControlPlane;

const NS: &str = "bench";
const TOKEN: &str = "bench-token";

fn call(name: &str, collection: &str, depends: &[&str]) -> Value {
    json!({"name": name, "dependsOn": depends, "call": {"targetRef": {"name": "target"},
           "request": {"method": "POST", "path": format!("/v1/{collection}"), "body": "{run: $run.name}"},
           "outputs": {"id": ".body.id"}},
           "compensate": {"targetRef": {"name": "target"},
                          "request": {"method": "DELETE", "path": format!("/v1/{collection}/\\($steps.{name}.outputs.id)")}}})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tether::install_crypto_provider();
    let runs = if std::env::var_os("BENCH_SMALL").is_some() {
        200
    } else {
        1_000
    };
    let cp = ControlPlane::start(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let controller_client = cp.try_client("controller").await?;
    let admin = cp.try_client("admin").await?;
    ok(&cp.kubectl(&["create", "namespace", NS]))?;
    println!("# Tether workflow benchmark\n\nmachine: {}\n", machine());
    let ceiling = write_ceilings(&controller_client, &admin, NS).await?;
    let at_ceiling = |writes: u64| writes as f64 / ceiling[&32];

    let simulator = support::fixtures::Simulator::accepting(TOKEN).start();
    let setup = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": "bench"},
         "spec": {"rest": {"resourceTypes": [{"name": "item",
             "read": {"method": "GET", "path": "/v1/items/\\(.id)"},
             "create": {"method": "POST", "path": "/v1/items", "body": ".properties"}}]}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"token": TOKEN}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "target"},
         "spec": {"adapterRef": {"name": "bench"}, "baseUrl": simulator.base_url(), "maxConcurrency": 128,
                  "auth": {"bearer": {"tokenSecretRef": {"name": "token", "key": "token"}}}}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "fan"},
         "spec": {"steps": [{"name": "each", "forEach": "[range(1000)]", "parallelism": 100,
                             "call": {"targetRef": {"name": "target"},
                                      "request": {"method": "POST", "path": "/v1/items", "body": "{n: $item}"}}}]}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "three"},
         "spec": {"steps": [call("one", "ones", &[]), call("two", "twos", &["one"]), call("three", "threes", &["two"])]}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "undo"},
         "spec": {"steps": [call("one", "uones", &[]), call("two", "utwos", &["one"]),
                            {"name": "three", "dependsOn": ["two"], "call": {"targetRef": {"name": "target"},
                             "request": {"method": "PUT", "path": "/v1/missing/nothing", "body": "{}"}}}]}}
    ]});
    ok(&cp.apply_as("admin", NS, &setup.to_string()))?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--namespace", NS, "--concurrency", "64"])
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--webhook-addr",
            "127.0.0.1:0",
            // The simulator is on loopback: the default list without it.
            "--egress-deny",
            support::tether::TEST_EGRESS_DENY,
        ])
        .env("KUBECONFIG", cp.kubeconfig("controller"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    wait_http(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    let api: Api<WorkflowRun> = Api::namespaced(admin.clone(), NS);

    // (a) One run fanning out to 1,000 items, 100 at a time.
    let before = apiserver_writes(&cp, "workflowruns")?;
    let took = drain(&api, "fan", "fan", 1, RunPhase::Succeeded).await?;
    let writes = apiserver_writes(&cp, "workflowruns")? - before;
    println!(
        "\n1,000-way fan-out (parallelism 100), one run: {:.1}s",
        took.as_secs_f64()
    );
    println!("  {:.0} steps/s", 1000.0 / took.as_secs_f64());
    println!(
        "  API writes per step: {:.3} ({} run writes, {} Event writes for 1,000 items)",
        writes.status_and_object as f64 / 1000.0,
        writes.status_and_object,
        writes.events
    );
    println!(
        "  items per second against the concurrency-32 write ceiling: {:.2} items per ceiling write",
        1000.0 / took.as_secs_f64() / ceiling[&32]
    );

    // (b) Runs of three steps, all at once; (c) the same, every run
    // compensating two steps after its third fails.
    for (label, workflow, end) in [
        ("three-step runs", "three", RunPhase::Succeeded),
        ("three-step runs, every one compensating", "undo", RunPhase::Compensated),
    ] {
        let before = apiserver_writes(&cp, "workflowruns")?;
        let took = drain(&api, workflow, workflow, runs, end).await?;
        let writes = apiserver_writes(&cp, "workflowruns")? - before;
        println!("\n{runs} {label}: all {end:?} in {:.1}s", took.as_secs_f64());
        println!(
            "  {:.0} runs/s, {:.0} steps/s",
            runs as f64 / took.as_secs_f64(),
            3.0 * runs as f64 / took.as_secs_f64()
        );
        println!(
            "  API writes per run: {:.2} (finalizer + status), plus {:.2} Event writes, {:.2} refused as stale (409)",
            writes.status_and_object as f64 / runs as f64,
            writes.events as f64 / runs as f64,
            writes.conflicts as f64 / runs as f64
        );
        println!(
            "  the same run writes at the concurrency-32 ceiling would take {:.1}s: ratio {:.2}; with Events {:.1}s: ratio {:.2}",
            at_ceiling(writes.status_and_object),
            took.as_secs_f64() / at_ceiling(writes.status_and_object),
            at_ceiling(writes.total()),
            took.as_secs_f64() / at_ceiling(writes.total()),
        );
    }
    println!(
        "\nsimulator: {} items, {} ones, {} threes; compensations left {} uones and {} utwos",
        simulator.objects("items").len(),
        simulator.objects("ones").len(),
        simulator.objects("threes").len(),
        simulator.objects("uones").len(),
        simulator.objects("utwos").len()
    );
    println!(
        "controller: peak RSS {:.0} MiB, {:.1} CPU seconds in total",
        peak_rss_mib(pid),
        cpu_seconds(pid)
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// Creates `count` runs of `workflow` (32 at a time) and waits until every
/// one reaches `end`.
async fn drain(api: &Api<WorkflowRun>, workflow: &str, prefix: &str, count: usize, end: RunPhase) -> Result<Duration> {
    let runs = (0..count)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun",
                "metadata": {"name": format!("{prefix}-{i:05}")},
                "spec": {"workflowRef": {"name": workflow}}}))
            .unwrap_or_else(|e| panic!("benchmark fixture: {e}"))
        })
        .collect();
    create_and_wait(api, runs, &format!("{prefix}-"), count, |r: &WorkflowRun| {
        r.status.as_ref().is_some_and(|s| s.phase == end)
    })
    .await
}
