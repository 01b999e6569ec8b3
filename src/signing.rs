//! Standard Webhooks signatures.
//!
//! A signature is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
//! Secrets are written `whsec_` + base64 of the key bytes. A forward may hold
//! several keys during a rotation; the header then carries one signature per
//! key, space-separated, and a receiver accepts any one it knows.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

/// A decoded signing key, kept as HMAC's state after absorbing it: each
/// signature clones that state instead of hashing the padded key again
/// (two of the ~7 SHA-256 blocks a 300-byte update costs; signing was
/// 2.6 % of the relay's CPU, see BENCHMARKS.md). `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(****)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`; a bare base64 string is accepted too, as the
    /// reference libraries do.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = B64.decode(encoded.trim()).map_err(|_| {
            "not a Standard Webhooks secret: expected \"whsec_\" followed by base64".to_string()
        })?;
        if bytes.len() < 16 {
            return Err(format!(
                "the key is {} bytes; use at least 16 (24-64 recommended)",
                bytes.len()
            ));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&bytes)
            .expect("HMAC takes keys of any length");
        Ok(SigningKey(mac))
    }

    /// Appends `v1,` + base64 of the signature to `out`.
    fn sign_into(&self, out: &mut String, id: &str, timestamp: i64, body: &[u8]) {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push_str("v1,");
        B64.encode_string(mac.finalize().into_bytes(), out);
    }
}

/// The `webhook-signature` header value: one signature per key.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    // "v1," and 44 base64 characters per key, space-separated.
    let mut out = String::with_capacity(keys.len() * 48);
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        k.sign_into(&mut out, id, timestamp, body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signature_header(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_non_base64_and_short_keys() {
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn one_signature_per_key() {
        let a = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let h = signature_header(&[a, b], "id", 1, b"{}");
        assert_eq!(h.split(' ').count(), 2);
        assert!(h.split(' ').all(|s| s.starts_with("v1,")));
    }

    /// The keyed state is cloned per signature, never updated in place: a
    /// second signature with the same key is the same, and during a
    /// rotation each key's signature is the one it makes alone.
    #[test]
    fn each_signature_starts_from_the_bare_key() {
        let spec = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let other = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let (id, ts) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330);
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let keys = [other.clone(), spec.clone()];
        let first = signature_header(&keys, id, ts, body);
        assert_eq!(first, signature_header(&keys, id, ts, body));
        let alone = signature_header(std::slice::from_ref(&other), id, ts, body);
        assert_eq!(first, format!("{alone} {expected}"));
        assert_eq!(signature_header(&[spec], id, ts, body), expected);
    }
}
