//! Reading a gateway call just far enough to know which chats it names,
//! without changing a byte of it.
//!
//! Parameters come in the query string, a JSON or urlencoded body, or a
//! multipart body. JSON and form bodies are small and read whole. A
//! multipart body is read until its chat is known and its first file
//! begins, then up to [`KEEP_WHOLE`] more: a body that ends by then is
//! held whole (so a call the platform answers with a 429 can be sent
//! again), a longer one is streamed on to the platform as it arrives.

use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

/// Bodies up to this size are held whole; multipart beyond it streams.
pub const KEEP_WHOLE: usize = 1 << 20;
/// A JSON or form body larger than this is no Bot API call.
pub const MAX_PLAIN: usize = 1 << 20;
/// The parameters naming chats, which a client's `chats` limit.
const CHAT_PARAMS: [&str; 2] = ["chat_id", "from_chat_id"];

pub type BodyStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send + 'static>>;

/// The call's body as it goes on to the platform.
pub enum Body {
    None,
    /// Held whole: may be sent again.
    Whole(Bytes),
    /// What was read, then the rest as it arrives: sent once.
    Streamed {
        read: Vec<Bytes>,
        rest: BodyStream,
    },
}

impl Body {
    /// A body for one request; for `Streamed` it can be taken only once.
    pub fn take(&mut self) -> Option<reqwest::Body> {
        match std::mem::replace(self, Body::None) {
            Body::None => None,
            Body::Whole(b) => {
                *self = Body::Whole(b.clone());
                Some(reqwest::Body::from(b))
            }
            Body::Streamed { read, rest } => {
                let head = futures_util::stream::iter(read.into_iter().map(Ok));
                Some(reqwest::Body::wrap_stream(head.chain(rest)))
            }
        }
    }

    pub fn replayable(&self) -> bool {
        !matches!(self, Body::Streamed { .. })
    }
}

/// A call read as far as needed.
pub struct Read {
    /// Every value of `chat_id` and `from_chat_id` found; `chat_id`'s first.
    pub chats: Vec<String>,
    /// Whether a multipart body named its chat only after a file (or not
    /// within the part read): then `chats` may be incomplete.
    pub chats_unknown: bool,
    pub body: Body,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("the request body is over {} KiB, too large for a Bot API call in JSON or form encoding", MAX_PLAIN / 1024)]
    TooLarge,
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("the request body cannot be read: {0}")]
    Broken(String),
    #[error("{0}")]
    Invalid(String),
}

pub async fn read(
    query: Option<&str>,
    content_type: Option<&str>,
    body: BodyStream,
    timeout: Duration,
) -> Result<Read, ReadError> {
    let mut chats = query.map(form_chats).unwrap_or_default();
    let kind = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let deadline = tokio::time::Instant::now() + timeout;
    match kind.as_deref() {
        Some("multipart/form-data") => {
            let boundary = multer::parse_boundary(content_type.unwrap_or_default())
                .map_err(|e| ReadError::Invalid(format!("multipart body: {e}")))?;
            tokio::time::timeout_at(deadline, scan_multipart(boundary, body, chats))
                .await
                .map_err(|_| ReadError::Timeout)?
        }
        _ => {
            let bytes = tokio::time::timeout_at(deadline, read_whole(body))
                .await
                .map_err(|_| ReadError::Timeout)??;
            match kind.as_deref() {
                Some("application/json") => chats.extend(json_chats(&bytes)?),
                Some("application/x-www-form-urlencoded") => {
                    chats.extend(form_chats(&String::from_utf8_lossy(&bytes)))
                }
                _ => {}
            }
            Ok(Read {
                chats,
                chats_unknown: false,
                body: if bytes.is_empty() {
                    Body::None
                } else {
                    Body::Whole(bytes)
                },
            })
        }
    }
}

async fn read_whole(mut body: BodyStream) -> Result<Bytes, ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ReadError::Broken(e.to_string()))?;
        if out.len() + chunk.len() > MAX_PLAIN {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

fn form_chats(text: &str) -> Vec<String> {
    url::form_urlencoded::parse(text.as_bytes())
        .filter(|(k, _)| CHAT_PARAMS.contains(&k.as_ref()))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

fn json_chats(bytes: &[u8]) -> Result<Vec<String>, ReadError> {
    #[derive(Deserialize)]
    struct Chats {
        chat_id: Option<serde_json::Value>,
        from_chat_id: Option<serde_json::Value>,
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let c: Chats = serde_json::from_slice(bytes).map_err(|e| {
        ReadError::Invalid(format!("Bad Request: the body is not a JSON object: {e}"))
    })?;
    Ok([c.chat_id, c.from_chat_id]
        .into_iter()
        .flatten()
        .filter_map(|v| match v {
            serde_json::Value::String(s) => Some(s.trim().to_string()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect())
}

/// Reads multipart fields until a file begins (or the body ends), noting
/// chat fields; every byte read is kept, in order, to be sent on.
async fn scan_multipart(
    boundary: String,
    mut body: BodyStream,
    mut chats: Vec<String>,
) -> Result<Read, ReadError> {
    let mut read: Vec<Bytes> = Vec::new();
    let mut held = 0usize;
    let mut all_fields_read = false;
    {
        // multer reads all the stream has ready, which for a fast client
        // is much of an upload; past KEEP_WHOLE it is told the body ended,
        // and the scan stops with what it saw.
        let recorded = futures_util::stream::poll_fn(|cx| {
            if held >= KEEP_WHOLE {
                return Poll::Ready(None);
            }
            let next = body.as_mut().poll_next(cx);
            if let Poll::Ready(Some(Ok(c))) = &next {
                held += c.len();
                read.push(c.clone());
            }
            next
        });
        let mut parts = multer::Multipart::new(recorded, boundary);
        loop {
            match parts.next_field().await {
                Ok(None) => {
                    all_fields_read = true;
                    break;
                }
                Ok(Some(field)) => {
                    if field.file_name().is_some() {
                        break;
                    }
                    let name = field.name().unwrap_or("").to_string();
                    if CHAT_PARAMS.contains(&name.as_str()) {
                        match field.text().await {
                            Ok(t) => chats.push(t.trim().to_string()),
                            Err(_) => break,
                        }
                    }
                }
                // Cut short, or not multipart as we read it: the platform
                // judges the body itself.
                Err(_) => break,
            }
        }
    }
    let chats_unknown = chats.is_empty() && !all_fields_read;
    // Hold up to KEEP_WHOLE in all: a small upload can then be sent again.
    while held < KEEP_WHOLE {
        match body.next().await {
            None => return Ok(whole(chats, chats_unknown, read)),
            Some(Ok(chunk)) => {
                held += chunk.len();
                read.push(chunk);
            }
            Some(Err(e)) => return Err(ReadError::Broken(e.to_string())),
        }
    }
    Ok(Read {
        chats,
        chats_unknown,
        body: Body::Streamed { read, rest: body },
    })
}

fn whole(chats: Vec<String>, chats_unknown: bool, read: Vec<Bytes>) -> Read {
    let bytes = if read.len() == 1 {
        read.into_iter().next().unwrap_or_default()
    } else {
        Bytes::from(read.concat())
    };
    Read {
        chats,
        chats_unknown,
        body: Body::Whole(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> BodyStream {
        let v: Vec<Result<Bytes, axum::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        Box::pin(futures_util::stream::iter(v))
    }

    async fn sent(body: &mut Body) -> Vec<u8> {
        use http_body_util::BodyExt;
        let b = body.take().expect("a body");
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn chats_are_found_in_every_encoding() {
        let r = read(Some("chat_id=5&text=x"), None, chunks(&[]), T)
            .await
            .unwrap();
        assert_eq!(r.chats, ["5"]);
        assert!(matches!(r.body, Body::None));
        let r = read(
            None,
            Some("application/json; charset=utf-8"),
            chunks(&[br#"{"chat_id":-100,"from_chat_id":"@x","text":"{"}"#]),
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.chats, ["-100", "@x"]);
        let r = read(
            None,
            Some("application/x-www-form-urlencoded"),
            chunks(&[b"text=a&chat_id=%2D7"]),
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.chats, ["-7"]);
        assert!(read(None, Some("application/json"), chunks(&[b"[1]"]), T)
            .await
            .is_err());
        let big = vec![b' '; MAX_PLAIN + 1];
        assert_eq!(
            read(None, Some("application/json"), chunks(&[&big]), T)
                .await
                .err(),
            Some(ReadError::TooLarge)
        );
    }

    fn multipart(file: &[u8]) -> Vec<u8> {
        let mut b = b"--XX\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n42\r\n--XX\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n--XX--\r\n");
        b
    }

    #[tokio::test]
    async fn a_small_multipart_body_is_held_whole_byte_for_byte() {
        let body = multipart(b"jpegbytes");
        let pieces: Vec<&[u8]> = body.chunks(7).collect();
        let mut r = read(
            None,
            Some("multipart/form-data; boundary=XX"),
            chunks(&pieces),
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.chats, ["42"]);
        assert!(r.body.replayable());
        assert_eq!(sent(&mut r.body).await, body);
        assert_eq!(sent(&mut r.body).await, body, "and again, for a retry");
    }

    #[tokio::test]
    async fn a_large_upload_streams_on_after_its_chat_is_known() {
        let file = vec![7u8; 3 * KEEP_WHOLE];
        let body = multipart(&file);
        let pieces: Vec<&[u8]> = body.chunks(64 * 1024).collect();
        let mut r = read(
            None,
            Some("multipart/form-data; boundary=XX"),
            chunks(&pieces),
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.chats, ["42"]);
        match &r.body {
            Body::Streamed { read, .. } => {
                let held: usize = read.iter().map(Bytes::len).sum();
                assert!(held <= KEEP_WHOLE + 64 * 1024, "held {held}");
            }
            _ => panic!("a 3 MiB upload must stream"),
        }
        assert_eq!(sent(&mut r.body).await, body);
    }

    #[tokio::test]
    async fn a_chat_after_a_file_is_unknown() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a\"\r\n\r\nabc\r\n--XX\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n9\r\n--XX--\r\n";
        let r = read(
            None,
            Some("multipart/form-data; boundary=XX"),
            chunks(&[body]),
            T,
        )
        .await
        .unwrap();
        assert!(r.chats.is_empty() && r.chats_unknown);
    }
}
