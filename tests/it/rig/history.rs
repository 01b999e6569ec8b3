//! The update history seen from outside: the admin API's history endpoints
//! (NDJSON, read whole or as a stream), the commands' exit codes, the
//! history's segment files on disk, and the relay's resident memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::proc::write_config;
use super::setup::{admin_table, Setup, SECRET};
use super::wait::{eventually, LONG};

/// The admin token the history tests configure (the history endpoints sit
/// behind it like every other admin endpoint).
pub const ADMIN_TOKEN: &str = "h1story-adm1n-t0ken";

/// An `[admin]` table on `port` with `ADMIN_TOKEN`.
pub fn admin_with_token(port: u16) -> String {
    admin_table(port, &format!("token = \"{ADMIN_TOKEN}\""))
}

/// A `[[bot.forward]]` table signing with `SECRET`.
pub fn forward_table(name: &str, url: &str, extra: &str) -> String {
    format!("[[bot.forward]]\nname = \"{name}\"\nurl = \"{url}\"\nsigning_secret = \"{SECRET}\"\n{extra}\n")
}

/// Bot "main" with `forwards`, the admin API on `port` behind
/// `ADMIN_TOKEN`; `bot_extra` goes into the bot's table.
pub fn history_config(setup: &Setup, port: u16, bot_extra: &str, forwards: &[String]) -> PathBuf {
    let toml = format!(
        "state_dir = \"state\"\nshutdown_timeout = \"5s\"\n{admin}\n{bot}{bot_extra}\n{forwards}",
        admin = admin_with_token(port),
        bot = setup.main_bot(),
        forwards = forwards.join("\n"),
    );
    write_config(setup.path(), &toml)
}

/// Waits until `GET /history?{query}` lists exactly the update ids `ids`
/// (history records are written a moment after the batch is queued).
pub async fn wait_history(admin: Admin, query: &str, ids: &[i64]) -> Vec<Value> {
    eventually(
        &format!("/history?{query} to list {ids:?}"),
        LONG,
        async || {
            let lines = admin.history(query).await;
            if ids_of(&lines) == ids {
                Ok(lines)
            } else {
                Err(format!("{lines:#?}"))
            }
        },
    )
    .await
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Got {
    /// The body's lines as JSON; fails the test on any other line.
    pub fn lines(&self) -> Vec<Value> {
        ndjson(&self.body)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON body ({e}): {:?}", self.body))
    }

    /// Fails the test unless the status is `status`; returns self.
    #[track_caller]
    pub fn expect(self, status: u16) -> Got {
        assert_eq!(self.status, status, "answer: {}", self.body);
        self
    }

    /// Fails the test unless this is 200 `application/x-ndjson`; returns
    /// its lines.
    #[track_caller]
    pub fn expect_ndjson(self) -> Vec<Value> {
        assert_eq!(self.status, 200, "answer: {}", self.body);
        assert_eq!(
            self.content_type, "application/x-ndjson",
            "one JSON object per line"
        );
        self.lines()
    }
}

/// Every line of `text` as JSON (empty lines skipped).
pub fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

/// The admin API of a relay configured with `admin_with_token(port)`.
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    pub port: u16,
}

impl Admin {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn read(r: reqwest::RequestBuilder, what: &str) -> Got {
        let r = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("the admin API does not answer {what}: {e}"));
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: the body broke off: {e}"));
        Got {
            status,
            content_type,
            body,
        }
    }

    /// `GET path` with the admin token.
    pub async fn get(&self, path: &str) -> Got {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        Self::read(r, path).await
    }

    /// `GET path` without any token.
    pub async fn get_anonymous(&self, path: &str) -> Got {
        Self::read(reqwest::Client::new().get(self.url(path)), path).await
    }

    /// `POST path` with `body` as it is (JSON or not), with the token.
    pub async fn post(&self, path: &str, body: &str) -> Got {
        self.post_as(path, body, Some(ADMIN_TOKEN)).await
    }

    pub async fn post_as(&self, path: &str, body: &str, token: Option<&str>) -> Got {
        let mut r = reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        Self::read(r, path).await
    }

    /// `GET /history?{query}`: the lines of a 200 NDJSON answer.
    pub async fn history(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/history?{query}")).await.expect_ndjson()
    }

    /// `GET /history/show?bot=main&update_id={id}`: a 200 answer's object.
    pub async fn show(&self, id: i64) -> Value {
        self.get(&format!("/history/show?bot=main&update_id={id}"))
            .await
            .expect(200)
            .json()
    }

    /// `POST /history/replay` read to its end: every line of a 200 NDJSON
    /// answer.
    pub async fn replay(&self, body: Value) -> Vec<Value> {
        self.post("/history/replay", &body.to_string())
            .await
            .expect_ndjson()
    }

    /// `POST /history/resend`: a 200 answer's object.
    pub async fn resend(&self, body: Value) -> Value {
        self.post("/history/resend", &body.to_string())
            .await
            .expect(200)
            .json()
    }

    /// `GET /history/replays`' list.
    pub async fn replays(&self) -> Vec<Value> {
        let got = self.get("/history/replays").await.expect(200).json();
        got["replays"]
            .as_array()
            .unwrap_or_else(|| panic!("no replays list in {got}"))
            .clone()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.expect(200).body
    }

    /// Opens `POST /history/replay` and reads its lines in the background
    /// as they come.
    pub async fn replay_stream(&self, body: Value) -> Stream {
        let mut response = reqwest::Client::new()
            .post(self.url("/history/replay"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("the admin API answers POST /history/replay");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let lines: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (into, end) = (lines.clone(), ended.clone());
        let reader = tokio::spawn(async move {
            let mut pending = String::new();
            let why = loop {
                match response.chunk().await {
                    Ok(Some(bytes)) => {
                        pending.push_str(&String::from_utf8_lossy(&bytes));
                        while let Some(end) = pending.find('\n') {
                            let line: String = pending.drain(..=end).collect();
                            if line.trim().is_empty() {
                                continue;
                            }
                            let value: Value = serde_json::from_str(&line)
                                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
                            into.lock().unwrap().push((Instant::now(), value));
                        }
                    }
                    Ok(None) => break "the stream ended".to_string(),
                    Err(e) => break format!("the stream broke: {e}"),
                }
            };
            *end.lock().unwrap() = Some(why);
        });
        Stream {
            lines,
            ended,
            reader,
        }
    }
}

/// A `POST /history/replay` answer being read.
pub struct Stream {
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
    ended: Arc<Mutex<Option<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    /// Hangs up (the replay goes on in the daemon).
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Stream {
    /// Each line with when it arrived.
    pub fn timed(&self) -> Vec<(Instant, Value)> {
        self.lines.lock().unwrap().clone()
    }

    pub fn lines(&self) -> Vec<Value> {
        self.timed().into_iter().map(|(_, v)| v).collect()
    }

    /// Why the stream ended, once it has.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }

    /// Waits for a line satisfying `pick`; returns it and when it arrived.
    pub async fn wait_line(&self, what: &str, pick: impl Fn(&Value) -> bool) -> (Instant, Value) {
        eventually(what, LONG, async || {
            let lines = self.timed();
            if let Some(found) = lines.iter().find(|(_, v)| pick(v)) {
                return Ok(found.clone());
            }
            if let Some(why) = self.ended() {
                panic!("{why} while waiting for {what}; lines: {:?}", self.lines());
            }
            Err(format!("lines so far: {:?}", self.lines()))
        })
        .await
    }

    /// Waits for the `"done":true` line.
    pub async fn done(&self) -> (Instant, Value) {
        self.wait_line("the replay's done line", |v| v["done"] == true)
            .await
    }
}

/// `pollhook` with `args`, run off the test's threads: (exit code, stdout,
/// stderr).
pub async fn pollhook_code(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_pollhook"))
            .args(&args)
            .output()
            .expect("pollhook runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `<state_dir>/history/bot-<bot>`.
pub fn history_dir(state_dir: &Path, bot: &str) -> PathBuf {
    state_dir.join("history").join(format!("bot-{bot}"))
}

/// The bot's segment files, oldest first (by name: the creation time,
/// zero-padded).
pub fn segments(state_dir: &Path, bot: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = match std::fs::read_dir(history_dir(state_dir, bot)) {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    found
}

/// Bytes the files directly in `dir` take (their lengths; 0 if there is no
/// such directory). A file deleted while this reads counts as 0.
pub fn dir_bytes(dir: &Path) -> u64 {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
        Err(_) => 0,
    }
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// `ms` since the epoch as RFC 3339 with whole seconds (rounded down).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Waits until the wall clock is in a later whole second than `ms`; returns
/// the start of that second (ms). Two groups of updates on either side of
/// it are told apart by `since`/`until` given to the second.
pub async fn next_second_after(ms: u64) -> u64 {
    let boundary = (ms / 1000 + 1) * 1000;
    let left = boundary.saturating_sub(now_ms());
    // Waiting for the clock itself, not for the relay to do something.
    tokio::time::sleep(Duration::from_millis(left + 5)).await;
    boundary
}

/// The `update_id`s of history lines (the `{"more":true}` line has none).
pub fn ids_of(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .filter(|l| l.get("more").is_none())
        .map(|l| {
            l["update_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("no update_id in {l}"))
        })
        .collect()
}

/// The line for update `id` in history `lines`.
pub fn line_of(lines: &[Value], id: i64) -> &Value {
    lines
        .iter()
        .find(|l| l["update_id"] == id)
        .unwrap_or_else(|| panic!("update {id} is not in the history: {lines:#?}"))
}
