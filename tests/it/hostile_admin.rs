//! The admin API facing careless or hostile clients: connections that never
//! finish a request, slow headers, keep-alive scrapers, DNS rebinding.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rig::proc::LOG_FILE;
use crate::rig::*;

/// File handles the process holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Reads (and discards) until the server closes the connection; how long
/// that took from `since`, or None if it stayed open for `within`.
async fn closed_after(
    stream: &mut TcpStream,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = since + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `request` as it is and returns the status line of the answer ("" if
/// the server closed without one).
async fn raw(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LONG, s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_string()
}

async fn healthz(port: u16) -> Option<u16> {
    match reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
        Ok(r) => Some(r.status().as_u16()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_admin_api_starve_nothing_and_are_closed() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.config_full(
        &admin_table(port, "header_timeout = \"3s\"\nidle_timeout = \"5s\""),
        "",
        "",
    );
    // 64 handles, as on a host with a low default: the admin API must never
    // take the handles the poller and the deliveries need.
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
    setup.api.push_message(TOKEN, 1, 1, "before");
    setup.backend.wait_accepted(1, LONG).await;
    let fds_before = open_fds(relay.pid());

    let opened = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    let (sent, mut sending) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..200 {
        let sent = sent.clone();
        flood.spawn(async move {
            let connect = TcpStream::connect(("127.0.0.1", port));
            let s = tokio::time::timeout(Duration::from_secs(3), connect).await;
            let Ok(Ok(mut s)) = s else {
                let _ = sent.send(());
                return None;
            };
            let connected = Instant::now();
            // Half a request line, never finished. The server may already
            // have closed a connection over its cap; that is the point.
            let _ = s.write_all(b"GET /heal").await;
            let _ = sent.send(());
            Some(closed_after(&mut s, connected, Duration::from_secs(30)).await)
        });
    }
    for _ in 0..200 {
        sending.recv().await.unwrap();
    }
    let fds_held = open_fds(relay.pid());
    // Polling and delivery go on while they are held.
    for id in 2..=21 {
        setup.api.push_message(TOKEN, id, id, "during");
    }
    let mut fds_peak = fds_held;
    let what = "deliveries while 200 connections were held";
    wait_until(what, Duration::from_secs(20), || {
        let open = open_fds(relay.pid());
        fds_peak = fds_peak.max(open);
        let delivered = distinct_ids(&setup.backend.accepted()).len();
        if delivered >= 21 {
            return Ok(());
        }
        Err(format!(
            "{delivered} of 21 delivered, {open} handles open; log tail:\n{}",
            tail(&relay.logs(), 20)
        ))
    })
    .await;
    let delivered_after = opened.elapsed();

    // Every one of them is closed by the server: over the cap at once, the
    // rest at the header timeout (times from each one's connect).
    let mut closed = Vec::new();
    let mut unconnected = 0;
    while let Some(outcome) = flood.join_next().await {
        match outcome.unwrap() {
            None => unconnected += 1,
            Some(took) => closed.push(took.expect("an idle connection was still open after 30 s")),
        }
    }
    closed.sort();
    let slowest = closed.last().unwrap();
    let at_once = closed
        .iter()
        .filter(|d| **d < Duration::from_secs(1))
        .count();
    let fds_after = open_fds(relay.pid());
    eprintln!(
        "handles: {fds_before} before, {fds_held} once 200 connections were open, peak {fds_peak} while they were held, {fds_after} after; \
         all delivered after {delivered_after:?}; {unconnected} connections not accepted within 3 s, {at_once} closed within 1 s (over the cap), \
         the slowest after {slowest:?}; closing times {:?}",
        closed.iter().step_by(8).collect::<Vec<_>>()
    );
    assert_eq!(unconnected, 0, "the admin API stopped accepting");
    assert!(
        *slowest >= Duration::from_millis(2500) && *slowest < Duration::from_secs(7),
        "the connections within the cap are closed at the header timeout (3 s), not after {slowest:?}"
    );
    assert!(
        delivered_after < *slowest,
        "delivered after {delivered_after:?}, not while connections were held"
    );
    assert!(
        at_once >= 150,
        "the cap should refuse most of 200 connections at once"
    );
    assert!(fds_peak < 60, "{fds_peak} handles of 64 in use");
    assert_eq!(healthz(port).await, Some(200), "/healthz after the flood");
    assert!(!relay.logs().contains("Too many open files"));
    assert_eq!(
        relay
            .logs()
            .matches("admin API: 8 connections are open, its cap")
            .count(),
        1,
        "the cap (64 handles / 8) is logged once a minute"
    );
    assert_no_token(&relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_at_the_header_timeout_and_keep_alive_at_the_idle_timeout() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.config_full(
        &admin_table(port, "header_timeout = \"1s\"\nidle_timeout = \"3s\""),
        "",
        "",
    );
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");

    // Connects and says nothing.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let t = Instant::now();
    let silent_closed = closed_after(&mut silent, t, Duration::from_secs(20))
        .await
        .expect("a silent connection stays open");

    // Sends a byte every 200 ms: activity, but the headers never end.
    let slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let t = Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let slow_closed = loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break t.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a trickled header was never cut"),
        }
    };
    trickle.abort();

    // A keep-alive client: a second request after 2 s of quiet (longer than
    // the header timeout, shorter than the idle timeout) is still answered;
    // after the second answer, 3 s of quiet close the connection.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        kept.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"ok\n") {
            let n = tokio::time::timeout(LONG, kept.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert!(
                n > 0,
                "round {round}: the connection closed before the answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "round {round}");
    }
    let t = Instant::now();
    let idle_closed = closed_after(&mut kept, t, Duration::from_secs(20))
        .await
        .expect("an idle keep-alive connection stays open");
    eprintln!(
        "closed: silent after {silent_closed:?}, trickled header after {slow_closed:?}, idle keep-alive after {idle_closed:?}"
    );
    let within = |d: Duration, lo: f64, hi: f64| d.as_secs_f64() >= lo && d.as_secs_f64() <= hi;
    assert!(within(silent_closed, 0.9, 2.5), "{silent_closed:?}");
    assert!(within(slow_closed, 0.9, 2.5), "{slow_closed:?}");
    assert!(within(idle_closed, 2.9, 5.0), "{idle_closed:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_foreign_hosts_and_browser_origins() {
    let setup = Setup::new().await;
    let port = free_port();
    let config = setup.config_full(
        &admin_table(port, "allowed_hosts = [\"pollhook.internal\"]"),
        "",
        "",
    );
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    let get = |path: &str, headers: &str| {
        format!("GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n")
    };
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        format!("[::1]:{port}"),
        format!("pollhook.internal:{port}"),
    ] {
        let status = raw(port, &get("/status", &format!("Host: {host}\r\n"))).await;
        assert!(status.starts_with("HTTP/1.1 200"), "Host {host}: {status}");
    }
    // A DNS-rebinding page reaches the loopback API under its own name.
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        for path in ["/healthz", "/status", "/dlq"] {
            let status = raw(port, &get(path, &format!("Host: {host}\r\n"))).await;
            assert!(
                status.starts_with("HTTP/1.1 403"),
                "Host {host} {path}: {status}"
            );
        }
    }
    assert!(raw(port, &get("/status", ""))
        .await
        .starts_with("HTTP/1.1 403"));
    // Browsers send Origin on cross-origin requests; no admin client does.
    for origin in [
        format!("http://127.0.0.1:{port}"),
        "http://attacker.example".to_string(),
        "null".to_string(),
    ] {
        let headers = format!("Host: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n");
        let status = raw(port, &get("/status", &headers)).await;
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "Origin {origin}: {status}"
        );
        let post = format!(
            "POST /dlq/drop HTTP/1.1\r\n{headers}Content-Type: application/json\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{{\"all\":true}}"
        );
        let status = raw(port, &post).await;
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "POST, Origin {origin}: {status}"
        );
    }

    // Connections waiting for a request do not hold up a stop: not for the
    // header timeout (10 s), nor the idle timeout (30 s).
    let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half.write_all(b"GET /sta").await.unwrap();
    let mut kept = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let t = Instant::now();
    relay.stop().await;
    let stopped = t.elapsed();
    eprintln!("stopped {stopped:?} after SIGTERM with an idle and a half-sent connection open");
    assert!(stopped < Duration::from_secs(3), "{stopped:?}");
}
