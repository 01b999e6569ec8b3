//! Reading a bot's history: a scan across its segments from a point in
//! time (resumable at a cursor: what a replay persists), and the two views
//! an operator asks for, a listing and one update's whole story.
//!
//! Memory stays bounded by what is asked for, never by the history's
//! size: the scan holds one record at a time, a listing holds at most
//! `limit` entries, `show` one update and its deliveries.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::record::{self, Fate, Outcome, Received, Record};
use super::segment::{self, Reader, Segment};
use crate::platform::update::{chat_key, Lane};

/// Where a scan stands: the next record to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

/// Records of a bot's history in the order they were written, starting
/// with the first segment that may hold records received at `since_ms`
/// (or at `from`, a cursor saved earlier). Segments deleted meanwhile
/// (the window moved on) are skipped.
pub struct Scan {
    dir: PathBuf,
    segments: Vec<Segment>,
    next: usize,
    reader: Option<(Segment, Reader)>,
    /// Bytes of the segments passed or being read, for progress.
    pub scanned: u64,
    pub total: u64,
}

impl Scan {
    pub fn new(dir: &Path, since_ms: u64, from: Option<Cursor>) -> io::Result<Scan> {
        let all = segment::list(dir)?;
        let mut segments = segment::from(&all, since_ms).to_vec();
        if let Some(c) = from {
            segments.retain(|s| s.created_ms >= c.segment);
        }
        let total = segments.iter().map(|s| s.bytes).sum();
        let mut scan = Scan {
            dir: dir.to_path_buf(),
            segments,
            next: 0,
            reader: None,
            scanned: 0,
            total,
        };
        if let Some(c) = from {
            if scan
                .segments
                .first()
                .is_some_and(|s| s.created_ms == c.segment)
            {
                let seg = scan.segments[0];
                if let Ok(r) = Reader::open(&scan.dir, seg, c.offset) {
                    scan.reader = Some((seg, r));
                    scan.scanned = c.offset;
                }
                scan.next = 1;
            }
        }
        Ok(scan)
    }

    /// The position after the last record returned.
    pub fn cursor(&self) -> Option<Cursor> {
        self.reader.as_ref().map(|(seg, r)| Cursor {
            segment: seg.created_ms,
            offset: r.at,
        })
    }

    /// The next record's body (checksum verified), valid until the next call.
    pub fn next_body(&mut self) -> Option<&[u8]> {
        loop {
            if let Some((_, r)) = &mut self.reader {
                let before = r.at;
                if r.advance() {
                    self.scanned += r.at - before;
                    break;
                }
            }
            let seg = *self.segments.get(self.next)?;
            self.next += 1;
            if let Some((old, r)) = self.reader.take() {
                self.scanned += old.bytes.saturating_sub(r.at);
            }
            // Deleted by the window since listing: nothing left in it.
            if let Ok(r) = Reader::open(&self.dir, seg, 0) {
                self.reader = Some((seg, r));
            }
        }
        self.reader.as_ref().map(|(_, r)| r.body())
    }

    pub fn next_record(&mut self) -> Option<Record> {
        loop {
            let body = self.next_body()?;
            if let Some(r) = record::decode(body) {
                return Some(r);
            }
        }
    }
}

/// Which updates a listing or a replay is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub since_ms: u64,
    pub until_ms: u64,
    pub kind: Option<String>,
    pub chat: Option<String>,
    pub update_id: Option<i64>,
}

impl Filter {
    pub fn matches(&self, r: &Received) -> bool {
        r.received_ms >= self.since_ms
            && r.received_ms <= self.until_ms
            && self.kind.as_ref().is_none_or(|k| *k == r.kind)
            && self.update_id.is_none_or(|id| r.update_id == Some(id))
            && self
                .chat
                .as_ref()
                .is_none_or(|c| Lane::decode(&r.lane).chat() == Some(chat_key(c.clone()).as_str()))
    }
}

/// The chat of an update record, if it belongs to one.
fn chat_of(r: &Received) -> Option<String> {
    Lane::decode(&r.lane).chat().map(str::to_string)
}

/// Where one forward's delivery of a listed update stands.
struct Standing {
    fate: Option<Fate>,
    status: Option<u16>,
    attempts: u32,
    at: Option<u64>,
}

impl Standing {
    fn pending() -> Standing {
        Standing {
            fate: None,
            status: None,
            attempts: 0,
            at: None,
        }
    }

    fn apply(&mut self, o: &Outcome) {
        self.fate = Some(o.result);
        self.status = o.status;
        self.attempts = self.attempts.max(o.attempt);
        self.at = Some(o.at_ms);
    }

    fn json(&self) -> Value {
        json!({
            "result": self.fate.map_or("pending", Fate::as_str),
            "status": self.status,
            "attempts": self.attempts,
            "at": self.at,
        })
    }
}

struct Entry {
    received: Received,
    forwards: BTreeMap<String, Standing>,
}

/// The listing of `GET /history`: up to `limit` updates matching `filter`,
/// oldest first, each with where its delivery stands at each forward
/// (`names`: forward ids to names). Returns the lines, and whether the
/// limit cut the list.
pub fn list(
    dir: &Path,
    filter: &Filter,
    limit: usize,
    names: &HashMap<u32, String>,
) -> io::Result<(Vec<Value>, bool)> {
    let mut scan = Scan::new(dir, filter.since_ms, None)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut by_id: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut more = false;
    while let Some(body) = scan.next_body() {
        // Most records of a long history are updates outside the window:
        // judged by their time before anything is decoded.
        if let Some(at) = record::received_at(body) {
            if at < filter.since_ms || at > filter.until_ms {
                continue;
            }
        }
        match record::decode(body) {
            Some(Record::Received(mut r)) if filter.matches(&r) => {
                if entries.len() >= limit {
                    more = true;
                    continue;
                }
                // A listing shows no payloads: `limit` entries stay small.
                r.payload = Vec::new();
                let forwards = r
                    .forwards
                    .iter()
                    .map(|(fwd, _)| {
                        let name = names.get(fwd).cloned().unwrap_or_else(|| format!("#{fwd}"));
                        (name, Standing::pending())
                    })
                    .collect();
                if let Some(id) = r.update_id {
                    by_id.entry(id).or_default().push(entries.len());
                }
                entries.push(Entry {
                    received: r,
                    forwards,
                });
            }
            Some(Record::Outcome(o)) => {
                let Some(id) = o.update_id else { continue };
                for &i in by_id.get(&id).into_iter().flatten() {
                    entries[i]
                        .forwards
                        .entry(o.forward.clone())
                        .or_insert_with(Standing::pending)
                        .apply(&o);
                }
            }
            _ => {}
        }
    }
    let lines = entries
        .iter()
        .map(|e| {
            json!({
                "received_at": e.received.received_ms,
                "update_id": e.received.update_id,
                "kind": e.received.kind,
                "chat": chat_of(&e.received),
                "forwards": e.forwards.iter().map(|(k, v)| (k.clone(), v.json())).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    Ok((lines, more))
}

/// Deliveries `show` lists for one update, at most.
const MAX_DELIVERIES: usize = 1000;

/// One update's story for `GET /history/show` (as JSON text): its latest
/// receipt, its exact JSON, and every recorded attempt at every forward, oldest first.
pub fn show(dir: &Path, bot: &str, update_id: i64) -> io::Result<Option<String>> {
    let mut scan = Scan::new(dir, 0, None)?;
    let mut found: Option<Received> = None;
    let mut deliveries = Vec::new();
    while let Some(record) = scan.next_record() {
        match record {
            Record::Received(r) if r.update_id == Some(update_id) => found = Some(r),
            Record::Outcome(o)
                if o.update_id == Some(update_id)
                    && found.is_some()
                    && deliveries.len() < MAX_DELIVERIES =>
            {
                deliveries.push(json!({
                    "forward": o.forward,
                    "at": o.at_ms,
                    "result": o.result.as_str(),
                    "status": o.status,
                    "attempt": o.attempt,
                    "ms": o.ms,
                    "error": (!o.error.is_empty()).then_some(&o.error),
                    "replay": o.replay,
                }));
            }
            _ => {}
        }
    }
    // Each forward hands its outcomes over on its own (history/mod.rs:
    // `Recorder`), so the file interleaves forwards out of time order.
    deliveries.sort_by_key(|d| d["at"].as_u64());
    Ok(found.map(|r| {
        // The update exactly as the platform sent it (byte for byte, key
        // order too); text if it was not JSON at all.
        let text = String::from_utf8_lossy(&r.payload).into_owned();
        let update = RawValue::from_string(text.clone()).unwrap_or_else(|_| {
            RawValue::from_string(Value::String(text).to_string()).expect("a JSON string")
        });
        let story = Story {
            bot,
            update_id,
            received_at: r.received_ms,
            kind: &r.kind,
            chat: chat_of(&r),
            update,
            deliveries,
        };
        serde_json::to_string(&story).expect("serialises")
    }))
}

#[derive(Serialize)]
struct Story<'a> {
    bot: &'a str,
    update_id: i64,
    received_at: u64,
    kind: &'a str,
    chat: Option<String>,
    update: Box<RawValue>,
    deliveries: Vec<Value>,
}
