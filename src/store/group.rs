//! A group: the jobs of one polled batch for one forward, stored as one
//! record. sled pays a fixed price per key written or removed (a tree walk,
//! a page link, a log entry, an epoch-deferred free), and that price, paid
//! twice per update, was most of pollhook's CPU; one key per group pays it
//! once per group instead.
//!
//! ```text
//! version u8 (2) | count u16 | count × (len u32 | job record)
//! version u8 (3) | count u16 | plain length u32 | LZ4 block of the above's entries
//! ```
//!
//! A group is written compressed (version 3) whenever that is smaller. sled
//! copies, logs and fsyncs every byte of a group more than once (a leaf is
//! rewritten whole into the log every tenth change), and that was the part
//! of its CPU that grows with the payload (BENCHMARKS.md, 2026-12-02);
//! JSON updates of one batch share most of their keys and compress well.
//!
//! Entry `i` is the job with sequence number `first + i`: a batch's jobs for
//! one forward get consecutive numbers. Which entries are finished is kept
//! in memory and, lazily, in a bitmap record beside the group; the group is
//! removed when every entry is finished.

use std::ops::Range;

use bytes::Bytes;

use super::StoreError;

const VERSION: u8 = 2;
const COMPRESSED: u8 = 3;
/// LZ4 cannot expand a block by more than this factor (a run is at most 255
/// bytes per byte), so a larger stated length is damage, refused before
/// anything is allocated for it.
const MAX_EXPANSION: usize = 255;

/// A group closes at about this many stored bytes (or at `MAX_ENTRIES`),
/// so that a sled leaf (up to ~17 keys) of groups stays far under sled's
/// blob threshold (see `SEGMENT_SIZE`): sled writes bigger pages to blob
/// files it never fsyncs.
pub const MAX_BYTES: usize = 6 * 1024;
pub const MAX_ENTRIES: usize = 256;
/// What a group may hold before compression when its entries compress:
/// sled's price per key is paid per group, so a group holds about as much as
/// still stores in `MAX_BYTES`, up to this.
const MAX_PLAIN: usize = 48 * 1024;

/// Builds one group record from job records.
pub struct Builder {
    buf: Vec<u8>,
    count: u16,
    /// Plain bytes at which the group closes.
    limit: usize,
}

impl Builder {
    /// A group that closes at `limit` plain bytes: what the last group's
    /// compression says fits in `MAX_BYTES` stored (see `finish`), so no
    /// group is compressed twice to find out.
    pub fn new(limit: usize) -> Builder {
        let limit = limit.clamp(MAX_BYTES, MAX_PLAIN);
        let mut buf = Vec::with_capacity(limit + 512);
        buf.push(VERSION);
        buf.extend_from_slice(&0u16.to_be_bytes());
        Builder {
            buf,
            count: 0,
            limit,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the group should close before taking another entry.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= self.limit || self.count as usize >= MAX_ENTRIES
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

    /// The group record, compressed when that is smaller, and the plain
    /// size the next group may take to store in about `MAX_BYTES`.
    pub fn finish(mut self) -> (Vec<u8>, usize) {
        self.buf[1..3].copy_from_slice(&self.count.to_be_bytes());
        let plain = &self.buf[3..];
        let mut out = vec![0; 7 + lz4_flex::block::get_maximum_output_size(plain.len())];
        match lz4_flex::block::compress_into(plain, &mut out[7..]) {
            Ok(n) if n + 4 < plain.len() => {
                let next = (MAX_BYTES * plain.len() / n.max(1)).clamp(MAX_BYTES, MAX_PLAIN);
                out.truncate(7 + n);
                out[0] = COMPRESSED;
                out[1..3].copy_from_slice(&self.count.to_be_bytes());
                out[3..7].copy_from_slice(&(plain.len() as u32).to_be_bytes());
                (out, next)
            }
            _ => (self.buf, MAX_BYTES),
        }
    }
}

/// How many entries a group record holds, read from its header alone.
pub fn count(value: &[u8]) -> Result<usize, StoreError> {
    match value {
        [VERSION | COMPRESSED, hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo]) as usize),
        [v, ..] => Err(StoreError::Corrupt(format!(
            "group record has unknown version {v}"
        ))),
        [] => Err(StoreError::Corrupt("group record is empty".into())),
    }
}

/// A group record opened for reading.
pub struct Opened {
    /// Its plain form (version 2).
    pub plain: Bytes,
    /// The byte range of every entry's job record in `plain`.
    pub entries: Vec<Range<usize>>,
    /// Whether `plain` was decompressed: a job read from it then takes a
    /// copy of its payload, because a slice would keep the whole group (up
    /// to `MAX_PLAIN`) alive as long as the job is in memory, and a
    /// forward's window of 4,096 jobs could hold as many groups.
    pub decompressed: bool,
}

/// Opens a group record, decompressing it if it was stored compressed.
pub fn open(value: Bytes) -> Result<Opened, StoreError> {
    let (plain, decompressed) = match value.first() {
        Some(&COMPRESSED) => (Bytes::from(decompress(&value)?), true),
        _ => (value, false),
    };
    let entries = entries(&plain)?;
    Ok(Opened {
        plain,
        entries,
        decompressed,
    })
}

fn decompress(value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let damaged = |what: &str| StoreError::Corrupt(format!("compressed group record {what}"));
    let (Some(header), Some(block)) = (value.get(..7), value.get(7..)) else {
        return Err(damaged("is truncated"));
    };
    let len = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if len > block.len().saturating_mul(MAX_EXPANSION) {
        return Err(damaged("states a length its block cannot hold"));
    }
    let mut plain = vec![0; 3 + len];
    plain[0] = VERSION;
    plain[1..3].copy_from_slice(&header[1..3]);
    match lz4_flex::block::decompress_into(block, &mut plain[3..]) {
        Ok(n) if n == len => Ok(plain),
        Ok(_) => Err(damaged("is shorter than it states")),
        Err(e) => Err(damaged(&format!("does not decompress: {e}"))),
    }
}

/// The byte range of every entry's job record, in order. A length that
/// runs past the end, or a count that does not match, is damage.
fn entries(value: &Bytes) -> Result<Vec<Range<usize>>, StoreError> {
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
        let mut b = Builder::new(MAX_BYTES);
        b.push(b"one");
        b.push(b"");
        b.push(b"three");
        let v = Bytes::from(b.finish().0);
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

    fn similar_records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!(r#"{{"update_id":{i},"message":{{"chat":{{"id":{i},"type":"private"}},"text":"hello {i}"}}}}"#).into_bytes())
            .collect()
    }

    #[test]
    fn a_group_is_stored_compressed_when_smaller_and_reads_back_the_same() {
        let records = similar_records(20);
        let mut b = Builder::new(MAX_BYTES);
        let mut plain = Builder::new(MAX_BYTES);
        for r in &records {
            b.push(r);
            plain.push(r);
        }
        let plain = plain.buf.len();
        let v = b.finish().0;
        assert_eq!(v[0], COMPRESSED);
        assert!(v.len() * 2 < plain, "{} bytes stored for {plain}", v.len());
        assert_eq!(count(&v).unwrap(), 20);
        let o = open(Bytes::from(v)).unwrap();
        assert!(o.decompressed);
        let got: Vec<&[u8]> = o.entries.iter().map(|r| &o.plain[r.clone()]).collect();
        assert_eq!(got, records.iter().map(Vec::as_slice).collect::<Vec<_>>());

        // Bytes that do not compress are stored as they are.
        let mut b = Builder::new(MAX_BYTES);
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        b.push(&noise);
        let v = b.finish().0;
        assert_eq!(v[0], VERSION);
        let o = open(Bytes::from(v)).unwrap();
        assert!(!o.decompressed);
        assert_eq!(&o.plain[o.entries[0].clone()], &noise[..]);
    }

    #[test]
    fn a_damaged_compressed_group_is_an_error_not_a_panic_or_a_huge_allocation() {
        let mut b = Builder::new(MAX_BYTES);
        for r in similar_records(20) {
            b.push(&r);
        }
        let v = b.finish().0;
        assert_eq!(v[0], COMPRESSED);
        for cut in 1..v.len() {
            assert!(
                open(Bytes::copy_from_slice(&v[..cut])).is_err(),
                "cut at {cut}"
            );
        }
        // A stated length no LZ4 block of this size can hold.
        let mut huge = v.clone();
        huge[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(open(Bytes::from(huge)).is_err());
        // Every single flipped byte: an error or the same entries, never a
        // panic (the decoder is bounds-checked).
        for i in 7..v.len() {
            let mut bad = v.clone();
            bad[i] ^= 0x55;
            let _ = open(Bytes::from(bad));
        }
    }

    /// Bytes LZ4 cannot compress (xorshift).
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_group_closes_by_size_or_count() {
        // Entries that do not compress: closed at MAX_BYTES.
        let mut b = Builder::new(MAX_BYTES);
        let mut n = 0;
        while !b.is_full() {
            b.push(&noise(1000, n));
            n += 1;
        }
        assert_eq!(count(&b.finish().0).unwrap(), 7);
        // Entries that compress: the next group may hold more, up to
        // MAX_PLAIN, and still stores in about MAX_BYTES.
        let records = similar_records(2000);
        let mut records = records.iter();
        let mut b = Builder::new(MAX_BYTES);
        while !b.is_full() {
            b.push(records.next().unwrap());
        }
        let (_, next) = b.finish();
        assert!(
            next > 2 * MAX_BYTES && next <= MAX_PLAIN,
            "next limit {next}"
        );
        let mut b = Builder::new(next);
        let mut plain = 0;
        while !b.is_full() {
            let r = records.next().unwrap();
            plain += r.len() + 4;
            b.push(r);
        }
        let entries = b.count as usize;
        let (v, again) = b.finish();
        assert!(
            (plain + 3 >= next || entries == MAX_ENTRIES) && plain < next + 200,
            "{plain} plain bytes in {entries} entries, limit {next}"
        );
        assert!(plain > MAX_BYTES * 2, "{plain} plain bytes");
        assert!(v.len() < 2 * MAX_BYTES, "{} bytes stored", v.len());
        assert!(again > 2 * MAX_BYTES);
        // A group that does not compress sets the limit back.
        let mut b = Builder::new(next);
        b.push(&noise(100, 3));
        assert_eq!(b.finish().1, MAX_BYTES);
        let mut b = Builder::new(MAX_BYTES);
        while !b.is_full() {
            b.push(b"x");
        }
        assert_eq!(count(&b.finish().0).unwrap(), MAX_ENTRIES);
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
