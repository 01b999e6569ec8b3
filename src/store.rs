//! The durable queue: every update waits here until each forward that wants
//! it has answered 2xx.
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
//! j<fwd u32><seq u64>   one job: one update for one forward
//! ```
//!
//! Jobs are keyed by a local monotonic sequence number, never by update_id:
//! ids can jump down after a platform resets them. Each job carries its own
//! copy of the payload and its retry state, so finishing a job is one delete
//! and the retry schedule survives a restart with the job.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::update::{Lane, Update};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database cannot be opened at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("the state database failed: {0}")]
    Db(#[from] sled::Error),
    #[error("a stored record is damaged: {0}")]
    Corrupt(String),
}

/// One update waiting for one forward.
#[derive(Debug, Clone)]
pub struct Job {
    pub seq: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Wall-clock ms since the epoch; the job is not tried before this.
    pub next_at_ms: u64,
    /// When pollhook received the update, ms since the epoch.
    pub received_ms: u64,
    pub update_id: Option<i64>,
    pub kind: String,
    pub lane: Lane,
    pub last_error: String,
    pub payload: Bytes,
}

/// An update ready to be stored, with the forwards that want it.
pub struct Incoming<'a> {
    pub update: &'a Update,
    pub forwards: &'a [u32],
}

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    next_seq: AtomicU64,
    /// Highest sequence number whose whole batch is applied. Readers stop
    /// here, so a scan never sees seq N+1 before N and skips N for good.
    committed: AtomicU64,
    append_order: std::sync::Mutex<()>,
    instance: String,
}

const JOB_VERSION: u8 = 1;
/// Stored in place of the update_id of an update that had none.
const NO_UPDATE_ID: i64 = i64::MIN;

impl Store {
    /// Opens (or creates) the database in `dir`. sled allows one process per
    /// database, so a second pollhook on the same directory fails here.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
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
            append_order: std::sync::Mutex::new(()),
            instance,
        })
    }

    /// The compact id of a forward, assigned on first sight and kept.
    pub fn forward_id(&self, bot: &str, forward: &str) -> Result<u32, StoreError> {
        let key = [b"m/fwd/", bot.as_bytes(), b"\0", forward.as_bytes()].concat();
        if let Some(v) = self.tree.get(&key)? {
            return u32_from(&v);
        }
        let id = self
            .tree
            .update_and_fetch(b"m/next-fwd", |old| {
                let n = old.map(|v| u32_from(v).unwrap_or(0)).unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .map(|v| u32_from(&v))
            .transpose()?
            .unwrap_or(1);
        self.tree.insert(key, &id.to_be_bytes())?;
        self.db.flush()?;
        Ok(id)
    }

    /// The offset to send with the bot's next getUpdates, if one was stored.
    pub fn offset(&self, bot: &str) -> Result<Option<i64>, StoreError> {
        match self.tree.get(offset_key(bot))? {
            Some(v) => Ok(Some(u64_from(&v)? as i64)),
            None => Ok(None),
        }
    }

    /// Stores a batch and the bot's new offset atomically, then flushes.
    /// Only after this returns may the new offset be sent to the platform:
    /// sending it is what makes the platform forget the batch.
    pub async fn append(
        &self,
        bot: &str,
        batch: &[Incoming<'_>],
        new_offset: i64,
        received_ms: u64,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        {
            // Sequence numbers are handed out and committed under one lock so
            // that `m/seq` only ever grows, even with many bots appending.
            let _order = self.append_order.lock().unwrap_or_else(|e| e.into_inner());
            let mut last_seq = None;
            for inc in batch {
                for &fwd in inc.forwards {
                    let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
                    last_seq = Some(seq);
                    b.insert(&job_key(fwd, seq)[..], encode_job(inc.update, received_ms));
                }
            }
            if let Some(seq) = last_seq {
                b.insert(&b"m/seq"[..], &seq.to_be_bytes()[..]);
            }
            b.insert(offset_key(bot), &(new_offset as u64).to_be_bytes()[..]);
            self.tree.apply_batch(b)?;
            if let Some(seq) = last_seq {
                self.committed.store(seq, Ordering::SeqCst);
            }
        }
        // One flush per batch (group commit); concurrent bots share flushes.
        self.db.flush_async().await?;
        Ok(())
    }

    /// Up to `limit` jobs of a forward with sequence numbers above `after`,
    /// in sequence order.
    pub fn pending(
        &self,
        fwd: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let start = match after {
            Some(seq) if seq >= self.committed.load(Ordering::SeqCst) => return Ok(Vec::new()),
            Some(seq) => job_key(fwd, seq + 1),
            None => job_key(fwd, 0),
        };
        let end = job_key(fwd, self.committed.load(Ordering::SeqCst));
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(limit) {
            let (k, v) = item?;
            out.push(decode_job(&k, &v)?);
        }
        Ok(out)
    }

    /// How many jobs a forward has waiting.
    pub fn depth(&self, fwd: u32) -> usize {
        self.tree
            .range(job_key(fwd, 0)..=job_key(fwd, u64::MAX))
            .count()
    }

    /// The job is done: delivered (or, later, dead-lettered). Not flushed on
    /// its own: losing a completion to a crash only means one duplicate.
    pub fn complete(&self, fwd: u32, seq: u64) -> Result<(), StoreError> {
        self.tree.remove(job_key(fwd, seq))?;
        Ok(())
    }

    /// Records a failed attempt and when to try next.
    pub fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError> {
        let key = job_key(fwd, job.seq);
        // Only rewrite a job that still exists; it may have been completed.
        if self.tree.contains_key(key)? {
            self.tree.insert(key, encode_job_state(job))?;
        }
        Ok(())
    }

    /// The Standard Webhooks message id of a stored update: the same on every
    /// retry and after every restart, and different across installations.
    pub fn webhook_id(&self, seq: u64) -> String {
        format!("msg_{}{:016x}", self.instance, seq)
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

fn job_key(fwd: u32, seq: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = b'j';
    k[1..5].copy_from_slice(&fwd.to_be_bytes());
    k[5..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn u64_from(v: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, found {}", v.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn u32_from(v: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("expected 4 bytes, found {}", v.len())))?;
    Ok(u32::from_be_bytes(arr))
}

// Job values: a small binary header, then the payload's exact bytes.
//   version u8 | attempts u32 | next_at u64 | received u64 | update_id i64
//   | kind: u16 len + bytes | lane: u16 len + bytes | last_error: u16 len + bytes
//   | payload (rest)

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A job's fields apart from its key and payload.
struct Head<'a> {
    attempts: u32,
    next_at_ms: u64,
    received_ms: u64,
    update_id: Option<i64>,
    kind: &'a str,
    lane: &'a Lane,
    last_error: &'a str,
}

fn encode(h: Head<'_>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + h.kind.len() + h.last_error.len() + payload.len());
    out.push(JOB_VERSION);
    out.extend_from_slice(&h.attempts.to_be_bytes());
    out.extend_from_slice(&h.next_at_ms.to_be_bytes());
    out.extend_from_slice(&h.received_ms.to_be_bytes());
    out.extend_from_slice(&h.update_id.unwrap_or(NO_UPDATE_ID).to_be_bytes());
    put_str(&mut out, h.kind);
    put_str(&mut out, &h.lane.encode());
    put_str(&mut out, h.last_error);
    out.extend_from_slice(payload);
    out
}

fn encode_job(u: &Update, received_ms: u64) -> Vec<u8> {
    let head = Head {
        attempts: 0,
        next_at_ms: 0,
        received_ms,
        update_id: u.update_id,
        kind: &u.kind,
        lane: &u.lane,
        last_error: "",
    };
    encode(head, &u.payload)
}

fn encode_job_state(j: &Job) -> Vec<u8> {
    let head = Head {
        attempts: j.attempts,
        next_at_ms: j.next_at_ms,
        received_ms: j.received_ms,
        update_id: j.update_id,
        kind: &j.kind,
        lane: &j.lane,
        last_error: &j.last_error,
    };
    encode(head, &j.payload)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Corrupt("job record is truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        u32_from(self.take(4)?)
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        u64_from(self.take(8)?)
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let len = u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]) as usize;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

fn decode_job(key: &[u8], value: &[u8]) -> Result<Job, StoreError> {
    if key.len() != 13 {
        return Err(StoreError::Corrupt("job key has the wrong length".into()));
    }
    let seq = u64_from(&key[5..])?;
    let mut r = Reader(value);
    let version = r.take(1)?[0];
    if version != JOB_VERSION {
        return Err(StoreError::Corrupt(format!(
            "job {seq} has unknown version {version}"
        )));
    }
    Ok(Job {
        seq,
        attempts: r.u32()?,
        next_at_ms: r.u64()?,
        received_ms: r.u64()?,
        update_id: Some(r.u64()? as i64).filter(|id| *id != NO_UPDATE_ID),
        kind: r.string()?,
        lane: Lane::decode(&r.string()?),
        last_error: r.string()?,
        payload: Bytes::copy_from_slice(r.0),
    })
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
            s.append("b", &batch, 12, 1000).await.unwrap();
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
            13,
            1,
        )
        .await
        .unwrap();
        let last = s.pending(fwd, Some(seqs[1]), 10).unwrap();
        assert_eq!(last.len(), 1);
        assert!(last[0].seq > seqs[1]);
    }

    #[tokio::test]
    async fn reschedule_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
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
            2,
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
        // A completed job is not resurrected by a late reschedule.
        s.reschedule(a, &job).unwrap();
        assert_eq!(s.depth(a), 0);
    }

    #[test]
    fn webhook_ids_are_stable_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), 1 << 20).unwrap().webhook_id(5);
        let again = Store::open(dir.path(), 1 << 20).unwrap().webhook_id(5);
        let other_dir = tempfile::tempdir().unwrap();
        let other = Store::open(other_dir.path(), 1 << 20)
            .unwrap()
            .webhook_id(5);
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert!(decode_job(&job_key(1, 1), &[1, 0, 0]).is_err());
        assert!(decode_job(&job_key(1, 1), &[9; 40]).is_err());
        assert!(decode_job(b"short", &[]).is_err());
    }
}
