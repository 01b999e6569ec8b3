//! Queuing earlier updates again (a replay from history) and keeping each
//! replay's progress beside the queue, so that the two change together:
//! a replay interrupted anywhere resumes exactly where its last queued
//! chunk ended, with nothing lost and nothing queued twice.
//!
//! ```text
//! m/replay/<id u64>   a replay in progress: its request and cursor (the
//!                     replay module's JSON; the store only keeps it)
//! m/next-replay       the last replay id handed out
//! ```

use super::*;

const REPLAY: &[u8] = b"m/replay/";

/// An update to queue again for one forward.
pub struct Requeue {
    pub fwd: u32,
    /// The seq its webhook-id is made from: the original copy's for that
    /// forward; None for a forward that never had it (a fresh id).
    pub id_seq: Option<u64>,
    pub received_ms: u64,
    pub update_id: Option<i64>,
    pub kind: String,
    pub lane: Lane,
    pub payload: Bytes,
}

fn replay_key(id: u64) -> Vec<u8> {
    [REPLAY, &id.to_be_bytes()[..]].concat()
}

impl Store {
    /// Queues `jobs` as new jobs at the end of their forwards' queues (so a
    /// chat's replayed updates come after what it has queued, in the order
    /// given) marked as replayed at `now_ms`, and saves the replay's state
    /// (`None`: the replay is finished, forget it) in the same atomic
    /// batch. Flushed before it returns, like any append.
    pub async fn requeue(
        &self,
        jobs: &[Requeue],
        replay: u64,
        state: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let last_seq = {
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            let mut last_seq = None;
            let mut fwds: Vec<u32> = jobs.iter().map(|j| j.fwd).collect();
            fwds.sort_unstable();
            fwds.dedup();
            for fwd in fwds {
                let mine = jobs.iter().filter(|j| j.fwd == fwd);
                let last = self.group_into(&mut b, fwd, mine, |r, seq, buf| {
                    let job = Job {
                        seq,
                        id_seq: r.id_seq.unwrap_or(seq),
                        attempts: 0,
                        next_at_ms: 0,
                        received_ms: r.received_ms,
                        dead_at_ms: 0,
                        replayed_ms: now_ms.max(1),
                        update_id: r.update_id,
                        kind: r.kind.clone(),
                        lane: r.lane.clone(),
                        last_error: String::new(),
                        payload: r.payload.clone(),
                    };
                    buf.extend_from_slice(&record::encode(&job));
                });
                last_seq = last.or(last_seq);
            }
            if let Some(seq) = last_seq {
                b.insert(&b"m/seq"[..], &seq.to_be_bytes()[..]);
            }
            match state {
                Some(state) => b.insert(replay_key(replay), state),
                None => b.remove(replay_key(replay)),
            }
            self.apply(b)?;
            last_seq
        };
        self.durable().await?;
        if let Some(seq) = last_seq {
            self.committed.fetch_max(seq, Ordering::SeqCst);
        }
        Ok(())
    }

    /// A new replay's id.
    pub fn next_replay_id(&self) -> Result<u64, StoreError> {
        let id = self
            .tree
            .update_and_fetch(b"m/next-replay", |old| {
                let n = old.and_then(|v| u64_from(v).ok()).unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .map(|v| u64_from(&v))
            .transpose()?
            .unwrap_or(1);
        Ok(id)
    }

    /// Replays not finished when pollhook last stopped: (id, state).
    pub fn unfinished_replays(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(REPLAY) {
            let (k, v) = item?;
            out.push((u64_from(&k[REPLAY.len()..])?, v.to_vec()));
        }
        Ok(out)
    }

    /// Whether the store has seen this forward before (a forward new to it
    /// may start from history).
    pub fn knows_forward(&self, bot: &str, forward: &str) -> Result<bool, StoreError> {
        let name_key = [b"m/fwd/", bot.as_bytes(), b"\0", forward.as_bytes()].concat();
        Ok(self.tree.contains_key(name_key)?)
    }
}
