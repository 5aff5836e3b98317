//! The adapter-service form end to end: the example service in
//! `examples/adapter-service` (Python), driven by `tether run` through the
//! protocol of `docs/adapter-protocol.md`.
mod support;

use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt};

struct Service(Child, u16);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_service(cp: &ControlPlane, token: &str) -> Service {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new("python3")
        .arg(cp.repo.join("examples/adapter-service/ledger_adapter.py"))
        .args(["--port", &port.to_string()])
        .env("LEDGER_TOKEN", token)
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 runs the example adapter service");
    Service(child, port)
}

async fn entries(port: u16) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match reqwest::get(format!("http://127.0.0.1:{port}/_entries")).await {
            Ok(r) => return r.json().await.expect("json"),
            Err(e) if std::time::Instant::now() > deadline => panic!("the adapter service never answered: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_resource_converges_and_is_deleted_through_the_example_adapter_service() {
    tether::install_crypto_provider();
    let cp = ControlPlane::shared();
    let service = start_service(cp, "ledger-token-5e2a");
    assert!(entries(service.1).await.is_empty());
    let ns = cp.namespace("adaptersvc");
    let adapter = format!("ledger-{ns}");
    cp.apply_json(
        &ns,
        &json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Adapter", "metadata": {"name": adapter},
        "spec": {"service": {"url": format!("http://127.0.0.1:{}", service.1)}}}),
    );
    cp.apply_json(&ns, &json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ledger"}, "stringData": {"token": "ledger-token-5e2a"}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "TargetSystem", "metadata": {"name": "ledger"},
         "spec": {"adapterRef": {"name": adapter}, "baseUrl": "https://ledger.internal",
                  "auth": {"bearer": {"tokenSecretRef": {"name": "ledger", "key": "token"}}}}},
        {"apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource", "metadata": {"name": "invoice-7"},
         "spec": {"targetRef": {"name": "ledger"}, "type": "entry", "properties": {"amount": 42, "currency": "EUR"}}}
    ]}));
    let controller = Controller::start(cp, &ns, &[]);
    cp.wait_for(&ns, "xr/invoice-7", "condition=Ready", "60s", Some(&controller));
    cp.wait_for(
        "default",
        &format!("adapter/{adapter}"),
        "jsonpath={.status.form}=Service",
        "60s",
        Some(&controller),
    );

    let held = entries(service.1).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["properties"], json!({"amount": 42, "currency": "EUR"}));
    assert_eq!(held[0]["externalName"], format!("{ns}-invoice-7"));
    assert_eq!(
        cp.jsonpath(&ns, "xr/invoice-7", "{.status.externalId}"),
        held[0]["id"].as_str().unwrap_or_default()
    );

    support::assert_ok(&cp.kubectl(&["delete", "-n", &ns, "xr/invoice-7", "--timeout=60s"]));
    assert!(entries(service.1).await.is_empty(), "deleted through the service");
}
