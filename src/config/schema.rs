//! The file's shape: `Raw*` structs that mirror the TOML exactly.
//!
//! `deny_unknown_fields` everywhere, so a typo is an error rather than a
//! silently ignored key. Nothing here is checked yet: every field is
//! optional and `validate` decides what is missing or wrong.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub state_dir: Option<String>,
    pub admin: Option<RawAdmin>,
    pub shutdown_timeout: Option<String>,
    pub cache_mb: Option<u64>,
    pub nats: Option<RawNats>,
    pub cluster: Option<RawCluster>,
    pub gateway: Option<RawGateway>,
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub bot: Vec<RawBot>,
}

/// `[tracing]`: spans exported over OTLP/HTTP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

/// `[gateway]`: backends call the Bot API through pollhook.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub listen: Option<String>,
    pub max_wait: Option<String>,
    pub max_queued: Option<usize>,
    pub max_connections: Option<usize>,
}

/// `[bot.limits]`: the platform's rate limits this bot's calls keep to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub per_chat: Option<OneOrMany<String>>,
    pub per_group: Option<OneOrMany<String>>,
    pub per_bot: Option<OneOrMany<String>>,
    pub chat_methods: Option<Vec<String>>,
}

/// `[[bot.client]]`: who may call the Bot API as this bot.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub name: Option<String>,
    pub key: Option<String>,
    pub key_file: Option<String>,
    pub key_env: Option<String>,
    pub key_credential: Option<String>,
    pub methods: Option<Vec<String>>,
    pub chats: Option<Vec<RawChatId>>,
}

/// `[cluster]`: this node's part in a cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub node: Option<String>,
    pub replicas: Option<usize>,
    pub lease: Option<String>,
}

/// `[nats]`: the process's one NATS connection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    pub servers: Option<OneOrMany<String>>,
    pub credentials: Option<String>,
    pub credentials_file: Option<String>,
    pub credentials_env: Option<String>,
    pub credentials_credential: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub password_credential: Option<String>,
    pub nkey: Option<String>,
    pub nkey_file: Option<String>,
    pub nkey_env: Option<String>,
    pub nkey_credential: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allow_insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBot {
    pub name: Option<String>,
    pub flavor: Option<String>,
    pub api_url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub allowed_updates: Option<Vec<String>>,
    pub poll_timeout: Option<String>,
    #[serde(default)]
    pub forward: Vec<RawForward>,
    pub proxy: Option<String>,
    pub ca_file: Option<String>,
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub client: Vec<RawClient>,
    pub history: Option<String>,
    pub history_max_mb: Option<u64>,
}

/// A value written either once or as a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A chat id as written in the file: a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawChatId {
    Int(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    pub name: Option<String>,
    pub url: Option<String>,
    /// A JetStream forward publishes here instead of POSTing to `url`.
    pub nats_subject: Option<String>,
    /// Several secrets during a key rotation.
    pub signing_secret: Option<OneOrMany<String>>,
    pub signing_secret_file: Option<String>,
    pub signing_secret_env: Option<String>,
    pub signing_secret_credential: Option<String>,
    pub secret_token: Option<String>,
    pub secret_token_file: Option<String>,
    pub secret_token_env: Option<String>,
    pub secret_token_credential: Option<String>,
    pub updates: Option<Vec<String>>,
    pub chats: Option<Vec<RawChatId>>,
    pub chat_types: Option<Vec<String>>,
    pub max_in_flight: Option<usize>,
    pub timeout: Option<String>,
    pub retry_delay: Option<String>,
    pub retry_max_delay: Option<String>,
    pub max_attempts: Option<u32>,
    pub max_age: Option<String>,
    pub stale: Option<String>,
    pub reply_calls: Option<bool>,
    pub reply_methods: Option<Vec<String>>,
    pub allow_insecure: Option<bool>,
    pub start_from: Option<String>,
}
