//! A Workflow's definition with every expression compiled, ready to run:
//! the engine's [`Definition`] plus, per step, what to send and how to read
//! the answer. Compiling is also how a Workflow is validated: every error
//! names its field (`spec.steps[account].call.input`) and quotes the
//! expression.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::approval::Decision;
use crate::api::workflow::{CallStep, ParameterType, WorkflowSpec};
use crate::expr::Expr;
use crate::request::CompiledRequest;
use crate::workflow::engine::Definition;
use crate::workflow::vars::NAMES as VAR_NAMES;

pub struct CompiledCall {
    pub target: String,
    pub action: Option<String>,
    pub input: Option<Expr>,
    pub request: Option<CompiledRequest>,
    pub success_when: Option<Expr>,
    pub outputs: Vec<(String, Expr)>,
    pub poll: Option<CompiledPoll>,
    pub callback: Option<CompiledCallback>,
}

pub struct CompiledCallback {
    pub secret: crate::api::common::SecretKeyRef,
    pub timeout: Duration,
    pub success_when: Option<Expr>,
}

pub struct CompiledPoll {
    pub request: CompiledRequest,
    pub condition: Expr,
    pub fail_when: Option<Expr>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A `resource` step: an ExternalResource the run owns.
pub struct CompiledResource {
    pub target: String,
    pub resource_type: String,
    pub properties: Expr,
    pub ready_timeout: Duration,
    /// Keep the ExternalResource when the run compensates.
    pub keep: bool,
}

/// An `approval` step: a gate decided by an Approval.
pub struct CompiledApproval {
    pub message: Option<String>,
    pub timeout: Option<Duration>,
    pub default_decision: Decision,
}

/// What a step does; each kind is performed by its own file under
/// `controller::workflow_run::steps`.
pub enum StepKind {
    Call(Box<CompiledCall>),
    Resource(CompiledResource),
    Approval(CompiledApproval),
    Wait(Duration),
}

impl StepKind {
    /// The kind's field name in a Workflow (`call`, `resource`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            StepKind::Call(_) => "call",
            StepKind::Resource(_) => "resource",
            StepKind::Approval(_) => "approval",
            StepKind::Wait(_) => "wait",
        }
    }
}

pub struct CompiledStep {
    pub name: String,
    pub when: Option<Expr>,
    pub for_each: Option<Expr>,
    pub kind: StepKind,
    pub compensate: Option<CompiledCall>,
}

pub struct Compiled {
    pub def: Definition,
    pub steps: Vec<CompiledStep>,
    pub outputs: Vec<(String, Expr)>,
}

/// The hash a run pins with its copy of the spec.
pub fn spec_hash(spec: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(spec).unwrap_or_default());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn duration(d: &crate::api::common::Duration, fallback: Duration) -> Duration {
    d.to_std().unwrap_or(fallback)
}

impl Compiled {
    /// Compiles every expression and builds the DAG; on failure, every
    /// problem found, each naming its field.
    pub fn compile(spec: &WorkflowSpec) -> Result<Self, Vec<String>> {
        let mut errors: Vec<String> = Vec::new();
        let mut dag_error = None;
        let def = Definition::from_spec(spec)
            .map_err(|e| dag_error = Some(e.to_string()))
            .ok();
        let mut steps = Vec::new();
        let mut kind_errors = Vec::new();
        for s in &spec.steps {
            let field = format!("spec.steps[{}]", s.name);
            let when = s
                .when
                .as_ref()
                .and_then(|w| expr(&mut errors, format!("{field}.when"), w));
            let for_each = s
                .for_each
                .as_ref()
                .and_then(|f| expr(&mut errors, format!("{field}.forEach"), f));
            if s.for_each.is_some()
                && let Some(call) = &s.call
                && (call.poll_until.is_some() || call.callback.is_some())
            {
                kind_errors.push(format!(
                    "{field}: a forEach step completes each item with its answer; pollUntil and callback are for single steps"
                ));
            }
            if s.for_each.is_some() && (s.wait.is_some() || s.approval.is_some()) {
                kind_errors.push(format!(
                    "{field}: forEach is for call and resource steps; a wait or approval step waits once for the whole step"
                ));
            }
            let kind = if let Some(call) = &s.call {
                compile_call(&format!("{field}.call"), call, &mut errors).map(|c| StepKind::Call(Box::new(c)))
            } else if let Some(r) = &s.resource {
                expr(&mut errors, format!("{field}.resource.properties"), &r.properties).map(|properties| {
                    StepKind::Resource(CompiledResource {
                        target: r.target_ref.name.clone(),
                        resource_type: r.type_.clone(),
                        properties,
                        ready_timeout: duration(&r.ready_timeout, Duration::from_secs(3600)),
                        keep: r.keep,
                    })
                })
            } else if let Some(a) = &s.approval {
                Some(StepKind::Approval(CompiledApproval {
                    message: a.message.clone(),
                    timeout: a.timeout.as_ref().and_then(|t| t.to_std()),
                    default_decision: a.default_decision.unwrap_or(Decision::Reject),
                }))
            } else if let Some(w) = &s.wait {
                Some(StepKind::Wait(duration(&w.duration, Duration::ZERO)))
            } else {
                kind_errors.push(format!("{field}: set one of call, resource, approval or wait"));
                None
            };
            let compensate = s
                .compensate
                .as_ref()
                .and_then(|c| compile_call(&format!("{field}.compensate"), c, &mut errors));
            if let Some(kind) = kind {
                steps.push(CompiledStep {
                    name: s.name.clone(),
                    when,
                    for_each,
                    kind,
                    compensate,
                });
            }
        }
        let outputs: Vec<(String, Expr)> = spec
            .outputs
            .iter()
            .filter_map(|(k, v)| expr(&mut errors, format!("spec.outputs.{k}"), v).map(|e| (k.clone(), e)))
            .collect();
        let all: Vec<String> = dag_error.into_iter().chain(kind_errors).chain(errors).collect();
        match def {
            Some(def) if all.is_empty() => Ok(Self { def, steps, outputs }),
            _ => Err(all),
        }
    }
}

fn expr(errors: &mut Vec<String>, field: String, source: &str) -> Option<Expr> {
    Expr::compile(&field, source, VAR_NAMES)
        .map_err(|e| errors.push(e.to_string()))
        .ok()
}

fn compile_call(field: &str, call: &CallStep, errors: &mut Vec<String>) -> Option<CompiledCall> {
    let input = call.input.as_ref().map(|i| expr(errors, format!("{field}.input"), i));
    let success_when = call
        .success_when
        .as_ref()
        .map(|w| expr(errors, format!("{field}.successWhen"), w));
    let outputs: Vec<Option<(String, Expr)>> = call
        .outputs
        .iter()
        .map(|(k, v)| expr(errors, format!("{field}.outputs.{k}"), v).map(|e| (k.clone(), e)))
        .collect();
    let poll = call.poll_until.as_ref().map(|p| {
        let condition = expr(errors, format!("{field}.pollUntil.condition"), &p.condition);
        let fail_when = p
            .fail_when
            .as_ref()
            .map(|f| expr(errors, format!("{field}.pollUntil.failWhen"), f));
        let template = p.request.clone().or_else(|| {
            call.request.as_ref().map(|r| crate::api::adapter::HttpRequestTemplate {
                method: crate::api::adapter::HttpMethod::Get,
                path: r.path.clone(),
                query: BTreeMap::new(),
                headers: BTreeMap::new(),
                body: None,
            })
        });
        let request = match template {
            Some(t) => CompiledRequest::compile(&format!("{field}.pollUntil.request"), &t, VAR_NAMES)
                .map_err(|e| errors.extend(e.iter().map(ToString::to_string)))
                .ok(),
            None => {
                errors.push(format!(
                    "{field}.pollUntil.request: a call by action must say which request to poll"
                ));
                None
            }
        };
        Some(CompiledPoll {
            request: request?,
            condition: condition?,
            fail_when: fail_when.map(|f| f.ok_or(())).transpose().ok()?,
            interval: duration(&p.interval, Duration::from_secs(10)),
            timeout: duration(&p.timeout, Duration::from_secs(3600)),
        })
    });
    if call.callback.is_some() && call.poll_until.is_some() {
        errors.push(format!("{field}: set pollUntil or callback, not both"));
    }
    let callback = call.callback.as_ref().map(|c| {
        let success_when = c
            .success_when
            .as_ref()
            .map(|w| expr(errors, format!("{field}.callback.successWhen"), w));
        Some(CompiledCallback {
            secret: c.secret_ref.clone(),
            timeout: duration(&c.timeout, Duration::from_secs(3600)),
            success_when: success_when.map(|w| w.ok_or(())).transpose().ok()?,
        })
    });
    let request = call.request.as_ref().map(|r| {
        CompiledRequest::compile(&format!("{field}.request"), r, VAR_NAMES)
            .map_err(|e| errors.extend(e.iter().map(ToString::to_string)))
            .ok()
    });
    Some(CompiledCall {
        target: call.target_ref.name.clone(),
        action: call.action.clone(),
        input: input.map(|i| i.ok_or(())).transpose().ok()?,
        request: request.map(|r| r.ok_or(())).transpose().ok()?,
        success_when: success_when.map(|w| w.ok_or(())).transpose().ok()?,
        outputs: outputs.into_iter().collect::<Option<Vec<_>>>()?,
        poll: poll.map(|p| p.ok_or(())).transpose().ok()?,
        callback: callback.map(|c| c.ok_or(())).transpose().ok()?,
    })
}

/// The run's parameters: the given values, the defaults for the others;
/// refuses missing required parameters, wrong types and unknown names.
pub fn resolve_parameters(spec: &WorkflowSpec, given: &Value) -> Result<Value, String> {
    let empty = Map::new();
    let given = match given {
        Value::Object(map) => map,
        Value::Null => &empty,
        other => return Err(format!("spec.parameters must be an object, not {other}")),
    };
    let mut problems = Vec::new();
    for name in given.keys() {
        if !spec.parameters.iter().any(|p| &p.name == name) {
            problems.push(format!("{name:?} is not a parameter of the workflow"));
        }
    }
    let mut params = Map::new();
    for p in &spec.parameters {
        let Some(value) = given.get(&p.name).or(p.default.as_ref()) else {
            if p.required {
                problems.push(format!("parameter {:?} is required", p.name));
            }
            continue;
        };
        let fits = match p.type_ {
            ParameterType::String => value.is_string(),
            ParameterType::Number => value.is_number(),
            ParameterType::Boolean => value.is_boolean(),
            ParameterType::Object => value.is_object(),
            ParameterType::Array => value.is_array(),
        };
        if !fits {
            problems.push(format!(
                "parameter {:?} must be a {}, got {value}",
                p.name,
                serde_json::to_value(p.type_)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
        params.insert(p.name.clone(), value.clone());
    }
    if problems.is_empty() {
        Ok(Value::Object(params))
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::workflow::WorkflowSpec;
    use serde_json::json;

    fn spec(yaml: &str) -> WorkflowSpec {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_bad_expression_is_reported_with_its_field() {
        let errors = Compiled::compile(&spec(
            r#"
steps:
  - name: a
    when: "$params.x =="
    call:
      targetRef: {name: t}
      action: go
      input: "{x: $nope}"
  - name: b
    dependsOn: [a]
    wait: {duration: 1s}
outputs:
  id: ".[[["
"#,
        ))
        .err()
        .unwrap_or_default();
        let text = errors.join("\n");
        assert!(text.contains("spec.steps[a].when"), "{text}");
        assert!(text.contains("spec.steps[a].call.input"), "{text}");
        assert!(text.contains("spec.outputs.id"), "{text}");
    }

    #[test]
    fn a_step_completes_one_way_only() {
        let errors = Compiled::compile(&spec(
            r#"
steps:
  - name: a
    forEach: "[1, 2]"
    call:
      targetRef: {name: t}
      request: {method: POST, path: /v1/jobs}
      callback: {secretRef: {name: s, key: k}}
      pollUntil: {condition: .body.done}
"#,
        ))
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("pollUntil and callback are for single steps"),
            "{errors:?}"
        );
        assert_eq!(errors[1], "spec.steps[a].call: set pollUntil or callback, not both");
    }

    #[test]
    fn for_each_on_a_wait_or_approval_step_is_refused_naming_the_step() {
        let errors = Compiled::compile(&spec(
            r#"
steps:
  - {name: pause, forEach: "[1, 2, 3]", wait: {duration: 1s}}
  - {name: gate, forEach: "[1, 2]", approval: {}}
"#,
        ))
        .err()
        .unwrap_or_default();
        assert_eq!(
            errors,
            vec![
                "spec.steps[pause]: forEach is for call and resource steps; a wait or approval step waits once for the whole step",
                "spec.steps[gate]: forEach is for call and resource steps; a wait or approval step waits once for the whole step",
            ]
        );
    }

    #[test]
    fn a_cycle_is_named_step_by_step() {
        let errors = Compiled::compile(&spec(
            r#"
steps:
  - {name: a, dependsOn: [c], wait: {duration: 1s}}
  - {name: b, dependsOn: [a], wait: {duration: 1s}}
  - {name: c, dependsOn: [b], wait: {duration: 1s}}
"#,
        ))
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("the steps form a cycle: "), "{errors:?}");
    }

    #[test]
    fn parameters_get_defaults_and_wrong_ones_are_named() {
        let s = spec(
            r#"
parameters:
  - {name: email, required: true}
  - {name: plan, default: starter}
  - {name: seats, type: number}
steps:
  - {name: a, wait: {duration: 1s}}
"#,
        );
        assert_eq!(
            resolve_parameters(&s, &json!({"email": "a@b.c"})),
            Ok(json!({"email": "a@b.c", "plan": "starter"}))
        );
        let err = resolve_parameters(&s, &json!({"seats": "ten", "colour": 1}))
            .err()
            .unwrap_or_default();
        assert!(err.contains("\"colour\" is not a parameter"), "{err}");
        assert!(err.contains("parameter \"email\" is required"), "{err}");
        assert!(err.contains("parameter \"seats\" must be a number"), "{err}");
    }
}
