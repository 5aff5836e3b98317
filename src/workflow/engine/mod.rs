//! The workflow engine: a pure state machine. [`advance`] takes the pinned
//! definition, the run's status, what the reconciler observed since the last
//! call and the time, and returns the next status and the actions to take.
//! It has no I/O, no clock and no randomness, so a run is a sequence of such
//! steps that a reconcile performs and records, and a controller that
//! restarts resumes from status alone.
//!
//! The actions are derived from the status, not from the transition: a step
//! recorded as running is run (again) by every pass until its outcome is
//! observed. The reconciler writes the status before it performs the
//! actions, so an attempt that a crash interrupted is sent again with the
//! same idempotency key, and the target answers it as the first time.
//!
//! Rules: a step starts when every step it depends on has succeeded or was
//! skipped (`when` false); a `forEach` step runs its items with bounded
//! parallelism and succeeds when every item did (fan-in); a failed attempt
//! is retried, after a backoff, up to the step's limit and for the failures
//! it names; a step that fails for good, a timeout or a cancel stops new
//! starts and, with `onFailure: Compensate`, undoes the completed steps in
//! reverse dependency order — a step is compensated only after every step
//! that depended on it is. Every action carries an idempotency key derived
//! from run, step, item and attempt.

pub mod dag;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::api::workflow::{FailurePolicy, RetryOn, WorkflowSpec};
use crate::api::workflow_run::{ItemCounts, ItemStatus, RunPhase, StepPhase, StepStatus, WorkflowRunStatus};
pub use dag::{Dag, DagError};

/// Items of a `forEach` step run at once when the step does not say.
pub const DEFAULT_PARALLELISM: u32 = 10;

/// What a run keeps of what targets answer, so that its status stays far
/// below the API server's object limit (etcd's 1.5 MiB) whatever a target
/// sends: a step whose outputs do not fit fails for good with a message
/// that says so, instead of a status write that fails on every retry.
pub mod limits {
    /// Outputs of one step, as JSON.
    pub const STEP_OUTPUTS_BYTES: usize = 64 * 1024;
    /// Outputs of every step of a run together, as JSON.
    pub const RUN_OUTPUTS_BYTES: usize = 512 * 1024;
    /// A step's or an item's message.
    pub const MESSAGE_BYTES: usize = 1024;
}

/// What the engine needs to know of each step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Which failures are retried.
    pub retry_on: Vec<RetryOn>,
    /// Delay before the first retry (doubles each time, with jitter).
    pub backoff: chrono::Duration,
    pub max_backoff: chrono::Duration,
    /// Whether the step has something to undo.
    pub compensable: bool,
    /// Longest the step may take, retries included.
    pub timeout: Option<chrono::Duration>,
    /// A `forEach` step, and how many of its items run at once.
    pub parallelism: Option<u32>,
    /// An `approval` step (the run shows `WaitingForApproval` while only
    /// such steps wait).
    pub approval: bool,
    /// Undo the step even when it is abandoned while waiting (a `resource`
    /// step: its ExternalResource exists from the first attempt on).
    pub undo_when_abandoned: bool,
}

impl Default for StepInfo {
    fn default() -> Self {
        Self {
            retries: 0,
            retry_on: vec![RetryOn::Transient],
            backoff: chrono::Duration::seconds(1),
            max_backoff: chrono::Duration::seconds(60),
            compensable: false,
            timeout: None,
            parallelism: None,
            approval: false,
            undo_when_abandoned: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub dag: Dag,
    pub steps: Vec<StepInfo>,
    pub on_failure: FailurePolicy,
    /// Longest a run may take.
    pub timeout: Option<chrono::Duration>,
}

fn chrono_duration(d: &crate::api::common::Duration) -> Option<chrono::Duration> {
    d.to_std().and_then(|d| chrono::Duration::from_std(d).ok())
}

impl Definition {
    pub fn from_spec(spec: &WorkflowSpec) -> Result<Self, DagError> {
        let dag = Dag::from_spec(spec)?;
        let steps = spec
            .steps
            .iter()
            .map(|s| {
                let defaults = StepInfo::default();
                let retry = s.retry.as_ref();
                StepInfo {
                    retries: retry.map_or(0, |r| r.limit.max(0) as u32),
                    retry_on: retry.map_or(defaults.retry_on, |r| r.on.clone()),
                    backoff: retry
                        .and_then(|r| chrono_duration(&r.backoff))
                        .unwrap_or(defaults.backoff),
                    max_backoff: retry
                        .and_then(|r| chrono_duration(&r.max_backoff))
                        .unwrap_or(defaults.max_backoff),
                    compensable: s.compensate.is_some() || s.resource.as_ref().is_some_and(|r| !r.keep),
                    timeout: s.timeout.as_ref().and_then(chrono_duration),
                    parallelism: s
                        .for_each
                        .as_ref()
                        .map(|_| s.parallelism.map_or(DEFAULT_PARALLELISM, |p| p.max(1) as u32)),
                    approval: s.approval.is_some(),
                    undo_when_abandoned: s.resource.as_ref().is_some_and(|r| !r.keep),
                }
            })
            .collect();
        Ok(Self {
            dag,
            steps,
            on_failure: spec.on_failure,
            timeout: spec.timeout.as_ref().and_then(chrono_duration),
        })
    }
}

/// How a step begins, decided by the reconciler from `when` and `forEach`
/// (expressions over parameters and earlier outputs: pure, but outside
/// the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `when` is false.
    Skip,
    /// One attempt.
    Run,
    /// A `forEach` over this many items.
    Items(u32),
}

/// How many times a compensation that fails transiently is tried again
/// (with the step's backoff) before the run reports what is left to undo.
pub const UNDO_RETRIES: i32 = 3;

/// Why an attempt failed, for the step's `retry.on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// 5xx, 429, timeouts, connection failures.
    Transient,
    /// `successWhen` (or a poll's `failWhen`) said no.
    Condition,
    /// The target rejected the request (4xx), an expression failed.
    Permanent,
    /// Never retried: a rejection by an approver, a timeout.
    Final,
}

/// What happened since the last `advance`, as the reconciler saw it.
/// `item` is the index of a `forEach` item.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Succeeded {
        step: String,
        item: Option<i32>,
        outputs: Value,
    },
    /// The step is under way and waits (a poll, an approval, a delay, a
    /// resource becoming Ready); check it again at `until` (`None`: on the
    /// next pass).
    Waiting {
        step: String,
        until: Option<DateTime<Utc>>,
        outputs: Option<Value>,
    },
    Failed {
        step: String,
        item: Option<i32>,
        message: String,
        class: FailureClass,
    },
    Compensated {
        step: String,
        item: Option<i32>,
    },
    /// Undoing failed; a transient failure is retried (see
    /// [`UNDO_RETRIES`]).
    CompensationFailed {
        step: String,
        item: Option<i32>,
        message: String,
        class: FailureClass,
    },
    Cancelled,
}

/// What the reconciler must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send (or send again, after a crash) one attempt of a step or item.
    Run {
        step: String,
        item: Option<i32>,
        attempt: i32,
        idempotency_key: String,
    },
    /// Look at a waiting step (poll, approval, delay, resource readiness).
    Check { step: String },
    /// Undo a completed step or item.
    Compensate {
        step: String,
        item: Option<i32>,
        idempotency_key: String,
    },
}

/// `at + d`, saturating at the latest time chrono represents: durations
/// come from users, and one beyond the calendar must not panic.
pub fn after(at: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    at.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The idempotency key of one attempt of one step (or item) of one run.
pub fn idempotency_key(run: &str, step: &str, item: Option<i32>, attempt: i32) -> String {
    match item {
        Some(i) => format!("{run}/{step}/{i}/{attempt}"),
        None => format!("{run}/{step}/{attempt}"),
    }
}

fn compensation_key(run: &str, step: &str, item: Option<i32>) -> String {
    match item {
        Some(i) => format!("{run}/{step}/{i}/compensate"),
        None => format!("{run}/{step}/compensate"),
    }
}

pub fn is_terminal(phase: RunPhase) -> bool {
    matches!(
        phase,
        RunPhase::Succeeded
            | RunPhase::Failed
            | RunPhase::Compensated
            | RunPhase::CompensationFailed
            | RunPhase::Cancelled
    )
}

/// The delay before attempt `attempt` (2 = the first retry): exponential,
/// capped, with a jitter in [50 %, 100 %] drawn from the key, so that the
/// same status always yields the same time.
pub fn retry_delay(info: &StepInfo, attempt: i32, key: &str) -> chrono::Duration {
    let exponent = u32::try_from(attempt.saturating_sub(2)).unwrap_or(0).min(20);
    let base = info
        .backoff
        .checked_mul(1 << exponent)
        .unwrap_or(info.max_backoff)
        .min(info.max_backoff);
    let spread = key
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 501;
    base / 1000 * (500 + spread as i32)
}

fn retryable(info: &StepInfo, class: FailureClass) -> bool {
    info.retry_on.iter().any(|on| match (on, class) {
        (_, FailureClass::Final) => false,
        (RetryOn::All, _) => true,
        (RetryOn::Transient, FailureClass::Transient) => true,
        (RetryOn::Condition, FailureClass::Condition) => true,
        _ => false,
    })
}

/// One step of the state machine. `start` decides, for a step whose
/// dependencies are met, whether it is skipped, runs once or runs per item
/// (an error fails the step for good, with the error as its message).
pub fn advance(
    def: &Definition,
    run: &str,
    status: &WorkflowRunStatus,
    observations: &[Observation],
    now: DateTime<Utc>,
    start: &dyn Fn(usize, &WorkflowRunStatus) -> Result<Start, String>,
) -> (WorkflowRunStatus, Vec<Action>) {
    if is_terminal(status.phase) {
        return (status.clone(), vec![]);
    }
    let mut next = status.clone();
    // One status entry per step, in definition order.
    next.steps = def
        .dag
        .names
        .iter()
        .map(|name| {
            status
                .steps
                .iter()
                .find(|s| &s.name == name)
                .cloned()
                .unwrap_or_else(|| StepStatus::pending(name))
        })
        .collect();
    if next.phase == RunPhase::Pending {
        next.phase = RunPhase::Running;
        next.started_at = Some(now);
    }
    if next.phase == RunPhase::WaitingForApproval {
        next.phase = RunPhase::Running;
    }

    let mut stop: Option<String> = None;
    for observation in observations {
        match observation {
            Observation::Cancelled => stop = Some("the run was cancelled".into()),
            other => observe(def, run, &mut next, other, now),
        }
    }
    // Timeouts: of a step (retries included), of the run.
    for (i, s) in next.steps.iter_mut().enumerate() {
        let Some(timeout) = def.steps[i].timeout else { continue };
        if matches!(s.phase, StepPhase::Running | StepPhase::Waiting)
            && s.started_at.is_some_and(|at| after(at, timeout) <= now)
        {
            fail_step(s, format!("timed out after {}s", timeout.num_seconds()), now);
        }
    }
    if let (Some(timeout), Some(started)) = (def.timeout, next.started_at)
        && after(started, timeout) <= now
        && !matches!(next.phase, RunPhase::Compensating)
    {
        stop = Some(format!("the run timed out after {}s", timeout.num_seconds()));
    }

    if next.phase == RunPhase::Running {
        // Until nothing changes: a fan-in that completes unblocks its
        // dependents, which may be skipped or complete at once.
        loop {
            let before: Vec<StepPhase> = next.steps.iter().map(|s| s.phase).collect();
            start_ready_steps(def, &mut next, now, start);
            fan(def, &mut next, now, true);
            if next.steps.iter().map(|s| s.phase).eq(before) {
                break;
            }
        }
    }
    let failed = next.steps.iter().any(|s| s.phase == StepPhase::Failed);
    if next.phase == RunPhase::Running && (failed || stop.is_some()) {
        next.phase = match def.on_failure {
            FailurePolicy::Compensate => RunPhase::Compensating,
            FailurePolicy::Stop if stop.is_some() && !failed => RunPhase::Cancelled,
            FailurePolicy::Stop => RunPhase::Failed,
        };
        let why = stop.unwrap_or_else(|| "a step failed".into());
        abandon(def, &mut next, &why, now);
    }
    if next.phase != RunPhase::Running {
        fan(def, &mut next, now, false);
    }

    match next.phase {
        RunPhase::Running => {
            if next
                .steps
                .iter()
                .all(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped))
            {
                next.phase = RunPhase::Succeeded;
                next.finished_at = Some(now);
            } else if waits_only_for_approvals(def, &next) {
                next.phase = RunPhase::WaitingForApproval;
            }
        }
        RunPhase::Compensating if !in_flight(&next, now) => compensate(def, &mut next, now),
        RunPhase::Failed | RunPhase::Cancelled if !in_flight(&next, now) => {
            next.finished_at.get_or_insert(now);
        }
        _ => {}
    }
    let done = next
        .steps
        .iter()
        .filter(|s| matches!(s.phase, StepPhase::Succeeded | StepPhase::Skipped))
        .count();
    next.progress = Some(format!("{done}/{}", next.steps.len()));
    let actions = if is_terminal(next.phase) && !in_flight(&next, now) {
        vec![]
    } else {
        actions(run, &next, now)
    };
    (next, actions)
}

fn step_index(def: &Definition, name: &str) -> Option<usize> {
    def.dag.index(name)
}

fn fail_step(s: &mut StepStatus, message: String, now: DateTime<Utc>) {
    s.phase = StepPhase::Failed;
    s.message = Some(crate::text::shortened(&message, limits::MESSAGE_BYTES));
    s.finished_at = Some(now);
    s.next_at = None;
}

fn observe(def: &Definition, run: &str, next: &mut WorkflowRunStatus, observation: &Observation, now: DateTime<Utc>) {
    let (name, item) = match observation {
        Observation::Succeeded { step, item, .. }
        | Observation::Failed { step, item, .. }
        | Observation::Compensated { step, item }
        | Observation::CompensationFailed { step, item, .. } => (step, *item),
        Observation::Waiting { step, .. } => (step, None),
        Observation::Cancelled => return,
    };
    let Some(i) = step_index(def, name) else { return };
    let info = &def.steps[i];
    let too_large = match observation {
        Observation::Succeeded { outputs, .. }
        | Observation::Waiting {
            outputs: Some(outputs), ..
        } if item.is_none() => outputs_too_large(next, i, outputs),
        _ => None,
    };
    let s = &mut next.steps[i];
    if let Some(message) = too_large {
        if matches!(s.phase, StepPhase::Running | StepPhase::Waiting) {
            fail_step(s, message, now);
        }
        return;
    }
    if let Some(index) = item {
        observe_item(info, run, s, index, observation, now);
        return;
    }
    let active = matches!(s.phase, StepPhase::Running | StepPhase::Waiting);
    if active && s.items.is_some() && matches!(observation, Observation::Succeeded { .. } | Observation::Waiting { .. })
    {
        // A fan-out ends when its items have: an outcome of the whole step
        // (a step kind that waits once) cannot stand for them.
        fail_step(
            s,
            "forEach: this step completes as a whole, not item by item (forEach is for call and resource steps)".into(),
            now,
        );
        return;
    }
    match observation {
        Observation::Succeeded { outputs, .. } if active => {
            s.phase = StepPhase::Succeeded;
            s.outputs = Some(outputs.clone());
            s.finished_at = Some(now);
            s.next_at = None;
            s.message = None;
        }
        Observation::Waiting { until, outputs, .. } if active => {
            s.phase = StepPhase::Waiting;
            s.next_at = *until;
            if let Some(outputs) = outputs {
                s.outputs = Some(outputs.clone());
            }
        }
        Observation::Failed { message, class, .. } if active => {
            if s.attempt <= info.retries as i32 && retryable(info, *class) {
                s.attempt += 1;
                s.phase = StepPhase::Running;
                s.message = Some(crate::text::shortened(
                    &format!("attempt {} failed: {message}", s.attempt - 1),
                    limits::MESSAGE_BYTES,
                ));
                let key = idempotency_key(run, &s.name, None, s.attempt);
                s.next_at = Some(after(now, retry_delay(info, s.attempt, &key)));
            } else {
                fail_step(s, message.clone(), now);
            }
        }
        Observation::Compensated { .. } if s.phase == StepPhase::Compensating => {
            s.phase = StepPhase::Compensated;
            s.finished_at = Some(now);
        }
        Observation::CompensationFailed { message, class, .. } if s.phase == StepPhase::Compensating => {
            if *class == FailureClass::Transient && s.undo_attempts < UNDO_RETRIES {
                s.undo_attempts += 1;
                s.message = Some(crate::text::shortened(
                    &format!("undo attempt {} failed: {message}", s.undo_attempts),
                    limits::MESSAGE_BYTES,
                ));
                let key = compensation_key(run, &s.name, None);
                s.next_at = Some(after(now, retry_delay(info, s.undo_attempts + 1, &key)));
            } else {
                s.phase = StepPhase::CompensationFailed;
                s.message = Some(crate::text::shortened(message, limits::MESSAGE_BYTES));
                s.finished_at = Some(now);
                s.next_at = None;
            }
        }
        _ => {}
    }
}

/// Why `outputs` of step `i` cannot be kept in status, if they cannot.
fn outputs_too_large(next: &WorkflowRunStatus, i: usize, outputs: &Value) -> Option<String> {
    let size = |v: &Value| serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    let own = size(outputs);
    if own > limits::STEP_OUTPUTS_BYTES {
        return Some(format!(
            "the step's outputs are {own} bytes; a step may keep at most {} bytes in the run's status \
             (extract fewer or smaller fields in `outputs`)",
            limits::STEP_OUTPUTS_BYTES
        ));
    }
    let others: usize = next
        .steps
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, s)| s.outputs.as_ref())
        .map(size)
        .fold(0, usize::saturating_add);
    if others.saturating_add(own) > limits::RUN_OUTPUTS_BYTES {
        return Some(format!(
            "the run's outputs would be {} bytes; a run may keep at most {} bytes of outputs in its status",
            others.saturating_add(own),
            limits::RUN_OUTPUTS_BYTES
        ));
    }
    None
}

fn observe_item(
    info: &StepInfo,
    run: &str,
    s: &mut StepStatus,
    index: i32,
    observation: &Observation,
    now: DateTime<Utc>,
) {
    let Some(counts) = s.items.as_mut() else { return };
    let Some(at) = s.item_details.iter().position(|d| d.index == index) else {
        return;
    };
    let detail = &mut s.item_details[at];
    match (observation, detail.phase) {
        (Observation::Succeeded { .. }, StepPhase::Running) => {
            counts.running -= 1;
            counts.succeeded += 1;
            s.item_details.remove(at);
        }
        (Observation::Failed { message, class, .. }, StepPhase::Running) => {
            if detail.attempt <= info.retries as i32 && retryable(info, *class) {
                detail.attempt += 1;
                detail.message = Some(crate::text::shortened(
                    &format!("attempt {} failed: {message}", detail.attempt - 1),
                    limits::MESSAGE_BYTES,
                ));
                let key = idempotency_key(run, &s.name, Some(index), detail.attempt);
                detail.next_at = Some(after(now, retry_delay(info, detail.attempt, &key)));
            } else {
                detail.phase = StepPhase::Failed;
                detail.message = Some(crate::text::shortened(message, limits::MESSAGE_BYTES));
                detail.next_at = None;
                counts.running -= 1;
                counts.failed += 1;
            }
        }
        (Observation::Compensated { .. }, StepPhase::Compensating) => {
            counts.compensated += 1;
            s.item_details.remove(at);
        }
        (Observation::CompensationFailed { message, class, .. }, StepPhase::Compensating) => {
            if *class == FailureClass::Transient && detail.undo_attempts < UNDO_RETRIES {
                detail.undo_attempts += 1;
                detail.message = Some(crate::text::shortened(
                    &format!("undo attempt {} failed: {message}", detail.undo_attempts),
                    limits::MESSAGE_BYTES,
                ));
                let key = compensation_key(run, &s.name, Some(index));
                detail.next_at = Some(after(now, retry_delay(info, detail.undo_attempts + 1, &key)));
            } else {
                detail.phase = StepPhase::CompensationFailed;
                detail.message = Some(crate::text::shortened(message, limits::MESSAGE_BYTES));
                detail.next_at = None;
            }
        }
        _ => {}
    }
}

fn start_ready_steps(
    def: &Definition,
    next: &mut WorkflowRunStatus,
    now: DateTime<Utc>,
    start: &dyn Fn(usize, &WorkflowRunStatus) -> Result<Start, String>,
) {
    for &i in &def.dag.order {
        let ready = def.dag.deps[i]
            .iter()
            .all(|&d| matches!(next.steps[d].phase, StepPhase::Succeeded | StepPhase::Skipped));
        if next.steps[i].phase != StepPhase::Pending || !ready {
            continue;
        }
        let decision = start(i, next);
        let s = &mut next.steps[i];
        s.started_at = Some(now);
        match decision {
            Err(message) => fail_step(s, message, now),
            Ok(Start::Skip) => {
                s.phase = StepPhase::Skipped;
                s.message = Some("when was false".into());
                s.finished_at = Some(now);
            }
            Ok(Start::Run) => {
                s.phase = StepPhase::Running;
                s.attempt = 1;
                next.current_step = Some(s.name.clone());
            }
            Ok(Start::Items(total)) => {
                s.phase = StepPhase::Running;
                s.attempt = 1;
                s.items = Some(ItemCounts {
                    total: i32::try_from(total).unwrap_or(i32::MAX),
                    ..ItemCounts::default()
                });
                next.current_step = Some(s.name.clone());
            }
        }
    }
}

/// Fan-out: fills each running forEach step up to its parallelism (when
/// `dispatch`); fan-in: a step ends when all its items have, or, once the
/// run stopped, when none is in flight any more.
fn fan(def: &Definition, next: &mut WorkflowRunStatus, now: DateTime<Utc>, dispatch: bool) {
    for (i, s) in next.steps.iter_mut().enumerate() {
        let (Some(parallelism), StepPhase::Running) = (def.steps[i].parallelism, s.phase) else {
            continue;
        };
        let Some(counts) = s.items.as_mut() else { continue };
        while dispatch && counts.failed == 0 && counts.started < counts.total && counts.running < parallelism as i32 {
            s.item_details.push(ItemStatus {
                index: counts.started,
                phase: StepPhase::Running,
                attempt: 1,
                next_at: None,
                message: None,
                undo_attempts: 0,
            });
            counts.started += 1;
            counts.running += 1;
        }
        let finished = counts.failed > 0 || counts.started == counts.total || !dispatch;
        if counts.running > 0 || !finished {
            continue;
        }
        s.finished_at = Some(now);
        if counts.failed == 0 && counts.started == counts.total {
            s.phase = StepPhase::Succeeded;
            s.outputs = Some(json!({ "count": counts.total }));
            s.message = None;
        } else {
            s.phase = StepPhase::Failed;
            let failed: Vec<String> = s
                .item_details
                .iter()
                .filter(|d| d.phase == StepPhase::Failed)
                .take(3)
                .map(|d| format!("item {}: {}", d.index, d.message.as_deref().unwrap_or("failed")))
                .collect();
            s.message = Some(if counts.failed > 0 {
                format!(
                    "{} of {} items failed: {}",
                    counts.failed,
                    counts.total,
                    failed.join("; ")
                )
            } else {
                format!("stopped after {} of {} items", counts.started, counts.total)
            });
        }
    }
}

/// The run stops: attempts whose outcome is unknown are still asked for it
/// (sent again with their key), retries not yet due are dropped, waiting
/// steps are abandoned (a resource step's object is undone all the same).
fn abandon(def: &Definition, next: &mut WorkflowRunStatus, why: &str, now: DateTime<Utc>) {
    for (i, s) in next.steps.iter_mut().enumerate() {
        match s.phase {
            StepPhase::Running if s.items.is_some() => {
                let Some(counts) = s.items.as_mut() else { continue };
                for d in &mut s.item_details {
                    if d.phase == StepPhase::Running && later_than(d.next_at, now) {
                        d.phase = StepPhase::Failed;
                        d.message = Some(format!("retry dropped: {why}"));
                        d.next_at = None;
                        counts.running -= 1;
                        counts.failed += 1;
                    }
                }
            }
            StepPhase::Running if later_than(s.next_at, now) => fail_step(s, format!("retry dropped: {why}"), now),
            StepPhase::Waiting if def.steps[i].undo_when_abandoned => {
                s.phase = StepPhase::Succeeded;
                s.message = Some(format!("abandoned while waiting: {why}"));
                s.next_at = None;
                s.finished_at = Some(now);
            }
            StepPhase::Waiting => fail_step(s, format!("abandoned: {why}"), now),
            _ => {}
        }
    }
}

/// Attempts sent whose outcome is not known yet.
fn in_flight(next: &WorkflowRunStatus, now: DateTime<Utc>) -> bool {
    next.steps.iter().any(|s| match &s.items {
        Some(counts) if s.phase == StepPhase::Running => counts.running > 0,
        _ => s.phase == StepPhase::Running && !later_than(s.next_at, now),
    })
}

/// A retry that is not due yet (so not sent).
fn later_than(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    at.is_some_and(|at| at > now)
}

fn waits_only_for_approvals(def: &Definition, next: &WorkflowRunStatus) -> bool {
    let mut waiting = false;
    for (i, s) in next.steps.iter().enumerate() {
        match s.phase {
            StepPhase::Running => return false,
            StepPhase::Waiting if def.steps[i].approval => waiting = true,
            StepPhase::Waiting => return false,
            _ => {}
        }
    }
    waiting
}

/// Items of a forEach step that completed (so have something to undo), in
/// index order.
fn undo_items(s: &StepStatus) -> impl Iterator<Item = i32> + '_ {
    let started = s.items.as_ref().map_or(0, |c| c.started);
    (0..started).filter(|i| {
        !s.item_details
            .iter()
            .any(|d| d.index == *i && matches!(d.phase, StepPhase::Failed | StepPhase::Running))
    })
}

fn compensate(def: &Definition, next: &mut WorkflowRunStatus, now: DateTime<Utc>) {
    // Reverse dependency order: a step is undone once nothing that depended
    // on it still stands.
    for &i in def.dag.order.iter().rev() {
        let blocked = def.dag.dependents[i].iter().any(|&d| {
            let dependent = &next.steps[d];
            matches!(dependent.phase, StepPhase::Succeeded | StepPhase::Compensating)
                || (dependent.phase == StepPhase::Failed && has_items_to_undo(dependent))
        });
        let info = &def.steps[i];
        let s = &mut next.steps[i];
        let eligible = s.phase == StepPhase::Succeeded
            || s.phase == StepPhase::Compensating
            || (s.phase == StepPhase::Failed && has_items_to_undo(s));
        if !eligible || blocked {
            continue;
        }
        if !info.compensable {
            if s.phase == StepPhase::Succeeded {
                s.phase = StepPhase::Compensated;
                s.message = Some("nothing to undo".into());
            } else if s.phase == StepPhase::Failed
                && let Some(counts) = s.items.as_mut()
            {
                counts.compensation_started = counts.started;
            }
            continue;
        }
        let Some(parallelism) = info.parallelism else {
            s.phase = StepPhase::Compensating;
            continue;
        };
        // forEach: undo the completed items, `parallelism` at a time.
        s.phase = StepPhase::Compensating;
        let undo: Vec<i32> = undo_items(s).collect();
        let Some(counts) = s.items.as_mut() else { continue };
        let mut busy = s
            .item_details
            .iter()
            .filter(|d| d.phase == StepPhase::Compensating)
            .count() as u32;
        while busy < parallelism && (counts.compensation_started as usize) < undo.len() {
            let index = undo[counts.compensation_started as usize];
            counts.compensation_started += 1;
            busy += 1;
            s.item_details.push(ItemStatus {
                index,
                phase: StepPhase::Compensating,
                attempt: 1,
                next_at: None,
                message: None,
                undo_attempts: 0,
            });
        }
        if busy == 0 {
            let failed: Vec<String> = s
                .item_details
                .iter()
                .filter(|d| d.phase == StepPhase::CompensationFailed)
                .map(|d| format!("item {}: {}", d.index, d.message.as_deref().unwrap_or("failed")))
                .collect();
            s.finished_at = Some(now);
            if failed.is_empty() {
                s.phase = StepPhase::Compensated;
            } else {
                s.phase = StepPhase::CompensationFailed;
                s.message = Some(failed.join("; "));
            }
        }
    }
    let open = next.steps.iter().any(|s| {
        matches!(s.phase, StepPhase::Succeeded | StepPhase::Compensating)
            || (s.phase == StepPhase::Failed && has_items_to_undo(s))
    });
    if !open {
        next.left_to_clean_up = next
            .steps
            .iter()
            .filter(|s| s.phase == StepPhase::CompensationFailed)
            .map(|s| format!("{}: {}", s.name, s.message.as_deref().unwrap_or("compensation failed")))
            .collect();
        next.phase = if next.left_to_clean_up.is_empty() {
            RunPhase::Compensated
        } else {
            RunPhase::CompensationFailed
        };
        next.finished_at = Some(now);
    }
}

/// A failed forEach step whose completed items are not all undone yet.
fn has_items_to_undo(s: &StepStatus) -> bool {
    s.items
        .as_ref()
        .is_some_and(|c| c.compensation_started < undo_items(s).count() as i32)
}

/// The actions the status calls for now.
fn actions(run: &str, next: &WorkflowRunStatus, now: DateTime<Utc>) -> Vec<Action> {
    let due = |at: Option<DateTime<Utc>>| at.is_none_or(|at| at <= now);
    let mut actions = Vec::new();
    for s in &next.steps {
        match (s.phase, &s.items) {
            (StepPhase::Running, Some(_)) => {
                for d in &s.item_details {
                    if d.phase == StepPhase::Running && due(d.next_at) {
                        actions.push(Action::Run {
                            step: s.name.clone(),
                            item: Some(d.index),
                            attempt: d.attempt,
                            idempotency_key: idempotency_key(run, &s.name, Some(d.index), d.attempt),
                        });
                    }
                }
            }
            (StepPhase::Running, None) if due(s.next_at) => actions.push(Action::Run {
                step: s.name.clone(),
                item: None,
                attempt: s.attempt,
                idempotency_key: idempotency_key(run, &s.name, None, s.attempt),
            }),
            (StepPhase::Waiting, _) if due(s.next_at) => actions.push(Action::Check { step: s.name.clone() }),
            (StepPhase::Compensating, Some(_)) => {
                for d in &s.item_details {
                    if d.phase == StepPhase::Compensating && due(d.next_at) {
                        actions.push(Action::Compensate {
                            step: s.name.clone(),
                            item: Some(d.index),
                            idempotency_key: compensation_key(run, &s.name, Some(d.index)),
                        });
                    }
                }
            }
            (StepPhase::Compensating, None) if due(s.next_at) => actions.push(Action::Compensate {
                step: s.name.clone(),
                item: None,
                idempotency_key: compensation_key(run, &s.name, None),
            }),
            _ => {}
        }
    }
    actions
}

/// When the run next needs a pass on its own (a retry, a poll, a delay),
/// if ever.
pub fn next_wakeup(status: &WorkflowRunStatus) -> Option<DateTime<Utc>> {
    status
        .steps
        .iter()
        .flat_map(|s| {
            let own = match s.phase {
                StepPhase::Running | StepPhase::Waiting | StepPhase::Compensating => s.next_at,
                _ => None,
            };
            own.into_iter().chain(s.item_details.iter().filter_map(|d| d.next_at))
        })
        .min()
}

#[cfg(test)]
mod tests;
