//! The live event bus: what happens to each update (received, delivered,
//! failed, dead-lettered, its webhook reply), for whoever is watching
//! right now: `GET /events` on the admin API (`pollhook tail`) and the
//! quick start's terminal output. Nothing is kept: a listener sees what
//! happens while it listens.
//!
//! Free when nobody listens: the stages ask [`Bus::active`] (one relaxed
//! atomic load) and build an event only when it is true, so the hot path
//! allocates nothing for events otherwise. tokio's own
//! `Sender::receiver_count` would lock the channel's mutex, shared by every
//! dispatcher, on each delivery.
//!
//! Bounded: the channel keeps the last [`CAPACITY`] events; a listener that
//! falls further behind is told how many it missed ([`Next::Lagged`]).
//!
//! A leaf: the stages import it, it imports none of them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events a listener may fall behind by before it is told it lagged.
pub const CAPACITY: usize = 1024;

/// One thing that happened to an update. As JSON (one line of `/events`):
/// `{"at":…,"bot":…,"forward":…,"update_id":…,"chat":…,"event":"delivered",…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, ms since the epoch.
    pub at: u64,
    pub bot: String,
    /// The forward it concerns; null for `received` (the poller's).
    pub forward: Option<String>,
    /// Null for an update pollhook could not read.
    pub update_id: Option<i64>,
    /// The chat the update belongs to (a reply: the chat it calls into).
    pub chat: Option<String>,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// Stored from getUpdates; `forwards` are those that want it (none:
    /// the forwards' filters drop it).
    Received { kind: String, forwards: Vec<String> },
    /// An attempt succeeded in `ms` milliseconds.
    Delivered {
        status: Status,
        ms: u64,
        attempt: u32,
    },
    /// An attempt failed; `retry_in_ms` is null when it was the last one
    /// (a `dead_lettered` follows).
    Failed {
        error: String,
        attempt: u32,
        retry_in_ms: Option<u64>,
    },
    /// Given up on: moved to dead letters.
    DeadLettered { reason: String, attempts: u32 },
    /// A webhook reply's Bot API call: made (`ok`), or not, and why.
    /// `method` is null when the reply could not be read.
    Reply {
        method: Option<String>,
        ok: bool,
        error: Option<String>,
    },
}

/// What accepted a delivery: an HTTP status, or JetStream's `"ack"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Status {
    Http(u16),
    Ack(Acked),
}

/// The JSON string `"ack"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acked {
    Ack,
}

impl Status {
    pub const ACK: Status = Status::Ack(Acked::Ack);
}

/// Lines of the `/events` stream that are not events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Control {
    /// Nothing happened for a while; the connection is alive.
    Keepalive,
    /// This listener fell behind and `missed` events were dropped for it.
    Lagged { missed: u64 },
}

/// The sending side, cloned into every stage.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
    listeners: Arc<AtomicUsize>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl Bus {
    pub fn new() -> Bus {
        let (tx, _) = broadcast::channel(CAPACITY);
        Bus {
            tx,
            listeners: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens: ask before building an event.
    #[inline]
    pub fn active(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Sends the event `make` builds, if anyone listens.
    #[inline]
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if self.active() {
            // Err only when the last listener left in between.
            let _ = self.tx.send(Arc::new(make()));
        }
    }

    pub fn subscribe(&self) -> Listener {
        // Subscribed before counted: an event sent once `active` is true
        // reaches this listener.
        let rx = self.tx.subscribe();
        self.listeners.fetch_add(1, Ordering::Relaxed);
        Listener {
            rx,
            listeners: self.listeners.clone(),
        }
    }
}

/// The receiving side; counted while it lives.
pub struct Listener {
    rx: broadcast::Receiver<Arc<Event>>,
    listeners: Arc<AtomicUsize>,
}

pub enum Next {
    Event(Arc<Event>),
    /// This many events were dropped because the listener fell behind.
    Lagged(u64),
    /// Every sender is gone (the relay stopped).
    Closed,
}

impl Listener {
    pub async fn recv(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(e) => Next::Event(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Next::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which events a listener wants (`/events?bot=B&forward=F`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    pub bot: Option<String>,
    pub forward: Option<String>,
}

impl Filter {
    /// A `received` event matches a forward that wants its update.
    pub fn wants(&self, e: &Event) -> bool {
        if self.bot.as_ref().is_some_and(|b| *b != e.bot) {
            return false;
        }
        let Some(f) = &self.forward else {
            return true;
        };
        match (&e.forward, &e.what) {
            (Some(mine), _) => mine == f,
            (None, What::Received { forwards, .. }) => forwards.contains(f),
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered() -> Event {
        Event {
            at: 1,
            bot: "main".into(),
            forward: Some("app".into()),
            update_id: Some(7),
            chat: Some("42".into()),
            what: What::Delivered {
                status: Status::Http(200),
                ms: 12,
                attempt: 1,
            },
        }
    }

    #[test]
    fn events_are_flat_json_lines_that_read_back() {
        let e = delivered();
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"at":1,"bot":"main","forward":"app","update_id":7,"chat":"42","event":"delivered","status":200,"ms":12,"attempt":1}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        let acked = Event {
            what: What::Delivered {
                status: Status::ACK,
                ms: 3,
                attempt: 2,
            },
            ..e
        };
        let line = serde_json::to_string(&acked).unwrap();
        assert!(line.contains(r#""status":"ack""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), acked);
        assert_eq!(
            serde_json::to_string(&Control::Lagged { missed: 3 }).unwrap(),
            r#"{"event":"lagged","missed":3}"#
        );
        assert!(serde_json::from_str::<Event>(r#"{"event":"keepalive"}"#).is_err());
    }

    #[tokio::test]
    async fn nothing_is_built_without_a_listener_and_a_slow_one_is_told_what_it_missed() {
        let bus = Bus::new();
        let mut built = 0;
        bus.emit(|| {
            built += 1;
            delivered()
        });
        assert_eq!(built, 0);
        let mut l = bus.subscribe();
        assert!(bus.active());
        for _ in 0..CAPACITY + 5 {
            bus.emit(delivered);
        }
        assert!(matches!(l.recv().await, Next::Lagged(5)));
        assert!(matches!(l.recv().await, Next::Event(_)));
        drop(l);
        assert!(!bus.active());
    }

    #[test]
    fn filters_by_bot_and_forward() {
        let e = delivered();
        let received = Event {
            forward: None,
            what: What::Received {
                kind: "message".into(),
                forwards: vec!["app".into()],
            },
            ..delivered()
        };
        let f = |bot: Option<&str>, fwd: Option<&str>| Filter {
            bot: bot.map(Into::into),
            forward: fwd.map(Into::into),
        };
        assert!(f(None, None).wants(&e));
        assert!(f(Some("main"), Some("app")).wants(&e));
        assert!(!f(Some("other"), None).wants(&e));
        assert!(!f(None, Some("audit")).wants(&e));
        assert!(f(None, Some("app")).wants(&received));
        assert!(!f(None, Some("audit")).wants(&received));
    }
}
