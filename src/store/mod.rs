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
//! m/replay/<id u64>     a replay from history in progress (requeue.rs)
//! ```
//!
//! Jobs are keyed by a local monotonic sequence number, never by update_id:
//! ids can jump down after a platform resets them. A new job lives in its
//! group; the first failed attempt writes it out as its own `j` record with
//! its retry state, so the schedule survives a restart. Finishing a job
//! sets its bit in memory; bitmaps are written, and finished groups
//! removed, in batches. A bit lost to a crash means a duplicate delivery,
//! never a loss.

mod append;
mod blobs;
mod dead;
pub mod dir;
mod durability;
mod finish;
mod group;
pub mod health;
mod meta;
mod queue;
mod record;
mod requeue;
mod scan;

pub use durability::SEGMENT_SIZE;
pub use queue::Queue;
pub use requeue::Requeue;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// The replicated queue (a cluster's JetStream) refused or did not
    /// answer; nothing was confirmed.
    #[error("the replicated queue: {0}")]
    Remote(String),
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
const GROUP: u8 = b'g';
const DONE: u8 = b'k';
const DEAD: u8 = b'd';
const DAMAGED: u8 = b'x';

/// sled's default: its thread also cleans old segments, which only it can
/// do, so it stays on.
const SLED_BACKGROUND_MS: u64 = 500;

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
    /// Plain bytes a new group may hold, learnt from how well the last
    /// group compressed (group.rs).
    group_limit: AtomicUsize,
    instance: String,
    live: Mutex<Live>,
    /// Shared with the blocking thread each flush runs on (durability.rs).
    blobs: Arc<blobs::Blobs>,
    /// The state directory, for free-space checks when writes fail.
    dir: PathBuf,
    health: health::Health,
    /// Each bot's offset as last flushed: what `/status` reports. The tree
    /// may hold a newer one whose flush failed, which was never confirmed.
    stored_offsets: Mutex<HashMap<String, i64>>,
    /// Told about every batch once it is durable (with each forward's seq).
    history: std::sync::OnceLock<crate::history::History>,
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
        Store::open_with(dir, cache_bytes, Some(SLED_BACKGROUND_MS))
    }

    /// `background_ms`: how often sled's own thread cleans segments and
    /// fsyncs its log between pollhook's flushes (None: never, so that a
    /// test sees what pollhook's flushes alone write; see blobs.rs).
    fn open_with(
        dir: &Path,
        cache_bytes: u64,
        background_ms: Option<u64>,
    ) -> Result<Store, StoreError> {
        let segments = durability::segment_size(&dir.join("db"));
        durability::drop_unfinished_snapshots(&dir.join("db"));
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
            .flush_every_ms(background_ms)
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
        let blobs = Arc::new(blobs::Blobs::new(dir.join("db")));
        blobs.sync()?;
        // Every bot's offset as it is on disk now: what `/status` reports
        // until an append is flushed (the tree may later hold an applied
        // offset whose flush failed, which was never confirmed).
        let mut stored_offsets = HashMap::new();
        for item in tree.scan_prefix(b"o") {
            let (k, v) = item?;
            stored_offsets.insert(
                String::from_utf8_lossy(&k[1..]).into_owned(),
                u64_from(&v)? as i64,
            );
        }
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
            group_limit: AtomicUsize::new(group::MAX_BYTES),
            instance,
            live: Mutex::new(live),
            blobs,
            dir: dir.to_path_buf(),
            health: health::Health::default(),
            stored_offsets: Mutex::new(stored_offsets),
            history: std::sync::OnceLock::new(),
        })
    }

    /// From now on, every batch made durable is also recorded in `history`.
    pub fn keep_history(&self, history: crate::history::History) {
        let _ = self.history.set(history);
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn offset_key(bot: &str) -> Vec<u8> {
    [b"o", bot.as_bytes()].concat()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
