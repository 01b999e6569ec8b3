//! What the backend got from the nodes, counted: a stream of updates
//! pushed to the platform, every update delivered, each chat's order,
//! duplicates and how long before a failover a redelivered update had
//! first been delivered, and what to show when something is missing.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::CHATS;
use crate::rig::*;

/// A stream of updates for one bot: `per_tick` every 100 ms, update `id` in
/// chat `id % CHATS`; remembers when each was pushed.
pub struct Producer {
    task: JoinHandle<()>,
    pushed: Arc<Mutex<BTreeMap<i64, Instant>>>,
}

impl Producer {
    pub fn start(
        api: Arc<FakeApi>,
        token: &str,
        ids: RangeInclusive<i64>,
        per_tick: usize,
    ) -> Producer {
        let pushed: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
        let token = token.to_string();
        let log = pushed.clone();
        let task = tokio::spawn(async move {
            let ids: Vec<i64> = ids.collect();
            for tick in ids.chunks(per_tick) {
                for &id in tick {
                    api.push_message(&token, id, id % CHATS, &format!("update {id}"));
                    log.lock().unwrap().insert(id, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Producer { task, pushed }
    }

    /// The highest update pushed so far.
    pub fn last(&self) -> i64 {
        self.pushed
            .lock()
            .unwrap()
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
    }

    /// Waits until every update was pushed; returns when each was.
    pub async fn finish(self) -> BTreeMap<i64, Instant> {
        self.task.await.unwrap();
        self.pushed.lock().unwrap().clone()
    }
}

/// What the backend accepted, counted against the updates `ids`.
pub struct Tally {
    pub requests: usize,
    pub lost: Vec<i64>,
    /// Requests for an update accepted before.
    pub duplicates: usize,
    /// Of those, how many carried a webhook-id seen before for the update
    /// (a redelivery of one job rather than a second job for it).
    pub same_webhook_id: usize,
    /// Requests accepted from each node.
    pub by_node: BTreeMap<String, usize>,
}

pub fn tally(nodes: &Nodes, ids: RangeInclusive<i64>) -> Tally {
    let accepted = nodes.backend.accepted();
    let mut seen: HashMap<i64, Vec<String>> = HashMap::new();
    let (mut duplicates, mut same_webhook_id) = (0, 0);
    let mut by_node = BTreeMap::new();
    for r in &accepted {
        let webhook_id = r.header("webhook-id").unwrap_or_default().to_string();
        let before = seen.entry(update_id(r)).or_default();
        if !before.is_empty() {
            duplicates += 1;
            same_webhook_id += before.contains(&webhook_id) as usize;
        }
        before.push(webhook_id);
        let node = match nodes.delivered_by(r) {
            Some(i) => nodes.name(i).to_string(),
            None => r.path.clone(),
        };
        *by_node.entry(node).or_default() += 1;
    }
    Tally {
        requests: accepted.len(),
        lost: ids.filter(|id| !seen.contains_key(id)).collect(),
        duplicates,
        same_webhook_id,
        by_node,
    }
}

impl Tally {
    pub fn summary(&self) -> String {
        format!(
            "{} requests accepted, {} lost, {} duplicates ({} with a webhook-id seen before), by node {:?}",
            self.requests,
            self.lost.len(),
            self.duplicates,
            self.same_webhook_id,
            self.by_node
        )
    }

    pub fn assert_none_lost(&self) {
        assert!(
            self.lost.is_empty(),
            "{} updates never delivered, e.g. {:?}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(10)]
        );
    }
}

/// In each chat, the update ids the backend accepted, in the order it
/// accepted them, never go back, except for an exact redelivery (an update
/// accepted before in that chat, byte for byte). Returns how many
/// redeliveries there were.
pub fn assert_per_chat_order(accepted: &[Received]) -> usize {
    let mut seen: HashMap<String, HashMap<i64, &[u8]>> = HashMap::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut redeliveries = 0;
    for r in accepted {
        let (chat, id) = (chat_id(r), update_id(r));
        let earlier = seen.entry(chat.clone()).or_default();
        if let Some(body) = earlier.get(&id) {
            assert_eq!(
                *body,
                &r.body[..],
                "chat {chat}: update {id} came again with other bytes (request {})",
                r.index
            );
            redeliveries += 1;
            continue;
        }
        let top = last.entry(chat.clone()).or_insert(i64::MIN);
        assert!(
            id > *top,
            "chat {chat}: update {id} was delivered after update {top} (request {}, {})",
            r.index,
            r.path
        );
        *top = id;
        earlier.insert(id, &r.body[..]);
    }
    redeliveries
}

/// Why not everything in `ids` is delivered: what is missing, what the
/// platform confirmed, and the nodes' logs.
pub fn delivery_report(nodes: &Nodes, ids: &RangeInclusive<i64>) -> String {
    let got = distinct_ids(&nodes.backend.accepted());
    let missing: Vec<i64> = ids.clone().filter(|id| !got.contains(id)).collect();
    let platform: Vec<String> = nodes
        .bots
        .iter()
        .map(|b| {
            format!(
                "{}: confirmed {:?}, {} pending, getUpdates answers {:?}",
                b.name,
                nodes.api.confirmed(&b.token),
                nodes.api.pending(&b.token),
                nodes.api.status_counts(&b.token)
            )
        })
        .collect();
    format!(
        "{} of {} not delivered, e.g. {:?}; {}; logs:\n{}",
        missing.len(),
        ids.clone().count(),
        &missing[..missing.len().min(10)],
        platform.join("; "),
        nodes.log_tails(30)
    )
}

pub fn all_delivered(nodes: &Nodes, ids: &RangeInclusive<i64>) -> bool {
    let accepted = nodes.backend.accepted();
    if accepted.len() < ids.clone().count() {
        return false;
    }
    let got = distinct_ids(&accepted);
    ids.clone().all(|id| got.contains(&id))
}

/// Waits until the backend accepted every update in `ids`.
pub async fn wait_delivered(nodes: &Nodes, ids: RangeInclusive<i64>) {
    let done = tokio::time::timeout(
        LONG,
        wait_until("every update delivered", LONG * 2, || {
            all_delivered(nodes, &ids)
        }),
    )
    .await;
    if done.is_err() {
        panic!(
            "not everything delivered within {LONG:?}: {}",
            delivery_report(nodes, &ids)
        );
    }
}

/// How many distinct updates the backend accepted.
pub fn delivered_count(nodes: &Nodes) -> usize {
    distinct_ids(&nodes.backend.accepted()).len()
}

/// 409s the platform answered the bot's getUpdates calls.
pub fn conflicts(nodes: &Nodes, token: &str) -> usize {
    nodes
        .api
        .status_counts(token)
        .get(&409)
        .copied()
        .unwrap_or(0)
}

pub fn assert_no_token_anywhere(nodes: &Nodes) {
    for i in 0..nodes.len() {
        assert_no_token(&nodes.logs(i));
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The longest wait between two accepted requests after `from`, and the
/// wait from `from` to the first one.
pub fn longest_gap_after(accepted: &[Received], from: Instant) -> (Duration, Duration) {
    let mut times: Vec<Instant> = accepted
        .iter()
        .map(|r| r.at)
        .filter(|&t| t > from)
        .collect();
    times.sort();
    let first = times.first().map(|&t| t - from).unwrap_or_default();
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (longest.max(first), first)
}

/// For each repeated delivery of an update, how long before the failover
/// that preceded the repeat (the latest of `failovers` before it) the
/// update had first been accepted; and how many repeats had no failover
/// between them and the first delivery.
pub fn redelivery_ages(accepted: &[Received], failovers: &[Instant]) -> (Vec<Duration>, usize) {
    let mut first: HashMap<i64, Instant> = HashMap::new();
    let (mut ages, mut unexplained) = (Vec::new(), 0);
    for r in accepted {
        let id = update_id(r);
        let Some(&at) = first.get(&id) else {
            first.insert(id, r.at);
            continue;
        };
        match failovers.iter().filter(|&&f| f <= r.at).max() {
            Some(&f) if at <= f => ages.push(f - at),
            _ => unexplained += 1,
        }
    }
    ages.sort();
    (ages, unexplained)
}

/// `redelivery_ages` in words.
pub fn redeliveries_said(accepted: &[Received], failovers: &[Instant]) -> String {
    let (ages, unexplained) = redelivery_ages(accepted, failovers);
    match (ages.first(), ages.last()) {
        (Some(_), Some(max)) => format!(
            "{} redelivered after a failover, first accepted {} (median) and up to {} before it; {unexplained} repeats with no failover between",
            ages.len(),
            secs(ages[ages.len() / 2]),
            secs(*max)
        ),
        _ => format!("no redelivery after a failover; {unexplained} repeats with no failover between"),
    }
}
