//! The live view: `GET /events` on the admin API, `pollhook tail`, and the
//! quick start's own output on a terminal.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::rig::proc::LOG_FILE;
use crate::rig::*;

const ADMIN_TOKEN: &str = "adm1n-t0ken-for-events";

/// An open `/events` stream, read line by line in the background.
struct Events {
    lines: Arc<Mutex<Vec<(Instant, Value)>>>,
    raw: Arc<Mutex<String>>,
    ended: Arc<Mutex<Option<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Events {
    /// Hangs up.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Events {
    /// Opens `/events{query}`; fails the test unless it answers 200 NDJSON.
    async fn open(port: u16, query: &str, token: Option<&str>) -> Events {
        let mut request =
            reqwest::Client::new().get(format!("http://127.0.0.1:{port}/events{query}"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let mut response = request.send().await.expect("the admin API answers");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        assert_eq!(
            response.headers()["content-type"],
            "application/x-ndjson",
            "one JSON object per line"
        );
        let (lines, raw, ended) = (Arc::default(), Arc::default(), Arc::default());
        Events {
            lines: Arc::clone(&lines),
            raw: Arc::clone(&raw),
            ended: Arc::clone(&ended),
            reader: tokio::spawn(async move {
                let mut pending = String::new();
                let why = loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            let text = String::from_utf8_lossy(&bytes).into_owned();
                            raw.lock().unwrap().push_str(&text);
                            pending.push_str(&text);
                            while let Some(end) = pending.find('\n') {
                                let line: String = pending.drain(..=end).collect();
                                let value: Value = serde_json::from_str(&line)
                                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
                                lines.lock().unwrap().push((Instant::now(), value));
                            }
                        }
                        Ok(None) => break "the stream ended".to_string(),
                        Err(e) => break format!("the stream broke: {e}"),
                    }
                };
                *ended.lock().unwrap() = Some(why);
            }),
        }
    }

    /// Every line but keep-alives.
    fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .filter(|v| v["event"] != "keepalive")
            .collect()
    }

    /// Waits until `done` holds for the events so far; returns them.
    async fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(what, LONG, async || {
            let events = self.events();
            if done(&events) {
                return Ok(events);
            }
            if let Some(why) = self.ended.lock().unwrap().clone() {
                panic!("{why} while waiting for {what}; events: {events:#?}");
            }
            Err(format!("{events:#?}"))
        })
        .await
    }

    fn raw(&self) -> String {
        self.raw.lock().unwrap().clone()
    }
}

fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Fails the test if a token or secret the relay knows shows in `text`.
fn assert_no_secrets(text: &str) {
    assert_no_token(text);
    for secret in [SECRET, SECRET_TOKEN, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
    }
    assert!(!text.contains(&SECRET["whsec_".len()..]), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_each_update_received_then_delivered_with_its_fields() {
    let setup = Setup::new().await;
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    relay.wait_log("admin API on", LONG).await;
    let stream = Events::open(port, "", None).await;
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, 10 + id, "hi");
    }
    let events = stream
        .wait("3 updates delivered", |e| of(e, "delivered").len() == 3)
        .await;
    for id in 1..=3 {
        let about: Vec<&Value> = events.iter().filter(|e| e["update_id"] == id).collect();
        assert_eq!(about.len(), 2, "{about:#?}");
        let (received, delivered) = (about[0], about[1]);
        assert_eq!(received["event"], "received", "received comes first");
        assert_eq!(received["bot"], "main");
        assert_eq!(received["forward"], Value::Null);
        assert_eq!(received["chat"], (10 + id).to_string());
        assert_eq!(received["kind"], "message");
        assert_eq!(received["forwards"], serde_json::json!(["app"]));
        assert_eq!(delivered["event"], "delivered");
        assert_eq!(delivered["bot"], "main");
        assert_eq!(delivered["forward"], "app");
        assert_eq!(delivered["chat"], (10 + id).to_string());
        assert_eq!(delivered["status"], 200);
        assert_eq!(delivered["attempt"], 1);
        assert!(delivered["ms"].as_u64().is_some(), "{delivered}");
        let (r_at, d_at) = (
            received["at"].as_u64().unwrap(),
            delivered["at"].as_u64().unwrap(),
        );
        assert!(r_at <= d_at && r_at > 1_600_000_000_000, "{r_at} {d_at}");
    }
    // A stop ends the open stream at once, rather than at its next
    // keep-alive (10 s with the default idle timeout).
    let stopping = Instant::now();
    relay.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping with a reader took {:?}",
        stopping.elapsed()
    );
    assert_no_secrets(&stream.raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_by_bot_and_forward() {
    const OTHER: &str = "987654321:AAF-otherTOKENpart_abc";
    let setup = Setup::new().await;
    setup.api.add_bot(OTHER, 987654321, "other_bot");
    let port = free_port();
    let url = setup.backend.url();
    let toml = format!(
        "state_dir = \"state\"\n{admin}\n{main}\n[[bot.forward]]\nname = \"app\"\nurl = \"{url}\"\n\n\
         [[bot.forward]]\nname = \"audit\"\nurl = \"{url}\"\n\n\
         [[bot]]\nname = \"other\"\napi_url = \"{api}\"\ntoken = \"{OTHER}\"\npoll_timeout = \"2s\"\n\
         [[bot.forward]]\nname = \"app\"\nurl = \"{url}\"\n",
        admin = admin_table(port, ""),
        main = setup.main_bot(),
        api = setup.api.url_template(),
    );
    let mut relay = setup.spawn(&write_config(setup.path(), &toml));
    relay.wait_log("admin API on", LONG).await;
    let all = Events::open(port, "", None).await;
    let audit = Events::open(port, "?bot=main&forward=audit", None).await;
    let other = Events::open(port, "?bot=other", None).await;
    setup.api.push_message(TOKEN, 1, 1, "to main");
    setup.api.push_message(OTHER, 7, 2, "to other");
    // main: received + app + audit; other: received + app.
    let everything = all
        .wait("both bots' updates delivered", |e| {
            of(e, "delivered").len() == 3
        })
        .await;
    assert_eq!(of(&everything, "received").len(), 2, "{everything:#?}");
    let main_received = everything
        .iter()
        .find(|e| e["event"] == "received" && e["bot"] == "main")
        .unwrap();
    assert_eq!(
        main_received["forwards"],
        serde_json::json!(["app", "audit"])
    );

    // Each stream's last event for its filter is a delivery: once that
    // is in, so is everything before it.
    let seen_audit = audit
        .wait("main's audit delivery", |e| !of(e, "delivered").is_empty())
        .await;
    let kinds = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["event"], e["bot"], e["forward"], e["update_id"]
                )
            })
            .collect()
    };
    assert_eq!(
        kinds(&seen_audit),
        [
            r#""received" "main" null 1"#,
            r#""delivered" "main" "audit" 1"#
        ]
    );
    let seen_other = other
        .wait("other's delivery", |e| !of(e, "delivered").is_empty())
        .await;
    assert_eq!(
        kinds(&seen_other),
        [
            r#""received" "other" null 7"#,
            r#""delivered" "other" "app" 7"#
        ]
    );
    relay.stop().await;
    for s in [&all, &audit, &other] {
        assert_no_secrets(&s.raw());
        assert!(!s.raw().contains(OTHER.split(':').nth(1).unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_shows_failed_attempts_then_the_dead_letter() {
    let setup = Setup::new().await;
    let port = free_port();
    // Nothing listens on the forward's port: connection refused, an error
    // reqwest reports with the URL unless it is taken out.
    let closed = free_port();
    let config = setup.config_full(&admin_table(port, ""), "", "max_attempts = 2");
    edit_config(
        &config,
        &setup.backend.url(),
        &format!("http://127.0.0.1:{closed}/hook"),
    );
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let stream = Events::open(port, "", None).await;
    setup.api.push_message(TOKEN, 5, 50, "doomed");
    let events = stream
        .wait("the dead letter", |e| !of(e, "dead_lettered").is_empty())
        .await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["received", "failed", "failed", "dead_lettered"],
        "{events:#?}"
    );
    let (first, last, dead) = (&events[1], &events[2], &events[3]);
    assert_eq!(first["attempt"], 1);
    assert!(first["retry_in_ms"].as_u64().is_some(), "{first}");
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("connection refused"),
        "{first}"
    );
    assert_eq!(last["attempt"], 2);
    assert_eq!(last["retry_in_ms"], Value::Null, "the last attempt");
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["reason"], last["error"]);
    for e in &events[1..] {
        assert_eq!(
            (&e["bot"], &e["forward"], &e["update_id"], &e["chat"]),
            (
                &Value::from("main"),
                &Value::from("app"),
                &Value::from(5),
                &Value::from("50")
            )
        );
    }
    relay.stop().await;
    assert_no_secrets(&stream.raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_reply_shows_as_a_reply_event() {
    let setup = Setup::new().await;
    setup.backend.set_script(|r, _| {
        let id = r.json()["update_id"].as_i64().unwrap();
        let body = match id {
            1 => r#"{"method":"sendMessage","chat_id":1,"text":"pong"}"#,
            _ => r#"{"method":"banChatMember","chat_id":2,"user_id":3}"#,
        };
        Reply::Body(200, "application/json".into(), body.into())
    });
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    relay.wait_log("admin API on", LONG).await;
    let stream = Events::open(port, "", None).await;
    setup.api.push_message(TOKEN, 1, 1, "ping");
    setup.api.push_message(TOKEN, 2, 2, "ban them");
    let events = stream
        .wait("both replies", |e| of(e, "reply").len() == 2)
        .await;
    let replies = of(&events, "reply");
    let made = replies.iter().find(|e| e["update_id"] == 1).unwrap();
    assert_eq!(made["method"], "sendMessage");
    assert_eq!(made["ok"], true);
    assert_eq!(made["error"], Value::Null);
    assert_eq!(made["chat"], "1");
    assert_eq!(
        (&made["bot"], &made["forward"]),
        (&"main".into(), &"app".into())
    );
    let refused = replies.iter().find(|e| e["update_id"] == 2).unwrap();
    assert_eq!(refused["method"], "banChatMember");
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("reply_methods"),
        "{refused}"
    );
    setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 1, LONG)
        .await;
    relay.stop().await;
    assert_no_secrets(&stream.raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn a_jetstream_delivery_shows_as_acknowledged() {
    let setup = Setup::new().await;
    let nats = NatsServer::start().await;
    nats.create_stream("TG", &["tg.>"]).await;
    let port = free_port();
    let toml = format!(
        "state_dir = \"state\"\n{admin}\n[nats]\nservers = [\"{url}\"]\n\n{bot}\n\
         [[bot.forward]]\nname = \"js\"\nnats_subject = \"tg.{{bot}}.{{kind}}\"\n",
        admin = admin_table(port, ""),
        url = nats.url(),
        bot = setup.main_bot(),
    );
    let mut relay = setup.spawn(&write_config(setup.path(), &toml));
    relay.wait_log("admin API on", LONG).await;
    let stream = Events::open(port, "", None).await;
    setup.api.push_message(TOKEN, 3, 30, "to the stream");
    let events = stream
        .wait("the publish acknowledged", |e| {
            !of(e, "delivered").is_empty()
        })
        .await;
    let acked = of(&events, "delivered")[0];
    assert_eq!(acked["status"], "ack", "{acked}");
    assert_eq!(
        (&acked["forward"], &acked["chat"]),
        (&"js".into(), &"30".into())
    );
    assert_eq!(nats.read_all("TG", 1, LONG).await.len(), 1);
    relay.stop().await;
    assert_no_secrets(&stream.raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_needs_the_admin_token_and_outlives_the_idle_timeout() {
    let setup = Setup::new().await;
    let port = free_port();
    let idle = Duration::from_secs(1);
    let admin = admin_table(
        port,
        &format!("token = \"{ADMIN_TOKEN}\"\nidle_timeout = \"1s\""),
    );
    let mut relay = setup.spawn(&setup.config_full(&admin, "", ""));
    relay.wait_log("admin API on", LONG).await;
    // Statuses only: a stream that opened would never end.
    let none = reqwest::get(format!("http://127.0.0.1:{port}/events"))
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/events"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let opened = Instant::now();
    let stream = Events::open(port, "", Some(ADMIN_TOKEN)).await;
    // Quiet for 3 idle timeouts: keep-alive lines hold the stream open.
    eventually("3 idle timeouts of keep-alives", LONG, async || {
        let lines = stream.lines.lock().unwrap().clone();
        if let Some(why) = stream.ended.lock().unwrap().clone() {
            panic!("{why} after {:?}; lines: {lines:?}", opened.elapsed());
        }
        lines.last().is_some_and(|(at, _)| *at - opened > 3 * idle)
    })
    .await;
    let lines = stream.lines.lock().unwrap().clone();
    let mut last = opened;
    for (at, line) in &lines {
        assert_eq!(line, &serde_json::json!({"event": "keepalive"}));
        assert!(
            *at - last < idle,
            "{:?} without a line, over the idle timeout",
            *at - last
        );
        last = *at;
    }
    assert!(lines.len() >= 4, "{lines:?}");
    // …and events still come on it.
    setup.api.push_message(TOKEN, 1, 1, "still there?");
    stream
        .wait("the update on the old stream", |e| {
            !of(e, "delivered").is_empty()
        })
        .await;
    // A stop ends the stream (the relay does not wait on its readers).
    relay.stop().await;
    eventually("the stream to end", LONG, async || {
        stream.ended.lock().unwrap().clone()
    })
    .await;
    assert_no_secrets(&stream.raw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_take_at_most_half_the_admin_connections() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.config_full(&admin_table(port, "idle_timeout = \"1s\""), "", "");
    // 64 file handles: the admin API takes 8 connections, so 4 streams.
    let mut relay = Relay::spawn_limited(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        &setup.path().join(LOG_FILE),
        ProcLimits {
            nofile: Some(64),
            umask: None,
        },
    );
    relay.wait_log("admin API on", LONG).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(Events::open(port, "", None).await);
    }
    // Only the status is read: a stream that opened would never end.
    let fifth = reqwest::get(format!("http://127.0.0.1:{port}/events"))
        .await
        .unwrap();
    assert_eq!(fifth.status(), 503, "a fifth stream");
    let body = fifth.text().await.unwrap();
    assert!(body.contains("4 event streams are open"), "{body}");
    // The other half is there for everything else.
    assert_eq!(get(port, "/status").await.0, 200);
    assert_eq!(get(port, "/metrics").await.0, 200);
    // A reader that goes away gives its place back.
    drop(open.pop());
    eventually("a stream's place to come back", LONG, async || {
        reqwest::get(format!("http://127.0.0.1:{port}/events"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    relay.stop().await;
}

/// A child process whose stdout and stderr are collected by threads.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the command starts");
        let collect = |mut from: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let into = text.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&mut from);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    into.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
            text
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Proc { child, out, err }
    }

    fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    async fn wait_out(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        eventually(what, LONG, async || {
            let out = self.out();
            if done(&out) {
                Ok(out)
            } else {
                Err(format!("stdout:\n{out}\nstderr:\n{}", self.err()))
            }
        })
        .await
    }

    fn interrupt(&self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
    }

    async fn exit(&mut self) -> std::process::ExitStatus {
        eventually("the process to exit", LONG, async || {
            self.child.try_wait().unwrap()
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail_cmd(config: &std::path::Path, extra: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_pollhook"))
            .args(["tail", "--config", config.to_str().unwrap()])
            .args(extra),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollhook_tail_prints_a_line_per_event_plain_or_as_json() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.admin_config(port);
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let mut plain = tail_cmd(&config, &[]);
    let mut json = tail_cmd(&config, &["--json", "--forward", "app"]);
    for t in [&plain, &json] {
        eventually("tail to connect", LONG, async || {
            t.err().contains("as they happen (Ctrl-C to stop)")
        })
        .await;
    }
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, 40 + id, "hi");
    }
    let out = plain
        .wait_out("3 deliveries", |o| o.matches("→ 200 in ").count() == 3)
        .await;
    for id in 1..=3 {
        let received = out
            .lines()
            .find(|l| l.contains(&format!("#{id} ")) && l.contains("received message"))
            .unwrap_or_else(|| panic!("no received line for {id}:\n{out}"));
        assert!(
            received.contains(&format!("chat {}", 40 + id)),
            "{received}"
        );
        assert!(received.contains("  main  "), "{received}");
        let delivered = out
            .lines()
            .find(|l| l.contains(&format!("#{id} ")) && l.contains("→ 200 in "))
            .unwrap();
        assert!(delivered.contains("main/app"), "{delivered}");
        assert!(delivered.ends_with(" ms"), "{delivered}");
        // HH:MM:SS.mmm first.
        assert_eq!(delivered.as_bytes()[2], b':', "{delivered}");
    }
    assert!(!out.contains('\x1b'), "no colour when piped:\n{out:?}");

    let out = json
        .wait_out("3 deliveries as JSON", |o| {
            o.matches("\"event\":\"delivered\"").count() == 3
        })
        .await;
    for line in out.lines() {
        let e: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_ne!(e["event"], "keepalive", "keep-alives are left out");
        assert_eq!(e["bot"], "main");
        assert!(e["update_id"].as_i64().is_some(), "{e}");
    }
    assert_eq!(out.matches("\"event\":\"received\"").count(), 3, "{out}");

    // Ctrl-C ends it cleanly.
    json.interrupt();
    let status = json.exit().await;
    assert!(status.success(), "{status}: {}", json.err());
    assert_no_secrets(&json.out());
    // A stop of pollhook ends the stream, and tail says so.
    relay.stop().await;
    let status = plain.exit().await;
    assert!(!status.success());
    assert!(
        plain.err().contains("ended the stream: pollhook stopped"),
        "{}",
        plain.err()
    );
    assert_no_secrets(&plain.out());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pollhook_tail_says_clearly_when_it_cannot_reach_pollhook() {
    let setup = Setup::new().await;
    let port = free_port();
    // Configured, but nothing runs.
    let config = setup.admin_config(port);
    let cfg = config.to_str().unwrap();
    let (ok, out, err) = pollhook_async(&["tail", "--config", cfg]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "the admin API at 127.0.0.1:{port} does not answer"
        )) && err.contains("is pollhook running?"),
        "{err}"
    );
    // No admin API configured at all.
    let config = setup.config("", "");
    let (ok, _, err) = pollhook_async(&["tail", "--config", config.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(err.contains("has no admin.listen"), "{err}");
    assert_no_token(&err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs script(1) from util-linux"]
async fn the_quick_start_on_a_terminal_shows_each_event() {
    let setup = Setup::new().await;
    // One failure first: its warning still shows (on stderr), with the lines.
    setup.backend.set_script(|_, n| {
        if n == 0 {
            Reply::Status(500)
        } else {
            Reply::Ok
        }
    });
    let pid_file = setup.path().join("pid");
    let state = setup.path().join("qs-state");
    let quoted: Vec<String> = setup
        .quick_start_args(&state)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    // The shell that script(1) starts writes its pid, then becomes pollhook.
    let line = format!(
        "echo $$ > '{}'; exec '{}' {}",
        pid_file.display(),
        env!("CARGO_BIN_EXE_pollhook"),
        quoted.join(" ")
    );
    let mut term = Proc::spawn(
        Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .env("BOT_TOKEN", TOKEN)
            .env("SHELL", "/bin/sh")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR"),
    );
    let pid: libc::pid_t = eventually("pollhook's pid", LONG, async || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    })
    .await;
    setup.api.push_message(TOKEN, 1, 7, "hello");
    let out = term
        .wait_out("the delivery line", |o| o.contains("→ 200 in "))
        .await;
    assert!(
        out.contains("pollhook: forwarding updates to http://127.0.0.1"),
        "{out}"
    );
    for words in [
        "received message",
        "failed: HTTP 500 Internal Server Error (attempt 1, retrying now)",
        "→ 200 in ",
    ] {
        let line = log_line(&out, words);
        assert!(line.contains("#1 ") && line.contains("chat 7"), "{line}");
    }
    assert!(out.contains("\x1b[32m"), "green on a terminal: {out:?}");
    // The log keeps its warnings and drops its info lines.
    assert!(out.contains("delivery failed: HTTP 500"), "{out}");
    assert!(
        !out.contains("INFO") && !out.contains("polling"),
        "info lines are not shown:\n{out}"
    );
    // SAFETY: kill(2) on pollhook, which runs under our script(1) child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = term.exit().await;
    assert!(status.success(), "{status}: {}", term.out());
    assert_no_secrets(&term.out());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_off_a_terminal_logs_as_before() {
    let setup = Setup::new().await;
    let state = setup.path().join("qs-state");
    let args = setup.quick_start_args(&state);
    let mut quick = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_pollhook"))
            .args(&args)
            .env("BOT_TOKEN", TOKEN)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1"),
    );
    setup.api.push_message(TOKEN, 1, 7, "hello");
    setup.backend.wait_accepted(1, LONG).await;
    eventually("the usual info lines", LONG, async || {
        quick.err().contains("INFO") && quick.err().contains("polling")
    })
    .await;
    quick.interrupt();
    let status = quick.exit().await;
    assert!(status.success(), "{status}: {}", quick.err());
    assert_eq!(quick.out(), "", "nothing on stdout off a terminal");
    assert!(!quick.err().contains("received message"), "{}", quick.err());
    assert_no_secrets(&quick.err());
}
