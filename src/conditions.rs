//! Building `meta/v1` conditions the Kubernetes way: `lastTransitionTime`
//! moves only when a condition's status moves, so an unchanged reconcile
//! produces an identical status (and no write). Pure: `now` is passed in.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The conditions after setting `desired` over `previous`; conditions of
/// other types are kept as they were.
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
        let status = if d.status { "True" } else { "False" }.to_owned();
        let old = previous.iter().find(|c| c.type_ == d.type_);
        let last_transition_time = match old {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => Time(now_jiff(now)),
        };
        out.push(Condition {
            type_: d.type_.to_owned(),
            status,
            reason: d.reason.clone(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
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
}
