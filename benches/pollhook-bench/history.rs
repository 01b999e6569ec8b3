//! The `history` scenario: what keeping history costs the hot path. The
//! `throughput` workload (100,000 updates over 100 chats to the fast
//! backend) with history on (the defaults: `history = "24h"`,
//! `history_max_mb = 512`, far more than the run writes, so nothing is
//! trimmed) and off (`history = "0s"`), in paired rounds alternating which
//! goes first; each pair's ratio and the median of the ratios. Single rounds
//! of the same build move by a third on this shared machine, so only the
//! paired median means anything. Then a short part with
//! `history_max_mb = 2`: the history directory sampled while several times
//! that is written, its largest size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::figures::{loadavg, per_100k, quantile};
use crate::nats::free_port;
use crate::proc::{self, Child, Config};
use crate::{row, run_throughput_with, Relay};

const BOT: &str = "b0";
/// After the last delivery, before the disk and CPU counters are read: the
/// history writer flushes every ~100 ms and sled its finished entries
/// every 100 ms, so both runs' late writes are in, and a second of an idle
/// relay adds ~1 ms of CPU.
const SETTLE: Duration = Duration::from_secs(1);
/// The cap of the trimming part, and the bound it must keep.
const SMALL_MB: u64 = 2;
const MIB: f64 = 1024.0 * 1024.0;

pub struct Sizes {
    pub updates: i64,
    pub pairs: usize,
    pub trim_updates: i64,
}

impl Sizes {
    pub fn new(
        quick: bool,
        updates: Option<i64>,
        pairs: Option<usize>,
        trim: Option<i64>,
    ) -> Sizes {
        Sizes {
            updates: updates.unwrap_or(if quick { 20_000 } else { 100_000 }),
            pairs: pairs.unwrap_or(if quick { 6 } else { 10 }).max(1),
            trim_updates: trim.unwrap_or(if quick { 20_000 } else { 50_000 }),
        }
    }
}

/// One relay's run of the workload.
struct Measured {
    rate: f64,
    /// Relay CPU seconds through `SETTLE` after the last delivery.
    cpu: f64,
    /// `/proc/<pid>/io` `write_bytes` through `SETTLE` after the last delivery.
    write_bytes: u64,
    /// The history directory: its files' bytes and its allocated blocks.
    history_bytes: u64,
    history_blocks: u64,
    /// From `/metrics`, when the relay exports them.
    dropped: Option<f64>,
    /// History on: `GET /history` lines for the bot, and how many of them
    /// say the forward delivered it; whether `limit` cut the answer.
    kept: Option<Kept>,
}

#[derive(Clone, Copy)]
struct Kept {
    updates: u64,
    delivered: u64,
    more: bool,
}

/// What `history` prints: the pairs (a table of their own) and the summary
/// rows for the scenarios' table.
pub struct Report {
    pub pairs: String,
    pub rows: String,
}

pub async fn history(sizes: Sizes) -> Report {
    let Sizes {
        updates,
        pairs,
        trim_updates,
    } = sizes;
    let load_before = loadavg();
    let mut table = vec![
        format!("load average before: {load_before}"),
        String::new(),
        "| pair | first | on (updates/s) | off (updates/s) | on / off | CPU per 100k on / off | disk written on / off | history dir at the end (on) | `GET /history`: updates / delivered; records dropped (on) |".to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let (mut ons, mut offs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 1..=pairs {
        // Alternate which goes first: a machine that slows down or speeds
        // up during a pair favours neither.
        let on_first = pair % 2 == 1;
        let (on, off) = if on_first {
            let on = measure(updates, true).await;
            (on, measure(updates, false).await)
        } else {
            let off = measure(updates, false).await;
            (measure(updates, true).await, off)
        };
        let ratio = on.rate / off.rate;
        let line = format!(
            "| {pair} | {} | {:.0} | {:.0} | {ratio:.3}× | {:.2} s / {:.2} s | {} / {} | {} | {}; {} |",
            if on_first { "on" } else { "off" },
            on.rate,
            off.rate,
            per_100k(on.cpu, updates),
            per_100k(off.cpu, updates),
            mb(on.write_bytes),
            mb(off.write_bytes),
            dir_size(&on),
            kept_text(on.kept),
            on.dropped.map_or("-".into(), |d| format!("{d:.0}")),
        );
        eprintln!("{line}");
        table.push(line);
        ratios.push(ratio);
        ons.push(on);
        offs.push(off);
    }
    let trim = trim_run(trim_updates).await;
    let load_after = loadavg();
    table.push(String::new());
    table.push(format!("load average after: {load_after}"));

    let rates = |v: &[Measured]| median(v.iter().map(|m| m.rate).collect());
    let cpus = |v: &[Measured]| median(v.iter().map(|m| per_100k(m.cpu, updates)).collect());
    let writes = |v: &[Measured]| median(v.iter().map(|m| m.write_bytes as f64).collect());
    let dirs = |v: &[Measured]| median(v.iter().map(|m| m.history_blocks as f64).collect());
    let ratio = median(ratios.clone());
    let (lo, q1, q3, hi) = (
        quantile(&ratios, 0.0),
        quantile(&ratios, 0.25),
        quantile(&ratios, 0.75),
        quantile(&ratios, 1.0),
    );
    let (cpu_on, cpu_off) = (cpus(&ons), cpus(&offs));
    let (w_on, w_off) = (writes(&ons), writes(&offs));
    let all_kept = ons.iter().all(|m| {
        m.kept
            .is_some_and(|k| !k.more && k.updates == updates as u64 && k.delivered == k.updates)
    });
    let mut kept_all: Vec<String> = ons.iter().map(|m| kept_text(m.kept)).collect();
    kept_all.dedup();
    let kept_all = kept_all.join(", ");
    // None when no on run exported the counter.
    let dropped = ons.iter().filter_map(|m| m.dropped).reduce(|a, b| a + b);
    let dropped_text = dropped.map_or("not exported".into(), |d| format!("{d:.0}"));
    let rows = [
        row(
            &format!(
                "history on / off, {updates} updates (updates/s, median of {pairs} paired ratios; baseline: history off)"
            ),
            &format!("{:.0}", rates(&offs)),
            &format!("{:.0}", rates(&ons)),
            Some(ratio),
            "≥ 0.95× history off",
            Some(ratio >= 0.95),
        ),
        row(
            "history on / off: the paired ratios' spread, min–max (interquartile)",
            "-",
            &format!("{lo:.3}×–{hi:.3}× ({q1:.3}×–{q3:.3}×)"),
            None,
            "-",
            None,
        ),
        row(
            "relay CPU per 100k updates, through 1 s after the last delivery (median)",
            &format!("{cpu_off:.2} s"),
            &format!("{cpu_on:.2} s"),
            Some(cpu_on / cpu_off),
            "-",
            None,
        ),
        row(
            "disk written by the relay per run (/proc/<pid>/io write_bytes, median)",
            &mb(w_off as u64),
            &mb(w_on as u64),
            Some(w_on / w_off),
            "-",
            None,
        ),
        row(
            &format!(
                "history directory at the end of a run (allocated, median; payload {})",
                mb(payload_bytes(updates))
            ),
            &mb(dirs(&offs) as u64),
            &mb(dirs(&ons) as u64),
            None,
            "< 512 MB (nothing trimmed)",
            Some(dirs(&ons) < 512.0 * MIB),
        ),
        row(
            &format!(
                "history kept per on run: `GET /history` updates / delivered (records dropped: {dropped_text})"
            ),
            "-",
            &kept_all,
            None,
            &format!("{updates}/{updates}, 0 dropped"),
            Some(all_kept && dropped.is_none_or(|d| d == 0.0)),
        ),
        row(
            &format!(
                "history_max_mb = {SMALL_MB}, {trim_updates} updates: history dir's largest sample, files (allocated); {} samples",
                trim.samples
            ),
            "-",
            &format!(
                "{:.3} MiB = {} B ({:.3} MiB = {} B)",
                trim.max_bytes as f64 / MIB,
                trim.max_bytes,
                trim.max_blocks as f64 / MIB,
                trim.max_blocks
            ),
            None,
            &format!("≤ {SMALL_MB} MiB"),
            Some(trim.max_bytes <= SMALL_MB << 20),
        ),
        row(
            &format!(
                "history_max_mb = {SMALL_MB}: history written (the segments seen, at their largest), segments seen / left at the end; dropped"
            ),
            "-",
            &format!(
                "≥ {:.1} MiB = {:.1}× the cap; {} / {}; {}",
                trim.written as f64 / MIB,
                trim.written as f64 / (SMALL_MB << 20) as f64,
                trim.segments_seen,
                trim.segments_left,
                trim.dropped.map_or("-".into(), |d| format!("{d:.0}")),
            ),
            None,
            "several × the cap",
            Some(trim.written >= 3 * (SMALL_MB << 20)),
        ),
    ]
    .join("\n");
    Report {
        pairs: table.join("\n"),
        rows,
    }
}

/// One run of the workload, history on (the defaults) or off (`"0s"`).
async fn measure(updates: i64, on: bool) -> Measured {
    let admin = free_port();
    let cfg = Config {
        history: (!on).then_some("0s"),
        admin_port: Some(admin),
        ..Config::default()
    };
    let (run, ()) = run_throughput_with(updates, Relay::Pollhook, &cfg, |_| ()).await;
    tokio::time::sleep(SETTLE).await;
    let (cpu, write_bytes) = (run.child.cpu_seconds(), run.child.io_field("write_bytes:"));
    let dir = run.child.state_dir.join("history");
    let (history_bytes, history_blocks) = (proc::apparent(&dir), proc::du(&dir));
    let client = reqwest::Client::new();
    let dropped = metric(&client, admin, "pollhook_history_dropped_total").await;
    let kept = if on {
        kept(&client, admin, updates).await
    } else {
        None
    };
    let rate = run.rate;
    drop(run);
    Measured {
        rate,
        cpu,
        write_bytes,
        history_bytes,
        history_blocks,
        dropped,
        kept,
    }
}

/// The history directory, `history_max_mb = 2`, sampled every 5 ms while
/// the workload runs and `SETTLE` after.
struct Trim {
    max_bytes: u64,
    max_blocks: u64,
    samples: u64,
    /// The sum of every segment seen at its largest: a lower bound of what
    /// was written.
    written: u64,
    segments_seen: usize,
    segments_left: usize,
    dropped: Option<f64>,
}

async fn trim_run(updates: i64) -> Trim {
    let admin = free_port();
    let cfg = Config {
        history_max_mb: Some(SMALL_MB),
        admin_port: Some(admin),
        ..Config::default()
    };
    let (run, sampler) = run_throughput_with(updates, Relay::Pollhook, &cfg, |child: &Child| {
        Sampler::start(child.state_dir.join("history"))
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let dropped = metric(
        &reqwest::Client::new(),
        admin,
        "pollhook_history_dropped_total",
    )
    .await;
    let s = sampler.stop();
    let segments_left = files(&run.child.state_dir.join("history")).len();
    drop(run);
    Trim {
        max_bytes: s.max_bytes,
        max_blocks: s.max_blocks,
        samples: s.samples,
        written: s.largest.values().sum(),
        segments_seen: s.largest.len(),
        segments_left,
        dropped,
    }
}

#[derive(Default)]
struct Samples {
    max_bytes: u64,
    max_blocks: u64,
    samples: u64,
    /// Per segment file, the largest length seen.
    largest: HashMap<PathBuf, u64>,
}

/// A thread walking a directory every 5 ms until stopped (plain blocking
/// file system calls, off the runtime's two workers).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut s = Samples::default();
            while !stopping.load(Ordering::Relaxed) {
                let (mut bytes, mut blocks) = (0, 0);
                for (path, len, allocated) in files(&dir) {
                    bytes += len;
                    blocks += allocated;
                    let largest = s.largest.entry(path).or_default();
                    *largest = (*largest).max(len);
                }
                s.max_bytes = s.max_bytes.max(bytes);
                s.max_blocks = s.max_blocks.max(blocks);
                s.samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            s
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler")
    }
}

/// Every file under `dir` (the history's per-bot directories): path,
/// length, allocated bytes. A file deleted while walking is left out.
fn files(dir: &Path) -> Vec<(PathBuf, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push((e.path(), meta.len(), meta.blocks() * 512));
        }
    }
    out
}

/// A counter or gauge for the bot from `/metrics`; None if not exported.
async fn metric(client: &reqwest::Client, admin: u16, name: &str) -> Option<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{name}{{bot=\"{BOT}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET /history` for the whole window: how many updates it lists, and
/// how many of them the forward delivered.
async fn kept(client: &reqwest::Client, admin: u16, updates: i64) -> Option<Kept> {
    let text = client
        .get(format!(
            "http://127.0.0.1:{admin}/history?bot={BOT}&limit={}",
            updates.clamp(1, 100_000)
        ))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .ok()?
        .text()
        .await
        .ok()?;
    let mut k = Kept {
        updates: 0,
        delivered: 0,
        more: false,
    };
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["more"] == true {
            k.more = true;
            continue;
        }
        k.updates += 1;
        if v["forwards"]["f"]["result"] == "delivered" {
            k.delivered += 1;
        }
    }
    Some(k)
}

fn median(v: Vec<f64>) -> f64 {
    quantile(&v, 0.5)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `GET /history`'s count: listed / delivered (`+`: `limit` cut it).
fn kept_text(k: Option<Kept>) -> String {
    match k {
        Some(k) => format!(
            "{}{}/{}",
            k.updates,
            if k.more { "+" } else { "" },
            k.delivered
        ),
        None => "?".into(),
    }
}

fn dir_size(m: &Measured) -> String {
    format!(
        "{} ({} in files)",
        mb(m.history_blocks),
        mb(m.history_bytes)
    )
}

fn payload_bytes(updates: i64) -> u64 {
    (1..=updates)
        .map(|id| crate::servers::update_json(id, 100).len() as u64)
        .sum()
}
