//! Delivery: exact bytes, signatures, per-chat order, retries, a backend
//! that is down for a while.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_exact_bytes_signed_with_the_secret_token_header() {
    let setup = Setup::new().await;
    let config = setup.config("", "");
    let mut relay = setup.spawn(&config);
    // Unknown fields, an unknown update type, odd spacing and escapes: all
    // must arrive byte for byte.
    let raws = [
        r#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":5,"type":"private"},"text":"caf\u00e9 \"q\"","brand_new_field":{"x":[1,2.50,null]}}}"#,
        r#"{"update_id":2, "future_update_kind" : {"anything":true}}"#,
    ];
    for (i, raw) in raws.iter().enumerate() {
        setup.api.push_raw(TOKEN, i as i64 + 1, raw);
    }
    let mut got = setup.backend.wait_accepted(2, LONG).await;
    // Different lanes, so either may arrive first.
    got.sort_by_key(update_id);
    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    for (r, raw) in got.iter().zip(raws) {
        assert_eq!(r.body_str(), raw, "the payload was altered");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("x-telegram-bot-api-secret-token"),
            Some(SECRET_TOKEN)
        );
        assert_eq!(r.header("x-pollhook-bot"), Some("main"));
        assert_eq!(r.header("x-pollhook-attempt"), Some("1"));
        let id = r.header("webhook-id").expect("webhook-id");
        assert!(!id.is_empty());
        // The official verifier accepts the signature, and rejects it for a
        // different body.
        verifier
            .verify(&r.body, &r.headers)
            .expect("standardwebhooks verifies pollhook's signature");
        assert!(verifier.verify(b"{\"update_id\":999}", &r.headers).is_err());
    }
    assert_ne!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    relay.stop().await;
    assert_no_token(&relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_chat_order_with_chats_in_parallel_up_to_max_in_flight() {
    let setup = Setup::new().await;
    setup
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(60)));
    let config = setup.config("", "max_in_flight = 4");
    let _relay = setup.spawn(&config);
    // 10 chats × 8 messages, interleaved.
    let mut id = 1;
    for _round in 0..8 {
        for chat in 0..10 {
            setup.api.push_message(TOKEN, id, 1000 + chat, "hi");
            id += 1;
        }
    }
    let got = setup.backend.wait_accepted(80, LONG).await;
    for (chat, ids) in per_chat(&got) {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "chat {chat} arrived out of order");
    }
    assert_eq!(
        setup.backend.max_concurrent_per_key(chat_id),
        1,
        "two updates of one chat were in flight at once"
    );
    let peak = setup.backend.max_concurrent();
    assert!(
        peak <= 4,
        "max_in_flight = 4 but {peak} requests were in flight"
    );
    assert!(
        peak >= 3,
        "chats should go in parallel; peak concurrency was {peak}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_id_and_retry_schedule_survive_retries_and_a_restart() {
    let setup = Setup::new().await;
    setup.backend.set_reply(Reply::Status(503));
    let config = setup.config("", "");
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 1, "hello");
    // Attempt 1, the immediate retry, then one after ~2 s.
    let failed = setup.backend.wait_received(3, LONG).await;
    let ids: HashSet<&str> = failed
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "webhook-id changed between retries: {ids:?}");
    let gap = failed[2].at - failed[1].at;
    assert!(
        gap >= Duration::from_millis(1500),
        "the third attempt came {gap:?} after the second; expected backoff ≈2 s"
    );
    let attempts: Vec<&str> = failed
        .iter()
        .map(|r| r.header("x-pollhook-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);

    relay.stop().await;
    let stopped_at = Instant::now();
    let before = setup.backend.received().len();
    setup.backend.set_reply(Reply::Ok);
    let _relay = setup.spawn(&config);
    let got = setup.backend.wait_accepted(1, LONG).await;
    let after = &setup.backend.received()[before..];
    // The restarted relay continues the stored schedule: its first attempt
    // is numbered after the last one, carries the same id, and waits out
    // the stored backoff (≈4 s after attempt 3) instead of firing at once.
    assert_eq!(
        after[0].header("x-pollhook-attempt"),
        Some(&*(before + 1).to_string())
    );
    assert_eq!(got[0].header("webhook-id"), failed[0].header("webhook-id"));
    let since_last = after[0].at - failed.last().unwrap().at;
    assert!(
        since_last >= Duration::from_millis(3000),
        "first attempt after the restart came {since_last:?} after the last failure; the stored schedule says ≈4 s (restart took {:?})",
        after[0].at - stopped_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_with_503s_and_timeouts_gets_everything_when_it_recovers() {
    let setup = Setup::new().await;
    let config = setup.config("", "timeout = \"1s\"");
    let _relay = setup.spawn(&config);
    // Phase 1: 503s. Polling goes on and the queue holds the backlog.
    setup.backend.set_reply(Reply::Status(503));
    for id in 1..=100 {
        setup.api.push_message(TOKEN, id, id % 7, "while 503");
    }
    setup.api.wait_confirmed(TOKEN, 100, LONG).await;
    // Phase 2: the backend hangs past the forward's timeout.
    setup.backend.set_reply(Reply::Hang);
    for id in 101..=200 {
        setup.api.push_message(TOKEN, id, id % 7, "while hanging");
    }
    setup.api.wait_confirmed(TOKEN, 200, LONG).await;
    let hanging_since = setup.backend.received().len();
    setup.backend.wait_received(hanging_since + 7, LONG).await;
    assert!(setup.backend.accepted().is_empty());
    // Recovery: everything arrives, each chat in order.
    setup.backend.set_reply(Reply::Ok);
    let got = setup.backend.wait_accepted(200, LONG).await;
    assert_eq!(distinct_ids(&got).len(), 200);
    for (chat, ids) in per_chat(&got) {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "chat {chat} out of order after the outage");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_then_the_backend_comes_back_on_its_port() {
    let setup = Setup::new().await;
    let port = setup.backend.port();
    let config = setup.config("", "timeout = \"1s\"");
    let Setup {
        api,
        backend,
        dir: _dir,
        ..
    } = setup;
    backend.shutdown().await;
    let mut relay = Relay::spawn(&config, &[]);
    for id in 1..=50 {
        api.push_message(TOKEN, id, id % 5, "while down");
    }
    // Polling goes on while the backend refuses connections.
    api.wait_confirmed(TOKEN, 50, LONG).await;
    relay.wait_log("Connection refused", LONG).await;
    let backend = Backend::start_on(port).await;
    let got = backend.wait_accepted(50, LONG).await;
    assert_eq!(distinct_ids(&got).len(), 50);
    // Delivered, then forgotten: a restart sends nothing again.
    relay.stop().await;
    let before = backend.received().len();
    let _relay = Relay::spawn(&config, &[]);
    // A sentinel: once it is through, anything re-sent from the store
    // (loaded before it was even polled) would have arrived.
    api.push_message(TOKEN, 51, 1, "sentinel");
    wait_until("the sentinel", LONG, || {
        distinct_ids(&backend.accepted()).contains(&51)
    })
    .await;
    assert_eq!(
        backend.received().len(),
        before + 1,
        "delivered updates were sent again after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_bots_and_forwards_each_get_what_they_asked_for() {
    let setup = Setup::new().await;
    const OTHER: &str = "555:AAother-bot-token";
    setup.api.add_bot(OTHER, 555, "other_bot");
    let callbacks = Backend::start().await;
    let toml = format!(
        r#"
state_dir = "state"

{main_bot}allowed_updates = ["message", "callback_query"]

[[bot.forward]]
name = "everything"
url = "{all}"

[[bot.forward]]
name = "buttons"
url = "{cb}"
updates = ["callback_query"]

[[bot]]
name = "other"
api_url = "{api}"
token = "{OTHER}"
poll_timeout = "2s"

[[bot.forward]]
url = "{all}"
"#,
        main_bot = setup.main_bot(),
        api = setup.api.url_template(),
        all = setup.backend.url(),
        cb = callbacks.url(),
    );
    let config = write_config(setup.path(), &toml);
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 10, "to main");
    setup.api.push_raw(TOKEN, 2, r#"{"update_id":2,"callback_query":{"id":"c","from":{"id":10},"message":{"message_id":1,"chat":{"id":10}},"data":"x"}}"#);
    setup.api.push_message(OTHER, 900, 20, "to other");
    let all = setup.backend.wait_accepted(3, LONG).await;
    let by_bot: HashSet<(String, i64)> = all
        .iter()
        .map(|r| {
            (
                r.header("x-pollhook-bot").unwrap().to_string(),
                update_id(r),
            )
        })
        .collect();
    let expected: HashSet<(String, i64)> = [
        ("main".to_string(), 1),
        ("main".to_string(), 2),
        ("other".to_string(), 900),
    ]
    .into();
    assert_eq!(by_bot, expected);
    let cb = callbacks.wait_accepted(1, LONG).await;
    assert_eq!(update_id(&cb[0]), 2);
    // The configured allowed_updates went with the first call; the bot
    // without any sent [] so an old server-side filter is reset.
    let first = &setup.api.get_updates_calls(TOKEN)[0];
    assert_eq!(
        first.allowed_updates.as_deref(),
        Some(&["message".to_string(), "callback_query".to_string()][..])
    );
    let first_other = &setup.api.get_updates_calls(OTHER)[0];
    assert_eq!(first_other.allowed_updates.as_deref(), Some(&[][..]));
    // A sentinel callback: once it is through, a stray message would be too.
    setup.api.push_raw(
        TOKEN,
        3,
        r#"{"update_id":3,"callback_query":{"id":"d","from":{"id":10},"data":"y"}}"#,
    );
    let cb = callbacks.wait_accepted(2, LONG).await;
    assert_eq!(
        cb.iter().map(update_id).collect::<Vec<_>>(),
        [2, 3],
        "the buttons forward got an update it did not ask for"
    );
    relay.stop().await;
}

/// Twelve bots whose polls return at the same instant store twelve batches
/// at once, each flushed before its offset is confirmed. With sled's own
/// `flush_async` the relay hung for good here (3 of 3 runs: nothing stored,
/// nothing delivered, no more polls): every thread of sled's pool sat in a
/// flush waiting for a log write queued on that same pool. Thirty rounds, each
/// delivered in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_bots_storing_batches_at_the_same_instant_all_deliver() {
    const BOTS: usize = 12;
    const ROUNDS: i64 = 30;
    let setup = Setup::new().await;
    let token = |b: usize| format!("{}:bot{b}", 1000 + b);
    let mut toml = String::from("state_dir = \"state\"\nshutdown_timeout = \"2s\"\n");
    for b in 0..BOTS {
        setup
            .api
            .add_bot(&token(b), 1000 + b as i64, &format!("b{b}"));
        toml.push_str(&format!(
            "[[bot]]\nname = \"b{b}\"\nflavor = \"{}\"\napi_url = \"{}\"\ntoken = \"{}\"\npoll_timeout = \"20s\"\n[[bot.forward]]\nname = \"app\"\nurl = \"{}\"\n",
            flavor_name(setup.flavor),
            setup.api.url_template(),
            token(b),
            setup.backend.url()
        ));
    }
    let config = write_config(setup.path(), &toml);
    let mut relay = Relay::spawn(&config, &[]);
    for round in 0..ROUNDS {
        // Every bot's long poll open (its previous batch confirmed), so the
        // pushes below answer them together.
        for b in 0..BOTS {
            setup
                .api
                .wait_calls(&token(b), round as usize + 1, LONG)
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for b in 0..BOTS {
            setup.api.push_message(&token(b), round + 1, b as i64, "hi");
        }
        // Each round's twelve delivered (at least once), within LONG.
        setup
            .backend
            .wait_accepted((round as usize + 1) * BOTS, LONG)
            .await;
    }
    relay.stop().await;
    assert_no_token(&relay.logs());
}
