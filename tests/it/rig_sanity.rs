//! Catches a broken rig before it shows up as confusing relay failures:
//! talks to the fake API and the backend directly with reqwest.

use std::time::{Duration, Instant};

use crate::rig::{Backend, FakeApi, Fault, Flavor, Reply};

const TOKEN: &str = "123:ABC";

async fn post(client: &reqwest::Client, url: &str, json: &str) -> (u16, String) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(json.to_owned())
        .send()
        .await
        .expect("request to the rig");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test]
async fn rig_sanity() {
    let api = FakeApi::start(Flavor::Telegram).await;
    api.add_bot(TOKEN, 42, "testbot");
    let client = reqwest::Client::new();
    let get_updates = api.method_url(TOKEN, "getUpdates");

    let (status, body) = post(&client, &api.method_url("nope", "getMe"), "{}").await;
    assert_eq!(status, 401, "{body}");

    // A long poll wakes as soon as an update is pushed.
    let poll = tokio::spawn({
        let (client, url) = (client.clone(), get_updates.clone());
        async move { post(&client, &url, r#"{"timeout":10}"#).await }
    });
    api.wait_calls(TOKEN, 1, Duration::from_secs(5)).await;
    let pushed_at = Instant::now();
    let raw = api.push_message(TOKEN, 7, 1, "hi");
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, format!(r#"{{"ok":true,"result":[{raw}]}}"#));
    assert!(pushed_at.elapsed() < Duration::from_secs(2));

    // A faulted call confirms nothing; the next offset does.
    api.inject(TOKEN, Fault::ServerError(502));
    assert_eq!(post(&client, &get_updates, r#"{"offset":8}"#).await.0, 502);
    assert_eq!((api.pending(TOKEN), api.confirmed(TOKEN)), (1, None));
    let (status, body) = post(&client, &get_updates, r#"{"offset":8}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"result":[]}"#));
    assert_eq!((api.pending(TOKEN), api.confirmed(TOKEN)), (0, Some(7)));

    // A second poll terminates the first with 409.
    let first = tokio::spawn({
        let (client, url) = (client.clone(), get_updates.clone());
        async move { post(&client, &url, r#"{"offset":8,"timeout":10}"#).await }
    });
    api.wait_calls(TOKEN, 4, Duration::from_secs(5)).await;
    let (status, _) = post(&client, &get_updates, r#"{"offset":8,"timeout":0}"#).await;
    assert_eq!(status, 200);
    assert_eq!(first.await.unwrap().0, 409);

    // The backend records everything and counts only 2xx as accepted.
    let backend = Backend::start().await;
    backend.set_script(|_, i| {
        if i == 0 {
            Reply::Status(503)
        } else {
            Reply::Ok
        }
    });
    for _ in 0..2 {
        client.post(backend.url()).body("x").send().await.unwrap();
    }
    backend.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(backend.received().len(), 2);
    let port = backend.port();
    backend.shutdown().await;
    let refused = client
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .send()
        .await;
    assert!(refused.is_err(), "port still open after shutdown");
}

/// The NATS rig: a stream keeps what was published through a graceful stop,
/// a SIGKILL and restarts on the same port; headers and bytes read back as
/// sent; a second publish with the same `Nats-Msg-Id` is dropped (the
/// de-duplication the JetStream tests count on); credentials are enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn nats_rig_sanity() {
    use crate::rig::{NatsAuth, NatsServer};

    let mut nats = NatsServer::start_with(NatsAuth::Token("rig-token".into())).await;
    nats.create_stream("S", &["s.>"]).await;
    let publish = async |nats: &NatsServer, id: &str, body: &'static str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert("X-Case", "Kept");
        nats.jetstream()
            .await
            .publish_with_headers("s.a", headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("ack")
    };
    assert!(!publish(&nats, "1", "{\"update_id\":1}").await.duplicate);
    assert!(publish(&nats, "1", "{\"update_id\":1}").await.duplicate);
    nats.stop().await;
    assert!(!nats.is_running());
    nats.restart().await;
    assert!(!publish(&nats, "2", "{\"update_id\":2}").await.duplicate);
    nats.kill().await;
    nats.restart().await;
    // Still de-duplicated after a restart: the window survives in the store.
    assert!(publish(&nats, "2", "{\"update_id\":2}").await.duplicate);

    let msgs = nats.read_all("S", 2, Duration::from_secs(10)).await;
    let ids: Vec<(u64, i64)> = msgs.iter().map(|m| (m.seq, m.update_id())).collect();
    assert_eq!(ids, [(1, 1), (2, 2)]);
    assert_eq!(msgs[0].subject, "s.a");
    assert_eq!(msgs[0].header_exact("X-Case"), Some("Kept"));
    assert_eq!(msgs[0].header("x-case"), Some("Kept"));
    assert_eq!(&msgs[1].payload[..], b"{\"update_id\":2}");

    // Without the token the server refuses.
    let refused = async_nats::connect(nats.url()).await;
    assert!(refused.is_err(), "connected without the token");
}

/// A daemon that is nowhere fails its test with the way to install it.
#[test]
#[should_panic(
    expected = "this test needs no-such-daemon-4f2a, which is not on PATH: apt-get install it"
)]
fn a_missing_daemon_names_the_install() {
    crate::rig::tools::locate("no-such-daemon-4f2a", "apt-get install it");
}

/// The fake's rate limits: 4 sends to one chat at once under 3/3s → exactly
/// one 429 in Telegram's shape, not counted; a client that waits out the
/// window by its own clock is never refused; groups have their own window
/// on top; per-bot counts every method but getUpdates; an injected 429
/// holds its chat for `retry_after` and nothing else.
#[tokio::test]
async fn fake_limits_refuse_what_exceeds_a_window_and_only_that() {
    use crate::rig::FakeLimits;

    let api = FakeApi::start(Flavor::Telegram).await;
    api.add_bot(TOKEN, 42, "testbot");
    let client = reqwest::Client::new();
    let send = api.method_url(TOKEN, "sendMessage");
    let send_to = async |chat: &str| {
        post(
            &client,
            &send,
            &format!(r#"{{"chat_id":{chat},"text":"x"}}"#),
        )
        .await
    };

    api.enforce_limits(TOKEN, FakeLimits::telegram());
    let answers = futures_util::future::join_all((0..4).map(|_| send_to("7"))).await;
    let refused: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    let body: serde_json::Value = serde_json::from_str(&refused[0].1).unwrap();
    let retry_after = body["parameters"]["retry_after"].as_u64().unwrap();
    assert!((1..=3).contains(&retry_after), "{body}");
    assert_eq!(
        body["description"],
        format!("Too Many Requests: retry after {retry_after}")
    );
    assert_eq!(
        (body["ok"].clone(), body["error_code"].clone()),
        (false.into(), 429.into())
    );
    assert_eq!(api.rate_limited(TOKEN), 1);
    // Another chat, the same chat as a string, and a method the chat limit
    // does not count.
    assert_eq!(send_to("8").await.0, 200);
    assert_eq!(send_to(r#""7""#).await.0, 429);
    let action = api.method_url(TOKEN, "sendChatAction");
    assert_eq!(
        post(&client, &action, r#"{"chat_id":7,"action":"typing"}"#)
            .await
            .0,
        200
    );
    assert_eq!(api.rate_limited(TOKEN), 2);

    // A group: 2 per 400 ms on top of a loose per-chat window; a private chat
    // is not held by it. A client that waits out the window by its own
    // clock (measured from before it sent) is never refused.
    let mut limits = FakeLimits::none();
    limits.per_chat = vec![(10, Duration::from_secs(1))];
    limits.per_group = vec![(2, Duration::from_millis(400))];
    api.enforce_limits(TOKEN, limits);
    let first = Instant::now();
    for chat in ["-100", r#""-100""#] {
        assert_eq!(send_to(chat).await.0, 200);
    }
    assert_eq!(send_to("-100").await.0, 429);
    for _ in 0..3 {
        assert_eq!(send_to("100").await.0, 200);
    }
    tokio::time::sleep_until((first + Duration::from_millis(400)).into()).await;
    assert_eq!(send_to("-100").await.0, 200);
    assert_eq!(api.rate_limited(TOKEN), 3);

    // Per bot: every method but getUpdates.
    let mut limits = FakeLimits::none();
    limits.per_bot = vec![(2, Duration::from_secs(5))];
    api.enforce_limits(TOKEN, limits);
    assert_eq!(
        post(&client, &api.method_url(TOKEN, "getMe"), "{}").await.0,
        200
    );
    assert_eq!(send_to("9").await.0, 200);
    assert_eq!(
        post(&client, &api.method_url(TOKEN, "getMe"), "{}").await.0,
        429
    );
    let get_updates = api.method_url(TOKEN, "getUpdates");
    assert_eq!(post(&client, &get_updates, r#"{"timeout":0}"#).await.0, 200);
    assert_eq!(api.rate_limited(TOKEN), 4);

    // An injected 429 takes its chat's next call and holds the chat for
    // retry_after; other chats go on.
    api.enforce_limits(TOKEN, FakeLimits::none());
    api.inject_chat_429(TOKEN, "5", 2);
    let (status, body) = send_to("5").await;
    assert_eq!(status, 429);
    assert!(body.contains(r#""parameters":{"retry_after":2}"#), "{body}");
    let hit = Instant::now();
    assert_eq!(send_to("6").await.0, 200);
    let (status, body) = send_to("5").await;
    assert_eq!(status, 429, "still held: {body}");
    tokio::time::sleep_until((hit + Duration::from_secs(2)).into()).await;
    assert_eq!(send_to("5").await.0, 200);
    assert_eq!(api.rate_limited(TOKEN), 6);

    // Every call is recorded with its answer.
    let statuses: Vec<u16> = api
        .calls(TOKEN)
        .iter()
        .filter(|c| c.method == "sendMessage")
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
}

/// The other side of the fake's limits: a client that keeps them by its
/// own clock is never refused, even when many calls go at the same
/// instants (every window boundary) and arrive in any order. The schedule
/// is the flood test's fastest one for 300 calls over 20 chats and 2
/// groups, on Telegram's windows (or, unless POLLHOOK_TEST_FULL_SCALE is
/// set, all ten times shorter so the test takes about 1.5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_limits_never_refuse_a_client_that_keeps_them() {
    use crate::rig::{fastest_schedule, ChatCalls, FakeLimits};

    let scale = if std::env::var_os("POLLHOOK_TEST_FULL_SCALE").is_some() {
        1
    } else {
        10
    };
    let mut limits = FakeLimits::telegram();
    for (_, period) in limits
        .per_chat
        .iter_mut()
        .chain(&mut limits.per_group)
        .chain(&mut limits.per_bot)
    {
        *period /= scale;
    }
    let api = FakeApi::start(Flavor::Telegram).await;
    api.add_bot(TOKEN, 42, "testbot");

    let chats: Vec<(i64, usize)> = (0..22)
        .map(|i| match i {
            0 | 1 => (-100 - i, 15),
            2..=9 => (i, if i % 4 == 2 { 12 } else { 11 }),
            _ => (i, 15),
        })
        .collect();
    assert_eq!(chats.iter().map(|c| c.1).sum::<usize>(), 300);
    let plan: Vec<ChatCalls> = chats
        .iter()
        .map(|&(id, n)| ChatCalls {
            group: id < 0,
            released: vec![Duration::ZERO; n],
        })
        .collect();
    let schedule = fastest_schedule(&plan, &limits);
    let client = reqwest::Client::new();
    let url = api.method_url(TOKEN, "sendMessage");
    // Connections first, so the timed calls do not wait for a handshake.
    futures_util::future::join_all((0..100).map(|_| client.post(&url).body("{}").send())).await;
    api.enforce_limits(TOKEN, limits.clone());

    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut calls = Vec::new();
    for (&(chat, _), times) in chats.iter().zip(&schedule) {
        // One client per chat, each call at its time (never before the
        // previous one of its chat was answered).
        let (client, url, times) = (client.clone(), url.clone(), times.clone());
        calls.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for t in times {
                tokio::time::sleep_until(start + t).await;
                let body = format!(r#"{{"chat_id":{chat},"text":"x"}}"#);
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                statuses.push(resp.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.extend(c.await.unwrap());
    }
    let end = schedule.iter().flatten().max().unwrap();
    println!(
        "a client keeping the limits (windows / {scale}): {} calls in {end:?}, {} refused",
        statuses.len(),
        api.rate_limited(TOKEN)
    );
    // What was refused, and when it arrived, for the failure message.
    let refused: Vec<String> = api
        .calls(TOKEN)
        .iter()
        .filter(|c| c.status == 429)
        .take(10)
        .map(|c| {
            let at = c.at.saturating_duration_since(start.into_std());
            format!("chat {} at {at:?}", c.params["chat_id"])
        })
        .collect();
    assert_eq!(api.rate_limited(TOKEN), 0, "refused: {refused:?}");
    assert!(statuses.iter().all(|s| *s == 200));
}

/// send* answers a Message, multipart uploads are kept byte for byte,
/// getFile answers a File and its bytes download (with the token's colon
/// percent-encoded, as python-telegram-bot sends it).
#[tokio::test]
async fn fake_answers_sends_with_messages_and_serves_files() {
    let api = FakeApi::start(Flavor::Telegram).await;
    api.add_bot(TOKEN, 42, "testbot");
    let client = reqwest::Client::new();

    let (status, body) = post(
        &client,
        &api.method_url(TOKEN, "sendMessage"),
        r#"{"chat_id":-1001,"text":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(message["result"]["message_id"], 1);
    assert_eq!(message["result"]["chat"]["type"], "supergroup");
    assert_eq!(message["result"]["from"]["id"], 42);
    assert_eq!(message["result"]["text"], "hi");

    // Binary data with what a text-based parser trips on.
    let data: Vec<u8> = b"\r\n--\r\n\r\n\xff\xfe\0"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(5000))
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("chat_id", "7")
        .text("document", "attach://blob")
        .part(
            "blob",
            reqwest::multipart::Part::bytes(data.clone()).file_name("blob.bin"),
        );
    let resp = client
        .post(api.method_url(TOKEN, "sendDocument"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let message: serde_json::Value = resp.json().await.unwrap();
    let document = &message["result"]["document"];
    assert_eq!(document["file_size"], data.len());
    assert_eq!(document["file_name"], "blob.bin");
    let call = api.calls(TOKEN).pop().unwrap();
    assert!(api.uploaded(TOKEN, &call, "document").unwrap() == data);

    let (status, body) = post(
        &client,
        &api.method_url(TOKEN, "getFile"),
        &format!(r#"{{"file_id":{}}}"#, document["file_id"]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let file: serde_json::Value = serde_json::from_str(&body).unwrap();
    let path = file["result"]["file_path"].as_str().unwrap();
    let url = format!(
        "http://{}/file/bot{}/{path}",
        api.addr,
        TOKEN.replace(':', "%3A")
    );
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == data);
    let missing = format!("http://{}/file/bot{TOKEN}/nope", api.addr);
    assert_eq!(client.get(missing).send().await.unwrap().status(), 404);
    assert_eq!(
        api.downloads(TOKEN),
        [(path.to_string(), 200), ("nope".to_string(), 404)]
    );
    assert_eq!(api.tokens_seen(), [TOKEN]);
}
