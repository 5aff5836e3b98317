//! A `call` step: an adapter action (the adapter port) or a raw request
//! (the request port), with the attempt's idempotency key; then, if it
//! says so, a poll until a condition holds, or a wait for a signed
//! callback. Its compensation is another call.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::{Map, Value, json};

use super::{Do, Scope, Step};
use crate::adapter::{AdapterError, ExternalSystem};
use crate::api::common::SecretKeyRef;
use crate::api::common::reason::CALLBACK_FORGED;
use crate::expr::in_turn;
use crate::keys::{Freshness, Purpose};
use crate::request::{CallError, TargetRequests};
use crate::workflow::callback;
use crate::workflow::compile::CompiledCall;
use crate::workflow::engine::{FailureClass, Observation};
use crate::workflow::steps::{Failure, after_std, call_outcome, callback_outcome, poll_outcome, timed_out};
use crate::workflow::vars::Vars;

pub async fn perform(scope: &Scope<'_>, step: &Step<'_>, call: &CompiledCall, what: Do<'_>) -> Option<Observation> {
    match what {
        Do::Start { item, key } => Some(start(scope, step, call, item, key).await),
        Do::Check if call.callback.is_some() => check_callback(scope, step, call).await,
        Do::Check => check_poll(scope, step, call).await,
        Do::Compensate { item, key } => Some(compensate(scope, step, item, key).await),
    }
}

async fn start(scope: &Scope<'_>, step: &Step<'_>, call: &CompiledCall, item: Option<i32>, key: &str) -> Observation {
    let mut vars = scope.vars(item, step.name);
    if let Some(callback) = &call.callback {
        match callback_value(scope, step.name, step.status.attempt, &callback.secret).await {
            Ok(value) => vars.callback = value,
            Err(failure) => return step.failed(item, failure),
        }
    }
    let outputs = match scope.endpoints(&call.target).await {
        Ok((adapter, requests)) => {
            invoke(
                call,
                &vars,
                key,
                &format!("step:{}", step.name),
                &adapter,
                requests.as_ref(),
            )
            .await
        }
        Err(failure) => Err(failure),
    };
    match outputs {
        Err(failure) => step.failed(item, failure),
        Ok(outputs) if call.poll.is_some() || call.callback.is_some() => step.waiting(
            call.poll.as_ref().map(|p| after_std(scope.now, p.interval)),
            Some(Value::Object(outputs)),
        ),
        Ok(outputs) => Observation::Succeeded {
            step: step.name.to_owned(),
            item,
            outputs: Value::Object(outputs),
        },
    }
}

/// One call through the ports: the adapter's action, or the raw request
/// (with the idempotency key as `Idempotency-Key`); success by
/// `successWhen` (default: the adapter's verdict, or a 2xx); outputs
/// extracted.
pub async fn invoke(
    call: &CompiledCall,
    vars: &Vars,
    key: &str,
    operation: &str,
    adapter: &impl ExternalSystem,
    requests: &impl TargetRequests,
) -> Result<Map<String, Value>, Failure> {
    let input = match &call.input {
        Some(input) => in_turn(|| input.eval(&Value::Null, &vars.refs()))
            .await
            .map_err(|e| (e.to_string(), FailureClass::Permanent))?,
        None => Value::Null,
    };
    let mut outputs = Map::new();
    let (response, succeeded) = if let Some(action) = &call.action {
        let outcome = adapter.act(action, &input, key).await.map_err(|e| classify(&e))?;
        outputs.extend(outcome.outputs);
        (
            json!({"status": outcome.status, "body": outcome.body}),
            outcome.succeeded,
        )
    } else if let Some(request) = &call.request {
        let mut http = in_turn(|| request.render(operation, &input, &vars.refs()))
            .await
            .map_err(|e| (e.to_string(), FailureClass::Permanent))?;
        http.headers.push(("Idempotency-Key".into(), key.to_owned()));
        let answer = requests.send(http).await.map_err(call_failure)?;
        (answer.as_value(), answer.is_success())
    } else {
        return Err((
            "the call sets neither action nor request".into(),
            FailureClass::Permanent,
        ));
    };
    outputs
        .extend(in_turn(|| call_outcome(&response, succeeded, call.success_when.as_ref(), &call.outputs, vars)).await?);
    Ok(outputs)
}

/// One poll through the request port: the poll's request rendered from the
/// step's outputs; a transient failure of one poll is not the step's (it
/// polls again).
pub async fn poll(
    step: &str,
    call: &CompiledCall,
    outputs: Value,
    vars: &Vars,
    requests: &impl TargetRequests,
    now: chrono::DateTime<chrono::Utc>,
) -> Observation {
    let again = Observation::Waiting {
        step: step.to_owned(),
        until: call.poll.as_ref().map(|p| after_std(now, p.interval)),
        outputs: None,
    };
    let Some(poll) = &call.poll else {
        return again;
    };
    let failed = |(message, class): Failure| Observation::Failed {
        step: step.to_owned(),
        item: None,
        message,
        class,
    };
    let request = match in_turn(|| poll.request.render(&format!("poll:{step}"), &outputs, &vars.refs())).await {
        Ok(r) => r,
        Err(e) => return failed((e.to_string(), FailureClass::Permanent)),
    };
    match requests.send(request).await.map_err(call_failure) {
        Ok(answer) => in_turn(|| poll_outcome(step, poll, &answer.as_value(), outputs, vars, now)).await,
        Err((_, FailureClass::Transient)) => again,
        Err(failure) => failed(failure),
    }
}

async fn check_poll(scope: &Scope<'_>, step: &Step<'_>, call: &CompiledCall) -> Option<Observation> {
    let spec = call.poll.as_ref()?;
    let deadline = after_std(step.started(scope.now), spec.timeout);
    if let Some(late) = timed_out(
        step.name,
        deadline,
        scope.now,
        format!("still not done after the poll timeout ({}s)", spec.timeout.as_secs()),
    ) {
        return Some(late);
    }
    let outputs = step.status.outputs.clone().unwrap_or(Value::Null);
    let vars = scope.vars(None, step.name);
    Some(match scope.endpoints(&call.target).await {
        Ok((_, requests)) => poll(step.name, call, outputs, &vars, requests.as_ref(), scope.now).await,
        Err((_, FailureClass::Transient)) => step.waiting(Some(after_std(scope.now, spec.interval)), None),
        Err(failure) => step.failed(None, failure),
    })
}

async fn check_callback(scope: &Scope<'_>, step: &Step<'_>, call: &CompiledCall) -> Option<Observation> {
    let spec = call.callback.as_ref()?;
    let attempt = step.status.attempt;
    let received = scope
        .run
        .annotations()
        .get(&callback::annotation(step.name))
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .filter(|v| v.get("attempt").and_then(Value::as_i64) == Some(i64::from(attempt)));
    let genuine = match received {
        Some(record) if genuine_callback(scope, step.name, attempt, &spec.secret, &record).await => Some(record),
        _ => None,
    };
    let Some(record) = genuine else {
        return timed_out(
            step.name,
            after_std(step.started(scope.now), spec.timeout),
            scope.now,
            format!("no callback within {}s", spec.timeout.as_secs()),
        );
    };
    let body = record.get("body").cloned().unwrap_or(Value::Null);
    let vars = scope.vars(None, step.name);
    Some(in_turn(|| callback_outcome(step.name, spec, body, step.status.outputs.clone(), &vars)).await)
}

/// Undoes a step with its `compensate` call (done at once without one).
pub async fn compensate(scope: &Scope<'_>, step: &Step<'_>, item: Option<i32>, key: &str) -> Observation {
    let done = Observation::Compensated {
        step: step.name.to_owned(),
        item,
    };
    let Some(undo) = &step.compiled.compensate else {
        return done;
    };
    let vars = scope.vars(item, step.name);
    let result = match scope.endpoints(&undo.target).await {
        Ok((adapter, requests)) => {
            invoke(
                undo,
                &vars,
                key,
                &format!("compensate:{}", step.name),
                &adapter,
                requests.as_ref(),
            )
            .await
        }
        Err(failure) => Err(failure),
    };
    match result {
        Ok(_) => done,
        // The engine retries a compensation that failed transiently.
        Err((message, class)) => Observation::CompensationFailed {
            step: step.name.to_owned(),
            item,
            message,
            class,
        },
    }
}

/// `$callback` of an attempt: the one-time URL and its token.
async fn callback_value(scope: &Scope<'_>, step: &str, attempt: i32, secret: &SecretKeyRef) -> Result<Value, Failure> {
    let key = callback_key(scope, secret, Freshness::Cached).await.ok_or_else(|| {
        (
            format!(
                "the callback key (Secret {:?}, key {:?}) is missing",
                secret.name, secret.key
            ),
            FailureClass::Transient,
        )
    })?;
    let token = callback::callback_token(&key, &scope.run.uid().unwrap_or_default(), step, attempt);
    let url = format!(
        "{}{}?token={token}",
        scope.ctx.callback_base.trim_end_matches('/'),
        callback::callback_path(&scope.namespace(), &scope.run.name_any(), step, attempt)
    );
    Ok(json!({ "url": url, "token": token }))
}

async fn callback_key(scope: &Scope<'_>, secret: &SecretKeyRef, want: Freshness) -> Option<Vec<u8>> {
    scope
        .ctx
        .keys
        .get(
            &scope.ctx.client,
            &scope.ctx.metrics,
            Purpose::Callback,
            &scope.namespace(),
            secret,
            want,
        )
        .await
}

/// Whether the recorded callback of `step` was written by the callback
/// endpoint for this run and attempt (its MAC verifies under the step's
/// key); a record that does not is reported, and ignored.
async fn genuine_callback(scope: &Scope<'_>, step: &str, attempt: i32, secret: &SecretKeyRef, record: &Value) -> bool {
    let uid = scope.run.uid().unwrap_or_default();
    for want in [Freshness::Cached, Freshness::Refresh] {
        if let Some(key) = callback_key(scope, secret, want).await
            && callback::verify_callback_record(&key, &uid, step, attempt, record)
        {
            return true;
        }
    }
    scope
        .ctx
        .metrics
        .webhook_requests
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: "forged_callback",
        })
        .inc();
    scope
        .ctx
        .publish(
            scope.run,
            EventType::Warning,
            CALLBACK_FORGED,
            "Callback",
            format!(
                "ignored annotation {}: it was not written by Tether's callback endpoint (its MAC does not verify); \
                 step {step} still waits for its callback",
                callback::annotation(step)
            ),
        )
        .await;
    false
}

fn classify(e: &AdapterError) -> Failure {
    let class = match e {
        AdapterError::Call(CallError::Url { .. } | CallError::EgressDenied(_)) => FailureClass::Permanent,
        AdapterError::Call(_) => FailureClass::Transient,
        _ if e.is_permanent() => FailureClass::Permanent,
        _ => FailureClass::Transient,
    };
    (e.to_string(), class)
}

fn call_failure(e: CallError) -> Failure {
    classify(&AdapterError::Call(e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::adapter::ActionOutcome;
    use crate::api::workflow::WorkflowSpec;
    use crate::fakes::{Call, FakeSystem, FakeTarget, answer};
    use crate::workflow::compile::{Compiled, StepKind};

    fn compiled(yaml: &str) -> Compiled {
        let spec: WorkflowSpec = serde_saphyr::from_str(yaml).expect("spec parses");
        Compiled::compile(&spec).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn the_call(c: &Compiled) -> &CompiledCall {
        match &c.steps[0].kind {
            StepKind::Call(call) => call,
            _ => panic!("not a call"),
        }
    }

    fn vars(params: Value) -> Vars {
        Vars {
            params,
            ..Vars::default()
        }
    }

    const ACTION: &str = r#"
steps:
  - name: welcome
    call:
      targetRef: { name: crm }
      action: send-welcome
      input: '{to: $params.email}'
      outputs: { message: '.body.id' }
"#;

    #[tokio::test]
    async fn an_action_step_sends_its_input_and_key_through_the_adapter_and_keeps_its_outputs() {
        let c = compiled(ACTION);
        let system = FakeSystem::new();
        system.actions.lock().expect("lock").push_back(ActionOutcome {
            status: 200,
            body: json!({"id": "m-1"}),
            succeeded: true,
            outputs: Default::default(),
        });
        let target = FakeTarget::default();
        let outputs = invoke(
            the_call(&c),
            &vars(json!({"email": "ada@example.com"})),
            "run/welcome/1",
            "step:welcome",
            &system,
            &target,
        )
        .await
        .expect("succeeds");
        assert_eq!(outputs.get("message"), Some(&json!("m-1")));
        assert_eq!(
            system.calls(),
            vec![Call::Act {
                action: "send-welcome".into(),
                input: json!({"to": "ada@example.com"}),
                key: "run/welcome/1".into()
            }]
        );
        assert!(target.sent().is_empty(), "an action goes through the adapter only");
    }

    #[tokio::test]
    async fn an_action_that_fails_transiently_is_retryable_and_one_refused_is_not() {
        let c = compiled(ACTION);
        let target = FakeTarget::default();
        let system = FakeSystem::new();
        system.fail_next(
            "act",
            AdapterError::Call(CallError::Unavailable {
                message: "503".into(),
                sent: true,
            }),
        );
        let (_, class) = invoke(the_call(&c), &vars(json!({})), "k", "op", &system, &target)
            .await
            .expect_err("fails");
        assert_eq!(class, FailureClass::Transient);
        system.fail_next(
            "act",
            AdapterError::Rejected {
                operation: "action".into(),
                status: 422,
                message: "no".into(),
            },
        );
        let (message, class) = invoke(the_call(&c), &vars(json!({})), "k", "op", &system, &target)
            .await
            .expect_err("fails");
        assert_eq!(class, FailureClass::Permanent, "{message}");
    }

    const RAW: &str = r#"
steps:
  - name: export
    call:
      targetRef: { name: warehouse }
      request:
        method: POST
        path: '/v1/exports/\($params.table)'
        body: '{rows: 10}'
      outputs: { job: '.body.job' }
      pollUntil:
        request: { method: GET, path: '/v1/jobs/\(.job)' }
        condition: '.body.state == "done"'
        interval: 5s
        timeout: 1m
"#;

    #[tokio::test]
    async fn a_raw_request_goes_through_the_request_port_with_the_attempts_key_and_polls_to_its_condition() {
        let c = compiled(RAW);
        let call = the_call(&c);
        let system = FakeSystem::new();
        let target = FakeTarget::answering(vec![answer(202, json!({"job": "j-7"}))]);
        let outputs = invoke(
            call,
            &vars(json!({"table": "orders"})),
            "run/export/2",
            "step:export",
            &system,
            &target,
        )
        .await
        .expect("accepted");
        assert_eq!(outputs.get("job"), Some(&json!("j-7")));
        let sent = target.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].path, "/v1/exports/orders");
        assert_eq!(sent[0].body, Some(json!({"rows": 10})));
        assert!(
            sent[0]
                .headers
                .contains(&("Idempotency-Key".to_owned(), "run/export/2".to_owned())),
            "{:?}",
            sent[0].headers
        );
        assert!(system.calls().is_empty(), "a raw request does not use the adapter");

        // The poll reads the step's outputs; running, then done.
        let now = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        let target = FakeTarget::answering(vec![
            answer(200, json!({"state": "running"})),
            answer(200, json!({"state": "done"})),
        ]);
        let outputs = Value::Object(outputs);
        let first = poll("export", call, outputs.clone(), &Vars::default(), &target, now).await;
        assert_eq!(
            first,
            Observation::Waiting {
                step: "export".into(),
                until: Some(after_std(now, Duration::from_secs(5))),
                outputs: None
            }
        );
        match poll("export", call, outputs, &Vars::default(), &target, now).await {
            Observation::Succeeded { outputs, .. } => assert_eq!(outputs["result"]["state"], json!("done")),
            other => panic!("{other:?}"),
        }
        assert!(target.sent().iter().all(|c| c.path == "/v1/jobs/j-7"));
    }

    #[tokio::test]
    async fn a_poll_that_fails_transiently_polls_again_instead_of_failing_the_step() {
        let c = compiled(RAW);
        let target = FakeTarget::answering(vec![Err(CallError::Unavailable {
            message: "connection reset".into(),
            sent: true,
        })]);
        let now = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        let observed = poll(
            "export",
            the_call(&c),
            json!({"job": "1"}),
            &Vars::default(),
            &target,
            now,
        )
        .await;
        assert!(matches!(observed, Observation::Waiting { .. }), "{observed:?}");
    }

    #[tokio::test]
    async fn a_raw_request_refused_with_a_4xx_fails_the_step_for_good() {
        let c = compiled(RAW);
        let target = FakeTarget::answering(vec![answer(
            422,
            json!({"error": {"message": "quantity: must be less than 100"}}),
        )]);
        let (message, class) = invoke(
            the_call(&c),
            &vars(json!({"table": "t"})),
            "k",
            "op",
            &FakeSystem::new(),
            &target,
        )
        .await
        .expect_err("refused");
        assert_eq!(class, FailureClass::Permanent);
        assert!(message.contains("quantity: must be less than 100"), "{message}");
    }
}
