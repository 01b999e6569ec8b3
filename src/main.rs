//! The `pollhook` binary: parse the command line, build the one runtime,
//! hand over to [`pollhook::cli`], and leave with its exit code.

use std::process::ExitCode;

use clap::Parser;

// glibc's malloc serialises on an arena lock under this allocation pattern
// (sled copies nodes on write, hyper and reqwest allocate per request);
// jemalloc rather than mimalloc, because mimalloc committed sled's large
// zeroed buffers up front. Figures: BENCHMARKS.md.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena instead of four per CPU: each thread's cache takes the small
// allocations either way, and an idle relay with one bot took 14.2–14.4 MB
// RSS instead of 14.9–15.1 MB, relaying at the same speed (BENCHMARKS.md,
// 2026-12-02, third session). Freed pages go back to the system after about
// a second, by jemalloc's own thread: left to the default (ten seconds,
// counted only while something allocates), the garbage of 10,000 bots'
// start-up stayed resident in a relay that then sat idle (fifth session).
// jemalloc reads this at start; `_RJEM_MALLOC_CONF` in the environment
// still overrides it.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"narenas:1,background_thread:true,dirty_decay_ms:1000\0"[0];

fn main() -> ExitCode {
    let cli = pollhook::cli::Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(pollhook::cli::run(cli)));
    result.unwrap_or_else(|e| {
        pollhook::cli::report(&e);
        ExitCode::FAILURE
    })
}
