//! Push-triggered resync on a real control plane and a real target: with a
//! poll interval of an hour, drift made at the simulator is corrected
//! within a second of a signed push to the controller's webhook endpoint;
//! forged, unsigned and replayed pushes are refused and change nothing.
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::fixtures::{Simulator, Tenant, contact};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt};
use tether_sim::SimHandle;

const TOKEN: &str = "tok-resync-secret-31";
const KEY: &str = "resync-hmac-key-4b1d";

/// A push signed with `key` (or unsigned) as `delivery`; the status.
async fn push(controller: &Controller, path: &str, key: Option<&[u8]>, delivery: &str, timestamp: i64) -> u16 {
    let body = b"{}";
    let url = format!("http://127.0.0.1:{}{path}", controller.webhook_port);
    let mut request = reqwest::Client::new()
        .post(&url)
        .header("X-Tether-Timestamp", timestamp.to_string())
        .header("X-Tether-Delivery", delivery)
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header(
            "X-Tether-Signature",
            tether::webhook::sign(key, timestamp, delivery, body),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match request.try_clone().expect("clonable").send().await {
            Ok(answer) => return answer.status().as_u16(),
            Err(e) if Instant::now() > deadline => panic!("no webhook endpoint: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn plan_of(sim: &SimHandle) -> String {
    sim.objects("contacts")
        .first()
        .and_then(|o| o["plan"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits (polling the simulator, not sleeping blindly) until the object is
/// back to `pro`; returns how long that took.
async fn corrected_within(sim: &SimHandle, limit: Duration) -> Duration {
    let started = Instant::now();
    while plan_of(sim) != "pro" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the drift was never corrected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(took <= limit, "corrected after {took:?}, more than {limit:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_corrects_drift_within_a_second_and_a_forged_or_replayed_one_changes_nothing() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = Tenant::new(cp, "resync")
        .secret("resync-key", "key", KEY)
        .target(&sim, TOKEN)
        .spec(json!({"resyncWebhook": {"secretRef": {"name": "resync-key", "key": "key"}}}))
        .start();
    cp.apply_json(
        &ns,
        &contact(
            "ada",
            json!({"email": "ada@example.com", "plan": "pro"}),
            json!({"pollInterval": "1h"}),
        ),
    );
    cp.wait_for(&ns, "xr/ada", "condition=Ready", "60s", Some(&controller));
    let id = cp.jsonpath(&ns, "xr/ada", "{.status.externalId}");
    let all = format!("/resync/{ns}/target");
    let now = || chrono::Utc::now().timestamp();

    // Drift made at the target, behind Tether's back.
    assert!(sim.drift("contacts", &id, &json!({"plan": "free"})).is_some());
    sim.reset_stats();

    // Forged (wrong key), unsigned and stale pushes are refused.
    for i in 0..20 {
        let delivery = format!("forged-{i}");
        assert_eq!(
            push(&controller, &all, Some(b"not-the-key"), &delivery, now()).await,
            401
        );
    }
    assert_eq!(push(&controller, &all, None, "unsigned-1", now()).await, 401);
    assert_eq!(
        push(&controller, &all, Some(KEY.as_bytes()), "stale-1", now() - 3600).await,
        401
    );

    // A signed push: corrected within a second, though the poll is an hour.
    let timestamp = now();
    assert_eq!(
        push(&controller, &all, Some(KEY.as_bytes()), "push-1", timestamp).await,
        202
    );
    corrected_within(&sim, Duration::from_secs(1)).await;
    let reads_after_push = sim.stats().count("read", "contacts");
    assert_eq!(
        reads_after_push,
        1,
        "the refused pushes read nothing: {:?}",
        sim.stats().requests
    );

    // Drift again; the same signed request, replayed, is refused and the
    // target is not read.
    assert!(sim.drift("contacts", &id, &json!({"plan": "free"})).is_some());
    assert_eq!(
        push(&controller, &all, Some(KEY.as_bytes()), "push-1", timestamp).await,
        409
    );
    // Nothing to await: give a wrongly woken controller the time the
    // accepted push needed, then check that it did not read.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sim.stats().count("read", "contacts"), reads_after_push);
    assert_eq!(plan_of(&sim), "free", "the replay changed nothing");

    // A push naming one resource.
    let one = format!("/resync/{ns}/target/ada");
    assert_eq!(
        push(&controller, &one, Some(KEY.as_bytes()), "push-2", now()).await,
        202
    );
    corrected_within(&sim, Duration::from_secs(1)).await;
    // One that names no resource of this target is refused.
    assert_eq!(
        push(
            &controller,
            &format!("/resync/{ns}/target/nobody"),
            Some(KEY.as_bytes()),
            "push-3",
            now()
        )
        .await,
        404
    );
    let metrics = controller.metrics().await;
    assert!(
        metrics.contains("tether_webhook_requests_total{outcome=\"resync\"} 2"),
        "{metrics}"
    );
    // The key came from its Secret once (and once more at most, for a
    // signature that did not verify): refused pushes cost no API call each.
    let reads = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tether_key_reads_total{purpose=\"resync\"}"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_default();
    assert!((1.0..=2.0).contains(&reads), "{reads} key reads for 26 pushes");
}
