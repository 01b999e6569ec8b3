//! Replays and resends from the update history (issue 18): what reaches
//! the backend (original bytes, original `webhook-id`, valid signature,
//! `x-pollhook-replay`), in which order next to live traffic, with which
//! filters; replays of 100,000 updates (memory, a SIGKILL midway);
//! `start_from = "history"`; the commands on a stopped daemon's state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::rig::*;

/// What one backend has been sent so far, read in steps: each step expects
/// exactly the next copies, so a copy queued by mistake in an earlier step
/// shows up as a wrong id in a later one.
struct Copies<'a> {
    name: &'static str,
    backend: &'a Backend,
    /// The `webhook-id` each update had on its original delivery here.
    original: HashMap<i64, String>,
    /// How many requests earlier steps accounted for.
    next: usize,
}

impl<'a> Copies<'a> {
    /// Reads the `n` original deliveries: none carries the replay header.
    async fn originals(name: &'static str, backend: &'a Backend, n: usize) -> Copies<'a> {
        let got = backend.wait_accepted(n, LONG).await;
        let mut original = HashMap::new();
        for r in &got {
            assert!(
                !r.is_replay(),
                "{name}: an original delivery has x-pollhook-replay: {:?}",
                r.header("x-pollhook-replay")
            );
            original.insert(update_id(r), r.webhook_id().to_string());
        }
        assert_eq!(backend.received().len(), n, "{name}: no retries here");
        Copies {
            name,
            backend,
            original,
            next: n,
        }
    }

    /// Waits for the next `ids.len()` requests and checks they are replayed
    /// copies of `ids`, each chat's in the order given (chats are delivered
    /// in parallel, so only per chat is the queue's order kept): the exact
    /// original bytes, the original webhook-id, a signature the official
    /// verifier accepts, and `x-pollhook-replay` saying when they were
    /// queued (not before `since_secs`).
    async fn expect(&mut self, ids: &[i64], raws: &BTreeMap<i64, String>, since_secs: u64) {
        let want = self.next + ids.len();
        let got = self.backend.wait_received(want, LONG).await;
        let copies = &got[self.next..want];
        let got_ids: Vec<i64> = copies.iter().map(update_id).collect();
        let (mut sorted_got, mut sorted_want) = (got_ids.clone(), ids.to_vec());
        sorted_got.sort();
        sorted_want.sort();
        assert_eq!(
            sorted_got, sorted_want,
            "{}: the copies sent (in arrival order {got_ids:?})",
            self.name
        );
        let per_chat = |ids: &[i64]| -> BTreeMap<String, Vec<i64>> {
            let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for id in ids {
                out.entry(chat_of(&raws[id])).or_default().push(*id);
            }
            out
        };
        assert_eq!(
            per_chat(&got_ids),
            per_chat(ids),
            "{}: each chat's copies in order",
            self.name
        );
        let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
        for r in copies {
            let id = update_id(r);
            assert_eq!(
                r.body_str(),
                raws[&id],
                "{}: update {id}'s bytes",
                self.name
            );
            assert_eq!(
                r.webhook_id(),
                self.original[&id],
                "{}: update {id} keeps its webhook-id",
                self.name
            );
            verifier
                .verify(&r.body, &r.headers)
                .unwrap_or_else(|e| panic!("{}: update {id}'s signature: {e:?}", self.name));
            let at = r.replayed_at().unwrap_or_else(|| {
                panic!("{}: update {id}'s copy has no x-pollhook-replay", self.name)
            });
            assert!(
                at >= since_secs && at <= now_secs() + 1,
                "{}: x-pollhook-replay {at}, queued after {since_secs}",
                self.name
            );
        }
        self.next = want;
    }
}

/// The chat of an update's JSON: its message's, or its callback query's
/// message's ("" for none).
fn chat_of(raw: &str) -> String {
    let v: Value = serde_json::from_str(raw).expect("JSON");
    let inner = v
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| *k != "update_id"))
        .map(|(_, inner)| inner.clone())
        .unwrap_or_default();
    let chat = if inner["chat"].is_object() {
        &inner["chat"]["id"]
    } else {
        &inner["message"]["chat"]["id"]
    };
    chat.to_string()
}

/// `pollhook <args>`, which must succeed; its stdout.
async fn ok(args: &[&str]) -> String {
    let (code, out, err) = pollhook_code(args).await;
    assert_eq!(code, 0, "pollhook {args:?}:\nstdout: {out}\nstderr: {err}");
    out
}

/// Replays through the commands and the API, with every filter; resends;
/// dry runs that queue nothing; the replay's lines, `/history/replays`,
/// and `pollhook_replayed_total`. Each step expects exactly its copies;
/// the replay counter and the copies received add up at the end, so no
/// copy was queued by mistake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_resends_carry_the_original_bytes_and_webhook_id() {
    let setup = Setup::new().await;
    let audit_backend = Backend::start().await;
    let port = free_port();
    let admin = Admin { port };
    let config = history_config(
        &setup,
        port,
        "",
        &[
            forward_table("app", &setup.backend.url(), ""),
            forward_table("audit", &audit_backend.url(), ""),
        ],
    );
    let cfg = config.to_str().unwrap();
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;

    let mut raws = BTreeMap::new();
    raws.insert(1, setup.api.push_message(TOKEN, 1, 100, "one"));
    // Odd spacing and an escape: the copy must be these bytes, not a
    // re-serialisation.
    let two = r#"{"update_id":2,  "callback_query" : {"id":"cb2","from":{"id":7,"is_bot":false,"first_name":"A"},"message":{"message_id":9,"date":1,"chat":{"id":200,"type":"private"}},"data":"caf\u00e9"}}"#;
    setup.api.push_raw(TOKEN, 2, two);
    raws.insert(2, two.to_string());
    raws.insert(3, setup.api.push_message(TOKEN, 3, 100, "three"));
    let four = r#"{"update_id":4,"edited_message":{"message_id":4,"date":1,"edit_date":2,"chat":{"id":300,"type":"private"},"text":"four"}}"#;
    setup.api.push_raw(TOKEN, 4, four);
    raws.insert(4, four.to_string());
    setup.backend.wait_accepted(4, LONG).await;
    audit_backend.wait_accepted(4, LONG).await;
    let boundary = next_second_after(now_ms()).await;
    let at = rfc3339(boundary);
    raws.insert(5, setup.api.push_message(TOKEN, 5, 200, "five"));
    raws.insert(6, setup.api.push_message(TOKEN, 6, 100, "six"));
    let mut app = Copies::originals("app", &setup.backend, 6).await;
    let mut audit = Copies::originals("audit", &audit_backend, 6).await;
    let all = wait_history(admin, "bot=main", &[1, 2, 3, 4, 5, 6]).await;

    // Everything since an hour ago, to every forward, in the original order.
    let t = now_secs();
    let out = ok(&["replay", "--config", cfg, "--bot", "main", "--since", "1h"]).await;
    // (Which forwards: a_replay_without_a_forward_goes_to_the_forwards_each_update_went_to.)
    assert!(
        out.lines()
            .last()
            .unwrap_or("")
            .starts_with("replayed 6 updates of bot main to "),
        "{out}"
    );
    app.expect(&[1, 2, 3, 4, 5, 6], &raws, t).await;
    audit.expect(&[1, 2, 3, 4, 5, 6], &raws, t).await;

    // One forward, one kind.
    let t = now_secs();
    let out = ok(&[
        "replay",
        "--config",
        cfg,
        "--bot",
        "main",
        "--since",
        "1h",
        "--forward",
        "audit",
        "--kind",
        "message",
    ])
    .await;
    assert!(
        out.contains("replayed 4 updates of bot main to audit"),
        "{out}"
    );
    audit.expect(&[1, 3, 5, 6], &raws, t).await;

    // One chat.
    let t = now_secs();
    let out = ok(&[
        "replay", "--config", cfg, "--bot", "main", "--since", "1h", "--chat", "100",
    ])
    .await;
    assert!(out.contains("replayed 3 updates"), "{out}");
    app.expect(&[1, 3, 6], &raws, t).await;
    audit.expect(&[1, 3, 6], &raws, t).await;

    // A window: until, then since, given in RFC 3339.
    let t = now_secs();
    let out = ok(&[
        "replay", "--config", cfg, "--bot", "main", "--since", "1h", "--until", &at,
    ])
    .await;
    assert!(out.contains("replayed 4 updates"), "until {at}: {out}");
    app.expect(&[1, 2, 3, 4], &raws, t).await;
    audit.expect(&[1, 2, 3, 4], &raws, t).await;
    let out = ok(&["replay", "--config", cfg, "--bot", "main", "--since", &at]).await;
    assert!(out.contains("replayed 2 updates"), "since {at}: {out}");
    app.expect(&[5, 6], &raws, t).await;
    audit.expect(&[5, 6], &raws, t).await;

    // Dry runs count and queue nothing (the next step's exact copies prove
    // it).
    let out = ok(&[
        "replay",
        "--config",
        cfg,
        "--bot",
        "main",
        "--since",
        "1h",
        "--dry-run",
    ])
    .await;
    assert!(
        out.contains("would replay 6 updates of bot main to "),
        "{out}"
    );
    for kinds in ["message 4", "callback_query 1", "edited_message 1"] {
        assert!(out.contains(kinds), "{kinds}: {out}");
    }
    let lines = admin
        .replay(json!({"bot": "main", "since": "1h", "dry_run": true}))
        .await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let dry = &lines[0];
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["matched"], 6, "{dry}");
    assert_eq!(
        dry["kinds"],
        json!({"message": 4, "callback_query": 1, "edited_message": 1})
    );
    assert_eq!(dry["first_at"], all[0]["received_at"]);
    assert_eq!(dry["last_at"], all[5]["received_at"]);
    let lines = admin
        .replay(json!({"bot": "main", "since": "1h", "forward": "audit", "kind": "message", "dry_run": true}))
        .await;
    assert_eq!(lines[0]["matched"], 4, "{lines:#?}");
    assert_eq!(lines[0]["forwards"], json!(["audit"]));

    // The API: lines, the last one done.
    let t = now_secs();
    let lines = admin
        .replay(json!({"bot": "main", "since": "1h", "forward": "app", "kind": "callback_query"}))
        .await;
    let last = lines.last().expect("a line");
    assert_eq!(last["done"], true, "{lines:#?}");
    assert_eq!(last["matched"], 1, "{last}");
    assert_eq!(last["queued"], 1, "{last}");
    assert_eq!(last["forwards"], json!(["app"]));
    assert!(!last["replay"].is_null(), "the replay's id: {last}");
    for progress in &lines[..lines.len() - 1] {
        for field in [
            "replay",
            "matched",
            "queued",
            "scanned_bytes",
            "total_bytes",
        ] {
            assert!(!progress[field].is_null(), "{field} in {progress}");
        }
    }
    app.expect(&[2], &raws, t).await;

    // Resends: to every forward, to one, and unknown ids.
    let out = ok(&["resend", "--config", cfg, "--bot", "main", "2"]).await;
    assert!(out.contains("resent update 2 of bot main to "), "{out}");
    app.expect(&[2], &raws, t).await;
    audit.expect(&[2], &raws, t).await;
    let out = ok(&[
        "resend",
        "--config",
        cfg,
        "--bot",
        "main",
        "4",
        "--forward",
        "audit",
    ])
    .await;
    assert!(
        out.contains("resent update 4 of bot main to audit"),
        "{out}"
    );
    audit.expect(&[4], &raws, t).await;
    let resent = admin
        .resend(json!({"bot": "main", "update_id": 5, "forward": "app"}))
        .await;
    assert_eq!(resent, json!({"queued": 1, "forwards": ["app"]}));
    app.expect(&[5], &raws, t).await;
    let (code, out, err) =
        pollhook_code(&["resend", "--config", cfg, "--bot", "main", "999"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("999"), "{err}");
    // Last: a copy to both, behind anything queued by mistake above.
    let resent = admin.resend(json!({"bot": "main", "update_id": 6})).await;
    // queued counts updates, as a replay's does.
    assert_eq!(resent, json!({"queued": 1, "forwards": ["app", "audit"]}));
    app.expect(&[6], &raws, t).await;
    audit.expect(&[6], &raws, t).await;

    // The replays this run: all done, every match queued.
    let replays = admin.replays().await;
    assert!(replays.len() >= 6, "{replays:#?}");
    for r in &replays {
        assert_eq!(r["done"], true, "{r}");
        assert_eq!(r["queued"], r["matched"], "{r}");
        assert_eq!(r["bot"], "main", "{r}");
    }

    // The history shows the replayed deliveries as replays.
    let shown = admin.show(2).await;
    for name in ["app", "audit"] {
        assert!(
            shown["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["forward"] == name && d["replay"] == true),
            "{name}: {shown:#}"
        );
    }

    // Counted: replays and resends per forward, and nothing else arrives.
    let metrics = admin.metrics().await;
    for (name, backend, copies) in [("app", app.backend, 19), ("audit", audit.backend, 22)] {
        let counted = metric_sum(
            &metrics,
            "pollhook_replayed_total",
            &["bot=\"main\"", &format!("forward=\"{name}\"")],
        );
        assert_eq!(counted, copies as f64, "{name}: {metrics}");
        let replays = || backend.received().iter().filter(|r| r.is_replay()).count();
        wait_until(&format!("{name}: every copy counted"), LONG, || {
            replays() >= copies
        })
        .await;
        assert_eq!(replays(), copies, "{name}: no more copies than queued");
    }
    assert!(metric_sum(&metrics, "pollhook_history_bytes", &["bot=\"main\""]) > 0.0);
    assert_no_token(&relay.logs());
}

/// Live updates keep coming over 10 chats while a replay of 1,000 earlier
/// ones is queued, and the backend is slow enough for a queue to build up.
/// Per chat the backend sees queue order: replayed copies in increasing
/// original order, live ones in increasing order, and a live update polled
/// after the replay finished queueing after every replayed copy of its chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_keeps_per_chat_order_with_live_traffic() {
    const EARLIER: i64 = 1_000;
    const CHATS: i64 = 10;
    let setup = Setup::new().await;
    let port = free_port();
    let admin = Admin { port };
    let config = history_config(
        &setup,
        port,
        "",
        &[forward_table(
            "app",
            &setup.backend.url(),
            "max_in_flight = 16",
        )],
    );
    let mut relay = Relay::spawn(&config, &[("RUST_LOG", "info")]);
    relay.wait_log("admin API on", LONG).await;
    for id in 1..=EARLIER {
        setup.api.push_message(TOKEN, id, id % CHATS, "earlier");
    }
    setup.backend.wait_accepted(EARLIER as usize, LONG).await;
    eventually(
        "the history to hold every earlier update",
        LONG,
        async || {
            let dry = admin
                .replay(json!({"bot": "main", "since": "1h", "dry_run": true}))
                .await;
            (dry[0]["matched"] == EARLIER).then_some(())
        },
    )
    .await;

    // From now on 5 ms per request: 100 copies per chat take 0.5 s at least.
    setup
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(5)));
    let pushed: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (api, pushed, stop) = (setup.api.clone(), pushed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut id = EARLIER + 1;
            while !stop.load(Ordering::SeqCst) {
                api.push_message(TOKEN, id, id % CHATS, "live");
                pushed.lock().unwrap().push((id, Instant::now()));
                id += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stream = admin
        .replay_stream(json!({"bot": "main", "since": "1h"}))
        .await;
    let (done_at, done) = stream.done().await;
    let matched = done["matched"].as_i64().unwrap();
    assert_eq!(done["queued"], matched, "{done}");
    assert!(matched >= EARLIER, "{done}");
    let copies_at_done = setup
        .backend
        .received()
        .iter()
        .filter(|r| r.is_replay())
        .count();
    // Live traffic for a while after the replay was queued.
    wait_until("20 live updates after the replay was queued", LONG, || {
        let pushed = pushed.lock().unwrap();
        pushed.iter().filter(|(_, at)| *at > done_at).count() >= 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let pushed = pushed.lock().unwrap().clone();
    let live = pushed.len();
    let total = EARLIER as usize + matched as usize + live;
    let got = setup.backend.wait_accepted(total, LONG).await;
    assert_eq!(got.len(), total, "nothing more");

    let after_done: HashSet<i64> = pushed
        .iter()
        .filter(|(_, at)| *at > done_at)
        .map(|(id, _)| *id)
        .collect();
    println!(
        "per-chat order: {matched} replayed, {live} live ({} pushed after the replay was queued); {copies_at_done} copies delivered when it was",
        after_done.len()
    );
    assert!(
        copies_at_done < matched as usize / 2,
        "the replay's copies were still queued when it was done ({copies_at_done} of {matched} delivered)"
    );
    assert!(after_done.len() >= 10, "{} live after", after_done.len());

    // The webhook-id each update had on its original delivery.
    let webhook_ids: HashMap<i64, String> = got
        .iter()
        .filter(|r| !r.is_replay())
        .map(|r| (update_id(r), r.webhook_id().to_string()))
        .collect();
    let tail = &got[EARLIER as usize..];
    let mut by_chat: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in tail {
        by_chat.entry(chat_id(r)).or_default().push(r);
    }
    for (chat, rs) in &by_chat {
        let replayed: Vec<i64> = rs
            .iter()
            .filter(|r| r.is_replay())
            .map(|r| update_id(r))
            .collect();
        let live: Vec<i64> = rs
            .iter()
            .filter(|r| !r.is_replay())
            .map(|r| update_id(r))
            .collect();
        let increasing = |ids: &[i64]| ids.windows(2).all(|w| w[0] < w[1]);
        assert!(
            increasing(&replayed),
            "chat {chat}: replayed copies {replayed:?}"
        );
        assert!(increasing(&live), "chat {chat}: live updates {live:?}");
        let last_copy = rs.iter().rposition(|r| r.is_replay());
        for (i, r) in rs.iter().enumerate() {
            let id = update_id(r);
            if !r.is_replay() && after_done.contains(&id) {
                assert!(
                    last_copy.is_none_or(|last| i > last),
                    "chat {chat}: live update {id}, polled after the replay was queued, came before a replayed copy: {:?}",
                    rs.iter().map(|r| (update_id(r), r.is_replay())).collect::<Vec<_>>()
                );
            }
            if r.is_replay() {
                assert_eq!(r.webhook_id(), webhook_ids[&id], "update {id}");
            }
        }
    }
    let replayed: HashSet<i64> = tail
        .iter()
        .filter(|r| r.is_replay())
        .map(update_id)
        .collect();
    assert!(
        (1..=EARLIER).all(|id| replayed.contains(&id)),
        "every earlier update was replayed"
    );
}

/// A small update of kind message (odd ids) or edited_message (even ids)
/// over 100 chats.
fn small_update(id: i64) -> Bytes {
    let kind = if id % 2 == 0 {
        "edited_message"
    } else {
        "message"
    };
    let chat = id % 100;
    Bytes::from(format!(
        r#"{{"update_id":{id},"{kind}":{{"message_id":{id},"date":0,"chat":{{"id":{chat},"type":"private"}},"text":"u{id}"}}}}"#
    ))
}

/// Peak VmRSS of `pid` while `running`, sampled every 10 ms.
fn sample_rss(pid: u32, running: Arc<AtomicBool>) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let into = peak.clone();
    let task = tokio::task::spawn_blocking(move || {
        while running.load(Ordering::SeqCst) {
            into.fetch_max(vm_kib(pid, "VmRSS"), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (peak, task)
}

/// 100,000 updates in the history, replayed at once through the API:
/// progress lines with `queued` growing, then done with every one queued
/// and re-delivered, and pollhook's resident memory bounded meanwhile.
/// Then a replay of half of them is SIGKILLed while it queues: started
/// again, pollhook resumes it to the end, and every update of it reaches
/// the backend once.
///
/// To spend the CI budget on the replays, the updates are first taken by a
/// forward whose backend never answers (100,000 jobs wait in its queue,
/// costing nothing), and replayed to a forward "mirror" added afterwards
/// (a forward that never had them: they get fresh webhook-ids). The
/// original deliveries would double the test's time and prove nothing
/// about replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_100k_updates_is_bounded_in_memory_and_survives_sigkill() {
    const N: i64 = 100_000;
    let api = FakeApi::start(Flavor::Telegram).await;
    api.add_bot(TOKEN, 1, "test_bot");
    let sink = Tally::start().await;
    sink.hold(true);
    let mirror = Tally::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = Admin { port };
    let head = format!(
        "state_dir = \"state\"\nshutdown_timeout = \"1s\"\ncache_mb = 8\n{}\n[[bot]]\nname = \"main\"\napi_url = \"{}\"\ntoken = \"{TOKEN}\"\npoll_timeout = \"2s\"\n{}",
        admin_with_token(port),
        api.url_template(),
        forward_table("sink", &sink.url(), "max_in_flight = 1"),
    );
    let config = write_config(dir.path(), &head);
    let env = [("RUST_LOG", "info")];

    // Ingest: batches of 2,000.
    api.serve_batches_of(TOKEN, 2_000);
    api.push_many(TOKEN, (1..=N).map(|id| (id, small_update(id))));
    let started = Instant::now();
    let mut relay = Relay::spawn(&config, &env);
    relay.wait_log("admin API on", LONG).await;
    let fresh = vm_kib(relay.pid(), "VmRSS");
    api.wait_confirmed(TOKEN, N, LONG).await;
    eventually("the history to hold all 100,000", LONG, async || {
        let dry = admin
            .replay(json!({"bot": "main", "since": "1h", "dry_run": true}))
            .await;
        (dry[0]["matched"] == N)
            .then_some(())
            .ok_or(dry[0].to_string())
    })
    .await;
    let ingest = started.elapsed();
    let ingested = vm_kib(relay.pid(), "VmRSS");
    relay.sigterm();
    relay.wait_exit(LONG).await.expect("pollhook stops");
    write_config(
        dir.path(),
        &format!(
            "{head}\n{}",
            forward_table("mirror", &mirror.url(), "max_in_flight = 16")
        ),
    );
    let mut relay = Relay::spawn(&config, &env);
    relay.wait_log_count("admin API on", 2, LONG).await;
    let metrics = admin.metrics().await;
    let history_bytes = metric_sum(&metrics, "pollhook_history_bytes", &["bot=\"main\""]);

    // The replay of all of them, memory sampled throughout.
    let baseline = vm_kib(relay.pid(), "VmRSS");
    let running = Arc::new(AtomicBool::new(true));
    let (peak, sampler) = sample_rss(relay.pid(), running.clone());
    let started = Instant::now();
    let stream = admin
        .replay_stream(json!({"bot": "main", "since": "1h", "forward": "mirror"}))
        .await;
    let (done_at, done) = stream.done().await;
    let queueing = done_at - started;
    let peak_queueing = peak.load(Ordering::SeqCst);
    mirror
        .wait(
            "every update re-delivered",
            Duration::from_secs(120),
            |c| c.accepted.len() >= N as usize,
            |c| format!("{} accepted", c.accepted.len()),
        )
        .await;
    let delivering = started.elapsed();
    running.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    let lines = stream.lines();
    let progress: Vec<&Value> = lines.iter().filter(|l| l["done"] != true).collect();
    println!(
        "100k: ingest {ingest:?} (RSS {fresh} KiB before, {ingested} KiB after); history {history_bytes} bytes; replay queued in {queueing:?}, delivered in {delivering:?}; {} progress lines; RSS {baseline} KiB before, peak {peak_queueing} KiB while queueing, {peak} KiB till delivered (+{} KiB)",
        progress.len(),
        peak.saturating_sub(baseline)
    );
    assert_eq!(done["matched"], N, "{done}");
    assert_eq!(done["queued"], N, "{done}");
    assert_eq!(done["forwards"], json!(["mirror"]));
    assert!(progress.len() >= 2, "several progress lines: {lines:?}");
    let queued: Vec<i64> = progress
        .iter()
        .map(|p| p["queued"].as_i64().unwrap())
        .collect();
    assert!(
        queued.windows(2).all(|w| w[0] < w[1]) && *queued.last().unwrap() <= N,
        "queued grows: {queued:?}"
    );
    for p in &progress {
        assert_eq!(p["replay"], done["replay"], "{p}");
        let (scanned, total) = (p["scanned_bytes"].as_u64(), p["total_bytes"].as_u64());
        assert!(
            scanned.zip(total).is_some_and(|(s, t)| s <= t),
            "scanned_bytes <= total_bytes: {p}"
        );
    }
    let (replays, distinct) = mirror.with(|c| {
        let ids: HashSet<i64> = c.accepted_replays().map(|h| h.update_id).collect();
        (c.accepted_replays().count(), ids.len())
    });
    assert_eq!(distinct, N as usize, "every update re-delivered");
    assert_eq!(replays, N as usize, "once each");
    // The bound. Queueing 100,000 jobs costs memory however they come (sled
    // and the delivery side grow with the queue): the ingest, which queued
    // as many for "sink", grew pollhook by `queue_cost` in this very run.
    // The replay may cost that plus 16 MiB, less than what holding its
    // matches would take (the history's 16.8 MB of payload alone, before
    // any per-record overhead); and never 64 MiB or more.
    let growth = peak.saturating_sub(baseline);
    let queue_cost = ingested.saturating_sub(fresh);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "100k: RSS growth during the replay {:.1} MiB; the ingest of as many jobs grew it by {:.1} MiB",
        mib(growth),
        mib(queue_cost)
    );
    assert!(
        growth <= queue_cost + 16 * 1024 && growth < 64 * 1024,
        "pollhook grew by {:.1} MiB while replaying {N} updates ({history_bytes} bytes of history); queueing as many by ingest grew it by {:.1} MiB",
        mib(growth),
        mib(queue_cost)
    );

    // A replay of the 50,000 edited messages, SIGKILLed while it queues.
    // The backend holds every request meanwhile, so whatever arrives after
    // the restart was queued once or twice, never delivered before.
    mirror.hold(true);
    let before = mirror.with(|c| c.accepted.len());
    let stream = admin
        .replay_stream(
            json!({"bot": "main", "since": "1h", "forward": "mirror", "kind": "edited_message"}),
        )
        .await;
    // Killed at the first line that shows some queued (or the done line,
    // should it come first).
    let (_, first) = stream
        .wait_line("the replay's first progress", |l| {
            l["done"] == true || l["queued"].as_i64().is_some_and(|q| q > 0)
        })
        .await;
    relay.sigkill();
    let replay_id = first["replay"].clone();
    let midway = first["done"] != true;
    let progress_at_kill = format!("{first}");
    drop(stream);
    mirror.hold(false);
    let mut relay = Relay::spawn(&config, &env);
    relay.wait_log_count("admin API on", 3, LONG).await;
    // This run has one replay: the one resumed (the key of its id is
    // checked in a_replay_without_a_forward_goes_to_the_forwards_each_update_went_to).
    let resumed = eventually(
        "the replay to resume and finish",
        LONG,
        async || match admin.replays().await.as_slice() {
            [r] if r["done"] == true => Ok(r.clone()),
            other => Err(format!("{other:#?}")),
        },
    )
    .await;
    assert!(
        resumed["replay"] == replay_id,
        "the replay {replay_id} resumed: {resumed}"
    );
    assert_eq!(resumed["matched"], N / 2, "{resumed}");
    assert_eq!(resumed["queued"], N / 2, "{resumed}");
    mirror
        .wait(
            "every edited message re-delivered",
            Duration::from_secs(120),
            // Counting distinct ids only once enough requests came: done on
            // every request, it is quadratic and holds the backend's lock
            // (that slowed the relay to a few hundred a second).
            |c| {
                let after = &c.accepted[before..];
                after.len() >= (N / 2) as usize
                    && after
                        .iter()
                        .map(|h| h.update_id)
                        .collect::<HashSet<_>>()
                        .len()
                        >= (N / 2) as usize
            },
            |c| format!("{} accepted since", c.accepted.len() - before),
        )
        .await;
    let (copies, distinct, originals, odd) = mirror.with(|c| {
        let after = &c.accepted[before..];
        let ids: HashSet<i64> = after.iter().map(|h| h.update_id).collect();
        (
            after.len(),
            ids.len(),
            after.iter().filter(|h| !h.replay).count(),
            after.iter().filter(|h| h.update_id % 2 == 1).count(),
        )
    });
    println!(
        "SIGKILL during a replay of {} (midway: {midway}): killed at {progress_at_kill}; resumed: {resumed}; {copies} copies of {distinct} updates delivered after the restart ({} duplicates)",
        N / 2,
        copies - distinct
    );
    assert_eq!(distinct, (N / 2) as usize);
    assert_eq!(originals, 0, "only replayed copies");
    assert_eq!(odd, 0, "only edited messages");
    assert_eq!(copies, distinct, "no update of the replay was queued twice");
}

/// `start_from = "history"`: a forward added later gets the retained
/// history first, in order, then live updates; one added with the default
/// gets only live ones; a restart does not replay the history again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_starting_from_history_gets_it_before_live_traffic_once() {
    let setup = Setup::new().await;
    let (b, c) = (Backend::start().await, Backend::start().await);
    let port = free_port();
    let admin = Admin { port };
    let app = forward_table("app", &setup.backend.url(), "");
    let config = history_config(&setup, port, "", std::slice::from_ref(&app));
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    for id in 1..=50 {
        setup.api.push_message(TOKEN, id, id % 5, "before b");
    }
    setup.backend.wait_accepted(50, LONG).await;
    wait_history(admin, "bot=main", &(1..=50).collect::<Vec<_>>()).await;
    relay.stop().await;

    // Live updates already wait at the platform when pollhook starts.
    for id in 51..=60 {
        setup.api.push_message(TOKEN, id, id % 5, "live");
    }
    let config = history_config(
        &setup,
        port,
        "",
        &[
            app.clone(),
            forward_table("b", &b.url(), "start_from = \"history\""),
            forward_table("c", &c.url(), ""),
        ],
    );
    let mut relay = setup.spawn(&config);
    let got_b = b.wait_accepted(60, LONG).await;
    let got_c = c.wait_accepted(10, LONG).await;
    // Per chat (chats go in parallel): the history in order, then live.
    let wanted: BTreeMap<String, Vec<i64>> = per_chat(&setup.backend.wait_accepted(60, LONG).await);
    assert_eq!(
        per_chat(&got_b),
        wanted,
        "b: the history in order, then live"
    );
    assert_eq!(got_c.len(), 10);
    assert_eq!(
        per_chat(&got_c),
        wanted
            .iter()
            .map(|(chat, ids)| (
                chat.clone(),
                ids.iter().copied().filter(|&id| id > 50).collect()
            ))
            .collect::<BTreeMap<_, Vec<_>>>(),
        "c: live only, in order"
    );
    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    for r in &got_b {
        verifier.verify(&r.body, &r.headers).expect("signed");
    }

    relay.stop().await;
    let mut relay = setup.spawn(&config);
    relay.wait_log_count("admin API on", 3, LONG).await;
    setup.api.push_message(TOKEN, 61, 1, "after the restart");
    setup.api.push_message(TOKEN, 62, 2, "after the restart");
    let got_b = b.wait_accepted(62, LONG).await;
    c.wait_accepted(12, LONG).await;
    assert_eq!(
        distinct_ids(&got_b[60..]),
        HashSet::from([61, 62]),
        "b: no second replay of the history after a restart"
    );
    setup.backend.wait_accepted(62, LONG).await;
    assert_eq!(
        b.received().len(),
        62,
        "{:?}",
        b.received().iter().map(update_id).collect::<Vec<_>>()
    );
    relay.stop().await;
}

/// With pollhook stopped, `history`, `show`, `replay` and `resend` work on
/// its state directory; started again, it delivers what they queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_work_on_a_stopped_daemons_state_directory() {
    let setup = Setup::new().await;
    let port = free_port();
    let admin = Admin { port };
    let config = history_config(
        &setup,
        port,
        "",
        &[forward_table(
            "app",
            &setup.backend.url(),
            "max_in_flight = 1",
        )],
    );
    let cfg = config.to_str().unwrap();
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let mut raws = BTreeMap::new();
    for id in 1..=5 {
        raws.insert(id, setup.api.push_message(TOKEN, id, 100 + id % 2, "kept"));
    }
    let mut app = Copies::originals("app", &setup.backend, 5).await;
    let lines = wait_history(admin, "bot=main", &[1, 2, 3, 4, 5]).await;
    // Every delivery is in the history before pollhook stops.
    eventually("the deliveries in the history", LONG, async || {
        let lines = admin.history("bot=main").await;
        lines
            .iter()
            .all(|l| l["forwards"]["app"]["result"] == "delivered")
    })
    .await;
    relay.stop().await;
    wait_for_sled_to_let_go(&setup.state_dir()).await;
    assert!(admin_is_gone(port).await);

    let out = ok(&["history", "--config", cfg, "--bot", "main", "--json"]).await;
    let listed = ndjson(&out);
    assert_eq!(ids_of(&listed), [1, 2, 3, 4, 5], "{out}");
    assert!(
        listed
            .iter()
            .all(|l| l["forwards"]["app"]["result"] == "delivered"),
        "{out}"
    );
    assert_eq!(listed[0]["received_at"], lines[0]["received_at"]);
    let state = setup.state_dir();
    let out = ok(&[
        "history",
        "--state-dir",
        state.to_str().unwrap(),
        "--bot",
        "main",
        "--json",
    ])
    .await;
    assert_eq!(ids_of(&ndjson(&out)), [1, 2, 3, 4, 5], "--state-dir: {out}");
    let out = ok(&["history", "--config", cfg, "--bot", "main"]).await;
    assert_eq!(out.lines().count(), 6, "{out}");
    assert!(out.contains("app=200"), "{out}");
    let out = ok(&["show", "--config", cfg, "--bot", "main", "3", "--json"]).await;
    let shown: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        shown["update"],
        serde_json::from_str::<Value>(&raws[&3]).unwrap()
    );
    assert_eq!(shown["deliveries"][0]["result"], "delivered", "{shown}");
    let out = ok(&[
        "replay",
        "--config",
        cfg,
        "--bot",
        "main",
        "--since",
        "1h",
        "--dry-run",
    ])
    .await;
    assert!(
        out.contains("would replay 5 updates of bot main to "),
        "{out}"
    );
    let t = now_secs();
    let out = ok(&["replay", "--config", cfg, "--bot", "main", "--since", "1h"]).await;
    assert!(out.contains("replayed 5 updates of bot main to "), "{out}");
    let out = ok(&["resend", "--config", cfg, "--bot", "main", "2"]).await;
    assert!(out.contains("resent update 2 of bot main to app"), "{out}");
    assert_eq!(
        setup.backend.received().len(),
        5,
        "nothing is sent while stopped"
    );

    let _relay = setup.spawn(&config);
    app.expect(&[1, 2, 3, 4, 5, 2], &raws, t).await;
}

/// True once nothing answers on the admin port.
async fn admin_is_gone(port: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err()
}

/// Without `forward`, a replay (and a resend) sends each update again to
/// the forwards it went to, with the webhook-ids it had there; a forward
/// added after the updates came gets nothing unless it is named, and then
/// fresh webhook-ids. The lines, `/history/replays` and the commands say
/// which forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_without_a_forward_goes_to_the_forwards_each_update_went_to() {
    let setup = Setup::new().await;
    let late = Backend::start().await;
    let port = free_port();
    let admin = Admin { port };
    let app = forward_table("app", &setup.backend.url(), "");
    let config = history_config(&setup, port, "", std::slice::from_ref(&app));
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let mut raws = BTreeMap::new();
    for id in 1..=3 {
        raws.insert(id, setup.api.push_message(TOKEN, id, 7, "before late"));
    }
    let mut to_app = Copies::originals("app", &setup.backend, 3).await;
    wait_history(admin, "bot=main", &[1, 2, 3]).await;
    relay.stop().await;
    let config = history_config(
        &setup,
        port,
        "",
        &[app, forward_table("late", &late.url(), "")],
    );
    let cfg = config.to_str().unwrap();
    let mut relay = setup.spawn(&config);
    relay.wait_log_count("admin API on", 2, LONG).await;

    let t = now_secs();
    let lines = admin.replay(json!({"bot": "main", "since": "1h"})).await;
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true, "{lines:#?}");
    assert_eq!(done["matched"], 3, "{done}");
    assert_eq!(done["queued"], 3, "{done}");
    assert_eq!(done["forwards"], json!([]), "each update's own: {done}");
    let listed = admin.replays().await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["replay"], done["replay"], "{listed:#?}");
    to_app.expect(&[1, 2, 3], &raws, t).await;

    // Named, the late forward gets them, with ids of its own. Had the
    // replay above sent it any, it would now hold more than these three.
    let lines = admin
        .replay(json!({"bot": "main", "since": "1h", "forward": "late"}))
        .await;
    let done = lines.last().unwrap();
    assert_eq!(done["forwards"], json!(["late"]), "{done}");
    let got = late.wait_received(3, LONG).await;
    assert_eq!(got.iter().map(update_id).collect::<Vec<_>>(), [1, 2, 3]);
    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    for r in &got {
        assert!(r.is_replay());
        assert_eq!(r.body_str(), raws[&update_id(r)]);
        verifier.verify(&r.body, &r.headers).expect("signed");
        assert_ne!(r.webhook_id(), to_app.original[&update_id(r)]);
    }
    let ids: HashSet<&str> = got.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(ids.len(), 3, "a fresh webhook-id per update");

    let lines = admin
        .replay(json!({"bot": "main", "since": "1h", "dry_run": true}))
        .await;
    assert_eq!(lines[0]["forwards"], json!(["app"]), "{lines:#?}");
    let out = ok(&[
        "replay",
        "--config",
        cfg,
        "--bot",
        "main",
        "--since",
        "1h",
        "--dry-run",
    ])
    .await;
    assert!(
        out.contains("would replay 3 updates of bot main to app"),
        "{out}"
    );
    let t = now_secs();
    let out = ok(&["resend", "--config", cfg, "--bot", "main", "2"]).await;
    assert!(out.contains("resent update 2 of bot main to app"), "{out}");
    to_app.expect(&[2], &raws, t).await;
    let out = ok(&[
        "resend",
        "--config",
        cfg,
        "--bot",
        "main",
        "2",
        "--forward",
        "late",
    ])
    .await;
    assert!(out.contains("resent update 2 of bot main to late"), "{out}");
    let got = late.wait_received(4, LONG).await;
    assert_eq!(
        got.len(),
        4,
        "the resend without --forward sent late nothing"
    );
    assert_eq!(update_id(&got[3]), 2);
    assert!(got[3].is_replay());
}
