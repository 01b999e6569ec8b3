//! Serving an axum `Router` on a TCP listener so that no client can hold the
//! process's resources: a cap on open connections, a deadline for each
//! request to arrive, and one for a keep-alive connection idle between
//! requests.
//!
//! `axum::serve` has none of these: 70 half-sent requests on a 64-handle
//! limit once took every file handle, and the poller could no longer sync
//! the store ("Too many open files").

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// From accepting a connection, or from the first byte of a later
    /// request on it, until its headers are complete; the body then has as
    /// long again.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request and no traffic for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// For log lines: "admin API", "gateway".
    pub name: &'static str,
    /// Read each body whole (up to 1 MiB, within the header timeout) before
    /// the handler runs; otherwise the handler streams it and bounds it.
    pub whole_bodies: bool,
}

/// The connection cap for this process: an eighth of its file-handle limit
/// (`RLIMIT_NOFILE`, soft), at most 64, at least 1. The admin API then never
/// holds more than 1/8 of the handles the pollers and deliveries need.
pub fn connection_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    cap_for(soft)
}

fn cap_for(soft_limit: u64) -> usize {
    (soft_limit / 8).clamp(1, 64) as usize
}

/// The address a request came in on (the listener's may be 0.0.0.0), as a
/// request extension for handlers that check the `Host` header.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

/// Request bodies are read whole before the handler runs, so a trickled body
/// is cut like trickled headers; the admin API's bodies are small JSON.
const MAX_BODY: usize = 1 << 20;

/// After a failed accept (out of file handles, say) the next one would fail
/// at once too.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// How often a flood of the same trouble may be logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Serves `app` until `shutdown`; then stops accepting, lets requests in
/// progress finish, closes idle connections and returns.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // Each kind of trouble is logged at most once a minute.
    let (mut warned_accept, mut warned_cap) = (None, None);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if due(&mut warned_accept) {
                    warn!("{}: cannot accept a connection: {e}", limits.name);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once, so its file handle is back at once.
            if due(&mut warned_cap) {
                warn!(
                    %peer,
                    "{}: {} connections are open, its cap; new ones are closed until some end",
                    limits.name,
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            app.clone(),
            limits,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now < t + WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

async fn connection(
    stream: TcpStream,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let local = stream.local_addr().ok();
    let clock = Arc::new(Mutex::new(Clock {
        stage: Stage::Request,
        since: Instant::now(),
        limits,
        closing: None,
    }));
    let io = TokioIo::new(Deadline::new(stream, clock.clone()));
    let for_service = clock.clone();
    let service = hyper::service::service_fn(move |request| {
        handle(request, app.clone(), for_service.clone(), local, limits)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // hyper's own header timer starts whenever it waits for a request,
        // so it would also cut keep-alive connections at the header timeout;
        // `Deadline` keeps the two apart.
        .header_read_timeout(None::<Duration>)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // A request being handled finishes; a connection waiting for
            // one (idle, or half a request sent) ends now rather than at
            // its timeout, which would hold up the stop.
            lock(&clock).closing = Some(Instant::now());
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!("{}: connection closed: {e}", limits.name);
    }
}

async fn handle(
    request: Request<Incoming>,
    mut app: axum::Router,
    clock: Arc<Mutex<Clock>>,
    local: Option<SocketAddr>,
    limits: Limits,
) -> Result<Response<Body>, Infallible> {
    let _busy = Busy::enter(clock);
    let (mut parts, body) = request.into_parts();
    if let Some(local) = local {
        parts.extensions.insert(LocalAddr(local));
    }
    if !limits.whole_bodies {
        let response = app.call(Request::from_parts(parts, Body::new(body))).await;
        return Ok(match response {
            Ok(r) => r,
            Err(never) => match never {},
        });
    }
    let read = Limited::new(body, MAX_BODY).collect();
    let body = match tokio::time::timeout(limits.header_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Ok(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is over 1 MiB\n",
            ))
        }
        Ok(Err(e)) => {
            debug!("{}: cannot read a request body: {e}", limits.name);
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                "cannot read the request body\n",
            ));
        }
        Err(_) => {
            return Ok(refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time\n",
            ))
        }
    };
    let response = app.call(Request::from_parts(parts, Body::from(body))).await;
    Ok(match response {
        Ok(r) => r,
        Err(never) => match never {},
    })
}

/// An answer after which the connection is closed (the rest of the request
/// was not read).
fn refuse(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

// ---------------------------------------------------------------------------
// Deadlines.

/// Where a connection is, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for a request's headers: new, or bytes of a later request
    /// have come. Deadline: `since` + header timeout, however the bytes
    /// trickle in.
    Request,
    /// A handler runs (reading the body under its own timeout). No
    /// deadline: handlers are our own code.
    Busy,
    /// Between requests, the last answer possibly still being written.
    /// Deadline: `since` (the last traffic) + idle timeout.
    Idle,
}

struct Clock {
    stage: Stage,
    since: Instant,
    limits: Limits,
    /// Set when the server stops: the deadline of every stage but `Busy`.
    closing: Option<Instant>,
}

impl Clock {
    fn deadline(&self) -> Option<Instant> {
        let due = match self.stage {
            Stage::Request => self.since + self.limits.header_timeout,
            Stage::Busy => return None,
            Stage::Idle => self.since + self.limits.idle_timeout,
        };
        Some(self.closing.map_or(due, |c| c.min(due)))
    }

    fn received(&mut self) {
        if self.stage == Stage::Idle {
            self.stage = Stage::Request;
            self.since = Instant::now();
        }
    }

    fn sent(&mut self) {
        if self.stage == Stage::Idle {
            self.since = Instant::now();
        }
    }
}

fn lock(clock: &Mutex<Clock>) -> MutexGuard<'_, Clock> {
    clock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a request as being handled while it lives.
struct Busy(Arc<Mutex<Clock>>);

impl Busy {
    fn enter(clock: Arc<Mutex<Clock>>) -> Busy {
        lock(&clock).stage = Stage::Busy;
        Busy(clock)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut c = lock(&self.0);
        c.stage = Stage::Idle;
        c.since = Instant::now();
    }
}

/// The connection's socket: a read or write that waits past the
/// connection's deadline fails with `TimedOut`, which ends the connection.
struct Deadline<T> {
    io: T,
    clock: Arc<Mutex<Clock>>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> Deadline<T> {
    fn new(io: T, clock: Arc<Mutex<Clock>>) -> Deadline<T> {
        Deadline {
            io,
            clock,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// Whether the deadline has passed; otherwise the task is woken when it
    /// does (and then finds out whether it still holds).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = lock(&self.clock).deadline() else {
            return false;
        };
        if self.armed != Some(at) {
            self.timer.as_mut().reset(at);
            self.armed = Some(at);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn pending_or_expired<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if self.expired(cx) {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            )))
        } else {
            Poll::Pending
        }
    }

    fn sent(&self, n: usize) {
        if n > 0 {
            lock(&self.clock).sent();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    lock(&this.clock).received();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_expired(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.sent(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_expired(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.sent(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_expired(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.pending_or_expired(cx),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.pending_or_expired(cx),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_an_eighth_of_the_handle_limit_at_most_64() {
        assert_eq!(cap_for(64), 8);
        assert_eq!(cap_for(1024), 64);
        assert_eq!(cap_for(65536), 64);
        assert_eq!(cap_for(u64::MAX), 64);
        assert_eq!(cap_for(7), 1);
        assert_eq!(cap_for(0), 1);
    }
}
