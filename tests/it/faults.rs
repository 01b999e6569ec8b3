//! Faults an operator meets: environment overrides that must stay strings,
//! a full disk, proxies from the environment.

use crate::common::*;
use crate::rig::Relay;

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
    let with = |token: &str| {
        client
            .get(&status_url)
            .bearer_auth(token)
            .send()
    };
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
