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
//! g<fwd u32><seq u64>   a group: the jobs of one batch for one forward,
//!                       numbered seq, seq+1, … (see group.rs)
//! k<fwd u32><seq u64>   which entries of group seq are finished (bitmap)
//! j<fwd u32><seq u64>   a job on its own: a group entry's retry state
//!                       (it wins over the entry), or a replayed dead letter
//! d<fwd u32><seq u64>   a dead letter: a job given up on, kept for replay
//! x<fwd u32><seq u64>   a damaged record, set aside so the queue moves on
//! ```
//!
//! Jobs are keyed by a local monotonic sequence number, never by update_id:
//! ids can jump down after a platform resets them. A new job lives in its
//! group; the first failed attempt writes it out as its own `j` record with
//! its retry state, so the schedule survives a restart. Finishing a job
//! sets its bit in memory; bitmaps are written, and finished groups
//! removed, in batches. A bit lost to a crash means a duplicate delivery,
//! never a loss.

mod blobs;
pub mod dir;
mod group;
pub mod health;
mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tracing::{error, warn};

use crate::platform::update::{Lane, Update};
use record::{key, u32_from, u64_from};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database cannot be opened at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("the state database failed: {0}")]
    Db(#[from] sled::Error),
    #[error("a stored record is damaged: {0}")]
    Corrupt(String),
    #[error("the state database's files cannot be synced to disk: {0}")]
    Sync(#[from] std::io::Error),
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

/// sled's log segment size. sled writes any page bigger than a quarter of
/// a segment to its own blob file, which sled 0.34 never fsyncs: the store
/// does that after each flush (blobs.rs), at the price of a file and an
/// fsync per blob. A page is a whole leaf (up to ~17 records), so with
/// sled's default 512 KiB a leaf of long updates (8 KiB each: a
/// 4,096-character Cyrillic message) already went to a blob. 8 MiB
/// segments keep leaves of 100 KiB updates in the log; the cost is sled's
/// larger I/O buffers (backlog RSS 108 → 132 MB, see BENCHMARKS.md).
pub const SEGMENT_SIZE: usize = 8 << 20;

/// The segment size to open `db` with: the one it was created with (sled
/// refuses any other), else [`SEGMENT_SIZE`].
fn segment_size(db: &Path) -> usize {
    // sled keeps its creation parameters in `conf`: `key: value` lines
    // followed by a binary checksum.
    std::fs::read(db.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_SIZE)
}

const JOB: u8 = b'j';
const GROUP: u8 = b'g';
const DONE: u8 = b'k';
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
    live: Mutex<Live>,
    blobs: blobs::Blobs,
    /// The state directory, for free-space checks when writes fail.
    dir: PathBuf,
    health: health::Health,
    /// Each bot's offset as last flushed: what `/status` reports. The tree
    /// may hold a newer one whose flush failed, which was never confirmed.
    stored_offsets: Mutex<HashMap<String, i64>>,
}

/// What the store keeps in memory about jobs, so that finishing one costs
/// no read of sled.
#[derive(Default)]
struct Live {
    /// Finished entries of the groups read so far, per forward, by the
    /// group's first seq. A group leaves when all its entries are finished.
    groups: HashMap<u32, BTreeMap<u64, group::Done>>,
    /// Every `j` key in the store (few: retries and replays).
    own: HashSet<(u32, u64)>,
}

impl Store {
    /// Opens (or creates) the database in `dir`. sled allows one process per
    /// database, so a second pollhook on the same directory fails here.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let segments = segment_size(&dir.join("db"));
        if segments < SEGMENT_SIZE {
            warn!(
                state_dir = %dir.display(),
                segment_kib = segments / 1024,
                "this state directory was created by an older pollhook with small sled segments, \
                 where long updates go to separate blob files, each costing an extra fsync; \
                 to move on: let the queue drain, stop pollhook, move the directory away, start again"
            );
        }
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .segment_size(segments)
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
        // Covers the flush above, and blobs an earlier run left that may
        // never have reached the disk.
        let blobs = blobs::Blobs::new(dir.join("db"));
        blobs.sync()?;
        let last = match tree.get(b"m/seq")? {
            Some(v) => u64_from(&v)?,
            None => 0,
        };
        let mut live = Live::default();
        for item in tree.scan_prefix([JOB]) {
            let (k, _) = item?;
            if let (Ok(fwd), Ok(seq)) = (record::fwd_of(&k), record::seq_of(&k)) {
                live.own.insert((fwd, seq));
            }
        }
        Ok(Store {
            db,
            tree,
            next_seq: AtomicU64::new(last + 1),
            committed: AtomicU64::new(last),
            append_order: Mutex::new(()),
            instance,
            live: Mutex::new(live),
            blobs,
            dir: dir.to_path_buf(),
            health: health::Health::default(),
            stored_offsets: Mutex::new(HashMap::new()),
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
        self.blobs.sync()?;
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

    /// The offset to send with the bot's next getUpdates, if one was stored
    /// (flushed: an offset whose flush failed is not reported).
    pub fn offset(&self, bot: &str) -> Result<Option<i64>, StoreError> {
        if let Some(o) = self
            .stored_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(bot)
        {
            return Ok(Some(*o));
        }
        // Not appended to since open: the tree holds what is on disk.
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
            // Forward by forward, so each forward's jobs of this batch get
            // consecutive numbers and fill as few groups as possible.
            let mut fwds: Vec<u32> = batch
                .iter()
                .flat_map(|i| i.forwards.iter().copied())
                .collect();
            fwds.sort_unstable();
            fwds.dedup();
            for fwd in fwds {
                let mut g = group::Builder::new();
                let mut first = 0;
                for inc in batch.iter().filter(|i| i.forwards.contains(&fwd)) {
                    if g.is_full() {
                        let full = std::mem::replace(&mut g, group::Builder::new());
                        b.insert(&key(GROUP, fwd, first)[..], full.finish());
                    }
                    let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
                    if g.is_empty() {
                        first = seq;
                    }
                    last_seq = Some(seq);
                    g.push_with(|buf| record::encode_new_into(buf, inc.update, seq, received_ms));
                }
                if !g.is_empty() {
                    b.insert(&key(GROUP, fwd, first)[..], g.finish());
                }
            }
            if let Some(seq) = last_seq {
                b.insert(&b"m/seq"[..], &seq.to_be_bytes()[..]);
            }
            if let Some(offset) = new_offset {
                b.insert(offset_key(bot), &(offset as u64).to_be_bytes()[..]);
            }
            if let Err(e) = self.tree.apply_batch(b) {
                self.health.failed(crate::clock::now_ms(), &e.to_string());
                return Err(e.into());
            }
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
        let mut end = to.unwrap_or(committed).min(committed);
        let start = match after {
            Some(seq) if seq >= end => return Ok(Vec::new()),
            Some(seq) => seq + 1,
            None => 0,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Jobs on their own first: they win over their group's entry. If
        // `limit` of them are found by seq S, nothing past S is needed.
        let mut own = Vec::new();
        let mut seen = HashSet::new();
        for item in self.tree.range(key(JOB, fwd, start)..=key(JOB, fwd, end)) {
            let (k, v) = item?;
            let seq = record::seq_of(&k)?;
            seen.insert(seq);
            match record::decode(&k, &v) {
                Ok(job) if keep(&job) => own.push(job),
                Ok(_) => {}
                Err(e) => self.set_aside(fwd, &k, &v, &e),
            }
            if own.len() >= limit {
                end = seq;
                break;
            }
        }
        let mut grouped = Vec::new();
        let mut damaged = Vec::new();
        {
            let from = self
                .group_start(fwd, start)?
                .map_or(start, |(first, _)| first);
            for item in self
                .tree
                .range(key(GROUP, fwd, from)..=key(GROUP, fwd, end))
            {
                let (k, v) = item?;
                let first = record::seq_of(&k)?;
                let whole = Bytes::from_owner(v.clone());
                let ranges = match group::entries(&whole) {
                    Ok(r) => r,
                    Err(e) => {
                        damaged.push((k.to_vec(), v.to_vec(), e));
                        continue;
                    }
                };
                let done = self
                    .done_of(&mut self.live(), fwd, first, ranges.len())?
                    .clone();
                for (i, range) in ranges.into_iter().enumerate() {
                    let seq = first + i as u64;
                    if seq < start || done.is_set(i) || seen.contains(&seq) {
                        continue;
                    }
                    if seq > end {
                        break;
                    }
                    match record::decode_in(seq, &whole, range.clone()) {
                        Ok(job) if keep(&job) => grouped.push(job),
                        Ok(_) => {}
                        Err(e) => {
                            damaged.push((key(JOB, fwd, seq).to_vec(), whole[range].to_vec(), e))
                        }
                    }
                }
                if grouped.len() >= limit {
                    break;
                }
            }
        }
        for (k, v, e) in damaged {
            self.set_aside(fwd, &k, &v, &e);
        }
        // Both lists are in seq order; merge them.
        let mut out = Vec::with_capacity(limit.min(own.len() + grouped.len()));
        let (mut own, mut grouped) = (own.into_iter().peekable(), grouped.into_iter().peekable());
        while out.len() < limit {
            let next = match (own.peek(), grouped.peek()) {
                (Some(a), Some(b)) if a.seq < b.seq => own.next(),
                (Some(_), Some(_)) | (None, Some(_)) => grouped.next(),
                (Some(_), None) => own.next(),
                (None, None) => None,
            };
            match next {
                Some(job) => out.push(job),
                None => break,
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

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group that holds `seq`, if one does: its first seq and size.
    fn group_start(&self, fwd: u32, seq: u64) -> Result<Option<(u64, usize)>, StoreError> {
        let Some(item) = self
            .tree
            .range(key(GROUP, fwd, 0)..=key(GROUP, fwd, seq))
            .next_back()
        else {
            return Ok(None);
        };
        let (k, v) = item?;
        let first = record::seq_of(&k)?;
        let n = group::count(&v).unwrap_or(0);
        Ok((seq < first + n as u64).then_some((first, n)))
    }

    /// The finished-entries state of a group, read from the store the first
    /// time it is needed.
    fn done_of<'l>(
        &self,
        live: &'l mut Live,
        fwd: u32,
        first: u64,
        n: usize,
    ) -> Result<&'l mut group::Done, StoreError> {
        match live.groups.entry(fwd).or_default().entry(first) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let done = match self.tree.get(key(DONE, fwd, first))? {
                    Some(bits) => group::Done::load(n, &bits),
                    None => group::Done::none(n),
                };
                Ok(e.insert(done))
            }
        }
    }

    /// The group holding `seq` and its state: from memory, else from sled.
    fn group_of<'l>(
        &self,
        live: &'l mut Live,
        fwd: u32,
        seq: u64,
    ) -> Result<Option<(u64, &'l mut group::Done)>, StoreError> {
        let known = live
            .groups
            .get(&fwd)
            .and_then(|g| g.range(..=seq).next_back())
            .filter(|(first, done)| seq < **first + done.len() as u64)
            .map(|(first, done)| (*first, done.len()));
        let Some((first, n)) = known.map_or_else(|| self.group_start(fwd, seq), |k| Ok(Some(k)))?
        else {
            return Ok(None);
        };
        Ok(Some((first, self.done_of(live, fwd, first, n)?)))
    }

    /// Marks jobs finished, adding to `b` the writes that record it: their
    /// own records removed, their groups' bitmaps saved, or their groups
    /// removed once every entry is finished.
    fn finish_into(
        &self,
        live: &mut Live,
        fwd: u32,
        seqs: &[u64],
        b: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let mut touched = Vec::new();
        for &seq in seqs {
            if live.own.remove(&(fwd, seq)) {
                b.remove(&key(JOB, fwd, seq)[..]);
            }
            if let Some((first, done)) = self.group_of(live, fwd, seq)? {
                if done.set((seq - first) as usize) && touched.last() != Some(&first) {
                    touched.push(first);
                }
            }
        }
        let groups = live.groups.entry(fwd).or_default();
        for first in touched {
            let Some(done) = groups.get_mut(&first) else {
                continue;
            };
            if done.left() == 0 {
                b.remove(&key(GROUP, fwd, first)[..]);
                if done.saved {
                    b.remove(&key(DONE, fwd, first)[..]);
                }
                groups.remove(&first);
            } else {
                b.insert(&key(DONE, fwd, first)[..], done.bytes());
                done.saved = true;
            }
        }
        Ok(())
    }

    fn set_aside(&self, fwd: u32, k: &[u8], v: &[u8], e: &StoreError) {
        let seq = record::seq_of(k).unwrap_or(0);
        error!("job {seq} of forward #{fwd} is damaged ({e}); set aside under x-keys, the queue moves on");
        let mut b = sled::Batch::default();
        let mut live = self.live();
        match k.first() {
            Some(&GROUP) => {
                // The whole group is unreadable.
                b.remove(k);
                b.remove(&key(DONE, fwd, seq)[..]);
                if let Some(g) = live.groups.get_mut(&fwd) {
                    g.remove(&seq);
                }
            }
            _ => {
                // One job: on its own, or an entry of a readable group.
                if let Err(e) = self.finish_into(&mut live, fwd, &[seq], &mut b) {
                    error!("cannot set the damaged job aside: {e}");
                    return;
                }
                b.remove(k);
            }
        }
        b.insert(&key(DAMAGED, fwd, seq)[..], v);
        if let Err(e) = self.tree.apply_batch(b) {
            error!("cannot set the damaged job aside: {e}");
        }
    }

    /// How many jobs a forward has waiting.
    pub fn depth(&self, fwd: u32) -> usize {
        // A snapshot of what is known in memory; the scan below does not
        // hold the lock, so delivery does not wait for a metrics scrape.
        let (known, own): (HashMap<u64, usize>, Vec<u64>) = {
            let live = self.live();
            let known = live
                .groups
                .get(&fwd)
                .map(|g| g.iter().map(|(f, d)| (*f, d.left())).collect())
                .unwrap_or_default();
            let own = live
                .own
                .iter()
                .filter(|(f, _)| *f == fwd)
                .map(|(_, s)| *s)
                .collect();
            (known, own)
        };
        let mut n = 0;
        let mut groups = Vec::new();
        // Only what is flushed: a batch whose flush failed is not queued
        // (it was not confirmed, and will come again).
        let committed = self.committed.load(Ordering::SeqCst);
        for (k, v) in self
            .tree
            .range(key(GROUP, fwd, 0)..=key(GROUP, fwd, committed))
            .flatten()
        {
            let (Ok(first), Ok(count)) = (record::seq_of(&k), group::count(&v)) else {
                continue;
            };
            groups.push((first, count as u64));
            n += match known.get(&first) {
                Some(left) => *left,
                None => match self.tree.get(key(DONE, fwd, first)) {
                    Ok(Some(bits)) => group::Done::load(count, &bits).left(),
                    _ => count,
                },
            };
        }
        // Own records of group entries are counted with their group.
        n + own
            .iter()
            .filter(|seq| {
                let i = groups.partition_point(|(first, _)| *first <= **seq);
                i == 0 || {
                    let (first, count) = groups[i - 1];
                    **seq >= first + count
                }
            })
            .count()
    }

    /// When the forward's oldest waiting update was received (ms since the
    /// epoch), if it has any.
    pub fn oldest(&self, fwd: u32) -> Result<Option<u64>, StoreError> {
        let first = self.scan(fwd, None, Some(u64::MAX), 1, |_| true)?;
        Ok(first.first().map(|j| j.received_ms))
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
        self.complete_many(fwd, &[seq])
    }

    /// Several jobs are done, recorded in one batch.
    pub fn complete_many(&self, fwd: u32, seqs: &[u64]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let mut live = self.live();
        self.finish_into(&mut live, fwd, seqs, &mut b)?;
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Records a failed attempt and when to try next, if the job still
    /// waits: as its own record, which wins over its group's entry.
    pub fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError> {
        let mut live = self.live();
        let waiting = live.own.contains(&(fwd, job.seq))
            || match self.group_of(&mut live, fwd, job.seq)? {
                Some((first, done)) => !done.is_set((job.seq - first) as usize),
                // A job completed or dead-lettered meanwhile must not come back.
                None => false,
            };
        if waiting {
            self.tree
                .insert(key(JOB, fwd, job.seq), record::encode(job))?;
            live.own.insert((fwd, job.seq));
        }
        Ok(())
    }

    /// Moves a job to the forward's dead letters, keeping its last error.
    pub fn bury(&self, fwd: u32, job: &Job, now_ms: u64) -> Result<(), StoreError> {
        let mut dead = job.clone();
        dead.dead_at_ms = now_ms;
        let mut b = sled::Batch::default();
        let mut live = self.live();
        self.finish_into(&mut live, fwd, &[job.seq], &mut b)?;
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

    /// The Standard Webhooks message id of a stored update: the same on every
    /// retry, after every restart and after a replay, and different across
    /// installations.
    pub fn webhook_id(&self, job: &Job) -> String {
        format!("msg_{}{:016x}", self.instance, job.id_seq)
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }

    /// sled's flush, then the blob files it does not sync itself. Every
    /// flush after `open` goes through here, except `forward_id`'s blocking
    /// one, which syncs the blobs the same way.
    async fn durable(&self) -> Result<(), StoreError> {
        let result = async {
            self.db.flush_async().await?;
            self.blobs.sync()?;
            Ok::<(), StoreError>(())
        }
        .await;
        match &result {
            Ok(()) => self.health.worked(),
            Err(e) => self.health.failed(crate::clock::now_ms(), &e.to_string()),
        }
        result
    }

    /// Since when (ms since the epoch) writes fail, and the last error, if
    /// they do.
    pub fn failing(&self) -> Option<(u64, String)> {
        self.health.failing()
    }

    /// Whether this handle is beyond repair: sled keeps an I/O error for
    /// good, so once writes have failed a while with room on the disk again,
    /// only reopening the store helps (see health.rs).
    pub fn needs_restart(&self, now_ms: u64) -> bool {
        self.failing().is_some_and(|(since, _)| {
            health::needs_restart(since, now_ms, health::free_space(&self.dir))
        })
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

    /// Opens the store in `dir`, waiting while an earlier `Store` on it is
    /// still letting go: sled releases its file lock when its last
    /// background thread drops the database, a moment after our drop. A
    /// reopen in the same process can race that; a new process cannot.
    fn open(dir: &Path) -> Store {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir, 1 << 20) {
                Err(StoreError::Open { source, .. })
                    if source.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        (dir, s)
    }

    #[tokio::test]
    async fn append_then_reopen_keeps_jobs_offset_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (fwd, seqs) = {
            let s = open(dir.path());
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
        let s = open(dir.path());
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

    /// Appends `n` updates (ids from `from`, 7 chats) for the forwards.
    async fn fill(s: &Store, from: i64, n: i64, forwards: &[u32]) {
        let updates: Vec<Update> = (from..from + n).map(|id| update(id, id % 7)).collect();
        let batch: Vec<Incoming> = updates
            .iter()
            .map(|update| Incoming { update, forwards })
            .collect();
        s.append("b", &batch, Some(from + n), 5).await.unwrap();
    }

    fn ids(jobs: &[Job]) -> Vec<i64> {
        jobs.iter().filter_map(|j| j.update_id).collect()
    }

    #[tokio::test]
    async fn groups_finish_out_of_order_survive_a_reopen_and_leave_no_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, left) = {
            let s = open(dir.path());
            let (a, b) = (
                s.forward_id("b", "a").unwrap(),
                s.forward_id("b", "b").unwrap(),
            );
            // 100 updates make several groups per forward.
            fill(&s, 1, 100, &[a, b]).await;
            let groups = s.tree.scan_prefix([GROUP]).count();
            assert!(groups >= 4, "only {groups} groups");
            assert_eq!((s.depth(a), s.depth(b)), (100, 100));
            let jobs = s.pending(a, None, 1000).unwrap();
            assert_eq!(ids(&jobs), (1..=100).collect::<Vec<_>>());
            // Every third one, last first, plus one retried then delivered.
            let mut done: Vec<u64> = jobs.iter().step_by(3).map(|j| j.seq).collect();
            done.reverse();
            let mut retried = jobs[1].clone();
            retried.attempts = 2;
            s.reschedule(a, &retried).unwrap();
            s.complete_many(a, &done).unwrap();
            s.complete(a, retried.seq).unwrap();
            let left: Vec<i64> = ids(&s.pending(a, None, 1000).unwrap());
            assert_eq!(left.len(), 100 - done.len() - 1);
            assert_eq!(s.depth(a), left.len());
            assert_eq!(
                s.pending(b, None, 1000).unwrap().len(),
                100,
                "forward b untouched"
            );
            (a, b, left)
        };
        let s = open(dir.path());
        let jobs = s.pending(a, None, 1000).unwrap();
        assert_eq!(ids(&jobs), left, "finished jobs came back after a reopen");
        // A cursor in the middle of a group, and a limit.
        let after = jobs[10].seq;
        let page = s.pending(a, Some(after), 5).unwrap();
        assert_eq!(ids(&page), left[11..16]);
        let seqs: Vec<u64> = jobs.iter().map(|j| j.seq).collect();
        s.complete_many(a, &seqs).unwrap();
        assert_eq!(s.depth(a), 0);
        let all_b: Vec<u64> = s
            .pending(b, None, 1000)
            .unwrap()
            .iter()
            .map(|j| j.seq)
            .collect();
        s.complete_many(b, &all_b).unwrap();
        for prefix in [GROUP, DONE, JOB] {
            assert_eq!(
                s.tree.scan_prefix([prefix]).count(),
                0,
                "{} keys left",
                prefix as char
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_group_entry_is_set_aside_and_its_group_moves_on() {
        let (_d, s) = store();
        let f = s.forward_id("b", "f").unwrap();
        fill(&s, 1, 3, &[f]).await;
        let (k, v) = s.tree.scan_prefix([GROUP]).next().unwrap().unwrap();
        let whole = Bytes::from(v.to_vec());
        let second = group::entries(&whole).unwrap()[1].clone();
        let mut bad = whole.to_vec();
        bad[second.start] = 9; // an unknown record version
        s.tree.insert(&k, bad).unwrap();
        assert_eq!(ids(&s.pending(f, None, 10).unwrap()), [1, 3]);
        assert_eq!(s.tree.scan_prefix([DAMAGED]).count(), 1);
        assert_eq!(s.depth(f), 2);
        // A group whose header is damaged goes aside whole.
        fill(&s, 4, 2, &[f]).await;
        let (k, _) = s.tree.scan_prefix([GROUP]).last().unwrap().unwrap();
        s.tree.insert(&k, &b"\x07"[..]).unwrap();
        assert_eq!(ids(&s.pending(f, None, 10).unwrap()), [1, 3]);
        assert_eq!(s.tree.scan_prefix([DAMAGED]).count(), 2);
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
        let first = open(dir.path()).webhook_id(&job(5));
        let again = open(dir.path()).webhook_id(&job(5));
        let other_dir = tempfile::tempdir().unwrap();
        let other = open(other_dir.path()).webhook_id(&job(5));
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    /// An update of `size` bytes, most of them Cyrillic text (2 bytes a letter).
    fn long_update(id: i64, chat: i64, size: usize) -> Update {
        let text = "д".repeat(size / 2);
        let json =
            format!(r#"{{"update_id":{id},"message":{{"chat":{{"id":{chat}}},"text":"{text}"}}}}"#);
        let raw: Box<RawValue> = serde_json::from_str(&json).unwrap();
        Update::parse(&raw).unwrap()
    }

    /// Appends a batch of 25 long updates, one per chat, ids from `id + 1`.
    async fn append_long(s: &Store, forwards: &[u32], id: &mut i64, size: usize) {
        let updates: Vec<Update> = (0..25)
            .map(|chat| {
                *id += 1;
                long_update(*id, chat, size)
            })
            .collect();
        let batch: Vec<Incoming> = updates
            .iter()
            .map(|update| Incoming { update, forwards })
            .collect();
        s.append("b", &batch, Some(*id + 1), 5).await.unwrap();
    }

    fn blob_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("db").join("blobs"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// sled puts a page over a quarter segment in a blob file and never
    /// fsyncs it. With sled's default segments, leaves of 8 KiB updates
    /// (a 4,096-letter Cyrillic message) and 40 KiB ones went there.
    #[tokio::test]
    async fn long_updates_stay_in_the_fsynced_log_not_in_blob_files() {
        for size in [8_000, 40_000] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path());
            let f = s.forward_id("b", "f").unwrap();
            let forwards = [f];
            let mut id = 0;
            for _ in 0..16 {
                append_long(&s, &forwards, &mut id, size).await;
            }
            // Own records (retry state) and dead letters carry payloads too.
            let jobs = s.pending(f, None, 1000).unwrap();
            assert_eq!(jobs.len(), 400);
            for (i, job) in jobs.iter().enumerate() {
                match i % 3 {
                    0 => s.bury(f, job, 9).unwrap(),
                    1 => s.reschedule(f, job).unwrap(),
                    _ => {}
                }
            }
            s.flush().await.unwrap();
            drop(s);
            let s = open(dir.path());
            assert_eq!(s.dead_letters(f).unwrap().len(), 134, "{size} bytes");
            assert_eq!(s.pending(f, None, 1000).unwrap().len(), 266);
            assert_eq!(blob_files(dir.path()), 0, "{size}-byte updates");
        }
    }

    /// A state directory made by an older pollhook keeps sled's 512 KiB
    /// segments, where leaves of long updates go to blob files: each flush
    /// of the store syncs them, which sled itself never does.
    #[tokio::test]
    async fn blob_files_of_small_segment_directories_are_synced_by_every_flush() {
        let dir = tempfile::tempdir().unwrap();
        sled::Config::new()
            .path(dir.path().join("db"))
            .segment_size(512 * 1024)
            .open()
            .unwrap()
            .flush()
            .unwrap();
        let s = open(dir.path());
        let f = s.forward_id("b", "f").unwrap();
        let forwards = [f];
        let mut id = 0;
        let mut most = 0;
        for _ in 0..8 {
            append_long(&s, &forwards, &mut id, 40_000).await;
            // Listed before looking at what was synced, so a blob sled
            // writes later is not counted against the append.
            let on_disk: Vec<(std::ffi::OsString, u64)> =
                std::fs::read_dir(dir.path().join("db").join("blobs"))
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        (e.file_name(), e.metadata().unwrap().len())
                    })
                    .collect();
            let synced = s.blobs.synced();
            for (name, len) in &on_disk {
                assert_eq!(synced.get(name), Some(len), "blob {name:?} not synced");
            }
            most = most.max(on_disk.len());
        }
        assert!(
            most > 0,
            "the test wrote no blob files, so it proved nothing"
        );
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.pending(f, None, 1000).unwrap().len(), 200);
    }

    #[tokio::test]
    async fn a_state_directory_made_with_other_sled_segments_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .segment_size(512 * 1024)
                .open()
                .unwrap();
            db.flush().unwrap();
        }
        let s = open(dir.path());
        fill(&s, 1, 3, &[s.forward_id("b", "f").unwrap()]).await;
        drop(s);
        let s = open(dir.path());
        assert_eq!(
            s.pending(s.forward_id("b", "f").unwrap(), None, 9)
                .unwrap()
                .len(),
            3
        );
    }
}
