//! Building `meta/v1` conditions the Kubernetes way: `lastTransitionTime`
//! moves only when a condition's status moves, so an unchanged reconcile
//! produces an identical status (and no write). `Reconciling` and `Stalled`
//! are present only while `True` (kstatus' abnormal-true conditions): a
//! write that does not set them removes them. Pure: `now` is passed in.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::common::condition::{ABNORMAL_TRUE, RECONCILING, STALLED};

/// The status of a condition: `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

/// The longest condition message Tether writes.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// A condition to set: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: Status,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: impl Into<Status>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// `Reconciling=True`: work is under way (kstatus `InProgress`).
    pub fn reconciling(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(RECONCILING, true, reason, message)
    }

    /// `Stalled=True`: no progress without a change (kstatus `Failed`).
    pub fn stalled(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(STALLED, true, reason, message)
    }

    pub fn is_true(&self) -> bool {
        self.status == Status::True
    }
}

/// The conditions after setting `desired` over `previous`; conditions of
/// other types are kept as they were, except `Reconciling` and `Stalled`,
/// which stay only when `desired` sets them `True`.
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let status = d.status.as_str().to_owned();
        let old = previous.iter().find(|c| c.type_ == d.type_);
        let last_transition_time = match old {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => Time(now_jiff(now)),
        };
        out.push(Condition {
            type_: d.type_.to_owned(),
            status,
            reason: d.reason.clone(),
            // Messages quote targets and users: bounded, so no condition
            // can push a status past the API server's limit.
            message: crate::text::shortened(&d.message, MAX_MESSAGE_BYTES),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.retain(|c| {
        !ABNORMAL_TRUE.contains(&c.type_.as_str()) || desired.iter().any(|d| d.type_ == c.type_ && d.is_true())
    });
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Exactly the `desired` conditions (types not listed are dropped), with
/// transition times carried over from `previous` where the status holds.
pub fn set_exactly(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out = merge(previous, desired, generation, now);
    out.retain(|c| desired.iter().any(|d| d.type_ == c.type_));
    out
}

/// The condition of a type, if set.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of this type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

fn now_jiff(now: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    // Whole seconds: the API server stores conditions at second precision,
    // and a status that round-trips unchanged must compare equal.
    k8s_openapi::jiff::Timestamp::from_second(now.timestamp()).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_moves() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap_or_default();
        let first = merge(
            &[],
            &[Desired::new("Ready", false, "Creating", "creating")],
            Some(1),
            t0,
        );
        let same = merge(
            &first,
            &[Desired::new("Ready", false, "Creating", "still creating")],
            Some(1),
            t1,
        );
        assert_eq!(same[0].last_transition_time, first[0].last_transition_time);
        assert_eq!(same[0].message, "still creating");
        let flipped = merge(&same, &[Desired::new("Ready", true, "Synced", "in sync")], Some(1), t1);
        assert_ne!(flipped[0].last_transition_time, first[0].last_transition_time);
    }

    #[test]
    fn other_condition_types_are_kept() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let both = merge(
            &[],
            &[
                Desired::new("Ready", true, "A", ""),
                Desired::new("Synced", true, "B", ""),
            ],
            Some(1),
            t0,
        );
        let one = merge(&both, &[Desired::new("Ready", false, "C", "")], Some(2), t0);
        assert_eq!(one.len(), 2);
        assert!(is_true(&one, "Synced"));
        assert!(!is_true(&one, "Ready"));
    }

    #[test]
    fn reconciling_and_stalled_are_present_only_while_true() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let busy = merge(
            &[],
            &[
                Desired::new("Ready", false, "Creating", ""),
                Desired::reconciling("Creating", "creating"),
            ],
            Some(1),
            t0,
        );
        assert!(is_true(&busy, RECONCILING));
        let done = merge(&busy, &[Desired::new("Ready", true, "Created", "")], Some(1), t0);
        assert!(find(&done, RECONCILING).is_none(), "{done:?}");
        let explicit_false = merge(&busy, &[Desired::new(STALLED, false, "x", "")], Some(1), t0);
        assert!(find(&explicit_false, STALLED).is_none(), "{explicit_false:?}");
    }

    #[test]
    fn unknown_is_written_as_unknown() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let running = merge(
            &[],
            &[Desired::new("Succeeded", Status::Unknown, "Running", "")],
            Some(1),
            t0,
        );
        assert_eq!(find(&running, "Succeeded").map(|c| c.status.as_str()), Some("Unknown"));
    }
}
