//! The client deliveries go out on: hyper's pooled client, HTTP/1.1, and
//! HTTP/2 where an HTTPS backend offers it by ALPN.
//!
//! reqwest wraps this same client in layers a delivery does not use: its
//! redirect policy parses every request's URL again although it follows no
//! redirect, its retry layer clones every request's headers, and every
//! response's URL is parsed once more. At full speed those layers were
//! about a tenth of the relay's CPU (BENCHMARKS.md, "2026-12-02 (third
//! session)"). What a delivery needs is set here: a pool, a connect
//! timeout, TLS with the platform's verifier, no proxy, no redirects (hyper
//! follows none), and the request's timeout, which the sink sets itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{error_chain, BodyError, CONNECT_TIMEOUT};

pub type Body = http_body_util::Full<Bytes>;
pub type Response = hyper::Response<hyper::body::Incoming>;

/// Idle connections kept per backend, as the Bot API client keeps.
const IDLE_PER_HOST: usize = 64;
/// How long an idle connection is kept (reqwest's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A handle on the process's delivery client; clones share its pool.
///
/// One client for `http://` and `https://` backends alike. Keeping a plain
/// one apart and making the TLS one at the first `https://` delivery (so an
/// `http://`-only relay never loads the system's roots) was tried: the
/// second client type's code took an idle relay from 14.8 to 15.7 MB RSS,
/// more than the root store it saved (BENCHMARKS.md).
///
/// Behind an `Arc`: hyper-util's client is cloned with its whole
/// configuration (336 bytes), and every bot's plan, dispatcher and sink
/// holds a handle: 10,000 idle bots took 17 MB more than with reqwest's
/// one-pointer handle.
#[derive(Clone)]
pub struct Client {
    inner:
        Arc<hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>>,
}

impl Client {
    pub fn new() -> Result<Client, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        // The TLS layer below takes https:// URLs.
        http.enforce_http(false);
        let mut tls = super::tls::client_config(None)?;
        // hyper-rustls sets ALPN itself, from the versions enabled below.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// Sends one request; the answer's body is left to read.
    pub async fn send(
        &self,
        request: hyper::Request<Body>,
    ) -> Result<Response, hyper_util::client::legacy::Error> {
        self.inner.request(request).await
    }
}

/// The length a response announces, if it does.
pub fn content_length(response: &Response) -> Option<u64> {
    hyper::body::Body::size_hint(response.body()).exact()
}

/// Reads at most `cap` bytes of a response's body.
pub async fn read_capped(response: Response, cap: usize) -> Result<Bytes, BodyError> {
    read_capped_into(response, cap, BytesMut::new()).await
}

/// Like `read_capped`, into `buf`: a caller that sizes it up front keeps
/// a long body from being copied while it grows.
pub async fn read_capped_into(
    response: Response,
    cap: usize,
    mut buf: BytesMut,
) -> Result<Bytes, BodyError> {
    if content_length(&response).is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                return Err(BodyError::TooLarge(cap));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bot's plan and forward holds a handle: it must stay a pointer
    /// (10,000 idle bots, BENCHMARKS.md), not hyper-util's whole client.
    #[test]
    fn a_handle_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Client>(), std::mem::size_of::<usize>());
    }
}
