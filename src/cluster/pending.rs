//! The jobs a leader holds for its bot, as the dispatcher reads them.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::store::Job;

/// The jobs waiting, per forward, keyed by the order this leader learned
/// of them. The dispatcher reads strictly after the highest key it has
/// seen, so a job found later (a replay, a batch whose acks came late)
/// must get a later key even if its stream sequence is lower; the stream
/// sequence stays the job's identity for deletes and its webhook-id.
#[derive(Default)]
pub struct Pending {
    next: u64,
    pub by_fwd: HashMap<u32, BTreeMap<u64, Job>>,
    stream_of: HashMap<u64, u64>,
    pub present: HashSet<u64>,
}

impl Pending {
    /// Adds a job stored at `stream_seq` (once); false if already there.
    pub fn add(&mut self, fwd: u32, stream_seq: u64, mut job: Job) -> bool {
        if !self.present.insert(stream_seq) {
            return false;
        }
        self.next += 1;
        job.seq = self.next;
        self.stream_of.insert(self.next, stream_seq);
        self.by_fwd.entry(fwd).or_default().insert(self.next, job);
        true
    }

    /// Takes jobs out; returns their stream sequences.
    pub fn remove(&mut self, fwd: u32, keys: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(q) = self.by_fwd.get_mut(&fwd) {
                q.remove(key);
            }
            if let Some(seq) = self.stream_of.remove(key) {
                self.present.remove(&seq);
                out.push(seq);
            }
        }
        out
    }
}
