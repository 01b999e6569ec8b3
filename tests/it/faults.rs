//! Faults an operator meets: environment overrides that must stay strings,
//! a full disk, proxies from the environment.

use std::time::Duration;

use crate::rig::*;

/// `POLLHOOK_…` overrides are strings: `007` stays `007`, and `status` reads
/// the same layered configuration as `run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_keep_strings_and_every_command_reads_them() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.admin_config(port);
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
    /// Fails the test where this machine cannot mount one (not root, no
    /// tmpfs): the test is ignored unless asked for, and then must run.
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
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
            Ok(o) if o.status.success() => SmallDisk(dir.to_path_buf()),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                panic!("this test needs to mount a tmpfs, as root: {why}");
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

/// 20 updates of 4 KB stored, then the disk filled and 300 more pushed
/// until the relay says it cannot store them. Returns the ballast file and
/// the last update id pushed.
async fn store_until_the_disk_is_full(
    setup: &Setup,
    disk: &SmallDisk,
    relay: &mut Relay,
) -> (std::path::PathBuf, i64) {
    let text = "x".repeat(4000);
    for id in 1..=20 {
        setup.api.push_message(TOKEN, id, id % 5, &text);
    }
    setup.api.wait_confirmed(TOKEN, 20, LONG).await;
    let ballast = disk.fill();
    for id in 21..=320 {
        setup.api.push_message(TOKEN, id, id % 5, &text);
    }
    relay.wait_log("cannot store a batch", LONG).await;
    (ballast, 320)
}

/// A full disk pauses polling without confirming anything unstored; once
/// there is room again the relay exits non-zero (sled keeps its I/O error
/// until reopened) so that systemd restarts it, and after the restart every
/// update is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, to mount a small tmpfs; run with --include-ignored (see README)"]
async fn a_full_disk_pauses_polling_and_a_restart_delivers_everything() {
    let setup = Setup::new().await;
    let disk = SmallDisk::mount(&setup.path().join("disk"), "40m");
    let state = disk.0.join("state");
    let port = free_port();
    let config = setup.admin_config(port);
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
    let (ballast, pushed) = store_until_the_disk_is_full(&setup, &disk, &mut relay).await;
    let confirmed = setup.api.confirmed(TOKEN).unwrap();
    assert!(confirmed < pushed, "a batch was confirmed on a full disk");

    // What an operator sees: the flushed offset, not the applied one; not
    // ready; no watchdog ping while the store fails.
    let status: serde_json::Value = serde_json::from_str(&status_json(port).await).unwrap();
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
    assert_eq!(get(port, "/readyz").await.0, 503);
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
            tail(&relay.logs(), 20)
        )
    });
    let took = freed.elapsed();
    assert!(!exit.success(), "a broken store must exit non-zero: {exit}");
    eprintln!("full disk: exited {exit} {took:?} after space was freed");

    // Nothing confirmed is missing from the store or the backend.
    let confirmed = setup.api.confirmed(TOKEN).unwrap();
    let stored = stored_update_ids(&state).await;
    let missing: Vec<i64> = (1..=confirmed).filter(|id| !stored.contains(id)).collect();
    assert!(missing.is_empty(), "confirmed but not stored: {missing:?}");

    // What systemd's Restart= does; then everything arrives.
    setup.backend.set_reply(Reply::Ok);
    let mut relay = Relay::spawn(&config, &env[..1]);
    setup.api.wait_confirmed(TOKEN, pushed, LONG).await;
    wait_until("every update delivered", LONG, || {
        distinct_ids(&setup.backend.accepted()).len() == pushed as usize
    })
    .await;
    relay.stop().await;
    assert_no_token(&relay.logs());
}

/// A stop while the disk is full ends within the stop timeout, non-zero:
/// sled's flush never completes once it holds an I/O error, so the final
/// flush must not be waited for (nothing unflushed was confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs; run with --include-ignored (see README)"]
async fn a_stop_while_the_disk_is_full_ends_within_the_stop_timeout() {
    let setup = Setup::new().await;
    let disk = SmallDisk::mount(&setup.path().join("disk"), "40m");
    let state = disk.0.join("state");
    let config = setup.config("", "");
    let env = [("POLLHOOK_STATE_DIR", state.to_str().unwrap())];
    setup.backend.set_reply(Reply::Status(503));
    let mut relay = Relay::spawn(&config, &env);
    let (ballast, _) = store_until_the_disk_is_full(&setup, &disk, &mut relay).await;
    relay.sigterm();
    let stopping = std::time::Instant::now();
    let exit = relay.wait_exit(Duration::from_secs(20)).await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "a stop with a failing store hung; log tail:\n{}",
            tail(&relay.logs(), 20)
        )
    });
    assert!(!exit.success(), "{exit}");
    eprintln!(
        "full disk: stopped {exit} {:?} after SIGTERM",
        stopping.elapsed()
    );
    std::fs::remove_file(&ballast).unwrap();
    let confirmed = setup.api.confirmed(TOKEN).unwrap();
    let stored = stored_update_ids(&state).await;
    let missing: Vec<i64> = (1..=confirmed).filter(|id| !stored.contains(id)).collect();
    assert!(missing.is_empty(), "confirmed but not stored: {missing:?}");
}

/// An HTTP forward proxy that passes plain-http requests on and records the
/// URI of each one it saw.
struct Proxy {
    server: serve::Server,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    fn start() -> Proxy {
        use http_body_util::BodyExt;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let listener = serve::bind(0);
        let server = serve::Server::serve(
            listener,
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (log, client) = (log.clone(), client.clone());
                async move {
                    let uri = req.uri().to_string();
                    log.lock().unwrap().push(uri.clone());
                    let method = req.method().clone();
                    let headers = req.headers().clone();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map_err(|_| serve::DropConnection)?
                        .to_bytes();
                    let mut out = client.request(method, &uri).body(body);
                    for (k, v) in headers.iter() {
                        if k != hyper::header::HOST && !k.as_str().starts_with("proxy-") {
                            out = out.header(k, v);
                        }
                    }
                    let resp = out.send().await.map_err(|_| serve::DropConnection)?;
                    let status = resp.status();
                    let ct = resp.headers().get(hyper::header::CONTENT_TYPE).cloned();
                    let bytes = resp.bytes().await.map_err(|_| serve::DropConnection)?;
                    let mut answer = hyper::Response::builder().status(status);
                    if let Some(ct) = ct {
                        answer = answer.header(hyper::header::CONTENT_TYPE, ct);
                    }
                    Ok(answer.body(http_body_util::Full::new(bytes)).unwrap())
                }
            },
        );
        Proxy { server, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Proxies from the environment are ignored (an http:// api_url would hand
/// the proxy the token); a bot's configured `proxy` carries its Bot API
/// calls, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_configured_proxy_sees_bot_api_calls() {
    let setup = Setup::new().await;
    let env_proxy = Proxy::start();
    let url = env_proxy.url();
    let env = [
        ("HTTP_PROXY", url.as_str()),
        ("http_proxy", url.as_str()),
        ("HTTPS_PROXY", url.as_str()),
        ("ALL_PROXY", url.as_str()),
    ];
    let mut relay = Relay::spawn(&setup.config("", ""), &env);
    setup.api.push_message(TOKEN, 1, 1, "direct");
    setup.backend.wait_accepted(1, LONG).await;
    relay.sigterm();
    assert!(relay.wait_exit(LONG).await.is_some());
    assert_eq!(
        env_proxy.seen(),
        Vec::<String>::new(),
        "a proxy from the environment was used"
    );

    let proxy = Proxy::start();
    let config = setup.config(&format!("proxy = \"{}\"", proxy.url()), "");
    let mut relay = Relay::spawn(&config, &env);
    setup.api.push_message(TOKEN, 2, 1, "proxied");
    setup.backend.wait_accepted(2, LONG).await;
    relay.sigterm();
    assert!(relay.wait_exit(LONG).await.is_some());
    let seen = proxy.seen();
    assert!(seen.iter().any(|u| u.ends_with("/getUpdates")), "{seen:?}");
    assert!(
        seen.iter().all(|u| u.contains("/bot")),
        "only Bot API calls go through the bot's proxy, not deliveries: {seen:?}"
    );
    assert_eq!(env_proxy.seen(), Vec::<String>::new());
    assert_no_token(&relay.logs());

    // check-config: a SOCKS proxy is accepted with its password masked; a
    // scheme reqwest cannot use is named with its key.
    let config = setup.config("proxy = \"socks5h://user:pa55word@127.0.0.1:1080\"", "");
    let (ok, out, err) = pollhook(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("proxy: socks5h://user:****@127.0.0.1:1080"),
        "{out}"
    );
    assert!(!out.contains("pa55word"), "{out}");
    let config = setup.config("proxy = \"ftp://127.0.0.1:21\"", "");
    let (ok, _, err) = pollhook(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(
        !ok && err.contains("bot[0].proxy") && err.contains("\"ftp\""),
        "{err}"
    );
}
