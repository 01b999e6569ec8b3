//! Every platform end to end: the fake Bot API in Telegram, MPChat and
//! WWChat mode. Each scenario runs once per platform (see the macro at the
//! bottom), so the closing table's cells map to test names
//! `platforms::<platform>::<scenario>`.

use std::time::Duration;

use crate::rig::*;

fn secret_header(f: Flavor) -> &'static str {
    match f {
        Flavor::Telegram => "x-telegram-bot-api-secret-token",
        Flavor::MpChat => "x-mpchat-bot-api-secret-token",
        Flavor::WwChat => "x-wwchat-bot-api-secret-token",
    }
}

/// A chat id the way the platform writes it: integers on Telegram, decimal
/// strings on MPChat, UUID strings on WWChat.
fn chat_json(f: Flavor, n: i64) -> String {
    match f {
        Flavor::Telegram => n.to_string(),
        Flavor::MpChat => format!("\"{n}\""),
        Flavor::WwChat => format!("\"{:08x}-6f5c-4f7a-9d1e-2c3b4a5d6e7f\"", n),
    }
}

fn message(f: Flavor, id: i64, chat: i64) -> String {
    format!(
        r#"{{"update_id":{id},"message":{{"message_id":{id},"date":1700000000,"chat":{{"id":{c},"type":"private"}},"text":"n{id}"}}}}"#,
        c = chat_json(f, chat)
    )
}

/// Normal flow: the platform's URL shape, its id style, its secret header,
/// per-chat order keyed on its chat ids, and a poll timeout above its cap
/// clamped rather than sent.
pub async fn normal_flow(f: Flavor) {
    let setup = Setup::with(f).await;
    setup
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(30)));
    let config = setup.config("poll_timeout = \"90s\"", "max_in_flight = 8");
    let mut relay = setup.spawn(&config);
    let mut sent = Vec::new();
    for id in 1..=24 {
        let raw = message(f, id, id % 3);
        setup.api.push_raw(TOKEN, id, &raw);
        sent.push(raw);
    }
    let got = setup.backend.wait_accepted(24, LONG).await;
    for r in &got {
        assert_eq!(r.body_str(), sent[(update_id(r) - 1) as usize]);
        assert_eq!(r.header(secret_header(f)), Some(SECRET_TOKEN));
    }
    for (chat, ids) in per_chat(&got) {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "chat {chat} out of order");
    }
    assert_eq!(setup.backend.max_concurrent_per_key(chat_id), 1);
    assert!(
        setup.backend.max_concurrent() >= 2,
        "different chats must go in parallel"
    );
    let cap = f.max_timeout() as u64;
    let first = &setup.api.get_updates_calls(TOKEN)[0];
    assert_eq!(
        first.timeout,
        Some(cap),
        "poll_timeout 90s must be clamped to the platform's {cap}s"
    );
    relay.wait_log("poll_timeout: 1m 30s is above", LONG).await;
    relay
        .wait_log("the token belongs to @test_bot (id 123456789)", LONG)
        .await;
    relay.sigterm();
    assert!(relay.wait_exit(LONG).await.unwrap().success());
}

pub async fn conflict_409(f: Flavor) {
    let setup = Setup::with(f).await;
    let mut relay = setup.spawn(&setup.config("", ""));
    setup.api.wait_calls(TOKEN, 1, LONG).await;
    setup
        .api
        .set_webhook(TOKEN, Some("https://example.invalid/hook"));
    relay.wait_log("a webhook is set for this bot", LONG).await;
    setup.api.push_raw(TOKEN, 1, &message(f, 1, 1));
    // The operator removes the webhook; polling resumes by itself.
    setup.api.set_webhook(TOKEN, None);
    setup.backend.wait_accepted(1, LONG).await;
    setup.api.inject(TOKEN, Fault::ConflictOtherPoller);
    relay
        .wait_log("another process is polling this bot", LONG)
        .await;
    setup.api.push_raw(TOKEN, 2, &message(f, 2, 1));
    setup.backend.wait_accepted(2, LONG).await;
    assert!(setup.api.webhook(TOKEN).is_none());
    assert!(setup
        .api
        .calls(TOKEN)
        .iter()
        .all(|c| c.method == "getUpdates" || c.method == "getMe"));
    assert_no_token(&relay.logs());
}

pub async fn rate_limited_429(f: Flavor) {
    let setup = Setup::with(f).await;
    let mut relay = setup.spawn(&setup.config("", ""));
    setup.api.wait_calls(TOKEN, 1, LONG).await;
    setup.api.inject(TOKEN, Fault::TooManyRequests(2));
    relay.wait_log("told to wait 2s", LONG).await;
    setup.api.push_raw(TOKEN, 1, &message(f, 1, 1));
    setup.backend.wait_accepted(1, LONG).await;
    let calls = setup.api.get_updates_calls(TOKEN);
    let i = calls
        .iter()
        .position(|c| c.status == 429)
        .expect("a 429 was answered");
    let wait = calls[i + 1].at - calls[i].at;
    assert!(
        wait >= Duration::from_millis(1900),
        "the call after a 429 came after {wait:?}, not 2 s"
    );
}

/// A token the platform refuses is named at start (getMe) and at the
/// first poll, each line with the bot and the fix, and is retried slowly:
/// the relay announces a wait of a minute (less its ±20 % jitter at most)
/// before the next poll, and has polled once.
pub async fn wrong_token(f: Flavor) {
    const WRONG: &str = "999:AAwrong-secret-token";
    let setup = Setup::with(f).await;
    let config = setup.config("", "");
    edit_config(&config, TOKEN, WRONG);
    let mut relay = setup.spawn(&config);
    // getMe at start finds it before any long poll.
    relay
        .wait_log("getMe: 401: the bot token is not accepted", LONG)
        .await;
    relay
        .wait_log("getUpdates: 401: the bot token is not accepted", LONG)
        .await;
    let logs = relay.logs();
    for call in ["getMe: 401", "getUpdates: 401"] {
        let line = log_line(&logs, call);
        assert!(
            line.contains("bot=main") && line.contains("check the token"),
            "the log line should name the bot and the fix: {line}"
        );
    }
    let wait = retry_in(log_line(&logs, "getUpdates: 401"));
    assert!(
        wait >= Duration::from_secs(48),
        "a rejected token must be retried slowly, not after {wait:?}"
    );
    let polls = setup.api.get_updates_calls(WRONG).len();
    assert_eq!(polls, 1, "a rejected token was retried at once");
    assert!(relay.is_running());
    assert!(!logs.contains("AAwrong-secret-token"));
}

/// update_id jumps down (after a week of silence the platform picks a random
/// next id): nothing is dropped, chat order follows arrival, and the next
/// offset follows the new ids.
pub async fn id_jump_down(f: Flavor) {
    let setup = Setup::with(f).await;
    let _relay = setup.spawn(&setup.config("", ""));
    for id in [5000, 5001] {
        setup.api.push_raw(TOKEN, id, &message(f, id, 7));
    }
    setup.backend.wait_accepted(2, LONG).await;
    // Wait until the long poll carrying offset 5002 is waiting, then the
    // platform restarts its ids lower.
    wait_until("the offset 5002 to be applied", LONG, || {
        setup.api.applied_offset(TOKEN) == Some(5002)
    })
    .await;
    for id in [17, 18] {
        setup.api.push_raw(TOKEN, id, &message(f, id, 7));
    }
    let got = setup.backend.wait_accepted(4, LONG).await;
    let ids: Vec<i64> = got.iter().map(update_id).collect();
    assert_eq!(ids, [5000, 5001, 17, 18], "same chat, arrival order");
    wait_until("a poll with offset 19", LONG, || {
        setup
            .api
            .get_updates_calls(TOKEN)
            .iter()
            .any(|c| c.offset == Some(19))
    })
    .await;
    setup.api.push_raw(TOKEN, 19, &message(f, 19, 8));
    setup.backend.wait_accepted(5, LONG).await;
}

pub async fn crash(f: Flavor) {
    let crate::crash::CrashRun {
        delivered, lost, ..
    } = crate::crash::crash_run(f, 3_000, 6, crate::crash::Messages::Short).await;
    match f {
        // MPChat confirms on answer; the window is the batch being stored at
        // the kill. crash_run already checked that only such batches can miss.
        // At most one batch (100 updates) per kill.
        Flavor::MpChat => assert!(lost <= 6 * 100 && delivered + lost == 3_000, "lost {lost}"),
        _ => assert_eq!((delivered, lost), (3_000, 0)),
    }
}

macro_rules! per_platform {
    ($($platform:ident => $flavor:expr),*) => {$(
        mod $platform {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn normal_flow() { super::normal_flow($flavor).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn conflict_409() { super::conflict_409($flavor).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rate_limited_429() { super::rate_limited_429($flavor).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wrong_token() { super::wrong_token($flavor).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn id_jump_down() { super::id_jump_down($flavor).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crash() { super::crash($flavor).await }
        }
    )*};
}

per_platform!(telegram => Flavor::Telegram, mpchat => Flavor::MpChat, wwchat => Flavor::WwChat);

/// Three bots on three platforms in one process: one with a wrong token, one
/// with a webhook set; the healthy one keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_bot_does_not_stop_the_others() {
    let setup = Setup::new().await;
    let mp = FakeApi::start(Flavor::MpChat).await;
    let ww = FakeApi::start(Flavor::WwChat).await;
    const WW_TOKEN: &str = "777:AAww-token";
    ww.add_bot(WW_TOKEN, 777, "ww_bot");
    ww.set_webhook(WW_TOKEN, Some("https://example.invalid/hook"));
    let toml = format!(
        r#"
state_dir = "state"
[[bot]]
name = "healthy"
api_url = "{tg}"
token = "{TOKEN}"
poll_timeout = "2s"
[[bot.forward]]
url = "{url}"

[[bot]]
name = "wrongtoken"
flavor = "mpchat"
api_url = "{mp}"
token = "888:AAnot-known"
[[bot.forward]]
url = "{url}"

[[bot]]
name = "hooked"
flavor = "wwchat"
api_url = "{ww}"
token = "{WW_TOKEN}"
[[bot.forward]]
url = "{url}"
"#,
        tg = setup.api.url_template(),
        mp = mp.url_template(),
        ww = ww.url_template(),
        url = setup.backend.url(),
    );
    let config = write_config(setup.path(), &toml);
    let mut relay = Relay::spawn(&config, &[]);
    relay.wait_log("bot=wrongtoken", LONG).await;
    relay.wait_log("a webhook is set for this bot", LONG).await;
    for id in 1..=50 {
        setup.api.push_message(TOKEN, id, id % 5, "healthy");
    }
    let got = setup.backend.wait_accepted(50, LONG).await;
    assert!(got
        .iter()
        .all(|r| r.header("x-pollhook-bot") == Some("healthy")));
    let logs = relay.logs();
    assert!(logs
        .lines()
        .any(|l| l.contains("wrongtoken") && l.contains("not accepted")));
    assert!(logs
        .lines()
        .any(|l| l.contains("hooked") && l.contains("webhook is set")));
    assert!(relay.is_running());
}

#[test]
fn check_config_probe_names_each_failing_bot_and_sends_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let setup = rt.block_on(Setup::new());
    let toml = format!(
        r#"
[[bot]]
name = "good"
api_url = "{api}"
token = "{TOKEN}"
[[bot.forward]]
url = "{url}"

[[bot]]
name = "bad"
api_url = "{api}"
token = "404:AAunknown"
[[bot.forward]]
url = "{url}"
"#,
        api = setup.api.url_template(),
        url = setup.backend.url(),
    );
    let config = write_config(setup.path(), &toml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args([
            "check-config",
            "--probe",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("bot \"good\": ok, @test_bot (id 123456789)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("bot \"bad\": 401: the bot token is not accepted"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 check(s) failed the probe: bad"),
        "{stderr}"
    );
    assert!(setup.backend.received().is_empty());
    assert!(
        setup.api.get_updates_calls(TOKEN).is_empty(),
        "probe must not poll"
    );
    assert!(!stderr.contains("AAunknown") && !stdout.contains("AAunknown"));
    drop(rt);
}

/// MPChat may answer 501 for a method it lacks: never retried, neither for
/// getUpdates (that bot's poller stops, the process runs on) nor for a
/// webhook reply's call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpchat_501_is_never_retried() {
    let setup = Setup::with(Flavor::MpChat).await;
    setup.backend.set_reply(Reply::Body(
        200,
        "application/json".into(),
        r#"{"method":"sendSticker","chat_id":"1","sticker":"x"}"#.into(),
    ));
    setup
        .api
        .inject_method(TOKEN, "sendSticker", Fault::NotImplemented);
    let mut relay = setup.spawn(&setup.config("", ""));
    setup.api.push_raw(TOKEN, 1, &message(Flavor::MpChat, 1, 1));
    setup.backend.wait_accepted(1, LONG).await;
    relay.wait_log("webhook reply call failed: 501", LONG).await;
    let line = log_line(&relay.logs(), "webhook reply call failed: 501").to_owned();
    assert!(
        !line.contains("retrying"),
        "a reply call answered 501 is retried: {line}"
    );
    setup.api.inject(TOKEN, Fault::NotImplemented);
    relay.wait_log("this bot cannot be polled here", LONG).await;
    // The bot's poller ends there instead of waiting to try again.
    relay.wait_log("poller stopped", LONG).await;
    let polls = setup.api.get_updates_calls(TOKEN);
    assert_eq!(
        polls.last().map(|c| c.status),
        Some(501),
        "getUpdates was called again after a 501"
    );
    let stickers = setup
        .api
        .calls(TOKEN)
        .iter()
        .filter(|c| c.method == "sendSticker")
        .count();
    assert_eq!(stickers, 1, "a reply call answered 501 was retried");
    assert!(relay.is_running(), "the process keeps running");
}
