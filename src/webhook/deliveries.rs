//! The deliveries a webhook accepted, remembered while their signature is
//! still inside the tolerance window: a replay of one signed request gets
//! the run it started, even after that run was deleted, and never a new
//! one. Entries older than the window are dropped (their requests are
//! refused as stale anyway), so memory is bounded by the accepted rate
//! times the window, and by [`MAX_DELIVERIES`] above that. Pure memory.

use std::collections::HashMap;
use std::sync::Mutex;

/// Deliveries remembered at most; above it new deliveries are refused
/// (429) until old ones expire, rather than forgetting one early.
pub const MAX_DELIVERIES: usize = 100_000;

/// Accepted deliveries by `(namespace, workflow, delivery id)`.
#[derive(Default)]
pub struct Deliveries {
    seen: Mutex<HashMap<(String, String, String), Seen>>,
}

#[derive(Clone, Debug)]
struct Seen {
    /// Unix seconds after which the delivery's signature is stale.
    expires: i64,
    run: String,
}

/// What to do with a verified delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Never seen: start its run, then [`Deliveries::record`] it.
    New,
    /// Seen: this run was started for it.
    Replay(String),
    /// Too many deliveries inside the window.
    Full,
}

impl Deliveries {
    /// Whether `(namespace, workflow, delivery)` was accepted before;
    /// drops what expired by `now` (unix seconds).
    pub fn admit(&self, namespace: &str, workflow: &str, delivery: &str, now: i64) -> Admit {
        let mut seen = crate::lock(&self.seen);
        let id = (namespace.to_owned(), workflow.to_owned(), delivery.to_owned());
        if let Some(found) = seen.get(&id)
            && found.expires >= now
        {
            return Admit::Replay(found.run.clone());
        }
        if seen.len() >= MAX_DELIVERIES {
            seen.retain(|_, s| s.expires >= now);
            if seen.len() >= MAX_DELIVERIES {
                return Admit::Full;
            }
        }
        Admit::New
    }

    /// Remembers that `delivery` started `run`, until `expires` (unix
    /// seconds: its timestamp plus the tolerance).
    pub fn record(&self, namespace: &str, workflow: &str, delivery: &str, run: &str, expires: i64) {
        let mut seen = crate::lock(&self.seen);
        let id = (namespace.to_owned(), workflow.to_owned(), delivery.to_owned());
        seen.insert(
            id,
            Seen {
                expires,
                run: run.to_owned(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_delivery_is_a_replay_until_it_expires() {
        let d = Deliveries::default();
        assert_eq!(d.admit("ns", "wf", "d-1", 100), Admit::New);
        d.record("ns", "wf", "d-1", "wf-1", 400);
        assert_eq!(d.admit("ns", "wf", "d-1", 400), Admit::Replay("wf-1".into()));
        assert_eq!(d.admit("ns", "other", "d-1", 100), Admit::New);
        assert_eq!(d.admit("ns", "wf", "d-1", 401), Admit::New);
    }
}
