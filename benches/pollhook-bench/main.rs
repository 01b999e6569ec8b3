//! pollhook's benchmarks, measured the way users feel them, each against a
//! baseline measured in the same run (see BENCHMARKS.md).
//!
//! `cargo bench --bench pollhook-bench -- <scenario>`; `all` runs every one
//! and prints the table. The fake Bot API and the backend can also run on
//! their own (`serve-api`, `serve-backend`) to measure another relay against
//! the very same servers.

mod baseline;
mod cluster;
mod figures;
mod gateway;
mod history;
mod nats;
mod nats_cluster;
mod plots;
mod proc;
mod servers;
mod tls;
mod traces;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use proc::{Child, Config};
use servers::{update_json, Api, Backend};
use tls::Wire;

fn parse_wires(text: &str) -> Vec<Wire> {
    text.split(',')
        .map(|w| match w.trim() {
            "plain" => Wire::Plain,
            "tls-h1" => Wire::TlsH1,
            "tls-h2" => Wire::TlsH2(None),
            other => match other.strip_prefix("tls-h2-").and_then(|n| n.parse().ok()) {
                Some(n) => Wire::TlsH2(Some(n)),
                None => panic!("unknown wire {other:?}: plain, tls-h1, tls-h2, tls-h2-N"),
            },
        })
        .collect()
}

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// `cargo bench` appends this; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
    /// Where `latency`, `throughput` and `backlog` (alone or in `all`)
    /// write their plots: latency.svg, throughput.svg, backlog.svg.
    #[arg(long, global = true, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bench"))]
    plots: PathBuf,
}

#[derive(Subcommand)]
enum Scenario {
    /// Run a fake Bot API holding a backlog; prints its URL template.
    ServeApi {
        #[arg(long, default_value_t = 100_000)]
        backlog: i64,
        #[arg(long, default_value_t = 100)]
        chats: i64,
    },
    /// Run a backend that answers 200 (after --delay-ms); prints its URL.
    ServeBackend {
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Requests per second each server serves alone.
    Servers,
    /// End-to-end updates/s, pollhook vs the storage-free baseline.
    Throughput {
        #[arg(long, default_value_t = 100_000)]
        updates: i64,
        /// Rounds, each baseline then pollhook (then BIN with --against).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also run this pollhook binary (an older build) in every round:
        /// a change's effect as the ratio of two builds in one run.
        #[arg(long)]
        against: Option<std::path::PathBuf>,
    },
    /// Latency added: update appears at the API → backend receives it.
    Latency {
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
    /// One bot idle-polling: CPU and RSS.
    Idle {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Many bots idle-polling in one process: RSS, CPU and threads.
    ManyBots {
        #[arg(long, default_value_t = 1000)]
        bots: usize,
        /// Which wires to the API, comma-separated: plain, tls-h1, tls-h2,
        /// tls-h2-100 (HTTP/2 with a 100-stream limit).
        #[arg(long, default_value = "plain,tls-h1,tls-h2,tls-h2-100")]
        wires: String,
        /// The idle window CPU is measured over, seconds.
        #[arg(long, default_value_t = 60)]
        window: u64,
    },
    /// Backend down while a backlog arrives: disk, RSS, restart, drain.
    Backlog {
        #[arg(long, default_value_t = 1_000_000)]
        updates: i64,
    },
    /// A backend taking 50 ms per request, 100 chats, max_in_flight 16.
    SlowBackend {
        #[arg(long, default_value_t = 3_000)]
        updates: i64,
    },
    /// The JetStream forward vs the HTTP forward to the fast backend, both
    /// pollhook, interleaved in one run (needs nats-server).
    Jetstream {
        #[arg(long, default_value_t = 100_000)]
        updates: i64,
        /// Rounds of each, alternating HTTP then JetStream.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// pollhook as a cluster node on a 3-server JetStream cluster vs a
    /// single sled node, interleaved; then leader takeovers of 3 nodes
    /// (needs nats-server).
    Cluster {
        #[arg(long, default_value_t = 30_000)]
        updates: i64,
        /// Rounds of each, alternating sled, 3 replicas, 1 replica.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Leader SIGKILLs in the takeover part (0: skip it).
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// Leave the 1-replica rounds out.
        #[arg(long)]
        no_replicas1: bool,
    },
    /// Added latency of a sendMessage through the Bot API gateway (no rate
    /// limit applies) vs the fake API called directly, interleaved; then
    /// 16 concurrent callers' throughput.
    Gateway {
        /// Sequential calls each way (default 10000, 1000 with --quick).
        #[arg(long)]
        calls: Option<usize>,
        /// Alternating rounds they are split into (default 10, 4 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Smaller sizes, and 1 s concurrent bursts instead of 3 s.
        #[arg(long)]
        quick: bool,
        /// Concurrent callers keep to chats of their own (never one call
        /// waiting for another's in its chat).
        #[arg(long)]
        own_chats: bool,
    },
    /// The throughput workload with history on (the defaults) vs off
    /// (`history = "0s"`), paired rounds alternating which goes first; then
    /// `history_max_mb = 2` against several times that.
    History {
        /// Updates per run (default 100000, 20000 with --quick).
        #[arg(long)]
        updates: Option<i64>,
        /// Pairs of runs, one on and one off (default 10, 6 with --quick).
        #[arg(long)]
        pairs: Option<usize>,
        /// Updates of the `history_max_mb = 2` part (default 50000, 20000
        /// with --quick).
        #[arg(long)]
        trim_updates: Option<i64>,
        #[arg(long)]
        quick: bool,
    },
    /// The throughput workload with traces exported (`[tracing]`, to an
    /// OTLP sink in the bench) vs off, rounds rotating which goes first;
    /// with --today BIN, also an older pollhook build, off.
    Tracing {
        /// Updates per run (default 100000, 20000 with --quick).
        #[arg(long)]
        updates: Option<i64>,
        /// Rounds, each running every variant once (default 10, 4 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// A pollhook binary built from before traces existed, run with
        /// tracing off in each round (off / today).
        #[arg(long, value_name = "BIN")]
        today: Option<std::path::PathBuf>,
        #[arg(long)]
        quick: bool,
    },
    /// Every scenario (smaller sizes with --quick).
    All {
        #[arg(long)]
        quick: bool,
    },
    /// The baseline forwarder as its own process (used by the scenarios).
    #[command(hide = true)]
    Baseline {
        api: String,
        backend: String,
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// hyper's client instead of reqwest (`BENCH_BASELINE=lean`).
        #[arg(long)]
        lean: bool,
    },
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let plot_dir = args.plots;
    rt.block_on(async move {
        match args.scenario {
            Scenario::ServeApi { backlog, chats } => serve_api(backlog, chats).await,
            Scenario::ServeBackend { delay_ms } => serve_backend(delay_ms).await,
            Scenario::Servers => println!("{}", servers_alone().await),
            Scenario::Throughput {
                updates,
                rounds,
                against,
            } => match against {
                Some(bin) => println!("{}", throughput_against(updates, rounds, bin).await),
                None => println!("{}", throughput(updates, rounds, &plot_dir).await),
            },
            Scenario::Latency { samples } => println!("{}", latency(samples, &plot_dir).await),
            Scenario::Idle { seconds } => println!("{}", idle(seconds).await),
            Scenario::ManyBots {
                bots,
                wires,
                window,
            } => println!("{}", many_bots(bots, &parse_wires(&wires), window).await),
            Scenario::Backlog { updates } => println!("{}", backlog(updates, &plot_dir).await),
            Scenario::SlowBackend { updates } => println!("{}", slow_backend(updates).await),
            Scenario::Jetstream { updates, rounds } => {
                println!("{}", jetstream(updates, rounds).await)
            }
            Scenario::Cluster {
                updates,
                rounds,
                kills,
                no_replicas1,
            } => println!(
                "{}",
                cluster::cluster(updates, rounds, kills, !no_replicas1).await
            ),
            Scenario::Gateway {
                calls,
                rounds,
                quick,
                own_chats,
            } => println!(
                "{}",
                gateway::gateway(gateway::Sizes::new(quick, calls, rounds, own_chats)).await
            ),
            Scenario::History {
                updates,
                pairs,
                trim_updates,
                quick,
            } => {
                let r = history::history(history::Sizes::new(quick, updates, pairs, trim_updates))
                    .await;
                println!(
                    "{}\n\n| figure | history off | history on | ratio | target | met? |\n|---|---|---|---|---|---|\n{}",
                    r.pairs, r.rows
                );
            }
            Scenario::Tracing {
                updates,
                rounds,
                today,
                quick,
            } => {
                let r = traces::traces(traces::Sizes::new(quick, updates, rounds, today)).await;
                println!(
                    "{}\n\n| figure | baseline | measured | ratio | target | met? |\n|---|---|---|---|---|---|\n{}",
                    r.rounds, r.rows
                );
            }
            Scenario::All { quick } => all(quick, &plot_dir).await,
            Scenario::Baseline {
                api,
                backend,
                in_flight,
                lean,
            } => baseline::run(&api, &backend, in_flight, lean).await,
        }
    });
}

async fn serve_api(backlog: i64, chats: i64) {
    let api = Api::new();
    for id in 1..=backlog {
        api.push(id, update_json(id, chats));
    }
    let addr = api.start().await;
    println!("fake Bot API: http://{addr}/bot{{token}}/{{method}} ({backlog} updates over {chats} chats)");
    std::future::pending::<()>().await;
}

async fn serve_backend(delay_ms: u64) {
    let b = Backend::new(Duration::from_millis(delay_ms));
    let addr = b.start().await;
    println!("backend: http://{addr}/webhook");
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!(
            "received {} requests, {} distinct updates",
            b.received.load(Ordering::Relaxed),
            b.distinct.load(Ordering::Relaxed)
        );
    }
}

/// A markdown table row: figure, baseline, measured, ratio, target, met?
fn row(
    figure: &str,
    baseline: &str,
    measured: &str,
    ratio: Option<f64>,
    target: &str,
    met: Option<bool>,
) -> String {
    let ratio = ratio.map_or("-".to_string(), |r| format!("{r:.2}×"));
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    };
    format!("| {figure} | {baseline} | {measured} | {ratio} | {target} | {met} |")
}

async fn servers_alone() -> String {
    let api = Api::new();
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let body = update_json(1, 1);
    let api_rps = hammer(
        format!("http://{api_addr}/botX/getMe"),
        bytes::Bytes::from_static(b"{}"),
    )
    .await;
    let backend_rps = hammer(format!("http://{backend_addr}/webhook"), body).await;
    [
        row(
            "fake Bot API alone (getMe, 32 clients)",
            "-",
            &format!("{api_rps:.0} req/s"),
            None,
            "≫ relay rates",
            None,
        ),
        row(
            "backend alone (POST update, 32 clients)",
            "-",
            &format!("{backend_rps:.0} req/s"),
            None,
            "≫ relay rates",
            None,
        ),
    ]
    .join("\n")
}

/// Requests/s a server answers from 32 keep-alive clients for 3 s.
async fn hammer(url: String, body: bytes::Bytes) -> f64 {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if client
                    .post(&url)
                    .body(body.clone())
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .is_ok()
                {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / 3.0
}

/// Runs a relay (pollhook or the baseline) against a fresh API holding
/// `updates` updates over 100 chats; returns updates/s end to end and the
/// relay's CPU seconds (less sensitive to a busy machine than wall time).
async fn run_throughput(updates: i64, relay: Relay) -> (f64, f64) {
    let run = run_throughput_with(updates, relay, &Config::default(), |_| ())
        .await
        .0;
    (run.rate, run.cpu)
}

/// One run of the throughput workload, measured once the backend has every
/// update; the relay is still running, its state directory there to look at.
struct Run {
    rate: f64,
    cpu: f64,
    child: Child,
}

/// `run_throughput` with the relay's configuration given, and `watch`
/// called as soon as the relay is spawned (whatever it returns, e.g. a
/// sampler of the state directory, is handed back with the run).
async fn run_throughput_with<W>(
    updates: i64,
    relay: Relay,
    cfg: &Config,
    watch: impl FnOnce(&Child) -> W,
) -> (Run, W) {
    let api = Api::new();
    for id in 1..=updates {
        api.push(id, update_json(id, 100));
    }
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let start = Instant::now();
    let mut child = relay.spawn(api_addr, backend_addr, cfg);
    let watching = watch(&child);
    let arrived = backend.wait_distinct(updates as u64, Duration::from_secs(1800));
    tokio::pin!(arrived);
    // A relay that exits (a configuration it refuses) fails the run at
    // once instead of after the 30 minutes.
    let ok = loop {
        tokio::select! {
            ok = &mut arrived => break ok,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(status) = child.exited() {
                    panic!("the relay exited ({status}) before delivering every update: a configuration it refuses?");
                }
            }
        }
    };
    let took = start.elapsed();
    let cpu = child.cpu_seconds();
    if !ok {
        drop(child);
        panic!("not all updates arrived");
    }
    let rate = updates as f64 / took.as_secs_f64();
    (Run { rate, cpu, child }, watching)
}

#[derive(Clone, Copy)]
enum Relay {
    Pollhook,
    Baseline,
}

impl Relay {
    fn spawn(
        self,
        api: std::net::SocketAddr,
        backend: std::net::SocketAddr,
        cfg: &Config,
    ) -> Child {
        match self {
            Relay::Pollhook => Child::pollhook(api, backend, cfg),
            Relay::Baseline => Child::baseline(api, backend, cfg.max_in_flight),
        }
    }
}

/// Draws a plot into `dir` (`draw` given the file's path); a plot that
/// cannot be written is reported, and the scenario's table still printed.
fn write_plot(dir: &Path, name: &str, draw: impl FnOnce(&Path) -> plots::Result<()>) {
    match plots::file(dir, name).and_then(|path| draw(&path).map(|()| path)) {
        Ok(path) => eprintln!("plot: {}", path.display()),
        Err(e) => eprintln!("plot {name} not written: {e}"),
    }
}

async fn throughput(updates: i64, rounds: usize, plot_dir: &Path) -> String {
    // Three rounds, alternating, medians: a shared machine's noise hits both.
    let (mut bases, mut ourss) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        bases.push(run_throughput(updates, Relay::Baseline).await);
        ourss.push(run_throughput(updates, Relay::Pollhook).await);
    }
    let rates = |v: &[(f64, f64)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
    write_plot(plot_dir, "throughput.svg", |path| {
        plots::throughput(path, updates, &rates(&bases), &rates(&ourss))
    });
    let median = |v: &mut Vec<(f64, f64)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let (base, base_cpu) = median(&mut bases);
    let (ours, cpu) = median(&mut ourss);
    let ratio = ours / base;
    [
        row(
            &format!("throughput, {updates} updates (updates/s, median of {rounds})"),
            &format!("{base:.0}"),
            &format!("{ours:.0}"),
            Some(ratio),
            "≥ 0.9× baseline",
            Some(ratio >= 0.9),
        ),
        row(
            &format!("CPU for {updates} updates (relay process)"),
            &format!("{base_cpu:.2} s"),
            &format!("{cpu:.2} s"),
            Some(cpu / base_cpu),
            "-",
            None,
        ),
    ]
    .join("\n")
}

/// `throughput` with a second pollhook build (`against`, e.g. the one
/// before a change) in every round, rotating which of the three goes first:
/// per round this build's and that build's ratio to the baseline and their
/// CPU per 100k updates, then the medians. Two builds a few percent apart
/// cannot be told apart by separate runs on a shared machine; in one run
/// the same load hits all three.
async fn throughput_against(updates: i64, rounds: usize, against: std::path::PathBuf) -> String {
    let mut lines = vec![
        "| round | baseline (updates/s) | this build | against | this / baseline | against / baseline | this / against | CPU per 100k baseline / this / against |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let (mut r_this, mut r_against, mut r_pair, mut c_this, mut c_against, mut c_base) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let other = Config {
        relay_bin: Some(against),
        ..Config::default()
    };
    for round in 0..rounds.max(1) {
        let mut got: [Option<(f64, f64)>; 3] = [None; 3];
        for k in 0..3 {
            let which = (round + k) % 3;
            let run = match which {
                0 => run_throughput(updates, Relay::Baseline).await,
                1 => run_throughput(updates, Relay::Pollhook).await,
                _ => {
                    let run = run_throughput_with(updates, Relay::Pollhook, &other, |_| ())
                        .await
                        .0;
                    (run.rate, run.cpu)
                }
            };
            got[which] = Some(run);
        }
        let [(b, bc), (t, tc), (a, ac)] = got.map(|g| g.expect("ran"));
        let per = |c: f64| c * 100_000.0 / updates as f64;
        lines.push(format!(
            "| {} | {b:.0} | {t:.0} | {a:.0} | {:.2}× | {:.2}× | {:.3}× | {:.2} / {:.2} / {:.2} s |",
            round + 1,
            t / b,
            a / b,
            t / a,
            per(bc),
            per(tc),
            per(ac)
        ));
        r_this.push(t / b);
        r_against.push(a / b);
        r_pair.push(t / a);
        c_base.push(per(bc));
        c_this.push(per(tc));
        c_against.push(per(ac));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    lines.push(format!(
        "| median | | | | {:.2}× | {:.2}× | {:.3}× | {:.2} / {:.2} / {:.2} s |",
        med(&mut r_this),
        med(&mut r_against),
        med(&mut r_pair),
        med(&mut c_base),
        med(&mut c_this),
        med(&mut c_against)
    ));
    lines.join("\n")
}

/// Runs pollhook with a JetStream forward against a fresh API holding
/// `updates` updates over 100 chats (as `run_throughput`) and a fresh
/// `nats-server` with a file-storage stream; returns updates/s until the
/// stream holds them all, the relay's CPU seconds and the server's.
async fn run_jetstream(updates: i64) -> (f64, f64, f64) {
    let api = Api::new();
    for id in 1..=updates {
        api.push(id, update_json(id, 100));
    }
    let api_addr = api.start().await;
    let server = nats::NatsServer::start().await;
    let stream = server.stream("TG", "tg.>").await;
    let cpu0 = server.cpu_seconds();
    let cfg = Config {
        jetstream: Some(server.addr),
        ..Config::default()
    };
    let start = Instant::now();
    // The backend address is unused by a JetStream forward.
    let child = Child::pollhook(api_addr, server.addr, &cfg);
    let ok = nats::wait_messages(&stream, updates as u64, Duration::from_secs(1800)).await;
    let took = start.elapsed();
    let cpu = child.cpu_seconds();
    let server_cpu = server.cpu_seconds() - cpu0;
    drop(child);
    drop(server);
    assert!(ok, "not all updates reached the stream");
    (updates as f64 / took.as_secs_f64(), cpu, server_cpu)
}

async fn jetstream(updates: i64, rounds: usize) -> String {
    if nats::server_bin().is_none() {
        return row(
            "JetStream forward (needs nats-server; skipped)",
            "-",
            "-",
            None,
            "≥ 1.0× HTTP forward",
            None,
        );
    }
    let rounds = rounds.max(1);
    // Alternating rounds, medians: a shared machine's noise hits both. The
    // HTTP figure is the throughput scenario's pollhook run, unchanged.
    let (mut http, mut http_cpu, mut js, mut js_cpu, mut server_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (h, h_cpu) = run_throughput(updates, Relay::Pollhook).await;
        let (j, j_cpu, s_cpu) = run_jetstream(updates).await;
        eprintln!(
            "round {round}: HTTP {h:.0}/s ({h_cpu:.2} s CPU), JetStream {j:.0}/s ({j_cpu:.2} s CPU, nats-server {s_cpu:.2} s): {:.2}×",
            j / h
        );
        http.push(h);
        http_cpu.push(h_cpu);
        js.push(j);
        js_cpu.push(j_cpu);
        server_cpu.push(s_cpu);
    }
    // Each figure's own median: CPU time is less noisy than wall time, so
    // it is not taken from the round with the median rate.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (http, http_cpu, js, js_cpu, server_cpu) = (
        median(http),
        median(http_cpu),
        median(js),
        median(js_cpu),
        median(server_cpu),
    );
    let ratio = js / http;
    [
        row(
            &format!(
                "JetStream forward, {updates} updates (updates/s, median of {rounds}; baseline: HTTP forward)"
            ),
            &format!("{http:.0}"),
            &format!("{js:.0}"),
            Some(ratio),
            "≥ 1.0× HTTP forward",
            Some(ratio >= 1.0),
        ),
        row(
            &format!("CPU for {updates} updates, JetStream vs HTTP forward (relay process)"),
            &format!("{http_cpu:.2} s"),
            &format!("{js_cpu:.2} s"),
            Some(js_cpu / http_cpu),
            "-",
            None,
        ),
        row(
            &format!("CPU for {updates} updates, nats-server (the HTTP backend is not measured: it runs in the bench)"),
            "-",
            &format!("{server_cpu:.2} s"),
            None,
            "-",
            None,
        ),
    ]
    .join("\n")
}

/// Pushes one update at a time into a waiting long poll; returns sorted
/// latencies (push → backend receipt).
async fn run_latency(samples: usize, relay: Relay) -> Vec<Duration> {
    let api = Api::new();
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let _child = relay.spawn(api_addr, backend_addr, &Config::default());
    // Warm up: the first update also waits for start-up.
    api.push(1, update_json(1, 100));
    assert!(backend.wait_distinct(1, Duration::from_secs(30)).await);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples as i64 {
        let id = i + 2;
        // Let the relay's next long poll be waiting before the update appears.
        tokio::time::sleep(Duration::from_millis(5)).await;
        api.push(id, update_json(id, 100));
        assert!(
            backend
                .wait_distinct(id as u64, Duration::from_secs(30))
                .await
        );
        if let (Some(a), Some(b)) = (api.pushed_at(id), backend.arrived(id)) {
            out.push(b.saturating_duration_since(a));
        }
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn latency(samples: usize, plot_dir: &Path) -> String {
    let base = run_latency(samples, Relay::Baseline).await;
    let ours = run_latency(samples, Relay::Pollhook).await;
    write_plot(plot_dir, "latency.svg", |path| {
        plots::latency(path, &base, &ours)
    });
    let (b50, b99, o50, o99) = (
        pct(&base, 0.5),
        pct(&base, 0.99),
        pct(&ours, 0.5),
        pct(&ours, 0.99),
    );
    [
        row(
            "latency added p50",
            &ms(b50),
            &ms(o50),
            Some(o50.as_secs_f64() / b50.as_secs_f64()),
            "-",
            None,
        ),
        row(
            "latency added p99",
            &ms(b99),
            &ms(o99),
            Some(o99.as_secs_f64() / b99.as_secs_f64()),
            "< 2 ms",
            Some(o99 < Duration::from_millis(2)),
        ),
    ]
    .join("\n")
}

async fn measure_idle(relay: Relay, seconds: u64) -> (f64, u64) {
    let api = Api::new();
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let child = relay.spawn(api_addr, backend_addr, &Config::default());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = child.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = (child.cpu_seconds() - cpu0) * 60.0 / seconds as f64;
    (cpu, child.rss_kb())
}

async fn idle(seconds: u64) -> String {
    let (bcpu, brss) = measure_idle(Relay::Baseline, seconds).await;
    let (cpu, rss) = measure_idle(Relay::Pollhook, seconds).await;
    [
        row(
            "idle: CPU per minute, 1 bot",
            &format!("{bcpu:.3} s"),
            &format!("{cpu:.3} s"),
            Some(cpu / bcpu.max(1e-3)),
            "< 0.5 s",
            Some(cpu < 0.5),
        ),
        row(
            "idle: RSS, 1 bot",
            &format!("{:.1} MB", brss as f64 / 1024.0),
            &format!("{:.1} MB", rss as f64 / 1024.0),
            Some(rss as f64 / brss as f64),
            "< 15 MB",
            Some(rss < 15 * 1024),
        ),
    ]
    .join("\n")
}

async fn many_bots(bots: usize, wires: &[Wire], window: u64) -> String {
    let api = Api::new();
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    // The baseline: one bot, plain HTTP/1.1, as before.
    let one = Child::pollhook(api_addr, backend_addr, &Config::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, threads1) = (one.rss_kb(), one.threads());
    let c0 = one.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(window.min(20))).await;
    let cpu1 = (one.cpu_seconds() - c0) / window.min(20) as f64 * 100.0;
    drop(one);
    let mut rows = vec![row(
        "1 bot idle (plain HTTP/1.1): RSS, CPU, threads",
        "-",
        &format!(
            "{:.1} MB, {cpu1:.2} % of a core, {threads1} threads",
            rss1 as f64 / 1024.0
        ),
        None,
        "-",
        None,
    )];
    for &wire in wires {
        // A fresh API per wire, so that its long polls and connections
        // are this relay's alone.
        let api = Api::new();
        let (addr, tls) = match wire {
            Wire::Plain => (api.start().await, None),
            _ => {
                let t = tls::start(&api, wire).await;
                (t.addr, Some(t))
            }
        };
        let cfg = Config {
            bots,
            api_ca_file: tls.as_ref().map(|t| t.ca_file.clone()),
            ..Config::default()
        };
        let child = Child::pollhook(addr, backend_addr, &cfg);
        // Every bot is polling once the API has seen a getUpdates from
        // each; then let the start-up settle before the idle window.
        let deadline = Instant::now() + Duration::from_secs(300);
        while api.polls.load(Ordering::Relaxed) < bots as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let polling = api.polls.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let c0 = child.cpu_seconds();
        let mut peak_rss = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(window) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            peak_rss = peak_rss.max(child.rss_kb());
        }
        let cpu = (child.cpu_seconds() - c0) / t0.elapsed().as_secs_f64() * 100.0;
        let (rss, threads) = (child.rss_kb(), child.threads());
        let conns = proc::tcp_connections_to(addr.port());
        drop(child);
        let label = wire.label();
        let short = if polling < bots as u64 {
            format!(" (only {polling} polls seen)")
        } else {
            String::new()
        };
        rows.push(row(
            &format!("{bots} bots idle, {label}: RSS{short}"),
            &format!("{:.1} MB (1 bot)", rss1 as f64 / 1024.0),
            &format!(
                "{:.1} MB ({:.1} KB/bot over 1 bot; peak {:.1} MB)",
                rss as f64 / 1024.0,
                (rss.saturating_sub(rss1)) as f64 / bots as f64,
                peak_rss as f64 / 1024.0
            ),
            Some(rss as f64 / rss1 as f64),
            "< 300 MB at 10,000",
            (bots >= 10_000).then_some(rss < 300 * 1024),
        ));
        rows.push(row(
            &format!("{bots} bots idle, {label}: CPU over {window} s"),
            &format!("{cpu1:.2} % (1 bot)"),
            &format!("{cpu:.2} % of a core"),
            None,
            "< 1 % at 10,000",
            (bots >= 10_000).then_some(cpu < 1.0),
        ));
        rows.push(row(
            &format!("{bots} bots idle, {label}: threads, TCP connections to the API"),
            &format!("{threads1} (1 bot)"),
            &format!("{threads} threads, {conns} connections"),
            None,
            "-",
            None,
        ));
        println!("{}", rows[rows.len() - 3..].join("\n"));
    }
    rows.join("\n")
}

/// Samples every 100 ms, from `start` until `stop` fires (and once more
/// then), how many updates the relay has confirmed to the API (so stored)
/// and how many the backend has received: the backlog plot's lines.
fn sample_backlog(
    api: Api,
    backend: Backend,
    updates: i64,
    start: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Vec<plots::BacklogSample>> {
    tokio::spawn(async move {
        let sample = || plots::BacklogSample {
            at: start.elapsed().as_secs_f64(),
            stored: (updates as u64).saturating_sub(api.pending() as u64),
            delivered: backend.distinct.load(Ordering::Relaxed),
        };
        let mut out = Vec::new();
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = every.tick() => out.push(sample()),
            }
        }
        out.push(sample());
        out
    })
}

async fn backlog(updates: i64, plot_dir: &Path) -> String {
    let api = Api::new();
    let mut payload_bytes = 0u64;
    for id in 1..=updates {
        let u = update_json(id, 100);
        payload_bytes += u.len() as u64;
        api.push(id, u);
    }
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    backend.down.store(true, Ordering::Relaxed);
    let backend_addr = backend.start().await;
    let cfg = Config {
        retry_max_delay: "60s",
        ..Config::default()
    };
    let mut child = Child::pollhook(api_addr, backend_addr, &cfg);
    let start = Instant::now();
    let (stop_sampling, stop) = tokio::sync::oneshot::channel();
    let sampling = sample_backlog(api.clone(), backend.clone(), updates, start, stop);
    let mut max_rss = 0;
    let mut rss_samples = Vec::new();
    while api.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = child.rss_kb();
        max_rss = max_rss.max(rss);
        rss_samples.push((updates as usize - api.pending(), rss));
    }
    let ingest = start.elapsed();
    // The last batch is confirmed by the next poll; let it land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let disk = proc::du(&child.state_dir);
    child.stop();
    let stopped = start.elapsed();
    // Restart with the backlog present: time until the relay polls again.
    let calls_before = api.calls.load(Ordering::Relaxed);
    let restart = Instant::now();
    let child = child.restart(api_addr, backend_addr, &cfg);
    while api.calls.load(Ordering::Relaxed) < calls_before + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart_took = restart.elapsed();
    let polling = start.elapsed();
    backend.down.store(false, Ordering::Relaxed);
    let drain_start = Instant::now();
    let backend_up = start.elapsed();
    assert!(
        backend
            .wait_distinct(updates as u64, Duration::from_secs(3600))
            .await
    );
    let drain = updates as f64 / drain_start.elapsed().as_secs_f64();
    let _ = stop_sampling.send(());
    let samples = sampling.await.expect("the backlog sampler");
    let marks = plots::BacklogMarks {
        stopped: stopped.as_secs_f64(),
        polling: polling.as_secs_f64(),
        backend_up: backend_up.as_secs_f64(),
    };
    // The plot's time line in words (the drain rate counts from the
    // backend's return, so includes the wait for the first delivery).
    let first_delivery = samples.iter().find(|s| s.delivered > 0).map(|s| s.at);
    eprintln!(
        "backlog: relay stopped at {:.2} s, polling again at {:.2} s, backend up at {:.2} s, first delivery seen at {} s, all delivered at {:.2} s",
        marks.stopped,
        marks.polling,
        marks.backend_up,
        first_delivery.map_or("-".into(), |at| format!("{at:.1}")),
        samples.last().map_or(0.0, |s| s.at),
    );
    write_plot(plot_dir, "backlog.svg", |path| {
        plots::backlog(path, updates, &samples, marks)
    });
    let half_rss = rss_samples
        .iter()
        .find(|(n, _)| *n as i64 >= updates / 2)
        .map_or(0, |(_, r)| *r);
    drop(child);
    let ratio = disk as f64 / payload_bytes as f64;
    [
        row(
            &format!("backlog {updates}: disk / payload"),
            &format!("{:.0} MB payload", payload_bytes as f64 / 1e6),
            &format!("{:.0} MB", disk as f64 / 1e6),
            Some(ratio),
            "< 3×",
            Some(ratio < 3.0),
        ),
        row(
            &format!("backlog {updates}: RSS at half / at end"),
            &format!("{:.1} MB", half_rss as f64 / 1024.0),
            &format!("{:.1} MB", max_rss as f64 / 1024.0),
            Some(max_rss as f64 / half_rss.max(1) as f64),
            "bounded (≈1×)",
            Some((max_rss as f64) < half_rss as f64 * 1.5),
        ),
        row(
            &format!("backlog {updates}: ingest rate (backend down)"),
            "-",
            &format!("{:.0} updates/s", updates as f64 / ingest.as_secs_f64()),
            None,
            "-",
            None,
        ),
        row(
            &format!("backlog {updates}: restart until polling"),
            "-",
            &format!("{:.2} s", restart_took.as_secs_f64()),
            None,
            "< 3 s",
            Some(restart_took < Duration::from_secs(3)),
        ),
        row(
            &format!("backlog {updates}: drain rate once back"),
            "-",
            &format!("{drain:.0} updates/s"),
            None,
            "-",
            None,
        ),
    ]
    .join("\n")
}

async fn slow_backend(updates: i64) -> String {
    let run = |relay: Relay| async move {
        let api = Api::new();
        for id in 1..=updates {
            api.push(id, update_json(id, 100));
        }
        let api_addr = api.start().await;
        let backend = Backend::new(Duration::from_millis(50));
        let backend_addr = backend.start().await;
        let start = Instant::now();
        let _child = relay.spawn(api_addr, backend_addr, &Config::default());
        assert!(
            backend
                .wait_distinct(updates as u64, Duration::from_secs(600))
                .await
        );
        updates as f64 / start.elapsed().as_secs_f64()
    };
    let base = run(Relay::Baseline).await;
    let ours = run(Relay::Pollhook).await;
    row(
        "slow backend (50 ms), 100 chats, 16 in flight (updates/s)",
        &format!("{base:.0}"),
        &format!("{ours:.0}"),
        Some(ours / base),
        "→ 320/s",
        Some(ours >= 0.85 * 320.0),
    )
}

async fn all(quick: bool, plot_dir: &Path) {
    println!("| figure | baseline | pollhook | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    println!("{}", servers_alone().await);
    println!(
        "{}",
        throughput(if quick { 20_000 } else { 100_000 }, 3, plot_dir).await
    );
    println!("{}", latency(if quick { 200 } else { 500 }, plot_dir).await);
    println!("{}", slow_backend(if quick { 1_500 } else { 3_000 }).await);
    println!("{}", idle(if quick { 10 } else { 60 }).await);
    println!(
        "{}",
        many_bots(
            if quick { 200 } else { 1000 },
            &[Wire::Plain],
            if quick { 10 } else { 60 }
        )
        .await
    );
    println!(
        "{}",
        backlog(if quick { 100_000 } else { 1_000_000 }, plot_dir).await
    );
    println!(
        "{}",
        jetstream(if quick { 20_000 } else { 100_000 }, 3).await
    );
    println!(
        "{}",
        cluster::cluster(
            if quick { 10_000 } else { 30_000 },
            3,
            if quick { 2 } else { 5 },
            true
        )
        .await
    );
    println!(
        "{}",
        gateway::gateway(gateway::Sizes::new(quick, None, None, false)).await
    );
    let history = history::history(history::Sizes::new(quick, None, None, None)).await;
    println!("{}", history.rows);
    let traces = traces::traces(traces::Sizes::new(quick, None, None, None)).await;
    println!("{}", traces.rows);
}
