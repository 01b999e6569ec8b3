//! Webhook replies from a backend that does not play nice: bodies far too
//! large, methods a reply has no business calling, and calls still retrying
//! when pollhook is asked to stop.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::rig::*;

/// The counters of forward `name` in a `/status` answer.
fn counters<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["forward"] == name)
        .map(|f| &f["counters"])
        .unwrap_or_else(|| panic!("no forward {name:?} in {status}"))
}

/// Replies settled one way or another (executed, failed, ignored, refused).
fn replies_settled(c: &serde_json::Value) -> u64 {
    [
        "replies_ok",
        "replies_failed",
        "replies_ignored",
        "replies_refused",
    ]
    .iter()
    .map(|k| c[k].as_u64().unwrap_or(0))
    .sum()
}

/// Sixteen backends' worth of 50 MB JSON replies arriving at once: a JSON
/// reply carries parameters only, so each is refused as too large (half by
/// their Content-Length before reading, half, sent chunked, once 1 MiB has
/// been read), and the relay's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_fifty_mb_json_replies_at_once_keep_memory_flat_and_count_as_failed() {
    /// Growth of resident memory over idle allowed: sixteen reads stopped
    /// at the 1 MiB JSON cap, twice over; every body held in full would be
    /// 800 MB.
    const BOUND_MB: f64 = 32.0;
    let setup = Setup::new().await;
    let mut json = Vec::with_capacity(50_000_000);
    json.extend_from_slice(br#"{"method":"sendMessage","chat_id":1,"text":""#);
    json.resize(50_000_000 - 2, b'x');
    json.extend_from_slice(b"\"}");
    let json = Bytes::from(json);
    setup.backend.set_script(move |r, _| {
        let ct = "application/json".to_string();
        if update_id(r) % 2 == 0 {
            Reply::Bytes(200, ct, json.clone())
        } else {
            Reply::Chunked(200, ct, json.clone())
        }
    });
    let port = free_port();
    let config = setup.config_full(&admin_table(port, ""), "", "max_in_flight = 16");
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let idle_mb = vm_kib(relay.pid(), "VmRSS") as f64 / 1024.0;
    for id in 1..=16 {
        setup.api.push_message(TOKEN, id, id, "hi");
    }
    let got = setup.backend.wait_accepted(16, LONG).await;
    assert_eq!(distinct_ids(&got).len(), 16, "every update is delivered");
    let s = wait_status(port, "16 settled replies", |s| {
        replies_settled(counters(s, "app")) >= 16
    })
    .await;
    let peak = vm_kib(relay.pid(), "VmHWM") as f64 / 1024.0;
    let growth = peak - idle_mb;
    println!(
        "relay peak RSS after 16 x 50 MB JSON replies: {peak:.1} MB, {growth:.1} MB over idle"
    );
    assert!(
        growth < BOUND_MB,
        "peak RSS {peak:.1} MB grew {growth:.1} MB over idle, more than {BOUND_MB} MB"
    );
    assert_eq!(counters(&s, "app")["replies_failed"], 16, "{s}");
    assert_eq!(counters(&s, "app")["delivered"], 16, "{s}");
    assert!(setup
        .api
        .calls(TOKEN)
        .iter()
        .all(|c| c.method != "sendMessage"));
    relay.wait_log("is larger than", LONG).await;
    assert_no_token(&relay.logs());
}

/// Multipart replies may carry files, so they may be large; at most four
/// of them per forward are held in memory at once. Of eight 10 MiB uploads,
/// the first four calls fail (so those hold their body through a 1 s
/// backoff): the uploads never overlap more than four deep, and every file
/// arrives intact. A chat whose reply waits for its turn waits with it,
/// and goes on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_multipart_replies_run_at_most_four_at_once_and_arrive_intact() {
    const FILE: usize = 10 * 1024 * 1024;
    /// Four bodies of 10.5 MB held at once, with half as much again for
    /// the allocator and buffers: one copy of each body would exceed it.
    /// Measured as growth over the relay's resident memory when idle (the
    /// absolute figure moves with the size of the debug binary's pages).
    const BOUND_MB: f64 = 4.0 * 10.5 * 1.5;
    let setup = Setup::new().await;
    let bodies: Vec<Bytes> = (1..=8u8)
        .map(|chat| {
            let mut b = Vec::with_capacity(FILE + 512);
            b.extend_from_slice(format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nsendDocument\r\n--XyZ\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n{chat}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"document\"; filename=\"f{chat}.txt\"\r\nContent-Type: text/plain\r\n\r\n"
            ).as_bytes());
            b.resize(b.len() + FILE, b'0' + chat);
            b.extend_from_slice(b"\r\n--XyZ--\r\n");
            Bytes::from(b)
        })
        .collect();
    setup.backend.set_script(move |r, _| {
        let id = update_id(r);
        if id > 8 {
            return Reply::Ok;
        }
        let ct = "multipart/form-data; boundary=XyZ".to_string();
        let body = bodies[id as usize - 1].clone();
        if id % 2 == 0 {
            Reply::Bytes(200, ct, body)
        } else {
            Reply::Chunked(200, ct, body)
        }
    });
    for _ in 0..4 {
        setup
            .api
            .inject_method(TOKEN, "sendDocument", Fault::ServerError(502));
    }
    let port = free_port();
    let config = setup.config_full(&admin_table(port, ""), "", "max_in_flight = 16");
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let idle_mb = vm_kib(relay.pid(), "VmRSS") as f64 / 1024.0;
    for id in 1..=8 {
        setup.api.push_message(TOKEN, id, id, "send me a file");
    }
    for id in 9..=16 {
        setup.api.push_message(TOKEN, id, id - 8, "and then");
    }
    let got = setup.backend.wait_accepted(16, LONG).await;
    for (chat, ids) in per_chat(&got) {
        assert_eq!(ids.len(), 2, "chat {chat}: {ids:?}");
        assert!(ids[0] < ids[1], "chat {chat} out of order: {ids:?}");
    }
    let s = wait_status(port, "8 settled replies", |s| {
        replies_settled(counters(s, "app")) >= 8
    })
    .await;
    let peak = vm_kib(relay.pid(), "VmHWM") as f64 / 1024.0;
    let growth = peak - idle_mb;
    println!(
        "relay peak RSS with 8 x 10 MiB multipart replies: {peak:.1} MB, {growth:.1} MB over idle"
    );
    assert_eq!(counters(&s, "app")["replies_ok"], 8, "{s}");
    let calls: Vec<_> = setup
        .api
        .calls(TOKEN)
        .into_iter()
        .filter(|c| c.method == "sendDocument")
        .collect();
    // Each reply's span: from its first call to the answer of its last.
    let mut spans = Vec::new();
    // The chats whose reply waited for a permit (their call did not fail:
    // the first four calls, which did, held the permits) and when their
    // second update arrived.
    let mut waited = Vec::new();
    for chat in 1..=8 {
        let mine: Vec<_> = calls
            .iter()
            .filter(|c| c.params["chat_id"].as_str().and_then(|s| s.parse().ok()) == Some(chat))
            .collect();
        let statuses: Vec<u16> = mine.iter().map(|c| c.status).collect();
        assert!(
            statuses == [200] || statuses == [502, 200],
            "chat {chat}: {statuses:?}"
        );
        let doc = &mine.last().unwrap().params["document"];
        assert_eq!(doc["file_name"], format!("f{chat}.txt"));
        let data = doc["data"].as_str().unwrap();
        assert_eq!(data.len(), FILE, "chat {chat}");
        let want = (b'0' + chat as u8) as char;
        assert!(
            data.chars().all(|c| c == want),
            "chat {chat}: file corrupted"
        );
        spans.push((mine[0].at, mine.last().unwrap().answered_at.unwrap()));
        if statuses == [200] {
            let second = got.iter().find(|r| update_id(r) == chat + 8).unwrap();
            waited.push(second.at);
        }
    }
    // A permit came free when the first retried call succeeded; no chat
    // whose reply waited went on before that.
    let first_free = calls
        .iter()
        .filter(|c| c.status == 200)
        .filter_map(|c| c.answered_at)
        .min()
        .unwrap();
    assert_eq!(waited.len(), 4);
    assert!(
        waited.iter().all(|at| *at >= first_free),
        "a chat went on while its reply waited"
    );
    assert_eq!(calls.iter().filter(|c| c.status == 502).count(), 4);
    let overlap = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    println!("large replies holding their body at once: at most {overlap}");
    assert!(overlap <= 4, "{overlap} large replies ran at once");
    assert!(
        growth < BOUND_MB,
        "peak RSS {peak:.1} MB grew {growth:.1} MB over idle, more than {BOUND_MB} MB"
    );
    assert_no_token(&relay.logs());
}

/// A reply may only call what `reply_methods` admits: answering methods by
/// default. `setMyName` (renames the bot) and `sendGift` (spends the bot's
/// Stars, however it is spelt) are refused and counted; a forward that
/// lists `setMyName` may call it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_calling_a_method_outside_reply_methods_is_refused_and_counted() {
    let setup = Setup::new().await;
    let trusted = Backend::start().await;
    let port = free_port();
    let toml = format!(
        r#"
state_dir = "state"
{admin}

{main_bot}
[[bot.forward]]
name = "app"
url = "{app}"
chats = [1, 2, 3]

[[bot.forward]]
name = "trusted"
url = "{trusted}"
chats = [9]
reply_methods = ["send*", "setMyName"]
"#,
        admin = admin_table(port, ""),
        main_bot = setup.main_bot(),
        app = setup.backend.url(),
        trusted = trusted.url(),
    );
    let config = write_config(setup.path(), &toml);
    let json = |body: &str| Reply::Body(200, "application/json".into(), body.into());
    setup.backend.set_script(move |r, _| match update_id(r) {
        1 => json(r#"{"method":"setMyName","name":"pwned"}"#),
        2 => json(r#"{"method":"SENDGIFT","user_id":2,"gift_id":"g"}"#),
        _ => json(r#"{"method":"sendMessage","chat_id":3,"text":"allowed"}"#),
    });
    trusted.set_reply(json(r#"{"method":"setMyName","name":"trusted name"}"#));
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    for (id, chat) in [(1, 1), (2, 2), (3, 3), (4, 9)] {
        setup.api.push_message(TOKEN, id, chat, "hi");
    }
    let s = wait_status(port, "four settled replies", |s| {
        replies_settled(counters(s, "app")) >= 3 && replies_settled(counters(s, "trusted")) >= 1
    })
    .await;
    let (app, trusted_c) = (counters(&s, "app"), counters(&s, "trusted"));
    assert_eq!(app["replies_refused"], 2, "{s}");
    assert_eq!(app["replies_ok"], 1, "{s}");
    assert_eq!(trusted_c["replies_ok"], 1, "{s}");
    assert_eq!(trusted_c["replies_refused"], 0, "{s}");
    let calls = setup.api.calls(TOKEN);
    let names: Vec<_> = calls
        .iter()
        .filter(|c| c.method.eq_ignore_ascii_case("setMyName"))
        .map(|c| c.params["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["trusted name"], "only the trusted forward renames");
    assert!(
        calls
            .iter()
            .all(|c| !c.method.eq_ignore_ascii_case("sendGift")),
        "no gift was sent"
    );
    assert!(calls.iter().any(|c| c.method == "sendMessage"));
    relay
        .wait_log("setMyName, which reply_methods does not admit", LONG)
        .await;
    let (_, metrics) = get(port, "/metrics").await;
    assert!(
        metrics.contains(
            "pollhook_webhook_replies_total{bot=\"main\",forward=\"app\",result=\"refused\"} 2"
        ),
        "{metrics}"
    );
}

/// At SIGTERM, reply calls still retrying get the stop timeout to finish;
/// one that does not is named in the log, not dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_calls_retrying_at_sigterm_finish_within_the_timeout_or_are_logged() {
    let setup = Setup::new().await;
    // sendMessage fails for good; sendChatAction once (retried after 1 s).
    for _ in 0..20 {
        setup
            .api
            .inject_method(TOKEN, "sendMessage", Fault::ServerError(502));
    }
    setup
        .api
        .inject_method(TOKEN, "sendChatAction", Fault::ServerError(502));
    setup.backend.set_script(|r, _| {
        let body = match update_id(r) {
            1 => r#"{"method":"sendMessage","chat_id":1,"text":"never"}"#,
            _ => r#"{"method":"sendChatAction","chat_id":2,"action":"typing"}"#,
        };
        Reply::Body(200, "application/json".into(), body.into())
    });
    let config = setup.config("", "");
    edit_config(
        &config,
        "shutdown_timeout = \"5s\"",
        "shutdown_timeout = \"3s\"",
    );
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 1, "a");
    setup.api.push_message(TOKEN, 2, 2, "b");
    setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 1, LONG)
        .await;
    setup
        .api
        .wait_method_calls(TOKEN, "sendChatAction", 1, LONG)
        .await;
    relay.wait_log("webhook reply call failed", LONG).await;
    let stopped = Instant::now();
    relay.sigterm();
    let exit = relay.wait_exit(LONG).await.expect("pollhook stops");
    assert!(exit.success(), "{exit:?}");
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let logs = relay.logs();
    let executed = setup
        .api
        .calls(TOKEN)
        .iter()
        .any(|c| c.method == "sendChatAction" && c.status == 200);
    assert!(
        executed,
        "the retried sendChatAction finished within the stop timeout"
    );
    let abandoned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("webhook reply call abandoned"))
        .collect();
    assert_eq!(abandoned.len(), 1, "{logs}");
    assert!(
        abandoned[0].contains("sendMessage") && abandoned[0].contains("update_id=1"),
        "{}",
        abandoned[0]
    );
    assert_no_token(&logs);
}

/// `reply_methods` is checked at start-up and shown by `check-config`.
#[test]
fn reply_methods_are_validated_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let config = |methods: &str| {
        let path = write_config(
            dir.path(),
            &format!(
                "[[bot]]\nname = \"b\"\ntoken = \"42:AAsecret-part\"\n[[bot.forward]]\nurl = \"http://127.0.0.1:8080/\"\n{methods}\n"
            ),
        );
        pollhook(&["check-config", "--config", path.to_str().unwrap()])
    };
    let (ok, out, err) = config("");
    assert!(ok, "{err}");
    assert!(
        out.contains("webhook reply calls: executed for send*, !sendGift, editMessage*"),
        "{out}"
    );
    let (ok, out, err) = config("reply_methods = [\"sendMessage\", \"setMyName\"]");
    assert!(ok, "{err}");
    assert!(
        out.contains("webhook reply calls: executed for sendMessage, setMyName"),
        "{out}"
    );
    for (bad, says) in [
        ("[\"send-*\"]", "\"send-*\" is not a method pattern"),
        ("[]", "no pattern admits any method"),
        ("[\"!sendGift\"]", "no pattern admits any method"),
    ] {
        let (ok, _, err) = config(&format!("reply_methods = {bad}"));
        assert!(!ok, "{bad} was accepted");
        assert!(
            err.contains("bot[0].forward[0].reply_methods") && err.contains(says),
            "{bad}: {err}"
        );
    }
}
