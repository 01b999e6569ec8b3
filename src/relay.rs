//! The whole relay for one configuration: open the store, start a poller per
//! bot and a dispatcher per forward, and stop them all in order.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Settings;
use crate::delivery::Forwarder;
use crate::poller::{Poller, Route};
use crate::store::Store;

/// Runs until `shutdown` is cancelled, then drains in-flight deliveries
/// (bounded by `shutdown_timeout`), flushes the store and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            settings.state_dir.display()
        )
    })?;
    let store = Arc::new(Store::open(&settings.state_dir, settings.cache_bytes)?);
    for w in &settings.warnings {
        tracing::warn!("{}: {w}", settings.source_name);
    }
    let tasks = TaskTracker::new();
    for bot in settings.bots {
        let mut routes = Vec::with_capacity(bot.forwards.len());
        for fwd in &bot.forwards {
            let fwd_id = store.forward_id(&bot.name, &fwd.name)?;
            let wake = Arc::new(Notify::new());
            routes.push(Route {
                fwd_id,
                updates: fwd.updates.clone(),
                wake: wake.clone(),
            });
            let forwarder = Forwarder {
                bot: bot.name.clone(),
                fwd_id,
                settings: fwd.clone(),
                flavor: bot.flavor,
                store: store.clone(),
                wake,
                drain_timeout: settings.shutdown_timeout,
            };
            tasks.spawn(forwarder.run(shutdown.clone()));
        }
        let poller = Poller {
            bot,
            store: store.clone(),
            routes,
        };
        tasks.spawn(poller.run(shutdown.clone()));
    }
    tasks.close();
    tasks.wait().await;
    store.flush().await?;
    info!("stopped; everything stored is on disk");
    Ok(())
}
