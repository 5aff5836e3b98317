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
//!
//! Step callbacks: a `call` step with `callback` sends `$callback.url`
//! (`/callbacks/<ns>/<run>/<step>/<attempt>?token=<token>`, the token an
//! HMAC of run, step and attempt under the step's key) to the target, and
//! waits. The first POST with the right token is recorded in an annotation
//! of the run (conditional on its resourceVersion, so two cannot both win)
//! and wakes it; any other is refused.

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

use crate::api::common::SecretKeyRef;
use crate::api::workflow_run::StepPhase;
use crate::api::{Workflow, WorkflowRun};
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

/// The path of one attempt's callback.
pub fn callback_path(namespace: &str, run: &str, step: &str, attempt: i32) -> String {
    format!("/callbacks/{namespace}/{run}/{step}/{attempt}")
}

/// The one-time token of one attempt's callback (hex).
pub fn callback_token(key: &[u8], run_uid: &str, step: &str, attempt: i32) -> String {
    let signature = sign(key, format!("{run_uid}/{step}/{attempt}").as_bytes());
    signature.trim_start_matches("sha256=").to_owned()
}

/// The bytes of a key in a Secret, if the Secret and the key exist.
pub async fn secret_key(client: &kube::Client, namespace: &str, secret: &SecretKeyRef) -> Option<Vec<u8>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match secrets.get_opt(&secret.name).await {
        Ok(Some(found)) => found
            .data
            .and_then(|mut d| d.remove(&secret.key))
            .map(|b| b.0)
            .filter(|k| !k.is_empty()),
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(%err, secret = %secret.name, "reading a key Secret");
            None
        }
    }
}

/// Largest callback body accepted.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/webhooks/{namespace}/{workflow}", post(trigger))
        .route("/callbacks/{namespace}/{run}/{step}/{attempt}", post(callback))
        .with_state(ctx)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn callback(
    State(ctx): State<Arc<Context>>,
    Path((namespace, run_name, step, attempt)): Path<(String, String, String, i32)>,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
    body: Bytes,
) -> Response {
    let runs: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    let run = match runs.get_opt(&run_name).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            return refuse(
                &ctx,
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no WorkflowRun {namespace}/{run_name}"),
            );
        }
        Err(e) => return refuse(&ctx, StatusCode::SERVICE_UNAVAILABLE, "error", e.to_string()),
    };
    let status = run.status.clone().unwrap_or_default();
    let spec = status
        .pinned
        .as_ref()
        .and_then(|p| serde_json::from_value::<crate::api::workflow::WorkflowSpec>(p.spec.clone()).ok());
    let secret = spec
        .as_ref()
        .and_then(|s| s.steps.iter().find(|s| s.name == step))
        .and_then(|s| s.call.as_ref())
        .and_then(|c| c.callback.as_ref())
        .map(|c| c.secret_ref.clone());
    let Some(secret) = secret else {
        return refuse(
            &ctx,
            StatusCode::NOT_FOUND,
            "not_found",
            format!("step {step:?} of {run_name} takes no callback"),
        );
    };
    let Some(key) = secret_key(&ctx.client, &namespace, &secret).await else {
        return refuse(
            &ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_key",
            "the callback key is missing",
        );
    };
    let uid = kube::ResourceExt::uid(&run).unwrap_or_default();
    let expected = format!("{uid}/{step}/{attempt}");
    if !verify(&key, expected.as_bytes(), &format!("sha256={}", query.token)) {
        tracing::info!(run = %run_name, %step, "callback refused: bad token");
        return refuse(&ctx, StatusCode::UNAUTHORIZED, "bad_token", "wrong or missing token");
    }
    let waiting = status
        .steps
        .iter()
        .any(|s| s.name == step && s.phase == StepPhase::Waiting && s.attempt == attempt);
    let annotation = crate::controller::workflow_run::steps::callback_annotation(&step);
    let used = kube::ResourceExt::annotations(&run)
        .get(&annotation)
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .is_some_and(|v| v.get("attempt").and_then(Value::as_i64) == Some(i64::from(attempt)));
    if used || !waiting {
        return refuse(
            &ctx,
            StatusCode::CONFLICT,
            "used",
            "this callback was used already, or the step no longer waits for it",
        );
    }
    if body.len() > MAX_CALLBACK_BYTES {
        return refuse(
            &ctx,
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_payload",
            "the body is larger than 64 KiB",
        );
    }
    let payload = match json_body(&body) {
        Ok(payload) => payload,
        Err(message) => return refuse(&ctx, StatusCode::BAD_REQUEST, "bad_payload", message),
    };
    let record = json!({ "attempt": attempt, "body": payload }).to_string();
    let patch = json!({
        "metadata": { "resourceVersion": run.metadata.resource_version, "annotations": { annotation: record } }
    });
    match runs
        .patch(
            &run_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            ctx.metrics
                .webhook_requests
                .get_or_create(&OutcomeLabels { outcome: "callback" })
                .inc();
            (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": true }))).into_response()
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            refuse(&ctx, StatusCode::CONFLICT, "used", "another callback got there first")
        }
        Err(e) => refuse(&ctx, StatusCode::SERVICE_UNAVAILABLE, "error", e.to_string()),
    }
}

/// The body as JSON (an empty body is `null`).
fn json_body(body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
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
    let Some(key) = secret_key(&ctx.client, &namespace, &hook.secret_ref).await else {
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
    let payload = match json_body(&body) {
        Ok(payload) => payload,
        Err(message) => return refuse(&ctx, StatusCode::BAD_REQUEST, "bad_payload", message),
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
