//! One call through the gateway: who is calling, whether they may, the
//! wait for the bot's budget, the platform's answer passed back as it
//! came (a 429 waited out and retried on the way).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::answers::{self, Answer, Answers};
use super::params::{self, ReadError};
use super::{Caller, Gateway};
use crate::budget::{Ask, Overflow};
use crate::http::{read_capped, BodyError};

/// Methods that belong to pollhook alone: it receives the bot's updates.
const OWN: &[&str] = &[
    "getUpdates",
    "setWebhook",
    "deleteWebhook",
    "logOut",
    "close",
];
/// How long a client may take to send the part of a body that is read
/// before the call is made.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A call whose body is held whole: the platform answers within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A streamed upload (up to the platform's 50 MB) or a download.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// An error answer is read whole (to scrub it, or to find `retry_after`).
const MAX_ERROR: usize = 64 << 10;

/// A Bot API-shaped error, so frameworks raise their usual exception.
pub fn error(code: u16, description: &str) -> Response<Body> {
    let body = serde_json::json!({"ok": false, "error_code": code, "description": description});
    json(code, Bytes::from(body.to_string()))
}

fn json(code: u16, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn too_many(retry_after: u64, why: &str) -> Response<Body> {
    let body = serde_json::json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {retry_after} ({why})"),
        "parameters": {"retry_after": retry_after},
    });
    let mut r = json(429, Bytes::from(body.to_string()));
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// `POST|GET /bot{key}/{method}`.
pub async fn method(
    gw: Arc<Gateway>,
    caller: Caller,
    method: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let (bot, client) = (caller.bot(&gw), caller.client(&gw));
    let count = |result: &'static str| {
        gw.stats.count(&bot.name, &client.name, &method, result);
    };
    if !method.bytes().all(|b| b.is_ascii_alphanumeric()) || method.is_empty() {
        count("refused");
        return error(404, "Not Found: no such method");
    }
    if let Some(own) = OWN.iter().find(|m| m.eq_ignore_ascii_case(&method)) {
        count("refused");
        return error(
            403,
            &format!("Forbidden: {own} is not available through the pollhook gateway: pollhook receives this bot's updates"),
        );
    }
    if !client.methods.allows(&method) {
        count("refused");
        return error(
            403,
            &format!(
                "Forbidden: client {:?} may not call {method} (its methods: {})",
                client.name, client.methods
            ),
        );
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let stream: params::BodyStream = Box::pin(body.into_data_stream());
    let mut read = match params::read(
        query.as_deref(),
        content_type.as_deref(),
        stream,
        READ_TIMEOUT,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            count("refused");
            let code = match e {
                ReadError::TooLarge => 413,
                ReadError::Timeout => 408,
                ReadError::Broken(_) | ReadError::Invalid(_) => 400,
            };
            return error(code, &format!("Bad Request: {e}"));
        }
    };
    let refused_chat = Arc::new(std::sync::Mutex::new(None));
    if let Some(allowed) = &client.chats {
        if let Some((_, other)) = read.chats.iter().find(|(_, c)| !allowed.contains(c)) {
            count("refused");
            return error(
                403,
                &format!(
                    "Forbidden: client {:?} may not act in chat {other}",
                    client.name
                ),
            );
        }
        // A streamed upload's later fields are checked as they pass.
        if let (false, Some(boundary)) = (read.complete, read.boundary.clone()) {
            if let params::Body::Streamed { read: head, rest } =
                std::mem::replace(&mut read.body, params::Body::None)
            {
                let rest =
                    params::guard(&head, rest, boundary, allowed.clone(), refused_chat.clone());
                read.body = params::Body::Streamed { read: head, rest };
            }
        }
    }
    // A repeated Idempotency-Key gets the first call's answer.
    let running = match headers.get("idempotency-key") {
        None => None,
        Some(k) => {
            let Some(k) = k
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= answers::MAX_KEY)
            else {
                count("refused");
                return error(
                    400,
                    &format!(
                        "Bad Request: an Idempotency-Key must be 1 to {} visible ASCII characters",
                        answers::MAX_KEY
                    ),
                );
            };
            let key = Answers::key(&bot.name, &client.name, k);
            match tokio::time::timeout(gw.max_wait, gw.answers.begin(key)).await {
                Err(_) => {
                    count("overflow");
                    return too_many(
                        gw.max_wait.as_secs().max(1),
                        "a call with this Idempotency-Key is still running",
                    );
                }
                Ok(Ok(answer)) => {
                    count(if (200..300).contains(&answer.status) {
                        "ok"
                    } else {
                        "error"
                    });
                    let mut r = respond(answer);
                    r.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return r;
                }
                Ok(Err(running)) => Some(running),
            }
        }
    };
    // The call runs to its end in a task of its own: a client that hangs
    // up mid-call (and retries with its Idempotency-Key) must find the
    // answer remembered, and the chat's next call must not overtake it.
    let call = Call {
        gw: gw.clone(),
        caller,
        method,
        query,
        content_type,
        read,
        running,
        refused_chat,
    };
    match tokio::spawn(call.run()).await {
        Ok(r) => r,
        Err(_) => error(500, "Internal Server Error: the call's task failed"),
    }
}

struct Call {
    gw: Arc<Gateway>,
    caller: Caller,
    method: String,
    query: Option<String>,
    content_type: Option<String>,
    read: params::Read,
    running: Option<answers::Running>,
    refused_chat: Arc<std::sync::Mutex<Option<String>>>,
}

impl Call {
    async fn run(self) -> Response<Body> {
        let Call {
            gw,
            caller,
            method,
            query,
            content_type,
            mut read,
            running,
            refused_chat,
        } = self;
        let (bot, client) = (caller.bot(&gw), caller.client(&gw));
        let count = |result: &'static str| {
            gw.stats.count(&bot.name, &client.name, &method, result);
        };
        let deadline = Instant::now() + gw.max_wait;
        // Streamed uploads hold their place in the bot's windows until the
        // platform answers; only some may, so that slow ones cannot take
        // every place from the rest of the bot's calls.
        let _upload = if read.body.replayable() {
            None
        } else {
            match tokio::time::timeout_at(deadline, bot.uploads.clone().acquire_owned()).await {
                Ok(Ok(p)) => Some(p),
                _ => {
                    count("overflow");
                    return too_many(1, "too many uploads to this bot are in progress");
                }
            }
        };
        let ask = Ask::new(bot.budget.limits(), &method, read.chat());
        let mut slot = match bot.budget.acquire(&ask, deadline).await {
            Ok(s) => s,
            Err(o) => {
                count("overflow");
                return overflow(&o, &bot.name, &client.name, &method);
            }
        };
        loop {
            let timeout = if read.body.replayable() {
                CALL_TIMEOUT
            } else {
                TRANSFER_TIMEOUT
            };
            let sent = bot
                .api
                .pass(
                    &method,
                    query.as_deref(),
                    content_type.as_deref(),
                    read.body.take(),
                    timeout,
                )
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    if let Some(why) = refused_chat
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                    {
                        count("refused");
                        return error(403, &format!("Forbidden: client {:?} may not act in {why}; the upload was cut short", client.name));
                    }
                    count("failed");
                    warn!(bot = %bot.name, client = %client.name, %method, "gateway: the platform could not be reached: {e}");
                    return error(
                        502,
                        &format!("Bad Gateway: the platform could not be reached: {e}"),
                    );
                }
            };
            let status = response.status().as_u16();
            let retry_header = crate::http::retry_after_secs(response.headers());
            let content_type = content_type_of(&response);
            let success = (200..300).contains(&status);
            // getFile's path may hold the token (a local Bot API server
            // answers with a path under a folder named after it): scrubbed.
            let scrub = !success || method.eq_ignore_ascii_case("getFile");
            if success && running.is_none() && !scrub {
                // Nothing to remember and nothing to scrub: streamed back,
                // so a large answer costs no memory here.
                drop(slot);
                count("ok");
                return with_type(status, content_type, body_of(response, bot.api.clone()));
            }
            let body = match read_capped(
                response,
                if success {
                    answers::MAX_ANSWER
                } else {
                    MAX_ERROR
                },
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    count("failed");
                    let e = match e {
                        BodyError::TooLarge(_) => {
                            "its answer is too large to remember for an Idempotency-Key".to_string()
                        }
                        other => bot.api.redact(&other.to_string()),
                    };
                    warn!(bot = %bot.name, client = %client.name, %method, "gateway: the platform's answer could not be read: {e}");
                    return error(
                        502,
                        &format!("Bad Gateway: the platform's answer could not be read: {e}"),
                    );
                }
            };
            if status == 429 {
                let retry_after = retry_after(&body)
                    .or(retry_header)
                    .unwrap_or(5)
                    .clamp(1, 3600);
                let d = Duration::from_secs(retry_after);
                slot.rate_limited(d);
                let scope = ask
                    .chat
                    .as_deref()
                    .map_or("the whole bot".to_string(), |c| format!("chat {c}"));
                if read.body.replayable() && Instant::now() + d < deadline {
                    info!(bot = %bot.name, client = %client.name, %method, "the platform answered 429: {scope} paused for {retry_after}s; the call waits and is made again");
                    if slot.again(deadline).await.is_ok() {
                        continue;
                    }
                } else {
                    info!(bot = %bot.name, client = %client.name, %method, "the platform answered 429: {scope} paused for {retry_after}s; the client gets the 429 (its call cannot be made again within max_wait, or its upload was streamed)");
                }
            }
            drop(slot);
            let answer = Answer {
                status,
                content_type,
                // The token is in every URL the platform saw: an error page
                // that echoes the URL must not hand it to the client.
                body: if scrub {
                    Bytes::from(bot.api.redact(&String::from_utf8_lossy(&body)))
                } else {
                    body
                },
            };
            count(if success { "ok" } else { "error" });
            debug!(bot = %bot.name, client = %client.name, %method, status, "gateway call answered");
            // A 429 or a 5xx says nothing about the message: a retry runs.
            if let Some(running) = &running {
                if status != 429 && status < 500 {
                    gw.answers.keep(running, &answer);
                }
            }
            return respond(answer);
        }
    }
}

fn overflow(o: &Overflow, bot: &str, client: &str, method: &str) -> Response<Body> {
    let secs = o.retry_after_secs();
    let why = match o {
        Overflow::Full { .. } => "too many calls wait for this bot's rate limits",
        Overflow::Waited { .. } => "the call waited max_wait for this bot's rate limits",
    };
    info!(%bot, %client, %method, "gateway: {why}; answered 429 with retry_after {secs}");
    too_many(secs, why)
}

fn retry_after(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("parameters")?.get("retry_after")?.as_u64()
}

fn respond(a: Answer) -> Response<Body> {
    with_type(a.status, a.content_type, Body::from(a.body))
}

/// The platform's status and content type over `body`.
fn with_type(status: u16, content_type: Option<String>, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

/// `GET /file/bot{key}/{path}`: the file, streamed back.
pub async fn file(gw: Arc<Gateway>, caller: Caller, path: String) -> Response<Body> {
    let (bot, client) = (caller.bot(&gw), caller.client(&gw));
    if !client.methods.allows("getFile") {
        gw.stats.count(&bot.name, &client.name, "file", "refused");
        return error(
            403,
            &format!(
                "Forbidden: client {:?} may not download files (its methods do not admit getFile)",
                client.name
            ),
        );
    }
    if path.is_empty() || path.split('/').any(|s| s == ".." || s == ".") {
        gw.stats.count(&bot.name, &client.name, "file", "refused");
        return error(400, "Bad Request: not a file path");
    }
    let response = match bot.api.download(&path, TRANSFER_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            gw.stats.count(&bot.name, &client.name, "file", "failed");
            warn!(bot = %bot.name, client = %client.name, "gateway: a file download failed: {e}");
            return error(
                502,
                &format!("Bad Gateway: the file could not be fetched: {e}"),
            );
        }
    };
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        gw.stats.count(&bot.name, &client.name, "file", "error");
        let content_type = content_type_of(&response);
        // An error page may echo the URL, and the URL holds the token.
        let body = read_capped(response, MAX_ERROR).await.unwrap_or_default();
        return respond(Answer {
            status,
            content_type,
            body: Bytes::from(bot.api.redact(&String::from_utf8_lossy(&body))),
        });
    }
    gw.stats.count(&bot.name, &client.name, "file", "ok");
    let mut r =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for h in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::LAST_MODIFIED,
    ] {
        if let Some(v) = response
            .headers()
            .get(h.as_str())
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            r = r.header(h, v);
        }
    }
    r.body(body_of(response, bot.api.clone()))
        .unwrap_or_else(|_| error(502, "Bad Gateway"))
}

fn content_type_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A platform's answer passed on as it arrives.
fn body_of(response: reqwest::Response, api: Arc<crate::platform::api::BotApi>) -> Body {
    let stream = response.bytes_stream().map(move |c| {
        c.map_err(|e| {
            std::io::Error::other(api.redact(&crate::http::error_chain(&e.without_url())))
        })
    });
    Body::from_stream(stream)
}
