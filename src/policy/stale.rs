//! Interactive updates that expire on the platform.
//!
//! A callback query can be answered for about 150 s, an inline query for
//! 30 s; a pre-checkout query is cut off at 150 s here too (Telegram itself
//! wants its answer within 10 s, so by 150 s it is surely dead). After an outage such updates are useless hours late, so a forward
//! may drop or dead-letter them instead of delivering them. Off by default:
//! an operator opts in.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StalePolicy {
    Deliver,
    Drop,
    DeadLetter,
}

impl StalePolicy {
    pub fn parse(s: &str) -> Option<StalePolicy> {
        match s {
            "deliver" => Some(StalePolicy::Deliver),
            "drop" => Some(StalePolicy::Drop),
            "dead-letter" | "dead_letter" => Some(StalePolicy::DeadLetter),
            _ => None,
        }
    }
}

impl fmt::Display for StalePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StalePolicy::Deliver => "deliver",
            StalePolicy::Drop => "drop",
            StalePolicy::DeadLetter => "dead-letter",
        })
    }
}

/// How long an update of this kind stays answerable; None: no limit.
pub fn lifetime(kind: &str) -> Option<Duration> {
    match kind {
        "callback_query" => Some(Duration::from_secs(150)),
        "inline_query" => Some(Duration::from_secs(30)),
        "pre_checkout_query" => Some(Duration::from_secs(150)),
        _ => None,
    }
}

/// Whether an update of `kind` received at `received_ms` is stale at `now_ms`.
pub fn is_stale(kind: &str, received_ms: u64, now_ms: u64) -> bool {
    lifetime(kind).is_some_and(|l| now_ms.saturating_sub(received_ms) > l.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interactive_kinds_expire() {
        assert!(is_stale("inline_query", 0, 30_001));
        assert!(!is_stale("inline_query", 0, 29_000));
        assert!(is_stale("callback_query", 0, 150_001));
        assert!(!is_stale("message", 0, u64::MAX));
    }
}
