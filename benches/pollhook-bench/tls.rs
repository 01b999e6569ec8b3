//! The fake Bot API over TLS, as platforms serve it: a throwaway CA (its
//! certificate written to a file the relay is given as `ca_file`; nothing
//! turns verification off) signs a certificate for 127.0.0.1; each
//! connection speaks HTTP/1.1 or HTTP/2 as ALPN picks, HTTP/2 with a
//! settable SETTINGS_MAX_CONCURRENT_STREAMS (a proxy in front of a
//! platform may allow ~100).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::servers::{listen, Api};

/// How the fake API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Plain HTTP/1.1 (the bench's wire before TLS).
    Plain,
    /// TLS, HTTP/1.1 only.
    TlsH1,
    /// TLS, HTTP/2 offered by ALPN, with this stream limit (None: hyper's
    /// default, 200).
    TlsH2(Option<u32>),
}

impl Wire {
    pub fn label(self) -> String {
        match self {
            Wire::Plain => "plain HTTP/1.1".into(),
            Wire::TlsH1 => "TLS HTTP/1.1".into(),
            Wire::TlsH2(None) => "TLS HTTP/2".into(),
            Wire::TlsH2(Some(n)) => format!("TLS HTTP/2, {n} streams"),
        }
    }
}

/// A running TLS API: its address, and the CA file to trust (in a temp
/// dir that lives as long as this).
pub struct TlsApi {
    pub addr: SocketAddr,
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub async fn start(api: &Api, wire: Wire) -> TlsApi {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let streams = match wire {
        Wire::TlsH2(limit) => {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            limit
        }
        _ => {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            None
        }
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let api = api.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, api) = (acceptor.clone(), api.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if let Some(n) = streams {
                        b.max_concurrent_streams(n);
                    }
                    let _ = b.serve_connection(io, service).await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    TlsApi {
        addr,
        ca_file,
        _dir: dir,
    }
}
