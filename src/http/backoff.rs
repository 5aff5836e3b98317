//! Exponential backoff with full jitter ("Exponential Backoff and Jitter",
//! AWS Architecture Blog): the delay before retry `n` is uniform in
//! `[0, min(max, base * 2^n)]`, floored at a tenth of the cap so a storm of
//! retries still spreads out. Pure: the caller passes the random fraction.

use std::time::Duration;

/// Delay before retry number `attempt` (0 = first retry), given a random
/// `fraction` in `[0, 1)`.
pub fn delay(base: Duration, max: Duration, attempt: u32, fraction: f64) -> Duration {
    let cap = base.saturating_mul(2u32.saturating_pow(attempt.min(30))).min(max);
    let floor = cap / 10;
    floor + (cap - floor).mul_f64(fraction.clamp(0.0, 1.0))
}

/// [`delay`] with a fresh random fraction.
pub fn jittered(base: Duration, max: Duration, attempt: u32) -> Duration {
    delay(base, max, attempt, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(delay(base, max, 0, 1.0), Duration::from_secs(1));
        assert_eq!(delay(base, max, 3, 1.0), Duration::from_secs(8));
        assert_eq!(delay(base, max, 20, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_delays_between_a_tenth_of_the_cap_and_the_cap() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(delay(base, max, 3, 0.0), Duration::from_millis(800));
        assert_eq!(delay(base, max, 3, 0.5), Duration::from_millis(4400));
    }
}
