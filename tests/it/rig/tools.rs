//! External tools some tests need. Those tests are `#[ignore]`d, so a plain
//! `cargo test` reports them as ignored; run with `--include-ignored` (as
//! `.ci/run` does), a missing tool fails them with the way to install it.

use std::process::Command;

/// Fails the test unless `name` is on PATH; `install` says how to get it.
#[track_caller]
pub fn require(name: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs {name}, which is not on PATH: {install} (or run .ci/run, which installs every tool the tests need)"
    );
}
