//! Token buckets: how fast one principal may call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A sustained rate and the burst allowed above it, in units of work (a card checked, an event
/// submitted, any other call).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The slowest sustained rate a policy may set (a call every 100 s): below it a wait is no
/// longer a number of seconds a client can act on.
const MIN_PER_SECOND: f64 = 0.01;
/// The largest rate or burst a policy may set: beyond it, it is no limit at all and the bucket's
/// arithmetic loses precision.
const MAX_UNITS: f64 = 1e12;

impl Rate {
    /// Refuses a rate the bucket cannot honour, naming the rule.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_PER_SECOND..=MAX_UNITS).contains(&self.per_second) {
            return Err(format!(
                "rate: per_second must be from {MIN_PER_SECOND} to {MAX_UNITS:e}, got {:?}",
                self.per_second
            ));
        }
        if !(1.0..=MAX_UNITS).contains(&self.burst) {
            return Err(format!(
                "rate: burst must be from 1 to {MAX_UNITS:e}, got {:?}",
                self.burst
            ));
        }
        Ok(())
    }
}

/// A token bucket that may go into debt: a call is let through whenever the bucket is not in
/// debt, and pays its whole cost. A batch larger than the burst is therefore answered (once) rather
/// than refused forever, and the caller then waits for the debt to be paid off at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Rate,
    state: Mutex<Level>,
}

#[derive(Debug)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            state: Mutex::new(Level {
                tokens: rate.burst,
                at: Instant::now(),
            }),
        }
    }

    /// Takes `cost` tokens, or says how long to wait before the bucket is out of debt.
    pub fn take(&self, cost: u64) -> Result<(), Duration> {
        self.take_at(cost, Instant::now())
    }

    fn take_at(&self, cost: u64, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another caller panicked mid-update of two numbers.
        let mut level = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(level.at).as_secs_f64();
        level.tokens = (level.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        level.at = now;
        if level.tokens < 0.0 {
            // A checked rate keeps this finite; saturate rather than panic all the same.
            let wait = Duration::try_from_secs_f64(-level.tokens / self.rate.per_second)
                .unwrap_or(Duration::MAX);
            return Err(wait);
        }
        level.tokens -= cost as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_burst_through_then_its_rate() {
        let bucket = TokenBucket::new(Rate {
            per_second: 10.0,
            burst: 5.0,
        });
        let start = Instant::now();
        let taken = (0..20).filter(|_| bucket.take_at(1, start).is_ok()).count();
        assert_eq!(taken, 6, "the burst, then one into debt");
        let wait = bucket.take_at(1, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(
            bucket
                .take_at(1, start + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            bucket
                .take_at(1, start + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn a_batch_beyond_the_burst_goes_through_once_and_is_paid_off() {
        let bucket = TokenBucket::new(Rate {
            per_second: 1000.0,
            burst: 100.0,
        });
        let start = Instant::now();
        assert!(bucket.take_at(10_000, start).is_ok());
        let wait = bucket.take_at(1, start).unwrap_err();
        assert!((wait.as_secs_f64() - 9.9).abs() < 1e-6, "{wait:?}");
        assert!(bucket.take_at(1, start + Duration::from_secs(10)).is_ok());
    }
}
