//! Performing the engine's actions for one run: calls through the adapter
//! port and the shared targets, owned ExternalResources, approvals and
//! delays. Each action returns the observation the engine needs, or `None`
//! while there is nothing new (an approval not decided yet, a resource not
//! Ready yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use crate::adapter::{AdapterError, ExternalSystem};
use crate::api::approval::Decision;
use crate::api::workflow_run::{StepStatus, WorkflowRunStatus};
use crate::api::{Approval, ExternalResource, WorkflowRun};
use crate::conditions;
use crate::controller::Context;
use crate::controller::workflow::compile::{
    Compiled, CompiledCall, CompiledStep, StepKind, Vars, refs, run_value, steps_value,
};
use crate::engine::{Action, FailureClass, Observation, Start};
use crate::expr::Expr;
use crate::target::{CallError, HttpCall};
use crate::webhook::keys::{Freshness, Purpose};

/// Field manager of the ExternalResources that `resource` steps own.
pub const RESOURCE_MANAGER: &str = "tether-workflow";
/// Label naming the run that owns an ExternalResource.
pub const RUN_LABEL: &str = "tether.dev/run";

/// Everything the actions of one round need, read once.
pub struct Scope<'a> {
    ctx: &'a Context,
    run: &'a WorkflowRun,
    compiled: &'a Compiled,
    params: Value,
    status: &'a WorkflowRunStatus,
    now: DateTime<Utc>,
    /// `$steps` of this round.
    steps: Value,
    /// `forEach` items of the steps the actions name, or why they could
    /// not be computed.
    items: HashMap<String, Result<Arc<Vec<Value>>, String>>,
}

type Failure = (String, FailureClass);

/// The Approvals of one gate of one run.
struct Gate {
    /// The one that decides (the oldest that counts).
    decision: Option<Arc<Approval>>,
    /// Those that name the gate but were made for another run, with why.
    not_for_us: Vec<(Arc<Approval>, String)>,
}

impl<'a> Scope<'a> {
    /// The scope of one round's `actions`: `$steps` once, and the items of
    /// every forEach step an action names, evaluated once.
    pub fn new(
        ctx: &'a Context,
        run: &'a WorkflowRun,
        compiled: &'a Compiled,
        params: Value,
        status: &'a WorkflowRunStatus,
        now: DateTime<Utc>,
        actions: &[Action],
    ) -> Self {
        let mut scope = Self {
            ctx,
            run,
            compiled,
            params,
            status,
            now,
            steps: steps_value(status),
            items: HashMap::new(),
        };
        for action in actions {
            let (Action::Run {
                step, item: Some(_), ..
            }
            | Action::Compensate {
                step, item: Some(_), ..
            }) = action
            else {
                continue;
            };
            if scope.items.contains_key(step) {
                continue;
            }
            let Some(for_each) = scope.step(step).and_then(|(c, _)| c.for_each.as_ref()) else {
                continue;
            };
            let items = eval_items(for_each, &scope.vars(None, step)).map(Arc::new);
            scope.items.insert(step.clone(), items);
        }
        scope
    }

    /// Why the items of `step` cannot be computed, if they cannot (their
    /// inputs are pinned, so only a broken definition gets here).
    fn items_error(&self, step: &str, item: Option<i32>) -> Option<String> {
        item?;
        match self.items.get(step) {
            Some(Err(message)) => Some(format!("forEach: {message}")),
            _ => None,
        }
    }

    fn namespace(&self) -> String {
        self.run.namespace().unwrap_or_default()
    }

    fn vars(&self, item: Option<i32>, step: &str) -> Vars {
        let (value, index) = match item {
            Some(i) => (
                self.items
                    .get(step)
                    .and_then(|items| items.as_ref().ok()?.get(usize::try_from(i).ok()?).cloned())
                    .unwrap_or(Value::Null),
                json!(i),
            ),
            None => (Value::Null, Value::Null),
        };
        [
            self.params.clone(),
            self.steps.clone(),
            value,
            index,
            run_value(self.run),
            Value::Null,
        ]
    }

    fn step(&self, name: &str) -> Option<(&'a CompiledStep, &'a StepStatus)> {
        let i = self.compiled.def.dag.index(name)?;
        Some((self.compiled.steps.get(i)?, self.status.steps.get(i)?))
    }

    pub async fn perform(&self, action: &Action) -> Option<Observation> {
        match action {
            Action::Run {
                step,
                item,
                idempotency_key,
                ..
            } => Some(self.run_step(step, *item, idempotency_key).await),
            Action::Check { step, .. } => self.check(step).await,
            Action::Compensate {
                step,
                item,
                idempotency_key,
            } => self.compensate(step, *item, idempotency_key).await,
        }
    }

    async fn run_step(&self, name: &str, item: Option<i32>, key: &str) -> Observation {
        let failed = |(message, class): Failure| Observation::Failed {
            step: name.to_owned(),
            item,
            message,
            class,
        };
        let Some((compiled, status)) = self.step(name) else {
            return failed((
                format!("step {name:?} is not in the pinned definition"),
                FailureClass::Final,
            ));
        };
        let mut vars = self.vars(item, name);
        match &compiled.kind {
            StepKind::Call(call) => {
                if let Some(callback) = &call.callback {
                    match self.callback_value(name, status.attempt, &callback.secret).await {
                        Ok(value) => vars[5] = value,
                        Err(failure) => return failed(failure),
                    }
                }
                match self.call(call, &vars, key, &format!("step:{name}")).await {
                    Err(failure) => failed(failure),
                    Ok((_, outputs)) if call.poll.is_some() || call.callback.is_some() => Observation::Waiting {
                        step: name.to_owned(),
                        until: call.poll.as_ref().map(|p| after_std(self.now, p.interval)),
                        outputs: Some(Value::Object(outputs)),
                    },
                    Ok((_, outputs)) => Observation::Succeeded {
                        step: name.to_owned(),
                        item,
                        outputs: Value::Object(outputs),
                    },
                }
            }
            StepKind::Resource {
                target,
                resource_type,
                properties,
                ..
            } => {
                let properties = match properties.eval(&Value::Null, &refs(&vars)) {
                    Ok(p) => p,
                    Err(e) => return failed((e.to_string(), FailureClass::Permanent)),
                };
                match self
                    .ensure_resource(name, item, target, resource_type, properties)
                    .await
                {
                    Ok(()) if item.is_none() => Observation::Waiting {
                        step: name.to_owned(),
                        until: None,
                        outputs: None,
                    },
                    // Items of a fan-out do not wait one by one: the item
                    // is done once its ExternalResource is accepted.
                    Ok(()) => Observation::Succeeded {
                        step: name.to_owned(),
                        item,
                        outputs: Value::Null,
                    },
                    Err(e) => failed((
                        format!("cannot create the ExternalResource: {e}"),
                        FailureClass::Transient,
                    )),
                }
            }
            StepKind::Approval { .. } => Observation::Waiting {
                step: name.to_owned(),
                until: None,
                outputs: None,
            },
            StepKind::Wait(delay) => Observation::Waiting {
                step: name.to_owned(),
                until: Some(after_std(status.started_at.unwrap_or(self.now), *delay)),
                outputs: None,
            },
        }
    }

    async fn check(&self, name: &str) -> Option<Observation> {
        let (compiled, status) = self.step(name)?;
        let started = status.started_at.unwrap_or(self.now);
        let succeeded = |outputs: Value| Observation::Succeeded {
            step: name.to_owned(),
            item: None,
            outputs,
        };
        let failed = |message: String, class: FailureClass| Observation::Failed {
            step: name.to_owned(),
            item: None,
            message,
            class,
        };
        match &compiled.kind {
            StepKind::Wait(_) => Some(succeeded(json!({}))),
            StepKind::Approval {
                timeout,
                default_decision,
                ..
            } => {
                let gate = self.approval_for(name);
                for (other, why) in gate.not_for_us {
                    self.mark_not_for_this_run(&other, why).await;
                }
                if let Some(approval) = gate.decision {
                    let who = approval.spec.decided_by.clone().unwrap_or_else(|| "unknown".into());
                    let why = approval.spec.reason.clone().unwrap_or_default();
                    self.mark_applied(&approval, name).await;
                    return Some(match approval.spec.decision {
                        Decision::Approve => succeeded(json!({
                            "decision": "Approve", "decidedBy": who, "reason": why, "approval": approval.name_any(),
                        })),
                        Decision::Reject => failed(
                            format!(
                                "rejected by {who}{}",
                                if why.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {why}")
                                }
                            ),
                            FailureClass::Final,
                        ),
                    });
                }
                let deadline = timeout.map(|t| after_std(started, t))?;
                if deadline > self.now {
                    return None;
                }
                Some(match default_decision {
                    Decision::Approve => succeeded(json!({"decision": "Approve", "decidedBy": "timeout"})),
                    Decision::Reject => failed("no decision before the approval timeout".into(), FailureClass::Final),
                })
            }
            StepKind::Resource { ready_timeout, .. } => {
                let er = self
                    .ctx
                    .resources
                    .get(&ObjectRef::new(&resource_name(self.run, name, None)).within(&self.namespace()));
                let ready = er.as_ref().and_then(|er| er.status.as_ref());
                if let Some(status) = ready
                    && conditions::is_true(&status.conditions, "Ready")
                {
                    return Some(succeeded(json!({
                        "name": resource_name(self.run, name, None),
                        "externalId": status.external_id,
                        "observed": er.as_ref().and_then(|er| er.observed()),
                    })));
                }
                if after_std(started, *ready_timeout) <= self.now {
                    let why = ready
                        .and_then(|s| conditions::find(&s.conditions, "Ready"))
                        .map(|c| c.message.clone())
                        .unwrap_or_default();
                    return Some(failed(
                        format!("the ExternalResource was not Ready in time: {why}"),
                        FailureClass::Final,
                    ));
                }
                None
            }
            StepKind::Call(call) if call.callback.is_some() => {
                let callback = call.callback.as_ref()?;
                let received = self
                    .run
                    .annotations()
                    .get(&callback_annotation(name))
                    .and_then(|text| serde_json::from_str::<Value>(text).ok())
                    .filter(|v| v.get("attempt").and_then(Value::as_i64) == Some(i64::from(status.attempt)));
                let received = match received {
                    Some(record)
                        if self
                            .genuine_callback(name, status.attempt, &callback.secret, &record)
                            .await =>
                    {
                        Some(record)
                    }
                    _ => None,
                };
                let Some(received) = received else {
                    if after_std(started, callback.timeout) <= self.now {
                        return Some(failed(
                            format!("no callback within {}s", callback.timeout.as_secs()),
                            FailureClass::Final,
                        ));
                    }
                    return None;
                };
                let body = received.get("body").cloned().unwrap_or(Value::Null);
                let vars = self.vars(None, name);
                let ok = match &callback.success_when {
                    Some(condition) => match condition.eval_bool(&body, &refs(&vars)) {
                        Ok(ok) => ok,
                        Err(e) => return Some(failed(e.to_string(), FailureClass::Permanent)),
                    },
                    None => true,
                };
                if !ok {
                    let text = crate::text::shortened(&body.to_string(), 200);
                    return Some(failed(
                        format!("the callback did not succeed: {text}"),
                        FailureClass::Condition,
                    ));
                }
                let mut done = match status.outputs.clone() {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                done.insert("callback".into(), body);
                Some(succeeded(Value::Object(done)))
            }
            StepKind::Call(call) => {
                let poll = call.poll.as_ref()?;
                let vars = self.vars(None, name);
                let outputs = status.outputs.clone().unwrap_or(Value::Null);
                let next = Observation::Waiting {
                    step: name.to_owned(),
                    until: Some(after_std(self.now, poll.interval)),
                    outputs: None,
                };
                if after_std(started, poll.timeout) <= self.now {
                    return Some(failed(
                        format!("still not done after the poll timeout ({}s)", poll.timeout.as_secs()),
                        FailureClass::Final,
                    ));
                }
                let request = match poll.request.render(&format!("poll:{name}"), &outputs, &refs(&vars)) {
                    Ok(r) => r,
                    Err(e) => return Some(failed(e.to_string(), FailureClass::Permanent)),
                };
                let response = match self.send(&call.target, request).await {
                    Ok(response) => response,
                    // A transient failure of one poll is not the step's:
                    // poll again.
                    Err((_, FailureClass::Transient)) => return Some(next),
                    Err(failure) => return Some(failed(failure.0, failure.1)),
                };
                let eval = |e: &Expr| e.eval_bool(&response, &refs(&vars));
                match poll.fail_when.as_ref().map(eval).transpose() {
                    Err(e) => return Some(failed(e.to_string(), FailureClass::Permanent)),
                    Ok(Some(true)) => {
                        return Some(failed(
                            format!("failWhen held: {}", summary(&response)),
                            FailureClass::Condition,
                        ));
                    }
                    _ => {}
                }
                match eval(&poll.condition) {
                    Err(e) => Some(failed(e.to_string(), FailureClass::Permanent)),
                    Ok(true) => {
                        let mut done = match outputs {
                            Value::Object(map) => map,
                            _ => Map::new(),
                        };
                        done.insert("result".into(), response.get("body").cloned().unwrap_or(Value::Null));
                        Some(succeeded(Value::Object(done)))
                    }
                    Ok(false) => Some(next),
                }
            }
        }
    }

    async fn compensate(&self, name: &str, item: Option<i32>, key: &str) -> Option<Observation> {
        let (compiled, _) = self.step(name)?;
        let done = Observation::Compensated {
            step: name.to_owned(),
            item,
        };
        let failed = |message: String| Observation::CompensationFailed {
            step: name.to_owned(),
            item,
            message,
        };
        if let Some(message) = self.items_error(name, item) {
            return Some(failed(message));
        }
        if let StepKind::Resource { keep: false, .. } = &compiled.kind {
            return match self.delete_resource(name, item).await {
                Ok(true) => Some(done),
                Ok(false) => None,
                Err(e) => Some(failed(format!("cannot delete the ExternalResource: {e}"))),
            };
        }
        let Some(call) = &compiled.compensate else {
            return Some(done);
        };
        let vars = self.vars(item, name);
        let mut last = String::new();
        // A compensation that fails transiently is tried a few times before
        // the run gives up and reports what is left to clean up.
        for pause in [0u64, 500, 1000, 2000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            match self.call(call, &vars, key, &format!("compensate:{name}")).await {
                Ok(_) => return Some(done),
                Err((message, FailureClass::Transient)) => last = message,
                Err((message, _)) => return Some(failed(message)),
            }
        }
        Some(failed(last))
    }

    /// The Approval that decides gate `step` (the oldest that counts), and
    /// each Approval that names the gate but not this run, with why.
    fn approval_for(&self, step: &str) -> Gate {
        let namespace = self.namespace();
        let mut counting = Vec::new();
        let mut not_for_us = Vec::new();
        for approval in self.ctx.approvals.state() {
            if approval.namespace().as_deref() != Some(namespace.as_str()) {
                continue;
            }
            match approval_verdict(&approval, self.run, step) {
                Verdict::Counts => counting.push(approval),
                Verdict::NotForThisRun(why) => not_for_us.push((approval, why)),
                Verdict::Elsewhere => {}
            }
        }
        Gate {
            decision: counting.into_iter().min_by_key(|a| a.creation_timestamp()),
            not_for_us,
        }
    }

    /// Says on an Approval, once, that it does not count for this run
    /// (`Applied=False`, reason `NotForThisRun`); the rest of its status,
    /// a binding to another run included, is kept.
    async fn mark_not_for_this_run(&self, approval: &Approval, why: String) {
        let mut status = approval.status.clone().unwrap_or_default();
        if conditions::find(&status.conditions, "Applied").is_some() {
            return;
        }
        status.observed_generation = approval.metadata.generation;
        status.conditions = conditions::merge(
            &status.conditions,
            &[conditions::Desired::new(
                "Applied",
                false,
                APPROVAL_NOT_FOR_THIS_RUN,
                format!("does not count for run {}: {why}", self.run.name_any()),
            )],
            approval.metadata.generation,
            self.now,
        );
        let api: Api<Approval> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        if let Err(err) = self
            .ctx
            .apply_status(&api, &approval.name_any(), "Approval", &status)
            .await
        {
            tracing::warn!(approval = %approval.name_any(), %err, "cannot record that the approval does not count");
        }
    }

    /// `$callback` of an attempt: the one-time URL and its token.
    async fn callback_value(
        &self,
        step: &str,
        attempt: i32,
        secret: &crate::api::common::SecretKeyRef,
    ) -> Result<Value, Failure> {
        let key = self.callback_key(secret, Freshness::Cached).await.ok_or_else(|| {
            (
                format!(
                    "the callback key (Secret {:?}, key {:?}) is missing",
                    secret.name, secret.key
                ),
                FailureClass::Transient,
            )
        })?;
        let token = crate::webhook::callback_token(&key, &self.run.uid().unwrap_or_default(), step, attempt);
        let url = format!(
            "{}{}?token={token}",
            self.ctx.callback_base.trim_end_matches('/'),
            crate::webhook::callback_path(&self.namespace(), &self.run.name_any(), step, attempt)
        );
        Ok(json!({ "url": url, "token": token }))
    }

    async fn callback_key(&self, secret: &crate::api::common::SecretKeyRef, want: Freshness) -> Option<Vec<u8>> {
        self.ctx
            .triggers
            .keys
            .get(
                &self.ctx.client,
                &self.ctx.metrics,
                Purpose::Callback,
                &self.namespace(),
                secret,
                want,
            )
            .await
    }

    /// Whether the recorded callback of `step` was written by the callback
    /// endpoint for this run and attempt (its MAC verifies under the step's
    /// key); a record that does not is reported once per content, and
    /// ignored.
    async fn genuine_callback(
        &self,
        step: &str,
        attempt: i32,
        secret: &crate::api::common::SecretKeyRef,
        record: &Value,
    ) -> bool {
        let uid = self.run.uid().unwrap_or_default();
        for want in [Freshness::Cached, Freshness::Refresh] {
            if let Some(key) = self.callback_key(secret, want).await
                && crate::webhook::verify_callback_record(&key, &uid, step, attempt, record)
            {
                return true;
            }
        }
        self.ctx
            .metrics
            .webhook_requests
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: "forged_callback",
            })
            .inc();
        self.ctx
            .publish(
                self.run,
                EventType::Warning,
                CALLBACK_FORGED,
                "Callback",
                format!(
                    "ignored annotation {}: it was not written by Tether's callback endpoint (its MAC does not verify); \
                     step {step} still waits for its callback",
                    callback_annotation(step)
                ),
            )
            .await;
        false
    }

    /// Records on the Approval that the run took its decision.
    async fn mark_applied(&self, approval: &Approval, step: &str) {
        let now = self.now;
        let status = crate::api::approval::ApprovalStatus {
            observed_generation: approval.metadata.generation,
            applied_at: Some(now),
            run_uid: self.run.uid(),
            conditions: conditions::merge(
                &approval
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default(),
                &[conditions::Desired::new(
                    "Applied",
                    true,
                    "Applied",
                    format!("run {} took the decision for step {step}", self.run.name_any()),
                )],
                approval.metadata.generation,
                now,
            ),
        };
        let api: Api<Approval> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        if let Err(err) = self
            .ctx
            .apply_status(&api, &approval.name_any(), "Approval", &status)
            .await
        {
            tracing::warn!(approval = %approval.name_any(), %err, "cannot record that the decision was applied");
        }
    }

    /// One call: an adapter action or a raw request, with the idempotency
    /// key; success by `successWhen` (default 2xx); outputs extracted.
    async fn call(
        &self,
        call: &CompiledCall,
        vars: &Vars,
        key: &str,
        operation: &str,
    ) -> Result<(Value, Map<String, Value>), Failure> {
        let vars = refs(vars);
        let input = match &call.input {
            Some(input) => input
                .eval(&Value::Null, &vars)
                .map_err(|e| (e.to_string(), FailureClass::Permanent))?,
            None => Value::Null,
        };
        let mut outputs = Map::new();
        let (response, mut succeeded) = if let Some(action) = &call.action {
            let adapter = self.adapter(&call.target).await?;
            let outcome = adapter.act(action, &input, key).await.map_err(|e| classify(&e))?;
            outputs.extend(outcome.outputs);
            (
                json!({"status": outcome.status, "body": outcome.body}),
                outcome.succeeded,
            )
        } else if let Some(request) = &call.request {
            let mut http = request
                .render(operation, &input, &vars)
                .map_err(|e| (e.to_string(), FailureClass::Permanent))?;
            http.headers.push(("Idempotency-Key".into(), key.to_owned()));
            let response = self.send(&call.target, http).await?;
            let ok = response
                .get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| (200..300).contains(&s));
            (response, ok)
        } else {
            return Err((
                "the call sets neither action nor request".into(),
                FailureClass::Permanent,
            ));
        };
        if let Some(condition) = &call.success_when {
            succeeded = condition
                .eval_bool(&response, &vars)
                .map_err(|e| (e.to_string(), FailureClass::Permanent))?;
        }
        if !succeeded {
            let class = match response.get("status").and_then(Value::as_u64) {
                Some(s) if call.success_when.is_none() && (400..500).contains(&s) => FailureClass::Permanent,
                _ => FailureClass::Condition,
            };
            return Err((format!("the call did not succeed: {}", summary(&response)), class));
        }
        for (name, expr) in &call.outputs {
            let value = expr
                .eval(&response, &vars)
                .map_err(|e| (e.to_string(), FailureClass::Permanent))?;
            outputs.insert(name.clone(), value);
        }
        Ok((response, outputs))
    }

    async fn adapter(&self, target: &str) -> Result<crate::adapter::AnyAdapter, Failure> {
        let ts = self.ctx.target_system(&self.namespace(), target).ok_or_else(|| {
            (
                format!(
                    "TargetSystem {target:?} does not exist in namespace {:?}",
                    self.namespace()
                ),
                FailureClass::Transient,
            )
        })?;
        self.ctx.adapter_for(&ts).await.map_err(|f| {
            (
                f.message,
                if f.permanent {
                    FailureClass::Permanent
                } else {
                    FailureClass::Transient
                },
            )
        })
    }

    async fn send(&self, target: &str, call: HttpCall) -> Result<Value, Failure> {
        let adapter = self.adapter(target).await?;
        let answer = adapter
            .target()
            .send(call)
            .await
            .map_err(|e| classify(&AdapterError::Call(e)))?;
        Ok(answer.as_value())
    }

    async fn ensure_resource(
        &self,
        step: &str,
        item: Option<i32>,
        target: &str,
        resource_type: &str,
        properties: Value,
    ) -> Result<(), kube::Error> {
        let name = resource_name(self.run, step, item);
        let owner = self.run.controller_owner_ref(&()).map(|mut o| {
            o.block_owner_deletion = None;
            o
        });
        let er = json!({
            "apiVersion": ExternalResource::api_version(&()),
            "kind": ExternalResource::kind(&()),
            "metadata": {
                "name": name,
                "labels": { RUN_LABEL: self.run.name_any(), "tether.dev/step": step },
                "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
            },
            "spec": {
                "targetRef": { "name": target },
                "type": resource_type,
                "properties": properties,
            },
        });
        let api: Api<ExternalResource> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        api.patch(&name, &PatchParams::apply(RESOURCE_MANAGER).force(), &Patch::Apply(&er))
            .await?;
        Ok(())
    }

    /// Deletes the step's ExternalResource; true once it is gone (its own
    /// finalizer deletes the external object first).
    async fn delete_resource(&self, step: &str, item: Option<i32>) -> Result<bool, kube::Error> {
        let name = resource_name(self.run, step, item);
        let api: Api<ExternalResource> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(true),
            Err(e) => return Err(e),
        }
        match api.get_opt(&name).await? {
            None => Ok(true),
            Some(_) => Ok(false),
        }
    }
}

/// The `forEach` items: the expression must yield an array.
pub fn eval_items(for_each: &Expr, vars: &Vars) -> Result<Vec<Value>, String> {
    match for_each.eval(&Value::Null, &refs(vars)) {
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
        && !when.eval_bool(&Value::Null, &refs(&vars)).map_err(|e| e.to_string())?
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

/// Whether `approval` decides gate `step` of `run`: it names the run and
/// the step; with `runRef.uid`, that is the run's UID; without, the run was
/// created no later than the Approval; and it was not applied to another
/// run already. So an Approval of a deleted run never counts for a new run
/// that reuses the name.
pub fn approval_counts(approval: &Approval, run: &WorkflowRun, step: &str) -> bool {
    approval_verdict(approval, run, step) == Verdict::Counts
}

/// What an Approval is to one gate of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It decides this gate.
    Counts,
    /// It names another run or another gate.
    Elsewhere,
    /// It names this run and gate, but was made for another run that had
    /// the name: why.
    NotForThisRun(String),
}

/// The rule of [`approval_counts`], saying why an Approval that names the
/// run does not count.
pub fn approval_verdict(approval: &Approval, run: &WorkflowRun, step: &str) -> Verdict {
    let uid = run.uid();
    if approval.spec.run_ref.name != run.name_any() || approval.spec.step != step {
        return Verdict::Elsewhere;
    }
    let current = uid.as_deref().unwrap_or_default();
    let applied = approval.status.as_ref().and_then(|s| s.run_uid.as_deref());
    if let Some(applied) = applied
        && applied != current
    {
        return Verdict::NotForThisRun(format!("it was applied to run UID {applied}, not {current}"));
    }
    match approval.spec.run_ref.uid.as_deref() {
        Some(bound) if bound == current => Verdict::Counts,
        Some(bound) => Verdict::NotForThisRun(format!("it names run UID {bound}, not {current}")),
        None => match (approval.creation_timestamp(), run.creation_timestamp()) {
            (Some(decided), Some(started)) if decided.0 >= started.0 => Verdict::Counts,
            _ => Verdict::NotForThisRun(format!(
                "it was created before run {} (UID {current}); set spec.runRef.uid, or create it anew",
                run.name_any()
            )),
        },
    }
}

/// Reason of an Approval's `Applied=False` when it names a run of that
/// name but was made for another.
pub const APPROVAL_NOT_FOR_THIS_RUN: &str = "NotForThisRun";

/// Reason of the Event when a callback annotation does not verify.
pub const CALLBACK_FORGED: &str = "CallbackForged";

/// The annotation in which the webhook endpoint leaves a step's callback.
pub fn callback_annotation(step: &str) -> String {
    format!("callback.tether.dev/{step}")
}

/// The name of the ExternalResource a `resource` step owns.
pub fn resource_name(run: &WorkflowRun, step: &str, item: Option<i32>) -> String {
    match item {
        Some(i) => format!("{}-{step}-{i}", run.name_any()),
        None => format!("{}-{step}", run.name_any()),
    }
}

/// `at + d` for a duration from the spec, saturating (see [`engine::after`]).
pub fn after_std(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    crate::engine::after(at, chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

fn classify(e: &AdapterError) -> Failure {
    let class = match e {
        AdapterError::Call(CallError::Url(_) | CallError::EgressDenied(_)) => FailureClass::Permanent,
        AdapterError::Call(_) => FailureClass::Transient,
        _ if e.is_permanent() => FailureClass::Permanent,
        _ => FailureClass::Transient,
    };
    (e.to_string(), class)
}

/// `HTTP 503: message` for a response, short enough for a status.
fn summary(response: &Value) -> String {
    let status = response.get("status").and_then(Value::as_u64).unwrap_or_default();
    let body = response.get("body").cloned().unwrap_or(Value::Null);
    crate::text::shortened(&format!("HTTP {status}: {}", crate::target::error_message(&body)), 256)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::approval::{ApprovalSpec, ApprovalStatus, RunRef};
    use crate::api::workflow_run::WorkflowRunSpec;

    fn at(second: i64) -> Option<Time> {
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + second)
            .ok()
            .map(Time)
    }

    fn run(uid: &str, created: i64) -> WorkflowRun {
        let mut run = WorkflowRun::new(
            "deploy",
            WorkflowRunSpec {
                workflow_ref: crate::api::common::ObjectRef::new("ship"),
                parameters: Value::Null,
                cancel: false,
            },
        );
        run.metadata.uid = Some(uid.into());
        run.metadata.creation_timestamp = at(created);
        run
    }

    fn approval(uid: Option<&str>, created: i64, applied_to: Option<&str>) -> Approval {
        let mut approval = Approval::new(
            "ok",
            ApprovalSpec {
                run_ref: RunRef {
                    name: "deploy".into(),
                    uid: uid.map(str::to_owned),
                },
                step: "gate".into(),
                decision: Decision::Approve,
                reason: None,
                decided_by: None,
            },
        );
        approval.metadata.creation_timestamp = at(created);
        approval.status = applied_to.map(|uid| ApprovalStatus {
            run_uid: Some(uid.into()),
            ..ApprovalStatus::default()
        });
        approval
    }

    #[test]
    fn an_approval_counts_only_for_the_run_and_gate_it_was_made_for() {
        let current = run("uid-2", 100);
        // Bound by UID: that run only, whenever it was created.
        assert!(approval_counts(&approval(Some("uid-2"), 50, None), &current, "gate"));
        assert!(!approval_counts(&approval(Some("uid-1"), 150, None), &current, "gate"));
        // Without a UID: made no earlier than the run (same second included).
        assert!(approval_counts(&approval(None, 100, None), &current, "gate"));
        assert!(approval_counts(&approval(None, 160, None), &current, "gate"));
        assert!(!approval_counts(&approval(None, 99, None), &current, "gate"));
        // Applied to another run already: never again.
        assert!(!approval_counts(&approval(None, 160, Some("uid-1")), &current, "gate"));
        assert!(approval_counts(&approval(None, 160, Some("uid-2")), &current, "gate"));
        // Another gate.
        assert!(!approval_counts(
            &approval(Some("uid-2"), 160, None),
            &current,
            "other-gate"
        ));
        assert_eq!(
            approval_verdict(&approval(Some("uid-2"), 160, None), &current, "other-gate"),
            Verdict::Elsewhere
        );
        assert_eq!(
            approval_verdict(&approval(Some("uid-1"), 160, None), &current, "gate"),
            Verdict::NotForThisRun("it names run UID uid-1, not uid-2".into())
        );
    }
}
