//! An `approval` step: a gate decided by an Approval made for this run
//! (`workflow::approval`), or by its default decision once its timeout has
//! passed. The step records on the Approval that it took the decision, or
//! that it does not count for this run.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;

use super::{Do, Scope, Step};
use crate::api::Approval;
use crate::api::common::condition;
use crate::api::common::reason::{APPLIED, APPROVAL_NOT_FOR_THIS_RUN};
use crate::conditions;
use crate::workflow::approval::{Verdict, approval_verdict};
use crate::workflow::compile::CompiledApproval;
use crate::workflow::engine::Observation;
use crate::workflow::steps::{after_std, approval_outcome};

/// The Approvals of one gate of one run.
struct Gate {
    /// The one that decides (the oldest that counts).
    decision: Option<Arc<Approval>>,
    /// Those that name the gate but were made for another run, with why.
    not_for_us: Vec<(Arc<Approval>, String)>,
}

pub async fn perform(scope: &Scope<'_>, step: &Step<'_>, gate: &CompiledApproval, what: Do<'_>) -> Option<Observation> {
    match what {
        Do::Start { .. } | Do::Compensate { .. } => Some(step.waiting(None, None)),
        Do::Check => check(scope, step, gate).await,
    }
}

async fn check(scope: &Scope<'_>, step: &Step<'_>, spec: &CompiledApproval) -> Option<Observation> {
    let gate = approval_for(scope, step.name);
    for (other, why) in gate.not_for_us {
        mark_not_for_this_run(scope, &other, why).await;
    }
    let decision = gate.decision.as_ref().map(|approval| {
        (
            &approval.spec.decision,
            approval.spec.decided_by.as_deref().unwrap_or("unknown"),
            approval.spec.reason.as_deref().unwrap_or_default(),
            approval.metadata.name.as_deref().unwrap_or_default(),
        )
    });
    let deadline = spec.timeout.map(|t| after_std(step.started(scope.now), t));
    let outcome = approval_outcome(step.name, decision, deadline, spec.default_decision, scope.now);
    if outcome.is_some()
        && let Some(approval) = &gate.decision
    {
        mark_applied(scope, approval, step.name).await;
    }
    outcome
}

/// The Approval that decides gate `step` (the oldest that counts), and
/// each Approval that names the gate but not this run, with why.
fn approval_for(scope: &Scope<'_>, step: &str) -> Gate {
    let namespace = scope.namespace();
    let mut counting = Vec::new();
    let mut not_for_us = Vec::new();
    for approval in scope.ctx.approvals.state() {
        if approval.namespace().as_deref() != Some(namespace.as_str()) {
            continue;
        }
        match approval_verdict(&approval, scope.run, step) {
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
async fn mark_not_for_this_run(scope: &Scope<'_>, approval: &Approval, why: String) {
    let mut status = approval.status.clone().unwrap_or_default();
    if conditions::find(&status.conditions, condition::APPLIED).is_some() {
        return;
    }
    status.observed_generation = approval.metadata.generation;
    status.conditions = conditions::merge(
        &status.conditions,
        &[conditions::Desired::new(
            condition::APPLIED,
            false,
            APPROVAL_NOT_FOR_THIS_RUN,
            format!("does not count for run {}: {why}", scope.run.name_any()),
        )],
        approval.metadata.generation,
        scope.now,
    );
    let api: Api<Approval> = Api::namespaced(scope.ctx.client.clone(), &scope.namespace());
    if let Err(err) = scope
        .ctx
        .apply_status(&api, &approval.name_any(), "Approval", &status)
        .await
    {
        tracing::warn!(approval = %approval.name_any(), %err, "cannot record that the approval does not count");
    }
}

/// Records on the Approval that the run took its decision.
async fn mark_applied(scope: &Scope<'_>, approval: &Approval, step: &str) {
    let now = scope.now;
    let status = crate::api::approval::ApprovalStatus {
        observed_generation: approval.metadata.generation,
        applied_at: Some(now),
        run_uid: scope.run.uid(),
        conditions: conditions::merge(
            &approval
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            &[conditions::Desired::new(
                condition::APPLIED,
                true,
                APPLIED,
                format!("run {} took the decision for step {step}", scope.run.name_any()),
            )],
            approval.metadata.generation,
            now,
        ),
    };
    let api: Api<Approval> = Api::namespaced(scope.ctx.client.clone(), &scope.namespace());
    if let Err(err) = scope
        .ctx
        .apply_status(&api, &approval.name_any(), "Approval", &status)
        .await
    {
        tracing::warn!(approval = %approval.name_any(), %err, "cannot record that the decision was applied");
    }
}
