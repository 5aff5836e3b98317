//! Convergence benchmark: how close Tether gets to the API server's own
//! write ceiling, measured in the same run on the same machine, so the
//! figures are ratios that survive a noisy machine. It reports; it asserts
//! nothing. Method and results: BENCHMARKS.md.
//!
//!     cargo bench --bench convergence            # 1,000 then 10,000 resources
//!     BENCH_SMALL=1 cargo bench --bench convergence   # 200 then 1,000 (quick check)
//!     BENCH_SCALE=100000 cargo bench --bench convergence   # memory at 1k, 10k, 100k and a relist
//!     BENCH_SHARDED=30000 cargo bench --bench convergence  # 3 replicas, 6 shards: memory, convergence, takeover
//!     BENCH_SHARDED=3000 cargo bench --bench convergence   # the same, quick
//!
//! `BENCH_CONTROLLER_WRAPPER="heaptrack -o /tmp/tether"` runs the controller
//! under a profiler (any command that takes the controller's command line).

mod common;
#[path = "convergence/sharded.rs"]
mod sharded;

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
    if let Some(largest) = std::env::var("BENCH_SCALE").ok().and_then(|n| n.parse::<usize>().ok()) {
        return scale::run(&cp, largest).await;
    }
    if let Some(total) = std::env::var("BENCH_SHARDED")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        return sharded::run(&cp, total).await;
    }
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
    install_target(&cp, &simulator)?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = spawn_controller(&cp.kubeconfig("controller"), metrics_port)?;
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

/// The Adapter of the simulator's contacts and a TargetSystem with no rate
/// limit and `maxConcurrency: 64`.
fn install_target(cp: &ControlPlane, simulator: &tether_sim::SimHandle) -> Result<()> {
    ok(&cp.apply_as("admin", NS, &adapter().to_string()))?;
    let target = json!({"apiVersion": "v1", "kind": "List", "items": target(simulator)});
    ok(&cp.apply_as("admin", NS, &target.to_string()))
}

/// The Adapter `bench` of the simulator's contacts.
fn adapter() -> serde_json::Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": "bench"},
        "spec": {"rest": {"resourceTypes": [{"name": "contact",
            "read": {"method": "GET", "path": "/v1/contacts/\\(.id)"},
            "create": {"method": "POST", "path": "/v1/contacts", "body": ".properties + {externalName: .name}"},
            "update": {"method": "PATCH", "path": "/v1/contacts/\\(.id)", "body": ".properties"},
            "delete": {"method": "DELETE", "path": "/v1/contacts/\\(.id)"}}]}}})
}

/// The Secret `token` and the TargetSystem `target` (no rate limit,
/// `maxConcurrency: 64`) of a namespace, on the simulator.
fn target(simulator: &tether_sim::SimHandle) -> [serde_json::Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"token": TOKEN}}),
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "target"},
         "spec": {"adapterRef": {"name": "bench"}, "baseUrl": simulator.base_url(), "maxConcurrency": 64,
                  "auth": {"bearer": {"tokenSecretRef": {"name": "token", "key": "token"}}}}}),
    ]
}

/// `tether run` (release build, its own process) on namespace `bench`,
/// under `$BENCH_CONTROLLER_WRAPPER` when set (a profiler).
fn spawn_controller(kubeconfig: &std::path::Path, metrics_port: u16) -> Result<std::process::Child> {
    spawn_controller_with(
        kubeconfig,
        metrics_port,
        &["--namespace", NS],
        std::process::Stdio::null(),
        "warn",
    )
}

/// `tether run <extra>` (release build, its own process, `--concurrency
/// 64`), under `$BENCH_CONTROLLER_WRAPPER` when set, its standard error
/// to `stderr`, logging at `rust_log`.
fn spawn_controller_with(
    kubeconfig: &std::path::Path,
    metrics_port: u16,
    extra: &[&str],
    stderr: std::process::Stdio,
    rust_log: &str,
) -> Result<std::process::Child> {
    let wrapper = std::env::var("BENCH_CONTROLLER_WRAPPER").unwrap_or_default();
    let mut words: Vec<String> = wrapper.split_whitespace().map(str::to_owned).collect();
    words.push(env!("CARGO_BIN_EXE_tether").to_owned());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    words.push("run".to_owned());
    words.extend(extra.iter().map(|w| (*w).to_owned()));
    words.extend(
        [
            "--concurrency",
            "64",
            "--metrics-addr",
            &metrics_addr,
            "--webhook-addr",
            "127.0.0.1:0",
            // The simulator is on loopback: the default list without it.
            "--egress-deny",
            support::tether::TEST_EGRESS_DENY,
        ]
        .map(str::to_owned),
    );
    let (program, args) = words.split_first().ok_or("no controller command")?;
    Ok(std::process::Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", rust_log)
        // As the image runs it (Dockerfile).
        .env("MALLOC_ARENA_MAX", "2")
        .stderr(stderr)
        .spawn()?)
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

/// `BENCH_SCALE=N`: the controller's memory at 1,000, 10,000, … up to N
/// Ready resources, and during a forced relist of all of them. Resources
/// come from a bulk loader (64 creates at a time, the finalizer already
/// set, a one-hour poll), so a 2-core machine gets to 100,000 in minutes.
mod scale {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use kube::api::{Api, PostParams};
    use kube::runtime::watcher;
    use serde_json::json;
    use tether::api::ExternalResource;
    use tether_harness::ControlPlane;

    use super::common::support::gone_proxy::GoneProxy;
    use super::common::{Result, machine, peak_rss_mib};
    use super::{NS, TOKEN, install_target, spawn_controller};

    pub async fn run(cp: &ControlPlane, largest: usize) -> Result<()> {
        println!("# Tether memory at scale\n\nmachine: {}\n", machine());
        super::ok(&cp.kubectl(&["create", "namespace", NS]))?;
        let admin = cp.try_client("admin").await?;
        let api: Api<ExternalResource> = Api::namespaced(admin.clone(), NS);
        let simulator = super::common::support::fixtures::Simulator::accepting(TOKEN).start();
        install_target(cp, &simulator)?;
        // The controller reaches the API server through a proxy that can
        // expire its ExternalResource watches (a forced 410 Gone).
        let proxy = GoneProxy::start(&cp.server, &cp.dir.join("ca.crt"), "externalresources").await;
        let kubeconfig = cp.dir.join("controller-proxy.kubeconfig");
        proxy.write_kubeconfig(&kubeconfig, tether_harness::CONTROLLER_TOKEN);
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = spawn_controller(&kubeconfig, metrics_port)?;
        let pid = child.id();
        super::common::wait_http(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
        let ready = ready_counter(api.clone());

        let started = Instant::now();
        let mut rows = Vec::new();
        let mut loaded = 0;
        let mut size = 1_000.min(largest);
        loop {
            let load = Instant::now();
            bulk_load(&api, loaded, size).await?;
            loaded = size;
            wait_until(|| ready.load(Ordering::Relaxed) >= size, Duration::from_secs(1800)).await?;
            let converged = load.elapsed();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let row = (size, converged, peak_rss_mib(pid), rss_mib(pid));
            println!(
                "{:>7} Ready: {:.0}s to load and converge, peak RSS {:.0} MiB, RSS now {:.0} MiB \
                 (anonymous {:.0} MiB, file-backed {:.0} MiB: the binary's pages; {:.0} threads)",
                row.0,
                row.1.as_secs_f64(),
                row.2,
                row.3,
                status_field(pid, "RssAnon:") / 1024.0,
                status_field(pid, "RssFile:") / 1024.0,
                status_field(pid, "Threads:"),
            );
            rows.push(row);
            if size >= largest {
                break;
            }
            size = (size * 10).min(largest);
        }

        // A forced relist of every ExternalResource: the peak is measured
        // from here (VmHWM reset), until the watch that follows the list.
        let steady = rss_mib(pid);
        reset_peak(pid)?;
        let (watches, lists, open) = (proxy.watches(), proxy.lists(), proxy.open_watches());
        let relist = Instant::now();
        proxy.expire();
        // Each expired watch lists again, then watches again.
        wait_until(
            || proxy.watches() >= watches + open.max(1) && proxy.lists() > lists,
            Duration::from_secs(600),
        )
        .await?;
        let relisted = relist.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let relist_peak = peak_rss_mib(pid);
        let ready_after = ready.load(Ordering::Relaxed);
        println!(
            "relist of {loaded} by {open} watches: {:.1}s, {} list pages; RSS {steady:.0} MiB before, peak {relist_peak:.0} MiB during ({:.2}x), {:.0} MiB after; {ready_after} Ready",
            relisted.as_secs_f64(),
            proxy.lists() - lists,
            relist_peak / steady.max(1.0),
            rss_mib(pid),
        );
        println!(
            "simulator: {} objects, {} create calls; whole run {:.0}s",
            simulator.objects("contacts").len(),
            simulator.stats().count("create", "contacts"),
            started.elapsed().as_secs_f64()
        );
        println!("\n| resources | load + converge | peak RSS | RSS when Ready |\n| --- | --- | --- | --- |");
        for (size, took, peak, now) in rows {
            println!(
                "| {size} | {:.0} s | {peak:.0} MiB | {now:.0} MiB |",
                took.as_secs_f64()
            );
        }
        println!(
            "| relist of {loaded} | {:.1} s | {relist_peak:.0} MiB | {steady:.0} MiB before |",
            relisted.as_secs_f64()
        );
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Creates resources `from..to`, 64 at a time, each with the finalizer
    /// already set and a one-hour poll.
    async fn bulk_load(api: &Api<ExternalResource>, from: usize, to: usize) -> Result<()> {
        let objects = (from..to).map(|i| {
            let name = format!("r-{i:06}");
            let manifest = json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
                "metadata": {"name": name, "finalizers": [tether::controller::EXTERNAL_RESOURCE_FINALIZER]},
                "spec": {"targetRef": {"name": "target"}, "type": "contact", "pollInterval": "1h",
                         "properties": {"email": format!("{name}@example.com"), "plan": "pro"}}});
            (api.clone(), manifest)
        });
        Ok(create_all(objects.collect::<Vec<_>>(), Arc::new(AtomicUsize::new(0))).await?)
    }

    /// Creates `objects` (where, what), 64 at a time; `created` counts the
    /// answers. The loader of every memory figure.
    pub async fn create_all(
        objects: Vec<(Api<ExternalResource>, serde_json::Value)>,
        created: Arc<AtomicUsize>,
    ) -> std::result::Result<(), String> {
        let failures = futures::stream::iter(objects)
            .map(|(api, manifest)| {
                let created = created.clone();
                async move {
                    let object: ExternalResource = serde_json::from_value(manifest).map_err(|e| e.to_string())?;
                    let result = api
                        .create(&PostParams::default(), &object)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    created.fetch_add(1, Ordering::Relaxed);
                    result
                }
            })
            .buffer_unordered(64)
            .filter_map(|r| async move { r.err() })
            .collect::<Vec<String>>()
            .await;
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(format!("{} creates failed, the first: {first}", failures.len())),
        }
    }

    /// The number of Ready ExternalResources, kept by a watch.
    fn ready_counter(api: Api<ExternalResource>) -> Arc<AtomicUsize> {
        let count = Arc::new(AtomicUsize::new(0));
        let shared = count.clone();
        tokio::spawn(async move {
            let mut ready = HashSet::new();
            let mut listing = HashSet::new();
            let is_ready = |r: &ExternalResource| {
                r.status
                    .as_ref()
                    .is_some_and(|s| tether::conditions::is_true(&s.conditions, "Ready"))
            };
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(r)) => {
                        let name = r.metadata.name.clone().unwrap_or_default();
                        if is_ready(&r) {
                            ready.insert(name);
                        } else {
                            ready.remove(&name);
                        }
                    }
                    Ok(watcher::Event::Delete(r)) => {
                        ready.remove(&r.metadata.name.clone().unwrap_or_default());
                    }
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitApply(r)) => {
                        if is_ready(&r) {
                            listing.insert(r.metadata.name.clone().unwrap_or_default());
                        }
                    }
                    Ok(watcher::Event::InitDone) => ready = std::mem::take(&mut listing),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
                shared.store(ready.len(), Ordering::Relaxed);
            }
        });
        count
    }

    pub async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> Result<()> {
        let started = Instant::now();
        while !done() {
            if started.elapsed() > limit {
                return Err(format!("not done after {}s", limit.as_secs()).into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Current RSS (`VmRSS`) in MiB.
    pub fn rss_mib(pid: u32) -> f64 {
        status_field(pid, "VmRSS:") / 1024.0
    }

    /// A number of the process's `/proc/<pid>/status` (KiB for sizes).
    fn status_field(pid: u32, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Resets the process's peak RSS (`VmHWM`) to its current RSS.
    fn reset_peak(pid: u32) -> Result<()> {
        Ok(std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?)
    }
}
