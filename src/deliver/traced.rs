//! A delivery attempt as a span (`deliver`), while tracing is on: a child
//! of the poll that received the update, holding what became of the
//! attempt. Never the backend's URL (it may carry a secret in its query)
//! nor anything else a log line would not show.

use opentelemetry::trace::SpanContext;
use tracing::field::Empty;
use tracing::{info_span, Span};

use super::sink::Outcome;
use crate::store::Job;
use crate::trace::TARGET;

/// The span of attempt number `attempt` at `job`; `parent` is the poll
/// that received it, if still known.
pub(super) fn attempt_span(
    bot: &str,
    forward: &str,
    job: &Job,
    attempt: u32,
    parent: Option<&SpanContext>,
) -> Span {
    let span = info_span!(
        target: TARGET,
        "deliver",
        otel.kind = "client",
        bot = %bot,
        forward = %forward,
        update_id = job.update_id,
        attempt,
        status = Empty,
        error = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if let Some(parent) = parent {
        crate::trace::set_parent(&span, parent);
    }
    span
}

/// Records what became of the attempt on its span.
pub(super) fn record(span: &Span, outcome: &Outcome) {
    let (status, error) = match outcome {
        Outcome::Delivered { status, .. } => {
            if let Some(code) = status {
                span.record("http.response.status_code", code);
            }
            ("delivered", None)
        }
        Outcome::Refused(why) => ("refused", Some(why)),
        Outcome::Failed { error, .. } => ("failed", Some(error)),
        Outcome::NotSent { error, .. } => ("not sent", Some(error)),
    };
    span.record("status", status);
    if let Some(error) = error {
        if let Some(code) = crate::deliver::remember::status_in(error) {
            span.record("http.response.status_code", code);
        }
        span.record("error", error.as_str());
        span.record("otel.status_code", "ERROR");
    }
}
