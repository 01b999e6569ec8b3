//! Configuration: a TOML file layered with `POLLHOOK_…` environment overrides,
//! validated into the runtime types the relay uses.
//!
//! Parsing happens in two steps. `schema`'s `Raw*` structs mirror the file
//! exactly (`deny_unknown_fields`, so a typo is an error rather than a
//! silently ignored key); validation (`validate`, `bot`, `forward`, with
//! `secrets` reading tokens and keys) then turns them into `Settings`,
//! resolving relative paths against the file's folder and checking every
//! value. Each mistake becomes a `ConfigError` naming the file and the key,
//! because the person reading it is fixing a file at 3 a.m. `load` owns the
//! layering, against an environment that is an input (`env`) so unit tests
//! pass their own; `display` is what `check-config` prints.

mod bot;
mod ca_file;
mod cluster;
mod ctx;
mod display;
mod env;
mod exposure;
mod forward;
mod gateway;
mod load;
mod nats;
mod schema;
mod secrets;
mod traces;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::nats::subject::SubjectTemplate;
use crate::platform::flavor::Flavor;
use crate::policy::methods::MethodSet;
use crate::policy::retry::RetryPolicy;
use crate::policy::routing::Filter;
use crate::policy::stale::StalePolicy;
use crate::signing::SigningKey;

pub use ca_file::CaFile;

pub use display::display_url;
pub use gateway::DEFAULT_MAX_QUEUED;
pub use load::{from_str, load, load_admin_view, quick_start};

/// Where the state lives when nothing says: `$STATE_DIRECTORY` (systemd's
/// `StateDirectory=`), else `./pollhook-state`.
pub fn default_state_dir() -> std::path::PathBuf {
    validate::state_dir_in(&env::Env::from_process())
}

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
    /// The process's NATS connection, for JetStream forwards.
    pub nats: Option<NatsSettings>,
    /// Set: this node is one of several sharing the bots through NATS.
    pub cluster: Option<ClusterSettings>,
    /// `[gateway]`: None when backends cannot call the Bot API through us.
    pub gateway: Option<GatewaySettings>,
    /// `[tracing]` (or `OTEL_EXPORTER_OTLP_ENDPOINT`): None when no spans
    /// are exported, which costs nothing.
    pub tracing: Option<TracingSettings>,
}

/// Where spans go, validated.
#[derive(Debug, Clone)]
pub struct TracingSettings {
    /// The full URL spans are POSTed to: the configured base + `/v1/traces`.
    pub traces_url: Url,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// `[gateway]`.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    /// The longest a call waits for its bot's budget.
    pub max_wait: Duration,
    /// Calls waiting per bot; more get a 429 at once.
    pub max_queued: usize,
    pub max_connections: usize,
}

/// `[[bot.client]]`: a backend that calls the Bot API as this bot.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub name: String,
    /// What it sends in place of the token.
    pub key: SecretString,
    pub methods: MethodSet,
    /// None: any chat.
    pub chats: Option<Vec<String>>,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Unique per node.
    pub node: String,
    /// JetStream replicas of the queue and the buckets.
    pub replicas: usize,
    /// How long a silent leader keeps its bots.
    pub lease: Duration,
}

/// `[nats]`, validated.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://` or `tls://` URLs with a port; never a user or password.
    pub servers: Vec<Url>,
    pub auth: NatsAuth,
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// TLS material was given: refuse a server that does not speak TLS.
    pub require_tls: bool,
    pub connect_timeout: Duration,
}

/// How the NATS connection authenticates.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    /// A `.creds` file's contents: a user JWT and its nkey seed.
    Credentials(SecretString),
    Token(SecretString),
    UserPassword(String, SecretString),
    /// An nkey seed (`SU…`).
    NKey(SecretString),
}

impl BotSettings {
    /// Whether a forward of this bot publishes to JetStream (and so needs
    /// the NATS connection).
    pub fn publishes_to_jetstream(&self) -> bool {
        self.forwards
            .iter()
            .any(|f| matches!(f.to, Destination::JetStream(_)))
    }
}

/// Where a forward's updates go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A signed POST to the backend's URL.
    Http(Url),
    /// A JetStream publish to a subject rendered per update.
    JetStream(SubjectTemplate),
}

impl Destination {
    /// For logs and listings: no secrets.
    pub fn describe(&self) -> String {
        match self {
            Destination::Http(url) => display_url(url),
            Destination::JetStream(t) => format!("nats subject {t}"),
        }
    }
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
    /// Extra CA certificates the bot's Bot API calls trust, beside the
    /// system's.
    pub ca_file: Option<CaFile>,
    /// The platform's rate limits every outgoing call keeps to.
    pub limits: crate::budget::Limits,
    pub clients: Vec<ClientSettings>,
    /// How long delivered updates are kept for replay; None: not kept.
    pub history: Option<crate::history::Retention>,
}

#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Stable identity of the forward inside its bot; its queue is keyed by it.
    pub name: String,
    pub to: Destination,
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
    /// Whether a forward new to the state directory gets the bot's
    /// retained history first.
    pub start_from: StartFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Now,
    History,
}

pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
pub const DEFAULT_CACHE_MB: u64 = 64;
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What `pollhook dlq` needs from a configuration file: where the state is
/// and how to reach a running daemon. Bots are not validated, so an
/// operator's shell need not hold every bot token.
pub struct AdminView {
    pub state_dir: PathBuf,
    pub listen: Option<SocketAddr>,
    pub token: Option<SecretString>,
}

#[cfg(test)]
mod tests;
