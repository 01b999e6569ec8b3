//! Dead-letter operations, shared by the admin API (daemon running) and the
//! `pollhook dlq` command (daemon stopped, straight on the state directory),
//! so both give the same answers.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{ForwardRef, Job, Store, StoreError};

/// A dead letter as shown to an operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// What `dlq show/replay/drop` take.
    pub id: u64,
    pub bot: String,
    pub forward: String,
    pub update_id: Option<i64>,
    pub kind: String,
    pub attempts: u32,
    pub received_at: String,
    pub dead_at: String,
    pub last_error: String,
    pub webhook_id: String,
    /// The update's exact JSON; only in `show`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<String>,
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Selection {
    #[serde(default)]
    pub ids: Vec<u64>,
    /// Every dead letter (of `bot`/`forward` if given) instead of `ids`.
    #[serde(default)]
    pub all: bool,
    pub bot: Option<String>,
    pub forward: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Outcome {
    /// Ids acted on.
    pub done: Vec<u64>,
    /// Ids asked for that are not dead letters (any more).
    pub missing: Vec<u64>,
    /// Forward ids whose queue received replayed jobs (to wake them).
    #[serde(skip)]
    pub touched: Vec<u32>,
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn view(store: &Store, f: &ForwardRef, job: &Job, with_payload: bool) -> DeadLetter {
    DeadLetter {
        id: job.seq,
        bot: f.bot.clone(),
        forward: f.name.clone(),
        update_id: job.update_id,
        kind: job.kind.clone(),
        attempts: job.attempts,
        received_at: time(job.received_ms),
        dead_at: time(job.dead_at_ms),
        last_error: job.last_error.clone(),
        webhook_id: store.webhook_id(job),
        payload: with_payload.then(|| String::from_utf8_lossy(&job.payload).into_owned()),
    }
}

fn selected_forwards(
    store: &Store,
    bot: Option<&str>,
    forward: Option<&str>,
) -> Result<Vec<ForwardRef>, StoreError> {
    Ok(store
        .forwards()?
        .into_iter()
        .filter(|f| bot.is_none_or(|b| b == f.bot) && forward.is_none_or(|n| n == f.name))
        .collect())
}

pub fn list(
    store: &Store,
    bot: Option<&str>,
    forward: Option<&str>,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut out = Vec::new();
    for f in selected_forwards(store, bot, forward)? {
        for job in store.dead_letters(f.id)? {
            out.push(view(store, &f, &job, false));
        }
    }
    Ok(out)
}

pub fn show(store: &Store, id: u64) -> Result<Option<DeadLetter>, StoreError> {
    let Some((fwd, job)) = store.find_dead(id)? else {
        return Ok(None);
    };
    let f = store.forwards()?.into_iter().find(|f| f.id == fwd);
    let f = f.unwrap_or(ForwardRef {
        id: fwd,
        bot: "?".into(),
        name: "?".into(),
    });
    Ok(Some(view(store, &f, &job, true)))
}

#[derive(Clone, Copy)]
enum Action {
    Replay,
    Drop,
}

async fn apply(store: &Store, sel: &Selection, action: Action) -> Result<Outcome, StoreError> {
    let mut targets: Vec<(u32, u64)> = Vec::new();
    let mut out = Outcome::default();
    if sel.all {
        for f in selected_forwards(store, sel.bot.as_deref(), sel.forward.as_deref())? {
            targets.extend(store.dead_letters(f.id)?.iter().map(|j| (f.id, j.seq)));
        }
    } else {
        for &id in &sel.ids {
            match store.find_dead(id)? {
                Some((fwd, _)) => targets.push((fwd, id)),
                None => out.missing.push(id),
            }
        }
    }
    for (fwd, id) in targets {
        let done = match action {
            Action::Replay => store.replay(fwd, id).await?,
            Action::Drop => store.drop_dead(fwd, id).await?,
        };
        if done {
            out.done.push(id);
            if !out.touched.contains(&fwd) {
                out.touched.push(fwd);
            }
        } else {
            out.missing.push(id);
        }
    }
    Ok(out)
}

/// Puts dead letters back in their queues; each keeps its webhook-id.
pub async fn replay(store: &Store, sel: &Selection) -> Result<Outcome, StoreError> {
    apply(store, sel, Action::Replay).await
}

/// Forgets dead letters for good.
pub async fn drop(store: &Store, sel: &Selection) -> Result<Outcome, StoreError> {
    apply(store, sel, Action::Drop).await
}
