//! The next polls of ExternalResources that wait long: in sync and polled
//! every few minutes or hours, which is most of them most of the time.
//!
//! kube-runtime's scheduler would keep each such wait as a request in a map
//! and a delay queue, two copies of the object's reference with four strings
//! each (name, namespace, resourceVersion, uid): about 700 bytes a resource,
//! 7 MiB at 10,000, for resources that do nothing but wait. Here a wait is
//! one ordered entry (when, namespace shared between its resources, name),
//! about a seventh of that. When it falls due, the resource is woken through
//! the controller's trigger stream (`Controller::reconcile_on`), the same
//! way a signed resync push wakes it.
//!
//! A resource holds one entry at most: booking its next pass unbooks the
//! one before (their times are what its [`super::super::Freshness`]
//! records), and a resource that goes, or whose freshness is forgotten (a
//! resync push), is unbooked. Should an entry still fall due after its
//! resource was reconciled again, the freshness says the pass is not due and
//! nothing is woken. Shorter waits (backoffs, retries) stay with the
//! scheduler.
//!
//! Touches: nothing outside the process.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Waits at least this long are booked here; shorter ones with the
/// controller's scheduler (`Action::requeue`).
pub const BOOKED_FROM: Duration = Duration::from_secs(30);

type Entry = (Instant, Arc<str>, Box<str>);

/// The booked polls of one controller (see the module's documentation).
#[derive(Default)]
pub struct Polls {
    due: Mutex<BTreeSet<Entry>>,
    /// One copy of each namespace's name for all its entries.
    namespaces: Mutex<HashSet<Arc<str>>>,
    /// Told when an entry is booked before every other.
    earlier: tokio::sync::Notify,
}

impl Polls {
    /// Books a poll of `namespace`/`name` at `at`.
    pub fn book(&self, namespace: &str, name: &str, at: Instant) {
        let namespace = {
            let mut namespaces = self.namespaces.lock().unwrap_or_else(PoisonError::into_inner);
            match namespaces.get(namespace) {
                Some(shared) => shared.clone(),
                None => {
                    let shared: Arc<str> = namespace.into();
                    namespaces.insert(shared.clone());
                    shared
                }
            }
        };
        let first = {
            let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            let first = due.first().is_none_or(|(earliest, _, _)| at < *earliest);
            due.insert((at, namespace, name.into()));
            first
        };
        if first {
            self.earlier.notify_one();
        }
    }

    /// Unbooks the poll of `namespace`/`name` booked at `at`, if any: its
    /// resource is gone, or its next pass was booked anew.
    pub fn unbook(&self, namespace: &str, name: &str, at: Instant) {
        let entry: Entry = (at, namespace.into(), name.into());
        self.due.lock().unwrap_or_else(PoisonError::into_inner).remove(&entry);
    }

    /// Polls booked.
    pub fn len(&self) -> usize {
        self.due.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns the entries due at `now`, earliest first.
    fn take_due(&self, now: Instant) -> Vec<Entry> {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        while due.first().is_some_and(|(at, _, _)| *at <= now) {
            if let Some(entry) = due.pop_first() {
                taken.push(entry);
            }
        }
        taken
    }

    fn earliest(&self) -> Option<Instant> {
        self.due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .map(|(at, _, _)| *at)
    }

    /// Hands each poll that falls due to `wake` (namespace, name), until
    /// `wake` says the controller is gone.
    pub async fn run(&self, mut wake: impl FnMut(&str, &str) -> bool) {
        loop {
            // Registered before the earliest is read: a booking in between
            // is not missed.
            let earlier = self.earlier.notified();
            match self.earliest() {
                Some(at) if at <= Instant::now() => {
                    for (_, namespace, name) in self.take_due(Instant::now()) {
                        if !wake(&namespace, &name) {
                            return;
                        }
                    }
                }
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = earlier => {}
                    }
                }
                None => earlier.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_fall_due_in_time_order_and_only_once() {
        let polls = Polls::default();
        let now = Instant::now();
        polls.book("a", "late", now + Duration::from_secs(60));
        polls.book("a", "first", now + Duration::from_secs(1));
        polls.book("b", "second", now + Duration::from_secs(2));
        assert!(polls.take_due(now).is_empty(), "nothing is due yet");
        let due: Vec<_> = polls
            .take_due(now + Duration::from_secs(2))
            .into_iter()
            .map(|(_, ns, name)| format!("{ns}/{name}"))
            .collect();
        assert_eq!(due, ["a/first", "b/second"]);
        assert!(polls.take_due(now + Duration::from_secs(2)).is_empty(), "taken once");
        assert_eq!(polls.len(), 1);
    }

    #[test]
    fn an_unbooked_poll_never_falls_due() {
        let polls = Polls::default();
        let at = Instant::now();
        polls.book("a", "gone", at);
        polls.book("a", "kept", at);
        polls.unbook("a", "gone", at);
        polls.unbook("a", "never-booked", at);
        let due: Vec<_> = polls.take_due(at).into_iter().map(|(_, _, name)| name).collect();
        assert_eq!(due, [Box::<str>::from("kept")]);
    }

    #[test]
    fn resources_of_one_namespace_share_its_name() {
        let polls = Polls::default();
        let at = Instant::now();
        polls.book("team-a", "x", at);
        polls.book("team-a", "y", at);
        let due = polls.take_due(at);
        assert!(Arc::ptr_eq(&due[0].1, &due[1].1), "one copy of the namespace");
    }

    #[tokio::test]
    async fn a_running_wheel_wakes_a_poll_booked_after_it_started_waiting() {
        let polls = Arc::new(Polls::default());
        polls.book("a", "later", Instant::now() + Duration::from_secs(3600));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let running = tokio::spawn({
            let polls = polls.clone();
            async move { polls.run(|ns, name| tx.send(format!("{ns}/{name}")).is_ok()).await }
        });
        // Booked while the wheel sleeps until the hour: it wakes at once.
        polls.book("a", "soon", Instant::now() + Duration::from_millis(20));
        let woken = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(woken.ok().flatten().as_deref(), Some("a/soon"));
        drop(rx);
        polls.book("a", "gone", Instant::now());
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the wheel stops once its controller is gone")
            .expect("task");
    }
}
