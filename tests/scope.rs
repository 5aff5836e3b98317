//! What one `tether run` reconciles: a list of namespaces and a label
//! selector (`--namespace a,b --selector team=x`), on the real control
//! plane: objects in scope converge, objects outside it are not touched.
mod support;

use serde_json::{Value, json};
use support::tether::{Controller, contact, contacts_adapter, target};
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::{self as sim, Credentials};

const TOKEN: &str = "scope-token-81c2";

fn labelled(mut object: Value, team: &str) -> Value {
    object["metadata"]["labels"] = json!({ "team": team });
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_only_its_namespaces_and_selector() {
    tether::install_crypto_provider();
    let cp = ControlPlane::shared();
    let sim = sim::start_on_own_thread(
        "127.0.0.1:0".parse().expect("address"),
        Credentials {
            bearer_tokens: vec![TOKEN.into()],
            ..Credentials::default()
        },
    )
    .expect("simulator");
    let (a, b, outside) = (
        cp.namespace("scope-a"),
        cp.namespace("scope-b"),
        cp.namespace("scope-c"),
    );
    for ns in [&a, &b, &outside] {
        let adapter = format!("scope-{ns}");
        cp.apply_json(ns, &contacts_adapter(&adapter));
        cp.apply_json(ns, &target(&adapter, &sim.base_url(), TOKEN, json!({})));
    }
    let mine = |name: &str| {
        labelled(
            contact(name, json!({"email": format!("{name}@example.com")}), json!({})),
            "x",
        )
    };
    cp.apply_json(&a, &mine("in-a"));
    cp.apply_json(&b, &mine("in-b"));
    cp.apply_json(&outside, &mine("elsewhere"));
    cp.apply_json(
        &a,
        &labelled(contact("other-team", json!({"email": "o@example.com"}), json!({})), "y"),
    );
    cp.apply_json(&a, &contact("unlabelled", json!({"email": "u@example.com"}), json!({})));

    let controller = Controller::start(cp, &a, &["--namespace", &b, "--selector", "team=x"]);
    cp.wait_for(&a, "xr/in-a", "condition=Ready", "60s", Some(&controller));
    cp.wait_for(&b, "xr/in-b", "condition=Ready", "60s", Some(&controller));
    // Objects are reconciled in creation order within a pass; by the time
    // both of ours are Ready, the others had their chance.
    for (ns, name) in [(&a, "other-team"), (&a, "unlabelled"), (&outside, "elsewhere")] {
        assert_eq!(
            cp.jsonpath(ns, &format!("xr/{name}"), "{.status}"),
            "",
            "{ns}/{name} was touched"
        );
        assert_eq!(
            cp.jsonpath(ns, &format!("xr/{name}"), "{.metadata.finalizers}"),
            "",
            "{ns}/{name}"
        );
    }
    assert_eq!(sim.objects("contacts").len(), 2, "only the two in scope were created");

    // A deletion in the second namespace completes through the merged watch.
    assert_ok(&cp.kubectl(&["delete", "xr", "in-b", "-n", &b, "--wait=true", "--timeout=60s"]));
    assert_eq!(sim.objects("contacts").len(), 1);
}
