//! The one layered loader every command uses, so `status` and `dlq` see
//! what `run` sees: the TOML file (or a string) with the `POLLHOOK_…`
//! environment overrides on top, deserialized into the raw schema and
//! handed to validation. The environment is an input (`Env`), the
//! process's for the real commands.

use std::path::{Path, PathBuf};

use super::ctx::Ctx;
use super::env::{Env, PREFIX};
use super::schema::{RawBot, RawConfig, RawForward};
use super::validate::{admin_view, validate};
use super::{AdminView, ConfigError, QuickStart, Settings};

/// Reads `path`, applies `POLLHOOK_…` environment overrides, and validates.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with(path, &Env::from_process())
}

pub(super) fn load_with(path: &Path, env: &Env) -> Result<Settings, ConfigError> {
    let (raw, source_name, base) = read_file(path, env)?;
    validate(raw, Ctx::new(&source_name, &base, env))
}

/// What `pollhook dlq` and `status` need from a configuration file; bots
/// are not validated.
pub fn load_admin_view(path: &Path) -> Result<AdminView, ConfigError> {
    load_admin_view_with(path, &Env::from_process())
}

pub(super) fn load_admin_view_with(path: &Path, env: &Env) -> Result<AdminView, ConfigError> {
    let (raw, source_name, base) = read_file(path, env)?;
    admin_view(raw, Ctx::new(&source_name, &base, env))
}

/// A configuration given as TOML text, read against the environment `env`
/// instead of the process's (overrides, `*_env` secrets,
/// `CREDENTIALS_DIRECTORY`, `STATE_DIRECTORY`); relative paths resolve
/// against `base`. Messages name the source `(string)`.
pub fn from_str(
    toml: &str,
    base: &Path,
    env: &[(String, String)],
) -> Result<Settings, ConfigError> {
    from_str_with(toml, base, &Env::from_pairs(env))
}

pub(super) fn from_str_with(toml: &str, base: &Path, env: &Env) -> Result<Settings, ConfigError> {
    let source_name = "(string)";
    let file = config::File::from_str(toml, config::FileFormat::Toml);
    let raw = layered(file, source_name, env)?;
    validate(raw, Ctx::new(source_name, base, env))
}

/// The quick start: one bot, token from an environment variable, forwards
/// from flags, state in the default directory. Validated like a file.
pub fn quick_start(q: QuickStart) -> Result<Settings, ConfigError> {
    quick_start_with(q, &Env::from_process())
}

pub(super) fn quick_start_with(q: QuickStart, env: &Env) -> Result<Settings, ConfigError> {
    let forward = q
        .forwards
        .into_iter()
        .map(|url| RawForward {
            url: Some(url),
            signing_secret_env: q.signing_secret_env.clone(),
            secret_token_env: q.secret_token_env.clone(),
            // The URL is on the command line in front of the operator: a
            // plain-http remote backend is warned about, not refused.
            allow_insecure: Some(true),
            ..RawForward::default()
        })
        .collect();
    let raw = RawConfig {
        state_dir: q.state_dir.map(|p| p.display().to_string()),
        bot: vec![RawBot {
            name: Some("bot".into()),
            flavor: q.flavor,
            api_url: q.api_url,
            token_env: Some(q.token_env),
            forward,
            ..RawBot::default()
        }],
        ..RawConfig::default()
    };
    let cwd = PathBuf::from(".");
    validate(raw, Ctx::new("command line", &cwd, env))
}

/// The file at `path` with the environment on top. Returns the raw schema,
/// the file's name for messages, and the folder relative paths resolve
/// against.
fn read_file(path: &Path, env: &Env) -> Result<(RawConfig, String, PathBuf), ConfigError> {
    let source_name = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigError {
            source_name,
            key: "(file)".into(),
            message: "cannot read the file: not found".into(),
        });
    }
    // From the path, not read into a string first: the `config` crate then
    // names the file in its syntax errors.
    let file = config::File::from(path).format(config::FileFormat::Toml);
    let raw = layered(file, &source_name, env)?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((raw, source_name, base))
}

/// `file` with the environment's `POLLHOOK_…` overrides on top.
fn layered<S>(file: S, source_name: &str, env: &Env) -> Result<RawConfig, ConfigError>
where
    S: config::Source + Send + Sync + 'static,
{
    let err = |key: &str, message: String| ConfigError {
        source_name: source_name.to_string(),
        key: key.to_string(),
        message,
    };
    let vars = env.for_overrides().map_err(|m| err("(file)", m))?;
    // `prefix_separator` must be set explicitly: `.separator("__")` would
    // otherwise also become the prefix separator and POLLHOOK_STATE_DIR would
    // be silently ignored. No `try_parsing`: it turns every value that looks
    // like a number into one, so a state_dir "007" became "7" and an admin
    // token "000123" became "123". Left as strings, numbers and booleans
    // still deserialize into numeric and boolean keys.
    let layered = config::Config::builder()
        .add_source(file)
        .add_source(
            config::Environment::with_prefix(PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        )
        .build()
        .map_err(|e| err("(file)", e.to_string()))?;
    serde_path_to_error::deserialize(layered).map_err(|e| {
        let key = e.path().to_string();
        err(&key, explain(&key, &e.inner().to_string(), env))
    })
}

/// Trims the `config` crate's own location suffixes (the key and file are
/// already named) and says when the culprit came from the environment.
fn explain(key: &str, message: &str, env: &Env) -> String {
    let mut text = message;
    if let Some(i) = text.find(" for key `") {
        text = &text[..i];
    }
    if let Some(i) = text.find(" in ") {
        // "… in /path/file.toml": the file is named in front already.
        if !text[i + 4..].contains(' ') {
            text = &text[..i];
        }
    }
    let env_name = format!("{PREFIX}_{}", key.to_ascii_uppercase().replace('.', "__"));
    if env.var_os(&env_name).is_some() {
        format!("{text} (set by the environment variable {env_name})")
    } else {
        text.to_string()
    }
}
