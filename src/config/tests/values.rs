//! Every key of a full file reaches its field of `Settings`.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::testdata;
use crate::config::env::Env;
use crate::config::load::load_with;
use crate::platform::flavor::Flavor;

#[test]
fn every_key_reaches_its_setting() {
    let s = load_with(
        &testdata().join("valid/everything.toml"),
        &Env::from_pairs(&[]),
    )
    .unwrap();
    assert_eq!(s.state_dir.to_str(), Some("/var/lib/pollhook"));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(20));
    assert_eq!(s.cache_bytes, 128 * 1024 * 1024);
    assert_eq!(s.admin_listen, Some("0.0.0.0:9807".parse().unwrap()));
    assert!(s.admin_token.is_none());
    assert_eq!(s.admin_header_timeout, Duration::from_secs(5));
    assert_eq!(s.admin_idle_timeout, Duration::from_secs(60));
    assert_eq!(
        s.admin_allowed_hosts,
        ["pollhook.internal", "relay.example"]
    );

    let [b, ww] = s.bots.as_slice() else {
        panic!("two bots: {:?}", s.bots)
    };
    assert_eq!(b.name, "support");
    assert_eq!(b.flavor, Flavor::Telegram);
    assert_eq!(
        b.api_url,
        "http://user:apipass@bots.lan:8081/bot{token}/{method}"
    );
    assert_eq!(b.token.expose_secret(), "987654:SECRET-bot-token");
    assert_eq!(
        b.allowed_updates.as_deref(),
        Some(&["message".to_string(), "callback_query".to_string()][..])
    );
    assert_eq!(
        b.poll_timeout,
        Duration::from_secs(50),
        "clamped to telegram's cap"
    );
    assert_eq!(
        b.proxy.as_ref().map(|u| u.as_str()),
        Some("socks5h://proxyuser:proxypass@proxy.lan:1080")
    );

    let f = &b.forwards[0];
    assert_eq!(f.name, "app");
    let crate::config::Destination::Http(url) = &f.to else {
        panic!("an HTTP forward: {:?}", f.to)
    };
    assert_eq!(
        url.as_str(),
        "https://hooks:hookpass@app.example/webhook?key=querysecret#frag"
    );
    assert_eq!(f.signing_keys.len(), 2);
    assert_eq!(
        f.secret_token.as_ref().unwrap().expose_secret(),
        "SECRET-token_value"
    );
    assert_eq!(
        f.filter.updates.as_deref(),
        Some(&["message".to_string()][..])
    );
    let chats = f.filter.chats.as_ref().unwrap();
    assert!(chats.len() == 2 && chats.contains("-100123") && chats.contains("@somechannel"));
    assert_eq!(
        f.filter.chat_types.as_deref(),
        Some(&["private".to_string(), "group".to_string()][..])
    );
    assert_eq!(f.max_in_flight, 4);
    assert_eq!(f.timeout, Duration::from_secs(3));
    assert_eq!(f.retry.first_delay, Duration::from_secs(1));
    assert_eq!(f.retry.max_delay, Duration::from_secs(30));
    assert_eq!(f.retry.max_attempts, Some(5));
    assert_eq!(f.retry.max_age, Duration::from_secs(7200));
    assert_eq!(f.stale.to_string(), "dead-letter");
    assert!(!f.reply_calls);
    // Unnamed: the URL names it.
    assert_eq!(b.forwards[1].name, "http://backend.lan/hook");
    assert!(b.forwards[1].reply_calls);

    assert_eq!(ww.flavor, Flavor::WwChat);
    assert_eq!(
        ww.poll_timeout,
        Duration::from_secs(60),
        "wwchat allows 60s"
    );
    let local = &ww.forwards[0];
    // WWChat's chat ids are UUIDs, compared in lower case.
    let chats = local.filter.chats.as_ref().unwrap();
    assert!(
        chats.contains("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
        "{chats:?}"
    );
    assert!(
        local.reply_methods.allows("sendMessage")
            && local.reply_methods.allows("answerCallbackQuery")
    );
    assert!(
        !local.reply_methods.allows("answerInlineQuery")
            && !local.reply_methods.allows("sendPhoto")
    );
}
