//! Running pollhook as a service: the admin API, `pollhook status`, systemd
//! notifications, logs, signals, the unit file and the package.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::rig::*;

/// The value of one series in a Prometheus text scrape.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_health_readiness_status_and_metrics() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.admin_config(port);
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    assert_eq!(get(port, "/healthz").await, (200, "ok\n".into()));
    for id in 1..=3 {
        setup.api.push_message(TOKEN, id, id, "m");
    }
    setup.backend.wait_accepted(3, LONG).await;
    wait_code(port, "/readyz", 200).await;

    let (code, metrics) = get(port, "/metrics").await;
    assert_eq!(code, 200);
    let l = "{bot=\"main\",forward=\"app\"}";
    assert_eq!(
        sample(&metrics, &format!("pollhook_updates_delivered_total{l}")),
        3.0
    );
    // Delivered jobs leave the store in batches (within 100 ms).
    let depth = format!("pollhook_queue_depth{l}");
    eventually("the queue to empty", LONG, async || {
        sample(&get(port, "/metrics").await.1, &depth) == 0.0
    })
    .await;
    assert_eq!(
        sample(
            &metrics,
            &format!("pollhook_delivery_latency_seconds_count{l}")
        ),
        3.0
    );
    assert_eq!(
        sample(&metrics, "pollhook_updates_received_total{bot=\"main\"}"),
        3.0
    );
    assert_eq!(sample(&metrics, "pollhook_bot_up{bot=\"main\"}"), 1.0);
    assert!(sample(&metrics, "pollhook_store_size_bytes") > 0.0);
    for name in [
        "pollhook_poll_duration_seconds",
        "pollhook_delivery_latency_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} histogram")),
            "{name}"
        );
    }

    // A backlog shows as depth and age.
    setup.backend.set_reply(Reply::Status(503));
    setup.api.push_message(TOKEN, 4, 4, "stuck");
    wait_until("a failed attempt", LONG, || {
        setup.backend.received().len() >= 5
    })
    .await;
    let (_, metrics) = get(port, "/metrics").await;
    assert_eq!(sample(&metrics, &format!("pollhook_queue_depth{l}")), 1.0);
    assert!(sample(&metrics, &format!("pollhook_delivery_failures_total{l}")) >= 1.0);

    // pollhook status, as a table and as JSON.
    let cfg = config.to_str().unwrap();
    let (ok, table, err) = pollhook_async(&["status", "--config", cfg]).await;
    assert!(ok, "{err}");
    assert!(table.contains("@test_bot (id 123456789)"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("main") && l.contains("app") && l.contains("HTTP 503")),
        "{table}"
    );
    assert!(table.contains("1 bots, queue 1, 0 dead"), "{table}");
    let (ok, json, _) = pollhook_async(&["status", "--config", cfg, "--json"]).await;
    assert!(ok);
    let snap: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(snap["bots"][0]["state"], "ok");
    assert_eq!(snap["bots"][0]["offset"], 5);
    assert_eq!(snap["forwards"][0]["queue_depth"], 1);
    assert!(
        snap["forwards"][0]["oldest_pending_age_seconds"]
            .as_f64()
            .unwrap()
            >= 0.0
    );

    // A webhook set on the platform: the state says so and /readyz fails.
    setup
        .api
        .set_webhook(TOKEN, Some("https://example.invalid/hook"));
    wait_until("the webhook state", LONG, || {
        relay.logs().contains("a webhook is set")
    })
    .await;
    let (_, json, _) = pollhook_async(&["status", "--config", cfg, "--json"]).await;
    let snap: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(snap["bots"][0]["state"], "webhook is set");
    // Not ready once no poll succeeded for twice the poll timeout (2 s).
    let why = wait_code(port, "/readyz", 503).await;
    assert!(
        why.contains("main") && why.contains("webhook is set"),
        "{why}"
    );
    assert_no_token(&relay.logs());
    assert!(!json.contains(TOKEN.split(':').nth(1).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_the_first_poll_then_status_watchdog_and_stopping() {
    let setup = Setup::new().await;
    // Hold the first getUpdates so READY can be checked against it.
    setup
        .api
        .inject(TOKEN, Fault::Hang(Duration::from_millis(1500)));
    let notify = NotifySocket::new();
    let config = setup.config("", "");
    let path = notify.path.to_str().unwrap().to_string();
    let mut relay = Relay::spawn(
        &config,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")],
    );
    let sock = std::sync::Arc::new(notify);
    let reader = sock.clone();
    let ready = tokio::task::spawn_blocking(move || reader.read_until("READY=1", LONG))
        .await
        .unwrap();
    let polls = setup.api.get_updates_calls(TOKEN);
    assert!(!polls.is_empty(), "READY=1 came before any getUpdates");
    assert!(
        ready
            .last()
            .unwrap()
            .contains("STATUS=1 bots, queue 0, 0 dead"),
        "{ready:?}"
    );
    let reader = sock.clone();
    let pings = tokio::task::spawn_blocking(move || {
        reader.read_until("WATCHDOG=1", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(pings.iter().any(|m| m.contains("WATCHDOG=1")));
    relay.sigterm();
    let reader = sock.clone();
    tokio::task::spawn_blocking(move || reader.read_until("STOPPING=1", LONG))
        .await
        .unwrap();
    assert!(relay.wait_exit(LONG).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let setup = Setup::new().await;
    let config = setup.config("", "");
    let log = setup.path().join("json.log");
    let mut relay = Relay::spawn_args(
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
        &log,
    );
    setup.api.push_message(TOKEN, 1, 1, "x");
    setup.backend.wait_accepted(1, LONG).await;
    relay.wait_log("the token belongs to", LONG).await;
    relay.stop().await;
    let logs = relay.logs();
    let lines = relay_lines(&logs);
    assert!(lines.len() >= 3, "{logs}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"bot\":\"main\"")),
        "fields are kept: {logs}"
    );
    assert_no_token(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_loses_nothing() {
    let setup = Setup::new().await;
    setup.backend.set_reply(Reply::Hang);
    let config = setup.config("", "");
    edit_config(
        &config,
        "shutdown_timeout = \"5s\"",
        "shutdown_timeout = \"60s\"",
    );
    let mut relay = setup.spawn(&config);
    for id in 1..=5 {
        setup.api.push_message(TOKEN, id, id, "hangs");
    }
    setup.backend.wait_received(5, LONG).await;
    relay.sigterm();
    relay
        .wait_log("waiting for deliveries in flight", LONG)
        .await;
    assert!(
        relay.wait_exit(Duration::from_millis(500)).await.is_none(),
        "the first SIGTERM waits for in-flight requests"
    );
    relay.sigterm();
    let status = relay
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("a second SIGTERM stops at once");
    assert!(!status.success());
    setup.backend.set_reply(Reply::Ok);
    let _relay = setup.spawn(&config);
    wait_until("every update after the restart", LONG, || {
        distinct_ids(&setup.backend.accepted()).len() == 5
    })
    .await;
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let (ok, bash, _) = pollhook(&["completions", "bash"]);
    assert!(ok);
    assert!(
        bash.contains("pollhook") && bash.contains("check-config") && bash.contains("dlq"),
        "{bash}"
    );
    let (ok, zsh, _) = pollhook(&["completions", "zsh"]);
    assert!(ok && zsh.contains("#compdef pollhook"));
    let (ok, man, _) = pollhook(&["manpage"]);
    assert!(ok);
    assert!(
        man.contains(".TH pollhook") && man.contains("check\\-config"),
        "{man}"
    );
}

/// `pollhook … | head`: a reader that goes away ends the command the Unix
/// way (SIGPIPE), not with a panic.
#[test]
fn a_closed_pipe_ends_a_printing_command_without_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors of a new pipe, which are
    // then owned here; the read end is closed before the command starts, so
    // its first write meets a pipe nobody reads.
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        drop(OwnedFd::from_raw_fd(fds[0]));
        OwnedFd::from_raw_fd(fds[1])
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[bot]]\nname = \"b\"\ntoken = \"1:x\"\n[[bot.forward]]\nurl = \"http://127.0.0.1:1/\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check-config", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

#[test]
fn the_example_config_is_valid_with_systemd_credentials() {
    let creds = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("support-token", "4242:AAexample-token-secret"),
        ("support-signing-secret", SECRET),
        ("support-secret-token", "example_secret-token"),
    ] {
        std::fs::write(creds.path().join(name), value).unwrap();
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pollhook.example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check-config", "--config", example.to_str().unwrap()])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4242:****") && !stdout.contains("AAexample"),
        "{stdout}"
    );
    // Without systemd's credentials directory the error says what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check-config", "--config", example.to_str().unwrap()])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bot[0].token_credential: $CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs systemd-analyze; run with --include-ignored (see README)"]
fn the_unit_is_hardened_and_verifies() {
    tools::require("systemd-analyze", "apt-get install systemd");
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/pollhook.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for pollhook.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{text}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("/usr/bin/pollhook"))
        .map(str::to_string)
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:?}"
    );
}

#[test]
#[ignore = "needs cargo-deb and dpkg-deb; run with --include-ignored (see README)"]
fn the_package_holds_binary_unit_config_man_page_and_keeps_state() {
    tools::require(
        "cargo-deb",
        "cargo install cargo-deb --version 3.8.0 --locked",
    );
    tools::require("dpkg-deb", "apt-get install dpkg");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("packaging/build-deb.sh"))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let deb = std::fs::read_dir(target.join("debian"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a .deb was built");
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for path in [
        "./usr/bin/pollhook",
        "systemd/system/pollhook.service",
        "./etc/pollhook/pollhook.toml",
        "./usr/share/man/man1/pollhook.1.gz",
        "./usr/share/bash-completion/completions/pollhook",
        "./usr/share/doc/pollhook/operations.md",
        "./usr/share/doc/pollhook/pollhook-rules.yml",
        "./usr/share/doc/pollhook/pollhook.json",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{list}"
        );
    }
    let work = tempfile::tempdir().unwrap();
    let ctrl = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(work.path())
        .status()
        .unwrap();
    assert!(ctrl.success());
    let conffiles = std::fs::read_to_string(work.path().join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/pollhook/pollhook.toml"),
        "the config is a conffile: {conffiles}"
    );
    let postinst = std::fs::read_to_string(work.path().join("postinst")).unwrap_or_default();
    let postrm = std::fs::read_to_string(work.path().join("postrm")).unwrap_or_default();
    assert!(
        postinst.contains("try-restart") || postinst.contains("restart"),
        "an upgrade restarts the service:\n{postinst}"
    );
    assert!(
        !postrm.contains("/var/lib"),
        "removing must keep the state:\n{postrm}"
    );
    // The packaged example holds no secrets.
    let example = std::fs::read_to_string(root.join("config/pollhook.example.toml")).unwrap();
    let real_secret = |l: &str| {
        l.split("whsec_")
            .skip(1)
            .any(|r| r.starts_with(|c: char| c.is_ascii_alphanumeric()))
    };
    assert!(
        !example
            .lines()
            .any(|l| l.trim_start().starts_with("token =") || real_secret(l)),
        "{example}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_lines_carry_their_syslog_priority() {
    let setup = Setup::new().await;
    setup.backend.set_script(|_, i| {
        if i == 0 {
            Reply::Status(503)
        } else {
            Reply::Ok
        }
    });
    let config = setup.config("", "");
    let mut relay = Relay::spawn(
        &config,
        &[("JOURNAL_STREAM", "8:12345"), ("RUST_LOG", "info")],
    );
    setup.api.push_message(TOKEN, 1, 1, "x");
    setup.backend.wait_accepted(1, LONG).await;
    relay.wait_log("delivery failed", LONG).await;
    let logs = relay.logs();
    let line = |needle| log_line(&logs, needle);
    assert!(
        line("delivery failed").starts_with("<4>"),
        "a warning is <4>"
    );
    assert!(
        line("the token belongs to").starts_with("<6>"),
        "info is <6>"
    );
    assert!(
        !line("the token belongs to").contains("Z "),
        "no timestamp: the journal adds its own"
    );
}

/// docs/operations.md's table of journal priorities: (level, priority).
fn documented_priorities() -> Vec<(String, u32)> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let mut rows = Vec::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `ERROR` | 3 | `err` |
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let Ok(priority) = cells[2].parse::<u32>() else {
            continue;
        };
        for level in cells[1].split(',') {
            let level = level.trim().trim_matches('`');
            if ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level) {
                rows.push((level.to_string(), priority));
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_priorities_and_library_log_levels_are_as_documented() {
    let documented = documented_priorities();
    assert!(
        documented.len() >= 4,
        "docs/operations.md has no table of journal priorities: {documented:?}"
    );
    let setup = Setup::new().await;
    setup.backend.set_script(|_, i| {
        if i == 0 {
            Reply::Status(503)
        } else {
            Reply::Ok
        }
    });
    // An error (another poller) before the first batch.
    setup.api.inject(TOKEN, Fault::ConflictOtherPoller);
    let config = setup.config("", "");
    // Asks for everything, libraries included, by crate and by module.
    let everything = "trace,hyper=trace,hyper_util=trace,hyper_util::client=trace,\
                      reqwest=trace,reqwest::connect=trace,sled=trace,sled::pagecache=trace";
    let mut relay = Relay::spawn(
        &config,
        &[("JOURNAL_STREAM", "8:12345"), ("RUST_LOG", everything)],
    );
    setup.api.push_message(TOKEN, 1, 1, "x");
    setup.backend.wait_accepted(1, LONG).await;
    relay.wait_log("delivery failed", LONG).await;
    relay.stop().await;
    let logs = relay.logs();
    let lines = relay_lines(&logs);
    let mut seen = std::collections::BTreeSet::new();
    for line in &lines {
        let (priority, text) = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("no priority prefix: {line}"));
        let level = text.split_whitespace().next().unwrap_or("");
        let (_, want) = documented
            .iter()
            .find(|(l, _)| l == level)
            .unwrap_or_else(|| panic!("level {level:?} is not in the documented table: {line}"));
        assert_eq!(priority, want.to_string(), "{line}");
        seen.insert(level.to_string());
    }
    for level in ["ERROR", "WARN", "INFO", "DEBUG"] {
        assert!(seen.contains(level), "no {level} line to check:\n{logs}");
    }
    // Libraries stay at info: these are their debug and trace lines.
    for library_detail in [
        "starting new connection",
        "checkout waiting for idle connection",
        "Http::connect",
        "starting pagecache",
        "reading segment header",
    ] {
        assert!(
            !logs.contains(library_detail),
            "a library's debug output is in the log ({library_detail:?}):\n{}",
            tail(&logs, 20)
        );
    }
    assert_no_token(&logs);
}
