//! The declarative form of an Adapter: each operation of each resource type
//! is an HTTP request built from templates, and each answer is read with
//! expressions. The mapping is compiled once per Adapter generation
//! ([`CompiledMapping`]); [`RestAdapter`] pairs it with a target.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    ActionOutcome, AdapterError, Deletion, ExternalObject, ExternalSystem, ObjectRequest, Observation, Result,
    SecretValues,
};
use crate::api::adapter::{HttpRequestTemplate, RestAction, RestMapping, RestResourceType};
use crate::expr::{Expr, ExprError, in_turn};
use crate::request::error_message;
use crate::request::{CompiledRequest, HttpAnswer, TargetRequests};

/// The longest external id Tether keeps (status, conditions, paths).
pub const MAX_ID_BYTES: usize = 512;

/// Most pages one `find` reads, whatever the Adapter says.
pub const MAX_FIND_PAGES: usize = 100;

/// Variables of expressions that read an answer: `$desired` is the request
/// context (`.properties`, `.id`, `.name`, `.idempotencyKey`).
const ANSWER_VARS: &[&str] = &["$desired"];

pub struct CompiledType {
    id: Expr,
    observe: Expr,
    read: CompiledRequest,
    create: CompiledRequest,
    update: Option<CompiledRequest>,
    delete: Option<CompiledRequest>,
    find: Option<CompiledFind>,
    not_found: Vec<u16>,
    idempotency_header: Option<String>,
    secret_fields: Vec<String>,
}

/// A `find`: the list request, the selection, and how to page.
pub struct CompiledFind {
    request: CompiledRequest,
    select: Expr,
    /// The next-page expression, the query parameter, the page bound.
    pagination: Option<(Expr, String, usize)>,
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
    let next = t.find.as_ref().and_then(|f| f.pagination.as_ref()).map(|p| {
        Expr::compile(&format!("{field}.find.pagination.next"), &p.next, ANSWER_VARS)
            .map_err(|e| errors.push(e))
            .ok()
            .map(|next| {
                let max = usize::try_from(p.max_pages).unwrap_or(1).clamp(1, MAX_FIND_PAGES);
                (next, p.query_param.clone(), max)
            })
    });
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
        find: find_request
            .flatten()
            .zip(select.flatten())
            .map(|(request, select)| CompiledFind {
                request,
                select,
                pagination: next.flatten(),
            }),
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
pub struct RestAdapter<T> {
    mapping: Arc<CompiledMapping>,
    target: Arc<T>,
}

impl<T: TargetRequests> RestAdapter<T> {
    pub fn new(mapping: Arc<CompiledMapping>, target: Arc<T>) -> Self {
        Self { mapping, target }
    }

    async fn call(
        &self,
        request: &CompiledRequest,
        operation: &str,
        context: &Value,
        extra_headers: Vec<(String, String)>,
    ) -> Result<HttpAnswer> {
        let mut call = in_turn(|| request.render(operation, context, &[])).await?;
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
            message: self.target.redact(&error_message(&answer.body)),
        }
    }
}

impl<T: TargetRequests> ExternalSystem for RestAdapter<T> {
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
        Ok(Observation::Present(
            in_turn(|| self.object(t, &answer.body, &context, request.external_id)).await?,
        ))
    }

    fn can_find(&self, resource_type: &str) -> bool {
        self.mapping.types.get(resource_type).is_some_and(|t| t.find.is_some())
    }

    async fn find(&self, request: &ObjectRequest<'_>) -> Result<Observation> {
        let t = self.mapping.resource_type(request.resource_type)?;
        let Some(find) = &t.find else {
            return Ok(Observation::Absent);
        };
        let context = request.context();
        let max_pages = find.pagination.as_ref().map_or(1, |(_, _, max)| *max);
        let mut token: Option<String> = None;
        for _ in 0..max_pages {
            let mut call = in_turn(|| find.request.render("find", &context, &[])).await?;
            if let (Some((_, param, _)), Some(token)) = (&find.pagination, &token) {
                call.query.retain(|(name, _)| name != param);
                call.query.push((param.clone(), token.clone()));
            }
            let answer = self.target.send(call).await?;
            if t.not_found.contains(&answer.status) {
                return Ok(Observation::Absent);
            }
            if !answer.is_success() {
                return Err(self.rejected("find", &answer));
            }
            let found = in_turn(|| match find.select.eval(&answer.body, &[&context])? {
                Value::Null => Ok(None),
                found => self.object(t, &found, &context, None).map(Some),
            })
            .await?;
            if let Some(found) = found {
                return Ok(Observation::Present(found));
            }
            let Some((next, _, _)) = &find.pagination else {
                return Ok(Observation::Absent);
            };
            let next = match in_turn(|| next.eval(&answer.body, &[&context])).await? {
                Value::Null | Value::Bool(false) => None,
                Value::String(s) => Some(s).filter(|s| !s.is_empty()),
                Value::Number(n) => Some(n.to_string()),
                other => {
                    return Err(AdapterError::Mapping(format!(
                        "{}: the next page token must be a string or a number, not {other}",
                        next.source()
                    )));
                }
            };
            // The same token twice would loop until the page bound.
            if next.is_none() || next == token {
                return Ok(Observation::Absent);
            }
            token = next;
        }
        // Pages remain: saying "absent" would create a duplicate of an
        // object on a page not read.
        Err(AdapterError::Mapping(format!(
            "find read {max_pages} pages of resource type {:?} without reaching the last one; \
             raise find.pagination.maxPages or narrow the find with a filter",
            request.resource_type
        )))
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
        in_turn(|| self.object(t, &answer.body, &context, None)).await
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
                Some(in_turn(|| t.observe.eval(&body, &[&context])).await?)
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
        let (succeeded, outputs) = in_turn(|| -> Result<_> {
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
            Ok((succeeded, outputs))
        })
        .await?;
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
    use serde_json::json;

    use super::*;
    use crate::fakes::{FakeTarget, answer};

    fn mapping(pagination: Value) -> Arc<CompiledMapping> {
        let mut find = json!({
            "method": "GET", "path": "/v1/contacts",
            "query": {"limit": "2"},
            "select": ".items[] | select(.externalName == $desired.name)",
        });
        if !pagination.is_null() {
            find["pagination"] = pagination;
        }
        let rest: RestMapping = serde_json::from_value(json!({"resourceTypes": [{
            "name": "contact",
            "read": {"method": "GET", "path": "/v1/contacts/\\(.id)"},
            "create": {"method": "POST", "path": "/v1/contacts", "body": ".properties"},
            "find": find,
        }]}))
        .expect("mapping");
        Arc::new(CompiledMapping::compile(&rest).unwrap_or_else(|e| panic!("{e:?}")))
    }

    fn page(names: &[&str], next: Option<&str>) -> Result<HttpAnswer, crate::request::CallError> {
        let items: Vec<Value> = names
            .iter()
            .map(|n| json!({"id": format!("id-{n}"), "externalName": n}))
            .collect();
        answer(200, json!({"items": items, "nextCursor": next}))
    }

    fn request<'a>(properties: &'a Value) -> ObjectRequest<'a> {
        ObjectRequest {
            resource_type: "contact",
            external_id: None,
            external_name: "ada",
            properties,
            idempotency_key: None,
        }
    }

    fn cursor(call: &crate::request::HttpCall) -> Option<&str> {
        call.query.iter().find(|(k, _)| k == "cursor").map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn find_reads_the_next_pages_until_it_finds_the_object() {
        let target = Arc::new(FakeTarget::answering(vec![
            page(&["a", "b"], Some("b")),
            page(&["c", "d"], Some("d")),
            page(&["ada"], None),
        ]));
        let adapter = RestAdapter::new(
            mapping(json!({"next": ".nextCursor", "queryParam": "cursor"})),
            target.clone(),
        );
        let properties = json!({});
        let found = adapter.find(&request(&properties)).await.expect("find");
        assert!(
            matches!(&found, Observation::Present(o) if o.id == "id-ada"),
            "{found:?}"
        );
        let sent = target.sent();
        assert_eq!(sent.len(), 3);
        assert_eq!(
            sent.iter().map(cursor).collect::<Vec<_>>(),
            vec![None, Some("b"), Some("d")]
        );
        // The find's own query parameters ride along on every page.
        assert!(sent.iter().all(|c| c.query.contains(&("limit".into(), "2".into()))));
    }

    #[tokio::test]
    async fn find_stops_at_the_last_page_and_says_absent() {
        let target = Arc::new(FakeTarget::answering(vec![page(&["a"], Some("a")), page(&["b"], None)]));
        let adapter = RestAdapter::new(
            mapping(json!({"next": ".nextCursor", "queryParam": "cursor"})),
            target.clone(),
        );
        let properties = json!({});
        assert_eq!(
            adapter.find(&request(&properties)).await.expect("find"),
            Observation::Absent
        );
        assert_eq!(target.sent().len(), 2);
    }

    #[tokio::test]
    async fn find_past_its_page_bound_fails_instead_of_reporting_absent() {
        let target = Arc::new(FakeTarget::answering(vec![
            page(&["a"], Some("1")),
            page(&["b"], Some("2")),
            page(&["c"], Some("3")),
        ]));
        let adapter = RestAdapter::new(
            mapping(json!({"next": ".nextCursor", "queryParam": "cursor", "maxPages": 2})),
            target.clone(),
        );
        let properties = json!({});
        let error = adapter.find(&request(&properties)).await.expect_err("bounded");
        assert!(error.to_string().contains("maxPages"), "{error}");
        assert!(error.certainly_not_applied(), "a create must not follow");
        assert_eq!(target.sent().len(), 2);
    }

    #[tokio::test]
    async fn find_without_pagination_reads_one_page() {
        let target = Arc::new(FakeTarget::answering(vec![
            page(&["a"], Some("a")),
            page(&["ada"], None),
        ]));
        let adapter = RestAdapter::new(mapping(Value::Null), target.clone());
        let properties = json!({});
        assert_eq!(
            adapter.find(&request(&properties)).await.expect("find"),
            Observation::Absent
        );
        assert_eq!(target.sent().len(), 1);
    }
}
