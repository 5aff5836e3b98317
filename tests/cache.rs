//! The controller's caches on the real control plane (src/cache.rs): a
//! relist forced by `410 Gone` loses no object and notices what changed
//! while the watch was away, and what the controller keeps per object goes
//! with the object — including an object deleted while the watch was away.
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::fixtures::{Simulator, Tenant, contact};
use support::gone_proxy::GoneProxy;
use support::tether::Controller;
use support::{ControlPlane, KubectlExt, assert_ok};

const TOKEN: &str = "cache-token-5e1a";

/// The value of a metric series (`name{labels}`), if exported.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l.get(series.len()..).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until the controller's metric `series` equals `value`.
async fn await_metric(controller: &Controller, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(&controller.metrics().await, series);
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now:?}, not {value}, after 60s\n{}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_relist_loses_nothing_and_per_object_state_goes_with_the_objects() {
    tether::install_crypto_provider();
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let ns = Tenant::new(cp, "cache").target(&sim, TOKEN).create();
    let proxy = GoneProxy::start(&cp.server, &cp.dir.join("ca.crt"), "externalresources").await;
    let kubeconfig = cp.dir.join(format!("proxy-{ns}.kubeconfig"));
    proxy.write_kubeconfig(&kubeconfig, tether_harness::CONTROLLER_TOKEN);
    let controller = Controller::start_with_kubeconfig(cp, &ns, &[], kubeconfig);

    let email = |name: &str| json!({"email": format!("{name}@example.com")});
    for name in ["kept", "changed", "gone"] {
        cp.apply_json(&ns, &contact(name, email(name), json!({})));
    }
    for name in ["kept", "changed", "gone"] {
        cp.wait_for(&ns, &format!("xr/{name}"), "condition=Ready", "60s", Some(&controller));
    }
    let cached = "tether_cached_objects{kind=\"ExternalResource\"}";
    let remembered = "tether_remembered_objects{kind=\"ExternalResource\"}";
    // Per Ready resource: its freshness and its next poll, booked.
    let per_resource = 2.0;
    await_metric(&controller, cached, 3.0).await;
    await_metric(&controller, remembered, 3.0 * per_resource).await;

    // The controller's watch ends with 410 Gone and it cannot list again
    // until released: meanwhile one resource is deleted outright (its
    // finalizer removed by hand, so it is gone before the controller can
    // see its deletion), one changes and one is created.
    proxy.hold();
    proxy.expire();
    assert_ok(&cp.kubectl(&[
        "patch",
        "xr",
        "gone",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]));
    assert_ok(&cp.kubectl(&["delete", "xr", "gone", "-n", &ns, "--wait=true", "--timeout=30s"]));
    cp.apply_json(
        &ns,
        &contact("changed", json!({"email": "changed-while-away@example.com"}), json!({})),
    );
    cp.apply_json(&ns, &contact("new", email("new"), json!({})));
    proxy.release();

    cp.wait_for(&ns, "xr/new", "condition=Ready", "60s", Some(&controller));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sim
        .objects("contacts")
        .iter()
        .any(|o| o["email"] == "changed-while-away@example.com")
    {
        assert!(
            Instant::now() < deadline,
            "the change made while the watch was away never reached the target\n{}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `gone` was reported deleted by the relist: neither cached nor remembered.
    await_metric(&controller, cached, 3.0).await;
    await_metric(&controller, remembered, 3.0 * per_resource).await;

    assert_ok(&cp.kubectl(&["delete", "xr", "--all", "-n", &ns, "--wait=true", "--timeout=60s"]));
    await_metric(&controller, cached, 0.0).await;
    await_metric(&controller, remembered, 0.0).await;
}
