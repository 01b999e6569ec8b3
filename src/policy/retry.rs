//! When to try a failed delivery again, and when to give up.
//!
//! Immediately once (most failures are a blip: a restart, a dropped
//! keep-alive connection), then doubling from `first_delay` up to
//! `max_delay` with ±20 % jitter, so a recovering backend is not hit by every
//! lane at the same instant. A `Retry-After` from the backend wins, clamped so
//! a bad header cannot park a lane for days. After `max_attempts` attempts or
//! once the update is `max_age` old, it becomes a dead letter.

use std::fmt;
use std::time::Duration;

/// The longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// The shortest wait between attempts after the immediate retry, whatever a
/// `Retry-After: 0` says, so a lane can never spin.
const FLOOR: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// None: no limit (the age limit still applies).
    pub max_attempts: Option<u32>,
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            max_attempts: None,
            // Like the platforms' own retention of unconfirmed updates.
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt, after `failures` failed attempts (≥ 1).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.clamp(FLOOR, RETRY_AFTER_MAX);
        }
        if failures <= 1 {
            return Duration::ZERO;
        }
        let exp = (failures - 2).min(30);
        let base = self
            .first_delay
            .saturating_mul(1u32 << exp.min(20))
            .min(self.max_delay);
        jittered(base)
    }

    /// Whether to give up after `attempts` attempts on an update received at
    /// `received_ms`, now.
    pub fn exhausted(&self, attempts: u32, received_ms: u64, now_ms: u64) -> bool {
        let too_many = self.max_attempts.is_some_and(|max| attempts >= max);
        let too_old = now_ms.saturating_sub(received_ms) >= self.max_age.as_millis() as u64;
        too_many || too_old
    }
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at once, then {} doubling to {}; dead letter after ",
            humantime::format_duration(self.first_delay),
            humantime::format_duration(self.max_delay)
        )?;
        if let Some(n) = self.max_attempts {
            write!(f, "{n} attempts or ")?;
        }
        write!(f, "{}", humantime::format_duration(self.max_age))
    }
}

/// Adds ±20 % jitter so that many bots failing together do not retry together.
pub fn jittered(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    let factor: f64 = rand::random_range(0.8..1.2);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_doubling_then_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::ZERO);
        let second = p.delay(2, None);
        assert!(
            second >= Duration::from_millis(1600) && second <= Duration::from_millis(2400),
            "{second:?}"
        );
        let third = p.delay(3, None);
        assert!(
            third >= Duration::from_millis(3200) && third <= Duration::from_millis(4800),
            "{third:?}"
        );
        assert!(p.delay(50, None) <= p.max_delay.mul_f64(1.2));
    }

    #[test]
    fn retry_after_wins_but_is_clamped_both_ways() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(5, Some(Duration::from_secs(86_400))),
            RETRY_AFTER_MAX
        );
        assert_eq!(
            p.delay(5, Some(Duration::ZERO)),
            FLOOR,
            "Retry-After: 0 must not spin a lane"
        );
    }

    #[test]
    fn gives_up_by_attempts_or_age() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            max_age: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        assert!(!p.exhausted(2, 0, 9_999));
        assert!(p.exhausted(3, 0, 0));
        assert!(p.exhausted(1, 0, 10_000));
        assert!(!RetryPolicy::default().exhausted(1_000_000, 0, 1000));
    }
}
