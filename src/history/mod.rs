//! History: what each bot received, and what became of each update at each
//! forward, kept for a window after delivery so that an operator can look
//! (`pollhook history`, `show`) and send it again (`replay`, `resend`).
//!
//! Kept apart from the queue on purpose: the queue is sled, durable, and
//! on the hot path; history is a convenience, written by its own thread
//! into plain append-only segment files (segment.rs) and forgotten by
//! deleting whole files. A spike that kept history in the queue's sled tree
//! cost 5–13 % of throughput and doubled sled's writes (BENCHMARKS.md).
//!
//! A leaf beside the stages: the store (what was queued) and the
//! dispatchers (what became of it) feed it; `replay` and the admin API read
//! it. It imports none of them.

pub mod query;
pub mod record;
pub mod segment;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::platform::update::Update;
pub use record::{Fate, Outcome};

/// Bytes of records the writer may fall behind by before records are
/// dropped (counted): history's memory bound.
const MAX_QUEUED: usize = 32 << 20;

/// How long a bot's history is kept, and how much disk it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub window: Duration,
    pub max_bytes: u64,
}

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_MB: u64 = 512;

/// One bot's history: where it lives and what it holds now.
pub struct BotLog {
    pub name: String,
    pub dir: PathBuf,
    pub retention: Retention,
    /// Bytes on disk now (the writer's count).
    pub bytes: AtomicU64,
    /// Records not written: the writer was behind, or the disk failed.
    pub dropped: AtomicU64,
}

enum Msg {
    Append {
        bot: usize,
        bytes: Vec<u8>,
        records: u64,
    },
    /// Answered once everything sent before it is written.
    Sync(std::sync::mpsc::Sender<()>),
}

/// The handle the stages and the admin API share (cheap to clone).
#[derive(Clone)]
pub struct History {
    tx: Sender<Msg>,
    /// Bytes sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    logs: Arc<Vec<Arc<BotLog>>>,
    by_name: Arc<HashMap<String, usize>>,
}

impl History {
    /// Starts the writer for the bots that keep history; `off` are bots
    /// whose history is turned off (what an earlier run kept is deleted).
    pub fn start(state_dir: &Path, bots: &[(String, Option<Retention>)]) -> History {
        let mut logs = Vec::new();
        let mut off = Vec::new();
        for (name, retention) in bots {
            let dir = segment::bot_dir(state_dir, name);
            match retention {
                Some(retention) => logs.push(Arc::new(BotLog {
                    name: name.clone(),
                    dir,
                    retention: *retention,
                    bytes: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                })),
                None => off.push(dir),
            }
        }
        let by_name = logs
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        let (tx, rx) = channel();
        let for_writer = logs.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || writer::run(for_writer, off, rx, taken))
            .expect("a thread can be started at startup");
        History {
            tx,
            queued,
            logs: Arc::new(logs),
            by_name: Arc::new(by_name),
        }
    }

    /// For reading a stopped pollhook's history (the command line): the
    /// bots whose history directory exists, and no writer.
    pub fn reader(state_dir: &Path) -> History {
        let mut logs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(state_dir.join("history")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(bot) = name.strip_prefix("bot-") {
                    logs.push(Arc::new(BotLog {
                        name: bot.to_string(),
                        dir: e.path(),
                        retention: Retention {
                            window: Duration::MAX,
                            max_bytes: u64::MAX,
                        },
                        bytes: AtomicU64::new(0),
                        dropped: AtomicU64::new(0),
                    }));
                }
            }
        }
        let by_name = logs
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        // Nobody receives: what is sent is counted as dropped, and `sync`
        // returns at once.
        let (tx, _) = channel();
        History {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            logs: Arc::new(logs),
            by_name: Arc::new(by_name),
        }
    }

    /// The bot's history, if it keeps one.
    pub fn bot(&self, name: &str) -> Option<&Arc<BotLog>> {
        self.by_name.get(name).map(|i| &self.logs[*i])
    }

    pub fn bots(&self) -> &[Arc<BotLog>] {
        &self.logs
    }

    /// Records a batch just made durable in the queue: each update with the
    /// queue sequence number of each forward's copy (`seqs`: update index,
    /// forward id, seq).
    pub fn received(
        &self,
        bot: &str,
        batch: &[&Update],
        seqs: &mut [(usize, u32, u64)],
        received_ms: u64,
    ) {
        let Some(&i) = self.by_name.get(bot) else {
            return;
        };
        seqs.sort_unstable_by_key(|(u, fwd, _)| (*u, *fwd));
        let size: usize = batch.iter().map(|u| u.payload.len() + 64).sum();
        let mut bytes = Vec::with_capacity(size + seqs.len() * 12);
        let mut forwards = Vec::new();
        let mut at = 0;
        for (n, u) in batch.iter().enumerate() {
            forwards.clear();
            while let Some(&(idx, fwd, seq)) = seqs.get(at) {
                if idx != n {
                    break;
                }
                forwards.push((fwd, seq));
                at += 1;
            }
            record::encode_received(&mut bytes, u, received_ms, &forwards);
        }
        self.send(i, bytes, batch.len() as u64);
    }

    /// A forward's recorder of outcomes, if its bot keeps history.
    pub fn recorder(&self, bot: &str) -> Option<Recorder> {
        let &bot = self.by_name.get(bot)?;
        Some(Recorder {
            history: self.clone(),
            bot,
            buf: std::sync::Mutex::new(Pending::default()),
        })
    }

    fn send(&self, bot: usize, bytes: Vec<u8>, records: u64) {
        let n = bytes.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > MAX_QUEUED {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.logs[bot].dropped.fetch_add(records, Ordering::Relaxed);
            return;
        }
        let msg = Msg::Append {
            bot,
            bytes,
            records,
        };
        // An unbounded channel whose receiver (the writer) rarely sleeps in
        // it: sending wakes nobody; `queued` is the bound.
        if self.tx.send(msg).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.logs[bot].dropped.fetch_add(records, Ordering::Relaxed);
        }
    }

    /// Waits (at most `timeout`) until everything recorded so far is
    /// written, so a reader right after sees it.
    pub fn sync(&self, timeout: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Sync(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// Outcomes gathered per forward and handed to the writer together (at
/// most [`Recorder::LINGER`] late): one message per delivered update cost a
/// channel node and an allocation each on the dispatchers' hot path.
pub struct Recorder {
    history: History,
    bot: usize,
    buf: std::sync::Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    records: u64,
    since: Option<std::time::Instant>,
}

impl Recorder {
    pub const LINGER: Duration = Duration::from_millis(100);
    const FULL: usize = 64 << 10;

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what became of one attempt (or of the update) at the forward.
    pub fn outcome<S: AsRef<str>>(&self, o: &Outcome<S>) {
        let mut p = self.pending();
        record::encode_outcome(&mut p.bytes, o);
        p.records += 1;
        p.since.get_or_insert_with(std::time::Instant::now);
        if p.bytes.len() >= Self::FULL {
            self.hand_over(&mut p);
        }
    }

    /// How long until what is gathered must be handed over, if anything is.
    pub fn due_in(&self) -> Option<Duration> {
        self.pending()
            .since
            .map(|t| Self::LINGER.saturating_sub(t.elapsed()))
    }

    /// Hands over what is gathered if it waited long enough (`now`: at once).
    pub fn flush(&self, now: bool) {
        let mut p = self.pending();
        if p.since.is_some_and(|t| now || t.elapsed() >= Self::LINGER) {
            self.hand_over(&mut p);
        }
    }

    fn hand_over(&self, p: &mut Pending) {
        let bytes = std::mem::take(&mut p.bytes);
        let records = std::mem::take(&mut p.records);
        p.since = None;
        self.history.send(self.bot, bytes, records);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush(true);
    }
}
