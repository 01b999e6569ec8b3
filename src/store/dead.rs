//! Dead letters: jobs given up on, kept until an operator replays or
//! drops them.

use super::*;

impl Store {
    /// Moves a job to the forward's dead letters, keeping its last error.
    pub fn bury(&self, fwd: u32, job: &Job, now_ms: u64) -> Result<(), StoreError> {
        let mut dead = job.clone();
        dead.dead_at_ms = now_ms;
        let mut b = sled::Batch::default();
        let mut live = self.live();
        self.finish_into(&mut live, fwd, &[job.seq], &mut b)?;
        b.insert(&key(DEAD, fwd, job.seq)[..], record::encode(&dead));
        self.apply(b)?;
        Ok(())
    }

    /// A forward's dead letters, oldest first.
    pub fn dead_letters(&self, fwd: u32) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .tree
            .range(key(DEAD, fwd, 0)..=key(DEAD, fwd, u64::MAX))
        {
            let (k, v) = item?;
            out.push(record::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// How many dead letters a forward holds.
    pub fn dead_count(&self, fwd: u32) -> usize {
        self.tree
            .range(key(DEAD, fwd, 0)..=key(DEAD, fwd, u64::MAX))
            .count()
    }

    /// One dead letter, wherever it is: (forward id, job).
    pub fn find_dead(&self, seq: u64) -> Result<Option<(u32, Job)>, StoreError> {
        for f in self.forwards()? {
            if let Some(v) = self.tree.get(key(DEAD, f.id, seq))? {
                return Ok(Some((f.id, record::decode(&key(DEAD, f.id, seq), &v)?)));
            }
        }
        Ok(None)
    }

    /// Puts a dead letter back in its forward's queue, as a new job at the
    /// end (so the dispatcher finds it) that keeps its webhook-id. Flushed
    /// before it returns, like any append.
    pub async fn replay(&self, fwd: u32, seq: u64) -> Result<bool, StoreError> {
        let new_seq = {
            // Under the append lock, which `drop_dead` takes too: two
            // replays, or a replay and a drop, cannot both act on one letter.
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            let Some(v) = self.tree.get(key(DEAD, fwd, seq))? else {
                return Ok(false);
            };
            let old = record::decode(&key(DEAD, fwd, seq), &v)?;
            let new_seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            let job = Job {
                seq: new_seq,
                attempts: 0,
                next_at_ms: 0,
                dead_at_ms: 0,
                replayed_ms: crate::clock::now_ms(),
                last_error: String::new(),
                ..old
            };
            let mut b = sled::Batch::default();
            b.remove(&key(DEAD, fwd, seq)[..]);
            b.insert(&key(JOB, fwd, new_seq)[..], record::encode(&job));
            b.insert(&b"m/seq"[..], &new_seq.to_be_bytes()[..]);
            self.apply(b)?;
            self.live().own.insert((fwd, new_seq));
            new_seq
        };
        self.durable().await?;
        self.committed.fetch_max(new_seq, Ordering::SeqCst);
        Ok(true)
    }

    /// Forgets a dead letter for good.
    pub async fn drop_dead(&self, fwd: u32, seq: u64) -> Result<bool, StoreError> {
        let existed = {
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            self.tree.remove(key(DEAD, fwd, seq))?.is_some()
        };
        self.durable().await?;
        Ok(existed)
    }
}
