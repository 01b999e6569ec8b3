//! The Bot API client: method calls, and the typed errors a poller decides on.
//!
//! The token is part of every method URL, and `reqwest` puts the URL into its
//! error messages. So no `reqwest::Error` leaves this module as is: each is
//! stripped with `without_url()` and turned into text here, and every
//! error is scrubbed of the token (in any spelling, see [`crate::redact`])
//! once more before it leaves this module.
//!
//! Answers are read from their exact bytes: `getUpdates` hands back each
//! update's bytes as the platform sent them, invalid UTF-8 included.

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::{error_chain, read_capped, BodyError};
use crate::longpoll::{Answer, Line, LongPolls, PollError, Pool};
use crate::platform::batch;
use crate::platform::call::Params;
use crate::platform::utf8::{readable, span_in};
use crate::redact::Redactor;

/// Extra time the HTTP client waits beyond the long-poll timeout before it
/// calls a poll hung.
pub const POLL_MARGIN: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// 100 updates are rarely more than a megabyte; anything near this is broken.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// The most updates one getUpdates may return (Telegram's cap).
pub const BATCH_LIMIT: u8 = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("409 from getUpdates: another process is polling this bot ({description})")]
    OtherPoller { description: String },
    #[error("409 from getUpdates: a webhook is set for this bot ({description})")]
    WebhookSet { description: String },
    #[error("{status}: the bot token is not accepted ({description})")]
    BadToken { status: u16, description: String },
    #[error("429: rate limited, told to wait {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("{status}: the platform does not implement this method ({description})")]
    NotImplemented { status: u16, description: String },
    #[error("{status}: the request was refused ({description})")]
    Rejected { status: u16, description: String },
    #[error("{status}: server error ({detail})")]
    Server { status: u16, detail: String },
    #[error("unreadable response (HTTP {status}): {detail}")]
    BadResponse { status: u16, detail: String },
    #[error("the response is larger than {} MiB", limit / (1024 * 1024))]
    TooLarge { limit: usize },
    #[error("no answer within {}s", timeout.as_secs())]
    Timeout { timeout: Duration },
    #[error("connection failed: {0}")]
    Transport(String),
}

impl ApiError {
    /// What the operator should do about it, for the log line.
    pub fn advice(&self) -> &'static str {
        match self {
            ApiError::OtherPoller { .. } => {
                "stop the other instance (another pollhook, or a bot polling with the same token); pollhook keeps retrying and resumes by itself"
            }
            ApiError::WebhookSet { .. } => {
                "a webhook URL is set on the platform; remove it with deleteWebhook if polling should win (pollhook never does this by itself); retrying"
            }
            ApiError::BadToken { .. } => {
                "check the token (revoked, mistyped, or meant for another platform); other bots keep running; retrying slowly"
            }
            ApiError::RateLimited { .. } => "waiting as the platform asks",
            ApiError::NotImplemented { .. } => "the platform does not offer this method; not retried",
            ApiError::Rejected { .. } => "the platform refused the request; check the bot's settings (allowed_updates, api_url); retrying slowly",
            ApiError::Transport(text) if text.contains("certificate") => {
                "the API's TLS certificate is not trusted; if it is served under a private or self-signed CA, name that CA's certificate in this bot's ca_file (verification is never turned off); nothing was confirmed, so nothing is lost; retrying with backoff"
            }
            ApiError::Server { .. } | ApiError::BadResponse { .. } | ApiError::TooLarge { .. } | ApiError::Timeout { .. } | ApiError::Transport(_) => {
                "nothing was confirmed, so nothing is lost; retrying with backoff"
            }
        }
    }

    /// Whether the platform answered but the batch itself could not be
    /// read (too large, or a 2xx that is not a readable list of updates):
    /// asking for fewer updates may get past it.
    pub fn batch_unreadable(&self) -> bool {
        match self {
            ApiError::TooLarge { .. } => true,
            ApiError::BadResponse { status, .. } => (200..300).contains(status),
            _ => false,
        }
    }

    /// The same error with the token removed from every text it carries.
    fn redacted(self, r: &Redactor) -> ApiError {
        match self {
            ApiError::OtherPoller { description } => ApiError::OtherPoller {
                description: r.redact(&description),
            },
            ApiError::WebhookSet { description } => ApiError::WebhookSet {
                description: r.redact(&description),
            },
            ApiError::BadToken {
                status,
                description,
            } => ApiError::BadToken {
                status,
                description: r.redact(&description),
            },
            ApiError::NotImplemented {
                status,
                description,
            } => ApiError::NotImplemented {
                status,
                description: r.redact(&description),
            },
            ApiError::Rejected {
                status,
                description,
            } => ApiError::Rejected {
                status,
                description: r.redact(&description),
            },
            ApiError::Server { status, detail } => ApiError::Server {
                status,
                detail: r.redact(&detail),
            },
            ApiError::BadResponse { status, detail } => ApiError::BadResponse {
                status,
                detail: r.redact(&detail),
            },
            ApiError::Transport(text) => ApiError::Transport(r.redact(&text)),
            e @ (ApiError::RateLimited { .. }
            | ApiError::TooLarge { .. }
            | ApiError::Timeout { .. }) => e,
        }
    }

    /// A few words for the bot's condition in `/status`.
    pub fn state(&self) -> &'static str {
        match self {
            ApiError::OtherPoller { .. } => "another poller",
            ApiError::WebhookSet { .. } => "webhook is set",
            ApiError::BadToken { .. } => "token rejected",
            ApiError::RateLimited { .. } => "rate limited",
            ApiError::NotImplemented { .. } => "not implemented",
            ApiError::Rejected { .. } => "request refused",
            ApiError::Server { .. } | ApiError::BadResponse { .. } | ApiError::TooLarge { .. } => {
                "platform failing"
            }
            ApiError::Timeout { .. } | ApiError::Transport(_) => "unreachable",
        }
    }

    /// How long to wait before the next call after `failures` failures in a
    /// row (1 for the first), before jitter.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubling = |base: u64, cap: u64| {
            let exp = failures.saturating_sub(1).min(16);
            Duration::from_secs(base.saturating_mul(1 << exp).min(cap))
        };
        match self {
            // A retry_after of 0 must not turn into a tight loop, nor a
            // huge one park the bot for days.
            ApiError::RateLimited { retry_after } => {
                (*retry_after).clamp(Duration::from_secs(1), Duration::from_secs(3600))
            }
            ApiError::OtherPoller { .. } | ApiError::WebhookSet { .. } => doubling(5, 60),
            ApiError::BadToken { .. } => doubling(60, 600),
            ApiError::Rejected { .. } | ApiError::NotImplemented { .. } => doubling(30, 300),
            _ => doubling(1, 30),
        }
    }

    /// Whether to add jitter: a platform's retry_after is exact already.
    pub fn jitter(&self) -> bool {
        !matches!(self, ApiError::RateLimited { .. })
    }
}

/// The bot behind a token, as `getMe` describes it.
#[derive(Debug, Deserialize)]
pub struct Me {
    /// A number on Telegram, possibly a string elsewhere.
    pub id: serde_json::Value,
    pub username: Option<String>,
}

impl std::fmt::Display for Me {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.username {
            Some(u) => write!(f, "@{u} (id {})", self.id),
            None => write!(f, "id {}", self.id),
        }
    }
}

/// The envelope every Bot API answer comes in.
#[derive(Deserialize)]
struct Envelope<'a> {
    ok: bool,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
}

pub struct BotApi {
    client: reqwest::Client,
    /// The path `getUpdates` takes; `client` unless set.
    polls: Option<LongPolls>,
    url_template: String,
    token: SecretString,
    redactor: Redactor,
    /// getUpdates' URL, parsed on the first poll: parsing it for every
    /// long poll (template replaced twice, then parsed, IDNA included) was
    /// ~5 % of an idle relay's CPU with 10,000 bots (perf, BENCHMARKS.md).
    /// None inside if it does not parse: each call then reports that.
    poll_url: std::sync::OnceLock<Option<reqwest::Url>>,
}

impl BotApi {
    /// `client` is shared by every bot and forward (see [`shared_client`]);
    /// timeouts are set per request.
    pub fn new(url_template: &str, token: SecretString, client: reqwest::Client) -> BotApi {
        BotApi {
            client,
            polls: None,
            url_template: url_template.to_string(),
            redactor: Redactor::new(token.expose_secret()),
            token,
            poll_url: std::sync::OnceLock::new(),
        }
    }

    /// Long polls take `polls` (relay.rs: `crate::longpoll::Pools`).
    pub fn with_long_polls(mut self, polls: LongPolls) -> BotApi {
        self.polls = Some(polls);
        self
    }

    fn url(&self, method: &str) -> String {
        self.url_template
            .replace("{token}", self.token.expose_secret())
            .replace("{method}", method)
    }

    /// Removes the token, in any spelling, from text that might have
    /// picked it up.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact(text)
    }

    /// `getUpdates` for up to `limit` updates: returns each update's exact
    /// bytes, as the platform sent them.
    pub async fn get_updates(
        &self,
        offset: Option<i64>,
        limit: u8,
        timeout: Duration,
        allowed_updates: Option<&[String]>,
    ) -> Result<Vec<Bytes>, ApiError> {
        // Written out rather than built as a JSON value: the idle poll's
        // per-request work is what 10,000 bots pay 333 times a second.
        let mut body = format!(r#"{{"timeout":{},"limit":{limit}"#, timeout.as_secs());
        if let Some(o) = offset {
            body.push_str(&format!(r#","offset":{o}"#));
        }
        if let Some(list) = allowed_updates {
            body.push_str(r#","allowed_updates":"#);
            body.push_str(&serde_json::to_string(list).unwrap_or_else(|_| "[]".into()));
        }
        body.push('}');
        // Shared, not copied, by the HTTP/2 try and the HTTP/1.1 path.
        let body = Bytes::from(body);
        let timeout = timeout + POLL_MARGIN;
        let client = match &self.polls {
            None => &self.client,
            Some(LongPolls::Client(c)) => c,
            Some(LongPolls::H1(line)) => match self.poll_line(line, &body, timeout).await {
                Some(updates) => return updates,
                None => &self.client,
            },
            Some(LongPolls::H2 { pool, h1 }) => {
                if let Some(updates) = self.poll_h2(pool, body.clone(), timeout).await {
                    return updates.map_err(|e| e.redacted(&self.redactor));
                }
                match self.poll_line(h1, &body, timeout).await {
                    Some(updates) => return updates,
                    None => &self.client,
                }
            }
        };
        let request = match self.poll_url() {
            Some(url) => client.post(url.clone()),
            None => client.post(self.url("getUpdates")),
        };
        let request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.fetch(request, timeout)
            .await
            .and_then(|answer| self.updates_in(&answer))
            .map_err(|e| e.redacted(&self.redactor))
    }

    /// `getUpdates` on the bot's HTTP/1.1 line; None if its URL does not
    /// parse (reqwest then says why).
    async fn poll_line(
        &self,
        line: &Line,
        body: &[u8],
        timeout: Duration,
    ) -> Option<Result<Vec<Bytes>, ApiError>> {
        let url = self.poll_url()?;
        // The path and query (where the token is); no fragment.
        let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let updates = line
            .post_json(target, body, timeout, MAX_RESPONSE)
            .await
            .map_err(|e| poll_error(e, timeout))
            .and_then(|answer| self.updates_in(&answer));
        Some(updates.map_err(|e| e.redacted(&self.redactor)))
    }

    /// getUpdates' URL, parsed once (None if it does not parse).
    fn poll_url(&self) -> Option<&reqwest::Url> {
        self.poll_url
            .get_or_init(|| reqwest::Url::parse(&self.url("getUpdates")).ok())
            .as_ref()
    }

    /// `getUpdates` over the HTTP/2 pool; None when the server does not
    /// speak HTTP/2 (then HTTP/1.1 it is). Errors are not yet redacted.
    async fn poll_h2(
        &self,
        pool: &Pool,
        body: Bytes,
        timeout: Duration,
    ) -> Option<Result<Vec<Bytes>, ApiError>> {
        if !pool.speaks_h2() {
            return None;
        }
        let unparsed;
        let url = match self.poll_url() {
            Some(url) => url.as_str(),
            None => {
                unparsed = self.url("getUpdates");
                &unparsed
            }
        };
        let answer = match pool.post_json(url, body, timeout, MAX_RESPONSE).await {
            Ok(a) => a,
            Err(PollError::NotH2) => return None,
            Err(e) => return Some(Err(poll_error(e, timeout))),
        };
        Some(self.updates_in(&answer))
    }

    /// The updates in a getUpdates answer, each as its exact bytes. Errors
    /// are not yet redacted.
    fn updates_in(&self, answer: &Answer) -> Result<Vec<Bytes>, ApiError> {
        if let Some(updates) = batch::at_once(answer) {
            return Ok(updates);
        }
        let result = self.interpret(
            "getUpdates",
            answer.status,
            answer.retry_after,
            &answer.body,
        )?;
        split_updates(&answer.body.slice(result))
    }

    /// Any method with JSON parameters; returns the raw `result`.
    pub async fn call(
        &self,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Box<RawValue>, ApiError> {
        let request = self.client.post(self.url(method)).json(params);
        let result = self.execute(method, request, timeout).await?;
        raw_value(&result)
    }

    /// A method with parameters in whichever encoding a webhook reply used.
    /// The parameters go out as the bytes that came in: nothing is copied,
    /// even for a 50 MB upload, and a retry sends the same buffers again.
    pub async fn call_with(
        &self,
        method: &str,
        params: &Params,
    ) -> Result<Box<RawValue>, ApiError> {
        use reqwest::header::CONTENT_TYPE;
        let request = self.client.post(self.url(method));
        let request = match params {
            Params::Json(body) => request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Params::Form(body) => request
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.clone()),
            Params::Multipart(parts) => {
                let mut form = reqwest::multipart::Form::new();
                for p in parts {
                    let mut part = reqwest::multipart::Part::stream_with_length(
                        p.data.clone(),
                        p.data.len() as u64,
                    );
                    if let Some(f) = &p.file_name {
                        part = part.file_name(f.clone());
                    }
                    if let Some(ct) = &p.content_type {
                        part = part.mime_str(ct).map_err(|_| ApiError::Rejected {
                            status: 0,
                            description: format!("part {:?} has an invalid content type", p.name),
                        })?;
                    }
                    form = form.part(p.name.clone(), part);
                }
                request.multipart(form)
            }
        };
        let result = self.execute(method, request, CALL_TIMEOUT).await?;
        raw_value(&result)
    }

    /// A gateway call as it came: `query` and `body` go to the platform
    /// unchanged, and its answer comes back whole for the caller to pass
    /// on. Only a failure to reach the platform is an error, and it leaves
    /// here scrubbed of the token.
    pub async fn pass(
        &self,
        method: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: Option<reqwest::Body>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let mut url = self.url(method);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(q);
        }
        let mut request = match body {
            Some(b) => self.client.post(url).body(b),
            None => self.client.get(url),
        };
        if let Some(ct) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, ct);
        }
        self.send_scrubbed(request, timeout).await
    }

    /// Where the platform serves a file: for a method URL ending in
    /// `bot{token}/{method}` (Telegram's shape, and MPChat's), the same
    /// prefix and `file/bot{token}/{path}`. None for other shapes.
    pub fn has_files(&self) -> bool {
        self.url_template.ends_with("bot{token}/{method}")
    }

    /// Downloads a file by the `file_path` getFile gave; the answer comes
    /// back unread so that it can be streamed on.
    pub async fn download(
        &self,
        file_path: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let Some(prefix) = self.url_template.strip_suffix("bot{token}/{method}") else {
            return Err(ApiError::NotImplemented {
                status: 404,
                description: "this bot's api_url has no known file URL".into(),
            });
        };
        let url = format!("{prefix}file/bot{}/{file_path}", self.token.expose_secret());
        self.send_scrubbed(self.client.get(url), timeout).await
    }

    async fn send_scrubbed(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout).redacted(&self.redactor))
    }

    /// Sends a request; returns the exact bytes of the answer's `result`.
    /// Every error leaves here scrubbed of the token.
    async fn execute(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        self.execute_unredacted(method, request, timeout)
            .await
            .map_err(|e| e.redacted(&self.redactor))
    }

    async fn execute_unredacted(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let answer = self.fetch(request, timeout).await?;
        let result = self.interpret(method, answer.status, answer.retry_after, &answer.body)?;
        Ok(answer.body.slice(result))
    }

    /// Sends a request and reads its answer whole (up to [`MAX_RESPONSE`]).
    /// Errors are not yet redacted.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Answer, ApiError> {
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        let status = response.status().as_u16();
        let retry_after_header = crate::http::retry_after_secs(response.headers());
        let body = match read_capped(response, MAX_RESPONSE).await {
            Ok(b) => b,
            Err(BodyError::Timeout(_)) => return Err(ApiError::Timeout { timeout }),
            Err(BodyError::TooLarge(limit)) => return Err(ApiError::TooLarge { limit }),
            Err(e) => return Err(ApiError::Transport(e.to_string())),
        };
        Ok(Answer {
            status,
            retry_after: retry_after_header,
            body,
        })
    }

    /// `getMe`: who the token belongs to.
    /// Its fields are the platform's words, shown in logs, `/status` and
    /// `check-config --probe`, so they are scrubbed like any other.
    pub async fn get_me(&self) -> Result<Me, ApiError> {
        let raw = self.call_quick("getMe", &serde_json::json!({})).await?;
        let mut me: Me = serde_json::from_str(raw.get()).map_err(|e| {
            ApiError::BadResponse {
                status: 200,
                detail: format!("getMe result is not a user: {e}"),
            }
            .redacted(&self.redactor)
        })?;
        me.username = me.username.map(|u| self.redact(&u));
        if let serde_json::Value::String(id) = &mut me.id {
            *id = self.redact(id);
        }
        Ok(me)
    }

    /// A call with the default timeout for non-polling methods.
    pub async fn call_quick(
        &self,
        method: &str,
        params: &serde_json::Value,
    ) -> Result<Box<RawValue>, ApiError> {
        self.call(method, params, CALL_TIMEOUT).await
    }

    fn transport_error(&self, e: reqwest::Error, timeout: Duration) -> ApiError {
        if e.is_timeout() {
            return ApiError::Timeout { timeout };
        }
        ApiError::Transport(error_chain(&e.without_url()))
    }

    /// Reads an answer's envelope; returns where its `result` lies in
    /// `bytes`. Text from the answer is redacted before it is cut into a
    /// snippet, so a token across the cut cannot leak in part.
    fn interpret(
        &self,
        method: &str,
        status: u16,
        retry_after_header: Option<u64>,
        bytes: &[u8],
    ) -> Result<Range<usize>, ApiError> {
        let text = readable(bytes);
        let envelope: Envelope = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(e) => {
                return Err(match status {
                    429 => ApiError::RateLimited {
                        retry_after: Duration::from_secs(retry_after_header.unwrap_or(5)),
                    },
                    500..=599 => ApiError::Server {
                        status,
                        detail: format!("not JSON: {}", snippet(&self.redact(&text))),
                    },
                    _ => ApiError::BadResponse {
                        status,
                        detail: format!("{e}; body starts {}", snippet(&self.redact(&text))),
                    },
                })
            }
        };
        if envelope.ok && (200..300).contains(&status) {
            return match envelope.result {
                Some(r) => Ok(span_in(&text, r.get())),
                None => Err(ApiError::BadResponse {
                    status,
                    detail: "ok without a result".into(),
                }),
            };
        }
        let description = envelope
            .description
            .unwrap_or_else(|| "no description".into());
        Err(match status {
            409 if description.contains("webhook") => ApiError::WebhookSet { description },
            409 => ApiError::OtherPoller { description },
            401 | 404 => ApiError::BadToken {
                status,
                description,
            },
            429 => ApiError::RateLimited {
                retry_after: Duration::from_secs(
                    envelope
                        .parameters
                        .and_then(|p| p.retry_after)
                        .or(retry_after_header)
                        .unwrap_or(5),
                ),
            },
            501 => ApiError::NotImplemented {
                status,
                description,
            },
            500..=599 => ApiError::Server {
                status,
                detail: description,
            },
            200..=299 => ApiError::BadResponse {
                status,
                detail: format!("{method} answered ok=false: {description}"),
            },
            _ => ApiError::Rejected {
                status,
                description,
            },
        })
    }
}

/// A long poll's failure as the poller decides on it. Not yet redacted.
fn poll_error(e: PollError, timeout: Duration) -> ApiError {
    match e {
        PollError::Timeout => ApiError::Timeout { timeout },
        PollError::TooLarge(limit) => ApiError::TooLarge { limit },
        PollError::Transport(text) => ApiError::Transport(text),
        PollError::NotH2 => ApiError::Transport("the server does not speak HTTP/2".into()),
    }
}

/// Each update of a getUpdates `result`, or why it is not an array of them.
fn split_updates(result: &Bytes) -> Result<Vec<Bytes>, ApiError> {
    batch::split(result).map_err(|detail| ApiError::BadResponse {
        status: 200,
        detail,
    })
}

/// A `result` as JSON text, for callers that only read it (invalid UTF-8
/// shows as `?`).
fn raw_value(result: &[u8]) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(readable(result).into_owned()).map_err(|e| ApiError::BadResponse {
        status: 200,
        detail: format!("result is not JSON: {e}"),
    })
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s: String = one_line.chars().take(120).collect();
    if one_line.chars().count() > 120 {
        s.push('…');
    }
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> BotApi {
        BotApi::new(
            "http://127.0.0.1:1/bot{token}/{method}",
            SecretString::from("123:SECRET"),
            crate::http::shared_client(),
        )
    }

    #[test]
    fn telegram_errors_map_to_what_a_poller_decides_on() {
        let a = api();
        let e = |status, body: &str| {
            a.interpret("getUpdates", status, None, body.as_bytes())
                .unwrap_err()
        };
        assert!(matches!(
            e(
                409,
                r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}"#
            ),
            ApiError::OtherPoller { .. }
        ));
        assert!(matches!(
            e(
                409,
                r#"{"ok":false,"error_code":409,"description":"Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"}"#
            ),
            ApiError::WebhookSet { .. }
        ));
        assert!(matches!(
            e(
                401,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#
            ),
            ApiError::BadToken { status: 401, .. }
        ));
        assert_eq!(
            e(
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#
            ),
            ApiError::RateLimited {
                retry_after: Duration::from_secs(7)
            }
        );
        assert!(matches!(
            e(502, "<html><body>502 Bad Gateway</body></html>"),
            ApiError::Server { status: 502, .. }
        ));
        assert!(matches!(
            e(200, r#"{"ok":true,"result":[{"update_id":"#),
            ApiError::BadResponse { .. }
        ));
    }

    #[test]
    fn retry_after_header_is_used_when_the_body_has_none() {
        let a = api();
        let e = a.interpret(
            "getUpdates",
            429,
            Some(1),
            br#"{"ok":false,"error_code":429,"description":"Too Many Requests"}"#,
        );
        assert_eq!(
            e.unwrap_err(),
            ApiError::RateLimited {
                retry_after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn backoff_grows_to_a_cap_and_bad_tokens_wait_long() {
        let server = ApiError::Server {
            status: 500,
            detail: String::new(),
        };
        assert_eq!(server.backoff(1), Duration::from_secs(1));
        assert_eq!(server.backoff(3), Duration::from_secs(4));
        assert_eq!(server.backoff(40), Duration::from_secs(30));
        let bad = ApiError::BadToken {
            status: 401,
            description: String::new(),
        };
        assert!(bad.backoff(1) >= Duration::from_secs(60));
    }

    #[test]
    fn redact_removes_the_token() {
        assert_eq!(
            api().redact("GET /bot123:SECRET/getMe failed"),
            "GET /bot<token>/getMe failed"
        );
    }

    fn long_token_api() -> BotApi {
        BotApi::new(
            "http://127.0.0.1:1/bot{token}/{method}",
            SecretString::from("123456789:AAE-secretTOKENpart_xyz0123456789abc"),
            crate::http::shared_client(),
        )
    }

    #[test]
    fn every_error_text_is_redacted_in_every_spelling() {
        let a = long_token_api();
        let secret = "AAE-secretTOKENpart_xyz0123456789abc";
        // The token straddles the snippet's 120-character cut: redacting
        // after the cut would leave its first half.
        let page = format!(
            "<html>{}/bot123456789%3a{secret}/getUpdates</html>",
            "x".repeat(100)
        );
        let errors = [
            a.interpret("getUpdates", 502, None, page.as_bytes()),
            a.interpret("getUpdates", 200, None, page.as_bytes()),
            a.interpret(
                "getUpdates",
                400,
                None,
                format!(r#"{{"ok":false,"description":"bad key {secret}"}}"#).as_bytes(),
            ),
        ];
        for e in errors {
            let text = e.unwrap_err().redacted(&a.redactor).to_string();
            assert!(!text.contains("AAE-secret"), "{text}");
        }
        let transport = ApiError::Transport(format!("proxy said /bot123456789%3A{secret}"));
        assert_eq!(
            transport.redacted(&a.redactor).to_string(),
            "connection failed: proxy said /bot<token>"
        );
    }

    #[test]
    fn updates_keep_their_exact_bytes_even_when_not_utf8() {
        let a = api();
        let body = Bytes::from_static(
            b"{\"ok\":true,\"result\":[{\"update_id\":1,\"t\":\"\xFF\"}, {\"update_id\":2}]}",
        );
        let result = body.slice(a.interpret("getUpdates", 200, None, &body).unwrap());
        let updates = split_updates(&result).unwrap();
        assert_eq!(
            updates,
            vec![
                Bytes::from_static(b"{\"update_id\":1,\"t\":\"\xFF\"}"),
                Bytes::from_static(b"{\"update_id\":2}")
            ]
        );
    }

    /// getUpdates' one-pass reading gives the general path's updates, and
    /// leaves every other answer to it (whose errors say what was wrong).
    #[test]
    fn updates_read_at_once_are_the_ones_read_in_two_steps() {
        let a = api();
        let answer = |status, body: &'static [u8]| Answer {
            status,
            retry_after: None,
            body: Bytes::from_static(body),
        };
        let two_steps = |ans: &Answer| {
            let result = a.interpret("getUpdates", ans.status, None, &ans.body)?;
            split_updates(&ans.body.slice(result))
        };
        for body in [
            &br#"{"ok":true,"result":[{"update_id":1,"message":{"text":"[\"]"}} , {"update_id":2}]}"#[..],
            br#"{"result":[],"ok":true,"extra":{"a":[1]}}"#,
            br#" {"ok":true,"description":"fine","result":[ [1], "x", 3 ]} "#,
        ] {
            let ans = answer(200, body);
            let fast = batch::at_once(&ans).expect("read at once");
            assert_eq!(fast, two_steps(&ans).unwrap());
            assert_eq!(a.updates_in(&ans), Ok(fast));
        }
        let first = batch::at_once(&answer(200, br#"{"ok":true,"result":[{"update_id":1,"message":{"text":"[\"]"}} , {"update_id":2}]}"#)).unwrap();
        assert_eq!(
            first[0],
            &br#"{"update_id":1,"message":{"text":"[\"]"}}"#[..]
        );
        for (status, body) in [
            (
                200,
                &b"{\"ok\":true,\"result\":[{\"update_id\":1,\"t\":\"\xFF\"}]}"[..],
            ),
            (200, br#"{"ok":false,"result":[],"description":"no"}"#),
            (200, br#"{"ok":true,"result":{"update_id":1}}"#),
            (200, br#"{"ok":true,"result":[1,]}"#),
            (200, br#"{"ok":true}"#),
            (429, br#"{"ok":true,"result":[]}"#),
            (
                409,
                br#"{"ok":false,"description":"terminated by other getUpdates request"}"#,
            ),
        ] {
            let ans = answer(status, body);
            assert_eq!(
                batch::at_once(&ans),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(a.updates_in(&ans), two_steps(&ans));
        }
    }

    #[test]
    fn a_batch_too_large_or_unreadable_can_be_retried_smaller() {
        assert!(ApiError::TooLarge {
            limit: MAX_RESPONSE
        }
        .batch_unreadable());
        let a = api();
        assert!(a
            .interpret("getUpdates", 200, None, b"{\"ok\":true,\"result\":[{")
            .unwrap_err()
            .batch_unreadable());
        assert!(!a
            .interpret("getUpdates", 502, None, b"<html>")
            .unwrap_err()
            .batch_unreadable());
    }
}
