//! The JetStream sink: one publish per attempt, done when the stream
//! acknowledged it (stored, with its replicas), never on the client's
//! promise to send.
//!
//! `Nats-Msg-Id` is the update's `webhook-id`, so a publish repeated after
//! a crash (stored here, published, killed before the queue forgot it)
//! falls in the stream's duplicate window and is dropped by JetStream.

use std::time::Duration;

use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use tokio::time::timeout;
use tracing::info;

use super::{Outcome, Sink};
use crate::config::ForwardSettings;
use crate::deliver::reply::ReplyBody;
use crate::nats::connection::Nats;
use crate::nats::subject::{SubjectTemplate, Values};
use crate::platform::update::Lane;
use crate::signing::{signature_header, SigningKey};
use crate::store::Job;

/// While NATS is away, how often a lane looks again. Nothing goes on the
/// wire, so it costs nothing, and the first lane to find NATS back wakes
/// every other (the dispatcher releases all lanes on a success).
const RECHECK: Duration = Duration::from_secs(1);
/// Room left for the headers when comparing an update with the server's
/// `max_payload` (they count against it; ours are well under this).
const HEADER_ROOM: usize = 2048;

pub struct Publisher {
    nats: Nats,
    js: jetstream::Context,
    bot: String,
    subject: SubjectTemplate,
    keys: Vec<SigningKey>,
    timeout: Duration,
    /// Tracing is on: each message names its attempt's span in
    /// `traceparent`, as the HTTP sink's requests do.
    traced: bool,
}

impl Publisher {
    pub fn new(bot: &str, subject: SubjectTemplate, fwd: &ForwardSettings, nats: Nats) -> Self {
        // The forward's timeout bounds the whole publish; the context's own
        // (for the ack) is the same so its error names the right cause.
        // Room for every lane's ack plus acks abandoned on a timeout, which
        // the context holds a while longer: never a wait for a permit.
        let js = ContextBuilder::new()
            .timeout(fwd.timeout)
            .max_ack_inflight(fwd.max_in_flight * 2 + 16)
            .build(nats.client().clone());
        Publisher {
            nats,
            js,
            bot: bot.to_string(),
            subject,
            keys: fwd.signing_keys.clone(),
            timeout: fwd.timeout,
            traced: false,
        }
    }

    /// Sends `traceparent` with each message (tracing on).
    pub fn traced(mut self, on: bool) -> Publisher {
        self.traced = on;
        self
    }

    async fn publish(&self, webhook_id: &str, job: &Job, attempt: u32) -> Outcome {
        if !self.nats.connected() {
            return Outcome::NotSent {
                error: "NATS is not connected".into(),
                retry_in: RECHECK,
            };
        }
        let chat = match &job.lane {
            Lane::Chat(id) | Lane::User(id) => Some(id.as_str()),
            Lane::Alone => None,
        };
        let subject = self.subject.render(&Values {
            bot: &self.bot,
            kind: &job.kind,
            chat,
            update_id: job.update_id,
        });
        // Too large, the server would not refuse the message but close the
        // connection every JetStream forward shares, over and over.
        let max = self.nats.client().server_info().max_payload;
        if max > 0 && job.payload.len() + HEADER_ROOM > max {
            return Outcome::Refused(format!(
                "the update is {} bytes, more than this NATS server's max_payload ({max} bytes) allows with headers; raise max_payload in the server's configuration, then replay it from dead letters",
                job.payload.len()
            ));
        }
        let headers = self.headers(webhook_id, job, attempt);
        let message = PublishMessage::build()
            .payload(job.payload.clone())
            .headers(headers)
            .message_id(webhook_id);
        let publish = async {
            let ack = self.js.send_publish(subject.clone(), message).await?;
            ack.await
        };
        match timeout(self.timeout, publish).await {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    // Expected after a crash between the ack and forgetting
                    // the job; anything else (a copied state directory
                    // reusing ids) should be seen.
                    info!(update_id = %crate::platform::update::LogId(job.update_id), stream = %ack.stream, webhook_id, "JetStream already held this update (same Nats-Msg-Id within the stream's duplicate window): not stored twice");
                }
                Outcome::Delivered {
                    status: None,
                    reply: ReplyBody::None,
                }
            }
            Ok(Err(e)) if too_large(&e) => Outcome::Refused(format!(
                "the stream refuses {subject}: the update ({} bytes) is larger than its max_msg_size; raise it, then replay it from dead letters",
                job.payload.len()
            )),
            Ok(Err(e)) => Outcome::Failed {
                error: self.explain(&subject, &e),
                retry_after: None,
            },
            Err(_) => Outcome::Failed {
                error: format!(
                    "JetStream did not acknowledge {subject} within {}s",
                    self.timeout.as_secs_f64()
                ),
                retry_after: None,
            },
        }
    }

    fn headers(&self, webhook_id: &str, job: &Job, attempt: u32) -> HeaderMap {
        let timestamp = (crate::clock::now_ms() / 1000) as i64;
        let received_at = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(job.received_ms),
        );
        let mut h = HeaderMap::new();
        h.insert("Content-Type", "application/json");
        h.insert("webhook-id", webhook_id);
        h.insert("webhook-timestamp", timestamp.to_string().as_str());
        if !self.keys.is_empty() {
            h.insert(
                "webhook-signature",
                signature_header(&self.keys, webhook_id, timestamp, &job.payload).as_str(),
            );
        }
        h.insert("X-Pollhook-Bot", self.bot.as_str());
        h.insert("X-Pollhook-Kind", header_safe(&job.kind));
        if let Lane::Chat(id) = &job.lane {
            h.insert("X-Pollhook-Chat", header_safe(id));
        }
        if let Some(id) = job.update_id {
            h.insert("X-Pollhook-Update-Id", id.to_string().as_str());
        }
        h.insert("X-Pollhook-Attempt", attempt.to_string().as_str());
        h.insert("X-Pollhook-Received-At", received_at.to_string().as_str());
        if job.replayed_ms != 0 {
            h.insert(
                "X-Pollhook-Replay",
                (job.replayed_ms / 1000).to_string().as_str(),
            );
        }
        if self.traced {
            for (name, value) in crate::trace::current_headers() {
                h.insert(name, value.as_str());
            }
        }
        h
    }

    /// A publish error in words that say what to do.
    fn explain(&self, subject: &str, e: &jetstream::context::PublishError) -> String {
        match e.kind() {
            PublishErrorKind::StreamNotFound => format!(
                "no stream listens on {subject}: create one that captures {pattern}, e.g. `nats stream add TG --subjects '{pattern}' --storage file --dupe-window 2m`",
                pattern = self.subject.pattern(&self.bot)
            ),
            PublishErrorKind::TimedOut => format!(
                "JetStream did not acknowledge {subject} in time (is the stream's leader or quorum available?)"
            ),
            PublishErrorKind::BrokenPipe => {
                format!("the NATS connection broke while publishing {subject}")
            }
            _ => format!("JetStream refused {subject}: {}", crate::http::error_chain(e)),
        }
    }
}

/// Whether the stream refused the message for its size.
fn too_large(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}

/// Values that come from the platform go into a header only as visible
/// ASCII (a CR or LF would end the header block on the wire) and short.
fn header_safe(value: &str) -> &str {
    if !value.is_empty()
        && value.len() <= crate::nats::subject::MAX_VALUE
        && value.chars().all(|c| c.is_ascii_graphic())
    {
        value
    } else {
        "_"
    }
}

impl Sink for Publisher {
    fn shared_fate(&self) -> bool {
        false
    }

    fn send<'a>(
        &'a self,
        webhook_id: &'a str,
        job: &'a Job,
        attempt: u32,
    ) -> futures_util::future::BoxFuture<'a, Outcome> {
        Box::pin(self.publish(webhook_id, job, attempt))
    }
}
