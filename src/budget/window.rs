//! One rate limit as the platforms state them, "at most N calls in any
//! window of this length", and the log of recent calls that enforces it.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// At most `calls` calls in any window of `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub calls: u32,
    pub period: Duration,
}

/// Far more than any platform allows; keeps each log's scan short.
const MAX_CALLS: u32 = 10_000;

impl Window {
    pub const fn new(calls: u32, period: Duration) -> Window {
        Window { calls, period }
    }

    /// `"N/period"`: `"1/1s"`, `"20/1m"`, `"30/s"` (a bare unit means one).
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || {
            format!(
                "{text:?} is not a limit: write \"N/period\", e.g. \"1/1s\" or \"20/1m\" (at most N calls in any window of that length)"
            )
        };
        let (n, period) = text.trim().split_once('/').ok_or_else(bad)?;
        let calls: u32 = n.trim().parse().map_err(|_| bad())?;
        if calls == 0 || calls > MAX_CALLS {
            return Err(format!("{text:?}: N must be 1 to {MAX_CALLS}"));
        }
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            period.to_string()
        } else {
            format!("1{period}")
        };
        let period = humantime::parse_duration(&period).map_err(|_| bad())?;
        if period < Duration::from_millis(10) || period > Duration::from_secs(24 * 3600) {
            return Err(format!("{text:?}: the period must be 10ms to 24h"));
        }
        Ok(Window { calls, period })
    }

    /// Seconds one call uses up on average.
    pub fn interval(&self) -> Duration {
        self.period / self.calls
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.calls,
            humantime::format_duration(self.period)
        )
    }
}

/// The calls that count against one window: each is in flight (`None`) or
/// finished at a time. A call is dated by when its answer came back, not
/// when it left: the platform counted it somewhere in between, so the next
/// window starts from a moment no earlier than the platform's own. That
/// way no network delay can make two calls land closer than the limit.
#[derive(Debug)]
pub(super) struct Log {
    pub window: Window,
    calls: VecDeque<(u64, Option<Instant>)>,
}

impl Log {
    pub fn new(window: Window) -> Log {
        Log {
            window,
            calls: VecDeque::new(),
        }
    }

    fn forget_old(&mut self, now: Instant) {
        let period = self.window.period;
        self.calls
            .retain(|(_, done)| done.is_none_or(|t| t + period > now));
    }

    /// When the next call may go: now, or when the oldest finished call
    /// leaves the window (never while all of them are in flight).
    pub fn next_free(&mut self, now: Instant) -> Option<Instant> {
        self.forget_old(now);
        if self.calls.len() < self.window.calls as usize {
            return Some(now);
        }
        self.calls
            .iter()
            .filter_map(|(_, done)| *done)
            .min()
            .map(|t| t + self.window.period)
    }

    pub fn start(&mut self, id: u64) {
        self.calls.push_back((id, None));
    }

    pub fn finish(&mut self, id: u64, at: Instant) {
        if let Some(c) = self.calls.iter_mut().find(|(i, _)| *i == id) {
            c.1 = Some(at);
        }
    }

    /// Nothing in flight and nothing that still counts.
    pub fn idle(&mut self, now: Instant) -> bool {
        self.forget_old(now);
        self.calls.is_empty()
    }
}

/// All of a scope's windows: a call may go when every one allows it.
#[derive(Debug, Default)]
pub(super) struct Logs(pub Vec<Log>);

impl Logs {
    pub fn new(windows: &[Window]) -> Logs {
        Logs(windows.iter().copied().map(Log::new).collect())
    }

    /// None: not until a call in flight finishes.
    pub fn next_free(&mut self, now: Instant) -> Option<Instant> {
        let mut at = now;
        for log in &mut self.0 {
            at = at.max(log.next_free(now)?);
        }
        Some(at)
    }

    pub fn start(&mut self, id: u64) {
        self.0.iter_mut().for_each(|l| l.start(id));
    }

    pub fn finish(&mut self, id: u64, at: Instant) {
        self.0.iter_mut().for_each(|l| l.finish(id, at));
    }

    pub fn idle(&mut self, now: Instant) -> bool {
        self.0.iter_mut().all(|l| l.idle(now))
    }

    /// The slowest steady pace these windows allow, per call.
    pub fn interval(&self) -> Duration {
        self.0
            .iter()
            .map(|l| l.window.interval())
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_as_written() {
        assert_eq!(
            Window::parse("1/1s"),
            Ok(Window::new(1, Duration::from_secs(1)))
        );
        assert_eq!(
            Window::parse(" 20 / 1m "),
            Ok(Window::new(20, Duration::from_secs(60)))
        );
        assert_eq!(
            Window::parse("30/s"),
            Ok(Window::new(30, Duration::from_secs(1)))
        );
        for bad in [
            "",
            "1",
            "0/1s",
            "x/1s",
            "1/",
            "1/fortnight",
            "1/1ms",
            "99999/1s",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(Window::parse("20/1m").unwrap().to_string(), "20/1m");
    }

    #[test]
    fn a_window_counts_calls_from_their_answers_and_waits_for_those_in_flight() {
        let t0 = Instant::now();
        let mut log = Log::new(Window::new(2, Duration::from_secs(1)));
        assert_eq!(log.next_free(t0), Some(t0));
        log.start(1);
        log.start(2);
        // Both in flight: no time is known yet.
        assert_eq!(log.next_free(t0), None);
        let answered = t0 + Duration::from_millis(300);
        log.finish(1, answered);
        assert_eq!(
            log.next_free(answered),
            Some(answered + Duration::from_secs(1))
        );
        let later = answered + Duration::from_secs(1);
        assert_eq!(log.next_free(later), Some(later));
        assert!(!log.idle(later), "call 2 is still in flight");
        log.finish(2, later);
        assert!(log.idle(later + Duration::from_secs(1)));
    }
}
