//! Faults an operator meets: environment overrides that must stay strings,
//! a full disk, proxies from the environment.

use std::time::Duration;

use crate::common::*;
use crate::rig::{NotifySocket, Relay, Reply};

/// `POLLHOOK_…` overrides are strings: `007` stays `007`, and `status` reads
/// the same layered configuration as `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_keep_strings_and_every_command_reads_them() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.config_full(&format!("[admin]\nlisten = \"127.0.0.1:{port}\""), "", "");
    let cfg = config.to_str().unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check-config", "--config", cfg])
        .env("POLLHOOK_STATE_DIR", "007")
        .env("POLLHOOK_CACHE_MB", "32")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let state_line = text
        .lines()
        .find(|l| l.starts_with("state_dir: "))
        .unwrap_or_else(|| panic!("no state_dir line in:\n{text}"));
    assert!(
        state_line.ends_with("/007"),
        "POLLHOOK_STATE_DIR=007 must stay 007: {state_line}"
    );

    // Numbers still parse from the environment's strings, and a bad one is
    // named with the variable that set it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check-config", "--config", cfg])
        .env("POLLHOOK_CACHE_MB", "lots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cache_mb") && err.contains("POLLHOOK_CACHE_MB"),
        "{err}"
    );

    // The admin token comes only from the environment, for `run` and for
    // `status` alike; its leading zeros are part of it.
    let env = [("POLLHOOK_ADMIN__TOKEN", "000123")];
    let mut relay = Relay::spawn(&config, &env);
    relay.wait_log("admin API on", LONG).await;
    let client = reqwest::Client::new();
    let status_url = format!("http://127.0.0.1:{port}/status");
    let with = |token: &str| client.get(&status_url).bearer_auth(token).send();
    assert_eq!(with("000123").await.unwrap().status().as_u16(), 200);
    assert_eq!(with("123").await.unwrap().status().as_u16(), 401);

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pollhook"))
            .args(["status", "--json", "--config"])
            .arg(config)
            .env("POLLHOOK_ADMIN__TOKEN", "000123")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "pollhook status with the token from the environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["bots"][0]["bot"], "main");
}

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// None where this machine cannot mount (not root, no tmpfs); under CI
    /// that is a failure, since the test must run there.
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(dir.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot mount a tmpfs ({why}); CI must run the full-disk test (as root)"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs for the full-disk test: {why}");
                None
            }
        }
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk pauses polling without confirming anything unstored; once
/// there is room again the relay exits non-zero (sled keeps its I/O error
/// until reopened) so that systemd restarts it, and after the restart every
/// update is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_polling_and_a_restart_delivers_everything() {
    let setup = Setup::new().await;
    let Some(disk) = SmallDisk::mount(&setup.path().join("disk"), "40m") else {
        return;
    };
    let state = disk.0.join("state");
    let port = free_port();
    let config = setup.config_full(&format!("[admin]\nlisten = \"127.0.0.1:{port}\""), "", "");
    let notify = NotifySocket::new();
    let notify_path = notify.path.to_str().unwrap().to_string();
    let env = [
        ("POLLHOOK_STATE_DIR", state.to_str().unwrap()),
        ("NOTIFY_SOCKET", notify_path.as_str()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    // The backend refuses everything for now, so the queue only grows.
    setup.backend.set_reply(Reply::Status(503));
    let mut relay = Relay::spawn(&config, &env);
    let text = "x".repeat(4000);
    let mut pushed = 0;
    for _ in 0..20 {
        pushed += 1;
        setup.api.push_message(TOKEN, pushed, pushed % 5, &text);
    }
    setup.api.wait_confirmed(TOKEN, pushed, LONG).await;

    let ballast = disk.fill();
    for _ in 0..300 {
        pushed += 1;
        setup.api.push_message(TOKEN, pushed, pushed % 5, &text);
    }
    relay.wait_log("cannot store a batch", LONG).await;
    let confirmed = setup.api.confirmed(TOKEN).unwrap();
    assert!(confirmed < pushed, "a batch was confirmed on a full disk");

    // What an operator sees: the flushed offset, not the applied one; not
    // ready; no watchdog ping while the store fails.
    let client = reqwest::Client::new();
    let status: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["bots"][0]["offset"].as_i64(),
        Some(confirmed + 1),
        "/status must show the stored offset: {status}"
    );
    assert_eq!(
        status["forwards"][0]["queue_depth"].as_i64(),
        Some(confirmed),
        "/status must count stored updates only: {status}"
    );
    let ready = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let said = tokio::task::spawn_blocking(move || notify.read_until("the store is failing", LONG))
        .await
        .unwrap();
    let last = said.last().unwrap();
    assert!(!last.contains("WATCHDOG=1"), "{last}");

    // Room again: the relay must not stay stuck on sled's kept error.
    std::fs::remove_file(&ballast).unwrap();
    let freed = std::time::Instant::now();
    let exit = relay.wait_exit(Duration::from_secs(60)).await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "still running 60 s after the disk had room again; log tail:\n{}",
            crate::rig::proc::tail(&relay.logs(), 20)
        )
    });
    let took = freed.elapsed();
    assert!(!exit.success(), "a broken store must exit non-zero: {exit}");
    eprintln!("full disk: exited {exit} {took:?} after space was freed");

    // Nothing confirmed is missing from the store or the backend.
    let confirmed = setup.api.confirmed(TOKEN).unwrap();
    {
        let store = pollhook::store::Store::open(&state, 1 << 20).expect("the store reopens");
        let fwd = store.forward_id("main", "app").unwrap();
        let stored: std::collections::HashSet<i64> = store
            .pending(fwd, None, usize::MAX)
            .unwrap()
            .iter()
            .filter_map(|j| j.update_id)
            .collect();
        let missing: Vec<i64> = (1..=confirmed).filter(|id| !stored.contains(id)).collect();
        assert!(missing.is_empty(), "confirmed but not stored: {missing:?}");
    }
    crate::crash::wait_for_sled_to_let_go(&state.join("db").join("db"));

    // What systemd's Restart= does; then everything arrives.
    setup.backend.set_reply(Reply::Ok);
    let mut relay = Relay::spawn(&config, &env[..1]);
    setup.api.wait_confirmed(TOKEN, pushed, LONG).await;
    wait_until("every update delivered", LONG, || {
        distinct_ids(&setup.backend.accepted()).len() == pushed as usize
    })
    .await;
    relay.sigterm();
    assert!(relay.wait_exit(LONG).await.is_some_and(|s| s.success()));
    assert_no_token(&relay.logs());
}
