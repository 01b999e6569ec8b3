//! A node of a cluster: prepares what the nodes share on JetStream (the
//! queue's stream, the offsets and leases buckets), then runs its
//! elections; for each bot it comes to lead, it takes the bot's replicated
//! queue over and runs the bot's work on it until the lease ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use futures_util::StreamExt;

use super::elect::{self, BotWork, Shared, Start};
use super::fence::Fence;
use super::lease::Leases;
use super::queue::{self, JsQueue};
use crate::config::ClusterSettings;
use crate::nats::connection::Nats;
use crate::store::Queue;

pub const LEASES: &str = "pollhook_leases";

/// What a bot runs once its queue is taken over.
pub type Work =
    Arc<dyn Fn(&str, Arc<dyn Queue>, Fence, CancellationToken) -> BotWork + Send + Sync>;

/// Each forward of a bot: its id and what wakes its dispatcher.
pub type Forwards = HashMap<String, Vec<(u32, Arc<tokio::sync::Notify>)>>;

/// Runs until `shutdown`. `forwards` gives each bot's forwards.
pub async fn run(
    cfg: ClusterSettings,
    nats: Nats,
    forwards: Forwards,
    work: Work,
    seen: Shared,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(nats.client().clone());
    // Nodes started together would create the same replicated streams at
    // once, and nats-server 2.9 then answers one of them only after 10 s:
    // a node-dependent pause makes the first one create them and the
    // others find them.
    let pause = u64::from(super::queue::forward_id(&cfg.node) % 16) * 100;
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
    }
    // NATS may be away at start: keep trying, polling nothing meanwhile
    // (nothing unstored is ever confirmed).
    let Some(()) = retry("prepare the replicated queue", &shutdown, || {
        queue::prepare(&js, cfg.replicas)
    })
    .await
    else {
        return;
    };
    let Some(leases) = retry("open the leases", &shutdown, || async {
        Leases::open(&js, LEASES, &cfg.node, cfg.lease, cfg.replicas)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    else {
        return;
    };
    let mut bots: Vec<String> = forwards.keys().cloned().collect();
    bots.sort();
    let node = cfg.node.clone();
    let forwards = Arc::new(forwards);
    tokio::spawn(watch_queue(
        js.clone(),
        bots.clone(),
        seen.clone(),
        shutdown.clone(),
    ));
    let start: Start = Arc::new(move |bot: &str, fence: Fence, stop: CancellationToken| {
        let (js, node, work, forwards) = (js.clone(), node.clone(), work.clone(), forwards.clone());
        let bot = bot.to_string();
        Box::pin(async move {
            let ids = forwards.get(&bot).cloned().unwrap_or_default();
            // JetStream may still be settling (after an outage, a new
            // stream leader): try again while the lease is ours.
            let queue = loop {
                match JsQueue::take_over(&js, &bot, &ids, fence.clone(), &node).await {
                    Ok(q) => break Arc::new(q),
                    Err(e) if fence.valid() && !stop.is_cancelled() => {
                        warn!(
                            bot,
                            "cluster: cannot take the bot's queue over yet: {e}; trying again"
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        // The elector sees the work end and lets the lease
                        // run out, for this node or another to try again.
                        error!(bot, "cluster: cannot take the bot's queue over: {e}");
                        return;
                    }
                }
            };
            work(&bot, queue.clone(), fence, stop).await;
            // Delivered jobs' deletes still on their way would otherwise
            // be delivered again by the next leader.
            queue.settle(Duration::from_secs(2)).await;
        })
    });
    elect::run(leases, bots, start, seen, shutdown).await
}

/// Keeps what every node shows of every bot fresh: jobs waiting and dead
/// letters per forward (the stream's per-subject counts) and the confirmed
/// offsets, whoever leads.
async fn watch_queue(
    js: jetstream::Context,
    bots: Vec<String>,
    seen: Shared,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(fresh) = read_counts(&js, &bots).await {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            (s.depth, s.dead, s.offsets) = fresh;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

type Counts = (
    HashMap<(String, u32), u64>,
    HashMap<(String, u32), u64>,
    HashMap<String, i64>,
);

async fn read_counts(js: &jetstream::Context, bots: &[String]) -> Result<Counts, String> {
    let stream = js
        .get_stream(queue::STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let mut subjects = stream
        .info_with_subjects("pollhook.>")
        .await
        .map_err(|e| e.to_string())?;
    let (mut depth, mut dead) = (HashMap::new(), HashMap::new());
    while let Some(item) = subjects.next().await {
        let (subject, count) = item.map_err(|e| e.to_string())?;
        let mut parts = subject.rsplitn(2, '.');
        let (Some(fwd), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(fwd) = fwd.parse::<u32>() else {
            continue;
        };
        if let Some(bot) = rest.strip_prefix("pollhook.q.") {
            depth.insert((bot.to_string(), fwd), count as u64);
        } else if let Some(bot) = rest.strip_prefix("pollhook.dead.") {
            dead.insert((bot.to_string(), fwd), count as u64);
        }
    }
    let mut offsets = HashMap::new();
    if let Ok(kv) = js.get_key_value(queue::OFFSETS).await {
        for bot in bots {
            if let Ok(Some(v)) = kv.get(format!("offset.{bot}")).await {
                if let Some(o) = queue::parse_offset(&v) {
                    offsets.insert(bot.clone(), o);
                }
            }
        }
    }
    Ok((depth, dead, offsets))
}

async fn retry<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                warn!("cluster: cannot {what} yet: {e}; retrying (no bot is polled meanwhile)")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
