//! Starting, stopping and configuring the real binary.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::rig::proc::LOG_FILE;
use crate::rig::*;

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
    let args = setup.quick_start_args(&state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::spawn_args(&args, &[("BOT_TOKEN", TOKEN)], &log);
    setup.api.push_message(TOKEN, 1, 1, "quick");
    let got = setup.backend.wait_accepted(1, LONG).await;
    assert_eq!(update_id(&got[0]), 1);
    assert!(
        state.join("db").exists(),
        "state should live in --state-dir"
    );
    relay.stop().await;
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

#[test]
fn check_config_refuses_an_open_admin_api_and_plain_http_to_other_hosts_unless_allowed() {
    let refused = [
        (
            format!("[admin]\nlisten = \"0.0.0.0:9807\"\n{GOOD}"),
            "FILE: admin.listen: 0.0.0.0:9807 can be reached from other hosts and no admin token is set",
        ),
        (
            format!("[admin]\nlisten = \"[::]:9807\"\n{GOOD}"),
            "FILE: admin.listen: [::]:9807 can be reached",
        ),
        (
            GOOD.replace("http://127.0.0.1:8080", "http://10.0.0.5:8080"),
            "FILE: bot[0].forward[0].url: http://10.0.0.5:8080/webhook: plain http:// to a host other than this one",
        ),
        (
            GOOD.replace("http://127.0.0.1:8080", "http://backend.internal"),
            "set allow_insecure = true in this forward",
        ),
    ];
    for (toml, expected) in &refused {
        let (ok, _, err) = check_config(toml);
        assert!(!ok, "accepted, expecting {expected:?}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
    // Allowed on purpose: accepted, still warned about.
    let allowed = [
        (
            format!("[admin]\nlisten = \"0.0.0.0:9807\"\nallow_insecure = true\n{GOOD}"),
            "warning: admin.listen: 0.0.0.0:9807 can be reached from other hosts",
        ),
        (
            format!(
                "{}\nallow_insecure = true",
                GOOD.replace("http://127.0.0.1:8080", "http://10.0.0.5:8080")
            ),
            "warning: bot[0].forward[0].url: http://10.0.0.5:8080/webhook: plain http://",
        ),
        // A self-hosted Bot API server over plain http: the token is in
        // the URL. Warned about only.
        (
            GOOD.replace(
                "token = \"42:AAsecret-part\"",
                "token = \"42:AAsecret-part\"\napi_url = \"http://10.0.0.9:8081/bot{token}/{method}\"",
            ),
            "warning: bot[0].api_url: plain http:// to a host other than this one: the bot token",
        ),
    ];
    for (toml, expected) in &allowed {
        let (ok, out, err) = check_config(toml);
        assert!(ok, "{err}");
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
    // Safe as they are: no refusal, no warning.
    for toml in [
        GOOD.to_string(),
        format!("[admin]\nlisten = \"127.0.0.1:9807\"\n{GOOD}"),
        format!("[admin]\nlisten = \"[::1]:9807\"\n{GOOD}"),
        format!("[admin]\nlisten = \"0.0.0.0:9807\"\ntoken = \"adm1n-t0ken\"\n{GOOD}"),
        GOOD.replace("http://127.0.0.1:8080", "https://10.0.0.5:8080"),
        GOOD.replace("http://127.0.0.1:8080", "http://localhost:8080"),
        GOOD.replace("http://127.0.0.1:8080", "http://[::1]:8080"),
    ] {
        let (ok, out, err) = check_config(&toml);
        assert!(ok, "{err}\n{toml}");
        assert!(!out.contains("warning:"), "{out}");
    }
}

#[test]
fn check_config_warns_about_secret_files_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str, mode: u32| {
        let path = secrets.path().join(name);
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let toml = |mode: u32| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:9807\"\ntoken_file = \"{admin}\"\n\
             [[bot]]\nname = \"support\"\ntoken_file = \"{token}\"\n\
             [[bot.forward]]\nurl = \"http://127.0.0.1:8080/webhook\"\n\
             signing_secret_file = \"{signing}\"\nsecret_token_file = \"{secret}\"\n",
            admin = file("admin", "adm1n-t0ken", mode),
            token = file("token", "42:AAsecret-part", mode),
            signing = file("signing", SECRET, mode),
            secret = file("secret", "s3cret_token", mode),
        )
    };
    let (ok, out, err) = check_config(&toml(0o644));
    assert!(ok, "{err}");
    for key in [
        "admin.token_file",
        "bot[0].token_file",
        "bot[0].forward[0].signing_secret_file",
        "bot[0].forward[0].secret_token_file",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("warning: {key}: "))
                    && l.contains("is open to group or others (mode 0644); chmod 600 it")),
            "no warning for {key}:\n{out}"
        );
    }
    for mode in [0o640, 0o604, 0o660] {
        let (_, out, _) = check_config(&toml(mode));
        assert_eq!(
            out.matches("is open to group or others").count(),
            4,
            "{mode:o}: {out}"
        );
    }
    for mode in [0o600, 0o400] {
        let (ok, out, err) = check_config(&toml(mode));
        assert!(ok, "{err}");
        assert!(!out.contains("warning:"), "{mode:o}: {out}");
    }
}

#[test]
fn check_config_masks_credentials_in_the_api_url() {
    let toml = GOOD.replace(
        "token = \"42:AAsecret-part\"",
        "token = \"42:AAsecret-part\"\napi_url = \"https://relay-user:pr0xy-pa55@botapi.example/bot{token}/{method}\"",
    );
    let (ok, out, err) = check_config(&toml);
    assert!(ok, "{err}");
    assert!(
        out.contains("api_url https://relay-user:****@botapi.example/bot{token}/{method}"),
        "{out}"
    );
    assert!(
        !out.contains("pr0xy-pa55"),
        "a password was printed:\n{out}"
    );
    let toml = GOOD.replace(
        "token = \"42:AAsecret-part\"",
        "token = \"42:AAsecret-part\"\napi_url = \"https://s3cretkey@botapi.example/bot{token}/{method}\"",
    );
    let (ok, out, _) = check_config(&toml);
    assert!(ok);
    assert!(
        out.contains("api_url https://****@botapi.example/"),
        "{out}"
    );
    assert!(!out.contains("s3cretkey"), "{out}");
}

/// Every directory and file under `dir` (itself included) that group or
/// others may use, with its mode.
fn shared_entries(dir: &std::path::Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push((p.display().to_string(), mode));
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

fn count_entries(dir: &std::path::Path) -> usize {
    let mut n = 1;
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            n += count_entries(&e.unwrap().path());
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new().await;
    let config = setup.config("", "");
    let umask_022 = ProcLimits {
        nofile: None,
        umask: Some(0o022),
    };
    let run = |n: i64| {
        let mut relay = Relay::spawn_limited(
            &["run", "--config", config.to_str().unwrap()],
            &[],
            &setup.path().join(LOG_FILE),
            umask_022,
        );
        let (setup, n) = (&setup, n);
        async move {
            setup.api.push_message(TOKEN, n, n, "private");
            wait_until("the update", LONG, || {
                distinct_ids(&setup.backend.accepted()).contains(&n)
            })
            .await;
            relay.stop().await;
        }
    };
    // A new directory.
    run(1).await;
    let state = setup.state_dir();
    let shared = shared_entries(&state);
    let entries = count_entries(&state);
    eprintln!("new state directory: {entries} entries, shared with group or others: {shared:?}");
    assert!(shared.is_empty(), "{shared:?}");

    // One an older pollhook left open to every local user.
    let mut todo = vec![state.clone()];
    while let Some(p) = todo.pop() {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        if p.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert_eq!(shared_entries(&state).len(), entries);
    run(2).await;
    let shared = shared_entries(&state);
    eprintln!(
        "an open state directory after a start: {} entries, shared: {shared:?}",
        count_entries(&state)
    );
    assert!(shared.is_empty(), "{shared:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_others_can_read_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new().await;
    let token_file = setup.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let config = setup.config("", "");
    edit_config(
        &config,
        &format!("token = \"{TOKEN}\""),
        "token_file = \"token\"",
    );
    let mut relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 1, "still runs");
    setup.backend.wait_accepted(1, LONG).await;
    relay
        .wait_log("bot[0].token_file: ", Duration::from_secs(1))
        .await;
    let logs = relay.logs();
    let line = log_line(&logs, "bot[0].token_file: ");
    assert!(
        line.contains(" WARN ")
            && line.contains("is open to group or others (mode 0640); chmod 600 it"),
        "{line}"
    );
    assert_no_token(&logs);
}
