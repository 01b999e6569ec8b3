//! The least time a set of calls can take under `FakeLimits`' windows: the
//! yardstick the gateway's flood test measures its pace against.

use std::time::Duration;

use super::fake_limits::{FakeLimits, Window};

/// One chat's calls, in the order they must be sent.
#[derive(Debug, Clone)]
pub struct ChatCalls {
    pub group: bool,
    /// When each call was asked for (from the start), in send order.
    pub released: Vec<Duration>,
}

/// When the last call could reach the platform at the earliest, sending
/// each chat's calls in order, none before it was asked for, and keeping
/// every window of `limits` (per chat, per group, per bot; without slack).
///
/// An event simulation: at every step the call that can go soonest goes;
/// on a tie, the chat with the most calls left (the longest job first,
/// which keeps the per-bot window from starving the chat that sets the
/// end). Latency is taken as zero.
pub fn min_schedule(chats: &[ChatCalls], limits: &FakeLimits) -> Duration {
    fastest_schedule(chats, limits)
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or_default()
}

/// The schedule `min_schedule` finds: when each chat's calls go, in order.
pub fn fastest_schedule(chats: &[ChatCalls], limits: &FakeLimits) -> Vec<Vec<Duration>> {
    let mut sent: Vec<Vec<Duration>> = vec![Vec::new(); chats.len()];
    let mut next: Vec<usize> = vec![0; chats.len()];
    let mut bot: Vec<Duration> = Vec::new();
    loop {
        let mut best: Option<(Duration, usize, usize)> = None;
        for (i, chat) in chats.iter().enumerate() {
            let Some(released) = chat.released.get(next[i]) else {
                continue;
            };
            let mut at = (*released).max(fits(&bot, &limits.per_bot));
            at = at.max(fits(&sent[i], &limits.per_chat));
            if chat.group {
                at = at.max(fits(&sent[i], &limits.per_group));
            }
            let left = chat.released.len() - next[i];
            let better = match best {
                None => true,
                Some((t, _, l)) => at < t || (at == t && left > l),
            };
            if better {
                best = Some((at, i, left));
            }
        }
        let Some((at, i, _)) = best else {
            return sent;
        };
        sent[i].push(at);
        bot.push(at);
        // Calls are placed in time order, so `bot` stays sorted.
        next[i] += 1;
    }
}

/// The earliest time after the calls `sent` (sorted) that one more fits
/// every window.
fn fits(sent: &[Duration], windows: &[Window]) -> Duration {
    windows
        .iter()
        .filter(|(n, _)| *n > 0 && sent.len() >= *n)
        .map(|(n, period)| sent[sent.len() - n] + *period)
        .max()
        .unwrap_or(Duration::ZERO)
}

#[test]
fn min_schedule_follows_each_window() {
    let secs = Duration::from_secs;
    let at_once = |n: usize, group: bool| ChatCalls {
        group,
        released: vec![Duration::ZERO; n],
    };
    let telegram = FakeLimits::telegram();
    // 3 per 3 s: the 7th call of a chat goes at 6 s.
    assert_eq!(min_schedule(&[at_once(7, false)], &telegram), secs(6));
    // 30 per second for the bot: 31 chats of one call, the last at 1 s.
    let many: Vec<ChatCalls> = (0..31).map(|_| at_once(1, false)).collect();
    assert_eq!(min_schedule(&many, &telegram), secs(1));
    // 20 per minute for a group whose per-chat window allows them all.
    let mut limits = FakeLimits::none();
    limits.per_group = vec![(20, secs(60))];
    assert_eq!(min_schedule(&[at_once(21, true)], &limits), secs(60));
    assert_eq!(min_schedule(&[at_once(21, false)], &limits), secs(0));
    // Nothing goes before it was asked for.
    let late = ChatCalls {
        group: false,
        released: vec![secs(2), secs(2)],
    };
    assert_eq!(min_schedule(&[late], &telegram), secs(2));
}
