//! The admin API's history endpoints, and the requests behind them that
//! the command line also runs on a stopped state directory:
//! `GET /history`, `GET /history/show`, `POST /history/replay`,
//! `POST /history/resend`, `GET /history/replays`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use crate::clock::now_ms;
use crate::history::query::{self, Filter};
use crate::replay::{Progress, ReplayError, Replays, State};

/// Lines a listing returns at most, and by default.
pub const MAX_LIMIT: usize = 100_000;
pub const DEFAULT_LIMIT: usize = 1000;
/// How often a running replay's progress is streamed.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A request the caller got wrong (400), with what to fix.
#[derive(Debug)]
pub struct BadRequest(pub String);

/// `since` / `until`: a duration ago (`90s`, `10m`, `2h`) or an RFC 3339
/// time (`2026-12-01T21:00:00Z`), as ms since the epoch.
pub fn parse_time(name: &str, text: &str, now: u64) -> Result<u64, BadRequest> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now.saturating_sub(ago.as_millis() as u64));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        if let Ok(since_epoch) = at.duration_since(UNIX_EPOCH) {
            return Ok(since_epoch.as_millis() as u64);
        }
    }
    Err(BadRequest(format!(
        "{name}: {text:?} is neither a duration ago (\"10m\", \"2h\") nor a time (\"2026-12-01T21:00:00Z\")"
    )))
}

/// What selects updates, as the API and the commands take it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub bot: String,
    #[serde(default)]
    pub forward: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub chat: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

impl Selector {
    pub fn filter(&self, now: u64) -> Result<Filter, BadRequest> {
        let since_ms = match &self.since {
            Some(t) => parse_time("since", t, now)?,
            None => 0,
        };
        let until_ms = match &self.until {
            Some(t) => parse_time("until", t, now)?,
            None => now,
        };
        if until_ms < since_ms {
            return Err(BadRequest("until: is before since".into()));
        }
        let nonempty = |name: &str, v: &Option<String>| match v {
            Some(s) if s.trim().is_empty() => Err(BadRequest(format!("{name}: is empty"))),
            _ => Ok(v.clone()),
        };
        Ok(Filter {
            since_ms,
            until_ms,
            kind: nonempty("kind", &self.kind)?,
            chat: nonempty("chat", &self.chat)?,
            update_id: None,
        })
    }

    /// The replay this asks for (`since` is required: replaying a whole
    /// history by accident is not what anyone means).
    pub fn replay(&self, now: u64) -> Result<State, BadRequest> {
        if self.since.is_none() {
            return Err(BadRequest(
                "since: missing; say how far back to replay (\"2h\")".into(),
            ));
        }
        Ok(State {
            bot: self.bot.clone(),
            forwards: self.forward.clone().map(|f| vec![f]),
            filter: self.filter(now)?,
            routed: false,
            replayed_ms: now,
            cursor: None,
            matched: 0,
            queued: 0,
        })
    }
}

/// The listing: lines, and whether `limit` cut it.
pub fn list(
    replays: &Replays,
    sel: &Selector,
    limit: usize,
) -> Result<Result<(Vec<Value>, bool), ReplayError>, BadRequest> {
    let filter = sel.filter(now_ms())?;
    Ok(bot_dir(replays, &sel.bot).and_then(|dir| {
        let names = replays.forward_names(&sel.bot)?;
        Ok(query::list(&dir, &filter, limit, &names)?)
    }))
}

/// One update's story.
pub fn show(replays: &Replays, bot: &str, update_id: i64) -> Result<String, ReplayError> {
    let dir = bot_dir(replays, bot)?;
    query::show(&dir, bot, update_id)?.ok_or_else(|| ReplayError::NotFound {
        bot: bot.to_string(),
        update_id,
    })
}

fn bot_dir(replays: &Replays, bot: &str) -> Result<std::path::PathBuf, ReplayError> {
    replays.history().sync(Duration::from_secs(2));
    match replays.history().bot(bot) {
        Some(log) => Ok(log.dir.clone()),
        None if replays.knows_bot(bot) => Err(ReplayError::NoHistory(bot.to_string())),
        None => Err(ReplayError::UnknownBot(bot.to_string())),
    }
}

// ---- HTTP ----

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn refused(e: ReplayError) -> Response {
    let status = match e {
        ReplayError::Io(_) | ReplayError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::NOT_FOUND,
    };
    error(status, e.to_string())
}

fn bad(e: BadRequest) -> Response {
    error(StatusCode::BAD_REQUEST, e.0)
}

/// Without history (a cluster): said plainly, not a 404.
fn no_history() -> Response {
    error(
        StatusCode::CONFLICT,
        "history is kept by single-node pollhook; in a cluster ([cluster]) no history is kept"
            .into(),
    )
}

fn ndjson(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn line(v: &impl serde::Serialize) -> Bytes {
    let mut out = serde_json::to_vec(v).expect("values serialise");
    out.push(b'\n');
    Bytes::from(out)
}

pub async fn get_list(replays: Option<Arc<Replays>>, params: HashMap<String, String>) -> Response {
    let Some(replays) = replays else {
        return no_history();
    };
    let sel =
        match selector_from_query(&params, &["bot", "since", "until", "kind", "chat", "limit"]) {
            Ok(s) => s,
            Err(e) => return bad(e),
        };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return bad(BadRequest(format!(
                "limit: use a number from 1 to {MAX_LIMIT}"
            )))
        }
    };
    let listed = tokio::task::spawn_blocking(move || list(&replays, &sel, limit)).await;
    match listed {
        Ok(Ok(Ok((lines, more)))) => {
            let mut body = Vec::new();
            for l in &lines {
                body.extend_from_slice(&line(l));
            }
            if more {
                body.extend_from_slice(&line(&json!({ "more": true })));
            }
            ndjson(Body::from(body))
        }
        Ok(Ok(Err(e))) => refused(e),
        Ok(Err(e)) => bad(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn get_show(replays: Option<Arc<Replays>>, params: HashMap<String, String>) -> Response {
    let Some(replays) = replays else {
        return no_history();
    };
    let Some(bot) = params.get("bot").cloned() else {
        return bad(BadRequest("bot: missing".into()));
    };
    let Some(Ok(update_id)) = params.get("update_id").map(|v| v.trim().parse::<i64>()) else {
        return bad(BadRequest("update_id: missing or not a number".into()));
    };
    match tokio::task::spawn_blocking(move || show(&replays, &bot, update_id)).await {
        Ok(Ok(v)) => ([(header::CONTENT_TYPE, "application/json")], v).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn selector_from_query(
    params: &HashMap<String, String>,
    known: &[&str],
) -> Result<Selector, BadRequest> {
    if let Some(k) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(BadRequest(format!("{k}: unknown parameter")));
    }
    Ok(Selector {
        bot: params
            .get("bot")
            .cloned()
            .ok_or_else(|| BadRequest("bot: missing".into()))?,
        since: params.get("since").cloned(),
        until: params.get("until").cloned(),
        kind: params.get("kind").cloned(),
        chat: params.get("chat").cloned(),
        ..Selector::default()
    })
}

pub async fn post_replay(replays: Option<Arc<Replays>>, body: Bytes) -> Response {
    let Some(replays) = replays else {
        return no_history();
    };
    let sel: Selector = match from_body(&body, "replay") {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let state = match sel.replay(now_ms()) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    tokio::task::block_in_place(|| replays.history().sync(Duration::from_secs(2)));
    if sel.dry_run {
        return match replays.dry_run(&state) {
            Ok(d) => {
                let mut v = serde_json::to_value(&d).expect("serialises");
                v["dry_run"] = json!(true);
                ndjson(Body::from(line(&v)))
            }
            Err(e) => refused(e),
        };
    }
    let (id, state) = match replays.create(state) {
        Ok(x) => x,
        Err(e) => return refused(e),
    };
    info!(bot = %state.bot, replay = id, "replay {id} asked for through the admin API");
    let progress = Progress::new(id, &state);
    let mut watch = progress.watch();
    // Runs to its end even if the caller hangs up.
    let runner = replays.clone();
    tokio::spawn(async move {
        let _ = runner.run(id, state, progress).await;
    });
    let stream = async_stream_lines(move |tx| async move {
        loop {
            let snap = watch.borrow_and_update().clone();
            if tx.send(line(&snap)).await.is_err() || snap.done {
                return;
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
            if watch.changed().await.is_err() {
                let last = line(&*watch.borrow());
                let _ = tx.send(last).await;
                return;
            }
        }
    });
    ndjson(stream)
}

/// A body fed line by line by `feed` through a small channel.
fn async_stream_lines<F, Fut>(feed: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(feed(tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Body::from_stream(stream)
}

/// A JSON body, or a 400 that names the field at fault.
fn from_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, BadRequest> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            BadRequest(format!("the body is not a {what} request: {inner}"))
        } else {
            BadRequest(format!("{path}: {inner}"))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    pub bot: String,
    pub update_id: i64,
    #[serde(default)]
    pub forward: Option<String>,
}

pub async fn post_resend(replays: Option<Arc<Replays>>, body: Bytes) -> Response {
    let Some(replays) = replays else {
        return no_history();
    };
    let r: Resend = match from_body(&body, "resend") {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    match replays.resend(&r.bot, r.update_id, r.forward).await {
        Ok((n, forwards)) => {
            info!(bot = %r.bot, update_id = r.update_id, "update resent through the admin API");
            Json(json!({ "queued": n, "forwards": forwards })).into_response()
        }
        Err(e) => refused(e),
    }
}

pub async fn get_replays(replays: Option<Arc<Replays>>) -> Response {
    let Some(replays) = replays else {
        return no_history();
    };
    Json(json!({ "replays": replays.list() })).into_response()
}
