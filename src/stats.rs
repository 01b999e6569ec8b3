//! Counters and histograms the relay keeps about itself, read by the admin
//! API (`/status`, `/metrics`) and the systemd notifier.
//!
//! Plain atomics shared by `Arc`: the hot path only increments, and readers
//! take a consistent-enough snapshot for a status page or a scrape.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn set_last(slot: &Mutex<Option<(u64, String)>>, now_ms: u64, text: String) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((now_ms, text));
}

pub fn last(slot: &Mutex<Option<(u64, String)>>) -> Option<(u64, String)> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A Prometheus-style histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Delivery latency: from receipt to a 2xx, milliseconds to a day.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];
/// getUpdates duration: long polls last up to a minute.
pub const POLL_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Time a call waits for its bot's rate budget: none to `max_wait`.
pub const WAIT_BOUNDS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// (bot, client, method, result).
type CallKey = (String, String, String, &'static str);

/// The gateway's calls by bot, client, method and result.
#[derive(Default)]
pub struct GatewayStats {
    calls: Mutex<std::collections::BTreeMap<CallKey, u64>>,
    pub unknown_key: AtomicU64,
}

/// Distinct method labels kept; more become "other", so a client that
/// makes up method names cannot grow the metrics without end.
const MAX_METHOD_SERIES: usize = 2000;

impl GatewayStats {
    pub fn count(&self, bot: &str, client: &str, method: &str, result: &'static str) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let plain = method.len() <= 64 && method.bytes().all(|b| b.is_ascii_alphanumeric());
        let mut key = (
            bot.to_string(),
            client.to_string(),
            method.to_string(),
            result,
        );
        if !plain || (calls.len() >= MAX_METHOD_SERIES && !calls.contains_key(&key)) {
            key.2 = "other".to_string();
        }
        *calls.entry(key).or_default() += 1;
    }

    /// (bot, client, method, result, count), in order.
    pub fn calls(&self) -> Vec<(String, String, String, &'static str, u64)> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls
            .iter()
            .map(|((b, c, m, r), n)| (b.clone(), c.clone(), m.clone(), *r, *n))
            .collect()
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        add(&self.buckets[i], 1);
        add(&self.count, 1);
        add(&self.sum_micros, d.as_micros() as u64);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `labels` is
    /// `key="value",…` without braces (may be empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += get(&self.buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += get(&self.buckets[self.bounds.len()]);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            get(&self.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {}", get(&self.count));
    }
}

pub struct BotStats {
    pub poll_timeout: Duration,
    pub updates_received: AtomicU64,
    /// Updates no forward wanted: counted and dropped.
    pub updates_unrouted: AtomicU64,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// The last poll's outcome: (ms since the epoch, "ok" or the error).
    pub last_poll: Mutex<Option<(u64, String)>>,
    /// When a poll last succeeded (ms since the epoch; 0: never).
    pub last_ok_ms: AtomicU64,
    /// A short word for the bot's condition: "ok", "webhook is set", …
    pub state: Mutex<String>,
    /// `@username (id …)` from getMe.
    pub identity: Mutex<Option<String>>,
    pub poll_latency: Histogram,
    /// Set once the first getUpdates is on its way (systemd READY).
    pub first_poll_started: AtomicBool,
    /// The poller's current step should end by this time (ms since the
    /// epoch): the watchdog's measure of a live poller.
    pub busy_until_ms: AtomicU64,
}

impl BotStats {
    pub fn new(poll_timeout: Duration) -> BotStats {
        BotStats {
            poll_timeout,
            updates_received: AtomicU64::new(0),
            updates_unrouted: AtomicU64::new(0),
            polls_ok: AtomicU64::new(0),
            polls_failed: AtomicU64::new(0),
            last_poll: Mutex::new(None),
            last_ok_ms: AtomicU64::new(0),
            state: Mutex::new("starting".into()),
            identity: Mutex::new(None),
            poll_latency: Histogram::new(POLL_BOUNDS),
            first_poll_started: AtomicBool::new(false),
            busy_until_ms: AtomicU64::new(u64::MAX),
        }
    }

    pub fn set_state(&self, s: &str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s.to_string();
    }

    pub fn state(&self) -> String {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The poller's next step may take up to `d`.
    pub fn busy_for(&self, now_ms: u64, d: Duration) {
        self.busy_until_ms.store(
            now_ms.saturating_add(d.as_millis() as u64),
            Ordering::Relaxed,
        );
    }
}

pub struct ForwardStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub stale_dropped: AtomicU64,
    pub in_flight: AtomicU64,
    pub replies_ok: AtomicU64,
    pub replies_failed: AtomicU64,
    pub replies_ignored: AtomicU64,
    /// Reply calls to methods the forward's `reply_methods` does not admit.
    pub replies_refused: AtomicU64,
    /// The last failed attempt: (ms since the epoch, error).
    pub last_error: Mutex<Option<(u64, String)>>,
    /// From receipt to a 2xx.
    pub latency: Histogram,
}

impl Default for ForwardStats {
    fn default() -> Self {
        ForwardStats {
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            stale_dropped: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            replies_ok: AtomicU64::new(0),
            replies_failed: AtomicU64::new(0),
            replies_ignored: AtomicU64::new(0),
            replies_refused: AtomicU64::new(0),
            last_error: Mutex::new(None),
            latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

/// A snapshot of one forward's counters.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct ForwardCounters {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub stale_dropped: u64,
    pub in_flight: u64,
    pub replies_ok: u64,
    pub replies_failed: u64,
    pub replies_ignored: u64,
    /// Absent from the answer of a pollhook that did not count it yet.
    #[serde(default)]
    pub replies_refused: u64,
}

impl ForwardStats {
    pub fn snapshot(&self) -> ForwardCounters {
        ForwardCounters {
            delivered: get(&self.delivered),
            failed_attempts: get(&self.failed_attempts),
            dead_lettered: get(&self.dead_lettered),
            stale_dropped: get(&self.stale_dropped),
            in_flight: get(&self.in_flight),
            replies_ok: get(&self.replies_ok),
            replies_failed: get(&self.replies_failed),
            replies_ignored: get(&self.replies_ignored),
            replies_refused: get(&self.replies_refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render("x_seconds", "bot=\"b\"", &mut out);
        assert!(
            out.contains("x_seconds_bucket{bot=\"b\",le=\"0.1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{bot=\"b\",le=\"1\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{bot=\"b\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{bot=\"b\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum{bot=\"b\"} 5.55\n"), "{out}");
    }
}
