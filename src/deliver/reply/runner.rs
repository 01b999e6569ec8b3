//! Running webhook replies' Bot API calls for one forward: each in its own
//! task, retried with backoff, tracked so that a stop waits for them (up to
//! the stop timeout) and names each one it has to abandon.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::SpanContext;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::{info, info_span, warn, Instrument};

use super::{Parsed, Pending, ReadReply};
use crate::budget::{Ask, Budget};
use crate::events::{Bus, Event, What};
use crate::platform::api::{ApiError, BotApi};
use crate::platform::call::BotCall;
use crate::policy::methods::MethodSet;
use crate::stats::{self, ForwardStats};
use crate::trace::TARGET;

/// Attempts at a webhook reply's Bot API call (1 s, 2 s, 4 s, 8 s apart).
const REPLY_ATTEMPTS: u32 = 5;
/// How long a reply's call may wait for the bot's rate budget, each time.
const BUDGET_WAIT: Duration = Duration::from_secs(60);
const NO_ROOM: &str = "the bot's rate limits had no room for it";

#[derive(Clone)]
pub struct Replies {
    inner: Arc<Inner>,
}

struct Inner {
    bot: String,
    fwd: String,
    events: Bus,
    api: Arc<BotApi>,
    budget: Arc<Budget>,
    stats: Arc<ForwardStats>,
    admitted: MethodSet,
    tasks: TaskTracker,
    /// What each running reply is about, for the log if it is abandoned.
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
    abandon: CancellationToken,
}

struct Live {
    update_id: Option<i64>,
    /// Known once the body is read and parsed.
    method: Option<String>,
}

/// A running reply's entry in `live`, removed when the task ends however
/// it ends.
struct Entry {
    inner: Arc<Inner>,
    id: u64,
}

impl Entry {
    fn set_method(&self, method: &str) {
        if let Some(live) = self.inner.live().get_mut(&self.id) {
            live.method = Some(method.to_string());
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.inner.live().remove(&self.id);
    }
}

impl Inner {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live `reply` event: `method` made (Ok) or not (Err: why), if
    /// someone listens.
    fn emit(
        &self,
        update_id: Option<i64>,
        chat: impl FnOnce() -> Option<String>,
        method: Option<&str>,
        result: Result<(), &dyn std::fmt::Display>,
    ) {
        self.events.emit(|| Event {
            at: crate::clock::now_ms(),
            bot: self.bot.clone(),
            forward: Some(self.fwd.clone()),
            update_id,
            chat: chat(),
            what: What::Reply {
                method: method.map(str::to_string),
                ok: result.is_ok(),
                error: result.err().map(|e| e.to_string()),
            },
        });
    }
}

impl Replies {
    pub fn new(
        bot: &str,
        fwd: &str,
        events: Bus,
        api: Arc<BotApi>,
        budget: Arc<Budget>,
        stats: Arc<ForwardStats>,
        admitted: MethodSet,
    ) -> Replies {
        Replies {
            inner: Arc::new(Inner {
                bot: bot.to_string(),
                fwd: fwd.to_string(),
                events,
                api,
                budget,
                stats,
                admitted,
                tasks: TaskTracker::new(),
                live: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                abandon: CancellationToken::new(),
            }),
        }
    }

    /// A reply that cannot be run (too large, unreadable).
    pub fn failed(&self, why: &str, update_id: Option<i64>) {
        let i = &self.inner;
        stats::add(&i.stats.replies_failed, 1);
        warn!(
            update_id = %crate::platform::update::LogId(update_id),
            "webhook reply not executed: {why}; the update itself was delivered"
        );
        i.emit(update_id, || None, None, Err(&why));
    }

    /// Runs a reply whose body is in memory. `delivery`: the span of the
    /// attempt it answered (tracing on), the parent of the call's span.
    pub fn run(&self, reply: ReadReply, update_id: Option<i64>, delivery: Option<SpanContext>) {
        let inner = self.inner.clone();
        self.spawn(update_id, move |entry| {
            execute(inner, entry, reply, update_id, delivery)
        });
    }

    /// Reads a reply once a permit is free, then runs it. `hold` is dropped
    /// once the body is in memory (or cannot be read): the dispatcher keeps
    /// the update's lane until then, so a chat whose backend answers with
    /// large replies waits for them instead of piling up more.
    pub fn run_when_read<H: Send + 'static>(
        &self,
        pending: Pending,
        update_id: Option<i64>,
        hold: H,
        delivery: Option<SpanContext>,
    ) {
        let inner = self.inner.clone();
        self.spawn(update_id, move |entry| async move {
            let read = pending.read().await;
            drop(hold);
            match read {
                Ok(reply) => execute(inner, entry, reply, update_id, delivery).await,
                Err(why) => Replies { inner }.failed(&why, update_id),
            }
        });
    }

    fn spawn<F, Fut>(&self, update_id: Option<i64>, work: F)
    where
        F: FnOnce(Entry) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner.live().insert(
            id,
            Live {
                update_id,
                method: None,
            },
        );
        let entry = Entry {
            inner: self.inner.clone(),
            id,
        };
        let abandon = self.inner.abandon.clone();
        let work = work(entry);
        // In the forward's span, so each call's log lines name bot and forward.
        let task = async move {
            tokio::select! {
                _ = abandon.cancelled() => {}
                _ = work => {}
            }
        };
        self.inner.tasks.spawn(task.in_current_span());
    }

    /// At a stop: waits for running replies until `deadline`, then logs each
    /// one still running and abandons it.
    pub async fn drain(&self, deadline: Instant) {
        let i = &self.inner;
        i.tasks.close();
        if i.tasks.is_empty() {
            return;
        }
        info!(replies = i.tasks.len(), "waiting for webhook reply calls");
        if tokio::time::timeout_at(deadline, i.tasks.wait())
            .await
            .is_ok()
        {
            return;
        }
        for live in i.live().values() {
            let method = live.method.as_deref().unwrap_or("(body not read yet)");
            warn!(update_id = %crate::platform::update::LogId(live.update_id), %method, "stop timeout reached; webhook reply call abandoned: the backend's answer did not reach the platform");
        }
        i.abandon.cancel();
        i.tasks.wait().await;
    }
}

/// Parses a reply and makes its call, retrying what may succeed later.
async fn execute(
    inner: Arc<Inner>,
    entry: Entry,
    reply: ReadReply,
    update_id: Option<i64>,
    delivery: Option<SpanContext>,
) {
    let (fwd, stats) = (&inner.fwd, &inner.stats);
    // The permit is held (and with it the body's memory accounted for)
    // until the call is done.
    let ReadReply {
        content_type,
        body,
        permit: _permit,
    } = reply;
    let call = match super::parse(content_type.as_deref(), body, &inner.admitted) {
        Parsed::Nothing => return,
        Parsed::Ignored(method) => {
            stats::add(&stats.replies_ignored, 1);
            inner.emit(
                update_id,
                || None,
                Some(&method),
                Err(&"ignored: not executed from a reply"),
            );
            info!(
                update_id = %crate::platform::update::LogId(update_id),
                "webhook reply calls {method}, which is not executed from a reply; ignored"
            );
            return;
        }
        Parsed::Refused(method) => {
            stats::add(&stats.replies_refused, 1);
            inner.emit(
                update_id,
                || None,
                Some(&method),
                Err(&"not admitted by reply_methods"),
            );
            info!(update_id = %crate::platform::update::LogId(update_id), "webhook reply calls {method}, which reply_methods does not admit; not called (to allow it, add \"{method}\" to reply_methods of forward {fwd:?})");
            return;
        }
        Parsed::Invalid(why) => {
            stats::add(&stats.replies_failed, 1);
            inner.emit(update_id, || None, None, Err(&why));
            warn!(update_id = %crate::platform::update::LogId(update_id), "webhook reply not understood: {why}");
            return;
        }
        Parsed::Call(call) => call,
    };
    entry.set_method(&call.method);
    let Some(delivery) = delivery else {
        make_call(&inner, &call, update_id).await;
        return;
    };
    // Not the method's parameters: they are the backend's message to a
    // user. The URL holds the token, so it is never recorded either.
    let span = info_span!(
        target: TARGET,
        "reply",
        otel.kind = "client",
        method = %call.method,
        ok = Empty,
        attempts = Empty,
        error = Empty,
        otel.status_code = Empty,
    );
    crate::trace::set_parent(&span, &delivery);
    let (attempts, error) = make_call(&inner, &call, update_id)
        .instrument(span.clone())
        .await;
    span.record("ok", error.is_none());
    span.record("attempts", attempts);
    if let Some(error) = error {
        span.record("error", error.as_str());
        span.record("otel.status_code", "ERROR");
    }
}

/// Makes a reply's call, retrying what may succeed later; returns the
/// attempts made and, if it did not succeed in the end, why.
async fn make_call(inner: &Inner, call: &BotCall, update_id: Option<i64>) -> (u32, Option<String>) {
    let stats = &inner.stats;
    let emit = |result: Result<(), &dyn std::fmt::Display>| {
        inner.emit(
            update_id,
            || call.params.chat_id(),
            Some(&call.method),
            result,
        )
    };
    // The bot's one budget: gateway calls and replies share its limits.
    let ask = Ask::new(inner.budget.limits(), &call.method, call.params.chat_id());
    let mut slot = match inner
        .budget
        .acquire(&ask, Instant::now() + BUDGET_WAIT)
        .await
    {
        Ok(s) => s,
        Err(_) => {
            stats::add(&stats.replies_failed, 1);
            emit(Err(&NO_ROOM));
            warn!(update_id = %crate::platform::update::LogId(update_id), method = %call.method, "webhook reply call not made: the bot's rate limits had no room for it within {}s", BUDGET_WAIT.as_secs());
            return (0, Some(NO_ROOM.into()));
        }
    };
    let mut made = 0;
    let mut error = String::new();
    for attempt in 1..=REPLY_ATTEMPTS {
        made = attempt;
        match inner.api.call_with(&call.method, &call.params).await {
            Ok(_) => {
                stats::add(&stats.replies_ok, 1);
                emit(Ok(()));
                info!(update_id = %crate::platform::update::LogId(update_id), method = %call.method, "webhook reply executed");
                return (made, None);
            }
            Err(e) => {
                let retry = attempt < REPLY_ATTEMPTS && retryable(&e);
                error = e.to_string();
                warn!(update_id = %crate::platform::update::LogId(update_id), method = %call.method, attempt, "webhook reply call failed: {e}{}", if retry { "; retrying" } else { "" });
                if !retry {
                    emit(Err(&e));
                    break;
                }
                // The call keeps its place at the head of its chat, so a
                // later one of the same chat does not overtake it.
                match &e {
                    ApiError::RateLimited { retry_after } => {
                        slot.rate_limited(
                            (*retry_after).clamp(Duration::from_secs(1), Duration::from_secs(60)),
                        );
                    }
                    _ => {
                        slot.answered();
                        tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await
                    }
                }
                if slot.again(Instant::now() + BUDGET_WAIT).await.is_err() {
                    emit(Err(&NO_ROOM));
                    error = NO_ROOM.into();
                    warn!(update_id = %crate::platform::update::LogId(update_id), method = %call.method, "webhook reply call given up: the bot's rate limits had no room for it within {}s", BUDGET_WAIT.as_secs());
                    break;
                }
            }
        }
    }
    stats::add(&stats.replies_failed, 1);
    (made, Some(error))
}

/// Whether a failed reply call may succeed if made again: not when the
/// platform refused it (a bad request stays bad) or lacks the method.
fn retryable(e: &ApiError) -> bool {
    !matches!(
        e,
        ApiError::Rejected { .. } | ApiError::NotImplemented { .. } | ApiError::BadToken { .. }
    )
}
