//! Push-triggered resync: a signed POST to `/resync/<ns>/<target>` (every
//! ExternalResource of that TargetSystem) or `/resync/<ns>/<target>/<name>`
//! (one) makes those resources read their target now rather than at the
//! next poll — a target that knows something changed (a webhook of its
//! own, an operator's script) need not wait for a long `pollInterval`.
//!
//! The request is signed exactly as a workflow webhook (timestamp,
//! delivery, body; the tolerance window; a delivery accepted once), under
//! the key of the TargetSystem's `spec.resyncWebhook.secretRef`. A replayed
//! delivery is refused (409): a resync has no result to give back. Every
//! check runs on memory — the TargetSystem and the resources from the
//! reflectors, the key from [`crate::keys::KeyCache`] — and so does the
//! wake-up ([`request_resync`]: the freshness memory forgets the resource
//! and the controller's trigger stream gets it), so neither a refused nor
//! an accepted push costs an API call.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::deliveries::Admit;
use super::refusal::Refusal;
use super::{Signed, Webhooks, count, refuse, signed};
use crate::api::{ExternalResource, TargetSystem};
use crate::controller::external_resource::{referencing, request_resync};
use crate::controller::{Context, RESYNC_ANNOTATION};
use crate::keys::Purpose;

/// The path of a resync of every ExternalResource of a TargetSystem.
pub fn path(namespace: &str, target: &str) -> String {
    format!("/resync/{namespace}/{target}")
}

/// `POST /resync/{namespace}/{target}`.
pub async fn all(
    State(hooks): State<Arc<Webhooks>>,
    Path((namespace, target)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&hooks, &namespace, &target, None, &headers, body).await
}

/// `POST /resync/{namespace}/{target}/{resource}`.
pub async fn one(
    State(hooks): State<Arc<Webhooks>>,
    Path((namespace, target, resource)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&hooks, &namespace, &target, Some(&resource), &headers, body).await
}

async fn answer(
    hooks: &Webhooks,
    namespace: &str,
    target: &str,
    resource: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let ctx = hooks.ctx();
    let ctx = ctx.as_ref();
    match resync(hooks, namespace, target, resource, headers, body).await {
        Ok(queued) => {
            count(ctx, "resync");
            tracing::info!(%namespace, %target, ?resource, queued, "resync pushed");
            (StatusCode::ACCEPTED, axum::Json(json!({ "queued": queued }))).into_response()
        }
        Err(refusal) => {
            if matches!(refusal, Refusal::BadSignature | Refusal::Stale(_) | Refusal::Used(_)) {
                tracing::info!(%namespace, %target, %refusal, "resync refused");
            }
            refuse(ctx, &refusal)
        }
    }
}

/// Checks a push (target, headers, window, size, signature, replay) and
/// wakes the resources it names; returns how many.
async fn resync(
    hooks: &Webhooks,
    namespace: &str,
    target: &str,
    resource: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<usize, Refusal> {
    let ctx = hooks.ctx();
    let ctx = ctx.as_ref();
    let ts = ctx
        .targets
        .get(&ObjectRef::<TargetSystem>::new(target).within(namespace))
        .ok_or_else(|| Refusal::NotFound(format!("no TargetSystem {namespace}/{target}")))?;
    let secret = ts
        .spec
        .resync_webhook
        .as_ref()
        .map(|w| w.secret_ref.clone())
        .ok_or_else(|| {
            Refusal::NotFound(format!(
                "TargetSystem {namespace}/{target} takes no resync pushes (spec.resyncWebhook)"
            ))
        })?;
    let Signed {
        delivery,
        timestamp,
        now,
        body: _,
    } = signed(hooks, Purpose::Resync, namespace, &secret, headers, body).await?;
    let delivery = delivery.as_str();
    // Deliveries of resyncs are kept apart from those of workflows.
    let scope = format!("resync/{target}");
    match hooks.deliveries.admit(namespace, &scope, delivery, now) {
        Admit::New => {}
        Admit::Replay(_) => return Err(Refusal::Used("this delivery was accepted already")),
        Admit::Full => return Err(Refusal::Busy),
    }
    if !*ctx.leading.borrow() || !ctx.shards.holds(namespace) {
        // A standby, or a replica that does not hold the namespace's
        // shard, does not reconcile (and does not cache) these
        // ExternalResources: it hands the push to their reconciler through
        // the API — the resync annotation, one write per resource, which
        // that replica's watch sees.
        let expires = timestamp.saturating_add(i64::try_from(hooks.tolerance.as_secs()).unwrap_or(i64::MAX));
        hooks.deliveries.record(namespace, &scope, delivery, "resync", expires);
        return annotate(ctx, namespace, target, resource).await;
    }
    let names: Vec<ObjectRef<ExternalResource>> = match resource {
        Some(name) => {
            let found = ctx
                .resources
                .get(&ObjectRef::<ExternalResource>::new(name).within(namespace))
                .filter(|er| er.spec.target_ref.name == target)
                .ok_or_else(|| {
                    Refusal::NotFound(format!(
                        "no ExternalResource {namespace}/{name} on TargetSystem {target}"
                    ))
                })?;
            vec![ObjectRef::from_obj(found.as_ref())]
        }
        None => referencing(&ctx.resources.state(), namespace, target),
    };
    let expires = timestamp.saturating_add(i64::try_from(hooks.tolerance.as_secs()).unwrap_or(i64::MAX));
    hooks.deliveries.record(namespace, &scope, delivery, "resync", expires);
    let mut queued = 0;
    for name in names {
        if let Some(er) = ctx.resources.get(&name)
            && request_resync(ctx, &er)
        {
            queued += 1;
        }
    }
    Ok(queued)
}

/// The most resources one push resyncs through the API from a standby.
const MAX_ANNOTATED: usize = 1000;

/// Sets `tether.dev/resync` on the ExternalResources the push names (read
/// from the API server: a standby has no cache of them).
async fn annotate(ctx: &Context, namespace: &str, target: &str, resource: Option<&str>) -> Result<usize, Refusal> {
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let api: Api<ExternalResource> = Api::namespaced(ctx.client.clone(), namespace);
    let names: Vec<String> = match resource {
        Some(name) => vec![name.to_owned()],
        None => api
            .list_metadata(
                &ListParams::default()
                    .fields(&format!("spec.targetRef.name={target}"))
                    .limit(MAX_ANNOTATED as u32),
            )
            .await
            .map_err(Refusal::ReadRun)?
            .items
            .into_iter()
            .filter_map(|er| er.metadata.name)
            .collect(),
    };
    let stamp = chrono::Utc::now().timestamp_millis().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {RESYNC_ANNOTATION: stamp}}});
    let mut queued = 0;
    for name in names {
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(er) if er.spec.target_ref.name == target => queued += 1,
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Refusal::NotFound(format!(
                    "no ExternalResource {namespace}/{name} on TargetSystem {target}"
                )));
            }
            Err(e) => return Err(Refusal::ReadRun(e)),
        }
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_path_names_the_namespace_and_the_target() {
        assert_eq!(path("demo", "crm"), "/resync/demo/crm");
    }
}
