//! `tether plan` against a real control plane and a real target (the
//! simulator): it shows what the controller would do — here a pending
//! update, field by field — before the controller does it, and the
//! simulator's counters prove it only read.
mod support;

use std::process::Output;

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant, contact};
use support::tether::{Controller, TEST_EGRESS_DENY};
use support::{ControlPlane, KubectlExt};
use tether_sim::SimHandle;

const TOKEN: &str = "tok-plan-secret-77";

/// `tether plan <args>` as `who`, with the test egress list (the simulator
/// listens on loopback, which the default list refuses).
fn plan(cp: &ControlPlane, who: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("plan")
        .args(args)
        .args(["--egress-deny", TEST_EGRESS_DENY])
        .env("KUBECONFIG", cp.kubeconfig(who))
        .env("RUST_LOG", "warn")
        .output()
        .expect("tether plan runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The requests the simulator got other than reads (`read`, `list`).
fn writes(sim: &SimHandle) -> Vec<String> {
    sim.stats()
        .requests
        .keys()
        .filter(|k| !k.starts_with("read ") && !k.starts_with("list "))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_a_pending_update_before_the_controller_applies_it_and_writes_nothing() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let ns = Tenant::new(cp, "plan").target(&sim, TOKEN).create();
    let mut controller = Controller::start(cp, &ns, &[]);
    cp.apply_json(
        &ns,
        &contact("ada", json!({"email": "ada@example.com", "plan": "pro"}), json!({})),
    );
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    let id = cp.jsonpath(&ns, "xr/ada", "{.status.externalId}");

    // In sync: nothing to do, exit 0.
    let out = plan(cp, "admin", &["-n", &ns]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no change"),
        "{}",
        text(&out)
    );

    // The controller stops; the spec changes; the target still says "pro".
    controller.kill();
    cp.apply_json(
        &ns,
        &contact(
            "ada",
            json!({"email": "ada@example.com", "plan": "enterprise"}),
            json!({}),
        ),
    );
    sim.reset_stats();

    let out = plan(cp, "admin", &["-n", &ns, "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "changes pending: {}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(json["changesPending"], true);
    let ada = &json["resources"][0];
    assert_eq!(ada["name"], "ada", "{json:#}");
    assert_eq!(ada["action"], "update", "{json:#}");
    assert_eq!(ada["externalId"], id.as_str(), "{json:#}");
    assert_eq!(
        ada["changes"],
        json!([{"field": "/plan", "from": "pro", "to": "enterprise"}]),
        "{json:#}"
    );
    let out = plan(cp, "admin", &["-n", &ns]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("~ ExternalResource {ns}/ada")), "{shown}");
    assert!(shown.contains(r#"/plan: "pro" -> "enterprise""#), "{shown}");
    assert!(!shown.contains(TOKEN), "no credential is printed: {shown}");

    // Manifests from files: ada as the target holds it is in sync, a new
    // bob would be created (after a lookup of its default name).
    let dir = cp.dir.join(format!("manifests-{ns}"));
    std::fs::create_dir_all(&dir).expect("manifest directory");
    let manifests = json!({"apiVersion": "v1", "kind": "List", "items": [
        contact("ada", json!({"email": "ada@example.com", "plan": "pro"}), json!({})),
        contact("bob", json!({"email": "bob@example.com"}), json!({})),
    ]});
    std::fs::write(dir.join("contacts.json"), manifests.to_string()).expect("write");
    let out = plan(cp, "admin", &["-n", &ns, "-f", &dir.to_string_lossy(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(json["resources"][0]["action"], "noChange", "{json:#}");
    assert_eq!(json["resources"][1]["name"], "bob", "{json:#}");
    assert_eq!(json["resources"][1]["action"], "create", "{json:#}");
    assert_eq!(json["resources"][1]["externalName"], format!("{ns}-bob"), "{json:#}");

    // Only reads reached the target, and the API server holds what it held.
    let stats = sim.stats();
    assert!(stats.count("read", "contacts") >= 3, "{:?}", stats.requests);
    assert!(
        stats.count("list", "contacts") >= 1,
        "bob's name was looked up: {:?}",
        stats.requests
    );
    assert_eq!(writes(&sim), Vec::<String>::new(), "a plan never writes");
    assert_eq!(sim.objects("contacts").len(), 1);
    assert_eq!(sim.objects("contacts")[0]["plan"], "pro");
    assert_eq!(cp.jsonpath(&ns, "xr/ada", "{.status.observedGeneration}"), "1");
    assert!(cp.jsonpath(&ns, "xr/bob", "{.metadata.name}").is_empty());

    // The controller applies what the plan said; then nothing is pending.
    controller.restart(cp);
    cp.wait_for(
        &ns,
        "xr/ada",
        "jsonpath={.status.observedGeneration}=2",
        "60s",
        Some(&controller),
    );
    assert_eq!(sim.objects("contacts")[0]["plan"], "enterprise");
    let out = plan(cp, "admin", &["-n", &ns]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reads_credentials_only_as_the_user_may() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let ns = Tenant::new(cp, "plan-rbac").target(&sim, TOKEN).create();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    // bob may read ExternalResources, not the TargetSystem's Secret: the
    // plan fails for that resource (exit 1) and sends nothing.
    for (verb, resource) in [
        ("get,list", "externalresources.tether.dev"),
        ("get", "targetsystems.tether.dev"),
    ] {
        let role = format!("plan-{}", resource.split('.').next().unwrap_or_default());
        support::assert_ok(&cp.kubectl(&[
            "create",
            "role",
            &role,
            "-n",
            &ns,
            &format!("--verb={verb}"),
            &format!("--resource={resource}"),
        ]));
        support::assert_ok(&cp.kubectl(&[
            "create",
            "rolebinding",
            &role,
            "-n",
            &ns,
            &format!("--role={role}"),
            "--user=bob",
        ]));
    }
    support::assert_ok(&cp.kubectl(&[
        "create",
        "clusterrole",
        &format!("plan-adapters-{ns}"),
        "--verb=get",
        "--resource=adapters.tether.dev",
    ]));
    support::assert_ok(&cp.kubectl(&[
        "create",
        "clusterrolebinding",
        &format!("plan-adapters-{ns}"),
        &format!("--clusterrole=plan-adapters-{ns}"),
        "--user=bob",
    ]));
    let out = plan(cp, "bob", &["-n", &ns]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("target-token"),
        "names the Secret it could not read: {shown}"
    );
    assert!(sim.stats().requests.is_empty(), "{:?}", sim.stats().requests);
    // The admin may read it: a create is pending.
    let out = plan(cp, "admin", &["-n", &ns]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
