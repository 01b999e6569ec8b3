//! Servers for benchmarks: a fake Bot API that serves a prepared backlog (or
//! updates pushed one at a time) and answers `sendMessage` with a small
//! message, and a backend that answers at once (or after a delay, or 503
//! while "down"). Built for speed so they are never the
//! bottleneck: hyper on a listener with a 1024 backlog, TCP_NODELAY,
//! keep-alive, pre-rendered update bodies.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;

pub async fn listen() -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    socket.listen(1024).expect("listen")
}

pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: u16, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("static response")
}

/// The update a benchmark sends: a Telegram message in one of `chats`
/// chats. Its text and names repeat from update to update, so a batch of
/// them compresses ~10× (LZ4), more than real traffic; with
/// `BENCH_UPDATES=varied` each has its own words, names and length and they
/// compress ~2.5×, about as real updates do (BENCHMARKS.md, 2026-12-02).
pub fn update_json(id: i64, chats: i64) -> Bytes {
    let chat = 1000 + id % chats;
    if std::env::var_os("BENCH_UPDATES").is_some_and(|v| v == "varied") {
        return varied_update(id, chat);
    }
    Bytes::from(format!(
        r#"{{"update_id":{id},"message":{{"message_id":{id},"from":{{"id":{chat},"is_bot":false,"first_name":"Bench","username":"bench_user","language_code":"en"}},"chat":{{"id":{chat},"first_name":"Bench","username":"bench_user","type":"private"}},"date":1763779200,"text":"benchmark message number {id} with a little text to make it realistic"}}}}"#
    ))
}

fn varied_update(id: i64, chat: i64) -> Bytes {
    const WORDS: &str = "the be to of and a in that have it for not on with he as you do at this \
        but his by from they we say her she or an will my one all would there what so up out if \
        about who get which go me when make can like time no just him know take people into year \
        your good some could them see other than then now look only come over think also back \
        after use two how our work first well way even new want because any these give day most \
        hey ok thanks please tomorrow meeting order price delivery hello привет спасибо заказ доставка";
    const NAMES: &str = "Anna Boris Chen Dmitri Elena Farid Giulia Hiro Ivan Jana Kofi Lena Maria \
        Nikolai Olga Pavel Quinn Rosa Sergei Tanya";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let names: Vec<&str> = NAMES.split_whitespace().collect();
    // xorshift seeded by the id: the same update every run.
    let mut x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let n = 1 + next(40);
    let text: Vec<&str> = (0..n).map(|_| words[next(words.len())]).collect();
    let (first, last) = (names[next(names.len())], names[next(names.len())]);
    let user: String = (0..5 + next(8))
        .map(|_| (b'a' + next(26) as u8) as char)
        .collect();
    let lang = ["en", "ru", "de", "es"][next(4)];
    let message_id = 1 + next(1_000_000);
    let entities = if next(5) == 0 {
        format!(
            r#","entities":[{{"offset":0,"length":{},"type":"bold"}}]"#,
            1 + next(10)
        )
    } else {
        String::new()
    };
    Bytes::from(format!(
        r#"{{"update_id":{id},"message":{{"message_id":{message_id},"from":{{"id":{chat},"is_bot":false,"first_name":"{first}","last_name":"{last}ova","username":"{user}","language_code":"{lang}"}},"chat":{{"id":{chat},"first_name":"{first}","username":"{user}","type":"private"}},"date":{},"text":"{}"{entities}}}}}"#,
        1_764_547_200 + id,
        text.join(" ")
    ))
}

/// `sendMessage`'s answer: the message as Telegram returns it, trimmed
/// to the fields a client reads (~170 bytes), rendered without a JSON
/// serializer so that the fake stays cheap.
fn sent_message(id: u64, params: &serde_json::Value) -> Bytes {
    let chat = match &params["chat_id"] {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            s.clone()
        }
        _ => "0".to_string(),
    };
    Bytes::from(format!(
        r#"{{"ok":true,"result":{{"message_id":{id},"from":{{"id":1,"is_bot":true,"first_name":"bench","username":"bench_bot"}},"chat":{{"id":{chat},"type":"private"}},"date":1764547200,"text":"ok"}}}}"#
    ))
}

#[derive(Default)]
struct ApiState {
    queue: VecDeque<(i64, Bytes)>,
    /// Per update id, when it was made available (for latency).
    pushed_at: HashMap<i64, Instant>,
}

/// The fake Bot API: one token, Telegram's offset semantics, long polls.
#[derive(Clone)]
pub struct Api {
    state: Arc<Mutex<ApiState>>,
    changed: Arc<Notify>,
    pub calls: Arc<AtomicU64>,
    /// `getUpdates` calls: a relay polls once it is ready (in a cluster,
    /// once a node leads the bot).
    pub polls: Arc<AtomicU64>,
    /// `sendMessage` calls answered.
    pub sent: Arc<AtomicU64>,
}

impl Api {
    pub fn new() -> Api {
        Api {
            state: Default::default(),
            changed: Default::default(),
            calls: Default::default(),
            polls: Default::default(),
            sent: Default::default(),
        }
    }

    pub fn push(&self, id: i64, body: Bytes) {
        let mut s = self.state.lock().unwrap();
        s.queue.push_back((id, body));
        s.pushed_at.insert(id, Instant::now());
        drop(s);
        self.changed.notify_waiters();
    }

    pub fn pushed_at(&self, id: i64) -> Option<Instant> {
        self.state.lock().unwrap().pushed_at.get(&id).copied()
    }

    pub fn pending(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    pub async fn start(&self) -> SocketAddr {
        let listener = listen().await;
        let addr = listener.local_addr().unwrap();
        let api = self.clone();
        tokio::spawn(serve(listener, move |req| {
            let api = api.clone();
            async move { api.handle(req).await }
        }));
        addr
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let params: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match method.as_str() {
            "getMe" => json(200, Bytes::from_static(br#"{"ok":true,"result":{"id":1,"is_bot":true,"first_name":"bench","username":"bench_bot"}}"#)),
            "getUpdates" => {
                self.polls.fetch_add(1, Ordering::Relaxed);
                self.get_updates(&params).await
            }
            "sendMessage" => {
                let id = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
                json(200, sent_message(id, &params))
            }
            _ => json(200, Bytes::from_static(br#"{"ok":true,"result":true}"#)),
        }
    }

    async fn get_updates(&self, params: &serde_json::Value) -> Response<Full<Bytes>> {
        let offset = params["offset"].as_i64().unwrap_or(0);
        let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0).min(50));
        let limit = params["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap();
                while s.queue.front().is_some_and(|(id, _)| *id < offset) {
                    s.queue.pop_front();
                }
                if !s.queue.is_empty() {
                    let mut out = Vec::with_capacity(limit * 400);
                    out.extend_from_slice(br#"{"ok":true,"result":["#);
                    for (i, (_, body)) in s.queue.iter().take(limit).enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(body);
                    }
                    out.extend_from_slice(b"]}");
                    return json(200, Bytes::from(out));
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return json(200, Bytes::from_static(br#"{"ok":true,"result":[]}"#));
                }
            }
        }
    }
}

/// The backend: counts distinct updates, remembers when each first arrived.
#[derive(Clone)]
pub struct Backend {
    pub received: Arc<AtomicU64>,
    seen: Arc<Mutex<HashMap<i64, Instant>>>,
    pub distinct: Arc<AtomicU64>,
    pub down: Arc<AtomicBool>,
    delay: Duration,
    pub changed: Arc<Notify>,
}

impl Backend {
    pub fn new(delay: Duration) -> Backend {
        Backend {
            received: Default::default(),
            seen: Default::default(),
            distinct: Default::default(),
            down: Default::default(),
            delay,
            changed: Default::default(),
        }
    }

    pub async fn start(&self) -> SocketAddr {
        let listener = listen().await;
        let addr = listener.local_addr().unwrap();
        let b = self.clone();
        tokio::spawn(serve(listener, move |req| {
            let b = b.clone();
            async move { b.handle(req).await }
        }));
        addr
    }

    pub fn arrived(&self, id: i64) -> Option<Instant> {
        self.seen.lock().unwrap().get(&id).copied()
    }

    /// The earliest first arrival of any update with an id above `id`.
    pub fn first_arrival_above(&self, id: i64) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| **i > id)
            .map(|(_, at)| *at)
            .min()
    }

    /// Every distinct update's id and first arrival.
    pub fn arrivals(&self) -> Vec<(i64, Instant)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(i, at)| (*i, *at))
            .collect()
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return json(503, Bytes::new());
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        // The id sits right after `{"update_id":`; no full parse needed.
        let id = std::str::from_utf8(&body)
            .ok()
            .and_then(|t| t.strip_prefix("{\"update_id\":"))
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit() && c != '-').next())
            .and_then(|n| n.parse::<i64>().ok());
        if let Some(id) = id {
            // The first arrival counts: a duplicate (after a failover)
            // must not move an update's delivery time.
            let mut seen = self.seen.lock().unwrap();
            if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(id) {
                e.insert(Instant::now());
                self.distinct.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.changed.notify_waiters();
        json(200, Bytes::new())
    }

    /// Waits until `n` distinct updates arrived.
    pub async fn wait_distinct(&self, n: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            if self.distinct.load(Ordering::Relaxed) >= n {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
}
