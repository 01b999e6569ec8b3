//! The HTTP sink: a signed POST per attempt (Standard Webhooks headers and
//! the platform's secret-token header), its answer classified.

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Uri};
use secrecy::ExposeSecret;
use tokio::time::{timeout_at, Instant};

use super::{Outcome, Sink};
use crate::config::ForwardSettings;
use crate::deliver::reply::{self, ReplyBody, ReplyBudget};
use crate::http::backend::{self, read_capped};
use crate::http::error_chain;
use crate::platform::flavor::Flavor;
use crate::signing::{signature_header, SigningKey};
use crate::store::Job;

/// What is read of a body that is not wanted, so the connection can be
/// reused.
const DISCARD: usize = 64 * 1024;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const ATTEMPT: HeaderName = HeaderName::from_static("x-pollhook-attempt");
const RECEIVED_AT: HeaderName = HeaderName::from_static("x-pollhook-received-at");
const REPLAY: HeaderName = HeaderName::from_static("x-pollhook-replay");

/// A forward's endpoint with everything needed to sign and send to it.
pub struct Target {
    client: backend::Client,
    uri: Result<Uri, String>,
    keys: Vec<SigningKey>,
    /// Headers that are the same on every request (secret token, bot name).
    fixed: HeaderMap,
    timeout: Duration,
    /// Permits for reply bodies; None when the forward runs no replies.
    replies: Option<ReplyBudget>,
    /// Tracing is on: each request names its attempt's span in
    /// `traceparent`, so the backend's own spans join the trace.
    traced: bool,
}

impl Target {
    /// `client` is the process's shared one: it follows no redirect (a
    /// redirect is a misconfiguration to surface; following it would send
    /// signed updates somewhere unreviewed); the timeout is set per request.
    pub fn new(
        bot: &str,
        flavor: Flavor,
        url: &url::Url,
        fwd: &ForwardSettings,
        client: backend::Client,
        replies: ReplyBudget,
    ) -> Target {
        // url::Url writes out a URL hyper takes (percent-encoded, an
        // http(s) scheme, as configuration validated); kept as a result so
        // that one it did not take fails its attempts with a reason.
        let uri = url.as_str().parse::<Uri>().map_err(|e| e.to_string());
        let mut fixed = HeaderMap::new();
        fixed.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        fixed.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("pollhook/", env!("CARGO_PKG_VERSION"))),
        );
        if let Ok(v) = HeaderValue::from_str(bot) {
            fixed.insert(HeaderName::from_static("x-pollhook-bot"), v);
        }
        if let Some(token) = &fwd.secret_token {
            // Validated in config to be header-safe characters.
            if let Ok(mut v) = HeaderValue::from_str(token.expose_secret()) {
                v.set_sensitive(true);
                let name = HeaderName::from_bytes(flavor.secret_token_header().as_bytes())
                    .expect("static header names are valid");
                fixed.insert(name, v);
            }
        }
        Target {
            client,
            uri,
            keys: fwd.signing_keys.clone(),
            fixed,
            timeout: fwd.timeout,
            replies: fwd.reply_calls.then_some(replies),
            traced: false,
        }
    }

    /// Sends `traceparent` with each request (tracing on).
    pub fn traced(mut self, on: bool) -> Target {
        self.traced = on;
        self
    }

    /// Sends `job` as attempt number `attempt` (1 for the first).
    async fn post(&self, webhook_id: &str, job: &Job, attempt: u32) -> Outcome {
        let timestamp = (crate::clock::now_ms() / 1000) as i64;
        let received_at = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(job.received_ms),
        );
        // The timeout covers the answer and a body read now, not a reply
        // body left to read later (see deliver/reply/body.rs).
        let deadline = Instant::now() + self.timeout;
        // The request is built as a whole, its header names constants: a
        // builder parsing each name from a string and merging the fixed
        // headers one by one was ~2 % of the relay's CPU per update
        // (BENCHMARKS.md, 2026-12-02).
        let mut headers = self.fixed.clone();
        headers.reserve(8);
        let id = match HeaderValue::from_str(webhook_id) {
            Ok(v) => v,
            Err(_) => {
                return Outcome::Failed {
                    error: "the webhook-id is not a valid header value".into(),
                    retry_after: None,
                }
            }
        };
        headers.insert(WEBHOOK_ID, id);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        headers.insert(ATTEMPT, HeaderValue::from(attempt));
        if let Ok(v) = HeaderValue::from_str(&received_at.to_string()) {
            headers.insert(RECEIVED_AT, v);
        }
        if job.replayed_ms != 0 {
            // Says "this was sent before"; the webhook-id is the original's,
            // so a receiver that de-duplicates by it decides what to do.
            headers.insert(REPLAY, HeaderValue::from(job.replayed_ms / 1000));
        }
        if self.traced {
            // The attempt's span is the current one (the dispatcher runs
            // each send inside it).
            for (name, value) in crate::trace::current_headers() {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.append(HeaderName::from_static(name), v);
                }
            }
        }
        if !self.keys.is_empty() {
            let signature = signature_header(&self.keys, webhook_id, timestamp, &job.payload);
            if let Ok(v) = HeaderValue::from_str(&signature) {
                headers.insert(SIGNATURE, v);
            }
        }
        let mut req = hyper::Request::new(backend::Body::new(job.payload.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = match &self.uri {
            Ok(uri) => uri.clone(),
            Err(e) => {
                return Outcome::Failed {
                    error: format!("the forward's URL cannot be sent to: {e}"),
                    retry_after: None,
                }
            }
        };
        *req.headers_mut() = headers;
        let response = match timeout_at(deadline, self.client.send(req)).await {
            Ok(Ok(r)) => r,
            Err(_) => return self.timed_out(),
            // hyper's errors carry no URL, so nothing of it to strip.
            Ok(Err(e)) => {
                return Outcome::Failed {
                    error: error_chain(&e),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        if status.is_success() {
            // The body only matters as a possible webhook reply; whatever
            // becomes of it, the update counts as delivered.
            let reply = match &self.replies {
                Some(budget) => reply::take(response, budget, deadline, self.timeout).await,
                None => {
                    let _ = timeout_at(deadline, read_capped(response, DISCARD)).await;
                    ReplyBody::None
                }
            };
            return Outcome::Delivered {
                status: Some(status.as_u16()),
                reply,
            };
        }
        // Read (and drop) the rest so the connection can be reused.
        let _ = timeout_at(deadline, read_capped(response, DISCARD)).await;
        if status.as_u16() == 410 {
            return Outcome::Refused(
                "HTTP 410 Gone: the backend refuses this update for good".into(),
            );
        }
        let error = if status.is_redirection() {
            format!(
                "HTTP {status} (redirects are not followed; point the forward at the final URL)"
            )
        } else {
            format!("HTTP {status}")
        };
        let honour = matches!(status.as_u16(), 429 | 503);
        Outcome::Failed {
            error,
            retry_after: if honour { retry_after } else { None },
        }
    }

    fn timed_out(&self) -> Outcome {
        Outcome::Failed {
            error: format!("no answer within {}s", self.timeout.as_secs_f64()),
            retry_after: None,
        }
    }
}

/// `Retry-After` in seconds. The HTTP-date form is rare from webhook
/// receivers and would need a date parser; it falls back to our schedule.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Sink for Target {
    fn send<'a>(
        &'a self,
        webhook_id: &'a str,
        job: &'a Job,
        attempt: u32,
    ) -> futures_util::future::BoxFuture<'a, Outcome> {
        Box::pin(self.post(webhook_id, job, attempt))
    }
}
