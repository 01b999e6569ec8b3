//! One bot's poll loop: getUpdates → store → (only then) the next getUpdates.
//!
//! The offset sent with a getUpdates call is the acknowledgement: the
//! platform forgets every update below it. So the loop never sends an offset
//! until the batch below it is stored and flushed. If storing fails, polling
//! stops (backpressure) rather than confirm anything unstored; the platform
//! keeps unconfirmed updates for a day.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::botapi::{jittered, ApiError, BotApi, POLL_MARGIN};
use crate::clock::now_ms;
use crate::config::BotSettings;
use crate::routing::Filter;
use crate::stats::{self, BotStats};
use crate::store::{Incoming, Store};
use crate::update::Update;

/// Extra time the watchdog allows beyond a step's own bound.
const SLACK: Duration = Duration::from_secs(15);

/// A forward as the poller sees it: which updates it wants, whom to wake.
pub struct Route {
    pub fwd_id: u32,
    pub filter: Filter,
    pub wake: Arc<Notify>,
}

pub struct Poller {
    pub bot: BotSettings,
    pub api: Arc<BotApi>,
    pub store: Arc<Store>,
    pub routes: Vec<Route>,
    pub stats: Arc<BotStats>,
}

enum Stored {
    /// Stored and flushed: this offset may now be sent.
    Offset(Option<i64>),
    /// Nothing in the batch could be confirmed.
    Unreadable,
    /// Shutdown came while the store was failing; nothing was confirmed.
    ShuttingDown,
}

impl Poller {
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.bot.name.clone();
        // Already clamped to the platform's cap by config validation.
        let timeout = self.bot.poll_timeout;
        let mut offset = match self.store.offset(&name) {
            Ok(o) => o,
            Err(e) => {
                error!(bot = %name, "cannot read the stored offset, polling not started: {e}");
                return;
            }
        };
        if !self.introduce(&shutdown).await {
            return;
        }
        // The platform remembers allowed_updates across calls and restarts;
        // send ours (or [] for the platform's default) until one call
        // succeeds, so an old setting cannot silently filter updates.
        let allowed: Vec<String> = self.bot.allowed_updates.clone().unwrap_or_default();
        let mut allowed_sent = false;
        let mut failures: u32 = 0;
        info!(bot = %name, flavor = %self.bot.flavor, offset = ?offset, "polling");
        loop {
            let started = Instant::now();
            self.stats
                .first_poll_started
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.stats.busy_for(now_ms(), timeout + POLL_MARGIN + SLACK);
            let call = self.api.get_updates(
                offset,
                timeout,
                (!allowed_sent).then_some(allowed.as_slice()),
            );
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = call => r,
            };
            self.stats.poll_latency.observe(started.elapsed());
            let wait = match result {
                Ok(batch) => {
                    self.record_poll(Ok(batch.len()));
                    if failures > 0 {
                        info!(bot = %name, "getUpdates works again after {failures} failure(s)");
                    }
                    failures = 0;
                    allowed_sent = true;
                    if batch.is_empty() {
                        // A long poll that comes back empty long before its
                        // timeout (a proxy, a misbehaving server) must not
                        // become a tight loop.
                        early_empty_pause(started.elapsed(), timeout)
                    } else {
                        match self.store_batch(&batch, offset, &shutdown).await {
                            Stored::Offset(next) => {
                                offset = next;
                                Duration::ZERO
                            }
                            Stored::ShuttingDown => break,
                            Stored::Unreadable => {
                                failures += 1;
                                jittered(Duration::from_secs(5))
                            }
                        }
                    }
                }
                Err(e @ ApiError::NotImplemented { .. }) => {
                    // Never retried: the platform says it does not have the method.
                    self.record_poll(Err(&e));
                    error!(bot = %name, "getUpdates: {e}; this bot cannot be polled here (check flavor and api_url); its poller stops, other bots carry on");
                    break;
                }
                Err(e) => {
                    self.record_poll(Err(&e));
                    failures += 1;
                    let wait = if e.jitter() {
                        jittered(e.backoff(failures))
                    } else {
                        e.backoff(failures)
                    };
                    log_failure(&name, &e, failures, wait);
                    wait
                }
            };
            if !wait.is_zero() {
                self.stats.busy_for(now_ms(), wait + SLACK);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        // A stopped poller is not a stalled one.
        self.stats
            .busy_until_ms
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        debug!(bot = %name, "poller stopped");
    }

    /// Asks the platform who the token belongs to, once, so a wrong token
    /// shows at start rather than after the first long poll. Returns false
    /// if shutdown came first.
    async fn introduce(&self, shutdown: &CancellationToken) -> bool {
        let name = &self.bot.name;
        let me = tokio::select! {
            _ = shutdown.cancelled() => return false,
            me = self.api.get_me() => me,
        };
        match me {
            Ok(me) => {
                info!(bot = %name, "the token belongs to {me}");
                *self
                    .stats
                    .identity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(me.to_string());
            }
            Err(ApiError::NotImplemented { .. }) => {
                info!(bot = %name, "the platform does not offer getMe; skipped")
            }
            Err(e) => error!(bot = %name, "getMe: {e}; {}", e.advice()),
        }
        true
    }

    fn record_poll(&self, result: Result<usize, &ApiError>) {
        let now = now_ms();
        let text = match result {
            Ok(n) => {
                stats::add(&self.stats.polls_ok, 1);
                stats::add(&self.stats.updates_received, n as u64);
                self.stats
                    .last_ok_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                self.stats.set_state("ok");
                "ok".to_string()
            }
            Err(e) => {
                stats::add(&self.stats.polls_failed, 1);
                self.stats.set_state(e.state());
                e.to_string()
            }
        };
        stats::set_last(&self.stats.last_poll, now, text);
    }

    /// Stores a batch, retrying until it is stored.
    async fn store_batch(
        &self,
        batch: &[Box<RawValue>],
        offset: Option<i64>,
        shutdown: &CancellationToken,
    ) -> Stored {
        let name = &self.bot.name;
        let mut updates = Vec::with_capacity(batch.len());
        let mut last_id = None;
        for raw in batch {
            match Update::parse(raw) {
                Ok(u) => {
                    last_id = u.update_id.or(last_id);
                    updates.push(u);
                }
                Err(e) => {
                    // Forwarded anyway: dropping input is worse than passing it on.
                    warn!(bot = %name, "an update pollhook cannot read ({e}) is forwarded as is: {:.80}…", raw.get());
                    updates.push(Update::opaque(raw));
                }
            }
        }
        // Telegram's ids rise within a batch but may jump down between
        // batches, so the next offset follows the batch's last update, not
        // the highest id ever seen.
        let new_offset = match last_id {
            Some(id) => Some(id + 1),
            // No id to confirm with. Where the response itself confirmed the
            // batch (MPChat) it must be stored anyway; elsewhere it will come
            // again, so storing it now would only duplicate it.
            None if self.bot.flavor.confirms_on_response() => offset,
            None => {
                error!(bot = %name, "a batch of {} held no readable update_id, so it cannot be confirmed; asking again", batch.len());
                return Stored::Unreadable;
            }
        };
        let fwd_lists: Vec<Vec<u32>> = updates
            .iter()
            .map(|u| {
                self.routes
                    .iter()
                    .filter(|r| r.filter.wants(u))
                    .map(|r| r.fwd_id)
                    .collect()
            })
            .collect();
        let incoming: Vec<Incoming> = updates
            .iter()
            .zip(&fwd_lists)
            .filter(|(u, f)| {
                if f.is_empty() {
                    stats::add(&self.stats.updates_unrouted, 1);
                    debug!(bot = %name, update_id = ?u.update_id, kind = %u.kind, "no forward wants this update; dropped");
                }
                !f.is_empty()
            })
            .map(|(update, forwards)| Incoming { update, forwards })
            .collect();
        let received_ms = now_ms();
        let mut attempt: u32 = 0;
        loop {
            match self
                .store
                .append(name, &incoming, new_offset, received_ms)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    let wait = Duration::from_secs(1 << attempt.min(5));
                    error!(bot = %name, "cannot store a batch of {} updates: {e}; polling is paused (nothing is confirmed, the platform keeps the updates); retrying in {}s", incoming.len(), wait.as_secs());
                    self.stats.set_state("store failing");
                    self.stats.busy_for(now_ms(), wait + SLACK);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Stored::ShuttingDown,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        debug!(bot = %name, count = incoming.len(), ?new_offset, "stored batch");
        for r in &self.routes {
            r.wake.notify_one();
        }
        Stored::Offset(new_offset)
    }
}

/// The pause after an empty answer: none if the long poll ran its course,
/// a second if it came back early.
fn early_empty_pause(took: Duration, timeout: Duration) -> Duration {
    if took >= timeout / 2 {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    }
}

fn log_failure(bot: &str, e: &ApiError, failures: u32, wait: Duration) {
    let wait_s = format!("{:.1}s", wait.as_secs_f64());
    match e {
        ApiError::RateLimited { .. } => {
            info!(bot = %bot, retry_in = %wait_s, "getUpdates: {e}; {}", e.advice())
        }
        ApiError::OtherPoller { .. } | ApiError::WebhookSet { .. } | ApiError::BadToken { .. } => {
            error!(bot = %bot, failures, retry_in = %wait_s, "getUpdates: {e}; {}", e.advice())
        }
        _ => warn!(bot = %bot, failures, retry_in = %wait_s, "getUpdates: {e}; {}", e.advice()),
    }
}
