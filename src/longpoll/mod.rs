//! How a bot's long polls reach its platform, so that a long poll never
//! waits behind an HTTP/2 server's SETTINGS_MAX_CONCURRENT_STREAMS.
//!
//! reqwest (hyper) puts every request to one host on a single HTTP/2
//! connection once ALPN picked `h2`, and queues the requests beyond the
//! server's stream limit until a stream closes: with 100 streams allowed
//! and 101 bots, one long poll would wait a whole poll timeout, and its
//! updates with it. hyper does not expose the limit, so the long polls of
//! bots reaching an `https://` API directly go through [`Pool`]: HTTP/2
//! connections of our own (the `h2` crate, which does expose it), a new
//! one opened before a poll would have to wait. The other Bot API calls
//! (replies, gateway calls) are short and stay on reqwest.
//!
//! A plain `http://` API, and an `https://` one that does not offer `h2`,
//! gets each bot's long polls over HTTP/1.1 on one connection of its own
//! ([`Line`]), which holds no buffer while the poll waits. Bots behind a
//! `proxy` poll through reqwest, one connection each (reqwest does the
//! proxy protocols).

mod conn;
mod h1;
mod pool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use h1::Line;
pub use pool::{Answer, PollError, Pool};

use crate::config::CaFile;

/// The path a bot's `getUpdates` takes.
#[derive(Clone)]
pub enum LongPolls {
    /// This reqwest client (HTTP/1.1 here: through a proxy).
    Client(reqwest::Client),
    /// A plain `http://` API: one HTTP/1.1 connection of the bot's own.
    H1(Arc<Line>),
    /// Our HTTP/2 pool, or `h1` once the server turned out not to offer h2.
    H2 { pool: Arc<Pool>, h1: Arc<Line> },
}

/// One [`Pool`] per (host, port, ca_file): bots on the same API trusting
/// the same CAs share connections.
#[derive(Default)]
pub struct Pools {
    by_key: HashMap<(String, u16, Option<PathBuf>), Arc<Pool>>,
    /// Each server's turns to open HTTP/1.1 connections, shared by its lines.
    openings: HashMap<(String, u16), h1::Openings>,
}

impl Pools {
    pub fn new() -> Pools {
        Pools::default()
    }

    /// The long-poll path for a bot with this API URL template, proxy and
    /// CA file.
    pub fn long_polls(
        &mut self,
        clients: &mut crate::http::Clients,
        api_url: &str,
        proxy: Option<&url::Url>,
        ca_file: Option<&CaFile>,
    ) -> Result<LongPolls, String> {
        let sample = api_url
            .replace("{token}", "0:x")
            .replace("{method}", "getUpdates");
        let url = url::Url::parse(&sample).map_err(|e| format!("api_url: {e}"))?;
        if url.username() != "" || url.password().is_some() {
            // `user:pass@` becomes reqwest's `Authorization: Basic`; the
            // pool and the lines send no credentials.
            return Ok(LongPolls::Client(clients.for_long_polls(proxy, ca_file)?));
        }
        if url.scheme() != "https" {
            if proxy.is_none() {
                if let Some(line) = line_for(&url) {
                    let openings = self.openings_for(&line.host, line.port);
                    return Ok(LongPolls::H1(Arc::new(line.sharing(&openings))));
                }
            }
            // Plain HTTP is never HTTP/2 with reqwest (no h2c).
            return Ok(LongPolls::Client(clients.for_bot(proxy, ca_file)?));
        }
        if proxy.is_some() {
            return Ok(LongPolls::Client(clients.for_long_polls(proxy, ca_file)?));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let openings = self.openings_for(&host, port);
        let key = (host.clone(), port, ca_file.map(|c| c.path.clone()));
        let pool = match self.by_key.get(&key) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(Pool::new(host, port, ca_file)?);
                self.by_key.insert(key, p.clone());
                p
            }
        };
        let h1 = Arc::new(pool.h1_line(url.port().is_none()).sharing(&openings));
        Ok(LongPolls::H2 { pool, h1 })
    }

    fn openings_for(&mut self, host: &str, port: u16) -> h1::Openings {
        self.openings
            .entry((host.to_string(), port))
            .or_insert_with(h1::openings)
            .clone()
    }
}

/// A bot's own HTTP/1.1 line to a plain `http://` API. Its host and port
/// do not depend on the token: a template with `{token}` there does
/// not parse with a sample token (`0:x`) and is refused when the
/// configuration loads; before the host it is credentials, reqwest's path.
fn line_for(sample: &url::Url) -> Option<Line> {
    let host = match sample.host()? {
        url::Host::Domain(d) => d.to_string(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    let port = sample.port_or_known_default()?;
    Some(Line::new(host, port, sample.port().is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(api_url: &str, proxy: Option<&str>) -> &'static str {
        let proxy = proxy.map(|p| url::Url::parse(p).unwrap());
        let polls = Pools::new()
            .long_polls(
                &mut crate::http::Clients::new(),
                api_url,
                proxy.as_ref(),
                None,
            )
            .unwrap();
        match polls {
            LongPolls::Client(_) => "reqwest",
            LongPolls::H1(_) => "line",
            LongPolls::H2 { .. } => "pool",
        }
    }

    #[test]
    fn each_api_url_gets_the_path_that_can_carry_it() {
        assert_eq!(
            path("http://127.0.0.1:8081/bot{token}/{method}", None),
            "line"
        );
        assert_eq!(
            path("https://api.telegram.org/bot{token}/{method}", None),
            "pool"
        );
        assert_eq!(
            path(
                "http://127.0.0.1:8081/bot{token}/{method}",
                Some("http://127.0.0.1:3128")
            ),
            "reqwest",
            "a proxy is reqwest's"
        );
        for with_credentials in [
            "http://user:apipass@bots.lan:8081/bot{token}/{method}",
            "https://k3y@api.example/bot{token}/{method}",
        ] {
            assert_eq!(
                path(with_credentials, None),
                "reqwest",
                "{with_credentials}"
            );
        }
    }

    #[test]
    fn lines_to_one_server_share_their_turns_to_open_and_only_they() {
        let mut pools = Pools::new();
        let mut clients = crate::http::Clients::new();
        let mut line = |api_url: &str| match pools.long_polls(&mut clients, api_url, None, None) {
            Ok(LongPolls::H1(line)) => line.openings.clone(),
            Ok(LongPolls::H2 { h1, .. }) => h1.openings.clone(),
            _ => panic!("{api_url}: no line"),
        };
        let a = line("http://127.0.0.1:8081/bot{token}/{method}");
        let b = line("http://127.0.0.1:8081/other/bot{token}/{method}");
        let other_port = line("http://127.0.0.1:8082/bot{token}/{method}");
        let tls = line("https://api.example/bot{token}/{method}");
        let tls_too = line("https://api.example/bot{token}/{method}");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other_port));
        assert!(Arc::ptr_eq(&tls, &tls_too));
        assert!(!Arc::ptr_eq(&a, &tls));
    }
}
