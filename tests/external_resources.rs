//! ExternalResources converge through HTTP adapters on a real control plane
//! and a real HTTP target (the simulator) — and never leak, duplicate, fight
//! or flood. Every test drives `tether run` the way users do: `kubectl
//! apply`, `kubectl wait`.
mod support;

use serde_json::json;
use support::ControlPlane;
use support::tether::{Controller, contact, contacts_adapter, target};
use tether::sim::{self, Credentials, SimHandle};

const TOKEN: &str = "tok-3f9a-demo-secret";

async fn simulator() -> SimHandle {
    sim::start(
        "127.0.0.1:0".parse().expect("address"),
        Credentials {
            bearer_tokens: vec![TOKEN.into()],
            ..Credentials::default()
        },
    )
    .await
    .expect("simulator starts")
}

/// A namespace with an Adapter, a Secret and a TargetSystem on `sim`, and a
/// controller watching it.
fn setup(cp: &ControlPlane, prefix: &str, sim: &SimHandle, target_spec: serde_json::Value) -> (String, Controller) {
    let ns = cp.namespace(prefix);
    let adapter = format!("contacts-{ns}");
    cp.apply_json(&ns, &contacts_adapter(&adapter));
    cp.apply_json(&ns, &target(&adapter, &sim.base_url(), TOKEN, target_spec));
    let controller = Controller::start(cp, &ns, &[]);
    (ns, controller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_converges_with_exactly_one_create() {
    let cp = ControlPlane::shared();
    let sim = simulator().await;
    let (ns, controller) = setup(cp, "converge", &sim, json!({}));
    cp.apply_json(
        &ns,
        &contact("ada", json!({"email": "ada@example.com", "plan": "pro"}), json!({})),
    );
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));

    let objects = sim.objects("contacts");
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["email"], "ada@example.com");
    assert_eq!(objects[0]["externalName"], format!("{ns}-ada"));
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.externalId}"),
        objects[0]["id"].as_str().unwrap_or_default()
    );
    assert_eq!(sim.stats().count("create", "contacts"), 1);
    assert_eq!(cp.jsonpath(&ns, "xr/ada", "{.status.observedGeneration}"), "1");
}
