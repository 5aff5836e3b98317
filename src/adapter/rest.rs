//! The declarative form of an Adapter: each operation of each resource type
//! is an HTTP request built from templates, and each answer is read with
//! expressions. The mapping is compiled once per Adapter generation
//! ([`CompiledMapping`]); [`RestAdapter`] pairs it with a target.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    ActionOutcome, AdapterError, Deletion, ExternalObject, ExternalSystem, ObjectRequest, Observation, Result,
    SecretValues, error_message,
};
use crate::api::adapter::{HttpMethod, HttpRequestTemplate, RestAction, RestMapping, RestResourceType};
use crate::expr::{Expr, ExprError};
use crate::http::{HttpAnswer, HttpCall, Target};

/// The longest external id Tether keeps (status, conditions, paths).
pub const MAX_ID_BYTES: usize = 512;

/// Variables of expressions that read an answer: `$desired` is the request
/// context (`.properties`, `.id`, `.name`, `.idempotencyKey`).
const ANSWER_VARS: &[&str] = &["$desired"];

pub struct CompiledRequest {
    method: HttpMethod,
    path: Expr,
    query: Vec<(String, Expr)>,
    headers: Vec<(String, Expr)>,
    body: Option<Expr>,
}

impl CompiledRequest {
    pub fn compile(field: &str, template: &HttpRequestTemplate, vars: &[&str]) -> Result<Self, Vec<ExprError>> {
        let mut errors = Vec::new();
        let mut keep = |r: Result<Expr, ExprError>| r.map_err(|e| errors.push(e)).ok();
        let path = keep(Expr::template(&format!("{field}.path"), &template.path, vars, true));
        // Query and header values are plain templates (reqwest encodes them).
        let mut text_templates =
            |part: &str, values: &std::collections::BTreeMap<String, String>| -> Vec<(String, Expr)> {
                values
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            k.clone(),
                            keep(Expr::template(&format!("{field}.{part}.{k}"), v, vars, false))?,
                        ))
                    })
                    .collect()
            };
        let query = text_templates("query", &template.query);
        let headers = text_templates("headers", &template.headers);
        let body = template
            .body
            .as_ref()
            .map(|b| keep(Expr::compile(&format!("{field}.body"), b, vars)));
        for name in template.headers.keys() {
            if let Some(why) = crate::http::reserved_header(name) {
                errors.push(ExprError::Compile {
                    field: format!("{field}.headers.{name}"),
                    expression: name.clone(),
                    message: why.to_owned(),
                });
            }
        }
        match (path, body) {
            (Some(path), None) if errors.is_empty() => Ok(Self {
                method: template.method,
                path,
                query,
                headers,
                body: None,
            }),
            (Some(path), Some(Some(body))) if errors.is_empty() => Ok(Self {
                method: template.method,
                path,
                query,
                headers,
                body: Some(body),
            }),
            _ => Err(errors),
        }
    }

    /// The call for `input`, with `vars` values in the order compiled.
    pub fn render(&self, operation: &str, input: &Value, vars: &[&Value]) -> Result<HttpCall, ExprError> {
        Ok(HttpCall {
            operation: operation.to_owned(),
            method: self.method,
            path: self.path.eval_string(input, vars)?,
            query: self
                .query
                .iter()
                .map(|(k, e)| Ok((k.clone(), e.eval_string(input, vars)?)))
                .collect::<Result<_, ExprError>>()?,
            headers: self
                .headers
                .iter()
                .map(|(k, e)| Ok((k.clone(), e.eval_string(input, vars)?)))
                .collect::<Result<_, ExprError>>()?,
            body: self.body.as_ref().map(|b| b.eval(input, vars)).transpose()?,
            base: None,
        })
    }
}

pub struct CompiledType {
    id: Expr,
    observe: Expr,
    read: CompiledRequest,
    create: CompiledRequest,
    update: Option<CompiledRequest>,
    delete: Option<CompiledRequest>,
    find: Option<(CompiledRequest, Expr)>,
    not_found: Vec<u16>,
    idempotency_header: Option<String>,
    secret_fields: Vec<String>,
}

pub struct CompiledAction {
    request: CompiledRequest,
    success_when: Option<Expr>,
    outputs: Vec<(String, Expr)>,
}

/// A REST mapping with every expression compiled.
pub struct CompiledMapping {
    types: HashMap<String, CompiledType>,
    actions: HashMap<String, CompiledAction>,
}

impl CompiledMapping {
    /// Compiles every expression; on failure returns all the errors, each
    /// naming its field.
    pub fn compile(mapping: &RestMapping) -> Result<Self, Vec<ExprError>> {
        let mut errors = Vec::new();
        let types = mapping
            .resource_types
            .iter()
            .filter_map(|t| {
                compile_type(t)
                    .map_err(|e| errors.extend(e))
                    .ok()
                    .map(|c| (t.name.clone(), c))
            })
            .collect();
        let actions = mapping
            .actions
            .iter()
            .filter_map(|a| {
                compile_action(a)
                    .map_err(|e| errors.extend(e))
                    .ok()
                    .map(|c| (a.name.clone(), c))
            })
            .collect();
        if errors.is_empty() {
            Ok(Self { types, actions })
        } else {
            Err(errors)
        }
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    fn resource_type(&self, name: &str) -> Result<&CompiledType> {
        self.types
            .get(name)
            .ok_or_else(|| AdapterError::Mapping(format!("the Adapter has no resource type {name:?}")))
    }
}

fn compile_type(t: &RestResourceType) -> Result<CompiledType, Vec<ExprError>> {
    let field = format!("spec.rest.resourceTypes[{}]", t.name);
    let mut errors = Vec::new();
    let mut keep_expr = |r: Result<Expr, ExprError>| r.map_err(|e| errors.push(e)).ok();
    let id = keep_expr(Expr::compile(&format!("{field}.id"), &t.id, ANSWER_VARS));
    let observe = keep_expr(Expr::compile(&format!("{field}.observe"), &t.observe, ANSWER_VARS));
    let select = t
        .find
        .as_ref()
        .map(|f| keep_expr(Expr::compile(&format!("{field}.find.select"), &f.select, ANSWER_VARS)));
    let mut keep_request = |name: &str, template: &HttpRequestTemplate| {
        CompiledRequest::compile(&format!("{field}.{name}"), template, &[])
            .map_err(|e| errors.extend(e))
            .ok()
    };
    let read = keep_request("read", &t.read);
    let create = keep_request("create", &t.create);
    let update = t.update.as_ref().map(|u| keep_request("update", u));
    let delete = t.delete.as_ref().map(|d| keep_request("delete", d));
    let find_request = t.find.as_ref().map(|f| keep_request("find", &f.request));
    if !errors.is_empty() {
        return Err(errors);
    }
    let missing = || vec![];
    Ok(CompiledType {
        id: id.ok_or_else(missing)?,
        observe: observe.ok_or_else(missing)?,
        read: read.ok_or_else(missing)?,
        create: create.ok_or_else(missing)?,
        update: update.flatten(),
        delete: delete.flatten(),
        find: find_request.flatten().zip(select.flatten()),
        not_found: t
            .not_found_statuses
            .iter()
            .filter_map(|s| u16::try_from(*s).ok())
            .collect(),
        idempotency_header: Some(t.idempotency_key_header.clone()).filter(|h| !h.is_empty()),
        secret_fields: t.secret_fields.clone(),
    })
}

fn compile_action(a: &RestAction) -> Result<CompiledAction, Vec<ExprError>> {
    let field = format!("spec.rest.actions[{}]", a.name);
    let mut errors = Vec::new();
    let request = CompiledRequest::compile(&field, &a.request, &[])
        .map_err(|e| errors.extend(e))
        .ok();
    let success_when = a.success_when.as_ref().map(|s| {
        Expr::compile(&format!("{field}.successWhen"), s, &[])
            .map_err(|e| errors.push(e))
            .ok()
    });
    let outputs: Vec<_> = a
        .outputs
        .iter()
        .filter_map(|(k, v)| {
            Expr::compile(&format!("{field}.outputs.{k}"), v, &[])
                .map_err(|e| errors.push(e))
                .ok()
                .map(|e| (k.clone(), e))
        })
        .collect();
    match request {
        Some(request) if errors.is_empty() => Ok(CompiledAction {
            request,
            success_when: success_when.flatten(),
            outputs,
        }),
        _ => Err(errors),
    }
}

/// A REST mapping bound to a target.
pub struct RestAdapter {
    mapping: Arc<CompiledMapping>,
    target: Arc<Target>,
}

impl RestAdapter {
    pub fn new(mapping: Arc<CompiledMapping>, target: Arc<Target>) -> Self {
        Self { mapping, target }
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    async fn call(
        &self,
        request: &CompiledRequest,
        operation: &str,
        context: &Value,
        extra_headers: Vec<(String, String)>,
    ) -> Result<HttpAnswer> {
        let mut call = request.render(operation, context, &[])?;
        call.headers.extend(extra_headers);
        Ok(self.target.send(call).await?)
    }

    fn object(
        &self,
        t: &CompiledType,
        body: &Value,
        context: &Value,
        known_id: Option<&str>,
    ) -> Result<ExternalObject> {
        // Secret fields leave the answer before any expression reads it, so
        // neither `observe` nor an error message can carry them.
        let mut body = body.clone();
        let secrets = SecretValues::take(&mut body, &t.secret_fields);
        let body = &body;
        let id = match t.id.eval(body, &[context])? {
            // An id is a key, not a payload: a target that answers a huge
            // one would make every status write fail.
            Value::String(s) if s.len() > MAX_ID_BYTES => {
                return Err(AdapterError::Mapping(format!(
                    "{}: the id in the answer is {} bytes; Tether keeps ids of at most {MAX_ID_BYTES} bytes",
                    t.id.source(),
                    s.len()
                )));
            }
            Value::String(s) if !s.is_empty() => s,
            Value::Number(n) => n.to_string(),
            _ => known_id.map(str::to_owned).ok_or_else(|| {
                AdapterError::Mapping(format!(
                    "{}: the id expression found no id in the answer",
                    t.id.source()
                ))
            })?,
        };
        Ok(ExternalObject {
            id,
            state: t.observe.eval(body, &[context])?,
            secrets,
        })
    }

    fn rejected(&self, operation: &str, answer: &HttpAnswer) -> AdapterError {
        AdapterError::Rejected {
            operation: operation.to_owned(),
            status: answer.status,
            message: self.target.redactor().redact(&error_message(&answer.body)),
        }
    }
}

impl ExternalSystem for RestAdapter {
    async fn observe(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        let t = self.mapping.resource_type(request.resource_type)?;
        let context = request.context();
        let answer = self.call(&t.read, "read", &context, vec![]).await?;
        if t.not_found.contains(&answer.status) {
            return Ok(Observation::Absent);
        }
        if !answer.is_success() {
            return Err(self.rejected("read", &answer));
        }
        Ok(Observation::Present(self.object(
            t,
            &answer.body,
            &context,
            request.external_id,
        )?))
    }

    fn can_find(&self, resource_type: &str) -> bool {
        self.mapping.types.get(resource_type).is_some_and(|t| t.find.is_some())
    }

    async fn find(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        let t = self.mapping.resource_type(request.resource_type)?;
        let Some((find, select)) = &t.find else {
            return Ok(Observation::Absent);
        };
        let context = request.context();
        let answer = self.call(find, "find", &context, vec![]).await?;
        if t.not_found.contains(&answer.status) {
            return Ok(Observation::Absent);
        }
        if !answer.is_success() {
            return Err(self.rejected("find", &answer));
        }
        match select.eval(&answer.body, &[&context])? {
            Value::Null => Ok(Observation::Absent),
            found => Ok(Observation::Present(self.object(t, &found, &context, None)?)),
        }
    }

    async fn create(&self, request: &ObjectRequest<'_>) -> Result<ExternalObject> {
        let t = self.mapping.resource_type(request.resource_type)?;
        let context = request.context();
        let headers = match (&t.idempotency_header, request.idempotency_key) {
            (Some(header), Some(key)) => vec![(header.clone(), key.to_owned())],
            _ => vec![],
        };
        let answer = self.call(&t.create, "create", &context, headers).await?;
        if !answer.is_success() {
            return Err(self.rejected("create", &answer));
        }
        self.object(t, &answer.body, &context, None)
    }

    fn can_update(&self, resource_type: &str) -> bool {
        self.mapping
            .types
            .get(resource_type)
            .is_some_and(|t| t.update.is_some())
    }

    async fn update(&self, request: &ObjectRequest<'_>) -> Result<Option<Value>> {
        let t = self.mapping.resource_type(request.resource_type)?;
        let update = t.update.as_ref().ok_or_else(|| {
            AdapterError::Mapping(format!(
                "resource type {:?} has no update operation",
                request.resource_type
            ))
        })?;
        let context = request.context();
        let answer = self.call(update, "update", &context, vec![]).await?;
        if !answer.is_success() {
            return Err(self.rejected("update", &answer));
        }
        Ok(match &answer.body {
            body @ Value::Object(_) => {
                let mut body = body.clone();
                SecretValues::take(&mut body, &t.secret_fields);
                Some(t.observe.eval(&body, &[&context])?)
            }
            _ => None,
        })
    }

    async fn delete(&self, request: &ObjectRequest<'_>) -> Result<Deletion> {
        let t = self.mapping.resource_type(request.resource_type)?;
        let delete = t.delete.as_ref().ok_or_else(|| {
            AdapterError::Mapping(format!(
                "resource type {:?} has no delete operation",
                request.resource_type
            ))
        })?;
        let answer = self.call(delete, "delete", &request.context(), vec![]).await?;
        if t.not_found.contains(&answer.status) {
            Ok(Deletion::AlreadyGone)
        } else if answer.is_success() {
            Ok(Deletion::Deleted)
        } else {
            Err(self.rejected("delete", &answer))
        }
    }

    async fn act(&self, action: &str, input: &Value, idempotency_key: &str) -> Result<ActionOutcome> {
        let a = self
            .mapping
            .actions
            .get(action)
            .ok_or_else(|| AdapterError::Mapping(format!("the Adapter has no action {action:?}")))?;
        let context = json!({ "input": input, "idempotencyKey": idempotency_key });
        let headers = vec![("Idempotency-Key".to_owned(), idempotency_key.to_owned())];
        let answer = self
            .call(&a.request, &format!("action:{action}"), &context, headers)
            .await?;
        let response = answer.as_value();
        let succeeded = match &a.success_when {
            Some(condition) => condition.eval_bool(&response, &[])?,
            None => answer.is_success(),
        };
        let mut outputs = BTreeMap::new();
        if succeeded {
            for (name, expr) in &a.outputs {
                outputs.insert(name.clone(), expr.eval(&response, &[])?);
            }
        }
        Ok(ActionOutcome {
            status: answer.status,
            body: answer.body,
            succeeded,
            outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::adapter::{HttpMethod, HttpRequestTemplate};

    #[test]
    fn threat_a_template_cannot_set_host_credential_framing_or_tethers_own_headers() {
        for name in [
            "Host",
            "authorization",
            "Cookie",
            "X-Forwarded-Host",
            "X-Original-URL",
            "Transfer-Encoding",
            "Idempotency-Key",
            "x-tether-fencing-token",
        ] {
            let template = HttpRequestTemplate {
                method: HttpMethod::Get,
                path: "/v1/x".into(),
                query: Default::default(),
                headers: [(name.to_owned(), "admin.internal".to_owned())].into(),
                body: None,
            };
            let Err(errors) = CompiledRequest::compile("spec.steps[s].call.request", &template, &[]) else {
                panic!("{name} was accepted");
            };
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            assert!(
                message.contains(&format!("spec.steps[s].call.request.headers.{name}")),
                "{message}"
            );
            assert!(message.contains("reserved"), "{message}");
        }
        let ordinary = HttpRequestTemplate {
            method: HttpMethod::Get,
            path: "/v1/x".into(),
            query: Default::default(),
            headers: [("X-Request-Source".to_owned(), "tether".to_owned())].into(),
            body: None,
        };
        assert!(CompiledRequest::compile("f", &ordinary, &[]).is_ok());
    }
}
