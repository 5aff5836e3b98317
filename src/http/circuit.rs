//! A circuit breaker per TargetSystem: after `threshold` consecutive
//! failures it opens and refuses calls for `open_for`; then it lets one trial
//! call through (half-open); success closes it, failure opens it again.
//! Pure: the caller passes the time.

use std::time::{Duration, Instant};

use crate::api::target_system::CircuitState;

#[derive(Debug)]
pub struct Circuit {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl Circuit {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            state: State::Closed,
        }
    }

    /// May a call go out now? `Err` carries how long until the next trial.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            State::Closed => Ok(()),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { trial_in_flight: true };
                Ok(())
            }
            State::Open { until } => Err(until - now),
            State::HalfOpen { trial_in_flight: false } => {
                self.state = State::HalfOpen { trial_in_flight: true };
                Ok(())
            }
            State::HalfOpen { trial_in_flight: true } => Err(Duration::from_secs(1)),
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let trial_failed = matches!(self.state, State::HalfOpen { .. });
        if trial_failed || self.failures >= self.threshold {
            self.state = State::Open {
                until: now + self.open_for,
            };
        }
    }

    /// A call that was admitted but ended without telling anything about the
    /// target's health (for example a 4xx answer).
    pub fn neutral(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::Closed;
            self.failures = 0;
        }
    }

    pub fn state(&self, now: Instant) -> CircuitState {
        match self.state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_failures_and_closes_after_a_successful_trial() {
        let t0 = Instant::now();
        let mut circuit = Circuit::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(circuit.admit(t0).is_ok());
            circuit.failure(t0);
        }
        assert_eq!(circuit.state(t0), CircuitState::Closed);
        circuit.failure(t0);
        assert_eq!(circuit.state(t0), CircuitState::Open);
        assert_eq!(circuit.admit(t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        let later = t0 + Duration::from_secs(10);
        assert!(circuit.admit(later).is_ok(), "one trial after open_for");
        assert!(circuit.admit(later).is_err(), "only one trial at a time");
        circuit.success();
        assert_eq!(circuit.state(later), CircuitState::Closed);
    }

    #[test]
    fn a_failed_trial_opens_again() {
        let t0 = Instant::now();
        let mut circuit = Circuit::new(1, Duration::from_secs(5));
        circuit.failure(t0);
        let later = t0 + Duration::from_secs(5);
        assert!(circuit.admit(later).is_ok());
        circuit.failure(later);
        assert_eq!(circuit.state(later), CircuitState::Open);
    }
}
