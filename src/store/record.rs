//! How a job is laid out in sled: a small binary header, then the update's
//! exact bytes. Decoding never panics: a damaged record is an error the
//! caller can set aside.
//!
//! ```text
//! version u8 | attempts u32 | next_at u64 | received u64 | update_id i64
//! | id_seq u64 | dead_at u64 | replayed u64
//! | kind: u16 len + bytes | lane: u16 len + bytes | last_error: u16 len + bytes
//! | payload (the rest)
//! ```

use std::ops::Range;

use bytes::Bytes;

use super::{Job, StoreError};
use crate::platform::update::{Lane, Update};

const VERSION: u8 = 1;
/// Stored in place of the update_id of an update that had none.
const NO_UPDATE_ID: i64 = i64::MIN;

pub fn key(prefix: u8, fwd: u32, seq: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = prefix;
    k[1..5].copy_from_slice(&fwd.to_be_bytes());
    k[5..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number in a 13-byte job key.
pub fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    if key.len() != 13 {
        return Err(StoreError::Corrupt("job key has the wrong length".into()));
    }
    u64_from(&key[5..])
}

/// The forward id in a 13-byte job key.
pub fn fwd_of(key: &[u8]) -> Result<u32, StoreError> {
    if key.len() != 13 {
        return Err(StoreError::Corrupt("job key has the wrong length".into()));
    }
    u32_from(&key[1..5])
}

pub fn u64_from(v: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, found {}", v.len())))?;
    Ok(u64::from_be_bytes(arr))
}

pub fn u32_from(v: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("expected 4 bytes, found {}", v.len())))?;
    Ok(u32::from_be_bytes(arr))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Cut on a char boundary so the stored text stays valid UTF-8.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Everything a record holds, borrowed: built from a `Job`, or straight
/// from a freshly received `Update` (so its payload is copied only once,
/// into the record).
struct Fields<'a> {
    attempts: u32,
    next_at_ms: u64,
    received_ms: u64,
    update_id: Option<i64>,
    id_seq: u64,
    dead_at_ms: u64,
    replayed_ms: u64,
    kind: &'a str,
    lane: &'a Lane,
    last_error: &'a str,
    payload: &'a [u8],
}

fn write(f: &Fields<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    write_into(&mut out, f);
    out
}

fn write_into(out: &mut Vec<u8>, f: &Fields<'_>) {
    let lane = f.lane.encode();
    out.reserve(64 + f.kind.len() + lane.len() + f.last_error.len() + f.payload.len());
    out.push(VERSION);
    out.extend_from_slice(&f.attempts.to_be_bytes());
    out.extend_from_slice(&f.next_at_ms.to_be_bytes());
    out.extend_from_slice(&f.received_ms.to_be_bytes());
    out.extend_from_slice(&f.update_id.unwrap_or(NO_UPDATE_ID).to_be_bytes());
    out.extend_from_slice(&f.id_seq.to_be_bytes());
    out.extend_from_slice(&f.dead_at_ms.to_be_bytes());
    out.extend_from_slice(&f.replayed_ms.to_be_bytes());
    put_str(out, f.kind);
    put_str(out, &lane);
    put_str(out, f.last_error);
    out.extend_from_slice(f.payload);
}

pub fn encode(j: &Job) -> Vec<u8> {
    write(&Fields {
        attempts: j.attempts,
        next_at_ms: j.next_at_ms,
        received_ms: j.received_ms,
        update_id: j.update_id,
        id_seq: j.id_seq,
        dead_at_ms: j.dead_at_ms,
        replayed_ms: j.replayed_ms,
        kind: &j.kind,
        lane: &j.lane,
        last_error: &j.last_error,
        payload: &j.payload,
    })
}

/// Appends the record of a job for an update just received to `out` (a
/// group being built), so the payload is copied once.
pub fn encode_new_into(out: &mut Vec<u8>, u: &Update, seq: u64, received_ms: u64) {
    write_into(
        out,
        &Fields {
            attempts: 0,
            next_at_ms: 0,
            received_ms,
            update_id: u.update_id,
            id_seq: seq,
            dead_at_ms: 0,
            replayed_ms: 0,
            kind: &u.kind,
            lane: &u.lane,
            last_error: "",
            payload: &u.payload,
        },
    )
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
        let len = self.take(2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

/// Decodes a record; the payload is a view into sled's buffer, not a copy.
pub fn decode(key: &[u8], value: &sled::IVec) -> Result<Job, StoreError> {
    let seq = seq_of(key)?;
    let whole = Bytes::from_owner(value.clone());
    decode_in(seq, &whole, 0..whole.len())
}

/// Decodes the record at `range` of `whole` (a group holds many); the
/// payload is a slice of `whole`.
pub fn decode_in(seq: u64, whole: &Bytes, range: Range<usize>) -> Result<Job, StoreError> {
    let end = range.end;
    let mut r = Reader(&whole[range]);
    let version = r.take(1)?[0];
    if version != VERSION {
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
        id_seq: r.u64()?,
        dead_at_ms: r.u64()?,
        replayed_ms: r.u64()?,
        kind: r.string()?,
        lane: Lane::decode(&r.string()?),
        last_error: r.string()?,
        payload: whole.slice(end - r.0.len()..end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let j = Job {
            seq: 9,
            id_seq: 3,
            attempts: 4,
            next_at_ms: 5,
            received_ms: 6,
            dead_at_ms: 7,
            replayed_ms: 8,
            update_id: Some(-8),
            kind: "message".into(),
            lane: Lane::Chat("c".into()),
            last_error: "HTTP 503 é".into(),
            payload: Bytes::from_static(b"{\"update_id\":-8}"),
        };
        let back = decode(&key(b'j', 1, 9), &encode(&j).into()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{j:?}"));
        let none = Job {
            update_id: None,
            ..j
        };
        assert_eq!(
            decode(&key(b'j', 1, 9), &encode(&none).into())
                .unwrap()
                .update_id,
            None
        );
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        assert!(decode(&key(b'j', 1, 1), &[1u8, 0, 0][..].into()).is_err());
        assert!(decode(&key(b'j', 1, 1), &[9u8; 60][..].into()).is_err());
        assert!(decode(b"short", &sled::IVec::default()).is_err());
        let mut long_len = vec![1u8];
        long_len.extend_from_slice(&[0; 52]);
        long_len.extend_from_slice(&[0xff, 0xff]);
        assert!(decode(&key(b'j', 1, 1), &long_len.into()).is_err());
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        put_str(&mut out, &"é".repeat(40_000));
        let len = u16::from_be_bytes([out[0], out[1]]) as usize;
        assert!(std::str::from_utf8(&out[2..2 + len]).is_ok());
    }
}
