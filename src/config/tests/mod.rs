//! Configuration tests, without touching the process's environment: every
//! case passes its own (`from_str`, `load_with`).
//!
//! `fixtures` runs every file of `testdata/valid` and `testdata/invalid`,
//! each stating in its header what it must produce; the other modules test
//! what a file alone cannot show (secret files and their modes, exact
//! values, the quick start, the admin view, masking).

mod display;
mod fixtures;
mod loading;
mod secrets;
mod values;

use std::path::{Path, PathBuf};

use super::env::Env;
use super::{ConfigError, Settings};

/// A bot and a forward that pass validation, to put keys in front of.
pub(super) const BOT: &str = r#"
[[bot]]
name = "main"
token = "123456:ABC-def"

[[bot.forward]]
url = "https://backend.example/hook"
"#;

pub(super) fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/testdata")
}

/// `(name, value)` pairs as `from_str` takes them.
pub(super) fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(&vars(pairs))
}

/// `toml` read against `pairs`, relative paths against `/etc/pollhook`.
pub(super) fn parse(toml: &str, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    super::from_str(toml, Path::new("/etc/pollhook"), &vars(pairs))
}

pub(super) fn parse_ok(toml: &str, pairs: &[(&str, &str)]) -> Settings {
    parse(toml, pairs).unwrap_or_else(|e| panic!("{e}\nin:\n{toml}"))
}

pub(super) fn parse_err(toml: &str, pairs: &[(&str, &str)]) -> ConfigError {
    match parse(toml, pairs) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e,
    }
}
