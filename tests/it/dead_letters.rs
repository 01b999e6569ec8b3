//! Giving up, on purpose: retry limits, 410, dead letters, and the
//! `pollhook dlq` command with the daemon running and stopped.

use std::time::Duration;

use crate::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_dead_letters_at_once_and_3xx_is_a_failure_to_retry() {
    let setup = Setup::new().await;
    // update 1 (chat 1): 302 once, then 200. update 2 (chat 2): 410.
    setup.backend.set_script(|r, _| {
        let id = r.json()["update_id"].as_i64().unwrap();
        let attempt = r.header("x-pollhook-attempt").unwrap();
        match (id, attempt) {
            (1, "1") => Reply::Status(302),
            (2, _) => Reply::Status(410),
            _ => Reply::Ok,
        }
    });
    let mut relay = setup.spawn(&setup.config("", ""));
    setup.api.push_message(TOKEN, 1, 1, "redirected once");
    setup.api.push_message(TOKEN, 2, 2, "gone");
    setup
        .api
        .push_message(TOKEN, 3, 2, "after the gone one, same chat");
    let got = setup.backend.wait_accepted(2, LONG).await;
    let mut ids: Vec<i64> = got.iter().map(update_id).collect();
    ids.sort();
    assert_eq!(ids, [1, 3], "410 must not block its chat");
    let one: Vec<_> = setup
        .backend
        .received()
        .into_iter()
        .filter(|r| update_id(r) == 1)
        .collect();
    assert_eq!(
        one.len(),
        2,
        "the 302 was retried (redirects are not followed)"
    );
    let two = setup
        .backend
        .received()
        .into_iter()
        .filter(|r| update_id(r) == 2)
        .count();
    assert_eq!(two, 1, "a 410 is not retried");
    relay
        .wait_log("moved to dead letters: HTTP 410 Gone", LONG)
        .await;
    relay
        .wait_log("HTTP 302 Found (redirects are not followed", LONG)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_and_503_is_honoured() {
    let setup = Setup::new().await;
    setup.backend.set_script(|_, i| match i {
        0 => Reply::StatusRetryAfter(429, 2),
        1 => Reply::StatusRetryAfter(503, 2),
        _ => Reply::Ok,
    });
    let _relay = setup.spawn(&setup.config("", ""));
    setup.api.push_message(TOKEN, 1, 1, "x");
    let got = setup.backend.wait_received(3, LONG).await;
    for i in 0..2 {
        let gap = got[i + 1].at - got[i].at;
        assert!(
            gap >= Duration::from_millis(1900),
            "Retry-After: 2 but retry {} came after {gap:?}",
            i + 1
        );
    }
}

/// Dead letters by attempt count and by age; their lane moves on; `dlq`
/// lists, shows and replays them through the admin API while pollhook runs,
/// and a replay keeps the webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_while_running() {
    let setup = Setup::new().await;
    let port = free_port();
    // Update 1 always fails; everything else succeeds.
    setup.backend.set_script(|r, _| {
        if r.json()["update_id"] == 1 {
            Reply::Status(500)
        } else {
            Reply::Ok
        }
    });
    let config = setup.config_full(
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"admintoken\""),
        "",
        "max_attempts = 2\nretry_delay = \"100ms\"",
    );
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    setup.api.push_message(TOKEN, 1, 9, "fails");
    setup.api.push_message(TOKEN, 2, 9, "same chat, after it");
    let got = setup.backend.wait_accepted(1, LONG).await;
    assert_eq!(
        update_id(&got[0]),
        2,
        "the lane moved on after the dead letter"
    );
    let first_id = setup.backend.received()[0]
        .header("webhook-id")
        .unwrap()
        .to_string();
    assert_eq!(
        setup
            .backend
            .received()
            .iter()
            .filter(|r| update_id(r) == 1)
            .count(),
        2,
        "max_attempts = 2"
    );

    let cfg = config.to_str().unwrap();
    let (ok, out, err) = pollhook_async(&["dlq", "--config", cfg, "list"]).await;
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("HTTP 500"))
        .unwrap_or_else(|| panic!("no dead letter listed:\n{out}"));
    let dl_id = line.split_whitespace().next().unwrap().to_string();
    assert!(
        line.contains("main") && line.contains("app") && line.contains("message"),
        "{line}"
    );

    let (ok, out, _) = pollhook_async(&["dlq", "--config", cfg, "show", &dl_id]).await;
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["update_id"], 1);
    assert_eq!(shown["attempts"], 2);
    assert_eq!(shown["webhook_id"], first_id.as_str());
    assert!(shown["payload"].as_str().unwrap().contains("\"fails\""));

    // The admin API wants its token.
    let unauth = reqwest::get(format!("http://127.0.0.1:{port}/dlq"))
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    setup.backend.set_script(|_, _| Reply::Ok);
    let (ok, out, err) = pollhook_async(&["dlq", "--config", cfg, "replay", &dl_id]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("replayed 1"), "{out}");
    let got = setup.backend.wait_accepted(2, LONG).await;
    let replayed = got
        .iter()
        .find(|r| update_id(r) == 1)
        .expect("the replayed update arrives");
    assert_eq!(
        replayed.header("webhook-id"),
        Some(first_id.as_str()),
        "a replay keeps the webhook-id"
    );
    assert_eq!(replayed.header("x-pollhook-attempt"), Some("1"));
    let (_, out, _) = pollhook_async(&["dlq", "--config", cfg, "list"]).await;
    assert!(out.contains("no dead letters"), "{out}");
    // Replaying it again is an error naming the id.
    let (ok, _, err) = pollhook_async(&["dlq", "--config", cfg, "replay", &dl_id]).await;
    assert!(!ok && err.contains(&dl_id), "{err}");
    assert_no_token(&relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_dead_letters_and_dlq_works_on_a_stopped_daemon() {
    let setup = Setup::new().await;
    setup.backend.set_reply(Reply::Status(503));
    let config = setup.config(
        "",
        "max_age = \"2s\"\nretry_delay = \"200ms\"\nretry_max_delay = \"500ms\"",
    );
    let mut relay = setup.spawn(&config);
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, id, "too old soon");
    }
    relay
        .wait_log("moved to dead letters: HTTP 503", LONG)
        .await;
    wait_until("three dead letters", LONG, || {
        relay.logs().matches("moved to dead letters").count() == 3
    })
    .await;
    relay.stop().await;
    let ids_sent: Vec<String> = setup
        .backend
        .received()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();

    // Stopped: dlq works straight on the state directory.
    let cfg = config.to_str().unwrap();
    let (ok, out, err) = pollhook(&["dlq", "--config", cfg, "list", "--json"]);
    assert!(ok, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 3);
    let first = list[0]["id"].to_string();
    let (ok, out, _) = pollhook(&["dlq", "--config", cfg, "drop", &first]);
    assert!(ok && out.contains("dropped 1"), "{out}");
    let (ok, out, _) = pollhook(&["dlq", "--config", cfg, "replay", "--all"]);
    assert!(ok && out.contains("replayed 2"), "{out}");

    // The first attempt after the restart fails once more: a replayed
    // update counts its max_age from the replay, so it is retried, not
    // buried again at once although it was received long ago.
    let before = setup.backend.received().len();
    setup.backend.set_script(move |_, i| {
        if i == before {
            Reply::Status(503)
        } else {
            Reply::Ok
        }
    });
    let _relay = setup.spawn(&config);
    let got = setup.backend.wait_accepted(2, LONG).await;
    assert_eq!(
        setup.backend.received().len(),
        before + 3,
        "one failure, then both delivered"
    );
    let mut ids: Vec<i64> = got.iter().map(update_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        [2, 3],
        "the dropped one stays dropped, the replayed ones arrive"
    );
    for r in &got {
        assert!(
            ids_sent.contains(&r.header("webhook-id").unwrap().to_string()),
            "replay changed the webhook-id"
        );
    }
    let (ok, out, err) = pollhook(&["dlq", "--config", cfg, "list"]);
    // The daemon holds the database and has no admin API: a clear error.
    assert!(!ok && out.is_empty());
    assert!(err.contains("set admin.listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_interactive_updates_are_dropped_or_dead_lettered_when_asked() {
    let setup = Setup::new().await;
    let dropping = Backend::start().await;
    setup.backend.set_reply(Reply::Status(503));
    dropping.set_reply(Reply::Status(503));
    let toml = format!(
        r#"
state_dir = "state"
{main_bot}
[[bot.forward]]
name = "keeps"
url = "{keep}"
stale = "dead-letter"
retry_delay = "500ms"
retry_max_delay = "1s"

[[bot.forward]]
name = "drops"
url = "{drop}"
stale = "drop"
retry_delay = "500ms"
retry_max_delay = "1s"
"#,
        main_bot = setup.main_bot(),
        keep = setup.backend.url(),
        drop = dropping.url(),
    );
    let config = write_config(setup.path(), &toml);
    let mut relay = setup.spawn(&config);
    setup.api.push_raw(
        TOKEN,
        1,
        r#"{"update_id":1,"inline_query":{"id":"q1","from":{"id":42},"query":"cats","offset":""}}"#,
    );
    setup
        .api
        .push_message(TOKEN, 2, 42, "a message is never stale");
    // An inline query lives 30 s on the platform.
    relay
        .wait_log("stale: a inline_query", Duration::from_secs(50))
        .await;
    // Both forwards expire it.
    relay.wait_log_count("stale: a inline_query", 2, LONG).await;
    setup.backend.set_reply(Reply::Ok);
    dropping.set_reply(Reply::Ok);
    for b in [&setup.backend, &dropping] {
        let got = b.wait_accepted(1, LONG).await;
        assert_eq!(update_id(&got[0]), 2);
    }
    let logs = relay.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("drops") && l.contains("stale") && l.contains("dropped")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("keeps") && l.contains("moved to dead letters: stale")),
        "{logs}"
    );
    // Nothing else will come: a sentinel update arrives alone.
    setup.api.push_message(TOKEN, 3, 42, "sentinel");
    let got = dropping.wait_accepted(2, LONG).await;
    assert_eq!(got.iter().map(update_id).collect::<Vec<_>>(), [2, 3]);
}
