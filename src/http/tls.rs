//! The one rustls configuration pollhook's own connections use (long polls
//! over HTTP/2, deliveries to HTTPS backends): the platform's verifier over
//! the system's roots, plus a bot's `ca_file` where it names one. A verifier
//! that verifies: there is no way to turn it off.

use std::sync::Arc;

use tokio_rustls::rustls;

use crate::config::CaFile;

/// ALPN offers HTTP/2 and HTTP/1.1, so an HTTP/1.1-only server completes
/// the handshake and says so.
pub fn client_config(ca_file: Option<&CaFile>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let extra = ca_file.map(|c| c.certs.to_vec()).unwrap_or_default();
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("ca_file: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
