//! The replicated queue of one bot, for the node that leads it: the
//! `Queue` seam over a JetStream stream (R replicas) and a key-value
//! bucket for the offset.
//!
//! Each job is one message on `pollhook.q.{bot}.{forward}`: the update's
//! exact bytes, what pollhook read of it in headers, and a `Nats-Msg-Id` of
//! bot, forward and update id, so a batch stored twice (a leader died
//! between storing and confirming, its successor fetched it again) is
//! stored once. A delivered job's message is deleted, so at a takeover the
//! subject holds exactly what is left to deliver, in order. The stream's
//! sequence is the job's: it orders lanes and makes the `webhook-id`, so
//! both survive a failover.
//!
//! The leader keeps the jobs of the bot it leads in memory (the dispatcher
//! reads them from here); retry counts are memory only and start again
//! after a failover. Writes that decide what is confirmed are fenced: an
//! append needs the lease (`Fence`), and the offset is written against the
//! bucket revision this leader wrote when it took over, so a paused
//! predecessor's late offset write is refused by JetStream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::fence::Fence;
use super::pending::Pending;
use crate::platform::update::Lane;
use crate::store::{Incoming, Job, Queue, StoreError};

pub const STREAM: &str = "POLLHOOK_QUEUE";
pub const OFFSETS: &str = "pollhook_offsets";

/// Creates the queue's stream and the offsets bucket if they are missing.
pub async fn prepare(js: &jetstream::Context, replicas: usize) -> Result<(), String> {
    if js.get_stream(STREAM).await.is_err() {
        js.create_stream(stream::Config {
            name: STREAM.into(),
            description: Some("pollhook: updates waiting for delivery, and dead letters".into()),
            subjects: vec!["pollhook.q.>".into(), "pollhook.dead.>".into()],
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            allow_direct: false,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create stream {STREAM}: {e}"))?;
    }
    super::stored::bucket(
        js,
        OFFSETS,
        "pollhook: each bot's confirmed offset",
        Duration::ZERO,
        replicas,
        super::stored::Deletes::Denied,
    )
    .await?;
    Ok(())
}

fn remote(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(format!("{what}: {e}"))
}

pub struct JsQueue {
    js: jetstream::Context,
    stream: stream::Stream,
    offsets: kv::Store,
    bot: String,
    fence: Fence,
    /// The offset and the bucket revision it was last written at.
    offset: Mutex<(Option<i64>, u64)>,
    jobs: Jobs,
    id_prefix: String,
    /// Stops the replay follower with the queue.
    done: CancellationToken,
    /// Deletes of delivered jobs on their way.
    deleting: tokio_util::task::TaskTracker,
    /// This leader's term in the offsets bucket: a write of ours whose
    /// answer was lost is recognised by it.
    term: u64,
    node: String,
    wakes: HashMap<u32, Arc<Notify>>,
}

type Jobs = Arc<Mutex<Pending>>;

impl Drop for JsQueue {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl JsQueue {
    /// Takes over the bot's queue: fences the offset (rewrites it at a new
    /// revision), then reads every job still waiting, in order.
    pub async fn take_over(
        js: &jetstream::Context,
        bot: &str,
        forwards: &[(u32, Arc<Notify>)],
        fence: Fence,
        node: &str,
    ) -> Result<JsQueue, StoreError> {
        let mut stream = js
            .get_stream(STREAM)
            .await
            .map_err(|e| remote("the queue stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| remote("the queue stream", e))?;
        let created = info.created.unix_timestamp_nanos();
        // Replays (from any node's `dlq replay`) after this are followed.
        let follow_from = info.state.last_sequence + 1;
        let offsets = js
            .get_key_value(OFFSETS)
            .await
            .map_err(|e| remote("the offsets bucket", e))?;
        let key = offset_key(bot);
        let (offset, revision) = match offsets
            .entry(key.clone())
            .await
            .map_err(|e| remote("the stored offset", e))?
        {
            Some(e) if e.operation == kv::Operation::Put => (parse_offset(&e.value), e.revision),
            Some(e) => (None, e.revision),
            None => (None, 0),
        };
        let term: u64 = rand::random();
        let value = offset_value(offset, node, term);
        let revision = if revision == 0 {
            offsets
                .create(key.clone(), value)
                .await
                .map_err(|e| remote("fencing the offset", e))?
        } else {
            offsets
                .update(key.clone(), value, revision)
                .await
                .map_err(|e| remote("fencing the offset", e))?
        };
        let mut jobs = Pending::default();
        let known: Vec<u32> = forwards.iter().map(|(f, _)| *f).collect();
        let read = read_pending(&stream, bot, &known, &mut jobs).await?;
        let jobs: Jobs = Arc::new(Mutex::new(jobs));
        let done = CancellationToken::new();
        tokio::spawn(follow_replays(
            stream.clone(),
            bot.to_string(),
            follow_from,
            jobs.clone(),
            forwards.iter().cloned().collect(),
            done.clone(),
        ));
        info!(
            bot,
            offset = ?offset,
            waiting = read,
            "cluster: took over the replicated queue"
        );
        Ok(JsQueue {
            js: js.clone(),
            stream,
            offsets,
            bot: bot.to_string(),
            fence,
            offset: Mutex::new((offset, revision)),
            jobs,
            id_prefix: id_prefix(created),
            done,
            deleting: tokio_util::task::TaskTracker::new(),
            term,
            node: node.to_string(),
            wakes: forwards.iter().cloned().collect(),
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes delivered jobs' messages in the background: a delete lost
    /// to a crash only means a duplicate delivery after a failover.
    fn forget(&self, seqs: Vec<u64>) {
        let client = self.js.client();
        self.deleting.spawn(async move {
            // Without `no_erase` the server overwrites each deleted message
            // and syncs it on every replica: most of a cluster's CPU went
            // there (BENCHMARKS.md). A delivered update needs no shredding
            // beyond what any delete does.
            let subject = format!("$JS.API.STREAM.MSG.DELETE.{STREAM}");
            for chunk in seqs.chunks(64) {
                let asks = chunk.iter().map(|seq| {
                    let body = format!(r#"{{"seq":{seq},"no_erase":true}}"#);
                    let (client, subject) = (client.clone(), subject.clone());
                    async move { (*seq, client.request(subject, body.into()).await) }
                });
                for (seq, answer) in futures_util::future::join_all(asks).await {
                    let refused = match &answer {
                        Ok(m) => std::str::from_utf8(&m.payload)
                            .is_ok_and(|t| t.contains("\"error\"") && !t.contains("10037")),
                        Err(_) => true,
                    };
                    if refused {
                        // Once more, then let it be: a job left behind is
                        // delivered again after a failover, never lost.
                        let body = format!(r#"{{"seq":{seq},"no_erase":true}}"#);
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        if let Err(e) = client.request(subject.clone(), body.into()).await {
                            warn!(
                                seq,
                                "cluster: cannot delete a delivered job from the queue: {e}"
                            );
                        }
                    }
                }
            }
        });
    }

    /// Waits (up to `within`) for the deletes of delivered jobs: the next
    /// leader then finds only what is left to deliver.
    pub async fn settle(&self, within: std::time::Duration) {
        self.deleting.close();
        let _ = tokio::time::timeout(within, self.deleting.wait()).await;
    }

    async fn store(
        &self,
        batch: &[Incoming<'_>],
        new_offset: Option<i64>,
        received_ms: u64,
    ) -> Result<(), StoreError> {
        if !self.fence.valid() {
            return Err(StoreError::Remote(format!(
                "this node no longer leads {}",
                self.bot
            )));
        }
        // Sent one after another (the connection keeps their order, so
        // stream sequences follow the batch), acknowledged together.
        let mut acks = Vec::new();
        for inc in batch {
            // One copy of the bytes per update, shared by every forward's
            // message and job.
            let payload = Bytes::copy_from_slice(&inc.update.payload);
            for fwd in inc.forwards {
                let u = inc.update;
                let mut h = async_nats::HeaderMap::new();
                h.insert("Pollhook-Kind", u.kind.as_str());
                h.insert("Pollhook-Lane", u.lane.encode().as_str());
                h.insert("Pollhook-Received", received_ms.to_string().as_str());
                let id = match u.update_id {
                    Some(id) => {
                        h.insert("Pollhook-Update-Id", id.to_string().as_str());
                        format!("{}.{fwd}.{id}", self.bot)
                    }
                    None => format!("{}.{fwd}.h{:016x}", self.bot, fnv64(&u.payload)),
                };
                h.insert("Nats-Msg-Id", id.as_str());
                let ack = self
                    .js
                    .publish_with_headers(
                        format!("pollhook.q.{}.{fwd}", self.bot),
                        h,
                        payload.clone(),
                    )
                    .await
                    .map_err(|e| remote("storing a batch", e))?;
                acks.push((*fwd, u, payload.clone(), ack));
            }
        }
        let mut stored = Vec::with_capacity(acks.len());
        for (fwd, u, payload, ack) in acks {
            let ack = ack.await.map_err(|e| remote("storing a batch", e))?;
            stored.push((fwd, u, payload, ack.sequence, ack.duplicate));
        }
        // Replicated: now the offset, under the revision this leader holds.
        if let Some(next) = new_offset {
            if !self.fence.valid() {
                return Err(StoreError::Remote(format!(
                    "this node no longer leads {}",
                    self.bot
                )));
            }
            let written = self.write_offset(next).await?;
            *self.offset.lock().unwrap_or_else(|e| e.into_inner()) = (Some(next), written);
        }
        // A duplicate was stored before (a batch fetched again after a
        // failover): if its message is still there it waits; if it was
        // delivered and deleted, it must not come back.
        let unknown: Vec<u64> = {
            let jobs = self.jobs();
            stored
                .iter()
                .filter(|(_, _, _, seq, dup)| *dup && !jobs.present.contains(seq))
                .map(|(_, _, _, seq, _)| *seq)
                .collect()
        };
        let mut gone = std::collections::HashSet::new();
        for seq in unknown {
            if self.stream.get_raw_message(seq).await.is_err() {
                gone.insert(seq);
            }
        }
        let mut jobs = self.jobs();
        for (fwd, u, payload, seq, _) in stored {
            if gone.contains(&seq) {
                continue;
            }
            jobs.add(
                fwd,
                seq,
                Job {
                    seq,
                    id_seq: seq,
                    attempts: 0,
                    next_at_ms: 0,
                    received_ms,
                    dead_at_ms: 0,
                    replayed_ms: 0,
                    update_id: u.update_id,
                    kind: u.kind.clone(),
                    lane: u.lane.clone(),
                    last_error: String::new(),
                    payload,
                },
            );
        }
        Ok(())
    }

    /// Writes the confirmed offset against the revision this leader holds.
    /// If a write of ours went through but its answer was lost, the
    /// revision moved under us: the term in the value tells it was ours.
    async fn write_offset(&self, next: i64) -> Result<u64, StoreError> {
        let key = offset_key(&self.bot);
        let value = offset_value(Some(next), &self.node, self.term);
        for _ in 0..2 {
            let revision = self.offset.lock().unwrap_or_else(|e| e.into_inner()).1;
            match self
                .offsets
                .update(key.clone(), value.clone(), revision)
                .await
            {
                Ok(written) => return Ok(written),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    let entry = self
                        .offsets
                        .entry(key.clone())
                        .await
                        .map_err(|e| remote("confirming the offset", e))?;
                    match entry {
                        Some(e) if parse_term(&e.value) == Some(self.term) => {
                            self.offset.lock().unwrap_or_else(|e| e.into_inner()).1 = e.revision;
                        }
                        _ => {
                            return Err(StoreError::Remote(format!(
                                "another node confirms {} now; this one stops",
                                self.bot
                            )))
                        }
                    }
                }
                Err(e) => return Err(remote("confirming the offset", e)),
            }
        }
        Err(StoreError::Remote(
            "confirming the offset: the revision keeps moving".into(),
        ))
    }
}

impl Queue for JsQueue {
    fn offset(&self, _bot: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.offset.lock().unwrap_or_else(|e| e.into_inner()).0)
    }

    fn append<'a>(
        &'a self,
        _bot: &'a str,
        batch: &'a [Incoming<'a>],
        new_offset: Option<i64>,
        received_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.store(batch, new_offset, received_ms))
    }

    fn scan(
        &self,
        fwd: u32,
        after: Option<u64>,
        to: Option<u64>,
        limit: usize,
        keep: &mut dyn FnMut(&Job) -> bool,
    ) -> Result<Vec<Job>, StoreError> {
        let jobs = self.jobs();
        let Some(queue) = jobs.by_fwd.get(&fwd) else {
            return Ok(Vec::new());
        };
        let from = after.map_or(0, |a| a.saturating_add(1));
        let to = to.unwrap_or(u64::MAX);
        if from > to {
            return Ok(Vec::new());
        }
        Ok(queue
            .range(from..=to)
            .map(|(_, j)| j)
            .filter(|j| keep(j))
            .take(limit)
            .cloned()
            .collect())
    }

    fn complete_many(&self, fwd: u32, seqs: &[u64]) -> Result<(), StoreError> {
        let stream_seqs = self.jobs().remove(fwd, seqs);
        // A node that no longer leads deletes nothing: its successor
        // decides (at worst it delivers these again).
        if self.fence.valid() {
            self.forget(stream_seqs);
        }
        Ok(())
    }

    fn reschedule(&self, fwd: u32, job: &Job) -> Result<(), StoreError> {
        if let Some(j) = self
            .jobs()
            .by_fwd
            .get_mut(&fwd)
            .and_then(|q| q.get_mut(&job.seq))
        {
            j.attempts = job.attempts;
            j.next_at_ms = job.next_at_ms;
            j.last_error = job.last_error.clone();
        }
        Ok(())
    }

    fn bury(&self, fwd: u32, job: &Job, now_ms: u64) -> Result<(), StoreError> {
        let Some(seq) = self.jobs().remove(fwd, &[job.seq]).pop() else {
            return Ok(());
        };
        if !self.fence.valid() {
            return Ok(());
        }
        // Kept in the stream under the dead-letter subject, then the job's
        // message goes; the other way round a crash could lose it.
        let js = self.js.clone();
        let stream = self.stream.clone();
        let subject = format!("pollhook.dead.{}.{fwd}", self.bot);
        let mut h = async_nats::HeaderMap::new();
        h.insert("Pollhook-Kind", job.kind.as_str());
        h.insert("Pollhook-Lane", job.lane.encode().as_str());
        h.insert("Pollhook-Seq", seq.to_string().as_str());
        h.insert("Nats-Msg-Id", format!("dead.{seq}").as_str());
        h.insert("Pollhook-Id-Seq", job.id_seq.to_string().as_str());
        h.insert("Pollhook-Received", job.received_ms.to_string().as_str());
        h.insert("Pollhook-Dead-At", now_ms.to_string().as_str());
        h.insert("Pollhook-Attempts", job.attempts.to_string().as_str());
        let error: String = job.last_error.chars().filter(|c| !c.is_control()).collect();
        h.insert("Pollhook-Error", error.as_str());
        if let Some(id) = job.update_id {
            h.insert("Pollhook-Update-Id", id.to_string().as_str());
        }
        let payload = job.payload.clone();
        let (jobs, wake, back) = (
            self.jobs.clone(),
            self.wakes.get(&fwd).cloned(),
            job.clone(),
        );
        self.deleting.spawn(async move {
            let stored = match js.publish_with_headers(subject, h, payload).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                let _ = stream.delete_message(seq).await;
            } else {
                // Not parked silently: back in the queue, where it is
                // given up on again (and dead-lettered) once JetStream
                // takes writes.
                warn!(
                    seq,
                    "cluster: cannot store a dead letter yet; the job goes back in the queue"
                );
                jobs.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add(fwd, seq, back);
                if let Some(w) = wake {
                    w.notify_one();
                }
            }
        });
        Ok(())
    }

    fn webhook_id(&self, job: &Job) -> String {
        webhook_id(&self.id_prefix, job.id_seq)
    }
}

/// Follows the bot's queue subjects from `from` for replayed dead letters
/// (put there by any node's `dlq replay`), adds them to the queue and wakes
/// their dispatcher. What this leader appends itself is already known.
async fn follow_replays(
    stream: stream::Stream,
    bot: String,
    mut from: u64,
    jobs: Jobs,
    wakes: HashMap<u32, Arc<Notify>>,
    done: CancellationToken,
) {
    let prefix = format!("pollhook.q.{bot}.");
    loop {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{prefix}>"),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    warn!(bot, "cluster: cannot follow replays: {e}; trying again");
                    tokio::select! {
                        _ = done.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            },
            Err(e) => {
                warn!(bot, "cluster: cannot follow replays: {e}; trying again");
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = done.cancelled() => return,
                next = messages.next() => next,
            };
            let Some(Ok(msg)) = next else { break };
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            from = seq + 1;
            let replay = msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get("Pollhook-Replay").is_some());
            let Some(fwd) = msg
                .subject
                .strip_prefix(prefix.as_str())
                .and_then(|f| f.parse::<u32>().ok())
            else {
                continue;
            };
            if !replay {
                continue;
            }
            let job = job_from(seq, msg.headers.as_ref(), msg.payload.clone());
            if wakes.contains_key(&fwd) {
                jobs.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add(fwd, seq, job);
            }
            if let Some(w) = wakes.get(&fwd) {
                w.notify_one();
            }
        }
    }
}

/// Reads every job of `bot` still in the stream, in order.
async fn read_pending(
    stream: &stream::Stream,
    bot: &str,
    known: &[u32],
    jobs: &mut Pending,
) -> Result<usize, StoreError> {
    let prefix = format!("pollhook.q.{bot}.");
    let mut read = 0;
    super::stored::read_all(stream, format!("{prefix}>"), |msg, seq| {
        let fwd = msg
            .subject
            .strip_prefix(prefix.as_str())
            .and_then(|f| f.parse::<u32>().ok());
        // A forward no longer configured: its jobs stay where they are.
        if let Some(fwd) = fwd.filter(|f| known.contains(f)) {
            jobs.add(
                fwd,
                seq,
                job_from(seq, msg.headers.as_ref(), msg.payload.clone()),
            );
            read += 1;
        }
    })
    .await
    .map_err(|e| remote("reading the queue", e))?;
    Ok(read)
}

/// What a cluster's webhook-ids start with: from the queue stream's
/// creation time, the same on every node and for the stream's life.
pub fn id_prefix(created_nanos: i128) -> String {
    format!(
        "{:08x}",
        (created_nanos as u64 as u32) ^ ((created_nanos >> 32) as u32)
    )
}

/// A job's webhook-id in a cluster: stable across failovers and replays.
pub fn webhook_id(prefix: &str, id_seq: u64) -> String {
    format!("msg_c{prefix}{id_seq:016x}")
}

/// A job as its queue message holds it. A replayed dead letter keeps the
/// sequence its webhook-id was made from, and counts its age from the
/// replay.
fn job_from(seq: u64, headers: Option<&async_nats::HeaderMap>, payload: Bytes) -> Job {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
    Job {
        seq,
        id_seq: number("Pollhook-Id-Seq").unwrap_or(seq),
        attempts: 0,
        next_at_ms: 0,
        received_ms: number("Pollhook-Received").unwrap_or(0),
        dead_at_ms: 0,
        replayed_ms: number("Pollhook-Replay").unwrap_or(0),
        update_id: header("Pollhook-Update-Id").and_then(|v| v.parse().ok()),
        kind: header("Pollhook-Kind").unwrap_or_else(|| "unknown".into()),
        lane: header("Pollhook-Lane")
            .map(|l| Lane::decode(&l))
            .unwrap_or(Lane::Alone),
        last_error: String::new(),
        payload,
    }
}

fn offset_key(bot: &str) -> String {
    format!("offset.{bot}")
}

fn offset_value(offset: Option<i64>, node: &str, term: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({ "offset": offset, "node": node, "term": term })
            .to_string()
            .into_bytes(),
    )
}

fn parse_term(value: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()?
        .get("term")?
        .as_u64()
}

pub fn parse_offset(value: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()?
        .get("offset")?
        .as_i64()
}

/// A stable id for an update pollhook could not read an id from.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A forward's id in a cluster: the same on every node (a hash of its
/// name, which is unique within its bot), since each node's own database
/// would number forwards in the order it first saw them.
pub fn forward_id(name: &str) -> u32 {
    let h = fnv64(name.as_bytes());
    (h ^ (h >> 32)) as u32
}
