//! The thread that writes history: the hot path hands it encoded records
//! and never waits for it (past a byte bound, records are dropped and
//! counted, never a delivery delayed). It coalesces what arrives into one
//! write per bot, rolls segments by size and age, and deletes whole
//! segments past the window or over the bot's byte budget.
//!
//! While records flow it wakes on a clock ([`LINGER`]) and drains the
//! channel without blocking in it, so senders never have a sleeping
//! receiver to wake: a profile of waking per record showed a futex wake and
//! two context switches per delivered update, 20 % of the relay's CPU.
//! Only after a quiet second does it block until the next record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tracing::{info, warn};

use super::segment::{self, Segment};
use super::{BotLog, Msg};
use crate::clock::now_ms;

/// How long records may wait to be coalesced: what a SIGKILL can lose of
/// history (never of the queue).
const LINGER: Duration = Duration::from_millis(50);
/// Quiet for this long, the writer blocks instead of waking on its clock.
const IDLE: Duration = Duration::from_secs(1);
/// How often segments are rolled by age and the window enforced.
const TICK: Duration = Duration::from_secs(1);

struct Bot {
    log: Arc<BotLog>,
    /// Closed segments, oldest first.
    closed: Vec<Segment>,
    current: Option<(File, Segment)>,
    pending: Vec<u8>,
    pending_records: u64,
    seg_max: u64,
    roll_every_ms: u64,
    last_warning: Option<Instant>,
}

impl Bot {
    fn open(log: Arc<BotLog>) -> Bot {
        let closed = segment::list(&log.dir).unwrap_or_else(|e| {
            warn!(bot = %log.name, "cannot list history in {}: {e}", log.dir.display());
            Vec::new()
        });
        let max = log.retention.max_bytes;
        let mut bot = Bot {
            seg_max: (max / 8).clamp(64 << 10, 64 << 20),
            roll_every_ms: (log.retention.window.as_millis() as u64 / 24).max(1000),
            closed,
            current: None,
            pending: Vec::new(),
            pending_records: 0,
            last_warning: None,
            log,
        };
        bot.trim(0, true);
        bot
    }

    /// Disk taken, counting each file in whole 4 KiB blocks as the file
    /// system allocates them: the budget is disk, not bytes written.
    fn total(&self) -> u64 {
        self.closed.iter().map(|s| on_disk(s.bytes)).sum::<u64>()
            + self.current.as_ref().map_or(0, |(_, s)| on_disk(s.bytes))
    }

    fn publish_size(&self) {
        self.log.bytes.store(self.total(), Ordering::Relaxed);
    }

    fn roll(&mut self) {
        if let Some((_, seg)) = self.current.take() {
            self.closed.push(seg);
        }
    }

    /// Deletes whole segments, oldest first, while the bot would hold more
    /// than its budget with `incoming` more bytes, or (`by_age`) while they
    /// are past the window (a stat per look: only on the clock's tick).
    fn trim(&mut self, incoming: u64, by_age: bool) {
        let cutoff = now_ms().saturating_sub(self.log.retention.window.as_millis() as u64);
        while let Some(oldest) = self.closed.first().copied() {
            let over = self.total() + on_disk(incoming) > self.log.retention.max_bytes;
            if !over
                && (!by_age || last_write_ms(&self.log.dir, oldest).is_some_and(|t| t >= cutoff))
            {
                break;
            }
            let path = self.log.dir.join(segment::file_name(oldest.created_ms));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.warn(format!("cannot delete {}: {e}", path.display()));
                    break;
                }
            }
            self.closed.remove(0);
        }
        self.publish_size();
    }

    /// Writes what is pending: into the current segment if it has room,
    /// else into a new one, after making room within the budget.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len() as u64;
        let records = std::mem::take(&mut self.pending_records);
        if on_disk(n) > self.log.retention.max_bytes {
            // One batch larger than the whole budget: nothing to keep.
            self.pending.clear();
            self.log.dropped.fetch_add(records, Ordering::Relaxed);
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, s)| s.bytes > 0 && on_disk(s.bytes + n) > self.seg_max)
        {
            self.roll();
        }
        self.trim(n, false);
        if self.total() + on_disk(n) > self.log.retention.max_bytes {
            // Only the current segment is left and it is too full: start
            // over with a new one.
            self.roll();
            self.trim(n, false);
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.current_file().and_then(|(f, seg)| {
            f.write_all(&pending)?;
            seg.bytes += n;
            Ok(())
        });
        self.pending = pending;
        if let Err(e) = result {
            // A half-written record is a torn tail: the next write goes to
            // a fresh segment, so readers stop only at this one's tear.
            self.roll();
            self.log.dropped.fetch_add(records, Ordering::Relaxed);
            self.warn(format!(
                "cannot write history: {e}; records dropped (deliveries are not affected)"
            ));
        }
        self.pending.clear();
        self.publish_size();
    }

    fn current_file(&mut self) -> io::Result<(&mut File, &mut Segment)> {
        if self.current.is_none() {
            crate::store::dir::create(&self.log.dir)?;
            // A name never used before, even if the clock stepped back.
            let newest = self.closed.last().map_or(0, |s| s.created_ms + 1);
            let created_ms = now_ms().max(newest);
            let path = self.log.dir.join(segment::file_name(created_ms));
            let mut opts = OpenOptions::new();
            opts.create_new(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let file = opts.open(path)?;
            self.current = Some((
                file,
                Segment {
                    created_ms,
                    bytes: 0,
                },
            ));
        }
        let (f, s) = self.current.as_mut().expect("just set");
        Ok((f, s))
    }

    fn tick(&mut self) {
        if let Some((_, seg)) = &self.current {
            if now_ms().saturating_sub(seg.created_ms) >= self.roll_every_ms {
                self.roll();
            }
        }
        self.trim(0, true);
    }

    fn warn(&mut self, what: String) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            warn!(bot = %self.log.name, "{what}");
            self.last_warning = Some(Instant::now());
        }
    }
}

/// A file of `bytes` in whole blocks.
fn on_disk(bytes: u64) -> u64 {
    bytes.div_ceil(4096) * 4096
}

/// When a segment was last written to (its newest record's time).
fn last_write_ms(dir: &std::path::Path, seg: Segment) -> Option<u64> {
    let modified = fs::metadata(dir.join(segment::file_name(seg.created_ms)))
        .and_then(|m| m.modified())
        .ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// What pending bytes of one bot may grow to before they are written.
const COALESCE: usize = 256 << 10;

pub fn run(logs: Vec<Arc<BotLog>>, off: Vec<PathBuf>, rx: Receiver<Msg>, queued: Arc<AtomicUsize>) {
    for dir in off {
        if dir.exists() {
            info!(
                "history is off for a bot (history = \"0s\"); deleting its kept history in {}",
                dir.display()
            );
            if let Err(e) = fs::remove_dir_all(&dir) {
                warn!("cannot delete {}: {e}", dir.display());
            }
        }
    }
    let mut bots: Vec<Bot> = logs.into_iter().map(Bot::open).collect();
    let mut next_tick = Instant::now() + TICK;
    let mut last_record = Instant::now();
    loop {
        let mut syncs = Vec::new();
        let mut first = None;
        if last_record.elapsed() >= IDLE {
            // Quiet: block (the one wake-up per burst), but still tick.
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(m) => first = Some(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            std::thread::sleep(LINGER);
        }
        let mut ended = false;
        let mut next = first;
        loop {
            let m = match next.take() {
                Some(m) => m,
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ended = true;
                        break;
                    }
                },
            };
            last_record = Instant::now();
            match m {
                Msg::Append {
                    bot,
                    bytes,
                    records,
                } => {
                    queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                    if let Some(b) = bots.get_mut(bot) {
                        b.pending.extend_from_slice(&bytes);
                        b.pending_records += records;
                        if b.pending.len() >= COALESCE.min(b.seg_max as usize / 2) {
                            b.flush();
                        }
                    }
                }
                Msg::Sync(done) => syncs.push(done),
            }
        }
        bots.iter_mut().for_each(Bot::flush);
        for done in syncs {
            let _ = done.send(());
        }
        if ended {
            return;
        }
        if Instant::now() >= next_tick {
            // A bot that has written nothing has nothing to roll or trim
            // (Bot::open trimmed what it found): with 10,000 idle bots,
            // ticking every bot each second was a steady share of the
            // relay's idle CPU (perf, BENCHMARKS.md).
            bots.iter_mut()
                .filter(|b| b.current.is_some() || !b.closed.is_empty())
                .for_each(Bot::tick);
            next_tick = Instant::now() + TICK;
        }
    }
    bots.iter_mut().for_each(Bot::flush);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, Retention};
    use crate::platform::update::Update;

    /// Disk taken, in whole blocks as the budget counts it.
    fn dir_bytes(dir: &std::path::Path) -> u64 {
        segment::list(dir)
            .unwrap()
            .iter()
            .map(|s| on_disk(s.bytes))
            .sum()
    }

    #[test]
    fn the_budget_holds_oldest_first_out() {
        let state = tempfile::tempdir().unwrap();
        let max = 256 << 10;
        let h = History::start(
            state.path(),
            &[(
                "b".into(),
                Some(Retention {
                    window: Duration::from_secs(3600),
                    max_bytes: max,
                }),
            )],
        );
        let dir = segment::bot_dir(state.path(), "b");
        let text = "x".repeat(900);
        let mut peak = 0;
        for i in 0..2000i64 {
            let u = Update::from_bytes(
                format!(r#"{{"update_id":{i},"message":{{"chat":{{"id":1}},"text":"{text}"}}}}"#)
                    .as_bytes(),
            )
            .unwrap();
            h.received("b", &[&u], &mut [(0, 1, i as u64)], 1);
            if i % 100 == 0 {
                h.sync(Duration::from_secs(5));
                peak = peak.max(dir_bytes(&dir));
            }
        }
        h.sync(Duration::from_secs(5));
        peak = peak.max(dir_bytes(&dir));
        assert!(
            peak <= max,
            "history took {peak} bytes, more than its {max}"
        );
        assert!(
            peak > max / 2,
            "the budget is used, not thrown away: {peak}"
        );
        let log = h.bot("b").unwrap();
        assert_eq!(log.bytes.load(Ordering::Relaxed), dir_bytes(&dir));
        // The newest are kept, the oldest went.
        let mut scan = crate::history::query::Scan::new(&dir, 0, None).unwrap();
        let mut ids = Vec::new();
        while let Some(crate::history::record::Record::Received(r)) = scan.next_record() {
            ids.push(r.update_id.unwrap());
        }
        assert_eq!(ids.last(), Some(&1999));
        assert!(ids[0] > 1000, "oldest kept: {}", ids[0]);
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "nothing missing in what is kept"
        );
    }

    #[test]
    fn segments_past_the_window_are_deleted_and_off_deletes_all() {
        let state = tempfile::tempdir().unwrap();
        let keep = Some(Retention {
            window: Duration::from_millis(1500),
            max_bytes: 1 << 30,
        });
        let h = History::start(state.path(), &[("b".into(), keep)]);
        let dir = segment::bot_dir(state.path(), "b");
        let u = Update::from_bytes(br#"{"update_id":1}"#).unwrap();
        h.received("b", &[&u], &mut [], 1);
        h.sync(Duration::from_secs(5));
        assert_eq!(segment::list(&dir).unwrap().len(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !segment::list(&dir).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the old segment stays");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(h);
        let h = History::start(state.path(), &[("b".into(), keep)]);
        h.received("b", &[&u], &mut [], 1);
        h.sync(Duration::from_secs(5));
        assert!(dir.exists());
        let off = History::start(state.path(), &[("b".into(), None)]);
        drop(h);
        off.sync(Duration::from_secs(5));
        assert!(!dir.exists(), "history = 0s forgets what was kept");
    }
}
