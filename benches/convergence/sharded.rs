//! `BENCH_SHARDED=N`: three replicas of `tether run --shards 6` on the
//! real control plane, N ExternalResources over 60 namespaces (10 of each
//! shard, so each replica's two shards hold a third of them). Figures:
//! the write ceiling of the same run; the time from the first create
//! until all N are Ready, against that ceiling; each replica's peak RSS
//! and cached ExternalResources; then a replica is SIGKILLed while new
//! resources of its shards are being created, and the time until its
//! shards are held by the other two and every resource of its namespaces
//! is Ready. Resources come from a bulk loader as in `BENCH_SCALE` (64
//! creates at a time, the finalizer and the shard label already set, a
//! one-hour poll). The replicas watch every namespace, as the chart's
//! default does.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tether::api::{ExternalResource, TargetSystem};
use tether_harness::ControlPlane;

use super::common::support::fixtures::Simulator;
use super::common::{Result, apiserver_writes, http_text, machine, metric, peak_rss_mib, wait_http, write_ceilings};
use super::scale::{create_all, rss_mib};
use super::{NS, TOKEN, adapter, ok, spawn_controller_with, target};

const SHARDS: u32 = 6;
const NAMESPACES_PER_SHARD: usize = 10;
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
const LEASE: &str = "bench";
const LEASE_NAMESPACE: &str = "tether-system";

/// A replica: its process (SIGKILLed when dropped) and `/metrics`.
struct Replica {
    child: Child,
    pid: u32,
    metrics: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(cp: &ControlPlane, identity: &str) -> Result<Replica> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let shards = SHARDS.to_string();
        let log = cp.dir.join(format!("bench-replica-{identity}.log"));
        let child = spawn_controller_with(
            &cp.kubeconfig("controller"),
            port,
            &[
                "--leader-election",
                "--lease-namespace",
                LEASE_NAMESPACE,
                "--lease-name",
                LEASE,
                "--shards",
                &shards,
                "--identity",
                identity,
            ],
            std::fs::File::create(&log)?.into(),
            "warn,tether::run=info",
        )?;
        Ok(Replica {
            pid: child.id(),
            child,
            metrics: format!("http://127.0.0.1:{port}/metrics"),
        })
    }

    async fn cached_resources(&self) -> f64 {
        metric(
            &http_text(&self.metrics).await,
            "tether_cached_objects{kind=\"ExternalResource\"}",
        )
    }
}

pub async fn run(cp: &ControlPlane, total: usize) -> Result<()> {
    println!(
        "# Tether sharded: {} replicas, {SHARDS} shards, {total} resources\n\nmachine: {}\nload average at the start: {}\n",
        REPLICAS.len(),
        machine(),
        loadavg()
    );
    let admin = cp.try_client("admin").await?;
    let controller = cp.try_client("controller").await?;

    // (a) The write ceiling, before anything else runs.
    ok(&cp.kubectl(&["create", "namespace", NS]))?;
    let ceiling = write_ceilings(&controller, &admin, NS).await?;

    // The chart's RBAC for `shards` above 1, the tenants, the replicas.
    cp.grant_sharding_rbac(SHARDS)?;
    let simulator = Simulator::accepting(TOKEN).start();
    ok(&cp.apply_as("admin", NS, &adapter().to_string()))?;
    let namespaces = balanced_namespaces();
    create_tenants(&admin, &namespaces, &simulator).await?;
    let started_replicas = Instant::now();
    let mut replicas = BTreeMap::new();
    for id in REPLICAS {
        replicas.insert(id, Replica::start(cp, id)?);
    }
    for replica in replicas.values() {
        wait_http(&replica.metrics).await;
    }
    let leases: Api<Lease> = Api::namespaced(admin.clone(), LEASE_NAMESPACE);
    let share = SHARDS as usize / REPLICAS.len();
    let want: BTreeMap<String, usize> = REPLICAS.iter().map(|id| ((*id).to_owned(), share)).collect();
    let (leases_ref, want_ref) = (&leases, &want);
    wait_for(Duration::from_secs(180), || async move {
        counts(&holders(leases_ref).await) == *want_ref
    })
    .await
    .map_err(|e| format!("the shards never balanced: {e}; logs in {}", cp.dir.display()))?;
    println!(
        "{} replicas hold {share} shards each, {:.1}s after they started",
        REPLICAS.len(),
        started_replicas.elapsed().as_secs_f64()
    );

    // (b) N resources, Ready.
    let all: Api<ExternalResource> = Api::all(admin.clone());
    let ready = ReadySet::watch(all);
    let writes_before = apiserver_writes(cp, "externalresources")?;
    let load = Instant::now();
    let items: Vec<(String, String)> = (0..total)
        .map(|i| (namespaces[i % namespaces.len()].clone(), format!("r-{i:06}")))
        .collect();
    bulk_load(admin.clone(), items, Arc::new(AtomicUsize::new(0))).await?;
    let loaded = load.elapsed();
    println!("{total} created by the loader in {:.1}s", loaded.as_secs_f64());
    wait_ready(&ready, ReadySet::count, total, Duration::from_secs(3600)).await?;
    let converged = load.elapsed();
    let writes = apiserver_writes(cp, "externalresources")? - writes_before;
    let ideal = writes.status_and_object as f64 / ceiling[&32];
    let ideal_all = (writes.status_and_object + writes.events) as f64 / ceiling[&32] + total as f64 / ceiling[&32];
    println!(
        "{total} resources over {} namespaces: all Ready {:.1}s after the first create ({:.0}/s)",
        namespaces.len(),
        converged.as_secs_f64(),
        total as f64 / converged.as_secs_f64()
    );
    println!(
        "  API writes per resource: {:.2} status/object + {:.2} Event, {:.2} refused (409)",
        writes.status_and_object as f64 / total as f64,
        writes.events as f64 / total as f64,
        writes.conflicts as f64 / total as f64
    );
    println!(
        "  at the concurrency-32 ceiling those status writes take {ideal:.1}s: ratio {:.2}; with the creates and Events {ideal_all:.1}s: ratio {:.2}",
        converged.as_secs_f64() / ideal,
        converged.as_secs_f64() / ideal_all
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let holders_now = holders(&leases).await;
    let mut rows = Vec::new();
    for (id, replica) in &replicas {
        let held: Vec<u32> = holders_now.iter().filter(|(_, h)| h == id).map(|(i, _)| *i).collect();
        let row = (
            (*id).to_owned(),
            held,
            replica.cached_resources().await,
            peak_rss_mib(replica.pid),
            rss_mib(replica.pid),
        );
        println!(
            "  {}: shards {:?}, {:.0} ExternalResources cached, peak RSS {:.0} MiB, RSS now {:.0} MiB",
            row.0, row.1, row.2, row.3, row.4
        );
        rows.push(row);
    }

    // (c) SIGKILL a replica (one without shard 0: the Adapter and the
    // labeller stay where they are) while new resources of its shards are
    // being created; time until the others hold its shards and every
    // resource of its namespaces is Ready.
    let victim = REPLICAS
        .into_iter()
        .find(|id| holders_now.get(&0).map(String::as_str) != Some(*id))
        .unwrap_or("r3");
    let victim_shards: BTreeSet<u32> = holders_now
        .iter()
        .filter(|(_, h)| h.as_str() == victim)
        .map(|(i, _)| *i)
        .collect();
    let orphaned: HashSet<String> = namespaces
        .iter()
        .filter(|ns| victim_shards.contains(&tether::shard::of(ns, SHARDS)))
        .cloned()
        .collect();
    let batch = (total / 10).max(orphaned.len());
    let mut orphaned_list: Vec<String> = orphaned.iter().cloned().collect();
    orphaned_list.sort();
    let items: Vec<(String, String)> = (0..batch)
        .map(|i| (orphaned_list[i % orphaned_list.len()].clone(), format!("p-{i:06}")))
        .collect();
    let expected_orphaned = ready.count_in(&orphaned) + batch;
    let created = Arc::new(AtomicUsize::new(0));
    let loader = tokio::spawn(bulk_load(admin.clone(), items, created.clone()));
    let _ = wait_for(Duration::from_secs(600), || {
        let created = created.clone();
        async move { created.load(Ordering::Relaxed) >= batch / 2 }
    })
    .await;
    let ready_at_kill = ready.count_in(&orphaned);
    let at_kill = created.load(Ordering::Relaxed);
    let killed = Instant::now();
    if let Some(mut replica) = replicas.remove(victim) {
        let _ = replica.child.kill();
        let _ = replica.child.wait();
    }
    println!(
        "\nSIGKILL of {victim} (shards {victim_shards:?}, {} namespaces) after {at_kill} of {batch} new resources of its namespaces were created; {} of their {expected_orphaned} resources were Ready",
        orphaned.len(),
        ready_at_kill
    );
    let survivors: Vec<&str> = REPLICAS.into_iter().filter(|id| *id != victim).collect();
    let want: BTreeMap<String, usize> = survivors
        .iter()
        .map(|id| ((*id).to_owned(), SHARDS as usize / survivors.len()))
        .collect();
    let want_ref = &want;
    let taken_over = wait_for(Duration::from_secs(300), || async move {
        counts(&holders(leases_ref).await) == *want_ref
    })
    .await?;
    println!(
        "  its shards held by {survivors:?} {:.1}s after the SIGKILL (Lease duration 15s, the default)",
        taken_over.as_secs_f64()
    );
    loader.await??;
    wait_ready(
        &ready,
        |r| r.count_in(&orphaned),
        expected_orphaned,
        Duration::from_secs(1800),
    )
    .await?;
    let after_kill = killed.elapsed();
    println!(
        "  every resource of its namespaces Ready {:.1}s after the SIGKILL ({} pending at the kill)",
        after_kill.as_secs_f64(),
        expected_orphaned - ready_at_kill
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after = Vec::new();
    for (id, replica) in &replicas {
        let row = (
            (*id).to_owned(),
            replica.cached_resources().await,
            peak_rss_mib(replica.pid),
            rss_mib(replica.pid),
        );
        println!(
            "  {}: {:.0} ExternalResources cached, peak RSS since start {:.0} MiB, RSS now {:.0} MiB",
            row.0, row.1, row.2, row.3
        );
        after.push(row);
    }
    let objects = simulator.objects("contacts").len();
    let creates = simulator.stats().count("create", "contacts");
    println!(
        "simulator: {objects} objects, {creates} create calls for {} resources; load average at the end: {}",
        total + batch,
        loadavg()
    );

    println!("\n| figure | value |\n| --- | --- |");
    println!(
        "| write ceiling, concurrency 1 / 8 / 32 | {:.0} / {:.0} / {:.0} writes/s |",
        ceiling[&1], ceiling[&8], ceiling[&32]
    );
    println!(
        "| {total} resources over {} namespaces, all Ready | {:.1} s from the first create ({:.1} s of creates) |",
        namespaces.len(),
        converged.as_secs_f64(),
        loaded.as_secs_f64()
    );
    println!(
        "| ideal at the ceiling | {ideal:.1} s status writes only: ratio {:.2}; {ideal_all:.1} s with creates and Events: ratio {:.2} |",
        converged.as_secs_f64() / ideal,
        converged.as_secs_f64() / ideal_all
    );
    for (id, held, cached, peak, now) in &rows {
        println!("| {id}: shards {held:?}, {cached:.0} cached | peak RSS {peak:.0} MiB, {now:.0} MiB when all Ready |");
    }
    println!(
        "| SIGKILL of {victim}: its shards taken over | {:.1} s |",
        taken_over.as_secs_f64()
    );
    println!(
        "| its namespaces' {} pending resources Ready | {:.1} s after the SIGKILL |",
        expected_orphaned - ready_at_kill,
        after_kill.as_secs_f64()
    );
    for (id, cached, peak, _) in &after {
        println!("| {id} after the takeover: {cached:.0} cached | peak RSS {peak:.0} MiB |");
    }
    println!(
        "| simulator objects / create calls | {objects} / {creates} for {} resources |",
        total + batch
    );
    Ok(())
}

/// `NAMESPACES_PER_SHARD` namespaces of each shard, the first names
/// `sharded-<i>` that hash there: each replica's share is a third.
fn balanced_namespaces() -> Vec<String> {
    let mut per_shard = vec![0usize; SHARDS as usize];
    let mut namespaces = Vec::new();
    for i in 0.. {
        let name = format!("sharded-{i:03}");
        let shard = tether::shard::of(&name, SHARDS) as usize;
        if per_shard[shard] < NAMESPACES_PER_SHARD {
            per_shard[shard] += 1;
            namespaces.push(name);
        }
        if namespaces.len() == NAMESPACES_PER_SHARD * SHARDS as usize {
            break;
        }
    }
    namespaces
}

/// Each namespace with the Secret and the TargetSystem of the simulator,
/// the TargetSystem labelled with its shard.
async fn create_tenants(admin: &kube::Client, namespaces: &[String], simulator: &tether_sim::SimHandle) -> Result<()> {
    let [secret, target_system] = target(simulator);
    for ns in namespaces {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let secret: Secret = serde_json::from_value(secret.clone())?;
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await?;
        let mut target_system = target_system.clone();
        target_system["metadata"]["labels"] = json!({tether::shard::LABEL: tether::shard::of(ns, SHARDS).to_string()});
        let target_system: TargetSystem = serde_json::from_value(target_system)?;
        Api::<TargetSystem>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &target_system)
            .await?;
    }
    Ok(())
}

/// Creates `items` (namespace, name), 64 at a time, each with the
/// finalizer and its shard label already set and a one-hour poll;
/// `created` counts them.
async fn bulk_load(
    admin: kube::Client,
    items: Vec<(String, String)>,
    created: Arc<AtomicUsize>,
) -> std::result::Result<(), String> {
    let objects = items
        .into_iter()
        .map(|(ns, name)| {
            let manifest = json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
                "metadata": {"name": name, "finalizers": [tether::controller::EXTERNAL_RESOURCE_FINALIZER],
                             "labels": {tether::shard::LABEL: tether::shard::of(&ns, SHARDS).to_string()}},
                "spec": {"targetRef": {"name": "target"}, "type": "contact", "pollInterval": "1h",
                         "properties": {"email": format!("{name}.{ns}@example.com"), "plan": "pro"}}});
            (Api::namespaced(admin.clone(), &ns), manifest)
        })
        .collect();
    create_all(objects, created).await
}

/// The holder of each shard Lease that has one.
async fn holders(leases: &Api<Lease>) -> BTreeMap<u32, String> {
    let prefix = format!("{LEASE}-shard-");
    let mut holders = BTreeMap::new();
    let Ok(list) = leases.list(&Default::default()).await else {
        return holders;
    };
    for lease in list.items {
        let name = lease.metadata.name.unwrap_or_default();
        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        if let Some(i) = name.strip_prefix(&prefix).and_then(|i| i.parse().ok())
            && !holder.is_empty()
        {
            holders.insert(i, holder);
        }
    }
    holders
}

/// How many shards each replica holds, when every shard is held (empty
/// otherwise).
fn counts(holders: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
    if holders.len() != SHARDS as usize {
        return BTreeMap::new();
    }
    let mut counts = BTreeMap::new();
    for holder in holders.values() {
        *counts.entry(holder.clone()).or_default() += 1;
    }
    counts
}

/// Polls `done` every 200 ms until it holds; the time it took.
async fn wait_for<F, Fut>(limit: Duration, done: F) -> Result<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        if started.elapsed() > limit {
            return Err(format!("not done after {}s", limit.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(started.elapsed())
}

/// Waits until `measure(ready)` reaches `of`, printing progress every 30 s.
async fn wait_ready(ready: &ReadySet, measure: impl Fn(&ReadySet) -> usize, of: usize, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let mut next_report = Duration::from_secs(30);
    while measure(ready) < of {
        if started.elapsed() > limit {
            return Err(format!("{} Ready of {of} after {}s", measure(ready), limit.as_secs()).into());
        }
        if started.elapsed() >= next_report {
            eprintln!(
                "  ... {}s: {} of {of} Ready, load average {}",
                next_report.as_secs(),
                measure(ready),
                loadavg()
            );
            next_report += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The Ready ExternalResources of every namespace, kept by a watch.
#[derive(Clone)]
struct ReadySet(Arc<Mutex<HashSet<(String, String)>>>);

impl ReadySet {
    fn watch(api: Api<ExternalResource>) -> ReadySet {
        let set = ReadySet(Arc::default());
        let shared = set.0.clone();
        tokio::spawn(async move {
            let key = |r: &ExternalResource| {
                (
                    r.metadata.namespace.clone().unwrap_or_default(),
                    r.metadata.name.clone().unwrap_or_default(),
                )
            };
            let is_ready = |r: &ExternalResource| {
                r.status
                    .as_ref()
                    .is_some_and(|s| tether::conditions::is_true(&s.conditions, "Ready"))
            };
            let mut listing = HashSet::new();
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let mut ready = shared.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(watcher::Event::Apply(r)) => {
                        if is_ready(&r) {
                            ready.insert(key(&r));
                        } else {
                            ready.remove(&key(&r));
                        }
                    }
                    Ok(watcher::Event::Delete(r)) => {
                        ready.remove(&key(&r));
                    }
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitApply(r)) => {
                        if is_ready(&r) {
                            listing.insert(key(&r));
                        }
                    }
                    Ok(watcher::Event::InitDone) => *ready = std::mem::take(&mut listing),
                    Err(_) => {
                        drop(ready);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        set
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn count_in(&self, namespaces: &HashSet<String>) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(ns, _)| namespaces.contains(ns))
            .count()
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
