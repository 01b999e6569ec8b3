//! Configuration: a TOML file layered with `POLLHOOK_…` environment overrides,
//! validated into the runtime types the relay uses.
//!
//! Parsing happens in two steps. `Raw*` structs mirror the file exactly
//! (`deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored key); `validate` then turns them into `Settings`, resolving
//! relative paths against the file's folder, reading secrets, and checking
//! every value. Each mistake becomes a `ConfigError` naming the file and the
//! key, because the person reading it is fixing a file at 3 a.m.

mod exposure;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::platform::flavor::Flavor;
use crate::policy::methods::MethodSet;
use crate::policy::retry::RetryPolicy;
use crate::policy::routing::Filter;
use crate::policy::stale::StalePolicy;
use crate::signing::SigningKey;

/// A configuration mistake: where it is, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {key}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub message: String,
}

/// Everything the relay needs to run, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the configuration came from, for messages.
    pub source_name: String,
    pub state_dir: PathBuf,
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires, if set.
    pub admin_token: Option<SecretString>,
    /// How long a graceful stop waits for in-flight deliveries.
    pub shutdown_timeout: Duration,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    pub bots: Vec<BotSettings>,
    /// Values that were adjusted rather than refused (e.g. a poll timeout
    /// above the platform's cap); logged at start, printed by check-config.
    pub warnings: Vec<String>,
    /// How long an admin API client may take to send a request's headers
    /// (and then its body).
    pub admin_header_timeout: Duration,
    /// How long an admin API keep-alive connection may sit idle.
    pub admin_idle_timeout: Duration,
    /// Host names the admin API answers to besides localhost and its own
    /// addresses (lower case).
    pub admin_allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BotSettings {
    pub name: String,
    pub flavor: Flavor,
    /// Method URL template holding `{token}` and `{method}`.
    pub api_url: String,
    pub token: SecretString,
    pub allowed_updates: Option<Vec<String>>,
    pub poll_timeout: Duration,
    pub forwards: Vec<ForwardSettings>,
    /// The proxy the bot's Bot API calls go through, if any (never one
    /// from the environment).
    pub proxy: Option<Url>,
}

#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Stable identity of the forward inside its bot; its queue is keyed by it.
    pub name: String,
    pub url: Url,
    /// Every request carries one signature per key (key rotation).
    pub signing_keys: Vec<SigningKey>,
    pub secret_token: Option<SecretString>,
    /// Which updates this forward wants.
    pub filter: Filter,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// What to do with interactive updates older than their platform lifetime.
    pub stale: StalePolicy,
    /// Execute Bot API calls a backend returns in its 2xx reply body.
    pub reply_calls: bool,
    /// Which methods such a reply may call.
    pub reply_methods: MethodSet,
}

pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
pub const DEFAULT_CACHE_MB: u64 = 64;
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The file's shape.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<String>,
    admin: Option<RawAdmin>,
    shutdown_timeout: Option<String>,
    cache_mb: Option<u64>,
    #[serde(default)]
    bot: Vec<RawBot>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
    token_env: Option<String>,
    token_credential: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allow_insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBot {
    name: Option<String>,
    flavor: Option<String>,
    api_url: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
    token_env: Option<String>,
    token_credential: Option<String>,
    allowed_updates: Option<Vec<String>>,
    poll_timeout: Option<String>,
    #[serde(default)]
    forward: Vec<RawForward>,
    proxy: Option<String>,
}

/// A value written either once or as a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A chat id as written in the file: a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawChatId {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    name: Option<String>,
    url: Option<String>,
    /// Several secrets during a key rotation.
    signing_secret: Option<OneOrMany<String>>,
    signing_secret_file: Option<String>,
    signing_secret_env: Option<String>,
    signing_secret_credential: Option<String>,
    secret_token: Option<String>,
    secret_token_file: Option<String>,
    secret_token_env: Option<String>,
    secret_token_credential: Option<String>,
    updates: Option<Vec<String>>,
    chats: Option<Vec<RawChatId>>,
    chat_types: Option<Vec<String>>,
    max_in_flight: Option<usize>,
    timeout: Option<String>,
    retry_delay: Option<String>,
    retry_max_delay: Option<String>,
    max_attempts: Option<u32>,
    max_age: Option<String>,
    stale: Option<String>,
    reply_calls: Option<bool>,
    reply_methods: Option<Vec<String>>,
    allow_insecure: Option<bool>,
}

// ---------------------------------------------------------------------------
// Loading.

/// Reads `path`, applies `POLLHOOK_…` environment overrides, and validates.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let (raw, source_name, base) = read_layered(path)?;
    validate(raw, &source_name, &base)
}

/// The file with the environment's overrides on top: the one loader every
/// command uses, so `status` and `dlq` see what `run` sees. Returns the raw
/// schema, the file's name for messages, and the folder relative paths
/// resolve against.
fn read_layered(path: &Path) -> Result<(RawConfig, String, PathBuf), ConfigError> {
    let source_name = path.display().to_string();
    let err = |key: &str, message: String| ConfigError {
        source_name: source_name.clone(),
        key: key.to_string(),
        message,
    };
    if !path.is_file() {
        return Err(err("(file)", "cannot read the file: not found".into()));
    }
    // `prefix_separator` must be set explicitly: `.separator("__")` would
    // otherwise also become the prefix separator and POLLHOOK_STATE_DIR would
    // be silently ignored. No `try_parsing`: it turns every value that looks
    // like a number into one, so a state_dir "007" became "7" and an admin
    // token "000123" became "123". Left as strings, numbers and booleans
    // still deserialize into numeric and boolean keys.
    let layered = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("POLLHOOK")
                .prefix_separator("_")
                .separator("__"),
        )
        .build()
        .map_err(|e| err("(file)", e.to_string()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(layered).map_err(|e| {
        let key = e.path().to_string();
        err(&key, explain(&key, &e.inner().to_string()))
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((raw, source_name, base))
}

/// Trims the `config` crate's own location suffixes (the key and file are
/// already named) and says when the culprit came from the environment.
fn explain(key: &str, message: &str) -> String {
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
    let env_name = format!("POLLHOOK_{}", key.to_ascii_uppercase().replace('.', "__"));
    if std::env::var_os(&env_name).is_some() {
        format!("{text} (set by the environment variable {env_name})")
    } else {
        text.to_string()
    }
}

/// The quick start: one bot, token from an environment variable, forwards
/// from flags, state in the default directory. Validated like a file.
pub struct QuickStart {
    pub token_env: String,
    pub flavor: Option<String>,
    pub api_url: Option<String>,
    pub forwards: Vec<String>,
    pub signing_secret_env: Option<String>,
    pub secret_token_env: Option<String>,
    pub state_dir: Option<PathBuf>,
}

pub fn quick_start(q: QuickStart) -> Result<Settings, ConfigError> {
    let forward = q
        .forwards
        .into_iter()
        .map(|url| RawForward {
            name: None,
            url: Some(url),
            signing_secret: None,
            signing_secret_file: None,
            signing_secret_env: q.signing_secret_env.clone(),
            signing_secret_credential: None,
            secret_token: None,
            secret_token_file: None,
            secret_token_env: q.secret_token_env.clone(),
            secret_token_credential: None,
            updates: None,
            chats: None,
            chat_types: None,
            max_in_flight: None,
            timeout: None,
            retry_delay: None,
            retry_max_delay: None,
            max_attempts: None,
            max_age: None,
            stale: None,
            reply_calls: None,
            reply_methods: None,
            // The URL is on the command line in front of the operator: a
            // plain-http remote backend is warned about, not refused.
            allow_insecure: Some(true),
        })
        .collect();
    let raw = RawConfig {
        state_dir: q.state_dir.map(|p| p.display().to_string()),
        admin: None,
        shutdown_timeout: None,
        cache_mb: None,
        bot: vec![RawBot {
            name: Some("bot".into()),
            flavor: q.flavor,
            api_url: q.api_url,
            token: None,
            token_file: None,
            token_env: Some(q.token_env),
            token_credential: None,
            allowed_updates: None,
            poll_timeout: None,
            forward,
            proxy: None,
        }],
    };
    let cwd = PathBuf::from(".");
    validate(raw, "command line", &cwd)
}

// ---------------------------------------------------------------------------
// Validation.

/// Where a secret may come from; at most one is set.
#[derive(Default, Clone, Copy)]
struct Sources<'a> {
    inline: Option<&'a str>,
    file: Option<&'a str>,
    env: Option<&'a str>,
    credential: Option<&'a str>,
}

struct Ctx<'a> {
    source_name: &'a str,
    base: &'a Path,
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.source_name.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(
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

    /// Reads a secret given inline, from a file, or from an environment
    /// variable: at most one of the three.
    fn secret(
        &self,
        prefix: &str,
        field: &str,
        src: Sources,
    ) -> Result<Option<SecretString>, ConfigError> {
        let given = [
            src.inline.is_some(),
            src.file.is_some(),
            src.env.is_some(),
            src.credential.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(self.err(
                format!("{prefix}.{field}"),
                format!("set only one of {field}, {field}_file, {field}_env, {field}_credential"),
            ));
        }
        let read_file = |key: &str, path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|e| {
                self.err(
                    format!("{prefix}.{key}"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        };
        let (key, value) = if let Some(v) = src.inline {
            (field.to_string(), v.to_string())
        } else if let Some(f) = src.file {
            let key = format!("{field}_file");
            let path = self.path(f);
            let text = read_file(&key, path.clone())?;
            self.warn_if_shared(&format!("{prefix}.{key}"), &path);
            (key, text)
        } else if let Some(name) = src.env {
            let key = format!("{field}_env");
            let text = std::env::var(name).map_err(|_| {
                self.err(
                    format!("{prefix}.{key}"),
                    format!("environment variable {name} is not set"),
                )
            })?;
            (key, text)
        } else if let Some(name) = src.credential {
            // systemd's LoadCredential= puts each secret in a private,
            // per-service directory named by $CREDENTIALS_DIRECTORY.
            let key = format!("{field}_credential");
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                self.err(
                    format!("{prefix}.{key}"),
                    "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=, or use _file or _env",
                )
            })?;
            let text = read_file(&key, PathBuf::from(dir).join(name))?;
            (key, text)
        } else {
            return Ok(None);
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(self.err(format!("{prefix}.{key}"), "the secret is empty"));
        }
        Ok(Some(SecretString::from(value.to_string())))
    }

    /// Warns about a secret file other users may read or change: whoever
    /// reads a bot token controls the bot. A warning, not a refusal: a
    /// private parent directory may protect it, which is not checked here.
    fn warn_if_shared(&self, key: &str, path: &Path) {
        if let Some(mode) = exposure::shared_mode(path) {
            self.warnings.borrow_mut().push(format!(
                "{key}: {} is open to group or others (mode {mode:04o}); chmod 600 it",
                path.display()
            ));
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `./pollhook-state`.
pub fn default_state_dir() -> PathBuf {
    // systemd's StateDirectory= sets this, possibly to several paths joined by ':'.
    match std::env::var("STATE_DIRECTORY") {
        Ok(v) if !v.is_empty() => PathBuf::from(v.split(':').next().unwrap_or(&v)),
        _ => PathBuf::from("./pollhook-state"),
    }
}

fn validate(raw: RawConfig, source_name: &str, base: &Path) -> Result<Settings, ConfigError> {
    let ctx = Ctx {
        source_name,
        base,
        warnings: Default::default(),
    };
    let state_dir = match raw.state_dir.as_deref() {
        Some("") => return Err(ctx.err("state_dir", "must not be empty")),
        Some(p) => ctx.path(p),
        None => default_state_dir(),
    };
    let guards = validate_admin_guards(&ctx, raw.admin.as_ref())?;
    let (admin_listen, admin_token) = validate_admin(&ctx, raw.admin)?;
    check_admin_exposure(
        &ctx,
        admin_listen,
        admin_token.is_some(),
        guards.allow_insecure,
    )?;
    let shutdown_timeout = ctx.duration(
        "shutdown_timeout",
        raw.shutdown_timeout.as_deref(),
        DEFAULT_SHUTDOWN_TIMEOUT,
    )?;
    let cache_mb = raw.cache_mb.unwrap_or(DEFAULT_CACHE_MB);
    if cache_mb == 0 {
        return Err(ctx.err("cache_mb", "must be at least 1"));
    }
    if raw.bot.is_empty() {
        return Err(ctx.err("bot", "no [[bot]] is configured; add at least one"));
    }
    let mut bots: Vec<BotSettings> = Vec::with_capacity(raw.bot.len());
    for (i, rb) in raw.bot.into_iter().enumerate() {
        let bot = validate_bot(&ctx, i, rb)?;
        if bots.iter().any(|b| b.name == bot.name) {
            return Err(ctx.err(
                format!("bot[{i}].name"),
                format!("{:?} is used by another bot", bot.name),
            ));
        }
        bots.push(bot);
    }
    Ok(Settings {
        source_name: source_name.to_string(),
        state_dir,
        admin_listen,
        admin_token,
        shutdown_timeout,
        cache_bytes: cache_mb * 1024 * 1024,
        bots,
        warnings: ctx.warnings.into_inner(),
        admin_header_timeout: guards.header_timeout,
        admin_idle_timeout: guards.idle_timeout,
        admin_allowed_hosts: guards.allowed_hosts,
    })
}

/// The admin API's defences against its own clients.
struct AdminGuards {
    header_timeout: Duration,
    idle_timeout: Duration,
    allowed_hosts: Vec<String>,
    allow_insecure: bool,
}

fn validate_admin_guards(ctx: &Ctx, admin: Option<&RawAdmin>) -> Result<AdminGuards, ConfigError> {
    let timeout = |key: &str, value: Option<&String>, default: Duration| {
        let d = ctx.duration(&format!("admin.{key}"), value.map(String::as_str), default)?;
        if d.is_zero() {
            return Err(ctx.err(format!("admin.{key}"), "must be longer than 0s"));
        }
        Ok(d)
    };
    let header_timeout = timeout(
        "header_timeout",
        admin.and_then(|a| a.header_timeout.as_ref()),
        DEFAULT_ADMIN_HEADER_TIMEOUT,
    )?;
    let idle_timeout = timeout(
        "idle_timeout",
        admin.and_then(|a| a.idle_timeout.as_ref()),
        DEFAULT_ADMIN_IDLE_TIMEOUT,
    )?;
    let mut allowed_hosts = Vec::new();
    for name in admin
        .and_then(|a| a.allowed_hosts.as_ref())
        .into_iter()
        .flatten()
    {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty()
            || name.contains([':', '/', '[', ']', '@'])
            || name.contains(char::is_whitespace)
        {
            return Err(ctx.err(
                "admin.allowed_hosts",
                format!("{name:?}: give host names only, without scheme or port"),
            ));
        }
        allowed_hosts.push(name);
    }
    Ok(AdminGuards {
        header_timeout,
        idle_timeout,
        allowed_hosts,
        allow_insecure: admin.and_then(|a| a.allow_insecure).unwrap_or(false),
    })
}

/// An admin API other hosts can reach needs a token: without one, anyone on
/// the network can read the status and replay or drop dead letters.
fn check_admin_exposure(
    ctx: &Ctx,
    listen: Option<SocketAddr>,
    has_token: bool,
    allow_insecure: bool,
) -> Result<(), ConfigError> {
    let Some(addr) = listen else {
        return Ok(());
    };
    if addr.ip().is_loopback() || has_token {
        return Ok(());
    }
    let risk = format!(
        "{addr} can be reached from other hosts and no admin token is set: anyone who reaches it can read the status and replay or drop dead letters"
    );
    if allow_insecure {
        ctx.warnings.borrow_mut().push(format!(
            "admin.listen: {risk} (allowed by admin.allow_insecure)"
        ));
        Ok(())
    } else {
        Err(ctx.err(
            "admin.listen",
            format!("{risk}; set admin.token_credential (or token_file, token_env), listen on 127.0.0.1, or set admin.allow_insecure = true if only trusted hosts can reach it"),
        ))
    }
}

fn validate_admin(
    ctx: &Ctx,
    admin: Option<RawAdmin>,
) -> Result<(Option<SocketAddr>, Option<SecretString>), ConfigError> {
    let Some(a) = admin else {
        return Ok((None, None));
    };
    let listen = match a.listen {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            ctx.err(
                "admin.listen",
                format!("{text:?} is not an address like \"127.0.0.1:9807\""),
            )
        })?),
    };
    let sources = Sources {
        inline: a.token.as_deref(),
        file: a.token_file.as_deref(),
        env: a.token_env.as_deref(),
        credential: a.token_credential.as_deref(),
    };
    let token = ctx.secret("admin", "token", sources)?;
    Ok((listen, token))
}

/// What `pollhook dlq` needs from a configuration file: where the state is
/// and how to reach a running daemon. Bots are not validated, so an
/// operator's shell need not hold every bot token.
pub struct AdminView {
    pub state_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    pub token: Option<SecretString>,
}

pub fn load_admin_view(path: &Path) -> Result<AdminView, ConfigError> {
    let (raw, source_name, base) = read_layered(path)?;
    let ctx = Ctx {
        source_name: &source_name,
        base: &base,
        warnings: Default::default(),
    };
    let state_dir = match raw.state_dir.as_deref() {
        Some(p) => ctx.path(p),
        None => default_state_dir(),
    };
    let (listen, token) = validate_admin(&ctx, raw.admin)?;
    Ok(AdminView {
        state_dir,
        listen,
        token,
    })
}

fn validate_bot(ctx: &Ctx, i: usize, rb: RawBot) -> Result<BotSettings, ConfigError> {
    let prefix = format!("bot[{i}]");
    let name = rb
        .name
        .ok_or_else(|| ctx.err(format!("{prefix}.name"), "missing; every bot needs a name"))?;
    if !valid_name(&name) {
        return Err(ctx.err(
            format!("{prefix}.name"),
            format!("{name:?}: use 1-64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let flavor = match rb.flavor.as_deref() {
        None => Flavor::Telegram,
        Some(f) => Flavor::parse(f).ok_or_else(|| {
            ctx.err(
                format!("{prefix}.flavor"),
                format!("{f:?} is not one of {}", Flavor::NAMES.join(", ")),
            )
        })?,
    };
    let api_url = rb
        .api_url
        .unwrap_or_else(|| flavor.default_api_url().to_string());
    check_api_url(ctx, &prefix, &api_url)?;
    let token = ctx
        .secret(
            &prefix,
            "token",
            Sources {
                inline: rb.token.as_deref(),
                file: rb.token_file.as_deref(),
                env: rb.token_env.as_deref(),
                credential: rb.token_credential.as_deref(),
            },
        )?
        .ok_or_else(|| {
            ctx.err(
                format!("{prefix}.token"),
                "missing; set one of token_credential, token_file, token_env, token",
            )
        })?;
    if token
        .expose_secret()
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#')
    {
        return Err(ctx.err(
            format!("{prefix}.token"),
            "the token holds characters a bot token never has",
        ));
    }
    let mut poll_timeout = ctx.duration(
        &format!("{prefix}.poll_timeout"),
        rb.poll_timeout.as_deref(),
        DEFAULT_POLL_TIMEOUT,
    )?;
    if poll_timeout < Duration::from_secs(1) {
        // Telegram allows 0 (short polling), but then an idle bot would call
        // getUpdates in a tight loop.
        return Err(ctx.err(format!("{prefix}.poll_timeout"), "must be at least 1s"));
    }
    let cap = flavor.max_poll_timeout();
    if poll_timeout > cap {
        // Clamped, not refused: a too-long poll is harmless once shortened,
        // while sending it would be refused or silently cut by the platform.
        ctx.warnings.borrow_mut().push(format!(
            "{prefix}.poll_timeout: {} is above {flavor}'s limit; {} is used",
            humantime::format_duration(poll_timeout),
            humantime::format_duration(cap)
        ));
        poll_timeout = cap;
    }
    if let Some(list) = &rb.allowed_updates {
        if list.iter().any(|k| k.trim().is_empty()) {
            return Err(ctx.err(
                format!("{prefix}.allowed_updates"),
                "holds an empty update kind",
            ));
        }
    }
    if rb.forward.is_empty() {
        return Err(ctx.err(
            format!("{prefix}.forward"),
            "no [[bot.forward]]: updates would have nowhere to go",
        ));
    }
    let mut forwards: Vec<ForwardSettings> = Vec::with_capacity(rb.forward.len());
    for (j, rf) in rb.forward.into_iter().enumerate() {
        let fprefix = format!("{prefix}.forward[{j}]");
        let fwd = validate_forward(ctx, &fprefix, rf)?;
        if forwards.iter().any(|f| f.name == fwd.name) {
            return Err(ctx.err(
                format!("{fprefix}.name"),
                format!(
                    "{:?} is used by another forward of this bot; give each forward its own name",
                    fwd.name
                ),
            ));
        }
        forwards.push(fwd);
    }
    let proxy = match rb.proxy.as_deref() {
        None => None,
        Some(text) => Some(check_proxy(ctx, &prefix, text)?),
    };
    Ok(BotSettings {
        name,
        flavor,
        api_url,
        token,
        allowed_updates: rb.allowed_updates,
        poll_timeout,
        forwards,
        proxy,
    })
}

fn check_proxy(ctx: &Ctx, prefix: &str, text: &str) -> Result<Url, ConfigError> {
    let key = format!("{prefix}.proxy");
    let url = Url::parse(text).map_err(|e| ctx.err(&key, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
        return Err(ctx.err(
            key,
            format!(
                "scheme {:?} is not http, https, socks5 or socks5h",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ctx.err(key, "names no host"));
    }
    Ok(url)
}

fn check_api_url(ctx: &Ctx, prefix: &str, template: &str) -> Result<(), ConfigError> {
    let key = format!("{prefix}.api_url");
    if !template.contains("{token}") || !template.contains("{method}") {
        return Err(ctx.err(
            key,
            format!("{template:?} must hold both {{token}} and {{method}}"),
        ));
    }
    let sample = template
        .replace("{token}", "0:x")
        .replace("{method}", "getMe");
    match Url::parse(&sample) {
        Ok(u) if u.scheme() == "http" && !exposure::is_loopback_host(&u) => {
            ctx.warnings.borrow_mut().push(format!(
                "{key}: plain http:// to a host other than this one: the bot token is in every request's URL and crosses the network unencrypted; use https://"
            ));
            Ok(())
        }
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(ctx.err(key, format!("scheme {:?} is not http or https", u.scheme()))),
        Err(e) => Err(ctx.err(key, format!("{template:?} is not a URL template: {e}"))),
    }
}

fn validate_forward(
    ctx: &Ctx,
    prefix: &str,
    rf: RawForward,
) -> Result<ForwardSettings, ConfigError> {
    let text = rf.url.ok_or_else(|| {
        ctx.err(
            format!("{prefix}.url"),
            "missing; every forward needs a url",
        )
    })?;
    let url = Url::parse(&text).map_err(|e| {
        ctx.err(
            format!("{prefix}.url"),
            format!("{text:?} is not a URL: {e}"),
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ctx.err(
            format!("{prefix}.url"),
            format!("{text:?}: scheme {:?} is not http or https", url.scheme()),
        ));
    }
    if url.scheme() == "http" && !exposure::is_loopback_host(&url) {
        let risk = format!(
            "{}: plain http:// to a host other than this one: every update (users' messages) crosses the network unencrypted",
            display_url(&url)
        );
        if rf.allow_insecure == Some(true) {
            ctx.warnings
                .borrow_mut()
                .push(format!("{prefix}.url: {risk}"));
        } else {
            return Err(ctx.err(
                format!("{prefix}.url"),
                format!("{risk}; use https://, or set allow_insecure = true in this forward if the network between them is trusted"),
            ));
        }
    }
    // Without a name the URL is the identity, so the queue follows the URL;
    // not its password or query, which may hold secrets and would show in
    // every log line and in `pollhook dlq`.
    let name = rf.name.unwrap_or_else(|| display_url(&url));
    if name.trim().is_empty() {
        return Err(ctx.err(format!("{prefix}.name"), "must not be empty"));
    }
    // Several secrets (a rotation) are a list inline, or whitespace-separated
    // in a file or variable.
    let inline = rf.signing_secret.map(|s| s.into_vec().join(" "));
    let sources = Sources {
        inline: inline.as_deref(),
        file: rf.signing_secret_file.as_deref(),
        env: rf.signing_secret_env.as_deref(),
        credential: rf.signing_secret_credential.as_deref(),
    };
    let signing_keys = match ctx.secret(prefix, "signing_secret", sources)? {
        None => Vec::new(),
        Some(s) => s
            .expose_secret()
            .split_whitespace()
            .enumerate()
            .map(|(i, one)| {
                SigningKey::parse(one).map_err(|m| {
                    ctx.err(
                        format!("{prefix}.signing_secret"),
                        format!("secret #{}: {m}", i + 1),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let sources = Sources {
        inline: rf.secret_token.as_deref(),
        file: rf.secret_token_file.as_deref(),
        env: rf.secret_token_env.as_deref(),
        credential: rf.secret_token_credential.as_deref(),
    };
    let secret_token = ctx.secret(prefix, "secret_token", sources)?;
    if let Some(t) = &secret_token {
        // Telegram's rule for secret_token: 1-256 of A-Z a-z 0-9 _ -
        let t = t.expose_secret();
        if t.len() > 256
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ctx.err(
                format!("{prefix}.secret_token"),
                "use 1-256 characters of A-Z, a-z, 0-9, '_' and '-' (the Bot API's rule)",
            ));
        }
    }
    let max_in_flight = rf.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        return Err(ctx.err(format!("{prefix}.max_in_flight"), "must be at least 1"));
    }
    let timeout = ctx.duration(
        &format!("{prefix}.timeout"),
        rf.timeout.as_deref(),
        DEFAULT_FORWARD_TIMEOUT,
    )?;
    if timeout.is_zero() {
        return Err(ctx.err(format!("{prefix}.timeout"), "must be longer than 0s"));
    }
    let filter = Filter {
        updates: rf.updates,
        chats: rf.chats.map(|list| {
            list.into_iter()
                .map(|c| match c {
                    RawChatId::Int(n) => n.to_string(),
                    RawChatId::Text(s) => crate::platform::update::chat_key(s),
                })
                .collect()
        }),
        chat_types: rf.chat_types,
    };
    let retry = validate_retry(
        ctx,
        prefix,
        &rf.retry_delay,
        &rf.retry_max_delay,
        rf.max_attempts,
        &rf.max_age,
    )?;
    let stale = match rf.stale.as_deref() {
        None => StalePolicy::Deliver,
        Some(s) => StalePolicy::parse(s).ok_or_else(|| {
            ctx.err(
                format!("{prefix}.stale"),
                format!("{s:?} is not one of deliver, drop, dead-letter"),
            )
        })?,
    };
    let reply_methods = match &rf.reply_methods {
        None => MethodSet::parse(crate::policy::methods::DEFAULT_REPLY_METHODS),
        Some(list) => MethodSet::parse(list),
    }
    .map_err(|m| ctx.err(format!("{prefix}.reply_methods"), m))?;
    Ok(ForwardSettings {
        name,
        url,
        signing_keys,
        secret_token,
        filter,
        max_in_flight,
        timeout,
        retry,
        stale,
        reply_calls: rf.reply_calls.unwrap_or(true),
        reply_methods,
    })
}

fn validate_retry(
    ctx: &Ctx,
    prefix: &str,
    delay: &Option<String>,
    max_delay: &Option<String>,
    max_attempts: Option<u32>,
    max_age: &Option<String>,
) -> Result<RetryPolicy, ConfigError> {
    let d = RetryPolicy::default();
    let first = ctx.duration(
        &format!("{prefix}.retry_delay"),
        delay.as_deref(),
        d.first_delay,
    )?;
    let cap = ctx.duration(
        &format!("{prefix}.retry_max_delay"),
        max_delay.as_deref(),
        d.max_delay,
    )?;
    if first < Duration::from_millis(100) {
        return Err(ctx.err(format!("{prefix}.retry_delay"), "must be at least 100ms"));
    }
    if cap < first {
        return Err(ctx.err(
            format!("{prefix}.retry_max_delay"),
            "must not be shorter than retry_delay",
        ));
    }
    if max_attempts == Some(0) {
        return Err(ctx.err(
            format!("{prefix}.max_attempts"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    let max_age = ctx.duration(&format!("{prefix}.max_age"), max_age.as_deref(), d.max_age)?;
    if max_age.is_zero() {
        return Err(ctx.err(format!("{prefix}.max_age"), "must be longer than 0s"));
    }
    Ok(RetryPolicy {
        first_delay: first,
        max_delay: cap,
        max_attempts,
        max_age,
    })
}

// ---------------------------------------------------------------------------
// What `check-config` prints: everything that would run, secrets masked.

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration: {}", self.source_name)?;
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "state_dir: {}", self.state_dir.display())?;
        match self.admin_listen {
            Some(a) => writeln!(
                f,
                "admin.listen: {a}{}",
                if self.admin_token.is_some() {
                    " (bearer token required)"
                } else {
                    ""
                }
            )?,
            None => writeln!(f, "admin.listen: (off)")?,
        }
        if self.admin_listen.is_some() {
            writeln!(
                f,
                "admin: header_timeout {}, idle_timeout {}, hosts: localhost, its addresses{}",
                humantime::format_duration(self.admin_header_timeout),
                humantime::format_duration(self.admin_idle_timeout),
                self.admin_allowed_hosts
                    .iter()
                    .map(|h| format!(", {h}"))
                    .collect::<String>()
            )?;
        }
        writeln!(
            f,
            "shutdown_timeout: {}",
            humantime::format_duration(self.shutdown_timeout)
        )?;
        for b in &self.bots {
            writeln!(
                f,
                "bot {:?}: flavor {}, api_url {}",
                b.name,
                b.flavor,
                exposure::mask_userinfo(&b.api_url)
            )?;
            writeln!(f, "  token: {}", mask(b.token.expose_secret()))?;
            if let Some(p) = &b.proxy {
                writeln!(f, "  proxy: {}", display_url(p))?;
            }
            writeln!(
                f,
                "  poll_timeout: {}",
                humantime::format_duration(b.poll_timeout)
            )?;
            match &b.allowed_updates {
                Some(list) => writeln!(f, "  allowed_updates: {}", list.join(", "))?,
                None => writeln!(f, "  allowed_updates: (platform default)")?,
            }
            for fw in &b.forwards {
                writeln!(f, "  forward {:?} -> {}", fw.name, display_url(&fw.url))?;
                let keys = if fw.signing_keys.is_empty() {
                    "(none: requests are NOT signed)".to_string()
                } else {
                    format!("{} key(s), whsec_****", fw.signing_keys.len())
                };
                writeln!(f, "    signing: {keys}")?;
                match &fw.secret_token {
                    Some(_) => writeln!(f, "    {}: ****", b.flavor.secret_token_header())?,
                    None => writeln!(f, "    secret token header: (none)")?,
                }
                writeln!(f, "    routing: {}", fw.filter)?;
                writeln!(f, "    retry: {}", fw.retry)?;
                writeln!(f, "    stale interactive updates: {}", fw.stale)?;
                writeln!(
                    f,
                    "    webhook reply calls: {}",
                    if fw.reply_calls {
                        format!("executed for {}", fw.reply_methods)
                    } else {
                        "ignored".to_string()
                    }
                )?;
                writeln!(
                    f,
                    "    max_in_flight: {}, timeout: {}",
                    fw.max_in_flight,
                    humantime::format_duration(fw.timeout)
                )?;
            }
        }
        Ok(())
    }
}

/// A URL fit for logs and listings: no password, no query values.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("****"));
    }
    if u.query().is_some() {
        u.set_query(Some("…"));
    }
    u.set_fragment(None);
    u.to_string()
}

/// Shows only the bot id part of a token (`123456:****`), which identifies
/// the bot without granting anything.
fn mask(token: &str) -> String {
    match token.split_once(':') {
        Some((id, _)) if id.chars().all(|c| c.is_ascii_digit()) => format!("{id}:****"),
        _ => "****".to_string(),
    }
}
