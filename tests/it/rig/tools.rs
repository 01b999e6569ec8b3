//! External tools some tests need. Those tests are `#[ignore]`d, so a plain
//! `cargo test` reports them as ignored; run with `--include-ignored` (as
//! `.ci/run` does), a missing tool fails them with the way to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails the test unless `name` is on PATH; `install` says how to get it.
#[track_caller]
pub fn require(name: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{}", missing(name, install));
}

/// Where the daemon `name` is: on PATH, or in the sbin directories Debian
/// installs daemons to (not on an ordinary user's PATH); fails the test
/// like `require` when it is nowhere.
#[track_caller]
pub fn locate(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| panic!("{}", missing(name, install)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn missing(name: &str, install: &str) -> String {
    format!("this test needs {name}, which is not on PATH: {install} (or run .ci/run, which installs every tool the tests need)")
}
