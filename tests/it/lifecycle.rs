//! Starting, stopping and configuring the real binary.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rig::{write_config, Relay, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_backlog_exits_0_quickly_and_loses_nothing() {
    let setup = Setup::new().await;
    setup
        .backend
        .set_reply(Reply::Delay(Duration::from_millis(200)));
    let config = setup.config("", "max_in_flight = 4");
    let mut relay = setup.spawn(&config);
    for id in 1..=500 {
        setup.api.push_message(TOKEN, id, id % 50, "backlog");
    }
    setup.api.wait_confirmed(TOKEN, 500, LONG).await;
    setup.backend.wait_received(8, LONG).await;
    let t = Instant::now();
    relay.sigterm();
    let status = relay
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("pollhook did not exit after SIGTERM");
    let took = t.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    let delivered_before = distinct_ids(&setup.backend.accepted()).len();
    assert!(
        delivered_before < 500,
        "the backlog should not have drained before the stop"
    );

    setup.backend.set_reply(Reply::Ok);
    let _relay = setup.spawn(&config);
    wait_until("the backlog after a restart", LONG, || {
        distinct_ids(&setup.backend.accepted()).len() == 500
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_needs_no_config_file() {
    let setup = Setup::new().await;
    let log = setup.path().join("quick.log");
    let state = setup.path().join("qs-state");
    let mut relay = Relay::spawn_args(
        &[
            "run",
            "--forward",
            &setup.backend.url(),
            "--api-url",
            &setup.api.url_template(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[("BOT_TOKEN", TOKEN)],
        &log,
    );
    setup.api.push_message(TOKEN, 1, 1, "quick");
    let got = setup.backend.wait_accepted(1, LONG).await;
    assert_eq!(update_id(&got[0]), 1);
    assert!(
        state.join("db").exists(),
        "state should live in --state-dir"
    );
    relay.sigterm();
    assert!(relay.wait_exit(LONG).await.unwrap().success());
    assert_no_token(&relay.logs());
}

fn check_config(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), toml);
    let out = Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env_remove("BOT_TOKEN")
        .output()
        .unwrap();
    let path = path.display().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path, "FILE");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const GOOD: &str = r#"
[[bot]]
name = "support"
token = "42:AAsecret-part"
[[bot.forward]]
url = "http://127.0.0.1:8080/webhook"
signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

#[test]
fn check_config_prints_what_would_run_with_secrets_masked() {
    let (ok, out, err) = check_config(GOOD);
    assert!(ok, "{err}");
    assert!(
        out.contains("bot \"support\"") && out.contains("http://127.0.0.1:8080/webhook"),
        "{out}"
    );
    assert!(out.contains("42:****"), "{out}");
    assert!(
        !out.contains("AAsecret-part") && !out.contains("MfKQ9r8"),
        "a secret was printed:\n{out}"
    );
}

#[test]
fn check_config_names_the_file_and_the_key_of_each_mistake() {
    let cases = [
        (
            GOOD.replace("name = \"support\"", "name = \"support\"\ntypo = 1"),
            "FILE: bot[0].typo: unknown field",
        ),
        (
            GOOD.replace("http://127.0.0.1", "ftp://127.0.0.1"),
            "FILE: bot[0].forward[0].url:",
        ),
        (
            GOOD.replace(
                "[[bot.forward]]",
                "poll_timeout = \"soon\"\n[[bot.forward]]",
            ),
            "FILE: bot[0].poll_timeout: \"soon\" is not a duration",
        ),
        (
            GOOD.replace("token = \"42:AAsecret-part\"", ""),
            "FILE: bot[0].token: missing",
        ),
        (
            GOOD.replace("signing_secret = \"whsec_", "signing_secret = \"nope_"),
            "FILE: bot[0].forward[0].signing_secret:",
        ),
        (
            format!("{GOOD}timeout = \"10 parsecs\""),
            "FILE: bot[0].forward[0].timeout:",
        ),
        (
            GOOD.replace("[[bot]]", "[[bot]"),
            "FILE: (file): TOML parse error",
        ),
    ];
    for (toml, expected) in cases {
        let (ok, _, err) = check_config(&toml);
        assert!(!ok, "accepted a bad config expecting {expected:?}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert!(
            !err.contains("AAsecret-part"),
            "a secret was printed:\n{err}"
        );
    }
}
