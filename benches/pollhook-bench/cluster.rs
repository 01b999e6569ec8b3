//! The `cluster` scenario: pollhook as a cluster node on a real 3-server
//! JetStream cluster, against a single sled node (the same binary and
//! backlog, the plain HTTP forward) in the same run; then the takeovers of
//! three nodes whose leader is SIGKILLed while updates keep coming.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::nats::{free_port, server_bin};
use crate::nats_cluster::NatsCluster;
use crate::proc::{Child, ClusterNode, Config};
use crate::row;
use crate::servers::{update_json, Api, Backend};

/// The lease of every node here: the failure tests use 3 s, and
/// a takeover is bounded by it.
const LEASE: &str = "3s";
const LEASE_SECS: f64 = 3.0;
const BOT: &str = "b0";

/// One relay's round: updates/s from the backlog's appearance until the
/// backend has every update, and what it cost.
struct Round {
    rate: f64,
    relay_cpu: f64,
    nats_cpu: f64,
    /// Spawn → the first `getUpdates` (a cluster node polls once it leads).
    startup: Duration,
}

/// A single sled node (`replicas` None) or a cluster node on a fresh
/// 3-server cluster with an R`replicas` queue. The relay starts against an
/// empty API, and the clock starts when the backlog appears, after its
/// first poll: a cluster node's start (creating the stream and buckets,
/// letting other nodes announce themselves before taking a bot) is a
/// one-off reported apart, not part of the rate.
async fn run_round(updates: i64, replicas: Option<usize>) -> Round {
    let bodies: Vec<_> = (1..=updates).map(|id| update_json(id, 100)).collect();
    let api = Api::new();
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let nats = match replicas {
        Some(_) => Some(NatsCluster::start(3).await),
        None => None,
    };
    let cfg = Config {
        cluster: replicas.zip(nats.as_ref()).map(|(r, n)| ClusterNode {
            servers: n.urls(),
            node: "node-a".into(),
            replicas: r,
            lease: LEASE,
            admin_port: None,
        }),
        ..Config::default()
    };
    let spawned = Instant::now();
    let child = Child::pollhook(api_addr, backend_addr, &cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.polls.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the relay did not poll in 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let startup = spawned.elapsed();
    let cpu0 = child.cpu_seconds();
    let nats_cpu0 = nats.as_ref().map_or(0.0, |n| n.cpu_seconds());
    let start = Instant::now();
    for (id, body) in (1..).zip(bodies) {
        api.push(id, body);
    }
    let ok = backend
        .wait_distinct(updates as u64, Duration::from_secs(1800))
        .await;
    let took = start.elapsed();
    let relay_cpu = child.cpu_seconds() - cpu0;
    let nats_cpu = nats.as_ref().map_or(0.0, |n| n.cpu_seconds() - nats_cpu0);
    drop(child);
    assert!(ok, "not all updates arrived");
    Round {
        rate: updates as f64 / took.as_secs_f64(),
        relay_cpu,
        nats_cpu,
        startup,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

pub async fn cluster(updates: i64, rounds: usize, kills: usize, replicas1: bool) -> String {
    if server_bin().is_none() {
        return row(
            "cluster (needs nats-server; skipped)",
            "-",
            "-",
            None,
            "-",
            None,
        );
    }
    let rounds = rounds.max(1);
    // Alternating rounds, medians: a shared machine's noise hits all.
    let mut runs: Vec<(&str, Option<usize>, Vec<Round>)> = vec![("sled", None, Vec::new())];
    runs.push(("R3", Some(3), Vec::new()));
    if replicas1 {
        runs.push(("R1", Some(1), Vec::new()));
    }
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for (name, replicas, out) in runs.iter_mut() {
            let r = run_round(updates, *replicas).await;
            line.push_str(&format!(
                " {name} {:.0}/s ({:.2} s CPU, nats-servers {:.2} s, first poll after {:.2} s);",
                r.rate,
                r.relay_cpu,
                r.nats_cpu,
                r.startup.as_secs_f64()
            ));
            out.push(r);
        }
        let sled = runs[0].2.last().map_or(1.0, |r| r.rate);
        for (name, _, out) in &runs[1..] {
            let r = out.last().map_or(0.0, |r| r.rate);
            line.push_str(&format!(" {name}/sled {:.2}×", r / sled));
        }
        eprintln!("{line}");
    }
    let fig = |i: usize, f: fn(&Round) -> f64| median(runs[i].2.iter().map(f).collect());
    let (sled, sled_cpu, sled_start) = (
        fig(0, |r| r.rate),
        fig(0, |r| r.relay_cpu),
        fig(0, |r| r.startup.as_secs_f64()),
    );
    let mut rows = Vec::new();
    for (i, (name, _, _)) in runs.iter().enumerate().skip(1) {
        let (rate, cpu, nats_cpu, start) = (
            fig(i, |r| r.rate),
            fig(i, |r| r.relay_cpu),
            fig(i, |r| r.nats_cpu),
            fig(i, |r| r.startup.as_secs_f64()),
        );
        let replicas = &name[1..];
        rows.push(row(
            &format!("cluster node, {replicas} replicas, {updates} updates (updates/s, median of {rounds}; baseline: one sled node)"),
            &format!("{sled:.0}"),
            &format!("{rate:.0}"),
            Some(rate / sled),
            "-",
            None,
        ));
        rows.push(row(
            &format!("CPU for {updates} updates, {replicas} replicas (relay process)"),
            &format!("{sled_cpu:.2} s"),
            &format!("{cpu:.2} s"),
            Some(cpu / sled_cpu),
            "-",
            None,
        ));
        rows.push(row(
            &format!("CPU for {updates} updates, {replicas} replicas (3 nats-servers together)"),
            "-",
            &format!("{nats_cpu:.2} s"),
            None,
            "-",
            None,
        ));
        rows.push(row(
            &format!("start until the first poll, {replicas} replicas"),
            &format!("{sled_start:.2} s"),
            &format!("{start:.2} s"),
            Some(start / sled_start),
            "-",
            None,
        ));
    }
    if kills > 0 {
        rows.push(takeovers(kills).await);
    }
    rows.join("\n")
}

/// `/status` of the node on `port` says it leads the bot (None: no answer).
async fn leads(http: &reqwest::Client, port: u16) -> Option<bool> {
    let status: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let leading = status["cluster"]["leading"].as_array()?;
    Some(leading.iter().any(|b| b == BOT))
}

/// The live nodes `/status` of the node on `port` lists.
async fn live_nodes(http: &reqwest::Client, port: u16) -> usize {
    let status: Option<serde_json::Value> = match http
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
    {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    status
        .and_then(|s| s["cluster"]["nodes"].as_array().map(|n| n.len()))
        .unwrap_or(0)
}

/// Which node leads the bot now (asking each in turn), within `within`.
async fn leader(http: &reqwest::Client, ports: &[u16], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (i, port) in ports.iter().enumerate() {
            if leads(http, *port).await == Some(true) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node leads the bot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes, lease 3 s, 200 updates/s over 100 chats; the leader is
/// SIGKILLed `kills` times, each time restarted once a takeover has been
/// measured. A takeover is measured two ways: kill → the first delivery of
/// an update that appeared after the kill (the dead leader cannot have
/// polled it, so the new leader delivered it; this is the gap users see),
/// and kill → a surviving node's `/status` leads the bot.
async fn takeovers(kills: usize) -> String {
    const PER_SECOND: u64 = 200;
    let api = Api::new();
    let api_addr = api.start().await;
    let backend = Backend::new(Duration::ZERO);
    let backend_addr = backend.start().await;
    let nats = NatsCluster::start(3).await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Child> = ["node-a", "node-b", "node-c"]
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            let cfg = Config {
                cluster: Some(ClusterNode {
                    servers: nats.urls(),
                    node: name.to_string(),
                    replicas: 3,
                    lease: LEASE,
                    admin_port: Some(*port),
                }),
                ..Config::default()
            };
            Child::pollhook(api_addr, backend_addr, &cfg)
        })
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    // A steady stream of updates, ids in order, until `stop`.
    let pushed = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (api, pushed, stop) = (api.clone(), pushed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PER_SECOND));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = pushed.load(Ordering::Relaxed) + 1;
                api.push(id, update_json(id, 100));
                pushed.store(id, Ordering::Relaxed);
            }
        })
    };
    leader(&http, &ports, Duration::from_secs(60)).await;
    assert!(
        backend.wait_distinct(1, Duration::from_secs(60)).await,
        "nothing delivered within 60 s of the cluster's start"
    );

    let (mut to_delivery, mut to_status) = (Vec::new(), Vec::new());
    for k in 1..=kills {
        // Steady flow, and every node alive again, before each kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut l = leader(&http, &ports, Duration::from_secs(60)).await;
        while live_nodes(&http, ports[l]).await < 3 {
            assert!(
                Instant::now() < deadline,
                "the three nodes are not all live"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            l = leader(&http, &ports, Duration::from_secs(60)).await;
        }
        let last = pushed.load(Ordering::Relaxed);
        let killed = Instant::now();
        nodes[l].kill();
        let (mut delivered, mut status, mut new_leader) = (None, None, None);
        let deadline = killed + Duration::from_secs(120);
        while delivered.is_none() || status.is_none() {
            assert!(
                Instant::now() < deadline,
                "no takeover within 120 s of kill {k}"
            );
            if status.is_none() {
                for (j, port) in ports.iter().enumerate() {
                    if j != l && leads(&http, *port).await == Some(true) {
                        status = Some(killed.elapsed());
                        new_leader = Some(j);
                        break;
                    }
                }
            }
            // Once the next update is in, the earliest new one is known.
            if delivered.is_none() && backend.arrived(last + 1).is_some() {
                delivered = backend
                    .first_arrival_above(last)
                    .map(|at| at.saturating_duration_since(killed));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (d, s) = (delivered.unwrap(), status.unwrap());
        eprintln!(
            "kill {k}: node-{} killed; node-{} leads after {:.2} s (/status), first new update delivered after {:.2} s",
            ["a", "b", "c"][l],
            ["a", "b", "c"][new_leader.unwrap()],
            s.as_secs_f64(),
            d.as_secs_f64()
        );
        to_delivery.push(d.as_secs_f64());
        to_status.push(s.as_secs_f64());
        nodes[l].respawn();
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = pusher.await;
    let total = pushed.load(Ordering::Relaxed);
    backend
        .wait_distinct(total as u64, Duration::from_secs(120))
        .await;
    // Late duplicates (jobs delivered again after a takeover) still count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let distinct = backend.distinct.load(Ordering::Relaxed) as i64;
    let received = backend.received.load(Ordering::Relaxed) as i64;
    let lost = total - distinct;
    let duplicates = received - distinct;
    let disorder = out_of_order(&backend.arrivals());
    drop(nodes);
    eprintln!(
        "takeovers: {total} updates, {distinct} delivered, {lost} lost, {duplicates} duplicates, {disorder} out of per-chat order"
    );
    let bound = LEASE_SECS + 30.0;
    [
        row(
            &format!("takeover: SIGKILL the leader ×{kills} → first new update delivered (median; lease {LEASE})"),
            "-",
            &format!("{:.2} s", median(to_delivery.clone())),
            None,
            "< lease + poll timeout",
            Some(median(to_delivery.clone()) < bound),
        ),
        row(
            &format!("takeover: SIGKILL the leader ×{kills} → first new update delivered (max)"),
            "-",
            &format!("{:.2} s", max(&to_delivery)),
            None,
            "< lease + poll timeout",
            Some(max(&to_delivery) < bound),
        ),
        row(
            &format!("takeover: SIGKILL the leader ×{kills} → another node's /status leads (median / max)"),
            "-",
            &format!(
                "{:.2} s / {:.2} s",
                median(to_status.clone()),
                max(&to_status)
            ),
            None,
            "-",
            None,
        ),
        row(
            &format!("takeover: {total} updates at {PER_SECOND}/s over {kills} kills: lost / duplicates / out of per-chat order"),
            "-",
            &format!("{lost} / {duplicates} / {disorder}"),
            None,
            "0 lost",
            Some(lost == 0),
        ),
    ]
    .join("\n")
}

/// How many updates arrived (first time) before an earlier update of the
/// same chat (the bench's updates go to chat `1000 + id % 100`).
fn out_of_order(arrivals: &[(i64, Instant)]) -> usize {
    let mut by_chat: std::collections::HashMap<i64, Vec<(i64, Instant)>> = Default::default();
    for (id, at) in arrivals {
        by_chat.entry(id % 100).or_default().push((*id, *at));
    }
    by_chat
        .values_mut()
        .map(|v| {
            v.sort();
            v.windows(2).filter(|w| w[1].1 < w[0].1).count()
        })
        .sum()
}
