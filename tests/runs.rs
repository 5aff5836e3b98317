//! Runs after they end, on a real control plane with real HTTP targets
//! (simulators): a retry that keeps what the failed run finished, retention
//! (TTL, history limits) for every run, `tether runs list/watch/retry/
//! cancel`, one Event per step, and a `resource` step that moves on its
//! ExternalResource's watch event.
mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::{self as sim, Credentials, Faults, SimHandle};

const TOKEN: &str = "runs-token-41af";

fn simulator() -> SimHandle {
    tether::install_crypto_provider();
    sim::start_on_own_thread(
        "127.0.0.1:0".parse().expect("address"),
        Credentials {
            bearer_tokens: vec![TOKEN.into()],
            ..Credentials::default()
        },
    )
    .expect("simulator starts")
}

/// A namespace with the contacts Adapter, one TargetSystem per
/// `(name, simulator)`, and a controller watching it.
fn setup(cp: &ControlPlane, prefix: &str, targets: &[(&str, &SimHandle)]) -> (String, Controller) {
    let ns = cp.namespace(prefix);
    let adapter = format!("runs-{ns}");
    cp.apply_json(&ns, &support::fixtures::contacts_adapter(&adapter));
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"},
                                "stringData": {"token": TOKEN}}),
    ];
    for (name, sim) in targets {
        items.push(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": name},
            "spec": {"adapterRef": {"name": adapter}, "baseUrl": sim.base_url(),
                     "auth": {"bearer": {"tokenSecretRef": {"name": "token", "key": "token"}}}}
        }));
    }
    cp.apply_json(&ns, &json!({"apiVersion": "v1", "kind": "List", "items": items}));
    let controller = Controller::start(cp, &ns, &[]);
    (ns, controller)
}

fn workflow(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name}, "spec": spec})
}

fn run(name: &str, workflow: &str, parameters: Value) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": name},
           "spec": {"workflowRef": {"name": workflow}, "parameters": parameters}})
}

/// A `call` step that POSTs `body` to `/v1/<collection>` on `target`.
fn post(name: &str, target: &str, collection: &str, body: &str) -> Value {
    json!({"name": name, "call": {"targetRef": {"name": target},
           "request": {"method": "POST", "path": format!("/v1/{collection}"), "body": body},
           "outputs": {"id": ".body.id"}}})
}

/// `tether <args>` as the admin.
fn tether(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .env("KUBECONFIG", cp.kubeconfig("admin"))
        .output()
        .expect("tether runs")
}

/// The names of the namespace's runs.
fn runs(cp: &ControlPlane, ns: &str) -> Vec<String> {
    cp.jsonpath(ns, "twr", "{.items[*].metadata.name}")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Waits until `done` holds, failing with `what` and the controller's log.
async fn until(what: &str, timeout: Duration, controller: &Controller, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", controller.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_to_success_without_calling_its_succeeded_steps_again() {
    let cp = ControlPlane::shared();
    let (crm, billing) = (simulator(), simulator());
    let (ns, controller) = setup(cp, "runs-retry", &[("crm", &crm), ("billing", &billing)]);
    let contact = json!({"name": "contact", "resource": {"targetRef": {"name": "crm"}, "type": "contact",
        "properties": "{email: $params.customer}"}});
    let mut one = post("one", "crm", "leads", "{customer: $params.customer}");
    one["dependsOn"] = json!(["contact"]);
    let mut two = post("two", "crm", "offers", "{lead: $steps.one.outputs.id}");
    two["dependsOn"] = json!(["one"]);
    let mut three = post("three", "billing", "invoices", "{offer: $steps.two.outputs.id}");
    three["dependsOn"] = json!(["two"]);
    cp.apply_json(
        &ns,
        &workflow(
            "sale",
            json!({"onFailure": "Stop", "parameters": [{"name": "customer", "required": true}],
                   "steps": [contact, one, two, three]}),
        ),
    );
    // Billing is down: step three fails (no retries), the run stops.
    billing.state.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(503),
        ..Faults::default()
    });
    cp.apply_json(&ns, &run("sale-1", "sale", json!({"customer": "ada"})));
    cp.wait_for(
        &ns,
        "twr/sale-1",
        "jsonpath={.status.phase}=Failed",
        "60s",
        Some(&controller),
    );
    let offer = crm.objects("offers")[0]["id"].clone();

    // `tether runs list` names the step that failed.
    let list = assert_ok(&tether(cp, &["runs", "list", "-n", &ns]));
    let row = list.lines().find(|l| l.starts_with("sale-1")).unwrap_or_default();
    assert!(row.contains("Failed") && row.trim_end().ends_with("three"), "{list}");

    // Billing is fixed; the retry runs step three only.
    billing.state.set_faults(Faults::default());
    let retried = assert_ok(&tether(cp, &["runs", "retry", "sale-1", "-n", &ns]));
    let retry = runs(cp, &ns)
        .into_iter()
        .find(|r| r.starts_with("sale-1-retry-"))
        .unwrap_or_else(|| panic!("no retry run: {retried}"));
    assert!(retried.contains(&retry), "{retried}");
    cp.wait_for(
        &ns,
        &format!("twr/{retry}"),
        "condition=Succeeded",
        "60s",
        Some(&controller),
    );

    assert_eq!(
        crm.stats().count("create", "contacts"),
        1,
        "the contact was not created again"
    );
    assert_eq!(crm.stats().count("create", "leads"), 1, "step one was not called again");
    assert_eq!(
        crm.stats().count("create", "offers"),
        1,
        "step two was not called again"
    );
    let invoices = billing.objects("invoices");
    assert_eq!(invoices.len(), 1, "step three ran once, in the retry");
    assert_eq!(
        invoices[0]["offer"], offer,
        "the kept outputs of step two fed step three"
    );
    assert_eq!(
        cp.jsonpath(&ns, &format!("twr/{retry}"), "{.status.steps[0].keptFrom}"),
        "sale-1"
    );
    // The kept resource step's ExternalResource now belongs to the retry:
    // deleting the old run does not take it along.
    assert_eq!(
        cp.jsonpath(&ns, "xr/sale-1-contact", "{.metadata.ownerReferences[*].name}"),
        retry
    );
    assert_eq!(
        cp.jsonpath(&ns, &format!("twr/{retry}"), "{.metadata.labels.tether\\.dev/retry-of}"),
        "sale-1"
    );
    assert_eq!(
        billing.stats().count("create", "invoices"),
        2,
        "step three: one refused create in sale-1, one in the retry"
    );
    let described = assert_ok(&tether(cp, &["runs", "describe", &retry, "-n", &ns]));
    assert!(described.contains("kept from run sale-1"), "{described}");
    assert!(described.contains("outputs: {\"id\":"), "{described}");

    // A run that succeeded has nothing to retry; an unknown run is a
    // sentence and a failure, not a debug dump.
    let refused = tether(cp, &["runs", "retry", &retry, "-n", &ns]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nothing to retry"),
        "{refused:?}"
    );
    for command in ["describe", "watch", "retry", "cancel"] {
        let missing = tether(cp, &["runs", command, "ghost", "-n", &ns]);
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(!missing.status.success(), "{command}: {missing:?}");
        assert_eq!(
            stderr.trim(),
            format!("error: WorkflowRun \"ghost\" not found in namespace \"{ns}\""),
            "{command}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_run_is_retried_redoing_the_undone_steps_and_keeping_the_others() {
    let cp = ControlPlane::shared();
    let (crm, billing) = (simulator(), simulator());
    let (ns, controller) = setup(cp, "runs-saga", &[("crm", &crm), ("billing", &billing)]);
    let lookup = post("lookup", "crm", "lookups", "{}");
    let mut open = post("open", "crm", "accounts", "{}");
    open["dependsOn"] = json!(["lookup"]);
    open["compensate"] = json!({"targetRef": {"name": "crm"},
        "request": {"method": "POST", "path": "/v1/undo", "body": "{id: $steps.open.outputs.id}"}});
    let mut charge = post("charge", "billing", "charges", "{account: $steps.open.outputs.id}");
    charge["dependsOn"] = json!(["open"]);
    cp.apply_json(&ns, &workflow("saga", json!({"steps": [lookup, open, charge]})));
    billing.state.set_faults(Faults {
        error_rate: 1.0,
        error_status: Some(503),
        ..Faults::default()
    });
    cp.apply_json(&ns, &run("saga-1", "saga", json!({})));
    cp.wait_for(
        &ns,
        "twr/saga-1",
        "jsonpath={.status.phase}=Compensated",
        "60s",
        Some(&controller),
    );
    billing.state.set_faults(Faults::default());
    // By hand, as the docs show: the same workflow and parameters, retryOf.
    let mut retry = run("saga-2", "saga", json!({}));
    retry["spec"]["retryOf"] = json!("saga-1");
    cp.apply_json(&ns, &retry);
    cp.wait_for(&ns, "twr/saga-2", "condition=Succeeded", "60s", Some(&controller));
    assert_eq!(
        crm.stats().count("create", "lookups"),
        1,
        "lookup has nothing to undo: kept"
    );
    assert_eq!(
        crm.stats().count("create", "accounts"),
        2,
        "open was undone: it runs again"
    );
    assert_eq!(crm.stats().count("create", "undo"), 1);
    let accounts = crm.objects("accounts");
    assert_eq!(billing.objects("charges")[0]["account"], accounts[1]["id"]);
    // retryOf cannot be changed afterwards.
    let changed = cp.kubectl(&[
        "patch",
        "twr",
        "saga-2",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"retryOf":"other"}}"#,
    ]);
    assert!(!changed.status.success());
    assert!(String::from_utf8_lossy(&changed.stderr).contains("retryOf is immutable"));
    // A retry of a run that has not failed ends at once, saying why.
    let mut again = run("saga-3", "saga", json!({}));
    again["spec"]["retryOf"] = json!("saga-2");
    cp.apply_json(&ns, &again);
    cp.wait_for(
        &ns,
        "twr/saga-3",
        "jsonpath={.status.phase}=Failed",
        "30s",
        Some(&controller),
    );
    let why = cp.jsonpath(
        &ns,
        "twr/saga-3",
        "{.status.conditions[?(@.type==\"Succeeded\")].reason}",
    );
    assert_eq!(why, "InvalidRetry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_past_their_ttl_or_history_limit_are_deleted_whoever_started_them() {
    let cp = ControlPlane::shared();
    let target = simulator();
    let (ns, controller) = setup(cp, "runs-ttl", &[("crm", &target)]);
    // Failed runs beyond one go; succeeded runs go 5 s after they end.
    cp.apply_json(
        &ns,
        &workflow(
            "short",
            json!({"steps": [post("one", "crm", "leads", "{}")],
                   "retention": {"ttlSecondsAfterFinished": 5, "failedRunsHistoryLimit": 1}}),
        ),
    );
    let failing = json!({"onFailure": "Stop", "steps": [{"name": "bad", "call": {"targetRef": {"name": "crm"},
        "request": {"method": "PUT", "path": "/v1/leads/missing", "body": "{}"}}}],
        "retention": {"failedRunsHistoryLimit": 1}});
    cp.apply_json(&ns, &workflow("failing", failing));
    cp.apply_json(&ns, &run("bad-1", "failing", json!({})));
    cp.wait_for(
        &ns,
        "twr/bad-1",
        "jsonpath={.status.phase}=Failed",
        "30s",
        Some(&controller),
    );
    cp.apply_json(&ns, &run("bad-2", "failing", json!({})));
    cp.wait_for(
        &ns,
        "twr/bad-2",
        "jsonpath={.status.phase}=Failed",
        "30s",
        Some(&controller),
    );
    cp.apply_json(&ns, &run("ok-1", "short", json!({})));
    cp.wait_for(&ns, "twr/ok-1", "condition=Succeeded", "30s", Some(&controller));
    // While its TTL runs, the succeeded run is there.
    assert!(runs(cp, &ns).contains(&"ok-1".to_owned()));
    until(
        "the succeeded run past its TTL and the older failed run are gone",
        Duration::from_secs(30),
        &controller,
        || runs(cp, &ns) == ["bad-2"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_of_a_run_has_its_own_events() {
    let cp = ControlPlane::shared();
    let target = simulator();
    let (ns, controller) = setup(cp, "runs-events", &[("crm", &target)]);
    let mut steps: Vec<Value> = vec![];
    for i in 1..=5 {
        let mut step = post(&format!("s{i}"), "crm", "leads", "{}");
        if i > 1 {
            step["dependsOn"] = json!([format!("s{}", i - 1)]);
        }
        steps.push(step);
    }
    cp.apply_json(&ns, &workflow("five", json!({"steps": steps})));
    cp.apply_json(&ns, &run("five-1", "five", json!({})));
    cp.wait_for(&ns, "twr/five-1", "condition=Succeeded", "60s", Some(&controller));
    let messages = || {
        cp.jsonpath(
            &ns,
            "events",
            "{range .items[?(@.involvedObject.name==\"five-1\")]}{.message}{\"\\n\"}{end}",
        )
    };
    until(
        "one StepStarted Event per step",
        Duration::from_secs(10),
        &controller,
        || {
            let messages = messages();
            (1..=5).all(|i| messages.lines().any(|m| m == format!("step s{i} started")))
        },
    )
    .await;
    let messages = messages();
    for i in 1..=5 {
        assert!(
            messages.lines().any(|m| m == format!("step s{i} succeeded")),
            "s{i} in\n{messages}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_step_finishes_on_its_external_resources_ready_event_not_the_next_requeue() {
    let cp = ControlPlane::shared();
    let target = simulator();
    let (ns, controller) = setup(cp, "runs-ready", &[("crm", &target)]);
    // A slow target: the ExternalResource becomes Ready well after the
    // run's reconcile that created it has ended.
    target.state.set_faults(Faults {
        latency_ms: 1500,
        ..Faults::default()
    });
    let spec = json!({"steps": [{"name": "contact", "resource": {"targetRef": {"name": "crm"},
        "type": "contact", "properties": "{email: \"ada@example.com\"}"}}]});
    cp.apply_json(&ns, &workflow("contact", spec));
    cp.wait_for(&ns, "twf/contact", "condition=Ready", "30s", Some(&controller));
    // Three runs: each must notice its ExternalResource's Ready at once
    // (the fallback requeue is 30 s).
    for i in 1..=3 {
        let name = format!("contact-{i}");
        let started = Instant::now();
        cp.apply_json(&ns, &run(&name, "contact", json!({})));
        cp.wait_for(
            &ns,
            &format!("twr/{name}"),
            "condition=Succeeded",
            "20s",
            Some(&controller),
        );
        let ready = cp.jsonpath(
            &ns,
            &format!("xr/{name}-contact"),
            "{.status.conditions[?(@.type==\"Ready\")].lastTransitionTime}",
        );
        let finished = cp.jsonpath(&ns, &format!("twr/{name}"), "{.status.steps[0].finishedAt}");
        let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let lag = parse(&finished) - parse(&ready);
        assert!(
            lag < chrono::Duration::seconds(4),
            "run {name} saw Ready {lag} after it happened ({:?} in all)",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_watch_redraws_on_change_and_ends_with_the_run_and_cancel_stops_a_run() {
    let cp = ControlPlane::shared();
    let target = simulator();
    let (ns, controller) = setup(cp, "runs-watch", &[("crm", &target)]);
    let spec = json!({"steps": [
        post("first", "crm", "leads", "{}"),
        {"name": "pause", "dependsOn": ["first"], "wait": {"duration": "2s"}},
        {"name": "last", "dependsOn": ["pause"], "wait": {"duration": "1s"}}
    ]});
    cp.apply_json(&ns, &workflow("slow", spec));
    cp.apply_json(&ns, &run("slow-1", "slow", json!({})));
    let watched = tokio::task::spawn_blocking({
        let (kubeconfig, ns) = (cp.kubeconfig("admin"), ns.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_tether"))
                .args(["runs", "watch", "slow-1", "-n", &ns])
                .env("KUBECONFIG", kubeconfig)
                .output()
                .expect("tether runs watch")
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(60), watched)
        .await
        .expect("runs watch ends with the run")
        .expect("joins");
    let text = assert_ok(&out);
    let drawings: Vec<&str> = text.split("---\n").collect();
    assert!(drawings.len() >= 2, "redrawn as the run moved:\n{text}");
    assert!(drawings.windows(2).all(|w| w[0] != w[1]), "only on change:\n{text}");
    assert!(
        drawings.last().is_some_and(|d| d.contains("Phase: Succeeded")),
        "{text}"
    );

    // Cancel: the run stops and says so.
    let spec = json!({"steps": [{"name": "long", "wait": {"duration": "10m"}}]});
    cp.apply_json(&ns, &workflow("long", spec));
    cp.apply_json(&ns, &run("long-1", "long", json!({})));
    cp.wait_for(
        &ns,
        "twr/long-1",
        "jsonpath={.status.phase}=Running",
        "30s",
        Some(&controller),
    );
    assert_ok(&tether(cp, &["runs", "cancel", "long-1", "-n", &ns]));
    cp.wait_for(&ns, "twr/long-1", "condition=Succeeded=False", "30s", Some(&controller));
    assert_eq!(cp.jsonpath(&ns, "twr/long-1", "{.spec.cancel}"), "true");
}
