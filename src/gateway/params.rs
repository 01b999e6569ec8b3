//! Reading a gateway call just far enough to know which chats it names,
//! without changing a byte of it.
//!
//! Parameters come in the query string, a JSON or urlencoded body, or a
//! multipart body. JSON and form bodies are small and read whole. A
//! multipart body is read until its chat is known and its first file
//! begins, then up to [`KEEP_WHOLE`] more: a body that ends by then is
//! held whole (so a call the platform answers with a 429 can be sent
//! again), a longer one is streamed on to the platform as it arrives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::platform::call::{chat_fields_of_form, chat_fields_of_json, CHAT_PARAMS};

/// Bodies up to this size are held whole; multipart beyond it streams.
pub const KEEP_WHOLE: usize = 1 << 20;
/// A JSON or form body larger than this is no Bot API call.
pub const MAX_PLAIN: usize = 1 << 20;

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
    /// Every `chat_id` and `from_chat_id` found, as (name, value).
    pub chats: Vec<(String, String)>,
    /// Whether every parameter was seen (a streamed upload's rest is not,
    /// until it has passed: see [`guard`]).
    pub complete: bool,
    /// A multipart body's boundary.
    pub boundary: Option<String>,
    pub body: Body,
}

impl Read {
    /// The chat the call acts in, which orders and limits it: its
    /// `chat_id`, else its `from_chat_id`.
    pub fn chat(&self) -> Option<String> {
        let of = |name: &str| self.chats.iter().find(|(n, _)| n == name);
        of("chat_id")
            .or_else(|| of("from_chat_id"))
            .map(|(_, v)| v.clone())
    }
}

/// Longer than any chat id or @username; a longer one is refused, so
/// made-up ids cannot grow the budget's per-chat memory.
const MAX_CHAT_ID: usize = 128;

fn check_chats(chats: &[(String, String)]) -> Result<(), ReadError> {
    match chats.iter().find(|(_, v)| v.len() > MAX_CHAT_ID) {
        Some((name, _)) => Err(ReadError::Invalid(format!(
            "Bad Request: {name} is longer than {MAX_CHAT_ID} characters"
        ))),
        None => Ok(()),
    }
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
    let read = match kind.as_deref() {
        Some("multipart/form-data") => {
            let boundary = multer::parse_boundary(content_type.unwrap_or_default())
                .map_err(|e| ReadError::Invalid(format!("Bad Request: multipart body: {e}")))?;
            tokio::time::timeout_at(deadline, scan_multipart(boundary, body, chats))
                .await
                .map_err(|_| ReadError::Timeout)??
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
            Read {
                chats,
                complete: true,
                boundary: None,
                body: if bytes.is_empty() {
                    Body::None
                } else {
                    Body::Whole(bytes)
                },
            }
        }
    };
    check_chats(&read.chats)?;
    Ok(read)
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

fn form_chats(text: &str) -> Vec<(String, String)> {
    chat_fields_of_form(text.as_bytes())
}

fn json_chats(bytes: &[u8]) -> Result<Vec<(String, String)>, ReadError> {
    chat_fields_of_json(bytes).map_err(ReadError::Invalid)
}

/// Holds up to [`KEEP_WHOLE`] of a multipart body. One that ends by then is
/// held whole and every chat field in it counts; a longer one streams on,
/// its chat read from the fields before its first file (where frameworks
/// put it); [`guard`] reads the rest as it passes.
async fn scan_multipart(
    boundary: String,
    mut body: BodyStream,
    mut chats: Vec<(String, String)>,
) -> Result<Read, ReadError> {
    let mut read: Vec<Bytes> = Vec::new();
    let mut held = 0usize;
    while held < KEEP_WHOLE {
        match body.next().await {
            None => {
                let bytes = if read.len() == 1 {
                    read.pop().unwrap_or_default()
                } else {
                    Bytes::from(read.concat())
                };
                let whole = futures_util::stream::iter([Ok::<_, axum::Error>(bytes.clone())]);
                chat_fields(whole, boundary.clone(), false, &mut chats)
                    .await
                    .map_err(ReadError::Invalid)?;
                return Ok(Read {
                    chats,
                    complete: true,
                    boundary: Some(boundary),
                    body: Body::Whole(bytes),
                });
            }
            Some(Ok(chunk)) => {
                held += chunk.len();
                read.push(chunk);
            }
            Some(Err(e)) => return Err(ReadError::Broken(e.to_string())),
        }
    }
    // The part held ends mid-body, so the scan of it ends in an error;
    // the fields found before that count.
    let head = futures_util::stream::iter(read.clone().into_iter().map(Ok::<_, axum::Error>));
    let _ = chat_fields(head, boundary.clone(), true, &mut chats).await;
    Ok(Read {
        chats,
        complete: false,
        boundary: Some(boundary),
        body: Body::Streamed { read, rest: body },
    })
}

/// Adds each `chat_id` and `from_chat_id` field of a multipart body to
/// `out`, up to its first file if `to_first_file`; an error if it is not
/// readable as multipart (what was found before stays in `out`).
async fn chat_fields<S>(
    stream: S,
    boundary: String,
    to_first_file: bool,
    out: &mut Vec<(String, String)>,
) -> Result<(), String>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send,
{
    let mut parts = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| format!("Bad Request: multipart body: {e}");
    while let Some(field) = parts.next_field().await.map_err(bad)? {
        if field.file_name().is_some() {
            if to_first_file {
                return Ok(());
            }
            continue;
        }
        let name = field.name().unwrap_or("").to_string();
        if CHAT_PARAMS.contains(&name.as_str()) {
            let text = field.text().await.map_err(bad)?;
            out.push((name, text.trim().to_string()));
        }
    }
    Ok(())
}

/// The rest of a streamed multipart body, read by a second parser as it
/// passes. A chat the client may not use, or a body that is not multipart
/// after all, ends the stream with an error before its last chunk, so the
/// platform never receives a complete request; `refused` then says why.
pub fn guard(
    read: &[Bytes],
    rest: BodyStream,
    boundary: String,
    allowed: Vec<String>,
    refused: Arc<Mutex<Option<String>>>,
) -> BodyStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (verdict_tx, verdict) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let seen: Vec<Bytes> = read.to_vec();
    let checker = async move {
        let input = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, axum::Error>(b), rx))
        });
        let head = futures_util::stream::iter(seen.into_iter().map(Ok::<_, axum::Error>));
        let mut chats = Vec::new();
        let verdict = match chat_fields(head.chain(input), boundary, false, &mut chats).await {
            Err(e) => Err(e),
            Ok(()) => match chats.iter().find(|(_, v)| !allowed.contains(v)) {
                Some((_, v)) => Err(format!("chat {v}")),
                None => Ok(()),
            },
        };
        let _ = verdict_tx.send(verdict);
    };
    tokio::spawn(checker);
    struct State {
        rest: BodyStream,
        tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
        held: Option<Bytes>,
        verdict: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
        refused: Arc<Mutex<Option<String>>>,
    }
    let state = State {
        rest,
        tx: Some(tx),
        held: None,
        verdict: Some(verdict),
        refused,
    };
    let refuse = |state: &mut State, why: String| {
        *state.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        state.verdict = None;
        state.tx = None;
        Err(axum::Error::new(std::io::Error::other(why)))
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut state| async move {
            // One chunk is held back until the next arrives, so the last one
            // goes only once the whole body has been judged.
            loop {
                if let Ok(Err(why)) = state.verdict.as_mut()?.try_recv() {
                    return Some((refuse(&mut state, why), state));
                }
                match state.rest.next().await {
                    Some(Ok(chunk)) => {
                        if let Some(tx) = &state.tx {
                            let _ = tx.send(chunk.clone()).await;
                        }
                        if let Some(prev) = state.held.replace(chunk) {
                            return Some((Ok(prev), state));
                        }
                    }
                    Some(Err(e)) => {
                        state.verdict = None;
                        return Some((Err(e), state));
                    }
                    None => {
                        state.tx = None;
                        let verdict = state.verdict.take()?;
                        return match verdict.await {
                            Ok(Ok(())) => state.held.take().map(|h| (Ok(h), state)),
                            Ok(Err(why)) => Some((refuse(&mut state, why), state)),
                            Err(_) => Some((
                                refuse(&mut state, "the body could not be checked".into()),
                                state,
                            )),
                        };
                    }
                }
            }
        },
    ))
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

    async fn sent(body: &mut Body) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let b = body.take().expect("a body");
        b.collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    fn values(r: &Read) -> Vec<&str> {
        r.chats.iter().map(|(_, v)| v.as_str()).collect()
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn chats_are_found_in_every_encoding() {
        let r = read(Some("chat_id=5&text=x"), None, chunks(&[]), T)
            .await
            .unwrap();
        assert_eq!(values(&r), ["5"]);
        assert!(matches!(r.body, Body::None));
        let r = read(
            None,
            Some("application/json; charset=utf-8"),
            chunks(&[br#"{"from_chat_id":"@x","chat_id":-100,"text":"{"}"#]),
            T,
        )
        .await
        .unwrap();
        assert_eq!(
            r.chat().as_deref(),
            Some("-100"),
            "chat_id orders the call, wherever it is"
        );
        let r = read(
            Some("from_chat_id=9"),
            Some("application/x-www-form-urlencoded"),
            chunks(&[b"text=a&chat_id=%2D7"]),
            T,
        )
        .await
        .unwrap();
        assert_eq!(values(&r), ["9", "-7"]);
        assert_eq!(r.chat().as_deref(), Some("-7"));
        assert!(read(None, Some("application/json"), chunks(&[b"[1]"]), T)
            .await
            .is_err());
        for bad in [&br#"{"chat_id":[42]}"#[..], br#"{"chat_id":{"a":1}}"#] {
            assert!(matches!(
                read(None, Some("application/json"), chunks(&[bad]), T).await,
                Err(ReadError::Invalid(_))
            ));
        }
        let long = format!("chat_id={}", "9".repeat(MAX_CHAT_ID + 1));
        assert!(matches!(
            read(Some(&long), None, chunks(&[]), T).await,
            Err(ReadError::Invalid(_))
        ));
        let big = vec![b' '; MAX_PLAIN + 1];
        assert_eq!(
            read(None, Some("application/json"), chunks(&[&big]), T)
                .await
                .err(),
            Some(ReadError::TooLarge)
        );
    }

    fn multipart(file: &[u8], after: &str) -> Vec<u8> {
        let mut b = b"--XX\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n42\r\n--XX\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(after.as_bytes());
        b.extend_from_slice(b"--XX--\r\n");
        b
    }

    const FROM_99: &str =
        "--XX\r\nContent-Disposition: form-data; name=\"from_chat_id\"\r\n\r\n-100999\r\n";

    #[tokio::test]
    async fn a_small_multipart_body_is_held_whole_and_read_to_its_end() {
        let body = multipart(b"jpegbytes", FROM_99);
        let pieces: Vec<&[u8]> = body.chunks(7).collect();
        let mut r = read(
            None,
            Some("multipart/form-data; boundary=XX"),
            chunks(&pieces),
            T,
        )
        .await
        .unwrap();
        assert_eq!(
            values(&r),
            ["42", "-100999"],
            "a chat after the file counts too"
        );
        assert!(r.complete && r.body.replayable());
        assert_eq!(sent(&mut r.body).await.unwrap(), body);
        assert_eq!(
            sent(&mut r.body).await.unwrap(),
            body,
            "and again, for a retry"
        );
    }

    async fn large(
        after: &str,
        allowed: &[&str],
    ) -> (Vec<u8>, Result<Vec<u8>, String>, Option<String>) {
        let file = vec![7u8; 3 * KEEP_WHOLE];
        let body = multipart(&file, after);
        let pieces: Vec<&[u8]> = body.chunks(64 * 1024).collect();
        let mut r = read(
            None,
            Some("multipart/form-data; boundary=XX"),
            chunks(&pieces),
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.chat().as_deref(), Some("42"));
        assert!(!r.complete);
        let refused = Arc::new(Mutex::new(None));
        match std::mem::replace(&mut r.body, Body::None) {
            Body::Streamed { read: head, rest } => {
                let held: usize = head.iter().map(Bytes::len).sum();
                assert!(held <= KEEP_WHOLE + 64 * 1024, "held {held}");
                let allowed = allowed.iter().map(|s| s.to_string()).collect();
                let rest = guard(&head, rest, "XX".into(), allowed, refused.clone());
                r.body = Body::Streamed { read: head, rest };
            }
            _ => panic!("a 3 MiB upload must stream"),
        }
        let out = sent(&mut r.body).await;
        let why = refused.lock().unwrap().clone();
        (body, out, why)
    }

    #[tokio::test]
    async fn a_large_upload_streams_on_whole_when_its_chats_are_allowed() {
        let (body, out, why) = large(FROM_99, &["42", "-100999"]).await;
        assert_eq!(out.unwrap(), body);
        assert_eq!(why, None);
    }

    #[tokio::test]
    async fn a_chat_hidden_after_a_large_file_cuts_the_upload_short() {
        let (_, out, why) = large(FROM_99, &["42"]).await;
        assert!(out.is_err(), "the platform must not get a complete body");
        assert_eq!(why.as_deref(), Some("chat -100999"));
    }
}
