//! A fake Telegram Bot API that follows Telegram's `getUpdates` semantics:
//! offsets confirm updates, long polls wake when an update arrives, a newer
//! `getUpdates` terminates the older one with 409, unknown tokens get 401.
//! Tests can inject one-shot faults per token, and have it enforce rate
//! limits per chat, group and bot like a platform (fake_limits.rs).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::fake_limits::{FakeLimits, Limiter};
use super::serve::{self, Body, DropConnection, Server};
use super::tls::{serve_tls, Seen, TestCa, TlsOptions};

// Messages, files and downloads; a child module so it can use the bot state.
#[path = "fake_results.rs"]
mod results;

/// Route shape of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/bot{token}/{method}`
    Telegram,
    /// `/bot/bot{token}/{method}`
    MpChat,
    /// `/bot/v1/{token}/{method}`
    WwChat,
}

impl Flavor {
    /// The longest long poll the platform accepts, in seconds.
    pub fn max_timeout(self) -> i64 {
        match self {
            Flavor::Telegram | Flavor::MpChat => 50,
            Flavor::WwChat => 60,
        }
    }

    fn template(self) -> &'static str {
        match self {
            Flavor::Telegram => "/bot{token}/{method}",
            Flavor::MpChat => "/bot/bot{token}/{method}",
            Flavor::WwChat => "/bot/v1/{token}/{method}",
        }
    }

    /// Splits a request path into (token, method), or None when the path
    /// doesn't have this flavor's shape.
    fn parse(self, path: &str) -> Option<(&str, &str)> {
        let rest = match self {
            Flavor::Telegram => path.strip_prefix("/bot")?,
            Flavor::MpChat => path.strip_prefix("/bot/bot")?,
            Flavor::WwChat => path.strip_prefix("/bot/v1/")?,
        };
        let (token, method) = rest.split_once('/')?;
        if token.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some((token, method))
    }
}

/// A one-shot fault applied to the next `getUpdates` call of a token instead
/// of the normal answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 409 "terminated by other getUpdates request".
    ConflictOtherPoller,
    /// 409 "can't use getUpdates method while webhook is active".
    ConflictWebhook,
    /// 429 with `parameters.retry_after` and a `Retry-After` header.
    TooManyRequests(u64),
    /// The given status with a Telegram-style JSON error body.
    ServerError(u16),
    /// 502 with an nginx HTML page.
    HtmlBody,
    /// 200 with a truncated JSON body.
    MalformedJson,
    /// Close the connection without any response.
    Reset,
    /// Sleep this long, then answer normally (the call confirms offsets).
    Hang(Duration),
    /// 404 Not Found.
    NotFound,
    /// 501 {"ok":false,"error_code":501,"description":"Not Implemented"}
    NotImplemented,
    /// This status, content type and body, byte for byte.
    Raw {
        status: u16,
        content_type: &'static str,
        body: Bytes,
    },
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method name as sent (Telegram matches it case-insensitively).
    pub method: String,
    pub offset: Option<i64>,
    pub timeout: Option<u64>,
    pub limit: Option<u64>,
    /// What this call sent, if anything.
    pub allowed_updates: Option<Vec<String>>,
    /// All parameters as received (JSON body, form body and query string
    /// merged; form and query values are JSON strings).
    pub params: Value,
    /// When the request arrived.
    pub at: Instant,
    /// HTTP status of the answer. Calls are recorded on arrival, so:
    /// 0 = not answered yet, 499 = the client went away before the answer,
    /// 444 = the connection was dropped on purpose (`Fault::Reset`).
    pub status: u16,
    pub answered_at: Option<Instant>,
}

impl Call {
    pub fn is_get_updates(&self) -> bool {
        self.method.eq_ignore_ascii_case("getUpdates")
    }
}

const CONFLICT_OTHER_POLLER: &str =
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";
const CONFLICT_WEBHOOK: &str =
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";
const NGINX_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n";

/// Status recorded for a call whose connection we dropped (nginx's code for
/// "closed without response").
const STATUS_RESET: u16 = 444;
/// Status recorded for a call the client abandoned (nginx's "client closed request").
const STATUS_CLIENT_GONE: u16 = 499;

#[derive(Default)]
struct Bot {
    /// (id, username) once `add_bot` was called; None answers 401.
    info: Option<(i64, String)>,
    /// (update_id, raw JSON bytes) in queue order.
    queue: VecDeque<(i64, Bytes)>,
    confirmed: Option<i64>,
    allowed_updates: Option<Vec<String>>,
    faults: VecDeque<Fault>,
    /// One-shot faults for other methods: (method, fault).
    method_faults: VecDeque<(String, Fault)>,
    webhook: Option<String>,
    /// Bumped by every processed getUpdates; an in-flight call that sees a
    /// newer generation was superseded and answers 409, like Telegram.
    generation: u64,
    calls: Vec<Call>,
    /// The update ids of every non-empty batch answered, in answer order.
    batches: Vec<Vec<i64>>,
    /// The last positive offset applied (after a call's faults and checks).
    applied_offset: Option<i64>,
    /// Rate limits and injected 429s for every method but getUpdates.
    limits: Limiter,
    /// Serve up to this many updates per getUpdates whatever the client
    /// asked for (a platform with bigger batches than Telegram's 100): lets
    /// a test ingest 100,000 updates in a few hundred polls.
    batch_size: Option<usize>,
    /// Messages sent and files kept (`send*`, `getFile`, downloads).
    content: results::Content,
}

struct Inner {
    flavor: Flavor,
    bots: Mutex<HashMap<String, Bot>>,
    /// Woken on every state change (push, call recorded, call answered...):
    /// long polls and `wait_*` helpers re-check their condition.
    changed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bot>> {
        // A panicking test thread must not hide the real failure behind a
        // poisoned-mutex panic in the server.
        self.bots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutates a bot's state and wakes everyone waiting for a change.
    fn with_bot<T>(&self, token: &str, f: impl FnOnce(&mut Bot) -> T) -> T {
        let out = f(self.lock().entry(token.to_owned()).or_default());
        self.changed.notify_waiters();
        out
    }

    /// Reads a bot's state. Must not notify: waiters call this from their
    /// check, and notifying there would make them wake each other forever.
    fn read<T>(&self, token: &str, f: impl FnOnce(&Bot) -> T) -> T {
        match self.lock().get(token) {
            Some(bot) => f(bot),
            None => f(&Bot::default()),
        }
    }

    /// Waits until `check` returns Some, re-checking on every state change.
    /// Returns the last check's result at the deadline.
    async fn wait_for<T>(
        &self,
        deadline: tokio::time::Instant,
        check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        super::wait::on_change(&self.changed, deadline, check).await
    }
}

pub struct FakeApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _server: Server,
    /// Set when served over TLS (`start_tls`): the CA to trust and what
    /// the TLS front saw.
    tls: Option<(TestCa, Arc<Seen>)>,
}

impl FakeApi {
    pub async fn start(flavor: Flavor) -> FakeApi {
        let inner = Arc::new(Inner {
            flavor,
            bots: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        let handler_inner = inner.clone();
        let server = Server::serve(serve::bind(0), move |req| {
            handle(handler_inner.clone(), req)
        });
        FakeApi {
            addr: server.addr,
            inner,
            _server: server,
            tls: None,
        }
    }

    /// The same API over TLS, its certificate signed by a CA of its own
    /// (`ca_file()`), HTTP/1.1 or HTTP/2 as `opts` offers.
    pub async fn start_tls(flavor: Flavor, opts: TlsOptions) -> FakeApi {
        let inner = Arc::new(Inner {
            flavor,
            bots: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        let ca = TestCa::new();
        let seen = Arc::new(Seen::default());
        let handler_inner = inner.clone();
        let server = serve_tls(serve::bind(0), &ca, opts, seen.clone(), move |req| {
            handle(handler_inner.clone(), req)
        });
        FakeApi {
            addr: server.addr,
            inner,
            _server: server,
            tls: Some((ca, seen)),
        }
    }

    /// The CA certificate file a client must trust (TLS only).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.tls
            .as_ref()
            .expect("rig: not a TLS FakeApi")
            .0
            .ca_file()
    }

    /// What the TLS front saw (TLS only).
    pub fn seen(&self) -> &Seen {
        &self.tls.as_ref().expect("rig: not a TLS FakeApi").1
    }

    /// e.g. `http://127.0.0.1:PORT/bot{token}/{method}` with literal placeholders.
    pub fn url_template(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, self.inner.flavor.template())
    }

    /// The concrete URL of one method, for calling the fake directly.
    pub fn method_url(&self, token: &str, method: &str) -> String {
        self.url_template()
            .replace("{token}", token)
            .replace("{method}", method)
    }

    pub fn add_bot(&self, token: &str, id: i64, username: &str) {
        self.inner
            .with_bot(token, |b| b.info = Some((id, username.to_owned())));
    }

    /// Queues an update; `raw_json` is returned byte for byte.
    pub fn push_raw(&self, token: &str, update_id: i64, raw_json: &str) {
        self.push_bytes(token, update_id, raw_json.as_bytes().to_vec());
    }

    /// Queues an update given as bytes, which need not be valid UTF-8 (nor
    /// valid JSON); `update_id` is the fake's own, for confirming it.
    pub fn push_bytes(&self, token: &str, update_id: i64, raw: impl Into<Bytes>) {
        let raw = raw.into();
        self.inner
            .with_bot(token, |b| b.queue.push_back((update_id, raw)));
    }

    /// Queues many updates at once (one lock, one wake-up): for tests that
    /// send tens of thousands.
    pub fn push_many(&self, token: &str, updates: impl IntoIterator<Item = (i64, Bytes)>) {
        self.inner.with_bot(token, |b| b.queue.extend(updates));
    }

    /// From now on every getUpdates of `token` is answered with up to `n`
    /// updates, whatever its `limit` (see `Bot::batch_size`).
    pub fn serve_batches_of(&self, token: &str, n: usize) {
        self.inner.with_bot(token, |b| b.batch_size = Some(n));
    }

    /// Drops a queued update without confirming it, as Telegram does after
    /// 24 h.
    pub fn expire(&self, token: &str, update_id: i64) {
        self.inner
            .with_bot(token, |b| b.queue.retain(|(id, _)| *id != update_id));
    }

    /// Queues a private text message and returns the exact JSON pushed.
    pub fn push_message(&self, token: &str, update_id: i64, chat_id: i64, text: &str) -> String {
        let date = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = serde_json::to_string(text).expect("string serialises");
        let raw = format!(
            r#"{{"update_id":{update_id},"message":{{"message_id":{update_id},"date":{date},"chat":{{"id":{chat_id},"type":"private"}},"text":{text}}}}}"#
        );
        self.push_raw(token, update_id, &raw);
        raw
    }

    /// Highest update_id the client has confirmed (max offset seen - 1).
    pub fn confirmed(&self, token: &str) -> Option<i64> {
        self.inner.read(token, |b| b.confirmed)
    }

    /// Updates queued and not yet confirmed.
    pub fn pending(&self, token: &str) -> usize {
        self.inner.read(token, |b| b.queue.len())
    }

    /// Every request recorded for this token, all methods, in arrival order.
    pub fn calls(&self, token: &str) -> Vec<Call> {
        self.inner.read(token, |b| b.calls.clone())
    }

    /// Only the getUpdates calls.
    pub fn get_updates_calls(&self, token: &str) -> Vec<Call> {
        self.inner.read(token, |b| {
            b.calls
                .iter()
                .filter(|c| c.is_get_updates())
                .cloned()
                .collect()
        })
    }

    /// How many getUpdates calls got each status (see `Call::status`).
    pub fn status_counts(&self, token: &str) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for c in self.get_updates_calls(token) {
            *counts.entry(c.status).or_default() += 1;
        }
        counts
    }

    /// Waits until at least `n` getUpdates calls arrived; returns them all.
    pub async fn wait_calls(&self, token: &str, n: usize, within: Duration) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + within;
        let found = self
            .inner
            .wait_for(deadline, || {
                let calls = self.get_updates_calls(token);
                (calls.len() >= n).then_some(calls)
            })
            .await;
        found.unwrap_or_else(|| {
            let calls = self.get_updates_calls(token);
            panic!(
                "fake api: expected at least {n} getUpdates calls for token {token:?} within {within:?}, got {}: {calls:#?}",
                calls.len()
            )
        })
    }

    /// Waits until at least `n` calls of `method` (case-insensitive) arrived.
    pub async fn wait_method_calls(
        &self,
        token: &str,
        method: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + within;
        let matching = || -> Vec<Call> {
            self.calls(token)
                .into_iter()
                .filter(|c| c.method.eq_ignore_ascii_case(method))
                .collect()
        };
        let found = self
            .inner
            .wait_for(deadline, || {
                let calls = matching();
                (calls.len() >= n).then_some(calls)
            })
            .await;
        found.unwrap_or_else(|| {
            let all = self.calls(token);
            panic!(
                "fake api: expected at least {n} {method} calls for token {token:?} within {within:?}, got {}; all calls: {all:#?}",
                matching().len()
            )
        })
    }

    /// Waits until the client confirmed `update_id` (i.e. polled with a higher offset).
    pub async fn wait_confirmed(&self, token: &str, update_id: i64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let found = self
            .inner
            .wait_for(deadline, || {
                self.confirmed(token)
                    .filter(|&c| c >= update_id)
                    .map(|_| ())
            })
            .await;
        if found.is_none() {
            panic!(
                "fake api: expected update {update_id} confirmed for token {token:?} within {within:?}, confirmed is {:?}, {} pending",
                self.confirmed(token),
                self.pending(token)
            );
        }
    }

    /// The allowed_updates Telegram would remember for this bot.
    /// The last positive offset a getUpdates applied.
    pub fn applied_offset(&self, token: &str) -> Option<i64> {
        self.inner.read(token, |b| b.applied_offset)
    }

    /// The update ids of every non-empty batch answered, in order.
    pub fn batches(&self, token: &str) -> Vec<Vec<i64>> {
        self.inner.read(token, |b| b.batches.clone())
    }

    pub fn remembered_allowed_updates(&self, token: &str) -> Option<Vec<String>> {
        self.inner.read(token, |b| b.allowed_updates.clone())
    }

    /// Queues a one-shot fault for the token's next getUpdates call.
    pub fn inject(&self, token: &str, fault: Fault) {
        self.inner.with_bot(token, |b| b.faults.push_back(fault));
    }

    /// While a webhook is set, getUpdates answers 409. The client may also
    /// change it with setWebhook / deleteWebhook, as on Telegram.
    /// A one-shot fault for the next call of `method` (not getUpdates).
    pub fn inject_method(&self, token: &str, method: &str, fault: Fault) {
        self.inner.with_bot(token, |b| {
            b.method_faults.push_back((method.to_string(), fault))
        });
    }

    pub fn set_webhook(&self, token: &str, url: Option<&str>) {
        self.inner
            .with_bot(token, |b| b.webhook = url.map(str::to_owned));
    }

    pub fn webhook(&self, token: &str) -> Option<String> {
        self.inner.read(token, |b| b.webhook.clone())
    }

    /// From now on, calls of this token over `limits` get a 429 (see
    /// fake_limits.rs); replaces earlier limits and their counts.
    pub fn enforce_limits(&self, token: &str, limits: FakeLimits) {
        self.inner.with_bot(token, |b| b.limits.enforce(limits));
    }

    /// The next call naming `chat_id` gets a 429 with this `retry_after`,
    /// and the chat stays refused for that long.
    pub fn inject_chat_429(&self, token: &str, chat_id: &str, retry_after_secs: u64) {
        self.inner.with_bot(token, |b| {
            b.limits.inject_chat_429(chat_id, retry_after_secs)
        });
    }

    /// How many calls the fake answered 429 because of limits or injection.
    pub fn rate_limited(&self, token: &str) -> usize {
        self.inner.read(token, |b| b.limits.rate_limited())
    }
}

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn json(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "application/json", body)
}

/// Telegram's error shape, with keys in Telegram's order.
fn error(code: u16, description: &str) -> Response<Body> {
    let description = serde_json::to_string(description).expect("string serialises");
    json(
        code,
        format!(r#"{{"ok":false,"error_code":{code},"description":{description}}}"#),
    )
}

/// Marks the recorded call as answered; if the handler future is dropped
/// first (the client hung up and hyper cancelled us), records 499.
struct CallGuard {
    inner: Arc<Inner>,
    token: String,
    index: usize,
    done: bool,
}

impl CallGuard {
    fn finish(mut self, status: u16) {
        self.set(status);
        self.done = true;
    }

    fn set(&self, status: u16) {
        self.inner.with_bot(&self.token, |b| {
            if let Some(call) = b.calls.get_mut(self.index) {
                call.status = status;
                call.answered_at = Some(Instant::now());
            }
        });
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            self.set(STATUS_CLIENT_GONE);
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let at = Instant::now();
    let path = req.uri().path().to_owned();
    if let Some(answer) = results::download(&inner, &path) {
        return Ok(answer);
    }
    let query = req.uri().query().map(str::to_owned);
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| DropConnection)?
        .to_bytes();

    // Requests that match no route are recorded under the empty token, with
    // the whole path as method, so a misconfigured URL template is visible.
    let (token, method) = inner.flavor.parse(&path).unwrap_or(("", &path));
    let token = token.to_owned();
    let method = method.to_owned();

    let parsed = parse_params(query.as_deref(), &content_type, &body)
        .map(|params| results::keep_uploads(&inner, &token, params, &content_type, &body));
    let params = parsed.clone().unwrap_or_else(|_| Value::Object(Map::new()));
    let call = Call {
        method: method.clone(),
        offset: int_param(&params, "offset").ok().flatten(),
        timeout: int_param(&params, "timeout")
            .ok()
            .flatten()
            .map(|t| t.max(0) as u64),
        limit: int_param(&params, "limit")
            .ok()
            .flatten()
            .map(|l| l.max(0) as u64),
        allowed_updates: allowed_updates_param(&params).ok().flatten(),
        params: params.clone(),
        at,
        status: 0,
        answered_at: None,
    };
    let (index, known) = inner.with_bot(&token, |b| {
        b.calls.push(call);
        (b.calls.len() - 1, b.info.is_some())
    });
    let guard = CallGuard {
        inner: inner.clone(),
        token: token.clone(),
        index,
        done: false,
    };

    let result = if token.is_empty() {
        Ok(error(404, "Not Found"))
    } else if !known {
        Ok(error(401, "Unauthorized"))
    } else {
        match parsed {
            Err(description) => Ok(error(400, &description)),
            Ok(params) => dispatch(&inner, &token, &method, &params, at).await,
        }
    };
    match &result {
        Ok(resp) => guard.finish(resp.status().as_u16()),
        Err(_) => guard.finish(STATUS_RESET),
    }
    result
}

async fn dispatch(
    inner: &Arc<Inner>,
    token: &str,
    method: &str,
    params: &Value,
    at: Instant,
) -> Result<Response<Body>, DropConnection> {
    if !method.eq_ignore_ascii_case("getUpdates") {
        if let Err(secs) = inner.with_bot(token, |b| b.limits.admit(method, params, at)) {
            return fault_response(inner.flavor, Fault::TooManyRequests(secs));
        }
        let fault = inner.with_bot(token, |b| {
            let i = b
                .method_faults
                .iter()
                .position(|(m, _)| m.eq_ignore_ascii_case(method))?;
            b.method_faults.remove(i).map(|(_, f)| f)
        });
        match fault {
            // A slow platform: the call is answered normally, late.
            Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
            Some(fault) => return fault_response(inner.flavor, fault),
            None => {}
        }
    }
    match method.to_ascii_lowercase().as_str() {
        "getupdates" => get_updates(inner, token, params).await,
        "getme" => {
            let (id, username) = inner.read(token, |b| b.info.clone().expect("known bot"));
            let username = serde_json::to_string(&username).expect("string serialises");
            Ok(json(
                200,
                format!(
                    r#"{{"ok":true,"result":{{"id":{id},"is_bot":true,"first_name":{username},"username":{username}}}}}"#
                ),
            ))
        }
        "setwebhook" => {
            let url = str_param(params, "url").filter(|u| !u.is_empty());
            inner.with_bot(token, |b| b.webhook = url);
            Ok(json(
                200,
                r#"{"ok":true,"result":true,"description":"Webhook was set"}"#,
            ))
        }
        "deletewebhook" => {
            let drop_pending = bool_param(params, "drop_pending_updates");
            inner.with_bot(token, |b| {
                b.webhook = None;
                if drop_pending {
                    b.queue.clear();
                }
            });
            Ok(json(
                200,
                r#"{"ok":true,"result":true,"description":"Webhook was deleted"}"#,
            ))
        }
        "getwebhookinfo" => {
            let (url, pending) = inner.read(token, |b| {
                (b.webhook.clone().unwrap_or_default(), b.queue.len())
            });
            let url = serde_json::to_string(&url).expect("string serialises");
            Ok(json(
                200,
                format!(
                    r#"{{"ok":true,"result":{{"url":{url},"has_custom_certificate":false,"pending_update_count":{pending}}}}}"#
                ),
            ))
        }
        // Any other method (e.g. sendMessage from a webhook reply) succeeds
        // with what Telegram would answer (a Message for send*, a File for
        // getFile, else true); the call is already recorded with its parameters.
        _ => Ok(inner.with_bot(token, |b| results::answer(b, method, params))),
    }
}

async fn get_updates(
    inner: &Arc<Inner>,
    token: &str,
    params: &Value,
) -> Result<Response<Body>, DropConnection> {
    let offset = match int_param(params, "offset") {
        Ok(v) => v,
        Err(e) => return Ok(error(400, &e)),
    };
    let timeout = match int_param(params, "timeout") {
        // WWChat allows 60 s and refuses more; Telegram clamps to 50 s;
        // MPChat documents 0-50 s and refuses more.
        Ok(Some(t)) if inner.flavor != Flavor::Telegram && t > inner.flavor.max_timeout() => {
            return Ok(error(400, "Bad Request: timeout is too big"))
        }
        Ok(v) => v.unwrap_or(0).clamp(0, inner.flavor.max_timeout()) as u64,
        Err(e) => return Ok(error(400, &e)),
    };
    let limit = match int_param(params, "limit") {
        // Telegram treats 0 (and absent) as the default of 100.
        Ok(v) => match v.unwrap_or(0) {
            l if l <= 0 => 100,
            l => l.min(100) as usize,
        },
        Err(e) => return Ok(error(400, &e)),
    };
    let allowed_updates = match allowed_updates_param(params) {
        Ok(v) => v,
        Err(e) => return Ok(error(400, &e)),
    };

    // A faulted call is rejected before Telegram processes it: no offset is
    // confirmed and nothing is remembered. Hang is the exception: it is a
    // slow but otherwise normal call.
    let fault = inner.with_bot(token, |b| b.faults.pop_front());
    let hang = match fault {
        None => None,
        Some(Fault::Hang(d)) => Some(d),
        Some(fault) => return fault_response(inner.flavor, fault),
    };

    if inner.read(token, |b| b.webhook.is_some()) {
        return Ok(error(409, CONFLICT_WEBHOOK));
    }

    // This call now supersedes any older in-flight getUpdates for the token.
    let generation = inner.with_bot(token, |b| {
        b.generation += 1;
        b.generation
    });
    let superseded = || inner.read(token, |b| b.generation != generation);

    if let Some(delay) = hang {
        // Sleep, but a newer call still terminates this one at once.
        let deadline = tokio::time::Instant::now() + delay;
        if inner
            .wait_for(deadline, || superseded().then_some(()))
            .await
            .is_some()
        {
            return Ok(error(409, CONFLICT_OTHER_POLLER));
        }
    }

    inner.with_bot(token, |b| {
        if let Some(offset) = offset {
            confirm(b, offset);
        }
        if let Some(allowed) = allowed_updates {
            b.allowed_updates = Some(allowed);
        }
    });

    // Long poll: answer as soon as something is queued, when the timeout
    // expires (with an empty result), or with 409 if a newer call arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let answer = inner
        .wait_for(deadline, || {
            inner.read(token, |b| {
                if b.generation != generation {
                    Some(None)
                } else if !b.queue.is_empty() {
                    Some(Some(b.batch_size.unwrap_or(limit)))
                } else {
                    None
                }
            })
        })
        .await;
    Ok(match answer {
        Some(Some(limit)) => {
            let flavor = inner.flavor;
            let body = inner.with_bot(token, |b| {
                let body = result_body(b, limit);
                let ids: Vec<i64> = b.queue.iter().take(limit).map(|(id, _)| *id).collect();
                if flavor == Flavor::MpChat {
                    // MPChat: a successful response marks the batch consumed.
                    for _ in 0..ids.len() {
                        b.queue.pop_front();
                    }
                    if let Some(max) = ids.iter().max() {
                        b.confirmed = Some(b.confirmed.map_or(*max, |c| c.max(*max)));
                    }
                }
                b.batches.push(ids);
                body
            });
            json(200, body)
        }
        Some(None) => error(409, CONFLICT_OTHER_POLLER),
        // Timed out with nothing queued (the final check also found no
        // newer call, or it would have answered 409).
        None => json(200, r#"{"ok":true,"result":[]}"#),
    })
}

/// Applies a getUpdates offset the way Telegram does.
fn confirm(b: &mut Bot, offset: i64) {
    if offset > 0 {
        b.applied_offset = Some(offset);
        // Queue order, not numeric order: ids may jump down after a reset.
        while b.queue.front().is_some_and(|(id, _)| *id < offset) {
            b.queue.pop_front();
        }
        b.confirmed = Some(b.confirmed.map_or(offset - 1, |c| c.max(offset - 1)));
    } else if offset < 0 {
        // A negative offset keeps only the last -offset updates and forgets
        // the rest.
        let keep = offset.unsigned_abs() as usize;
        while b.queue.len() > keep {
            if let Some((id, _)) = b.queue.pop_front() {
                b.confirmed = Some(b.confirmed.map_or(id, |c| c.max(id)));
            }
        }
    }
}

/// `{"ok":true,"result":[...]}` with the raw updates concatenated verbatim.
fn result_body(b: &Bot, limit: usize) -> Vec<u8> {
    let mut body = br#"{"ok":true,"result":["#.to_vec();
    for (i, (_, raw)) in b.queue.iter().take(limit).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(raw);
    }
    body.extend_from_slice(b"]}");
    body
}

fn fault_response(flavor: Flavor, fault: Fault) -> Result<Response<Body>, DropConnection> {
    Ok(match fault {
        // WWChat says how long to wait only in the Retry-After header.
        Fault::TooManyRequests(secs) if flavor == Flavor::WwChat => {
            let mut resp = json(
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests"}"#.to_string(),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, secs.to_string().parse().expect("valid header"));
            resp
        }
        Fault::ConflictOtherPoller => error(409, CONFLICT_OTHER_POLLER),
        Fault::ConflictWebhook => error(409, CONFLICT_WEBHOOK),
        Fault::TooManyRequests(secs) => {
            let mut resp = json(
                429,
                format!(
                    r#"{{"ok":false,"error_code":429,"description":"Too Many Requests: retry after {secs}","parameters":{{"retry_after":{secs}}}}}"#
                ),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, secs.to_string().parse().expect("valid header"));
            resp
        }
        Fault::ServerError(code) => {
            let reason = StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Internal Server Error");
            error(code, reason)
        }
        Fault::HtmlBody => response(502, "text/html", NGINX_502),
        Fault::MalformedJson => json(200, r#"{"ok":true,"result":[{"update_id":"#),
        Fault::Reset => return Err(DropConnection),
        Fault::NotFound => error(404, "Not Found"),
        Fault::NotImplemented => error(501, "Not Implemented"),
        Fault::Raw {
            status,
            content_type,
            body,
        } => response(status, content_type, body),
        Fault::Hang(_) => unreachable!("Hang is handled by the caller"),
    })
}

/// Merges query string, then body (JSON or form-urlencoded) parameters.
/// Form and query values stay strings, as Telegram receives them.
fn parse_params(query: Option<&str>, content_type: &str, body: &[u8]) -> Result<Value, String> {
    let mut map = Map::new();
    if let Some(query) = query {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            map.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = mime == "application/json"
        || (mime.is_empty() && body.trim_ascii_start().starts_with(b"{"));
    if body.is_empty() {
        // nothing to merge
    } else if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(obj)) => map.extend(obj),
            Ok(_) => return Err("Bad Request: parameters must be a JSON object".into()),
            Err(_) => return Err("Bad Request: can't parse JSON object".into()),
        }
    } else if mime == "multipart/form-data" {
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .ok_or("Bad Request: multipart without boundary")?
            .trim_matches('"');
        map.extend(parse_multipart(body, boundary)?);
    } else if mime == "application/x-www-form-urlencoded" || mime.is_empty() {
        for (k, v) in url::form_urlencoded::parse(body) {
            map.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    } else {
        return Err(format!("Bad Request: unsupported content type {mime}"));
    }
    Ok(Value::Object(map))
}

/// A small multipart/form-data reader: text fields become strings, file
/// fields `{"file_name", "content_type", "data"}` (data as lossy UTF-8).
fn parse_multipart(body: &[u8], boundary: &str) -> Result<Map<String, Value>, String> {
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut map = Map::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let (head, data) = part
            .split_once("\r\n\r\n")
            .ok_or("Bad Request: broken multipart part")?;
        let data = data.strip_suffix("\r\n").unwrap_or(data);
        // Headers come in any order (aiohttp writes Content-Type first).
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .unwrap_or("");
        let attr = |name: &str| {
            disposition
                .split(';')
                .filter_map(|p| p.trim().strip_prefix(&format!("{name}=")))
                .next()
                .map(|v| v.trim_matches('"').to_string())
        };
        let name = attr("name").ok_or("Bad Request: multipart part without a name")?;
        let content_type = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Content-Type: ")
                    .or_else(|| l.strip_prefix("content-type: "))
            })
            .map(str::to_string);
        let value = match attr("filename") {
            Some(file_name) => {
                serde_json::json!({ "file_name": file_name, "content_type": content_type, "data": data })
            }
            None => Value::String(data.to_string()),
        };
        map.insert(name, value);
    }
    Ok(map)
}

/// An integer parameter given as a JSON number or a decimal string.
fn int_param(params: &Value, name: &str) -> Result<Option<i64>, String> {
    let bad = || format!("Bad Request: field \"{name}\" must be of type Integer");
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn str_param(params: &Value, name: &str) -> Option<String> {
    match params.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn bool_param(params: &Value, name: &str) -> bool {
    match params.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "true" | "True" | "1"),
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

/// `allowed_updates`: a JSON array, or (form/query) a JSON-encoded array string.
fn allowed_updates_param(params: &Value) -> Result<Option<Vec<String>>, String> {
    let bad = || "Bad Request: can't parse allowed updates".to_string();
    let array = match params.get("allowed_updates") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a.clone(),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => a,
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    array
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
