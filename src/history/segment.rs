//! A bot's history on disk: a directory of append-only segment files named
//! by the time each was started, so that listing them is listing them in
//! time order, and forgetting the oldest is deleting a file (no compaction,
//! no rewriting: the queue's sled tree is never touched by history).

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::{self, Record};

const SUFFIX: &str = ".seg";

/// Where a bot's segments live. The prefix keeps a bot named `.` or `..`
/// (valid bot names) from naming a directory that is not its own.
pub fn bot_dir(state_dir: &Path, bot: &str) -> PathBuf {
    state_dir.join("history").join(format!("bot-{bot}"))
}

pub fn file_name(created_ms: u64) -> String {
    format!("{created_ms:016}{SUFFIX}")
}

/// A segment: when it was started, and its size when listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub created_ms: u64,
    pub bytes: u64,
}

/// The bot's segments, oldest first. A missing directory is an empty
/// history; files that are not segments are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<Segment>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(created_ms) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push(Segment { created_ms, bytes });
    }
    out.sort_by_key(|s| s.created_ms);
    Ok(out)
}

/// The segments that may hold records received at or after `since_ms`:
/// a segment's records are all older than the next segment's start.
pub fn from(segments: &[Segment], since_ms: u64) -> &[Segment] {
    let first = segments
        .windows(2)
        .position(|w| w[1].created_ms > since_ms)
        .unwrap_or(segments.len().saturating_sub(1));
    &segments[first..]
}

/// Reads one segment's records in order from byte `at`. Stops at the
/// first torn or damaged record: what follows it in that file is never
/// trusted (a crash leaves at most a torn tail; the writer then starts a
/// new file).
pub struct Reader {
    file: BufReader<File>,
    /// The offset of the next record.
    pub at: u64,
    body: Vec<u8>,
}

impl Reader {
    pub fn open(dir: &Path, seg: Segment, at: u64) -> io::Result<Reader> {
        let mut file = File::open(dir.join(file_name(seg.created_ms)))?;
        file.seek(SeekFrom::Start(at))?;
        Ok(Reader {
            file: BufReader::with_capacity(64 << 10, file),
            at,
            body: Vec::new(),
        })
    }

    /// Reads the next record's body (checksum verified) into [`Self::body`];
    /// false at the end.
    pub fn advance(&mut self) -> bool {
        let mut head = [0u8; 8];
        if self.file.read_exact(&mut head).is_err() {
            return false;
        }
        let Some((len, crc)) = record::header(head) else {
            return false;
        };
        self.body.resize(len, 0);
        if self.file.read_exact(&mut self.body).is_err() || crc32fast::hash(&self.body) != crc {
            return false;
        }
        self.at += 8 + len as u64;
        true
    }

    /// The body read by the last successful [`Self::advance`].
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn next_record(&mut self) -> Option<Record> {
        // A body that passed its checksum but does not decode (written by a
        // newer pollhook?) is skipped, not the end.
        while self.advance() {
            if let Some(r) = record::decode(&self.body) {
                return Some(r);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_list_in_time_order_and_from_skips_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        for t in [300u64, 100, 200] {
            fs::write(dir.path().join(file_name(t)), b"x").unwrap();
        }
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let segs = list(dir.path()).unwrap();
        let times: Vec<u64> = segs.iter().map(|s| s.created_ms).collect();
        assert_eq!(times, [100, 200, 300]);
        let from_at = |t| {
            from(&segs, t)
                .iter()
                .map(|s| s.created_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(from_at(0), [100, 200, 300]);
        assert_eq!(
            from_at(150),
            [100, 200, 300],
            "100's records reach up to 200"
        );
        assert_eq!(from_at(250), [200, 300]);
        assert_eq!(from_at(999), [300]);
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let u = crate::platform::update::Update::from_bytes(br#"{"update_id":1}"#).unwrap();
        let mut bytes = Vec::new();
        record::encode_received(&mut bytes, &u, 5, &[]);
        let one = bytes.len();
        record::encode_received(&mut bytes, &u, 6, &[]);
        let seg = Segment {
            created_ms: 1,
            bytes: 0,
        };
        let count = |data: &[u8]| {
            fs::write(dir.path().join(file_name(1)), data).unwrap();
            let mut r = Reader::open(dir.path(), seg, 0).unwrap();
            std::iter::from_fn(|| r.next_record()).count()
        };
        assert_eq!(count(&bytes), 2);
        assert_eq!(count(&bytes[..bytes.len() - 3]), 1, "torn tail");
        let mut flipped = bytes.clone();
        flipped[one + 20] ^= 1;
        assert_eq!(count(&flipped), 1, "bad checksum");
        fs::write(dir.path().join(file_name(1)), &bytes).unwrap();
        let mut r = Reader::open(dir.path(), seg, one as u64).unwrap();
        assert!(matches!(r.next_record(), Some(Record::Received(x)) if x.received_ms == 6));
    }
}
