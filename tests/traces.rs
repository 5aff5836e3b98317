//! Traces, on a real control plane with a real HTTP target (the simulator,
//! which requires a bearer token) and a real OTLP/HTTP receiver that
//! decodes the protobuf Tether exports: a three-step run's span tree
//! (reconcile -> step -> HTTP call), the `traceparent` each call carried to
//! the target, the run's trace id in its status and in `tether runs
//! describe`, and no credential in any span. Without an endpoint nothing
//! of this exists.
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use support::fixtures::{Simulator, Tenant};
use support::tether::Controller;
use support::{ControlPlane, KubectlExt, assert_ok};
use tether_sim::SimHandle;

const TOKEN: &str = "traces-token-5c1e9a";

/// An OTLP/HTTP receiver on its own thread: every span it was sent.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let router = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, router).await;
            });
        });
        Receiver { url, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// `POST /v1/traces`: the protobuf `ExportTraceServiceRequest`, as the
/// OpenTelemetry Collector's OTLP/HTTP receiver takes it.
async fn receive(
    State(spans): State<Arc<Mutex<Vec<Span>>>>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = [(header::CONTENT_TYPE, "application/x-protobuf")];
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, protobuf, Vec::new());
    };
    let received = request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans);
    if let Ok(mut spans) = spans.lock() {
        spans.extend(received);
    }
    (
        StatusCode::OK,
        protobuf,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// A span's attributes as text.
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `call` step POSTing to `/v1/<collection>`.
fn post_to(name: &str, collection: &str, after: Option<&str>) -> Value {
    let mut step = json!({"name": name, "call": {"targetRef": {"name": "target"},
        "request": {"method": "POST", "path": format!("/v1/{collection}"), "body": "{run: $run.name}"},
        "outputs": {"id": ".body.id"}}});
    if let Some(after) = after {
        step["dependsOn"] = json!([after]);
    }
    step
}

/// A Workflow `three` (alpha -> beta -> gamma) and its run `three-1`,
/// which `controller` runs to its end.
fn three_steps(cp: &ControlPlane, ns: &str, controller: &Controller) {
    let steps = json!([
        post_to("a", "alpha", None),
        post_to("b", "beta", Some("a")),
        post_to("c", "gamma", Some("b"))
    ]);
    cp.apply_json(
        ns,
        &json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "three"},
                "spec": {"steps": steps}}),
    );
    cp.apply_json(
        ns,
        &json!({"apiVersion": "tether.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "three-1"},
                "spec": {"workflowRef": {"name": "three"}}}),
    );
    cp.wait_for(
        ns,
        "twr/three-1",
        "jsonpath={.status.phase}=Succeeded",
        "60s",
        Some(controller),
    );
}

fn start(cp: &ControlPlane, prefix: &str, sim: &SimHandle, args: &[&str]) -> (String, Controller) {
    Tenant::new(cp, prefix).target(sim, TOKEN).controller_args(args).start()
}

/// The run's step spans (`step a`...) of `trace`, with the HTTP span under
/// each, once all three are there.
fn tree(spans: &[Span], trace: &str) -> Option<Vec<(Span, Span)>> {
    let in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    ["a", "b", "c"]
        .iter()
        .map(|step| {
            let step_span = in_trace.iter().find(|s| {
                s.name == format!("step {step}")
                    && attributes(s).get("tether.action").map(String::as_str) == Some("start")
            })?;
            let call = in_trace.iter().find(|s| s.parent_span_id == step_span.span_id)?;
            Some(((*step_span).clone(), (*call).clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_trace_is_reconcile_then_step_then_http_call_whose_traceparent_the_target_receives_without_credentials()
{
    let cp = ControlPlane::shared();
    let receiver = Receiver::start();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = start(cp, "traces", &sim, &["--otlp-endpoint", &receiver.url]);
    three_steps(cp, &ns, &controller);

    // The trace id is in the status, and `tether runs describe` prints it.
    let trace = cp.jsonpath(&ns, "twr/three-1", "{.status.traceId}");
    assert!(
        trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit()) && trace != "0".repeat(32),
        "status.traceId is a W3C trace id: {trace:?}"
    );
    let described = assert_ok(
        &Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["runs", "describe", "three-1", "-n", &ns])
            .env("KUBECONFIG", cp.kubeconfig("admin"))
            .output()
            .expect("tether runs describe"),
    );
    assert!(described.contains(&format!("Trace: {trace}")), "{described}");

    // The spans arrive in batches: wait for the three steps' subtrees.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (spans, steps) = loop {
        let spans = receiver.spans();
        if let Some(steps) = tree(&spans, &trace) {
            break (spans, steps);
        }
        let names: Vec<String> = spans
            .iter()
            .map(|s| format!("{} {}", s.name, hex(&s.trace_id)))
            .collect();
        assert!(
            Instant::now() < deadline,
            "no span tree for trace {trace}; received: {names:#?}\n{}",
            controller.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let mut run_roots = Vec::new();
    let traced = sim.traceparents();
    for ((step, call), collection) in steps.iter().zip(["alpha", "beta", "gamma"]) {
        // reconcile -> step
        let reconcile = by_id
            .get(&step.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {} was exported", step.name));
        assert_eq!(reconcile.name, "reconcile WorkflowRun");
        let reconciled = attributes(reconcile);
        assert_eq!(reconciled.get("tether.name").map(String::as_str), Some("three-1"));
        assert_eq!(reconciled.get("tether.namespace"), Some(&ns));
        run_roots.push(reconcile.parent_span_id.clone());
        // step -> HTTP call, with what the issue asks of it.
        let name = step.name.trim_start_matches("step ");
        let step_attributes = attributes(step);
        let call_attributes = attributes(call);
        assert_eq!(
            step_attributes.get("tether.step_kind").map(String::as_str),
            Some("call")
        );
        assert_eq!(call.name, format!("POST step:{name}"), "{call_attributes:?}");
        assert_eq!(call.kind, 3, "a client span"); // SPAN_KIND_CLIENT
        assert_eq!(call_attributes.get("tether.target"), Some(&format!("{ns}/target")));
        assert_eq!(call_attributes.get("tether.operation"), Some(&format!("step:{name}")));
        assert_eq!(
            call_attributes.get("http.response.status_code").map(String::as_str),
            Some("201")
        );
        assert_eq!(call_attributes.get("tether.attempt").map(String::as_str), Some("1"));
        let key = call_attributes
            .get("tether.idempotency_key")
            .expect("the call's idempotency key");
        assert_eq!(step_attributes.get("tether.idempotency_key"), Some(key));
        assert!(key.contains(&format!("/{name}/")), "{key}");
        // The target received this call's span as its parent.
        let expected = format!("00-{trace}-{}-01", hex(&call.span_id));
        assert!(
            traced
                .iter()
                .any(|t| t.request == format!("create {collection}") && t.traceparent == expected),
            "the simulator received traceparent {expected} on create {collection}: {traced:#?}"
        );
    }
    // Every reconcile of the run hangs under the same (run) span.
    run_roots.dedup();
    assert_eq!(run_roots.len(), 1, "one run root: {run_roots:?}");
    assert_eq!(run_roots[0].len(), 8, "the reconciles have a parent");
    // ...which is exported: the run's own span, a root, from its creation
    // to its end (it arrives with the batch after the run ended).
    let deadline = Instant::now() + Duration::from_secs(30);
    let root = loop {
        let spans = receiver.spans();
        if let Some(root) = spans.into_iter().find(|s| s.span_id == run_roots[0]) {
            break root;
        }
        assert!(Instant::now() < deadline, "the run's root span was never exported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(root.name, "run three");
    assert_eq!(hex(&root.trace_id), trace);
    assert!(root.parent_span_id.is_empty(), "the run's span is the trace's root");
    let run_attributes = attributes(&root);
    assert_eq!(
        run_attributes.get("tether.phase").map(String::as_str),
        Some("Succeeded")
    );
    assert_eq!(run_attributes.get("tether.name").map(String::as_str), Some("three-1"));
    for (step, _) in &steps {
        assert!(
            root.start_time_unix_nano <= step.start_time_unix_nano
                && step.end_time_unix_nano <= root.end_time_unix_nano,
            "the run's span covers its steps"
        );
    }

    // No credential anywhere: not the token, not an Authorization header.
    assert!(!spans.is_empty());
    for span in &spans {
        assert!(!span.name.contains(TOKEN), "{}", span.name);
        for (key, value) in attributes(span) {
            assert!(
                !value.contains(TOKEN) && !key.to_ascii_lowercase().contains("authorization"),
                "span {} holds a credential: {key}={value}",
                span.name
            );
        }
    }
    drop(controller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_a_run_records_no_trace_and_targets_get_no_traceparent() {
    let cp = ControlPlane::shared();
    let sim = Simulator::accepting(TOKEN).start();
    let (ns, controller) = start(cp, "untraced", &sim, &[]);
    three_steps(cp, &ns, &controller);
    assert_eq!(cp.jsonpath(&ns, "twr/three-1", "{.status.traceId}"), "");
    assert_eq!(sim.objects("gamma").len(), 1, "the run called the target");
    assert_eq!(sim.traceparents(), vec![], "no traceparent without traces");
    drop(controller);
}
