//! Appending a batch with its bot's new offset, and reading the offset:
//! the poller's side of the store.

use super::*;

impl Store {
    /// Numbers new jobs of one forward (`items`, in order) with the next
    /// sequence numbers and adds them to `b` in as few groups as they fit;
    /// `write` appends one job's record. Called under `append_order`, so
    /// `m/seq` only grows. Returns the last number handed out.
    pub(super) fn group_into<T>(
        &self,
        b: &mut sled::Batch,
        fwd: u32,
        items: impl Iterator<Item = T>,
        mut write: impl FnMut(T, u64, &mut Vec<u8>),
    ) -> Option<u64> {
        let limit = || self.group_limit.load(Ordering::Relaxed);
        let mut close = |g: group::Builder, first: u64| {
            let (record, next) = g.finish();
            self.group_limit.store(next, Ordering::Relaxed);
            b.insert(&key(GROUP, fwd, first)[..], record);
        };
        let mut g = group::Builder::new(limit());
        let mut first = 0;
        let mut last = None;
        for item in items {
            if g.is_full() {
                close(
                    std::mem::replace(&mut g, group::Builder::new(limit())),
                    first,
                );
            }
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            if g.is_empty() {
                first = seq;
            }
            last = Some(seq);
            g.push_with(|buf| write(item, seq, buf));
        }
        if !g.is_empty() {
            close(g, first);
        }
        last
    }

    /// The offset to send with the bot's next getUpdates, if one was stored
    /// (flushed: an offset whose flush failed is not reported).
    pub fn offset(&self, bot: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .stored_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(bot)
            .copied())
    }

    /// Stores a batch and the bot's new offset (None: leave it) atomically,
    /// then flushes. Only after this returns may the new offset be sent to
    /// the platform: sending it is what makes the platform forget the batch.
    pub async fn append(
        &self,
        bot: &str,
        batch: &[Incoming<'_>],
        new_offset: Option<i64>,
        received_ms: u64,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        // Each update's seq per forward, for history (its webhook-ids).
        let keep = self.history.get().is_some();
        let mut seqs: Vec<(usize, u32, u64)> = Vec::new();
        let last_seq = {
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            let mut last_seq = None;
            // Forward by forward, so each forward's jobs of this batch get
            // consecutive numbers and fill as few groups as possible.
            let mut fwds: Vec<u32> = batch
                .iter()
                .flat_map(|i| i.forwards.iter().copied())
                .collect();
            fwds.sort_unstable();
            fwds.dedup();
            for fwd in fwds {
                let mine = batch
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.forwards.contains(&fwd));
                let last = self.group_into(&mut b, fwd, mine, |(n, inc), seq, buf| {
                    if keep {
                        seqs.push((n, fwd, seq));
                    }
                    record::encode_new_into(buf, inc.update, seq, received_ms)
                });
                last_seq = last.or(last_seq);
            }
            if let Some(seq) = last_seq {
                b.insert(&b"m/seq"[..], &seq.to_be_bytes()[..]);
            }
            if let Some(offset) = new_offset {
                b.insert(offset_key(bot), &(offset as u64).to_be_bytes()[..]);
            }
            self.apply(b)?;
            last_seq
        };
        // One flush per batch (group commit); concurrent bots share flushes.
        // A flush covers every batch applied before it, so publishing the
        // highest seq afterwards never exposes an unflushed one.
        self.durable().await?;
        if let Some(seq) = last_seq {
            self.committed.fetch_max(seq, Ordering::SeqCst);
        }
        if let Some(offset) = new_offset {
            self.stored_offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(bot.to_string(), offset);
        }
        if let Some(history) = self.history.get() {
            let updates: Vec<&Update> = batch.iter().map(|i| i.update).collect();
            history.received(bot, &updates, &mut seqs, received_ms);
        }
        Ok(())
    }
}
