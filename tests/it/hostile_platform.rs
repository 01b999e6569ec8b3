//! A broken or hostile platform: update ids no offset can confirm, a batch
//! too large or not readable, bytes that are not UTF-8. The relay must not
//! panic, spin or lose anything, must say plainly what is wrong, and must
//! forward exactly what it got.

use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};

use crate::rig::*;

fn message(id: i64) -> String {
    format!(
        r#"{{"update_id":{id},"message":{{"message_id":1,"date":1700000000,"chat":{{"id":{chat},"type":"private"}},"text":"n"}}}}"#,
        chat = id.rem_euclid(1000)
    )
}

/// The update_ids of the updates the backend accepted, sorted: these
/// updates are in different chats, whose deliveries run side by side, so
/// their arrival order is not promised.
fn accepted_ids(setup: &Setup) -> Vec<i64> {
    let mut ids: Vec<i64> = setup.backend.accepted().iter().map(update_id).collect();
    ids.sort_unstable();
    ids
}

/// Fails if the relay sent any offset that is not a positive number.
fn assert_offsets_positive(calls: &[Call]) {
    let bad: Vec<i64> = calls
        .iter()
        .filter_map(|c| c.offset)
        .filter(|&o| o <= 0)
        .collect();
    assert!(bad.is_empty(), "offsets ≤ 0 were sent: {bad:?}");
}

/// The pause the relay announced (`retry_in=`) in its latest log line
/// naming `needle`, checked against the fake's clock: the next getUpdates
/// call arrives no sooner. (A relay that spins announces no pause, or polls
/// again at once.)
async fn pause_after(setup: &Setup, relay: &mut Relay, needle: &str) -> Duration {
    relay.wait_log(needle, LONG).await;
    let logs = relay.logs();
    let line = logs.lines().rev().find(|l| l.contains(needle)).unwrap();
    let announced = retry_in(line);
    let before = setup.api.get_updates_calls(TOKEN);
    let after = setup.api.wait_calls(TOKEN, before.len() + 1, LONG).await;
    let waited = after[before.len()].at - before[before.len() - 1].at;
    // retry_in is logged to a tenth of a second.
    assert!(
        waited + Duration::from_millis(50) >= announced,
        "announced a pause of {announced:?}, polled again after {waited:?}: {line}"
    );
    announced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_id_at_i64_max_is_forwarded_once_without_panic_or_spin() {
    let setup = Setup::new().await;
    setup.api.push_raw(TOKEN, 1, &message(1));
    setup.api.push_raw(TOKEN, i64::MAX, &message(i64::MAX));
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    setup.backend.wait_accepted(2, LONG).await;
    let bot = wait_bot_state(port, "stuck: unusable update_id").await;
    assert_eq!(bot["offset"], 2, "{bot}");
    // It comes back alone and is not stored again; polls slow down: 5 s
    // (±20 %) between them.
    let needle = "update(s) with update_id [9223372036854775807]";
    let pause = pause_after(&setup, &mut relay, needle).await;
    assert!(
        pause >= Duration::from_secs(4),
        "{pause:?} between polls while stuck"
    );
    let ids = accepted_ids(&setup);
    assert_eq!(ids, vec![1, i64::MAX]);
    relay
        .wait_log("update_id [9223372036854775807]", LONG)
        .await;
    let logs = relay.logs();
    assert!(!logs.contains("panicked"), "{}", tail(&logs, 20));
    assert_offsets_positive(&setup.api.get_updates_calls(TOKEN));
    assert!(relay.is_running());
}

/// The fake confirms in queue order, so with i64::MAX at the head no offset
/// gets past it: the platform sends the same batch again and again. Each
/// update is stored once more at most, and the loop does not spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_ignores_the_offset_is_not_stored_from_again_and_again() {
    let setup = Setup::new().await;
    for id in [1, i64::MAX, 3] {
        setup.api.push_raw(TOKEN, id, &message(id));
    }
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    setup.backend.wait_accepted(3, LONG).await;
    let bot = wait_bot_state(port, "stuck: offset ignored").await;
    assert_eq!(bot["offset"], 4, "{bot}");
    let pause = pause_after(&setup, &mut relay, "which offset 4 had confirmed").await;
    assert!(
        pause >= Duration::from_secs(4),
        "{pause:?} between polls while stuck"
    );
    let ids = accepted_ids(&setup);
    assert_eq!(ids, vec![1, 3, i64::MAX], "each update once");
    relay
        .wait_log(
            "which offset 4 had confirmed: the platform ignores the offset",
            LONG,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_below_zero_are_never_sent_as_an_offset_and_nothing_is_lost() {
    let setup = Setup::new().await;
    for id in [-9, -5, -1] {
        setup.api.push_raw(TOKEN, id, &message(id));
    }
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    wait_bot_state(port, "stuck: unusable update_id").await;
    relay.wait_log("update_id [-9, -5, -1]", LONG).await;
    // Nothing could be confirmed, so nothing was stored or dropped.
    assert_eq!(setup.api.pending(TOKEN), 3);
    // An update with id 0 is confirmed by offset 1, and so is everything
    // before it in the queue.
    setup.api.push_raw(TOKEN, 0, &message(0));
    setup.backend.wait_accepted(4, LONG).await;
    setup.api.wait_confirmed(TOKEN, 0, LONG).await;
    wait_bot_state(port, "ok").await;
    let ids = accepted_ids(&setup);
    assert_eq!(ids, vec![-9, -5, -1, 0], "each update once");
    let calls = setup.api.get_updates_calls(TOKEN);
    assert_offsets_positive(&calls);
    assert!(calls.iter().any(|c| c.offset == Some(1)), "{calls:#?}");
    assert_eq!(setup.api.pending(TOKEN), 0);
}

/// A platform emitting `NaN` (Python's json.dumps does by default) makes the
/// whole batch unreadable. One update at a time, the ones before it get
/// through; the bad one is named; once it is gone, so is the trouble.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_update_is_isolated_one_at_a_time() {
    let setup = Setup::new().await;
    setup.api.push_raw(TOKEN, 1, &message(1));
    setup.api.push_raw(TOKEN, 2, &message(2));
    setup.api.push_raw(
        TOKEN,
        3,
        r#"{"update_id":3,"message":{"chat":{"id":3},"score":NaN}}"#,
    );
    setup.api.push_raw(TOKEN, 4, &message(4));
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    setup.backend.wait_accepted(2, LONG).await;
    wait_bot_state(port, "stuck: unreadable update").await;
    relay
        .wait_log("retrying with one update at a time", LONG)
        .await;
    relay
        .wait_log("the platform's next update cannot be read", LONG)
        .await;
    let calls = setup.api.get_updates_calls(TOKEN);
    assert_eq!(calls[0].limit, Some(100));
    assert!(calls.iter().any(|c| c.limit == Some(1)), "{calls:#?}");
    assert_eq!(accepted_ids(&setup), vec![1, 2]);
    // Failures back off from 1 s (±20 %), doubling.
    let needle = "the platform's next update cannot be read";
    let pause = pause_after(&setup, &mut relay, needle).await;
    assert!(
        pause >= Duration::from_millis(800),
        "{pause:?} between polls while stuck"
    );
    // The platform drops it (Telegram does after 24 h): 4 gets through and
    // batches are full size again.
    setup.api.expire(TOKEN, 3);
    setup.backend.wait_accepted(3, LONG).await;
    wait_bot_state(port, "ok").await;
    relay
        .wait_log("asking for batches of 100 again", LONG)
        .await;
    setup.api.push_raw(TOKEN, 5, &message(5));
    setup.backend.wait_accepted(4, LONG).await;
    let last = setup.api.get_updates_calls(TOKEN);
    assert_eq!(last.last().unwrap().limit, Some(100));
    assert_eq!(accepted_ids(&setup), vec![1, 2, 4, 5]);
}

/// 65 MiB in one update: over the 64 MiB cap for a whole response. The
/// relay refuses it from its Content-Length without reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_over_the_size_cap_is_isolated_one_at_a_time() {
    let setup = Setup::new().await;
    setup.api.push_raw(TOKEN, 1, &message(1));
    setup.api.push_raw(TOKEN, 2, &message(2));
    let huge = format!(
        r#"{{"update_id":3,"message":{{"chat":{{"id":3}},"text":"{}"}}}}"#,
        "x".repeat(65 << 20)
    );
    setup.api.push_bytes(TOKEN, 3, huge);
    setup.api.push_raw(TOKEN, 4, &message(4));
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    setup.backend.wait_accepted(2, LONG).await;
    wait_bot_state(port, "stuck: update too large").await;
    relay
        .wait_log(
            "the response is larger than 64 MiB for a single update",
            LONG,
        )
        .await;
    let calls = setup.api.get_updates_calls(TOKEN);
    assert!(calls.iter().any(|c| c.limit == Some(1)), "{calls:#?}");
    assert_eq!(accepted_ids(&setup), vec![1, 2]);
    assert_eq!(setup.api.pending(TOKEN), 2, "3 and 4 wait on the platform");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_forwarded_byte_for_byte_and_signed_as_is() {
    let setup = Setup::new().await;
    // Latin-1 "café", then two bytes that are never UTF-8.
    let raw: &[u8] = b"{\"update_id\":1,\"message\":{\"message_id\":1,\"date\":1,\"chat\":{\"id\":5,\"type\":\"private\"},\"text\":\"caf\xE9 \xFF\xFE\"}}";
    setup.api.push_bytes(TOKEN, 1, raw.to_vec());
    setup.api.push_raw(TOKEN, 2, &message(2));
    let _relay = setup.spawn(&setup.config("", ""));
    let got = setup.backend.wait_accepted(2, LONG).await;
    let first = got
        .iter()
        .find(|r| r.body.starts_with(b"{\"update_id\":1,"))
        .expect("update 1 arrived");
    assert_eq!(&first.body[..], raw, "the payload was altered");
    // The signature covers those exact bytes (the standardwebhooks crate
    // only verifies UTF-8 payloads, so this is the HMAC by hand).
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(first.header("webhook-id").unwrap().as_bytes());
    mac.update(b".");
    mac.update(first.header("webhook-timestamp").unwrap().as_bytes());
    mac.update(b".");
    mac.update(raw);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let header = first.header("webhook-signature").unwrap();
    assert!(
        header.split(' ').any(|s| s == expected),
        "{header} has no {expected}"
    );
}

/// An update that is not an object, quoting the token (a proxy's message in
/// place of an update): forwarded as it came, but its text, which serde's
/// error would quote whole, never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_is_a_string_quoting_the_token_is_forwarded_and_not_logged() {
    let setup = Setup::new().await;
    setup.api.push_raw(TOKEN, 1, &message(1));
    let quoted = format!("\"proxy said: GET /bot{TOKEN}/getUpdates failed\"");
    setup.api.push_raw(TOKEN, 2, &quoted);
    setup.api.push_raw(TOKEN, 3, &message(3));
    let mut relay = setup.spawn(&setup.config("", ""));
    let got = setup.backend.wait_accepted(3, LONG).await;
    assert!(
        got.iter().any(|r| r.body_str() == quoted),
        "forwarded as it came"
    );
    relay.wait_log("an update pollhook cannot read", LONG).await;
    relay.stop().await;
    let logs = relay.logs();
    assert_no_token(&logs);
    assert!(
        logs.contains("update is not a JSON object: it is a string"),
        "{logs}"
    );
}

/// A batch whose only update has no readable `update_id` cannot be
/// confirmed: it is not stored (it will come again), the bot's state says
/// so plainly; once an update with an id arrives behind it, both are stored
/// and forwarded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_without_an_id_waits_until_one_with_an_id_can_confirm_it() {
    let setup = Setup::new().await;
    let no_id = r#"{"message":{"chat":{"id":7},"text":"no id"}}"#;
    setup.api.push_raw(TOKEN, 1, no_id);
    let port = free_port();
    let mut relay = setup.spawn(&setup.admin_config(port));
    wait_bot_state(port, "stuck: no update_id").await;
    assert!(
        setup.backend.accepted().is_empty(),
        "nothing is forwarded twice later"
    );
    setup.api.push_raw(TOKEN, 2, &message(2));
    let got = setup.backend.wait_accepted(2, LONG).await;
    assert!(
        got.iter().any(|r| r.body_str() == no_id),
        "forwarded as it came"
    );
    assert!(got.iter().any(|r| r.body_str() == message(2)));
    wait_bot_state(port, "ok").await;
    relay.stop().await;
    assert_eq!(setup.backend.accepted().len(), 2, "each once");
    assert_no_token(&relay.logs());
}
