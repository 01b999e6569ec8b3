//! What `check-config` prints: everything that would run, secrets masked.

use std::fmt;

use secrecy::ExposeSecret;
use url::Url;

use super::exposure;
use super::Settings;

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
        if let Some(n) = &self.nats {
            let servers: Vec<String> = n.servers.iter().map(display_url).collect();
            writeln!(f, "nats.servers: {}", servers.join(", "))?;
            writeln!(
                f,
                "nats: auth {}, tls {}, connect_timeout {}",
                super::nats::describe_auth(&n.auth),
                super::nats::describe_tls(n),
                humantime::format_duration(n.connect_timeout)
            )?;
        }
        if let Some(c) = &self.cluster {
            writeln!(
                f,
                "cluster: node {:?}, {} replica(s), lease {}",
                c.node,
                c.replicas,
                humantime::format_duration(c.lease)
            )?;
        }
        if let Some(g) = &self.gateway {
            writeln!(
                f,
                "gateway.listen: {}, max_wait {}, max_queued {} per bot, max_connections {}",
                g.listen,
                humantime::format_duration(g.max_wait),
                g.max_queued,
                g.max_connections
            )?;
        }
        match &self.tracing {
            Some(t) => writeln!(
                f,
                "tracing: spans to {} (OTLP/HTTP protobuf), service.name {:?}",
                display_url(&t.traces_url),
                t.service_name
            )?,
            None => writeln!(f, "tracing: off")?,
        }
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
            if let Some(ca) = &b.ca_file {
                writeln!(
                    f,
                    "  ca_file: {} ({} certificate{}, trusted beside the system's)",
                    ca.path.display(),
                    ca.certs.len(),
                    if ca.certs.len() == 1 { "" } else { "s" }
                )?;
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
            match (&b.history, self.cluster.is_some()) {
                (_, true) => writeln!(f, "  history: not kept in a cluster")?,
                (Some(h), false) => writeln!(
                    f,
                    "  history: {}, at most {} MB",
                    humantime::format_duration(h.window),
                    h.max_bytes >> 20
                )?,
                (None, false) => writeln!(f, "  history: off")?,
            }
            if self.gateway.is_some() || !b.clients.is_empty() {
                let l = &b.limits;
                let show = |w: &[crate::budget::Window]| {
                    if w.is_empty() {
                        "none".to_string()
                    } else {
                        w.iter()
                            .map(|w| w.to_string())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    }
                };
                writeln!(
                    f,
                    "  limits: per chat {}, per group {}, per bot {}; chat methods: {}",
                    show(&l.per_chat),
                    show(&l.per_group),
                    show(&l.per_bot),
                    l.chat_methods
                )?;
            }
            for c in &b.clients {
                writeln!(
                    f,
                    "  client {:?}: key ****, methods {}, chats {}",
                    c.name,
                    c.methods,
                    c.chats.as_ref().map_or("any".to_string(), |c| c.join(", "))
                )?;
            }
            for fw in &b.forwards {
                writeln!(f, "  forward {:?} -> {}", fw.name, fw.to.describe())?;
                if let super::Destination::JetStream(t) = &fw.to {
                    writeln!(
                        f,
                        "    stream: one must capture {} (check with --probe)",
                        t.pattern(&b.name)
                    )?;
                }
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
                if fw.start_from == super::StartFrom::History {
                    writeln!(
                        f,
                        "    starts from history (when new to the state directory)"
                    )?;
                }
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
pub(super) fn mask(token: &str) -> String {
    match token.split_once(':') {
        Some((id, _)) if id.chars().all(|c| c.is_ascii_digit()) => format!("{id}:****"),
        _ => "****".to_string(),
    }
}
