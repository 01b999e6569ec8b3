//! A replay's progress, watched by whoever asked for it (the admin API
//! streams it as NDJSON lines; the command line draws it on a terminal).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use super::State;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(rename = "replay")]
    pub id: u64,
    pub bot: String,
    /// The forwards asked for; empty: each update's own.
    pub forwards: Vec<String>,
    pub matched: u64,
    pub queued: u64,
    pub scanned_bytes: u64,
    pub total_bytes: u64,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Progress {
    tx: watch::Sender<Snapshot>,
}

impl Progress {
    pub fn new(id: u64, state: &State) -> Arc<Progress> {
        let (tx, _) = watch::channel(Snapshot {
            id,
            bot: state.bot.clone(),
            forwards: state.forwards.clone().unwrap_or_default(),
            matched: state.matched,
            queued: state.queued,
            scanned_bytes: 0,
            total_bytes: 0,
            done: false,
            error: None,
        });
        Arc::new(Progress { tx })
    }

    pub fn update(&self, matched: u64, queued: u64, scanned: u64, total: u64) {
        self.tx.send_modify(|s| {
            s.matched = matched;
            s.queued = queued;
            s.scanned_bytes = scanned;
            s.total_bytes = total;
        });
    }

    pub fn finish(&self, error: Option<String>) {
        self.tx.send_modify(|s| {
            s.done = true;
            s.error = error;
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}
