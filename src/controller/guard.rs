//! A panic inside one object's reconcile is that object's failure, never
//! the process's. kube-runtime polls reconcile futures inside the
//! controller's stream, so a panic there would end `tether run` — and the
//! object would still be there after the restart, and on the standby: a
//! crash loop for every tenant. No panic should be reachable from input;
//! this is the defence in depth for the one that is.
//!
//! The object gets `Ready=False` with reason `InternalError` (written by a
//! field manager of its own, so it merges with Tether's other conditions),
//! a Warning Event and a metric, and waits for a change of its spec.
//!
//! Every reconcile passes here, so here is its span (`crate::telemetry`):
//! a run's reconciles join the run's trace.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::Instrument;

use super::Context;
use crate::telemetry;

/// Reason of the condition and Event of an object whose reconcile panicked.
pub use crate::api::common::reason::INTERNAL_ERROR;
/// Field manager of the `InternalError` condition.
const GUARD_FIELD_MANAGER: &str = "tether-guard";

/// Runs `future`; a panic becomes `Err` with its message.
pub async fn catch<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// How to reach the API of a kind, given one of its objects.
pub trait Scoped: kube::Resource<DynamicType = ()> + Sized {
    fn api_of(&self, client: kube::Client) -> Api<Self>;

    /// The uid of the run whose trace this object's reconciles join (a
    /// WorkflowRun's own); `None`: each reconcile is a trace of its own.
    fn run_trace(&self) -> Option<String> {
        None
    }
}

macro_rules! namespaced {
    ($($kind:ty),*) => {$(
        impl Scoped for $kind {
            fn api_of(&self, client: kube::Client) -> Api<Self> {
                Api::namespaced(client, &self.namespace().unwrap_or_default())
            }
        }
    )*};
}
namespaced!(
    crate::api::ExternalResource,
    crate::api::TargetSystem,
    crate::api::Workflow
);

impl Scoped for crate::api::WorkflowRun {
    fn api_of(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }

    fn run_trace(&self) -> Option<String> {
        self.uid()
    }
}

impl Scoped for crate::api::Adapter {
    fn api_of(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
}

/// `reconcile(object, ctx)` as a task of its own, with a panic turned into
/// the object's `InternalError` and an `await_change`.
///
/// Its own task, because kube-runtime polls every reconcile of a controller
/// inside one stream: a reconcile that blocks its thread (waiting for the
/// expression sandbox) would hold up all its siblings. As a task on a
/// runtime worker, the sandbox's `block_in_place` moves the others away.
pub async fn reconcile<K, E, F, Fut>(
    object: Arc<K>,
    ctx: Arc<Context>,
    kind: &'static str,
    reconcile: F,
) -> Result<Action, E>
where
    K: Scoped + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: Send + 'static,
{
    // An object labelled for a shard this replica does not hold by its
    // namespace (a tenant edited the label, or `--shards` changed) is not
    // reconciled here: that would put it, and its target's rate limit, on
    // two replicas. It is labelled right, which hands it to its shard.
    if let Some(namespace) = object.namespace()
        && !ctx.shards.holds(&namespace)
    {
        relabel(object.as_ref(), &ctx, &namespace).await;
        return Ok(Action::await_change());
    }
    let span = telemetry::reconcile_span(
        kind,
        object.namespace().as_deref(),
        &object.name_any(),
        object.run_trace().as_deref(),
    );
    let traced = catch(reconcile(object.clone(), ctx.clone())).instrument(span.clone());
    let task = AbortOnDrop(tokio::spawn(traced));
    let outcome = match task.join().await {
        Ok(caught) => caught,
        Err(join) => Err(format!("the reconcile task ended: {join}")),
    };
    match outcome {
        Ok(result) => {
            if result.is_err() {
                telemetry::failed(&span);
            }
            result
        }
        Err(message) => {
            telemetry::failed(&span);
            report(object.as_ref(), &ctx, kind, &message).await;
            Ok(Action::await_change())
        }
    }
}

/// Writes the shard label `object`'s namespace gives it, on the version
/// read (a later change of the object wins; its next event comes here).
async fn relabel<K>(object: &K, ctx: &Context, namespace: &str)
where
    K: Scoped + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some((label, shard)) = ctx.shards.label(namespace) else {
        return;
    };
    let patch = json!({"metadata": {
        "resourceVersion": object.resource_version(),
        "labels": {label: shard},
    }});
    let name = object.name_any();
    match object
        .api_of(ctx.client.clone())
        .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => tracing::info!(%namespace, %name, %shard, "moved to the shard of its namespace"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(err) => tracing::warn!(%err, %namespace, %name, "correcting the shard label failed"),
    }
}

/// A spawned task that is aborted when its handle is dropped (a reconcile
/// whose controller shuts down or gives up on it does not run on).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn report<K>(object: &K, ctx: &Context, kind: &'static str, message: &str)
where
    K: Scoped + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let message = crate::text::shortened(message, 512);
    tracing::error!(kind, name = %object.name_any(), namespace = ?object.namespace(), panic = %message, "reconcile panicked; the object waits for a change");
    ctx.metrics.reconcile_error(kind, INTERNAL_ERROR);
    let note = format!(
        "Tether failed internally on this object ({message}); it waits for a change of the object. Please report this."
    );
    let api = object.api_of(ctx.client.clone());
    let condition = json!({
        "type": "Ready",
        "status": "False",
        "reason": INTERNAL_ERROR,
        "message": crate::text::shortened(&note, 1024),
        "observedGeneration": object.meta().generation,
        "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let patch = super::status_body::<K>(&object.name_any(), None, &json!({ "conditions": [condition] }));
    let params = PatchParams::apply(GUARD_FIELD_MANAGER).force();
    if let Err(err) = api
        .patch_status(&object.name_any(), &params, &Patch::Apply(&patch))
        .await
    {
        tracing::warn!(%err, "could not record the internal error in status");
    }
    ctx.publish(object, EventType::Warning, INTERNAL_ERROR, "Reconcile", note)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_becomes_an_error_with_its_message() {
        let caught = catch(async { panic!("byte index 3 is not a char boundary") }).await;
        assert_eq!(caught, Err::<(), _>("byte index 3 is not a char boundary".to_owned()));
        let formatted = catch(async { panic!("{} items", 3) }).await;
        assert_eq!(formatted, Err::<(), _>("3 items".to_owned()));
        assert_eq!(catch(async { 7 }).await, Ok(7));
    }
}
