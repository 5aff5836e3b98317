//! The caches of `tether run`: one watch per kind, feeding one store that
//! every controller and lookup of that kind shares, with each object made
//! lean before it is stored.
//!
//! - **Lean objects.** `metadata.managedFields` and the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation are
//!   dropped before the store ([`lean`]): no reconcile reads them, and they
//!   are a large part of an object (one managedFields entry per field
//!   manager, each listing the fields it owns; the annotation is a second
//!   copy of the whole spec).
//! - **One watch, many subscribers.** A kind that is watched for several
//!   purposes (ExternalResources: their controller, the references between
//!   them, the runs that own them) costs one watch, one listing per relist
//!   and one copy in memory; each subscriber gets the objects the watch
//!   touched as shared `Arc`s ([`Cache::applied`], [`Cache::touched`],
//!   [`Cache::deleted`]).
//! - **Relists.** kube-runtime's store builds a relist's listing beside the
//!   old one and swaps them when it is complete, so a relist peaks at twice
//!   the steady store, no more. Objects the new listing no longer holds were
//!   deleted while the watch was away: they are reported as deletions, so
//!   whatever was kept per object is freed for them too.
//!
//! Touches: the API server (the watch), nothing else.

use std::sync::Arc;

use futures::stream::{BoxStream, Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use tokio::sync::mpsc;

/// The annotation `kubectl apply` (client side) keeps a copy of the whole
/// object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Objects a subscriber may fall behind by before the watch waits for it.
const BUFFER: usize = 1024;

/// Drops what no reconcile reads: managed fields and the last-applied
/// annotation.
pub fn lean<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What a subscriber hears of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Interest {
    /// Objects created or changed (listed ones included): what a
    /// controller reconciles.
    Applied,
    /// Objects created, changed or deleted: what wakes related objects.
    Touched,
    /// Objects deleted: what frees per-object state.
    Deleted,
}

/// One watch of `K` and the store it feeds, before it runs: take the store
/// and the subscriptions, then [`Cache::run`].
pub struct Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    events: BoxStream<'static, watcher::Result<Event<K>>>,
    writer: Writer<K>,
    subscribers: Vec<(Interest, mpsc::Sender<Arc<K>>)>,
    /// What the kind drops besides [`lean`]'s fields, if anything.
    slim: Option<fn(&mut K)>,
    /// While this says false, only deletions are passed on (see
    /// [`Cache::quiet_until`]).
    gate: Option<tokio::sync::watch::Receiver<bool>>,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// A cache of the objects `events` (a watch) reports.
    pub fn new(events: BoxStream<'static, watcher::Result<Event<K>>>) -> Self {
        Self {
            events,
            writer: Writer::default(),
            subscribers: Vec::new(),
            slim: None,
            gate: None,
        }
    }

    /// A cache of the objects of `K` in `scope`, watched with `config`.
    pub fn watch(scope: &crate::scope::Scope, client: &kube::Client, config: watcher::Config) -> Self
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let writer = Writer::default();
        let events = scope.watch(client, config, writer.as_reader());
        Self {
            events,
            writer,
            subscribers: Vec::new(),
            slim: None,
            gate: None,
        }
    }

    /// Also applies `slim` to each object before it is stored (what only
    /// the kind knows it can drop or share).
    pub fn slimmed(mut self, slim: fn(&mut K)) -> Self {
        self.slim = Some(slim);
        self
    }

    /// Keeps the store filled but tells the applied and touched subscribers
    /// nothing until `open` says true (a standby's caches are warm for its
    /// webhooks while its controllers wait for the Lease; they reconcile
    /// every cached object once when they start). Deletions are always
    /// passed on: what was kept per object is freed on a standby too.
    pub fn quiet_until(mut self, open: tokio::sync::watch::Receiver<bool>) -> Self {
        self.gate = Some(open);
        self
    }

    /// The store (every clone reads the same objects).
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// Objects created or changed, listed ones included: the trigger of the
    /// kind's own controller (`Controller::for_shared_stream`).
    pub fn applied(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(Interest::Applied)
    }

    /// Objects created, changed or deleted: the trigger of related objects
    /// (`watches_shared_stream`, `owns_shared_stream`).
    pub fn touched(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(Interest::Touched)
    }

    /// Objects deleted (also those a relist no longer lists): where
    /// per-object state is freed.
    pub fn deleted(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe(Interest::Deleted)
    }

    fn subscribe(&mut self, interest: Interest) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.subscribers.push((interest, tx));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|object| (object, rx)) })
    }

    /// Runs the watch (retried with backoff) until the process ends, and
    /// returns the store.
    pub fn run(self) -> Store<K> {
        self.spawn().0
    }

    /// Runs the watch until the returned handle aborts it (a sharded
    /// replica's caches live as long as its set of shards); returns the
    /// store. The subscribers' streams end with it.
    pub fn spawn(self) -> (Store<K>, tokio::task::AbortHandle) {
        let store = self.store();
        let task = tokio::spawn(self.drive());
        (store, task.abort_handle())
    }

    /// The watch loop: store each event, then tell the subscribers. They
    /// get the store's own `Arc`s (a listing is announced once complete,
    /// from the store), so a subscriber that is behind holds no copies.
    async fn drive(self) {
        let Self {
            events,
            mut writer,
            mut subscribers,
            slim,
            gate,
        } = self;
        let reader = writer.as_reader();
        let lean = move |object: &mut K| {
            lean(object);
            if let Some(slim) = slim {
                slim(object);
            }
        };
        let mut events = std::pin::pin!(events.modify(lean).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    tracing::debug!(%error, kind = %K::kind(&()), "watch failed; retrying with backoff");
                    continue;
                }
            };
            let mut changes = Vec::new();
            match &event {
                Event::InitDone => {
                    // The swap drops what the listing did not hold: those
                    // objects were deleted while the watch was away.
                    let before = reader.state();
                    writer.apply_watcher_event(&event);
                    changes.extend(
                        before
                            .into_iter()
                            .filter(|old| reader.get(&ObjectRef::from_obj(old.as_ref())).is_none())
                            .map(|old| (Interest::Deleted, old)),
                    );
                    changes.extend(reader.state().into_iter().map(|object| (Interest::Applied, object)));
                }
                Event::Apply(object) => {
                    writer.apply_watcher_event(&event);
                    if let Some(stored) = reader.get(&ObjectRef::from_obj(object)) {
                        changes.push((Interest::Applied, stored));
                    }
                }
                Event::Init | Event::InitApply(_) => writer.apply_watcher_event(&event),
                Event::Delete(_) => {
                    writer.apply_watcher_event(&event);
                    if let Event::Delete(object) = event {
                        changes.push((Interest::Deleted, Arc::new(object)));
                    }
                }
            }
            let open = gate.as_ref().is_none_or(|gate| *gate.borrow());
            for (change, object) in changes {
                for (interest, tx) in &subscribers {
                    let heard = *interest == change || *interest == Interest::Touched;
                    if heard && (open || *interest == Interest::Deleted) {
                        // A subscriber that is gone (its controller stopped)
                        // is skipped; the others go on.
                        let _ = tx.send(object.clone()).await;
                    }
                }
            }
            subscribers.retain(|(_, tx)| !tx.is_closed());
        }
    }
}

/// A cache that nothing subscribes to, started: a store for lookups.
pub fn lookup<K>(events: BoxStream<'static, watcher::Result<Event<K>>>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    Cache::new(events).run()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::api::ObjectMeta;

    use super::*;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    ..ManagedFieldsEntry::default()
                }]),
                annotations: Some(BTreeMap::from([
                    (LAST_APPLIED.to_owned(), "{\"a whole\": \"copy\"}".to_owned()),
                    ("team".to_owned(), "payments".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
        let mut names: Vec<String> = objects
            .iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    /// Runs a cache over `events` to their end; returns the store and what
    /// the applied, touched and deleted subscribers heard.
    async fn replay(events: Vec<Event<ConfigMap>>) -> (Store<ConfigMap>, [Vec<Arc<ConfigMap>>; 3]) {
        let mut cache = Cache::new(futures::stream::iter(events.into_iter().map(Ok)).boxed());
        let (applied, touched, deleted) = (cache.applied(), cache.touched(), cache.deleted());
        let store = cache.run();
        let (applied, touched, deleted) = tokio::join!(
            applied.collect::<Vec<_>>(),
            touched.collect::<Vec<_>>(),
            deleted.collect::<Vec<_>>()
        );
        (store, [applied, touched, deleted])
    }

    #[tokio::test]
    async fn a_quiet_cache_fills_its_store_and_passes_on_only_deletions_until_it_is_opened() {
        let (open, gate) = tokio::sync::watch::channel(false);
        let (events_tx, events_rx) = futures::channel::mpsc::unbounded();
        let mut cache = Cache::new(events_rx.map(Ok).boxed()).quiet_until(gate);
        let (applied, deleted) = (cache.applied(), cache.deleted());
        let (mut applied, mut deleted) = (Box::pin(applied), Box::pin(deleted));
        let store = cache.run();
        for event in [
            Event::Init,
            Event::InitApply(cm("a")),
            Event::InitApply(cm("b")),
            Event::InitDone,
            Event::Delete(cm("a")),
        ] {
            events_tx.unbounded_send(event).unwrap_or_else(|e| panic!("{e}"));
        }
        let gone = deleted.next().await.unwrap_or_else(|| panic!("no deletion heard"));
        assert_eq!(gone.metadata.name.as_deref(), Some("a"));
        assert_eq!(names(&store.state()), ["b"], "the store is filled while quiet");
        open.send_replace(true);
        events_tx
            .unbounded_send(Event::Apply(cm("c")))
            .unwrap_or_else(|e| panic!("{e}"));
        let first = applied.next().await.unwrap_or_else(|| panic!("nothing applied heard"));
        assert_eq!(
            first.metadata.name.as_deref(),
            Some("c"),
            "nothing was passed on before the cache was opened"
        );
    }

    #[test]
    fn lean_objects_lose_managed_fields_and_the_last_applied_copy_but_keep_other_annotations() {
        let mut object = cm("a");
        lean(&mut object);
        assert_eq!(object.metadata.managed_fields, None);
        assert_eq!(
            object.metadata.annotations,
            Some(BTreeMap::from([("team".to_owned(), "payments".to_owned())]))
        );
        let mut bare = cm("b");
        bare.metadata.annotations = Some(BTreeMap::from([(LAST_APPLIED.to_owned(), "{}".to_owned())]));
        lean(&mut bare);
        assert_eq!(bare.metadata.annotations, None, "no empty map is kept");
    }

    #[tokio::test]
    async fn the_store_holds_lean_objects_and_every_subscriber_hears_of_them() {
        let (store, [applied, touched, deleted]) = replay(vec![
            Event::Init,
            Event::InitApply(cm("a")),
            Event::InitApply(cm("b")),
            Event::InitDone,
            Event::Apply(cm("c")),
            Event::Delete(cm("a")),
        ])
        .await;
        assert_eq!(names(&store.state()), ["b", "c"]);
        assert!(store.state().iter().all(|o| o.metadata.managed_fields.is_none()));
        assert_eq!(names(&applied), ["a", "b", "c"]);
        assert_eq!(names(&touched), ["a", "a", "b", "c"]);
        assert_eq!(names(&deleted), ["a"]);
        assert!(applied.iter().all(|o| o.metadata.managed_fields.is_none()));
    }

    #[tokio::test]
    async fn a_relist_keeps_what_it_lists_and_reports_what_it_no_longer_lists_as_deleted() {
        let (store, [applied, _, deleted]) = replay(vec![
            Event::Init,
            Event::InitApply(cm("kept")),
            Event::InitApply(cm("deleted-while-away")),
            Event::InitDone,
            // 410 Gone: the watcher lists again.
            Event::Init,
            Event::InitApply(cm("kept")),
            Event::InitApply(cm("created-while-away")),
            Event::InitDone,
        ])
        .await;
        assert_eq!(names(&store.state()), ["created-while-away", "kept"]);
        assert_eq!(names(&deleted), ["deleted-while-away"]);
        assert_eq!(
            names(&applied),
            ["created-while-away", "deleted-while-away", "kept", "kept"]
        );
    }
}
