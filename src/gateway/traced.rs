//! A gateway call as a span (`gateway`), while tracing is on: a child of
//! the caller's span when its request carries `traceparent` (a backend
//! instrumented with OpenTelemetry sees its Bot API call in its own trace),
//! else the root of a trace of its own. Never the key (it is in the URL,
//! which is not recorded) nor the call's parameters.

use axum::body::Body;
use axum::http::{HeaderMap, Response};
use tracing::field::Empty;
use tracing::{info_span, Span};

use super::{Caller, Gateway};
use crate::trace::TARGET;

pub(super) fn span(gw: &Gateway, caller: Caller, method: &str, headers: &HeaderMap) -> Span {
    // The method comes from the client's URL: recorded only if it looks
    // like one (the call refuses it otherwise).
    let method = if !method.is_empty()
        && method.len() <= 64
        && method.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        method
    } else {
        "(not a method)"
    };
    let span = info_span!(
        target: TARGET,
        "gateway",
        otel.kind = "server",
        bot = %caller.bot(gw).name,
        client = %caller.client(gw).name,
        method,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    if let Some(parent) = crate::trace::remote_parent(headers) {
        crate::trace::set_parent(&span, &parent);
    }
    span
}

pub(super) fn record(span: &Span, response: &Response<Body>) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if !status.is_success() {
        span.record("otel.status_code", "ERROR");
    }
}
