//! HTTP plumbing every outgoing path shares: the process's clients (direct,
//! or through a bot's proxy), reading response bodies with a size cap so a
//! broken or hostile server cannot make pollhook buffer without end, and
//! error text without the URL's secrets.

pub mod backend;
pub mod tls;

use std::time::Duration;

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The request's timeout ran out while the body was still coming.
    #[error("the body did not arrive in time: {0}")]
    Timeout(String),
    #[error("the body could not be read: {0}")]
    Read(String),
}

pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut buf = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(BodyError::TooLarge(cap));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                let e = e.without_url();
                let text = error_chain(&e);
                return Err(if e.is_timeout() {
                    BodyError::Timeout(text)
                } else {
                    BodyError::Read(text)
                });
            }
        }
    }
}

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's one client for Bot API calls. Each `reqwest::Client`
/// carries its own connection pool and TLS configuration (the root store
/// alone is a few hundred KB), so one per bot and forward made many idle
/// bots cost five times the memory (BENCHMARKS.md, "1,000 bots"); the
/// deliveries' client is likewise one for the process (backend.rs).
/// Redirects are never followed (Bot API calls do not redirect) and every
/// request sets its own timeout.
///
/// It uses no proxy, whatever `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` say: a
/// proxy sees the whole URL of an `http://` request, token included. A bot
/// that needs a proxy names it (`proxy`), see [`Clients`]. Deliveries to
/// backends have their own client, which uses no proxy either (backend.rs).
pub fn shared_client() -> reqwest::Client {
    builder()
        .no_proxy()
        .build()
        .expect("a client with static settings always builds")
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .user_agent(concat!("pollhook/", env!("CARGO_PKG_VERSION")))
}

/// The process's HTTP clients: the shared direct one, and one per distinct
/// (proxy, ca_file) a bot names: bots behind the same proxy and trusting the
/// same extra CAs share a client, its pool and its TLS configuration.
pub struct Clients {
    direct: reqwest::Client,
    via: std::collections::HashMap<ClientKey, reqwest::Client>,
}

/// What sets a bot's client apart from the direct one. The CA file is keyed
/// by its path: two bots naming the same file share the client.
#[derive(PartialEq, Eq, Hash)]
struct ClientKey {
    proxy: Option<String>,
    ca_file: Option<std::path::PathBuf>,
    /// HTTP/1.1 only (long polls, see src/longpoll/).
    h1_only: bool,
}

impl Clients {
    pub fn new() -> Clients {
        Clients {
            direct: shared_client(),
            via: Default::default(),
        }
    }

    /// The client for a bot's Bot API calls (long polls, webhook replies,
    /// gateway calls): through `proxy` if it has one, trusting `ca_file`'s
    /// certificates beside the system's. Both were checked by configuration
    /// validation; an error here names what reqwest refused.
    pub fn for_bot(
        &mut self,
        proxy: Option<&url::Url>,
        ca_file: Option<&crate::config::CaFile>,
    ) -> Result<reqwest::Client, String> {
        if proxy.is_none() && ca_file.is_none() {
            return Ok(self.direct.clone());
        }
        self.client(proxy, ca_file, false)
    }

    /// Like `for_bot`, but HTTP/1.1 only: a long poll then has a
    /// connection of its own and never queues behind an HTTP/2 server's
    /// stream limit (see src/longpoll/).
    pub fn for_long_polls(
        &mut self,
        proxy: Option<&url::Url>,
        ca_file: Option<&crate::config::CaFile>,
    ) -> Result<reqwest::Client, String> {
        self.client(proxy, ca_file, true)
    }

    fn client(
        &mut self,
        proxy: Option<&url::Url>,
        ca_file: Option<&crate::config::CaFile>,
        h1_only: bool,
    ) -> Result<reqwest::Client, String> {
        let key = ClientKey {
            proxy: proxy.map(|p| p.to_string()),
            ca_file: ca_file.map(|c| c.path.clone()),
            h1_only,
        };
        if let Some(c) = self.via.get(&key) {
            return Ok(c.clone());
        }
        let mut b = builder();
        if h1_only {
            b = b.http1_only();
        }
        b = match proxy {
            Some(p) => b.proxy(
                reqwest::Proxy::all(p.as_str())
                    .map_err(|e| format!("proxy: {}", error_chain(&e.without_url())))?,
            ),
            None => b.no_proxy(),
        };
        if let Some(ca) = ca_file {
            let certs = ca
                .certs
                .iter()
                .map(|der| reqwest::Certificate::from_der(der));
            // Merged with the system's roots, never instead of them, and
            // never a switch that turns verification off.
            let certs: Vec<_> = certs
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ca_file: {}", error_chain(&e)))?;
            b = b.tls_certs_merge(certs);
        }
        let client = b.build().map_err(|e| error_chain(&e.without_url()))?;
        self.via.insert(key, client.clone());
        Ok(client)
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

/// An error and its causes, one line: "error sending request: connection refused".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// A `Retry-After` header in seconds (the form the Bot APIs use).
pub fn retry_after_secs(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    use super::Clients;
    use crate::config::CaFile;

    #[test]
    fn bots_with_the_same_proxy_and_ca_file_share_a_client() {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/config/testdata/certs/ca.pem"
        ))
        .unwrap();
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        let ca = |path: &str| CaFile {
            path: path.into(),
            certs: certs.clone().into(),
        };
        let proxy = url::Url::parse("http://127.0.0.1:3128").unwrap();
        let mut clients = Clients::new();
        clients.for_bot(None, None).unwrap();
        assert_eq!(
            clients.via.len(),
            0,
            "no proxy, no ca_file: the direct client"
        );
        clients.for_bot(None, Some(&ca("/a.pem"))).unwrap();
        clients.for_bot(None, Some(&ca("/a.pem"))).unwrap();
        assert_eq!(clients.via.len(), 1, "the same ca_file: one client");
        clients.for_bot(None, Some(&ca("/b.pem"))).unwrap();
        clients.for_bot(Some(&proxy), Some(&ca("/a.pem"))).unwrap();
        clients.for_bot(Some(&proxy), Some(&ca("/a.pem"))).unwrap();
        assert_eq!(clients.via.len(), 3, "one per (proxy, ca_file)");
        clients.for_long_polls(None, Some(&ca("/a.pem"))).unwrap();
        assert_eq!(clients.via.len(), 4, "long polls: HTTP/1.1 only, apart");
    }
}
