//! Log output: human-readable lines on stderr, filtered by `RUST_LOG`
//! (default `info`). Under systemd, stderr goes to the journal.

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
        .with_target(false)
        .init();
}
