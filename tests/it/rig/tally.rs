//! A backend for tests that send tens of thousands of updates: it answers
//! 200 at once (or holds every request, on demand) and keeps per request only
//! what those tests count, where `Backend` keeps every request whole.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::Notify;

use super::serve::{self, Body, DropConnection, Server};

/// One request, reduced to what is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub update_id: i64,
    /// It carried `x-pollhook-replay`.
    pub replay: bool,
}

#[derive(Default)]
pub struct Counts {
    /// Every request, in arrival order.
    pub received: Vec<Hit>,
    /// Requests answered 200, in answer order.
    pub accepted: Vec<Hit>,
}

impl Counts {
    pub fn accepted_replays(&self) -> impl Iterator<Item = &Hit> {
        self.accepted.iter().filter(|h| h.replay)
    }
}

struct Inner {
    counts: Mutex<Counts>,
    /// While set, requests are recorded and never answered.
    hold: AtomicBool,
    changed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Tally {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _server: Server,
}

impl Tally {
    pub async fn start() -> Tally {
        let inner = Arc::new(Inner {
            counts: Mutex::new(Counts::default()),
            hold: AtomicBool::new(false),
            changed: Notify::new(),
        });
        let handler_inner = inner.clone();
        let server = Server::serve(serve::bind(0), move |req| {
            handle(handler_inner.clone(), req)
        });
        Tally {
            addr: server.addr,
            inner,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// Holds every request from now on (recorded, never answered), or
    /// answers again (requests already held stay held).
    pub fn hold(&self, hold: bool) {
        self.inner.hold.store(hold, Ordering::SeqCst);
    }

    /// Reads the counts.
    pub fn with<T>(&self, f: impl FnOnce(&Counts) -> T) -> T {
        f(&self.inner.lock())
    }

    /// Waits until `done` holds for the counts; panics naming `what` with
    /// `describe`'s view of the counts on timeout.
    pub async fn wait(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Counts) -> bool,
        describe: impl Fn(&Counts) -> String,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        let found = super::wait::on_change(&self.inner.changed, deadline, || {
            done(&self.inner.lock()).then_some(())
        })
        .await;
        if found.is_none() {
            panic!(
                "tally: timed out after {within:?} waiting for {what}; {}",
                describe(&self.inner.lock())
            );
        }
    }
}

/// N of a body starting `{"update_id":N`, the shape the tests using this
/// backend send; read by hand because this runs 100,000s of times in a
/// debug build.
fn update_id_of(body: &[u8]) -> i64 {
    let digits = body
        .strip_prefix(br#"{"update_id":"#)
        .unwrap_or_else(|| panic!("tally: a body not starting with update_id: {body:?}"));
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("tally: no update_id in {body:?}"))
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let replay = req.headers().contains_key("x-pollhook-replay");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| DropConnection)?
        .to_bytes();
    let hit = Hit {
        update_id: update_id_of(&body),
        replay,
    };
    inner.lock().received.push(hit);
    inner.changed.notify_waiters();
    if inner.hold.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    inner.lock().accepted.push(hit);
    inner.changed.notify_waiters();
    Ok(Response::new(Full::new(bytes::Bytes::new())))
}
