//! The process's one NATS connection: options from `[nats]`, reconnecting
//! for ever in the background, its state for `/readyz` and `/metrics`.

use std::str::FromStr;

use async_nats::{ConnectOptions, Event, ServerAddr};
use secrecy::ExposeSecret;
use tracing::{info, warn};

use crate::config::{NatsAuth, NatsSettings};

/// A connection to NATS. Cloning shares it.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The settings cannot be used (an unreadable credentials file, a bad
    /// address): fix the configuration.
    #[error("{0}")]
    Settings(String),
    /// No server answered, or one refused us.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// When to give up on the first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstConnect {
    /// Return at once and keep trying in the background: the relay polls
    /// into its local queue while NATS is away.
    InBackground,
    /// Fail if no server answers within the connect timeout (the probe).
    OrFail,
}

impl Nats {
    pub async fn connect(s: &NatsSettings, first: FirstConnect) -> Result<Nats, NatsError> {
        let mut opts = match &s.auth {
            // The .creds file's JWT is sent and its seed signs the server's
            // nonce; async-nats parses both.
            NatsAuth::Credentials(c) => ConnectOptions::with_credentials(c.expose_secret())
                .map_err(|e| {
                    NatsError::Settings(format!(
                        "nats.credentials: not a NATS credentials file: {}",
                        e.kind()
                    ))
                })?,
            NatsAuth::Token(t) => ConnectOptions::new().token(t.expose_secret().to_string()),
            NatsAuth::UserPassword(u, p) => {
                ConnectOptions::new().user_and_password(u.clone(), p.expose_secret().to_string())
            }
            NatsAuth::NKey(seed) => ConnectOptions::new().nkey(seed.expose_secret().to_string()),
            NatsAuth::None => ConnectOptions::new(),
        };
        opts = opts
            .name("pollhook")
            .connection_timeout(s.connect_timeout)
            .max_reconnects(None)
            // A server that hangs (SIGSTOP, a dead VM) keeps its TCP
            // connection open; the default 60 s between pings would hold
            // JetStream forwards and a cluster's leases that long.
            .ping_interval(std::time::Duration::from_secs(5))
            .event_callback(|event| async move { log_event(event) });
        if let Some(ca) = &s.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &s.tls_client {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if s.require_tls {
            opts = opts.require_tls(true);
        }
        if first == FirstConnect::InBackground {
            opts = opts.retry_on_initial_connect();
        }
        let addrs = s
            .servers
            .iter()
            .map(|u| ServerAddr::from_str(u.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NatsError::Settings(format!("nats.servers: {e}")))?;
        let client = async_nats::connect_with_options(addrs, opts)
            .await
            .map_err(|e| NatsError::Connect(e.to_string()))?;
        Ok(Nats { client })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Connected now (not connecting, not reconnecting).
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }
}

fn log_event(event: Event) {
    match event {
        Event::Connected => info!("NATS: connected"),
        Event::Disconnected => {
            warn!("NATS: disconnected; reconnecting (JetStream forwards wait with their queues; in a cluster nothing unstored is confirmed)")
        }
        Event::LameDuckMode => {
            warn!("NATS: the server is shutting down (lame duck mode); moving to another")
        }
        Event::ServerError(e) => warn!("NATS: the server says: {e}"),
        Event::ClientError(e) => warn!("NATS: {e}"),
        Event::SlowConsumer(_) | Event::Draining | Event::Closed => {
            info!("NATS: {event}")
        }
    }
}
