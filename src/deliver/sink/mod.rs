//! Where a forward's updates go: the seam between the dispatcher (order,
//! retries, dead letters, replies) and the wire. HTTP is the one sink
//! today; a JetStream publish is the next and plugs in here, so the
//! dispatcher's guarantees hold for every kind of forward.

pub mod http;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::reply::{ReplyBody, ReplyBudget};
use crate::config::ForwardSettings;
use crate::platform::flavor::Flavor;
use crate::store::Job;

/// The sink a forward delivers to. The one place that picks the kind of
/// sink from a forward's settings: a new kind is added here, not in the
/// dispatcher.
pub fn for_forward(
    bot: &str,
    flavor: Flavor,
    fwd: &ForwardSettings,
    client: &reqwest::Client,
) -> Arc<dyn Sink> {
    Arc::new(http::Target::new(
        bot,
        flavor,
        fwd,
        client.clone(),
        ReplyBudget::default(),
    ))
}

/// One attempt at handing a job over.
pub trait Sink: Send + Sync {
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
    /// The backend answered 2xx: the job is done. The body may hold a Bot
    /// API call to make on its behalf.
    Delivered { status: u16, reply: ReplyBody },
    /// 410 Gone: the backend says this update will never be accepted; it
    /// goes to dead letters at once instead of blocking its chat.
    Gone,
    /// Anything else; try again later (after `retry_after` if the backend
    /// said so on a 429 or 503).
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}
