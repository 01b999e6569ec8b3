//! Bot API errors never crash or spin the relay, are logged clearly, and
//! never leak the token.

use std::time::Duration;

use crate::rig::*;

/// Injects `fault` into the next getUpdates, waits for the relay to meet it,
/// then checks that it recovers: a new update still gets delivered.
async fn survives(
    setup: &Setup,
    relay: &mut Relay,
    fault: Fault,
    status: u16,
    log: &str,
    next_id: i64,
) {
    let before = setup
        .api
        .status_counts(TOKEN)
        .get(&status)
        .copied()
        .unwrap_or(0);
    setup.api.inject(TOKEN, fault);
    wait_until(&format!("a getUpdates answered {status}"), LONG, || {
        setup
            .api
            .status_counts(TOKEN)
            .get(&status)
            .copied()
            .unwrap_or(0)
            > before
    })
    .await;
    relay.wait_log(log, LONG).await;
    setup.api.push_message(TOKEN, next_id, 1, "after the fault");
    wait_until(
        &format!("delivery of {next_id} after {log:?}"),
        LONG,
        || distinct_ids(&setup.backend.accepted()).contains(&next_id),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_rate_limits_back_off_and_resume_by_themselves() {
    let setup = Setup::new().await;
    let mut relay = setup.spawn(&setup.config("", ""));
    survives(
        &setup,
        &mut relay,
        Fault::ConflictOtherPoller,
        409,
        "another process is polling this bot",
        1,
    )
    .await;
    survives(
        &setup,
        &mut relay,
        Fault::ConflictWebhook,
        409,
        "a webhook is set for this bot",
        2,
    )
    .await;

    let calls_before = setup.api.get_updates_calls(TOKEN).len();
    survives(
        &setup,
        &mut relay,
        Fault::TooManyRequests(2),
        429,
        "429: rate limited, told to wait 2s",
        3,
    )
    .await;
    // retry_after is honoured: the call after the 429 waited 2 s.
    let calls = setup.api.get_updates_calls(TOKEN);
    let i = calls[calls_before..]
        .iter()
        .position(|c| c.status == 429)
        .unwrap()
        + calls_before;
    let wait = calls[i + 1].at - calls[i].at;
    assert!(
        wait >= Duration::from_millis(1900),
        "the call after a 429 (retry_after 2) came after {wait:?}"
    );

    let logs = relay.logs();
    let line = log_line(&logs, "a webhook is set");
    assert!(
        line.contains("main") && line.contains("deleteWebhook"),
        "the log line should name the bot and the fix: {line}"
    );
    let line = log_line(&logs, "another process is polling");
    assert!(
        line.contains("main") && line.contains("stop the other instance"),
        "{line}"
    );
    assert_no_token(&logs);
    // The relay never called setWebhook/deleteWebhook on its own.
    assert!(setup
        .api
        .calls(TOKEN)
        .iter()
        .all(|c| c.method == "getUpdates" || c.method == "getMe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_garbage_and_resets_are_retried() {
    let setup = Setup::new().await;
    let mut relay = setup.spawn(&setup.config("", ""));
    survives(
        &setup,
        &mut relay,
        Fault::ServerError(502),
        502,
        "502: server error",
        1,
    )
    .await;
    survives(&setup, &mut relay, Fault::HtmlBody, 502, "not JSON", 2).await;
    survives(
        &setup,
        &mut relay,
        Fault::MalformedJson,
        200,
        "unreadable response",
        3,
    )
    .await;
    // The rig records a dropped connection as status 444.
    survives(
        &setup,
        &mut relay,
        Fault::Reset,
        444,
        "connection failed",
        4,
    )
    .await;
    let logs = relay.logs();
    for needle in [
        "502: server error",
        "not JSON",
        "unreadable response",
        "connection failed",
    ] {
        let line = log_line(&logs, needle);
        assert!(line.contains("main") && line.contains("retrying"), "{line}");
    }
    assert_no_token(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_hanging_past_the_client_timeout_is_cancelled_and_retried() {
    let setup = Setup::new().await;
    // poll_timeout 1 s: the client gives up after 1 s + the 10 s margin.
    let mut relay = setup.spawn(&setup.config("poll_timeout = \"1s\"", ""));
    setup.api.wait_calls(TOKEN, 1, LONG).await;
    setup
        .api
        .inject(TOKEN, Fault::Hang(Duration::from_secs(30)));
    relay.wait_log("no answer within 11s", LONG).await;
    setup.api.push_message(TOKEN, 1, 1, "after the hang");
    setup.backend.wait_accepted(1, LONG).await;
    assert_no_token(&relay.logs());
}

/// A proxy's 502 page that prints the token the way URLs get printed: with
/// the colon percent-encoded (upper and lower case), every character
/// encoded, or only the secret part. None of it may reach the log,
/// `/status` or `pollhook status`; nor may a getMe answer that echoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_502_page_is_redacted_in_every_spelling() {
    let setup = Setup::new().await;
    let (id, secret) = TOKEN.split_once(':').unwrap();
    setup
        .api
        .add_bot(TOKEN, 123456789, &format!("echo_{secret}"));
    let port = free_port();
    let config = setup.admin_config(port);
    let mut relay = setup.spawn(&config);
    relay.wait_log("admin API on", LONG).await;
    relay
        .wait_log("the token belongs to @echo_<token>", LONG)
        .await;
    let all_encoded: String = TOKEN.bytes().map(|b| format!("%{b:02X}")).collect();
    let pages = [
        format!("<html><body>page1 /bot{id}%3A{secret}/getUpdates</body></html>"),
        format!("<html><body>page2 /bot{id}%3a{secret}/getUpdates</body></html>"),
        format!("<html><body>page3 key {secret} refused</body></html>"),
        format!("<html>page4 /bot{all_encoded}/x</html>"),
    ];
    setup.api.wait_calls(TOKEN, 1, LONG).await;
    // The last page twice more, so /status still shows a page when read.
    for page in pages.iter().chain([&pages[3], &pages[3]]) {
        setup.api.inject(
            TOKEN,
            Fault::Raw {
                status: 502,
                content_type: "text/html",
                body: page.clone().into(),
            },
        );
    }
    let cfg = config.to_str().unwrap();
    for n in 1..=4 {
        relay.wait_log(&format!("page{n}"), LONG).await;
        let status = status_json(port).await;
        assert_no_token(&status);
        assert!(status.contains("<token>"), "{status}");
    }
    let (ok, table, err) = pollhook_async(&["status", "--config", cfg]).await;
    assert!(ok, "{err}");
    assert!(
        table.contains("page4") && table.contains("<token>"),
        "{table}"
    );
    assert_no_token(&table);
    let (ok, json, err) = pollhook_async(&["status", "--config", cfg, "--json"]).await;
    assert!(ok, "{err}");
    assert_no_token(&json);
    let logs = relay.logs();
    for n in 1..=4 {
        let line = log_line(&logs, &format!("page{n}"));
        assert!(line.contains("<token>"), "{line}");
    }
    assert_no_token(&logs);
}
