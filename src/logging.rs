//! Log output on stderr (the journal under systemd), filtered by `RUST_LOG`
//! (default `info`): human-readable lines, or one JSON object per line for
//! log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Dependencies' debug output (hyper, reqwest) could include request
    // lines, and request lines carry the bot token; keep them at info even
    // when pollhook itself is at debug or trace.
    let filter = [
        "hyper",
        "hyper_util",
        "reqwest",
        "rustls",
        "sled",
        "h2",
        "axum",
    ]
    .iter()
    .fold(filter, |f, target| {
        f.add_directive(format!("{target}=info").parse().expect("static directive"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        Format::Json => builder.json().flatten_event(true).init(),
        // Colour only for a person at a terminal; the journal gets plain text.
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}
