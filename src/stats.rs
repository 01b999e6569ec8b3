//! Counters the relay keeps about itself, read by the admin API.
//!
//! Plain atomics shared by `Arc`: the hot path only increments, and readers
//! take a consistent-enough snapshot for a status page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Default)]
pub struct BotStats {
    pub updates_received: AtomicU64,
    /// Updates no forward wanted: counted and dropped.
    pub updates_unrouted: AtomicU64,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// The last poll's outcome: (ms since the epoch, "ok" or the error).
    pub last_poll: Mutex<Option<(u64, String)>>,
}

#[derive(Default)]
pub struct ForwardStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub stale_dropped: AtomicU64,
    pub in_flight: AtomicU64,
    pub replies_ok: AtomicU64,
    pub replies_failed: AtomicU64,
    pub replies_ignored: AtomicU64,
    /// The last failed attempt: (ms since the epoch, error).
    pub last_error: Mutex<Option<(u64, String)>>,
}

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

/// A snapshot of one forward's counters, as the admin API shows it.
#[derive(Debug, Serialize, serde::Deserialize, Clone, PartialEq)]
pub struct ForwardCounters {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub stale_dropped: u64,
    pub in_flight: u64,
    pub replies_ok: u64,
    pub replies_failed: u64,
    pub replies_ignored: u64,
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
        }
    }
}
