//! Replays: queuing updates from a bot's history again, for one forward or
//! for the forwards each update went to. A replay reads history in the
//! order it was received and queues it in chunks; each chunk and the
//! replay's cursor are written in one atomic store batch (store/requeue.rs),
//! so memory stays bounded by a chunk and a replay interrupted by a crash
//! resumes at the next start exactly where it stopped.
//!
//! Between the stages and operations: it reads `history` and writes to the
//! `store`; the admin API, the command line and the relay's start call it.

mod progress;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{error, info};

use crate::clock::now_ms;
use crate::history::query::{Cursor, Filter, Scan};
use crate::history::record::{Received, Record};
use crate::history::History;
use crate::platform::update::{Lane, Update};
use crate::policy::routing;
use crate::store::{Requeue, Store, StoreError};
pub use progress::{Progress, Snapshot};

/// Updates queued per store batch: a chunk's payloads are all a replay
/// holds in memory (at most ~1 MiB more, see `CHUNK_BYTES`).
const CHUNK: usize = 1000;
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("bot {0:?} is not configured")]
    UnknownBot(String),
    #[error("bot {0:?} keeps no history (history = \"0s\")")]
    NoHistory(String),
    #[error("bot {bot:?} has no forward {forward:?}")]
    UnknownForward { bot: String, forward: String },
    #[error("update {update_id} is not in bot {bot:?}'s history")]
    NotFound { bot: String, update_id: i64 },
    #[error("cannot read history: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A configured forward, as a replay sees it.
#[derive(Clone)]
pub struct Target {
    pub id: u32,
    pub name: String,
    /// Which updates it wants (applied by `start_from = "history"`; an
    /// operator's replay to a named forward sends what was asked for).
    pub filter: routing::Filter,
    pub wake: Arc<Notify>,
}

/// What a replay is, as persisted with its progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub bot: String,
    /// The forwards asked for; None: each update's own forwards.
    pub forwards: Option<Vec<String>>,
    pub filter: Filter,
    /// Apply the forwards' own filters (a new forward starting from history).
    #[serde(default)]
    pub routed: bool,
    /// When it was asked for: every job it queues carries this as its
    /// replay time (the `x-pollhook-replay` header).
    pub replayed_ms: u64,
    pub cursor: Option<Cursor>,
    pub matched: u64,
    pub queued: u64,
}

/// What a dry run found.
#[derive(Debug, Default, Serialize)]
pub struct DryRun {
    pub matched: u64,
    pub kinds: std::collections::BTreeMap<String, u64>,
    pub first_at: Option<u64>,
    pub last_at: Option<u64>,
    pub forwards: Vec<String>,
}

/// Every replay of this process, and what they need.
pub struct Replays {
    store: Arc<Store>,
    history: History,
    bots: HashMap<String, Vec<Target>>,
    running: Mutex<Vec<Arc<Progress>>>,
    /// Updates queued by replays, per (bot, forward): a metric.
    replayed: Mutex<HashMap<(String, String), u64>>,
}

impl Replays {
    pub fn new(store: Arc<Store>, history: History, bots: HashMap<String, Vec<Target>>) -> Replays {
        Replays {
            store,
            history,
            bots,
            running: Mutex::new(Vec::new()),
            replayed: Mutex::new(HashMap::new()),
        }
    }

    pub fn knows_bot(&self, bot: &str) -> bool {
        self.bots.contains_key(bot)
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// The forward ids and names the store knows for a bot (its history's
    /// records name forwards by id).
    pub fn forward_names(&self, bot: &str) -> Result<HashMap<u32, String>, StoreError> {
        Ok(self
            .store
            .forwards()?
            .into_iter()
            .filter(|f| f.bot == bot)
            .map(|f| (f.id, f.name))
            .collect())
    }

    /// Checks a request and persists it as a new replay; run it with
    /// [`Replays::run`].
    pub fn create(&self, state: State) -> Result<(u64, State), ReplayError> {
        self.check(&state)?;
        Ok((self.store.next_replay_id()?, state))
    }

    fn check(&self, state: &State) -> Result<Vec<Target>, ReplayError> {
        let targets = self
            .bots
            .get(&state.bot)
            .ok_or_else(|| ReplayError::UnknownBot(state.bot.clone()))?;
        if self.history.bot(&state.bot).is_none() {
            return Err(ReplayError::NoHistory(state.bot.clone()));
        }
        for name in state.forwards.iter().flatten() {
            if !targets.iter().any(|t| t.name == *name) {
                return Err(ReplayError::UnknownForward {
                    bot: state.bot.clone(),
                    forward: name.clone(),
                });
            }
        }
        Ok(targets.clone())
    }

    /// Runs a replay to its end, chunk by chunk, reporting to `progress`.
    pub async fn run(
        &self,
        id: u64,
        mut state: State,
        progress: Arc<Progress>,
    ) -> Result<(), ReplayError> {
        let targets = self.check(&state)?;
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(progress.clone());
        let result = self.run_chunks(id, &mut state, &targets, &progress).await;
        match &result {
            Ok(()) => info!(
                bot = %state.bot, replay = id,
                "replay {id} finished: {} of {} matching updates queued", state.queued, state.matched
            ),
            Err(e) => {
                error!(bot = %state.bot, replay = id, "replay {id} stopped: {e}; it resumes at the next start")
            }
        }
        progress.finish(result.as_ref().err().map(|e| e.to_string()));
        result
    }

    async fn run_chunks(
        &self,
        id: u64,
        state: &mut State,
        targets: &[Target],
        progress: &Progress,
    ) -> Result<(), ReplayError> {
        let dir = &self.history.bot(&state.bot).expect("checked").dir;
        let mut scan = Scan::new(dir, state.filter.since_ms, state.cursor)?;
        // This replay's own records are written after it started; what
        // arrives later is not part of it.
        let until = state.filter.until_ms;
        loop {
            let (chunk, ended) =
                tokio::task::block_in_place(|| read_chunk(&mut scan, &state.filter, until));
            let mut jobs = Vec::new();
            let mut counts: HashMap<String, u64> = HashMap::new();
            for r in &chunk {
                let mut any = false;
                for t in self.targets_of(state, targets, r) {
                    let id_seq = r.forwards.iter().find(|(f, _)| *f == t.id).map(|(_, s)| *s);
                    jobs.push(Requeue {
                        fwd: t.id,
                        id_seq,
                        received_ms: r.received_ms,
                        update_id: r.update_id,
                        kind: r.kind.clone(),
                        lane: Lane::decode(&r.lane),
                        payload: Bytes::from(r.payload.clone()),
                    });
                    *counts.entry(t.name.clone()).or_default() += 1;
                    any = true;
                }
                state.queued += any as u64;
            }
            state.matched += chunk.len() as u64;
            state.cursor = scan.cursor().or(state.cursor);
            let saved = (!ended).then(|| serde_json::to_vec(&*state).expect("state serialises"));
            self.store
                .requeue(&jobs, id, saved.as_deref(), state.replayed_ms)
                .await?;
            {
                let mut replayed = self.replayed.lock().unwrap_or_else(|e| e.into_inner());
                for (fwd, n) in counts {
                    *replayed.entry((state.bot.clone(), fwd)).or_default() += n;
                }
            }
            for t in targets {
                if jobs.iter().any(|j| j.fwd == t.id) {
                    t.wake.notify_one();
                }
            }
            progress.update(state.matched, state.queued, scan.scanned, scan.total);
            if ended {
                return Ok(());
            }
        }
    }

    fn targets_of<'t>(
        &self,
        state: &State,
        targets: &'t [Target],
        r: &Received,
    ) -> Vec<&'t Target> {
        let chosen: Vec<&Target> = match &state.forwards {
            Some(names) => targets.iter().filter(|t| names.contains(&t.name)).collect(),
            None => targets
                .iter()
                .filter(|t| r.forwards.iter().any(|(f, _)| *f == t.id))
                .collect(),
        };
        if !state.routed {
            return chosen;
        }
        let update = Update::from_bytes(&r.payload).unwrap_or_else(|_| Update::opaque(&r.payload));
        chosen
            .into_iter()
            .filter(|t| t.filter.wants(&update))
            .collect()
    }

    /// Counts what a replay would queue, without queuing anything.
    pub fn dry_run(&self, state: &State) -> Result<DryRun, ReplayError> {
        let targets = self.check(state)?;
        let dir = &self.history.bot(&state.bot).expect("checked").dir;
        let mut scan = Scan::new(dir, state.filter.since_ms, None)?;
        let mut out = DryRun::default();
        let mut names = std::collections::BTreeSet::new();
        tokio::task::block_in_place(|| {
            while let Some(record) = scan.next_record() {
                let Record::Received(r) = record else {
                    continue;
                };
                if !state.filter.matches(&r) {
                    continue;
                }
                out.matched += 1;
                *out.kinds.entry(r.kind.clone()).or_default() += 1;
                out.first_at.get_or_insert(r.received_ms);
                out.last_at = Some(r.received_ms);
                for t in self.targets_of(state, &targets, &r) {
                    names.insert(t.name.clone());
                }
            }
        });
        out.forwards = names.into_iter().collect();
        Ok(out)
    }

    /// Sends one update again (its latest receipt, and any earlier one).
    pub async fn resend(
        &self,
        bot: &str,
        update_id: i64,
        forward: Option<String>,
    ) -> Result<(u64, Vec<String>), ReplayError> {
        tokio::task::block_in_place(|| self.history.sync(std::time::Duration::from_secs(2)));
        let state = State {
            bot: bot.to_string(),
            forwards: forward.map(|f| vec![f]),
            filter: Filter {
                since_ms: 0,
                until_ms: u64::MAX,
                update_id: Some(update_id),
                ..Filter::default()
            },
            routed: false,
            replayed_ms: now_ms(),
            cursor: None,
            matched: 0,
            queued: 0,
        };
        let dry = self.dry_run(&state)?;
        if dry.matched == 0 {
            return Err(ReplayError::NotFound {
                bot: bot.to_string(),
                update_id,
            });
        }
        let (id, state) = self.create(state)?;
        let progress = Progress::new(id, &state);
        self.run(id, state, progress).await?;
        Ok((dry.matched, dry.forwards))
    }

    /// Replays of this process (running, finished, resumed).
    pub fn list(&self) -> Vec<Snapshot> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.snapshot())
            .collect()
    }

    /// Updates queued by replays per (bot, forward), for metrics.
    pub fn replayed(&self) -> Vec<((String, String), u64)> {
        let mut v: Vec<_> = self
            .replayed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Replays a crash interrupted, from the store: run each to its end.
    pub async fn resume(&self) -> Result<(), ReplayError> {
        for (id, bytes) in self.store.unfinished_replays()? {
            let state: State = match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    error!("replay {id}'s saved state is unreadable ({e}); it is dropped");
                    self.store.requeue(&[], id, None, now_ms()).await?;
                    continue;
                }
            };
            if let Err(e) = self.check(&state) {
                // The bot or forward is gone from the configuration, or
                // keeps no history any more: nothing to resume it into.
                tracing::warn!(replay = id, "replay {id} is dropped, not resumed: {e}");
                self.store.requeue(&[], id, None, now_ms()).await?;
                continue;
            }
            info!(bot = %state.bot, replay = id, "resuming replay {id}: {} of its updates were queued before pollhook stopped", state.queued);
            let progress = Progress::new(id, &state);
            if let Err(e) = self.run(id, state, progress).await {
                error!(replay = id, "cannot resume replay {id}: {e}");
            }
        }
        Ok(())
    }
}

/// Saves the replay that gives a forward new to the state directory the
/// bot's retained history (`start_from = "history"`); it runs with the
/// other unfinished replays, before the first poll.
pub async fn save_start_from(
    store: &Store,
    bot: &str,
    forward: &str,
    retention: Option<crate::history::Retention>,
) -> Result<(), StoreError> {
    let now = now_ms();
    let window = retention.map_or(0, |r| r.window.as_millis() as u64);
    let state = State {
        bot: bot.to_string(),
        forwards: Some(vec![forward.to_string()]),
        filter: Filter {
            since_ms: now.saturating_sub(window),
            until_ms: now,
            ..Filter::default()
        },
        routed: true,
        replayed_ms: now,
        cursor: None,
        matched: 0,
        queued: 0,
    };
    let id = store.next_replay_id()?;
    info!(bot, forward, replay = id, "forward {forward:?} is new and starts from history: the last {}s of bot {bot:?} are queued for it first", window / 1000);
    let saved = serde_json::to_vec(&state).expect("state serialises");
    store.requeue(&[], id, Some(&saved), now).await
}

/// Reads the next chunk of matching updates; `ended` once history holds no
/// more (or the rest was received after `until`).
fn read_chunk(scan: &mut Scan, filter: &Filter, until: u64) -> (Vec<Received>, bool) {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while chunk.len() < CHUNK && bytes < CHUNK_BYTES {
        let Some(body) = scan.next_body() else {
            return (chunk, true);
        };
        if crate::history::record::received_at(body)
            .is_some_and(|at| at < filter.since_ms || at > until)
        {
            continue;
        }
        if let Some(Record::Received(r)) = crate::history::record::decode(body) {
            if filter.matches(&r) {
                bytes += r.payload.len();
                chunk.push(r);
            }
        }
    }
    (chunk, false)
}
