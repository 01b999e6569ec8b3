//! The durable queue: every update waits here until each forward that wants
//! it has answered 2xx, or until it is moved to dead letters on purpose.
//!
//! One sled tree holds everything, under one-letter key prefixes, so that a
//! batch, the bot's new offset and the sequence high-water mark are written
//! by a single atomic `apply_batch` and made durable by one flush:
//!
//! ```text
//! m/instance            8 random bytes, part of every webhook-id
//! m/seq                 highest sequence number handed out
//! m/fwd/<bot>\0<name>   u32 id of a forward (compact job keys)
//! m/next-fwd            next forward id
//! o<bot>                i64 offset for the bot's next getUpdates
//! j<fwd u32><seq u64>   a job: one update waiting for one forward
//! d<fwd u32><seq u64>   a dead letter: a job given up on, kept for replay
//! x<fwd u32><seq u64>   a damaged record, set aside so the queue moves on
//! ```
//!
//! Jobs are keyed by a local monotonic sequence number, never by update_id:
//! ids can jump down after a platform resets them. Each job carries its own
//! copy of the payload and its retry state, so finishing a job is one delete
//! and the retry schedule survives a restart with the job.

mod record;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tracing::error;

use crate::update::{Lane, Update};
use record::{key, u32_from, u64_from};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database cannot be opened at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("the state database failed: {0}")]
    Db(#[from] sled::Error),
    #[error("a stored record is damaged: {0}")]
    Corrupt(String),
}

/// One update waiting for (or given up on by) one forward.
#[derive(Debug, Clone)]
pub struct Job {
    pub seq: u64,
    /// The sequence number its webhook-id is made from: its own, or, for a
    /// replayed dead letter, the original's, so a replay keeps its id.
    pub id_seq: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Wall-clock ms since the epoch; the job is not tried before this.
    pub next_at_ms: u64,
    /// When pollhook received the update, ms since the epoch.
    pub received_ms: u64,
    /// When it became a dead letter (0 while it is a live job).
    pub dead_at_ms: u64,
    /// When an operator last replayed it (0: never). Ages for giving up
    /// count from here, so a replay gets a fresh chance.
    pub replayed_ms: u64,
    pub update_id: Option<i64>,
    pub kind: String,
    pub lane: Lane,
    pub last_error: String,
    pub payload: Bytes,
}

impl Job {
    /// What `max_age` counts from: receipt, or the last replay.
    pub fn age_base_ms(&self) -> u64 {
        self.received_ms.max(self.replayed_ms)
    }
}

/// An update ready to be stored, with the forwards that want it.
pub struct Incoming<'a> {
    pub update: &'a Update,
    pub forwards: &'a [u32],
}

/// A forward the store has seen, configured now or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRef {
    pub id: u32,
    pub bot: String,
    pub name: String,
}

const JOB: u8 = b'j';
const DEAD: u8 = b'd';
const DAMAGED: u8 = b'x';

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    next_seq: AtomicU64,
    /// Highest sequence number whose batch is applied *and flushed*. Readers
    /// stop here, so a scan never sees seq N+1 before N (and skips N for
    /// good), and nothing is delivered (with a webhook-id made from its seq)
    /// before that seq is durable and so can never be handed out again.
    committed: AtomicU64,
    /// Serialises handing out sequence numbers with writing them, so that
    /// `m/seq` only ever grows, even with many bots appending.
    append_order: Mutex<()>,
    instance: String,
}

impl Store {
    /// Opens (or creates) the database in `dir`. sled allows one process per
    /// database, so a second pollhook on the same directory fails here.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let tree = db.open_tree("queue")?;
        let instance = match tree.get(b"m/instance")? {
            Some(v) => hex(&v),
            None => {
                let bytes: [u8; 8] = rand::random();
                tree.insert(b"m/instance", &bytes[..])?;
                db.flush()?;
                hex(&bytes)
            }
        };
        let last = match tree.get(b"m/seq")? {
            Some(v) => u64_from(&v)?,
            None => 0,
        };
        Ok(Store {
            db,
            tree,
            next_seq: AtomicU64::new(last + 1),
            committed: AtomicU64::new(last),
            append_order: Mutex::new(()),
            instance,
        })
    }

    /// The compact id of a forward, assigned on first sight and kept.
    pub fn forward_id(&self, bot: &str, forward: &str) -> Result<u32, StoreError> {
        let name_key = [b"m/fwd/", bot.as_bytes(), b"\0", forward.as_bytes()].concat();
        if let Some(v) = self.tree.get(&name_key)? {
            return u32_from(&v);
        }
        let id = self
            .tree
            .update_and_fetch(b"m/next-fwd", |old| {
                let n = old.and_then(|v| u32_from(v).ok()).unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .map(|v| u32_from(&v))
            .transpose()?
            .unwrap_or(1);
        self.tree.insert(name_key, &id.to_be_bytes())?;
        self.db.flush()?;
        Ok(id)
    }

    /// Every forward the store knows, in id order.
    pub fn forwards(&self) -> Result<Vec<ForwardRef>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"m/fwd/") {
            let (k, v) = item?;
            let text = String::from_utf8_lossy(&k[6..]).into_owned();
            let (bot, name) = text.split_once('\0').unwrap_or((&text, ""));
            out.push(ForwardRef {
                id: u32_from(&v)?,
                bot: bot.to_string(),
                name: name.to_string(),
            });
        }
        out.sort_by_key(|f| f.id);
        Ok(out)
    }

    /// The offset to send with the bot's next getUpdates, if one was stored.
    pub fn offset(&self, bot: &str) -> Result<Option<i64>, StoreError> {
        match self.tree.get(offset_key(bot))? {
            Some(v) => Ok(Some(u64_from(&v)? as i64)),
            None => Ok(None),
        }
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
        let last_seq = {
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            let mut last_seq = None;
            for inc in batch {
                for &fwd in inc.forwards {
                    let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
                    last_seq = Some(seq);
                    b.insert(
                        &key(JOB, fwd, seq)[..],
                        record::encode_new(inc.update, seq, received_ms),
                    );
                }
            }
            if let Some(seq) = last_seq {
                b.insert(&b"m/seq"[..], &seq.to_be_bytes()[..]);
            }
            if let Some(offset) = new_offset {
                b.insert(offset_key(bot), &(offset as u64).to_be_bytes()[..]);
            }
            self.tree.apply_batch(b)?;
            last_seq
        };
        // One flush per batch (group commit); concurrent bots share flushes.
        // A flush covers every batch applied before it, so publishing the
        // highest seq afterwards never exposes an unflushed one.
        self.db.flush_async().await?;
        if let Some(seq) = last_seq {
            self.committed.fetch_max(seq, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Up to `limit` jobs of a forward with sequence numbers in
    /// `(after, to]` (`to` defaults to everything committed) that `keep`
    /// accepts, in sequence order. Damaged records are set aside and logged.
    pub fn scan(
        &self,
        fwd: u32,
        after: Option<u64>,
        to: Option<u64>,
        limit: usize,
        mut keep: impl FnMut(&Job) -> bool,
    ) -> Result<Vec<Job>, StoreError> {
        let committed = self.committed.load(Ordering::SeqCst);
        let end = to.unwrap_or(committed).min(committed);
        let start = match after {
            Some(seq) if seq >= end => return Ok(Vec::new()),
            Some(seq) => seq + 1,
            None => 0,
        };
        let mut out = Vec::new();
        for item in self.tree.range(key(JOB, fwd, start)..=key(JOB, fwd, end)) {
            let (k, v) = item?;
            match record::decode(&k, &v) {
                Ok(job) if keep(&job) => out.push(job),
                Ok(_) => {}
                Err(e) => self.set_aside(fwd, &k, &v, &e),
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` jobs of a forward after `after`, in sequence order.
    pub fn pending(
        &self,
        fwd: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.scan(fwd, after, None, limit, |_| true)
    }

    fn set_aside(&self, fwd: u32, k: &[u8], v: &[u8], e: &StoreError) {
        let seq = record::seq_of(k).unwrap_or(0);
        error!("job {seq} of forward #{fwd} is damaged ({e}); set aside under x-keys, the queue moves on");
        let mut b = sled::Batch::default();
        b.remove(k);
        b.insert(&key(DAMAGED, fwd, seq)[..], v);
        if let Err(e) = self.tree.apply_batch(b) {
            error!("cannot set the damaged job aside: {e}");
        }
    }

    /// How many jobs a forward has waiting.
    pub fn depth(&self, fwd: u32) -> usize {
        self.tree
            .range(key(JOB, fwd, 0)..=key(JOB, fwd, u64::MAX))
            .count()
    }

    /// When the forward's oldest waiting update was received (ms since the
    /// epoch), if it has any.
    pub fn oldest(&self, fwd: u32) -> Result<Option<u64>, StoreError> {
        match self
            .tree
            .range(key(JOB, fwd, 0)..=key(JOB, fwd, u64::MAX))
            .next()
        {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some(record::decode(&k, &v)?.received_ms))
            }
            None => Ok(None),
        }
    }

    /// Whether the database still takes writes (for readiness).
    pub fn writable(&self) -> bool {
        self.tree
            .insert(b"m/probe", &crate::clock::now_ms().to_be_bytes()[..])
            .is_ok()
    }

    /// The job is done. Not flushed on its own: losing a completion to a
    /// crash only means one duplicate delivery.
    pub fn complete(&self, fwd: u32, seq: u64) -> Result<(), StoreError> {
        self.tree.remove(key(JOB, fwd, seq))?;
        Ok(())
    }

    /// Several jobs are done, removed in one batch.
    pub fn complete_many(&self, fwd: u32, seqs: &[u64]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for &seq in seqs {
            b.remove(&key(JOB, fwd, seq)[..]);
        }
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Records a failed attempt and when to try next, if the job still exists.
    pub fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError> {
        let encoded = record::encode(job);
        // Atomic "update if present": a job completed or dead-lettered
        // meanwhile must not come back.
        self.tree
            .update_and_fetch(key(JOB, fwd, job.seq), |old| old.map(|_| encoded.clone()))?;
        Ok(())
    }

    /// Moves a job to the forward's dead letters, keeping its last error.
    pub fn bury(&self, fwd: u32, job: &Job, now_ms: u64) -> Result<(), StoreError> {
        let mut dead = job.clone();
        dead.dead_at_ms = now_ms;
        let mut b = sled::Batch::default();
        b.remove(&key(JOB, fwd, job.seq)[..]);
        b.insert(&key(DEAD, fwd, job.seq)[..], record::encode(&dead));
        self.tree.apply_batch(b)?;
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
            self.tree.apply_batch(b)?;
            new_seq
        };
        self.db.flush_async().await?;
        self.committed.fetch_max(new_seq, Ordering::SeqCst);
        Ok(true)
    }

    /// Forgets a dead letter for good.
    pub async fn drop_dead(&self, fwd: u32, seq: u64) -> Result<bool, StoreError> {
        let existed = {
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            self.tree.remove(key(DEAD, fwd, seq))?.is_some()
        };
        self.db.flush_async().await?;
        Ok(existed)
    }

    /// The Standard Webhooks message id of a stored update: the same on every
    /// retry, after every restart and after a replay, and different across
    /// installations.
    pub fn webhook_id(&self, job: &Job) -> String {
        format!("msg_{}{:016x}", self.instance, job.id_seq)
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

fn offset_key(bot: &str) -> Vec<u8> {
    [b"o", bot.as_bytes()].concat()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn update(id: i64, chat: i64) -> Update {
        let text =
            format!(r#"{{"update_id":{id},"message":{{"chat":{{"id":{chat}}},"text":"é"}}}}"#);
        let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
        Update::parse(&raw).unwrap()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn append_then_reopen_keeps_jobs_offset_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (fwd, seqs) = {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            let fwd = s.forward_id("b", "f").unwrap();
            let (u1, u2) = (update(10, 1), update(11, 2));
            let batch = [
                Incoming {
                    update: &u1,
                    forwards: &[fwd],
                },
                Incoming {
                    update: &u2,
                    forwards: &[fwd],
                },
            ];
            s.append("b", &batch, Some(12), 1000).await.unwrap();
            let seqs: Vec<u64> = s
                .pending(fwd, None, 10)
                .unwrap()
                .iter()
                .map(|j| j.seq)
                .collect();
            (fwd, seqs)
        };
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.forward_id("b", "f").unwrap(), fwd);
        assert_eq!(s.offset("b").unwrap(), Some(12));
        let jobs = s.pending(fwd, None, 10).unwrap();
        assert_eq!(jobs.iter().map(|j| j.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(jobs[1].payload, update(11, 2).payload);
        assert_eq!(jobs[1].lane, Lane::Chat("2".into()));
        // New sequence numbers continue above the old ones.
        let u3 = update(12, 1);
        s.append(
            "b",
            &[Incoming {
                update: &u3,
                forwards: &[fwd],
            }],
            Some(13),
            1,
        )
        .await
        .unwrap();
        let last = s.pending(fwd, Some(seqs[1]), 10).unwrap();
        assert_eq!(last.len(), 1);
        assert!(last[0].seq > seqs[1]);
    }

    #[tokio::test]
    async fn reschedule_complete_and_no_resurrection() {
        let (_d, s) = store();
        let (a, b) = (
            s.forward_id("b", "a").unwrap(),
            s.forward_id("b", "b").unwrap(),
        );
        assert_ne!(a, b);
        let u = update(1, 1);
        s.append(
            "b",
            &[Incoming {
                update: &u,
                forwards: &[a, b],
            }],
            Some(2),
            5,
        )
        .await
        .unwrap();
        let mut job = s.pending(a, None, 1).unwrap().remove(0);
        job.attempts = 3;
        job.next_at_ms = 99;
        job.last_error = "503".into();
        s.reschedule(a, &job).unwrap();
        let again = s.pending(a, None, 1).unwrap().remove(0);
        assert_eq!(
            (again.attempts, again.next_at_ms, again.last_error.as_str()),
            (3, 99, "503")
        );
        assert_eq!(again.payload, u.payload);
        s.complete(a, job.seq).unwrap();
        assert_eq!(s.depth(a), 0);
        assert_eq!(s.depth(b), 1, "the other forward still holds its copy");
        s.reschedule(a, &job).unwrap();
        assert_eq!(
            s.depth(a),
            0,
            "a late reschedule brought a completed job back"
        );
    }

    #[tokio::test]
    async fn dead_letters_replay_with_their_webhook_id_and_drop() {
        let (_d, s) = store();
        let f = s.forward_id("b", "f").unwrap();
        let (u1, u2) = (update(1, 1), update(2, 1));
        let batch = [
            Incoming {
                update: &u1,
                forwards: &[f],
            },
            Incoming {
                update: &u2,
                forwards: &[f],
            },
        ];
        s.append("b", &batch, Some(3), 5).await.unwrap();
        let jobs = s.pending(f, None, 10).unwrap();
        let mut first = jobs[0].clone();
        first.last_error = "HTTP 410".into();
        let id_before = s.webhook_id(&first);
        s.bury(f, &first, 77).unwrap();
        assert_eq!(s.depth(f), 1);
        let dead = s.dead_letters(f).unwrap();
        assert_eq!(
            (dead.len(), dead[0].last_error.as_str(), dead[0].dead_at_ms),
            (1, "HTTP 410", 77)
        );
        assert_eq!(s.find_dead(first.seq).unwrap().unwrap().0, f);
        assert!(s.replay(f, first.seq).await.unwrap());
        assert_eq!(s.dead_count(f), 0);
        let requeued = s.pending(f, Some(jobs[1].seq), 10).unwrap();
        assert_eq!(requeued.len(), 1, "the replayed job comes after the cursor");
        assert_eq!((requeued[0].attempts, requeued[0].update_id), (0, Some(1)));
        assert_eq!(s.webhook_id(&requeued[0]), id_before);
        s.bury(f, &requeued[0], 1).unwrap();
        assert!(s.drop_dead(f, requeued[0].seq).await.unwrap());
        assert!(!s.replay(f, requeued[0].seq).await.unwrap());
        assert_eq!(s.dead_count(f) + s.depth(f), 1);
    }

    #[tokio::test]
    async fn a_damaged_record_is_set_aside_and_the_queue_moves_on() {
        let (_d, s) = store();
        let f = s.forward_id("b", "f").unwrap();
        let (u1, u2) = (update(1, 1), update(2, 1));
        let batch = [
            Incoming {
                update: &u1,
                forwards: &[f],
            },
            Incoming {
                update: &u2,
                forwards: &[f],
            },
        ];
        s.append("b", &batch, Some(3), 5).await.unwrap();
        let seqs: Vec<u64> = s
            .pending(f, None, 10)
            .unwrap()
            .iter()
            .map(|j| j.seq)
            .collect();
        s.tree
            .insert(key(JOB, f, seqs[0]), &b"\x01garbage"[..])
            .unwrap();
        let jobs = s.pending(f, None, 10).unwrap();
        assert_eq!(jobs.iter().map(|j| j.seq).collect::<Vec<_>>(), [seqs[1]]);
        assert!(s.tree.get(key(DAMAGED, f, seqs[0])).unwrap().is_some());
    }

    #[test]
    fn webhook_ids_are_stable_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let job = |seq| Job {
            seq,
            id_seq: seq,
            attempts: 0,
            next_at_ms: 0,
            received_ms: 0,
            dead_at_ms: 0,
            replayed_ms: 0,
            update_id: None,
            kind: String::new(),
            lane: Lane::Alone,
            last_error: String::new(),
            payload: Bytes::new(),
        };
        let first = Store::open(dir.path(), 1 << 20)
            .unwrap()
            .webhook_id(&job(5));
        let again = Store::open(dir.path(), 1 << 20)
            .unwrap()
            .webhook_id(&job(5));
        let other_dir = tempfile::tempdir().unwrap();
        let other = Store::open(other_dir.path(), 1 << 20)
            .unwrap()
            .webhook_id(&job(5));
        assert_eq!(first, again);
        assert_ne!(first, other);
    }
}
