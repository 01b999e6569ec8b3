//! The whole relay for one configuration: open the store, start a poller per
//! bot and a dispatcher per forward, serve the admin API, and stop them all
//! in order.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::budget::Budget;
use crate::config::{Settings, StartFrom};
use crate::deliver::Forwarder;
use crate::events::Bus;
use crate::history::History;
use crate::nats::connection::{FirstConnect, Nats};
use crate::ops::admin::{self, Admin};
use crate::ops::serve::Limits;
use crate::ops::status::{BotHandle, ForwardHandle, Observed};
use crate::platform::api::BotApi;
use crate::poller::{Poller, Route};
use crate::replay::Replays;
use crate::stats::{BotStats, ForwardStats};
use crate::store::{Queue, Store};

/// Runs until `shutdown` is cancelled, then drains in-flight deliveries
/// (bounded by `shutdown_timeout`), flushes the store and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_events(settings, shutdown, Bus::new()).await
}

/// Like [`run`], telling `events`' listeners what happens to each update
/// (the quick start subscribes before it starts; `GET /events` any time).
pub async fn run_with_events(
    settings: Settings,
    shutdown: CancellationToken,
    events: Bus,
) -> anyhow::Result<()> {
    crate::store::dir::create(&settings.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            settings.state_dir.display()
        )
    })?;
    if let Err(e) = crate::store::dir::tighten(&settings.state_dir) {
        warn!(
            state_dir = %settings.state_dir.display(),
            "cannot make the state directory private (0700, files 0600): {e}; other local users may read queued updates"
        );
    }
    let store = Arc::new(Store::open(&settings.state_dir, settings.cache_bytes)?);
    // The stages see the queue through its seam; operations see the store.
    let queue: Arc<dyn Queue> = store.clone();
    for w in &settings.warnings {
        warn!("{}: {w}", settings.source_name);
    }
    // Connected in the background: while NATS is away the poller goes on
    // storing, and JetStream forwards wait with their queues.
    let publishes = settings.bots.iter().any(|b| b.publishes_to_jetstream());
    let nats = match &settings.nats {
        Some(n) if publishes || settings.cluster.is_some() => {
            Some(Nats::connect(n, FirstConnect::InBackground).await?)
        }
        _ => None,
    };
    if settings.cluster.is_some() {
        refuse_a_local_backlog(&store)?;
    }
    let clustered = settings.cluster.is_some();
    // History is kept beside the sled queue; a cluster's queue is JetStream.
    let history = (!clustered).then(|| {
        let bots: Vec<_> = settings
            .bots
            .iter()
            .map(|b| (b.name.clone(), b.history))
            .collect();
        let h = History::start(&settings.state_dir, &bots);
        store.keep_history(h.clone());
        h
    });
    let tasks = TaskTracker::new();
    let mut handles = Vec::new();
    let mut bot_stats = Vec::new();
    let mut clients = crate::http::Clients::new();
    let mut long_polls = crate::longpoll::Pools::new();
    let client = crate::http::backend::Client::new()
        .map_err(|e| anyhow::anyhow!("the delivery client: {e}"))?;
    let mut plans = Vec::with_capacity(settings.bots.len());
    let max_queued = settings
        .gateway
        .as_ref()
        .map_or(crate::config::DEFAULT_MAX_QUEUED, |g| g.max_queued);
    let mut gateway_bots = Vec::new();
    for bot in settings.bots {
        let via = clients
            .for_bot(bot.proxy.as_ref(), bot.ca_file.as_ref())
            .map_err(|e| anyhow::anyhow!("bot {}: {e}", bot.name))?;
        let polls = long_polls
            .long_polls(
                &mut clients,
                &bot.api_url,
                bot.proxy.as_ref(),
                bot.ca_file.as_ref(),
            )
            .map_err(|e| anyhow::anyhow!("bot {}: {e}", bot.name))?;
        let api =
            Arc::new(BotApi::new(&bot.api_url, bot.token.clone(), via).with_long_polls(polls));
        // One budget per bot: its gateway calls and webhook replies share it.
        let budget = Arc::new(Budget::new(bot.limits.clone(), max_queued));
        if settings.gateway.is_some() {
            gateway_bots.push(crate::gateway::GatewayBot {
                name: bot.name.clone(),
                api: api.clone(),
                budget: budget.clone(),
                clients: bot.clients.clone(),
                uploads: Arc::new(tokio::sync::Semaphore::new(crate::gateway::uploads_for(
                    &bot.limits,
                ))),
            });
        }
        let mut forwards = Vec::with_capacity(bot.forwards.len());
        for fwd in &bot.forwards {
            // In a cluster every node must name a forward alike: by its
            // name, not by the order this node's database first saw it.
            let fwd_id = if clustered {
                crate::cluster::queue::forward_id(&fwd.name)
            } else {
                if fwd.start_from == StartFrom::History
                    && bot.history.is_some()
                    && !store.knows_forward(&bot.name, &fwd.name)?
                {
                    // Saved before the forward is known, so that a crash in
                    // between cannot make it "known" without its history.
                    crate::replay::save_start_from(&store, &bot.name, &fwd.name, bot.history)
                        .await?;
                }
                store.forward_id(&bot.name, &fwd.name)?
            };
            let plan = ForwardPlan {
                id: fwd_id,
                settings: Arc::new(fwd.clone()),
                wake: Arc::new(Notify::new()),
                stats: Arc::new(ForwardStats::default()),
            };
            handles.push(ForwardHandle {
                bot: bot.name.clone(),
                name: fwd.name.clone(),
                id: fwd_id,
                wake: plan.wake.clone(),
                stats: plan.stats.clone(),
            });
            forwards.push(plan);
        }
        let stats = Arc::new(BotStats::new(bot.poll_timeout));
        bot_stats.push(BotHandle {
            name: bot.name.clone(),
            stats: stats.clone(),
            budget: budget.clone(),
        });
        let bot_history = history
            .as_ref()
            .filter(|h| h.bot(&bot.name).is_some())
            .cloned();
        plans.push(Arc::new(BotPlan {
            history: bot_history,
            bot: Arc::new(bot),
            api,
            budget,
            client: client.clone(),
            nats: nats.clone(),
            forwards,
            stats,
            drain_timeout: settings.shutdown_timeout,
            events: events.clone(),
            // Only while spans are exported: otherwise no map at all.
            traces: settings
                .tracing
                .is_some()
                .then(|| Arc::new(crate::trace::Batches::new())),
        }));
    }
    let replays = history.as_ref().map(|h| {
        let bots = plans
            .iter()
            .map(|p| {
                let targets = p
                    .forwards
                    .iter()
                    .map(|f| crate::replay::Target {
                        id: f.id,
                        name: f.settings.name.clone(),
                        filter: f.settings.filter.clone(),
                        wake: f.wake.clone(),
                    })
                    .collect();
                (p.name().to_string(), targets)
            })
            .collect();
        Arc::new(Replays::new(store.clone(), h.clone(), bots))
    });
    let mut leading = None;
    match (&settings.cluster, &nats) {
        (Some(cluster), Some(conn)) => {
            let seen = crate::cluster::elect::Shared::default();
            leading = Some(crate::ops::status::ClusterView {
                node: cluster.node.clone(),
                seen: seen.clone(),
                js: async_nats::jetstream::new(conn.client().clone()),
            });
            let forwards = plans
                .iter()
                .map(|p| {
                    (
                        p.name().to_string(),
                        p.forwards.iter().map(|f| (f.id, f.wake.clone())).collect(),
                    )
                })
                .collect();
            let by_name: std::collections::HashMap<String, Arc<BotPlan>> = plans
                .into_iter()
                .map(|p| (p.name().to_string(), p))
                .collect();
            let work: crate::cluster::node::Work = Arc::new(move |bot, queue, fence, stop| {
                let plan = by_name.get(bot).cloned();
                Box::pin(async move {
                    if let Some(plan) = plan {
                        plan.run(queue, Some(fence), stop).await
                    }
                })
            });
            tasks.spawn(crate::cluster::node::run(
                cluster.clone(),
                conn.clone(),
                forwards,
                work,
                seen,
                shutdown.clone(),
            ));
        }
        _ => {
            if let Some(replays) = &replays {
                // Before any poll: a new forward's history comes before its
                // live traffic; an interrupted replay finishes first.
                replays.resume().await?;
            }
            for plan in plans {
                tasks.spawn(plan.run(queue.clone(), None, shutdown.clone()));
            }
        }
    }
    let gateway = match &settings.gateway {
        Some(g) => Some(
            start_gateway(
                g,
                gateway_bots,
                &store,
                (
                    settings.admin_header_timeout,
                    settings.admin_idle_timeout,
                    settings.shutdown_timeout,
                ),
                &tasks,
                shutdown.clone(),
                settings.tracing.is_some(),
            )
            .await?,
        ),
        None => None,
    };
    let observed = Arc::new(Observed {
        store: store.clone(),
        bots: bot_stats,
        forwards: handles,
        nats: nats.clone(),
        cluster: leading,
        gateway,
        replays,
    });
    tasks.spawn(crate::ops::notify::run(observed.clone(), shutdown.clone()));
    if let Some(addr) = settings.admin_listen {
        let admin = Admin {
            relay: observed,
            token: settings.admin_token.clone(),
            allowed_hosts: settings.admin_allowed_hosts.clone(),
            events: events.clone(),
        };
        let limits = Limits {
            max_connections: crate::ops::serve::connection_cap(),
            header_timeout: settings.admin_header_timeout,
            idle_timeout: settings.admin_idle_timeout,
            name: "admin API",
            whole_bodies: true,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on admin.listen {addr}"))?;
        info!(
            max_connections = limits.max_connections,
            "admin API on http://{}",
            listener.local_addr()?
        );
        tasks.spawn(admin::serve(listener, admin, limits, shutdown.clone()));
    }
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tasks.spawn(watch_store(store.clone(), broken.clone(), shutdown.clone()));
    tasks.close();
    tasks.wait().await;
    if let Some(h) = &history {
        // What history's thread still holds reaches the disk.
        h.sync(std::time::Duration::from_secs(1));
    }
    if broken.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!(
            "stopped because the state database kept failing (see above); \
             exiting non-zero so that systemd's Restart= opens it afresh"
        );
    }
    // sled's flush never completes once it holds an I/O error: a stop
    // must not wait for it. Nothing unflushed was confirmed.
    if let Some((_, e)) = store.failing() {
        anyhow::bail!(
            "stopped with the state database failing ({e}); nothing unstored was confirmed"
        );
    }
    tokio::time::timeout(settings.shutdown_timeout, store.flush())
        .await
        .map_err(|_| anyhow::anyhow!("the final flush did not finish within shutdown_timeout"))??;
    info!("stopped; everything stored is on disk");
    Ok(())
}

/// Listens for backends' Bot API calls; returns the gateway's counts.
async fn start_gateway(
    g: &crate::config::GatewaySettings,
    bots: Vec<crate::gateway::GatewayBot>,
    store: &Store,
    (header_timeout, idle_timeout, drain): (
        std::time::Duration,
        std::time::Duration,
        std::time::Duration,
    ),
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    traced: bool,
) -> anyhow::Result<Arc<crate::stats::GatewayStats>> {
    let answers = crate::gateway::answers::Answers::open(
        store.side_tree("gateway_answers")?,
        store.side_tree("gateway_answers_by_time")?,
    );
    let gateway = Arc::new(crate::gateway::Gateway::new(bots, answers, g).traced(traced));
    let listener = tokio::net::TcpListener::bind(g.listen)
        .await
        .with_context(|| format!("cannot listen on gateway.listen {}", g.listen))?;
    info!(
        max_connections = g.max_connections,
        "gateway on http://{}",
        listener.local_addr()?
    );
    let stats = gateway.stats.clone();
    tasks.spawn(crate::gateway::serve(
        listener,
        gateway,
        g.clone(),
        header_timeout,
        idle_timeout,
        drain,
        shutdown,
    ));
    Ok(stats)
}

/// A node that joins a cluster must not strand what its own database
/// still holds from single-node mode: a cluster delivers from JetStream.
fn refuse_a_local_backlog(store: &Store) -> anyhow::Result<()> {
    let waiting: Vec<String> = store
        .forwards()?
        .into_iter()
        .filter_map(|f| {
            let n = store.depth(f.id);
            (n > 0).then(|| format!("{}/{}: {n}", f.bot, f.name))
        })
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "[cluster] is set, but this node's own queue still holds updates from single-node mode ({}); \
         a cluster delivers only from JetStream, so these would never be sent. Run once more without \
         [cluster] until `pollhook status` shows every queue at 0, then add [cluster] (docs/cluster.md, \"Upgrade\")",
        waiting.join(", ")
    )
}

/// Stops the relay when the store can only recover by being reopened
/// (store/health.rs): sled keeps an I/O error for good, so retrying in
/// this process would fail forever even after the disk has room again.
async fn watch_store(
    store: Arc<Store>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if store.needs_restart(crate::clock::now_ms()) {
            let error = store.failing().map(|(_, e)| e).unwrap_or_default();
            tracing::error!(
                "the state database has failed for {}s and the disk has room again, but sled keeps \
                 its error ({error}) until it is reopened; stopping (nothing unstored was confirmed)",
                crate::store::health::GRACE.as_secs()
            );
            broken.store(true, std::sync::atomic::Ordering::SeqCst);
            shutdown.cancel();
            return;
        }
    }
}

/// One forward of a bot, ready to be started over whichever queue.
pub struct ForwardPlan {
    pub id: u32,
    pub settings: Arc<crate::config::ForwardSettings>,
    pub wake: Arc<Notify>,
    pub stats: Arc<ForwardStats>,
}

/// Everything one bot runs (its poller and a dispatcher per forward),
/// ready to be started over a queue: the sled store on a single node, the
/// replicated queue on the node that leads the bot in a cluster.
pub struct BotPlan {
    pub bot: Arc<crate::config::BotSettings>,
    pub api: Arc<BotApi>,
    pub budget: Arc<Budget>,
    pub client: crate::http::backend::Client,
    pub nats: Option<Nats>,
    pub forwards: Vec<ForwardPlan>,
    pub stats: Arc<BotStats>,
    pub drain_timeout: std::time::Duration,
    pub events: Bus,
    /// The bot's history, if it keeps one.
    pub history: Option<History>,
    /// Each queued update's trace, while tracing is on.
    pub traces: Option<Arc<crate::trace::Batches>>,
}

impl BotPlan {
    pub fn name(&self) -> &str {
        &self.bot.name
    }

    /// Runs the bot until `stop`; `fence`, in a cluster, closes every act
    /// the moment this node may no longer lead it.
    pub async fn run(
        self: Arc<Self>,
        queue: Arc<dyn Queue>,
        fence: Option<crate::cluster::fence::Fence>,
        stop: CancellationToken,
    ) {
        let tasks = TaskTracker::new();
        let mut routes = Vec::with_capacity(self.forwards.len());
        for f in &self.forwards {
            routes.push(Route {
                fwd_id: f.id,
                name: f.settings.name.clone(),
                filter: f.settings.filter.clone(),
                wake: f.wake.clone(),
            });
            let forwarder = Forwarder {
                bot: self.bot.name.clone(),
                fwd_id: f.id,
                settings: f.settings.clone(),
                flavor: self.bot.flavor,
                queue: queue.clone(),
                api: self.api.clone(),
                budget: self.budget.clone(),
                client: self.client.clone(),
                nats: self.nats.clone(),
                fence: fence.clone(),
                wake: f.wake.clone(),
                stats: f.stats.clone(),
                drain_timeout: self.drain_timeout,
                events: self.events.clone(),
                history: self
                    .history
                    .as_ref()
                    .and_then(|h| h.recorder(&self.bot.name)),
                traces: self.traces.clone(),
            };
            let span = info_span!("forward", bot = %self.bot.name, forward = %f.settings.name);
            tasks.spawn(forwarder.run(stop.clone()).instrument(span));
        }
        let poller = Poller {
            bot: self.bot.clone(),
            api: self.api.clone(),
            queue,
            routes,
            stats: self.stats.clone(),
            fence,
            events: self.events.clone(),
            traces: self.traces.clone(),
        };
        let span = info_span!("poller", bot = %self.bot.name);
        tasks.spawn(poller.run(stop.clone()).instrument(span));
        tasks.close();
        tasks.wait().await;
    }
}
