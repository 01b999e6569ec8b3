//! One bot's poll loop: getUpdates → store → (only then) the next getUpdates.
//!
//! The offset sent with a getUpdates call is the acknowledgement: the
//! platform forgets every update below it. So the loop never sends an offset
//! until the batch below it is stored and flushed. If storing fails, polling
//! stops (backpressure) rather than confirm anything unstored; the platform
//! keeps unconfirmed updates for a day.
//!
//! A broken platform must not make the loop panic, spin or lose anything:
//! an offset is only ever a positive number above a real id (see
//! [`crate::platform::offset`]); a batch nothing can confirm is reported and asked
//! for again with growing pauses; a batch that cannot be read at all (too
//! large, not JSON) is asked for one update at a time, so the updates
//! before the bad one still get through and the bad one is named.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument, Span};

use crate::clock::now_ms;
use crate::config::BotSettings;
use crate::events::{self, Bus, Event};
use crate::platform::api::{ApiError, BotApi, BATCH_LIMIT, POLL_MARGIN};
use crate::platform::offset::{self, Next};
use crate::platform::update::Update;
use crate::policy::retry::jittered;
use crate::policy::routing::Filter;
use crate::stats::{self, BotStats};
use crate::store::{Incoming, Queue};
use crate::trace::TARGET;

/// Extra time the watchdog allows beyond a step's own bound.
const SLACK: Duration = Duration::from_secs(15);

/// A forward as the poller sees it: which updates it wants, whom to wake.
pub struct Route {
    pub fwd_id: u32,
    /// For live events.
    pub name: String,
    pub filter: Filter,
    pub wake: Arc<Notify>,
}

pub struct Poller {
    /// Shared with the relay's plan: one copy per bot, not one per task.
    pub bot: Arc<BotSettings>,
    pub api: Arc<BotApi>,
    pub queue: Arc<dyn Queue>,
    pub routes: Vec<Route>,
    pub stats: Arc<BotStats>,
    /// In a cluster: closed when this node may no longer lead the bot; no
    /// getUpdates is sent after that (on MPChat the answer would consume
    /// a batch this node can no longer store).
    pub fence: Option<crate::cluster::fence::Fence>,
    /// Live events: one `received` per update of each stored batch.
    pub events: Bus,
    /// While tracing is on: where each stored update's trace is noted for
    /// its deliveries.
    pub traces: Option<Arc<crate::trace::Batches>>,
}

enum Stored {
    /// Stored and flushed: this offset may now be sent.
    Offset(Option<i64>),
    /// Nothing in the batch could be confirmed, so it was not stored (it
    /// comes again): `state` for /status, `why` for the log.
    Stuck { state: &'static str, why: String },
    /// Shutdown came while the store was failing; nothing was confirmed.
    ShuttingDown,
}

impl Poller {
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.bot.name.clone();
        // Already clamped to the platform's cap by config validation.
        let timeout = self.bot.poll_timeout;
        let mut offset = match self.queue.offset(&name) {
            Ok(o) => o,
            Err(e) => {
                error!("cannot read the stored offset, polling not started: {e}");
                return;
            }
        };
        // Boxed: getMe goes through reqwest, whose future would otherwise
        // stay in this task's state (one per bot) long after it ran once.
        if !Box::pin(self.introduce(&shutdown)).await {
            return;
        }
        // The platform remembers allowed_updates across calls and restarts;
        // send ours (or [] for the platform's default) until one call
        // succeeds, so an old setting cannot silently filter updates.
        let allowed: Vec<String> = self.bot.allowed_updates.clone().unwrap_or_default();
        let mut allowed_sent = false;
        let mut failures: u32 = 0;
        // Polls in a row that got a batch nothing could confirm.
        let mut stuck: u32 = 0;
        // While above 0, updates are asked for one at a time (see module doc).
        let mut singles_left: u32 = 0;
        info!(flavor = %self.bot.flavor, offset = ?offset, "polling");
        loop {
            if self.fence.as_ref().is_some_and(|f| !f.valid()) {
                info!("this node no longer leads the bot; polling stops");
                break;
            }
            let started = Instant::now();
            self.stats
                .first_poll_started
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.stats.busy_for(now_ms(), timeout + POLL_MARGIN + SLACK);
            let limit = if singles_left > 0 { 1 } else { BATCH_LIMIT };
            let call = self.api.get_updates(
                offset,
                limit,
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
                        info!("getUpdates works again after {failures} failure(s)");
                    }
                    failures = 0;
                    allowed_sent = true;
                    if batch.is_empty() {
                        stuck = 0;
                        // The queue is drained: whatever could not be read
                        // is gone.
                        end_singles(&mut singles_left);
                        // A long poll that comes back empty long before its
                        // timeout (a proxy, a misbehaving server) must not
                        // become a tight loop.
                        early_empty_pause(started.elapsed(), timeout)
                    } else {
                        let stored = self.store_batch(&batch, offset, &shutdown);
                        let stored = match &self.traces {
                            // The root of this batch's trace.
                            Some(_) => {
                                let span = info_span!(target: TARGET, "poll", bot = %name, updates = batch.len());
                                stored.instrument(span).await
                            }
                            None => stored.await,
                        };
                        match stored {
                            Stored::Offset(next) => {
                                offset = next;
                                stuck = 0;
                                if singles_left > 0 {
                                    singles_left -= 1;
                                    if singles_left == 0 {
                                        info!("{ISOLATION} updates taken one at a time; asking for batches of {BATCH_LIMIT} again");
                                    }
                                }
                                Duration::ZERO
                            }
                            Stored::ShuttingDown => break,
                            Stored::Stuck { state, why } => {
                                stuck += 1;
                                // One at a time cannot get past an update
                                // without a usable id; a full batch can, once
                                // an update with one arrives behind it.
                                end_singles(&mut singles_left);
                                self.stats.set_state(state);
                                let wait = jittered(stuck_backoff(stuck));
                                error!(stuck, retry_in = %format!("{:.1}s", wait.as_secs_f64()), "{why}");
                                wait
                            }
                        }
                    }
                }
                Err(e @ ApiError::NotImplemented { .. }) => {
                    // Never retried: the platform says it does not have the method.
                    self.record_poll(Err(&e));
                    error!("getUpdates: {e}; this bot cannot be polled here (check flavor and api_url); its poller stops, other bots carry on");
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
                    if !e.batch_unreadable() {
                        log_failure(&e, failures, wait);
                    } else if limit > 1 {
                        singles_left = ISOLATION;
                        warn!(failures, retry_in = %format!("{:.1}s", wait.as_secs_f64()), "getUpdates: {e}; nothing was confirmed, so nothing is lost; retrying with one update at a time, so the updates before the one that cannot be read get through");
                    } else {
                        self.stats.set_state(single_unreadable_state(&e));
                        error!(failures, retry_in = %format!("{:.1}s", wait.as_secs_f64()), "getUpdates: {e} for a single update: the platform's next update cannot be read, so it cannot be confirmed and the updates behind it wait; nothing is lost (the platform keeps it; Telegram for 24 h); if this does not clear, ask the platform's operator about it; retrying one update at a time");
                    }
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
        debug!("poller stopped");
    }

    /// Asks the platform who the token belongs to, once, so a wrong token
    /// shows at start rather than after the first long poll. Returns false
    /// if shutdown came first.
    async fn introduce(&self, shutdown: &CancellationToken) -> bool {
        let me = tokio::select! {
            _ = shutdown.cancelled() => return false,
            me = self.api.get_me() => me,
        };
        match me {
            Ok(me) => {
                info!("the token belongs to {me}");
                *self
                    .stats
                    .identity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(me.to_string());
            }
            Err(ApiError::NotImplemented { .. }) => {
                info!("the platform does not offer getMe; skipped")
            }
            Err(e) => error!("getMe: {e}; {}", e.advice()),
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
        batch: &[Bytes],
        offset: Option<i64>,
        shutdown: &CancellationToken,
    ) -> Stored {
        let name = &self.bot.name;
        let updates = self.read_updates(batch);
        let new_offset = match self.next_offset(&updates, offset) {
            Ok(o) => o,
            Err(stuck) => return stuck,
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
                    debug!(update_id = %crate::platform::update::LogId(u.update_id), kind = %u.kind, "no forward wants this update; dropped");
                }
                !f.is_empty()
            })
            .map(|(update, forwards)| Incoming { update, forwards })
            .collect();
        let received_ms = now_ms();
        // Noted before the jobs exist: a dispatcher may read them the
        // moment they are stored.
        if let Some(traces) = &self.traces {
            if let Some(poll) = crate::trace::span_context(&Span::current()) {
                let jobs = incoming.iter().filter_map(|i| {
                    let id = i.update.update_id?;
                    Some(i.forwards.iter().map(move |&f| (f, id)))
                });
                traces.remember(&poll, jobs.flatten());
            }
        }
        let mut attempt: u32 = 0;
        loop {
            let append = self.queue.append(name, &incoming, new_offset, received_ms);
            let appended = match &self.traces {
                Some(_) => {
                    let span = info_span!(
                        target: TARGET,
                        "store.append",
                        updates = incoming.len(),
                        error = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                    );
                    let appended = append.instrument(span.clone()).await;
                    if let Err(e) = &appended {
                        span.record("error", tracing::field::display(e));
                        span.record("otel.status_code", "ERROR");
                    }
                    appended
                }
                None => append.await,
            };
            match appended {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    // A replicated queue comes back within seconds (a new
                    // stream leader); a local disk needs longer.
                    let wait = match e {
                        crate::store::StoreError::Remote(_) => {
                            Duration::from_millis(250 << attempt.min(3))
                        }
                        _ => Duration::from_secs(1 << attempt.min(5)),
                    };
                    error!("cannot store a batch of {} updates: {e}; polling is paused (nothing is confirmed, the platform keeps the updates); retrying in {:.1}s", incoming.len(), wait.as_secs_f64());
                    self.stats.set_state("store failing");
                    self.stats.busy_for(now_ms(), wait + SLACK);
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            if self.bot.flavor.confirms_on_response() {
                                // MPChat counted this batch as consumed when
                                // it answered: say plainly what is lost.
                                let ids: Vec<Option<i64>> = incoming.iter().map(|i| i.update.update_id).collect();
                                error!(lost = ?ids, "stopping while the store fails: this batch, which MPChat counted as consumed when it answered, could not be stored and is lost");
                            }
                            return Stored::ShuttingDown;
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        debug!(count = incoming.len(), ?new_offset, "stored batch");
        if self.events.active() {
            self.announce(&updates, &fwd_lists, received_ms);
        }
        for r in &self.routes {
            r.wake.notify_one();
        }
        Stored::Offset(new_offset)
    }
}

impl Poller {
    /// A `received` event per update of a stored batch, with the forwards
    /// that want it (none: it was dropped).
    fn announce(&self, updates: &[Update], fwd_lists: &[Vec<u32>], at: u64) {
        for (u, ids) in updates.iter().zip(fwd_lists) {
            let forwards = self
                .routes
                .iter()
                .filter(|r| ids.contains(&r.fwd_id))
                .map(|r| r.name.clone())
                .collect();
            self.events.emit(|| Event {
                at,
                bot: self.bot.name.clone(),
                forward: None,
                update_id: u.update_id,
                chat: u.lane.chat().map(str::to_string),
                what: events::What::Received {
                    kind: u.kind.clone(),
                    forwards,
                },
            });
        }
    }

    /// Reads each update's head; one that cannot be read is forwarded as
    /// is, because dropping input is worse than passing it on.
    fn read_updates(&self, batch: &[Bytes]) -> Vec<Update> {
        batch
            .iter()
            .map(|raw| match Update::from_bytes(raw) {
                Ok(u) => u,
                Err(e) => {
                    warn!(
                        "an update pollhook cannot read ({e}) is forwarded as is: {}",
                        self.preview(raw)
                    );
                    Update::opaque(raw)
                }
            })
            .collect()
    }

    /// The start of an update for a log line, scrubbed of the token (it is
    /// platform text) before it is cut.
    fn preview(&self, raw: &[u8]) -> String {
        let text = self.api.redact(&String::from_utf8_lossy(raw));
        let mut cut: String = text.chars().take(80).collect();
        if cut.len() < text.len() {
            cut.push('…');
        }
        cut
    }

    /// The offset to store with a batch and send next, or why the batch
    /// must not be stored.
    fn next_offset(&self, updates: &[Update], sent: Option<i64>) -> Result<Option<i64>, Stored> {
        let ids: Vec<Option<i64>> = updates.iter().map(|u| u.update_id).collect();
        let next = offset::after_batch(&ids, sent);
        let odd = offset::unconfirmable(&ids);
        if let Next::Offset(o) = next {
            let again: Vec<i64> = odd.into_iter().filter(|&id| id >= o).collect();
            if !again.is_empty() {
                warn!("update_id {again:?} lies above every possible offset, so the platform cannot be told to forget it: it is stored and forwarded now; when it comes again on its own it is reported, not stored again");
            }
            return Ok(Some(o));
        }
        // Where the response itself confirmed the batch (MPChat) it must be
        // stored whatever its ids; the offset stays.
        if self.bot.flavor.confirms_on_response() {
            return Ok(sent);
        }
        // Elsewhere the batch will come again, so storing it now would
        // only duplicate it.
        let n = updates.len();
        let wait_for = "nothing is lost (the platform keeps it; Telegram for 24 h) and it is stored and forwarded as soon as an update with a usable id arrives behind it";
        Err(match next {
            Next::Repeated(o) => Stored::Stuck {
                state: "stuck: offset ignored",
                why: format!("getUpdates sent again update_id {}, which offset {o} had confirmed: the platform ignores the offset; the batch of {n} was stored before and is not stored again (that would only duplicate it); if this goes on, ask the platform's operator about it; asking again", o - 1),
            },
            _ if odd.is_empty() => Stored::Stuck {
                state: "stuck: no update_id",
                why: format!("a batch of {n} update(s) without a readable update_id: no offset can confirm it, so it is not stored and the updates behind it wait; {wait_for}; if every update looks like this, check the bot's flavor and api_url; asking again"),
            },
            _ => Stored::Stuck {
                state: "stuck: unusable update_id",
                why: format!("a batch of {n} update(s) with update_id {odd:?}: an offset must be a positive number above an id, so no offset can confirm them (a negative offset would make the platform drop its queue); not stored, and the updates behind them wait; {wait_for}; asking again"),
            },
        })
    }
}

/// How many updates are taken one at a time after a batch could not be
/// read: the batch that failed held at most this many, so the bad one is
/// among them.
const ISOLATION: u32 = BATCH_LIMIT as u32;

fn end_singles(singles_left: &mut u32) {
    if *singles_left > 0 {
        *singles_left = 0;
        info!("asking for batches of {BATCH_LIMIT} again");
    }
}

/// The pause before asking again for a batch nothing could confirm: it
/// returns at once, so without a growing pause this would be a tight loop.
fn stuck_backoff(stuck: u32) -> Duration {
    let exp = stuck.saturating_sub(1).min(4);
    Duration::from_secs(5 << exp).min(Duration::from_secs(60))
}

/// /status's word for a single update that cannot be read.
fn single_unreadable_state(e: &ApiError) -> &'static str {
    match e {
        ApiError::TooLarge { .. } => "stuck: update too large",
        _ => "stuck: unreadable update",
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

fn log_failure(e: &ApiError, failures: u32, wait: Duration) {
    let wait_s = format!("{:.1}s", wait.as_secs_f64());
    match e {
        ApiError::RateLimited { .. } => {
            info!(retry_in = %wait_s, "getUpdates: {e}; {}", e.advice())
        }
        ApiError::OtherPoller { .. } | ApiError::WebhookSet { .. } | ApiError::BadToken { .. } => {
            error!(failures, retry_in = %wait_s, "getUpdates: {e}; {}", e.advice())
        }
        _ => warn!(failures, retry_in = %wait_s, "getUpdates: {e}; {}", e.advice()),
    }
}
