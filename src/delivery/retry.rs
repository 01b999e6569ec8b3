//! When to try a failed delivery again.
//!
//! Immediately once (most failures are a blip: a restart, a dropped
//! keep-alive connection), then doubling from 2 s up to a one-minute cap with
//! jitter, so a recovering backend is not hit by every lane at the same
//! instant. A `Retry-After` from the backend wins, clamped so a bad header
//! cannot park a lane for days.

use std::time::Duration;

use crate::botapi::jittered;

const FIRST_DELAY: Duration = Duration::from_secs(2);
const CAP: Duration = Duration::from_secs(60);
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// The wait before the next attempt, after `failures` failed attempts (≥ 1).
pub fn delay(failures: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(RETRY_AFTER_MAX);
    }
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = (failures - 2).min(16);
    jittered(FIRST_DELAY.saturating_mul(1 << exp).min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_doubling_then_capped() {
        assert_eq!(delay(1, None), Duration::ZERO);
        let second = delay(2, None);
        assert!(
            second >= Duration::from_millis(1600) && second <= Duration::from_millis(2400),
            "{second:?}"
        );
        let third = delay(3, None);
        assert!(
            third >= Duration::from_millis(3200) && third <= Duration::from_millis(4800),
            "{third:?}"
        );
        assert!(delay(50, None) <= CAP.mul_f64(1.2));
    }

    #[test]
    fn retry_after_wins_but_is_clamped() {
        assert_eq!(
            delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(delay(5, Some(Duration::from_secs(86_400))), RETRY_AFTER_MAX);
    }
}
