//! The relay's Bot API gateway seen from a backend: a relay started with a
//! `[gateway]`, its URLs, Bot API answers, and the checks every gateway test
//! shares (refusal shapes, metrics, no key or token anywhere).

use std::path::Path;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::check::assert_no_token;
use super::proc::{tail, Relay, MARKER};
use super::setup::{Setup, TOKEN};
use super::wait::LONG;

/// The line the relay logs once the gateway listens.
const LISTENING: &str = "gateway on http://127.0.0.1:";

/// A `[gateway]` table on a port the system picks, with `extra` lines.
pub fn gateway_table(extra: &str) -> String {
    format!("[gateway]\nlisten = \"127.0.0.1:0\"\n{extra}\n")
}

/// A `[[bot.client]]` table with an inline key and `extra` lines.
pub fn client_table(name: &str, key: &str, extra: &str) -> String {
    format!("[[bot.client]]\nname = \"{name}\"\nkey = \"{key}\"\n{extra}\n")
}

/// A `[bot.limits]` table; each argument is a TOML array, e.g. `["1/1s"]`.
pub fn limits_table(per_chat: &str, per_group: &str, per_bot: &str) -> String {
    format!("[bot.limits]\nper_chat = {per_chat}\nper_group = {per_group}\nper_bot = {per_bot}\n")
}

/// A running relay with its gateway.
pub struct Gateway {
    pub relay: Relay,
    /// The gateway's port, from its log line.
    pub port: u16,
}

impl Gateway {
    /// Starts the relay with `config` and waits until the gateway listens
    /// and the bot polls (so the relay's own start-up calls are behind it).
    pub async fn start(setup: &Setup, config: &Path) -> Gateway {
        let polls = setup.api.get_updates_calls(TOKEN).len();
        let relay = setup.spawn(config);
        Gateway::ready(setup, relay, polls).await
    }

    /// Stops the relay gracefully and starts it again on the same config
    /// and state; the gateway's port is new.
    pub async fn restart(mut self, setup: &Setup, config: &Path) -> Gateway {
        self.relay.stop().await;
        let polls = setup.api.get_updates_calls(TOKEN).len();
        let relay = setup.spawn(config);
        Gateway::ready(setup, relay, polls).await
    }

    /// Waits for the gateway's line in this run of the relay and for a
    /// getUpdates beyond the `polls` seen before it started.
    async fn ready(setup: &Setup, mut relay: Relay, polls: usize) -> Gateway {
        let runs = relay.logs().matches(MARKER).count();
        relay.wait_log_count(LISTENING, runs, LONG).await;
        let logs = relay.logs();
        let at = logs.rfind(LISTENING).expect("the line was just seen") + LISTENING.len();
        let port = logs[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no port after {LISTENING:?} in the log:\n{}",
                    tail(&logs, 20)
                )
            });
        setup.api.wait_calls(TOKEN, polls + 1, LONG).await;
        Gateway { relay, port }
    }

    /// `http://127.0.0.1:PORT/bot{key}/{method}`
    pub fn url(&self, key: &str, method: &str) -> String {
        format!("http://127.0.0.1:{}/bot{key}/{method}", self.port)
    }

    /// `http://127.0.0.1:PORT/file/bot{key}/{path}`
    pub fn file_url(&self, key: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}/file/bot{key}/{path}", self.port)
    }
}

/// An answer of the gateway, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub async fn read(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("reading the gateway's answer: {}", e.without_url()));
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` and reads the answer; a transport error fails the test.
pub async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("the gateway does not answer: {}", e.without_url()));
    Answer::read(resp).await
}

/// POSTs `params` as JSON.
pub async fn post_json(http: &reqwest::Client, url: &str, params: Value) -> Answer {
    send(http.post(url).json(&params)).await
}

/// Checks the Bot API's error shape: `ok` false, `error_code` = status =
/// `code`, a description starting with `starts` and naming `names` (any case).
pub fn assert_refusal(a: &Answer, code: u16, starts: &str, names: &str) {
    let body = a.json();
    assert_eq!(a.status, code, "{body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(starts),
        "the description should start with {starts:?}: {body}"
    );
    assert!(
        description
            .to_ascii_lowercase()
            .contains(&names.to_ascii_lowercase()),
        "the description should name {names:?}: {body}"
    );
    let content_type = a.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
}

/// Checks a 429 of the gateway's own: Bot API shape, `retry_after` ≥ 1 and
/// a `Retry-After` header with the same number; returns it.
pub fn assert_overflow(a: &Answer) -> u64 {
    let body = a.json();
    assert_eq!(a.status, 429, "{body}");
    assert_eq!(
        (&body["ok"], &body["error_code"]),
        (&false.into(), &429.into()),
        "{body}"
    );
    let retry_after = body["parameters"]["retry_after"]
        .as_u64()
        .unwrap_or_else(|| panic!("no parameters.retry_after: {body}"));
    assert!(retry_after >= 1, "{body}");
    assert_eq!(
        a.header("retry-after"),
        Some(retry_after.to_string().as_str()),
        "the Retry-After header should say what the body says: {body}"
    );
    retry_after
}

/// Fails the test if the token or any of `keys` (their secret part, after
/// the colon, as is or percent-encoded) shows up in `text`.
pub fn assert_no_secrets(text: &str, keys: &[&str], what: &str) {
    assert_no_token(text);
    let lower = text.to_ascii_lowercase();
    for key in keys {
        let secret = key.split_once(':').map_or(*key, |(_, s)| s);
        let encoded: String = secret.bytes().map(|b| format!("%{b:02x}")).collect();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains(secret))
            .or_else(|| lower.lines().find(|l| l.contains(&encoded)))
        {
            panic!("the gateway key {key:?} leaked into {what}: {line}");
        }
    }
}

/// The sum of every sample of `name` whose labels include each of
/// `labels` (e.g. `result="ok"`); 0 when there is none.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Whether `metrics` has a sample of `name` at all (a metric the contract
/// names must be there, even at zero).
pub fn has_metric(metrics: &str, name: &str) -> bool {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.starts_with(name))
}
