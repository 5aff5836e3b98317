//! Threats from tenants with namespace rights, on the real control plane
//! (with the chart's admission policies) and a real `tether run`: Secrets
//! reached through Tether without the right to read them, credentials
//! echoed back into status, expressions that stop, read or pin the
//! controller, and outputs too large for a status.
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant};
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::SimHandle;

const TOKEN: &str = "tenancy-token-5e1a9f";

fn adapter(name: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
        "spec": {"rest": {"resourceTypes": [{
            "name": "contact",
            "read": {"method": "GET", "path": "/v1/contacts/\\(.id)"},
            "create": {"method": "POST", "path": "/v1/contacts", "body": ".properties"}
        }]}}
    })
}

fn target_system(name: &str, adapter: &str, base_url: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": name},
        "spec": {"adapterRef": {"name": adapter}, "baseUrl": base_url,
                 "auth": {"bearer": {"tokenSecretRef": {"name": secret, "key": "token"}}}}
    })
}

fn workflow(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name}, "spec": spec})
}

fn run(name: &str, workflow: &str) -> Value {
    json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": name},
           "spec": {"workflowRef": {"name": workflow}}})
}

/// A tenant with the adapter, the token Secret and a TargetSystem `sim`.
fn tenant<'a>(cp: &'a ControlPlane, prefix: &str, target: &SimHandle) -> Tenant<'a> {
    Tenant::new(cp, prefix)
        .adapter("tenancy", adapter)
        .bearer_token("token", TOKEN)
        .target_system("sim", target)
}

/// Lets `user` create and edit Tether's namespaced kinds in `ns`, and,
/// with `secrets`, read Secrets.
fn grant(cp: &ControlPlane, ns: &str, user: &str, secrets: bool) {
    let role = format!("tether-author-{user}");
    assert_ok(&cp.kubectl(&[
        "create",
        "role",
        &role,
        "-n",
        ns,
        "--verb=get,list,watch,create,update,patch",
        "--resource=targetsystems.tether.dev,workflows.tether.dev,workflowruns.tether.dev,externalresources.tether.dev",
    ]));
    assert_ok(&cp.kubectl(&[
        "create",
        "rolebinding",
        &role,
        "-n",
        ns,
        &format!("--role={role}"),
        &format!("--user={user}"),
    ]));
    if secrets {
        let reader = format!("secret-reader-{user}");
        assert_ok(&cp.kubectl(&["create", "role", &reader, "-n", ns, "--verb=get", "--resource=secrets"]));
        assert_ok(&cp.kubectl(&[
            "create",
            "rolebinding",
            &reader,
            "-n",
            ns,
            &format!("--role={reader}"),
            &format!("--user={user}"),
        ]));
    }
}

/// `kubectl apply` as `who`, returning stderr when refused. Waits (up to
/// 30 s) for a fresh namespace's RBAC and the admission policies to be in
/// force: an apply refused for another reason than `expect` is retried.
fn refused(cp: &ControlPlane, who: &str, ns: &str, manifest: &Value, expect: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp.kubectl_as(
            who,
            &["apply", "--dry-run=server", "-n", ns, "-f", "-"],
            Some(&manifest.to_string()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && stderr.contains(expect) {
            return stderr;
        }
        assert!(
            Instant::now() < deadline,
            "{who} was not refused with {expect:?}: ok={} {stderr}",
            out.status.success()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_a_tenant_cannot_use_a_secret_through_tether_that_they_cannot_read() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, _controller) = tenant(cp, "tenancy-secrets", &target).start();
    let adapter_name = format!("tenancy-{ns}");
    grant(cp, &ns, "alice", false);
    grant(cp, &ns, "bob", true);

    // Alice may create TargetSystems but not read Secrets: naming one is refused.
    let steal = target_system("exfil", &adapter_name, "https://attacker.example.com", "token");
    let message = refused(
        cp,
        "alice",
        &ns,
        &steal,
        "may not get every Secret this object names (token)",
    );
    assert!(message.contains("alice"), "{message}");
    // Editing the platform's TargetSystem to point its credential elsewhere
    // is refused the same way.
    let mut redirect = target_system("sim", &adapter_name, "https://attacker.example.com", "token");
    redirect["metadata"]["namespace"] = json!(ns);
    refused(
        cp,
        "alice",
        &ns,
        &redirect,
        "may not get every Secret this object names (token)",
    );
    // Every Secret reference gets the same treatment: a webhook key.
    let hook = workflow(
        "hooked",
        json!({"steps": [{"name": "w", "wait": {"duration": "1s"}}],
               "triggers": {"webhook": {"secretRef": {"name": "token", "key": "token"}}}}),
    );
    refused(
        cp,
        "alice",
        &ns,
        &hook,
        "may not get every Secret this object names (token)",
    );
    // Tether writes answer fields into a Secret with its own rights: only
    // under a name derived from the resource's, never one the platform uses.
    let squat = json!({
        "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource", "metadata": {"name": "key"},
        "spec": {"targetRef": {"name": "sim"}, "type": "contact", "properties": {},
                 "writeSecretRef": {"name": "token"}}
    });
    refused(cp, "alice", &ns, &squat, "must start with the ExternalResource name");
    // Bob may read the Secret, so Bob may name it.
    assert_ok(&cp.apply_as("bob", &ns, &steal.to_string()));
    assert_ok(&cp.apply_as("bob", &ns, &hook.to_string()));
    // Alice may still edit what names no Secret.
    assert_ok(&cp.apply_as(
        "alice",
        &ns,
        &workflow("plain", json!({"steps": [{"name": "w", "wait": {"duration": "1s"}}]})).to_string(),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_a_target_that_echoes_credentials_gets_none_into_status() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "tenancy-echo", &target).start();
    let echo = json!({"name": "echo", "call": {"targetRef": {"name": "sim"},
        "request": {"method": "POST", "path": "/echo", "body": "{hello: 1}"},
        "outputs": {"everything": "."}}});
    cp.apply_json(&ns, &workflow("echo", json!({"steps": [echo]})));
    cp.apply_json(&ns, &run("echo-1", "echo"));
    cp.wait_for(&ns, "twr/echo-1", "condition=Succeeded", "60s", Some(&controller));
    let status = cp.jsonpath(&ns, "twr/echo-1", "{.status}");
    assert!(status.contains("[REDACTED]"), "the echo came back: {status}");
    assert!(!status.contains(TOKEN), "the credential reached status: {status}");
    let events = cp.jsonpath(&ns, "events", "{.items[*].message}");
    assert!(!events.contains(TOKEN));
    assert!(!controller.logs().contains(TOKEN));
    assert!(!controller.metrics().await.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_expressions_that_stop_the_process_or_read_its_environment_are_refused_by_name() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "tenancy-halt", &target).start();
    for (name, expression) in [
        ("halts", "halt"),
        ("halts-error", "\"bye\" | halt_error(1)"),
        ("reads-env", "env"),
        ("reads-dollar-env", "$ENV"),
    ] {
        let step = json!({"name": "s", "when": expression, "wait": {"duration": "1s"}});
        cp.apply_json(&ns, &workflow(name, json!({"steps": [step]})));
        cp.wait_for(
            &ns,
            &format!("twf/{name}"),
            "condition=Ready=false",
            "60s",
            Some(&controller),
        );
        let message = cp.jsonpath(
            &ns,
            &format!("twf/{name}"),
            "{.status.conditions[?(@.type==\"Ready\")].message}",
        );
        assert!(
            message.contains("spec.steps[s].when") || message.contains("when"),
            "{name}: {message}"
        );
        assert!(message.contains("undefined"), "{name}: {message}");
    }
    // The controller is alive and still serving.
    assert!(controller.metrics().await.contains("tether_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_an_expression_that_never_ends_neither_pins_the_controller_nor_blocks_other_runs() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "tenancy-loop", &target)
        .controller_args(&["--expr-timeout", "20s", "--expr-workers", "4"])
        .start();
    let forever = json!({"name": "spin", "call": {"targetRef": {"name": "sim"},
        "input": "last(range(1e12))",
        "request": {"method": "POST", "path": "/v1/spins", "body": "{n: .}"}}});
    let deep = json!({"name": "deep", "call": {"targetRef": {"name": "sim"},
        "request": {"method": "POST", "path": "/v1/deep", "body": "{}"},
        "outputs": {"nest": "reduce range(1000000) as $i (0; [.])"}}});
    let fine = json!({"name": "fine", "call": {"targetRef": {"name": "sim"},
        "request": {"method": "POST", "path": "/v1/fine", "body": "{ok: true}"}}});
    cp.apply_json(&ns, &workflow("spin", json!({"steps": [forever], "onFailure": "Stop"})));
    cp.apply_json(&ns, &workflow("deep", json!({"steps": [deep], "onFailure": "Stop"})));
    cp.apply_json(&ns, &workflow("fine", json!({"steps": [fine]})));
    for i in 0..2 {
        cp.apply_json(&ns, &run(&format!("spin-{i}"), "spin"));
    }
    // While three evaluations spin in the sandbox, the controller answers
    // its probes and other runs complete.
    cp.wait_for(
        &ns,
        "twr/spin-0",
        "jsonpath={.status.phase}=Running",
        "60s",
        Some(&controller),
    );
    let healthz = format!("http://127.0.0.1:{}/healthz", controller.metrics_port);
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .get(&healthz)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        answer.is_ok_and(|a| a.status().is_success()),
        "/healthz did not answer while expressions spun"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    cp.apply_json(&ns, &run("fine-1", "fine"));
    cp.wait_for(&ns, "twr/fine-1", "condition=Succeeded", "15s", Some(&controller));
    for i in 0..2 {
        let phase = cp.jsonpath(&ns, &format!("twr/spin-{i}"), "{.status.phase}");
        assert_eq!(phase, "Running", "the other run finished while spin-{i} still spun");
    }
    for i in 0..2 {
        let name = format!("twr/spin-{i}");
        cp.wait_for(&ns, &name, "jsonpath={.status.phase}=Failed", "90s", Some(&controller));
        let message = cp.jsonpath(&ns, &name, "{.status.steps[0].message}");
        assert!(message.contains("took longer than 20000 ms"), "{message}");
    }
    cp.apply_json(&ns, &run("deep-1", "deep"));
    cp.wait_for(
        &ns,
        "twr/deep-1",
        "jsonpath={.status.phase}=Failed",
        "90s",
        Some(&controller),
    );
    let message = cp.jsonpath(&ns, "twr/deep-1", "{.status.steps[0].message}");
    assert!(
        message.contains("outputs.nest") && message.contains("stopped"),
        "{message}"
    );
    assert_eq!(target.objects("spins").len(), 0, "nothing was sent for a failed input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_outputs_too_large_for_status_fail_the_step_once_and_deleting_the_run_completes() {
    let cp = ControlPlane::shared();
    let target = Simulator::accepting(TOKEN).start();
    let (ns, controller) = tenant(cp, "tenancy-big", &target).start();
    // The target answers with ~900 KB; the step keeps all of it twice over.
    let big = json!({"name": "big", "call": {"targetRef": {"name": "sim"},
        "request": {"method": "POST", "path": "/v1/blobs", "body": "{blob: (\"x\" * 900000)}"},
        "outputs": {"first": ".body", "again": ".body.blob"}},
        "retry": {"limit": 3, "backoff": "1s", "on": ["All"]}});
    let gate = json!({"name": "gate", "dependsOn": ["big"], "approval": {}});
    cp.apply_json(
        &ns,
        &workflow("big", json!({"steps": [big, gate], "onFailure": "Stop"})),
    );
    cp.apply_json(&ns, &run("big-1", "big"));
    cp.wait_for(
        &ns,
        "twr/big-1",
        "jsonpath={.status.phase}=Failed",
        "60s",
        Some(&controller),
    );
    let message = cp.jsonpath(&ns, "twr/big-1", "{.status.steps[0].message}");
    assert!(message.contains("at most"), "a clear message: {message}");
    assert_eq!(
        target.objects("blobs").len(),
        1,
        "the target was called once, not again and again"
    );
    assert_ok(&cp.kubectl(&["delete", "twr", "big-1", "-n", &ns, "--wait=true", "--timeout=30s"]));
}
