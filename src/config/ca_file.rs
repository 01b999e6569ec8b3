//! `ca_file` on a `[[bot]]`: extra CA certificates its Bot API calls trust
//! (a platform behind a private CA, a TLS-intercepting corporate proxy, a
//! self-signed test server). They are added to the system's roots; there is
//! deliberately no way to turn verification off.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::ctx::Ctx;
use super::ConfigError;

/// The file as read at validation: the certificates are kept, so what was
/// checked is what the client trusts even if the file changes later.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub certs: Arc<[CertificateDer<'static>]>,
}

/// `bot` is the bot's name: with several bots the index in the key alone
/// makes the reader count.
pub(super) fn validate(
    ctx: &Ctx,
    prefix: &str,
    bot: &str,
    text: &str,
) -> Result<CaFile, ConfigError> {
    let key = format!("{prefix}.ca_file");
    let err = |message: String| ctx.err(&key, format!("{message} (bot {bot:?})"));
    let path = ctx.path(text);
    let pem =
        std::fs::read(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for (n, item) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = item.map_err(|e| {
            err(format!(
                "{}: certificate {} is not valid PEM: {e}",
                path.display(),
                n + 1
            ))
        })?;
        // The same check rustls makes when the root store is built, made
        // here so that `check-config` catches it, not the first poll.
        webpki::anchor_from_trusted_cert(&cert).map_err(|e| {
            err(format!(
                "{}: certificate {} is not a usable X.509 certificate: {e}",
                path.display(),
                n + 1
            ))
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(err(format!(
            "{}: no certificate in it; give a PEM file holding one or more \"-----BEGIN CERTIFICATE-----\" blocks",
            path.display()
        )));
    }
    Ok(CaFile {
        path,
        certs: certs.into(),
    })
}
