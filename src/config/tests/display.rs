//! What check-config prints, and what it must never print.

use super::{parse_ok, BOT};
use crate::config::display::mask;
use crate::config::display_url;

#[test]
fn check_config_masks_every_secret() {
    let toml = r#"
[admin]
listen = "127.0.0.1:9807"
token = "admin-SECRET-1"

[[bot]]
name = "main"
api_url = "https://apiuser:apiSECRET@bots.example/bot{token}/{method}"
token = "123456:botSECRET"
proxy = "http://proxyuser:proxySECRET@proxy.example:3128"

[[bot.forward]]
url = "https://hookuser:hookSECRET@app.example/hook?key=querySECRET#fragSECRET"
signing_secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"
secret_token = "tokenSECRET"

[[bot]]
name = "second"
api_url = "https://keySECRET@bots.example/bot{token}/{method}"
token = "noid-SECRET"

[[bot.forward]]
name = "x"
url = "https://app.example/"
"#;
    let shown = parse_ok(toml, &[]).to_string();
    for secret in ["SECRET", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"] {
        assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
    }
    for line in [
        "admin.listen: 127.0.0.1:9807 (bearer token required)",
        "bot \"main\": flavor telegram, api_url https://apiuser:****@bots.example/bot{token}/{method}",
        "  token: 123456:****",
        "  proxy: http://proxyuser:****@proxy.example:3128/",
        "    signing: 1 key(s), whsec_****",
        "    X-Telegram-Bot-Api-Secret-Token: ****",
        "bot \"second\": flavor telegram, api_url https://****@bots.example/bot{token}/{method}",
        "  token: ****",
    ] {
        assert!(shown.lines().any(|l| l == line), "no line {line:?} in:\n{shown}");
    }
    assert!(
        shown.contains("-> https://hookuser:****@app.example/hook?"),
        "{shown}"
    );
}

#[test]
fn a_plain_configuration_says_what_is_off() {
    let shown = parse_ok(BOT, &[]).to_string();
    for line in [
        "configuration: (string)",
        "admin.listen: (off)",
        "    signing: (none: requests are NOT signed)",
        "    secret token header: (none)",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "no line {line:?} in:\n{shown}"
        );
    }
    assert!(!shown.contains("ABC-def"), "{shown}");
    assert!(!shown.contains("warning"), "{shown}");
}

#[test]
fn display_url_drops_password_query_and_fragment() {
    let url = url::Url::parse("https://u:pw@h.example:8443/p?a=secret#frag").unwrap();
    let shown = display_url(&url);
    assert!(
        shown.starts_with("https://u:****@h.example:8443/p?"),
        "{shown}"
    );
    assert!(
        !shown.contains("pw") && !shown.contains("secret") && !shown.contains("frag"),
        "{shown}"
    );
    let plain = url::Url::parse("https://h.example/p").unwrap();
    assert_eq!(display_url(&plain), "https://h.example/p");
}

#[test]
fn a_token_shows_only_its_bot_id() {
    assert_eq!(mask("123456:AAE-secret"), "123456:****");
    assert_eq!(mask("abc:def"), "****");
    assert_eq!(mask("no-colon"), "****");
    assert_eq!(mask("1:2:3"), "1:****");
}

#[test]
fn check_config_masks_nats_secrets_of_every_kind() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let auths = [
        "token = \"natsSECRET\"".to_string(),
        "user = \"relay\"\npassword = \"pwSECRET\"".to_string(),
        format!("nkey = \"{seed}\""),
        format!(
            "credentials = \"\"\"\n-----BEGIN NATS USER JWT-----\neyJSECRET\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\"\"\""
        ),
    ];
    for auth in auths {
        let toml = format!(
            r#"
[nats]
servers = ["nats://127.0.0.1:4222", "tls://nats.example"]
{auth}

[[bot]]
name = "main"
token = "123456:botSECRET"

[[bot.forward]]
name = "stream"
nats_subject = "tg.{{bot}}.{{kind}}.{{chat}}"
"#
        );
        let shown = parse_ok(&toml, &[]).to_string();
        for secret in ["SECRET", seed.as_str()] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(
            shown.contains("nats.servers: nats://127.0.0.1:4222, tls://nats.example:4222"),
            "{shown}"
        );
        assert!(
            shown.contains("forward \"stream\" -> nats subject tg.{bot}.{kind}.{chat}"),
            "{shown}"
        );
        assert!(shown.contains("one must capture tg.main.*.*"), "{shown}");
    }
}
