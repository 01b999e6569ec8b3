//! One `[[bot.forward]]`: where updates go, how requests are signed, which
//! updates it wants, and how failures are retried.

use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::ctx::Ctx;
use super::display::display_url;
use super::exposure;
use super::schema::{RawChatId, RawForward};
use super::secrets::{self, Sources};
use super::{
    ConfigError, Destination, ForwardSettings, DEFAULT_FORWARD_TIMEOUT, DEFAULT_MAX_IN_FLIGHT,
};
use crate::nats::subject::SubjectTemplate;
use crate::policy::methods::MethodSet;
use crate::policy::retry::RetryPolicy;
use crate::policy::routing::Filter;
use crate::policy::stale::StalePolicy;
use crate::signing::SigningKey;

pub(super) fn validate_forward(
    ctx: &Ctx,
    prefix: &str,
    rf: RawForward,
) -> Result<ForwardSettings, ConfigError> {
    let to = destination(ctx, prefix, &rf)?;
    // Without a name the URL (or subject) is the identity, so the queue
    // follows it; not a URL's password or query, which may hold secrets and
    // would show in every log line and in `pollhook dlq`.
    let name = rf.name.clone().unwrap_or_else(|| match &to {
        Destination::Http(url) => display_url(url),
        Destination::JetStream(t) => format!("nats:{t}"),
    });
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
    let signing_keys = match secrets::read(ctx, prefix, "signing_secret", sources)? {
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
    let secret_token = secrets::read(ctx, prefix, "secret_token", sources)?;
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
    let start_from = match rf.start_from.as_deref() {
        None | Some("now") => super::StartFrom::Now,
        Some("history") => super::StartFrom::History,
        Some(s) => {
            return Err(ctx.err(
                format!("{prefix}.start_from"),
                format!("{s:?} is not one of now, history"),
            ))
        }
    };
    Ok(ForwardSettings {
        name,
        signing_keys,
        secret_token,
        filter,
        max_in_flight,
        timeout,
        retry,
        stale,
        // A stream's consumers cannot answer through pollhook.
        reply_calls: matches!(to, Destination::Http(_)) && rf.reply_calls.unwrap_or(true),
        reply_methods,
        start_from,
        to,
    })
}

/// A URL to POST to, or a subject to publish to: exactly one, and the
/// keys that only make sense for the other kind are refused by name.
fn destination(ctx: &Ctx, prefix: &str, rf: &RawForward) -> Result<Destination, ConfigError> {
    let Some(subject) = &rf.nats_subject else {
        let url = check_url(ctx, prefix, rf.url.clone(), rf.allow_insecure)?;
        return Ok(Destination::Http(url));
    };
    let http_only = [
        ("url", rf.url.is_some()),
        ("secret_token", rf.secret_token.is_some()),
        ("secret_token_file", rf.secret_token_file.is_some()),
        ("secret_token_env", rf.secret_token_env.is_some()),
        (
            "secret_token_credential",
            rf.secret_token_credential.is_some(),
        ),
        ("reply_calls", rf.reply_calls == Some(true)),
        ("reply_methods", rf.reply_methods.is_some()),
        ("allow_insecure", rf.allow_insecure.is_some()),
    ];
    if let Some((key, _)) = http_only.iter().find(|(_, set)| *set) {
        let why = match *key {
            "url" => "set either url (an HTTP forward) or nats_subject (a JetStream forward), not both",
            k if k.starts_with("secret_token") => {
                "a JetStream forward stores its headers in the stream for every reader; let consumers verify origin with signing_secret instead"
            }
            "allow_insecure" => "applies to url forwards; TLS to NATS is set in [nats]",
            _ => "a stream's consumers cannot answer with a Bot API call through pollhook",
        };
        return Err(ctx.err(format!("{prefix}.{key}"), why));
    }
    SubjectTemplate::parse(subject)
        .map(Destination::JetStream)
        .map_err(|m| ctx.err(format!("{prefix}.nats_subject"), m))
}

/// The backend's URL: http or https, and plain http only to this machine
/// unless the forward says the network is trusted.
fn check_url(
    ctx: &Ctx,
    prefix: &str,
    url: Option<String>,
    allow_insecure: Option<bool>,
) -> Result<Url, ConfigError> {
    let text = url.ok_or_else(|| {
        ctx.err(
            format!("{prefix}.url"),
            "missing; every forward needs a url",
        )
    })?;
    // Errors show the URL, never a password in it.
    let shown = exposure::mask_userinfo(&text);
    let url = Url::parse(&text).map_err(|e| {
        ctx.err(
            format!("{prefix}.url"),
            format!("{shown:?} is not a URL: {e}"),
        )
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ctx.err(
            format!("{prefix}.url"),
            format!("{shown:?}: scheme {:?} is not http or https", url.scheme()),
        ));
    }
    if url.scheme() == "http" && !exposure::is_loopback_host(&url) {
        let risk = format!(
            "{}: plain http:// to a host other than this one: every update (users' messages) crosses the network unencrypted",
            display_url(&url)
        );
        if allow_insecure == Some(true) {
            ctx.warn(format!("{prefix}.url: {risk}"));
        } else {
            return Err(ctx.err(
                format!("{prefix}.url"),
                format!("{risk}; use https://, or set allow_insecure = true in this forward if the network between them is trusted"),
            ));
        }
    }
    Ok(url)
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
