//! The JetStream forward against a real nats-server: what lands in the
//! stream (bytes, headers, signatures, subjects), that an update leaves the
//! queue only once JetStream stored it (SIGKILLs, a server outage, a subject
//! no stream captures), `check-config --probe`, and that publishing is
//! pipelined without breaking per-chat order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde_json::Value;

use crate::rig::*;

/// A stream that captures every subject the tests' forwards use by default.
const STREAM: &str = "TG";
const CAPTURE: &str = "tg.>";

/// A JetStream forward on bot "main": signed, retried quickly (the tests
/// wait for retries, and a NATS outage must not leave a long backoff).
fn js_forward(name: &str, subject: &str, extra: &str) -> String {
    format!(
        r#"
[[bot.forward]]
name = "{name}"
nats_subject = "{subject}"
signing_secret = "{SECRET}"
retry_delay = "100ms"
retry_max_delay = "500ms"
{extra}
"#
    )
}

/// A config with bot "main" (the setup's fake API), `[nats]` pointing at
/// `nats` with `nats_extra` lines (auth), and `forwards`; `top` goes first
/// (an `[admin]` table).
fn js_config(
    setup: &Setup,
    nats: &NatsServer,
    top: &str,
    nats_extra: &str,
    forwards: &str,
) -> PathBuf {
    let toml = format!(
        r#"
state_dir = "state"
shutdown_timeout = "5s"
{top}

[nats]
servers = ["{url}"]
{nats_extra}

{bot}
{forwards}
"#,
        url = nats.url(),
        bot = setup.main_bot(),
    );
    write_config(setup.path(), &toml)
}

/// A NATS server with the stream `TG` capturing `tg.>`.
async fn nats_with_stream() -> NatsServer {
    let nats = NatsServer::start().await;
    nats.create_stream(STREAM, &[CAPTURE]).await;
    nats
}

/// The value of `pollhook_nats_connected` in a scrape.
fn nats_connected(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("pollhook_nats_connected"))
        .find_map(|l| l.split_whitespace().last()?.parse().ok())
}

fn queue_depth(status: &Value, forward: &str) -> Option<u64> {
    status["forwards"]
        .as_array()?
        .iter()
        .find(|f| f["forward"] == forward)?["queue_depth"]
        .as_u64()
}

/// Waits until `/status` shows `forward`'s queue at `depth`.
async fn wait_depth(port: u16, forward: &str, depth: u64) -> Value {
    wait_status(port, &format!("{forward}'s queue to hold {depth}"), |s| {
        queue_depth(s, forward) == Some(depth)
    })
    .await
}

/// A relay started while its NATS server (with the stream) is stopped, with
/// `n` updates polled, confirmed and queued: the server, the admin port,
/// the relay and the `/status` that showed them queued.
async fn queued_while_nats_is_down(setup: &Setup, n: i64) -> (NatsServer, u16, Relay, Value) {
    let mut nats = nats_with_stream().await;
    nats.stop().await;
    let port = free_port();
    let config = js_config(
        setup,
        &nats,
        &admin_table(port, ""),
        "",
        &js_forward("stream", "tg.{bot}.{chat}", ""),
    );
    let relay = setup.spawn(&config);
    for id in 1..=n {
        setup.api.push_message(TOKEN, id, id, "x");
    }
    setup.api.wait_confirmed(TOKEN, n, LONG).await;
    let status = wait_depth(port, "stream", n as u64).await;
    (nats, port, relay, status)
}

/// Checks per-subject order: on each subject the update ids grow, except
/// that an update seen before on that subject may come again, byte for
/// byte (a re-delivery after a crash). Returns how many such repeats.
fn assert_per_subject_order(msgs: &[StreamMsg]) -> usize {
    let mut seen: HashMap<&str, HashMap<i64, &[u8]>> = HashMap::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut repeats = 0;
    for m in msgs {
        let id = m.update_id();
        let subject = m.subject.as_str();
        let earlier = seen.entry(subject).or_default();
        if let Some(payload) = earlier.get(&id) {
            assert_eq!(
                *payload,
                &m.payload[..],
                "update {id} came again on {subject} with other bytes (stream seq {})",
                m.seq
            );
            repeats += 1;
            continue;
        }
        let top = last.entry(subject).or_insert(i64::MIN);
        assert!(
            id > *top,
            "{subject}: update {id} (stream seq {}) was stored after update {top}",
            m.seq
        );
        *top = id;
        earlier.insert(id, &m.payload[..]);
    }
    repeats
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One update of each shape the subject is rendered from, and what must
/// come of it: (raw JSON, kind, chat as rendered, X-Pollhook-Chat).
fn shapes() -> Vec<(String, &'static str, &'static str, Option<&'static str>)> {
    vec![
        // Odd spacing, escapes and an unknown field: the bytes must survive.
        (
            r#"{"update_id":1, "message":{"message_id":1,"date":1,"chat":{"id":5,"type":"private"},"text":"caf\u00e9 \"q\" ü","brand_new_field":[1,2.50,null]}}"#.into(),
            "message",
            "5",
            Some("5"),
        ),
        (
            r#"{"update_id":2,"message":{"message_id":2,"date":1,"chat":{"id":-1001234567890,"type":"supergroup"},"from":{"id":6},"text":"group"}}"#.into(),
            "message",
            "-1001234567890",
            Some("-1001234567890"),
        ),
        // The chat is in the callback's message; `from` (6) is not it.
        (
            r#"{"update_id":3,"callback_query":{"id":"cb","from":{"id":6,"is_bot":false,"first_name":"U"},"message":{"message_id":1,"date":1,"chat":{"id":5,"type":"private"}},"data":"x"}}"#.into(),
            "callback_query",
            "5",
            Some("5"),
        ),
        // No chat: the sender's id.
        (
            r#"{"update_id":4,"inline_query":{"id":"iq","from":{"id":77,"is_bot":false,"first_name":"U"},"query":"q","offset":""}}"#.into(),
            "inline_query",
            "77",
            None,
        ),
        // Neither chat nor sender.
        (
            r#"{"update_id":5,"poll":{"id":"p","question":"?","options":[],"total_voter_count":0,"is_closed":false}}"#.into(),
            "poll",
            "_",
            None,
        ),
        // Characters that would split or wildcard a subject; the header
        // keeps the id as it is.
        (
            r#"{"update_id":6,"message":{"message_id":6,"date":1,"chat":{"id":"we.ird*id>x","type":"private"},"text":"s"}}"#.into(),
            "message",
            "we_ird_id_x",
            Some("we.ird*id>x"),
        ),
        // A space would end the subject on the wire; one `_` per character,
        // not per byte. A header value is visible ASCII or `_` as a whole
        // (a CR or LF would end the header block).
        (
            r#"{"update_id":7,"message":{"message_id":7,"date":1,"chat":{"id":"a b.чат","type":"private"},"text":"s"}}"#.into(),
            "message",
            "a_b____",
            Some("_"),
        ),
    ]
}

/// Every update lands in the stream with its exact bytes, on the subject
/// rendered from it, with every header; the signature verifies with the
/// secret and fails for other bytes; `{update_id}` renders too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn every_update_lands_with_its_bytes_headers_signature_and_rendered_subject() {
    let setup = Setup::new().await;
    let nats = nats_with_stream().await;
    nats.create_stream("IDS", &["ids.>"]).await;
    let forwards = js_forward("stream", "tg.{bot}.{kind}.{chat}", "")
        + &js_forward("by-id", "ids.{bot}.{update_id}", "");
    let config = js_config(&setup, &nats, "", "", &forwards);
    let mut relay = setup.spawn(&config);
    let shapes = shapes();
    for (i, (raw, ..)) in shapes.iter().enumerate() {
        setup.api.push_raw(TOKEN, i as i64 + 1, raw);
    }
    let n = shapes.len() as u64;
    let got = nats.read_all(STREAM, n, LONG).await;
    let by_id = nats.read_all("IDS", n, LONG).await;
    relay.stop().await;

    assert_eq!(got.len() as u64, n, "messages in {STREAM}: {got:#?}");
    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    let mut msg_ids = HashSet::new();
    let mut got = got;
    got.sort_by_key(StreamMsg::update_id);
    for (m, (raw, kind, chat, chat_header)) in got.iter().zip(&shapes) {
        let id = m.update_id();
        assert_eq!(
            &m.payload[..],
            raw.as_bytes(),
            "update {id}: payload altered"
        );
        assert_eq!(m.subject, format!("tg.main.{kind}.{chat}"), "update {id}");
        let header = |name: &str| {
            m.header(name)
                .unwrap_or_else(|| panic!("update {id}: no {name} header in {:?}", m.headers))
        };
        let webhook_id = header("webhook-id");
        assert!(!webhook_id.is_empty());
        // JetStream de-duplicates on exactly this name.
        assert_eq!(
            m.header_exact("Nats-Msg-Id"),
            Some(webhook_id),
            "update {id}: Nats-Msg-Id is not the webhook-id; headers {:?}",
            m.headers
        );
        assert!(msg_ids.insert(webhook_id.to_string()), "webhook-id reused");
        let at: i64 = header("webhook-timestamp").parse().unwrap();
        assert!(
            (at - now_secs()).abs() < 60,
            "update {id}: webhook-timestamp {at} is not now"
        );
        assert_eq!(header("x-pollhook-bot"), "main");
        assert_eq!(header("x-pollhook-kind"), *kind);
        assert_eq!(header("x-pollhook-update-id"), id.to_string());
        assert_eq!(header("x-pollhook-attempt"), "1");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(m.header("x-pollhook-chat"), *chat_header, "update {id}");
        let headers = m.http_headers();
        verifier
            .verify(&m.payload, &headers)
            .unwrap_or_else(|e| panic!("update {id}: the signature does not verify: {e}"));
        assert!(
            verifier.verify(b"{\"update_id\":999}", &headers).is_err(),
            "update {id}: the signature verifies other bytes too"
        );
    }

    let mut subjects: Vec<String> = by_id.iter().map(|m| m.subject.clone()).collect();
    subjects.sort();
    let expected: Vec<String> = (1..=n).map(|i| format!("ids.main.{i}")).collect();
    assert_eq!(subjects, expected);
    for m in &by_id {
        let verify = verifier.verify(&m.payload, &m.http_headers());
        assert!(verify.is_ok(), "forward by-id: {verify:?}");
    }
    assert_no_token(&relay.logs());
}

/// An HTTP forward and a JetStream forward on one bot, as they are
/// configured side by side: (update id → webhook-id) from the backend and
/// from the stream, each checked to hold every update once.
async fn http_and_jetstream_side_by_side() -> (BTreeMap<i64, String>, BTreeMap<i64, String>) {
    const N: i64 = 30;
    let setup = Setup::new().await;
    let nats = nats_with_stream().await;
    let forwards = format!(
        "\n[[bot.forward]]\nname = \"app\"\nurl = \"{}\"\nsigning_secret = \"{SECRET}\"\n",
        setup.backend.url()
    ) + &js_forward("stream", "tg.{bot}.{chat}", "");
    let config = js_config(&setup, &nats, "", "", &forwards);
    let mut relay = setup.spawn(&config);
    for id in 1..=N {
        setup
            .api
            .push_message(TOKEN, id, id % 3, &format!("update {id}"));
    }
    let posted = setup.backend.wait_accepted(N as usize, LONG).await;
    let published = nats.read_all(STREAM, N as u64, LONG).await;
    relay.stop().await;
    assert_no_token(&relay.logs());

    assert_eq!(
        (posted.len(), published.len()),
        (N as usize, N as usize),
        "each side gets each update once"
    );
    let http: BTreeMap<i64, String> = posted
        .iter()
        .map(|r| (update_id(r), r.header("webhook-id").unwrap().to_string()))
        .collect();
    let js: BTreeMap<i64, String> = published
        .iter()
        .map(|m| (m.update_id(), m.header("webhook-id").unwrap().to_string()))
        .collect();
    let all: Vec<i64> = (1..=N).collect();
    assert_eq!(http.keys().copied().collect::<Vec<_>>(), all, "HTTP");
    assert_eq!(js.keys().copied().collect::<Vec<_>>(), all, "JetStream");
    (http, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn an_http_and_a_jetstream_forward_on_one_bot_each_get_everything() {
    let (http, js) = http_and_jetstream_side_by_side().await;
    // Each forward has its own ids (so two forwards into one stream never
    // collide in JetStream's duplicate window): none is shared.
    let shared: Vec<&String> = http
        .values()
        .filter(|w| js.values().any(|j| j == *w))
        .collect();
    assert!(
        shared.is_empty(),
        "webhook-ids shared across forwards: {shared:?}"
    );
}

/// Two JetStream forwards whose subjects one stream captures: each stores
/// every update, neither's copy dropped by JetStream as a repeat of the
/// other's (their Nats-Msg-Ids must differ however webhook-ids are made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn two_jetstream_forwards_into_one_stream_each_store_everything() {
    const N: i64 = 10;
    let setup = Setup::new().await;
    let nats = NatsServer::start().await;
    nats.create_stream("BOTH", &["a.>", "b.>"]).await;
    let forwards =
        js_forward("a", "a.{bot}.{chat}", "") + &js_forward("b", "b.{bot}.{update_id}", "");
    let config = js_config(&setup, &nats, "", "", &forwards);
    let mut relay = setup.spawn(&config);
    for id in 1..=N {
        setup.api.push_message(TOKEN, id, id % 2, "x");
    }
    let msgs = nats
        .read_all("BOTH", 2 * N as u64, Duration::from_secs(20))
        .await;
    relay.stop().await;
    for prefix in ["a.", "b."] {
        let mut ids: Vec<i64> = msgs
            .iter()
            .filter(|m| m.subject.starts_with(prefix))
            .map(StreamMsg::update_id)
            .collect();
        ids.sort();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "forward {prefix}");
    }
}

/// SIGKILL 5× at random moments during 5,000 updates: every update is in the
/// stream; a duplicate is never one JetStream could have dropped (same
/// Nats-Msg-Id, which is the webhook-id); per-subject order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn sigkill_during_5000_updates_loses_nothing_and_jetstream_drops_every_repeated_id() {
    const UPDATES: i64 = 5_000;
    const KILLS: i64 = 5;
    let started = Instant::now();
    let setup = Setup::new().await;
    let nats = nats_with_stream().await;
    let port = free_port();
    let config = js_config(
        &setup,
        &nats,
        &admin_table(port, ""),
        "",
        &js_forward("stream", "tg.{bot}.{kind}.{chat}", "max_in_flight = 16"),
    );
    let env = [("RUST_LOG", "info")];
    let mut relay = Relay::spawn(&config, &env);

    // 50 updates every 40 ms over 100 chats: 4 s, time for 5 kills and
    // restarts while updates still flow.
    let api = setup.api.clone();
    let producer = tokio::spawn(async move {
        let mut id = 1;
        while id <= UPDATES {
            for _ in 0..50 {
                if id > UPDATES {
                    break;
                }
                api.push_message(TOKEN, id, id % 100, &format!("update {id}"));
                id += 1;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });

    // Kill k comes once the API has handed out a random number of updates
    // in the k-th fifth of the run (before the last 400): a random moment,
    // and always one with updates still to publish.
    let mut at_kills = Vec::new();
    for round in 1..=KILLS {
        let span = (UPDATES - 400) / KILLS;
        let due = rand::rng().random_range((round - 1) * span + 1..=round * span);
        wait_until(&format!("update {due} to be polled"), LONG, || {
            setup.api.confirmed(TOKEN).unwrap_or(0) >= due
        })
        .await;
        let polls = setup.api.get_updates_calls(TOKEN).len();
        relay.sigkill();
        let killed_at = started.elapsed();
        // Confirmed to the API means stored: published or still queued.
        let confirmed = setup.api.confirmed(TOKEN).unwrap_or(0);
        let published = nats.stream_len(STREAM).await;
        let in_stream: HashSet<i64> = nats
            .read_all(STREAM, published, LONG)
            .await
            .iter()
            .map(StreamMsg::update_id)
            .collect();
        let queued = stored_update_ids_of(&setup.state_dir(), "stream").await;
        let missing: Vec<i64> = (1..=confirmed)
            .filter(|id| !in_stream.contains(id) && !queued.contains(id))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "after kill {round}: the API had confirmed up to {confirmed}, but these were neither in the stream nor queued: {missing:?}"
        );
        assert!(
            in_stream.len() < UPDATES as usize,
            "kill {round} came after everything was published: it tested nothing"
        );
        at_kills.push(format!(
            "{:.2}s: {confirmed} polled, {} in the stream, {} queued",
            killed_at.as_secs_f64(),
            in_stream.len(),
            queued.len()
        ));
        relay = Relay::spawn(&config, &env);
        // Any new poll is the restarted relay's.
        wait_until("the restarted relay's first poll", LONG, || {
            setup.api.get_updates_calls(TOKEN).len() > polls
        })
        .await;
    }
    producer.await.unwrap();
    setup.api.wait_confirmed(TOKEN, UPDATES, LONG).await;
    wait_depth(port, "stream", 0).await;
    relay.stop().await;
    let done = started.elapsed();

    let msgs = nats
        .read_all(STREAM, UPDATES as u64, Duration::from_secs(10))
        .await;
    let ids: HashSet<i64> = msgs.iter().map(StreamMsg::update_id).collect();
    let lost: Vec<i64> = (1..=UPDATES)
        .filter(|id| !ids.contains(id))
        .take(10)
        .collect();
    // A duplicate is a second message of an update. It may come from the
    // platform (stored, killed before the offset was confirmed, polled
    // again: a new job, a new webhook-id); one with a Nats-Msg-Id or a
    // webhook-id seen before is a re-publish of one job, which JetStream
    // must have dropped (its 2-minute window spans this whole run).
    let mut earlier: HashMap<i64, Vec<(&str, &str)>> = HashMap::new();
    let (mut duplicates, mut same_msg_id, mut same_webhook_id) = (0, 0, 0);
    for m in &msgs {
        let msg_id = m
            .header_exact("Nats-Msg-Id")
            .unwrap_or_else(|| panic!("no Nats-Msg-Id on {:?}", m.headers));
        let webhook_id = m.header("webhook-id").unwrap_or_default();
        let before = earlier.entry(m.update_id()).or_default();
        if !before.is_empty() {
            duplicates += 1;
            same_msg_id += before.iter().any(|(n, _)| *n == msg_id) as usize;
            same_webhook_id += before.iter().any(|(_, w)| *w == webhook_id) as usize;
        }
        before.push((msg_id, webhook_id));
    }
    let repeats = assert_per_subject_order(&msgs);
    eprintln!(
        "jetstream crash test: {UPDATES} updates, {KILLS} SIGKILLs at [{}]; {} messages in the stream, \
         {duplicates} duplicates (same update_id twice), {same_msg_id} of them with a Nats-Msg-Id seen before, \
         {same_webhook_id} with a webhook-id seen before, {} lost; all published and stopped after {:.1} s",
        at_kills.join("; "),
        msgs.len(),
        UPDATES as usize - ids.len(),
        done.as_secs_f64()
    );
    assert!(lost.is_empty(), "not in the stream: {lost:?}…");
    assert_eq!(
        (same_msg_id, same_webhook_id),
        (0, 0),
        "JetStream kept re-publishes of one job: it does not de-duplicate them"
    );
    assert_eq!(duplicates, repeats);
    assert_no_token(&relay.logs());
}

/// nats-server down for 20 s mid-stream: polling and confirming go on into
/// the local queue, the relay says it is not ready and not connected; once
/// the server is back every update is published, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_20_second_nats_outage_queues_locally_and_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(20);
    let setup = Setup::new().await;
    let mut nats = nats_with_stream().await;
    let port = free_port();
    let config = js_config(
        &setup,
        &nats,
        &admin_table(port, ""),
        "",
        &js_forward("stream", "tg.{bot}.{chat}", ""),
    );
    let mut relay = setup.spawn(&config);
    let mut id = 0;
    let mut push = |n: i64| {
        for _ in 0..n {
            id += 1;
            setup
                .api
                .push_message(TOKEN, id, id % 10, &format!("update {id}"));
        }
        id
    };
    let before = push(100);
    nats.read_all(STREAM, before as u64, LONG).await;
    wait_code(port, "/readyz", 200).await;
    let metrics = wait_code(port, "/metrics", 200).await;
    assert_eq!(nats_connected(&metrics), Some(1.0), "{metrics}");
    let status: Value = serde_json::from_str(&status_json(port).await).unwrap();
    assert_eq!(status["nats"]["connected"], true, "{status}");

    nats.stop().await;
    let down = Instant::now();
    let body = wait_code(port, "/readyz", 503).await;
    assert!(
        body.to_ascii_lowercase().contains("nats"),
        "/readyz does not say NATS is the problem: {body}"
    );
    let metrics = get(port, "/metrics").await.1;
    assert_eq!(nats_connected(&metrics), Some(0.0), "{metrics}");
    // While it is down: every round's updates are polled, confirmed and
    // queued, and the relay keeps saying it is down.
    let mut rounds = 0;
    while down.elapsed() < OUTAGE {
        let last = push(20);
        setup.api.wait_confirmed(TOKEN, last, LONG).await;
        let status = wait_depth(port, "stream", (last - before) as u64).await;
        assert_eq!(status["nats"]["connected"], false, "{status}");
        assert_eq!(get(port, "/readyz").await.0, 503);
        let metrics = get(port, "/metrics").await.1;
        assert_eq!(nats_connected(&metrics), Some(0.0), "{metrics}");
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total = id;
    nats.restart().await;
    let back = Instant::now();
    eventually("pollhook_nats_connected 1", LONG, async || {
        let metrics = get(port, "/metrics").await.1;
        nats_connected(&metrics) == Some(1.0)
    })
    .await;
    let reconnected = back.elapsed();
    wait_depth(port, "stream", 0).await;
    let caught_up = back.elapsed();
    wait_code(port, "/readyz", 200).await;
    relay.stop().await;

    let msgs = nats.read_all(STREAM, total as u64, LONG).await;
    let ids: HashSet<i64> = msgs.iter().map(StreamMsg::update_id).collect();
    eprintln!(
        "nats outage: {before} published before, {} queued in {rounds} rounds during {:.1} s down; connected again {:.2} s and all {} in the stream {:.2} s after the server was ready ({} messages)",
        total - before,
        OUTAGE.as_secs_f64(),
        reconnected.as_secs_f64(),
        ids.len(),
        caught_up.as_secs_f64(),
        msgs.len()
    );
    assert_eq!(ids, (1..=total).collect::<HashSet<i64>>(), "updates lost");
    assert_eq!(msgs.len(), total as usize, "duplicates in the stream");
    assert_per_subject_order(&msgs);
    assert_no_token(&relay.logs());
}

/// The relay starts while NATS is down (it connects in the background):
/// updates are polled and queued, /readyz says NATS; once the server is up
/// they are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn the_relay_starts_while_nats_is_down_and_publishes_once_it_is_up() {
    let setup = Setup::new().await;
    let (mut nats, port, mut relay, status) = queued_while_nats_is_down(&setup, 5).await;
    assert_eq!(status["nats"]["connected"], false, "{status}");
    let body = wait_code(port, "/readyz", 503).await;
    assert!(body.to_ascii_lowercase().contains("nats"), "{body}");

    nats.restart().await;
    let msgs = nats.read_all(STREAM, 5, LONG).await;
    wait_depth(port, "stream", 0).await;
    wait_code(port, "/readyz", 200).await;
    relay.stop().await;
    assert_eq!(msgs.len(), 5);
}

/// A subject no stream captures: the update stays queued and the log names
/// the subject and the fix; once a stream is created it is published,
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_subject_no_stream_captures_stays_queued_until_a_stream_is_created() {
    let setup = Setup::new().await;
    let nats = nats_with_stream().await;
    let port = free_port();
    let config = js_config(
        &setup,
        &nats,
        &admin_table(port, ""),
        "",
        &js_forward("other", "other.{bot}.{chat}", ""),
    );
    let mut relay = setup.spawn(&config);
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, 5 + id, "x");
    }
    setup.api.wait_confirmed(TOKEN, 3, LONG).await;
    // Tried, refused, and tried again on the forward's schedule.
    let needle = "no stream listens on other.main.";
    relay.wait_log_count(needle, 6, LONG).await;
    let logs = relay.logs();
    let line = log_line(&logs, needle);
    assert!(
        line.contains("create"),
        "the log line does not say how to fix it: {line}"
    );
    wait_depth(port, "other", 3).await;
    assert_eq!(nats.stream_len(STREAM).await, 0);

    nats.create_stream("OTHER", &["other.>"]).await;
    let msgs = nats.read_all("OTHER", 3, LONG).await;
    wait_depth(port, "other", 0).await;
    relay.stop().await;
    let mut subjects: Vec<&str> = msgs.iter().map(|m| m.subject.as_str()).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["other.main.6", "other.main.7", "other.main.8"],
        "each update once"
    );
    assert_no_token(&relay.logs());
}

/// `check-config --probe` says which forward's subjects a stream captures
/// and which not (exit 1 then, 0 when all are); a NATS password or token
/// from the config shows in no output and in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn probe_names_uncaptured_subjects_and_nats_secrets_never_show() {
    const PASSWORD: &str = "nats-Pa55word-9f3c2e71";
    const NATS_TOKEN: &str = "nats-T0ken-5d8a0b94e2";
    let cases = [
        (
            NatsAuth::UserPassword("pollhook".into(), PASSWORD.into()),
            format!("user = \"pollhook\"\npassword = \"{PASSWORD}\""),
            PASSWORD,
            true,
        ),
        (
            NatsAuth::Token(NATS_TOKEN.into()),
            format!("token = \"{NATS_TOKEN}\""),
            NATS_TOKEN,
            false,
        ),
    ];
    for (auth, nats_extra, secret, with_uncaptured) in cases {
        let setup = Setup::new().await;
        let nats = NatsServer::start_with(auth.clone()).await;
        nats.create_stream(STREAM, &[CAPTURE]).await;
        let mut forwards = js_forward("captured", "tg.{bot}.{kind}.{chat}", "");
        if with_uncaptured {
            forwards += &js_forward("loose", "loose.{bot}.{update_id}", "");
        }
        let config = js_config(&setup, &nats, "", &nats_extra, &forwards);
        let config_arg = config.to_str().unwrap();

        let (ok, out, err) = pollhook_async(&["check-config", "--config", config_arg]).await;
        assert!(
            ok,
            "check-config refused the config ({auth:?}):\n{out}\n{err}"
        );
        let (probe_ok, probe_out, probe_err) =
            pollhook_async(&["check-config", "--config", config_arg, "--probe"]).await;
        let probed = format!("{probe_out}\n{probe_err}");
        eprintln!("check-config --probe ({auth:?}):\n{probed}");
        let captured = log_line(&probed, r#"forward "captured" of bot "main""#);
        assert!(
            captured.contains("tg.main.*.*") && !captured.contains("not captured"),
            "{captured}"
        );
        if with_uncaptured {
            let loose = log_line(&probed, r#"forward "loose" of bot "main""#);
            assert!(
                loose.contains("loose.main.* is not captured by any stream"),
                "{loose}"
            );
            assert!(!probe_ok, "--probe exited 0 with a subject not captured");
        } else {
            assert!(probe_ok, "--probe failed with every subject captured");
        }
        for (what, text) in [("check-config", format!("{out}{err}")), ("--probe", probed)] {
            assert!(
                !text.contains(secret),
                "{what} shows the NATS secret:\n{text}"
            );
        }

        // The relay connects with the secret (the update arrives), and
        // logs it nowhere.
        let mut relay = setup.spawn(&config);
        setup.api.push_message(TOKEN, 1, 5, "x");
        let msgs = nats.read_all(STREAM, 1, LONG).await;
        assert_eq!(msgs[0].subject, "tg.main.message.5");
        relay.stop().await;
        let logs = relay.logs();
        let leaked: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaked.is_empty(),
            "the relay logged the NATS secret: {leaked:?}"
        );
        assert_no_token(&logs);
    }
}

/// max_in_flight 16 over 20 chats: every update arrives once, and each
/// chat's subject holds its updates in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn pipelined_publishes_keep_each_chats_order() {
    const CHATS: i64 = 20;
    const PER_CHAT: i64 = 15;
    let setup = Setup::new().await;
    let nats = nats_with_stream().await;
    let config = js_config(
        &setup,
        &nats,
        "",
        "",
        &js_forward("stream", "tg.{bot}.{chat}", "max_in_flight = 16"),
    );
    let mut relay = setup.spawn(&config);
    let start = Instant::now();
    let total = CHATS * PER_CHAT;
    // Interleaved: each batch holds many chats.
    for id in 1..=total {
        setup.api.push_message(TOKEN, id, 1000 + id % CHATS, "x");
    }
    let msgs = nats.read_all(STREAM, total as u64, LONG).await;
    let took = start.elapsed();
    relay.stop().await;
    eprintln!(
        "{total} updates over {CHATS} chats published in {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(msgs.len() as i64, total, "duplicates in the stream");
    let per = per_subject(&msgs);
    assert_eq!(per.len() as i64, CHATS, "subjects: {:?}", per.keys());
    for (subject, ids) in &per {
        let chat: i64 = subject.strip_prefix("tg.main.").unwrap().parse().unwrap();
        let expected: Vec<i64> = (1..=total).filter(|id| 1000 + id % CHATS == chat).collect();
        assert_eq!(ids, &expected, "{subject} is out of order or incomplete");
    }
    assert_no_token(&relay.logs());
}

/// An update larger than the server's `max_payload` would make nats-server
/// close the connection every JetStream forward shares, at every attempt.
/// It goes to dead letters at once instead, saying why, and its chat and
/// the others go on over the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn an_update_over_max_payload_is_dead_lettered_and_the_connection_stays_up() {
    let setup = Setup::new().await;
    let nats = NatsServer::start_configured("max_payload: 8192\n").await;
    nats.create_stream(STREAM, &[CAPTURE]).await;
    let port = free_port();
    let config = js_config(
        &setup,
        &nats,
        &admin_table(port, ""),
        "",
        &js_forward("stream", "tg.{bot}.{chat}", ""),
    );
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 1, "small");
    setup.api.push_message(TOKEN, 2, 2, &"x".repeat(12_000));
    setup
        .api
        .push_message(TOKEN, 3, 2, "after the big one, same chat");
    setup.api.push_message(TOKEN, 4, 1, "small again");
    let msgs = nats.read_all(STREAM, 3, Duration::from_secs(20)).await;
    let mut ids: Vec<i64> = msgs.iter().map(StreamMsg::update_id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 3, 4], "everything but the oversized update");
    let status = wait_status(port, "one dead letter", |s| {
        s["forwards"][0]["dead_letters"].as_u64() == Some(1)
    })
    .await;
    let error = status["forwards"][0]["last_error"].as_str().unwrap_or("");
    let logs = relay.logs();
    assert!(
        logs.contains("max_payload (8192 bytes)") && logs.contains("moved to dead letters"),
        "the log says why: {}",
        tail(&logs, 20)
    );
    assert!(
        !logs.contains("NATS: disconnected"),
        "the shared connection stayed up: {}\n(last error: {error})",
        tail(&logs, 20)
    );
    relay.stop().await;
}

/// A stop while NATS is away ends within the shutdown timeout: nothing
/// waits for a server that is not there (the queued updates stay stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_stop_while_nats_is_down_ends_in_time_and_keeps_the_queue() {
    let setup = Setup::new().await;
    let (_nats, _, mut relay, _) = queued_while_nats_is_down(&setup, 3).await;
    relay.sigterm();
    let exited = relay.wait_exit(Duration::from_secs(15)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "pollhook did not stop cleanly within 15 s (shutdown_timeout 5 s): {exited:?}\n{}",
        tail(&relay.logs(), 20)
    );
    let stored = stored_update_ids_of(&setup.state_dir(), "stream").await;
    assert_eq!(stored.len(), 3, "the queue is kept: {stored:?}");
}

/// A stream that captures only messages: the callback query's lane fails
/// on its own schedule, and the messages flowing meanwhile do not make it
/// retry after every success (which would burn through max_attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn one_subjects_failures_keep_their_own_schedule_while_others_flow() {
    let setup = Setup::new().await;
    let nats = NatsServer::start().await;
    nats.create_stream("MSG", &["tg.main.message.*"]).await;
    let config = js_config(
        &setup,
        &nats,
        "",
        "",
        &js_forward("stream", "tg.{bot}.{kind}.{chat}", "")
            .replace("retry_delay = \"100ms\"", "retry_delay = \"2s\"")
            .replace("retry_max_delay = \"500ms\"", "retry_max_delay = \"10s\""),
    );
    let mut relay = setup.spawn(&config);
    setup.api.push_raw(
        TOKEN,
        1,
        r#"{"update_id":1,"callback_query":{"id":"q","from":{"id":9,"is_bot":false,"first_name":"a"},"chat_instance":"c","data":"d","message":{"message_id":1,"date":1,"chat":{"id":9,"type":"private"}}}}"#,
    );
    relay.wait_log("no stream listens on", LONG).await;
    // 40 rounds of 10 messages over 2 s, each round delivered before the next.
    for round in 0..40 {
        for i in 0..10 {
            let id = 2 + round * 10 + i;
            setup.api.push_message(TOKEN, id, 100 + i, "m");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.read_all("MSG", 400, Duration::from_secs(20)).await;
    let retries = relay.logs().matches("no stream listens on").count();
    relay.stop().await;
    // Its own schedule: at once, then 2 s doubling: at most 3 or 4 tries in
    // these ~2-3 s. Released by every success, it would be dozens.
    assert!(
        retries <= 5,
        "the callback query was tried {retries} times while messages flowed"
    );
}
