//! The whole relay for one configuration: open the store, start a poller per
//! bot and a dispatcher per forward, serve the admin API, and stop them all
//! in order.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::config::Settings;
use crate::deliver::Forwarder;
use crate::nats::connection::{FirstConnect, Nats};
use crate::ops::admin::{self, Admin};
use crate::ops::serve::Limits;
use crate::ops::status::{BotHandle, ForwardHandle, Observed};
use crate::platform::api::BotApi;
use crate::poller::{Poller, Route};
use crate::stats::{BotStats, ForwardStats};
use crate::store::{Queue, Store};

/// Runs until `shutdown` is cancelled, then drains in-flight deliveries
/// (bounded by `shutdown_timeout`), flushes the store and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
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
    let publishes = settings.bots.iter().any(|b| {
        b.forwards
            .iter()
            .any(|f| matches!(f.to, crate::config::Destination::JetStream(_)))
    });
    let nats = match &settings.nats {
        Some(n) if publishes => Some(Nats::connect(n, FirstConnect::InBackground).await?),
        _ => None,
    };
    let tasks = TaskTracker::new();
    let mut handles = Vec::new();
    let mut bot_stats = Vec::new();
    let mut clients = crate::http::Clients::new();
    let client = clients.direct();
    for bot in settings.bots {
        let via = clients
            .for_bot(bot.proxy.as_ref())
            .map_err(|e| anyhow::anyhow!("bot {}: proxy: {e}", bot.name))?;
        let api = Arc::new(BotApi::new(&bot.api_url, bot.token.clone(), via));
        let mut routes = Vec::with_capacity(bot.forwards.len());
        for fwd in &bot.forwards {
            let fwd_id = store.forward_id(&bot.name, &fwd.name)?;
            let wake = Arc::new(Notify::new());
            let stats = Arc::new(ForwardStats::default());
            routes.push(Route {
                fwd_id,
                filter: fwd.filter.clone(),
                wake: wake.clone(),
            });
            handles.push(ForwardHandle {
                bot: bot.name.clone(),
                name: fwd.name.clone(),
                id: fwd_id,
                wake: wake.clone(),
                stats: stats.clone(),
            });
            let forwarder = Forwarder {
                bot: bot.name.clone(),
                fwd_id,
                settings: fwd.clone(),
                flavor: bot.flavor,
                queue: queue.clone(),
                api: api.clone(),
                client: client.clone(),
                nats: nats.clone(),
                wake,
                stats,
                drain_timeout: settings.shutdown_timeout,
            };
            let span = info_span!("forward", bot = %bot.name, forward = %fwd.name);
            tasks.spawn(forwarder.run(shutdown.clone()).instrument(span));
        }
        let stats = Arc::new(BotStats::new(bot.poll_timeout));
        bot_stats.push(BotHandle {
            name: bot.name.clone(),
            stats: stats.clone(),
        });
        let span = info_span!("poller", bot = %bot.name);
        let poller = Poller {
            bot,
            api,
            queue: queue.clone(),
            routes,
            stats,
        };
        tasks.spawn(poller.run(shutdown.clone()).instrument(span));
    }
    let observed = Arc::new(Observed {
        store: store.clone(),
        bots: bot_stats,
        forwards: handles,
        nats: nats.clone(),
    });
    tasks.spawn(crate::ops::notify::run(observed.clone(), shutdown.clone()));
    if let Some(addr) = settings.admin_listen {
        let admin = Admin {
            relay: observed,
            token: settings.admin_token.clone(),
            allowed_hosts: settings.admin_allowed_hosts.clone(),
        };
        let limits = Limits {
            max_connections: crate::ops::serve::connection_cap(),
            header_timeout: settings.admin_header_timeout,
            idle_timeout: settings.admin_idle_timeout,
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
