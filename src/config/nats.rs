//! `[nats]`: the servers of the process's one NATS connection, how it
//! authenticates and its TLS.

use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::ctx::Ctx;
use super::display::display_url;
use super::schema::RawNats;
use super::secrets::{self, Sources};
use super::{ConfigError, NatsAuth, NatsSettings};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn validate_nats(ctx: &Ctx, mut raw: RawNats) -> Result<NatsSettings, ConfigError> {
    let servers = raw.servers.take().map(|s| s.into_vec()).unwrap_or_default();
    if servers.is_empty() {
        return Err(ctx.err(
            "nats.servers",
            "missing; list at least one server, e.g. [\"nats://127.0.0.1:4222\"]",
        ));
    }
    let tls_ca = raw.tls_ca_file.as_deref().map(|p| ctx.path(p));
    let tls_cert = raw.tls_cert_file.as_deref().map(|p| ctx.path(p));
    let tls_key = raw.tls_key_file.as_deref().map(|p| ctx.path(p));
    if tls_cert.is_some() != tls_key.is_some() {
        return Err(ctx.err(
            if tls_cert.is_some() {
                "nats.tls_key_file"
            } else {
                "nats.tls_cert_file"
            },
            "a client certificate needs both tls_cert_file and tls_key_file",
        ));
    }
    for (key, path) in [
        ("nats.tls_ca_file", &tls_ca),
        ("nats.tls_cert_file", &tls_cert),
        ("nats.tls_key_file", &tls_key),
    ] {
        if let Some(p) = path {
            std::fs::metadata(p)
                .map_err(|e| ctx.err(key, format!("cannot read {}: {e}", p.display())))?;
        }
    }
    let tls_configured = tls_ca.is_some() || tls_cert.is_some();
    let mut checked = Vec::with_capacity(servers.len());
    for (i, text) in servers.iter().enumerate() {
        let url = server_url(ctx, i, text)?;
        if url.scheme() == "nats" && !tls_configured && !is_loopback(&url) {
            ctx.warn(format!(
                "nats.servers[{i}]: {}: without tls_ca_file or a tls:// URL, updates (users' messages) cross the network unencrypted unless that server requires TLS",
                display_url(&url)
            ));
        }
        checked.push(url);
    }
    let auth = auth(ctx, &raw)?;
    let connect_timeout = ctx.duration(
        "nats.connect_timeout",
        raw.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    if connect_timeout.is_zero() {
        return Err(ctx.err("nats.connect_timeout", "must be longer than 0s"));
    }
    Ok(NatsSettings {
        servers: checked,
        auth,
        tls_ca,
        tls_client: tls_cert.zip(tls_key),
        require_tls: tls_configured,
        connect_timeout,
    })
}

/// `nats://` is not a scheme the URL parser knows, so its host stays text:
/// compare it as an address here.
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One server address: `nats://` or `tls://` with a host and a port (4222
/// if none), or a bare `host:port`.
fn server_url(ctx: &Ctx, i: usize, text: &str) -> Result<Url, ConfigError> {
    let key = format!("nats.servers[{i}]");
    // Errors show the address, never a password someone put in it.
    let text = &super::exposure::mask_userinfo(text);
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("nats://{text}")
    };
    let mut url = Url::parse(&full).map_err(|e| ctx.err(&key, format!("{text:?}: {e}")))?;
    if url.scheme() != "nats" && url.scheme() != "tls" {
        return Err(ctx.err(
            &key,
            format!("{text:?}: scheme {:?} is not nats or tls", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ctx.err(&key, format!("{text:?} names no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // A URL is printed in logs and by check-config; a secret in it
        // would be too.
        return Err(ctx.err(
            &key,
            "holds a user or password; set nats.user with nats.password_env (or token_env, credentials_file) instead",
        ));
    }
    if url.port().is_none() {
        let _ = url.set_port(Some(4222));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(ctx.err(
            &key,
            format!("{text:?}: a server address has no path or query"),
        ));
    }
    Ok(url)
}

fn src<'a>(
    inline: &'a Option<String>,
    file: &'a Option<String>,
    env: &'a Option<String>,
    credential: &'a Option<String>,
) -> Sources<'a> {
    Sources {
        inline: inline.as_deref(),
        file: file.as_deref(),
        env: env.as_deref(),
        credential: credential.as_deref(),
    }
}

fn auth(ctx: &Ctx, raw: &RawNats) -> Result<NatsAuth, ConfigError> {
    let credentials = secrets::read(
        ctx,
        "nats",
        "credentials",
        src(
            &raw.credentials,
            &raw.credentials_file,
            &raw.credentials_env,
            &raw.credentials_credential,
        ),
    )?;
    let token = secrets::read(
        ctx,
        "nats",
        "token",
        src(
            &raw.token,
            &raw.token_file,
            &raw.token_env,
            &raw.token_credential,
        ),
    )?;
    let password = secrets::read(
        ctx,
        "nats",
        "password",
        src(
            &raw.password,
            &raw.password_file,
            &raw.password_env,
            &raw.password_credential,
        ),
    )?;
    let nkey = secrets::read(
        ctx,
        "nats",
        "nkey",
        src(
            &raw.nkey,
            &raw.nkey_file,
            &raw.nkey_env,
            &raw.nkey_credential,
        ),
    )?;
    // Checked now: a bad seed or credentials file would otherwise fail at
    // every reconnect, for ever, after check-config said all was well.
    if let Some(seed) = &nkey {
        let s = seed.expose_secret();
        if !s.starts_with("SU") || nkeys::KeyPair::from_seed(s).is_err() {
            return Err(ctx.err(
                "nats.nkey",
                "not a user nkey seed (58 characters starting with \"SU\", from `nk -gen user`; checksum included)",
            ));
        }
    }
    // Secrets are read trimmed, but a .creds file's last line must end in
    // a newline for async-nats to find its seed block.
    let credentials =
        credentials.map(|c| secrecy::SecretString::from(format!("{}\n", c.expose_secret())));
    if let Some(c) = &credentials {
        if let Err(e) = async_nats::ConnectOptions::with_credentials(c.expose_secret()) {
            return Err(ctx.err(
                "nats.credentials",
                format!(
                    "not a NATS credentials file: it needs a \"BEGIN NATS USER JWT\" block and a \"BEGIN USER NKEY SEED\" block with a valid seed ({})",
                    e.kind()
                ),
            ));
        }
    }
    let user = raw.user.clone().filter(|u| !u.is_empty());
    if user.is_some() != password.is_some() {
        return Err(ctx.err(
            if user.is_some() {
                "nats.password"
            } else {
                "nats.user"
            },
            "user and password go together (password from password_env, _file or _credential)",
        ));
    }
    let chosen = [
        credentials.is_some(),
        token.is_some(),
        user.is_some(),
        nkey.is_some(),
    ];
    if chosen.iter().filter(|c| **c).count() > 1 {
        return Err(ctx.err(
            "nats",
            "set one way to authenticate: credentials, token, user + password, or nkey",
        ));
    }
    Ok(if let Some(c) = credentials {
        NatsAuth::Credentials(c)
    } else if let Some(t) = token {
        NatsAuth::Token(t)
    } else if let (Some(u), Some(p)) = (user, password) {
        NatsAuth::UserPassword(u, p)
    } else if let Some(seed) = nkey {
        NatsAuth::NKey(seed)
    } else {
        NatsAuth::None
    })
}

/// For `check-config`: how it authenticates, never with what.
pub(super) fn describe_auth(auth: &NatsAuth) -> String {
    match auth {
        NatsAuth::None => "none".into(),
        NatsAuth::Credentials(_) => "credentials (JWT and nkey seed), ****".into(),
        NatsAuth::Token(_) => "token ****".into(),
        NatsAuth::UserPassword(u, _) => format!("user {u:?}, password ****"),
        NatsAuth::NKey(_) => "nkey seed ****".into(),
    }
}

/// Paths, for the display: where TLS material is read from.
pub(super) fn describe_tls(s: &NatsSettings) -> String {
    let mut parts = Vec::new();
    if let Some(ca) = &s.tls_ca {
        parts.push(format!("ca {}", ca.display()));
    }
    if let Some((cert, key)) = &s.tls_client {
        parts.push(format!(
            "client cert {} key {}",
            cert.display(),
            key.display()
        ));
    }
    if parts.is_empty() {
        if s.servers.iter().any(|u| u.scheme() == "tls") {
            "required (tls://), system roots".into()
        } else {
            "off unless the server requires it".into()
        }
    } else {
        format!("required, {}", parts.join(", "))
    }
}
