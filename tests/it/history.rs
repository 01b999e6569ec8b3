//! The update history (issue 18): what `GET /history`, `GET /history/show`
//! and the `history` / `show` commands report per update and per forward,
//! their filters, and what the history keeps on disk (window, size cap,
//! off).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::rig::*;

fn attempt(r: &Received) -> u32 {
    r.header("x-pollhook-attempt")
        .and_then(|a| a.parse().ok())
        .expect("x-pollhook-attempt")
}

/// What forward `name` shows for update `id` once everything has settled
/// (the scenario of `history_and_show_report_each_forwards_outcome`):
/// (result, status, attempts); None for status means null, and for dead
/// letters it is not checked.
fn expected(name: &str, id: i64) -> (&'static str, Option<Option<u64>>, u64) {
    match (name, id) {
        ("app", _) => ("delivered", Some(Some(200)), 1),
        ("audit", 1) => ("delivered", Some(Some(200)), 3),
        ("audit", 5) => ("dead", None, 1),
        ("audit", 6) => ("failed", Some(Some(502)), 2),
        ("audit", 7) => ("pending", Some(None), 0),
        ("audit", _) => ("delivered", Some(Some(200)), 1),
        _ => unreachable!(),
    }
}

/// Checks every line of the settled history of that scenario.
fn settled(lines: &[Value]) -> Result<(), String> {
    if ids_of(lines) != [1, 2, 3, 4, 5, 6, 7] {
        return Err(format!("not updates 1 to 7, oldest first: {lines:#?}"));
    }
    let kinds = [
        "message",
        "edited_message",
        "callback_query",
        "poll",
        "message",
        "message",
        "message",
    ];
    let chats = [
        Some("100"),
        Some("100"),
        Some("200"),
        None,
        Some("300"),
        Some("400"),
        Some("400"),
    ];
    for (i, line) in lines.iter().enumerate() {
        let id = i as i64 + 1;
        let wrong = |what: &str| Err(format!("update {id}: {what}: {line}"));
        if line["kind"] != kinds[i] {
            return wrong("kind");
        }
        let chat = line["chat"].as_str();
        if chat != chats[i] || (chats[i].is_none() && !line["chat"].is_null()) {
            return wrong("chat");
        }
        if !line["received_at"].is_u64() {
            return wrong("received_at is not ms");
        }
        let forwards = line["forwards"]
            .as_object()
            .ok_or("no forwards object".to_string())?;
        let names: BTreeSet<&str> = forwards.keys().map(String::as_str).collect();
        if names != BTreeSet::from(["app", "audit"]) {
            return wrong("forwards are not app and audit");
        }
        for name in ["app", "audit"] {
            let f = &forwards[name];
            let (result, status, attempts) = expected(name, id);
            if f["result"] != result || f["attempts"] != attempts {
                return wrong(&format!(
                    "{name} is not {result} after {attempts} attempt(s)"
                ));
            }
            if let Some(status) = status {
                if f["status"].as_u64() != status || (status.is_none() && !f["status"].is_null()) {
                    return wrong(&format!("{name}'s status is not {status:?}"));
                }
            }
            let at_ok = if result == "pending" {
                f["at"].is_null()
            } else {
                f["at"]
                    .as_u64()
                    .is_some_and(|at| at >= line["received_at"].as_u64().unwrap_or(u64::MAX))
            };
            if !at_ok {
                return wrong(&format!("{name}'s at"));
            }
        }
    }
    Ok(())
}

/// Two forwards on one bot: "app" answers 200; "audit" answers 502 twice
/// then 200 to update 1, 410 to update 5 (a dead letter), 502 twice and
/// then never to update 6 (so it stays failed), and so never sees update 7
/// of the same chat (pending). `/history` reports each update's kind, chat
/// and every forward's latest outcome; its filters select; `pollhook
/// history` prints the same; `/history/show` and `pollhook show` give the
/// update's exact JSON and its deliveries oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_show_report_each_forwards_outcome() {
    let setup = Setup::new().await;
    let audit = Backend::start().await;
    audit.set_script(|r, _| match (update_id(r), attempt(r)) {
        (1, 1..=2) => Reply::Status(502),
        (5, _) => Reply::Status(410),
        (6, 1..=2) => Reply::Status(502),
        (6, _) => Reply::Hang,
        _ => Reply::Ok,
    });
    let port = free_port();
    let admin = Admin { port };
    let config = history_config(
        &setup,
        port,
        "",
        &[
            forward_table("app", &setup.backend.url(), ""),
            forward_table(
                "audit",
                &audit.url(),
                "retry_delay = \"100ms\"\ntimeout = \"120s\"",
            ),
        ],
    );
    let cfg = config.to_str().unwrap();
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;

    let raw1 = setup.api.push_message(TOKEN, 1, 100, "one");
    setup.api.push_raw(
        TOKEN,
        2,
        r#"{"update_id":2,"edited_message":{"message_id":1,"date":1,"edit_date":2,"chat":{"id":100,"type":"private"},"text":"one, edited"}}"#,
    );
    setup.api.push_raw(
        TOKEN,
        3,
        r#"{"update_id":3,"callback_query":{"id":"cb3","from":{"id":7,"is_bot":false,"first_name":"A"},"message":{"message_id":9,"date":1,"chat":{"id":200,"type":"private"}},"data":"x"}}"#,
    );
    setup.api.push_raw(
        TOKEN,
        4,
        r#"{"update_id":4,"poll":{"id":"p4","question":"?","options":[],"total_voter_count":0,"is_closed":true,"is_anonymous":true,"type":"regular","allows_multiple_answers":false}}"#,
    );
    setup.backend.wait_accepted(4, LONG).await;
    // Updates 5 to 7 come in a later second than 1 to 4, so `since` and
    // `until` given to the second tell the two groups apart.
    let boundary = next_second_after(now_ms()).await;
    setup.api.push_message(TOKEN, 5, 300, "five");
    setup.api.push_message(TOKEN, 6, 400, "six");
    setup.api.push_message(TOKEN, 7, 400, "seven");
    setup.backend.wait_accepted(7, LONG).await;
    // audit: 1 three times, 2, 3, 4, 5 once, 6 twice failed and once held.
    eventually("audit to hold update 6's third attempt", LONG, async || {
        let got = audit.received();
        got.iter().any(|r| update_id(r) == 6 && attempt(r) == 3)
    })
    .await;

    // The whole history, once every outcome is in.
    let all = eventually("the history to show every outcome", LONG, async || {
        let lines = admin.history("bot=main").await;
        settled(&lines).map(|()| lines)
    })
    .await;
    for line in &all[..4] {
        assert!(line["received_at"].as_u64().unwrap() < boundary, "{line}");
    }
    for line in &all[4..] {
        assert!(line["received_at"].as_u64().unwrap() >= boundary, "{line}");
    }

    // Filters.
    let ids = async |query: &str| ids_of(&admin.history(&format!("bot=main&{query}")).await);
    assert_eq!(ids("kind=message").await, [1, 5, 6, 7]);
    assert_eq!(ids("kind=poll").await, [4]);
    assert_eq!(ids("chat=100").await, [1, 2]);
    assert_eq!(ids("chat=400&kind=message").await, [6, 7]);
    assert_eq!(ids("since=1h").await, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(ids("since=10m").await, [1, 2, 3, 4, 5, 6, 7]);
    let at = rfc3339(boundary);
    assert_eq!(ids(&format!("since={at}")).await, [5, 6, 7], "since {at}");
    assert_eq!(
        ids(&format!("until={at}")).await,
        [1, 2, 3, 4],
        "until {at}"
    );
    assert_eq!(
        ids(&format!("since={}&until={at}", rfc3339(boundary - 60_000))).await,
        [1, 2, 3, 4]
    );
    let limited = admin.history("bot=main&limit=3").await;
    assert_eq!(
        limited.len(),
        4,
        "3 updates and the more line: {limited:#?}"
    );
    assert_eq!(ids_of(&limited), [1, 2, 3], "the oldest 3");
    assert_eq!(limited[3], serde_json::json!({"more": true}));
    let exact = admin.history("bot=main&limit=7").await;
    assert_eq!(exact, all, "7 fit in limit=7: no more line");
    let few = admin.history("bot=main&kind=message&limit=2").await;
    assert_eq!(ids_of(&few), [1, 5]);
    assert_eq!(few.last().unwrap()["more"], true);

    // `pollhook history`: --json prints the API's lines.
    let (code, out, err) =
        pollhook_code(&["history", "--config", cfg, "--bot", "main", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(ndjson(&out), all, "pollhook history --json");
    let (code, out, err) = pollhook_code(&[
        "history", "--config", cfg, "--bot", "main", "--json", "--kind", "message", "--chat", "400",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids_of(&ndjson(&out)), [6, 7]);
    let (code, out, err) =
        pollhook_code(&["history", "--config", cfg, "--bot", "main", "--since", &at]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        4,
        "a header and updates 5 to 7:\n{out}"
    );

    // Text: a header line, then one line per update with outcome tokens.
    let (code, out, err) = pollhook_code(&["history", "--config", cfg, "--bot", "main"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "a header and 7 updates:\n{out}");
    let line = |id: i64| -> Vec<&str> {
        let found = lines[1..]
            .iter()
            .find(|l| l.split_whitespace().nth(2) == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no line for update {id}:\n{out}"));
        found.split_whitespace().collect()
    };
    for (id, kind, chat, audit_token) in [
        (1, "message", "100", "audit=200"),
        (2, "edited_message", "100", "audit=200"),
        (3, "callback_query", "200", "audit=200"),
        (5, "message", "300", "audit=dead"),
        (6, "message", "400", "audit=failed(502)x2"),
        (7, "message", "400", "audit=pending"),
    ] {
        let words = line(id);
        assert_eq!(words[3], kind, "{words:?}");
        assert_eq!(words[4], chat, "{words:?}");
        assert!(words.contains(&"app=200"), "{words:?}");
        assert!(words.contains(&audit_token), "{words:?}");
    }
    let poll = line(4);
    assert_eq!(poll[3], "poll", "{poll:?}");
    assert!(
        poll.contains(&"app=200") && poll.contains(&"audit=200"),
        "{poll:?}"
    );
    // The time is local: the received_at of update 1, to the second.
    assert!(
        line(1)[0].len() == 10 && line(1)[1].len() == 12,
        "{:?}",
        line(1)
    );

    // show: the exact update and every delivery, oldest first.
    let got = admin
        .get("/history/show?bot=main&update_id=1")
        .await
        .expect(200);
    assert!(
        got.body.contains(&raw1),
        "the update's exact bytes are in the answer:\n{}",
        got.body
    );
    let shown = got.json();
    assert_eq!(shown["bot"], "main");
    assert_eq!(shown["update_id"], 1);
    assert_eq!(shown["kind"], "message");
    assert_eq!(shown["chat"], "100");
    assert_eq!(shown["received_at"], all[0]["received_at"]);
    assert_eq!(
        shown["update"],
        serde_json::from_str::<Value>(&raw1).unwrap()
    );
    let deliveries = shown["deliveries"].as_array().expect("deliveries");
    let of = |name: &str| -> Vec<&Value> {
        deliveries.iter().filter(|d| d["forward"] == name).collect()
    };
    let audited = of("audit");
    let summary: Vec<(String, Value, Value)> = audited
        .iter()
        .map(|d| {
            (
                d["result"].as_str().unwrap_or("?").to_string(),
                d["status"].clone(),
                d["attempt"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("failed".to_string(), 502.into(), 1.into()),
            ("failed".to_string(), 502.into(), 2.into()),
            ("delivered".to_string(), 200.into(), 3.into()),
        ],
        "audit's deliveries of update 1: {deliveries:#?}"
    );
    for d in &audited[..2] {
        assert!(
            d["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a failure says why: {d}"
        );
    }
    let app = of("app");
    assert_eq!(app.len(), 1, "{deliveries:#?}");
    assert_eq!(app[0]["result"], "delivered");
    assert_eq!(app[0]["status"], 200);
    assert_eq!(app[0]["attempt"], 1);
    for d in deliveries {
        assert_eq!(d["replay"], false, "{d}");
        assert!(d["ms"].is_u64(), "a duration in ms: {d}");
        assert!(d["at"].is_u64(), "{d}");
    }
    let times: Vec<u64> = deliveries
        .iter()
        .map(|d| d["at"].as_u64().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first: {deliveries:#?}");
    // Update 7 waits behind 6 on audit: only app's delivery so far.
    let seven = admin.show(7).await;
    let forwards: Vec<&Value> = seven["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["forward"])
        .collect();
    assert_eq!(forwards, ["app"], "{seven}");
    // A dead letter shows as dead.
    let five = admin.show(5).await;
    assert!(
        five["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["forward"] == "audit" && d["result"] == "dead"),
        "{five}"
    );

    // `pollhook show`: the update pretty-printed, then its deliveries;
    // --json: the API's object.
    let (code, out, err) = pollhook_code(&["show", "--config", cfg, "--bot", "main", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"update_id\": 1"), "pretty-printed:\n{out}");
    assert!(out.contains("\"text\": \"one\""), "{out}");
    let audit_lines = out.lines().filter(|l| l.contains("audit")).count();
    assert_eq!(audit_lines, 3, "one line per delivery:\n{out}");
    assert!(out.contains("502") && out.contains("200"), "{out}");
    let (code, out, err) =
        pollhook_code(&["show", "--config", cfg, "--bot", "main", "1", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let as_json: Value = serde_json::from_str(&out).expect("show --json prints JSON");
    assert_eq!(as_json, shown);

    // An update not kept.
    let missing = admin.get("/history/show?bot=main&update_id=999").await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(missing.body.contains("999"), "{}", missing.body);
    let (code, out, err) = pollhook_code(&["show", "--config", cfg, "--bot", "main", "999"]).await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("999") && err.contains("history"),
        "a clear message: {err}"
    );

    // The history takes room on disk, and says so.
    let metrics = admin.metrics().await;
    assert!(
        metric_sum(&metrics, "pollhook_history_bytes", &["bot=\"main\""]) > 0.0,
        "{metrics}"
    );

    // A dead letter put back in the queue now carries the replay header too
    // (and keeps its webhook-id).
    let original = audit
        .received()
        .into_iter()
        .find(|r| update_id(r) == 5)
        .expect("update 5 reached audit");
    assert!(!original.is_replay());
    let before = audit.received().len();
    let (code, out, err) = pollhook_code(&[
        "dlq",
        "--config",
        cfg,
        "replay",
        "--all",
        "--bot",
        "main",
        "--forward",
        "audit",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let got = audit.wait_received(before + 1, LONG).await;
    let again = &got[before];
    assert_eq!(update_id(again), 5);
    assert!(
        again.is_replay(),
        "a dead-letter replay has x-pollhook-replay"
    );
    assert_eq!(again.webhook_id(), original.webhook_id());
    assert_no_token(&relay.logs());
}

/// `history_max_mb = 1`: about 3 MB of updates go through; the bot's
/// history directory never holds more than 1 MiB (sampled every 10 ms
/// while they arrive), `pollhook_history_bytes` says so too, and the oldest
/// updates are gone from `/history` while the newest are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_never_takes_more_than_history_max_mb() {
    const UPDATES: i64 = 3_000;
    const CAP: u64 = 1024 * 1024;
    let setup = Setup::new().await;
    let port = free_port();
    let admin = Admin { port };
    let config = history_config(
        &setup,
        port,
        "history_max_mb = 1",
        &[forward_table(
            "app",
            &setup.backend.url(),
            "max_in_flight = 32",
        )],
    );
    let mut relay = Relay::spawn(&config, &[("RUST_LOG", "info")]);
    relay.wait_log("admin API on", LONG).await;

    let dir = history_dir(&setup.state_dir(), "main");
    let peak = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (dir, peak, samples, stop) = (dir.clone(), peak.clone(), samples.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(dir_bytes(&dir), Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // ~1 KB each: 3,000 of them are about 3 MB of payload.
    let text = "h".repeat(1000);
    let mut checked = Vec::new();
    for chunk in 0..10 {
        for i in 1..=UPDATES / 10 {
            let id = chunk * (UPDATES / 10) + i;
            setup.api.push_message(TOKEN, id, id % 50, &text);
        }
        let last = (chunk + 1) * (UPDATES / 10);
        setup.api.wait_confirmed(TOKEN, last, LONG).await;
        checked.push(dir_bytes(&dir));
    }
    setup.backend.wait_accepted(UPDATES as usize, LONG).await;
    // The newest update is in the history once its record is written.
    eventually("the newest update in the history", LONG, async || {
        let lines = admin.history("bot=main&since=1h&limit=100000").await;
        ids_of(&lines).contains(&UPDATES).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let lines = admin.history("bot=main&since=1h&limit=100000").await;
    let ids = ids_of(&lines);
    let peak = peak.load(Ordering::SeqCst);
    let on_disk = dir_bytes(&dir);
    let metrics = admin.metrics().await;
    let gauge = metric_sum(&metrics, "pollhook_history_bytes", &["bot=\"main\""]);
    println!(
        "history_max_mb = 1: {} samples, peak {peak} bytes on disk, {on_disk} at the end, gauge {gauge}, {} of {UPDATES} updates still listed (oldest {:?}); after each 300: {checked:?}",
        samples.load(Ordering::SeqCst),
        ids.len(),
        ids.first()
    );
    assert!(samples.load(Ordering::SeqCst) > 10, "the sampler ran");
    assert!(peak > CAP / 2, "the history was filled: peak {peak}");
    assert!(peak <= CAP, "the history took {peak} bytes, over 1 MiB");
    for bytes in &checked {
        assert!(*bytes <= CAP, "{checked:?}");
    }
    assert!(
        gauge > 0.0 && gauge <= CAP as f64,
        "pollhook_history_bytes {gauge}"
    );
    assert!(!ids.contains(&1), "the oldest update is gone");
    assert!(ids.contains(&UPDATES), "the newest is there");
    assert!(ids.len() < UPDATES as usize / 2, "{} listed", ids.len());
    // What is left is the newest part, in order.
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(*ids.last().unwrap(), UPDATES);
    assert_eq!(
        ids,
        (ids[0]..=UPDATES).collect::<Vec<_>>(),
        "a contiguous newest part"
    );
}

/// `history = "3s"`: once an update is older than the window it leaves
/// `/history` (not before), and its segment file is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_older_than_the_window_leave_the_history_and_the_disk() {
    let setup = Setup::new().await;
    let port = free_port();
    let admin = Admin { port };
    let config = history_config(
        &setup,
        port,
        "history = \"3s\"",
        &[forward_table("app", &setup.backend.url(), "")],
    );
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, id, "soon forgotten");
    }
    setup.backend.wait_accepted(3, LONG).await;
    let lines = wait_history(admin, "bot=main", &[1, 2, 3]).await;
    let received = lines
        .iter()
        .map(|l| l["received_at"].as_u64().unwrap())
        .max()
        .unwrap();
    let first = segments(&setup.state_dir(), "main");
    assert!(
        !first.is_empty(),
        "segment files in {:?}",
        history_dir(&setup.state_dir(), "main")
    );

    // Within the window + a segment's span (1 s) + slack for a slow machine.
    let gone = eventually(
        "the updates to leave the history",
        Duration::from_secs(20),
        async || {
            let lines = admin.history("bot=main").await;
            lines.is_empty().then(now_ms).ok_or(format!("{lines:#?}"))
        },
    )
    .await;
    assert!(
        gone >= received + 3_000 - 50,
        "gone {} ms after the last was received, before the 3 s window",
        gone - received
    );
    eventually(
        "their segment files to be deleted",
        Duration::from_secs(20),
        async || {
            let left: Vec<_> = first.iter().filter(|p| p.exists()).collect();
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        },
    )
    .await;
    println!(
        "history = 3s: gone from /history {} ms after received; segments {first:?} deleted {} ms after",
        gone - received,
        now_ms() - received
    );
    // The history goes on.
    setup.api.push_message(TOKEN, 4, 4, "new");
    wait_history(admin, "bot=main", &[4]).await;
}

/// `history = "0s"` keeps no history for that bot: no segment files, and
/// the API and the command say why. Hostile or careless requests are
/// refused naming the problem; without the admin token, 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_off_and_bad_requests_are_refused_naming_the_problem() {
    let setup = Setup::new().await;
    const OFF_TOKEN: &str = "987654321:AAF-otherTOKENpart_abc";
    setup.api.add_bot(OFF_TOKEN, 987654321, "off_bot");
    let port = free_port();
    let admin = Admin { port };
    let toml = format!(
        "state_dir = \"state\"\nshutdown_timeout = \"5s\"\n{admin}\n{main}{app}\n[[bot]]\nname = \"off\"\napi_url = \"{api}\"\ntoken = \"{OFF_TOKEN}\"\npoll_timeout = \"2s\"\nhistory = \"0s\"\n{app}",
        admin = admin_with_token(port),
        main = setup.main_bot(),
        app = forward_table("app", &setup.backend.url(), ""),
        api = setup.api.url_template(),
    );
    let config = write_config(setup.path(), &toml);
    let cfg = config.to_str().unwrap();
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    setup.api.push_message(TOKEN, 1, 1, "kept");
    setup.api.push_message(OFF_TOKEN, 1, 1, "not kept");
    setup.api.push_message(OFF_TOKEN, 2, 1, "not kept");
    setup.backend.wait_accepted(3, LONG).await;
    wait_history(admin, "bot=main", &[1]).await;

    // Off: no files, and the answer names the setting.
    let state = setup.state_dir();
    assert!(!segments(&state, "main").is_empty(), "main keeps history");
    let off_files: Vec<PathBuf> = files_under(&state.join("history"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("bot-off"))
        .collect();
    assert!(off_files.is_empty(), "history = \"0s\" wrote {off_files:?}");
    for path in ["/history?bot=off", "/history/show?bot=off&update_id=1"] {
        let got = admin.get(path).await;
        assert_eq!(got.status, 404, "{path}: {}", got.body);
        assert!(
            got.body.contains("history = \\\"0s\\\"") || got.body.contains("history = \"0s\""),
            "{path}: {}",
            got.body
        );
    }
    for (path, body) in [
        ("/history/replay", r#"{"bot":"off","since":"1h"}"#),
        ("/history/resend", r#"{"bot":"off","update_id":1}"#),
    ] {
        let got = admin.post(path, body).await;
        assert_eq!(got.status, 404, "{path}: {}", got.body);
        assert!(got.body.contains("0s"), "{path}: {}", got.body);
    }

    // Bad parameters: 400 naming the parameter; unknown names: 404 naming
    // them. Every case is tried and the wrong answers listed together.
    let get = |query: &str, status: u16, names: &str| {
        (None, query.to_string(), status, names.to_string())
    };
    let post = |path: &str, body: &str, status: u16, names: &str| {
        (
            Some(body.to_string()),
            path.to_string(),
            status,
            names.to_string(),
        )
    };
    let cases = [
        get("/history?bot=main&since=yesterday", 400, "since"),
        get("/history?bot=main&since=-5m", 400, "since"),
        get("/history?bot=main&until=soon", 400, "until"),
        get("/history?bot=main&limit=0", 400, "limit"),
        get("/history?bot=main&limit=100001", 400, "limit"),
        get("/history?bot=main&limit=lots", 400, "limit"),
        get("/history", 400, "bot"),
        get("/history?bot=nobody", 404, "nobody"),
        get("/history/show?bot=main&update_id=abc", 400, "update_id"),
        get("/history/show?bot=main", 400, "update_id"),
        get("/history/show?bot=nobody&update_id=1", 404, "nobody"),
        post("/history/replay", "{not json", 400, ""),
        post("/history/replay", r#"{"bot":"main"}"#, 400, "since"),
        post(
            "/history/replay",
            r#"{"bot":"main","since":"soon"}"#,
            400,
            "since",
        ),
        post(
            "/history/replay",
            r#"{"bot":"main","since":"1h","until":"never"}"#,
            400,
            "until",
        ),
        post(
            "/history/replay",
            r#"{"bot":"main","since":"1h","forward":"nope"}"#,
            404,
            "nope",
        ),
        post(
            "/history/replay",
            r#"{"bot":"nobody","since":"1h"}"#,
            404,
            "nobody",
        ),
        post(
            "/history/replay",
            r#"{"bot":"main","since":"1h","dry_run":"yes"}"#,
            400,
            "dry_run",
        ),
        post(
            "/history/replay",
            r#"{"bot":"main","since":"1h","chat":[1]}"#,
            400,
            "chat",
        ),
        post("/history/resend", "[]", 400, ""),
        post(
            "/history/resend",
            r#"{"bot":"main","update_id":"one"}"#,
            400,
            "update_id",
        ),
        post("/history/resend", r#"{"bot":"main"}"#, 400, "update_id"),
        post(
            "/history/resend",
            r#"{"bot":"main","update_id":1,"forward":"nope"}"#,
            404,
            "nope",
        ),
        post(
            "/history/resend",
            r#"{"bot":"main","update_id":999}"#,
            404,
            "999",
        ),
    ];
    let mut wrong = Vec::new();
    for (body, path, status, names) in cases {
        let got = match &body {
            None => admin.get(&path).await,
            Some(body) => admin.post(&path, body).await,
        };
        let what = format!("{path} {}", body.unwrap_or_default());
        if got.status != status || !got.body.contains(&names) || got.body.trim().is_empty() {
            wrong.push(format!(
                "{what}: {} {} (wanted {status} naming {names:?})",
                got.status, got.body
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    let most = admin.get("/history?bot=main&limit=100000").await;
    assert_eq!(
        most.status, 200,
        "the maximum limit is allowed: {}",
        most.body
    );
    // The commands say the same.
    let (code, out, err) = pollhook_code(&["history", "--config", cfg, "--bot", "off"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("0s"), "the command says why: {err}");
    let (code, _, err) = pollhook_code(&[
        "replay",
        "--config",
        cfg,
        "--bot",
        "main",
        "--since",
        "1h",
        "--forward",
        "nope",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nope"), "{err}");
    let (code, _, err) = pollhook_code(&["replay", "--config", cfg, "--bot", "main"]).await;
    assert_ne!(code, 0, "--since is required");
    assert!(err.contains("since"), "{err}");
    let (code, _, err) = pollhook_code(&["resend", "--config", cfg, "--bot", "main", "999"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("999"), "{err}");

    // Without the token (or with a wrong one): 401, as elsewhere.
    for path in [
        "/history?bot=main",
        "/history/show?bot=main&update_id=1",
        "/history/replays",
    ] {
        let got = admin.get_anonymous(path).await;
        assert_eq!(got.status, 401, "{path}: {}", got.body);
    }
    for path in ["/history/replay", "/history/resend"] {
        let body = r#"{"bot":"main","since":"1h","update_id":1}"#;
        assert_eq!(admin.post_as(path, body, None).await.status, 401, "{path}");
        assert_eq!(
            admin.post_as(path, body, Some("wrong")).await.status,
            401,
            "{path}"
        );
    }

    // Nothing of the above queued anything.
    let metrics = admin.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "pollhook_replayed_total", &[]),
        0.0,
        "{metrics}"
    );
    assert!(
        setup.backend.received().iter().all(|r| !r.is_replay()),
        "a refused request replayed something"
    );
    assert_eq!(setup.backend.received().len(), 3);
}

/// Bad history settings are refused naming the key and the file, like every
/// other key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_history_settings_are_refused_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (bot_extra, fwd_extra, key) in [
        ("history = \"soon\"", "", "history"),
        ("history = \"-1h\"", "", "history"),
        ("history_max_mb = 0", "", "history_max_mb"),
        ("history_max_mb = \"big\"", "", "history_max_mb"),
        ("", "start_from = \"yesterday\"", "start_from"),
    ] {
        let toml = format!(
            "state_dir = \"state\"\n[[bot]]\nname = \"main\"\napi_url = \"http://127.0.0.1:9/bot{{token}}/{{method}}\"\ntoken = \"{TOKEN}\"\n{bot_extra}\n{}",
            forward_table("app", "http://127.0.0.1:9/hook", fwd_extra)
        );
        let config = write_config(dir.path(), &toml);
        let (code, out, err) =
            pollhook_code(&["check-config", "--config", config.to_str().unwrap()]).await;
        assert_eq!(code, 1, "{bot_extra}{fwd_extra} is refused: {out}");
        assert!(
            err.contains(key) && err.contains("pollhook.toml"),
            "{bot_extra}{fwd_extra}: the error names the key and the file: {err}"
        );
    }
}
