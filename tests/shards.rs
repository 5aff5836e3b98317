//! Sharding on the real control plane: replicas split the namespaces'
//! objects through one Lease per shard, each reconciling (and caching)
//! only its shards; the simulator's counters prove that no create runs
//! twice, whether a replica is killed or a new one joins, and that a
//! TargetSystem's rate limit holds across the replicas together.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant, contact};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt};
use tether_sim::SimHandle;

const TOKEN: &str = "tok-shards-secret";
const SHARDS: u32 = 6;
const LEASE_SECONDS: u64 = 8;

/// The tests here run one at a time: each starts three or four replicas
/// renewing Leases every few seconds, and five such sets at once on two
/// cores would test the scheduler's patience, not sharding.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Replicas of one sharded deployment over a list of namespaces.
struct Deployment<'a> {
    cp: &'a ControlPlane,
    lease: String,
    namespaces: Vec<String>,
    replicas: BTreeMap<String, Controller>,
    /// `--shards` of its replicas.
    shards: u32,
}

/// The controller's RBAC as the chart renders it with `shards` above 1
/// (the test control plane has the default rendering, `shards: 1`): the
/// label patches of the holder of shard 0, the member Leases' deletion.
fn grant_what_sharding_needs(cp: &ControlPlane) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let rendered = cp
            .grant_sharding_rbac(SHARDS)
            .unwrap_or_else(|e| panic!("the sharded RBAC: {e}"));
        assert!(rendered.contains("[targetsystems, workflows, approvals]"), "{rendered}");
    });
}

impl<'a> Deployment<'a> {
    fn new(cp: &'a ControlPlane, namespaces: Vec<String>) -> Self {
        grant_what_sharding_needs(cp);
        let lease = format!(
            "shards-{}",
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or("x")
        );
        Self {
            cp,
            lease,
            namespaces,
            replicas: BTreeMap::new(),
            shards: SHARDS,
        }
    }

    /// The same namespaces under another number of shards (new Leases).
    fn with_shards(cp: &'a ControlPlane, namespaces: Vec<String>, shards: u32) -> Self {
        Self {
            shards,
            ..Self::new(cp, namespaces)
        }
    }

    fn start(&mut self, identity: &str) {
        let lease_duration = format!("{LEASE_SECONDS}s");
        let shards = self.shards.to_string();
        let args = [
            "--leader-election",
            "--lease-namespace",
            "tether-system",
            "--lease-name",
            &self.lease,
            "--lease-duration",
            &lease_duration,
            "--shards",
            &shards,
            "--identity",
            identity,
        ];
        let controller = Controller::start(self.cp, &self.namespaces.join(","), &args);
        self.replicas.insert(identity.to_owned(), controller);
    }

    /// The holder of each shard Lease that has one.
    fn holders(&self) -> BTreeMap<u32, String> {
        let out = self.cp.kubectl(&["get", "lease", "-n", "tether-system", "-o", "json"]);
        let leases: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let prefix = format!("{}-shard-", self.lease);
        let mut holders = BTreeMap::new();
        for lease in leases["items"].as_array().into_iter().flatten() {
            let name = lease["metadata"]["name"].as_str().unwrap_or_default();
            let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
            if let Some(i) = name.strip_prefix(&prefix).and_then(|i| i.parse().ok())
                && !holder.is_empty()
            {
                holders.insert(i, holder.to_owned());
            }
        }
        holders
    }

    /// How many shards each replica holds.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for holder in self.holders().into_values() {
            *counts.entry(holder).or_default() += 1;
        }
        counts
    }

    /// Waits until every shard is held and the replicas hold `expected`
    /// shards each (by identity).
    async fn wait_balanced(&self, expected: &[(&str, usize)], seconds: u64) -> Duration {
        let want: BTreeMap<String, usize> = expected.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect();
        let started = Instant::now();
        loop {
            let counts = self.counts();
            if counts == want && self.holders().len() == self.shards as usize {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(seconds),
                "shards never balanced as {want:?}: {counts:?} ({:?})\n{}",
                self.holders(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The namespaces whose shard `identity` holds.
    fn namespaces_of(&self, identity: &str) -> Vec<String> {
        let holders = self.holders();
        self.namespaces
            .iter()
            .filter(|ns| holders.get(&tether::shard::of(ns, self.shards)).map(String::as_str) == Some(identity))
            .cloned()
            .collect()
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|(id, c)| {
                let log = c.logs();
                let tail = log.get(log.len().saturating_sub(3000)..).unwrap_or_default().to_owned();
                format!("--- {id} ---\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Tenants on one simulator, `count` of them.
fn tenants(cp: &ControlPlane, sim: &SimHandle, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| Tenant::new(cp, "shard").target(sim, TOKEN).create())
        .collect()
}

fn contacts(prefix: &str, count: usize) -> Value {
    let items: Vec<Value> = (0..count)
        .map(|i| {
            contact(
                &format!("{prefix}{i}"),
                json!({"email": format!("{prefix}{i}@example.com")}),
                json!({}),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn wait_ready(cp: &ControlPlane, deployment: &Deployment<'_>, expected_per_namespace: usize) {
    for ns in &deployment.namespaces {
        assert_eq!(
            cp.wait_all(ns, "xr", "condition=Ready", "120s", None),
            expected_per_namespace,
            "{ns}\n{}",
            deployment.logs()
        );
    }
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// Every external name created exactly once.
fn assert_each_created_once(sim: &SimHandle, expected: usize) {
    let objects = sim.objects("contacts");
    let names: BTreeSet<&str> = objects.iter().filter_map(|o| o["externalName"].as_str()).collect();
    assert_eq!(names.len(), expected, "distinct objects at the target");
    assert_eq!(objects.len(), expected, "no duplicate object at the target");
    assert_eq!(
        sim.stats().count("create", "contacts") as usize,
        expected,
        "one create each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_the_shards_cache_only_theirs_and_create_each_resource_once() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let limited = Simulator::accepting(TOKEN).start();
    let mut namespaces = tenants(cp, &sim, 6);
    // One TargetSystem with a rate limit of 5/s, used by 60 resources.
    let throttled = Tenant::new(cp, "shard-limit")
        .target(&limited, TOKEN)
        .spec(json!({"rateLimit": {"requestsPerSecond": 5, "burst": 5}}))
        .create();
    namespaces.push(throttled.clone());
    let mut deployment = Deployment::new(cp, namespaces.clone());
    for id in ["r1", "r2", "r3"] {
        deployment.start(id);
    }
    deployment.wait_balanced(&[("r1", 2), ("r2", 2), ("r3", 2)], 60).await;

    for ns in &namespaces[..6] {
        cp.apply_json(ns, &contacts("c", 5));
    }
    cp.apply_json(&throttled, &contacts("t", 60));
    for ns in &namespaces[..6] {
        assert_eq!(
            cp.wait_all(ns, "xr", "condition=Ready", "120s", None),
            5,
            "{}",
            deployment.logs()
        );
    }
    assert_eq!(
        cp.wait_all(&throttled, "xr", "condition=Ready", "180s", None),
        60,
        "{}",
        deployment.logs()
    );

    // Every user-created object got its shard's label, and the
    // TargetSystems are reconciled by their shard's replica.
    for ns in &namespaces {
        cp.wait_for(ns, "tts/target", "condition=Ready", "60s", None);
        let labels = cp.jsonpath(ns, "xr,tts", "{.items[*].metadata.labels.tether\\.dev/shard}");
        let want = tether::shard::of(ns, SHARDS).to_string();
        assert!(
            labels.split_whitespace().all(|l| l == want) && !labels.is_empty(),
            "{ns}: {labels}"
        );
    }
    assert_each_created_once(&sim, 30);
    assert_each_created_once(&limited, 60);

    // The rate limit is per target: one replica holds it, and the target
    // saw no more than burst + rate in any second.
    let peak = limited.stats().peak_admitted_per_second;
    assert!(
        peak <= 5 + 5 + 1,
        "the limited target saw {peak} requests in one second"
    );
    let mut callers = Vec::new();
    for (id, replica) in &deployment.replicas {
        let sent = metric_sum(
            &replica.metrics().await,
            &format!("tether_http_requests_total{{target=\"{throttled}/target\""),
        );
        if sent > 0.0 {
            callers.push(id.clone());
        }
    }
    assert_eq!(callers.len(), 1, "one replica calls the limited target: {callers:?}");

    // Each replica's cache holds its shards' resources only: together,
    // each resource once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cached = BTreeMap::new();
        for (id, replica) in &deployment.replicas {
            let text = replica.metrics().await;
            cached.insert(
                id.clone(),
                metric_sum(&text, "tether_cached_objects{kind=\"ExternalResource\"}") as usize,
            );
        }
        let expected: BTreeMap<String, usize> = deployment
            .replicas
            .keys()
            .map(|id| {
                let mine = deployment.namespaces_of(id);
                let count = mine.iter().map(|ns| if *ns == throttled { 60 } else { 5 }).sum();
                (id.clone(), count)
            })
            .collect();
        if cached == expected {
            break;
        }
        assert!(Instant::now() < deadline, "cached {cached:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_shards_are_taken_over_and_its_resources_converge() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let namespaces = tenants(cp, &sim, 6);
    let mut deployment = Deployment::new(cp, namespaces.clone());
    for id in ["r1", "r2", "r3"] {
        deployment.start(id);
    }
    deployment.wait_balanced(&[("r1", 2), ("r2", 2), ("r3", 2)], 60).await;
    for ns in &namespaces {
        cp.apply_json(ns, &contacts("c", 4));
    }
    wait_ready(cp, &deployment, 4);

    // Kill the replica that reconciles the most namespaces.
    let victim = ["r1", "r2", "r3"]
        .into_iter()
        .max_by_key(|id| deployment.namespaces_of(id).len())
        .unwrap_or("r1");
    let orphaned = deployment.namespaces_of(victim);
    assert!(!orphaned.is_empty());
    let survivors: Vec<&str> = ["r1", "r2", "r3"].into_iter().filter(|id| *id != victim).collect();
    if let Some(replica) = deployment.replicas.get_mut(victim) {
        replica.kill();
    }
    let took = deployment
        .wait_balanced(&[(survivors[0], 3), (survivors[1], 3)], 60)
        .await;
    // The Leases expire after their duration; the survivors look every
    // third of it.
    eprintln!("takeover after the SIGKILL: {took:?}");
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS * 3),
        "the shards were taken over after {took:?}"
    );

    // Its resources converge: a change reaches the target, new ones are
    // created, each once.
    for ns in &orphaned {
        cp.apply_json(ns, &contact("c0", json!({"email": "changed@example.com"}), json!({})));
        cp.apply_json(ns, &contacts("n", 2));
    }
    for ns in &orphaned {
        cp.wait_for(ns, "xr/c0", "jsonpath={.status.observedGeneration}=2", "60s", None);
        assert_eq!(
            cp.wait_all(ns, "xr", "condition=Ready", "60s", None),
            6,
            "{}",
            deployment.logs()
        );
    }
    let changed = sim
        .objects("contacts")
        .iter()
        .filter(|o| o["email"] == "changed@example.com")
        .count();
    assert_eq!(changed, orphaned.len(), "each change applied by the new holder");
    assert_each_created_once(&sim, 6 * 4 + orphaned.len() * 2);
}

/// Three balanced replicas over eight tenants of `sim`, whose every answer
/// takes 200 ms: a rebalance lands while calls are in flight.
async fn three_replicas_over_slow_calls<'a>(cp: &'a ControlPlane, sim: &SimHandle) -> (Vec<String>, Deployment<'a>) {
    sim.set_faults(tether_sim::Faults {
        latency_ms: 200,
        ..tether_sim::Faults::default()
    });
    let namespaces = tenants(cp, sim, 8);
    let mut deployment = Deployment::new(cp, namespaces.clone());
    for id in ["r1", "r2", "r3"] {
        deployment.start(id);
    }
    deployment.wait_balanced(&[("r1", 2), ("r2", 2), ("r3", 2)], 60).await;
    (namespaces, deployment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_takes_its_share_while_resources_are_created_without_a_duplicate() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (namespaces, mut deployment) = three_replicas_over_slow_calls(cp, &sim).await;
    for ns in &namespaces {
        cp.apply_json(ns, &contacts("c", 6));
    }
    deployment.start("r4");
    let took = deployment
        .wait_balanced(&[("r1", 2), ("r2", 2), ("r3", 1), ("r4", 1)], 60)
        .await;
    eprintln!("rebalance to four replicas: {took:?}");
    assert!(
        took <= Duration::from_secs(LEASE_SECONDS * 5),
        "the rebalance took {took:?}"
    );
    wait_ready(cp, &deployment, 6);
    for ns in &namespaces {
        cp.apply_json(ns, &contacts("after", 1));
    }
    wait_ready(cp, &deployment, 7);
    assert_each_created_once(&sim, 8 * 7);
    let r4 = deployment.replicas.get("r4").map(Controller::logs).unwrap_or_default();
    assert!(r4.contains("reconciling shards"), "r4 reconciles a shard:\n{r4}");
}

/// Threat: a tenant with namespace rights edits the shard label of its own
/// object to another (valid) shard, to have it reconciled by a replica that
/// does not hold its TargetSystem's rate limit (or to have two replicas
/// act on it). The replica it lands on does not reconcile it: it writes the
/// label the namespace gives, and the namespace's replica applies the
/// change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_relabelled_to_another_shard_by_a_tenant_is_handed_back_not_reconciled_there() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let namespaces = tenants(cp, &sim, 1);
    let ns = namespaces[0].clone();
    let mut deployment = Deployment::new(cp, namespaces.clone());
    for id in ["r1", "r2"] {
        deployment.start(id);
    }
    deployment.wait_balanced(&[("r1", 3), ("r2", 3)], 60).await;
    cp.apply_json(&ns, &contacts("c", 1));
    wait_ready(cp, &deployment, 1);

    let own = tether::shard::of(&ns, SHARDS);
    let holders = deployment.holders();
    let owner = holders.get(&own).cloned().unwrap_or_default();
    let (other, elsewhere) = holders
        .iter()
        .find(|(_, holder)| **holder != owner)
        .map(|(shard, holder)| (*shard, holder.clone()))
        .expect("a shard held by the other replica");
    let calls_to_target = |text: &str| metric_sum(text, &format!("tether_http_requests_total{{target=\"{ns}/target\""));
    let before = calls_to_target(&deployment.replicas[&elsewhere].metrics().await);

    // The tenant moves the object and changes it in one edit.
    let mut moved = contact("c0", json!({"email": "moved@example.com"}), json!({}));
    moved["metadata"]["labels"] = json!({"tether.dev/shard": other.to_string()});
    cp.apply_json(&ns, &moved);
    cp.wait_for(
        &ns,
        "xr/c0",
        &format!("jsonpath={{.metadata.labels.tether\\.dev/shard}}={own}"),
        "60s",
        None,
    );
    cp.wait_for(&ns, "xr/c0", "jsonpath={.status.observedGeneration}=2", "60s", None);
    let changed = sim
        .objects("contacts")
        .iter()
        .filter(|o| o["email"] == "moved@example.com")
        .count();
    assert_eq!(changed, 1, "the change was applied, once");
    assert_eq!(
        calls_to_target(&deployment.replicas[&elsewhere].metrics().await),
        before,
        "the replica of shard {other} ({elsewhere}) never called the target of {ns}\n{}",
        deployment.logs()
    );
    assert!(
        deployment.replicas[&elsewhere]
            .logs()
            .contains("moved to the shard of its namespace"),
        "{}",
        deployment.logs()
    );
}

/// `shards` changed (6 -> 4): every object is relabelled for the new count
/// (labels of the old count are in range or not, both are found), and the
/// replicas of the new count reconcile them all: a change applies once, no
/// resource is created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_number_of_shards_relabels_every_object_and_loses_none() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let namespaces = tenants(cp, &sim, 4);
    let mut before = Deployment::new(cp, namespaces.clone());
    for id in ["r1", "r2"] {
        before.start(id);
    }
    before.wait_balanced(&[("r1", 3), ("r2", 3)], 60).await;
    for ns in &namespaces {
        cp.apply_json(ns, &contacts("c", 2));
    }
    wait_ready(cp, &before, 2);
    drop(before);

    const NEW_COUNT: u32 = 4;
    let mut after = Deployment::with_shards(cp, namespaces.clone(), NEW_COUNT);
    for id in ["s1", "s2"] {
        after.start(id);
    }
    after.wait_balanced(&[("s1", 2), ("s2", 2)], 60).await;
    for ns in &namespaces {
        let want = tether::shard::of(ns, NEW_COUNT);
        for name in ["c0", "c1"] {
            cp.wait_for(
                ns,
                &format!("xr/{name}"),
                &format!("jsonpath={{.metadata.labels.tether\\.dev/shard}}={want}"),
                "60s",
                None,
            );
        }
        cp.apply_json(
            ns,
            &contact("c0", json!({"email": format!("{ns}-changed@example.com")}), json!({})),
        );
    }
    for ns in &namespaces {
        cp.wait_for(ns, "xr/c0", "jsonpath={.status.observedGeneration}=2", "60s", None);
        let changed = sim
            .objects("contacts")
            .iter()
            .filter(|o| o["email"] == format!("{ns}-changed@example.com").as_str())
            .count();
        assert_eq!(
            changed,
            1,
            "{ns}: the change was applied under the new count\n{}",
            after.logs()
        );
    }
    assert_each_created_once(&sim, namespaces.len() * 2);
}

/// Threat: the controller's token, stolen, used through the `patch` that
/// sharding grants on TargetSystems to point one at another host. The
/// chart's admission policy lets that right change the shard label and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_the_controllers_sharded_patch_right_changes_only_the_shard_label() {
    let cp = ControlPlane::shared();
    grant_what_sharding_needs(cp);
    let sim = Simulator::accepting(TOKEN).start();
    let ns = tenants(cp, &sim, 1).remove(0);
    let controller_account = "system:serviceaccount:tether-system:tether";
    let patch = |body: &str, dry_run: &str| {
        cp.kubectl(&[
            "--as",
            controller_account,
            dry_run,
            "patch",
            "targetsystem",
            "target",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            body,
        ])
    };
    let refusal = "may change only the tether.dev/shard label";
    let steal = r#"{"spec":{"baseUrl":"https://attacker.example.com"}}"#;
    // The policy is in force once a forbidden patch says so (admission
    // policies take a moment to load): tried without being kept until then.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = patch(steal, "--dry-run=server");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && stderr.contains(refusal) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller's account changed a TargetSystem's spec: ok={} {stderr}",
            out.status.success()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stolen = patch(steal, "--dry-run=none");
    assert!(
        String::from_utf8_lossy(&stolen.stderr).contains(refusal),
        "the spec: {stolen:?}"
    );
    let other_label = patch(r#"{"metadata":{"labels":{"team":"attacker"}}}"#, "--dry-run=none");
    assert!(
        String::from_utf8_lossy(&other_label.stderr).contains(refusal),
        "another label: {other_label:?}"
    );
    let shard_label = patch(r#"{"metadata":{"labels":{"tether.dev/shard":"1"}}}"#, "--dry-run=none");
    assert!(shard_label.status.success(), "the shard label: {shard_label:?}");
    assert_ne!(
        cp.jsonpath(&ns, "targetsystem/target", "{.spec.baseUrl}"),
        "https://attacker.example.com",
        "the spec is the tenant's"
    );
}

/// Workflow steps across a rebalance: runs in flight while a fourth
/// replica takes shards over finish, and every step's side effect happened
/// exactly once at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workflow_step_runs_once_while_a_new_replica_takes_shards_over() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (namespaces, mut deployment) = three_replicas_over_slow_calls(cp, &sim).await;
    let post = |name: &str, collection: &str, body: &str| {
        json!({"name": name, "call": {"targetRef": {"name": "target"},
               "request": {"method": "POST", "path": format!("/v1/{collection}"), "body": body},
               "outputs": {"id": ".body.id"}}})
    };
    let mut invoice = post("invoice", "invoices", "{order: $steps.order.outputs.id}");
    invoice["dependsOn"] = json!(["order"]);
    let workflow = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "billing"},
        "spec": {"steps": [post("order", "orders", "{item: \"book\"}"), invoice]}});
    for ns in &namespaces {
        cp.apply_json(ns, &workflow);
    }
    for ns in &namespaces {
        cp.wait_for(ns, "twf/billing", "condition=Ready", "60s", None);
        for i in 0..3 {
            cp.apply_json(
                ns,
                &json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun",
                        "metadata": {"name": format!("bill-{i}")},
                        "spec": {"workflowRef": {"name": "billing"}, "parameters": {}}}),
            );
        }
    }
    deployment.start("r4");
    deployment
        .wait_balanced(&[("r1", 2), ("r2", 2), ("r3", 1), ("r4", 1)], 60)
        .await;
    for ns in &namespaces {
        assert_eq!(
            cp.wait_all(ns, "twr", "condition=Succeeded", "120s", None),
            3,
            "{ns}\n{}",
            deployment.logs()
        );
    }
    // No step's side effect twice: one object per run and step. A call in
    // flight when its shard moved may be sent again by the new holder with
    // the same idempotency key, which the target answers from the first.
    let runs = namespaces.len() * 3;
    for collection in ["orders", "invoices"] {
        assert_eq!(sim.objects(collection).len(), runs, "one {collection} object per run");
        let sent = sim.stats().count("create", collection) as usize;
        assert!(sent >= runs, "{sent} {collection} calls for {runs} runs");
        eprintln!("{collection}: {sent} calls for {runs} runs");
    }
}
