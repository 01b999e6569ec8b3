//! Sending spans: the OpenTelemetry SDK's batch span processor with the
//! OTLP/HTTP (protobuf) exporter, the `tracing` layer that feeds it, and
//! the final export at stop.
//!
//! The processor exports from a thread of its own, which has no tokio
//! runtime; reqwest needs one. So the exporter's HTTP client ([`OnRuntime`])
//! runs each request on the process's runtime and hands the answer back:
//! our reqwest client and its rustls, not a second HTTP stack. It also
//! says when export fails, since the SDK's own diagnostics are off: a
//! warning at most once a minute, never more (spans are dropped, deliveries
//! go on).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{info, warn, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::TARGET;
use crate::config::{display_url, TracingSettings};

/// How long one export request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for the last spans to go out.
const STOP_WITHIN: Duration = Duration::from_secs(3);
/// The collector's answer is not used; enough to reuse the connection.
const ANSWER_CAP: usize = 64 * 1024;
/// At most one warning about failing exports per this many ms.
const WARN_EVERY_MS: u64 = 60_000;

/// The running exporter; [`Exporter::stop`] sends what is left.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Must be called on the runtime the exports will run on.
    pub fn start(settings: &TracingSettings) -> anyhow::Result<Exporter> {
        let client = OnRuntime {
            client: crate::http::shared_client(),
            runtime: tokio::runtime::Handle::current(),
            health: Arc::new(Health {
                url: display_url(&settings.traces_url),
                ..Health::default()
            }),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.as_str())
            .with_timeout(REQUEST_TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|e| anyhow::anyhow!("tracing: cannot set up the OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Exporter { provider })
    }

    /// The layer that turns [`TARGET`] spans into OpenTelemetry spans. It
    /// sees nothing else: no log event, no other span (so the long-lived
    /// `poller` and `forward` spans do not make every trace one).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("pollhook"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // busy_ns / idle_ns per span: work on every enter and exit
            // that says little here.
            .with_tracked_inactivity(false)
            // Parents come from `tracing`'s own context and `set_parent`;
            // nothing reads OpenTelemetry's thread-local context, so it is
            // not swapped in and out at every poll of every span's future.
            .with_context_activation(false)
            .with_filter(filter_fn(|meta| meta.target() == TARGET))
    }

    /// Exports what is still buffered, waiting at most a few seconds.
    pub async fn stop(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let provider = self.provider;
        // Blocking, and the export it waits for runs on this runtime: off
        // the runtime's threads, and not waited for past the limit.
        std::thread::spawn(move || {
            let _ = tx.send(provider.shutdown_with_timeout(STOP_WITHIN));
        });
        match tokio::time::timeout(STOP_WITHIN + Duration::from_secs(1), rx).await {
            Ok(Ok(Ok(()))) => tracing::debug!("traces: exported"),
            Ok(Ok(Err(e))) => warn!("traces: not every span was exported at stop: {e}"),
            _ => warn!(
                "traces: the last spans were not exported within {}s",
                STOP_WITHIN.as_secs()
            ),
        }
    }
}

/// The exporter's HTTP client: our reqwest client, on the runtime.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    health: Arc<Health>,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let health = self.health.clone();
        let sent = self.runtime.spawn(async move {
            let answer = post(&client, request).await;
            health.note(&answer);
            answer
        });
        match sent.await {
            Ok(answer) => answer.map_err(HttpError::from),
            Err(e) => Err(HttpError::from(e.to_string())),
        }
    }
}

async fn post(
    client: &reqwest::Client,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, String> {
    let (parts, body) = request.into_parts();
    let answer = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| crate::http::error_chain(&e.without_url()))?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = crate::http::read_capped(answer, ANSWER_CAP)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Whether exports succeed, for the log.
#[derive(Debug, Default)]
struct Health {
    /// Where spans go, for messages (no credentials: config refuses them).
    url: String,
    failing: AtomicBool,
    failures: AtomicU64,
    last_warned_ms: AtomicU64,
}

impl Health {
    fn note(&self, answer: &Result<Response<Bytes>, String>) {
        let problem = match answer {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status())),
            Err(e) => Some(e.clone()),
        };
        let Some(problem) = problem else {
            if self.failing.swap(false, Ordering::Relaxed) {
                info!("traces: {} takes spans again", self.url);
            }
            return;
        };
        self.failing.store(true, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::clock::now_ms();
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS;
        if due
            && self
                .last_warned_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                failures,
                "traces: cannot export spans to {}: {problem}; those spans are dropped (deliveries are not affected); check [tracing] otlp_endpoint and the collector",
                self.url
            );
        }
    }
}
