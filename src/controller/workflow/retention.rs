//! Which finished runs of a Workflow its retention deletes, and when to look
//! again: `ttlSecondsAfterFinished`, then the history limits (newest kept).
//! Pure: it decides from the runs as the store holds them; the Workflow
//! reconcile deletes them through the API server.

use chrono::{DateTime, Utc};

use crate::api::workflow::RunRetention;
use crate::api::workflow_run::RunPhase;
use crate::workflow::engine::{after, is_terminal};

/// What retention needs of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished<'a> {
    pub name: &'a str,
    pub phase: RunPhase,
    /// When it finished (its creation time when the status has none).
    pub at: DateTime<Utc>,
}

impl<'a> Finished<'a> {
    /// A run that has ended and is not being deleted already.
    pub fn of(run: &'a crate::api::WorkflowRun) -> Option<Self> {
        if run.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let status = run.status.as_ref()?;
        if !is_terminal(status.phase) {
            return None;
        }
        let created = run
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
        Some(Self {
            name: run.metadata.name.as_deref()?,
            phase: status.phase,
            at: status.finished_at.or(created)?,
        })
    }
}

/// The runs to delete now, and the next time one expires.
pub fn plan<'a>(
    retention: &RunRetention,
    mut runs: Vec<Finished<'a>>,
    now: DateTime<Utc>,
) -> (Vec<&'a str>, Option<DateTime<Utc>>) {
    // Newest first; the name breaks ties so the choice is stable.
    runs.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.name.cmp(b.name)));
    let mut delete = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    let (mut succeeded, mut failed) = (0i32, 0i32);
    for run in runs {
        let expires = retention
            .ttl_seconds_after_finished
            .map(|ttl| after(run.at, chrono::Duration::seconds(i64::from(ttl.max(0)))));
        let (kept, limit) = if run.phase == RunPhase::Succeeded {
            succeeded += 1;
            (succeeded, retention.successful_runs_history_limit)
        } else {
            failed += 1;
            (failed, retention.failed_runs_history_limit)
        };
        let beyond_limit = limit.is_some_and(|limit| kept > limit.max(0));
        match expires {
            _ if beyond_limit => delete.push(run.name),
            Some(at) if at <= now => delete.push(run.name),
            Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
            None => {}
        }
    }
    (delete, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + seconds, 0).unwrap_or_default()
    }

    fn finished(name: &str, phase: RunPhase, seconds: i64) -> Finished<'_> {
        Finished {
            name,
            phase,
            at: at(seconds),
        }
    }

    #[test]
    fn runs_past_their_ttl_go_and_the_next_expiry_is_when_to_look_again() {
        let retention = RunRetention {
            ttl_seconds_after_finished: Some(60),
            ..RunRetention::default()
        };
        let runs = vec![
            finished("old", RunPhase::Succeeded, 0),
            finished("failed", RunPhase::Compensated, 10),
            finished("young", RunPhase::Succeeded, 50),
        ];
        let (delete, next) = plan(&retention, runs, at(75));
        assert_eq!(delete, ["failed", "old"]);
        assert_eq!(next, Some(at(110)));
    }

    #[test]
    fn history_limits_keep_the_newest_succeeded_and_failed_runs_apart() {
        let retention = RunRetention {
            successful_runs_history_limit: Some(1),
            failed_runs_history_limit: Some(2),
            ..RunRetention::default()
        };
        let runs = vec![
            finished("s1", RunPhase::Succeeded, 1),
            finished("s2", RunPhase::Succeeded, 2),
            finished("f1", RunPhase::Failed, 3),
            finished("f2", RunPhase::Cancelled, 4),
            finished("f3", RunPhase::CompensationFailed, 5),
        ];
        let (delete, next) = plan(&retention, runs, at(10));
        assert_eq!(delete, ["f1", "s1"]);
        assert_eq!(next, None);
    }

    #[test]
    fn without_a_policy_nothing_is_deleted() {
        let runs = vec![finished("s1", RunPhase::Succeeded, 1)];
        assert_eq!(plan(&RunRetention::default(), runs, at(1_000_000)), (vec![], None));
    }
}
