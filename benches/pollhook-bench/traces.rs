//! The `tracing` scenario: what exporting spans costs the hot path. The
//! `throughput` workload (100,000 updates over 100 chats to the fast
//! backend) with `[tracing] otlp_endpoint` pointing at an OTLP/HTTP sink in
//! the bench process (it decodes each export, counts its spans and drops
//! them) and with tracing off, in rounds that rotate which goes first, as
//! `history` pairs them; the median of the per-round ratios. With
//! `--today BIN` each round also runs BIN, a pollhook built from before
//! traces existed, tracing off: off / today says whether the code that
//! exists for traces costs anything when it is off.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::figures::{loadavg, per_100k, quantile};
use crate::proc::Config;
use crate::servers::{listen, serve};
use crate::{row, run_throughput_with, Relay};

pub struct Sizes {
    pub updates: i64,
    pub rounds: usize,
    pub today: Option<PathBuf>,
}

impl Sizes {
    pub fn new(
        quick: bool,
        updates: Option<i64>,
        rounds: Option<usize>,
        today: Option<PathBuf>,
    ) -> Sizes {
        Sizes {
            updates: updates.unwrap_or(if quick { 20_000 } else { 100_000 }),
            rounds: rounds.unwrap_or(if quick { 4 } else { 10 }).max(1),
            today,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    On,
    Off,
    Today,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::On => "on",
            Variant::Off => "off",
            Variant::Today => "today",
        }
    }
}

struct Measured {
    rate: f64,
    /// Relay CPU seconds when the last update arrived.
    cpu: f64,
    /// Spans the sink received, through the relay's stop (its final export).
    spans: u64,
}

/// What `tracing` prints: the rounds (a table of their own) and the
/// summary rows for the scenarios' table.
pub struct Report {
    pub rounds: String,
    pub rows: String,
}

pub async fn traces(sizes: Sizes) -> Report {
    let Sizes {
        updates,
        rounds,
        today,
    } = sizes;
    let mut variants = vec![Variant::On, Variant::Off];
    if today.is_some() {
        variants.push(Variant::Today);
    }
    let mut table = vec![
        format!("load average before: {}", loadavg()),
        String::new(),
        "| round | order | on (updates/s) | off (updates/s) | today (updates/s) | on / off | off / today | CPU per 100k on / off / today | spans received (on) |".to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let (mut on_off, mut off_today) = (Vec::new(), Vec::new());
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    let mut spans = Vec::new();
    for round in 1..=rounds {
        // Each variant goes first in turn: a machine that slows down or
        // speeds up during a round favours none.
        let mut order = variants.clone();
        order.rotate_left((round - 1) % variants.len());
        let mut got: [Option<Measured>; 3] = [None, None, None];
        for v in &order {
            got[*v as usize] = Some(measure(updates, *v, today.as_ref()).await);
        }
        let [on, off, now] = got;
        let (on, off) = (on.expect("on ran"), off.expect("off ran"));
        let r = on.rate / off.rate;
        on_off.push(r);
        cpu[0].push(per_100k(on.cpu, updates));
        cpu[1].push(per_100k(off.cpu, updates));
        spans.push(on.spans as f64);
        let (today_rate, today_ratio, today_cpu) = match &now {
            Some(t) => {
                off_today.push(off.rate / t.rate);
                cpu[2].push(per_100k(t.cpu, updates));
                (
                    format!("{:.0}", t.rate),
                    format!("{:.3}×", off.rate / t.rate),
                    format!("{:.2} s", per_100k(t.cpu, updates)),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        let line = format!(
            "| {round} | {} | {:.0} | {:.0} | {today_rate} | {r:.3}× | {today_ratio} | {:.2} s / {:.2} s / {today_cpu} | {} |",
            order.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
            on.rate,
            off.rate,
            per_100k(on.cpu, updates),
            per_100k(off.cpu, updates),
            on.spans,
        );
        eprintln!("{line}");
        table.push(line);
    }
    table.push(String::new());
    table.push(format!("load average after: {}", loadavg()));

    let spread = |v: &[f64]| {
        format!(
            "{:.3}×–{:.3}× ({:.3}×–{:.3}×)",
            quantile(v, 0.0),
            quantile(v, 1.0),
            quantile(v, 0.25),
            quantile(v, 0.75)
        )
    };
    let ratio = quantile(&on_off, 0.5);
    // Each deliver span, plus a poll and a store.append per batch of 100.
    let expected = updates as f64 * 1.02;
    let mut rows = vec![
        row(
            &format!("tracing on / off, {updates} updates (updates/s, median of {rounds} paired ratios; baseline: tracing off)"),
            "-",
            &format!("{ratio:.3}×"),
            Some(ratio),
            "- (a span per attempt costs CPU on a CPU-bound relay)",
            None,
        ),
        row(
            "tracing on / off: the paired ratios' spread, min–max (interquartile)",
            "-",
            &spread(&on_off),
            None,
            "-",
            None,
        ),
        row(
            "relay CPU per 100k updates, at the last delivery (median)",
            &format!("{:.2} s", quantile(&cpu[1], 0.5)),
            &format!("{:.2} s", quantile(&cpu[0], 0.5)),
            Some(quantile(&cpu[0], 0.5) / quantile(&cpu[1], 0.5)),
            "-",
            None,
        ),
        row(
            "spans the OTLP sink received per on run, through the relay's stop (median)",
            &format!("{expected:.0} made"),
            &format!("{:.0}", quantile(&spans, 0.5)),
            Some(quantile(&spans, 0.5) / expected),
            "- (past the SDK's queue of 2048, spans are dropped, by design)",
            None,
        ),
    ];
    if !off_today.is_empty() {
        let r = quantile(&off_today, 0.5);
        rows.push(row(
            &format!("tracing off / today (a build from before traces), {updates} updates (median of {rounds} paired ratios)"),
            "-",
            &format!("{r:.3}× ({})", spread(&off_today)),
            Some(r),
            "≥ 0.95× today",
            Some(r >= 0.95),
        ));
        rows.push(row(
            "relay CPU per 100k updates, off / today (median)",
            &format!("{:.2} s", quantile(&cpu[2], 0.5)),
            &format!("{:.2} s", quantile(&cpu[1], 0.5)),
            Some(quantile(&cpu[1], 0.5) / quantile(&cpu[2], 0.5)),
            "-",
            None,
        ));
    }
    Report {
        rounds: table.join("\n"),
        rows: rows.join("\n"),
    }
}

async fn measure(updates: i64, v: Variant, today: Option<&PathBuf>) -> Measured {
    let sink = Sink::default();
    let cfg = Config {
        otlp: (v == Variant::On).then_some(sink.start().await),
        relay_bin: (v == Variant::Today).then(|| today.cloned()).flatten(),
        ..Config::default()
    };
    let (mut run, ()) = run_throughput_with(updates, Relay::Pollhook, &cfg, |_| ()).await;
    // The stop sends what the exporter still holds.
    run.child.stop();
    Measured {
        rate: run.rate,
        cpu: run.cpu,
        spans: sink.spans.load(Ordering::Relaxed),
    }
}

/// An OTLP/HTTP receiver that counts spans and keeps nothing.
#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

impl Sink {
    async fn start(&self) -> SocketAddr {
        let listener = listen().await;
        let addr = listener.local_addr().unwrap();
        let spans = self.spans.clone();
        tokio::spawn(serve(
            listener,
            move |req: Request<hyper::body::Incoming>| {
                let spans = spans.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                        let n: usize = export
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len())
                            .sum();
                        spans.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/x-protobuf")
                        .body(Full::new(Bytes::new()))
                        .expect("static response")
                }
            },
        ));
        addr
    }
}
