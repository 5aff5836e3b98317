//! Traces: OpenTelemetry spans for each reconcile, each workflow step and
//! each call to a target, exported over OTLP/HTTP (protobuf) when `tether
//! run --otlp-endpoint` names a receiver, and the W3C `traceparent` header
//! on every call to a target, so a target's own logs join the trace.
//!
//! Off by default, and then free: no exporter, no tracing-opentelemetry
//! layer, no span is even created (each function here returns
//! `Span::none()` or `None` at once).
//!
//! Every reconcile of one WorkflowRun joins one trace, whose id is derived
//! from the run's uid (so no write is needed before the first span) and
//! recorded in the run's status (`traceId`). The run itself is the trace's
//! root: its reconciles are children of a span id derived the same way,
//! and the replica that writes the run's end exports that span (`run
//! <workflow>`, from the run's creation to its end; [`run_ended`]).
//!
//! What a span holds is chosen here, field by field: names, kinds,
//! operations, status codes, attempts and idempotency keys — never a
//! header, a query string, a body or a credential.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, Status, Tracer as _};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use sha2::{Digest, Sha256};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span meant for the trace: the OTLP layer
/// takes only these, the log output leaves them out.
pub const TARGET: &str = "tether::trace";

/// The W3C Trace Context header sent to targets.
pub const TRACEPARENT: &str = "traceparent";

/// How long one export to the receiver may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer of [`run_ended`]'s spans (the layer has its own clone).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

thread_local! {
    /// The ids the next span started on this thread takes ([`RunIds`]).
    static CHOSEN: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for a run's root span, whose ids are derived from
/// the run's uid (the OpenTelemetry API has no other way to choose them).
#[derive(Debug, Default)]
struct RunIds(RandomIdGenerator);

impl IdGenerator for RunIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN
            .with(Cell::get)
            .map_or_else(|| self.0.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN
            .with(Cell::get)
            .map_or_else(|| self.0.new_span_id(), |(_, span)| span)
    }
}

/// Whether traces are exported (an endpoint was configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the OTLP endpoint {0:?} is not an http(s) URL")]
    Endpoint(String),
    #[error("the OTLP exporter cannot be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The exporter's provider; [`Traces::shutdown`] sends what is left.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Flushes the spans not yet sent and stops the exporter. Blocks:
    /// call it off the runtime's workers.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(%err, "traces: the last spans could not be sent");
        }
    }
}

/// The tracing-opentelemetry layer exporting to `endpoint` (a base URL:
/// spans go to `<endpoint>/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// means), and the handle that flushes it. Turns [`enabled`] on. Exports
/// run on `runtime` through the project's own HTTP client.
pub fn layer<S>(
    endpoint: &str,
    runtime: tokio::runtime::Handle,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
        Traces,
    ),
    Error,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let url = traces_url(endpoint)?;
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| Error::Endpoint(format!("{endpoint}: {e}")))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(Exporting { client, runtime })
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("tether")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_id_generator(RunIds::default())
        .build();
    let tracer = provider.tracer("tether");
    let _ = TRACER.set(tracer.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), Traces { provider }))
}

/// `<endpoint>/v1/traces`, refusing what is not an http(s) URL.
fn traces_url(endpoint: &str) -> Result<String, Error> {
    let url = url::Url::parse(endpoint).map_err(|_| Error::Endpoint(endpoint.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Endpoint(endpoint.to_owned()));
    }
    Ok(format!("{}/v1/traces", url.as_str().trim_end_matches('/')))
}

/// The exporter's HTTP client: the project's reqwest, driven on the tokio
/// runtime (the SDK's batch processor exports from a thread of its own,
/// which has no reactor).
#[derive(Debug)]
struct Exporting {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

type Bytes = opentelemetry_http::Bytes;

impl opentelemetry_http::HttpClient for Exporting {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: opentelemetry_http::Request<Bytes>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<opentelemetry_http::Response<Bytes>, opentelemetry_http::HttpError>> + Send + 'b,
        >,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let mut answer = opentelemetry_http::Response::builder().status(response.status().as_u16());
            for (name, value) in response.headers() {
                answer = answer.header(name.as_str(), value.as_bytes());
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        Box::pin(async move { sent.await? })
    }
}

/// What a workflow step tells the calls it makes: their attempt and
/// idempotency key.
#[derive(Debug, Clone, Default)]
pub struct StepCall {
    pub attempt: Option<i32>,
    pub idempotency_key: Option<String>,
}

tokio::task_local! {
    static STEP: StepCall;
}

/// The span of one reconcile of a `kind` object. `run` (a WorkflowRun's
/// uid) puts it into that run's trace; without it, the reconcile starts a
/// trace of its own.
pub fn reconcile_span(kind: &str, namespace: Option<&str>, name: &str, run: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "reconcile",
        otel.name = format!("reconcile {kind}"),
        otel.status_code = tracing::field::Empty,
        tether.kind = kind,
        tether.namespace = namespace.unwrap_or_default(),
        tether.name = name,
    );
    if let Some(uid) = run {
        let (trace, root) = run_ids(uid);
        let parent = SpanContext::new(trace, root, TraceFlags::SAMPLED, true, TraceState::default());
        // The span is not started yet: the parent cannot be refused.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span
}

/// Marks a span as failed (a reconcile that returned an error).
pub fn failed(span: &Span) {
    span.record("otel.status_code", "error");
}

/// Runs `future` — one action on one workflow step — inside its span, and
/// lets the calls it makes know their attempt and idempotency key.
pub async fn in_step<F: Future>(
    step: &str,
    kind: &str,
    action: &str,
    item: Option<i32>,
    call: StepCall,
    future: F,
) -> F::Output {
    use tracing::Instrument;
    if !enabled() {
        return future.await;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "step",
        otel.name = format!("step {step}"),
        tether.step = step,
        tether.step_kind = kind,
        tether.action = action,
        tether.item = item.map(i64::from),
        tether.attempt = call.attempt.map(i64::from),
        tether.idempotency_key = call.idempotency_key.as_deref(),
    );
    STEP.scope(call, future.instrument(span)).await
}

/// The span of one call to a target. `idempotency_key` is the one the call
/// carries, if any; a step's own key and attempt come first.
pub fn http_span(target: &str, operation: &str, method: &str, idempotency_key: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let step = STEP.try_with(Clone::clone).unwrap_or_default();
    tracing::info_span!(
        target: TARGET,
        "http",
        otel.name = format!("{method} {operation}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        tether.target = target,
        tether.operation = operation,
        tether.attempt = step.attempt.map(i64::from),
        tether.idempotency_key = step.idempotency_key.as_deref().or(idempotency_key),
    )
}

/// Records how a call ended on its span: the status code of an answer, or
/// the stable reason of a failure.
pub fn http_outcome(span: &Span, status: Option<u16>, failure: Option<&str>) {
    if span.is_none() {
        return;
    }
    if let Some(status) = status {
        span.record("http.response.status_code", i64::from(status));
    }
    if let Some(reason) = failure {
        span.record("error.type", reason);
        span.record("otel.status_code", "error");
    }
}

/// The `traceparent` value of `span`, when it is part of a trace.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() || span.is_none() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// What [`run_ended`] says of a run.
pub struct RunEnd<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub workflow: &'a str,
    /// The phase it ended in (`Succeeded`, `Failed`, ...).
    pub phase: &'a str,
    pub succeeded: bool,
    /// When it was created: the span's start.
    pub created: Option<SystemTime>,
}

/// Exports the root span of a run that just ended, under the ids its
/// reconciles name as their parent. Called once, by the pass whose write
/// ended the run.
pub fn run_ended(run: &RunEnd<'_>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let mut builder = tracer.span_builder(format!("run {}", run.workflow)).with_attributes([
        opentelemetry::KeyValue::new("tether.kind", "WorkflowRun"),
        opentelemetry::KeyValue::new("tether.namespace", run.namespace.to_owned()),
        opentelemetry::KeyValue::new("tether.name", run.name.to_owned()),
        opentelemetry::KeyValue::new("tether.workflow", run.workflow.to_owned()),
        opentelemetry::KeyValue::new("tether.phase", run.phase.to_owned()),
    ]);
    if let Some(created) = run.created {
        builder = builder.with_start_time(created);
    }
    // The ids are drawn while the span starts, on this thread.
    CHOSEN.with(|chosen| chosen.set(Some(run_ids(run.uid))));
    let mut span = builder.start_with_context(tracer, &opentelemetry::Context::new());
    CHOSEN.with(|chosen| chosen.set(None));
    if !run.succeeded {
        span.set_status(Status::error(run.phase.to_owned()));
    }
    span.end_with_timestamp(SystemTime::now());
}

/// The trace id of the run with this uid, for its status; `None` when
/// traces are off (there is no trace to find).
pub fn run_trace_id(uid: &str) -> Option<String> {
    enabled().then(|| run_ids(uid).0.to_string())
}

/// The trace id and root span id of a run: derived from its uid, so every
/// replica and every reconcile agree without reading anything first.
fn run_ids(uid: &str) -> (TraceId, SpanId) {
    let digest = Sha256::new()
        .chain_update("tether.dev/workflow-run-trace/")
        .chain_update(uid)
        .finalize();
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&digest[..16]);
    span.copy_from_slice(&digest[16..24]);
    // All-zero ids are invalid; a digest that gives one is one in 2^64.
    if trace == [0; 16] {
        trace[15] = 1;
    }
    if span == [0; 8] {
        span[7] = 1;
    }
    (TraceId::from_bytes(trace), SpanId::from_bytes(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_trace_is_the_same_for_every_reconcile_and_differs_between_runs() {
        let (a, a_root) = run_ids("6f1c0a52-0000-4000-8000-000000000001");
        assert_eq!(run_ids("6f1c0a52-0000-4000-8000-000000000001"), (a, a_root));
        let (b, _) = run_ids("6f1c0a52-0000-4000-8000-000000000002");
        assert_ne!(a, b);
        assert_ne!(a, TraceId::INVALID);
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn the_endpoint_is_a_base_url_without_credentials() {
        assert_eq!(
            traces_url("http://collector:4318").ok().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://otel.example/base/").ok().as_deref(),
            Some("https://otel.example/base/v1/traces")
        );
        for refused in ["collector:4318", "ftp://collector", "http://user:secret@collector:4318"] {
            assert!(traces_url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn off_by_default_nothing_is_made() {
        // No layer is installed in unit tests: no span, no header, no id.
        assert!(!enabled());
        assert!(reconcile_span("WorkflowRun", Some("ns"), "r", Some("uid")).is_none());
        assert!(http_span("ns/t", "create", "POST", None).is_none());
        assert_eq!(traceparent(&Span::current()), None);
        assert_eq!(run_trace_id("uid"), None);
    }
}
