//! What can go wrong at the simulated target, and what it counts. Tests set
//! faults through `SimHandle::set_faults` or `POST /_sim/faults` and read the
//! counters afterwards ("exactly one create happened").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Faults applied to the data API (`/v1/...`). The default is a healthy
/// target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Added to every data request.
    pub latency_ms: u64,
    /// Fraction (0..=1) of data requests answered with `error_status`.
    pub error_rate: f64,
    /// The next N data requests are answered with `error_status`.
    pub fail_next: u32,
    /// Status of injected errors (default 503).
    pub error_status: Option<u16>,
    /// A token bucket: requests over it get 429 with `Retry-After`.
    pub rate_limit: Option<RateLimitFault>,
    /// The next N creates are committed, then the connection is dropped
    /// before any response byte is sent.
    pub drop_create_responses: u32,
    /// Creates are committed, then answered only after this delay: a
    /// window in which a client can die between the call and its record.
    pub create_answer_delay_ms: u64,
    /// Every data request (after authentication) gets this answer instead:
    /// the hostile target of the threat tests.
    pub hostile: Option<Hostile>,
}

/// Answers a target may give to hurt its caller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Hostile {
    /// 200 with a JSON array of strings about `bytes` long, streamed: the
    /// simulator never holds it whole.
    HugeBody { bytes: u64 },
    /// 200 with a body that never ends: `chunkBytes` bytes every
    /// `intervalMs` (0: as fast as the caller reads).
    EndlessBody {
        #[serde(default)]
        interval_ms: u64,
        #[serde(default = "default_chunk")]
        chunk_bytes: u32,
    },
    /// `status` (a 3xx) with `Location: location`.
    Redirect {
        #[serde(default = "found")]
        status: u16,
        location: String,
    },
    /// `status` with `{"message": text × repeat}`: by default 422 and
    /// 500 × "é€😀", a message whose byte offsets fall inside characters.
    LongMessage {
        #[serde(default = "unprocessable")]
        status: u16,
        #[serde(default = "multibyte")]
        text: String,
        #[serde(default = "five_hundred")]
        repeat: u32,
    },
    /// `status` with `bytes` bytes of invalid UTF-8 (and no JSON).
    InvalidUtf8 {
        #[serde(default = "ok")]
        status: u16,
        bytes: u32,
    },
    /// `status` with these headers, as given (`Retry-After: 99999999999`,
    /// `Retry-After: soon`...).
    OddHeaders {
        status: u16,
        headers: Vec<(String, String)>,
    },
}

fn default_chunk() -> u32 {
    64 * 1024
}
fn found() -> u16 {
    302
}
fn unprocessable() -> u16 {
    422
}
fn multibyte() -> String {
    "é€😀".into()
}
fn five_hundred() -> u32 {
    500
}
fn ok() -> u16 {
    200
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitFault {
    pub requests_per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
    /// `Retry-After` to announce instead of the bucket's refill time.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

fn one() -> u32 {
    1
}

/// A token bucket that answers how long to wait when empty.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            rate: rate.max(0.001),
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// What the simulator saw, for assertions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Requests that reached the data API, by `"<operation> <collection>"`
    /// (`create contacts`, `read contacts`, `list contacts`, ...), whatever
    /// their outcome.
    pub requests: BTreeMap<String, u64>,
    /// Requests answered 429.
    pub throttled: u64,
    /// Requests answered with an injected error.
    pub injected_errors: u64,
    /// Creates committed whose connection was then dropped.
    pub dropped_responses: u64,
    /// Requests refused for missing or wrong credentials.
    pub unauthorized: u64,
    /// Most data requests in flight at one time.
    pub peak_in_flight: u64,
    /// Most data requests admitted (not throttled) in any one-second window.
    pub peak_admitted_per_second: u64,
    /// Requests that arrived before the `Retry-After` of an earlier 429 had
    /// passed: a client that honours `Retry-After` makes none.
    pub retry_after_violations: u64,
    /// Calls to the OAuth2 token endpoint.
    pub token_requests: u64,
    /// Requests answered with a [`Hostile`] answer.
    pub hostile_answers: u64,
    /// Writes refused by a relation ([`super::store::RELATIONS`]): deleting
    /// a parent that children point at (409), or naming a parent that does
    /// not exist (422).
    pub refused: u64,
}

impl Stats {
    /// Requests seen for one operation on one collection.
    pub fn count(&self, operation: &str, collection: &str) -> u64 {
        self.requests
            .get(&format!("{operation} {collection}"))
            .copied()
            .unwrap_or(0)
    }
}

/// Largest number of instants (sorted ascending) inside any window of
/// `window` length.
pub fn peak_in_window(sorted: &[Instant], window: Duration) -> u64 {
    let mut start = 0;
    let mut peak = 0;
    for (end, t) in sorted.iter().enumerate() {
        while t.saturating_duration_since(sorted[start]) >= window {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3, t0);
        assert!((0..3).all(|_| bucket.take(t0).is_ok()));
        let wait = bucket.take(t0).err().unwrap_or_default();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(bucket.take(t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn peak_window_counts_the_densest_second() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let times = [ms(0), ms(100), ms(900), ms(1000), ms(1050), ms(1950), ms(3000)];
        // 900, 1000, 1050, 1950 fall inside [900, 1900)? No: 1950 is out; 100..1050 holds 4.
        assert_eq!(peak_in_window(&times, Duration::from_secs(1)), 4);
    }
}
