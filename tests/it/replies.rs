//! Webhook replies, key rotation, routing and informative headers.

use std::time::{Duration, SystemTime};

use crate::rig::*;

fn reply(content_type: &str, body: &str) -> Reply {
    Reply::Body(200, content_type.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_replies_in_json_form_and_multipart_become_bot_api_calls() {
    let setup = Setup::new().await;
    setup.backend.set_script(|r, _| match r.json()["update_id"].as_i64().unwrap() {
        1 => reply("application/json", r#"{"method":"sendMessage","chat_id":1,"text":"json reply"}"#),
        2 => reply("application/x-www-form-urlencoded", "method=sendMessage&chat_id=2&text=form+reply"),
        3 => reply(
            "multipart/form-data; boundary=b0undary",
            "--b0undary\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nsendDocument\r\n--b0undary\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n3\r\n--b0undary\r\nContent-Disposition: form-data; name=\"document\"; filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\nfile body\r\n--b0undary--\r\n",
        ),
        4 => reply("application/json", r#"{"method":"getMe"}"#),
        5 => reply("application/json", r#"{"method":"deleteWebhook"}"#),
        _ => Reply::Ok,
    });
    let mut relay = setup.spawn(&setup.config("", ""));
    for id in 1..=5 {
        setup.api.push_message(TOKEN, id, id, "hi");
    }
    setup.backend.wait_accepted(5, LONG).await;
    let msgs = setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 2, LONG)
        .await;
    let texts: Vec<&str> = msgs
        .iter()
        .map(|c| c.params["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.contains(&"json reply") && texts.contains(&"form reply"),
        "{texts:?}"
    );
    assert!(
        msgs.iter().all(|c| c.params.get("method").is_none()),
        "method is not a parameter"
    );
    let docs = setup
        .api
        .wait_method_calls(TOKEN, "sendDocument", 1, LONG)
        .await;
    assert_eq!(docs[0].params["chat_id"], "3");
    assert_eq!(docs[0].params["document"]["file_name"], "notes.txt");
    assert_eq!(docs[0].params["document"]["content_type"], "text/plain");
    assert_eq!(docs[0].params["document"]["data"], "file body");
    relay
        .wait_log("deleteWebhook, which is not executed from a reply", LONG)
        .await;
    relay
        .wait_log("getMe, which is not executed from a reply", LONG)
        .await;
    let get_me_calls = setup
        .api
        .calls(TOKEN)
        .iter()
        .filter(|c| c.method == "getMe")
        .count();
    assert_eq!(
        get_me_calls, 1,
        "only the start-up getMe; the reply's getMe is ignored"
    );
    assert!(setup
        .api
        .calls(TOKEN)
        .iter()
        .all(|c| c.method != "deleteWebhook"));
    assert_no_token(&relay.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reply_call_is_retried_without_blocking_its_chat() {
    let setup = Setup::new().await;
    // Three failures: the successful call comes at least 1 + 2 + 4 s later.
    for _ in 0..3 {
        setup
            .api
            .inject_method(TOKEN, "sendMessage", Fault::ServerError(502));
    }
    setup
        .backend
        .set_script(|r, _| match r.json()["update_id"].as_i64().unwrap() {
            1 => reply(
                "application/json",
                r#"{"method":"sendMessage","chat_id":7,"text":"retried"}"#,
            ),
            _ => Reply::Ok,
        });
    let mut relay = setup.spawn(&setup.config("", ""));
    setup.api.push_message(TOKEN, 1, 7, "first");
    setup.api.push_message(TOKEN, 2, 7, "second, same chat");
    let got = setup.backend.wait_accepted(2, LONG).await;
    setup
        .api
        .wait_method_calls(TOKEN, "sendMessage", 4, LONG)
        .await;
    relay.wait_log("webhook reply executed", LONG).await;
    let calls: Vec<_> = setup
        .api
        .calls(TOKEN)
        .into_iter()
        .filter(|c| c.method == "sendMessage")
        .collect();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [502, 502, 502, 200]
    );
    assert_eq!(calls[3].params["text"], "retried");
    // The lane went on while the reply call waited for its retry.
    assert!(
        got[1].at < calls[3].at,
        "update 2 waited for the reply call"
    );
    relay.wait_log("webhook reply executed", LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_signed_with_each_key_during_a_rotation() {
    let setup = Setup::new().await;
    const NEW: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let config = setup.config("", "");
    edit_config(
        &config,
        &format!("signing_secret = \"{SECRET}\""),
        &format!("signing_secret = [\"{SECRET}\", \"{NEW}\"]"),
    );
    let _relay = setup.spawn(&config);
    setup.api.push_message(TOKEN, 1, 1, "rotating");
    let got = setup.backend.wait_accepted(1, LONG).await;
    let sig = got[0].header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    for secret in [SECRET, NEW] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got[0].body, &got[0].headers)
            .unwrap_or_else(|e| panic!("{secret}: {e:?}"));
    }
    let stranger =
        standardwebhooks::Webhook::new("whsec_c3RyYW5nZXIgc3RyYW5nZXIgc3RyYW5nZXIh").unwrap();
    assert!(stranger.verify(&got[0].body, &got[0].headers).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_chat_and_type_and_unwanted_updates_are_counted_and_dropped() {
    let setup = Setup::new().await;
    let groups = Backend::start().await;
    let port = free_port();
    let toml = format!(
        r#"
state_dir = "state"
{admin}

{main_bot}
[[bot.forward]]
name = "vip"
url = "{vip}"
chats = [5, "-1001"]

[[bot.forward]]
name = "groups"
url = "{groups}"
chat_types = ["group", "supergroup"]
"#,
        admin = admin_table(port, ""),
        main_bot = setup.main_bot(),
        vip = setup.backend.url(),
        groups = groups.url(),
    );
    let config = write_config(setup.path(), &toml);
    let mut relay = setup.spawn(&config);
    let group = |id: i64, chat: i64| {
        format!(
            r#"{{"update_id":{id},"message":{{"chat":{{"id":{chat},"type":"supergroup"}},"text":"g"}}}}"#
        )
    };
    setup.api.push_message(TOKEN, 1, 5, "vip private");
    setup.api.push_raw(TOKEN, 2, &group(2, -1001));
    setup.api.push_raw(TOKEN, 3, &group(3, -2002));
    setup.api.push_message(TOKEN, 4, 6, "nobody wants this");
    setup
        .api
        .push_raw(TOKEN, 5, r#"{"update_id":5,"poll":{"id":"p"}}"#);
    let vip = setup.backend.wait_accepted(2, LONG).await;
    let grp = groups.wait_accepted(2, LONG).await;
    let ids = |v: &[Received]| {
        let mut i: Vec<i64> = v.iter().map(update_id).collect();
        i.sort();
        i
    };
    assert_eq!(ids(&vip), [1, 2]);
    assert_eq!(ids(&grp), [2, 3]);
    relay.wait_log("no forward wants this update", LONG).await;
    // Counted as received when polled, as unrouted once stored.
    let s = wait_status(port, "five updates counted, two unrouted", |s| {
        s["bots"][0]["updates_received"] == 5
            && s["bots"][0]["updates_unrouted"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(s["bots"][0]["updates_unrouted"], 2, "{s}");
    // Sentinels, one for each, prove nothing else is on its way.
    setup.api.push_message(TOKEN, 6, 5, "sentinel");
    setup.api.push_raw(TOKEN, 7, &group(7, -3003));
    setup.backend.wait_accepted(3, LONG).await;
    groups.wait_accepted(3, LONG).await;
    assert_eq!(setup.backend.received().len(), 3);
    assert_eq!(groups.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informative_headers_tell_bot_attempt_and_receive_time() {
    let setup = Setup::new().await;
    setup.backend.set_script(|_, i| {
        if i == 0 {
            Reply::Status(500)
        } else {
            Reply::Ok
        }
    });
    let _relay = setup.spawn(&setup.config("", ""));
    let before = SystemTime::now();
    setup.api.push_message(TOKEN, 1, 1, "x");
    let got = setup.backend.wait_received(2, LONG).await;
    let received: Vec<SystemTime> = got
        .iter()
        .map(|r| humantime::parse_rfc3339(r.header("x-pollhook-received-at").unwrap()).unwrap())
        .collect();
    assert_eq!(
        received[0], received[1],
        "the receive time is the update's, not the attempt's"
    );
    assert!(received[0] + Duration::from_secs(1) >= before && received[0] <= SystemTime::now());
    assert_eq!(got[0].header("x-pollhook-attempt"), Some("1"));
    assert_eq!(got[1].header("x-pollhook-attempt"), Some("2"));
    assert_eq!(got[1].header("x-pollhook-bot"), Some("main"));
}
