//! What every validation step carries: where the configuration came from
//! (for messages), the folder relative paths resolve against, the
//! environment it is read against, and the warnings gathered on the way.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::Env;
use super::ConfigError;

pub(super) struct Ctx<'a> {
    pub source_name: &'a str,
    pub base: &'a Path,
    pub env: &'a Env,
    warnings: RefCell<Vec<String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(source_name: &'a str, base: &'a Path, env: &'a Env) -> Self {
        Ctx {
            source_name,
            base,
            env,
            warnings: RefCell::default(),
        }
    }

    pub fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source_name.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Records a value that was accepted or adjusted but deserves a look.
    pub fn warn(&self, message: String) {
        self.warnings.borrow_mut().push(message);
    }

    pub fn into_warnings(self) -> Vec<String> {
        self.warnings.into_inner()
    }

    /// A path from the file: relative ones are relative to the file's
    /// folder, not to wherever the command happens to run.
    pub fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text.trim()).map_err(|e| {
                self.err(
                    key,
                    format!(
                        "{text:?} is not a duration ({e}); write e.g. \"30s\", \"2m\", \"1h 30m\""
                    ),
                )
            }),
        }
    }
}
