//! Dead letters in a cluster: they live in the replicated queue's stream
//! (`pollhook.dead.{bot}.{forward}`), so every node lists, shows, replays
//! and drops them alike, whoever leads the bot. A dead letter's id is its
//! message's stream sequence.
//!
//! A replay puts the update back on its forward's queue subject, marked
//! as a replay and carrying its original sequence (so its webhook-id stays
//! the same); the bot's leader picks it up from there (`cluster::queue`).

use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::{self, stream};

use crate::cluster::queue::{webhook_id, STREAM};
use crate::ops::deadletters::{DeadLetter, Outcome, Selection};
use crate::ops::status::ForwardHandle;
use crate::store::StoreError;

fn remote(e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote(e.to_string())
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One dead letter as read from the stream.
struct Dead {
    seq: u64,
    bot: String,
    fwd: u32,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

impl Dead {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_string())
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn view(&self, forwards: &[ForwardHandle], prefix: &str, with_payload: bool) -> DeadLetter {
        let forward = forwards
            .iter()
            .find(|f| f.bot == self.bot && f.id == self.fwd)
            .map_or_else(|| format!("#{}", self.fwd), |f| f.name.clone());
        DeadLetter {
            id: self.seq,
            bot: self.bot.clone(),
            forward,
            update_id: self
                .header("Pollhook-Update-Id")
                .and_then(|v| v.parse().ok()),
            kind: self.header("Pollhook-Kind").unwrap_or_default(),
            attempts: self.number("Pollhook-Attempts") as u32,
            received_at: time(self.number("Pollhook-Received")),
            dead_at: time(self.number("Pollhook-Dead-At")),
            last_error: self.header("Pollhook-Error").unwrap_or_default(),
            webhook_id: webhook_id(prefix, self.number("Pollhook-Id-Seq")),
            payload: with_payload.then(|| String::from_utf8_lossy(&self.payload).into_owned()),
        }
    }
}

fn parse_subject(subject: &str) -> Option<(String, u32)> {
    let rest = subject.strip_prefix("pollhook.dead.")?;
    let (bot, fwd) = rest.rsplit_once('.')?;
    Some((bot.to_string(), fwd.parse().ok()?))
}

async fn open(js: &jetstream::Context) -> Result<(stream::Stream, String), StoreError> {
    let mut s = js.get_stream(STREAM).await.map_err(remote)?;
    let created = s
        .info()
        .await
        .map_err(remote)?
        .created
        .unix_timestamp_nanos();
    let prefix = crate::cluster::queue::id_prefix(created);
    Ok((s, prefix))
}

/// Every dead letter of `bot` (and `forward`, a forward id), in order.
async fn read(
    s: &stream::Stream,
    bot: Option<&str>,
    fwd: Option<u32>,
) -> Result<Vec<Dead>, StoreError> {
    let filter = match (bot, fwd) {
        (Some(b), Some(f)) => format!("pollhook.dead.{b}.{f}"),
        (Some(b), None) => format!("pollhook.dead.{b}.*"),
        _ => "pollhook.dead.>".to_string(),
    };
    let mut out = Vec::new();
    crate::cluster::stored::read_all(s, filter, |msg, seq| {
        if let Some((bot, fwd)) = parse_subject(&msg.subject) {
            out.push(Dead {
                seq,
                bot,
                fwd,
                headers: msg.headers.clone().unwrap_or_default(),
                payload: msg.payload.clone(),
            });
        }
    })
    .await
    .map_err(remote)?;
    Ok(out)
}

fn forward_id(forwards: &[ForwardHandle], bot: Option<&str>, name: Option<&str>) -> Option<u32> {
    let name = name?;
    forwards
        .iter()
        .find(|f| bot.is_none_or(|b| b == f.bot) && f.name == name)
        .map(|f| f.id)
}

pub async fn list(
    js: &jetstream::Context,
    forwards: &[ForwardHandle],
    bot: Option<&str>,
    forward: Option<&str>,
) -> Result<Vec<DeadLetter>, StoreError> {
    if forward.is_some() && forward_id(forwards, bot, forward).is_none() {
        return Ok(Vec::new());
    }
    let (s, prefix) = open(js).await?;
    let dead = read(&s, bot, forward_id(forwards, bot, forward)).await?;
    Ok(dead
        .iter()
        .map(|d| d.view(forwards, &prefix, false))
        .filter(|d| forward.is_none_or(|n| d.forward == n))
        .collect())
}

/// One message of the stream, if it is a dead letter.
async fn one(s: &stream::Stream, seq: u64) -> Result<Option<Dead>, StoreError> {
    let msg = match s.get_raw_message(seq).await {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    let Some((bot, fwd)) = parse_subject(msg.subject.as_str()) else {
        return Ok(None);
    };
    Ok(Some(Dead {
        seq,
        bot,
        fwd,
        headers: msg.headers,
        payload: msg.payload,
    }))
}

pub async fn show(
    js: &jetstream::Context,
    forwards: &[ForwardHandle],
    id: u64,
) -> Result<Option<DeadLetter>, StoreError> {
    let (s, prefix) = open(js).await?;
    Ok(one(&s, id).await?.map(|d| d.view(forwards, &prefix, true)))
}

async fn targets(
    js: &jetstream::Context,
    s: &stream::Stream,
    forwards: &[ForwardHandle],
    sel: &Selection,
    out: &mut Outcome,
) -> Result<Vec<Dead>, StoreError> {
    let _ = js;
    if sel.all {
        let fwd = forward_id(forwards, sel.bot.as_deref(), sel.forward.as_deref());
        if sel.forward.is_some() && fwd.is_none() {
            return Ok(Vec::new());
        }
        return read(s, sel.bot.as_deref(), fwd).await;
    }
    let mut found = Vec::new();
    for &id in &sel.ids {
        match one(s, id).await? {
            Some(d) => found.push(d),
            None => out.missing.push(id),
        }
    }
    Ok(found)
}

/// Puts dead letters back on their queues; each keeps its webhook-id.
pub async fn replay(
    js: &jetstream::Context,
    forwards: &[ForwardHandle],
    sel: &Selection,
) -> Result<Outcome, StoreError> {
    let (s, _) = open(js).await?;
    let mut out = Outcome::default();
    for d in targets(js, &s, forwards, sel, &mut out).await? {
        let mut h = d.headers.clone();
        h.insert(
            "Pollhook-Replay",
            crate::clock::now_ms().to_string().as_str(),
        );
        // Its own id: a replay must not be taken for a duplicate.
        h.insert("Nats-Msg-Id", format!("replay.{}", d.seq).as_str());
        let ack = js
            .publish_with_headers(
                format!("pollhook.q.{}.{}", d.bot, d.fwd),
                h,
                d.payload.clone(),
            )
            .await
            .map_err(remote)?;
        ack.await.map_err(remote)?;
        let _ = s.delete_message(d.seq).await;
        out.done.push(d.seq);
        if !out.touched.contains(&d.fwd) {
            out.touched.push(d.fwd);
        }
    }
    Ok(out)
}

/// Forgets dead letters for good.
pub async fn drop(
    js: &jetstream::Context,
    forwards: &[ForwardHandle],
    sel: &Selection,
) -> Result<Outcome, StoreError> {
    let (s, _) = open(js).await?;
    let mut out = Outcome::default();
    for d in targets(js, &s, forwards, sel, &mut out).await? {
        match s.delete_message(d.seq).await {
            Ok(_) => out.done.push(d.seq),
            Err(_) => out.missing.push(d.seq),
        }
    }
    Ok(out)
}
