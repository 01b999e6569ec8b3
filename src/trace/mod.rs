//! Traces: spans exported over OTLP when `[tracing] otlp_endpoint` is set,
//! one trace per polled batch.
//!
//! ```text
//! poll (bot, updates)                      one per stored batch; the root
//! ├── store.append (updates)               the write and its flush
//! └── deliver (bot, forward, update_id,    one per attempt, each a child of
//!     │        attempt, status, …)         the poll that received the update
//!     └── reply (method, ok, attempts)     a webhook reply's Bot API call
//!
//! gateway (bot, client, method, status)    a backend's call through the
//!                                          gateway: under the caller's
//!                                          `traceparent`, else a root
//! ```
//!
//! The spans are ordinary `tracing` spans with target [`TARGET`];
//! `tracing-opentelemetry` turns them into OpenTelemetry spans (`export`).
//! Logging never shows them, and when tracing is off their callsites are
//! disabled, so they cost one cached check each and the code that would
//! feed them (the [`Batches`] map, the `traceparent` header) is not run.
//!
//! A delivery runs long after its poll returned, on another task, so its
//! parent cannot come from the task's context: the poller leaves each
//! update's trace in [`Batches`] and the dispatcher looks it up.

mod batches;
pub mod export;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use batches::Batches;

/// The target of every span that is exported, and of nothing else.
pub const TARGET: &str = "pollhook::trace";

/// The OpenTelemetry identity of `span`, if it is exported (tracing on,
/// and the exporter installed).
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of `parent` (a span that ended or lives on another
/// task). Must come before the span is first entered.
pub fn set_parent(span: &tracing::Span, parent: &SpanContext) {
    // Fails only when no exporter is installed: then there is no trace.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
}

/// The span an incoming request's W3C `traceparent` names, if it is valid.
pub fn remote_parent(headers: &reqwest::header::HeaderMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The W3C `traceparent` (and `tracestate`, if any) naming the current
/// span, for a request that continues the trace elsewhere.
pub fn current_headers() -> Vec<(&'static str, String)> {
    let mut out = Headers(Vec::new());
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut out);
    out.0
}

struct Headers(Vec<(&'static str, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        // The propagator only ever names these two.
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((key, value));
    }
}
