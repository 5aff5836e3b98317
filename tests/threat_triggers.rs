//! Triggers and gates under attack, on the real control plane with the real
//! `tether run`: replayed or stale webhooks, floods of bad signatures,
//! oversized bodies, a tenant who forges a callback by patching the run,
//! and Approvals of a deleted run reused by a new run of the same name.
//! Each test names the threat it covers and fails when its guard is gone.
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::SimHandle;

const TOKEN: &str = "trig-token-3b9e";
const HOOK_KEY: &str = "hook-key-0c4d";
const CALLBACK_KEY: &str = "cb-key-77a0";

/// An Adapter with one resource type, `note`.
fn adapter(name: &str) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
           "spec": {"rest": {"resourceTypes": [{"name": "note",
               "read": {"method": "GET", "path": "/v1/notes/\\(.id)"},
               "create": {"method": "POST", "path": "/v1/notes"}}]}}})
}

/// A tenant with the Adapter, a TargetSystem `sim` and the webhook and
/// callback key Secrets.
fn tenant<'a>(cp: &'a ControlPlane, prefix: &str, target: &SimHandle) -> Tenant<'a> {
    Tenant::new(cp, prefix)
        .adapter("trig", adapter)
        .bearer_token("token", TOKEN)
        .secret("hook", "key", HOOK_KEY)
        .secret("cb", "key", CALLBACK_KEY)
        .target_system("sim", target)
}

fn workflow(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name}, "spec": spec})
}

fn run(name: &str, workflow: &str) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": name},
           "spec": {"workflowRef": {"name": workflow}, "parameters": {}}})
}

/// A `call` step that POSTs `body` to `/v1/<collection>` on `sim`.
fn post(name: &str, collection: &str, body: &str) -> Value {
    json!({"name": name, "call": {"targetRef": {"name": "sim"},
           "request": {"method": "POST", "path": format!("/v1/{collection}"), "body": body},
           "outputs": {"id": ".body.id"}}})
}

/// The names of the namespace's runs.
fn runs(cp: &ControlPlane, ns: &str) -> Vec<String> {
    cp.jsonpath(ns, "twr", "{range .items[*]}{.metadata.name} {end}")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The value of one sample of the controller's metrics (0 when absent).
async fn sample(controller: &Controller, series: &str) -> f64 {
    controller
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A Workflow `greeter` whose webhook turns `.customer.email` into a
/// greeting at the simulator; returns the webhook's URL.
fn greeter(cp: &ControlPlane, ns: &str, controller: &Controller) -> String {
    let spec = json!({
        "parameters": [{"name": "email", "required": true}],
        "steps": [post("greet", "greetings", "{to: $params.email}")],
        "triggers": {"webhook": {"secretRef": {"name": "hook", "key": "key"}, "parameters": "{email: .customer.email}"}}
    });
    cp.apply_json(ns, &workflow("greeter", spec));
    cp.wait_for(ns, "twf/greeter", "condition=Ready", "30s", Some(controller));
    let path = cp.jsonpath(ns, "twf/greeter", "{.status.webhookPath}");
    format!("http://127.0.0.1:{}{path}", controller.webhook_port)
}

/// One webhook request, exactly as given.
struct Delivery {
    timestamp: i64,
    id: String,
    signature: String,
    body: String,
}

impl Delivery {
    fn signed(key: &str, timestamp: i64, id: &str, body: &str) -> Self {
        Delivery {
            timestamp,
            id: id.to_owned(),
            signature: tether::webhook::sign(key.as_bytes(), timestamp, id, body.as_bytes()),
            body: body.to_owned(),
        }
    }

    async fn send(&self, url: &str) -> (u16, Value) {
        let answer = reqwest::Client::new()
            .post(url)
            .header("X-Tether-Timestamp", self.timestamp.to_string())
            .header("X-Tether-Delivery", &self.id)
            .header("X-Tether-Signature", &self.signature)
            .body(self.body.clone())
            .send()
            .await
            .expect("the webhook answers");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

const BODY: &str = r#"{"customer":{"email":"lin@example.com"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_replayed_webhook_with_a_new_delivery_id_starts_no_run() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-hook-replay", &target).start();
    let url = greeter(cp, &ns, &controller);

    let genuine = Delivery::signed(HOOK_KEY, now(), "d-1", BODY);
    let (status, answer) = genuine.send(&url).await;
    assert_eq!(status, 202, "{answer}");
    let run_name = answer["run"].as_str().unwrap_or_default().to_owned();

    // The captured request with new delivery ids: the delivery is signed.
    for id in ["d-2", "d-3", "d-4"] {
        let replay = Delivery {
            id: id.to_owned(),
            ..Delivery::signed(HOOK_KEY, genuine.timestamp, "d-1", BODY)
        };
        let (status, answer) = replay.send(&url).await;
        assert_eq!(status, 401, "a new delivery id breaks the signature: {answer}");
    }
    // The captured request as it was: the run it started, no other.
    let (status, answer) = genuine.send(&url).await;
    assert_eq!(
        (status, answer["run"].as_str()),
        (200, Some(run_name.as_str())),
        "{answer}"
    );

    cp.wait_for(
        &ns,
        &format!("twr/{run_name}"),
        "condition=Succeeded",
        "60s",
        Some(&controller),
    );
    assert_eq!(runs(cp, &ns), [run_name], "one signed delivery, one run");
    assert_eq!(target.objects("greetings").len(), 1);
    assert_eq!(
        sample(&controller, "tether_webhook_requests_total{outcome=\"bad_signature\"}").await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_replayed_webhook_after_its_run_is_deleted_starts_no_run() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-hook-deleted", &target).start();
    let url = greeter(cp, &ns, &controller);

    let genuine = Delivery::signed(HOOK_KEY, now(), "order-77", BODY);
    let (status, answer) = genuine.send(&url).await;
    assert_eq!(status, 202, "{answer}");
    let run_name = answer["run"].as_str().unwrap_or_default().to_owned();
    cp.wait_for(
        &ns,
        &format!("twr/{run_name}"),
        "condition=Succeeded",
        "60s",
        Some(&controller),
    );
    assert_ok(&cp.kubectl(&["delete", "twr", &run_name, "-n", &ns, "--wait=true"]));
    assert!(runs(cp, &ns).is_empty());

    // Inside the tolerance window, the run's name is free again: only the
    // memory of accepted deliveries stands between a replay and a new run.
    let (status, answer) = genuine.send(&url).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replayed"], true, "{answer}");
    assert!(runs(cp, &ns).is_empty(), "the replay started no run");
    assert_eq!(target.objects("greetings").len(), 1);
    assert_eq!(
        sample(&controller, "tether_webhook_requests_total{outcome=\"replayed\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_webhook_signed_outside_the_tolerance_window_is_refused() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-hook-stale", &target).start();
    let url = greeter(cp, &ns, &controller);

    // Correctly signed, but six minutes old, or six minutes ahead.
    for (id, timestamp) in [("old", now() - 360), ("ahead", now() + 360)] {
        let (status, answer) = Delivery::signed(HOOK_KEY, timestamp, id, BODY).send(&url).await;
        assert_eq!(status, 401, "{id}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains("X-Tether-Timestamp"),
            "{answer}"
        );
    }
    // Inside the window: accepted.
    let (status, answer) = Delivery::signed(HOOK_KEY, now() - 60, "fresh", BODY).send(&url).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(runs(cp, &ns).len(), 1, "only the fresh request started a run");
    assert_eq!(
        sample(&controller, "tether_webhook_requests_total{outcome=\"stale\"}").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_a_flood_of_bad_webhook_signatures_costs_no_api_call_each() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-hook-flood", &target).start();
    let url = greeter(cp, &ns, &controller);
    let reads = "tether_key_reads_total{purpose=\"webhook\"}";
    let before = sample(&controller, reads).await;

    for i in 0..60 {
        let forged = Delivery::signed("guessed-key", now(), &format!("flood-{i}"), BODY);
        let (status, _) = forged.send(&url).await;
        assert_eq!(status, 401);
    }
    let refused = sample(&controller, "tether_webhook_requests_total{outcome=\"bad_signature\"}").await;
    assert_eq!(refused, 60.0, "every forged request was processed and refused");
    let read = sample(&controller, reads).await - before;
    assert!(
        read <= 2.0,
        "60 refused requests read the webhook key {read} times; the cache reads it once (and once more for a rotation)"
    );
    // The cached key still lets a genuine request through.
    let (status, answer) = Delivery::signed(HOOK_KEY, now(), "real", BODY).send(&url).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_an_oversized_webhook_body_is_refused_unread() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-hook-size", &target).start();
    let url = greeter(cp, &ns, &controller);

    // 1.5 MiB: below axum's own default limit, above Tether's 1 MiB.
    let padding = "x".repeat(1536 * 1024);
    let body = json!({"customer": {"email": "lin@example.com"}, "padding": padding}).to_string();
    let (status, answer) = Delivery::signed(HOOK_KEY, now(), "big", &body).send(&url).await;
    assert_eq!(status, 413, "{answer}");
    assert!(runs(cp, &ns).is_empty());
    assert_eq!(
        sample(&controller, "tether_webhook_requests_total{outcome=\"too_large\"}").await,
        1.0
    );
}

/// A Workflow `exporter` (an `export` step completed by a callback, then
/// `after`), a run `export-1` of it waiting for the callback, and the
/// callback URL the target received.
async fn waiting_for_a_callback(cp: &ControlPlane, ns: &str, controller: &Controller, target: &SimHandle) -> String {
    let export = json!({"name": "export", "call": {"targetRef": {"name": "sim"},
        "request": {"method": "POST", "path": "/v1/exports", "body": "{notify: $callback.url}"},
        "outputs": {"id": ".body.id"},
        "callback": {"secretRef": {"name": "cb", "key": "key"}, "timeout": "5m", "successWhen": ".status == \"done\""}}});
    let mut after = post("after", "after", "{file: $steps.export.outputs.callback.file}");
    after["dependsOn"] = json!(["export"]);
    cp.apply_json(ns, &workflow("exporter", json!({"steps": [export, after]})));
    cp.apply_json(ns, &run("export-1", "exporter"));
    cp.wait_for(
        ns,
        "twr/export-1",
        "jsonpath={.status.steps[0].phase}=Waiting",
        "60s",
        Some(controller),
    );
    target
        .objects("exports")
        .first()
        .and_then(|o| o["notify"].as_str().map(str::to_owned))
        .expect("the target received the callback URL")
}

/// Waits until `object` has an Event with `reason`.
fn wait_for_event(cp: &ControlPlane, ns: &str, object: &str, reason: &str, controller: &Controller) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let selector = format!("involvedObject.name={object},reason={reason}");
    loop {
        let found = cp.kubectl(&["get", "events", "-n", ns, "--field-selector", &selector, "-o", "name"]);
        if !String::from_utf8_lossy(&found.stdout).trim().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event on {object}: {}",
            controller.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_a_tenant_who_may_patch_runs_cannot_complete_a_callback_without_its_token() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-callback", &target).start();
    // alice may edit WorkflowRuns (annotations included), not read Secrets.
    assert_ok(&cp.kubectl(&[
        "create",
        "role",
        "run-editor",
        "-n",
        &ns,
        "--verb=get,list,watch,patch,update",
        "--resource=workflowruns.tether.dev",
    ]));
    assert_ok(&cp.kubectl(&[
        "create",
        "rolebinding",
        "alice-run-editor",
        "-n",
        &ns,
        "--role=run-editor",
        "--user=alice",
    ]));
    let url = waiting_for_a_callback(cp, &ns, &controller, &target).await;
    let denied = cp.kubectl_as("alice", &["get", "secret", "cb", "-n", &ns], None);
    assert!(!denied.status.success(), "alice cannot read the callback key");

    // alice writes the record the callback endpoint would have written,
    // with a made-up MAC.
    let forged = json!({"attempt": 1, "body": {"status": "done", "file": "s3://attacker/forged.csv"}, "mac": "00ff"});
    assert_ok(&cp.kubectl_as(
        "alice",
        &[
            "annotate",
            "twr",
            "export-1",
            "-n",
            &ns,
            &format!("callback.tether.dev/export={forged}"),
        ],
        None,
    ));
    wait_for_event(cp, &ns, "export-1", "CallbackForged", &controller);
    assert_eq!(
        cp.jsonpath(&ns, "twr/export-1", "{.status.steps[0].phase}"),
        "Waiting",
        "the forged record completed nothing"
    );
    assert!(target.objects("after").is_empty(), "no step ran on the forged body");

    // Wrong tokens: refused, from memory.
    let reads = "tether_key_reads_total{purpose=\"callback\"}";
    let before = sample(&controller, reads).await;
    let client = reqwest::Client::new();
    for _ in 0..30 {
        let refused = client
            .post(url.replace("token=", "token=00"))
            .json(&json!({"status": "done"}))
            .send()
            .await
            .expect("answers");
        assert_eq!(refused.status(), 401);
    }
    let read = sample(&controller, reads).await - before;
    assert!(read <= 2.0, "30 wrong tokens read the callback key {read} times");

    // The real callback still works, once, despite the forged annotation.
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
    assert_eq!(after[0]["file"], "s3://exports/1.csv", "the genuine body counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_an_oversized_callback_body_is_refused_unread() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-callback-size", &target).start();
    let url = waiting_for_a_callback(cp, &ns, &controller, &target).await;
    let big = json!({"status": "done", "padding": "x".repeat(100 * 1024)});
    let refused = reqwest::Client::new()
        .post(&url)
        .json(&big)
        .send()
        .await
        .expect("answers");
    assert_eq!(refused.status(), 413);
    assert_eq!(cp.jsonpath(&ns, "twr/export-1", "{.status.steps[0].phase}"), "Waiting");
    assert_eq!(
        sample(&controller, "tether_webhook_requests_total{outcome=\"too_large\"}").await,
        1.0
    );
}

fn approval(name: &str, run: &str, uid: Option<&str>) -> String {
    let mut run_ref = json!({"name": run});
    if let Some(uid) = uid {
        run_ref["uid"] = json!(uid);
    }
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Approval", "metadata": {"name": name},
           "spec": {"runRef": run_ref, "step": "gate", "decision": "Approve", "reason": "looks good"}})
    .to_string()
}

/// Two Workflows with a `gate` approval step: `ship` (the gate first) and
/// `other` (the gate, then a greeting); `slow` holds an hour first.
fn gated_workflows(cp: &ControlPlane, ns: &str) {
    let gate = json!({"name": "gate", "approval": {}});
    cp.apply_json(ns, &workflow("ship", json!({"steps": [gate.clone()]})));
    let mut greet = post("greet", "greetings", "{}");
    greet["dependsOn"] = json!(["gate"]);
    cp.apply_json(ns, &workflow("other", json!({"steps": [gate.clone(), greet]})));
    let mut late_gate = gate;
    late_gate["dependsOn"] = json!(["hold"]);
    let hold = json!({"name": "hold", "wait": {"duration": "1h"}});
    cp.apply_json(ns, &workflow("slow", json!({"steps": [hold, late_gate]})));
}

fn uid(cp: &ControlPlane, ns: &str, object: &str) -> String {
    cp.jsonpath(ns, object, "{.metadata.uid}")
}

/// Deletes a run and waits until it is gone.
fn delete_run(cp: &ControlPlane, ns: &str, name: &str) {
    assert_ok(&cp.kubectl(&["delete", "twr", name, "-n", ns, "--wait=true", "--timeout=60s"]));
}

/// Waits until the run said on `approval` that it does not count for it.
fn not_for_this_run(cp: &ControlPlane, ns: &str, approval: &str, controller: &Controller) {
    cp.wait_for(
        ns,
        &format!("approval/{approval}"),
        "jsonpath={.status.conditions[?(@.type==\"Applied\")].reason}=NotForThisRun",
        "60s",
        Some(controller),
    );
    let message = cp.jsonpath(
        ns,
        &format!("approval/{approval}"),
        "{.status.conditions[?(@.type==\"Applied\")].message}",
    );
    assert!(message.contains("does not count for run deploy"), "{message}");
}

/// The new run `deploy` of `other` waits at its gate; a fresh Approval
/// (created after it) is the one that opens it.
fn only_a_fresh_approval_opens(cp: &ControlPlane, ns: &str, controller: &Controller, target: &SimHandle) {
    cp.wait_for(
        ns,
        "twr/deploy",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(controller),
    );
    assert_ok(&cp.apply_as("bob", ns, &approval("fresh", "deploy", None)));
    cp.wait_for(ns, "twr/deploy", "condition=Succeeded", "60s", Some(controller));
    assert_eq!(
        cp.jsonpath(ns, "twr/deploy", "{.status.steps[0].outputs.approval}"),
        "fresh",
        "the new run took the fresh Approval, not one made for its namesake"
    );
    assert_eq!(target.objects("greetings").len(), 1);
    assert_eq!(
        cp.jsonpath(ns, "approval/fresh", "{.status.runUid}"),
        uid(cp, ns, "twr/deploy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_an_approval_of_a_deleted_run_does_not_approve_a_new_run_of_the_same_name() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-approval-reuse", &target).start();
    support::bind_approver(cp, &ns, "bob");
    gated_workflows(cp, &ns);

    cp.apply_json(&ns, &run("deploy", "ship"));
    cp.wait_for(
        &ns,
        "twr/deploy",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(&controller),
    );
    let first = uid(cp, &ns, "twr/deploy");
    assert_ok(&cp.apply_as("bob", &ns, &approval("ok-1", "deploy", None)));
    cp.wait_for(&ns, "twr/deploy", "condition=Succeeded", "60s", Some(&controller));
    assert_eq!(cp.jsonpath(&ns, "approval/ok-1", "{.status.runUid}"), first);
    delete_run(cp, &ns, "deploy");

    // Same name, another workflow; an approver also re-sends a decision
    // bound to the old run's UID.
    cp.apply_json(&ns, &run("deploy", "other"));
    cp.wait_for(
        &ns,
        "twr/deploy",
        "jsonpath={.status.phase}=WaitingForApproval",
        "60s",
        Some(&controller),
    );
    assert_ne!(uid(cp, &ns, "twr/deploy"), first);
    assert_ok(&cp.apply_as("bob", &ns, &approval("for-the-old-uid", "deploy", Some(&first))));
    not_for_this_run(cp, &ns, "for-the-old-uid", &controller);
    only_a_fresh_approval_opens(cp, &ns, &controller, &target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_an_approval_made_for_a_deleted_run_before_its_gate_does_not_approve_its_namesake() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "threat-approval-early", &target).start();
    support::bind_approver(cp, &ns, "bob");
    gated_workflows(cp, &ns);

    // The first run holds for an hour before its gate: the Approval made
    // for it is never applied.
    cp.apply_json(&ns, &run("deploy", "slow"));
    cp.wait_for(
        &ns,
        "twr/deploy",
        "jsonpath={.status.steps[0].phase}=Waiting",
        "60s",
        Some(&controller),
    );
    assert_ok(&cp.apply_as("bob", &ns, &approval("early", "deploy", None)));
    let decided = cp.jsonpath(&ns, "approval/early", "{.metadata.creationTimestamp}");
    let decided = chrono::DateTime::parse_from_rfc3339(&decided).expect("a creation timestamp");
    delete_run(cp, &ns, "deploy");
    // creationTimestamp counts whole seconds: the namesake must come in a
    // later second than the Approval to be told apart without a UID.
    while chrono::Utc::now().timestamp() <= decided.timestamp() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cp.apply_json(&ns, &run("deploy", "other"));
    not_for_this_run(cp, &ns, "early", &controller);
    only_a_fresh_approval_opens(cp, &ns, &controller, &target);
    assert_eq!(
        cp.jsonpath(&ns, "approval/early", "{.status.runUid}"),
        "",
        "the early Approval was applied to no run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_for_each_on_a_wait_step_is_refused_instead_of_succeeding_with_no_item_done() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("threat-foreach-wait");
    let each_wait = workflow(
        "pauses",
        json!({"steps": [{"name": "pause", "forEach": "[1, 2, 3]", "wait": {"duration": "1s"}}]}),
    );
    let out = cp.apply_as("admin", &ns, &each_wait.to_string());
    assert!(!out.status.success(), "the API server refuses it");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forEach is for call and resource steps"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
