//! Which bots this node leads: take the free ones it is preferred for,
//! keep them by renewing their leases, and stop each the moment its lease
//! cannot be trusted any more.
//!
//! One loop per node. Every tick it renews what it holds (every third of
//! the lease), says it is alive, and looks at the bucket: a free bot is
//! taken by the live node it is dealt to (`lease::preferred`), or by anyone once
//! it has stayed free for half a lease (its preferred node may be stuck).
//! Leading a bot means running what `start` returns until the lease is
//! lost, runs out, or the node stops; the bot's work checks its `Fence`
//! before every act, so a node that wakes from a pause finds it closed
//! before the loop has even run.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::fence::Fence;
use super::lease::{preferred, Held, LeaseError, Leases};

/// The work of leading one bot, as started by the caller: it runs until
/// `stop` is cancelled (or the fence closes) and then returns.
pub type BotWork = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts leading `bot`: given the fence and a token that says stop.
pub type Start = Arc<dyn Fn(&str, Fence, CancellationToken) -> BotWork + Send + Sync>;

struct Leading {
    held: Held,
    fence: Fence,
    stop: CancellationToken,
    work: tokio::task::JoinHandle<()>,
    renewed: Instant,
}

/// What a node sees of the cluster, for `/status` and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The bots this node leads now (see `leading_now`).
    pub leading: Vec<String>,
    /// Their fences: a node that wakes from a pause is fenced before its
    /// loop has run, and must not claim a bot meanwhile.
    pub fences: HashMap<String, Fence>,
    /// Every bot's holder, as the bucket said at the last look.
    pub holders: HashMap<String, String>,
    /// Live nodes.
    pub nodes: Vec<String>,
    /// Jobs waiting and dead letters per (bot, forward id), from the
    /// stream; the offsets from their bucket.
    pub depth: HashMap<(String, u32), u64>,
    pub dead: HashMap<(String, u32), u64>,
    pub offsets: HashMap<String, i64>,
}

impl Seen {
    /// The bots this node may act for at this instant.
    pub fn leading_now(&self) -> Vec<String> {
        self.leading
            .iter()
            .filter(|b| self.fences.get(*b).is_some_and(Fence::valid))
            .cloned()
            .collect()
    }
}

pub type Shared = Arc<std::sync::Mutex<Seen>>;

/// Runs the node's elections for `bots` until `shutdown`; then stops the
/// bots it leads and gives their leases back. `seen` shows, for `/status`,
/// which bots this node leads now and who leads the others.
pub async fn run(
    leases: Leases,
    bots: Vec<String>,
    start: Start,
    seen: Shared,
    shutdown: CancellationToken,
) {
    let leases = Arc::new(leases);
    let lease = leases.lease();
    let tick = (lease / 10).max(Duration::from_millis(100));
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut beats: HashMap<String, (u64, Instant)> = HashMap::new();
    let renew_every = lease / 3;
    let mut leading: HashMap<String, Leading> = HashMap::new();
    let mut free_since: HashMap<String, Instant> = HashMap::new();
    let mut beat = Instant::now() - renew_every;
    // Let the other nodes starting now say they are alive before the
    // first choice, so bots spread instead of going to the first one up.
    let mut settle = Some(Instant::now() + lease / 2);
    loop {
        let now = Instant::now();
        if now.duration_since(beat) >= renew_every {
            match leases.heartbeat().await {
                Ok(()) => beat = now,
                Err(e) => {
                    warn!(node = %leases.node(), "cluster: cannot say this node is alive: {e}")
                }
            }
        }
        renew_all(&leases, &mut leading, renew_every).await;
        reap(&mut leading).await;
        if settle.is_some_and(|t| now >= t) {
            settle = None;
        }
        let view = if settle.is_none() {
            take_free(&leases, &bots, &start, &mut leading, &mut free_since).await
        } else {
            None
        };
        if let Some(v) = &view {
            first_seen.retain(|n, _| v.nodes.contains(n));
            beats.retain(|n, _| v.nodes.contains(n));
            for n in &v.nodes {
                first_seen.entry(n.clone()).or_insert(now);
                let rev = v.beats.get(n).copied().unwrap_or(0);
                let b = beats.entry(n.clone()).or_insert((rev, now));
                if b.0 != rev {
                    *b = (rev, now);
                }
            }
            // Alive: beating for two leases, and its last beat fresh (a
            // node cut off keeps its key until it expires; its bots must
            // not be handed back to it meanwhile).
            let steady: Vec<String> = v
                .nodes
                .iter()
                .filter(|n| {
                    first_seen.get(*n).is_some_and(|t| t.elapsed() >= lease * 2)
                        && beats.get(*n).is_some_and(|(_, t)| t.elapsed() < lease / 2)
                })
                .cloned()
                .collect();
            hand_over_extra(&leases, &bots, v, &steady, &mut leading);
        }
        {
            let mut now: Vec<String> = leading.keys().cloned().collect();
            now.sort();
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.leading = now;
            seen.fences = leading
                .iter()
                .map(|(b, l)| (b.clone(), l.fence.clone()))
                .collect();
            if let Some(v) = view {
                seen.holders = v.holders;
                seen.nodes = v.nodes;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    // Gone from the live nodes first, so the others choose among
    // themselves for the bots given back next.
    let _ = leases.leave().await;
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .leading
        .clear();
    // Every bot stops at once (each drains its deliveries within the stop
    // timeout), then each lease is given back.
    let stopping: Vec<(String, Leading)> = leading.drain().collect();
    for (_, l) in &stopping {
        l.stop.cancel();
    }
    for (bot, l) in stopping {
        // Bounded: a bot's work drains within the stop timeout, but a
        // store call stuck on NATS must not hold the whole stop.
        if tokio::time::timeout(Duration::from_secs(15), l.work)
            .await
            .is_err()
        {
            warn!(
                bot,
                "cluster: the bot's work did not stop in time; leaving it"
            );
        }
        l.fence.close();
        match leases.release(&l.held).await {
            Ok(()) => info!(bot, "cluster: gave the lease back"),
            Err(e) => warn!(
                bot,
                "cluster: cannot give the lease back ({e}); it runs out by itself"
            ),
        }
    }
}

/// Renews each lease due, and stops leading any that is lost or can no
/// longer be trusted.
async fn renew_all(leases: &Leases, leading: &mut HashMap<String, Leading>, every: Duration) {
    // All at once: each call is bounded, and one slow answer must not make
    // the others late.
    // Only while the fence holds: a renewal sent later could reach the
    // server just before the key expires and be applied after another
    // node's take (nats-server before 2.9.21 checks the revision before the
    // write is agreed on), reviving a lease that has passed on. A third of
    // the lease separates the fence's end from the key's expiry.
    let due: Vec<(String, Held)> = leading
        .iter()
        .filter(|(_, l)| l.renewed.elapsed() >= every && l.fence.valid())
        .map(|(b, l)| (b.clone(), l.held.clone()))
        .collect();
    let results =
        futures_util::future::join_all(due.into_iter().map(|(bot, mut held)| async move {
            let sent = Instant::now();
            let r = leases.renew(&mut held).await;
            (bot, held, sent, r)
        }))
        .await;
    let mut gone = Vec::new();
    for (bot, held, sent, result) in results {
        let Some(l) = leading.get_mut(&bot) else {
            continue;
        };
        match result {
            Ok(()) => {
                l.held = held;
                l.renewed = sent;
                l.fence.extend(l.held.valid_until());
            }
            Err(LeaseError::Lost(_)) => {
                warn!(bot = %bot, "cluster: another node holds the lease now; stepping down");
                gone.push(bot);
            }
            Err(e) => warn!(bot = %bot, "cluster: cannot renew the lease: {e}"),
        }
    }
    for (bot, l) in leading.iter() {
        if !l.fence.valid() && !gone.contains(bot) {
            warn!(bot = %bot, "cluster: the lease could not be renewed in time; stepping down before it can pass to another node");
            gone.push(bot.clone());
        }
    }
    for bot in gone {
        if let Some(l) = leading.remove(&bot) {
            l.fence.close();
            l.stop.cancel();
            // Not awaited here: the fence already stops every act, and the
            // loop must keep renewing the other bots meanwhile.
            tokio::spawn(async move {
                let _ = l.work.await;
            });
        }
    }
}

/// Gives back bots beyond this node's fair share whose dealt node has
/// been alive a while, so nodes that joined late (or came back) get their
/// share: without it the first node up would keep every bot it took. One
/// handover per bot: a short pause, like a graceful stop's.
fn hand_over_extra(
    leases: &Arc<Leases>,
    bots: &[String],
    view: &super::lease::View,
    steady: &[String],
    leading: &mut HashMap<String, Leading>,
) {
    if view.nodes.is_empty() {
        return;
    }
    // Shared among the nodes that are certainly up (and this one).
    let mut up: Vec<&str> = steady.iter().map(String::as_str).collect();
    if !up.contains(&leases.node()) {
        up.push(leases.node());
    }
    let fair = bots.len().div_ceil(up.len());
    let mut extra = leading.len().saturating_sub(fair);
    let mut mine: Vec<String> = leading.keys().cloned().collect();
    mine.sort();
    for bot in mine {
        if extra == 0 {
            break;
        }
        let Some(to) = preferred(&bot, bots, &view.nodes) else {
            continue;
        };
        if to == leases.node() || !steady.iter().any(|n| n == to) {
            continue;
        }
        let Some(l) = leading.remove(&bot) else {
            continue;
        };
        extra -= 1;
        info!(bot = %bot, to, "cluster: handing this bot over to the node it is dealt to");
        l.fence.close();
        l.stop.cancel();
        let leases = leases.clone();
        tokio::spawn(async move {
            let _ = l.work.await;
            if let Err(e) = leases.release(&l.held).await {
                warn!(bot = %l.held.bot, "cluster: cannot give the lease back ({e}); it runs out by itself");
            }
        });
    }
}

/// Forgets bots whose work ended by itself (it failed): their leases are
/// given back so another node can try.
async fn reap(leading: &mut HashMap<String, Leading>) {
    let ended: Vec<String> = leading
        .iter()
        .filter(|(_, l)| l.work.is_finished())
        .map(|(b, _)| b.clone())
        .collect();
    for bot in ended {
        if let Some(l) = leading.remove(&bot) {
            l.fence.close();
            warn!(
                bot,
                "cluster: leading this bot stopped by itself; its lease runs out for another node"
            );
        }
    }
}

async fn take_free(
    leases: &Leases,
    bots: &[String],
    start: &Start,
    leading: &mut HashMap<String, Leading>,
    free_since: &mut HashMap<String, Instant>,
) -> Option<super::lease::View> {
    let view = match leases.view(bots).await {
        Ok(v) => v,
        Err(e) => {
            warn!(node = %leases.node(), "cluster: cannot read the leases: {e}");
            return None;
        }
    };
    let now = Instant::now();
    let patience = leases.lease() / 2;
    for bot in bots {
        if leading.contains_key(bot) || view.holders.contains_key(bot) {
            free_since.remove(bot);
            continue;
        }
        let since = *free_since.entry(bot.clone()).or_insert(now);
        let mine = preferred(bot, bots, &view.nodes) == Some(leases.node());
        if !mine && now.duration_since(since) < patience {
            continue;
        }
        match leases.try_take(bot).await {
            Ok(Some(held)) => {
                info!(bot = %bot, revision = held.revision, "cluster: leading this bot");
                free_since.remove(bot);
                let fence = Fence::new(held.valid_until());
                let stop = CancellationToken::new();
                let work = tokio::spawn(start(bot, fence.clone(), stop.clone()));
                leading.insert(
                    bot.clone(),
                    Leading {
                        held,
                        fence,
                        stop,
                        work,
                        renewed: Instant::now(),
                    },
                );
            }
            Ok(None) => {}
            Err(e) => warn!(bot = %bot, "cluster: cannot take the lease: {e}"),
        }
    }
    Some(view)
}
