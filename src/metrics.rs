//! Prometheus metrics of `tether run`, served on `/metrics`. Labels never
//! carry secrets: targets are `namespace/name`, outcomes are stable labels.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub target: String,
    pub operation: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabels {
    pub purpose: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Every metric `tether run` exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub rate_limiter_wait: Family<TargetLabels, Histogram>,
    pub circuit_open: Family<TargetLabels, Gauge>,
    pub status_writes: Family<KindLabels, Counter>,
    pub leader: Gauge,
    /// Shards this process holds (`--shards` above 1).
    pub shards_held: Gauge,
    pub runs: Family<PhaseLabels, Counter>,
    pub step_duration: Family<OutcomeLabels, Histogram>,
    pub compensations: Family<OutcomeLabels, Counter>,
    pub webhook_requests: Family<OutcomeLabels, Counter>,
    /// Reads of webhook and callback keys from their Secrets (the cache
    /// keeps refused requests from costing one each).
    pub key_reads: Family<PurposeLabels, Counter>,
    /// Objects in each kind's cache (src/cache.rs).
    pub cached_objects: Family<KindLabels, Gauge>,
    /// Objects the controllers keep something for (freshness, failure
    /// counts, booked polls, last writes, references, generations), by kind: they follow
    /// the live objects.
    pub remembered_objects: Family<KindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let rate_limiter_wait = Family::<TargetLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let circuit_open = Family::<TargetLabels, Gauge>::default();
        let status_writes = Family::<KindLabels, Counter>::default();
        let leader = Gauge::default();
        let shards_held = Gauge::default();
        let runs = Family::<PhaseLabels, Counter>::default();
        let step_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 20))
        });
        let compensations = Family::<OutcomeLabels, Counter>::default();
        let webhook_requests = Family::<OutcomeLabels, Counter>::default();
        let key_reads = Family::<PurposeLabels, Counter>::default();
        let cached_objects = Family::<KindLabels, Gauge>::default();
        let remembered_objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "cached_objects",
            "Objects in each kind's cache, by kind",
            cached_objects.clone(),
        );
        registry.register(
            "remembered_objects",
            "Entries the controllers keep per object (freshness, booked polls, failure counts, last writes, references), by kind",
            remembered_objects.clone(),
        );
        registry.register("workflow_runs", "Workflow runs entering each phase", runs.clone());
        registry.register(
            "workflow_step_duration_seconds",
            "Time from a step's start to its end, by outcome",
            step_duration.clone(),
        );
        registry.register(
            "workflow_compensations",
            "Compensated steps, by outcome",
            compensations.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook trigger requests, by outcome (bad_signature: refused)",
            webhook_requests.clone(),
        );
        registry.register(
            "key_reads",
            "Reads of webhook and callback keys from their Secrets, by purpose",
            key_reads.clone(),
        );
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile, by kind",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by kind and reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "http_requests",
            "Calls to target systems, by target, operation and outcome",
            http_requests.clone(),
        );
        registry.register(
            "rate_limiter_wait_seconds",
            "Time calls waited for the target's rate limiter",
            rate_limiter_wait.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while a target's circuit breaker is open",
            circuit_open.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes to the API server, by kind",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease (sharded: at least one shard Lease)",
            leader.clone(),
        );
        registry.register("shards_held", "Shard Leases this process holds", shards_held.clone());
        Self {
            registry,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            http_requests,
            rate_limiter_wait,
            circuit_open,
            status_writes,
            leader,
            shards_held,
            runs,
            step_duration,
            compensations,
            webhook_requests,
            key_reads,
            cached_objects,
            remembered_objects,
        }
        .with_known_series()
    }
}

/// The kinds whose reconciles are counted.
pub const KINDS: [&str; 5] = ["Adapter", "TargetSystem", "ExternalResource", "Workflow", "WorkflowRun"];

impl Metrics {
    /// Creates every series whose labels are known in advance, at zero: a
    /// series that appears only with its first event makes `rate()` and
    /// dashboards blind until then (Prometheus' advice: initialise what
    /// you can). Series per target appear with the target's first call.
    fn with_known_series(self) -> Self {
        for kind in KINDS {
            let _ = self.reconciles.get_or_create(&KindLabels { kind });
            let _ = self.reconcile_duration.get_or_create(&KindLabels { kind });
            let _ = self.status_writes.get_or_create(&KindLabels { kind });
            let _ = self.reconcile_errors.get_or_create(&ErrorLabels {
                kind,
                reason: crate::api::common::reason::INTERNAL_ERROR,
            });
        }
        for phase in [
            "Running",
            "Succeeded",
            "Failed",
            "Compensated",
            "CompensationFailed",
            "Cancelled",
        ] {
            let _ = self.runs.get_or_create(&PhaseLabels { phase: phase.into() });
        }
        for outcome in ["succeeded", "failed"] {
            let _ = self.step_duration.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["compensated", "failed"] {
            let _ = self.compensations.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["accepted", "replayed", "bad_signature", "stale"] {
            let _ = self.webhook_requests.get_or_create(&OutcomeLabels { outcome });
        }
        self
    }
}

impl Metrics {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn observe_reconcile(&self, kind: &'static str, took: Duration) {
        let _ = self.reconciles.get_or_create(&KindLabels { kind }).inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, kind: &'static str, reason: &'static str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { kind, reason }).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
