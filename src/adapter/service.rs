//! The imperative form of an Adapter: Tether POSTs JSON to an adapter
//! service (`<url>/v1/<operation>`) and the service answers with the
//! observed state. The protocol is versioned and documented in
//! `docs/adapter-protocol.md`. Calls share the TargetSystem's rate limit,
//! concurrency limit and circuit, and carry its credentials.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{
    ActionOutcome, AdapterError, Deletion, ExternalObject, ExternalSystem, ObjectRequest, Observation, Result,
};
use crate::api::adapter::HttpMethod;
use crate::request::error_message;
use crate::request::{CallError, HttpCall, TargetRequests};

/// Version of the protocol this build speaks.
pub const PROTOCOL_VERSION: &str = "v1";

pub struct ServiceAdapter<T> {
    url: Url,
    target: Arc<T>,
}

/// The answer to `observe`, `find`, `create` and `update`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectAnswer {
    exists: bool,
    external_id: Option<String>,
    #[serde(default)]
    observed: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteAnswer {
    result: DeleteResult,
}

#[derive(Deserialize)]
enum DeleteResult {
    Deleted,
    AlreadyGone,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionAnswer {
    succeeded: bool,
    #[serde(default)]
    outputs: BTreeMap<String, Value>,
    #[serde(default)]
    body: Value,
}

impl<T: TargetRequests> ServiceAdapter<T> {
    pub fn new(url: Url, target: Arc<T>) -> Self {
        Self { url, target }
    }

    fn payload(&self, request: &ObjectRequest<'_>) -> Value {
        json!({
            "protocolVersion": PROTOCOL_VERSION,
            "type": request.resource_type,
            "externalId": request.external_id,
            "externalName": request.external_name,
            "properties": request.properties,
            "idempotencyKey": request.idempotency_key,
            "target": { "baseUrl": self.target.base_url() },
        })
    }

    async fn post<A: for<'de> Deserialize<'de>>(&self, operation: &str, payload: Value) -> Result<A> {
        let answer = self
            .target
            .send(HttpCall {
                operation: format!("service:{operation}"),
                method: HttpMethod::Post,
                path: format!("/{PROTOCOL_VERSION}/{operation}"),
                query: vec![],
                headers: vec![],
                body: Some(payload),
                base: Some(self.url.clone()),
            })
            .await?;
        if !answer.is_success() {
            let message = self.target.redact(&error_message(&answer.body));
            if answer.body.pointer("/error/retryable") == Some(&Value::Bool(true)) {
                return Err(CallError::Unavailable { message, sent: true }.into());
            }
            return Err(AdapterError::Rejected {
                operation: operation.to_owned(),
                status: answer.status,
                message,
            });
        }
        serde_json::from_value(answer.body).map_err(|e| {
            CallError::InvalidResponse(format!(
                "the adapter service's {operation} answer does not follow protocol {PROTOCOL_VERSION}: {e}"
            ))
            .into()
        })
    }

    async fn object_call(&self, operation: &str, request: &ObjectRequest<'_>) -> Result<Observation> {
        let answer: ObjectAnswer = self.post(operation, self.payload(request)).await?;
        Ok(
            match (
                answer.exists,
                answer.external_id.or_else(|| request.external_id.map(str::to_owned)),
            ) {
                (true, Some(id)) => Observation::Present(ExternalObject {
                    id,
                    state: answer.observed,
                    secrets: Default::default(),
                }),
                (true, None) => {
                    return Err(CallError::InvalidResponse(format!(
                        "the adapter service's {operation} answer has exists=true but no externalId"
                    ))
                    .into());
                }
                (false, _) => Observation::Absent,
            },
        )
    }
}

impl<T: TargetRequests> ExternalSystem for ServiceAdapter<T> {
    async fn observe(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        self.object_call("observe", request).await
    }

    fn can_find(&self, _: &str) -> bool {
        true
    }

    async fn find(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        self.object_call("find", request).await
    }

    async fn create(&self, request: &ObjectRequest<'_>) -> Result<ExternalObject> {
        match self.object_call("create", request).await? {
            Observation::Present(object) => Ok(object),
            Observation::Absent => {
                Err(CallError::InvalidResponse("the adapter service's create answer has exists=false".into()).into())
            }
        }
    }

    fn can_update(&self, _: &str) -> bool {
        true
    }

    async fn update(&self, request: &ObjectRequest<'_>) -> Result<Option<Value>> {
        Ok(match self.object_call("update", request).await? {
            Observation::Present(object) => Some(object.state),
            Observation::Absent => None,
        })
    }

    async fn delete(&self, request: &ObjectRequest<'_>) -> Result<Deletion> {
        let answer: DeleteAnswer = self.post("delete", self.payload(request)).await?;
        Ok(match answer.result {
            DeleteResult::Deleted => Deletion::Deleted,
            DeleteResult::AlreadyGone => Deletion::AlreadyGone,
        })
    }

    async fn act(&self, action: &str, input: &Value, idempotency_key: &str) -> Result<ActionOutcome> {
        let payload = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "action": action,
            "input": input,
            "idempotencyKey": idempotency_key,
            "target": { "baseUrl": self.target.base_url() },
        });
        let answer: ActionAnswer = self.post("action", payload).await?;
        Ok(ActionOutcome {
            status: 200,
            body: answer.body,
            succeeded: answer.succeeded,
            outputs: answer.outputs,
        })
    }
}
