//! Rate limits the fake Bot API enforces like a platform does: sliding
//! windows per chat, per group and per bot, answered with 429 and
//! `retry_after` when a call would exceed one, plus one-shot 429s a test
//! injects for a chat. The fake's `dispatch` asks `Limiter::admit` first for
//! every method but getUpdates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `n` calls at most in any window of `period`.
pub type Window = (usize, Duration);

/// What the fake enforces for one bot.
#[derive(Debug, Clone)]
pub struct FakeLimits {
    /// Per chat, for the methods `chat_methods` admits.
    pub per_chat: Vec<Window>,
    /// On top of `per_chat`, for chats whose id is a negative integer.
    pub per_group: Vec<Window>,
    /// Every method but getUpdates.
    pub per_bot: Vec<Window>,
    /// Which methods per_chat and per_group count: names with `*`
    /// wildcards, `!` to exclude, any case.
    pub chat_methods: Vec<String>,
    /// The fake sees when a call *arrived*, the client knows when it *sent*
    /// it: 30 calls sent at one instant arrive spread over milliseconds. A
    /// window here is this much shorter than its period, so a client that
    /// keeps the limit by its own clock is not refused for that spread,
    /// while one that ignores a limit (off by a whole call's spacing) still
    /// is. Measured with `fake_limits_never_refuse_a_client_that_keeps_them`
    /// (windows / 10): 85-89 of 300 calls refused at 0 ms, 15-45 at 2 ms,
    /// 27-33 at 5 ms, none at 10 ms; 50 ms (5 % of Telegram's shortest
    /// window) leaves room for a loaded CI machine.
    pub slack: Duration,
}

impl FakeLimits {
    /// Telegram's documented limits, as pollhook's telegram flavor defaults
    /// them: 3 per 3 s per chat, 20 per minute per group, 30 per second per bot.
    pub fn telegram() -> FakeLimits {
        FakeLimits {
            per_chat: vec![(3, Duration::from_secs(3))],
            per_group: vec![(20, Duration::from_secs(60))],
            per_bot: vec![(30, Duration::from_secs(1))],
            chat_methods: [
                "send*",
                "!sendChatAction",
                "forwardMessage*",
                "copyMessage*",
            ]
            .map(String::from)
            .to_vec(),
            slack: Duration::from_millis(50),
        }
    }

    /// No window at all (set the scopes a test needs).
    pub fn none() -> FakeLimits {
        FakeLimits {
            per_chat: Vec::new(),
            per_group: Vec::new(),
            per_bot: Vec::new(),
            ..FakeLimits::telegram()
        }
    }

    fn counts_for_chat(&self, method: &str) -> bool {
        let (excluded, included): (Vec<&String>, Vec<&String>) =
            self.chat_methods.iter().partition(|p| p.starts_with('!'));
        included.iter().any(|p| glob(p, method)) && !excluded.iter().any(|p| glob(&p[1..], method))
    }

    fn longest(&self) -> Duration {
        self.per_chat
            .iter()
            .chain(&self.per_group)
            .chain(&self.per_bot)
            .map(|(_, period)| *period)
            .max()
            .unwrap_or_default()
    }
}

/// Case-insensitive match of `name` against `pattern`, where `*` matches
/// any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    let mut parts = p.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = n.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A bot's limit state inside the fake (a field of its `Bot`).
#[derive(Debug, Default)]
pub(super) struct Limiter {
    limits: Option<FakeLimits>,
    /// Arrival times of the calls each scope counted, sorted.
    bot: Vec<Instant>,
    chats: HashMap<String, Vec<Instant>>,
    /// chat -> retry_after of a 429 injected for its next call.
    injected: HashMap<String, u64>,
    /// chat -> until when an injected 429 keeps refusing it, as a platform
    /// does after it told a client to wait.
    paused: HashMap<String, Instant>,
    rate_limited: usize,
}

impl Limiter {
    /// Replaces the limits and forgets the calls counted so far (a test
    /// sets limits before the traffic they are meant for).
    pub(super) fn enforce(&mut self, limits: FakeLimits) {
        self.limits = Some(limits);
        self.bot.clear();
        self.chats.clear();
    }

    pub(super) fn inject_chat_429(&mut self, chat: &str, retry_after: u64) {
        self.injected.insert(chat.to_owned(), retry_after);
    }

    pub(super) fn rate_limited(&self) -> usize {
        self.rate_limited
    }

    /// Counts a call that arrived `at`, or refuses it: `Err(retry_after)`
    /// in whole seconds (at least 1). A refused call is counted in no window.
    pub(super) fn admit(&mut self, method: &str, params: &Value, at: Instant) -> Result<(), u64> {
        let chat = chat_key(params);
        if let Some(chat) = &chat {
            if let Some(secs) = self.injected.remove(chat) {
                self.paused
                    .insert(chat.clone(), at + Duration::from_secs(secs));
                self.rate_limited += 1;
                return Err(secs);
            }
            if let Some(until) = self.paused.get(chat).copied() {
                if at < until {
                    self.rate_limited += 1;
                    return Err(whole_secs(until - at));
                }
                self.paused.remove(chat);
            }
        }
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let chat = chat.filter(|_| limits.counts_for_chat(method));
        let mut wait = Duration::ZERO;
        let mut check = |times: &[Instant], windows: &[Window]| {
            for &(n, period) in windows {
                let period = period.saturating_sub(limits.slack);
                if let Some(w) = over(times, at, n, period) {
                    wait = wait.max(w);
                }
            }
        };
        check(&self.bot, &limits.per_bot);
        if let Some(chat) = &chat {
            let times = self.chats.get(chat).map(Vec::as_slice).unwrap_or(&[]);
            check(times, &limits.per_chat);
            if is_group(chat) {
                check(times, &limits.per_group);
            }
        }
        if !wait.is_zero() {
            self.rate_limited += 1;
            return Err(whole_secs(wait));
        }
        let keep_after = at.checked_sub(limits.longest() + Duration::from_secs(1));
        insert(&mut self.bot, at, keep_after);
        if let Some(chat) = chat {
            insert(self.chats.entry(chat).or_default(), at, keep_after);
        }
        Ok(())
    }
}

/// If a call at `at` would put more than `n` calls into some window of
/// `period` among the sorted `times`, how long after `at` it would fit.
/// Calls may be checked out of arrival order (concurrent requests), so
/// every window that contains `at` is checked, not only the one ending there.
fn over(times: &[Instant], at: Instant, n: usize, period: Duration) -> Option<Duration> {
    if n == 0 {
        return Some(period.max(Duration::from_secs(1)));
    }
    let pos = times.partition_point(|t| *t <= at);
    let with = |i: usize| -> Instant {
        match i.cmp(&pos) {
            std::cmp::Ordering::Less => times[i],
            std::cmp::Ordering::Equal => at,
            std::cmp::Ordering::Greater => times[i - 1],
        }
    };
    let len = times.len() + 1;
    // Windows of n + 1 consecutive calls that include the new one.
    let violated = (pos.saturating_sub(n)..=pos)
        .filter(|&first| first + n < len)
        .any(|first| with(first + n).duration_since(with(first)) < period);
    if !violated {
        return None;
    }
    // The call fits once the n-th most recent call before it leaves the
    // window (for calls checked in order, which is what a retry is).
    let fits_at = if pos >= n {
        times[pos - n] + period
    } else {
        at + period
    };
    // At least a moment: a window broken only by calls that arrived after
    // this one still refuses it.
    Some(
        fits_at
            .saturating_duration_since(at)
            .max(Duration::from_millis(1)),
    )
}

fn insert(times: &mut Vec<Instant>, at: Instant, keep_after: Option<Instant>) {
    if let Some(keep_after) = keep_after {
        let old = times.partition_point(|t| *t < keep_after);
        times.drain(..old);
    }
    let pos = times.partition_point(|t| *t <= at);
    times.insert(pos, at);
}

/// Seconds to announce in `retry_after`: rounded up, at least 1.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The chat a call names, the same for `42` and `"42"`.
fn chat_key(params: &Value) -> Option<String> {
    match params.get("chat_id")? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// A group (or channel) is a chat whose id is a negative integer.
fn is_group(chat: &str) -> bool {
    chat.parse::<i64>().is_ok_and(|id| id < 0)
}

#[test]
fn glob_matches_like_chat_methods() {
    assert!(glob("send*", "sendMessage"));
    assert!(glob("send*", "SENDPHOTO"));
    assert!(!glob("send*", "forwardMessage"));
    assert!(glob("delete*Message*", "deleteMessages"));
    assert!(glob("sendMessage", "sendmessage"));
    assert!(!glob("sendMessage", "sendMessages"));
    let telegram = FakeLimits::telegram();
    assert!(telegram.counts_for_chat("sendDocument"));
    assert!(telegram.counts_for_chat("copyMessages"));
    assert!(!telegram.counts_for_chat("sendChatAction"));
    assert!(!telegram.counts_for_chat("answerCallbackQuery"));
}

#[test]
fn a_window_refuses_the_call_too_many_whatever_the_arrival_order() {
    let t0 = Instant::now();
    let s = |ms: u64| t0 + Duration::from_millis(ms);
    let period = Duration::from_millis(1000);
    // 2 per second: a third inside the window waits for the oldest to leave.
    assert_eq!(
        over(&[s(0), s(100)], s(200), 2, period),
        Some(Duration::from_millis(800))
    );
    assert_eq!(over(&[s(0), s(100)], s(1000), 2, period), None);
    // Checked before a later arrival already counted: still too many.
    assert!(over(&[s(0), s(300)], s(200), 2, period).is_some());
    // Windows either side of an early call are fine.
    assert_eq!(over(&[s(0), s(2500)], s(1200), 2, period), None);
}
