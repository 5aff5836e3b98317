//! The chart as operators install it: the real `helm` against a real API
//! server that has nothing of Tether's yet — install of the previous chart
//! version, upgrade to this one (CRDs applied first, as docs/upgrading.md
//! says), a second release beside it, and the tenant roles checked with
//! `kubectl auth can-i`. The dashboard is checked against the metric names
//! a running controller serves.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant, contact, contacts_adapter};
use support::{ControlPlane, KubectlExt, assert_ok};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm_binary() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/helm.sh"))
        .output()
        .expect("scripts/helm.sh runs");
    assert!(out.status.success(), "building helm failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn helm(cp: &ControlPlane, args: &[&str]) -> Output {
    let home = cp.dir.join("helm-home");
    Command::new(helm_binary())
        .args(args)
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

fn chart() -> String {
    repo().join("charts/tether").to_string_lossy().into_owned()
}

fn exists(cp: &ControlPlane, kind: &str, name: &str, namespace: Option<&str>) -> bool {
    let mut args = vec!["get", kind, name];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    cp.kubectl(&args).status.success()
}

fn can_i(cp: &ControlPlane, who: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let out = cp.kubectl_as(who, &["auth", "can-i", verb, resource, "-n", namespace], None);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn helm_install_of_the_previous_version_upgrades_and_a_second_release_installs_beside_it() {
    let cp = ControlPlane::start_empty(&repo()).unwrap_or_else(|e| panic!("control plane: {e}"));
    let previous = repo().join("tests/fixtures/tether-0.1.0.tgz");
    assert_ok(&helm(
        &cp,
        &[
            "install",
            "tether",
            &previous.to_string_lossy(),
            "-n",
            "tether-system",
            "--create-namespace",
        ],
    ));
    // Helm installs crds/ on install but never upgrades them: the docs say
    // to apply them first.
    let crds = repo().join("crds");
    assert_ok(&cp.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &crds.to_string_lossy(),
    ]));
    assert_ok(&helm(&cp, &["upgrade", "tether", &chart(), "-n", "tether-system"]));
    let list = helm(&cp, &["list", "-n", "tether-system", "-o", "json"]);
    let list: Value = serde_json::from_slice(&assert_ok(&list).into_bytes()).expect("helm list is JSON");
    assert_eq!(list[0]["chart"], json!("tether-0.2.0"), "{list}");
    assert_eq!(list[0]["revision"], json!("2"), "one upgrade: {list}");
    assert_eq!(list[0]["status"], json!("deployed"), "{list}");
    for (kind, name) in [
        ("clusterrole", "tether-controller"),
        ("clusterrole", "tether-approver"),
        ("clusterrole", "tether-edit"),
        ("clusterrole", "tether-view"),
        ("validatingadmissionpolicy", "tether-targetsystem-secrets"),
        ("validatingadmissionpolicy", "tether-externalresource-secrets"),
        // The API server offers MutatingAdmissionPolicy (1.36): rendered.
        ("mutatingadmissionpolicy", "tether-approval-decided-by"),
    ] {
        assert!(exists(&cp, kind, name, None), "{kind}/{name} after the upgrade");
    }
    assert!(exists(
        &cp,
        "poddisruptionbudget",
        "tether-controller",
        Some("tether-system")
    ));

    // A second release: every cluster-scoped name carries its release.
    assert_ok(&helm(
        &cp,
        &["install", "second", &chart(), "-n", "second", "--create-namespace"],
    ));
    for name in [
        "second-tether-controller",
        "second-tether-approver",
        "second-tether-edit",
    ] {
        assert!(exists(&cp, "clusterrole", name, None), "clusterrole/{name}");
    }
    assert!(exists(&cp, "deployment", "second-tether-controller", Some("second")));

    // Tenants bound to the edit role use Tether; TargetSystems, Adapters
    // and Approvals stay with the platform team and the approvers.
    assert_ok(&cp.kubectl(&["create", "namespace", "team"]));
    assert_ok(&cp.kubectl(&[
        "create",
        "rolebinding",
        "alice-edits",
        "-n",
        "team",
        "--clusterrole=tether-edit",
        "--user=alice",
    ]));
    assert!(can_i(&cp, "alice", "create", "workflowruns.tether.dev", "team"));
    assert!(can_i(&cp, "alice", "create", "externalresources.tether.dev", "team"));
    assert!(can_i(&cp, "alice", "get", "targetsystems.tether.dev", "team"));
    assert!(!can_i(&cp, "alice", "create", "targetsystems.tether.dev", "team"));
    assert!(!can_i(&cp, "alice", "create", "approvals.tether.dev", "team"));
    assert!(!can_i(&cp, "alice", "create", "adapters.tether.dev", "team"));
    assert!(!can_i(&cp, "alice", "get", "secrets", "team"));
    assert!(!can_i(&cp, "alice", "create", "workflowruns.tether.dev", "default"));
}

/// Series names a PromQL expression reads (`tether_...`).
fn series(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tether_") {
        let tail = rest.get(at..).unwrap_or_default();
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = tail.get(name.len()..).unwrap_or_default();
        names.push(name);
    }
    names
}

fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| expressions(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

fn family(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_only_metrics_the_controller_serves() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&repo()).join("charts/tether/dashboards/tether.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "panels for reconciles, targets and workflows");
    let cp = ControlPlane::shared();
    // One resource through a rate-limited target: the per-target series
    // (calls, limiter waits, circuit) exist once a target was called.
    let target = Simulator::accepting("dash-token-1234").start();
    let (ns, controller) = Tenant::new(cp, "dashboard")
        .adapter("dashboard", contacts_adapter)
        .target(&target, "dash-token-1234")
        .spec(json!({"rateLimit": {"requestsPerSecond": 50, "burst": 5}}))
        .with_object(contact("ada", json!({"email": "ada@example.com"}), json!({})))
        .start();
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    let served = controller.metrics().await;
    for expr in &exprs {
        for name in series(expr) {
            let family = family(&name);
            assert!(
                served.contains(&format!("# TYPE {family} ")),
                "the dashboard reads {name}, which the controller does not serve ({expr}):\n{served}"
            );
        }
    }
}

/// `helm template` of this chart with `values`; its output, or helm's error.
fn template(values: &[&str]) -> Result<String, String> {
    let mut args = vec!["template", "tether", "--namespace", "tether-system"];
    for value in values {
        args.extend(["--set", value]);
    }
    let out = Command::new(helm_binary())
        .args(&args)
        .arg(chart())
        .output()
        .expect("helm runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_replicas_shards_and_traces_values_render_what_they_say() {
    let default = template(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(default.contains("replicas: 2"), "two replicas by default");
    assert!(!default.contains("--shards"), "unsharded by default");
    assert!(!default.contains("--otlp-endpoint"), "traces are off by default");
    assert!(
        !default.contains("resources: [targetsystems, workflows, approvals]"),
        "no label patches unsharded"
    );
    assert!(!default.contains("shard-label-only"), "no label policy unsharded");

    let sharded = template(&["replicas=3", "shards=6"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(sharded.contains("replicas: 3"), "{sharded}");
    assert!(sharded.contains("--shards=6"), "{sharded}");
    assert!(
        sharded.contains("resources: [targetsystems, workflows, approvals]"),
        "the holder of shard 0 may label every sharded kind"
    );
    assert!(
        sharded.contains("name: tether-shard-label-only"),
        "and an admission policy keeps that patch to the label"
    );
    assert!(
        sharded.contains("patch, delete]"),
        "member Leases of replicas that are gone can be deleted"
    );

    let refused = template(&["shards=3", "leaderElection.enabled=false"])
        .err()
        .unwrap_or_default();
    assert!(
        refused.contains("shards above 1 needs leaderElection.enabled"),
        "shards without Leases are refused: {refused}"
    );

    let traced =
        template(&["traces.otlpEndpoint=http://collector.observability:4318"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        traced.contains("--otlp-endpoint=http://collector.observability:4318"),
        "{traced}"
    );
}
