//! What each step kind's outcome is, decided from what was observed: no
//! I/O here. The controller (`controller::workflow_run::steps`) fetches the
//! observations — an answer through a port, an ExternalResource from the
//! cache, an Approval — and acts; these functions say what they mean for
//! the step.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::compile::{Compiled, CompiledCallback, CompiledPoll};
use super::engine::{FailureClass, Observation, Start};
use super::vars::Vars;
use crate::api::approval::Decision;
use crate::api::external_resource::ExternalResourceStatus;
use crate::api::workflow_run::WorkflowRunStatus;
use crate::expr::Expr;

/// Why a step's attempt failed, and how (for its `retry.on`).
pub type Failure = (String, FailureClass);

/// `at + d` for a duration from the spec, saturating (see [`super::engine::after`]).
pub fn after_std(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    super::engine::after(at, chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

/// The name of the ExternalResource a `resource` step owns.
pub fn resource_name(run: &str, step: &str, item: Option<i32>) -> String {
    match item {
        Some(i) => format!("{run}-{step}-{i}"),
        None => format!("{run}-{step}"),
    }
}

/// The `forEach` items: the expression must yield an array.
pub fn eval_items(for_each: &Expr, vars: &Vars) -> Result<Vec<Value>, String> {
    match for_each.eval(&Value::Null, &vars.refs()) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(other) => Err(for_each.type_error("an array", &other).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The engine's `start` decision for step `i`: `when`, then `forEach`.
pub fn start(
    compiled: &Compiled,
    vars: impl Fn(&WorkflowRunStatus) -> Vars,
    i: usize,
    status: &WorkflowRunStatus,
) -> Result<Start, String> {
    let Some(step) = compiled.steps.get(i) else {
        return Ok(Start::Run);
    };
    if step.when.is_none() && step.for_each.is_none() {
        return Ok(Start::Run);
    }
    let vars = vars(status);
    if let Some(when) = &step.when
        && !when.eval_bool(&Value::Null, &vars.refs()).map_err(|e| e.to_string())?
    {
        return Ok(Start::Skip);
    }
    match &step.for_each {
        Some(for_each) => {
            let items = eval_items(for_each, &vars)?;
            Ok(Start::Items(u32::try_from(items.len()).unwrap_or(u32::MAX)))
        }
        None => Ok(Start::Run),
    }
}

/// `HTTP 503: message` for a response `{status, body}`, short enough for a
/// status.
pub fn summary(response: &Value) -> String {
    let status = response.get("status").and_then(Value::as_u64).unwrap_or_default();
    let body = response.get("body").cloned().unwrap_or(Value::Null);
    crate::text::shortened(&format!("HTTP {status}: {}", crate::request::error_message(&body)), 256)
}

/// A call's result: `successWhen` (default: the adapter's verdict, or a 2xx)
/// decides; a 4xx without `successWhen` is permanent; outputs are extracted
/// from `response` (`{status, body}`) on success.
pub fn call_outcome(
    response: &Value,
    succeeded: bool,
    success_when: Option<&Expr>,
    outputs: &[(String, Expr)],
    vars: &Vars,
) -> Result<Map<String, Value>, Failure> {
    let vars = vars.refs();
    let succeeded = match success_when {
        Some(condition) => condition
            .eval_bool(response, &vars)
            .map_err(|e| (e.to_string(), FailureClass::Permanent))?,
        None => succeeded,
    };
    if !succeeded {
        let class = match response.get("status").and_then(Value::as_u64) {
            Some(s) if success_when.is_none() && (400..500).contains(&s) => FailureClass::Permanent,
            _ => FailureClass::Condition,
        };
        return Err((format!("the call did not succeed: {}", summary(response)), class));
    }
    let mut extracted = Map::new();
    for (name, expr) in outputs {
        let value = expr
            .eval(response, &vars)
            .map_err(|e| (e.to_string(), FailureClass::Permanent))?;
        extracted.insert(name.clone(), value);
    }
    Ok(extracted)
}

/// What one poll answer means: `failWhen` fails the step, the condition
/// finishes it (outputs plus `result`, the answer's body), otherwise poll
/// again at `now + interval`.
pub fn poll_outcome(
    step: &str,
    poll: &CompiledPoll,
    response: &Value,
    outputs: Value,
    vars: &Vars,
    now: DateTime<Utc>,
) -> Observation {
    let failed = |message: String, class: FailureClass| Observation::Failed {
        step: step.to_owned(),
        item: None,
        message,
        class,
    };
    let refs = vars.refs();
    let eval = |e: &Expr| e.eval_bool(response, &refs);
    match poll.fail_when.as_ref().map(eval).transpose() {
        Err(e) => return failed(e.to_string(), FailureClass::Permanent),
        Ok(Some(true)) => {
            return failed(format!("failWhen held: {}", summary(response)), FailureClass::Condition);
        }
        _ => {}
    }
    match eval(&poll.condition) {
        Err(e) => failed(e.to_string(), FailureClass::Permanent),
        Ok(true) => {
            let mut done = match outputs {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            done.insert("result".into(), response.get("body").cloned().unwrap_or(Value::Null));
            Observation::Succeeded {
                step: step.to_owned(),
                item: None,
                outputs: Value::Object(done),
            }
        }
        Ok(false) => Observation::Waiting {
            step: step.to_owned(),
            until: Some(after_std(now, poll.interval)),
            outputs: None,
        },
    }
}

/// What a genuine callback body (its record verified) means for the step:
/// `successWhen` (default: any body) finishes it with the body under
/// `callback` beside the call's outputs, or fails it.
pub fn callback_outcome(
    step: &str,
    callback: &CompiledCallback,
    body: Value,
    outputs: Option<Value>,
    vars: &Vars,
) -> Observation {
    let failed = |message: String, class: FailureClass| Observation::Failed {
        step: step.to_owned(),
        item: None,
        message,
        class,
    };
    let ok = match &callback.success_when {
        Some(condition) => match condition.eval_bool(&body, &vars.refs()) {
            Ok(ok) => ok,
            Err(e) => return failed(e.to_string(), FailureClass::Permanent),
        },
        None => true,
    };
    if !ok {
        let text = crate::text::shortened(&body.to_string(), 200);
        return failed(format!("the callback did not succeed: {text}"), FailureClass::Condition);
    }
    let mut done = match outputs {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    done.insert("callback".into(), body);
    Observation::Succeeded {
        step: step.to_owned(),
        item: None,
        outputs: Value::Object(done),
    }
}

/// A step that waits past `deadline` without an outcome fails with `why`;
/// before it, there is nothing new (`None`).
pub fn timed_out(step: &str, deadline: DateTime<Utc>, now: DateTime<Utc>, why: String) -> Option<Observation> {
    (deadline <= now).then(|| Observation::Failed {
        step: step.to_owned(),
        item: None,
        message: why,
        class: FailureClass::Final,
    })
}

/// A `resource` step's outcome from its ExternalResource's status (`None`:
/// not seen yet): `Ready=True` finishes it with the name, external id and
/// observed state; past `readyTimeout` it fails with the last `Ready`
/// message; a create the target refused for good fails it at once.
pub fn resource_outcome(
    step: &str,
    name: &str,
    status: Option<&ExternalResourceStatus>,
    started: DateTime<Utc>,
    ready_timeout: Duration,
    now: DateTime<Utc>,
) -> Option<Observation> {
    use crate::api::common::condition::{READY, STALLED};
    if let Some(status) = status
        && crate::conditions::is_true(&status.conditions, READY)
    {
        return Some(Observation::Succeeded {
            step: step.to_owned(),
            item: None,
            outputs: json!({
                "name": name,
                "externalId": status.external_id,
                "observed": status.observed,
            }),
        });
    }
    let ready_message = || {
        status
            .and_then(|s| crate::conditions::find(&s.conditions, READY))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    if status.is_some_and(|s| crate::conditions::is_true(&s.conditions, STALLED)) {
        return Some(Observation::Failed {
            step: step.to_owned(),
            item: None,
            message: format!(
                "the ExternalResource cannot become Ready without a change: {}",
                ready_message()
            ),
            class: FailureClass::Final,
        });
    }
    timed_out(
        step,
        after_std(started, ready_timeout),
        now,
        format!("the ExternalResource was not Ready in time: {}", ready_message()),
    )
}

/// An `approval` step's outcome from the Approval that decides its gate
/// (`None`: none yet): approve or reject; without a decision, the
/// `defaultDecision` once `timeout` has passed.
pub fn approval_outcome(
    step: &str,
    decision: Option<(&Decision, &str, &str, &str)>,
    deadline: Option<DateTime<Utc>>,
    default_decision: Decision,
    now: DateTime<Utc>,
) -> Option<Observation> {
    let succeeded = |outputs: Value| Observation::Succeeded {
        step: step.to_owned(),
        item: None,
        outputs,
    };
    let failed = |message: String| Observation::Failed {
        step: step.to_owned(),
        item: None,
        message,
        class: FailureClass::Final,
    };
    if let Some((decision, who, why, approval)) = decision {
        return Some(match decision {
            Decision::Approve => succeeded(json!({
                "decision": "Approve", "decidedBy": who, "reason": why, "approval": approval,
            })),
            Decision::Reject if why.is_empty() => failed(format!("rejected by {who}")),
            Decision::Reject => failed(format!("rejected by {who}: {why}")),
        });
    }
    if deadline? > now {
        return None;
    }
    Some(match default_decision {
        Decision::Approve => succeeded(json!({"decision": "Approve", "decidedBy": "timeout"})),
        Decision::Reject => failed("no decision before the approval timeout".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::{READY, STALLED};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn t(second: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + second, 0).unwrap_or_default()
    }

    fn expr(source: &str) -> Expr {
        Expr::compile("test", source, super::super::vars::NAMES).expect("compiles")
    }

    fn condition(type_: &str, status: bool, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: "Test".into(),
            message: message.into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    #[test]
    fn a_call_without_success_when_fails_for_good_on_a_4xx_and_conditionally_otherwise() {
        let vars = Vars::default();
        let refused = json!({"status": 422, "body": {"message": "quantity: must be less than 100"}});
        let (message, class) = call_outcome(&refused, false, None, &[], &vars).expect_err("fails");
        assert_eq!(class, FailureClass::Permanent);
        assert!(
            message.contains("HTTP 422: quantity: must be less than 100"),
            "{message}"
        );
        let unavailable = json!({"status": 503, "body": {}});
        let (_, class) = call_outcome(&unavailable, false, None, &[], &vars).expect_err("fails");
        assert_eq!(class, FailureClass::Condition);
        // successWhen overrides the status, and outputs read the answer.
        let accepted = json!({"status": 202, "body": {"id": "job-1", "state": "queued"}});
        let outputs = call_outcome(
            &accepted,
            true,
            Some(&expr(".body.state == \"queued\"")),
            &[("job".into(), expr(".body.id"))],
            &vars,
        )
        .expect("succeeds");
        assert_eq!(outputs.get("job"), Some(&json!("job-1")));
        let (_, class) = call_outcome(&accepted, true, Some(&expr(".body.state == \"done\"")), &[], &vars)
            .expect_err("successWhen does not hold");
        assert_eq!(class, FailureClass::Condition);
    }

    #[test]
    fn a_resource_step_follows_its_external_resources_ready_and_stalled_conditions() {
        let status = |conditions: Vec<Condition>| ExternalResourceStatus {
            conditions,
            external_id: Some("c-1".into()),
            ..ExternalResourceStatus::default()
        };
        let timeout = Duration::from_secs(60);
        // Not seen yet, before the timeout: nothing new.
        assert_eq!(resource_outcome("s", "run-s", None, t(0), timeout, t(10)), None);
        // Ready: the step succeeds with the resource's id.
        let ready = status(vec![condition(READY, true, "in sync")]);
        match resource_outcome("s", "run-s", Some(&ready), t(0), timeout, t(10)) {
            Some(Observation::Succeeded { outputs, .. }) => {
                assert_eq!(outputs["externalId"], json!("c-1"));
                assert_eq!(outputs["name"], json!("run-s"));
            }
            other => panic!("{other:?}"),
        }
        // Refused for good (Stalled): fails now, with the target's message,
        // without waiting for readyTimeout.
        let refused = status(vec![
            condition(READY, false, "quantity: must be less than 100"),
            condition(STALLED, true, "only a change helps"),
        ]);
        match resource_outcome("s", "run-s", Some(&refused), t(0), timeout, t(10)) {
            Some(Observation::Failed { message, class, .. }) => {
                assert_eq!(class, FailureClass::Final);
                assert!(message.contains("quantity: must be less than 100"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Progressing past readyTimeout: fails with the last message.
        let progressing = status(vec![condition(READY, false, "target unavailable")]);
        assert_eq!(
            resource_outcome("s", "run-s", Some(&progressing), t(0), timeout, t(59)),
            None
        );
        match resource_outcome("s", "run-s", Some(&progressing), t(0), timeout, t(60)) {
            Some(Observation::Failed { message, .. }) => assert!(message.contains("target unavailable")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_approval_step_takes_the_decision_or_the_default_after_its_timeout() {
        let approve = Decision::Approve;
        let reject = Decision::Reject;
        match approval_outcome("gate", Some((&approve, "alice", "ok", "a-1")), None, reject, t(0)) {
            Some(Observation::Succeeded { outputs, .. }) => assert_eq!(outputs["decidedBy"], json!("alice")),
            other => panic!("{other:?}"),
        }
        match approval_outcome("gate", Some((&reject, "bob", "not now", "a-2")), None, approve, t(0)) {
            Some(Observation::Failed { message, class, .. }) => {
                assert_eq!(message, "rejected by bob: not now");
                assert_eq!(class, FailureClass::Final);
            }
            other => panic!("{other:?}"),
        }
        // No decision: wait without a timeout, or until it passes.
        assert_eq!(approval_outcome("gate", None, None, Decision::Reject, t(10)), None);
        assert_eq!(
            approval_outcome("gate", None, Some(t(20)), Decision::Reject, t(10)),
            None
        );
        assert!(matches!(
            approval_outcome("gate", None, Some(t(20)), Decision::Approve, t(20)),
            Some(Observation::Succeeded { .. })
        ));
        assert!(matches!(
            approval_outcome("gate", None, Some(t(20)), Decision::Reject, t(21)),
            Some(Observation::Failed { .. })
        ));
    }

    #[test]
    fn a_poll_ends_on_its_condition_fails_on_fail_when_and_otherwise_polls_again() {
        let poll = CompiledPoll {
            request: crate::request::CompiledRequest::compile(
                "poll",
                &crate::api::adapter::HttpRequestTemplate {
                    method: crate::api::adapter::HttpMethod::Get,
                    path: "/jobs/1".into(),
                    query: Default::default(),
                    headers: Default::default(),
                    body: None,
                },
                super::super::vars::NAMES,
            )
            .unwrap_or_else(|_| panic!("compiles")),
            condition: expr(".body.state == \"done\""),
            fail_when: Some(expr(".body.state == \"error\"")),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
        };
        let vars = Vars::default();
        let answer = |state: &str| json!({"status": 200, "body": {"state": state}});
        match poll_outcome("export", &poll, &answer("done"), json!({"job": "1"}), &vars, t(0)) {
            Observation::Succeeded { outputs, .. } => {
                assert_eq!(outputs["job"], json!("1"));
                assert_eq!(outputs["result"]["state"], json!("done"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            poll_outcome("export", &poll, &answer("error"), Value::Null, &vars, t(0)),
            Observation::Failed {
                class: FailureClass::Condition,
                ..
            }
        ));
        assert_eq!(
            poll_outcome("export", &poll, &answer("running"), Value::Null, &vars, t(0)),
            Observation::Waiting {
                step: "export".into(),
                until: Some(t(5)),
                outputs: None
            }
        );
    }

    #[test]
    fn a_callback_succeeds_by_its_success_when_and_keeps_the_calls_outputs() {
        let callback = CompiledCallback {
            secret: crate::api::common::SecretKeyRef {
                name: "k".into(),
                key: "k".into(),
            },
            timeout: Duration::from_secs(60),
            success_when: Some(expr(".status == \"ok\"")),
        };
        let vars = Vars::default();
        match callback_outcome(
            "sign",
            &callback,
            json!({"status": "ok"}),
            Some(json!({"id": 7})),
            &vars,
        ) {
            Observation::Succeeded { outputs, .. } => {
                assert_eq!(outputs["id"], json!(7));
                assert_eq!(outputs["callback"]["status"], json!("ok"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            callback_outcome("sign", &callback, json!({"status": "declined"}), None, &vars),
            Observation::Failed {
                class: FailureClass::Condition,
                ..
            }
        ));
    }

    #[test]
    fn a_wait_ends_at_its_deadline_and_not_before() {
        assert_eq!(timed_out("w", t(30), t(29), "late".into()), None);
        assert!(matches!(
            timed_out("w", t(30), t(30), "late".into()),
            Some(Observation::Failed { .. })
        ));
        assert_eq!(after_std(t(0), Duration::from_secs(30)), t(30));
        // A duration beyond the calendar saturates instead of panicking.
        assert_eq!(after_std(t(0), Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
