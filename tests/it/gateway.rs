//! The Bot API gateway (issue 17) against the real binary: backends call
//! the Bot API through pollhook with a key, and every call of the bot, from
//! every client and every webhook reply, is shaped to one budget. The fake
//! platform enforces the same limits (rig/fake_limits.rs), so a 429 it
//! answers is a gateway that let too much through.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::rig::*;

const APP_KEY: &str = "1:gw-app-k3y-0123456789abcdef";
const OTHER_KEY: &str = "2:gw-other-k3y-0123456789abcdef";
const ALL_KEY: &str = "3:gw-all-k3y-0123456789abcdef";

/// Every Bot API call the fake saw but getUpdates, in arrival order.
fn bot_api_calls(api: &FakeApi) -> Vec<Call> {
    api.calls(TOKEN)
        .into_iter()
        .filter(|c| !c.is_get_updates())
        .collect()
}

/// The chat a call names, `42` and `"42"` alike.
fn chat_of(call: &Call) -> String {
    match &call.params["chat_id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The sendMessage calls to `chat`, in arrival order.
fn sends_to(api: &FakeApi, chat: &str) -> Vec<Call> {
    bot_api_calls(api)
        .into_iter()
        .filter(|c| c.method == "sendMessage" && chat_of(c) == chat)
        .collect()
}

fn text_of(call: &Call) -> &str {
    call.params["text"].as_str().unwrap_or_default()
}

/// A relay with a gateway, an admin API and the given `[[bot]]` extras
/// (limits, clients), on the usual fake and backend.
async fn gateway(setup: &Setup, gateway_extra: &str, bot_extra: &str) -> (Gateway, u16) {
    let admin = free_port();
    let top = gateway_table(gateway_extra) + &admin_table(admin, "");
    let config = setup.config_full(&top, bot_extra, "");
    (Gateway::start(setup, &config).await, admin)
}

/// The relay's log, /metrics and /status hold neither the token nor a key.
async fn assert_nothing_leaked(gw: &Gateway, admin: u16, keys: &[&str]) {
    assert_no_secrets(&gw.relay.logs(), keys, "the relay's log");
    assert_no_secrets(&get(admin, "/metrics").await.1, keys, "/metrics");
    assert_no_secrets(&status_json(admin).await, keys, "/status");
}

/// 5 clients send 300 sendMessage in about a second to 20 private chats and
/// 2 groups, against a platform enforcing Telegram's limits.
///
/// Which limit governs: per chat, 3 in 3 s. A chat's 15th message cannot
/// go before 12 s, and 300 messages over 22 chats need some chats with 14
/// or 15. Per bot, 30 a second shapes the first seconds (the chats' first
/// bursts ask for 66 at once). Per group, 20 a minute is enforced by the
/// fake but not reached: each group gets 15 (more than 20 would make the
/// test last a minute); `a_group_waits_for_its_window_while_private_chats_go_on`
/// covers the group window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_five_clients_is_shaped_to_the_limits_with_no_429_and_in_order() {
    // Requests a client has open at once, as a framework's connection pool
    // would.
    const CONCURRENCY: usize = 20;
    // Between two requests a client starts: one chat's requests start ≥ 40
    // ms apart, so they reach the gateway in the order they were numbered.
    const SPACING: Duration = Duration::from_millis(10);

    let setup = Setup::new().await;
    let keys: Vec<String> = (1..=5).map(|i| format!("{i}:gw-flood-{i:020}")).collect();
    let clients: String = keys
        .iter()
        .enumerate()
        .map(|(i, key)| client_table(&format!("app{i}"), key, ""))
        .collect();
    let (gw, admin) = gateway(&setup, "", &clients).await;
    setup.api.enforce_limits(TOKEN, FakeLimits::telegram());

    // (client, chat_id as sent, messages). Each chat belongs to one client,
    // so its order is well defined; one group's id is a string.
    let mut chats: Vec<(usize, Value, usize)> = vec![
        (0, json!(-1001000000001_i64), 15),
        (1, json!("-1001000000002"), 15),
    ];
    for client in 0..5 {
        let counts = if client < 2 {
            [12, 11, 11, 11]
        } else {
            [15; 4]
        };
        for (j, n) in counts.into_iter().enumerate() {
            chats.push((client, json!(1001 + 4 * client + j), n));
        }
    }
    let label = |id: &Value| match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    assert_eq!(chats.iter().map(|c| c.2).sum::<usize>(), 300);
    assert_eq!(
        chats
            .iter()
            .filter(|c| c.1.to_string().contains('-'))
            .count(),
        2
    );

    let start = Instant::now();
    let mut clients = Vec::new();
    for (client, key) in keys.iter().enumerate() {
        // A client sends to its chats in turn: message 0 of each, then 1...
        let mine: Vec<&(usize, Value, usize)> = chats.iter().filter(|c| c.0 == client).collect();
        let rounds = mine.iter().map(|c| c.2).max().unwrap_or(0);
        let plan: Vec<(Value, usize)> = (0..rounds)
            .flat_map(|seq| {
                mine.iter()
                    .filter(move |c| seq < c.2)
                    .map(move |c| (c.1.clone(), seq))
            })
            .collect();
        let url = gw.url(key, "sendMessage");
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let open = Arc::new(Semaphore::new(CONCURRENCY));
            let mut requests = Vec::new();
            for (chat, seq) in plan {
                let permit = open.clone().acquire_owned().await.unwrap();
                let asked = start.elapsed();
                let text = format!("{} #{seq}", label(&chat));
                let req = http
                    .post(&url)
                    .json(&json!({ "chat_id": chat, "text": text }));
                requests.push(tokio::spawn(async move {
                    let answer = send(req).await;
                    drop(permit);
                    (label(&chat), seq, asked, answer)
                }));
                tokio::time::sleep(SPACING).await;
            }
            let mut done = Vec::new();
            for r in requests {
                done.push(r.await.unwrap());
            }
            done
        }));
    }
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    let answered = start.elapsed();

    let sends: Vec<Call> = bot_api_calls(&setup.api)
        .into_iter()
        .filter(|c| c.method == "sendMessage")
        .collect();
    let ok: Vec<&Call> = sends.iter().filter(|c| c.status == 200).collect();
    let refused = setup.api.rate_limited(TOKEN);
    let took = ok
        .iter()
        .map(|c| c.at.duration_since(start))
        .max()
        .unwrap_or_default();

    // The least time the limits allow for these messages, none sent before
    // its client asked for it.
    let mut released: BTreeMap<String, Vec<(usize, Duration)>> = BTreeMap::new();
    for (chat, seq, asked, _) in &answers {
        released
            .entry(chat.clone())
            .or_default()
            .push((*seq, *asked));
    }
    let schedule: Vec<ChatCalls> = released
        .iter_mut()
        .map(|(chat, calls)| {
            calls.sort();
            ChatCalls {
                group: chat.starts_with('-'),
                released: calls.iter().map(|(_, asked)| *asked).collect(),
            }
        })
        .collect();
    let minimum = min_schedule(&schedule, &FakeLimits::telegram());
    let all_at_once: Vec<ChatCalls> = schedule
        .iter()
        .map(|c| ChatCalls {
            group: c.group,
            released: vec![Duration::ZERO; c.released.len()],
        })
        .collect();
    let ideal = min_schedule(&all_at_once, &FakeLimits::telegram());
    let last_asked = answers.iter().map(|a| a.2).max().unwrap_or_default();
    let metrics = get(admin, "/metrics").await.1;
    println!(
        "flood: sent {} of 300 (answers 200: {}), 429s from the platform {refused}, took {:.2} s \
         (last answer at {:.2} s), minimum the limits allow {:.2} s for when the clients asked \
         (the last asked at {:.2} s; {:.2} s had all 300 been asked at once), ratio {:.3}; \
         gateway wait {:.1} s over {} calls",
        ok.len(),
        answers.iter().filter(|a| a.3.status == 200).count(),
        took.as_secs_f64(),
        answered.as_secs_f64(),
        minimum.as_secs_f64(),
        last_asked.as_secs_f64(),
        ideal.as_secs_f64(),
        took.as_secs_f64() / minimum.as_secs_f64(),
        metric_sum(&metrics, "pollhook_gateway_wait_seconds_sum", &[]),
        metric_sum(&metrics, "pollhook_gateway_wait_seconds_count", &[]),
    );

    assert_eq!(refused, 0, "the platform answered 429s");
    for (chat, seq, _, a) in &answers {
        assert_eq!(
            (a.status, &a.json()["ok"]),
            (200, &json!(true)),
            "{chat} #{seq}: {}",
            a.text()
        );
    }
    assert_eq!(ok.len(), 300, "every message is sent once");
    let texts: HashSet<&str> = ok.iter().map(|c| text_of(c)).collect();
    assert_eq!(texts.len(), 300, "each text once");
    let mut order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for c in &ok {
        let seq = text_of(c)
            .rsplit_once(" #")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected text {:?}", text_of(c)));
        order.entry(chat_of(c)).or_default().push(seq);
    }
    for (chat, seqs) in &order {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "chat {chat} out of order at the platform: {seqs:?}"
        );
    }
    assert!(
        took.as_secs_f64() <= minimum.as_secs_f64() * 1.10,
        "took {took:.2?}, more than 10 % over the {minimum:.2?} the limits allow"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "pollhook_gateway_calls_total",
            &["result=\"ok\"", "method=\"sendMessage\""]
        ),
        300.0,
        "{metrics}"
    );
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_nothing_leaked(&gw, admin, &key_refs).await;
}

/// The platform answers one chat's call with 429 and `retry_after` 3: that
/// chat waits 3 s and its call is retried for the client, which gets 200;
/// other chats, sent before and after the 429, go out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_3_on_one_chat_delays_only_that_chat() {
    let setup = Setup::new().await;
    let (gw, admin) = gateway(&setup, "", &client_table("app", APP_KEY, "")).await;
    let url = gw.url(APP_KEY, "sendMessage");
    let http = reqwest::Client::new();
    let send_to = |chat: i64, text: String| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let a = post_json(&http, &url, json!({ "chat_id": chat, "text": text })).await;
            (a, asked.elapsed())
        })
    };
    setup.api.inject_chat_429(TOKEN, "100", 3);

    let hit = send_to(100, "hit #0".into());
    let before: Vec<_> = (101..=103)
        .map(|c| send_to(c, format!("before {c}")))
        .collect();
    let the_429 = wait_until("the platform's 429 for chat 100", LONG, || {
        sends_to(&setup.api, "100")
            .into_iter()
            .find(|c| c.status == 429)
    })
    .await;
    // The chat is paused now: its next message waits too; other chats don't.
    let hit_again = send_to(100, "hit #1".into());
    let after: Vec<_> = (104..=106)
        .map(|c| send_to(c, format!("after {c}")))
        .collect();

    for other in before.into_iter().chain(after) {
        let (a, took) = other.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        assert!(
            took < Duration::from_secs(1),
            "another chat's message took {took:?}"
        );
    }
    let (a, took_hit) = hit.await.unwrap();
    assert_eq!(a.status, 200, "the retry is transparent: {}", a.text());
    assert_eq!(a.json()["ok"], true);
    let (a, _) = hit_again.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());

    let hits = sends_to(&setup.api, "100");
    let seen: Vec<(&str, u16)> = hits.iter().map(|c| (text_of(c), c.status)).collect();
    assert_eq!(
        seen,
        [("hit #0", 429), ("hit #0", 200), ("hit #1", 200)],
        "the 429'd message is retried once, then the next one"
    );
    let retried_after = hits[1].at.duration_since(the_429.at);
    for other in 101..=106 {
        let calls = sends_to(&setup.api, &other.to_string());
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].at < the_429.at + Duration::from_secs(1),
            "chat {other} went out {:?} after the 429",
            calls[0].at.saturating_duration_since(the_429.at)
        );
    }
    println!(
        "inject 429: chat 100 retried {:.2} s after the 429 (client waited {:.2} s), \
         other chats answered within 1 s",
        retried_after.as_secs_f64(),
        took_hit.as_secs_f64()
    );
    assert!(
        retried_after >= Duration::from_secs(3),
        "retried {retried_after:?} after a retry_after of 3 s"
    );
    assert_eq!(setup.api.rate_limited(TOKEN), 1);
    let metrics = get(admin, "/metrics").await.1;
    assert_eq!(
        metric_sum(
            &metrics,
            "pollhook_platform_rate_limited_total",
            &["bot=\"main\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// Everything the gateway refuses, Bot API-shaped, and none of it reaches
/// the platform: unknown keys, the methods pollhook owns, methods and chats
/// outside a client's scope (in JSON, form, multipart and query string).
/// No key or token in any answer, log line, metric or status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_bot_api_shaped_and_never_reach_the_platform() {
    let setup = Setup::new().await;
    let clients = client_table(
        "app",
        APP_KEY,
        "methods = [\"sendMessage\", \"forwardMessage\", \"getMe\"]\nchats = [42, \"-100123\"]",
    ) + &client_table("all", ALL_KEY, "methods = [\"*\"]");
    let (gw, admin) = gateway(&setup, "", &clients).await;
    let http = reqwest::Client::new();
    let before = bot_api_calls(&setup.api).len();
    let mut bodies = Vec::new();
    let (mut unauthorized, mut forbidden) = (0, 0);

    // Unknown keys, the bot's real token among them: 401.
    for key in ["1:not-a-k3y-0123456789abcdef", TOKEN, "short"] {
        for a in [
            post_json(
                &http,
                &gw.url(key, "sendMessage"),
                json!({"chat_id": 42, "text": "x"}),
            )
            .await,
            send(http.get(gw.url(key, "getMe"))).await,
            send(http.get(gw.file_url(key, "documents/file_0.txt"))).await,
        ] {
            assert_refusal(&a, 401, "Unauthorized", "");
            unauthorized += 1;
            bodies.push(a);
        }
    }

    // pollhook owns updates and the webhook: refused to a client allowed
    // every method, in any case, by POST or GET.
    for method in [
        "getUpdates",
        "setWebhook",
        "deleteWebhook",
        "logOut",
        "close",
        "GETUPDATES",
        "deletewebhook",
    ] {
        let a = post_json(&http, &gw.url(ALL_KEY, method), json!({})).await;
        assert_refusal(&a, 403, "Forbidden: ", method);
        bodies.push(a);
        let a = send(http.get(gw.url(ALL_KEY, method))).await;
        assert_refusal(&a, 403, "Forbidden: ", method);
        bodies.push(a);
        forbidden += 2;
    }

    // A method outside the client's `methods`.
    for method in ["sendPhoto", "getUpdates", "SENDPHOTO"] {
        let a = post_json(&http, &gw.url(APP_KEY, method), json!({"chat_id": 42})).await;
        assert_refusal(&a, 403, "Forbidden: ", method);
        bodies.push(a);
        forbidden += 1;
    }

    // A chat outside the client's `chats`, however the parameters come.
    let send_url = gw.url(APP_KEY, "sendMessage");
    let outside = [
        (
            "JSON",
            http.post(&send_url)
                .json(&json!({"chat_id": 43, "text": "x"})),
        ),
        (
            "JSON string",
            http.post(&send_url)
                .json(&json!({"chat_id": "43", "text": "x"})),
        ),
        (
            "JSON channel",
            http.post(&send_url)
                .json(&json!({"chat_id": "@elsewhere", "text": "x"})),
        ),
        (
            "form",
            http.post(&send_url)
                .form(&[("chat_id", "43"), ("text", "x")]),
        ),
        (
            "multipart",
            http.post(&send_url).multipart(
                reqwest::multipart::Form::new()
                    .text("chat_id", "43")
                    .text("text", "x"),
            ),
        ),
        (
            "query",
            http.post(&send_url)
                .query(&[("chat_id", "43"), ("text", "x")]),
        ),
        (
            "GET query",
            http.get(&send_url)
                .query(&[("chat_id", "-43"), ("text", "x")]),
        ),
        (
            // Whichever of the two the platform would read, one is outside.
            "query and JSON",
            http.post(&send_url)
                .query(&[("chat_id", "42")])
                .json(&json!({"chat_id": 43, "text": "x"})),
        ),
        (
            "from_chat_id",
            http.post(gw.url(APP_KEY, "forwardMessage"))
                .json(&json!({"chat_id": 42, "from_chat_id": 43, "message_id": 1})),
        ),
    ];
    for (how, req) in outside {
        let a = send(req).await;
        assert_eq!(
            a.status,
            403,
            "a chat outside the scope by {how}: {}",
            a.text()
        );
        assert_refusal(&a, 403, "Forbidden: ", "");
        bodies.push(a);
        forbidden += 1;
    }

    // Inside the scope, in each encoding: these reach the platform.
    let inside = [
        http.post(&send_url)
            .json(&json!({"chat_id": 42, "text": "in json"})),
        http.post(&send_url)
            .form(&[("chat_id", "-100123"), ("text", "in form")]),
        http.post(&send_url).multipart(
            reqwest::multipart::Form::new()
                .text("chat_id", "42")
                .text("text", "in multipart"),
        ),
        http.get(&send_url)
            .query(&[("chat_id", "-100123"), ("text", "in query")]),
        http.post(gw.url(APP_KEY, "forwardMessage"))
            .json(&json!({"chat_id": -100123, "from_chat_id": 42, "message_id": 1})),
    ];
    for req in inside {
        let a = send(req).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }

    let reached: Vec<(String, String, String)> = bot_api_calls(&setup.api)[before..]
        .iter()
        .map(|c| (c.method.clone(), chat_of(c), text_of(c).to_owned()))
        .collect();
    assert_eq!(
        reached,
        [
            ("sendMessage", "42", "in json"),
            ("sendMessage", "-100123", "in form"),
            ("sendMessage", "42", "in multipart"),
            ("sendMessage", "-100123", "in query"),
            ("forwardMessage", "-100123", ""),
        ]
        .map(|(m, c, t)| (m.to_owned(), c.to_owned(), t.to_owned())),
        "only what the scope admits reaches the platform"
    );
    assert_eq!(
        setup.api.tokens_seen(),
        [TOKEN],
        "the platform saw a request with a key in place of the token"
    );

    let metrics = get(admin, "/metrics").await.1;
    println!("refusals: {unauthorized} answered 401, {forbidden} answered 403");
    assert_eq!(
        metric_sum(&metrics, "pollhook_gateway_unknown_key_total", &[]),
        unauthorized as f64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "pollhook_gateway_calls_total",
            &["result=\"refused\""]
        ),
        forbidden as f64,
        "{metrics}"
    );
    let keys = [APP_KEY, ALL_KEY, "1:not-a-k3y-0123456789abcdef"];
    for a in &bodies {
        assert_no_secrets(&a.text(), &keys, "an error body");
    }
    assert_nothing_leaked(&gw, admin, &keys).await;
}

/// A repeated `Idempotency-Key` gets the first answer without a second
/// call, per client, and still after a restart (the answers are in sled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_and_retries_with_its_idempotency_key_sends_one_message() {
    let setup = Setup::new().await;
    let config = setup.config_full(&gateway_table(""), &client_table("app", APP_KEY, ""), "");
    let gw = Gateway::start(&setup, &config).await;
    // The platform takes 2 s; the client gives up after 0.5 s and retries.
    setup
        .api
        .inject_method(TOKEN, "sendMessage", Fault::Hang(Duration::from_secs(2)));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let body = json!({"chat_id": 3, "text": "only once"});
    let first = impatient
        .post(gw.url(APP_KEY, "sendMessage"))
        .header("Idempotency-Key", "slow-1")
        .json(&body)
        .send()
        .await;
    assert!(first.is_err(), "the first attempt timed out at the client");
    let retry = send(
        reqwest::Client::new()
            .post(gw.url(APP_KEY, "sendMessage"))
            .header("Idempotency-Key", "slow-1")
            .json(&body),
    )
    .await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let sends: Vec<u16> = setup
        .api
        .calls(TOKEN)
        .iter()
        .filter(|c| c.method == "sendMessage")
        .map(|c| c.status)
        .collect();
    assert_eq!(
        sends,
        [200],
        "one message, answered: the first call ran to its end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_is_answered_from_the_store_even_after_a_restart() {
    let setup = Setup::new().await;
    let admin = free_port();
    let clients = client_table("app", APP_KEY, "") + &client_table("other", OTHER_KEY, "");
    let config = setup.config_full(&(gateway_table("") + &admin_table(admin, "")), &clients, "");
    let gw = Gateway::start(&setup, &config).await;
    let http = reqwest::Client::new();
    let call = async |gw: &Gateway, key: &str, idempotency: &str, text: &str| {
        send(
            http.post(gw.url(key, "sendMessage"))
                .header("Idempotency-Key", idempotency)
                .json(&json!({"chat_id": 1, "text": text})),
        )
        .await
    };
    let sent = || {
        setup
            .api
            .calls(TOKEN)
            .iter()
            .filter(|c| c.method == "sendMessage")
            .count()
    };

    let first = call(&gw, APP_KEY, "k-1", "once").await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = call(&gw, APP_KEY, "k-1", "once").await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(sent(), 1, "the repeat made no second call");

    let other_key = call(&gw, APP_KEY, "k-2", "twice").await;
    assert_eq!(
        (other_key.status, other_key.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(sent(), 2, "another key is another call");
    let other_client = call(&gw, OTHER_KEY, "k-1", "another client").await;
    assert_eq!(
        (
            other_client.status,
            other_client.header("idempotent-replayed")
        ),
        (200, None)
    );
    assert_eq!(
        sent(),
        3,
        "the same key from another client is another call"
    );

    let gw = gw.restart(&setup, &config).await;
    let after = call(&gw, APP_KEY, "k-1", "once").await;
    assert_eq!(
        (after.status, &after.body),
        (200, &first.body),
        "{}",
        after.text()
    );
    assert_eq!(after.header("idempotent-replayed"), Some("true"));
    assert_eq!(sent(), 3, "answered from the store after the restart");
    let fresh = call(&gw, APP_KEY, "k-3", "after the restart").await;
    assert_eq!(
        (fresh.status, fresh.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(sent(), 4);
    let texts: Vec<String> = sends_to(&setup.api, "1")
        .iter()
        .map(|c| text_of(c).to_owned())
        .collect();
    assert_eq!(
        texts,
        ["once", "twice", "another client", "after the restart"]
    );
    assert_nothing_leaked(&gw, admin, &[APP_KEY, OTHER_KEY]).await;
}

/// Bounded waiting: past `max_wait` a call gets the gateway's own 429; past
/// `max_queued` waiting calls, at once; neither reaches the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_and_max_queued_answer_429_and_send_nothing() {
    let setup = Setup::new().await;
    let bot = limits_table(r#"["1/10s"]"#, "[]", "[]") + &client_table("app", APP_KEY, "");
    let (gw, admin) = gateway(&setup, "max_wait = \"2s\"\nmax_queued = 2", &bot).await;
    let http = reqwest::Client::new();
    let url = gw.url(APP_KEY, "sendMessage");

    let a = post_json(&http, &url, json!({"chat_id": 1, "text": "first"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let asked = Instant::now();
    let a = post_json(&http, &url, json!({"chat_id": 1, "text": "second"})).await;
    let waited = asked.elapsed();
    let retry_after = assert_overflow(&a);
    assert_eq!(
        sends_to(&setup.api, "1").len(),
        1,
        "the refused call was not sent"
    );

    let burst: Vec<_> = (0..10)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let asked = Instant::now();
                let a = post_json(
                    &http,
                    &url,
                    json!({"chat_id": 2, "text": format!("burst {i}")}),
                )
                .await;
                (a, asked.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for b in burst {
        answers.push(b.await.unwrap());
    }
    let ok = answers.iter().filter(|(a, _)| a.status == 200).count();
    let overflow: Vec<&(Answer, Duration)> =
        answers.iter().filter(|(a, _)| a.status == 429).collect();
    for (a, _) in &overflow {
        assert_overflow(a);
    }
    let at_once = overflow
        .iter()
        .filter(|(_, took)| *took < Duration::from_secs(1))
        .count();
    println!(
        "max_wait 2 s: refused after {:.2} s with retry_after {retry_after}; max_queued 2: of 10, \
         {ok} sent, {} refused ({at_once} at once)",
        waited.as_secs_f64(),
        overflow.len()
    );
    assert_eq!((ok, overflow.len()), (1, 9), "{answers:?}");
    // A call the gateway answered 429 is not remembered: its repeat runs
    // (here in a free chat, so it is sent).
    let keyed = |chat: i64| {
        http.post(&url)
            .header("Idempotency-Key", "refused-once")
            .json(&json!({"chat_id": chat, "text": "keyed"}))
    };
    assert_overflow(&send(keyed(1)).await);
    let again = send(keyed(3)).await;
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (200, None),
        "{}",
        again.text()
    );
    assert!(at_once >= 7, "beyond 2 waiting, calls are refused at once");
    assert_eq!(
        sends_to(&setup.api, "2").len(),
        1,
        "no refused call was sent"
    );
    let metrics = get(admin, "/metrics").await.1;
    assert_eq!(
        metric_sum(
            &metrics,
            "pollhook_gateway_calls_total",
            &["result=\"overflow\""]
        ),
        11.0,
        "{metrics}"
    );
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// answerCallbackQuery goes ahead of sendMessage calls already waiting for
/// the bot's budget (the platform expires callback queries in seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_goes_ahead_of_sends_waiting_for_the_budget() {
    let setup = Setup::new().await;
    let bot = limits_table("[]", "[]", r#"["1/1s"]"#) + &client_table("app", APP_KEY, "");
    let (gw, admin) = gateway(&setup, "", &bot).await;
    let http = reqwest::Client::new();
    let before = bot_api_calls(&setup.api).len();
    let mut sends = Vec::new();
    for chat in 1..=5 {
        let (http, url) = (http.clone(), gw.url(APP_KEY, "sendMessage"));
        sends.push(tokio::spawn(async move {
            post_json(&http, &url, json!({"chat_id": chat, "text": "waiting"})).await
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 1, LONG)
        .await;
    // The other four were sent before the first reached the platform; this
    // lets them reach the gateway and queue (a margin, not a proof: the
    // order below is what is checked).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = post_json(
        &http,
        &gw.url(APP_KEY, "answerCallbackQuery"),
        json!({"callback_query_id": "q-1", "text": "done"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let order: Vec<String> = bot_api_calls(&setup.api)[before..]
        .iter()
        .map(|c| c.method.clone())
        .collect();
    println!("answer first: the platform saw {order:?}");
    assert_eq!(
        order.iter().position(|m| m == "answerCallbackQuery"),
        Some(1),
        "the answer should follow the one send that had the budget: {order:?}"
    );
    for s in sends {
        assert_eq!(s.await.unwrap().status, 200);
    }
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// Webhook replies and gateway clients share one budget: a backend answers
/// every update with a sendMessage to chat 7 while a client sends to chat 7
/// too; the platform allows 1 a second per chat and answers no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_replies_and_gateway_calls_share_one_budget() {
    let setup = Setup::new().await;
    setup.backend.set_script(|r, _| {
        let id = r.json()["update_id"].as_i64().unwrap();
        Reply::Body(
            200,
            "application/json".into(),
            json!({"method": "sendMessage", "chat_id": 7, "text": format!("reply {id}")})
                .to_string(),
        )
    });
    let bot = limits_table(r#"["1/1s"]"#, "[]", "[]") + &client_table("app", APP_KEY, "");
    let (gw, admin) = gateway(&setup, "", &bot).await;
    let mut limits = FakeLimits::none();
    limits.per_chat = vec![(1, Duration::from_secs(1))];
    setup.api.enforce_limits(TOKEN, limits);

    let start = Instant::now();
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, 7, "hi");
    }
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let (http, url) = (http.clone(), gw.url(APP_KEY, "sendMessage"));
        clients.push(tokio::spawn(async move {
            post_json(
                &http,
                &url,
                json!({"chat_id": 7, "text": format!("client {i}")}),
            )
            .await
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for c in clients {
        let a = c.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    // Done when all 6 are sent, or as soon as the platform refused one.
    let sent = wait_until("6 messages to chat 7", LONG, || {
        let ok: Vec<Call> = sends_to(&setup.api, "7")
            .into_iter()
            .filter(|c| c.status == 200)
            .collect();
        (ok.len() >= 6 || setup.api.rate_limited(TOKEN) > 0).then_some(ok)
    })
    .await;
    let texts: Vec<&str> = sent.iter().map(text_of).collect();
    println!(
        "shared budget: {texts:?} in {:.2} s, 429s from the platform {}",
        start.elapsed().as_secs_f64(),
        setup.api.rate_limited(TOKEN)
    );
    assert_eq!(
        setup.api.rate_limited(TOKEN),
        0,
        "{:#?}",
        sends_to(&setup.api, "7")
    );
    assert_eq!(texts.iter().filter(|t| t.starts_with("reply ")).count(), 3);
    assert_eq!(texts.iter().filter(|t| t.starts_with("client ")).count(), 3);
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// The group window holds groups (negative ids, as numbers or strings)
/// while private chats go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_waits_for_its_window_while_private_chats_go_on() {
    let setup = Setup::new().await;
    let bot = limits_table("[]", r#"["2/2s"]"#, "[]") + &client_table("app", APP_KEY, "");
    let (gw, admin) = gateway(&setup, "", &bot).await;
    let mut limits = FakeLimits::none();
    limits.per_group = vec![(2, Duration::from_secs(2))];
    setup.api.enforce_limits(TOKEN, limits);

    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..4 {
        for chat in [json!(-5), json!("-100123"), json!(5)] {
            let (http, url) = (http.clone(), gw.url(APP_KEY, "sendMessage"));
            calls.push(tokio::spawn(async move {
                post_json(
                    &http,
                    &url,
                    json!({"chat_id": chat, "text": format!("#{i}")}),
                )
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in calls {
        let a = c.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let private = sends_to(&setup.api, "5");
    let last_private = private
        .iter()
        .map(|c| c.at.duration_since(start))
        .max()
        .unwrap();
    let groups: Vec<Duration> = ["-5", "-100123"]
        .iter()
        .map(|g| sends_to(&setup.api, g)[2].at.duration_since(start))
        .collect();
    println!(
        "group window 2/2s: private chat's 4 sent by {:.2} s, each group's 3rd at {:.2?} s, \
         429s from the platform {}",
        last_private.as_secs_f64(),
        groups.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        setup.api.rate_limited(TOKEN)
    );
    assert_eq!(setup.api.rate_limited(TOKEN), 0);
    assert_eq!(private.len(), 4);
    assert!(last_private < Duration::from_secs(1), "{last_private:?}");
    let metrics = get(admin, "/metrics").await.1;
    assert!(
        metric_sum(
            &metrics,
            "pollhook_gateway_wait_seconds_count",
            &["bot=\"main\""]
        ) >= 4.0,
        "the group calls' waits are in the histogram: {metrics}"
    );
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// A 50 MB sendDocument passes through intact, streamed: pollhook's memory
/// grows by far less than the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_upload_arrives_intact_and_pollhook_stays_small() {
    const SIZE: usize = 50_000_000;
    const BOUND_MB: f64 = 20.0;
    let setup = Setup::new().await;
    let (gw, admin) = gateway(&setup, "", &client_table("app", APP_KEY, "")).await;

    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    let sha = Sha256::digest(&data);

    let pid = gw.relay.pid();
    let rss_before = vm_kib(pid, "VmRSS");
    let hwm_before = vm_kib(pid, "VmHWM");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm_kib(pid, "VmRSS"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        }
    });
    let form = reqwest::multipart::Form::new().text("chat_id", "9").part(
        "document",
        reqwest::multipart::Part::bytes(data)
            .file_name("big.bin")
            .mime_str("application/octet-stream")
            .unwrap(),
    );
    let started = Instant::now();
    let a = send(
        reqwest::Client::new()
            .post(gw.url(APP_KEY, "sendDocument"))
            .multipart(form),
    )
    .await;
    let took = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let sampled_peak = sampler.await.unwrap();
    let hwm_after = vm_kib(pid, "VmHWM");
    assert_eq!(a.status, 200, "{}", a.text());

    let doc = setup
        .api
        .wait_method_calls(TOKEN, "sendDocument", 1, LONG)
        .await
        .remove(0);
    let received = setup
        .api
        .uploaded(TOKEN, &doc, "document")
        .expect("the fake kept the upload");
    assert_eq!(doc.params["document"]["file_name"], "big.bin");
    assert_eq!(doc.params["chat_id"], "9");
    assert_eq!(received.len(), SIZE, "the platform received every byte");
    assert!(
        Sha256::digest(&received) == sha,
        "the bytes arrived changed"
    );
    assert_eq!(a.json()["result"]["document"]["file_size"], SIZE);

    // The peak during the upload: the high-water mark if it rose, else the
    // highest sample (the mark may be from before, e.g. start-up).
    let peak = if hwm_after > hwm_before {
        hwm_after
    } else {
        sampled_peak
    };
    let growth_mb = peak.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "50 MB upload: {:.2} s through the gateway, pollhook RSS {:.1} MB before, peak {:.1} MB, \
         growth {growth_mb:.1} MB (bound {BOUND_MB} MB)",
        took.as_secs_f64(),
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    assert!(
        growth_mb < BOUND_MB,
        "pollhook grew by {growth_mb:.1} MB for a 50 MB upload: buffered?"
    );
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// `GET /file/bot{key}/{path}` streams the platform's file back intact
/// (20 MB of every byte value, without pollhook holding it), a missing
/// file answers the platform's 404, and the platform sees the token, never
/// the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_streams_the_platforms_file_back_intact() {
    const SIZE: usize = 20_000_000;
    const BOUND_MB: f64 = 10.0;
    let setup = Setup::new().await;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let data: bytes::Bytes = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let small = bytes::Bytes::from_static(b"a small photo");
    setup
        .api
        .add_file(TOKEN, "file-12", "documents/file_12.bin", data.clone());
    setup
        .api
        .add_file(TOKEN, "file-3", "photos/file_3.jpg", small.clone());
    let admin = free_port();
    let config = setup.config_full(
        &(gateway_table("") + &admin_table(admin, "")),
        &client_table("app", APP_KEY, ""),
        "",
    );
    let gw = Gateway::start(&setup, &config).await;
    let http = reqwest::Client::new();

    let a = send(http.get(gw.file_url(APP_KEY, "photos/file_3.jpg"))).await;
    assert_eq!((a.status, &a.body), (200, &small));

    let pid = gw.relay.pid();
    let rss_before = vm_kib(pid, "VmRSS");
    let started = Instant::now();
    let mut resp = http
        .get(gw.file_url(APP_KEY, "documents/file_12.bin"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("download: {}", e.without_url()));
    assert_eq!(resp.status(), 200);
    let (mut got, mut sha, mut peak) = (0usize, Sha256::new(), rss_before);
    let mut chunks = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len();
        sha.update(&chunk);
        chunks += 1;
        if chunks % 64 == 0 {
            peak = peak.max(vm_kib(pid, "VmRSS"));
        }
    }
    let took = started.elapsed();
    peak = peak.max(vm_kib(pid, "VmRSS"));
    assert_eq!(got, SIZE, "every byte came back");
    assert!(
        sha.finalize() == Sha256::digest(&data),
        "the bytes came back changed"
    );
    let growth_mb = peak.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "download: 20 MB in {:.2} s through the gateway, pollhook RSS grew {growth_mb:.1} MB \
         (sampled every 64 chunks; bound {BOUND_MB} MB)",
        took.as_secs_f64()
    );
    assert!(
        growth_mb < BOUND_MB,
        "pollhook grew by {growth_mb:.1} MB for a 20 MB download"
    );

    let missing = send(http.get(gw.file_url(APP_KEY, "documents/nothing.bin"))).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.text(),
        r#"{"ok":false,"error_code":404,"description":"Not Found"}"#,
        "the platform's answer, as it came"
    );
    assert_eq!(
        setup.api.downloads(TOKEN),
        [
            ("photos/file_3.jpg", 200),
            ("documents/file_12.bin", 200),
            ("documents/nothing.bin", 404)
        ]
        .map(|(p, s)| (p.to_owned(), s)),
        "the platform is asked with the token"
    );
    assert_eq!(setup.api.tokens_seen(), [TOKEN], "and never with the key");
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// A multipart body built by hand, parts in the order given: (name,
/// filename, bytes). Returns (content type, body).
fn multipart_body(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "gw-test-b0undary";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// A WWChat bot is called through Telegram's URL shape; the platform's
/// answer (status, content type, body) comes back byte for byte, errors
/// included; a 429 that says how long only in `Retry-After` (WWChat's way)
/// is waited out and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wwchat_bots_answers_pass_back_byte_for_byte_and_its_429_header_is_obeyed() {
    let setup = Setup::with(Flavor::WwChat).await;
    let (gw, admin) = gateway(&setup, "", &client_table("app", APP_KEY, "")).await;
    let http = reqwest::Client::new();
    let url = gw.url(APP_KEY, "sendMessage");

    let answers: [(u16, &'static str, &'static str); 2] = [
        (
            400,
            "application/json; charset=utf-8",
            r#"{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#,
        ),
        (
            200,
            "application/json",
            "{\"ok\":true,  \"result\":{\"message_id\":7}}\n",
        ),
    ];
    for (status, content_type, body) in answers {
        setup.api.inject_method(
            TOKEN,
            "sendMessage",
            Fault::Raw {
                status,
                content_type,
                body: body.into(),
            },
        );
        let a = post_json(&http, &url, json!({"chat_id": 1, "text": "x"})).await;
        assert_eq!(
            (a.status, a.header("content-type"), a.text().as_str()),
            (status, Some(content_type), body)
        );
    }
    let calls = setup.api.calls(TOKEN);
    assert!(
        calls.iter().filter(|c| c.method == "sendMessage").count() == 2,
        "both reached the platform at its own URL shape: {calls:#?}"
    );

    setup.api.inject_chat_429(TOKEN, "5", 2);
    let a = post_json(&http, &url, json!({"chat_id": 5, "text": "held"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let hits = sends_to(&setup.api, "5");
    let seen: Vec<u16> = hits.iter().map(|c| c.status).collect();
    assert_eq!(seen, [429, 200]);
    let retried_after = hits[1].at.duration_since(hits[0].at);
    println!(
        "wwchat: a header-only 429 (Retry-After: 2) retried after {:.2} s",
        retried_after.as_secs_f64()
    );
    assert!(retried_after >= Duration::from_secs(2), "{retried_after:?}");
    let metrics = get(admin, "/metrics").await.1;
    assert_eq!(
        metric_sum(
            &metrics,
            "pollhook_gateway_calls_total",
            &["result=\"error\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_nothing_leaked(&gw, admin, &[APP_KEY]).await;
}

/// A small multipart upload that names its chat only after its file (the
/// gateway holds such a body whole) still counts for its chat: it waits
/// for the chat's window like any other call, and a client limited to
/// some chats may send it to one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_upload_naming_its_chat_after_the_file_keeps_the_chats_limits() {
    let setup = Setup::new().await;
    let bot = limits_table(r#"["1/1s"]"#, "[]", "[]")
        + &client_table("app", APP_KEY, "")
        + &client_table("scoped", OTHER_KEY, "chats = [5]");
    let (gw, admin) = gateway(&setup, "", &bot).await;
    let mut limits = FakeLimits::none();
    limits.per_chat = vec![(1, Duration::from_secs(1))];
    setup.api.enforce_limits(TOKEN, limits);
    let http = reqwest::Client::new();

    let photo = |n: usize| {
        multipart_body(&[
            ("photo", Some("p.jpg"), format!("photo {n}").as_bytes()),
            ("chat_id", None, b"5"),
        ])
    };
    let mut calls = Vec::new();
    for n in 0..3 {
        let (content_type, body) = photo(n);
        let req = http
            .post(gw.url(APP_KEY, "sendPhoto"))
            .header("content-type", content_type)
            .body(body);
        calls.push(tokio::spawn(send(req)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for c in calls {
        let a = c.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let refused = setup.api.rate_limited(TOKEN);
    println!("chat after the file: 3 uploads to one chat, 429s from the platform {refused}");
    assert_eq!(
        refused, 0,
        "the uploads were not shaped to their chat's window"
    );

    let (content_type, body) = photo(3);
    let a = send(
        http.post(gw.url(OTHER_KEY, "sendPhoto"))
            .header("content-type", content_type)
            .body(body),
    )
    .await;
    assert_eq!(a.status, 200, "chat 5 is the client's: {}", a.text());
    assert_nothing_leaked(&gw, admin, &[APP_KEY, OTHER_KEY]).await;
}
