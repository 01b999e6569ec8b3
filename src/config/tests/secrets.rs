//! Secrets from each source, read against a given environment and folder.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use secrecy::ExposeSecret;

use super::{parse_err, BOT};
use crate::config::Settings;

const K1: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";
const K2: &str = "whsec_ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4";

/// BOT with its inline token replaced by `token_line`.
fn with_token(token_line: &str) -> String {
    BOT.replace("token = \"123456:ABC-def\"", token_line)
}

fn parse_in(dir: &Path, toml: &str, pairs: &[(&str, &str)]) -> Settings {
    crate::config::from_str(toml, dir, &super::vars(pairs)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_token_comes_from_each_source_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("token");
    std::fs::write(&file, "\n 11:from-file \n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(d.join("creds")).unwrap();
    std::fs::write(d.join("creds/bot"), "33:from-credential\n").unwrap();
    let creds = d.join("creds").display().to_string();
    let token = |toml: &str, pairs: &[(&str, &str)]| {
        let s = parse_in(d, toml, pairs);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        s.bots[0].token.expose_secret().to_string()
    };
    assert_eq!(
        token(&with_token("token = \"  00:inline\\n\""), &[]),
        "00:inline"
    );
    assert_eq!(
        token(&with_token("token_file = \"token\""), &[]),
        "11:from-file"
    );
    let absolute = format!("token_file = \"{}\"", file.display());
    assert_eq!(token(&with_token(&absolute), &[]), "11:from-file");
    assert_eq!(
        token(&with_token("token_env = \"T\""), &[("T", " 22:from-env ")]),
        "22:from-env"
    );
    assert_eq!(
        token(
            &with_token("token_credential = \"bot\""),
            &[("CREDENTIALS_DIRECTORY", &creds)]
        ),
        "33:from-credential"
    );
}

#[test]
fn a_secret_file_others_can_read_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "11:x").unwrap();
    let toml = with_token("token_file = \"token\"");
    for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let s = parse_in(dir.path(), &toml, &[]);
        if warned {
            assert_eq!(
                s.warnings,
                [format!(
                    "bot[0].token_file: {} is open to group or others (mode {mode:04o}); chmod 600 it",
                    file.display()
                )]
            );
        } else {
            assert!(s.warnings.is_empty(), "{mode:o}: {:?}", s.warnings);
        }
    }
    // Credentials live in systemd's private directory: no mode check.
    let creds = dir.path().display().to_string();
    let s = parse_in(
        dir.path(),
        &with_token("token_credential = \"token\""),
        &[("CREDENTIALS_DIRECTORY", &creds)],
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn signing_secrets_rotate_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys"), format!("{K1}\n{K2}\n")).unwrap();
    std::fs::set_permissions(
        dir.path().join("keys"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let creds = dir.path().display().to_string();
    for (line, pairs) in [
        (format!("signing_secret = \"{K1}\""), vec![]),
        (format!("signing_secret = [\"{K1}\", \"{K2}\"]"), vec![]),
        ("signing_secret_file = \"keys\"".to_string(), vec![]),
        (
            "signing_secret_env = \"KEYS\"".to_string(),
            vec![("KEYS", format!("{K1} {K2}"))],
        ),
        (
            "signing_secret_credential = \"keys\"".to_string(),
            vec![("CREDENTIALS_DIRECTORY", creds.clone())],
        ),
    ] {
        let toml = format!("{BOT}{line}\nsecret_token = \"tok_en-1\"\n");
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let s = parse_in(dir.path(), &toml, &pairs);
        let f = &s.bots[0].forwards[0];
        let want = if line.contains(K2) || !line.starts_with("signing_secret =") {
            2
        } else {
            1
        };
        assert_eq!(f.signing_keys.len(), want, "{line}");
        assert_eq!(f.secret_token.as_ref().unwrap().expose_secret(), "tok_en-1");
    }
}

#[test]
fn a_secret_has_one_source_and_that_source_must_deliver() {
    let e = parse_err(
        &format!("{BOT}secret_token = \"a\"\nsecret_token_file = \"b\"\n"),
        &[],
    );
    assert_eq!(e.key, "bot[0].forward[0].secret_token");
    assert_eq!(
        e.message,
        "set only one of secret_token, secret_token_file, secret_token_env, secret_token_credential"
    );
    let e = parse_err(&format!("[admin]\ntoken_file = \"missing\"\n{BOT}"), &[]);
    assert_eq!(e.key, "admin.token_file");
    assert!(
        e.message.starts_with("cannot read /etc/pollhook/missing: "),
        "{e}"
    );
    let e = parse_err(&format!("{BOT}secret_token_credential = \"t\"\n"), &[]);
    assert_eq!(e.key, "bot[0].forward[0].secret_token_credential");
    assert!(
        e.message.starts_with("$CREDENTIALS_DIRECTORY is not set"),
        "{e}"
    );
    let e = parse_err(
        &format!("{BOT}signing_secret_env = \"K\"\n"),
        &[("K", " \n ")],
    );
    assert_eq!(
        (e.key.as_str(), e.message.as_str()),
        (
            "bot[0].forward[0].signing_secret_env",
            "the secret is empty"
        )
    );
    // A process variable of the same name does not count: only the given
    // environment is read.
    let e = parse_err(&with_token("token_env = \"PATH\""), &[]);
    assert_eq!(e.message, "environment variable PATH is not set");
}
