//! Workflows across systems on a real control plane and real HTTP targets
//! (simulators): DAGs, sagas, fan-out/fan-in, approvals, crashes, version
//! pinning, triggers and malformed definitions — driven the way users
//! drive them, with `kubectl apply` and `kubectl wait`.
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant};
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::Faults;

const TOKEN: &str = "wf-token-7c1d";

/// An Adapter for the simulator: a `contact` resource type and the actions
/// `open-account` / `close-account`.
fn adapter(name: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
        "spec": {"rest": {
            "resourceTypes": [{
                "name": "contact",
                "read": {"method": "GET", "path": "/v1/contacts/\\(.id)"},
                "create": {"method": "POST", "path": "/v1/contacts", "body": ".properties + {externalName: .name}"},
                "delete": {"method": "DELETE", "path": "/v1/contacts/\\(.id)"},
                "find": {"method": "GET", "path": "/v1/contacts", "query": {"externalName": "\\(.name)"}, "select": ".items[0]"}
            }],
            "actions": [
                {"name": "open-account", "method": "POST", "path": "/v1/accounts",
                 "body": "{owner: .input.email}", "outputs": {"accountId": ".body.id"}},
                {"name": "close-account", "method": "DELETE", "path": "/v1/accounts/\\(.input.accountId)"}
            ]
        }}
    })
}

/// A tenant with the adapter and a token Secret; its TargetSystems take up
/// to 64 calls at once.
fn tenant<'a>(cp: &'a ControlPlane, prefix: &str) -> Tenant<'a> {
    Tenant::new(cp, prefix)
        .adapter("wf", adapter)
        .bearer_token("token", TOKEN)
        .spec(json!({"maxConcurrency": 64}))
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

fn phase(cp: &ControlPlane, ns: &str, run: &str) -> String {
    cp.jsonpath(ns, &format!("twr/{run}"), "{.status.phase}")
}

fn reasons(cp: &ControlPlane, ns: &str, name: &str) -> Vec<String> {
    cp.jsonpath(ns, "events", "{range .items[*]}{.involvedObject.name}:{.reason} {end}")
        .split_whitespace()
        .filter_map(|e| e.strip_prefix(&format!("{name}:")).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_across_three_systems_succeeds() {
    let cp = ControlPlane::shared();
    let (crm, billing, provisioning) = (
        Simulator::accepting(TOKEN).start(),
        Simulator::accepting(TOKEN).start(),
        Simulator::accepting(TOKEN).start(),
    );
    let (ns, controller) = tenant(cp, "wf-three")
        .target_system("crm", &crm)
        .target_system("billing", &billing)
        .target_system("provisioning", &provisioning)
        .start();
    let spec = json!({
        "parameters": [{"name": "email", "required": true}, {"name": "name", "required": true}],
        "steps": [
            {"name": "contact", "resource": {"targetRef": {"name": "crm"}, "type": "contact",
             "properties": "{email: $params.email, name: $params.name}", "readyTimeout": "1m"}},
            {"name": "account", "dependsOn": ["contact"], "call": {"targetRef": {"name": "billing"},
             "action": "open-account", "input": "{email: $params.email}"},
             "compensate": {"targetRef": {"name": "billing"}, "action": "close-account",
                            "input": "{accountId: $steps.account.outputs.accountId}"}},
            {"name": "provision", "dependsOn": ["account"], "call": {"targetRef": {"name": "provisioning"},
             "request": {"method": "POST", "path": "/v1/jobs",
                         "body": "{account: $steps.account.outputs.accountId, state: \"running\", readsUntilDone: 3}"},
             "outputs": {"jobId": ".body.id"},
             "pollUntil": {"request": {"method": "GET", "path": "/v1/jobs/\\(.jobId)"},
                           "condition": ".body.state == \"done\"", "interval": "200ms", "timeout": "1m"}}}
        ],
        "outputs": {"accountId": "$steps.account.outputs.accountId", "contactId": "$steps.contact.outputs.externalId"}
    });
    cp.apply_json(&ns, &workflow("onboarding", spec));
    cp.wait_for(&ns, "twf/onboarding", "condition=Ready", "30s", Some(&controller));
    cp.apply_json(
        &ns,
        &run(
            "grace",
            "onboarding",
            json!({"email": "grace@example.com", "name": "Grace"}),
        ),
    );
    cp.wait_for(&ns, "twr/grace", "condition=Succeeded", "90s", Some(&controller));

    let contacts = crm.objects("contacts");
    assert_eq!(contacts.len(), 1, "one record in the CRM");
    assert_eq!(contacts[0]["email"], "grace@example.com");
    let accounts = billing.objects("accounts");
    assert_eq!(accounts.len(), 1, "one account in billing");
    let jobs = provisioning.objects("jobs");
    assert_eq!(jobs.len(), 1, "one provisioning job");
    assert_eq!(jobs[0]["state"], "done");
    assert_eq!(jobs[0]["account"], accounts[0]["id"], "outputs flow between steps");
    assert!(
        provisioning.stats().count("read", "jobs") >= 3,
        "the job was polled until done"
    );
    assert_eq!(
        cp.jsonpath(&ns, "twr/grace", "{.status.outputs.accountId}"),
        accounts[0]["id"].as_str().unwrap_or_default()
    );
    assert_eq!(
        cp.jsonpath(&ns, "twr/grace", "{.status.outputs.contactId}"),
        contacts[0]["id"].as_str().unwrap_or_default()
    );
    assert_eq!(cp.jsonpath(&ns, "twr/grace", "{.status.progress}"), "3/3");
    // The owned ExternalResource of the resource step.
    assert_eq!(
        cp.jsonpath(&ns, "xr/grace-contact", "{.metadata.ownerReferences[0].name}"),
        "grace"
    );
    let columns = assert_ok(&cp.kubectl(&["get", "twr", "grace", "-n", &ns]));
    assert!(columns.contains("Succeeded") && columns.contains("3/3"), "{columns}");
    let events = reasons(cp, &ns, "grace");
    for reason in ["StepStarted", "StepSucceeded", "RunSucceeded"] {
        assert!(events.iter().any(|e| e == reason), "{reason} in {events:?}");
    }
    // `tether runs describe` draws the DAG with each step's state.
    let describe = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["runs", "describe", "grace", "-n", &ns])
        .env("KUBECONFIG", cp.kubeconfig("admin"))
        .output()
        .expect("tether runs describe");
    let text = assert_ok(&describe);
    assert!(text.contains("✔ contact"), "{text}");
    assert!(text.contains("  └─ ✔ account"), "{text}");
    assert!(text.contains("    └─ ✔ provision"), "{text}");
    assert!(text.contains("Phase: Succeeded"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_three_of_four_fails_and_two_then_one_are_compensated_once_each() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-saga").target_system("sim", &target).start();
    let undo = |step: &str| {
        json!({"targetRef": {"name": "sim"}, "request": {"method": "POST", "path": "/v1/undo",
               "body": format!("{{step: \"{step}\", id: $steps.{step}.outputs.id}}")}})
    };
    let mut one = post("one", "sim", "one", "{n: 1}");
    one["compensate"] = undo("one");
    let mut two = post("two", "sim", "two", "{n: 2}");
    two["dependsOn"] = json!(["one"]);
    two["compensate"] = undo("two");
    // The target refuses step three for good (404: no such object).
    let three = json!({"name": "three", "dependsOn": ["two"], "call": {"targetRef": {"name": "sim"},
                       "request": {"method": "PUT", "path": "/v1/three/missing", "body": "{n: 3}"}},
                       "compensate": undo("three")});
    let mut four = post("four", "sim", "four", "{n: 4}");
    four["dependsOn"] = json!(["three"]);
    four["compensate"] = undo("four");
    cp.apply_json(&ns, &workflow("saga", json!({"steps": [one, two, three, four]})));
    cp.apply_json(&ns, &run("saga-1", "saga", json!({})));
    cp.wait_for(
        &ns,
        "twr/saga-1",
        "jsonpath={.status.phase}=Compensated",
        "60s",
        Some(&controller),
    );

    let undone: Vec<String> = target
        .objects("undo")
        .iter()
        .map(|o| o["step"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        undone,
        ["two", "one"],
        "reverse dependency order, one compensating call each"
    );
    assert_eq!(
        target.stats().count("create", "undo"),
        2,
        "exactly one compensating call per step"
    );
    assert_eq!(target.objects("four").len(), 0, "step four never ran");
    let reason = cp.jsonpath(
        &ns,
        "twr/saga-1",
        "{.status.conditions[?(@.type==\"Succeeded\")].message}",
    );
    assert!(
        reason.contains("step three failed") && reason.contains("404"),
        "{reason}"
    );
    let events = reasons(cp, &ns, "saga-1");
    assert!(events.iter().any(|e| e == "StepFailed"), "{events:?}");
    assert!(events.iter().any(|e| e == "Compensated"), "{events:?}");
    let metrics = controller.metrics().await;
    for line in [
        "tether_workflow_compensations_total{outcome=\"compensated\"} 2",
        "tether_workflow_runs_total{phase=\"Compensated\"} 1",
        "tether_workflow_step_duration_seconds_count{outcome=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_keeps_its_parallelism_fans_in_and_a_thousand_items_fit_in_status() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    target.state.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let (ns, controller) = tenant(cp, "wf-fan").target_system("sim", &target).start();
    let mut each = post("each", "sim", "items", "{n: $item}");
    each["forEach"] = json!("[range($params.count)]");
    each["parallelism"] = json!(10);
    let mut after = post("after", "sim", "after", "{total: $steps.each.outputs.count}");
    after["dependsOn"] = json!(["each"]);
    let spec = json!({"parameters": [{"name": "count", "type": "number"}, {"name": "width", "type": "number"}],
                      "steps": [each, after]});
    cp.apply_json(&ns, &workflow("fan", spec));
    cp.apply_json(&ns, &run("hundred", "fan", json!({"count": 100})));
    cp.wait_for(&ns, "twr/hundred", "condition=Succeeded", "120s", Some(&controller));
    let stats = target.stats();
    assert_eq!(stats.count("create", "items"), 100);
    assert!(
        stats.peak_in_flight <= 10,
        "never more than 10 calls in flight, saw {}",
        stats.peak_in_flight
    );
    assert!(
        stats.peak_in_flight >= 5,
        "items ran in parallel, peak {}",
        stats.peak_in_flight
    );
    let after = target.objects("after");
    assert_eq!(after.len(), 1, "the dependent ran once");
    assert_eq!(after[0]["total"], 100, "after every item (fan-in)");
    assert_eq!(
        cp.jsonpath(&ns, "twr/hundred", "{.status.steps[0].items.succeeded}"),
        "100"
    );

    // 1,000 items: the status keeps counts, not one entry per item.
    target.state.set_faults(Faults::default());
    let mut wide = post("each", "sim", "wide", "{n: $item}");
    wide["forEach"] = json!("[range($params.count)]");
    wide["parallelism"] = json!(100);
    cp.apply_json(
        &ns,
        &workflow(
            "wide",
            json!({"parameters": [{"name": "count", "type": "number"}], "steps": [wide]}),
        ),
    );
    cp.apply_json(&ns, &run("thousand", "wide", json!({"count": 1000})));
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while phase(cp, &ns, "thousand") != "Succeeded" {
        let json = cp.jsonpath(&ns, "twr/thousand", "{.status}");
        largest = largest.max(json.len());
        assert!(
            Instant::now() < deadline,
            "the 1,000-item run did not finish: {}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let json = cp.jsonpath(&ns, "twr/thousand", "{.status}");
    largest = largest.max(json.len());
    assert_eq!(target.objects("wide").len(), 1000);
    assert!(largest < 256 * 1024, "status peaked at {largest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_gates_the_run_and_only_approvers_decide() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-approval").target_system("sim", &target).start();
    support::bind_approver(cp, &ns, "bob");
    let mut book = post("book", "sim", "bookings", "{what: \"room\"}");
    book["compensate"] = json!({"targetRef": {"name": "sim"},
        "request": {"method": "DELETE", "path": "/v1/bookings/\\($steps.book.outputs.id)"}});
    let gate = json!({"name": "gate", "dependsOn": ["book"], "approval": {"message": "Confirm the booking?"}});
    let mut confirm = post("confirm", "sim", "confirmations", "{booking: $steps.book.outputs.id}");
    confirm["dependsOn"] = json!(["gate"]);
    cp.apply_json(&ns, &workflow("booking", json!({"steps": [book, gate, confirm]})));
    for name in ["yes", "no"] {
        cp.apply_json(&ns, &run(name, "booking", json!({})));
    }
    for name in ["yes", "no"] {
        cp.wait_for(
            &ns,
            &format!("twr/{name}"),
            "jsonpath={.status.phase}=WaitingForApproval",
            "60s",
            Some(&controller),
        );
    }
    let columns = assert_ok(&cp.kubectl(&["get", "twr", "yes", "-n", &ns]));
    assert!(columns.contains("WaitingForApproval"), "{columns}");
    assert!(reasons(cp, &ns, "yes").iter().any(|r| r == "ApprovalRequested"));
    assert_eq!(target.objects("confirmations").len(), 0, "the run waits");

    let approval = |name: &str, run: &str, decision: &str| {
        json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval", "metadata": {"name": name},
               "spec": {"runRef": {"name": run}, "step": "gate", "decision": decision, "reason": "checked"}})
        .to_string()
    };
    let refused = cp.apply_as("alice", &ns, &approval("by-alice", "yes", "Approve"));
    assert!(!refused.status.success(), "alice is no approver");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));

    assert_ok(&cp.apply_as("bob", &ns, &approval("approve-yes", "yes", "Approve")));
    cp.wait_for(&ns, "twr/yes", "condition=Succeeded", "60s", Some(&controller));
    assert_eq!(target.objects("confirmations").len(), 1);
    assert_eq!(
        cp.jsonpath(&ns, "twr/yes", "{.status.steps[1].outputs.decidedBy}"),
        "bob"
    );
    assert_eq!(
        cp.jsonpath(
            &ns,
            "approval/approve-yes",
            "{.status.conditions[?(@.type==\"Applied\")].status}"
        ),
        "True"
    );
    let columns = assert_ok(&cp.kubectl(&["get", "approval", "approve-yes", "-n", &ns]));
    assert!(columns.contains("bob") && columns.contains("Approve"), "{columns}");

    assert_ok(&cp.apply_as("bob", &ns, &approval("reject-no", "no", "Reject")));
    cp.wait_for(
        &ns,
        "twr/no",
        "jsonpath={.status.phase}=Compensated",
        "60s",
        Some(&controller),
    );
    let message = cp.jsonpath(&ns, "twr/no", "{.status.conditions[?(@.type==\"Succeeded\")].message}");
    assert!(message.contains("rejected by bob: checked"), "{message}");
    assert_eq!(
        target.objects("bookings").len(),
        1,
        "the rejected run's booking was undone, the other kept"
    );
    assert_eq!(
        target.objects("confirmations").len(),
        1,
        "no confirmation for the rejected run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_five_sigkills_with_every_side_effect_once() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    // Every call takes 250 ms: the run needs at least 4.5 s of controller
    // time (a, b, then 48 items three at a time), so every kill below lands
    // while it runs.
    target.state.set_faults(Faults {
        latency_ms: 250,
        ..Faults::default()
    });
    let (ns, mut controller) = tenant(cp, "wf-crash").target_system("sim", &target).start();
    let mut steps = vec![post("a", "sim", "a", "{step: \"a\"}")];
    for (name, dep) in [("b", "a"), ("c", "b"), ("d", "c")] {
        let mut step = post(
            name,
            "sim",
            name,
            &format!("{{step: \"{name}\", after: $steps.{dep}.outputs.id}}"),
        );
        step["dependsOn"] = json!([dep]);
        steps.push(step);
    }
    let mut each = post("each", "sim", "items", "{n: $item}");
    each["forEach"] = json!("[range(48)]");
    each["parallelism"] = json!(3);
    each["dependsOn"] = json!(["b"]);
    steps.push(each);
    cp.apply_json(&ns, &workflow("crashy", json!({"steps": steps})));
    cp.apply_json(&ns, &run("crashy-1", "crashy", json!({})));

    // Kill the controller five times, at random points of the run (at most
    // 4.5 s in all, less than the run needs).
    let delays: Vec<u64> = (0..5).map(|_| rand::random_range(300..900)).collect();
    eprintln!("killing the controller after {delays:?} ms");
    for delay_ms in delays {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        assert_ne!(
            phase(cp, &ns, "crashy-1"),
            "Succeeded",
            "each kill lands while the run runs"
        );
        controller.kill();
        controller.restart(cp);
    }
    cp.wait_for(&ns, "twr/crashy-1", "condition=Succeeded", "120s", Some(&controller));
    for collection in ["a", "b", "c", "d"] {
        assert_eq!(target.objects(collection).len(), 1, "one {collection} object");
    }
    let items = target.objects("items");
    assert_eq!(items.len(), 48, "every item once");
    let mut seen: Vec<i64> = items.iter().filter_map(|o| o["n"].as_i64()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..48).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finishes_on_the_definition_it_pinned_when_the_workflow_is_edited() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-pin").target_system("sim", &target).start();
    let version = |marker: &str| {
        let gate = json!({"name": "gate", "approval": {}});
        let mut mark = post("mark", "sim", marker, "{}");
        mark["dependsOn"] = json!(["gate"]);
        workflow("versioned", json!({"steps": [gate, mark]}))
    };
    cp.apply_json(&ns, &version("first"));
    cp.apply_json(&ns, &run("old", "versioned", json!({})));
    cp.wait_for(
        &ns,
        "twr/old",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(&controller),
    );
    cp.apply_json(&ns, &version("second"));
    cp.apply_json(&ns, &run("new", "versioned", json!({})));
    cp.wait_for(
        &ns,
        "twr/new",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(&controller),
    );
    for name in ["old", "new"] {
        let approval = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval",
            "metadata": {"name": format!("go-{name}")},
            "spec": {"runRef": {"name": name}, "step": "gate", "decision": "Approve"}});
        cp.apply_json(&ns, &approval);
    }
    cp.wait_for(&ns, "twr/old", "condition=Succeeded", "60s", Some(&controller));
    cp.wait_for(&ns, "twr/new", "condition=Succeeded", "60s", Some(&controller));
    assert_eq!(target.objects("first").len(), 1, "the old run kept its version");
    assert_eq!(target.objects("second").len(), 1, "the new run took the new one");
    assert_eq!(cp.jsonpath(&ns, "twr/old", "{.status.pinned.generation}"), "1");
    assert_eq!(cp.jsonpath(&ns, "twr/new", "{.status.pinned.generation}"), "2");
    assert_ne!(
        cp.jsonpath(&ns, "twr/old", "{.status.pinned.hash}"),
        cp.jsonpath(&ns, "twr/new", "{.status.pinned.hash}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_starts_a_run_and_a_bad_signature_is_refused_and_counted() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-hook").target_system("sim", &target).start();
    let key = "hook-key-91f2";
    cp.apply_json(
        &ns,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"}, "stringData": {"key": key}}),
    );
    let spec = json!({
        "parameters": [{"name": "email", "required": true}],
        "steps": [post("greet", "sim", "greetings", "{to: $params.email}")],
        "triggers": {"webhook": {"secretRef": {"name": "hook", "key": "key"}, "parameters": "{email: .customer.email}"}}
    });
    cp.apply_json(&ns, &workflow("greeter", spec));
    cp.wait_for(&ns, "twf/greeter", "condition=Ready", "30s", Some(&controller));
    let path = cp.jsonpath(&ns, "twf/greeter", "{.status.webhookPath}");
    assert_eq!(path, format!("/webhooks/{ns}/greeter"));
    let url = format!("http://127.0.0.1:{}{path}", controller.webhook_port);
    let body = json!({"customer": {"email": "lin@example.com"}}).to_string();
    let client = reqwest::Client::new();
    let send = |key: &[u8], delivery: &'static str| {
        let timestamp = chrono::Utc::now().timestamp();
        client
            .post(&url)
            .header("X-Tether-Timestamp", timestamp.to_string())
            .header(
                "X-Tether-Signature",
                tether::webhook::sign(key, timestamp, delivery, body.as_bytes()),
            )
            .header("X-Tether-Delivery", delivery)
            .body(body.clone())
            .send()
    };
    let forged = send(b"wrong-key", "d-1").await.expect("webhook answers");
    assert_eq!(forged.status(), 401);
    let accepted = send(key.as_bytes(), "d-2").await.expect("webhook answers");
    assert_eq!(accepted.status(), 202);
    let answer: Value = accepted.json().await.unwrap_or_default();
    let run_name = answer["run"].as_str().unwrap_or_default().to_owned();
    // The sender retries the same delivery: the same run.
    let again: Value = send(key.as_bytes(), "d-2")
        .await
        .expect("webhook answers")
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(again["run"], answer["run"]);
    cp.wait_for(
        &ns,
        &format!("twr/{run_name}"),
        "condition=Succeeded",
        "60s",
        Some(&controller),
    );
    let greetings = target.objects("greetings");
    assert_eq!(greetings.len(), 1, "one run, one greeting");
    assert_eq!(
        greetings[0]["to"], "lin@example.com",
        "the payload became the parameters"
    );
    assert_eq!(
        cp.jsonpath(&ns, "twr", "{range .items[*]}{.metadata.name} {end}")
            .split_whitespace()
            .count(),
        1,
        "the forged request started nothing"
    );
    let metrics = controller.metrics().await;
    assert!(
        metrics.contains("tether_webhook_requests_total{outcome=\"bad_signature\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_fires_and_respects_its_concurrency_policy() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-cron").target_system("sim", &target).start();
    // Every 2 seconds; a run takes 5: Forbid skips, Replace cancels.
    let scheduled = |name: &str, policy: &str| {
        let mut tick = post("tick", "sim", name, "{}");
        tick["dependsOn"] = json!(["slow"]);
        workflow(
            name,
            json!({
                "steps": [{"name": "slow", "wait": {"duration": "5s"}}, tick],
                "triggers": {"schedules": [{"name": "often", "cron": "*/2 * * * * *", "concurrencyPolicy": policy,
                                            "successfulRunsHistoryLimit": 5, "failedRunsHistoryLimit": 5}]}
            }),
        )
    };
    cp.apply_json(&ns, &scheduled("forbid", "Forbid"));
    cp.apply_json(&ns, &scheduled("replace", "Replace"));
    let runs_of = |workflow: &str| -> Vec<(String, String)> {
        let out = cp.kubectl(&[
            "get",
            "twr",
            "-n",
            &ns,
            "-l",
            &format!("tether.dev/workflow={workflow}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.spec.cancel}{\"\\n\"}{end}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split('=');
                Some((parts.next()?.to_owned(), format!("{}/{}", parts.next()?, parts.next()?)))
            })
            .collect()
    };
    let finished = |phase: &str| ["Succeeded/false", "Compensated/true", "Cancelled/true"].contains(&phase);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let forbid = runs_of("forbid");
        let active = forbid.iter().filter(|(_, p)| !finished(p)).count();
        assert!(active <= 1, "Forbid never runs two at once: {forbid:?}");
        let skipped: i64 = cp
            .jsonpath(&ns, "twf/forbid", "{.status.schedules[0].skipped}")
            .parse()
            .unwrap_or(0);
        let done = forbid.iter().any(|(_, p)| p == "Succeeded/false");
        let replaced = runs_of("replace").iter().any(|(_, p)| p.ends_with("/true"));
        if done && skipped >= 1 && replaced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forbid {forbid:?} skipped {skipped}, replace {:?}\n{}",
            runs_of("replace"),
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reasons(cp, &ns, "forbid").iter().any(|r| r == "ScheduleSkipped"));
    assert!(reasons(cp, &ns, "replace").iter().any(|r| r == "RunReplaced"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_keeps_only_its_history_limit_of_finished_runs() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-history").target_system("sim", &target).start();
    let pruned = |cron: &str| {
        workflow(
            "pruned",
            json!({
                "steps": [post("tick", "sim", "ticks", "{}")],
                "triggers": {"schedules": [{"name": "often", "cron": cron, "successfulRunsHistoryLimit": 1}]}
            }),
        )
    };
    cp.apply_json(&ns, &pruned("* * * * * *"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while target.objects("ticks").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the schedule did not fire 4 times: {}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop firing (a time that will not come soon); the history settles.
    cp.apply_json(&ns, &pruned("0 0 1 1 *"));
    let succeeded = || {
        cp.jsonpath(&ns, "twr", "{range .items[*]}{.status.phase} {end}")
            .split_whitespace()
            .filter(|p| *p == "Succeeded")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while succeeded() != 1 {
        assert!(
            Instant::now() < deadline,
            "{} succeeded runs kept, limit 1",
            succeeded()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_workflows_are_named_in_a_condition_with_the_step_and_the_value() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-bad").target_system("sim", &target).start();
    // An unknown step reference, a cycle and a bad expression: accepted,
    // then named in Ready=False — the unknown reference with the step and
    // the value (day two: the API server's message named neither).
    let unknown = workflow(
        "unknown",
        json!({"steps": [{"name": "a", "dependsOn": ["ghost"], "wait": {"duration": "1s"}}]}),
    );
    cp.apply_json(&ns, &unknown);
    let cycle = workflow(
        "cycle",
        json!({"steps": [
            {"name": "a", "dependsOn": ["b"], "wait": {"duration": "1s"}},
            {"name": "b", "dependsOn": ["a"], "wait": {"duration": "1s"}}
        ]}),
    );
    let mut broken = post("send", "sim", "x", "{to: $params.email");
    broken["when"] = json!("$params.enabled ==");
    let expression = workflow("expression", json!({"steps": [broken]}));
    cp.apply_json(&ns, &cycle);
    cp.apply_json(&ns, &expression);
    cp.wait_for(&ns, "twf/cycle", "condition=Ready=false", "30s", Some(&controller));
    cp.wait_for(&ns, "twf/expression", "condition=Ready=false", "30s", Some(&controller));
    cp.wait_for(&ns, "twf/unknown", "condition=Ready=false", "30s", Some(&controller));
    let message = |name: &str| {
        cp.jsonpath(
            &ns,
            &format!("twf/{name}"),
            "{.status.conditions[?(@.type==\"Ready\")].message}",
        )
    };
    assert!(
        message("cycle").contains("the steps form a cycle: "),
        "{}",
        message("cycle")
    );
    assert!(
        message("unknown").contains("step \"a\" depends on \"ghost\""),
        "{}",
        message("unknown")
    );
    let text = message("expression");
    assert!(text.contains("spec.steps[send].when"), "{text}");
    assert!(text.contains("spec.steps[send].call.request.body"), "{text}");

    // A run of a broken workflow fails at once, saying why.
    cp.apply_json(&ns, &run("doomed", "cycle", json!({})));
    cp.wait_for(
        &ns,
        "twr/doomed",
        "jsonpath={.status.phase}=Failed",
        "30s",
        Some(&controller),
    );
    let reason = cp.jsonpath(
        &ns,
        "twr/doomed",
        "{.status.conditions[?(@.type==\"Succeeded\")].reason}",
    );
    assert_eq!(reason, "InvalidWorkflow");
    // Wrong parameters too.
    let fine = workflow(
        "fine",
        json!({"parameters": [{"name": "email", "required": true}], "steps": [{"name": "a", "wait": {"duration": "1s"}}]}),
    );
    cp.apply_json(&ns, &fine);
    cp.apply_json(&ns, &run("no-params", "fine", json!({"colour": "red"})));
    cp.wait_for(
        &ns,
        "twr/no-params",
        "jsonpath={.status.phase}=Failed",
        "30s",
        Some(&controller),
    );
    let message = cp.jsonpath(
        &ns,
        "twr/no-params",
        "{.status.conditions[?(@.type==\"Succeeded\")].message}",
    );
    assert!(
        message.contains("\"email\" is required") && message.contains("\"colour\" is not a parameter"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_run_compensates_before_it_goes() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-delete").target_system("sim", &target).start();
    let mut hold = post("hold", "sim", "holds", "{}");
    hold["compensate"] = json!({"targetRef": {"name": "sim"},
        "request": {"method": "DELETE", "path": "/v1/holds/\\($steps.hold.outputs.id)"}});
    let gate = json!({"name": "gate", "dependsOn": ["hold"], "approval": {}});
    cp.apply_json(&ns, &workflow("held", json!({"steps": [hold, gate]})));
    cp.apply_json(&ns, &run("doomed", "held", json!({})));
    cp.wait_for(
        &ns,
        "twr/doomed",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(&controller),
    );
    assert_eq!(target.objects("holds").len(), 1);
    assert_ok(&cp.kubectl(&["delete", "twr", "doomed", "-n", &ns, "--wait=true", "--timeout=60s"]));
    assert_eq!(
        target.objects("holds").len(),
        0,
        "the finalizer let go after compensation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_approval_takes_its_default_decision_after_the_timeout() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-timeout").target_system("sim", &target).start();
    let gate = |decision: &str| json!({"name": "gate", "approval": {"message": "Ship?", "timeout": "2s", "defaultDecision": decision}});
    for (name, decision) in [("lenient", "Approve"), ("strict", "Reject")] {
        let mut ship = post("ship", "sim", name, "{}");
        ship["dependsOn"] = json!(["gate"]);
        cp.apply_json(&ns, &workflow(name, json!({"steps": [gate(decision), ship]})));
        cp.apply_json(&ns, &run(name, name, json!({})));
    }
    cp.wait_for(&ns, "twr/lenient", "condition=Succeeded", "60s", Some(&controller));
    assert_eq!(
        cp.jsonpath(&ns, "twr/lenient", "{.status.steps[0].outputs.decidedBy}"),
        "timeout"
    );
    assert_eq!(target.objects("lenient").len(), 1);
    cp.wait_for(
        &ns,
        "twr/strict",
        "jsonpath={.status.phase}=Compensated",
        "60s",
        Some(&controller),
    );
    let message = cp.jsonpath(
        &ns,
        "twr/strict",
        "{.status.conditions[?(@.type==\"Succeeded\")].message}",
    );
    assert!(message.contains("no decision before the approval timeout"), "{message}");
    assert_eq!(target.objects("strict").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_completes_its_step_once_and_forged_or_repeated_calls_are_refused() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "wf-callback").target_system("sim", &target).start();
    cp.apply_json(
        &ns,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cb"}, "stringData": {"key": "cb-key-5e1"}}),
    );
    // The target receives the callback URL with the job, and calls it when done.
    let export = json!({"name": "export", "call": {"targetRef": {"name": "sim"},
        "request": {"method": "POST", "path": "/v1/exports", "body": "{notify: $callback.url}"},
        "outputs": {"id": ".body.id"},
        "callback": {"secretRef": {"name": "cb", "key": "key"}, "timeout": "5m", "successWhen": ".status == \"done\""}}});
    let mut after = post("after", "sim", "after", "{file: $steps.export.outputs.callback.file}");
    after["dependsOn"] = json!(["export"]);
    cp.apply_json(&ns, &workflow("exporter", json!({"steps": [export, after]})));
    cp.apply_json(&ns, &run("export-1", "exporter", json!({})));
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        if let Some(url) = target
            .objects("exports")
            .first()
            .and_then(|o| o["notify"].as_str().map(str::to_owned))
        {
            break url;
        }
        assert!(Instant::now() < deadline, "no export request: {}", controller.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        url.starts_with(&format!(
            "http://127.0.0.1:{}/callbacks/{ns}/export-1/export/1?token=",
            controller.webhook_port
        )),
        "{url}"
    );
    cp.wait_for(
        &ns,
        "twr/export-1",
        "jsonpath={.status.steps[0].phase}=Waiting",
        "30s",
        Some(&controller),
    );
    let client = reqwest::Client::new();
    let forged = url.replace("token=", "token=00");
    let refused = client
        .post(&forged)
        .json(&json!({"status": "done"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(refused.status(), 401, "a wrong token is refused");
    let accepted = client
        .post(&url)
        .json(&json!({"status": "done", "file": "s3://exports/1.csv"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(accepted.status(), 202);
    let again = client
        .post(&url)
        .json(&json!({"status": "done"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(again.status(), 409, "the token works once");
    cp.wait_for(&ns, "twr/export-1", "condition=Succeeded", "60s", Some(&controller));
    let after = target.objects("after");
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0]["file"], "s3://exports/1.csv",
        "the callback's body became the step's outputs"
    );
    let metrics = controller.metrics().await;
    assert!(
        metrics.contains("tether_webhook_requests_total{outcome=\"bad_token\"} 1"),
        "{metrics}"
    );
}
