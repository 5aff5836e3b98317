//! Reconciling a WorkflowRun: pin the definition, then rounds of
//! `engine::advance` -> write status -> perform actions -> observations,
//! until nothing is due now; requeue when the next retry, poll or delay is.
//!
//! The write comes before the actions of a round, conditional on the
//! resourceVersion last read or written, so an attempt is recorded (with
//! its idempotency key) before it leaves, a stale controller cannot act,
//! and a controller killed at any instant resends only attempts whose
//! outcome it never recorded, with the same key.

pub mod steps;

use crate::api::common::event;
use crate::controller::Error;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::status::StatusWriter;
use super::{Context, lock};
use crate::api::common::condition::{READY, SUCCEEDED};
use crate::api::common::reason;
use crate::api::workflow::WorkflowSpec;
use crate::api::workflow_run::{PinnedDefinition, RunPhase, StepPhase, WorkflowRunStatus};
use crate::api::{Workflow, WorkflowRun};
use crate::conditions::{self, Desired, Status};
use crate::workflow::compile::{Compiled, CompiledApproval, StepKind, resolve_parameters, spec_hash};
use crate::workflow::engine::{self, Observation};
use crate::workflow::vars::Vars;
use steps::Scope;

pub const KIND: &str = "WorkflowRun";
/// Finalizer of runs that have not finished: deleting such a run cancels
/// it, and the finalizer lets go once compensation is done.
pub const FINALIZER: &str = "tether.dev/workflow-run";
/// Rounds (status write + actions) one reconcile performs at most before it
/// yields to other runs.
const MAX_ROUNDS: usize = 64;
/// Actions of one round performed at once (the engine bounds each step's
/// items by its parallelism; this bounds a round).
const ROUND_CONCURRENCY: usize = 64;

/// The largest status Tether writes: etcd refuses objects over 1.5 MiB, and
/// the run's spec and metadata need room too. The engine's limits keep a
/// run far below it; this is the last wall.
pub const MAX_STATUS_BYTES: usize = 1024 * 1024;
/// The largest definition a run pins (a copy in its status).
pub const MAX_PINNED_BYTES: usize = 256 * 1024;

pub fn error_policy(run: Arc<WorkflowRun>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_stale_read() {
        tracing::debug!(name = %run.name_any(), %error, "stale read; retrying with fresh data");
        return Action::requeue(Duration::from_millis(200));
    }
    if let Some(wait) = error.still_undoing() {
        // A deleted run that still compensates: the expected order.
        tracing::debug!(name = %run.name_any(), %error, "deletion waits for compensation");
        return Action::requeue(wait);
    }
    ctx.metrics.reconcile_error(KIND, error.label());
    tracing::warn!(name = %run.name_any(), namespace = ?run.namespace(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Entry point for the controller: advance the run, or — once it is being
/// deleted — cancel it and let it go when it has ended (compensation
/// done), through kube-runtime's finalizer helper.
pub async fn reconcile(run: Arc<WorkflowRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let result = finalizer::finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => advance(run, &ctx, &api).await.map(|advanced| advanced.action),
            Finalizer::Cleanup(run) => cleanup(run, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(KIND, started.elapsed());
    result
}

/// A deleted run is cancelled (its completed steps undone, if its policy
/// says so); `Ok` — the finalizer goes — once it has ended. A status too
/// large to write cannot hold the deletion: the run goes with a Warning
/// that says what may be left at the targets.
async fn cleanup(run: Arc<WorkflowRun>, ctx: &Context, api: &Api<WorkflowRun>) -> Result<Action, Error> {
    match advance(run.clone(), ctx, api).await {
        Ok(Advanced { ended: true, .. }) => Ok(Action::await_change()),
        Ok(Advanced { wait, .. }) => Err(Error::StillUndoing {
            name: run.name_any(),
            wait: wait.unwrap_or(Duration::from_secs(30)),
        }),
        Err(error) if error.is_too_large() => {
            ctx.publish(
                run.as_ref(),
                EventType::Warning,
                event::STATUS_TOO_LARGE,
                "Delete",
                format!(
                    "{error}; the run is deleted without finishing its compensation: check its targets for what it created"
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(error) => Err(error),
    }
}

/// What one pass did: when to come back, and whether the run has ended.
struct Advanced {
    action: Action,
    /// `None`: only a change.
    wait: Option<Duration>,
    ended: bool,
}

impl Advanced {
    fn ended() -> Self {
        Self {
            action: Action::await_change(),
            wait: None,
            ended: true,
        }
    }

    fn again_in(wait: Duration) -> Self {
        Self {
            action: Action::requeue(wait),
            wait: Some(wait),
            ended: false,
        }
    }
}

/// The run as of the last write this controller made, or fresher: a watch
/// cache that is behind our own write would replay finished steps. The
/// flag says whether the cache itself was current.
async fn fresh(
    run: Arc<WorkflowRun>,
    ctx: &Context,
    api: &Api<WorkflowRun>,
) -> Result<(Arc<WorkflowRun>, bool), Error> {
    let uid = run.uid().unwrap_or_default();
    let last = lock(&ctx.run_memory.written).get(&uid).cloned();
    if last.is_none() || last == run.resource_version() {
        return Ok((run, true));
    }
    match api.get_opt(&run.name_any()).await {
        Ok(Some(fresh)) => Ok((Arc::new(fresh), false)),
        Ok(None) => Ok((run, false)),
        Err(source) => Err(Error::Read {
            name: run.name_any(),
            source,
        }),
    }
}

/// One pass: pin the definition, then rounds of advance -> write -> act.
async fn advance(run: Arc<WorkflowRun>, ctx: &Context, api: &Api<WorkflowRun>) -> Result<Advanced, Error> {
    let namespace = run.namespace().unwrap_or_default();
    let (run, cache_current) = fresh(run, ctx, api).await?;
    let mut writer = Writer::new(ctx, api.clone(), &run);
    let mut status = run.status.clone().unwrap_or_default();
    let deleting = run.meta().deletion_timestamp.is_some();
    let finished = engine::is_terminal(status.phase);

    if finished || (deleting && status.pinned.is_none()) {
        // A finished run still acknowledges a later spec change (a `cancel`
        // set after the end): kstatus reads a status older than the spec as
        // in progress, forever.
        if finished && !deleting && status.observed_generation != run.meta().generation {
            writer.write(&acknowledged(&status, run.meta().generation)).await?;
        }
        if cache_current {
            // The cache has caught up with this process's last write: no
            // later pass can see an older version, so the memory can go.
            lock(&ctx.run_memory.written).remove(&writer.uid);
        }
        return Ok(Advanced::ended());
    }

    // Pin the definition the run starts with.
    let spec: WorkflowSpec = match &status.pinned {
        Some(pinned) => match serde_json::from_value(pinned.spec.clone()) {
            Ok(spec) => spec,
            Err(e) => {
                return fail_before_start(
                    &run,
                    ctx,
                    &mut writer,
                    status,
                    "InvalidPin",
                    format!("the pinned definition cannot be read: {e}"),
                )
                .await;
            }
        },
        None if run.spec.retry_of.is_some() => match retry_seed(&run, ctx, api).await? {
            Ok((seeded, spec)) => {
                status = seeded;
                spec
            }
            Err(message) => {
                return fail_before_start(&run, ctx, &mut writer, status, reason::INVALID_RETRY, message).await;
            }
        },
        None => {
            let workflow_name = &run.spec.workflow_ref.name;
            let Some(workflow) = ctx
                .workflows
                .get(&ObjectRef::<Workflow>::new(workflow_name).within(&namespace))
            else {
                let message = format!("Workflow {workflow_name:?} does not exist in namespace {namespace:?}");
                let mut next = status.clone();
                next.observed_generation = run.meta().generation;
                // The Workflow may be on its way (same sync, another watch):
                // retried, so under way rather than stalled.
                next.conditions = conditions::merge(
                    &status.conditions,
                    &[
                        Desired::new(READY, false, "WorkflowNotFound", message.clone()),
                        Desired::new(SUCCEEDED, Status::Unknown, "WorkflowNotFound", message.clone()),
                        Desired::reconciling("WorkflowNotFound", message),
                    ],
                    run.meta().generation,
                    Utc::now(),
                );
                writer.write(&next).await?;
                return Ok(Advanced::again_in(Duration::from_secs(5)));
            };
            let spec_value = serde_json::to_value(&workflow.spec).unwrap_or(Value::Null);
            let bytes = serde_json::to_vec(&spec_value).map_or(usize::MAX, |b| b.len());
            if bytes > MAX_PINNED_BYTES {
                let message = format!(
                    "Workflow {workflow_name:?} is {bytes} bytes; a run pins a copy of its definition in its status, \
                     which holds at most {MAX_PINNED_BYTES} bytes"
                );
                return fail_before_start(&run, ctx, &mut writer, status, "WorkflowTooLarge", message).await;
            }
            status.pinned = Some(PinnedDefinition {
                generation: workflow.meta().generation.unwrap_or_default(),
                hash: spec_hash(&spec_value),
                spec: spec_value,
            });
            workflow.spec.clone()
        }
    };
    if status.trace_id.is_none() {
        // Written with the first round; every later reconcile joins it.
        status.trace_id = crate::telemetry::run_trace_id(&writer.uid);
    }
    let hash = status.pinned.as_ref().map(|p| p.hash.clone()).unwrap_or_default();
    let compiled = match ctx.compiled(&hash, &spec) {
        Ok(compiled) => compiled,
        Err(message) => return fail_before_start(&run, ctx, &mut writer, status, "InvalidWorkflow", message).await,
    };
    let params = match resolve_parameters(&spec, &run.spec.parameters) {
        Ok(params) => params,
        Err(message) => return fail_before_start(&run, ctx, &mut writer, status, "InvalidParameters", message).await,
    };

    let cancelled = run.spec.cancel || deleting;
    let mut observations: Vec<Observation> = if cancelled {
        vec![Observation::Cancelled]
    } else {
        vec![]
    };
    let mut checked: HashSet<String> = HashSet::new();
    let mut previous = run.status.clone().unwrap_or_default();
    let mut rounds_left = true;
    for round in 0..MAX_ROUNDS {
        rounds_left = round + 1 < MAX_ROUNDS;
        let now = Utc::now();
        let vars = |s: &WorkflowRunStatus| Vars::of_run(&params, s, &run);
        let start = |i: usize, s: &WorkflowRunStatus| crate::workflow::steps::start(&compiled, vars, i, s);
        // Planning evaluates `when` and `forEach`; finishing, the run's
        // outputs: one turn of the sandbox for both.
        let (next, actions) = crate::expr::in_turn(|| {
            let (mut next, actions) = engine::advance(&compiled.def, &writer.uid, &status, &observations, now, &start);
            finish(&run, &compiled, &params, &mut next, cancelled, now);
            (next, actions)
        })
        .await;
        if cancelled {
            observations = vec![Observation::Cancelled];
        } else {
            observations.clear();
        }
        writer.write(&next).await?;
        announce(&run, ctx, &previous, &next, &compiled).await;
        previous = next.clone();
        status = next;
        let actions: Vec<engine::Action> = actions
            .into_iter()
            .filter(|a| match a {
                engine::Action::Check { step, .. } => checked.insert(step.clone()),
                _ => true,
            })
            .collect();
        if actions.is_empty() {
            break;
        }
        let scope =
            crate::expr::in_turn(|| Scope::new(ctx, &run, &compiled, params.clone(), &status, now, &actions)).await;
        let scope = &scope;
        let pending: Vec<_> = actions.iter().map(|a| scope.perform(a)).collect();
        let results: Vec<Option<Observation>> = futures::stream::iter(pending)
            .buffer_unordered(ROUND_CONCURRENCY)
            .collect()
            .await;
        observations.extend(results.into_iter().flatten());
        if observations.iter().all(|o| matches!(o, Observation::Cancelled)) {
            // Nothing new (an approval not decided, a resource not Ready):
            // the watches on Approvals and owned ExternalResources say when.
            break;
        }
    }
    if !rounds_left {
        // More to do than one reconcile may take: yield, and come back.
        return Ok(Advanced::again_in(Duration::from_millis(10)));
    }
    Ok(match requeue(&compiled, &status) {
        None => Advanced::ended(),
        Some(wait) => Advanced::again_in(wait),
    })
}

/// A retry's first status: the old run's pinned definition and the steps it
/// keeps (`workflow::retry`), after the ExternalResources of kept
/// `resource` steps were handed over to this run (so that deleting the old
/// run does not take them along). `Ok(Err(why))`: the run cannot be retried.
async fn retry_seed(
    run: &WorkflowRun,
    ctx: &Context,
    api: &Api<WorkflowRun>,
) -> Result<Result<(WorkflowRunStatus, WorkflowSpec), String>, Error> {
    let Some(old_name) = run.spec.retry_of.as_deref() else {
        return Ok(Err("not a retry".into()));
    };
    let old = api.get_opt(old_name).await.map_err(|source| Error::Read {
        name: old_name.to_owned(),
        source,
    })?;
    let Some(old) = old else {
        return Ok(Err(format!(
            "run {old_name:?} (spec.retryOf) does not exist in namespace {:?}",
            run.namespace().unwrap_or_default()
        )));
    };
    if let Some(why) = crate::workflow::retry::refuse(&old, run) {
        return Ok(Err(why));
    }
    let old_status = old.status.clone().unwrap_or_default();
    let Some(pinned) = &old_status.pinned else {
        return Ok(Err(format!("run {old_name:?} never started")));
    };
    let spec: WorkflowSpec = match serde_json::from_value(pinned.spec.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            return Ok(Err(format!(
                "the definition run {old_name:?} pinned cannot be read: {e}"
            )));
        }
    };
    let def = match engine::Definition::from_spec(&spec) {
        Ok(def) => def,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let seeded = crate::workflow::retry::seed(&def, old_name, &old_status);
    for step in &seeded.steps {
        // A step that keeps its object released it when its run ended.
        let owned = spec
            .steps
            .iter()
            .any(|s| s.name == step.name && s.resource.as_ref().is_some_and(|r| !r.keep));
        if owned && step.phase == StepPhase::Succeeded {
            steps::resource::hand_over(ctx, run, step).await?;
        }
    }
    Ok(Ok((seeded, spec)))
}

/// When to come back on our own: the next retry, poll or delay, or an
/// approval's deadline; at the latest after 30 s. `None` once the run has
/// ended.
fn requeue(compiled: &Compiled, status: &WorkflowRunStatus) -> Option<Duration> {
    if engine::is_terminal(status.phase) {
        return None;
    }
    let now = Utc::now();
    let mut at = engine::next_wakeup(status);
    for (i, s) in status.steps.iter().enumerate() {
        if s.phase != StepPhase::Waiting {
            continue;
        }
        let timeout = match compiled.steps.get(i).map(|c| &c.kind) {
            Some(StepKind::Approval(gate)) => gate.timeout,
            Some(StepKind::Call(call)) => call.callback.as_ref().map(|c| c.timeout),
            _ => None,
        };
        if let Some(t) = timeout {
            let deadline = crate::workflow::steps::after_std(s.started_at.unwrap_or(now), t);
            at = Some(at.map_or(deadline, |a| a.min(deadline)));
        }
    }
    // Resources becoming Ready, deletions finishing and decisions are
    // watched; the fallback is a safety net.
    let fallback = Duration::from_secs(30);
    let wait = at.map_or(fallback, |at| {
        (at - now).to_std().unwrap_or(Duration::ZERO).min(fallback)
    });
    Some(wait.max(Duration::from_millis(50)))
}

/// Conditions, outputs and timestamps that follow from the phase.
fn finish(
    run: &WorkflowRun,
    compiled: &Compiled,
    params: &Value,
    next: &mut WorkflowRunStatus,
    cancelled: bool,
    now: chrono::DateTime<Utc>,
) {
    next.observed_generation = run.meta().generation;
    let desired = run_conditions(next, cancelled, &run.name_any());
    next.conditions = conditions::merge(&next.conditions, &desired, run.meta().generation, now);
    if next.phase == RunPhase::Succeeded && next.outputs.is_empty() && !compiled.outputs.is_empty() {
        let vars = Vars::of_run(params, next, run);
        for (name, expr) in &compiled.outputs {
            let value = expr
                .eval(&Value::Null, &vars.refs())
                .unwrap_or_else(|e| json!({ "error": e.to_string() }));
            next.outputs.insert(name.clone(), value);
        }
        let bytes = serde_json::to_vec(&next.outputs).map_or(usize::MAX, |b| b.len());
        if bytes > engine::limits::STEP_OUTPUTS_BYTES {
            let error = format!(
                "the run's outputs are {bytes} bytes; a run keeps at most {} bytes of outputs in its status",
                engine::limits::STEP_OUTPUTS_BYTES
            );
            for value in next.outputs.values_mut() {
                *value = json!({ "error": error });
            }
        }
    }
    for s in &mut next.steps {
        for d in &mut s.item_details {
            if let Some(m) = d.message.as_mut() {
                crate::text::truncate(m, 256);
            }
        }
    }
}

/// The conditions of a run in its phase. `Succeeded` is `Unknown` until the
/// run ends (the Tekton / Knative convention: `kubectl wait
/// --for=condition=Succeeded=False` means "failed" and waits while the run
/// runs), then `True` or `False`. A run under way (pending, running, waiting
/// for an approval, compensating) is `Reconciling`; a run that ended badly
/// (`Failed`, `Compensated`, `CompensationFailed`, `Cancelled`) is `Stalled`:
/// it will not progress again, so kstatus reads `Failed` and a Flux or
/// Argo CD wait fails instead of hanging. `Ready` is `True` only for a run
/// that succeeded. Pure.
pub fn run_conditions(status: &WorkflowRunStatus, cancelled: bool, run_name: &str) -> Vec<Desired> {
    let failed_step = status
        .steps
        .iter()
        .find(|s| s.phase == StepPhase::Failed)
        .map(|s| format!("step {} failed: {}", s.name, s.message.as_deref().unwrap_or("failed")));
    let why = if cancelled {
        "the run was cancelled".to_owned()
    } else {
        failed_step.unwrap_or_else(|| "the run stopped".into())
    };
    let under_way = |reason: &str, message: String| {
        vec![
            Desired::new(READY, false, reason, message.clone()),
            Desired::new(SUCCEEDED, Status::Unknown, reason, message.clone()),
            Desired::reconciling(reason, message),
        ]
    };
    let ended_badly = |reason: &str, message: String| {
        vec![
            Desired::new(READY, false, reason, message.clone()),
            Desired::new(SUCCEEDED, false, reason, message.clone()),
            Desired::stalled(reason, message),
        ]
    };
    match status.phase {
        RunPhase::Succeeded => vec![
            Desired::new(READY, true, reason::SUCCEEDED, "every step succeeded"),
            Desired::new(SUCCEEDED, true, reason::SUCCEEDED, "every step succeeded"),
        ],
        RunPhase::Running | RunPhase::Pending => under_way(
            reason::RUNNING,
            format!("running {}", status.current_step.as_deref().unwrap_or("-")),
        ),
        RunPhase::WaitingForApproval => {
            let waiting: Vec<&str> = status
                .steps
                .iter()
                .filter(|s| s.phase == StepPhase::Waiting)
                .map(|s| s.name.as_str())
                .collect();
            under_way(
                reason::WAITING_FOR_APPROVAL,
                format!(
                    "waiting for an Approval of step {} (kubectl create an Approval with runRef {run_name} )",
                    waiting.join(", "),
                ),
            )
        }
        RunPhase::Compensating => under_way(reason::COMPENSATING, format!("{why}; undoing completed steps")),
        RunPhase::Compensated => {
            let reason = if cancelled {
                reason::CANCELLED
            } else {
                reason::COMPENSATED
            };
            let mut desired = ended_badly(reason, format!("{why}; completed steps were undone"));
            // `Succeeded` carries the cause alone, which users grep for.
            if let Some(succeeded) = desired.iter_mut().find(|d| d.type_ == SUCCEEDED) {
                succeeded.message = why;
            }
            desired
        }
        RunPhase::CompensationFailed => ended_badly(
            reason::COMPENSATION_FAILED,
            format!("{why}; left to clean up: {}", status.left_to_clean_up.join("; ")),
        ),
        RunPhase::Failed => ended_badly(reason::FAILED, why),
        RunPhase::Cancelled => ended_badly(reason::CANCELLED, why),
    }
}

/// A finished run's status, unchanged but for the generation it describes.
fn acknowledged(status: &WorkflowRunStatus, generation: Option<i64>) -> WorkflowRunStatus {
    let mut next = status.clone();
    next.observed_generation = generation;
    for c in &mut next.conditions {
        c.observed_generation = generation;
    }
    next
}

/// A run that cannot start: the reason in its conditions, phase Failed.
async fn fail_before_start(
    run: &WorkflowRun,
    ctx: &Context,
    writer: &mut Writer<'_>,
    status: WorkflowRunStatus,
    reason: &'static str,
    message: String,
) -> Result<Advanced, Error> {
    let now = Utc::now();
    let mut next = status.clone();
    next.phase = RunPhase::Failed;
    next.finished_at = Some(now);
    next.observed_generation = run.meta().generation;
    next.conditions = conditions::merge(
        &status.conditions,
        &[
            Desired::new(READY, false, reason, message.clone()),
            Desired::new(SUCCEEDED, false, reason, message.clone()),
            Desired::stalled(reason, message.clone()),
        ],
        run.meta().generation,
        now,
    );
    writer.write(&next).await?;
    ctx.publish(run, EventType::Warning, reason, "Start", message).await;
    Ok(Advanced::ended())
}

/// The action of a step's Events. kube-runtime's Recorder folds Events with
/// the same object, reason and action into one series that keeps the first
/// note: with the step in the action, five steps that start are five
/// Events, each naming its step.
fn step_action(step: &str) -> String {
    format!("Step/{step}")
}

/// Events and metrics for what changed between two statuses.
async fn announce(
    run: &WorkflowRun,
    ctx: &Context,
    before: &WorkflowRunStatus,
    after: &WorkflowRunStatus,
    compiled: &Compiled,
) {
    for (i, s) in after.steps.iter().enumerate() {
        let old = before.steps.iter().find(|b| b.name == s.name).map(|b| b.phase);
        if old == Some(s.phase) {
            continue;
        }
        if old.is_none()
            && let Some(from) = &s.kept_from
        {
            // A retry's kept step: it ran (and was counted) in `from`.
            let note = format!("step {} kept from run {from}: not run again", s.name);
            ctx.publish(run, EventType::Normal, event::STEP_KEPT, &step_action(&s.name), note)
                .await;
            continue;
        }
        let message = s.message.clone().unwrap_or_default();
        let (type_, reason, note) = match s.phase {
            StepPhase::Running if old != Some(StepPhase::Running) => (
                EventType::Normal,
                event::STEP_STARTED,
                match &s.items {
                    Some(items) => format!("step {} started: {} items", s.name, items.total),
                    None => format!("step {} started", s.name),
                },
            ),
            StepPhase::Waiting => match compiled.steps.get(i).map(|c| &c.kind) {
                Some(StepKind::Approval(CompiledApproval { message, .. })) => (
                    EventType::Normal,
                    event::APPROVAL_REQUESTED,
                    format!(
                        "step {} waits for an Approval: {}",
                        s.name,
                        message.as_deref().unwrap_or("approve or reject")
                    ),
                ),
                _ => (
                    EventType::Normal,
                    event::STEP_WAITING,
                    format!("step {} is under way", s.name),
                ),
            },
            StepPhase::Succeeded => (
                EventType::Normal,
                event::STEP_SUCCEEDED,
                format!("step {} succeeded", s.name),
            ),
            StepPhase::Skipped => (
                EventType::Normal,
                event::STEP_SKIPPED,
                format!("step {} skipped: {message}", s.name),
            ),
            StepPhase::Failed => (
                EventType::Warning,
                event::STEP_FAILED,
                format!("step {} failed: {message}", s.name),
            ),
            StepPhase::Compensating => (
                EventType::Normal,
                event::COMPENSATING,
                format!("undoing step {}", s.name),
            ),
            StepPhase::Compensated => {
                ctx.metrics
                    .compensations
                    .get_or_create(&crate::metrics::OutcomeLabels { outcome: "compensated" })
                    .inc();
                (EventType::Normal, event::COMPENSATED, format!("step {} undone", s.name))
            }
            StepPhase::CompensationFailed => {
                ctx.metrics
                    .compensations
                    .get_or_create(&crate::metrics::OutcomeLabels { outcome: "failed" })
                    .inc();
                (
                    EventType::Warning,
                    event::COMPENSATION_FAILED,
                    format!("undoing step {} failed: {message}", s.name),
                )
            }
            _ => continue,
        };
        if matches!(s.phase, StepPhase::Succeeded | StepPhase::Failed)
            && let (Some(start), Some(end)) = (s.started_at, s.finished_at)
        {
            let outcome = if s.phase == StepPhase::Succeeded {
                "succeeded"
            } else {
                "failed"
            };
            ctx.metrics
                .step_duration
                .get_or_create(&crate::metrics::OutcomeLabels { outcome })
                .observe((end - start).num_milliseconds().max(0) as f64 / 1000.0);
        }
        ctx.publish(run, type_, reason, &step_action(&s.name), note).await;
    }
    if before.phase != after.phase {
        let phase = serde_json::to_value(after.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        ctx.metrics
            .runs
            .get_or_create(&crate::metrics::PhaseLabels { phase: phase.clone() })
            .inc();
        if engine::is_terminal(after.phase)
            && !engine::is_terminal(before.phase)
            && let Some(uid) = run.meta().uid.as_deref()
        {
            crate::telemetry::run_ended(&crate::telemetry::RunEnd {
                uid,
                namespace: &run.namespace().unwrap_or_default(),
                name: &run.name_any(),
                workflow: &run.spec.workflow_ref.name,
                phase: &phase,
                succeeded: after.phase == RunPhase::Succeeded,
                created: run
                    .meta()
                    .creation_timestamp
                    .as_ref()
                    .map(|t| std::time::SystemTime::from(t.0)),
            });
        }
        let type_ = match after.phase {
            RunPhase::Failed | RunPhase::CompensationFailed | RunPhase::Compensating => EventType::Warning,
            _ => EventType::Normal,
        };
        let message = conditions::find(&after.conditions, SUCCEEDED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let pinned = after
            .pinned
            .as_ref()
            .map(|p| format!(" (workflow generation {}, {})", p.generation, p.hash))
            .unwrap_or_default();
        ctx.publish(
            run,
            type_,
            &format!("Run{phase}"),
            "Run",
            format!("run is {phase}{pinned}: {message}"),
        )
        .await;
    }
}

/// A run whose next status would not fit, ended `Failed` without the
/// outputs that made it too large. Pure.
fn ended_too_large(next: &WorkflowRunStatus, bytes: usize) -> WorkflowRunStatus {
    let mut ended = next.clone();
    for s in &mut ended.steps {
        s.outputs = None;
        s.item_details.clear();
    }
    ended.outputs.clear();
    ended.phase = RunPhase::Failed;
    ended.finished_at = ended.finished_at.or_else(|| Some(Utc::now()));
    let message = format!(
        "the run's status would be {bytes} bytes, more than the {MAX_STATUS_BYTES} bytes Tether writes; \
         the run was ended without compensation and its outputs were dropped"
    );
    ended.conditions = conditions::merge(
        &next.conditions,
        &[
            Desired::new(READY, false, event::STATUS_TOO_LARGE, message.clone()),
            Desired::new(SUCCEEDED, false, event::STATUS_TOO_LARGE, message.clone()),
            Desired::new(
                crate::api::common::condition::STALLED,
                true,
                event::STATUS_TOO_LARGE,
                message,
            ),
        ],
        next.observed_generation,
        Utc::now(),
    );
    ended
}

/// The run's status writer (conditional on the resourceVersion last read
/// or written, skipped when unchanged) with what runs add: the size wall,
/// and the memory of this process's last write (see [`fresh`]).
struct Writer<'a> {
    status: StatusWriter<'a, WorkflowRun, WorkflowRunStatus>,
    uid: String,
    ctx: &'a Context,
}

impl<'a> Writer<'a> {
    fn new(ctx: &'a Context, api: Api<WorkflowRun>, run: &WorkflowRun) -> Self {
        Self {
            status: StatusWriter::new(ctx, api, run, KIND, Some(run.status.clone().unwrap_or_default())),
            uid: run.uid().unwrap_or_default(),
            ctx,
        }
    }

    async fn write(&mut self, next: &WorkflowRunStatus) -> Result<(), Error> {
        if self.status.current.as_ref() == Some(next) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(next).map_or(usize::MAX, |b| b.len());
        if bytes > MAX_STATUS_BYTES {
            // No retry can write this: end the run with what fits, so it
            // neither loops (re-sending its last call) nor holds its
            // finalizer; the error stops this round's actions.
            let ended = ended_too_large(next, bytes);
            if serde_json::to_vec(&ended).map_or(usize::MAX, |b| b.len()) <= MAX_STATUS_BYTES {
                self.status.write(ended).await?;
                self.remember();
            }
            return Err(Error::StatusTooLarge {
                name: self.status.name().to_owned(),
                bytes,
                limit: MAX_STATUS_BYTES,
            });
        }
        self.status.write(next.clone()).await?;
        self.remember();
        Ok(())
    }

    fn remember(&mut self) {
        if let Some(rv) = self.status.resource_version() {
            lock(&self.ctx.run_memory.written).insert(self.uid.clone(), rv.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::{RECONCILING, STALLED};

    fn conditions_in(phase: RunPhase, cancelled: bool) -> Vec<(String, String, String)> {
        let status = WorkflowRunStatus {
            phase,
            ..WorkflowRunStatus::default()
        };
        let mut out: Vec<(String, String, String)> = run_conditions(&status, cancelled, "run-1")
            .into_iter()
            .map(|d| (d.type_.to_owned(), d.status.as_str().to_owned(), d.reason))
            .collect();
        out.sort();
        out
    }

    fn has(conditions: &[(String, String, String)], type_: &str, status: &str, reason: &str) -> bool {
        conditions
            .iter()
            .any(|(t, s, r)| t == type_ && s == status && r == reason)
    }

    #[test]
    fn threat_a_status_too_large_to_write_ends_the_run_with_what_fits() {
        let mut next = WorkflowRunStatus {
            phase: RunPhase::Running,
            ..WorkflowRunStatus::default()
        };
        next.steps = (0..20)
            .map(|i| crate::api::workflow_run::StepStatus {
                outputs: Some(serde_json::json!({ "blob": "x".repeat(100_000) })),
                ..crate::api::workflow_run::StepStatus::pending(&format!("s{i}"))
            })
            .collect();
        let bytes = serde_json::to_vec(&next).map_or(0, |b| b.len());
        assert!(bytes > MAX_STATUS_BYTES);
        let ended = ended_too_large(&next, bytes);
        assert_eq!(ended.phase, RunPhase::Failed);
        assert!(serde_json::to_vec(&ended).map_or(usize::MAX, |b| b.len()) < 64 * 1024);
        let stalled = crate::conditions::find(&ended.conditions, STALLED).map(|c| c.reason.clone());
        assert_eq!(stalled.as_deref(), Some("StatusTooLarge"));
    }

    #[test]
    fn succeeded_is_unknown_and_reconciling_while_a_run_is_under_way() {
        for (phase, reason) in [
            (RunPhase::Pending, reason::RUNNING),
            (RunPhase::Running, reason::RUNNING),
            (RunPhase::WaitingForApproval, reason::WAITING_FOR_APPROVAL),
            (RunPhase::Compensating, reason::COMPENSATING),
        ] {
            let c = conditions_in(phase, false);
            assert!(has(&c, SUCCEEDED, "Unknown", reason), "{phase:?}: {c:?}");
            assert!(has(&c, RECONCILING, "True", reason), "{phase:?}: {c:?}");
            assert!(has(&c, READY, "False", reason), "{phase:?}: {c:?}");
            assert!(!c.iter().any(|(t, _, _)| t == STALLED), "{phase:?}: {c:?}");
        }
    }

    #[test]
    fn a_run_that_ended_badly_is_stalled_and_not_succeeded() {
        for (phase, cancelled, reason) in [
            (RunPhase::Failed, false, reason::FAILED),
            (RunPhase::Compensated, false, reason::COMPENSATED),
            (RunPhase::Compensated, true, reason::CANCELLED),
            (RunPhase::CompensationFailed, false, reason::COMPENSATION_FAILED),
            (RunPhase::Cancelled, true, reason::CANCELLED),
        ] {
            let c = conditions_in(phase, cancelled);
            assert!(has(&c, SUCCEEDED, "False", reason), "{phase:?}: {c:?}");
            assert!(has(&c, STALLED, "True", reason), "{phase:?}: {c:?}");
            assert!(has(&c, READY, "False", reason), "{phase:?}: {c:?}");
            assert!(!c.iter().any(|(t, _, _)| t == RECONCILING), "{phase:?}: {c:?}");
        }
    }

    #[test]
    fn a_succeeded_run_is_ready_with_nothing_under_way() {
        let c = conditions_in(RunPhase::Succeeded, false);
        assert_eq!(
            c,
            [
                (READY.to_owned(), "True".to_owned(), reason::SUCCEEDED.to_owned()),
                (SUCCEEDED.to_owned(), "True".to_owned(), reason::SUCCEEDED.to_owned()),
            ]
        );
    }
}
