//! Log output on stderr, filtered by `RUST_LOG` (default `info`):
//! human-readable lines, or one JSON object per line for log collectors.
//! Other crates are held at info or less whatever `RUST_LOG` says.
//!
//! Under systemd (`JOURNAL_STREAM` set) text lines start with a syslog
//! priority prefix (`<3>` error … `<7>` debug), which journald turns into the
//! entry's priority, so `journalctl -p warning` works; the journal stamps
//! the time itself, so the line carries none.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Prefixes each line with its syslog priority for journald.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// `quiet`: warnings and errors only, unless `RUST_LOG` says otherwise
/// (the quick start on a terminal, whose output is its live events).
/// `spans`: the trace exporter, when `[tracing]` is configured.
pub fn init(format: Format, quiet: bool, spans: Option<&crate::trace::export::Exporter>) {
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match spans {
        None => init_logs_only(format, filter),
        Some(exporter) => init_with_spans(format, filter, exporter),
    }
}

/// Tracing off: exactly the subscriber pollhook always had, with the
/// exported spans' callsites disabled for good (one cached check each).
fn init_logs_only(format: Format, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let cap = filter_fn(|meta| ours_or_at_most_info(meta) && !exported(meta));
    match format {
        Format::Json => builder.json().flatten_event(true).finish().with(cap).init(),
        Format::Text if journald => builder
            .event_format(Priority(journal_lines()))
            .finish()
            .with(cap)
            .init(),
        // Colour only for a person at a terminal.
        Format::Text => builder.with_ansi(colour()).finish().with(cap).init(),
    }
}

/// Tracing on: the same log lines, now filtered per layer (`RUST_LOG`
/// must not decide which spans are exported), beside the exporter's layer.
fn init_with_spans(format: Format, filter: EnvFilter, exporter: &crate::trace::export::Exporter) {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let lines = match format {
        Format::Json => lines.json().flatten_event(true).boxed(),
        Format::Text if journald => lines.event_format(Priority(journal_lines())).boxed(),
        Format::Text => lines.with_ansi(colour()).boxed(),
    };
    let lines = lines
        .with_filter(filter_fn(|meta| {
            ours_or_at_most_info(meta) && !exported(meta)
        }))
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(lines)
        .with(exporter.layer())
        .init();
}

fn journal_lines(
) -> tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()> {
    tracing_subscriber::fmt::format()
        .with_target(false)
        .without_time()
        .with_ansi(false)
}

fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A span made for export (`crate::trace`): never part of a log line.
fn exported(meta: &Metadata<'_>) -> bool {
    meta.target() == crate::trace::TARGET
}

/// Other crates never log in more detail than info, whatever `RUST_LOG`
/// says (`RUST_LOG=debug`, `hyper_util::client=trace`, …): their debug output
/// (hyper, reqwest) can hold request lines, and request lines carry the bot
/// token. A directive per crate would not do: a longer target
/// (`reqwest::connect`) outranks it.
fn ours_or_at_most_info(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    *meta.level() <= Level::INFO || target == "pollhook" || target.starts_with("pollhook::")
}
