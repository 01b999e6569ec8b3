//! What the relay is doing, in one snapshot: served as `/status`, printed by
//! `pollhook status`, rendered as `/metrics`, summed up for systemd.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::nats::connection::Nats;
use crate::stats::{self, BotStats, ForwardCounters, ForwardStats};
use crate::store::Store;

/// A running bot as the status side sees it.
pub struct BotHandle {
    pub name: String,
    pub stats: Arc<BotStats>,
    /// Its rate budget: waits and the platform's 429s, for `/metrics`.
    pub budget: Arc<crate::budget::Budget>,
}

/// A running forward as the status side sees it.
pub struct ForwardHandle {
    pub bot: String,
    pub name: String,
    pub id: u32,
    pub wake: Arc<tokio::sync::Notify>,
    pub stats: Arc<ForwardStats>,
}

/// Everything there is to observe of a running relay.
pub struct Observed {
    pub store: Arc<Store>,
    pub bots: Vec<BotHandle>,
    pub forwards: Vec<ForwardHandle>,
    /// The NATS connection, when `[nats]` is configured.
    pub nats: Option<Nats>,
    /// This node's part in a cluster.
    pub cluster: Option<ClusterView>,
    /// The gateway's call counts, when `[gateway]` is configured.
    pub gateway: Option<Arc<crate::stats::GatewayStats>>,
    /// History and its replays (single-node pollhook only).
    pub replays: Option<Arc<crate::replay::Replays>>,
}

/// What a cluster node shows: its name, the bots it leads now, who leads
/// the others, and the replicated queue's counts.
pub struct ClusterView {
    pub node: String,
    pub seen: crate::cluster::elect::Shared,
    /// Where the shared queue and its dead letters are.
    pub js: async_nats::jetstream::Context,
}

/// `/status`'s `cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub node: String,
    /// The bots this node leads.
    pub leading: Vec<String>,
    /// Every led bot's node.
    pub leaders: std::collections::BTreeMap<String, String>,
    /// Live nodes.
    pub nodes: Vec<String>,
}

impl Observed {
    /// The bots this node polls: all of them, or in a cluster those it
    /// leads (the others are another node's to poll).
    pub fn polling(&self) -> Vec<&BotHandle> {
        match &self.cluster {
            None => self.bots.iter().collect(),
            Some(c) => {
                let seen = c.seen.lock().unwrap_or_else(|e| e.into_inner());
                self.bots
                    .iter()
                    .filter(|b| seen.leading_now().contains(&b.name))
                    .collect()
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut snap = snapshot(&self.store, &self.bots, &self.forwards);
        snap.nats = self.nats.as_ref().map(|n| NatsStatus {
            connected: n.connected(),
        });
        if let Some(c) = &self.cluster {
            let mut seen = c.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            seen.leading = seen.leading_now();
            // The queue lives in JetStream, not in this node's database:
            // every node shows what the stream and the buckets hold.
            for f in &mut snap.forwards {
                let Some(id) = self
                    .forwards
                    .iter()
                    .find(|h| h.bot == f.bot && h.name == f.forward)
                    .map(|h| h.id)
                else {
                    continue;
                };
                let key = (f.bot.clone(), id);
                f.queue_depth = seen.depth.get(&key).copied().unwrap_or(0);
                f.dead_letters = seen.dead.get(&key).copied().unwrap_or(0);
                f.oldest_pending_age_seconds = None;
            }
            for b in &mut snap.bots {
                b.offset = seen.offsets.get(&b.bot).copied();
                if !seen.leading.contains(&b.bot) {
                    b.state = match seen.holders.get(&b.bot) {
                        Some(n) => format!("standby (led by {n})"),
                        None => "standby (no leader yet)".into(),
                    };
                }
            }
            snap.cluster = Some(ClusterStatus {
                node: c.node.clone(),
                leading: seen.leading.clone(),
                leaders: seen.holders.clone().into_iter().collect(),
                nodes: seen.nodes.clone(),
            });
        }
        snap
    }
}

/// The NATS connection's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NatsStatus {
    pub connected: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub bots: Vec<BotStatus>,
    pub forwards: Vec<ForwardStatus>,
    pub store_bytes: u64,
    /// Absent without `[nats]` (and from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsStatus>,
    /// Absent outside a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BotStatus {
    pub bot: String,
    /// `@username (id …)`, once getMe answered.
    pub identity: Option<String>,
    /// "ok", "webhook is set", "another poller", "token rejected", …
    pub state: String,
    pub offset: Option<i64>,
    pub last_poll_at: Option<String>,
    pub last_poll_result: Option<String>,
    pub last_ok_at: Option<String>,
    pub updates_received: u64,
    pub updates_unrouted: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForwardStatus {
    pub bot: String,
    pub forward: String,
    pub queue_depth: u64,
    pub oldest_pending_age_seconds: Option<f64>,
    pub dead_letters: u64,
    pub last_error: Option<String>,
    pub counters: ForwardCounters,
}

pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn snapshot(store: &Store, bots: &[BotHandle], forwards: &[ForwardHandle]) -> Snapshot {
    let now = now_ms();
    let bots = bots
        .iter()
        .map(|b| {
            let s = &b.stats;
            let last = stats::last(&s.last_poll);
            let last_ok = stats::get(&s.last_ok_ms);
            BotStatus {
                bot: b.name.clone(),
                identity: s.identity.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                state: s.state(),
                offset: store.offset(&b.name).ok().flatten(),
                last_poll_at: last.as_ref().map(|(t, _)| time(*t)),
                last_poll_result: last.map(|(_, r)| r),
                last_ok_at: (last_ok > 0).then(|| time(last_ok)),
                updates_received: stats::get(&s.updates_received),
                updates_unrouted: stats::get(&s.updates_unrouted),
                polls_ok: stats::get(&s.polls_ok),
                polls_failed: stats::get(&s.polls_failed),
            }
        })
        .collect();
    let forwards = forwards
        .iter()
        .map(|f| ForwardStatus {
            bot: f.bot.clone(),
            forward: f.name.clone(),
            queue_depth: store.depth(f.id) as u64,
            oldest_pending_age_seconds: store
                .oldest(f.id)
                .ok()
                .flatten()
                .map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
            dead_letters: store.dead_count(f.id) as u64,
            last_error: stats::last(&f.stats.last_error).map(|(t, e)| format!("{} {e}", time(t))),
            counters: f.stats.snapshot(),
        })
        .collect();
    Snapshot {
        bots,
        forwards,
        store_bytes: store.size_on_disk().unwrap_or(0),
        nats: None,
        cluster: None,
    }
}

/// Ready: every bot polled successfully within twice its poll timeout.
/// Returns the bots that are not, with why.
pub fn unready(bots: &[&BotHandle]) -> Vec<String> {
    let now = now_ms();
    bots.iter()
        .filter_map(|b| {
            let last_ok = stats::get(&b.stats.last_ok_ms);
            let limit = 2 * b.stats.poll_timeout.as_millis() as u64;
            if last_ok == 0 {
                Some(format!(
                    "{}: no successful poll yet ({})",
                    b.name,
                    b.stats.state()
                ))
            } else if now.saturating_sub(last_ok) > limit {
                Some(format!(
                    "{}: last successful poll {}s ago ({})",
                    b.name,
                    now.saturating_sub(last_ok) / 1000,
                    b.stats.state()
                ))
            } else {
                None
            }
        })
        .collect()
}

/// One line for systemd's STATUS=: "3 bots, queue 12, 0 dead".
pub fn summary(s: &Snapshot) -> String {
    let queue: u64 = s.forwards.iter().map(|f| f.queue_depth).sum();
    let dead: u64 = s.forwards.iter().map(|f| f.dead_letters).sum();
    let troubled: Vec<&str> = s
        .bots
        .iter()
        .filter(|b| b.state != "ok")
        .map(|b| b.bot.as_str())
        .collect();
    let mut line = format!("{} bots, queue {queue}, {dead} dead", s.bots.len());
    if !troubled.is_empty() {
        line.push_str(&format!("; not ok: {}", troubled.join(", ")));
    }
    if s.nats.as_ref().is_some_and(|n| !n.connected) {
        line.push_str("; NATS disconnected");
    }
    line
}
