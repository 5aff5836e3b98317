//! The chart as it runs in a cluster: the image built from the repository's
//! Dockerfile (scripts/image.sh), imported into a real single-node cluster
//! (scripts/node.sh: kubelet, containerd, controller-manager, scheduler, all
//! in a network namespace of the node's own), and `helm install --wait` of
//! the chart with its defaults — two replicas, in-cluster config, read-only
//! root filesystem, non-root — then an example reconciled through the
//! leader, a webhook served by the standby, `helm upgrade --wait` rolling
//! both, and the Lease handed over when the leader's pod is deleted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Address of the node on its pod bridge; the simulator listens there.
const NODE_IP: &str = "10.88.0.1";
const SIM_TOKEN: &str = "demo-token";
const HOOK_KEY: &str = "node-hook-key";
/// The chart's default Lease duration (`tether run --lease-duration`).
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// A single-node cluster started by `scripts/node.sh up`; stopped (and
/// everything it made removed) when dropped, or when this process dies.
struct Node {
    dir: PathBuf,
    child: Child,
    helm: PathBuf,
}

impl Node {
    fn start() -> Node {
        let id: String = uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect();
        let dir = std::env::temp_dir().join(format!("tether-node-{id}"));
        let helm = PathBuf::from(
            ok(
                "scripts/helm.sh",
                &run(Command::new("bash").arg(repo().join("scripts/helm.sh"))),
            )
            .trim(),
        );
        let child = Command::new("bash")
            .arg(repo().join("scripts/node.sh"))
            .arg("up")
            .arg(&dir)
            .env("TETHER_NODE_PARENT", std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("scripts/node.sh starts");
        let mut node = Node { dir, child, helm };
        // The first run builds the node's binaries (minutes); node.sh has
        // its own deadlines once they are built.
        let deadline = Instant::now() + Duration::from_secs(40 * 60);
        while !node.dir.join("ready").exists() {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("scripts/node.sh exited before the node was Ready ({status})");
            }
            assert!(Instant::now() < deadline, "the node was not Ready in time");
            std::thread::sleep(Duration::from_millis(250));
        }
        node
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new(self.dir.join("kubectl")).args(args))
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        ok(&format!("kubectl {}", args.join(" ")), &self.kubectl(args))
    }

    fn apply(&self, namespace: &str, manifest: &str) {
        let mut child = Command::new(self.dir.join("kubectl"))
            .args(["apply", "-n", namespace, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(manifest.as_bytes()).expect("manifest written");
        }
        ok("kubectl apply", &child.wait_with_output().expect("kubectl runs"));
    }

    /// A command run inside the node's network namespace.
    fn in_node(&self, program: &Path) -> Command {
        let mut cmd = Command::new(self.dir.join("in-node"));
        cmd.arg(program);
        cmd
    }

    fn helm(&self, args: &[&str]) -> Output {
        let home = self.dir.join("helm-home");
        run(self
            .in_node(&self.helm)
            .args(args)
            .env("KUBECONFIG", self.dir.join("admin.kubeconfig"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data")))
    }

    fn jsonpath(&self, namespace: &str, object: &str, path: &str) -> String {
        let out = self.kubectl(&["get", "-n", namespace, object, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of the controller's pods that are not being deleted.
    fn pods(&self) -> Vec<String> {
        let list: Value = serde_json::from_str(&self.kubectl_ok(&["get", "pods", "-n", "tether-system", "-o", "json"]))
            .unwrap_or_default();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|pod| pod["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    fn ready(&self, pod: &str) -> bool {
        self.jsonpath(
            "tether-system",
            &format!("pod/{pod}"),
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    }

    fn lease_holder(&self) -> String {
        self.jsonpath("tether-system", "lease/tether-controller", "{.spec.holderIdentity}")
    }

    /// `/metrics` of one pod, through the API server's pod proxy.
    fn metrics(&self, pod: &str) -> String {
        self.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/tether-system/pods/{pod}:9090/proxy/metrics"),
        ])
    }

    /// What a failure should show: pods, the Lease, the controllers' logs
    /// (with those of a deleted leader, when one was followed).
    fn logs(&self) -> String {
        let text = |out: Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let pods = text(self.kubectl(&["get", "pods", "-n", "tether-system", "-o", "wide"]));
        let lease = text(self.kubectl(&["get", "lease", "-n", "tether-system", "-o", "yaml"]));
        let replica_logs = |more: &[&str]| {
            let mut args = vec![
                "logs",
                "-n",
                "tether-system",
                "-l",
                "app.kubernetes.io/name=tether",
                "--tail=30",
                "--prefix",
            ];
            args.extend(more);
            text(self.kubectl(&args))
        };
        let logs = replica_logs(&[]);
        // A replica that restarted: why its last run ended.
        let previous = replica_logs(&["--previous"]);
        let followed = std::fs::read_to_string(self.dir.join("followed.log")).unwrap_or_default();
        format!("{pods}\n{lease}\n{logs}\n--- previous runs ---\n{previous}\n--- followed ---\n{followed}")
    }

    /// Copies `pod`'s log into DIR/followed.log until it ends.
    fn follow(&self, pod: &str) -> Child {
        let log = std::fs::File::create(self.dir.join("followed.log")).expect("log file");
        Command::new(self.dir.join("kubectl"))
            .args(["logs", "-f", "-n", "tether-system", pod])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl logs -f")
    }

    /// Waits for `what` to hold, failing with the controllers' logs.
    fn eventually(&self, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "not within {within:?}: {what}\n--- controller logs ---\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGTERM: node.sh stops everything it started and removes what it made.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `tether sim` inside the node's namespace, on the node's address.
struct Sim(Child);

impl Sim {
    fn start(node: &Node) -> Sim {
        let child = node
            .in_node(Path::new(env!("CARGO_BIN_EXE_tether")))
            .args(["sim", "--listen", &format!("{NODE_IP}:8090"), "--token", SIM_TOKEN])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tether sim starts");
        let sim = Sim(child);
        node.eventually("the simulator answers", Duration::from_secs(30), || {
            curl(node, &["-sf", &format!("http://{NODE_IP}:8090/healthz")])
                .status
                .success()
        });
        sim
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(node: &Node, args: &[&str]) -> Output {
    run(node.in_node(Path::new("curl")).args(args))
}

fn sim_objects(node: &Node, collection: &str) -> Vec<Value> {
    let out = curl(
        node,
        &["-sf", &format!("http://{NODE_IP}:8090/_sim/objects/{collection}")],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tether_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// The image, built by scripts/image.sh from the Dockerfile around the
/// controller binary `$TETHER_IMAGE_BINARY` (scripts/test.sh builds it
/// without the `dev` feature, as the image ships it), else this test's own
/// build of `tether`.
fn build_image(dir: &Path) -> PathBuf {
    let archive = dir.join("tether-image.tar");
    let binary = std::env::var("TETHER_IMAGE_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tether").to_owned());
    ok(
        "scripts/image.sh tether",
        &run(Command::new("bash")
            .arg(repo().join("scripts/image.sh"))
            .arg("tether")
            .arg(&archive)
            .args(["--binary", &binary])),
    );
    archive
}

fn install_args<'a>(verb: &'a str, chart: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        verb,
        "tether",
        chart,
        "-n",
        "tether-system",
        "--set",
        "image.repository=localhost/tether",
        "--set",
        "image.tag=test",
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "5m",
    ];
    args.extend(extra);
    args
}

/// The example's TargetSystem, pointed at the simulator on the node.
fn example_target() -> String {
    std::fs::read_to_string(repo().join("examples/target-crm.yaml"))
        .expect("examples/target-crm.yaml")
        .replace("http://127.0.0.1:8090", &format!("http://{NODE_IP}:8090"))
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo().join("examples").join(name)).unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

/// A signed webhook POSTed from inside the node to `pod`'s webhook port;
/// returns the HTTP status and the answer.
fn send_webhook(node: &Node, pod_ip: &str, path: &str, delivery: &str, body: &str) -> (u16, Value) {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = tether::webhook::sign(HOOK_KEY.as_bytes(), timestamp, delivery, body.as_bytes());
    let out = curl(
        node,
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            &format!("X-Tether-Timestamp: {timestamp}"),
            "-H",
            &format!("X-Tether-Delivery: {delivery}"),
            "-H",
            &format!("X-Tether-Signature: {signature}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("http://{pod_ip}:8443{path}"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(answer).unwrap_or_default(),
    )
}

#[test]
fn the_chart_runs_two_ready_replicas_on_a_real_node_reconciles_through_the_leader_rolls_and_fails_over() {
    let node = Node::start();
    let archive = build_image(&node.dir);
    ok(
        "importing the image",
        &run(Command::new("bash")
            .arg(repo().join("scripts/node.sh"))
            .arg("import")
            .arg(&node.dir)
            .arg(&archive)),
    );
    let chart = repo().join("charts/tether").to_string_lossy().into_owned();

    // helm install --wait: both replicas Ready, one of them leads.
    let install = node.helm(&install_args("install", &chart, &["--create-namespace"]));
    ok("helm install --wait", &install);
    let pods = node.pods();
    assert_eq!(pods.len(), 2, "two replicas: {pods:?}");
    assert!(pods.iter().all(|p| node.ready(p)), "both replicas Ready: {pods:?}");
    node.eventually("one replica holds the Lease", LEASE_DURATION * 2, || {
        pods.contains(&node.lease_holder())
    });
    let leader = node.lease_holder();
    let standby = pods.iter().find(|p| **p != leader).cloned().expect("a standby");

    // An example reconciled to Ready, by the leader only.
    let _sim = Sim::start(&node);
    node.kubectl_ok(&["create", "namespace", "demo"]);
    node.apply("demo", &example("adapter-saas-sim.yaml"));
    node.apply("demo", &example_target());
    node.apply("demo", &example("externalresource-contact.yaml"));
    node.kubectl_ok(&[
        "wait",
        "-n",
        "demo",
        "--for=condition=Ready",
        "xr/ada",
        "--timeout=120s",
    ]);
    assert_eq!(sim_objects(&node, "contacts").len(), 1, "the contact created once");
    assert!(reconciles(&node.metrics(&leader)) >= 1.0, "the leader reconciled it");
    assert_eq!(
        reconciles(&node.metrics(&standby)),
        0.0,
        "the standby reconciled nothing"
    );

    // A webhook delivered to the standby starts its run; the leader runs it.
    let hook = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"}, "stringData": {"key": HOOK_KEY}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "greeter"},
         "spec": {"parameters": [{"name": "email", "required": true}],
                  "steps": [{"name": "greet", "call": {"targetRef": {"name": "crm"},
                             "request": {"method": "POST", "path": "/v1/greetings", "body": "{to: $params.email}"}}}],
                  "triggers": {"webhook": {"secretRef": {"name": "hook", "key": "key"},
                                           "parameters": "{email: .customer.email}"}}}}
    ]});
    node.apply("demo", &hook.to_string());
    node.kubectl_ok(&[
        "wait",
        "-n",
        "demo",
        "--for=condition=Ready",
        "twf/greeter",
        "--timeout=60s",
    ]);
    let path = node.jsonpath("demo", "twf/greeter", "{.status.webhookPath}");
    let standby_ip = node.jsonpath("tether-system", &format!("pod/{standby}"), "{.status.podIP}");
    // The standby learns of the Workflow from its own watch, maybe a moment
    // after the leader marked it Ready: a sender retries the same delivery
    // while it is not found.
    let mut sent = (0, Value::Null);
    node.eventually("the standby accepts a signed webhook", Duration::from_secs(30), || {
        sent = send_webhook(
            &node,
            &standby_ip,
            &path,
            "delivery-1",
            r#"{"customer": {"email": "grace@example.com"}}"#,
        );
        sent.0 != 404
    });
    let (status, answer) = sent;
    assert_eq!(status, 202, "the standby accepts a signed webhook: {answer}");
    let started = answer["run"].as_str().unwrap_or_default().to_owned();
    node.kubectl_ok(&[
        "wait",
        "-n",
        "demo",
        "--for=condition=Succeeded",
        &format!("twr/{started}"),
        "--timeout=120s",
    ]);
    assert_eq!(sim_objects(&node, "greetings").len(), 1, "one greeting sent");

    // helm upgrade --wait rolls both replicas; a new one leads.
    let upgrade = node.helm(&install_args("upgrade", &chart, &["--set", "controller.concurrency=8"]));
    ok("helm upgrade --wait", &upgrade);
    let rolled = node.pods();
    assert_eq!(rolled.len(), 2, "two replicas after the upgrade: {rolled:?}");
    assert!(
        rolled.iter().all(|p| !pods.contains(p) && node.ready(p)),
        "both replaced and Ready: {pods:?} -> {rolled:?}"
    );
    node.eventually("a new replica holds the Lease", LEASE_DURATION * 2, || {
        rolled.contains(&node.lease_holder())
    });

    // Deleting the leader's pod hands the Lease to the standby within the
    // Lease's duration (the leader releases it on SIGTERM and the standby,
    // watching the Lease, takes it at once, before the replacement pod is
    // up), and the new leader reconciles.
    let leader = node.lease_holder();
    let standby = rolled.iter().find(|p| **p != leader).cloned().expect("a standby");
    let mut followed = node.follow(&leader);
    let deleted = Instant::now();
    node.kubectl_ok(&["delete", "pod", "-n", "tether-system", &leader, "--wait=false"]);
    let mut successor = String::new();
    node.eventually("another replica takes the Lease over", LEASE_DURATION, || {
        successor = node.lease_holder();
        !successor.is_empty() && successor != leader && node.pods().contains(&successor)
    });
    let handover = deleted.elapsed();
    let _ = followed.kill();
    let _ = followed.wait();
    eprintln!("the Lease passed from {leader} to {successor} in {handover:?} (the standby was {standby})");
    assert_eq!(
        successor,
        standby,
        "the standby, not the replacement pod, took the Lease over\n{}",
        node.logs()
    );
    assert!(handover < LEASE_DURATION, "handed over in {handover:?}");
    let grace = example("externalresource-contact.yaml")
        .replace("name: ada", "name: grace")
        .replace("ada@example.com", "grace@example.com");
    node.apply("demo", &grace);
    node.kubectl_ok(&[
        "wait",
        "-n",
        "demo",
        "--for=condition=Ready",
        "xr/grace",
        "--timeout=120s",
    ]);
    node.eventually("the new leader reconciled it", Duration::from_secs(10), || {
        reconciles(&node.metrics(&successor)) >= 1.0
    });
    assert_eq!(sim_objects(&node, "contacts").len(), 2, "each contact created once");
}
