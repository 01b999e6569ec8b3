//! A group: the jobs of one polled batch for one forward, stored as one
//! record. sled pays a fixed price per key written or removed (a tree walk,
//! a page link, a log entry, an epoch-deferred free), and that price, paid
//! twice per update, was most of pollhook's CPU; one key per group pays it
//! once per group instead.
//!
//! ```text
//! version u8 (2) | count u16 | count × (len u32 | job record)
//! ```
//!
//! Entry `i` is the job with sequence number `first + i`: a batch's jobs for
//! one forward get consecutive numbers. Which entries are finished is kept
//! in memory and, lazily, in a bitmap record beside the group; the group is
//! removed when every entry is finished.

use std::ops::Range;

use bytes::Bytes;

use super::StoreError;

const VERSION: u8 = 2;

/// A group closes at this many bytes (or entries), so that a sled leaf (up
/// to ~17 keys) of groups stays far under sled's blob threshold (see
/// `SEGMENT_SIZE`): sled writes bigger pages to blob files it never fsyncs.
pub const MAX_BYTES: usize = 6 * 1024;
pub const MAX_ENTRIES: usize = 256;

/// Builds one group record from job records.
#[derive(Default)]
pub struct Builder {
    buf: Vec<u8>,
    count: u16,
}

impl Builder {
    pub fn new() -> Builder {
        let mut buf = Vec::with_capacity(MAX_BYTES + 512);
        buf.push(VERSION);
        buf.extend_from_slice(&0u16.to_be_bytes());
        Builder { buf, count: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the group should close before taking another entry.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= MAX_BYTES || self.count as usize >= MAX_ENTRIES
    }

    /// Adds an entry that `write` appends to the buffer it is given.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
    }

    #[cfg(test)]
    pub fn push(&mut self, record: &[u8]) {
        self.push_with(|buf| buf.extend_from_slice(record));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[1..3].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

/// How many entries a group record holds, read from its header alone.
pub fn count(value: &[u8]) -> Result<usize, StoreError> {
    match value {
        [VERSION, hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo]) as usize),
        [v, ..] => Err(StoreError::Corrupt(format!(
            "group record has unknown version {v}"
        ))),
        [] => Err(StoreError::Corrupt("group record is empty".into())),
    }
}

/// The byte range of every entry's job record, in order. A length that
/// runs past the end, or a count that does not match, is damage.
pub fn entries(value: &Bytes) -> Result<Vec<Range<usize>>, StoreError> {
    let n = count(value)?;
    let mut out = Vec::with_capacity(n);
    let mut at = 3;
    for _ in 0..n {
        let len = value
            .get(at..at + 4)
            .ok_or_else(|| StoreError::Corrupt("group record is truncated".into()))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= value.len())
            .ok_or_else(|| StoreError::Corrupt("group entry runs past the record".into()))?;
        out.push(start..end);
        at = end;
    }
    if at != value.len() {
        return Err(StoreError::Corrupt(
            "group record has bytes after its last entry".into(),
        ));
    }
    Ok(out)
}

/// Which entries of a group are finished (delivered, dropped or moved to
/// dead letters).
#[derive(Debug, Clone)]
pub struct Done {
    bits: Vec<u8>,
    n: usize,
    left: usize,
    /// Whether a bitmap record exists in the store (so it must be removed
    /// with the group).
    pub saved: bool,
}

impl Done {
    pub fn none(n: usize) -> Done {
        Done {
            bits: vec![0; n.div_ceil(8)],
            n,
            left: n,
            saved: false,
        }
    }

    /// From a stored bitmap; bits past `n` are ignored, a short bitmap is
    /// padded (a damaged bitmap can only cause re-delivery, never loss).
    pub fn load(n: usize, stored: &[u8]) -> Done {
        let mut d = Done::none(n);
        for i in 0..n {
            if stored.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                d.set(i);
            }
        }
        d.saved = true;
        d
    }

    pub fn is_set(&self, i: usize) -> bool {
        self.bits
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Marks entry `i` finished; false if it already was (or is out of range).
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.n {
            return false;
        }
        match self.bits.get_mut(i / 8) {
            Some(b) if *b & (1 << (i % 8)) == 0 => {
                *b |= 1 << (i % 8);
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Entries in the group.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Entries not yet finished.
    pub fn left(&self) -> usize {
        self.left
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_an_error() {
        let mut b = Builder::new();
        b.push(b"one");
        b.push(b"");
        b.push(b"three");
        let v = Bytes::from(b.finish());
        let ranges = entries(&v).unwrap();
        let got: Vec<&[u8]> = ranges.iter().map(|r| &v[r.clone()]).collect();
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        assert_eq!(count(&v).unwrap(), 3);
        for cut in 1..v.len() {
            assert!(entries(&v.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = v.to_vec();
        longer.push(0);
        assert!(entries(&Bytes::from(longer)).is_err());
        assert!(count(&[1, 0, 1]).is_err());
    }

    #[test]
    fn a_group_closes_by_size_or_count() {
        let mut b = Builder::new();
        while !b.is_full() {
            b.push(&[0; 1000]);
        }
        assert_eq!(count(&b.finish()).unwrap(), 7);
        let mut b = Builder::new();
        while !b.is_full() {
            b.push(b"x");
        }
        assert_eq!(count(&b.finish()).unwrap(), MAX_ENTRIES);
    }

    #[test]
    fn done_bits_count_down_and_reload() {
        let mut d = Done::none(10);
        assert!(d.set(0) && d.set(9));
        assert!(!d.set(9), "set twice");
        assert!(!d.set(10), "out of range");
        assert_eq!(d.left(), 8);
        let back = Done::load(10, d.bytes());
        assert_eq!(
            (back.left(), back.is_set(9), back.is_set(1)),
            (8, true, false)
        );
        assert!(back.saved);
        assert_eq!(Done::load(10, &[]).left(), 10, "a short bitmap re-delivers");
    }
}
