//! How history records are laid out in a segment file. Each record is
//! framed so that a torn tail (a crash mid-write) or a damaged byte ends the
//! readable part of a segment instead of being misread:
//!
//! ```text
//! len u32 | crc32(body) u32 | body (len bytes)
//! body = b'U' received u64 | update_id i64 | n u8 | n × (fwd u32 | seq u64)
//!            | kind str16 | lane str16 | payload (the rest)
//!      | b'O' at u64 | update_id i64 | result u8 | status u16 | attempt u32
//!            | ms u32 | replay u8 | forward str16 | error str16
//! ```
//!
//! Decoding never panics: anything malformed is `None`.

use crate::platform::update::Update;

/// Stored in place of the update_id of an update that had none.
const NO_UPDATE_ID: i64 = i64::MIN;
/// No record is bigger (a Bot API update is far smaller); a length above it
/// is damage, not a reason to allocate.
pub const MAX_BODY: usize = 64 << 20;
/// Errors are cut to this many bytes: history keeps what happened, not a
/// backend's whole error page.
const MAX_ERROR: usize = 300;

/// An update as received, with the queue sequence number each forward's
/// copy got (its webhook-id is made from it).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub received_ms: u64,
    pub update_id: Option<i64>,
    pub forwards: Vec<(u32, u64)>,
    pub kind: String,
    /// The encoded lane (`Lane::encode`).
    pub lane: String,
    pub payload: Vec<u8>,
}

/// What became of one attempt to deliver an update to one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    Failed,
    Dead,
    Dropped,
}

impl Fate {
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Delivered => "delivered",
            Fate::Failed => "failed",
            Fate::Dead => "dead",
            Fate::Dropped => "dropped",
        }
    }

    fn code(self) -> u8 {
        match self {
            Fate::Delivered => 1,
            Fate::Failed => 2,
            Fate::Dead => 3,
            Fate::Dropped => 4,
        }
    }

    fn from_code(c: u8) -> Option<Fate> {
        Some(match c {
            1 => Fate::Delivered,
            2 => Fate::Failed,
            3 => Fate::Dead,
            4 => Fate::Dropped,
            _ => return None,
        })
    }
}

/// Generic over its text so that the hot path records one from borrowed
/// names (no allocation per delivery) and reading owns them.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<S = String> {
    pub at_ms: u64,
    pub update_id: Option<i64>,
    pub result: Fate,
    /// The backend's HTTP status; None for a JetStream acknowledgement or
    /// an attempt that got no answer.
    pub status: Option<u16>,
    pub attempt: u32,
    pub ms: u32,
    pub replay: bool,
    pub forward: S,
    pub error: S,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Received(Received),
    Outcome(Outcome),
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max).min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Frames the body written by `body` into `out`.
fn framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    body(out);
    let len = (out.len() - at - 8) as u32;
    let crc = crc32fast::hash(&out[at + 8..]);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Appends the record of an update just queued to `out`; its payload is
/// copied once, into the record.
pub fn encode_received(out: &mut Vec<u8>, u: &Update, received_ms: u64, forwards: &[(u32, u64)]) {
    framed(out, |b| {
        b.push(b'U');
        b.extend_from_slice(&received_ms.to_be_bytes());
        b.extend_from_slice(&u.update_id.unwrap_or(NO_UPDATE_ID).to_be_bytes());
        // A bot has far fewer than 256 forwards (the config caps nothing,
        // but a record that named only some would mislead, so cut hard).
        let n = forwards.len().min(u8::MAX as usize);
        b.push(n as u8);
        for (fwd, seq) in &forwards[..n] {
            b.extend_from_slice(&fwd.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
        }
        put_str(b, &u.kind, 256);
        put_str(b, &u.lane.encode(), 1024);
        b.extend_from_slice(&u.payload);
    });
}

pub fn encode_outcome<S: AsRef<str>>(out: &mut Vec<u8>, o: &Outcome<S>) {
    framed(out, |b| {
        b.push(b'O');
        b.extend_from_slice(&o.at_ms.to_be_bytes());
        b.extend_from_slice(&o.update_id.unwrap_or(NO_UPDATE_ID).to_be_bytes());
        b.push(o.result.code());
        b.extend_from_slice(&o.status.unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&o.attempt.to_be_bytes());
        b.extend_from_slice(&o.ms.to_be_bytes());
        b.push(o.replay as u8);
        put_str(b, o.forward.as_ref(), 256);
        put_str(b, o.error.as_ref(), MAX_ERROR);
    });
}

/// What a frame header says: the body's length and checksum.
pub fn header(h: [u8; 8]) -> Option<(usize, u32)> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    (len > 0 && len <= MAX_BODY).then_some((len, crc))
}

/// Decodes a body whose checksum was already verified.
pub fn decode(body: &[u8]) -> Option<Record> {
    let mut r = Reader(body);
    match r.take(1)?[0] {
        b'U' => {
            let received_ms = r.u64()?;
            let update_id = id(r.u64()? as i64);
            let n = r.take(1)?[0] as usize;
            let mut forwards = Vec::with_capacity(n);
            for _ in 0..n {
                let fwd = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
                forwards.push((fwd, r.u64()?));
            }
            let kind = r.string()?;
            let lane = r.string()?;
            Some(Record::Received(Received {
                received_ms,
                update_id,
                forwards,
                kind,
                lane,
                payload: r.0.to_vec(),
            }))
        }
        b'O' => {
            let at_ms = r.u64()?;
            let update_id = id(r.u64()? as i64);
            let result = Fate::from_code(r.take(1)?[0])?;
            let status = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let attempt = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
            let ms = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
            let replay = r.take(1)?[0] != 0;
            let forward = r.string()?;
            let error = r.string()?;
            Some(Record::Outcome(Outcome {
                at_ms,
                update_id,
                result,
                status: (status != 0).then_some(status),
                attempt,
                ms,
                replay,
                forward,
                error,
            }))
        }
        _ => None,
    }
}

/// The receive time of an update record, read without decoding the rest
/// (a scan that filters by time skips most records so).
pub fn received_at(body: &[u8]) -> Option<u64> {
    match body {
        [b'U', rest @ ..] if rest.len() >= 8 => {
            Some(u64::from_be_bytes(rest[..8].try_into().ok()?))
        }
        _ => None,
    }
}

fn id(v: i64) -> Option<i64> {
    (v != NO_UPDATE_ID).then_some(v)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = self.take(2)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(framed: &[u8]) -> &[u8] {
        let (len, crc) = header(framed[..8].try_into().unwrap()).unwrap();
        assert_eq!(crc32fast::hash(&framed[8..8 + len]), crc);
        &framed[8..8 + len]
    }

    #[test]
    fn both_kinds_round_trip() {
        let u = Update::from_bytes(br#"{"update_id":7,"message":{"chat":{"id":-5},"text":"hi"}}"#)
            .unwrap();
        let mut out = Vec::new();
        encode_received(&mut out, &u, 123, &[(1, 10), (2, 11)]);
        let Some(Record::Received(r)) = decode(body(&out)) else {
            panic!("not an update record")
        };
        assert_eq!(
            (r.received_ms, r.update_id, &r.forwards[..], r.kind.as_str()),
            (123, Some(7), &[(1, 10), (2, 11)][..], "message")
        );
        assert_eq!(r.payload, u.payload);
        assert_eq!(received_at(body(&out)), Some(123));
        let o = Outcome {
            at_ms: 9,
            update_id: None,
            result: Fate::Failed,
            status: Some(502),
            attempt: 3,
            ms: 40,
            replay: true,
            forward: "app".into(),
            error: "é".repeat(400),
        };
        let mut out = Vec::new();
        encode_outcome(&mut out, &o);
        let Some(Record::Outcome(back)) = decode(body(&out)) else {
            panic!("not an outcome")
        };
        assert_eq!(back.error.len(), MAX_ERROR, "cut on a char boundary");
        assert_eq!(
            back,
            Outcome {
                error: back.error.clone(),
                ..o
            }
        );
    }

    #[test]
    fn damage_is_none_not_a_panic() {
        for bad in [&b""[..], b"U", b"Uxxxxxxxxxxxxxxxx\x05", b"O\0\0", b"Z123"] {
            assert_eq!(decode(bad), None);
        }
        assert_eq!(header([0; 8]), None, "an empty body is damage");
        assert_eq!(header([0xff; 8]), None, "too long is damage");
    }
}
