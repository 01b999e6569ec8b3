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

use std::sync::{Arc, OnceLock};
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

type Plain = hyper_util::client::legacy::Client<HttpConnector, Body>;
type Tls = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A handle on the process's delivery client; clones share its pools.
///
/// `https://` backends get a client of their own, made at their first
/// delivery: its TLS configuration loads the system's root certificates
/// (~0.4 MB of an idle relay's RSS, measured), which a relay delivering to
/// `http://` backends only never needs.
#[derive(Clone)]
pub struct Client {
    plain: Plain,
    tls: Arc<OnceLock<Result<Tls, String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("TLS cannot be set up: {0}")]
    Tls(String),
    #[error(transparent)]
    Http(#[from] hyper_util::client::legacy::Error),
}

fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http
}

fn pooled<C>(connector: C) -> hyper_util::client::legacy::Client<C, Body>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

fn tls_client() -> Result<Tls, String> {
    let mut tls = super::tls::client_config(None)?;
    // hyper-rustls sets ALPN itself, from the versions enabled below.
    tls.alpn_protocols.clear();
    let mut http = connector();
    // The TLS layer takes the https:// URLs.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(pooled(https))
}

impl Client {
    pub fn new() -> Client {
        Client {
            plain: pooled(connector()),
            tls: Arc::new(OnceLock::new()),
        }
    }

    /// Sends one request; the answer's body is left to read.
    pub async fn send(&self, request: hyper::Request<Body>) -> Result<Response, SendError> {
        if request.uri().scheme() == Some(&hyper::http::uri::Scheme::HTTPS) {
            let tls = self.tls.get_or_init(tls_client).as_ref();
            let tls = tls.map_err(|e| SendError::Tls(e.clone()))?;
            return Ok(tls.request(request).await?);
        }
        Ok(self.plain.request(request).await?)
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// The length a response announces, if it does.
pub fn content_length(response: &Response) -> Option<u64> {
    hyper::body::Body::size_hint(response.body()).exact()
}

/// Reads at most `cap` bytes of a response's body.
pub async fn read_capped(response: Response, cap: usize) -> Result<Bytes, BodyError> {
    if content_length(&response).is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
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
