//! Leadership on a real 3-server JetStream cluster: three electors (one per
//! node, each connected to its own server) share a set of bots. Sampled
//! throughout: a bot never has two nodes whose fence is open at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pollhook::cluster::elect::{self, Start};
use pollhook::cluster::fence::Fence;
use pollhook::cluster::lease::Leases;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rig::*;

const LEASE: Duration = Duration::from_secs(2);
const BUCKET: &str = "pollhook_leases";

/// Every fence a node was given, by bot, to sample who may act.
type Fences = Arc<Mutex<HashMap<String, Vec<(String, Fence)>>>>;

struct Node {
    name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn node(
    cluster: &NatsCluster,
    server: usize,
    name: &str,
    bots: &[String],
    fences: &Fences,
) -> Node {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(cluster.url(server))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let leases = Leases::open(&js, BUCKET, name, LEASE, 3)
        .await
        .expect("open the lease bucket");
    let fences = fences.clone();
    let me = name.to_string();
    let start: Start = Arc::new(move |bot: &str, fence: Fence, stop: CancellationToken| {
        fences
            .lock()
            .unwrap()
            .entry(bot.to_string())
            .or_default()
            .push((me.clone(), fence));
        Box::pin(async move { stop.cancelled().await })
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(elect::run(
        leases,
        bots.to_vec(),
        start,
        Arc::default(),
        stop.clone(),
    ));
    Node {
        name: name.to_string(),
        stop,
        task,
    }
}

/// Who may act for each bot now; panics if any bot has two.
fn leaders(fences: &Fences) -> HashMap<String, String> {
    let map = fences.lock().unwrap();
    let mut out = HashMap::new();
    for (bot, list) in map.iter() {
        let open: Vec<&String> = list
            .iter()
            .filter(|(_, f)| f.valid())
            .map(|(n, _)| n)
            .collect();
        assert!(open.len() <= 1, "{bot} has two leaders at once: {open:?}");
        if let Some(n) = open.first() {
            out.insert(bot.clone(), n.to_string());
        }
    }
    out
}

/// Samples `leaders` every 20 ms until `done` says the leaders are as wanted.
async fn watch_until(
    fences: &Fences,
    what: &str,
    within: Duration,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> (HashMap<String, String>, Duration) {
    let started = std::time::Instant::now();
    loop {
        let now = leaders(fences);
        if done(&now) {
            return (now, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{what} within {within:?}; leaders now: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes (one per server) sharing `n` bots, once every bot is led:
/// the bots, their fences, the nodes, the leaders and how long it took.
async fn three_nodes_leading(
    cluster: &NatsCluster,
    n: usize,
) -> (
    Vec<String>,
    Fences,
    Vec<Node>,
    HashMap<String, String>,
    Duration,
) {
    let bots: Vec<String> = (0..n).map(|i| format!("bot{i}")).collect();
    let fences: Fences = Arc::default();
    let mut nodes = Vec::new();
    for (i, name) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        nodes.push(node(cluster, i, name, &bots, &fences).await);
    }
    let (all, took) = watch_until(&fences, "every bot led", Duration::from_secs(10), |l| {
        l.len() == bots.len()
    })
    .await;
    (bots, fences, nodes, all, took)
}

/// Stops the nodes gracefully.
async fn stop(nodes: Vec<Node>) {
    for n in nodes {
        n.stop.cancel();
        n.task.await.unwrap();
    }
}

fn count_by_node(leaders: &HashMap<String, String>) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for n in leaders.values() {
        *c.entry(n.clone()).or_default() += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn one_leader_per_bot_spread_over_nodes_and_a_dead_nodes_bots_move_within_a_lease() {
    let cluster = NatsCluster::start(3).await;
    let (bots, fences, mut nodes, all, took) = three_nodes_leading(&cluster, 30).await;
    let spread = count_by_node(&all);
    println!("30 bots led after {took:?}: {spread:?}");
    assert!(
        spread.len() == 3 && spread.values().all(|&c| c <= bots.len() / 3 + 1),
        "the bots are dealt out evenly: {spread:?}"
    );

    // node-a dies without a word (its task aborted: no release, no leave).
    let dead = nodes.remove(0);
    dead.task.abort();
    let _ = dead.task.await;
    let orphans: Vec<String> = all
        .iter()
        .filter(|(_, n)| **n == dead.name)
        .map(|(b, _)| b.clone())
        .collect();
    let (after, moved) = watch_until(&fences, "the dead node's bots taken over", LEASE * 3, |l| {
        orphans
            .iter()
            .all(|b| l.get(b).is_some_and(|n| *n != dead.name))
    })
    .await;
    println!(
        "{} bots of the dead node moved in {moved:?} (lease {LEASE:?}): {:?}",
        orphans.len(),
        count_by_node(&after)
    );
    // Its fences close on their own: nobody else's lease can start before.
    assert!(moved < LEASE * 2, "takeover took {moved:?}");
    stop(nodes).await;
}

/// A node whose server stops answering (SIGSTOP) cannot renew: it closes
/// its fences before any other node may take its bots, which then move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_node_cut_off_closes_its_fences_before_its_bots_move() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut cluster = NatsCluster::start(3).await;
    let (_, fences, nodes, all, _) = three_nodes_leading(&cluster, 12).await;
    let cut: Vec<String> = all
        .iter()
        .filter(|(_, n)| *n == "node-a")
        .map(|(b, _)| b.clone())
        .collect();
    assert!(!cut.is_empty(), "node-a leads something: {all:?}");
    cluster.pause(0);
    // `leaders` panics the moment two fences of one bot are open at once.
    let (_, moved) = watch_until(
        &fences,
        "node-a's bots taken over",
        Duration::from_secs(30),
        |l| cut.iter().all(|b| l.get(b).is_some_and(|n| n != "node-a")),
    )
    .await;
    println!("{} bots moved off the cut-off node in {moved:?}", cut.len());
    cluster.resume(0);
    // Back: it does not take anything back while others hold it.
    for _ in 0..50 {
        leaders(&fences);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(nodes).await;
}

/// A graceful stop gives the leases back: the bots move at once, not after
/// a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_graceful_stop_hands_bots_over_without_waiting_for_the_lease() {
    let cluster = NatsCluster::start(3).await;
    let (_, fences, mut nodes, all, _) = three_nodes_leading(&cluster, 9).await;
    let leaving = nodes.remove(0);
    let theirs: Vec<String> = all
        .iter()
        .filter(|(_, n)| **n == leaving.name)
        .map(|(b, _)| b.clone())
        .collect();
    leaving.stop.cancel();
    leaving.task.await.unwrap();
    let (_, moved) = watch_until(&fences, "handed over", LEASE * 2, |l| {
        theirs.iter().all(|b| l.contains_key(b))
    })
    .await;
    println!(
        "{} bots handed over in {moved:?} (lease {LEASE:?})",
        theirs.len()
    );
    assert!(
        moved < LEASE / 2 + Duration::from_millis(500),
        "handover took {moved:?}"
    );
    stop(nodes).await;
}

/// A bot given back is taken by exactly one of the nodes racing for it,
/// whatever the server: nats-server 2.9.10 (Debian's) lets two writes on
/// one non-zero revision both succeed when they arrive together
/// (nats-server#4320), which async-nats' `create` over a delete marker
/// does. Six nodes, two per server, race for a bot the last winner gave
/// back, 40 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_bot_given_back_is_taken_by_exactly_one_of_the_nodes_racing_for_it() {
    const ROUNDS: usize = 40;
    let cluster = NatsCluster::start(3).await;
    let mut racers = Vec::new();
    for i in 0..6 {
        let client = async_nats::connect(cluster.url(i % 3))
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        // A long lease: the key never expires during the test, so only a
        // release frees it.
        let leases = Leases::open(
            &js,
            BUCKET,
            &format!("racer-{i}"),
            Duration::from_secs(60),
            3,
        )
        .await
        .expect("open the lease bucket");
        racers.push(leases);
    }
    let mut held = racers[0]
        .try_take("bot")
        .await
        .expect("the first take")
        .expect("nobody holds a new bot");
    let mut holder = 0;
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        racers[holder]
            .release(&held)
            .await
            .expect("give the bot back");
        let takes = futures_util::future::join_all(racers.iter().map(|l| l.try_take("bot"))).await;
        let mut won = Vec::new();
        for (i, take) in takes.into_iter().enumerate() {
            match take {
                Ok(Some(h)) => won.push((i, h)),
                Ok(None) => {}
                Err(e) => panic!("round {round}: racer {i}: {e}"),
            }
        }
        winners.push(won.len());
        assert!(
            won.len() == 1,
            "round {round}: {} racers took the bot at once: {:?}",
            won.len(),
            won.iter()
                .map(|(i, h)| (*i, h.revision))
                .collect::<Vec<_>>()
        );
        (holder, held) = won.pop().expect("one winner");
    }
    println!("{ROUNDS} rounds of six racers: winners per round {winners:?}");
}
