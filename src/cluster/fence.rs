//! Whether this node may still act for a bot it led: a time after which
//! it must not poll, confirm or deliver, moved forward on every renewal of
//! the lease and closed the moment the lease is lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Shared by the elector, which moves it, and the bot's work (the queue
/// and the sinks), which checks it before every act.
#[derive(Clone, Debug)]
pub struct Fence(Arc<Mutex<Instant>>);

impl Fence {
    pub fn new(until: Instant) -> Fence {
        Fence(Arc::new(Mutex::new(until)))
    }

    pub fn extend(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    pub fn close(&self) {
        self.extend(Instant::now() - Duration::from_millis(1));
    }

    /// True while the lease is certainly this node's.
    pub fn valid(&self) -> bool {
        Instant::now() < *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
