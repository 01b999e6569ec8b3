//! The seam between the stages and whatever keeps the queue: the poller
//! appends to a [`Queue`] and the dispatchers read from it and settle what
//! they read. sled's [`Store`](super::Store) is the one engine today; a
//! queue replicated on JetStream is the next, and plugs in here without
//! the poller or the dispatchers changing.
//!
//! The contract every engine keeps (DESIGN.md §2, §8): `append` returns
//! only once the batch and the offset survive the failure the engine
//! promises to survive (a flush on one node, a quorum in a cluster), and
//! readers never see a job before it is durable.

use futures_util::future::BoxFuture;

use super::{Incoming, Job, StoreError};

pub trait Queue: Send + Sync {
    /// The offset to send with the bot's next getUpdates, if one was stored.
    fn offset(&self, bot: &str) -> Result<Option<i64>, StoreError>;

    /// Stores a batch and the bot's new offset (None: leave it) atomically
    /// and durably. Only after this returns may the new offset be sent.
    fn append<'a>(
        &'a self,
        bot: &'a str,
        batch: &'a [Incoming<'a>],
        new_offset: Option<i64>,
        received_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Up to `limit` jobs of a forward with sequence numbers in
    /// `(after, to]` (`to` defaults to everything durable) that `keep`
    /// accepts, in sequence order.
    fn scan(
        &self,
        fwd: u32,
        after: Option<u64>,
        to: Option<u64>,
        limit: usize,
        keep: &mut dyn FnMut(&Job) -> bool,
    ) -> Result<Vec<Job>, StoreError>;

    /// Jobs are done (delivered or dropped). Need not be durable at once:
    /// a completion lost to a crash only means a duplicate delivery.
    fn complete_many(&self, fwd: u32, seqs: &[u64]) -> Result<(), StoreError>;

    /// Records a failed attempt and when to try next, if the job still waits.
    fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError>;

    /// Moves a job to the forward's dead letters.
    fn bury(&self, fwd: u32, job: &Job, now_ms: u64) -> Result<(), StoreError>;

    /// The Standard Webhooks message id of a job: the same on every retry,
    /// after restarts and replays.
    fn webhook_id(&self, job: &Job) -> String;

    /// Up to `limit` jobs of a forward after `after`, in sequence order.
    fn pending(&self, fwd: u32, after: Option<u64>, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.scan(fwd, after, None, limit, &mut |_| true)
    }

    fn complete(&self, fwd: u32, seq: u64) -> Result<(), StoreError> {
        self.complete_many(fwd, &[seq])
    }
}

impl Queue for super::Store {
    fn offset(&self, bot: &str) -> Result<Option<i64>, StoreError> {
        super::Store::offset(self, bot)
    }

    fn append<'a>(
        &'a self,
        bot: &'a str,
        batch: &'a [Incoming<'a>],
        new_offset: Option<i64>,
        received_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(super::Store::append(
            self,
            bot,
            batch,
            new_offset,
            received_ms,
        ))
    }

    fn scan(
        &self,
        fwd: u32,
        after: Option<u64>,
        to: Option<u64>,
        limit: usize,
        keep: &mut dyn FnMut(&Job) -> bool,
    ) -> Result<Vec<Job>, StoreError> {
        super::Store::scan(self, fwd, after, to, limit, keep)
    }

    fn complete_many(&self, fwd: u32, seqs: &[u64]) -> Result<(), StoreError> {
        super::Store::complete_many(self, fwd, seqs)
    }

    fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError> {
        super::Store::reschedule(self, fwd, job)
    }

    fn bury(&self, fwd: u32, job: &Job, now_ms: u64) -> Result<(), StoreError> {
        super::Store::bury(self, fwd, job, now_ms)
    }

    fn webhook_id(&self, job: &Job) -> String {
        super::Store::webhook_id(self, job)
    }
}
