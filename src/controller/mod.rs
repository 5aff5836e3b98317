//! The controllers of `tether run`: one per kind, sharing a [`Context`].
//! Each reconcile is thin: it resolves what it needs from in-memory stores
//! (no API reads), calls the adapter port, computes status with pure
//! functions and writes it only when it changed.

pub mod adapter;
pub mod error;
pub mod external_resource;
pub mod guard;
pub mod status;
pub mod target_system;
pub mod workflow;
pub mod workflow_run;

use crate::lock;
pub use error::Error;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::adapter::AnyAdapter;
use crate::adapter::rest::CompiledMapping;
use crate::api::common::reason;
use crate::api::{Adapter, Approval, ExternalResource, TargetSystem, Workflow, WorkflowRun};
use crate::http::backoff;
use crate::http::registry::Registry;
use crate::metrics::Metrics;
use crate::workflow::compile::Compiled as CompiledWorkflow;

/// Field manager of every status Tether writes (server-side apply).
pub const FIELD_MANAGER: &str = "tether";
/// Finalizer of ExternalResources.
pub const EXTERNAL_RESOURCE_FINALIZER: &str = "tether.dev/external-resource";
/// Annotation that forces a resync now: `kubectl annotate xr NAME tether.dev/resync=$(date +%s) --overwrite`.
pub const RESYNC_ANNOTATION: &str = "tether.dev/resync";

/// A failure that reaches a condition: stable reason, message for humans,
/// and whether only a change (not time) can fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub permanent: bool,
    pub retry_after: Option<Duration>,
    /// A create failed in a way that proves nothing was created: the
    /// intent can be dropped, so the next pass creates without a lookup.
    pub create_not_applied: bool,
    /// What a transient failure waits for, which sets how it is retried.
    pub awaits: Awaits,
}

/// What a transient failure waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaits {
    /// Time: exponential backoff up to five minutes.
    Time,
    /// A Secret to be created or fixed (credentials refused or missing),
    /// which Tether does not watch: backoff capped at 15 s.
    Secret,
    /// A referenced ExternalResource to become Ready: its watch event wakes
    /// the resource; the poll interval is only a safety net.
    Reference,
}

impl Failure {
    /// A reference to an object Tether does not see (yet): retried with
    /// backoff rather than left to a watch event, because the referencing
    /// object and the referenced one arrive through different watches and
    /// the event that would wake it can come first.
    pub fn missing(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            permanent: false,
            retry_after: None,
            create_not_applied: false,
            awaits: Awaits::Time,
        }
    }

    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            permanent: true,
            retry_after: None,
            create_not_applied: false,
            awaits: Awaits::Time,
        }
    }
}

impl From<crate::adapter::AdapterError> for Failure {
    fn from(e: crate::adapter::AdapterError) -> Self {
        let retry_after = match &e {
            crate::adapter::AdapterError::Call(call) => call.retry_after(),
            _ => None,
        };
        let awaits = match &e {
            crate::adapter::AdapterError::Call(
                crate::request::CallError::Unauthorized { .. } | crate::request::CallError::BadCredentials(_),
            ) => Awaits::Secret,
            _ => Awaits::Time,
        };
        Self {
            reason: e.reason(),
            message: e.to_string(),
            permanent: e.is_permanent(),
            retry_after,
            create_not_applied: false,
            awaits,
        }
    }
}

/// A compiled mapping, or why it does not compile.
type Compiled = Result<Arc<CompiledMapping>, String>;

/// Compiled REST mappings, one per Adapter generation.
#[derive(Default)]
pub struct MappingCache {
    compiled: Mutex<HashMap<String, (Option<i64>, Compiled)>>,
}

impl MappingCache {
    pub fn get(&self, adapter: &Adapter) -> Result<Arc<CompiledMapping>, String> {
        let name = adapter.name_any();
        let generation = adapter.metadata.generation;
        let mut compiled = lock(&self.compiled);
        if let Some((g, result)) = compiled.get(&name)
            && *g == generation
        {
            return result.clone();
        }
        let result = match &adapter.spec.rest {
            Some(rest) => CompiledMapping::compile(rest)
                .map(Arc::new)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
            None => Err("the Adapter has no REST mapping".into()),
        };
        compiled.insert(name, (generation, result.clone()));
        result
    }

    /// Forgets the mapping of an Adapter that is gone.
    pub fn forget(&self, adapter: &Adapter) {
        lock(&self.compiled).remove(&adapter.name_any());
    }
}

/// How retries after transient failures are spaced: a TargetSystem's
/// `spec.retry` for the calls made to it, else the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// A TargetSystem's `spec.retry` (a delay that does not parse keeps
    /// the default; the base is at least 100 ms, the maximum at least the
    /// base and at most an hour).
    pub fn of(policy: &crate::api::target_system::RetryPolicy) -> Self {
        let default = Self::default();
        let base = policy
            .base_delay
            .to_std()
            .unwrap_or(default.base)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600));
        let max = policy
            .max_delay
            .to_std()
            .unwrap_or(default.max)
            .clamp(base, Duration::from_secs(3600));
        Self { base, max }
    }

    /// The delay after `failures` earlier failures. Credentials are fixed by
    /// editing a Secret, which Tether does not watch: their delay is capped
    /// at 15 s so the fix is noticed soon.
    pub fn delay(&self, failures: u32, awaits: Awaits) -> Duration {
        let cap = if awaits == Awaits::Secret {
            self.max.min(Duration::from_secs(15))
        } else {
            self.max
        };
        backoff::jittered(self.base.min(cap), cap, failures)
    }
}

/// Per-object memory of the last reconcile, so that watch events caused by
/// Tether's own status writes do not call the target again before it is
/// due: after a success, the poll interval; after a transient failure, the
/// backoff delay; after a permanent failure, a change of the object or one
/// of its dependencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    pub generation: Option<i64>,
    pub resync: Option<String>,
    pub dependencies: (Option<i64>, Option<i64>),
    /// A hash of what the object's references resolved to (ids, observed
    /// fields, or why they wait): a referenced object that changes makes
    /// the next pass due at once.
    pub references: Option<String>,
    /// When the next pass is due; `None`: only a change makes it due.
    pub due: Option<std::time::Instant>,
}

impl Freshness {
    /// How long until the next pass is due, if `now` describes the same
    /// object and dependencies; `Duration::MAX` when only a change will do.
    pub fn wait(&self, now: &Freshness, at: std::time::Instant) -> Option<Duration> {
        let same = self.generation == now.generation
            && self.resync == now.resync
            && self.dependencies == now.dependencies
            && self.references == now.references;
        if !same {
            return None;
        }
        match self.due {
            None => Some(Duration::MAX),
            Some(due) if due > at => Some(due - at),
            Some(_) => None,
        }
    }
}

/// Remembers the last generation seen per object, so that watches of
/// related kinds react to spec changes and not to status writes (a
/// TargetSystem's health probe must not wake every resource that uses it).
#[derive(Default)]
pub struct GenerationFilter {
    seen: Mutex<HashMap<String, Option<i64>>>,
}

impl GenerationFilter {
    /// True when `object`'s generation differs from the last one seen.
    pub fn changed<K: kube::Resource>(&self, object: &K) -> bool {
        let key = Self::key(object);
        lock(&self.seen).insert(key, object.meta().generation) != Some(object.meta().generation)
    }

    /// Forgets an object that is gone.
    pub fn forget<K: kube::Resource>(&self, object: &K) {
        lock(&self.seen).remove(&Self::key(object));
    }

    fn key<K: kube::Resource>(object: &K) -> String {
        format!(
            "{}/{}",
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default()
        )
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        lock(&self.seen).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Context {
    pub client: kube::Client,
    pub registry: Arc<Registry>,
    pub mappings: MappingCache,
    pub targets: Store<TargetSystem>,
    pub adapters: Store<Adapter>,
    pub resources: Store<ExternalResource>,
    pub recorder: crate::events::Recorder,
    pub metrics: Arc<Metrics>,
    /// What the ExternalResource controller remembers between passes.
    pub resource_memory: ResourceMemory,
    pub workflows: Store<Workflow>,
    pub runs: Store<WorkflowRun>,
    pub approvals: Store<Approval>,
    /// What the WorkflowRun controller remembers between passes.
    pub run_memory: RunMemory,
    /// Base URL of step callbacks (the webhook endpoint as targets reach it).
    pub callback_base: String,
    /// Webhook and callback keys, read from Secrets and cached.
    pub keys: crate::keys::KeyCache,
    /// ExternalResources to reconcile now (a signed resync push): the
    /// ExternalResource controller's trigger stream.
    pub resync: Resync,
    /// Whether this replica leads (reconciles); a standby serves webhooks
    /// and callbacks only.
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// The shards this replica reconciles (all, unsharded).
    pub shards: crate::shard::Held,
}

/// Per-object memory of the ExternalResource controller (keyed by UID).
#[derive(Default)]
pub struct ResourceMemory {
    /// When each resource's next pass is due (see [`Freshness`]).
    pub fresh: Mutex<HashMap<String, Freshness>>,
    /// Consecutive failures, for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// ExternalResources whose last pass found no object under their name
    /// and whose create was refused before it applied, and when: their
    /// next pass (soon after) creates without a second lookup.
    pub refused_creates: Mutex<HashMap<String, std::time::Instant>>,
    /// The next polls of resources that wait long (in sync).
    pub polls: external_resource::polls::Polls,
}

/// Memory of the WorkflowRun controller.
#[derive(Default)]
pub struct RunMemory {
    /// Compiled definitions by pinned hash: runs of one version share one.
    pub compiled: Mutex<HashMap<String, Arc<CompiledWorkflow>>>,
    /// The resourceVersion of each run's last write by this process.
    pub written: Mutex<HashMap<String, String>>,
}

/// The sending half of the ExternalResource controller's trigger stream
/// (`Controller::reconcile_on`): a push wakes a resource in memory, with
/// no API write (an annotation would cost one per resource and per push,
/// and a watch event round trip).
#[derive(Clone)]
pub struct Resync(futures::channel::mpsc::UnboundedSender<ObjectRef<ExternalResource>>);

impl Resync {
    /// The sender, and the stream to give `Controller::reconcile_on`.
    pub fn channel() -> (
        Self,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<ExternalResource>>,
    ) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        (Self(tx), rx)
    }

    /// Asks for a reconcile of `object`; false when the controller is gone.
    pub fn send(&self, object: ObjectRef<ExternalResource>) -> bool {
        self.0.unbounded_send(object).is_ok()
    }
}

impl Context {
    /// The TargetSystem `name` in `namespace`, from the reflector.
    pub fn target_system(&self, namespace: &str, name: &str) -> Option<Arc<TargetSystem>> {
        self.targets.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn adapter(&self, name: &str) -> Option<Arc<Adapter>> {
        self.adapters.get(&ObjectRef::new(name))
    }

    /// The shared runtime of a TargetSystem (the request port's
    /// implementation): its client, limits, circuit and credentials.
    pub async fn target_for(&self, ts: &TargetSystem) -> Result<Arc<crate::http::Target>, Failure> {
        self.registry.get(ts).await.map_err(|e| Failure {
            reason: e.reason(),
            message: e.to_string(),
            // A missing Secret is fixed by creating it, which Tether does not
            // watch: retry with backoff instead of waiting for a change.
            permanent: false,
            retry_after: None,
            create_not_applied: false,
            awaits: if e.awaits_secret() {
                Awaits::Secret
            } else {
                Awaits::Time
            },
        })
    }

    /// The adapter port for a TargetSystem.
    pub async fn adapter_for(&self, ts: &TargetSystem) -> Result<AnyAdapter, Failure> {
        let adapter_name = &ts.spec.adapter_ref.name;
        let adapter = self.adapter(adapter_name).ok_or_else(|| {
            Failure::missing(
                reason::ADAPTER_NOT_FOUND,
                format!(
                    "Adapter {adapter_name:?} (named by TargetSystem {}) does not exist",
                    ts.name_any()
                ),
            )
        })?;
        let target = self.target_for(ts).await?;
        AnyAdapter::build(&adapter, target, |a| self.mappings.get(a))
            .map_err(|e| Failure::permanent(reason::ADAPTER_INVALID, e.to_string()))
    }

    /// The compiled definition of a pinned spec (compiled once per hash).
    pub fn compiled(
        &self,
        hash: &str,
        spec: &crate::api::workflow::WorkflowSpec,
    ) -> Result<Arc<CompiledWorkflow>, String> {
        if let Some(compiled) = lock(&self.run_memory.compiled).get(hash) {
            return Ok(compiled.clone());
        }
        let compiled = Arc::new(CompiledWorkflow::compile(spec).map_err(|errors| errors.join("; "))?);
        lock(&self.run_memory.compiled).insert(hash.to_owned(), compiled.clone());
        Ok(compiled)
    }

    /// The delay before retrying `key` after one more failure, with the
    /// default policy (0.5 s doubling up to 5 min).
    pub fn backoff(&self, key: &str, failure: &Failure) -> Duration {
        self.backoff_by(key, failure, &Backoff::default())
    }

    /// The delay before retrying `key` after one more failure: exponential
    /// from `policy.base` up to `policy.max`, with full jitter.
    pub fn backoff_by(&self, key: &str, failure: &Failure, policy: &Backoff) -> Duration {
        let mut failures = lock(&self.resource_memory.failures);
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let delay = policy.delay(*count - 1, failure.awaits);
        failure
            .retry_after
            .map_or(delay, |after| after.max(delay.min(after * 2)))
    }

    pub fn succeeded(&self, key: &str) {
        lock(&self.resource_memory.failures).remove(key);
    }

    /// Frees what was kept for an ExternalResource that is gone (its
    /// freshness, booked poll and failure count), so memory follows the
    /// live objects.
    pub fn forget_resource(&self, er: &ExternalResource) {
        let key = external_resource::key(er);
        let memory = &self.resource_memory;
        external_resource::forget_freshness(self, er);
        lock(&memory.failures).remove(&key);
        lock(&memory.refused_creates).remove(&key);
    }

    /// Frees what was kept for a WorkflowRun that is gone (its last write).
    pub fn forget_run(&self, run: &WorkflowRun) {
        if let Some(uid) = run.metadata.uid.as_deref() {
            lock(&self.run_memory.written).remove(uid);
        }
    }

    /// Drops the shared target of a TargetSystem that is gone.
    pub fn forget_target(&self, ts: &TargetSystem) {
        self.registry.forget(ts);
    }

    /// Drops the compiled mapping of an Adapter that is gone.
    pub fn forget_adapter(&self, adapter: &Adapter) {
        self.mappings.forget(adapter);
    }

    /// Entries kept per ExternalResource (freshness, booked polls, failure counts) and
    /// per WorkflowRun (last writes): what [`Self::forget_resource`] and
    /// [`Self::forget_run`] free.
    pub fn remembered(&self) -> (usize, usize) {
        (
            lock(&self.resource_memory.fresh).len()
                + self.resource_memory.polls.len()
                + lock(&self.resource_memory.failures).len()
                + lock(&self.resource_memory.refused_creates).len(),
            lock(&self.run_memory.written).len(),
        )
    }

    /// Server-side applies `status` to the `/status` of `name` with Tether's
    /// field manager, and counts the write.
    pub async fn apply_status<K>(
        &self,
        api: &kube::Api<K>,
        name: &str,
        kind: &'static str,
        status: &impl serde::Serialize,
    ) -> Result<(), kube::Error>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.apply_status_at(api, name, kind, None, status).await.map(|_| ())
    }

    /// [`Self::apply_status`], conditional on `resource_version` when given:
    /// a writer that read an older version (a stale cache, a deposed
    /// leader) gets 409 Conflict instead of overwriting newer progress.
    /// Returns the new resourceVersion.
    pub async fn apply_status_at<K>(
        &self,
        api: &kube::Api<K>,
        name: &str,
        kind: &'static str,
        resource_version: Option<&str>,
        status: &impl serde::Serialize,
    ) -> Result<Option<String>, kube::Error>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let patch = status_body::<K>(name, resource_version, status);
        let params = kube::api::PatchParams::apply(FIELD_MANAGER).force();
        let written = api
            .patch_status(name, &params, &kube::api::Patch::Apply(&patch))
            .await?;
        self.metrics
            .status_writes
            .get_or_create(&crate::metrics::KindLabels { kind })
            .inc();
        Ok(written.meta().resource_version.clone())
    }

    /// Publishes an Event; failures to publish are logged, never fatal.
    pub async fn publish<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // The API server refuses an Event whose note is over 1 KiB.
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(crate::text::shortened(&note, 1000)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(%err, reason, "could not publish an event");
        }
    }
}

/// The server-side apply body of a status write. With a resourceVersion it
/// is conditional: a writer that read an older version (a stale leader, a
/// stale cache) gets 409 Conflict instead of overwriting newer progress.
pub fn status_body<K: kube::Resource<DynamicType = ()>>(
    name: &str,
    resource_version: Option<&str>,
    status: &impl serde::Serialize,
) -> serde_json::Value {
    let metadata = match resource_version {
        Some(rv) => serde_json::json!({ "name": name, "resourceVersion": rv }),
        None => serde_json::json!({ "name": name }),
    };
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::target_system::RetryPolicy;

    #[test]
    fn a_targets_retry_policy_spaces_the_retries_of_calls_to_it() {
        let policy = Backoff::of(&RetryPolicy {
            base_delay: "10s".into(),
            max_delay: "40s".into(),
        });
        assert_eq!(
            policy,
            Backoff {
                base: Duration::from_secs(10),
                max: Duration::from_secs(40)
            }
        );
        for failures in 0..20 {
            let delay = policy.delay(failures, Awaits::Time);
            // Full jitter, floored at a tenth of the cap, never above max.
            assert!(delay >= Duration::from_secs(1), "{delay:?}");
            assert!(delay <= Duration::from_secs(40), "{delay:?}");
        }
        // Credentials keep their short cap whatever the policy.
        assert!(policy.delay(10, Awaits::Secret) <= Duration::from_secs(15));
        // A maximum below the base is raised to it; nonsense keeps the default.
        let odd = Backoff::of(&RetryPolicy {
            base_delay: "2s".into(),
            max_delay: "1s".into(),
        });
        assert_eq!(odd.max, Duration::from_secs(2));
        let unparsable = Backoff::of(&RetryPolicy {
            base_delay: "soon".into(),
            max_delay: "5m".into(),
        });
        assert_eq!(unparsable.base, Backoff::default().base);
    }

    use kube::runtime::events::Reporter;
    use kube::runtime::reflector;

    fn context() -> Context {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let metrics = Metrics::shared();
        Context {
            client: client.clone(),
            registry: Arc::new(Registry::new(client.clone(), None, metrics.clone())),
            mappings: MappingCache::default(),
            targets: reflector::store().0,
            adapters: reflector::store().0,
            resources: reflector::store().0,
            recorder: crate::events::Recorder::new(
                client.clone(),
                Reporter {
                    controller: "tether".into(),
                    instance: None,
                },
            ),
            metrics,
            resource_memory: ResourceMemory::default(),
            workflows: reflector::store().0,
            runs: reflector::store().0,
            approvals: reflector::store().0,
            run_memory: RunMemory::default(),
            callback_base: String::new(),
            keys: crate::keys::KeyCache::default(),
            resync: Resync::channel().0,
            leading: tokio::sync::watch::channel(true).1,
            shards: crate::shard::Held::all(),
        }
    }

    fn resource(name: &str) -> ExternalResource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "ExternalResource",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
            "spec": {"targetRef": {"name": "crm"}, "type": "contact", "properties": {}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_booked_poll_wakes_its_resource_unless_a_later_pass_was_booked_or_it_is_gone() {
        use futures::StreamExt;
        let mut ctx = context();
        let (resync, mut requests) = Resync::channel();
        ctx.resync = resync;
        let (store, mut writer) = reflector::store();
        let (due, rebooked) = (resource("due"), resource("rebooked"));
        for er in [&due, &rebooked] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(er.clone()));
        }
        ctx.resources = store;
        let fresh = |due: std::time::Instant| Freshness {
            generation: None,
            resync: None,
            dependencies: (None, None),
            references: None,
            due: Some(due),
        };
        let now = std::time::Instant::now();
        lock(&ctx.resource_memory.fresh).insert(external_resource::key(&due), fresh(now));
        let later = now + std::time::Duration::from_secs(3600);
        lock(&ctx.resource_memory.fresh).insert(external_resource::key(&rebooked), fresh(later));

        assert!(external_resource::wake_booked(&ctx, "shop", "due"));
        assert!(external_resource::wake_booked(&ctx, "shop", "rebooked"));
        assert!(external_resource::wake_booked(&ctx, "shop", "deleted"));
        drop(ctx);
        let woken: Vec<String> = requests.by_ref().map(|r| r.name).collect().await;
        assert_eq!(woken, ["due"], "only the resource whose pass is due is woken");
    }

    #[tokio::test]
    async fn what_the_controllers_keep_per_object_is_freed_when_the_object_goes() {
        let ctx = context();
        let (gone, kept) = (resource("gone"), resource("kept"));
        let due = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let fresh = Freshness {
            generation: Some(1),
            resync: None,
            dependencies: (None, None),
            references: None,
            due: Some(due),
        };
        for er in [&gone, &kept] {
            lock(&ctx.resource_memory.fresh).insert(external_resource::key(er), fresh.clone());
            ctx.resource_memory.polls.book("shop", &er.name_any(), due);
        }
        ctx.backoff(
            &external_resource::key(&gone),
            &Failure::missing("TargetNotFound", "no target"),
        );
        let mut run = WorkflowRun::new(
            "nightly",
            crate::api::workflow_run::WorkflowRunSpec {
                workflow_ref: crate::api::common::ObjectRef::new("backup"),
                parameters: serde_json::json!({}),
                cancel: false,
                retry_of: None,
            },
        );
        run.metadata.uid = Some("uid-run".into());
        lock(&ctx.run_memory.written).insert("uid-run".into(), "42".into());
        assert_eq!(ctx.remembered(), (5, 1));

        ctx.forget_resource(&gone);
        ctx.forget_run(&run);
        assert_eq!(ctx.remembered(), (2, 0), "only the live resource is remembered");
        assert_eq!(
            ctx.resource_memory.polls.len(),
            1,
            "the gone resource's poll is unbooked"
        );
        assert!(lock(&ctx.resource_memory.fresh).contains_key(&external_resource::key(&kept)));
    }
}
