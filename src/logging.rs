//! Log output: human-readable lines on stderr, filtered by `RUST_LOG`
//! (default `info`). Under systemd, stderr goes to the journal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Dependencies' debug output (hyper, reqwest) could include request
    // lines; keep them at info even when pollhook itself is at debug.
    let filter = filter
        .add_directive("hyper=info".parse().expect("static directive"))
        .add_directive("hyper_util=info".parse().expect("static directive"))
        .add_directive("reqwest=info".parse().expect("static directive"))
        .add_directive("rustls=info".parse().expect("static directive"))
        .add_directive("sled=info".parse().expect("static directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; the journal and log
        // collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}
