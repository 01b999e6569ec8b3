//! Delivery: one dispatcher per forward moves that forward's jobs from the
//! store to its backend.
//!
//! Ordering works like Telegram's own webhook sender: updates of one lane
//! (a chat, else a user) go one at a time in update order; different lanes go
//! in parallel up to `max_in_flight`. A lane whose head fails waits for its
//! retry; other lanes carry on.
//!
//! The store is the source of truth. The dispatcher keeps a bounded window of
//! jobs in memory (metadata and payload), refilled from the store in
//! sequence order whenever it runs low or the poller says new jobs arrived,
//! so a backlog of millions costs disk, not memory.

mod lanes;
pub mod retry;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::now_ms;
use crate::config::ForwardSettings;
use crate::flavor::Flavor;
use crate::store::{Job, Store};
use lanes::Lanes;
pub use send::{Outcome, Target};

/// Jobs held in memory per forward.
const WINDOW: usize = 4096;

pub struct Forwarder {
    pub bot: String,
    pub fwd_id: u32,
    pub settings: ForwardSettings,
    pub flavor: Flavor,
    pub store: Arc<Store>,
    /// Poked by the poller after it stored jobs for this forward.
    pub wake: Arc<Notify>,
    /// How long a graceful stop waits for requests already in flight.
    pub drain_timeout: Duration,
}

type Attempt = (String, Job, Outcome);

impl Forwarder {
    pub async fn run(self, shutdown: CancellationToken) {
        let target = Arc::new(Target::new(&self.bot, self.flavor, &self.settings));
        let mut lanes = Lanes::default();
        let mut inflight: JoinSet<Attempt> = JoinSet::new();
        let mut inflight_lanes: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut refill = true;
        info!(bot = %self.bot, forward = %self.settings.name, url = %self.settings.url, "delivering");
        loop {
            if refill || lanes.loaded() < WINDOW / 2 {
                self.refill(&mut lanes);
                refill = false;
            }
            let now = now_ms();
            lanes.release_due(now);
            while inflight.len() < self.settings.max_in_flight {
                let Some((key, job)) = lanes.take_ready() else {
                    break;
                };
                let target = target.clone();
                let id = self.store.webhook_id(job.seq);
                let lane = key.clone();
                let handle = inflight.spawn(async move {
                    let outcome = target.send(&id, &job, job.attempts + 1).await;
                    (key, job, outcome)
                });
                inflight_lanes.insert(handle.id(), lane);
            }
            let next_timer = lanes.next_due();
            let sleep = async {
                match next_timer {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = inflight.join_next_with_id() => {
                    self.settled(done, &mut lanes, &mut inflight_lanes);
                }
                _ = self.wake.notified() => refill = true,
                _ = sleep => {}
            }
        }
        self.drain(&mut inflight, &mut lanes, &mut inflight_lanes)
            .await;
        debug!(bot = %self.bot, forward = %self.settings.name, "dispatcher stopped");
    }

    fn refill(&self, lanes: &mut Lanes) {
        let room = WINDOW.saturating_sub(lanes.loaded());
        if room == 0 {
            return;
        }
        match self.store.pending(self.fwd_id, lanes.cursor(), room) {
            Ok(jobs) => {
                let now = now_ms();
                for job in jobs {
                    lanes.push(job, now);
                }
            }
            Err(e) => {
                error!(bot = %self.bot, forward = %self.settings.name, "cannot read the queue: {e}")
            }
        }
    }

    fn settled(
        &self,
        done: Result<(tokio::task::Id, Attempt), tokio::task::JoinError>,
        lanes: &mut Lanes,
        inflight_lanes: &mut HashMap<tokio::task::Id, String>,
    ) {
        let (key, mut job, outcome) = match done {
            Ok((id, attempt)) => {
                inflight_lanes.remove(&id);
                attempt
            }
            Err(e) => {
                // A send task cannot panic on input, but if one ever does, its
                // lane must not stay blocked: retry the head later.
                error!(bot = %self.bot, forward = %self.settings.name, "a delivery task failed: {e}");
                if let Some(key) = inflight_lanes.remove(&e.id()) {
                    lanes.retry_head(&key, now_ms() + 1000, now_ms());
                }
                return;
            }
        };
        let now = now_ms();
        match outcome {
            Outcome::Delivered { status } => {
                debug!(bot = %self.bot, forward = %self.settings.name, update_id = ?job.update_id, status, attempt = job.attempts + 1, "delivered");
                if let Err(e) = self.store.complete(self.fwd_id, job.seq) {
                    // The job stays stored and will be sent again: a duplicate, not a loss.
                    error!(bot = %self.bot, forward = %self.settings.name, "cannot mark update {:?} delivered: {e}", job.update_id);
                }
                lanes.finish(&key, now);
            }
            Outcome::Failed { error, retry_after } => {
                job.attempts += 1;
                let wait = retry::delay(job.attempts, retry_after);
                job.next_at_ms = now + wait.as_millis() as u64;
                job.last_error = error;
                warn!(
                    bot = %self.bot, forward = %self.settings.name, update_id = ?job.update_id,
                    attempt = job.attempts, retry_in = %format!("{:.1}s", wait.as_secs_f64()),
                    "delivery failed: {}; the update stays queued", job.last_error
                );
                if let Err(e) = self.store.reschedule(self.fwd_id, &job) {
                    error!(bot = %self.bot, forward = %self.settings.name, "cannot store the retry schedule: {e}");
                }
                lanes.replace_head(&key, job, now);
            }
        }
    }

    /// Waits for requests already sent, up to the drain timeout; anything
    /// unfinished stays in the store and is sent again after a restart.
    async fn drain(
        &self,
        inflight: &mut JoinSet<Attempt>,
        lanes: &mut Lanes,
        inflight_lanes: &mut HashMap<tokio::task::Id, String>,
    ) {
        if inflight.is_empty() {
            return;
        }
        info!(bot = %self.bot, forward = %self.settings.name, in_flight = inflight.len(), "waiting for deliveries in flight");
        let deadline = tokio::time::sleep(self.drain_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = inflight.join_next_with_id() => match done {
                    Some(done) => self.settled(done, lanes, inflight_lanes),
                    None => return,
                },
                _ = &mut deadline => {
                    warn!(bot = %self.bot, forward = %self.settings.name, abandoned = inflight.len(), "stop timeout reached; unfinished deliveries stay queued and will be sent again");
                    inflight.abort_all();
                    return;
                }
            }
        }
    }
}
