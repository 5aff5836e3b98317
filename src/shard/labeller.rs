//! Puts the shard label on objects that lack it (or carry one that names
//! another shard): run by the replica holding shard 0, over the metadata of
//! ExternalResources, WorkflowRuns, Workflows, TargetSystems and Approvals.
//!
//! It first lists every object's metadata once (a label written under
//! another number of shards is corrected), then watches only objects
//! without a valid label (`tether.dev/shard notin (0,…)`), so it hears of
//! each user-created object once and of nothing else. Cost: one metadata
//! patch per object a user creates; objects Tether creates (a run's
//! ExternalResources, a schedule's or webhook's runs) carry the label from
//! their create.
//!
//! Touches: the API server (metadata reads, label patches).

use std::fmt::Debug;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{Approval, ExternalResource, TargetSystem, Workflow, WorkflowRun};
use crate::scope::Scope;

/// Labels objects of every sharded kind in `scope` for `count` shards,
/// until the task is aborted.
pub async fn run(client: Client, scope: Scope, count: u32) {
    tokio::join!(
        label::<ExternalResource>(&client, &scope, count),
        label::<WorkflowRun>(&client, &scope, count),
        label::<Workflow>(&client, &scope, count),
        label::<TargetSystem>(&client, &scope, count),
        label::<Approval>(&client, &scope, count),
    );
}

fn apis<K>(client: &Client, scope: &Scope) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if scope.namespaces.is_empty() {
        return vec![Api::all(client.clone())];
    }
    scope
        .namespaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect()
}

async fn label<K>(client: &Client, scope: &Scope, count: u32)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    // Labels of another number of shards (`--shards` changed) are in range
    // but wrong: one listing finds them.
    for api in apis::<K>(client, scope) {
        let mut params = ListParams::default().limit(500);
        loop {
            let page = match api.list_metadata(&params).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(%err, kind = %K::kind(&()), "listing objects to label; the watch still labels the unlabelled");
                    break;
                }
            };
            for object in &page.items {
                fix(client, object, count).await;
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    let config = watcher::Config::default().labels(&super::unlabelled(count));
    let watches: Vec<BoxStream<'static, _>> = apis::<PartialObjectMeta<K>>(client, scope)
        .into_iter()
        .map(|api| watcher(api, config.clone()).default_backoff().boxed())
        .collect();
    let mut events = stream::select_all(watches);
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => fix(client, &object, count).await,
            Ok(_) => {}
            Err(err) => tracing::debug!(%err, kind = %K::kind(&()), "label watch failed; retrying"),
        }
    }
}

/// Writes the right shard label on `object` unless it carries it.
async fn fix<K>(client: &Client, object: &PartialObjectMeta<K>, count: u32)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let (Some(namespace), Some(name)) = (object.metadata.namespace.as_deref(), object.metadata.name.as_deref()) else {
        return;
    };
    let want = super::of(namespace, count).to_string();
    let has = object.metadata.labels.as_ref().and_then(|l| l.get(super::LABEL));
    if has == Some(&want) {
        return;
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"labels": {super::LABEL: want}}});
    match api
        .patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => tracing::debug!(kind = %K::kind(&()), %namespace, %name, shard = %want, "labelled"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(err) => tracing::warn!(%err, kind = %K::kind(&()), %namespace, %name, "labelling with the shard failed"),
    }
}
