//! One bot's long polls over HTTP/1.1 (a plain `http://` API, or an
//! `https://` one without HTTP/2): one connection, kept from poll to poll,
//! holding no buffer of ours while a poll waits.
//!
//! An idle bot spends nearly all its life waiting in a long poll. Through
//! hyper's client (reqwest's) each such wait holds ~34 KB: the connection's
//! 8 KiB read buffer (reserved before the answer comes), its 8 KiB write
//! buffer, its request channel, and reqwest's per-request state
//! (BENCHMARKS.md, "10,000 idle bots"). Here a poll writes its request,
//! waits for the socket to become readable with nothing allocated, and
//! only then reads the answer into a buffer that leaves with the answer.
//! Over TLS, rustls keeps its own state per connection. Memory per bot:
//! nothing of ours while the poll waits (but `FIRST_READ`, 1 KB, on a new
//! TLS connection whose wait a session ticket ended); while an answer is
//! read, its bytes up to the cap (`MAX_RESPONSE`, 64 MiB), twice that for
//! a chunked one (the chunks, then the body they make).
//!
//! The answer is read as HTTP/1.1 allows it to come: `Content-Length`,
//! chunked, or until the server closes; `1xx` heads are skipped. A
//! connection is kept only after an answer read exactly to its end that
//! did not ask for `close`, and used again only if nothing came on it
//! since (no close, no stray bytes, nothing left in rustls); else the poll
//! goes on a new one. A connection that closes during a poll is an error
//! the poller retries after its pause, as any failed poll.

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::conn::CONNECT_TIMEOUT;
use super::{Answer, PollError};

/// A head longer than this is not a Bot API's.
const MAX_HEAD: usize = 64 * 1024;
/// Headers read from a head at most.
const MAX_HEADERS: usize = 64;
/// Room a read makes when the buffer is full (the body of a sized answer
/// gets its whole length at once).
const READ_STEP: usize = 16 * 1024;
/// The first read of an answer: most heads fit; a longer answer grows the
/// buffer by `READ_STEP`, or to its length once the head gives it.
const FIRST_READ: usize = 1024;

/// New connections (TCP and TLS handshakes) being opened at once to one
/// server, by all the lines that share an [`Openings`]. A handshake's
/// transient memory (certificates, key exchange, buffers) is tens of KB;
/// 10,000 bots starting together held them all at once (424 MB allocated
/// at the peak), and the long-lived connection state allocated among that
/// garbage stayed scattered over its pages afterwards. Queued this way,
/// 10,000 bots over TLS on 127.0.0.1 all poll within a few seconds
/// (BENCHMARKS.md, fifth session). Per server, not per process: a server
/// that hangs handshakes must not hold the turns of bots on another.
const OPENING_AT_ONCE: usize = 64;

/// The turns to open connections to one server, shared by its lines.
pub type Openings = Arc<tokio::sync::Semaphore>;

pub fn openings() -> Openings {
    Arc::new(tokio::sync::Semaphore::new(OPENING_AT_ONCE))
}

pub struct Line {
    pub(super) host: String,
    pub(super) port: u16,
    /// The `Host` header's value.
    authority: String,
    /// For an `https://` API: the connector (ALPN `http/1.1`) and the
    /// server's name.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The connection kept from the last answer, if it may be used again.
    kept: Mutex<Option<Stream>>,
    /// Turns to open a connection, shared with the server's other lines.
    pub(super) openings: Openings,
}

/// A connection: plain, or TLS (boxed: rustls' state is a few KB, and a
/// plain connection need not carry its room).
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

fn tcp(stream: &Stream) -> &TcpStream {
    match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

impl Line {
    pub fn new(host: String, port: u16, default_port: bool) -> Line {
        // An IPv6 address goes in brackets (unless it came in them).
        let bare_v6 = host.contains(':') && !host.starts_with('[');
        let authority = match (default_port, bare_v6) {
            (true, false) => host.clone(),
            (true, true) => format!("[{host}]"),
            (false, false) => format!("{host}:{port}"),
            (false, true) => format!("[{host}]:{port}"),
        };
        Line {
            host,
            port,
            authority,
            tls: None,
            kept: Mutex::new(None),
            openings: openings(),
        }
    }

    /// Opens its connections in turn with the other lines to its server.
    pub fn sharing(mut self, openings: &Openings) -> Line {
        self.openings = openings.clone();
        self
    }

    /// The same over TLS (the connector's ALPN offering `http/1.1` only).
    pub fn with_tls(mut self, connector: TlsConnector, name: ServerName<'static>) -> Line {
        self.tls = Some((connector, name));
        self
    }

    /// POSTs `body` (JSON) to `target` (a path and query: it carries the
    /// token, and goes nowhere but the request line) and reads the answer,
    /// up to `cap` bytes, all within `timeout`.
    pub async fn post_json(
        &self,
        target: &str,
        body: &[u8],
        timeout: Duration,
        cap: usize,
    ) -> Result<Answer, PollError> {
        let deadline = Instant::now() + timeout;
        let request = self.request(target, body);
        // A kept connection the server closed while it was idle is seen
        // closed now (its FIN came long before this poll) and not used.
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .and_then(|mut stream| still_open(&mut stream).then_some(stream));
        let exchange = async {
            let mut stream = match kept {
                Some(stream) => stream,
                // Boxed: the TLS handshake's future holds a whole rustls
                // connection, and it is needed once per connection, not
                // in the state every waiting poll keeps.
                None => Box::pin(self.connect()).await?,
            };
            let (answer, reusable) = exchange(&mut stream, &request, cap).await?;
            Ok::<_, PollError>((answer, reusable, stream))
        };
        let (answer, reusable, stream) = timeout_at(deadline, exchange)
            .await
            .map_err(|_| PollError::Timeout)??;
        if reusable {
            *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
        }
        Ok(answer)
    }

    fn request(&self, target: &str, body: &[u8]) -> Vec<u8> {
        let head = format!(
            "POST {target} HTTP/1.1\r\nhost: {}\r\nuser-agent: pollhook/{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// A new connection (and its TLS handshake), within CONNECT_TIMEOUT
    /// of its turn to open (see [`OPENING_AT_ONCE`]).
    async fn connect(&self) -> Result<Stream, PollError> {
        let (host, port) = (&self.host, self.port);
        // Never closed, so never an error.
        let _turn = self.openings.acquire().await;
        timeout_at(Instant::now() + CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                PollError::Transport(format!(
                    "connecting to {host}:{port} took longer than {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
    }

    async fn open(&self) -> Result<Stream, PollError> {
        let (host, port) = (&self.host, self.port);
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| PollError::Transport(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Either::Left(stream));
        };
        let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
            PollError::Transport(format!(
                "TLS with {host}:{port}: {}",
                crate::http::error_chain(&e)
            ))
        })?;
        Ok(Either::Right(Box::new(tls)))
    }
}

/// Whether a kept connection is still open and quiet: no end of stream,
/// no error, and nothing waiting (an answer to nothing, a TLS alert),
/// neither on the socket (peeked at, so a TLS stream loses nothing) nor
/// already taken in by rustls.
fn still_open(stream: &mut Stream) -> bool {
    if let Either::Right(tls) = stream {
        match tls.get_mut().1.process_new_packets() {
            Ok(io) if io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed() => {}
            _ => return false,
        }
    }
    matches!(peek(tcp(stream)), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Looks at the socket without taking anything from it. The socket is
/// non-blocking (tokio's): nothing there is `WouldBlock`.
fn peek(tcp: &TcpStream) -> std::io::Result<usize> {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
    socket2::SockRef::from(tcp).peek(&mut probe)
}

/// Waits until the socket has something to read (or is closed), holding
/// nothing. tokio's readiness can outlast what it announced (a read that
/// filled the buffer exactly leaves it set): a peek through `try_io` that
/// finds nothing clears it, and the wait goes on.
async fn wait_readable(tcp: &TcpStream) -> std::io::Result<()> {
    loop {
        tcp.readable().await?;
        match tcp.try_io(Interest::READABLE, || peek(tcp)) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Sends `request` and reads its answer. Returns whether the connection
/// may carry another.
async fn exchange(
    stream: &mut Stream,
    request: &[u8],
    cap: usize,
) -> Result<(Answer, bool), PollError> {
    let sent = async {
        stream.write_all(request).await?;
        stream.flush().await
    };
    sent.await
        .map_err(|e| transport(&format!("sending the request: {e}")))?;
    // The long wait, with nothing allocated. Over TLS the socket is
    // watched under rustls, which holds nothing unread here: a kept
    // connection had nothing left in rustls (`still_open`), a new one has
    // only done its handshake (a TLS 1.3 ticket may wake this wait early;
    // the read below then waits for the answer holding its buffer, so
    // that buffer starts at FIRST_READ: a head's worth, not READ_STEP,
    // which 10,000 new connections held through their first poll).
    wait_readable(tcp(stream))
        .await
        .map_err(|e| transport(&format!("waiting for the answer: {e}")))?;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    if read_more(stream, &mut buf).await? == 0 {
        return Err(transport("the connection closed before an answer"));
    }
    let head = loop {
        match Head::parse(&buf)? {
            Some(head) if head.interim => buf.advance(head.len),
            Some(head) => break head,
            None if buf.len() > MAX_HEAD => return Err(transport("the answer's head is too long")),
            None => {
                if read_more(stream, &mut buf).await? == 0 {
                    return Err(transport("the connection closed inside the answer's head"));
                }
            }
        }
    };
    buf.advance(head.len);
    let (body, exact) = match head.framing {
        Framing::Length(n) if n > cap => return Err(PollError::TooLarge(cap)),
        Framing::Length(n) => {
            // One allocation for the whole body (≤ cap, checked above).
            buf.reserve(n.saturating_sub(buf.len()));
            while buf.len() < n {
                if read_more(stream, &mut buf).await? == 0 {
                    return Err(transport("the connection closed inside the answer"));
                }
            }
            let rest = buf.split_off(n);
            (buf.freeze(), rest.is_empty())
        }
        Framing::Chunked => chunked(stream, buf, cap).await?,
        Framing::UntilClose => {
            while read_more(stream, &mut buf).await? > 0 {
                if buf.len() > cap {
                    return Err(PollError::TooLarge(cap));
                }
            }
            (buf.freeze(), false)
        }
    };
    let answer = Answer {
        status: head.status,
        retry_after: head.retry_after,
        body,
    };
    Ok((answer, exact && head.keep_alive))
}

/// How an answer's body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
struct Head {
    /// Bytes of the head, its blank line included.
    len: usize,
    status: u16,
    /// A `1xx` head, which another follows.
    interim: bool,
    retry_after: Option<u64>,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    /// The head at the start of `buf`; None while it is incomplete.
    fn parse(buf: &[u8]) -> Result<Option<Head>, PollError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(transport(&format!("not an HTTP answer ({e})"))),
        };
        let status = response.code.unwrap_or(0);
        let interim = (100..200).contains(&status) && status != 101;
        let (mut length, mut coding, mut close, mut retry_after) = (None, None, false, None);
        for h in response.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| transport("a Content-Length that is not a number"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(transport("two different Content-Lengths"));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked is the last coding when the body is framed by it;
                // any other coding is framed by the connection's end.
                let last = value.rsplit(',').next().unwrap_or("").trim();
                coding = Some(if last.eq_ignore_ascii_case("chunked") {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                });
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"));
            } else if h.name.eq_ignore_ascii_case("retry-after") {
                retry_after = value.parse().ok();
            }
        }
        // A coding wins over a length (RFC 9112 §6.3).
        let framing = if interim || status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            coding.unwrap_or(length.map_or(Framing::UntilClose, Framing::Length))
        };
        let head = Head {
            len,
            status,
            interim,
            retry_after,
            // HTTP/1.0 closes unless told otherwise (kept simple: always),
            // and a body framed by the connection's end ends it.
            keep_alive: response.version == Some(1) && !close && framing != Framing::UntilClose,
            framing,
        };
        Ok(Some(head))
    }
}

/// A chunked body, `buf` holding what came after the head; and whether
/// nothing came after it.
async fn chunked(
    stream: &mut Stream,
    mut buf: BytesMut,
    cap: usize,
) -> Result<(Bytes, bool), PollError> {
    let mut body = BytesMut::new();
    loop {
        let size_line = line(stream, &mut buf).await?;
        let size = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| transport("a chunk size that is not a number"))?;
        if size == 0 {
            // Trailers, then the blank line that ends the body.
            while !line(stream, &mut buf).await?.is_empty() {}
            return Ok((body.freeze(), buf.is_empty()));
        }
        if body.len().saturating_add(size) > cap {
            return Err(PollError::TooLarge(cap));
        }
        // Room for the whole chunk at once, not by doubling.
        buf.reserve((size + 2).saturating_sub(buf.len()));
        while buf.len() < size + 2 {
            if read_more(stream, &mut buf).await? == 0 {
                return Err(transport("the connection closed inside a chunk"));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(transport("a chunk not followed by CRLF"));
        }
        buf.advance(size + 2);
    }
}

/// One CRLF-ended line of a chunked body (without its CRLF).
async fn line(stream: &mut Stream, buf: &mut BytesMut) -> Result<String, PollError> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..at]).into_owned();
            buf.advance(at + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(transport("a chunk line is too long"));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(transport("the connection closed inside a chunked answer"));
        }
    }
}

async fn read_more(stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, PollError> {
    fill(stream, buf)
        .await
        .map_err(|e| transport(&format!("reading the answer: {e}")))
}

async fn fill(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(READ_STEP);
    }
    stream.read_buf(buf).await
}

fn transport(why: &str) -> PollError {
    PollError::Transport(format!("HTTP/1.1: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;

    /// What the test server does with the next request.
    enum Act {
        Answer(&'static [u8]),
        AnswerAndClose(&'static [u8]),
        /// Reads the request and closes without a word.
        Close,
        /// Reads the request and never answers.
        Hang,
    }

    struct Server {
        port: u16,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    /// A raw HTTP/1.1 server on 127.0.0.1 acting out `acts` in order, one
    /// per request, over whichever connections they come on.
    async fn server(acts: Vec<Act>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acts = Arc::new(Mutex::new(VecDeque::from(acts)));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (acts, r) = (acts.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: its head, then its Content-Length body.
                        let end = loop {
                            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break at + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + len {
                            let mut chunk = [0u8; 4096];
                            let n = s.read(&mut chunk).await.unwrap();
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        r.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..end + len]).to_string());
                        buf.drain(..end + len);
                        let act = acts.lock().unwrap().pop_front();
                        match act {
                            Some(Act::Answer(a)) => s.write_all(a).await.unwrap(),
                            Some(Act::AnswerAndClose(a)) => {
                                s.write_all(a).await.unwrap();
                                return;
                            }
                            Some(Act::Close) | None => return,
                            Some(Act::Hang) => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Server {
            port,
            connections,
            requests,
        }
    }

    const SECOND: Duration = Duration::from_secs(5);

    async fn poll(line: &Line) -> Result<Answer, PollError> {
        line.post_json(
            "/bot1:SECRET/getUpdates",
            br#"{"timeout":30}"#,
            SECOND,
            1000,
        )
        .await
    }

    fn body(a: &Result<Answer, PollError>) -> &[u8] {
        &a.as_ref().unwrap().body
    }

    #[tokio::test]
    async fn answers_framed_every_way_are_read_and_the_connection_kept_when_it_may_be() {
        let s = server(vec![
            Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nRetry-After: 7\r\n\r\nfirst"),
            // An interim head, then a chunked body with an extension and a trailer.
            Act::Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nsec\r\n4\r\nond!\r\n0\r\nTrailer: t\r\n\r\n"),
            Act::Answer(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nConnection: close\r\n\r\n"),
            // No length: the body ends with the connection.
            Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            Act::Answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast"),
        ])
        .await;
        let line = Line::new("127.0.0.1".into(), s.port, false);
        let first = poll(&line).await;
        assert_eq!(body(&first), b"first");
        assert_eq!(first.as_ref().unwrap().retry_after, Some(7));
        assert_eq!(body(&poll(&line).await), b"second!");
        assert_eq!(
            s.connections.load(Ordering::SeqCst),
            1,
            "kept for the second poll"
        );
        let limited = poll(&line).await.unwrap();
        assert_eq!((limited.status, limited.body.len()), (429, 0));
        assert_eq!(body(&poll(&line).await), b"until the end");
        assert_eq!(
            s.connections.load(Ordering::SeqCst),
            2,
            "not kept after close"
        );
        assert_eq!(body(&poll(&line).await), b"ok");
        assert_eq!(body(&poll(&line).await), b"last");
        assert_eq!(
            s.connections.load(Ordering::SeqCst),
            4,
            "neither after an end-framed body nor HTTP/1.0"
        );
        let requests = s.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 6);
        assert!(
            requests[0].starts_with("POST /bot1:SECRET/getUpdates HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(requests[0].contains(&format!("host: 127.0.0.1:{}\r\n", s.port)));
        assert!(requests[0].ends_with("\r\n\r\n{\"timeout\":30}"));
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_and_one_closed_on_a_poll_is_an_error() {
        let s = server(vec![
            Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
            Act::Close,
        ])
        .await;
        let line = Line::new("127.0.0.1".into(), s.port, false);
        assert_eq!(body(&poll(&line).await), b"a");
        // The server closed it after the first answer (`Close` ends the
        // connection on the next request): seen as an error...
        let e = poll(&line).await.unwrap_err();
        assert!(
            matches!(&e, PollError::Transport(t) if t.contains("closed before an answer") && !t.contains("SECRET")),
            "{e:?}"
        );
        // ...and a connection the server closed while idle is not reused.
        let s = server(vec![
            Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
            Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"),
        ])
        .await;
        let line = Line::new("127.0.0.1".into(), s.port, false);
        assert_eq!(body(&poll(&line).await), b"b");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(body(&poll(&line).await), b"c");
        assert_eq!(s.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn oversized_malformed_and_silent_answers_fail_as_the_poller_expects() {
        let s = server(vec![
            Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n"),
            // A chunk past the cap (1,001 bytes).
            Act::Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n"),
            Act::Answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
            Act::Answer(b"<html>not HTTP</html>\r\n\r\n"),
            Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab"),
            Act::Hang,
        ])
        .await;
        let line = Line::new("localhost".into(), s.port, false);
        assert!(matches!(poll(&line).await, Err(PollError::TooLarge(1000))));
        assert!(matches!(poll(&line).await, Err(PollError::TooLarge(1000))));
        for why in [
            "a chunk size that is not a number",
            "not an HTTP answer",
            "two different Content-Lengths",
        ] {
            match poll(&line).await {
                Err(PollError::Transport(t)) => {
                    assert!(t.starts_with("HTTP/1.1: ") && t.contains(why), "{t}")
                }
                other => panic!("{why}: {:?}", other.map(|a| a.status)),
            }
        }
        assert_eq!(
            s.connections.load(Ordering::SeqCst),
            5,
            "none kept after a failure"
        );
        let started = Instant::now();
        let e = line
            .post_json("/x", b"{}", Duration::from_millis(300), 1000)
            .await;
        assert!(matches!(e, Err(PollError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// After an answer that filled the read buffer exactly, tokio still
    /// reports the socket readable; the wait must not take that for data
    /// (a buffer would be held through the whole next poll).
    #[tokio::test]
    async fn the_wait_for_an_answer_does_not_wake_on_stale_readiness() {
        let s = server(vec![Act::Answer(big())]).await;
        let line = Line::new("127.0.0.1".into(), s.port, false);
        let answer = line.post_json("/x", b"{}", SECOND, 1 << 20).await.unwrap();
        assert_eq!(answer.body.len(), 100_000);
        let kept = line.kept.lock().unwrap().take().expect("kept");
        let waited =
            tokio::time::timeout(Duration::from_millis(300), wait_readable(tcp(&kept))).await;
        assert!(waited.is_err(), "woke with nothing to read");
    }

    /// A 100,000-byte answer, sized by Content-Length.
    fn big() -> &'static [u8] {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        BIG.get_or_init(|| {
            let mut all = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            all.resize(all.len() + 100_000, b'a');
            all
        })
    }

    /// A TLS server whose first answer comes with a stray second one in
    /// the same TCP write, so rustls takes both in; a poll after it must
    /// not get the stray answer for its own.
    #[tokio::test]
    async fn over_tls_an_answer_rustls_already_took_in_is_not_taken_for_the_next_poll() {
        use std::io::Write;
        use tokio_rustls::rustls;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let n = c.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut request = [0u8; 4096];
                    let _ = tls.read(&mut request).await.unwrap();
                    if n > 0 {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
                        tls.write_all(answer).await.unwrap();
                        tls.flush().await.unwrap();
                        tokio::time::sleep(SECOND).await;
                        return;
                    }
                    // Both answers' records, then one write of them all.
                    let (io, conn) = tls.get_mut();
                    let mut wire = Vec::new();
                    for answer in [big(), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"] {
                        let mut at = 0;
                        while at < answer.len() {
                            at += conn.writer().write(&answer[at..]).unwrap();
                            while conn.wants_write() {
                                conn.write_tls(&mut wire).unwrap();
                            }
                        }
                    }
                    io.write_all(&wire).await.unwrap();
                    io.flush().await.unwrap();
                    // Any second request on this connection is answered wrongly.
                    let _ = tls.read(&mut request).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwrong")
                        .await;
                    let _ = tls.flush().await;
                    tokio::time::sleep(SECOND).await;
                });
            }
        });
        let name = ServerName::try_from("localhost").unwrap();
        let line = Line::new("127.0.0.1".into(), port, false)
            .with_tls(TlsConnector::from(Arc::new(client)), name);
        let first = line.post_json("/x", b"{}", SECOND, 1 << 20).await.unwrap();
        assert_eq!(first.body.len(), 100_000);
        let second = line.post_json("/x", b"{}", SECOND, 1 << 20).await.unwrap();
        assert_eq!(&second.body[..], b"fresh");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    /// A server that takes connections and never says a word: every TLS
    /// handshake with it hangs until the connect timeout.
    #[tokio::test]
    async fn a_server_hanging_handshakes_holds_its_own_turns_to_open_not_others() {
        use tokio_rustls::rustls;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                held.push(tcp);
            }
        });
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let stuck = openings();
        for _ in 0..OPENING_AT_ONCE + 8 {
            let line = Line::new("127.0.0.1".into(), silent_port, false)
                .with_tls(
                    TlsConnector::from(client.clone()),
                    ServerName::try_from("localhost").unwrap(),
                )
                .sharing(&stuck);
            tokio::spawn(async move { line.post_json("/x", b"{}", SECOND, 1024).await });
        }
        let started = Instant::now();
        while accepted.load(Ordering::SeqCst) < OPENING_AT_ONCE && started.elapsed() < SECOND {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            OPENING_AT_ONCE,
            "connections opened at once to the silent server"
        );
        // Another server's lines have turns of their own.
        let s = server(vec![Act::Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )])
        .await;
        let line = Line::new("127.0.0.1".into(), s.port, false);
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            line.post_json("/x", b"{}", SECOND, 1024),
        )
        .await
        .expect("not queued behind the silent server's handshakes")
        .unwrap();
        assert_eq!(&answer.body[..], b"ok");
    }
}
