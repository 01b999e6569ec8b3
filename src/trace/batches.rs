//! Which trace each queued update belongs to: the poller notes the poll
//! span of every update it stores, the dispatcher makes each delivery
//! attempt a child of it and forgets the update once it is delivered or
//! given up on.
//!
//! Only in memory and bounded: after a restart, or past [`CAP`] updates
//! waiting at once, a delivery starts a trace of its own. Keyed by forward
//! and `update_id` (what both sides know without asking the queue): an id
//! stored twice (a batch that came again) belongs to its latest poll.
//! Exists only while tracing is on.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Updates remembered at most; about 40 bytes each.
pub const CAP: usize = 100_000;

/// (forward, update_id) → the poll span it came with.
type ByJob = HashMap<(u32, i64), (TraceId, SpanId, TraceFlags)>;

#[derive(Default)]
pub struct Batches {
    by_job: Mutex<ByJob>,
}

impl Batches {
    pub fn new() -> Batches {
        Batches::default()
    }

    fn map(&self) -> MutexGuard<'_, ByJob> {
        self.by_job.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that each of `jobs` (forward, update_id) came with the poll
    /// `parent`. Past the cap the rest are left out.
    pub fn remember(&self, parent: &SpanContext, jobs: impl Iterator<Item = (u32, i64)>) {
        let value = (parent.trace_id(), parent.span_id(), parent.trace_flags());
        let mut map = self.map();
        for job in jobs {
            if map.len() >= CAP && !map.contains_key(&job) {
                return;
            }
            map.insert(job, value);
        }
    }

    /// The poll an update of forward `fwd` came with, if it is known.
    pub fn parent(&self, fwd: u32, update_id: Option<i64>) -> Option<SpanContext> {
        let (trace, span, flags) = *self.map().get(&(fwd, update_id?))?;
        Some(SpanContext::new(
            trace,
            span,
            flags,
            false,
            TraceState::default(),
        ))
    }

    /// The update is done with for this forward.
    pub fn forget(&self, fwd: u32, update_id: Option<i64>) {
        if let Some(id) = update_id {
            self.map().remove(&(fwd, id));
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(n: u8) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes([n; 16]),
            SpanId::from_bytes([n; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn an_update_is_found_until_it_is_forgotten() {
        let b = Batches::new();
        b.remember(&context(1), [(1, 10), (2, 10)].into_iter());
        assert_eq!(
            b.parent(1, Some(10)).unwrap().span_id(),
            context(1).span_id()
        );
        assert!(b.parent(1, Some(11)).is_none());
        assert!(b.parent(1, None).is_none());
        b.forget(1, Some(10));
        assert!(b.parent(1, Some(10)).is_none());
        assert!(b.parent(2, Some(10)).is_some(), "the other forward's stays");
    }

    #[test]
    fn past_the_cap_new_updates_are_left_out() {
        let b = Batches::new();
        b.remember(&context(1), (0..CAP as i64 + 10).map(|id| (1, id)));
        assert_eq!(b.len(), CAP);
        assert!(b.parent(1, Some(CAP as i64 + 5)).is_none());
        // A known one is still updated (a batch that came again).
        b.remember(&context(2), [(1, 0)].into_iter());
        assert_eq!(
            b.parent(1, Some(0)).unwrap().trace_id(),
            context(2).trace_id()
        );
    }
}
