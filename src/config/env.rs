//! The environment a configuration is read against, as a value: the
//! process's for the real commands, a plain list in unit tests, so no test
//! has to set process-global variables.
//!
//! It answers every question configuration asks of the environment: the
//! `POLLHOOK_…` overrides, the variables named by `*_env` keys,
//! `$CREDENTIALS_DIRECTORY` and `$STATE_DIRECTORY`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

/// The prefix of the variables that override the file's keys.
pub(super) const PREFIX: &str = "POLLHOOK";

pub(super) struct Env {
    /// Names that are not Unicode are left out: every name looked up here is
    /// a Rust string, and the `config` crate skips such names too.
    vars: HashMap<String, OsString>,
}

impl Env {
    pub fn from_process() -> Env {
        Env::from_os(std::env::vars_os())
    }

    pub fn from_os(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Env {
        let vars = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .collect();
        Env { vars }
    }

    pub fn from_pairs(pairs: &[(String, String)]) -> Env {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.clone(), OsString::from(v)))
            .collect();
        Env { vars }
    }

    /// A variable's value if it is set and Unicode, like `std::env::var`.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name)?.to_str()
    }

    /// A variable's value as the OS gave it, like `std::env::var_os`.
    pub fn var_os(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(name).map(OsString::as_os_str)
    }

    /// The variables for the `config` crate's environment source, which
    /// filters them by prefix itself. A `POLLHOOK_…` value that is not
    /// Unicode is refused with the text the crate gives when it reads the
    /// process's environment on its own.
    pub fn for_overrides(&self) -> Result<config::Map<String, String>, String> {
        let prefix = format!("{PREFIX}_").to_lowercase();
        let mut map = config::Map::new();
        for (name, value) in &self.vars {
            match value.to_str() {
                Some(v) => {
                    map.insert(name.clone(), v.to_string());
                }
                None => {
                    let lower = name.to_lowercase();
                    if let Some(key) = lower.strip_prefix(&prefix) {
                        return Err(format!(
                            "env variable {key:?} contains non-Unicode data: {value:?}"
                        ));
                    }
                }
            }
        }
        Ok(map)
    }
}
