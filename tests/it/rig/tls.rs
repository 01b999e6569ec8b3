//! A TLS front for the rig's HTTP servers, as a platform's API is served:
//! a throwaway CA (its certificate written to a file for `ca_file`) signs
//! a server certificate for 127.0.0.1, and each connection speaks HTTP/1.1
//! or HTTP/2 as ALPN decides. The HTTP/2 side can announce a low
//! SETTINGS_MAX_CONCURRENT_STREAMS, like a proxy in front of a platform.
//! It also counts what the client did: the protocol of every request and
//! how many `getUpdates` were open at once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::serve::{Body, DropConnection, Server};

/// What the TLS server offers.
#[derive(Debug, Clone, Copy)]
pub struct TlsOptions {
    /// Offer `h2` by ALPN (else HTTP/1.1 only).
    pub h2: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS on HTTP/2 connections (None: hyper's
    /// default, 200).
    pub max_concurrent_streams: Option<u32>,
}

impl TlsOptions {
    pub const HTTP1: TlsOptions = TlsOptions {
        h2: false,
        max_concurrent_streams: None,
    };
    pub const H2: TlsOptions = TlsOptions {
        h2: true,
        max_concurrent_streams: None,
    };
    pub fn h2_streams(limit: u32) -> TlsOptions {
        TlsOptions {
            h2: true,
            max_concurrent_streams: Some(limit),
        }
    }
}

/// A CA and the server certificate it signed; the CA's PEM is in a file
/// that lives as long as this does.
pub struct TestCa {
    dir: tempfile::TempDir,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("rig: CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pollhook rig CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("rig: CA certificate");
        let leaf_key = KeyPair::generate().expect("rig: server key");
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("rig: server certificate");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        TestCa {
            dir,
            chain: vec![leaf.der().clone()],
            key: leaf_key.serialize_der(),
        }
    }

    /// The CA certificate's PEM file, for `ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn server_config(&self, opts: TlsOptions) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .expect("rig: server TLS config");
        config.alpn_protocols = if opts.h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        config
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// What the TLS server saw.
#[derive(Default)]
pub struct Seen {
    /// (method, HTTP version) pairs, each once, in order of first use.
    versions: Mutex<Vec<(String, Version)>>,
    open_polls: AtomicUsize,
    peak_polls: AtomicUsize,
    /// TLS handshakes completed (one per TCP connection the client kept).
    handshakes: AtomicUsize,
    /// Handshakes that failed (e.g. the client refused the certificate).
    refused: AtomicUsize,
}

impl Seen {
    /// The HTTP versions `method` was called with, each once.
    pub fn versions_of(&self, method: &str) -> Vec<Version> {
        let v = self.versions.lock().unwrap();
        v.iter()
            .filter(|(m, _)| m.eq_ignore_ascii_case(method))
            .map(|(_, v)| *v)
            .collect()
    }
    /// `getUpdates` open right now.
    pub fn open_polls(&self) -> usize {
        self.open_polls.load(Ordering::SeqCst)
    }
    /// The most `getUpdates` ever open at once.
    pub fn peak_polls(&self) -> usize {
        self.peak_polls.load(Ordering::SeqCst)
    }
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
    pub fn refused_handshakes(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Counts a `getUpdates` as open until its handler finishes or is dropped
/// (the client reset the stream or closed the connection).
struct OpenPoll(Arc<Seen>);

impl OpenPoll {
    fn new(seen: Arc<Seen>) -> OpenPoll {
        let now = seen.open_polls.fetch_add(1, Ordering::SeqCst) + 1;
        seen.peak_polls.fetch_max(now, Ordering::SeqCst);
        OpenPoll(seen)
    }
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        self.0.open_polls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `handler` over TLS on `listener`, recording into `seen`.
pub fn serve_tls<H, F>(
    listener: TcpListener,
    ca: &TestCa,
    opts: TlsOptions,
    seen: Arc<Seen>,
    handler: H,
) -> Server
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, DropConnection>> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(Arc::new(ca.server_config(opts)));
    Server::accepting(listener, move |stream| {
        let (acceptor, handler, seen) = (acceptor.clone(), handler.clone(), seen.clone());
        async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(_) => {
                    seen.refused.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            seen.handshakes.fetch_add(1, Ordering::SeqCst);
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service_fn(move |req: Request<Incoming>| {
                let method = req
                    .uri()
                    .path()
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                {
                    let mut v = seen.versions.lock().unwrap();
                    let pair = (method.clone(), req.version());
                    if !v.contains(&pair) {
                        v.push(pair);
                    }
                }
                let poll = method
                    .eq_ignore_ascii_case("getUpdates")
                    .then(|| OpenPoll::new(seen.clone()));
                let answer = handler(req);
                async move {
                    let r = answer.await;
                    drop(poll);
                    r
                }
            });
            let io = TokioIo::new(tls);
            if h2 {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                if let Some(n) = opts.max_concurrent_streams {
                    b.max_concurrent_streams(n);
                }
                let _ = b.serve_connection(io, service).await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(io, service)
                    .await;
            }
        }
    })
}

/// `ca_file = "…"` for a `[[bot]]` table.
pub fn ca_file_line(path: &Path) -> String {
    format!("ca_file = {:?}\n", path.display().to_string())
}
