//! A node of a cluster: prepares what the nodes share on JetStream (the
//! queue's stream, the offsets and leases buckets), then runs its
//! elections; for each bot it comes to lead, it takes the bot's replicated
//! queue over and runs the bot's work on it until the lease ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::elect::{self, BotWork, Start};
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

/// Runs until `shutdown`. `forwards` gives each bot's forward ids.
pub async fn run(
    cfg: ClusterSettings,
    nats: Nats,
    forwards: HashMap<String, Vec<u32>>,
    work: Work,
    leading: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(nats.client().clone());
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
    let start: Start = Arc::new(move |bot: &str, fence: Fence, stop: CancellationToken| {
        let (js, node, work, forwards) = (js.clone(), node.clone(), work.clone(), forwards.clone());
        let bot = bot.to_string();
        Box::pin(async move {
            let ids = forwards.get(&bot).cloned().unwrap_or_default();
            let queue = match JsQueue::take_over(&js, &bot, &ids, fence.clone(), &node).await {
                Ok(q) => q,
                Err(e) => {
                    // The elector sees the work end and lets the lease
                    // run out, for this node or another to try again.
                    error!(bot, "cluster: cannot take the bot's queue over: {e}");
                    return;
                }
            };
            work(&bot, Arc::new(queue), fence, stop).await
        })
    });
    elect::run(leases, bots, start, leading, shutdown).await
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
