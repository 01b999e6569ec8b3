//! One `[[bot]]`: its name, platform, API URL, token, polling, proxy and
//! extra CA certificates.

use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::ctx::Ctx;
use super::exposure;
use super::forward::validate_forward;
use super::schema::RawBot;
use super::secrets::{self, Sources};
use super::{BotSettings, ConfigError, ForwardSettings, DEFAULT_POLL_TIMEOUT};
use crate::platform::flavor::Flavor;

pub(super) fn validate_bot(ctx: &Ctx, i: usize, rb: RawBot) -> Result<BotSettings, ConfigError> {
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
    let sources = Sources {
        inline: rb.token.as_deref(),
        file: rb.token_file.as_deref(),
        env: rb.token_env.as_deref(),
        credential: rb.token_credential.as_deref(),
    };
    let token = secrets::read(ctx, &prefix, "token", sources)?.ok_or_else(|| {
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
        ctx.warn(format!(
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
    let ca_file = match rb.ca_file.as_deref() {
        None => None,
        Some(text) => Some(super::ca_file::validate(ctx, &prefix, &name, text)?),
    };
    let limits = super::gateway::validate_limits(ctx, &prefix, flavor, rb.limits)?;
    let mut clients: Vec<super::ClientSettings> = Vec::with_capacity(rb.client.len());
    for (j, rc) in rb.client.into_iter().enumerate() {
        let cprefix = format!("{prefix}.client[{j}]");
        let client = super::gateway::validate_client(ctx, &cprefix, rc)?;
        if clients.iter().any(|c| c.name == client.name) {
            return Err(ctx.err(
                format!("{cprefix}.name"),
                format!("{:?} is used by another client of this bot", client.name),
            ));
        }
        clients.push(client);
    }
    let window = ctx.duration(
        &format!("{prefix}.history"),
        rb.history.as_deref(),
        crate::history::DEFAULT_WINDOW,
    )?;
    let max_mb = rb.history_max_mb.unwrap_or(crate::history::DEFAULT_MAX_MB);
    if max_mb == 0 || max_mb > 1 << 30 {
        return Err(ctx.err(
            format!("{prefix}.history_max_mb"),
            format!("{max_mb}: use 1 or more megabytes (history = \"0s\" turns history off)"),
        ));
    }
    let history = (!window.is_zero()).then_some(crate::history::Retention {
        window,
        max_bytes: max_mb << 20,
    });
    Ok(BotSettings {
        name,
        flavor,
        api_url,
        token,
        allowed_updates: rb.allowed_updates,
        poll_timeout,
        forwards,
        proxy,
        ca_file,
        limits,
        clients,
        history,
    })
}

/// Bot names key the store and appear in every log line and metric.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
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
            ctx.warn(format!(
                "{key}: plain http:// to a host other than this one: the bot token is in every request's URL and crosses the network unencrypted; use https://"
            ));
            Ok(())
        }
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(ctx.err(key, format!("scheme {:?} is not http or https", u.scheme()))),
        Err(e) => Err(ctx.err(key, format!("{template:?} is not a URL template: {e}"))),
    }
}
