//! Delivery: one dispatcher per forward moves that forward's jobs from the
//! store to its backend.
//!
//! Ordering works like Telegram's own webhook sender: updates of one lane
//! (a chat, else a user) go one at a time in update order; different lanes go
//! in parallel up to `max_in_flight`. A lane whose head fails waits for its
//! retry; other lanes carry on. A head that is given up on (too many
//! attempts, too old, 410 Gone, or a stale interactive update) becomes a dead
//! letter and its lane moves on.
//!
//! The store is the source of truth. The dispatcher keeps a bounded window of
//! jobs in memory, refilled from the store in sequence order whenever it runs
//! low or the poller says new jobs arrived, so a backlog of millions costs
//! disk, not memory.
//!
//! A backend's 2xx body may hold a Bot API call (a webhook reply), run on
//! its behalf by `reply::runner` within the memory budget of `reply::body`.

mod lanes;
mod remember;
pub mod reply;
mod sink;
mod traced;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::clock::now_ms;
use crate::cluster::fence::Fence;
use crate::config::ForwardSettings;
use crate::events::{Bus, Event, Status, What};
use crate::history::Fate;
use crate::nats::connection::Nats;
use crate::platform::api::BotApi;
use crate::platform::flavor::Flavor;
use crate::policy::stale::{self, StalePolicy};
use crate::stats::{self, ForwardStats};
use crate::store::{Job, Queue};
use lanes::{key_of, Lanes};
use reply::{Replies, ReplyBody};
use sink::{Outcome, Sink};

/// Jobs held in memory per forward.
const WINDOW: usize = 4096;
/// Delivered jobs are removed from the store in batches of this many, or
/// this long after the first of them was delivered, whichever comes first.
const FORGET_BATCH: usize = 512;
const FORGET_AFTER: Duration = Duration::from_millis(100);

pub struct Forwarder {
    pub bot: String,
    pub fwd_id: u32,
    /// Shared with the relay's plan: one copy per forward, not one per task.
    pub settings: Arc<ForwardSettings>,
    pub flavor: Flavor,
    pub queue: Arc<dyn Queue>,
    /// The bot's API, for calls a backend returns in its reply.
    pub api: Arc<BotApi>,
    /// The bot's rate budget, which those calls keep to.
    pub budget: Arc<crate::budget::Budget>,
    /// The process's delivery client.
    pub client: crate::http::backend::Client,
    /// The process's NATS connection, for a JetStream forward.
    pub nats: Option<Nats>,
    /// In a cluster: closed when this node may no longer lead the bot; no
    /// attempt is made after that.
    pub fence: Option<Fence>,
    /// Poked by the poller after it stored jobs for this forward, and by the
    /// admin API after a replay.
    pub wake: Arc<Notify>,
    pub stats: Arc<ForwardStats>,
    /// How long a graceful stop waits for requests already in flight and
    /// webhook reply calls still running.
    pub drain_timeout: Duration,
    /// Live events: each attempt's outcome, dead letters, replies.
    pub events: Bus,
    /// Where each attempt's outcome is kept, if the bot keeps history.
    pub history: Option<crate::history::Recorder>,
    /// While tracing is on: the trace each update came with.
    pub traces: Option<Arc<crate::trace::Batches>>,
}

/// A finished send: its lane, its job, what became of it, how long it took,
/// and (tracing on) its span's identity, the parent of its reply's span.
type Attempt = (String, Job, Outcome, Duration, Option<SpanContext>);

/// In-flight sends, each remembered with its lane (whose head is the job in
/// flight) so that even a task that dies unexpectedly gives its lane back.
struct InFlight {
    tasks: JoinSet<Attempt>,
    by_task: HashMap<tokio::task::Id, String>,
    /// Delivered jobs not yet removed from the store: removed together,
    /// because sled rewrites (and logs) a whole node per removal; removing
    /// hundreds of neighbouring keys at once rewrites each node once.
    done: Vec<u64>,
    /// When the oldest of `done` was delivered.
    done_since: Option<std::time::Instant>,
    /// Some attempt failed since the last success (the backend may be down).
    failing: bool,
    /// A success releases every lane waiting out a failure (`Sink::shared_fate`).
    release_on_success: bool,
    /// Lanes kept after their head was delivered, until its webhook reply
    /// is read (`LaneHold`), come back through here.
    lane_back: mpsc::UnboundedSender<String>,
    /// How many lanes are held so. Each holds the backend's connection
    /// open with its unread reply, so they count against `max_in_flight`:
    /// a backend cannot make pollhook hold a socket per chat.
    held: usize,
}

impl InFlight {
    fn new(lane_back: mpsc::UnboundedSender<String>) -> InFlight {
        InFlight {
            tasks: JoinSet::new(),
            by_task: HashMap::new(),
            done: Vec::new(),
            done_since: None,
            failing: false,
            release_on_success: true,
            lane_back,
            held: 0,
        }
    }
}

/// Keeps a lane busy while its delivered head's reply waits for its turn to
/// be read; gives the lane back when dropped.
struct LaneHold {
    key: String,
    back: mpsc::UnboundedSender<String>,
}

impl Drop for LaneHold {
    fn drop(&mut self) {
        // After a stop the dispatcher is gone, and so is the lane.
        let _ = self.back.send(std::mem::take(&mut self.key));
    }
}

impl Forwarder {
    pub async fn run(self, shutdown: CancellationToken) {
        let wires = sink::Wires {
            http: &self.client,
            nats: self.nats.as_ref(),
            fence: self.fence.as_ref(),
            traced: self.traces.is_some(),
        };
        let Some(target) = sink::for_forward(&self.bot, self.flavor, &self.settings, &wires) else {
            error!("a JetStream forward without a [nats] connection; nothing is delivered");
            return;
        };
        let replies = Replies::new(
            &self.bot,
            &self.settings.name,
            self.events.clone(),
            self.api.clone(),
            self.budget.clone(),
            self.stats.clone(),
            self.settings.reply_methods.clone(),
        );
        let (lane_back, mut lanes_back) = mpsc::unbounded_channel();
        let mut lanes = Lanes::default();
        let mut inflight = InFlight::new(lane_back);
        inflight.release_on_success = target.shared_fate();
        let mut refill = true;
        info!(to = %self.settings.to.describe(), "delivering");
        loop {
            if refill || lanes.loaded() < WINDOW / 2 {
                self.refill(&mut lanes);
                refill = false;
            }
            let now = now_ms();
            lanes.release_due(now);
            while inflight.tasks.len() + inflight.held < self.settings.max_in_flight {
                let Some((key, job)) = lanes.take_ready() else {
                    break;
                };
                if self.expire_if_stale(&key, &job, &mut lanes) {
                    continue;
                }
                self.start(&target, &mut inflight, key, job);
            }
            let next_timer = lanes
                .next_due()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            let forget_in = inflight
                .done_since
                .map(|t| FORGET_AFTER.saturating_sub(t.elapsed()));
            let record_in = self.history.as_ref().and_then(|h| h.due_in());
            let wait = [next_timer, forget_in, record_in]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = inflight.tasks.join_next_with_id() => {
                    self.settled(done, &mut lanes, &mut inflight, &replies);
                    // Take every other finished send too, then remove the
                    // delivered ones from the store in one batch.
                    while let Some(done) = inflight.tasks.try_join_next_with_id() {
                        self.settled(done, &mut lanes, &mut inflight, &replies);
                    }
                }
                Some(key) = lanes_back.recv() => {
                    inflight.held = inflight.held.saturating_sub(1);
                    lanes.finish(&key, now_ms());
                    self.reload_lane(&key, &mut lanes);
                }
                _ = self.wake.notified() => refill = true,
                _ = sleep => {}
            }
            if inflight.done.len() >= FORGET_BATCH
                || inflight
                    .done_since
                    .is_some_and(|t| t.elapsed() >= FORGET_AFTER)
            {
                self.forget_delivered(&mut inflight);
            }
            if let Some(h) = &self.history {
                h.flush(false);
            }
        }
        // Deliveries and reply calls share one stop timeout.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        self.drain(&mut inflight, &mut lanes, &replies, deadline)
            .await;
        self.forget_delivered(&mut inflight);
        replies.drain(deadline).await;
        debug!("dispatcher stopped");
    }

    fn start(&self, target: &Arc<dyn Sink>, inflight: &mut InFlight, key: String, job: Job) {
        let target = target.clone();
        let id = self.queue.webhook_id(&job);
        let remembered = key.clone();
        stats::add(&self.stats.in_flight, 1);
        let span = self.traces.as_ref().map(|t| {
            let parent = t.parent(self.fwd_id, job.update_id);
            let (bot, fwd) = (&self.bot, &self.settings.name);
            traced::attempt_span(bot, fwd, &job, job.attempts + 1, parent.as_ref())
        });
        let handle = inflight.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let send = target.send(&id, &job, job.attempts + 1);
            let Some(span) = span else {
                let outcome = send.await;
                return (key, job, outcome, started.elapsed(), None);
            };
            let outcome = send.instrument(span.clone()).await;
            traced::record(&span, &outcome);
            let cx = crate::trace::span_context(&span);
            (key, job, outcome, started.elapsed(), cx)
        });
        inflight.by_task.insert(handle.id(), remembered);
    }

    fn refill(&self, lanes: &mut Lanes) {
        let room = WINDOW.saturating_sub(lanes.loaded());
        if room == 0 {
            return;
        }
        match self.queue.pending(self.fwd_id, lanes.cursor(), room) {
            Ok(jobs) => {
                let now = now_ms();
                for job in jobs {
                    lanes.push(job, now);
                }
            }
            Err(e) => {
                error!("cannot read the queue: {e}")
            }
        }
    }

    /// Brings back jobs of a lane that overflowed its in-memory share.
    fn reload_lane(&self, key: &str, lanes: &mut Lanes) {
        let Some((from, room, to)) = lanes.needs_reload(key) else {
            return;
        };
        match self.queue.scan(
            self.fwd_id,
            from.checked_sub(1),
            Some(to),
            room + 1,
            &mut |j| key_of(j) == key,
        ) {
            Ok(mut jobs) => {
                let rest_from = (jobs.len() > room).then(|| jobs[room].seq);
                jobs.truncate(room);
                lanes.reloaded(key, jobs, rest_from, now_ms());
            }
            Err(e) => {
                error!("cannot reload a lane: {e}")
            }
        }
    }

    /// Drops or dead-letters an interactive update past its lifetime, if the
    /// forward asks for that. Returns whether the job was taken care of.
    fn expire_if_stale(&self, key: &str, job: &Job, lanes: &mut Lanes) -> bool {
        if self.settings.stale == StalePolicy::Deliver
            // An operator who replays a stale update wants it delivered.
            || job.replayed_ms != 0
            || !stale::is_stale(&job.kind, job.received_ms, now_ms())
        {
            return false;
        }
        let age = Duration::from_millis(now_ms().saturating_sub(job.received_ms));
        let why = format!(
            "stale: a {} {}s old is past its lifetime",
            job.kind,
            age.as_secs()
        );
        match self.settings.stale {
            StalePolicy::Drop => {
                info!(update_id = %crate::platform::update::LogId(job.update_id), "{why}; dropped");
                stats::add(&self.stats.stale_dropped, 1);
                self.forget_trace(job);
                self.remember(job, Fate::Dropped, None, job.attempts, Duration::ZERO, &why);
                if let Err(e) = self.queue.complete(self.fwd_id, job.seq) {
                    error!("cannot drop a stale update: {e}");
                }
            }
            _ => {
                let mut job = job.clone();
                job.last_error = why;
                self.bury(&job, None);
            }
        }
        lanes.finish(key, now_ms());
        self.reload_lane(key, lanes);
        true
    }

    /// `attempt`: the span of the attempt that gave up, if traced.
    fn bury(&self, job: &Job, attempt: Option<&SpanContext>) {
        warn!(
            update_id = %crate::platform::update::LogId(job.update_id), attempts = job.attempts,
            trace_id = attempt.map(|a| display(a.trace_id())),
            "moved to dead letters: {}; inspect with `pollhook dlq list`, resend with `pollhook dlq replay {}`",
            job.last_error, job.seq
        );
        self.forget_trace(job);
        stats::add(&self.stats.dead_lettered, 1);
        self.remember(
            job,
            Fate::Dead,
            None,
            job.attempts,
            Duration::ZERO,
            &job.last_error,
        );
        self.emit(job, || What::DeadLettered {
            reason: job.last_error.clone(),
            attempts: job.attempts,
        });
        if let Err(e) = self.queue.bury(self.fwd_id, job, now_ms()) {
            error!(
                "cannot move update {:?} to dead letters: {e}",
                job.update_id
            );
        }
    }

    fn settled(
        &self,
        done: Result<(tokio::task::Id, Attempt), tokio::task::JoinError>,
        lanes: &mut Lanes,
        inflight: &mut InFlight,
        replies: &Replies,
    ) {
        stats::sub(&self.stats.in_flight, 1);
        let (key, mut job, outcome, took, span) = match done {
            Ok((id, attempt)) => {
                inflight.by_task.remove(&id);
                attempt
            }
            Err(e) => {
                // A send task cannot panic on input, but if one ever does, its
                // lane must not stay blocked: count it as a failed attempt.
                error!("a delivery task failed: {e}");
                let Some(key) = inflight.by_task.remove(&e.id()) else {
                    return;
                };
                let Some(job) = lanes.head(&key) else { return };
                let failed = Outcome::Failed {
                    error: format!("internal error: {e}"),
                    retry_after: None,
                };
                (key, job, failed, Duration::ZERO, None)
            }
        };
        let now = now_ms();
        match outcome {
            Outcome::Delivered { status, reply } => {
                match status {
                    Some(status) => {
                        debug!(update_id = %crate::platform::update::LogId(job.update_id), status, attempt = job.attempts + 1, "delivered")
                    }
                    None => {
                        debug!(update_id = %crate::platform::update::LogId(job.update_id), attempt = job.attempts + 1, "delivered (acknowledged)")
                    }
                }
                stats::add(&self.stats.delivered, 1);
                self.forget_trace(&job);
                self.remember(&job, Fate::Delivered, status, job.attempts + 1, took, "");
                self.emit(&job, || What::Delivered {
                    status: status.map_or(Status::ACK, Status::Http),
                    ms: took.as_millis() as u64,
                    attempt: job.attempts + 1,
                });
                self.stats
                    .latency
                    .observe(Duration::from_millis(now.saturating_sub(job.age_base_ms())));
                inflight.done.push(job.seq);
                inflight
                    .done_since
                    .get_or_insert_with(std::time::Instant::now);
                if inflight.failing {
                    // The backend answers again: lanes waiting out their
                    // backoff need not wait any longer.
                    inflight.failing = false;
                    if inflight.release_on_success {
                        lanes.release_all();
                    }
                }
                match reply {
                    ReplyBody::None => lanes.finish(&key, now),
                    ReplyBody::Failed(why) => {
                        replies.failed(&why, job.update_id);
                        lanes.finish(&key, now);
                    }
                    ReplyBody::Read(reply) => {
                        replies.run(reply, job.update_id, span);
                        lanes.finish(&key, now);
                    }
                    ReplyBody::Pending(pending) => {
                        // Every permit for a body of its size is taken: the
                        // chat waits until this reply is read, other chats
                        // go on.
                        debug!(update_id = %crate::platform::update::LogId(job.update_id), "webhook reply waits for memory to be read; its chat waits with it");
                        let hold = LaneHold {
                            key: key.clone(),
                            back: inflight.lane_back.clone(),
                        };
                        inflight.held += 1;
                        replies.run_when_read(pending, job.update_id, hold, span);
                    }
                }
            }
            Outcome::Refused(why) => {
                job.attempts += 1;
                job.last_error = why;
                self.bury(&job, span.as_ref());
                lanes.finish(&key, now);
            }
            Outcome::NotSent { error, retry_in } => {
                // Every lane parked so looks again within `retry_in`; no
                // release needed. Shown in `status` as the forward's error.
                stats::set_last(&self.stats.last_error, now, error.clone());
                if self
                    .settings
                    .retry
                    .exhausted(job.attempts, job.age_base_ms(), now)
                {
                    job.last_error = error;
                    self.bury(&job, span.as_ref());
                    lanes.finish(&key, now);
                } else {
                    // Logged once by whatever watches the way there (the
                    // NATS connection), not once per lane per look.
                    debug!(update_id = %crate::platform::update::LogId(job.update_id), "not sent: {error}; looking again in {retry_in:?}");
                    job.next_at_ms = now + retry_in.as_millis() as u64;
                    lanes.replace_head(&key, job, now);
                }
            }
            Outcome::Failed { error, retry_after } => {
                inflight.failing = true;
                job.attempts += 1;
                job.last_error = error;
                stats::add(&self.stats.failed_attempts, 1);
                let status = remember::status_in(&job.last_error);
                self.remember(
                    &job,
                    Fate::Failed,
                    status,
                    job.attempts,
                    took,
                    &job.last_error,
                );
                stats::set_last(&self.stats.last_error, now, job.last_error.clone());
                if self
                    .settings
                    .retry
                    .exhausted(job.attempts, job.age_base_ms(), now)
                {
                    self.emit_failed(&job, None);
                    self.bury(&job, span.as_ref());
                    lanes.finish(&key, now);
                } else {
                    let wait = self.settings.retry.delay(job.attempts, retry_after);
                    self.emit_failed(&job, Some(wait));
                    job.next_at_ms = now + wait.as_millis() as u64;
                    warn!(
                        update_id = %crate::platform::update::LogId(job.update_id),
                        attempt = job.attempts, retry_in = %format!("{:.1}s", wait.as_secs_f64()),
                        trace_id = span.as_ref().map(|s| display(s.trace_id())),
                        "delivery failed: {}; the update stays queued", job.last_error
                    );
                    if let Err(e) = self.queue.reschedule(self.fwd_id, &job) {
                        error!("cannot store the retry schedule: {e}");
                    }
                    lanes.replace_head(&key, job, now);
                }
            }
        }
        self.reload_lane(&key, lanes);
    }

    /// The update is done with here: its trace need not be remembered.
    fn forget_trace(&self, job: &Job) {
        if let Some(traces) = &self.traces {
            traces.forget(self.fwd_id, job.update_id);
        }
    }

    /// Tells history (if the bot keeps one) what became of an attempt.
    fn remember(
        &self,
        job: &Job,
        fate: Fate,
        status: Option<u16>,
        attempt: u32,
        took: Duration,
        error: &str,
    ) {
        if let Some(history) = &self.history {
            history.outcome(&remember::outcome(
                job,
                &self.settings.name,
                fate,
                status,
                attempt,
                took,
                error,
            ));
        }
    }

    /// A live event about `job`, built only if someone listens.
    fn emit(&self, job: &Job, what: impl FnOnce() -> What) {
        self.events.emit(|| Event {
            at: now_ms(),
            bot: self.bot.clone(),
            forward: Some(self.settings.name.clone()),
            update_id: job.update_id,
            chat: job.lane.chat().map(str::to_string),
            what: what(),
        });
    }

    /// A failed attempt's event; `retry_in` is None when it was the last.
    fn emit_failed(&self, job: &Job, retry_in: Option<Duration>) {
        self.emit(job, || What::Failed {
            error: job.last_error.clone(),
            attempt: job.attempts,
            retry_in_ms: retry_in.map(|w| w.as_millis() as u64),
        });
    }

    /// Removes delivered jobs from the store. Not flushed: losing a removal
    /// to a crash only means one duplicate delivery.
    fn forget_delivered(&self, inflight: &mut InFlight) {
        if inflight.done.is_empty() {
            return;
        }
        if let Err(e) = self.queue.complete_many(self.fwd_id, &inflight.done) {
            // They stay stored and will be sent again: duplicates, not a loss.
            error!("cannot mark {} updates delivered: {e}", inflight.done.len());
        }
        inflight.done.clear();
        inflight.done_since = None;
    }

    /// Waits for requests already sent, up to the drain timeout; anything
    /// unfinished stays in the store and is sent again after a restart.
    async fn drain(
        &self,
        inflight: &mut InFlight,
        lanes: &mut Lanes,
        replies: &Replies,
        deadline: tokio::time::Instant,
    ) {
        if inflight.tasks.is_empty() {
            return;
        }
        info!(
            in_flight = inflight.tasks.len(),
            "waiting for deliveries in flight"
        );
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = inflight.tasks.join_next_with_id() => match done {
                    Some(done) => self.settled(done, lanes, inflight, replies),
                    None => return,
                },
                _ = &mut deadline => {
                    warn!(abandoned = inflight.tasks.len(), "stop timeout reached; unfinished deliveries stay queued and will be sent again");
                    inflight.tasks.abort_all();
                    return;
                }
            }
        }
    }
}
