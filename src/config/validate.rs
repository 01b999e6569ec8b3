//! From the raw schema to `Settings`: the top-level keys and the admin
//! API. Bots and forwards have their own files; each mistake becomes a
//! `ConfigError` naming the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::bot::validate_bot;
use super::ctx::Ctx;
use super::schema::{RawAdmin, RawConfig};
use super::secrets::{self, Sources};
use super::{
    AdminView, BotSettings, ConfigError, Destination, Settings, DEFAULT_ADMIN_HEADER_TIMEOUT,
    DEFAULT_ADMIN_IDLE_TIMEOUT, DEFAULT_CACHE_MB, DEFAULT_SHUTDOWN_TIMEOUT,
};

pub(super) fn validate(raw: RawConfig, ctx: Ctx) -> Result<Settings, ConfigError> {
    let state_dir = state_dir(&raw, &ctx)?;
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
    let nats = raw
        .nats
        .map(|n| super::nats::validate_nats(&ctx, n))
        .transpose()?;
    let cluster = raw
        .cluster
        .map(|c| super::cluster::validate_cluster(&ctx, c, nats.is_some()))
        .transpose()?;
    let mut bots: Vec<BotSettings> = Vec::with_capacity(raw.bot.len());
    for (i, rb) in raw.bot.into_iter().enumerate() {
        let bot = validate_bot(&ctx, i, rb)?;
        if bots.iter().any(|b| b.name == bot.name) {
            return Err(ctx.err(
                format!("bot[{i}].name"),
                format!("{:?} is used by another bot", bot.name),
            ));
        }
        if nats.is_none() {
            if let Some(j) = bot
                .forwards
                .iter()
                .position(|f| matches!(f.to, Destination::JetStream(_)))
            {
                return Err(ctx.err(
                    format!("bot[{i}].forward[{j}].nats_subject"),
                    "a JetStream forward needs a [nats] section with its servers",
                ));
            }
        }
        bots.push(bot);
    }
    let gateway = raw
        .gateway
        .map(|g| super::gateway::validate_gateway(&ctx, g))
        .transpose()?;
    check_clients(&ctx, &bots, gateway.is_some())?;
    let tracing = super::traces::validate_tracing(&ctx, raw.tracing)?;
    let publishes = bots.iter().any(BotSettings::publishes_to_jetstream);
    if nats.is_some() && !publishes && cluster.is_none() {
        ctx.warn(
            "nats: no forward has a nats_subject, so pollhook does not connect to NATS".into(),
        );
    }
    Ok(Settings {
        source_name: ctx.source_name.to_string(),
        state_dir,
        admin_listen,
        admin_token,
        shutdown_timeout,
        cache_bytes: cache_mb * 1024 * 1024,
        bots,
        warnings: ctx.into_warnings(),
        admin_header_timeout: guards.header_timeout,
        admin_idle_timeout: guards.idle_timeout,
        admin_allowed_hosts: guards.allowed_hosts,
        nats,
        cluster,
        gateway,
        tracing,
    })
}

/// Clients need the gateway, and a key names one client of one bot.
fn check_clients(ctx: &Ctx, bots: &[BotSettings], gateway: bool) -> Result<(), ConfigError> {
    use secrecy::ExposeSecret;
    let mut seen: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    for (i, b) in bots.iter().enumerate() {
        for (j, c) in b.clients.iter().enumerate() {
            if !gateway {
                return Err(ctx.err(
                    format!("bot[{i}].client[{j}]"),
                    "a client calls the Bot API through the gateway: add a [gateway] section with its listen address",
                ));
            }
            if let Some((i0, j0)) = seen.insert(c.key.expose_secret(), (i, j)) {
                return Err(ctx.err(
                    format!("bot[{i}].client[{j}].key"),
                    format!(
                        "is the same as bot[{i0}].client[{j0}].key; each client needs its own key"
                    ),
                ));
            }
        }
    }
    if gateway && seen.is_empty() {
        ctx.warn("gateway: no [[bot.client]] is configured, so every call will be refused".into());
    }
    Ok(())
}

/// Only what `pollhook dlq` and `status` need: bots are not validated, so
/// an operator's shell need not hold every bot token.
pub(super) fn admin_view(raw: RawConfig, ctx: Ctx) -> Result<AdminView, ConfigError> {
    // The same rule as `run`'s: an empty state_dir would resolve to the
    // configuration's own folder, and `dlq` would open a database there.
    let state_dir = state_dir(&raw, &ctx)?;
    let (listen, token) = validate_admin(&ctx, raw.admin)?;
    Ok(AdminView {
        state_dir,
        listen,
        token,
    })
}

fn state_dir(raw: &RawConfig, ctx: &Ctx) -> Result<PathBuf, ConfigError> {
    match raw.state_dir.as_deref() {
        Some("") => Err(ctx.err("state_dir", "must not be empty")),
        Some(p) => Ok(ctx.path(p)),
        None => Ok(state_dir_in(ctx.env)),
    }
}

/// `$STATE_DIRECTORY` of `env`, else `./pollhook-state`.
pub(super) fn state_dir_in(env: &super::env::Env) -> PathBuf {
    // systemd's StateDirectory= sets this, possibly to several paths joined by ':'.
    match env.var("STATE_DIRECTORY") {
        Some(v) if !v.is_empty() => PathBuf::from(v.split(':').next().unwrap_or(v)),
        _ => PathBuf::from("./pollhook-state"),
    }
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
        ctx.warn(format!(
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
    let token = secrets::read(ctx, "admin", "token", sources)?;
    Ok((listen, token))
}
