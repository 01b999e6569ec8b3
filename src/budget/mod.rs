//! One rate budget per bot for every call that spends the platform's limits:
//! gateway calls from any backend and webhook replies alike.
//!
//! A call asks for a slot and waits until every limit it falls under allows
//! it: its chat's (and group's) windows if it sends into a chat, and the
//! bot's windows always. Calls of one chat wait in a FIFO and go one at a
//! time, so a chat's calls reach the platform in the order they came; calls
//! of different chats go in arrival order as the bot's windows allow.
//! Calls the platform expires within seconds (answering a callback or
//! inline query) go ahead of everything waiting.
//!
//! A 429 the platform answers anyway pauses exactly the scope of the call
//! (its chat, or the whole bot for a call that names no chat) and the
//! holder of the slot may wait for it again at the head of its lane.
//!
//! Bounded: at most `max_queued` calls wait per bot; each waits until its
//! own deadline. Past either, the caller gets an [`Overflow`] with an
//! estimate of when to try again.

mod window;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::platform::flavor::Flavor;
use crate::policy::methods::MethodSet;
use crate::stats::{self, Histogram, WAIT_BOUNDS};
use std::sync::atomic::AtomicU64;
use window::Logs;
pub use window::Window;

/// A bot's limits; see [`Limits::for_flavor`] for each platform's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub per_chat: Vec<Window>,
    /// On top of `per_chat`, for chats whose id is a negative number.
    pub per_group: Vec<Window>,
    /// Every call of the bot counts here.
    pub per_bot: Vec<Window>,
    /// The calls `per_chat` and `per_group` count: those that post into a
    /// chat. Other calls naming a chat still keep its order.
    pub chat_methods: MethodSet,
}

/// Methods the platform expires within seconds: they go first.
const URGENT: &[&str] = &[
    "answerCallbackQuery",
    "answerInlineQuery",
    "answerPreCheckoutQuery",
    "answerShippingQuery",
];

pub fn is_urgent(method: &str) -> bool {
    URGENT.iter().any(|m| m.eq_ignore_ascii_case(method))
}

impl Limits {
    /// Each platform's documented limits. Telegram: about one message a
    /// second per chat with short bursts, 20 a minute per group, about 30
    /// a second in all. WWChat documents 30 requests a second per bot and
    /// 1 a second, 20 a minute per chat on the methods it names. MPChat
    /// documents 30 requests a second per token only.
    pub fn for_flavor(flavor: Flavor) -> Limits {
        let s = Duration::from_secs;
        let messages = MethodSet::parse(&[
            "send*",
            "!sendChatAction",
            "forwardMessage*",
            "copyMessage*",
        ])
        .expect("valid patterns");
        match flavor {
            Flavor::Telegram => Limits {
                per_chat: vec![Window::new(3, s(3))],
                per_group: vec![Window::new(20, s(60))],
                per_bot: vec![Window::new(30, s(1))],
                chat_methods: messages,
            },
            Flavor::MpChat => Limits {
                per_chat: vec![],
                per_group: vec![],
                per_bot: vec![Window::new(30, s(1))],
                chat_methods: messages,
            },
            Flavor::WwChat => Limits {
                per_chat: vec![Window::new(1, s(1)), Window::new(20, s(60))],
                per_group: vec![],
                per_bot: vec![Window::new(30, s(1))],
                chat_methods: MethodSet::parse(&[
                    "sendMessage",
                    "sendDocument",
                    "sendPhoto",
                    "sendVoice",
                    "sendInvoice",
                ])
                .expect("valid patterns"),
            },
        }
    }
}

/// What a call needs from the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The chat the call names (`chat_id`), as text.
    pub chat: Option<String>,
    /// Whether it counts against the chat's limits (a message it posts).
    pub counted: bool,
    /// Whether it goes ahead of everything waiting.
    pub urgent: bool,
}

impl Ask {
    pub fn new(limits: &Limits, method: &str, chat: Option<String>) -> Ask {
        let urgent = is_urgent(method);
        Ask {
            counted: chat.is_some() && limits.chat_methods.allows(method),
            chat: if urgent { None } else { chat },
            urgent,
        }
    }
}

/// Why a call gets no slot; `retry_after` is an estimate of when the
/// scope it waited for has room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_queued` calls already wait for this bot.
    Full { retry_after: Duration },
    /// Its deadline passed while it waited.
    Waited { retry_after: Duration },
}

impl Overflow {
    /// Whole seconds, at least one: what a 429's `retry_after` says.
    pub fn retry_after_secs(&self) -> u64 {
        let (Overflow::Full { retry_after } | Overflow::Waited { retry_after }) = *self;
        retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// A bot's budget. Dropping it ends its scheduler.
pub struct Budget {
    shared: Arc<Shared>,
    /// 429s the platform answered to this bot's calls anyway.
    pub rate_limited: Arc<AtomicU64>,
    /// How long calls waited for a slot.
    pub waited: Histogram,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    limits: Limits,
    max_queued: usize,
}

/// Where a call waits: a chat's lane, or the lane of calls naming none
/// (which keeps no order and runs any number at once), or the urgent one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Chat(String),
    NoChat,
    Urgent,
}

struct Waiter {
    seq: u64,
    counted: bool,
    /// The slot's holder waiting again after a 429: its lane is already
    /// its own.
    resumes: bool,
    tx: oneshot::Sender<u64>,
}

struct Lane {
    waiting: VecDeque<Waiter>,
    /// One call of a chat at a time, so its calls arrive in order.
    exclusive: bool,
    busy: bool,
    logs: Logs,
    paused_until: Option<Instant>,
}

struct State {
    next_seq: u64,
    lanes: HashMap<LaneKey, Lane>,
    bot: Logs,
    bot_paused_until: Option<Instant>,
    queued: usize,
    closed: bool,
}

impl Budget {
    pub fn new(limits: Limits, max_queued: usize) -> Budget {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_seq: 0,
                lanes: HashMap::new(),
                bot: Logs::new(&limits.per_bot),
                bot_paused_until: None,
                queued: 0,
                closed: false,
            }),
            wake: Notify::new(),
            limits,
            max_queued: max_queued.max(1),
        });
        tokio::spawn(schedule(shared.clone()));
        Budget {
            rate_limited: Arc::new(AtomicU64::new(0)),
            waited: Histogram::new(WAIT_BOUNDS),
            shared,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Waits for a slot until `deadline`. The slot is the call's until it
    /// is dropped, which should be when the platform's answer is in.
    pub async fn acquire(&self, ask: &Ask, deadline: Instant) -> Result<Slot, Overflow> {
        let key = if ask.urgent {
            LaneKey::Urgent
        } else {
            match &ask.chat {
                Some(c) => LaneKey::Chat(c.clone()),
                None => LaneKey::NoChat,
            }
        };
        let (seq, rx);
        {
            let mut st = self.shared.lock();
            if st.queued >= self.shared.max_queued {
                let retry_after = st.drain_estimate(&self.shared.limits);
                return Err(Overflow::Full { retry_after });
            }
            (seq, rx) = st.enqueue(&key, &self.shared.limits, ask.counted, false);
        }
        self.shared.wake.notify_one();
        let mut slot = Slot {
            shared: self.shared.clone(),
            rate_limited: self.rate_limited.clone(),
            key,
            counted: ask.counted,
            call: None,
            holds: false,
        };
        let started = Instant::now();
        let got = slot.wait(seq, rx, deadline).await;
        self.waited.observe(started.elapsed());
        got.map(|()| slot)
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// A call's right to go now; dropping it marks the call answered.
pub struct Slot {
    shared: Arc<Shared>,
    rate_limited: Arc<AtomicU64>,
    key: LaneKey,
    counted: bool,
    /// The id its windows know the call in flight by.
    call: Option<u64>,
    /// Whether it holds its lane (granted at least once).
    holds: bool,
}

impl Slot {
    /// The platform answered 429: pauses the call's scope for
    /// `retry_after`; [`Slot::again`] then waits it out.
    pub fn rate_limited(&mut self, retry_after: Duration) {
        stats::add(&self.rate_limited, 1);
        let until = Instant::now() + retry_after;
        let shared = self.shared.clone();
        let mut st = shared.lock();
        self.finish(&mut st);
        match &self.key {
            LaneKey::Chat(_) => {
                if let Some(lane) = st.lanes.get_mut(&self.key) {
                    lane.paused_until = lane.paused_until.max(Some(until));
                }
            }
            LaneKey::NoChat | LaneKey::Urgent => {
                st.bot_paused_until = st.bot_paused_until.max(Some(until));
            }
        }
    }

    /// The call was answered (and will be made again later): its place in
    /// the windows is dated now, while the slot keeps its chat's turn.
    pub fn answered(&mut self) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        self.finish(&mut st);
        drop(st);
        shared.wake.notify_one();
    }

    /// Waits again, at the head of its lane, for the limits to allow the
    /// call (after a 429), until `deadline`.
    pub async fn again(&mut self, deadline: Instant) -> Result<(), Overflow> {
        let (seq, rx);
        {
            let shared = self.shared.clone();
            let mut st = shared.lock();
            self.finish(&mut st);
            (seq, rx) = st.enqueue(&self.key, &shared.limits, self.counted, true);
        }
        self.shared.wake.notify_one();
        self.wait(seq, rx, deadline).await
    }

    async fn wait(
        &mut self,
        seq: u64,
        rx: oneshot::Receiver<u64>,
        deadline: Instant,
    ) -> Result<(), Overflow> {
        // Dropped (the caller gave up) or timed out: the waiter leaves its
        // lane, or, if granted meanwhile, the slot keeps what it got.
        let mut leave = Leave {
            slot: self,
            seq,
            rx,
            armed: true,
        };
        let got = tokio::time::timeout_at(deadline, &mut leave.rx).await;
        leave.armed = false;
        let call = match got {
            Ok(Ok(call)) => call,
            Ok(Err(_)) | Err(_) => {
                let mut st = leave.slot.shared.lock();
                if st.remove(&leave.slot.key, seq) {
                    let retry_after = st.lane_estimate(&leave.slot.key, &leave.slot.shared.limits);
                    drop(st);
                    // What waited behind it may go now.
                    leave.slot.shared.wake.notify_one();
                    return Err(Overflow::Waited { retry_after });
                }
                drop(st);
                // Granted just as time ran out: take it.
                match leave.rx.try_recv() {
                    Ok(call) => call,
                    Err(_) => {
                        return Err(Overflow::Waited {
                            retry_after: Duration::from_secs(1),
                        })
                    }
                }
            }
        };
        leave.slot.call = Some(call);
        leave.slot.holds = true;
        Ok(())
    }

    fn finish(&mut self, st: &mut State) {
        if let Some(id) = self.call.take() {
            let now = Instant::now();
            st.bot.finish(id, now);
            if let Some(lane) = st.lanes.get_mut(&self.key) {
                lane.logs.finish(id, now);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        self.finish(&mut st);
        if self.holds {
            if let Some(lane) = st.lanes.get_mut(&self.key) {
                lane.busy = false;
            }
        }
        drop(st);
        self.shared.wake.notify_one();
    }
}

/// Takes a waiter out of its lane if its wait is abandoned mid-way.
struct Leave<'a> {
    slot: &'a mut Slot,
    seq: u64,
    rx: oneshot::Receiver<u64>,
    armed: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.slot.shared.lock();
        if st.remove(&self.slot.key, self.seq) {
            drop(st);
            self.slot.shared.wake.notify_one();
        } else {
            drop(st);
            // Granted, but nobody will make the call: the slot releases
            // the grant when it drops, as if answered at once.
            if let Ok(call) = self.rx.try_recv() {
                self.slot.call = Some(call);
            }
            self.slot.holds = true;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lane {
    fn new(key: &LaneKey, limits: &Limits) -> Lane {
        let logs = match key {
            LaneKey::Chat(chat) => {
                let mut windows = limits.per_chat.clone();
                if is_group(chat) {
                    windows.extend(&limits.per_group);
                }
                Logs::new(&windows)
            }
            LaneKey::NoChat | LaneKey::Urgent => Logs::default(),
        };
        Lane {
            waiting: VecDeque::new(),
            exclusive: matches!(key, LaneKey::Chat(_)),
            busy: false,
            logs,
            paused_until: None,
        }
    }
}

/// Groups, supergroups and channels have negative ids on Telegram; a
/// public one may be named `@username`.
fn is_group(chat: &str) -> bool {
    chat.starts_with('@')
        || chat
            .strip_prefix('-')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Puts a call in its lane: at the back, or (the slot's holder after a
    /// 429) at the front.
    fn enqueue(
        &mut self,
        key: &LaneKey,
        limits: &Limits,
        counted: bool,
        resumes: bool,
    ) -> (u64, oneshot::Receiver<u64>) {
        let seq = self.seq();
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            seq,
            counted,
            resumes,
            tx,
        };
        let lane = self
            .lanes
            .entry(key.clone())
            .or_insert_with(|| Lane::new(key, limits));
        if resumes {
            lane.waiting.push_front(waiter);
        } else {
            lane.waiting.push_back(waiter);
        }
        self.queued += 1;
        (seq, rx)
    }

    /// Takes a waiter out; false if it is not waiting (granted).
    fn remove(&mut self, key: &LaneKey, seq: u64) -> bool {
        let Some(lane) = self.lanes.get_mut(key) else {
            return false;
        };
        let Some(i) = lane.waiting.iter().position(|w| w.seq == seq) else {
            return false;
        };
        lane.waiting.remove(i);
        self.queued -= 1;
        true
    }

    /// Grants every call the limits allow now; returns when to look again
    /// (None: only when something changes).
    fn pump(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        // None: every bot-wide slot is in flight, and an answer wakes us.
        while let Some(free) = self.bot.next_free(now) {
            let bot_at = free.max(self.bot_paused_until.unwrap_or(now));
            if bot_at > now {
                if self.queued > 0 {
                    soonest(bot_at);
                }
                break;
            }
            // The eligible head with the lowest sequence number; the
            // urgent lane's head beats any other.
            let mut best: Option<(bool, u64, LaneKey)> = None;
            for (key, lane) in self.lanes.iter_mut() {
                while lane.waiting.front().is_some_and(|w| w.tx.is_closed()) {
                    lane.waiting.pop_front();
                    self.queued -= 1;
                }
                let Some(head) = lane.waiting.front() else {
                    continue;
                };
                if lane.exclusive && lane.busy && !head.resumes {
                    continue;
                }
                let mut at = lane.paused_until.unwrap_or(now).max(now);
                if head.counted {
                    match lane.logs.next_free(now) {
                        Some(t) => at = at.max(t),
                        None => continue,
                    }
                }
                if at > now {
                    soonest(at);
                    continue;
                }
                let rank = (*key != LaneKey::Urgent, head.seq, key.clone());
                if best.as_ref().is_none_or(|b| (rank.0, rank.1) < (b.0, b.1)) {
                    best = Some(rank);
                }
            }
            let Some((_, _, key)) = best else { break };
            let call = self.seq();
            let lane = self.lanes.get_mut(&key).expect("lane just seen");
            let waiter = lane.waiting.pop_front().expect("head just seen");
            self.queued -= 1;
            if waiter.tx.send(call).is_err() {
                continue;
            }
            if waiter.counted {
                lane.logs.start(call);
            }
            if lane.exclusive {
                lane.busy = true;
            }
            self.bot.start(call);
        }
        // Lanes with nothing left to remember go, so memory follows the
        // chats active within the longest window, not all chats ever seen.
        self.lanes.retain(|_, lane| {
            !lane.waiting.is_empty()
                || lane.busy
                || lane.paused_until.is_some_and(|t| t > now)
                || !lane.logs.idle(now)
        });
        next
    }

    /// How long the calls waiting now need at the bot's pace.
    fn drain_estimate(&self, limits: &Limits) -> Duration {
        let per_call = limits
            .per_bot
            .iter()
            .map(Window::interval)
            .max()
            .unwrap_or_default();
        per_call * self.queued as u32
    }

    /// How long a call joining `key`'s lane would wait, roughly.
    fn lane_estimate(&self, key: &LaneKey, limits: &Limits) -> Duration {
        let now = Instant::now();
        let Some(lane) = self.lanes.get(key) else {
            return Duration::from_secs(1);
        };
        let paused = lane
            .paused_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let per_call = lane.logs.interval().max(
            limits
                .per_bot
                .iter()
                .map(Window::interval)
                .max()
                .unwrap_or_default(),
        );
        paused + per_call * (lane.waiting.len() as u32 + 1)
    }
}

async fn schedule(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            st.pump(Instant::now())
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests;
