//! GitOps tools read Tether's objects the way Tether means them. Every kind,
//! in every state users meet, is read back with `kubectl` from a real
//! control plane and its health computed with the real libraries:
//! kstatus (`sigs.k8s.io/cli-utils`, what Flux, kpt and cli-utils use) and
//! the Argo CD health checks shipped in `deploy/argocd`, run by gopher-lua,
//! the Lua VM Argo CD embeds (both in `tools/health`, built by
//! `scripts/health-tools.sh`).
//!
//! Every expectation also names the conditions it rests on: the test strips
//! them from the live object and checks that the tool's answer changes, so
//! an assertion cannot pass without the condition the controller wrote.
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant, contact};
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::Faults;

const TOKEN: &str = "health-token-5b2e";

/// The `tether-health` binary, built (once, cached) by the project script.
fn health_tool(cp: &ControlPlane) -> &'static PathBuf {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let out = Command::new("bash")
            .arg(cp.repo.join("scripts/health-tools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/health-tools.sh");
        assert!(out.status.success(), "scripts/health-tools.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// One tool's verdict: `(status, message)`.
fn run_tool(cp: &ControlPlane, args: &[&str], object: &Value) -> (String, String) {
    use std::io::Write;
    let mut child = Command::new(health_tool(cp))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tether-health");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(object.to_string().as_bytes())
        .expect("writing the object");
    let out = child.wait_with_output().expect("tether-health ends");
    let stdout = assert_ok(&out);
    let verdict: Value = serde_json::from_str(&stdout).expect("tether-health prints JSON");
    (
        verdict["status"].as_str().unwrap_or_default().to_owned(),
        verdict["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn kstatus(cp: &ControlPlane, object: &Value) -> (String, String) {
    run_tool(cp, &["kstatus"], object)
}

/// The Argo CD health of `object`, by the check shipped for its kind.
fn argo(cp: &ControlPlane, object: &Value) -> (String, String) {
    let kind = object["kind"].as_str().unwrap_or_default();
    let script = cp.repo.join(format!("deploy/argocd/tether.dev_{kind}/health.lua"));
    run_tool(cp, &["lua", &script.to_string_lossy()], object)
}

/// The object with the conditions of these types removed.
fn without(object: &Value, types: &[&str]) -> Value {
    let mut stripped = object.clone();
    if let Some(conditions) = stripped["status"]["conditions"].as_array_mut() {
        conditions.retain(|c| !types.iter().any(|t| c["type"] == *t));
    }
    stripped
}

/// What both tools must say about an object, and which conditions each
/// answer rests on (empty: the tool's default, e.g. kstatus `Current`).
struct Expect {
    kstatus: &'static str,
    kstatus_rests_on: &'static [&'static str],
    argo: &'static str,
    argo_rests_on: &'static [&'static str],
}

/// Reads `object` with kubectl and asserts both tools' health, and that
/// each answer changes once the conditions it rests on are gone.
fn assert_health(cp: &ControlPlane, ns: &str, object: &str, expect: Expect) {
    let yaml = assert_ok(&cp.kubectl(&["get", "-n", ns, object, "-o", "json"]));
    let live: Value = serde_json::from_str(&yaml).expect("kubectl prints JSON");
    let conditions = &live["status"]["conditions"];
    let k = kstatus(cp, &live);
    assert_eq!(
        k.0, expect.kstatus,
        "kstatus of {object}: {k:?}\nconditions: {conditions:#}"
    );
    let a = argo(cp, &live);
    assert_eq!(
        a.0, expect.argo,
        "Argo CD health of {object}: {a:?}\nconditions: {conditions:#}"
    );
    if !expect.kstatus_rests_on.is_empty() {
        let stripped = kstatus(cp, &without(&live, expect.kstatus_rests_on));
        assert_ne!(
            stripped.0, expect.kstatus,
            "kstatus of {object} does not rest on {:?}",
            expect.kstatus_rests_on
        );
    }
    if !expect.argo_rests_on.is_empty() {
        let stripped = argo(cp, &without(&live, expect.argo_rests_on));
        assert_ne!(
            stripped.0, expect.argo,
            "Argo CD health of {object} does not rest on {:?}",
            expect.argo_rests_on
        );
    }
}

/// The `REASON` printer column of an object.
fn reason_column(cp: &ControlPlane, ns: &str, object: &str) -> String {
    let out = assert_ok(&cp.kubectl(&["get", "-n", ns, object]));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    header
        .iter()
        .position(|h| *h == "REASON")
        .and_then(|i| row.get(i))
        .map(|s| (*s).to_owned())
        .unwrap_or_default()
}

const CURRENT_AND_HEALTHY: Expect = Expect {
    kstatus: "Current",
    kstatus_rests_on: &[],
    argo: "Healthy",
    argo_rests_on: &["Ready"],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_resources_read_current_in_progress_or_failed_as_their_conditions_say() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "health-xr").target(&sim, TOKEN).start();
    let adapter = format!("contacts-{ns}");

    // Ready.
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    assert_health(cp, &ns, "xr/ada", CURRENT_AND_HEALTHY);
    cp.wait_for(&ns, "tts/target", "condition=Ready", "60s", Some(&controller));
    assert_health(cp, &ns, "tts/target", CURRENT_AND_HEALTHY);
    cp.wait_for(
        &ns,
        &format!("adapter/{adapter}"),
        "condition=Ready",
        "60s",
        Some(&controller),
    );
    assert_health(cp, "default", &format!("adapter/{adapter}"), CURRENT_AND_HEALTHY);

    // Progressing: a create under way (the target answers slowly).
    sim.set_faults(Faults {
        latency_ms: 4_000,
        ..Faults::default()
    });
    cp.apply_json(&ns, &contact("slow", json!({"email": "slow@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/slow", "condition=Reconciling", "30s", Some(&controller));
    assert_health(
        cp,
        &ns,
        "xr/slow",
        Expect {
            kstatus: "InProgress",
            kstatus_rests_on: &["Reconciling", "Ready"],
            argo: "Progressing",
            argo_rests_on: &[],
        },
    );
    sim.set_faults(Faults::default());
    cp.wait_for(&ns, "xr/slow", "condition=Ready", "60s", Some(&controller));
    assert_health(cp, &ns, "xr/slow", CURRENT_AND_HEALTHY);

    // A permanent error: a type the Adapter does not have.
    let mut invoice = contact("invoice", json!({"total": 3}), json!({}));
    invoice["spec"]["type"] = json!("invoice");
    cp.apply_json(&ns, &invoice);
    cp.wait_for(&ns, "xr/invoice", "condition=Stalled", "60s", Some(&controller));
    let failed = Expect {
        kstatus: "Failed",
        kstatus_rests_on: &["Stalled"],
        argo: "Degraded",
        argo_rests_on: &["Stalled"],
    };
    assert_health(cp, &ns, "xr/invoice", failed);

    // Drift only reported: Tether will not converge it by the user's policy.
    cp.apply_json(
        &ns,
        &contact(
            "watched",
            json!({"email": "w@example.com", "plan": "pro"}),
            json!({"pollInterval": "1s", "driftPolicy": "Report"}),
        ),
    );
    cp.wait_for(&ns, "xr/watched", "condition=Ready", "60s", Some(&controller));
    let id = cp.jsonpath(&ns, "xr/watched", "{.status.externalId}");
    sim.drift("contacts", &id, &json!({"plan": "free"}))
        .expect("object exists");
    cp.wait_for(&ns, "xr/watched", "condition=Stalled", "60s", Some(&controller));
    assert_health(
        cp,
        &ns,
        "xr/watched",
        Expect {
            kstatus: "Failed",
            kstatus_rests_on: &["Stalled"],
            argo: "Degraded",
            argo_rests_on: &["Stalled"],
        },
    );
    assert_eq!(reason_column(cp, &ns, "xr/watched"), "DriftDetected");
    assert_eq!(
        cp.jsonpath(&ns, "xr/watched", "{.status.conditions[?(@.type==\"Ready\")].status}"),
        "False"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_reads_in_progress_and_degraded_never_current() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    // A long `openFor`: the circuit stays open while the test reads it.
    let (ns, controller) = Tenant::new(cp, "health-circuit")
        .target(&sim, TOKEN)
        .spec(json!({"circuitBreaker": {"failureThreshold": 2, "openFor": "10m"},
                     "healthCheck": {"path": "/v1/contacts?limit=1", "interval": "1s"}}))
        .start();
    cp.apply_json(
        &ns,
        &contact(
            "ada",
            json!({"email": "ada@example.com"}),
            json!({"pollInterval": "1s"}),
        ),
    );
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));

    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    cp.wait_for(
        &ns,
        "tts/target",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}=CircuitOpen",
        "60s",
        Some(&controller),
    );
    assert_health(
        cp,
        &ns,
        "tts/target",
        Expect {
            kstatus: "InProgress",
            kstatus_rests_on: &["Ready", "Reconciling"],
            argo: "Degraded",
            argo_rests_on: &["Degraded"],
        },
    );
    assert_eq!(reason_column(cp, &ns, "tts/target"), "CircuitOpen");

    // The resource's next poll is refused by the open circuit.
    cp.wait_for(
        &ns,
        "xr/ada",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}=CircuitOpen",
        "60s",
        Some(&controller),
    );
    assert_health(
        cp,
        &ns,
        "xr/ada",
        Expect {
            kstatus: "InProgress",
            kstatus_rests_on: &["Ready", "Reconciling"],
            argo: "Degraded",
            argo_rests_on: &["Ready"],
        },
    );
    assert_eq!(reason_column(cp, &ns, "xr/ada"), "CircuitOpen");
}

fn workflow(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name}, "spec": spec})
}

fn run(name: &str, workflow: &str) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": name},
           "spec": {"workflowRef": {"name": workflow}}})
}

fn post(name: &str, collection: &str) -> Value {
    json!({"name": name, "call": {"targetRef": {"name": "target"},
           "request": {"method": "POST", "path": format!("/v1/{collection}"), "body": "{n: 1}"},
           "outputs": {"id": ".body.id"}}})
}

/// A step that fails for good: the target answers 404.
fn missing(name: &str) -> Value {
    json!({"name": name, "call": {"targetRef": {"name": "target"},
           "request": {"method": "PUT", "path": "/v1/nothing/missing", "body": "{n: 1}"}}})
}

/// `kubectl wait --for=condition=Succeeded=False` on a run: whether it
/// returned within `timeout`.
fn waits_for_failure(cp: &ControlPlane, ns: &str, run: &str, timeout: &str) -> bool {
    cp.kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Succeeded=False",
        &format!("--timeout={timeout}"),
        &format!("twr/{run}"),
    ])
    .status
    .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_read_in_progress_suspended_current_or_failed_and_kubectl_waits_for_a_failure() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "health-runs").target(&sim, TOKEN).start();

    let long_wait = json!({"name": "nap", "wait": {"duration": "1h"}});
    let gate = json!({"name": "gate", "approval": {"message": "go?"}});
    let mut booked = post("book", "bookings");
    booked["compensate"] = json!({"targetRef": {"name": "target"}, "request": {"method": "DELETE", "path": "/v1/bookings/\\($steps.book.outputs.id)"}});
    let mut after_booking = missing("confirm");
    after_booking["dependsOn"] = json!(["book"]);
    let definitions = [
        ("sleepy", json!({"steps": [long_wait]})),
        ("gated", json!({"steps": [gate]})),
        ("fine", json!({"steps": [post("one", "things")]})),
        ("broken", json!({"onFailure": "Stop", "steps": [missing("one")]})),
        ("saga", json!({"steps": [booked, after_booking]})),
        (
            "cyclic",
            json!({"steps": [
            {"name": "a", "dependsOn": ["b"], "wait": {"duration": "1s"}},
            {"name": "b", "dependsOn": ["a"], "wait": {"duration": "1s"}}]}),
        ),
    ];
    for (name, spec) in &definitions {
        cp.apply_json(&ns, &workflow(name, spec.clone()));
    }
    cp.wait_for(&ns, "twf/fine", "condition=Ready", "30s", Some(&controller));
    assert_health(cp, &ns, "twf/fine", CURRENT_AND_HEALTHY);
    cp.wait_for(&ns, "twf/cyclic", "condition=Stalled", "30s", Some(&controller));
    assert_health(
        cp,
        &ns,
        "twf/cyclic",
        Expect {
            kstatus: "Failed",
            kstatus_rests_on: &["Stalled"],
            argo: "Degraded",
            argo_rests_on: &["Stalled"],
        },
    );

    for (name, _) in &definitions[..5] {
        cp.apply_json(&ns, &run(&format!("{name}-1"), name));
    }

    // Running.
    cp.wait_for(
        &ns,
        "twr/sleepy-1",
        "jsonpath={.status.phase}=Running",
        "60s",
        Some(&controller),
    );
    assert_health(
        cp,
        &ns,
        "twr/sleepy-1",
        Expect {
            kstatus: "InProgress",
            kstatus_rests_on: &["Reconciling", "Ready"],
            argo: "Progressing",
            argo_rests_on: &[],
        },
    );
    assert_eq!(
        cp.jsonpath(
            &ns,
            "twr/sleepy-1",
            "{.status.conditions[?(@.type==\"Succeeded\")].status}"
        ),
        "Unknown"
    );
    let started = Instant::now();
    assert!(
        !waits_for_failure(cp, &ns, "sleepy-1", "3s"),
        "`kubectl wait --for=condition=Succeeded=False` must wait while the run runs"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "kubectl wait returned early"
    );

    // Waiting for an approval: a human must act.
    cp.wait_for(
        &ns,
        "twr/gated-1",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(&controller),
    );
    assert_health(
        cp,
        &ns,
        "twr/gated-1",
        Expect {
            kstatus: "InProgress",
            kstatus_rests_on: &["Reconciling", "Ready"],
            argo: "Suspended",
            argo_rests_on: &["Reconciling"],
        },
    );

    // Succeeded.
    cp.wait_for(&ns, "twr/fine-1", "condition=Succeeded", "60s", Some(&controller));
    assert_health(
        cp,
        &ns,
        "twr/fine-1",
        Expect {
            kstatus: "Current",
            kstatus_rests_on: &[],
            argo: "Healthy",
            argo_rests_on: &["Succeeded"],
        },
    );
    // A spec change after the end (cancelling a finished run) is
    // acknowledged: a status older than its spec would read in progress.
    assert_ok(&cp.kubectl(&[
        "patch",
        "-n",
        &ns,
        "twr/fine-1",
        "--type=merge",
        "-p",
        r#"{"spec":{"cancel":true}}"#,
    ]));
    cp.wait_for(
        &ns,
        "twr/fine-1",
        "jsonpath={.status.observedGeneration}=2",
        "30s",
        Some(&controller),
    );
    assert_health(
        cp,
        &ns,
        "twr/fine-1",
        Expect {
            kstatus: "Current",
            kstatus_rests_on: &[],
            argo: "Healthy",
            argo_rests_on: &["Succeeded"],
        },
    );

    // Failed, and compensated: `kubectl wait` for a failure returns.
    let ended_badly = Expect {
        kstatus: "Failed",
        kstatus_rests_on: &["Stalled"],
        argo: "Degraded",
        argo_rests_on: &["Stalled", "Succeeded"],
    };
    assert!(waits_for_failure(cp, &ns, "broken-1", "60s"), "a failed run");
    assert_eq!(cp.jsonpath(&ns, "twr/broken-1", "{.status.phase}"), "Failed");
    assert_health(cp, &ns, "twr/broken-1", ended_badly);
    cp.wait_for(
        &ns,
        "twr/saga-1",
        "jsonpath={.status.phase}=Compensated",
        "60s",
        Some(&controller),
    );
    assert!(waits_for_failure(cp, &ns, "saga-1", "5s"), "a compensated run");
    assert_health(
        cp,
        &ns,
        "twr/saga-1",
        Expect {
            kstatus: "Failed",
            kstatus_rests_on: &["Stalled"],
            argo: "Degraded",
            argo_rests_on: &["Stalled", "Succeeded"],
        },
    );
}

#[test]
fn the_readme_snippet_is_the_shipped_argo_cd_health_checks() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    for kind in [
        "ExternalResource",
        "TargetSystem",
        "WorkflowRun",
        "Workflow",
        "Adapter",
        "Approval",
    ] {
        let lua = std::fs::read_to_string(repo.join(format!("deploy/argocd/tether.dev_{kind}/health.lua")))
            .expect("a health check per kind");
        let indented: Vec<String> = lua
            .lines()
            .map(|l| {
                if l.is_empty() {
                    String::new()
                } else {
                    format!("    {l}")
                }
            })
            .collect();
        let entry = format!(
            "  resource.customizations.health.tether.dev_{kind}: |\n{}\n",
            indented.join("\n")
        );
        assert!(
            readme.contains(&entry),
            "README's argocd-cm snippet differs from deploy/argocd for {kind}"
        );
    }
}
