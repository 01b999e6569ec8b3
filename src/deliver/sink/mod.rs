//! Where a forward's updates go: the seam between the dispatcher (order,
//! retries, dead letters, replies) and the wire: a signed HTTP POST, or a
//! JetStream publish. Both plug in here, so the dispatcher's guarantees
//! hold for every kind of forward.

pub mod http;
pub mod jetstream;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::reply::{ReplyBody, ReplyBudget};
use crate::cluster::fence::Fence;
use crate::config::{Destination, ForwardSettings};
use crate::nats::connection::Nats;
use crate::platform::flavor::Flavor;
use crate::store::Job;

/// The connections sinks are made with.
pub struct Wires<'a> {
    /// The process's delivery client.
    pub http: &'a crate::http::backend::Client,
    /// The process's NATS connection, when `[nats]` is configured.
    pub nats: Option<&'a Nats>,
    /// In a cluster, whether this node still leads the bot.
    pub fence: Option<&'a Fence>,
    /// Tracing is on: requests carry the attempt's `traceparent`.
    pub traced: bool,
}

/// The sink a forward delivers to. The one place that picks the kind of
/// sink from a forward's settings: a new kind is added here, not in the
/// dispatcher. None: a JetStream forward without a NATS connection, which
/// configuration validation refuses.
pub fn for_forward(
    bot: &str,
    flavor: Flavor,
    fwd: &ForwardSettings,
    wires: &Wires,
) -> Option<Arc<dyn Sink>> {
    let sink: Arc<dyn Sink> = match &fwd.to {
        Destination::Http(url) => Arc::new(
            http::Target::new(
                bot,
                flavor,
                url,
                fwd,
                wires.http.clone(),
                ReplyBudget::default(),
            )
            .traced(wires.traced),
        ),
        Destination::JetStream(subject) => Arc::new(
            jetstream::Publisher::new(bot, subject.clone(), fwd, wires.nats?.clone())
                .traced(wires.traced),
        ),
    };
    Some(match wires.fence {
        Some(fence) => Arc::new(Fenced {
            inner: sink,
            fence: fence.clone(),
        }),
        None => sink,
    })
}

/// A sink that sends nothing once this node may no longer lead the bot
/// (a cluster): a node that wakes from a pause finds it closed before it
/// could deliver anything as a leader it no longer is.
struct Fenced {
    inner: Arc<dyn Sink>,
    fence: Fence,
}

impl Sink for Fenced {
    fn shared_fate(&self) -> bool {
        self.inner.shared_fate()
    }

    fn send<'a>(
        &'a self,
        webhook_id: &'a str,
        job: &'a Job,
        attempt: u32,
    ) -> BoxFuture<'a, Outcome> {
        if !self.fence.valid() {
            return Box::pin(async {
                Outcome::NotSent {
                    error: "this node no longer leads the bot".into(),
                    retry_in: Duration::from_secs(1),
                }
            });
        }
        self.inner.send(webhook_id, job, attempt)
    }
}

/// One attempt at handing a job over.
pub trait Sink: Send + Sync {
    /// Whether the destination succeeds or fails as a whole, so that one
    /// success means every lane waiting out a failure may go again: true
    /// for one HTTP backend (down, then up); false for JetStream, where a
    /// failure is often one subject's (no stream captures this kind).
    fn shared_fate(&self) -> bool {
        true
    }

    /// Delivers `job` as attempt number `attempt` (1 for the first) under
    /// its stable `webhook_id`, and says what became of it. Never panics
    /// on what the other side answers.
    fn send<'a>(
        &'a self,
        webhook_id: &'a str,
        job: &'a Job,
        attempt: u32,
    ) -> BoxFuture<'a, Outcome>;
}

/// What became of one attempt.
#[derive(Debug)]
pub enum Outcome {
    /// The backend answered 2xx (`status`), or the stream acknowledged
    /// (None): the job is done. An HTTP body may hold a Bot API call to
    /// make on its behalf.
    Delivered {
        status: Option<u16>,
        reply: ReplyBody,
    },
    /// This update will never be accepted (HTTP 410 Gone, larger than the
    /// NATS server takes): it goes to dead letters at once, with why,
    /// instead of blocking its chat.
    Refused(String),
    /// Anything else; try again later (after `retry_after` if the backend
    /// said so on a 429 or 503).
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Nothing was sent: the way there is down (NATS disconnected). Not an
    /// attempt: it does not count toward `max_attempts` (the age limit
    /// still applies); look again in `retry_in`.
    NotSent { error: String, retry_in: Duration },
}
