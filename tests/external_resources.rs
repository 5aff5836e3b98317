//! ExternalResources converge through HTTP adapters on a real control plane
//! and a real HTTP target (the simulator) — and never leak, duplicate, fight
//! or flood. Every test drives `tether run` the way users do: `kubectl
//! apply`, `kubectl wait`.
mod support;

use serde_json::json;
use support::fixtures::{Simulator, Tenant, contact, contacts_adapter, contacts_adapter_with_create};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt};
use tether_sim::{self as sim, Credentials};

const TOKEN: &str = "tok-3f9a-demo-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_converges_with_exactly_one_create() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "converge").target(&sim, TOKEN).start();
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

/// Polls `check` until it holds (a condition, not a sleep), or fails with
/// `what` after `seconds`.
async fn eventually(what: &str, seconds: u64, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn events(cp: &ControlPlane, ns: &str, name: &str) -> String {
    cp.jsonpath(ns, "events", "{range .items[*]}{.involvedObject.name}:{.reason} {end}")
        .split_whitespace()
        .filter_map(|e| e.strip_prefix(&format!("{name}:")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_answer_adopts_instead_of_duplicating() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    sim.set_faults(sim::Faults {
        drop_create_responses: 1,
        ..sim::Faults::default()
    });
    let (ns, controller) = Tenant::new(cp, "lost-answer").target(&sim, TOKEN).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));

    let stats = sim.stats();
    assert_eq!(stats.dropped_responses, 1, "the fault must have fired");
    assert_eq!(stats.count("create", "contacts"), 1, "the create was not repeated");
    let objects = sim.objects("contacts");
    assert_eq!(objects.len(), 1, "exactly one object at the target");
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.externalId}"),
        objects[0]["id"].as_str().unwrap_or_default()
    );
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Ready\")].reason}"),
        "Adopted"
    );
    assert!(events(cp, &ns, "ada").contains("Adopted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_between_the_create_and_its_status_write_resumes_without_a_duplicate() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    // The create commits at once and answers 30 s later: the controller is
    // killed inside that window, after the call and before its record.
    sim.set_faults(sim::Faults {
        create_answer_delay_ms: 30_000,
        ..sim::Faults::default()
    });
    let (ns, mut controller) = Tenant::new(cp, "sigkill")
        .target(&sim, TOKEN)
        .spec(json!({"timeouts": {"connect": "2s", "request": "60s"}}))
        .start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    eventually("the create is committed at the target", 60, || {
        sim.objects("contacts").len() == 1
    })
    .await;
    controller.kill();
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.externalId}"),
        "",
        "the answer was never recorded"
    );
    assert!(
        !cp.jsonpath(&ns, "xr/ada", "{.status.pendingCreate.idempotencyKey}")
            .is_empty(),
        "the intent was"
    );

    sim.set_faults(sim::Faults::default());
    controller.restart(cp);
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    assert_eq!(sim.objects("contacts").len(), 1, "no duplicate after the restart");
    assert_eq!(
        sim.stats().count("create", "contacts"),
        1,
        "the create was not sent again"
    );
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.externalId}"),
        sim.objects("contacts")[0]["id"].as_str().unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_resources_claiming_one_object_the_second_gets_conflict_and_nothing_is_overwritten() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "conflict").target(&sim, TOKEN).start();
    cp.apply_json(
        &ns,
        &contact(
            "first",
            json!({"email": "a@example.com", "plan": "pro"}),
            json!({"externalName": "shared"}),
        ),
    );
    cp.wait_for(&ns, "xr/first", "condition=Ready", "60s", Some(&controller));
    cp.apply_json(
        &ns,
        &contact(
            "second",
            json!({"email": "a@example.com", "plan": "free"}),
            json!({"externalName": "shared"}),
        ),
    );
    cp.wait_for(&ns, "xr/second", "condition=Conflict", "60s", Some(&controller));

    assert!(
        cp.jsonpath(
            &ns,
            "xr/second",
            "{.status.conditions[?(@.type==\"Conflict\")].message}"
        )
        .contains(&format!("{ns}/first"))
    );
    assert_eq!(
        cp.jsonpath(&ns, "xr/second", "{.status.conditions[?(@.type==\"Ready\")].status}"),
        "False"
    );
    let objects = sim.objects("contacts");
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["plan"], "pro", "the second resource changed nothing");
    let stats = sim.stats();
    assert_eq!(stats.count("patch", "contacts") + stats.count("update", "contacts"), 0);
    assert!(events(cp, &ns, "second").contains("Conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_by_default_and_only_reported_when_asked() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "drift").target(&sim, TOKEN).start();
    cp.apply_json(
        &ns,
        &contact(
            "fixed",
            json!({"email": "f@example.com", "plan": "pro"}),
            json!({"pollInterval": "1s"}),
        ),
    );
    cp.apply_json(
        &ns,
        &contact(
            "watched",
            json!({"email": "w@example.com", "plan": "pro"}),
            json!({"pollInterval": "1s", "driftPolicy": "Report"}),
        ),
    );
    cp.wait_for(&ns, "xr/fixed", "condition=Ready", "60s", Some(&controller));
    cp.wait_for(&ns, "xr/watched", "condition=Ready", "60s", Some(&controller));
    let id = |name: &str| cp.jsonpath(&ns, &format!("xr/{name}"), "{.status.externalId}");
    let (fixed, watched) = (id("fixed"), id("watched"));
    sim.drift("contacts", &fixed, &json!({"plan": "free"}))
        .expect("object exists");
    sim.drift("contacts", &watched, &json!({"plan": "free"}))
        .expect("object exists");

    let plan_of = |id: &str| {
        sim.objects("contacts")
            .into_iter()
            .find(|o| o["id"] == *id)
            .map(|o| o["plan"].clone())
    };
    eventually("the drift of `fixed` is corrected", 60, || {
        plan_of(&fixed) == Some(json!("pro"))
    })
    .await;
    cp.wait_for(&ns, "xr/watched", "condition=Synced=False", "60s", Some(&controller));
    assert_eq!(
        cp.jsonpath(&ns, "xr/watched", "{.status.conditions[?(@.type==\"Synced\")].reason}"),
        "DriftDetected"
    );
    assert_eq!(cp.jsonpath(&ns, "xr/watched", "{.status.driftedFields}"), "[\"/plan\"]");
    assert_eq!(
        plan_of(&watched),
        Some(json!("free")),
        "report-only drift is left alone"
    );
    assert!(events(cp, &ns, "fixed").contains("DriftCorrected"));
    assert!(events(cp, &ns, "watched").contains("DriftDetected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_waits_long_between_polls_is_still_polled_when_due() {
    // 31 s is past `polls::BOOKED_FROM`: the wait is booked with the
    // controller's own poll wheel, not kube-runtime's scheduler, and only
    // the wheel can wake it (nothing else changes).
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "booked").target(&sim, TOKEN).start();
    cp.apply_json(
        &ns,
        &contact(
            "slow",
            json!({"email": "s@example.com", "plan": "pro"}),
            json!({"pollInterval": "31s"}),
        ),
    );
    cp.wait_for(&ns, "xr/slow", "condition=Ready", "60s", Some(&controller));
    let id = cp.jsonpath(&ns, "xr/slow", "{.status.externalId}");
    sim.drift("contacts", &id, &json!({"plan": "free"}))
        .expect("object exists");
    eventually("the booked poll finds the drift and corrects it", 120, || {
        sim.objects("contacts")
            .into_iter()
            .any(|o| o["id"] == *id && o["plan"] == "pro")
    })
    .await;
    assert!(events(cp, &ns, "slow").contains("DriftCorrected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_annotation_forces_a_resync_now() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "resync").target(&sim, TOKEN).start();
    cp.apply_json(
        &ns,
        &contact(
            "ada",
            json!({"email": "a@example.com", "plan": "pro"}),
            json!({"pollInterval": "1h"}),
        ),
    );
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    let id = cp.jsonpath(&ns, "xr/ada", "{.status.externalId}");
    sim.drift("contacts", &id, &json!({"plan": "free"}))
        .expect("object exists");
    support::assert_ok(&cp.kubectl(&["annotate", "-n", &ns, "xr/ada", "tether.dev/resync=1", "--overwrite"]));
    eventually("the annotation triggers the correction", 60, || {
        sim.objects("contacts")[0]["plan"] == "pro"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_deletes_the_external_object_orphan_keeps_it_and_404_counts_as_gone() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "delete").target(&sim, TOKEN).start();
    cp.apply_json(&ns, &contact("gone", json!({"email": "g@example.com"}), json!({})));
    cp.apply_json(
        &ns,
        &contact(
            "kept",
            json!({"email": "k@example.com"}),
            json!({"deletionPolicy": "Orphan"}),
        ),
    );
    cp.apply_json(&ns, &contact("vanished", json!({"email": "v@example.com"}), json!({})));
    for name in ["gone", "kept", "vanished"] {
        cp.wait_for(&ns, &format!("xr/{name}"), "condition=Ready", "60s", Some(&controller));
    }
    let id = |name: &str| cp.jsonpath(&ns, &format!("xr/{name}"), "{.status.externalId}");
    let (gone, kept, vanished) = (id("gone"), id("kept"), id("vanished"));
    // Deleted behind Tether's back: the delete answers 404.
    assert!(sim.state.objects("contacts").iter().any(|o| o["id"] == *vanished));
    let client = reqwest::Client::new();
    client
        .delete(format!("{}/v1/contacts/{vanished}", sim.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");

    for name in ["gone", "kept", "vanished"] {
        support::assert_ok(&cp.kubectl(&["delete", "-n", &ns, &format!("xr/{name}"), "--timeout=60s"]));
    }
    let ids: Vec<String> = sim
        .objects("contacts")
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, std::slice::from_ref(&kept), "only the orphaned object remains");
    assert!(!ids.contains(&gone));
    assert!(events(cp, &ns, "gone").contains("Deleted"));
    assert!(events(cp, &ns, "kept").contains("Orphaned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_on_a_later_page_under_the_default_name_is_adopted_not_duplicated() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    // A find that lists the whole collection (no filter), page by page:
    // the simulator answers 50 objects a page with `nextCursor`.
    let paged = |adapter: &str| {
        let mut mapping = contacts_adapter(adapter);
        mapping["spec"]["rest"]["resourceTypes"][0]["find"] = json!({
            "method": "GET", "path": "/v1/contacts",
            "select": ".items[] | select(.externalName == $desired.name)",
            "pagination": {"next": ".nextCursor", "queryParam": "cursor"}
        });
        mapping
    };
    let ns = Tenant::new(cp, "adopt-paged")
        .adapter("contacts", paged)
        .target(&sim, TOKEN)
        .create();
    let client = reqwest::Client::new();
    let seed = |body: serde_json::Value| {
        client
            .post(format!("{}/v1/contacts", sim.base_url()))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    for i in 0..120 {
        seed(json!({"email": format!("filler{i}@example.com"), "externalName": format!("filler-{i}")}))
            .await
            .expect("seed filler");
    }
    // No externalName in the spec: its default `<namespace>-<name>` names
    // this object, on the third page.
    seed(json!({"email": "ada@example.com", "externalName": format!("{ns}-ada")}))
        .await
        .expect("seed ada");
    sim.reset_stats();
    let controller = Controller::start(cp, &ns, &[]);
    cp.apply_json(&ns, &contact("ada", json!({"email": "ada@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));

    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Ready\")].reason}"),
        "Adopted"
    );
    let adopted = sim
        .objects("contacts")
        .into_iter()
        .find(|o| o["externalName"] == format!("{ns}-ada"))
        .expect("seeded");
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.externalId}"),
        adopted["id"].as_str().unwrap_or_default()
    );
    let stats = sim.stats();
    assert_eq!(stats.count("create", "contacts"), 0, "no duplicate: {stats:?}");
    assert_eq!(sim.objects("contacts").len(), 121);
    assert_eq!(stats.count("list", "contacts"), 3, "three pages read: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_only_adopts_an_existing_object_and_never_writes() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let client = reqwest::Client::new();
    client
        .post(format!("{}/v1/contacts", sim.base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"email": "legacy@example.com", "plan": "gold", "externalName": "legacy"}))
        .send()
        .await
        .expect("seed object");
    sim.reset_stats();
    let (ns, controller) = Tenant::new(cp, "observe").target(&sim, TOKEN).start();
    cp.apply_json(
        &ns,
        &contact(
            "legacy",
            json!({"plan": "platinum"}),
            json!({"externalName": "legacy", "managementPolicy": "ObserveOnly", "pollInterval": "1s"}),
        ),
    );
    // Adopted, and the declared `plan` differs: reported drift, which is
    // not Ready (the object does not match) and Stalled (only a change helps).
    cp.wait_for(&ns, "xr/legacy", "condition=Stalled", "60s", Some(&controller));
    assert!(!cp.jsonpath(&ns, "xr/legacy", "{.status.externalId}").is_empty());
    assert_eq!(
        cp.jsonpath(&ns, "xr/legacy", "{.status.conditions[?(@.type==\"Ready\")].reason}"),
        "DriftDetected"
    );
    support::assert_ok(&cp.kubectl(&["delete", "-n", &ns, "xr/legacy", "--timeout=60s"]));

    let stats = sim.stats();
    let writes: u64 = ["create", "update", "patch", "delete"]
        .iter()
        .map(|op| stats.count(op, "contacts"))
        .sum();
    assert_eq!(writes, 0, "observe-only never writes: {stats:?}");
    assert_eq!(sim.objects("contacts")[0]["plan"], "gold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_resources_share_one_rate_limit() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "ratelimit")
        .target(&sim, TOKEN)
        .spec(json!({"rateLimit": {"requestsPerSecond": 5, "burst": 5}}))
        .start();
    let items: Vec<_> = (0..200)
        .map(|i| {
            contact(
                &format!("c{i:03}"),
                json!({"email": format!("c{i}@example.com")}),
                json!({}),
            )
        })
        .collect();
    cp.apply_json(&ns, &json!({"apiVersion": "v1", "kind": "List", "items": items}));
    assert_eq!(
        cp.wait_all(&ns, "xr", "condition=Ready", "240s", Some(&controller)),
        200
    );

    let stats = sim.stats();
    assert_eq!(sim.objects("contacts").len(), 200);
    // The limiter bounds when calls are sent: at most burst + rate in any
    // second. The simulator counts arrivals, which scheduling jitter can
    // bunch by one call. Without a shared limiter the target sees hundreds.
    assert!(
        stats.peak_admitted_per_second <= 5 + 5 + 1,
        "the target saw {} requests in one second; the limit is 5/s with a burst of 5",
        stats.peak_admitted_per_second
    );
    assert!(controller.metrics().await.contains("tether_rate_limiter_wait_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_429_is_honoured_by_every_caller_of_the_target() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    sim.set_faults(sim::Faults {
        rate_limit: Some(sim::RateLimitFault {
            requests_per_second: 2.0,
            burst: 1,
            retry_after_seconds: Some(2),
        }),
        ..sim::Faults::default()
    });
    let (ns, controller) = Tenant::new(cp, "retryafter")
        .target(&sim, TOKEN)
        .spec(json!({"maxConcurrency": 1}))
        .start();
    let items: Vec<_> = (0..6)
        .map(|i| {
            contact(
                &format!("c{i}"),
                json!({"email": format!("c{i}@example.com")}),
                json!({}),
            )
        })
        .collect();
    cp.apply_json(&ns, &json!({"apiVersion": "v1", "kind": "List", "items": items}));
    assert_eq!(cp.wait_all(&ns, "xr", "condition=Ready", "120s", Some(&controller)), 6);

    let stats = sim.stats();
    assert!(stats.throttled > 0, "the target must have throttled: {stats:?}");
    assert_eq!(
        stats.retry_after_violations,
        0,
        "no call before Retry-After passed: {stats:?}\n{}",
        controller.logs()
    );
    assert_eq!(sim.objects("contacts").len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_repeated_failures_and_closes_by_itself() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    sim.set_faults(sim::Faults {
        error_rate: 1.0,
        ..sim::Faults::default()
    });
    let (ns, controller) = Tenant::new(cp, "circuit").target(&sim, TOKEN).spec(json!({"circuitBreaker": {"failureThreshold": 2, "openFor": "3s"}, "healthCheck": {"path": "/v1/contacts?limit=1", "interval": "1s"}})).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "a@example.com"}), json!({})));
    cp.wait_for(
        &ns,
        "tts/target",
        "jsonpath={.status.circuit}=Open",
        "60s",
        Some(&controller),
    );
    cp.wait_for(&ns, "tts/target", "condition=Degraded", "60s", Some(&controller));
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Synced\")].status}"),
        "False"
    );

    sim.set_faults(sim::Faults::default());
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    cp.wait_for(
        &ns,
        "tts/target",
        "jsonpath={.status.circuit}=Closed",
        "60s",
        Some(&controller),
    );
    cp.wait_for(&ns, "tts/target", "condition=Degraded=False", "60s", Some(&controller));
    assert_eq!(sim.objects("contacts").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_mapping_waits_for_a_spec_change_and_names_the_field() {
    let cp = ControlPlane::shared();
    let broken = contacts_adapter_with_create("body", json!("{email: .properties.email"));
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "broken")
        .adapter("contacts", broken)
        .target(&sim, TOKEN)
        .start();
    let adapter = format!("contacts-{ns}");
    cp.apply_json(&ns, &contact("ada", json!({"email": "a@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/ada", "condition=Synced=False", "60s", Some(&controller));
    let message = cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Synced\")].message}");
    assert!(
        message.contains("spec.rest.resourceTypes[contact].create.body"),
        "{message}"
    );
    assert_eq!(
        cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Synced\")].reason}"),
        "AdapterInvalid"
    );
    cp.wait_for(
        "default",
        &format!("adapter/{adapter}"),
        "condition=Ready=False",
        "60s",
        Some(&controller),
    );
    assert_eq!(
        sim.stats().requests.values().sum::<u64>(),
        0,
        "nothing is sent with a broken mapping"
    );

    // Waiting means not retrying: a second, healthy resource converges while
    // the broken one reconciled exactly once.
    cp.apply_json(&ns, &contacts_adapter(&adapter));
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    let metrics = controller.metrics().await;
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("tether_reconcile_errors_total") && l.contains("AdapterInvalid"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(errors, "1", "an invalid mapping is not retried on a timer:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_credential_is_reported_recovers_once_the_secret_is_fixed_and_never_leaks() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    const WRONG: &str = "wrong-token-9c1e7d";
    let (ns, controller) = Tenant::new(cp, "creds").target(&sim, WRONG).start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "a@example.com"}), json!({})));
    cp.wait_for(
        &ns,
        "xr/ada",
        "jsonpath={.status.conditions[?(@.type==\"Synced\")].reason}=CredentialsRejected",
        "60s",
        Some(&controller),
    );
    let message = cp.jsonpath(&ns, "xr/ada", "{.status.conditions[?(@.type==\"Synced\")].message}");
    assert!(
        message.contains("[REDACTED]"),
        "the target echoed the token; the message must not: {message}"
    );

    let fixed = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "target-token"}, "stringData": {"token": TOKEN}});
    cp.apply_json(&ns, &fixed);
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "90s", Some(&controller));

    let status = cp.jsonpath(&ns, "xr/ada", "{.status}");
    let events = cp.jsonpath(&ns, "events", "{.items}");
    let logs = controller.logs();
    let metrics = controller.metrics().await;
    let tts = cp.jsonpath(&ns, "tts/target", "{.status}");
    for (place, text) in [
        ("status", &status),
        ("events", &events),
        ("logs", &logs),
        ("metrics", &metrics),
        ("TargetSystem status", &tts),
    ] {
        for secret in [WRONG, TOKEN] {
            assert!(!text.contains(secret), "a credential appears in {place}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_template_cannot_reach_another_host() {
    let cp = ControlPlane::shared();
    let mapping = contacts_adapter_with_create("path", json!("/v1/\\(.properties.collection)"));
    let sim = Simulator::accepting(TOKEN).start();
    let evil = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "ssrf")
        .adapter("slugs", mapping)
        .target(&sim, TOKEN)
        .start();
    let evil_host = evil.addr.to_string();
    for (name, collection) in [
        ("netpath", format!("/{evil_host}/v1/contacts")),
        ("absolute", format!("http://{evil_host}/v1/contacts")),
        ("userinfo", format!("@{evil_host}/v1/contacts")),
        ("climb", "../../v1/contacts".to_owned()),
    ] {
        cp.apply_json(&ns, &contact(name, json!({"collection": collection}), json!({})));
    }
    for name in ["netpath", "absolute", "userinfo", "climb"] {
        cp.wait_for(
            &ns,
            &format!("xr/{name}"),
            "jsonpath={.status.conditions[?(@.type==\"Synced\")].status}",
            "60s",
            Some(&controller),
        );
    }
    assert_eq!(
        evil.stats().requests.values().sum::<u64>(),
        0,
        "nothing reached the other host"
    );
    assert!(
        sim.objects("contacts").is_empty(),
        "nothing landed on a collection the template did not name"
    );
}

#[tokio::test]
async fn a_status_write_with_a_stale_resource_version_is_refused() {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use tether::api::ExternalResource;
    use tether::api::external_resource::ExternalResourceStatus;
    use tether::controller::status_body;

    let cp = ControlPlane::shared();
    let ns = cp.namespace("stale");
    let api: Api<ExternalResource> = Api::namespaced(cp.client("controller").await, &ns);
    let admin: Api<ExternalResource> = Api::namespaced(cp.client("admin").await, &ns);
    let object: ExternalResource = serde_json::from_value(contact("ada", json!({}), json!({}))).expect("valid");
    let created = admin.create(&PostParams::default(), &object).await.expect("created");
    let stale_version = created.metadata.resource_version.clone();

    let leader = ExternalResourceStatus {
        external_id: Some("from-the-leader".into()),
        ..Default::default()
    };
    let params = PatchParams::apply("tether").force();
    api.patch_status(
        "ada",
        &params,
        &Patch::Apply(status_body::<ExternalResource>(
            "ada",
            stale_version.as_deref(),
            &leader,
        )),
    )
    .await
    .expect("the first write with the current version succeeds");
    let deposed = ExternalResourceStatus {
        external_id: Some("from-a-deposed-leader".into()),
        ..Default::default()
    };
    let refused = api
        .patch_status(
            "ada",
            &params,
            &Patch::Apply(status_body::<ExternalResource>(
                "ada",
                stale_version.as_deref(),
                &deposed,
            )),
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a write based on a stale read must fail with 409, got {other:?}"),
    }
    assert_eq!(cp.jsonpath(&ns, "xr/ada", "{.status.externalId}"), "from-the-leader");
}

/// The holder of a Lease in `tether-system` (the only namespace where the
/// chart lets the controller write Leases).
fn lease_holder(cp: &ControlPlane, lease: &str) -> String {
    cp.jsonpath("tether-system", &format!("lease/{lease}"), "{.spec.holderIdentity}")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_controllers_leads_and_the_other_takes_over_when_it_dies() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let ns = Tenant::new(cp, "leader").target(&sim, TOKEN).create();
    let lease = format!("lease-{ns}");
    let election = [
        "--leader-election",
        "--lease-namespace",
        "tether-system",
        "--lease-name",
        &lease,
        "--lease-duration",
        "3s",
    ];
    let mut first = Controller::start(cp, &ns, &[&election[..], &["--identity", "first"]].concat());
    eventually("the first controller holds the Lease", 60, || {
        lease_holder(cp, &lease) == "first"
    })
    .await;
    let second = Controller::start(cp, &ns, &[&election[..], &["--identity", "second"]].concat());

    cp.apply_json(&ns, &contact("ada", json!({"email": "a@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&first));
    // Leadership is not readiness: the standby is Ready as well (a rollout
    // waits for it).
    let readyz = format!("http://127.0.0.1:{}/readyz", second.metrics_port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reqwest::get(&readyz).await.is_ok_and(|r| r.status().is_success()) {
        assert!(std::time::Instant::now() < deadline, "the standby never became Ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let standby = second.metrics().await;
    assert_eq!(
        metric(&standby, "tether_leader"),
        Some(0.0),
        "the second process does not lead"
    );
    assert!(
        standby
            .lines()
            .filter(|l| l.starts_with("tether_reconciles_total"))
            .all(|l| l.ends_with(" 0")),
        "and reconciles nothing:\n{standby}"
    );
    assert_eq!(lease_holder(cp, &lease), "first");

    first.kill();
    eventually("the second controller takes the Lease over", 60, || {
        lease_holder(cp, &lease) == "second"
    })
    .await;
    cp.apply_json(&ns, &contact("grace", json!({"email": "g@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/grace", "condition=Ready", "60s", Some(&second));
    assert_eq!(metric(&second.metrics().await, "tether_leader"), Some(1.0));
    assert_eq!(
        cp.jsonpath("tether-system", &format!("lease/{lease}"), "{.spec.leaseTransitions}"),
        "1"
    );
    assert_eq!(
        sim.objects("contacts").len(),
        2,
        "each resource created once across the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_report_reconciles_calls_and_readiness() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "metrics")
        .target(&sim, TOKEN)
        .spec(json!({"rateLimit": {"requestsPerSecond": 50, "burst": 5}}))
        .start();
    cp.apply_json(&ns, &contact("ada", json!({"email": "a@example.com"}), json!({})));
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));

    let text = controller.metrics().await;
    let create =
        format!("tether_http_requests_total{{target=\"{ns}/target\",operation=\"create\",outcome=\"success\"}}");
    assert_eq!(metric(&text, &create), Some(1.0), "{text}");
    assert!(metric(&text, "tether_reconciles_total{kind=\"ExternalResource\"}").is_some_and(|n| n >= 1.0));
    assert!(metric(&text, "tether_status_writes_total{kind=\"ExternalResource\"}").is_some_and(|n| n >= 1.0));
    assert!(text.contains("tether_rate_limiter_wait_seconds_bucket"));
    assert!(text.contains("tether_reconcile_duration_seconds_bucket"));
    for path in ["healthz", "readyz"] {
        let status = reqwest::get(format!("http://127.0.0.1:{}/{path}", controller.metrics_port))
            .await
            .expect("answer")
            .status();
        assert_eq!(status, reqwest::StatusCode::OK, "/{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_client_credentials_tokens_are_fetched_cached_and_refreshed() {
    let cp = ControlPlane::shared();
    let sim = Simulator::with_credentials(Credentials {
        oauth_clients: vec![sim::OAuthClient {
            client_id: "tether".into(),
            client_secret: "client-secret-77d1".into(),
        }],
        oauth_token_ttl_seconds: Some(3),
        ..Credentials::default()
    })
    .start();
    let ns = Tenant::new(cp, "oauth").create();
    let adapter = format!("contacts-{ns}");
    cp.apply_json(&ns, &json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oauth"},
         "stringData": {"clientId": "tether", "clientSecret": "client-secret-77d1"}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "target"},
         "spec": {"adapterRef": {"name": adapter}, "baseUrl": sim.base_url(),
                  "auth": {"oauth2ClientCredentials": {"tokenUrl": format!("{}/oauth/token", sim.base_url()), "secretRef": {"name": "oauth"}}}}}
    ]}));
    let controller = Controller::start(cp, &ns, &[]);
    cp.apply_json(
        &ns,
        &contact(
            "ada",
            json!({"email": "a@example.com", "plan": "pro"}),
            json!({"pollInterval": "1s"}),
        ),
    );
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    // Tokens live 3 s and resyncs run every second: within ten reads the
    // controller has outlived several tokens.
    eventually("ten resyncs over several token lifetimes", 60, || {
        sim.stats().count("read", "contacts") >= 10
    })
    .await;
    let stats = sim.stats();
    assert!(stats.token_requests >= 2, "expired tokens are refreshed: {stats:?}");
    assert_eq!(
        stats.unauthorized, 0,
        "no call went out with an expired token: {stats:?}"
    );
    assert!(
        stats.count("read", "contacts") > stats.token_requests,
        "tokens are cached between calls: {stats:?}"
    );
}
