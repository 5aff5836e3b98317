//! The webhook endpoint of `tether run` (`--webhook-addr`): a signed POST
//! to `/webhooks/<namespace>/<workflow>` starts a run of that workflow.
//!
//! Requests carry `X-Tether-Signature: sha256=<hex>`, the HMAC-SHA256 of the
//! raw body under the key in the Secret the Workflow's webhook trigger
//! names; anything else is refused with 401 and counted. The body (JSON)
//! goes through the trigger's `parameters` expression to become the run's
//! parameters. A request with `X-Tether-Delivery: <id>` starts at most one
//! run per id (the run's name derives from it), so a sender's retries do
//! not start the workflow twice.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::Workflow;
use crate::controller::Context;
use crate::controller::workflow::{TRIGGER_LABEL, create_run};
use crate::expr::Expr;
use crate::metrics::OutcomeLabels;

/// Header with the body's signature.
pub const SIGNATURE_HEADER: &str = "x-tether-signature";
/// Header with the sender's delivery id (optional, makes retries safe).
pub const DELIVERY_HEADER: &str = "x-tether-delivery";

/// The path that triggers a workflow.
pub fn path(namespace: &str, workflow: &str) -> String {
    format!("/webhooks/{namespace}/{workflow}")
}

/// `sha256=<hex>` of `body` under `key`: what a sender puts in the header.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// Whether `signature` (the header's value) is the HMAC of `body` under
/// `key`, compared in constant time.
pub fn verify(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(digest) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/webhooks/{namespace}/{workflow}", post(trigger))
        .with_state(ctx)
}

fn refuse(ctx: &Context, status: StatusCode, outcome: &'static str, message: impl Into<String>) -> Response {
    ctx.metrics
        .webhook_requests
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn trigger(
    State(ctx): State<Arc<Context>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(workflow) = ctx.workflows.get(&ObjectRef::<Workflow>::new(&name).within(&namespace)) else {
        return refuse(
            &ctx,
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no Workflow {namespace}/{name}"),
        );
    };
    let Some(hook) = workflow.spec.triggers.as_ref().and_then(|t| t.webhook.as_ref()) else {
        return refuse(
            &ctx,
            StatusCode::NOT_FOUND,
            "not_found",
            format!("Workflow {namespace}/{name} has no webhook trigger"),
        );
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = match secrets.get_opt(&hook.secret_ref.name).await {
        Ok(Some(secret)) => secret
            .data
            .and_then(|mut d| d.remove(&hook.secret_ref.key))
            .map(|b| b.0),
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(%err, workflow = %name, "reading the webhook Secret");
            None
        }
    };
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return refuse(
            &ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_key",
            format!(
                "the webhook key (Secret {:?}, key {:?}) is missing",
                hook.secret_ref.name, hook.secret_ref.key
            ),
        );
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !verify(&key, &body, signature) {
        tracing::info!(workflow = %name, namespace = %namespace, "webhook refused: bad signature");
        return refuse(
            &ctx,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "missing or wrong X-Tether-Signature",
        );
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                &ctx,
                StatusCode::BAD_REQUEST,
                "bad_payload",
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let parameters =
        Expr::compile("spec.triggers.webhook.parameters", &hook.parameters, &[]).and_then(|e| e.eval(&payload, &[]));
    let parameters = match parameters {
        Ok(p @ Value::Object(_)) => p,
        Ok(other) => {
            return refuse(
                &ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_payload",
                format!("the parameters expression yielded {other}, not an object"),
            );
        }
        Err(e) => return refuse(&ctx, StatusCode::UNPROCESSABLE_ENTITY, "bad_payload", e.to_string()),
    };
    let delivery = headers.get(DELIVERY_HEADER).and_then(|v| v.to_str().ok());
    let run_name = delivery.map(|id| {
        let digest = Sha256::digest(id.as_bytes());
        let short: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        format!("{name}-{short}")
    });
    let generate = format!("{name}-");
    let created = create_run(
        &ctx,
        &workflow,
        run_name.as_deref().unwrap_or_default(),
        run_name.is_none().then_some(generate.as_str()),
        parameters,
        &[(TRIGGER_LABEL, "webhook")],
    )
    .await;
    match created {
        Ok(run) => {
            ctx.metrics
                .webhook_requests
                .get_or_create(&OutcomeLabels { outcome: "accepted" })
                .inc();
            let run_name = kube::ResourceExt::name_any(&run);
            ctx.publish(
                workflow.as_ref(),
                kube::runtime::events::EventType::Normal,
                "RunCreated",
                "Webhook",
                format!("webhook started run {run_name}"),
            )
            .await;
            (StatusCode::ACCEPTED, axum::Json(json!({ "run": run_name }))).into_response()
        }
        Err(e) => refuse(&ctx, StatusCode::SERVICE_UNAVAILABLE, "error", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_body() {
        let signature = sign(b"key", b"{\"a\":1}");
        assert!(verify(b"key", b"{\"a\":1}", &signature));
        assert!(!verify(b"other", b"{\"a\":1}", &signature));
        assert!(!verify(b"key", b"{\"a\":2}", &signature));
        assert!(!verify(b"key", b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(b"key", b"{\"a\":1}", ""));
    }
}
