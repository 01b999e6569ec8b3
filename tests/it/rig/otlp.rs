//! An OpenTelemetry collector standing in for the real one: it takes OTLP
//! over HTTP (`POST /v1/traces`, protobuf), decodes each export with the
//! `opentelemetry-proto` messages and keeps every span.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::sync::Notify;

use super::serve::{self, Body, DropConnection, Server};
use super::wait::on_change;

/// One span as the collector got it.
#[derive(Debug, Clone)]
pub struct GotSpan {
    pub name: String,
    /// Lower-case hex, as `traceparent` writes them.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    /// Every attribute of the span, its events and its links, as text.
    pub attributes: BTreeMap<String, String>,
    /// The resource's `service.name`.
    pub service: String,
    /// `Status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
}

impl GotSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn is_root(&self) -> bool {
        self.parent_id.is_empty()
    }
}

#[derive(Default)]
struct State {
    spans: Vec<GotSpan>,
    /// Export requests, each with its content type.
    requests: Vec<String>,
    /// Every attribute value of every export, resources included, for
    /// the scan for secrets.
    all_values: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Collector {
    inner: Arc<Inner>,
    server: Server,
}

impl Collector {
    pub async fn start() -> Collector {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        let shared = inner.clone();
        let server = Server::serve(serve::bind(0), move |req| {
            let inner = shared.clone();
            async move { Ok::<_, DropConnection>(take(&inner, req).await) }
        });
        Collector { inner, server }
    }

    /// The base URL for `otlp_endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn spans(&self) -> Vec<GotSpan> {
        self.inner.lock().spans.clone()
    }

    /// The content type of each export request so far.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    pub fn all_values(&self) -> Vec<String> {
        self.inner.lock().all_values.clone()
    }

    /// Waits until `check` finds what it wants among the spans.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&[GotSpan]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        let found = on_change(&self.inner.changed, deadline, || {
            check(&self.inner.lock().spans)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "collector: timed out after {within:?} waiting for {what}; got:\n{}",
                tree(&self.spans())
            )
        })
    }
}

async fn take(inner: &Inner, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let answer = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::default())
            .unwrap()
    };
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND);
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let decoded = ExportTraceServiceRequest::decode(body);
    let mut state = inner.lock();
    state.requests.push(content_type.clone());
    let Ok(export) = decoded else {
        return answer(StatusCode::BAD_REQUEST);
    };
    if content_type != "application/x-protobuf" {
        return answer(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    for rs in export.resource_spans {
        let resource = rs.resource.map(|r| attributes(&r.attributes));
        let resource = resource.unwrap_or_default();
        state.all_values.extend(resource.values().cloned());
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let mut attrs = attributes(&s.attributes);
                for e in &s.events {
                    state.all_values.push(e.name.clone());
                    for (k, v) in attributes(&e.attributes) {
                        attrs.insert(format!("event {}: {k}", e.name), v);
                    }
                }
                for l in &s.links {
                    for (k, v) in attributes(&l.attributes) {
                        attrs.insert(format!("link: {k}"), v);
                    }
                }
                let status = s.status.unwrap_or_default();
                state.all_values.extend(attrs.values().cloned());
                state.all_values.push(s.name.clone());
                state.all_values.push(status.message.clone());
                state.spans.push(GotSpan {
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_id: hex(&s.parent_span_id),
                    attributes: attrs,
                    service: service.clone(),
                    status_code: status.code,
                });
            }
        }
    }
    drop(state);
    inner.changed.notify_waiters();
    answer(StatusCode::OK)
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter()
            .map(|kv| format!("{}={}", kv.key, text(kv.value.as_ref())))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans as an indented tree, children under their parents, each
/// with its attributes: for failure messages and the test's output.
pub fn tree(spans: &[GotSpan]) -> String {
    fn walk(out: &mut String, spans: &[GotSpan], span: &GotSpan, depth: usize) {
        let attrs: Vec<String> = span
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "{}{} [span {}] {}",
            "    ".repeat(depth),
            span.name,
            span.span_id,
            attrs.join(" ")
        );
        for child in spans.iter().filter(|s| s.parent_id == span.span_id) {
            walk(out, spans, child, depth + 1);
        }
    }
    let mut out = String::new();
    let known = |id: &str| spans.iter().any(|s| s.span_id == id);
    for root in spans.iter().filter(|s| s.is_root() || !known(&s.parent_id)) {
        let _ = writeln!(
            out,
            "trace {} (service {}){}",
            root.trace_id,
            root.service,
            if root.is_root() {
                String::new()
            } else {
                format!(", parent {} not received", root.parent_id)
            }
        );
        walk(&mut out, spans, root, 1);
    }
    out
}
