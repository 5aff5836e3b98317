//! Convergence benchmark: how close Tether gets to the API server's own
//! write ceiling, measured in the same run on the same machine, so the
//! figures are ratios that survive a noisy machine. It reports; it asserts
//! nothing. Method and results: BENCHMARKS.md.
//!
//!     cargo bench --bench convergence            # 1,000 then 10,000 resources
//!     BENCH_SMALL=1 cargo bench --bench convergence   # 200 then 1,000 (quick check)

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tether::api::ExternalResource;
use tether_harness::ControlPlane;

const NS: &str = "bench";
const TOKEN: &str = "bench-token";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tether::install_crypto_provider();
    let small = std::env::var_os("BENCH_SMALL").is_some();
    let (first, second) = if small { (200, 1_000) } else { (1_000, 10_000) };
    let cp = ControlPlane::start(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))?;
    let controller_client = cp.try_client("controller").await?;
    let admin = cp.try_client("admin").await?;
    ok(&cp.kubectl(&["create", "namespace", NS]))?;
    let machine = machine();
    println!("# Tether convergence benchmark\n\nmachine: {machine}\n");

    // (a) The raw write ceiling.
    let ceiling = write_ceilings(&controller_client, &admin, NS).await?;
    let admin_api: Api<ExternalResource> = Api::namespaced(admin.clone(), NS);

    // The target and the controller under test (release build, its own process).
    let simulator = support::fixtures::Simulator::accepting(TOKEN).start();
    let adapter = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": "bench"},
        "spec": {"rest": {"resourceTypes": [{"name": "contact",
            "read": {"method": "GET", "path": "/v1/contacts/\\(.id)"},
            "create": {"method": "POST", "path": "/v1/contacts", "body": ".properties + {externalName: .name}"},
            "update": {"method": "PATCH", "path": "/v1/contacts/\\(.id)", "body": ".properties"},
            "delete": {"method": "DELETE", "path": "/v1/contacts/\\(.id)"}}]}}});
    ok(&cp.apply_as("admin", NS, &adapter.to_string()))?;
    let target = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"token": TOKEN}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "target"},
         "spec": {"adapterRef": {"name": "bench"}, "baseUrl": simulator.base_url(), "maxConcurrency": 64,
                  "auth": {"bearer": {"tokenSecretRef": {"name": "token", "key": "token"}}}}}]});
    ok(&cp.apply_as("admin", NS, &target.to_string()))?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "run",
            "--namespace",
            NS,
            "--concurrency",
            "64",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            // The simulator is on loopback: the default list without it.
            "--egress-deny",
            support::tether::TEST_EGRESS_DENY,
        ])
        .env("KUBECONFIG", cp.kubeconfig("controller"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let controller_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    wait_http(&controller_metrics).await;

    // (b) N resources applied at once, time until every one is Ready; (c)
    // API writes per converged resource.
    let writes_before = apiserver_writes(&cp, "externalresources")?;
    let took = converge(&admin_api, 0, first, "10s").await?;
    let writes = apiserver_writes(&cp, "externalresources")? - writes_before;
    let per_resource = writes.status_and_object as f64 / first as f64;
    let events_per_resource = writes.events as f64 / first as f64;
    let ideal = writes.status_and_object as f64 / ceiling[&32];
    println!(
        "\n{first} resources applied at once: all Ready in {:.1}s",
        took.as_secs_f64()
    );
    println!(
        "  API writes per converged resource: {per_resource:.2} (finalizer + status), plus {events_per_resource:.2} Event writes and {:.2} writes refused as stale (409)",
        writes.conflicts as f64 / first as f64
    );
    println!(
        "  the same writes at the concurrency-32 ceiling would take {ideal:.1}s: ratio {:.2}",
        took.as_secs_f64() / ideal
    );
    println!(
        "  simulator: {} objects, {} create calls",
        simulator.objects("contacts").len(),
        simulator.stats().count("create", "contacts")
    );

    // (c) No-op resyncs: pollInterval 10s, nothing changes for 25s.
    let reconciles_before = metric(
        &http_text(&controller_metrics).await,
        "tether_reconciles_total{kind=\"ExternalResource\"}",
    );
    let writes_before = apiserver_writes(&cp, "externalresources")?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let resyncs = metric(
        &http_text(&controller_metrics).await,
        "tether_reconciles_total{kind=\"ExternalResource\"}",
    ) - reconciles_before;
    let resync_writes = apiserver_writes(&cp, "externalresources")? - writes_before;
    println!(
        "\nno-op resyncs over 25s: {resyncs:.0} reconciles, {} status/object writes, {} Event writes ({:.3} writes per resync)",
        resync_writes.status_and_object,
        resync_writes.events,
        resync_writes.total() as f64 / resyncs.max(1.0)
    );
    let rss_first = peak_rss_mib(pid);
    println!("controller peak RSS with {first} resources: {rss_first:.0} MiB");

    // (d, e) Up to the second size with a 60s poll; steady state.
    let started = Instant::now();
    let _ = converge(&admin_api, first, second, "60s").await?;
    println!(
        "\n{} more resources converged in {:.1}s",
        second - first,
        started.elapsed().as_secs_f64()
    );
    for i in 0..first {
        // Move the first batch to the 60s poll too, so steady state is uniform.
        admin_api
            .patch(
                &format!("r-{i:05}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"pollInterval": "60s"}})),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_second = peak_rss_mib(pid);
    println!("controller peak RSS with {second} resources: {rss_second:.0} MiB");
    let (cpu_before, reconciles_before) = (
        cpu_seconds(pid),
        metric(
            &http_text(&controller_metrics).await,
            "tether_reconciles_total{kind=\"ExternalResource\"}",
        ),
    );
    let writes_before = apiserver_writes(&cp, "externalresources")?;
    let window = Duration::from_secs(60);
    tokio::time::sleep(window).await;
    let reconciles = metric(
        &http_text(&controller_metrics).await,
        "tether_reconciles_total{kind=\"ExternalResource\"}",
    ) - reconciles_before;
    let cpu = cpu_seconds(pid) - cpu_before;
    let steady_writes = apiserver_writes(&cp, "externalresources")? - writes_before;
    println!(
        "steady state, {second} Ready resources, 60s poll: {:.1} reconciles/s (expected {:.1}), CPU {:.1}% of one core, {} API writes in {}s",
        reconciles / window.as_secs_f64(),
        second as f64 / 60.0,
        100.0 * cpu / window.as_secs_f64(),
        steady_writes.total(),
        window.as_secs()
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

fn resource(name: &str, poll: &str) -> ExternalResource {
    serde_json::from_value(
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource", "metadata": {"name": name},
        "spec": {"targetRef": {"name": "target"}, "type": "contact", "pollInterval": poll,
                 "properties": {"email": format!("{name}@example.com"), "plan": "pro"}}}),
    )
    .unwrap_or_else(|e| panic!("benchmark fixture: {e}"))
}

/// Creates resources `from..to` (32 at a time) and waits until all are Ready.
async fn converge(api: &Api<ExternalResource>, from: usize, to: usize, poll: &str) -> Result<Duration> {
    let objects = (from..to).map(|i| resource(&format!("r-{i:05}"), poll)).collect();
    create_and_wait(api, objects, "r-", to, |r: &ExternalResource| {
        r.status
            .as_ref()
            .is_some_and(|s| tether::conditions::is_true(&s.conditions, "Ready"))
    })
    .await
}
