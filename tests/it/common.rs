//! Shared set-up for the integration tests: a fake Bot API, a recording
//! backend, a temporary state directory and the config that joins them.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::rig::{write_config, Backend, FakeApi, Flavor, Received, Relay};

/// A token shaped like a real one; every log is checked for it.
pub const TOKEN: &str = "123456789:AAE-secretTOKENpart_xyz";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SECRET_TOKEN: &str = "s3cret-header_token";

pub struct Setup {
    pub flavor: Flavor,
    pub api: std::sync::Arc<FakeApi>,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Setup {
        Setup::with(Flavor::Telegram).await
    }

    pub async fn with(flavor: Flavor) -> Setup {
        let api = std::sync::Arc::new(FakeApi::start(flavor).await);
        api.add_bot(TOKEN, 123456789, "test_bot");
        Setup {
            flavor,
            api,
            backend: Backend::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// One bot ("main") forwarding to the backend as forward "app";
    /// `bot_extra` and `fwd_extra` are TOML lines added to each table.
    pub fn config(&self, bot_extra: &str, fwd_extra: &str) -> PathBuf {
        self.config_full("", bot_extra, fwd_extra)
    }

    /// Like `config`, with `top_extra` (e.g. an `[admin]` table) first.
    pub fn config_full(&self, top_extra: &str, bot_extra: &str, fwd_extra: &str) -> PathBuf {
        let toml = format!(
            r#"
state_dir = "state"
shutdown_timeout = "5s"
{top_extra}

[[bot]]
name = "main"
flavor = "{flavor}"
api_url = "{api}"
token = "{TOKEN}"
{poll_timeout}
{bot_extra}

[[bot.forward]]
name = "app"
url = "{url}"
signing_secret = "{SECRET}"
secret_token = "{SECRET_TOKEN}"
{fwd_extra}
"#,
            api = self.api.url_template(),
            flavor = flavor_name(self.flavor),
            poll_timeout = if bot_extra.contains("poll_timeout") {
                ""
            } else {
                "poll_timeout = \"2s\""
            },
            url = self.backend.url(),
        );
        write_config(self.path(), &toml)
    }

    pub fn spawn(&self, config: &Path) -> Relay {
        Relay::spawn(config, &[])
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }
}

pub fn flavor_name(f: Flavor) -> &'static str {
    match f {
        Flavor::Telegram => "telegram",
        Flavor::MpChat => "mpchat",
        Flavor::WwChat => "wwchat",
    }
}

/// The update_id of a forwarded update.
pub fn update_id(r: &Received) -> i64 {
    r.json()["update_id"]
        .as_i64()
        .expect("forwarded body has an update_id")
}

/// The chat id of a forwarded message update.
pub fn chat_id(r: &Received) -> String {
    r.json()["message"]["chat"]["id"].to_string()
}

pub fn distinct_ids(rs: &[Received]) -> HashSet<i64> {
    rs.iter().map(update_id).collect()
}

/// Update ids per chat, in arrival order.
pub fn per_chat(rs: &[Received]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in rs {
        out.entry(chat_id(r)).or_default().push(update_id(r));
    }
    out
}

/// Fails the test if the token shows up anywhere in `logs`: its secret
/// part as is (which also covers the whole token, with its colon plain or
/// percent-encoded), or with every character percent-encoded (hex digits in
/// either case).
pub fn assert_no_token(logs: &str) {
    let secret_part = TOKEN.split_once(':').unwrap().1;
    let encoded: String = secret_part.bytes().map(|b| format!("%{b:02x}")).collect();
    let lower = logs.to_ascii_lowercase();
    let leaks = |l: &str| l.contains(secret_part) || l.to_ascii_lowercase().contains(&encoded);
    assert!(
        !logs.contains(secret_part) && !lower.contains(&encoded),
        "the bot token leaked into the logs:\n{}",
        {
            logs.lines()
                .filter(|l| leaks(l))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        }
    );
}

pub const LONG: Duration = Duration::from_secs(60);

/// Polls `cond` every 20 ms until it holds; panics with `what` on timeout.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on right now (for admin.listen in a config).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `pollhook` with `args` to completion: (success, stdout, stderr).
pub fn pollhook(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(args)
        .output()
        .expect("pollhook runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pollhook` run off the test's async threads (it may talk to servers the
/// test runtime serves).
pub async fn pollhook_async(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        pollhook(&refs)
    })
    .await
    .unwrap()
}

/// The config with an admin API on `port` (for `/status`, `pollhook status`).
pub fn admin_config(setup: &Setup, port: u16, bot_extra: &str) -> PathBuf {
    setup.config_full(
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\""),
        bot_extra,
        "",
    )
}

/// `/status` of the relay whose admin API listens on `port`, as JSON text.
pub async fn status_json(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .expect("the admin API answers")
        .text()
        .await
        .unwrap()
}

/// Waits until the first bot's state in `/status` is `state`; returns that
/// bot's entry.
pub async fn wait_bot_state(port: u16, state: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/status")).await {
            if let Ok(snap) = r.json::<serde_json::Value>().await {
                if snap["bots"][0]["state"] == state {
                    return snap["bots"][0].clone();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the bot's state never became {state:?}: {snap}"
                );
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /status on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
