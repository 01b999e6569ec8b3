//! Leadership of a bot: a lease held as a key in a JetStream key-value
//! bucket, never a consensus of our own.
//!
//! The bucket keeps one revision per key (`history: 1`) and drops any key
//! not written for `lease` (`max_age`, which nats-server 2.9 has per bucket;
//! per-key TTLs came later). A node takes a bot by writing its key on
//! "no message yet" (`update` at revision 0), keeps it by rewriting it with
//! `update` against the revision it holds, and gives it back by deleting
//! that revision's message. The revision is the fencing token: a write made
//! on an old revision is refused by JetStream, so a node that was paused or
//! cut off cannot undo its successor's work.
//!
//! Why not async-nats' `create` and `delete`: a delete leaves a marker, and
//! `create` over a marker writes on the marker's revision. nats-server
//! before 2.9.21 (Debian ships 2.9.10) checks a non-zero expected revision
//! before the write is agreed on, not as part of it (nats-server#4320), so
//! two nodes racing for a bot given back could both win: measured here,
//! more than one winner in 61 and 83 of 150 rounds of six racing clients.
//! "No message yet" is checked as the write is applied, in the log's
//! order: 0 of 150 rounds. So a key given back leaves no marker (the bucket
//! allows deleting a message), and a take never writes on a marker; a
//! marker left by an older bucket that denies deletes just expires with
//! the lease.
//!
//! A holder also fences itself in time: the key's age counts from when the
//! server stored the last renewal, which is after the node sent it, so
//! `valid_until` (send time + two thirds of the lease) passes before the
//! key can expire and another node take it.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::stream::DeleteMessageErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

/// Keys of bots and of nodes' heartbeats in the bucket.
const BOT: &str = "bot.";
const NODE: &str = "node.";

/// Why a lease operation failed; the caller decides what to do.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds it now (our revision is stale): stop at once.
    #[error("the lease of {0} passed to another node")]
    Lost(String),
    /// JetStream did not answer or refused for another reason: try again;
    /// the holder stops on its own once `valid_until` passes.
    #[error("lease store: {0}")]
    Store(String),
}

/// A bot's lease, held by this node.
#[derive(Debug, Clone)]
pub struct Held {
    pub bot: String,
    /// The key's revision this node wrote last: the fencing token.
    pub revision: u64,
    valid_until: Instant,
}

impl Held {
    /// Whether this node may still act as the bot's leader: poll, confirm,
    /// deliver. False a safe margin before the lease could pass on.
    pub fn valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}

/// What the bucket says now: live nodes and who holds which bot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub nodes: Vec<String>,
    pub holders: HashMap<String, String>,
    /// Each live node's heartbeat revision: it moves while the node beats.
    pub beats: HashMap<String, u64>,
}

pub struct Leases {
    kv: kv::Store,
    /// The bucket's stream and name, for the list of live nodes.
    stream: jetstream::stream::Stream,
    bucket: String,
    node: String,
    lease: Duration,
}

impl Leases {
    /// Opens the bucket, creating it (`replicas` copies) if it is missing.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        node: &str,
        lease: Duration,
        replicas: usize,
    ) -> Result<Leases, LeaseError> {
        let kv = super::stored::bucket(
            js,
            bucket,
            "pollhook: which node leads which bot",
            lease,
            replicas,
            super::stored::Deletes::Allowed,
        )
        .await
        .map_err(LeaseError::Store)?;
        let stream = js
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|e| LeaseError::Store(format!("bucket {bucket}: {e}")))?;
        Ok(Leases {
            kv,
            stream,
            bucket: bucket.to_string(),
            node: node.to_string(),
            lease,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Runs one call to the bucket for at most a quarter of the lease: a
    /// server that stops answering must not hold the elections (and the
    /// other bots' renewals) past the point where a lease could lapse.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, LeaseError> {
        tokio::time::timeout(self.lease / 4, call)
            .await
            .map_err(|_| LeaseError::Store(format!("no answer within {:?}", self.lease / 4)))
    }

    /// How long after a renewal was sent its holder may act.
    fn grace(&self) -> Duration {
        self.lease * 2 / 3
    }

    /// Takes the bot if its key has no message (nobody holds it, and no
    /// marker waits to expire). None: someone does.
    pub async fn try_take(&self, bot: &str) -> Result<Option<Held>, LeaseError> {
        let sent = Instant::now();
        match self
            .bounded(
                self.kv
                    .update(format!("{BOT}{bot}"), Bytes::from(self.node.clone()), 0),
            )
            .await?
        {
            Ok(revision) => Ok(Some(Held {
                bot: bot.to_string(),
                revision,
                valid_until: sent + self.grace(),
            })),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(LeaseError::Store(e.to_string())),
        }
    }

    /// Keeps the bot for another lease, on the revision held.
    pub async fn renew(&self, held: &mut Held) -> Result<(), LeaseError> {
        let key = format!("{BOT}{}", held.bot);
        for _ in 0..2 {
            let sent = Instant::now();
            let answer = self
                .bounded(
                    self.kv
                        .update(key.clone(), Bytes::from(self.node.clone()), held.revision),
                )
                .await?;
            match answer {
                Ok(revision) => {
                    held.revision = revision;
                    held.valid_until = sent + self.grace();
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Our previous renewal may have gone through with its
                    // answer lost: then the key is still ours, at a newer
                    // revision. Adopt it and renew again; not counted as a
                    // renewal itself, since that write may be old and the
                    // key lives a lease from it, not from now.
                    match self.bounded(self.last(&key)).await? {
                        Ok(Some((revision, node)))
                            if node == self.node && revision > held.revision =>
                        {
                            held.revision = revision;
                        }
                        _ => return Err(LeaseError::Lost(held.bot.clone())),
                    }
                }
                Err(e) => return Err(LeaseError::Store(e.to_string())),
            }
        }
        Err(LeaseError::Lost(held.bot.clone()))
    }

    /// Gives the bot back at once (a graceful stop), so another node need
    /// not wait for the lease to run out. Only the revision held is
    /// deleted: a successor's lease is never touched.
    pub async fn release(&self, held: &Held) -> Result<(), LeaseError> {
        // The held revision's message only: once another node wrote the
        // key, that message is gone (history 1) and nothing is deleted.
        match self
            .bounded(self.stream.delete_message(held.revision))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                DeleteMessageErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Ok(())
                }
                // A bucket made before deletes were allowed: a marker,
                // which expires with the lease (the bot moves a lease
                // later).
                DeleteMessageErrorKind::JetStream(_) => self.release_by_marker(held).await,
                _ => Err(LeaseError::Store(e.to_string())),
            },
        }
    }

    async fn release_by_marker(&self, held: &Held) -> Result<(), LeaseError> {
        self.bounded(
            self.kv
                .delete_expect_revision(format!("{BOT}{}", held.bot), Some(held.revision)),
        )
        .await?
        .map_err(|e| LeaseError::Store(e.to_string()))
    }

    /// Says this node is alive (its key lives for one lease).
    pub async fn heartbeat(&self) -> Result<(), LeaseError> {
        self.bounded(self.kv.put(format!("{NODE}{}", self.node), Bytes::new()))
            .await?
            .map(|_| ())
            .map_err(|e| LeaseError::Store(e.to_string()))
    }

    /// Forgets this node's heartbeat (a graceful stop).
    pub async fn leave(&self) -> Result<(), LeaseError> {
        self.bounded(self.kv.delete(format!("{NODE}{}", self.node)))
            .await?
            .map_err(|e| LeaseError::Store(e.to_string()))
    }

    /// A key's revision and value, None when it is missing or deleted.
    async fn last(&self, key: &str) -> Result<Option<(u64, String)>, LeaseError> {
        let subject = format!("$KV.{}.{key}", self.bucket);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                if m.headers.get("KV-Operation").is_some() {
                    return Ok(None);
                }
                Ok(Some((
                    m.sequence,
                    String::from_utf8_lossy(&m.payload).into_owned(),
                )))
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(LeaseError::Store(e.to_string())),
        }
    }

    /// Live nodes and the holders of `bots`.
    pub async fn view(&self, bots: &[String]) -> Result<View, LeaseError> {
        tokio::time::timeout(self.lease / 4, self.read_view(bots))
            .await
            .map_err(|_| LeaseError::Store(format!("no answer within {:?}", self.lease / 4)))?
    }

    async fn read_view(&self, bots: &[String]) -> Result<View, LeaseError> {
        let store = |e: &dyn std::fmt::Display| LeaseError::Store(e.to_string());
        // Which nodes beat: the stream's subjects (a request its leader
        // answers), not a key listing, which makes a consumer each time and
        // stalls while the cluster's meta leader is unreachable. Expired
        // keys are gone from it, as from the bucket.
        let prefix = format!("$KV.{}.{NODE}", self.bucket);
        let mut subjects = self
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| store(&e))?;
        let mut view = View::default();
        while let Some(item) = subjects.next().await {
            let (subject, _) = item.map_err(|e| store(&e))?;
            if let Some(node) = subject.strip_prefix(prefix.as_str()) {
                view.nodes.push(node.to_string());
            }
        }
        view.nodes.sort();
        view.nodes.dedup();
        // Each key read from the stream's leader: a direct get may go to
        // any replica, and one that hangs (SIGSTOP) never answers.
        for node in &view.nodes {
            if let Some((revision, _)) = self.last(&format!("{NODE}{node}")).await? {
                view.beats.insert(node.clone(), revision);
            }
        }
        for bot in bots {
            if let Some((_, node)) = self.last(&format!("{BOT}{bot}")).await? {
                view.holders.insert(bot.clone(), node);
            }
        }
        Ok(view)
    }
}

/// The live node that should take a free bot: the bots (every node has the
/// same list) dealt out in name order over the live nodes in name order,
/// so a free set spreads evenly (each node at most one more than another)
/// and every node agrees without asking. Held bots never move for it: it
/// only decides who takes a bot that is free.
pub fn preferred<'a>(bot: &str, bots: &[String], nodes: &'a [String]) -> Option<&'a str> {
    if nodes.is_empty() {
        return None;
    }
    let mut sorted: Vec<&String> = bots.iter().collect();
    sorted.sort();
    let rank = sorted.iter().position(|b| *b == bot).unwrap_or(0);
    let mut live: Vec<&String> = nodes.iter().collect();
    live.sort();
    Some(live[rank % live.len()].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bots_are_dealt_out_evenly_and_every_node_agrees() {
        let nodes: Vec<String> = ["node-c", "node-a", "node-b"].map(String::from).to_vec();
        for n in [1usize, 2, 30, 50] {
            let bots: Vec<String> = (0..n).map(|i| format!("bot{i}")).collect();
            let mut count: HashMap<&str, usize> = HashMap::new();
            for b in &bots {
                *count
                    .entry(preferred(b, &bots, &nodes).unwrap())
                    .or_default() += 1;
            }
            let (min, max) = (
                count.values().min().copied().unwrap_or(0),
                count.values().max().copied().unwrap_or(0),
            );
            assert!(
                max - min <= 1 && max <= n.div_ceil(3),
                "{n} bots: {count:?}"
            );
            // The order the lists come in does not matter.
            let mut shuffled = nodes.clone();
            shuffled.reverse();
            let mut bots_rev = bots.clone();
            bots_rev.reverse();
            for b in &bots {
                assert_eq!(
                    preferred(b, &bots, &nodes),
                    preferred(b, &bots_rev, &shuffled)
                );
            }
        }
        assert_eq!(preferred("x", &["x".to_string()], &[]), None);
    }
}
