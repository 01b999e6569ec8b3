//! The one rustls configuration pollhook's own connections use (long polls
//! over HTTP/2, deliveries to HTTPS backends): the platform's verifier over
//! the system's roots, plus a bot's `ca_file` where it names one. A verifier
//! that verifies: there is no way to turn it off.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::Verifier;
use tokio_rustls::rustls;

use crate::config::CaFile;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// ALPN offers HTTP/2 and HTTP/1.1, so an HTTP/1.1-only server completes
/// the handshake and says so.
pub fn client_config(ca_file: Option<&CaFile>) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let extra = ca_file.map(|c| c.certs.to_vec()).unwrap_or_default();
    let verifier = Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(|e| format!("ca_file: {e}"))?;
    with_verifier(provider, Arc::new(verifier))
}

/// Like `client_config` without `ca_file`, its roots loaded at the first
/// handshake instead of now: the platform's verifier reads and parses the
/// system's root certificates when it is made, which is memory an idle
/// relay whose backends are all `http://` never needs (BENCHMARKS.md,
/// "2026-12-02 (third session)"). No ALPN: the caller sets it.
pub fn lazy_config() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier = Lazy {
        provider: provider.clone(),
        verifier: OnceLock::new(),
    };
    let mut config = with_verifier(provider, Arc::new(verifier))?;
    config.alpn_protocols.clear();
    Ok(config)
}

fn with_verifier(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The platform's verifier, made when a certificate is first verified.
/// Signatures are checked with the provider's algorithms, as the platform's
/// verifier checks them, so only the certificate chain needs the roots.
#[derive(Debug)]
struct Lazy {
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<Result<Verifier, rustls::Error>>,
}

impl ServerCertVerifier for Lazy {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .verifier
            .get_or_init(|| Verifier::new(self.provider.clone()))
        {
            Ok(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            Err(e) => Err(e.clone()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
