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
//! An object without its label is reconciled by no replica (their watches
//! select by it), and the watch hears of it once: so a listing page or a
//! patch that fails for a reason that passes (the API server unavailable,
//! throttling, a timeout) is tried again, with backoff, until it succeeds.
//! A refusal that would only repeat (forbidden, invalid) is logged and left.
//! Objects are labelled a few at a time, so one whose patch keeps failing
//! does not hold up the rest.
//!
//! Touches: the API server (metadata reads, label patches).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

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

/// Objects labelled at once per kind: an object whose patch keeps failing
/// (its retries wait) does not hold up the others.
const AT_ONCE: usize = 8;

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
            let page = match until_done("listing objects to label", || api.list_metadata(&params)).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(%err, kind = %K::kind(&()), "listing objects to label; the watch still labels the unlabelled");
                    break;
                }
            };
            stream::iter(&page.items)
                .for_each_concurrent(AT_ONCE, |object| fix(client, object, count))
                .await;
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
    stream::select_all(watches)
        .for_each_concurrent(AT_ONCE, |event| async move {
            match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => fix(client, &object, count).await,
                Ok(_) => {}
                Err(err) => tracing::debug!(%err, kind = %K::kind(&()), "label watch failed; retrying"),
            }
        })
        .await;
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
    let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
    match until_done("labelling with the shard", || api.patch_metadata(name, &params, &patch)).await {
        Ok(_) => tracing::debug!(kind = %K::kind(&()), %namespace, %name, shard = %want, "labelled"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(err) => tracing::warn!(%err, kind = %K::kind(&()), %namespace, %name, "labelling with the shard failed"),
    }
}

/// Whether a failed call to the API server may succeed when tried again:
/// the server or the connection failed, it throttled, or it timed out.
fn passes(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(e) => e.code == 429 || e.code == 409 || e.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Calls `call` until it succeeds or fails for a reason that does not pass,
/// waiting between attempts (doubling from 200 ms up to 30 s).
async fn until_done<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt: u32 = 0;
    loop {
        match call().await {
            Err(err) if passes(&err) => {
                // One labeller per deployment (the holder of shard 0): no
                // herd of retries to spread with jitter.
                let wait = Duration::from_millis(200)
                    .saturating_mul(1 << attempt.min(8))
                    .min(Duration::from_secs(30));
                tracing::debug!(%err, ?wait, "{what} failed; trying again");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("refused", "Reason").with_code(code),
        ))
    }

    #[tokio::test]
    async fn a_label_patch_refused_for_a_passing_reason_is_sent_again_until_it_is_done() {
        let mut answers = vec![Err(refused(503)), Err(refused(429)), Err(refused(500)), Ok("labelled")].into_iter();
        let mut calls = 0;
        let result = until_done("labelling", || {
            calls += 1;
            let answer = answers.next().unwrap_or(Ok("labelled"));
            async move { answer }
        })
        .await;
        assert_eq!(result.ok(), Some("labelled"));
        assert_eq!(calls, 4);
    }

    #[tokio::test]
    async fn a_refusal_that_would_only_repeat_is_not_sent_again() {
        for code in [403, 404, 422] {
            let mut calls = 0;
            let result: Result<(), _> = until_done("labelling", || {
                calls += 1;
                async move { Err(refused(code)) }
            })
            .await;
            assert!(result.is_err());
            assert_eq!(calls, 1, "{code} was tried again");
        }
    }
}
