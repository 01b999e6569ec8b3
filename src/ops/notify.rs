//! Talking to systemd (`Type=notify`): READY=1 once every bot's first poll
//! is on its way, STATUS= with a one-line summary, WATCHDOG=1 only while the
//! pipeline is alive, STOPPING=1 on the way out.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) this task ends at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::ops::status::{summary, Observed};

/// STATUS= is refreshed this often when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(relay: Arc<Observed>, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // READY once every poller has a getUpdates on its way: from then on the
    // relay is doing its job (a bot in trouble is reported, not waited for).
    loop {
        if relay
            .bots
            .iter()
            .all(|b| b.stats.first_poll_started.load(Ordering::Relaxed))
        {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&summary(&relay.snapshot())),
    ]);
    info!("told systemd: ready");
    let watchdog = sd_notify::watchdog_enabled();
    // systemd recommends pinging at half the watchdog interval.
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let status = summary(&relay.snapshot());
        if watchdog.is_some() {
            match stalled(&relay) {
                None => send(&[NotifyState::Watchdog, NotifyState::Status(&status)]),
                Some(why) => {
                    // No ping: if this lasts, systemd restarts the service,
                    // which is the point of a watchdog.
                    warn!("{why}; withholding the watchdog ping");
                    send(&[NotifyState::Status(&format!("{status}; {why}"))]);
                }
            }
        } else {
            send(&[NotifyState::Status(&status)]);
        }
    }
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing deliveries in flight"),
    ]);
}

/// Why the pipeline is not alive, if it is not: the store fails its writes
/// (a poller retrying them is busy, not stalled, but makes no progress), or
/// a poller's current step has overrun its own bound (its deadline is set
/// before every call, sleep and store retry).
fn stalled(relay: &Observed) -> Option<String> {
    if let Some((_, error)) = relay.store.failing() {
        return Some(format!("the store is failing ({error})"));
    }
    let now = now_ms();
    relay
        .bots
        .iter()
        .find(|b| now > b.stats.busy_until_ms.load(Ordering::Relaxed))
        .map(|b| format!("poller {} stalled", b.name))
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify failed: {e}");
    }
}
