//! Turning signals into a shutdown.
//!
//! The first SIGTERM (systemd's stop) or SIGINT (Ctrl-C) cancels the token:
//! pollers stop, dispatchers finish what is in flight, the store flushes. A
//! second signal means "now": the process exits at once. Nothing stored is
//! lost either way, because every batch was flushed before it was confirmed.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub async fn on_signals(token: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot listen for signals; stop with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!("{name}: stopping; finishing deliveries in flight (signal again to stop at once)");
    token.cancel();
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    warn!("second {name}: exiting now; unfinished deliveries stay queued");
    std::process::exit(130);
}
