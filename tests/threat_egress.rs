//! Threats of issue 10 that come through egress and target answers, on the
//! real control plane with the real `tether run` and a hostile simulator:
//! huge and never-ending answers, redirects to another origin, paths that
//! climb out of the base path, and targets pointed at what only the
//! controller's network position can reach (the API server, the cloud
//! metadata address, loopback). Each test names the threat it covers and
//! fails when its guard is removed.
mod support;

use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant, contact};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt};
use tether_sim::{Faults, Hostile, SimHandle};

const TOKEN: &str = "tok-egress-5b2e-secret";
const API_KEY: &str = "key-egress-91ac-secret";

fn hostile(sim: &SimHandle, answer: Hostile) {
    sim.set_faults(Faults {
        hostile: Some(answer),
        ..Faults::default()
    });
}

/// `kubectl wait` for a condition's reason.
fn wait_reason(cp: &ControlPlane, ns: &str, object: &str, condition: &str, reason: &str, controller: &Controller) {
    cp.wait_for(
        ns,
        object,
        &format!("jsonpath={{.status.conditions[?(@.type==\"{condition}\")].reason}}={reason}"),
        "90s",
        Some(controller),
    );
}

fn message(cp: &ControlPlane, ns: &str, object: &str, condition: &str) -> String {
    cp.jsonpath(
        ns,
        object,
        &format!("{{.status.conditions[?(@.type==\"{condition}\")].message}}"),
    )
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("controller is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_answer_a_200_mb_answer_keeps_the_controller_below_256_mib() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    hostile(&sim, Hostile::HugeBody { bytes: 200_000_000 });
    let (ns, controller) = Tenant::new(cp, "huge").target(&sim, TOKEN).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    // Whatever the outcome, once the first call has ended (and been
    // reported), the controller's peak memory is known.
    let reason = settled_reason(cp, &ns, "xr/ada", "Synced").await;
    let pid = controller.pid().expect("controller pid");
    let peak = peak_rss_kib(pid);
    assert!(
        peak < 256 * 1024,
        "controller peak RSS {peak} KiB (Synced reason {reason:?})"
    );
    assert_eq!(reason.as_deref(), Some("ResponseTooLarge"), "{}", controller.logs());
    let text = message(cp, &ns, "xr/ada", "Synced");
    assert!(
        text.contains("4194304") && text.contains("spec.maxResponseBytes"),
        "{text}"
    );
    assert!(sim.stats().hostile_answers >= 1);
}

/// The reason of a condition once it is set to something other than the
/// reason of a call still in progress; `None` if that takes 2 minutes.
async fn settled_reason(cp: &ControlPlane, ns: &str, object: &str, condition: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let reason = cp.jsonpath(
            ns,
            object,
            &format!("{{.status.conditions[?(@.type==\"{condition}\")].reason}}"),
        );
        if !reason.is_empty() && reason != "Creating" {
            return Some(reason);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_answer_a_never_ending_answer_stops_at_the_cap() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    hostile(
        &sim,
        Hostile::EndlessBody {
            interval_ms: 0,
            chunk_bytes: 64 * 1024,
        },
    );
    let (ns, controller) = Tenant::new(cp, "endless")
        .target(&sim, TOKEN)
        .spec(json!({"maxResponseBytes": 1048576}))
        .start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    wait_reason(cp, &ns, "xr/ada", "Synced", "ResponseTooLarge", &controller);
    assert!(message(cp, &ns, "xr/ada", "Synced").contains("1048576"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_answer_a_timeout_beyond_the_maximum_is_refused_at_apply() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("timeout-max");
    for (timeouts, message) in [
        (json!({"request": "1h"}), "timeouts.request may be at most 5m"),
        (json!({"connect": "2m"}), "timeouts.connect may be at most 1m"),
    ] {
        let manifest = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem",
            "metadata": {"name": "forever"},
            "spec": {"adapterRef": {"name": "any"}, "baseUrl": "https://api.example.com", "timeouts": timeouts}});
        let out = cp.apply_as("admin", &ns, &manifest.to_string());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{stderr}");
    }
    let ok = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "bounded"},
        "spec": {"adapterRef": {"name": "any"}, "baseUrl": "https://api.example.com",
                 "timeouts": {"request": "5m", "connect": "1m"}}});
    cp.apply_json(&ns, &ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_egress_a_redirect_to_another_origin_reaches_nothing_there() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    let elsewhere = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    hostile(
        &sim,
        Hostile::Redirect {
            status: 307,
            location: format!("{}/v1/contacts", elsewhere.base_url()),
        },
    );
    let (ns, controller) = Tenant::new(cp, "redirect").target(&sim, TOKEN).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    wait_reason(cp, &ns, "xr/ada", "Synced", "RedirectNotFollowed", &controller);
    assert!(message(cp, &ns, "xr/ada", "Synced").contains("spec.followRedirects"));

    // Opted in, with an API key in a header of the TargetSystem's choosing:
    // still nothing reaches the other origin.
    cp.apply_json(
        &ns,
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key"}, "stringData": {"key": API_KEY}},
            {"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "target"},
             "spec": {"adapterRef": {"name": format!("contacts-{ns}")}, "baseUrl": sim.base_url(),
                      "followRedirects": true,
                      "auth": {"apiKey": {"header": "X-API-Key", "keySecretRef": {"name": "key", "key": "key"}}},
                      "timeouts": {"connect": "2s", "request": "10s"}}}]}),
    );
    cp.wait_for(
        &ns,
        "xr/ada",
        "jsonpath={.status.conditions[?(@.type==\"Synced\")].message}=the target answered HTTP 307 redirecting to \
         http://127.0.0.1:PORT/v1/contacts; Tether follows redirects only to the same origin and below the baseUrl"
            .replace("PORT", &elsewhere.addr.port().to_string())
            .as_str(),
        "90s",
        Some(&controller),
    );
    let seen = elsewhere.stats();
    assert!(
        seen.requests.is_empty() && seen.unauthorized == 0,
        "the other origin was reached: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_egress_a_target_pointed_at_the_api_server_is_refused() {
    let cp = ControlPlane::shared();
    // Loopback is allowed here (the test list): only the always-on refusal
    // of the API server's own socket stands between the tenant and it.
    let (ns, controller) = Tenant::new(cp, "apiserver")
        .target(&cp.server, TOKEN)
        .spec(json!({"tls": {"insecureSkipVerify": true}, "healthCheck": {"path": "/version"}}))
        .start();
    wait_reason(cp, &ns, "tts/target", "Ready", "EgressDenied", &controller);
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    wait_reason(cp, &ns, "xr/ada", "Synced", "EgressDenied", &controller);
    let text = message(cp, &ns, "tts/target", "Ready");
    assert!(
        text.contains("Kubernetes API server") && text.contains("--egress-deny"),
        "{text}"
    );
    for object in ["tts/target", "xr/ada"] {
        let status = cp.jsonpath(&ns, object, "{.status}");
        for leaked in [
            "gitVersion",
            "Unauthorized",
            "Forbidden",
            "kind\":\"Status",
            "apiVersion\":\"v1",
        ] {
            assert!(!status.contains(leaked), "{object} status holds {leaked}: {status}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_egress_a_target_pointed_at_the_metadata_address_is_refused_without_a_connection() {
    let cp = ControlPlane::shared();
    let (ns, controller) = Tenant::new(cp, "metadata")
        .target("http://169.254.169.254", TOKEN)
        .spec(json!({"healthCheck": {"path": "/latest/meta-data/iam/security-credentials/"}}))
        .start();
    wait_reason(cp, &ns, "tts/target", "Ready", "EgressDenied", &controller);
    let text = message(cp, &ns, "tts/target", "Ready");
    assert!(
        text.contains("169.254.169.254:80") && text.contains("169.254.0.0/16"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_egress_a_host_name_that_resolves_to_loopback_is_refused_by_default() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    let (ns, controller) = Tenant::new(cp, "localhost")
        .target(&format!("http://localhost:{}", sim.addr.port()), TOKEN)
        .spec(json!({"healthCheck": {"path": "/v1/contacts"}}))
        .default_egress()
        .start();
    wait_reason(cp, &ns, "tts/target", "Ready", "EgressDenied", &controller);
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    wait_reason(cp, &ns, "xr/ada", "Synced", "EgressDenied", &controller);
    assert!(message(cp, &ns, "xr/ada", "Synced").contains("127.0.0.0/8"));
    assert!(sim.stats().requests.is_empty(), "{:?}", sim.stats());
}

/// A namespace with a TargetSystem `tenant` on `base_url` and a
/// one-step Workflow POSTing to `path`, and a run of it.
fn call_workflow(cp: &ControlPlane, prefix: &str, base_url: &str, path: &str) -> (String, Controller) {
    let (ns, controller) = Tenant::new(cp, prefix)
        .target(base_url, TOKEN)
        .with_object(
            json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "call"},
                "spec": {"steps": [{"name": "post", "call": {"targetRef": {"name": "target"},
                         "request": {"method": "POST", "path": path, "body": "{n: 1}"}}}]}}),
        )
        .start();
    cp.apply_json(
        &ns,
        &json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "run"},
                "spec": {"workflowRef": {"name": "call"}}}),
    );
    (ns, controller)
}

/// The phase of the run's only step once it has ended.
async fn step_ended(cp: &ControlPlane, ns: &str, controller: &Controller) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let phase = cp.jsonpath(ns, "twr/run", "{.status.steps[0].phase}");
        if phase == "Failed" || phase == "Succeeded" {
            return phase;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step did not end (phase {phase:?}):\n{}",
            controller.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_egress_a_path_with_a_tab_cannot_leave_the_base_path() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    // The URL parser drops the tab: `/.\t./tenant-admin` would become
    // `/../tenant-admin`, i.e. /v1/tenant-admin, which starts with /v1/tenant.
    let (ns, controller) = call_workflow(
        cp,
        "tab",
        &format!("{}/v1/tenant", sim.base_url()),
        "/.\t./tenant-admin",
    );
    let phase = step_ended(cp, &ns, &controller).await;
    assert_eq!(
        sim.stats().count("create", "tenant-admin"),
        0,
        "the step reached /v1/tenant-admin"
    );
    assert!(sim.objects("tenant-admin").is_empty());
    assert_eq!(phase, "Failed");
    let status = cp.jsonpath(&ns, "twr/run", "{.status}");
    assert!(status.contains("control character"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_answer_a_long_non_ascii_error_message_fails_the_step_not_the_controller() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    hostile(
        &sim,
        Hostile::LongMessage {
            status: 422,
            text: "é€😀".into(),
            repeat: 500,
        },
    );
    let (ns, controller) = call_workflow(cp, "non-ascii", &sim.base_url(), "/v1/items");
    cp.wait_for(
        &ns,
        "twr/run",
        "jsonpath={.status.steps[0].phase}=Failed",
        "90s",
        Some(&controller),
    );
    let status = cp.jsonpath(&ns, "twr/run", "{.status}");
    assert!(status.contains("HTTP 422: é€😀é€😀"), "{status}");
    let pid = controller.pid().expect("pid");
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.contains("State:\tZ")),
        "the controller exited:\n{}",
        controller.logs()
    );
    assert!(!controller.logs().contains("panicked"), "{}", controller.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_answer_a_retry_after_past_the_clock_throttles_without_crashing_the_controller() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    // `Instant::now() + 18446744073709551615s` overflows: uncapped, this
    // panicked the reconcile and kube-runtime took the process down.
    hostile(
        &sim,
        Hostile::OddHeaders {
            status: 429,
            headers: vec![("retry-after".into(), u64::MAX.to_string())],
        },
    );
    let (ns, controller) = Tenant::new(cp, "retry-after").target(&sim, TOKEN).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    wait_reason(cp, &ns, "xr/ada", "Synced", "Throttled", &controller);
    assert!(message(cp, &ns, "xr/ada", "Synced").contains("retry after 3600s"));
    assert!(!controller.logs().contains("panicked"), "{}", controller.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_answer_an_invalid_utf8_body_is_an_error_of_the_resource_not_of_the_controller() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    hostile(
        &sim,
        Hostile::InvalidUtf8 {
            status: 200,
            bytes: 100_000,
        },
    );
    let (ns, controller) = Tenant::new(cp, "utf8").target(&sim, TOKEN).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    let reason = settled_reason(cp, &ns, "xr/ada", "Synced").await;
    assert!(reason.is_some(), "no settled condition:\n{}", controller.logs());
    assert!(!controller.logs().contains("panicked"), "{}", controller.logs());
    // The body kept as text is bounded.
    assert!(cp.jsonpath(&ns, "xr/ada", "{.status}").len() < 16 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_simulator_answers_what_its_faults_say() {
    let sim = Simulator::accepting(TOKEN).and_api_key(API_KEY).start();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let get = |sim: &SimHandle| {
        client
            .get(format!("{}/v1/contacts", sim.base_url()))
            .bearer_auth(TOKEN)
            .send()
    };
    hostile(&sim, Hostile::HugeBody { bytes: 10_000_000 });
    let mut response = get(&sim).await.expect("answer");
    let mut streamed = 0usize;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        streamed += chunk.len();
    }
    assert!((9_990_000..=10_010_000).contains(&streamed), "{streamed}");
    hostile(
        &sim,
        Hostile::Redirect {
            status: 302,
            location: "http://elsewhere.example/x".into(),
        },
    );
    let response = get(&sim).await.expect("answer");
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "http://elsewhere.example/x");
    hostile(
        &sim,
        Hostile::LongMessage {
            status: 422,
            text: "é€😀".into(),
            repeat: 500,
        },
    );
    let response = get(&sim).await.expect("answer");
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["message"].as_str().map(str::chars).map(Iterator::count),
        Some(1500)
    );
    hostile(&sim, Hostile::InvalidUtf8 { status: 200, bytes: 64 });
    let bytes = get(&sim).await.expect("answer").bytes().await.expect("body");
    assert!(bytes.len() == 64 && std::str::from_utf8(&bytes).is_err());
    assert_eq!(sim.stats().hostile_answers, 4);
}
