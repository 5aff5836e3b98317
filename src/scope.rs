//! What one `tether run` watches: every namespace, one, or a list, and
//! optionally only the objects that match a label selector.
//!
//! A list of namespaces is one watch per namespace merged into one stream
//! for one store. kube-runtime's store treats a watcher's relist
//! (`Init` … `InitDone`) as "replace everything", which would let one
//! namespace's relist drop every other namespace's objects; so after the
//! first complete listing of all namespaces, a namespace's relist becomes
//! `Apply`s of what it lists and `Delete`s of what it no longer lists. The
//! merge remembers only the keys it saw per namespace; the objects it
//! reports deleted come from the store it feeds (no second copy).
//!
//! The selector filters what the controllers *reconcile* (ExternalResources,
//! Workflows, WorkflowRuns, TargetSystems); lookups (a run's Workflow, a
//! resource's TargetSystem, Adapters, Approvals, Secret versions) see the
//! whole scope, so a labelled resource can use an unlabelled TargetSystem.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::stream::{self, BoxStream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, Resource};

/// Namespaces and selector of this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    /// A label selector (`team=payments`, `tier in (a,b)`), if any.
    pub selector: Option<String>,
}

impl Scope {
    /// From `--namespace a,b` (or one, or none) and `--selector`.
    pub fn new(namespaces: &[String], selector: Option<&str>) -> Self {
        let mut list: Vec<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        list.sort();
        list.dedup();
        Self {
            namespaces: list,
            selector: selector.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned),
        }
    }

    /// The namespace leases and defaults refer to: the only one, or none.
    pub fn single_namespace(&self) -> Option<&str> {
        match self.namespaces.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The watcher configuration of objects the controllers reconcile.
    pub fn reconciled(&self) -> watcher::Config {
        match &self.selector {
            Some(selector) => watcher::Config::default().labels(selector),
            None => watcher::Config::default(),
        }
    }

    /// Watch events of `K` in this scope, with `config`, for the store
    /// `feeds` (the one the events are applied to); one merged stream for a
    /// list of namespaces (see the module's notes on relists).
    pub fn watch<K>(
        &self,
        client: &Client,
        config: watcher::Config,
        feeds: Store<K>,
    ) -> BoxStream<'static, watcher::Result<Event<K>>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        match self.namespaces.as_slice() {
            [] => watch(Api::<K>::all(client.clone()), config).boxed(),
            [one] => watch(Api::<K>::namespaced(client.clone(), one), config).boxed(),
            many => {
                let streams: Vec<_> = many
                    .iter()
                    .enumerate()
                    .map(|(i, ns)| {
                        watch(Api::<K>::namespaced(client.clone(), ns), config.clone())
                            .default_backoff()
                            .map(move |event| (i, event))
                            .boxed()
                    })
                    .collect();
                merge(many.len(), streams, feeds)
            }
        }
    }
}

/// One namespace's watch, tagged with its index.
type Tagged<K> = BoxStream<'static, (usize, watcher::Result<Event<K>>)>;

fn merge<K>(
    namespaces: usize,
    streams: Vec<Tagged<K>>,
    store: Store<K>,
) -> BoxStream<'static, watcher::Result<Event<K>>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let state = Arc::new(Mutex::new(Merger::new(namespaces, store)));
    let events = stream::select_all(streams).flat_map(move |(i, event)| {
        let out = match event {
            Ok(event) => state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next(i, event)
                .into_iter()
                .map(Ok)
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(out)
    });
    // The store starts one listing, finished when every namespace listed.
    stream::once(async { Ok(Event::Init) }).chain(events).boxed()
}

/// The state that turns per-namespace relists into a correct merged store.
struct Merger<K: Resource<DynamicType = ()> + 'static> {
    /// Keys of the objects last seen, per namespace: a relist deletes what
    /// it misses (the object itself is read from `store`).
    known: Vec<HashSet<ObjectRef<K>>>,
    /// The store the merged events feed.
    store: Store<K>,
    /// Namespaces whose first listing is complete.
    listed: Vec<bool>,
    /// Every namespace listed once: the store is ready.
    ready: bool,
    /// Keys seen during a namespace's relist in progress.
    relisting: Vec<Option<HashSet<ObjectRef<K>>>>,
}

impl<K: Resource<DynamicType = ()> + Clone> Merger<K> {
    fn new(namespaces: usize, store: Store<K>) -> Self {
        Self {
            known: (0..namespaces).map(|_| HashSet::new()).collect(),
            store,
            listed: vec![false; namespaces],
            ready: false,
            relisting: (0..namespaces).map(|_| None).collect(),
        }
    }

    fn next(&mut self, i: usize, event: Event<K>) -> Vec<Event<K>> {
        if i >= self.known.len() {
            return vec![];
        }
        match event {
            Event::Init => {
                if self.ready {
                    self.relisting[i] = Some(HashSet::new());
                }
                vec![]
            }
            Event::InitApply(object) => {
                let key = key(&object);
                self.known[i].insert(key.clone());
                if let Some(seen) = self.relisting[i].as_mut() {
                    seen.insert(key);
                    vec![Event::Apply(object)]
                } else if self.ready {
                    vec![Event::Apply(object)]
                } else {
                    vec![Event::InitApply(object)]
                }
            }
            Event::InitDone => {
                if let Some(seen) = self.relisting[i].take() {
                    let gone: Vec<ObjectRef<K>> =
                        self.known[i].iter().filter(|k| !seen.contains(*k)).cloned().collect();
                    for k in &gone {
                        self.known[i].remove(k);
                    }
                    return gone
                        .into_iter()
                        .filter_map(|k| self.store.get(&k))
                        .map(|object| Event::Delete(object.as_ref().clone()))
                        .collect();
                }
                self.listed[i] = true;
                if !self.ready && self.listed.iter().all(|l| *l) {
                    self.ready = true;
                    return vec![Event::InitDone];
                }
                vec![]
            }
            Event::Apply(object) => {
                self.known[i].insert(key(&object));
                vec![Event::Apply(object)]
            }
            Event::Delete(object) => {
                self.known[i].remove(&key(&object));
                vec![Event::Delete(object)]
            }
        }
    }
}

/// An object's key without the version and UID (two strings fewer).
fn key<K: Resource<DynamicType = ()>>(object: &K) -> ObjectRef<K> {
    let meta = object.meta();
    let key = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    match meta.namespace.as_deref() {
        Some(namespace) => key.within(namespace),
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn names(events: &[Event<ConfigMap>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Init => "init".to_owned(),
                Event::InitApply(o) => format!("initapply {}", o.metadata.name.clone().unwrap_or_default()),
                Event::InitDone => "initdone".to_owned(),
                Event::Apply(o) => format!("apply {}", o.metadata.name.clone().unwrap_or_default()),
                Event::Delete(o) => format!("delete {}", o.metadata.name.clone().unwrap_or_default()),
            })
            .collect()
    }

    /// A merger and the store its events feed.
    struct Fed {
        merger: Merger<ConfigMap>,
        writer: kube::runtime::reflector::store::Writer<ConfigMap>,
    }

    impl Fed {
        fn new(namespaces: usize) -> Self {
            let writer = kube::runtime::reflector::store::Writer::default();
            Self {
                merger: Merger::new(namespaces, writer.as_reader()),
                writer,
            }
        }

        fn next(&mut self, i: usize, event: Event<ConfigMap>) -> Vec<Event<ConfigMap>> {
            let out = self.merger.next(i, event);
            for event in &out {
                self.writer.apply_watcher_event(event);
            }
            out
        }
    }

    #[test]
    fn the_store_is_ready_once_every_namespace_listed() {
        let mut m = Fed::new(2);
        assert!(names(&m.next(0, Event::Init)).is_empty());
        assert_eq!(names(&m.next(0, Event::InitApply(cm("a", "x")))), ["initapply x"]);
        assert!(names(&m.next(0, Event::InitDone)).is_empty(), "b has not listed yet");
        assert!(names(&m.next(1, Event::Init)).is_empty());
        assert_eq!(names(&m.next(1, Event::InitApply(cm("b", "y")))), ["initapply y"]);
        assert_eq!(names(&m.next(1, Event::InitDone)), ["initdone"]);
    }

    #[test]
    fn a_relist_of_one_namespace_deletes_only_what_it_no_longer_lists() {
        let mut m = Fed::new(2);
        for (i, ns, name) in [(0, "a", "x"), (0, "a", "gone"), (1, "b", "y")] {
            m.next(i, Event::InitApply(cm(ns, name)));
        }
        m.next(0, Event::InitDone);
        m.next(1, Event::InitDone);
        assert!(names(&m.next(0, Event::Init)).is_empty());
        assert_eq!(names(&m.next(0, Event::InitApply(cm("a", "x")))), ["apply x"]);
        assert_eq!(names(&m.next(0, Event::InitDone)), ["delete gone"], "y of b stays");
        assert_eq!(names(&m.next(1, Event::Delete(cm("b", "y")))), ["delete y"]);
    }

    #[test]
    fn namespaces_are_trimmed_sorted_and_deduplicated() {
        let scope = Scope::new(&["b".into(), " a ".into(), "b".into(), "".into()], Some(" "));
        assert_eq!(scope.namespaces, ["a", "b"]);
        assert_eq!(scope.selector, None);
        assert_eq!(Scope::new(&["a".into()], None).single_namespace(), Some("a"));
    }
}
