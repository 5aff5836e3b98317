//! Reconciling a Workflow: validate the definition (the DAG, every
//! expression, the schedules) into its `Ready` condition, and fire its cron
//! schedules with their concurrency policy and history limits. Runs are
//! created with deterministic names, so a schedule that fires twice (a
//! restart, two leaders for a moment) creates one run. Its `retention`
//! deletes finished runs of every origin ([`retention`]).

pub mod retention;

use crate::api::common::condition::READY;
use crate::api::common::event;
use crate::controller::Error;
use crate::controller::status::StatusWriter;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use crate::api::workflow::{ConcurrencyPolicy, ScheduleStatus, ScheduleTrigger, WorkflowStatus};
use crate::api::workflow_run::{RunPhase, WorkflowRunSpec};
use crate::api::{Workflow, WorkflowRun};
use crate::conditions::{self, Desired};
use crate::workflow::compile::{Compiled, spec_hash};
use crate::workflow::engine::is_terminal;

pub const KIND: &str = "Workflow";
/// Labels of the runs a trigger creates.
pub const WORKFLOW_LABEL: &str = "tether.dev/workflow";
pub const TRIGGER_LABEL: &str = "tether.dev/trigger";
pub const SCHEDULE_LABEL: &str = "tether.dev/schedule";

pub fn error_policy(workflow: Arc<Workflow>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error(KIND, "ApiError");
    tracing::warn!(name = %workflow.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// A parsed schedule.
struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

fn parse_schedule(s: &ScheduleTrigger) -> Result<Schedule, String> {
    let cron = croner::Cron::from_str(&s.cron)
        .map_err(|e| format!("spec.triggers.schedules[{}].cron {:?}: {e}", s.name, s.cron))?;
    let tz = s.time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "spec.triggers.schedules[{}].timeZone {:?} is not an IANA time zone",
            s.name, s.time_zone
        )
    })?;
    Ok(Schedule { cron, tz })
}

/// The latest time the schedule was due in `(after, now]`, and the next
/// time after `now`.
fn due(
    schedule: &Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let local_now = now.with_timezone(&schedule.tz);
    let next = schedule
        .cron
        .find_next_occurrence(&local_now, false)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    let latest = schedule
        .cron
        .find_previous_occurrence(&local_now, true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| *t > after);
    (latest, next)
}

pub async fn reconcile(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_workflow(&workflow, &ctx).await;
    ctx.metrics.observe_reconcile(KIND, started.elapsed());
    result
}

async fn reconcile_workflow(workflow: &Workflow, ctx: &Context) -> Result<Action, Error> {
    let now = Utc::now();
    let namespace = workflow.namespace().unwrap_or_default();
    let name = workflow.name_any();
    let current = workflow.status.clone().unwrap_or_default();
    let mut next = WorkflowStatus {
        observed_generation: workflow.meta().generation,
        step_count: i32::try_from(workflow.spec.steps.len()).ok(),
        spec_hash: Some(spec_hash(&serde_json::to_value(&workflow.spec).unwrap_or_default())),
        last_run: current.last_run.clone(),
        schedules: vec![],
        webhook_path: workflow
            .spec
            .triggers
            .as_ref()
            .and_then(|t| t.webhook.as_ref())
            .map(|_| crate::workflow::callback::trigger_path(&namespace, &name)),
        conditions: current.conditions.clone(),
    };
    let mut problems: Vec<String> = Compiled::compile(&workflow.spec).err().unwrap_or_default();
    let schedules: Vec<(&ScheduleTrigger, Result<Schedule, String>)> = workflow
        .spec
        .triggers
        .iter()
        .flat_map(|t| &t.schedules)
        .map(|s| (s, parse_schedule(s)))
        .collect();
    problems.extend(schedules.iter().filter_map(|(_, r)| r.as_ref().err().cloned()));
    let ready = if problems.is_empty() {
        Desired::new(READY, true, "Valid", "the definition is valid")
    } else {
        Desired::new(READY, false, event::INVALID_DEFINITION, problems.join("; "))
    };
    if !problems.is_empty() && conditions::find(&current.conditions, "Ready").is_none_or(|c| c.message != ready.message)
    {
        ctx.publish(
            workflow,
            EventType::Warning,
            event::INVALID_DEFINITION,
            "Validate",
            ready.message.clone(),
        )
        .await;
    }
    // An invalid definition is also `Stalled`: only an edit of the spec helps.
    let mut desired = vec![ready.clone()];
    if !ready.is_true() {
        desired.push(Desired::stalled(ready.reason.clone(), ready.message.clone()));
    }
    next.conditions = conditions::merge(&current.conditions, &desired, workflow.meta().generation, now);

    // Schedules fire only for a valid definition.
    let mut wake: Option<DateTime<Utc>> = None;
    for (trigger, schedule) in &schedules {
        let previous = current.schedules.iter().find(|s| s.name == trigger.name);
        let mut state = previous.cloned().unwrap_or(ScheduleStatus {
            name: trigger.name.clone(),
            last_schedule_time: None,
            next_schedule_time: None,
            last_run: None,
            skipped: 0,
        });
        let Ok(schedule) = schedule else {
            next.schedules.push(state);
            continue;
        };
        let after = state
            .last_schedule_time
            .or_else(|| {
                let created = workflow.meta().creation_timestamp.as_ref()?;
                DateTime::from_timestamp(created.0.as_second(), 0)
            })
            .unwrap_or(now);
        let (latest, upcoming) = due(schedule, after, now);
        if let Some(at) = latest
            && problems.is_empty()
        {
            fire(workflow, ctx, trigger, at, &mut state).await?;
            if let Some(run) = &state.last_run {
                next.last_run = Some(run.clone());
            }
        }
        state.next_schedule_time = upcoming;
        wake = match (wake, upcoming) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        prune_history(ctx, &namespace, &name, trigger).await;
        next.schedules.push(state);
    }

    if let Some(policy) = &workflow.spec.retention
        && let Some(at) = retain(ctx, &namespace, &name, policy, now).await
    {
        wake = Some(wake.map_or(at, |w| w.min(at)));
    }

    let api: Api<Workflow> = Api::namespaced(ctx.client.clone(), &namespace);
    StatusWriter::new(ctx, api, workflow, KIND, Some(current))
        .unconditional()
        .write(next)
        .await?;
    Ok(match wake {
        Some(at) => Action::requeue(
            (at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_millis(100)),
        ),
        None => Action::await_change(),
    })
}

/// One due time of a schedule: start a run, or not, by its concurrency
/// policy.
async fn fire(
    workflow: &Workflow,
    ctx: &Context,
    trigger: &ScheduleTrigger,
    at: DateTime<Utc>,
    state: &mut ScheduleStatus,
) -> Result<(), Error> {
    let namespace = workflow.namespace().unwrap_or_default();
    let name = workflow.name_any();
    state.last_schedule_time = Some(at);
    let active: Vec<Arc<WorkflowRun>> = runs_of(ctx, &namespace, &name, &trigger.name)
        .into_iter()
        .filter(|r| !r.status.as_ref().is_some_and(|s| is_terminal(s.phase)))
        .collect();
    let runs: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    match trigger.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            state.skipped += 1;
            let note = format!(
                "schedule {} was due at {at} but run {} still runs (concurrencyPolicy Forbid)",
                trigger.name,
                active[0].name_any()
            );
            ctx.publish(workflow, EventType::Normal, event::SCHEDULE_SKIPPED, "Schedule", note)
                .await;
            return Ok(());
        }
        ConcurrencyPolicy::Replace => {
            for run in &active {
                let patch = json!({"spec": {"cancel": true}});
                if let Err(err) = runs
                    .patch(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(run = %run.name_any(), %err, "cannot cancel the run a schedule replaces");
                }
                let note = format!(
                    "schedule {} replaces run {} (concurrencyPolicy Replace)",
                    trigger.name,
                    run.name_any()
                );
                ctx.publish(workflow, EventType::Normal, event::RUN_REPLACED, "Schedule", note)
                    .await;
            }
        }
        _ => {}
    }
    let run_name = format!("{name}-{}-{}", trigger.name, at.timestamp());
    let labels = [(TRIGGER_LABEL, "schedule"), (SCHEDULE_LABEL, trigger.name.as_str())];
    create_run(ctx, workflow, &run_name, None, trigger.parameters.clone(), &labels).await?;
    state.last_run = Some(run_name.clone());
    ctx.publish(
        workflow,
        EventType::Normal,
        event::RUN_CREATED,
        "Schedule",
        format!("schedule {} started run {run_name}", trigger.name),
    )
    .await;
    Ok(())
}

/// Creates a run of `workflow`; a run of that name that already exists is
/// the same run (a trigger that fired twice).
pub async fn create_run(
    ctx: &Context,
    workflow: &Workflow,
    name: &str,
    generate_name: Option<&str>,
    parameters: serde_json::Value,
    labels: &[(&str, &str)],
) -> Result<WorkflowRun, Error> {
    let namespace = workflow.namespace().unwrap_or_default();
    let mut run = WorkflowRun::new(
        name,
        WorkflowRunSpec {
            workflow_ref: crate::api::common::ObjectRef::new(workflow.name_any()),
            parameters,
            cancel: false,
            retry_of: None,
        },
    );
    run.meta_mut().namespace = Some(namespace.clone());
    if let Some(prefix) = generate_name {
        run.meta_mut().name = None;
        run.meta_mut().generate_name = Some(prefix.to_owned());
    }
    let mut all = std::collections::BTreeMap::from([(WORKFLOW_LABEL.to_owned(), workflow.name_any())]);
    all.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    // Labelled with its shard from the start: no second write.
    all.extend(ctx.shards.label(&namespace).map(|(k, v)| (k.to_owned(), v)));
    run.meta_mut().labels = Some(all);
    let api: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.create(&PostParams::default(), &run).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await.map_err(|source| Error::CreateRun {
            name: workflow.name_any(),
            source,
        }),
        Err(source) => Err(Error::CreateRun {
            name: workflow.name_any(),
            source,
        }),
    }
}

fn runs_of(ctx: &Context, namespace: &str, workflow: &str, schedule: &str) -> Vec<Arc<WorkflowRun>> {
    ctx.runs
        .state()
        .into_iter()
        .filter(|r| {
            let labels = r.labels();
            r.namespace().as_deref() == Some(namespace)
                && labels.get(WORKFLOW_LABEL).map(String::as_str) == Some(workflow)
                && labels.get(SCHEDULE_LABEL).map(String::as_str) == Some(schedule)
        })
        .collect()
}

/// Applies the Workflow's retention to its finished runs (whatever started
/// them): deletes those past their TTL or beyond a history limit, and says
/// when the next one expires. A run's deletion completes at once: a
/// finished run has nothing left to undo.
async fn retain(
    ctx: &Context,
    namespace: &str,
    workflow: &str,
    policy: &crate::api::workflow::RunRetention,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let runs: Vec<Arc<WorkflowRun>> = ctx
        .runs
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.workflow_ref.name == workflow)
        .collect();
    let finished = runs.iter().filter_map(|r| retention::Finished::of(r)).collect();
    let (delete, next) = retention::plan(policy, finished, now);
    let api: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), namespace);
    for name in delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(run = name, workflow, "deleted a finished run (retention)"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => tracing::warn!(run = name, %err, "cannot delete a finished run (retention)"),
        }
    }
    next
}

/// Deletes the oldest finished runs of a schedule beyond its history limits.
async fn prune_history(ctx: &Context, namespace: &str, workflow: &str, trigger: &ScheduleTrigger) {
    let mut finished: Vec<Arc<WorkflowRun>> = runs_of(ctx, namespace, workflow, &trigger.name)
        .into_iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| is_terminal(s.phase)) && r.meta().deletion_timestamp.is_none())
        .collect();
    finished.sort_by_key(|r| std::cmp::Reverse(r.creation_timestamp()));
    let (succeeded, failed): (Vec<_>, Vec<_>) = finished
        .into_iter()
        .partition(|r| r.status.as_ref().is_some_and(|s| s.phase == RunPhase::Succeeded));
    let api: Api<WorkflowRun> = Api::namespaced(ctx.client.clone(), namespace);
    let surplus = succeeded
        .iter()
        .skip(trigger.successful_runs_history_limit.max(0) as usize)
        .chain(failed.iter().skip(trigger.failed_runs_history_limit.max(0) as usize));
    for run in surplus {
        if let Err(err) = api.delete(&run.name_any(), &DeleteParams::default()).await {
            tracing::debug!(run = %run.name_any(), %err, "cannot prune a finished run");
        }
    }
}
