//! Bot API calls over TLS, as in production: a bot trusts the fake API's
//! private CA through `ca_file` (never by turning verification off), over
//! HTTP/1.1 or HTTP/2 as the server offers by ALPN, and its long polls never
//! wait behind an HTTP/2 server's SETTINGS_MAX_CONCURRENT_STREAMS.

use std::sync::Arc;

use hyper::Version;

use crate::rig::*;

/// A setup whose fake API is served over TLS with `opts`.
async fn tls_setup(opts: TlsOptions) -> Setup {
    let api = Arc::new(FakeApi::start_tls(Flavor::Telegram, opts).await);
    api.add_bot(TOKEN, 123456789, "test_bot");
    Setup {
        flavor: Flavor::Telegram,
        api,
        backend: Backend::start().await,
        dir: tempfile::tempdir().unwrap(),
    }
}

async fn relays_over_tls(opts: TlsOptions) -> Setup {
    let setup = tls_setup(opts).await;
    let config = setup.config(&ca_file_line(&setup.api.ca_file()), "");
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 7, "over TLS");
    let got = setup.backend.wait_accepted(1, LONG).await;
    assert_eq!(update_id(&got[0]), 1);
    setup.api.wait_confirmed(TOKEN, 1, LONG).await;
    relay.stop().await;
    assert_no_token(&relay.logs());
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_with_ca_file_polls_and_relays_over_tls_http1() {
    let setup = relays_over_tls(TlsOptions::HTTP1).await;
    let seen = setup.api.seen();
    // The HTTP/2 pool asked first (ALPN), was told HTTP/1.1, and the long
    // polls took the HTTP/1.1 path.
    assert_eq!(seen.versions_of("getUpdates"), [Version::HTTP_11]);
    assert_eq!(seen.refused_handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_with_ca_file_polls_and_relays_over_tls_h2() {
    let setup = relays_over_tls(TlsOptions::H2).await;
    let seen = setup.api.seen();
    // Long polls on pollhook's own HTTP/2 connections, other calls on
    // reqwest's: both HTTP/2.
    assert_eq!(seen.versions_of("getUpdates"), [Version::HTTP_2]);
    assert_eq!(seen.versions_of("getMe"), [Version::HTTP_2]);
    assert_eq!(seen.refused_handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_polls_fail_with_a_certificate_error_and_confirm_nothing() {
    let setup = tls_setup(TlsOptions::H2).await;
    let config = setup.config("", "");
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 7, "never fetched");
    relay.wait_log_count("getUpdates: ", 2, LONG).await;
    let logs = relay.logs();
    let line = log_line(&logs, "getUpdates: ");
    eprintln!("the refused poll's log line: {line}");
    assert!(
        line.contains("certificate"),
        "not a certificate error: {line}"
    );
    assert!(line.contains("ca_file"), "no hint at ca_file: {line}");
    assert!(line.contains("main"), "the bot is not named: {line}");
    assert!(setup.api.seen().refused_handshakes() >= 2);
    assert_eq!(setup.api.get_updates_calls(TOKEN).len(), 0);
    assert_eq!(setup.api.confirmed(TOKEN), None);
    assert!(setup.backend.received().is_empty());
    relay.stop().await;
    assert_no_token(&relay.logs());
}

#[test]
fn a_bad_ca_file_is_a_config_error_naming_key_bot_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "just some text\n").unwrap();
    for (ca_file, says) in [
        (not_pem.display().to_string(), "no certificate in it"),
        (
            dir.path().join("absent.pem").display().to_string(),
            "cannot read",
        ),
    ] {
        let toml = format!(
            "[[bot]]\nname = \"main\"\ntoken = \"{TOKEN}\"\nca_file = {ca_file:?}\n\n[[bot.forward]]\nurl = \"http://127.0.0.1:9/hook\"\n"
        );
        let config = write_config(dir.path(), &toml);
        let (ok, _, err) = pollhook(&["check-config", "--config", config.to_str().unwrap()]);
        assert!(!ok, "check-config accepted {ca_file}");
        for want in [
            config.display().to_string(),
            "bot[0].ca_file".to_string(),
            "\"main\"".to_string(),
            ca_file.clone(),
            says.to_string(),
        ] {
            assert!(err.contains(&want), "{want:?} missing from: {err}");
        }
        assert_no_token(&err);
    }
}

/// 12 bots, a server allowing 4 streams per HTTP/2 connection: every
/// long poll must still be open at the server at the same time (none
/// queued behind another for a whole poll timeout), and each bot's update
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_never_wait_behind_the_servers_stream_limit() {
    const BOTS: usize = 12;
    let setup = tls_setup(TlsOptions::h2_streams(4)).await;
    let ca = ca_file_line(&setup.api.ca_file());
    let token = |i: usize| format!("{}:AAE-streamlimit{i}", 700000 + i);
    let mut toml = String::from("state_dir = \"state\"\nshutdown_timeout = \"5s\"\n");
    for i in 0..BOTS {
        setup.api.add_bot(&token(i), 700000 + i as i64, "b");
        toml.push_str(&format!(
            "\n[[bot]]\nname = \"b{i}\"\napi_url = \"{api}\"\ntoken = \"{t}\"\npoll_timeout = \"20s\"\n{ca}\n[[bot.forward]]\nname = \"app\"\nurl = \"{url}\"\n",
            api = setup.api.url_template(),
            t = token(i),
            url = setup.backend.url(),
        ));
    }
    let config = write_config(setup.path(), &toml);
    let mut relay = setup.spawn(&config);
    let seen = setup.api.seen();
    eventually(
        "all 12 long polls open at the server at once",
        LONG,
        async || {
            if seen.peak_polls() >= BOTS {
                Ok(())
            } else {
                Err(format!(
                    "at most {} open at once (now {}), {} TLS connections",
                    seen.peak_polls(),
                    seen.open_polls(),
                    seen.handshakes()
                ))
            }
        },
    )
    .await;
    // One bot at a time: twelve first batches stored at the same instant
    // can deadlock sled (apply_batch against flush_async, seen here with
    // gdb; reported, not this test's subject).
    for i in 0..BOTS {
        setup.api.push_message(&token(i), 1, i as i64, "hello");
        eventually("the bot's update delivered", LONG, async || {
            let delivered = setup.backend.accepted().len();
            if delivered > i {
                return Ok(());
            }
            Err(format!(
                "{delivered} delivered; bot b{i}'s getUpdates answers: {:?}; log tail:\n{}",
                setup.api.status_counts(&token(i)),
                tail(&relay.logs(), 30)
            ))
        })
        .await;
    }
    relay.stop().await;
}

/// Deliveries to an `https://` backend verify its certificate against the
/// system's roots (a forward has no `ca_file`, and nothing turns
/// verification off): a backend whose certificate a private CA signed
/// completes no handshake, so it sees no update, and each attempt fails
/// with a certificate error in the log while the update stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_backend_with_an_untrusted_certificate_is_sent_nothing() {
    let setup = Setup::new().await;
    let ca = TestCa::new();
    let seen = Arc::new(Seen::default());
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let backend = crate::rig::tls::serve_tls(
        crate::rig::serve::bind(0),
        &ca,
        TlsOptions::H2,
        seen.clone(),
        move |_req| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(hyper::Response::new(crate::rig::serve::Body::default())) }
        },
    );
    let toml = format!(
        "state_dir = \"state\"\nshutdown_timeout = \"5s\"\n{}\n[[bot.forward]]\nname = \"app\"\nurl = \"https://127.0.0.1:{}/hook\"\nsigning_secret = \"{SECRET}\"\n",
        setup.main_bot(),
        backend.addr.port()
    );
    let config = write_config(setup.path(), &toml);
    let mut relay = setup.spawn(&config);
    setup
        .api
        .push_message(TOKEN, 1, 7, "not for an untrusted backend");
    relay.wait_log_count("delivery failed", 2, LONG).await;
    let logs = relay.logs();
    let line = log_line(&logs, "delivery failed");
    eprintln!("the failed attempt's log line: {line}");
    assert!(
        line.contains("certificate"),
        "not a certificate error: {line}"
    );
    assert!(line.contains("app"), "the forward is not named: {line}");
    assert!(line.contains("stays queued"), "{line}");
    assert!(seen.refused_handshakes() >= 2, "no handshake was refused");
    assert_eq!(seen.handshakes(), 0, "a handshake completed");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    relay.stop().await;
    assert_no_token(&relay.logs());
}
