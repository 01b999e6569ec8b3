//! A recording webhook receiver standing in for the private backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use super::serve::{self, Body, DropConnection, Server};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// 0-based arrival index (position in `received()`).
    pub index: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("backend: body is not UTF-8")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("backend: body is not JSON")
    }

    /// The Standard Webhooks id (the same on every retry and replay of an
    /// update to one forward).
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
            .expect("backend: a delivery without webhook-id")
    }

    /// `x-pollhook-replay`: the unix seconds a replay (or resend) queued
    /// this copy; None on an ordinary delivery. Panics on a value that is
    /// not a number of seconds, which the contract rules out.
    pub fn replayed_at(&self) -> Option<u64> {
        let v = self.header("x-pollhook-replay")?;
        Some(
            v.parse().unwrap_or_else(|_| {
                panic!("backend: x-pollhook-replay is {v:?}, not unix seconds")
            }),
        )
    }

    pub fn is_replay(&self) -> bool {
        self.replayed_at().is_some()
    }
}

/// How to answer a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with an empty body.
    Ok,
    Status(u16),
    /// Status plus `Retry-After: secs`.
    StatusRetryAfter(u16, u64),
    /// Wait, then 200.
    Delay(Duration),
    /// Never answer (until the client or `shutdown` closes the connection).
    Hang,
    /// status, content-type, body
    Body(u16, String, String),
    /// status, content-type, body: like `Body`, but the bytes are shared, so
    /// a test can answer many requests with one large body held once.
    Bytes(u16, String, Bytes),
    /// Like `Bytes`, sent with `Transfer-Encoding: chunked`: no
    /// `Content-Length` tells the client the size before it reads.
    Chunked(u16, String, Bytes),
}

/// A request's lifetime on the server.
#[derive(Debug, Clone)]
pub struct Span {
    pub received: Received,
    pub start: Instant,
    /// When the response was produced or the request was abandoned; None
    /// while still in flight.
    pub end: Option<Instant>,
    /// The status answered; None if never answered.
    pub status: Option<u16>,
}

type Script = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

struct State {
    default: Reply,
    script: Option<Script>,
    received: Vec<Received>,
    accepted: Vec<Received>,
    spans: Vec<Span>,
    in_flight: usize,
    max_in_flight: usize,
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutates the state and wakes the `wait_*` helpers.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_waiters();
        out
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    server: Server,
}

impl Backend {
    pub async fn start() -> Backend {
        Self::start_on(0).await
    }

    /// Listens on a specific port, e.g. to bring a backend back on the port
    /// a previous one used.
    pub async fn start_on(port: u16) -> Backend {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                default: Reply::Ok,
                script: None,
                received: Vec::new(),
                accepted: Vec::new(),
                spans: Vec::new(),
                in_flight: 0,
                max_in_flight: 0,
            }),
            changed: Notify::new(),
        });
        let handler_inner = inner.clone();
        let server = Server::serve(serve::bind(port), move |req| {
            handle(handler_inner.clone(), req)
        });
        Backend {
            addr: server.addr,
            inner,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT/webhook` (any path is accepted and recorded).
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// The reply for every request not handled by a script.
    pub fn set_reply(&self, reply: Reply) {
        self.inner.update(|s| s.default = reply);
    }

    /// Decides each reply from the request and its 0-based arrival index;
    /// overrides `set_reply`.
    pub fn set_script(&self, f: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) {
        self.inner.update(|s| s.script = Some(Arc::new(f)));
    }

    /// Every request, whatever its answer, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().received.clone()
    }

    /// Requests answered 2xx, in the order the answers were produced.
    pub fn accepted(&self) -> Vec<Received> {
        self.inner.lock().accepted.clone()
    }

    pub fn spans(&self) -> Vec<Span> {
        self.inner.lock().spans.clone()
    }

    /// Peak number of requests in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.inner.lock().max_in_flight
    }

    /// Peak number of requests in flight at once among requests with the
    /// same key (e.g. a bot id header). Requests still in flight count as
    /// ending now.
    pub fn max_concurrent_per_key(&self, key: impl Fn(&Received) -> String) -> usize {
        let now = Instant::now();
        let mut events: HashMap<String, Vec<(Instant, i32)>> = HashMap::new();
        for span in self.spans() {
            let list = events.entry(key(&span.received)).or_default();
            list.push((span.start, 1));
            list.push((span.end.unwrap_or(now), -1));
        }
        let mut peak = 0;
        for list in events.values_mut() {
            // Ends sort before starts at the same instant: back-to-back
            // requests are not concurrent.
            list.sort();
            let mut current = 0;
            for (_, delta) in list.iter() {
                current += delta;
                peak = peak.max(current);
            }
        }
        peak as usize
    }

    /// Waits until at least `n` requests were accepted; returns all accepted.
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> Vec<Received> {
        let found = self
            .wait_for(within, || {
                let s = self.inner.lock();
                (s.accepted.len() >= n).then(|| s.accepted.clone())
            })
            .await;
        found.unwrap_or_else(|| {
            let s = self.inner.lock();
            panic!(
                "backend: expected at least {n} accepted requests within {within:?}, got {} accepted of {} received",
                s.accepted.len(),
                s.received.len()
            )
        })
    }

    /// Waits until at least `n` requests arrived; returns all received.
    pub async fn wait_received(&self, n: usize, within: Duration) -> Vec<Received> {
        let found = self
            .wait_for(within, || {
                let s = self.inner.lock();
                (s.received.len() >= n).then(|| s.received.clone())
            })
            .await;
        found.unwrap_or_else(|| {
            let s = self.inner.lock();
            panic!(
                "backend: expected at least {n} requests within {within:?}, got {} ({} accepted)",
                s.received.len(),
                s.accepted.len()
            )
        })
    }

    /// Stops listening and closes open connections (hanging requests
    /// included); afterwards the port refuses connections.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    async fn wait_for<T>(&self, within: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + within;
        super::wait::on_change(&self.inner.changed, deadline, check).await
    }
}

/// Ends a request's span; if the handler is dropped before answering (client
/// hung up, or shutdown), the span ends without a status.
struct InFlight {
    inner: Arc<Inner>,
    index: usize,
    done: bool,
}

impl InFlight {
    fn finish(mut self, status: u16) {
        self.end(Some(status));
        self.done = true;
    }

    fn end(&self, status: Option<u16>) {
        self.inner.update(|s| {
            s.in_flight -= 1;
            let span = &mut s.spans[self.index];
            span.end = Some(Instant::now());
            span.status = status;
            if status.is_some_and(|st| (200..300).contains(&st)) {
                let received = span.received.clone();
                s.accepted.push(received);
            }
        });
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.end(None);
        }
    }
}

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("backend: invalid status in Reply"))
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| DropConnection)?.to_bytes();
    let at = Instant::now();

    // Record before replying, so even requests that fail or hang are seen.
    let (received, script, default) = inner.update(|s| {
        let received = Received {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body,
            at,
            index: s.received.len(),
        };
        s.received.push(received.clone());
        s.spans.push(Span {
            received: received.clone(),
            start: at,
            end: None,
            status: None,
        });
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        (received, s.script.clone(), s.default.clone())
    });
    let guard = InFlight {
        inner: inner.clone(),
        index: received.index,
        done: false,
    };

    // The script runs outside the lock so it may take its time.
    let reply = match script {
        Some(script) => script(&received, received.index),
        None => default,
    };
    let resp = match reply {
        Reply::Ok => response(200, "text/plain", ""),
        Reply::Status(status) => response(status, "text/plain", format!("status {status}")),
        Reply::StatusRetryAfter(status, secs) => {
            let mut resp = response(status, "text/plain", format!("status {status}"));
            resp.headers_mut()
                .insert(RETRY_AFTER, secs.to_string().parse().expect("valid header"));
            resp
        }
        Reply::Delay(delay) => {
            tokio::time::sleep(delay).await;
            response(200, "text/plain", "")
        }
        Reply::Hang => std::future::pending().await,
        Reply::Body(status, content_type, body) => response(status, &content_type, body),
        Reply::Bytes(status, content_type, body) => response(status, &content_type, body),
        Reply::Chunked(status, content_type, body) => {
            let mut resp = response(status, &content_type, body);
            resp.headers_mut().insert(
                hyper::header::TRANSFER_ENCODING,
                hyper::header::HeaderValue::from_static("chunked"),
            );
            resp
        }
    };
    guard.finish(resp.status().as_u16());
    Ok(resp)
}
