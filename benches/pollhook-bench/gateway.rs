//! The `gateway` scenario (issue 17): what a Bot API call gains in latency
//! by going through pollhook's gateway instead of straight to the
//! platform, when no rate limit applies. Both paths call the same fake Bot
//! API from the same keep-alive HTTP/1.1 client, alternating in rounds so
//! the shared machine's noise hits both; the ratio and the difference are
//! the figures, the absolute times are this machine's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;

use crate::nats::free_port;
use crate::proc::{cpu_seconds, Child, Config, GatewayAccess};
use crate::row;
use crate::servers::{Api, Backend};

/// The issue's target: p99 added by the gateway.
const TARGET_P99_ADDED: Duration = Duration::from_millis(1);
/// The concurrent part: this many callers, each sending in a loop...
const CALLERS: usize = 16;
/// ...over this many private chats (ids 1000..1100).
const CHATS: u64 = 100;
/// Calls each way before measuring: connections opened, caches warm.
const WARMUP: usize = 200;

pub struct Sizes {
    /// Sequential calls each way (direct and through the gateway).
    pub calls: usize,
    /// Rounds the sequential calls are split into, alternating which path
    /// goes first.
    pub rounds: usize,
    /// Rounds of the concurrent part, each a burst of both paths.
    pub bursts: usize,
    /// How long each concurrent burst lasts.
    pub burst: Duration,
    /// Each concurrent caller keeps to its own chats, so no call waits
    /// for another caller's call in its chat (the gateway keeps one call
    /// per chat in flight, for per-chat order).
    pub own_chats: bool,
}

impl Sizes {
    pub fn new(quick: bool, calls: Option<usize>, rounds: Option<usize>, own_chats: bool) -> Sizes {
        let (c, r, burst) = if quick {
            (1_000, 4, Duration::from_secs(1))
        } else {
            (10_000, 10, Duration::from_secs(3))
        };
        Sizes {
            calls: calls.unwrap_or(c).max(1),
            rounds: rounds.unwrap_or(r).max(1),
            bursts: 3,
            burst,
            own_chats,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Gateway,
}

/// The two URLs of `sendMessage`: the fake API's with the bot's token,
/// and the gateway's with the client's key.
struct Urls {
    direct: String,
    gateway: String,
}

impl Urls {
    fn of(&self, path: Path) -> &str {
        match path {
            Path::Direct => &self.direct,
            Path::Gateway => &self.gateway,
        }
    }
}

fn message(chat: u64, n: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"chat_id":{},"text":"benchmark message number {n}"}}"#,
        1000 + chat
    ))
}

/// One `sendMessage`: request sent → whole answer read.
async fn send(client: &reqwest::Client, url: &str, body: Bytes) -> Duration {
    let start = Instant::now();
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .expect("sendMessage is answered");
    let status = response.status();
    let answer = response.bytes().await.expect("its answer is read");
    let took = start.elapsed();
    // The gateway passes the platform's answer on byte for byte: anything
    // else is a refusal (or an error) and would measure the wrong thing.
    assert!(
        status.is_success() && answer.starts_with(br#"{"ok":true,"result":{"message_id":"#),
        "sendMessage answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    took
}

/// Waits until the gateway relays a call (it listens once pollhook has
/// started).
async fn wait_ready(client: &reqwest::Client, url: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.exited() {
            panic!("pollhook exited at start ({status}): its configuration was refused?");
        }
        let answered = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(message(0, 0))
            .send()
            .await;
        if let Ok(r) = answered {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert!(status.is_success(), "the gateway answered {status}: {body}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pollhook_gateway_wait_seconds` as `/metrics` shows it: how long calls
/// waited for the budget (its queue and scheduler, no limit applying).
#[derive(Clone, Copy, Default)]
struct Waits {
    count: f64,
    sum: f64,
    /// Calls that waited up to 1 ms (the histogram's first bucket).
    within_1ms: f64,
}

impl Waits {
    async fn read(client: &reqwest::Client, url: &str) -> Waits {
        let text = client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics is read");
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("/metrics has no {name}"))
        };
        Waits {
            count: value("pollhook_gateway_wait_seconds_count{bot=\"b0\"}"),
            sum: value("pollhook_gateway_wait_seconds_sum{bot=\"b0\"}"),
            within_1ms: value("pollhook_gateway_wait_seconds_bucket{bot=\"b0\",le=\"0.001\"}"),
        }
    }

    fn since(self, before: Waits) -> Waits {
        Waits {
            count: self.count - before.count,
            sum: self.sum - before.sum,
            within_1ms: self.within_1ms - before.within_1ms,
        }
    }

    fn mean_us(&self) -> f64 {
        self.sum / self.count.max(1.0) * 1e6
    }

    fn over_1ms_pct(&self) -> f64 {
        (self.count - self.within_1ms) / self.count.max(1.0) * 100.0
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// `a − b`, signed, in ms.
fn diff_ms(a: Duration, b: Duration) -> String {
    format!("{:+.3} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The chat of caller k's i-th call: (k + CALLERS·i) mod CHATS spreads
/// the callers over all the chats, and two of them meet in a chat now and
/// then, as independent backends do. With `own`, caller k keeps to the
/// chats k + CALLERS·j, j < CHATS / CALLERS: they never meet.
fn chat_of(k: u64, i: u64, own: bool) -> u64 {
    let callers = CALLERS as u64;
    if own {
        k + callers * (i % (CHATS / callers))
    } else {
        (k + callers * i) % CHATS
    }
}

/// `CALLERS` callers sending for `length`; returns calls/s and the
/// latencies.
async fn burst(
    client: &reqwest::Client,
    url: &str,
    length: Duration,
    own_chats: bool,
) -> (f64, Vec<Duration>) {
    let url: Arc<str> = url.into();
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for k in 0..CALLERS as u64 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let chat = chat_of(k, i, own_chats);
                out.push(send(&client, &url, message(chat, i)).await);
                i += 1;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a caller"));
    }
    let took = start.elapsed();
    (all.len() as f64 / took.as_secs_f64(), all)
}

pub async fn gateway(sizes: Sizes) -> String {
    let api = Api::new();
    let api_addr = api.start().await;
    // pollhook needs a forward; the API holds no updates, so it idles.
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let access = GatewayAccess {
        port: free_port(),
        methods: &["sendMessage"],
        admin_port: free_port(),
    };
    let metrics = format!("http://127.0.0.1:{}/metrics", access.admin_port);
    let urls = Urls {
        direct: format!("http://{api_addr}/bot0:benchtoken/sendMessage"),
        gateway: format!(
            "http://127.0.0.1:{}/bot{}/sendMessage",
            access.port,
            access.key(0)
        ),
    };
    let cfg = Config {
        gateway: Some(access),
        ..Config::default()
    };
    let mut child = Child::pollhook(api_addr, backend_addr, &cfg);
    // One keep-alive client for both paths (a pool per host), as a
    // backend would hold.
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    wait_ready(&client, &urls.gateway, &mut child).await;
    let mut n = 0u64;
    for _ in 0..WARMUP {
        for path in [Path::Direct, Path::Gateway] {
            send(&client, urls.of(path), message(n % CHATS, n)).await;
            n += 1;
        }
    }

    // Sequential calls, one at a time, in rounds alternating which path
    // goes first.
    let waits0 = Waits::read(&client, &metrics).await;
    let per_round = sizes.calls.div_ceil(sizes.rounds);
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    let mut seq_cpu = 0.0;
    for round in 0..sizes.rounds {
        let order = if round % 2 == 0 {
            [Path::Direct, Path::Gateway]
        } else {
            [Path::Gateway, Path::Direct]
        };
        let (mut d, mut g) = (Vec::new(), Vec::new());
        for path in order {
            let cpu0 = child.cpu_seconds();
            let out = if path == Path::Direct { &mut d } else { &mut g };
            for _ in 0..per_round {
                out.push(send(&client, urls.of(path), message(n % CHATS, n)).await);
                n += 1;
            }
            if path == Path::Gateway {
                seq_cpu += child.cpu_seconds() - cpu0;
            }
        }
        let (d, g) = (sorted(d), sorted(g));
        eprintln!(
            "round {}: direct p50 {} p99 {}; gateway p50 {} p99 {}; added p50 {} p99 {}",
            round + 1,
            ms(pct(&d, 0.5)),
            ms(pct(&d, 0.99)),
            ms(pct(&g, 0.5)),
            ms(pct(&g, 0.99)),
            diff_ms(pct(&g, 0.5), pct(&d, 0.5)),
            diff_ms(pct(&g, 0.99), pct(&d, 0.99)),
        );
        direct.extend(d);
        through.extend(g);
    }
    let (direct, through) = (sorted(direct), sorted(through));
    let calls = direct.len();
    let (d50, d99, g50, g99) = (
        pct(&direct, 0.5),
        pct(&direct, 0.99),
        pct(&through, 0.5),
        pct(&through, 0.99),
    );
    let added99 = g99.saturating_sub(d99);
    let waits1 = Waits::read(&client, &metrics).await;
    let seq_waits = waits1.since(waits0);

    // Concurrent callers, in bursts alternating which path goes first.
    let (mut d_rates, mut g_rates, mut d_lat, mut g_lat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut con_cpu, mut con_calls) = (0.0, 0usize);
    // The bench's own CPU too (its client and the fake API): with the
    // relay's, what a call costs the machine each way.
    let bench = std::process::id();
    let (mut d_bench_cpu, mut g_bench_cpu) = (0.0, 0.0);
    for round in 0..sizes.bursts {
        let order = if round % 2 == 0 {
            [Path::Direct, Path::Gateway]
        } else {
            [Path::Gateway, Path::Direct]
        };
        let (mut d, mut g) = (0.0, 0.0);
        for path in order {
            let cpu0 = child.cpu_seconds();
            let bench0 = cpu_seconds(bench);
            let (rate, lat) = burst(&client, urls.of(path), sizes.burst, sizes.own_chats).await;
            let bench_cpu = cpu_seconds(bench) - bench0;
            match path {
                Path::Direct => {
                    d_bench_cpu += bench_cpu;
                    d = rate;
                    d_lat.extend(lat);
                }
                Path::Gateway => {
                    g_bench_cpu += bench_cpu;
                    con_cpu += child.cpu_seconds() - cpu0;
                    con_calls += lat.len();
                    g = rate;
                    g_lat.extend(lat);
                }
            }
        }
        eprintln!(
            "burst {}: {CALLERS} callers, direct {d:.0} calls/s, gateway {g:.0} calls/s: {:.2}×",
            round + 1,
            g / d
        );
        d_rates.push(d);
        g_rates.push(g);
    }
    let con_waits = Waits::read(&client, &metrics).await.since(waits1);
    let (d_rate, g_rate) = (median(d_rates), median(g_rates));
    let (d_lat, g_lat) = (sorted(d_lat), sorted(g_lat));
    let (cd99, cg99) = (pct(&d_lat, 0.99), pct(&g_lat, 0.99));

    assert_eq!(
        (seq_waits.count as usize, con_waits.count as usize),
        (calls, con_calls),
        "pollhook_gateway_wait_seconds counts every gateway call"
    );
    // Every call reached the fake API: the gateway relayed, not answered.
    let expected = 1 + 2 * (WARMUP + calls) + d_lat.len() + g_lat.len();
    let sent = api.sent.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        sent, expected as u64,
        "the fake API answered {sent} sendMessage calls, expected {expected}"
    );
    drop(child);

    let us_per_call = |cpu: f64, calls: usize| cpu / calls.max(1) as f64 * 1e6;
    let secs = sizes.burst.as_secs_f64();
    let chats = if sizes.own_chats {
        format!(
            "{} chats, {} each",
            CHATS / CALLERS as u64 * CALLERS as u64,
            CHATS / CALLERS as u64
        )
    } else {
        format!("{CHATS} chats")
    };
    [
        row(
            &format!("gateway: sendMessage one at a time, p50 ({calls} calls each way in {} alternating rounds; baseline: the fake API called directly)", sizes.rounds),
            &ms(d50),
            &ms(g50),
            Some(g50.as_secs_f64() / d50.as_secs_f64()),
            "-",
            None,
        ),
        row(
            "gateway: sendMessage one at a time, p99",
            &ms(d99),
            &ms(g99),
            Some(g99.as_secs_f64() / d99.as_secs_f64()),
            "-",
            None,
        ),
        row(
            "gateway: added latency p50 (gateway p50 − direct p50)",
            "-",
            &diff_ms(g50, d50),
            None,
            "-",
            None,
        ),
        row(
            "gateway: added latency p99 (gateway p99 − direct p99)",
            "-",
            &diff_ms(g99, d99),
            None,
            "< 1 ms",
            Some(added99 < TARGET_P99_ADDED),
        ),
        row(
            "gateway: time waiting for the budget (mean; share over 1 ms), one at a time / 16 callers",
            "-",
            &format!(
                "{:.0} µs / {:.0} µs; {:.2} % / {:.2} %",
                seq_waits.mean_us(),
                con_waits.mean_us(),
                seq_waits.over_1ms_pct(),
                con_waits.over_1ms_pct()
            ),
            None,
            "-",
            None,
        ),
        row(
            &format!("gateway: {CALLERS} callers over {chats} (calls/s, median of {} bursts of {secs:.0} s each way)", sizes.bursts),
            &format!("{d_rate:.0}"),
            &format!("{g_rate:.0}"),
            Some(g_rate / d_rate),
            "-",
            None,
        ),
        row(
            &format!("gateway: {CALLERS} callers, p99 latency"),
            &ms(cd99),
            &ms(cg99),
            Some(cg99.as_secs_f64() / cd99.as_secs_f64()),
            "-",
            None,
        ),
        row(
            &format!("gateway: CPU per call with {CALLERS} callers, the bench's client and fake API (+ pollhook through the gateway)"),
            &format!("{:.0} µs", us_per_call(d_bench_cpu, d_lat.len())),
            &format!("{:.0} µs", us_per_call(g_bench_cpu + con_cpu, con_calls)),
            Some(
                (g_bench_cpu + con_cpu) / con_calls.max(1) as f64
                    / (d_bench_cpu / d_lat.len().max(1) as f64)
            ),
            "-",
            None,
        ),
        row(
            &format!("gateway: pollhook CPU per call, one at a time / {CALLERS} callers"),
            "-",
            &format!(
                "{:.0} µs / {:.0} µs",
                us_per_call(seq_cpu, calls),
                us_per_call(con_cpu, con_calls)
            ),
            None,
            "-",
            None,
        ),
    ]
    .join("\n")
}
