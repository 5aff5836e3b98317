//! What one `tether run` reconciles: a list of namespaces and a label
//! selector (`--namespace a,b --selector team=x`), on the real control
//! plane: objects in scope converge, objects outside it are not touched.
mod support;

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant, contact, contacts_adapter};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt, assert_ok};

const TOKEN: &str = "scope-token-81c2";

fn labelled(mut object: Value, team: &str) -> Value {
    object["metadata"]["labels"] = json!({ "team": team });
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_only_its_namespaces_and_selector() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let tenant = |prefix| {
        Tenant::new(cp, prefix)
            .adapter("scope", contacts_adapter)
            .target(&sim, TOKEN)
            .create()
    };
    let (a, b, outside) = (tenant("scope-a"), tenant("scope-b"), tenant("scope-c"));
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
