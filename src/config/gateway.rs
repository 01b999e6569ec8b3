//! `[gateway]`, and each bot's `[bot.limits]` and `[[bot.client]]`: who may
//! call the Bot API through pollhook, and the limits every call keeps to.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::ctx::Ctx;
use super::schema::{OneOrMany, RawChatId, RawClient, RawGateway, RawLimits};
use super::{ClientSettings, ConfigError, GatewaySettings};
use crate::budget::{Limits, Window};
use crate::platform::flavor::Flavor;
use crate::policy::methods::{MethodSet, DEFAULT_REPLY_METHODS};

pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_QUEUED: usize = 1000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Guessing a key must be hopeless.
const MIN_KEY_LEN: usize = 16;

pub(super) fn validate_gateway(ctx: &Ctx, raw: RawGateway) -> Result<GatewaySettings, ConfigError> {
    let listen = raw.listen.ok_or_else(|| {
        ctx.err(
            "gateway.listen",
            "missing; e.g. listen = \"127.0.0.1:9808\"",
        )
    })?;
    let listen: SocketAddr = listen.trim().parse().map_err(|_| {
        ctx.err(
            "gateway.listen",
            format!("{listen:?} is not an address and port, e.g. \"127.0.0.1:9808\""),
        )
    })?;
    if !listen.ip().is_loopback() {
        ctx.warn(format!(
            "gateway.listen: {listen} is reachable from other machines: keys travel in plain HTTP; keep it on a private network"
        ));
    }
    let max_wait = ctx.duration(
        "gateway.max_wait",
        raw.max_wait.as_deref(),
        DEFAULT_MAX_WAIT,
    )?;
    if max_wait.is_zero() || max_wait > Duration::from_secs(3600) {
        return Err(ctx.err("gateway.max_wait", "must be more than 0s and at most 1h"));
    }
    let max_queued = raw.max_queued.unwrap_or(DEFAULT_MAX_QUEUED);
    if !(1..=1_000_000).contains(&max_queued) {
        return Err(ctx.err("gateway.max_queued", "must be 1 to 1000000"));
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=65_536).contains(&max_connections) {
        return Err(ctx.err("gateway.max_connections", "must be 1 to 65536"));
    }
    Ok(GatewaySettings {
        listen,
        max_wait,
        max_queued,
        max_connections,
    })
}

pub(super) fn validate_limits(
    ctx: &Ctx,
    prefix: &str,
    flavor: Flavor,
    raw: Option<RawLimits>,
) -> Result<Limits, ConfigError> {
    let mut limits = Limits::for_flavor(flavor);
    let Some(raw) = raw else {
        return Ok(limits);
    };
    let windows = |key: &str, given: Option<OneOrMany<String>>, into: &mut Vec<Window>| {
        if let Some(list) = given {
            *into = list
                .into_vec()
                .iter()
                .map(|t| Window::parse(t))
                .collect::<Result<_, _>>()
                .map_err(|m| ctx.err(format!("{prefix}.limits.{key}"), m))?;
        }
        Ok::<_, ConfigError>(())
    };
    windows("per_chat", raw.per_chat, &mut limits.per_chat)?;
    windows("per_group", raw.per_group, &mut limits.per_group)?;
    windows("per_bot", raw.per_bot, &mut limits.per_bot)?;
    if let Some(m) = raw.chat_methods {
        limits.chat_methods = MethodSet::parse(&m)
            .map_err(|e| ctx.err(format!("{prefix}.limits.chat_methods"), e))?;
    }
    Ok(limits)
}

pub(super) fn validate_client(
    ctx: &Ctx,
    prefix: &str,
    raw: RawClient,
) -> Result<ClientSettings, ConfigError> {
    let name = raw.name.ok_or_else(|| {
        ctx.err(
            format!("{prefix}.name"),
            "missing; every client needs a name",
        )
    })?;
    if !super::bot::valid_name(&name) {
        return Err(ctx.err(
            format!("{prefix}.name"),
            format!("{name:?}: use 1-64 letters, digits, '-', '_' or '.'"),
        ));
    }
    let sources = super::secrets::Sources {
        inline: raw.key.as_deref(),
        file: raw.key_file.as_deref(),
        env: raw.key_env.as_deref(),
        credential: raw.key_credential.as_deref(),
    };
    let key = super::secrets::read(ctx, prefix, "key", sources)?.ok_or_else(|| {
        ctx.err(
            format!("{prefix}.key"),
            "missing; set one of key_credential, key_file, key_env, key",
        )
    })?;
    let k = key.expose_secret();
    if k.len() < MIN_KEY_LEN
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
    {
        return Err(ctx.err(
            format!("{prefix}.key"),
            format!(
                "a key needs at least {MIN_KEY_LEN} characters of A-Z a-z 0-9 : _ - (it goes in URLs); \
                 shape it like a token, e.g. 1:<random>, since some frameworks check that"
            ),
        ));
    }
    let methods = match &raw.methods {
        Some(m) => MethodSet::parse(m),
        None => {
            let mut m: Vec<&str> = DEFAULT_REPLY_METHODS.to_vec();
            m.extend(["getFile", "getMe"]);
            MethodSet::parse(&m)
        }
    }
    .map_err(|e| ctx.err(format!("{prefix}.methods"), e))?;
    let chats = match raw.chats {
        None => None,
        Some(list) if list.is_empty() => None,
        Some(list) => Some(
            list.into_iter()
                .map(|c| match c {
                    RawChatId::Int(i) => Ok(i.to_string()),
                    RawChatId::Text(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
                    RawChatId::Text(_) => {
                        Err(ctx.err(format!("{prefix}.chats"), "holds an empty chat id"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ClientSettings {
        name,
        key,
        methods,
        chats,
    })
}
