//! Catches a broken rig before it shows up as confusing relay failures:
//! talks to the fake API and the backend directly with reqwest.

use std::time::{Duration, Instant};

use crate::rig::{Backend, FakeApi, Fault, Flavor, Reply};

const TOKEN: &str = "123:ABC";

async fn post(client: &reqwest::Client, url: &str, json: &str) -> (u16, String) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(json.to_owned())
        .send()
        .await
        .expect("request to the rig");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test]
async fn rig_sanity() {
    let api = FakeApi::start(Flavor::Telegram).await;
    api.add_bot(TOKEN, 42, "testbot");
    let client = reqwest::Client::new();
    let get_updates = api.method_url(TOKEN, "getUpdates");

    let (status, body) = post(&client, &api.method_url("nope", "getMe"), "{}").await;
    assert_eq!(status, 401, "{body}");

    // A long poll wakes as soon as an update is pushed.
    let poll = tokio::spawn({
        let (client, url) = (client.clone(), get_updates.clone());
        async move { post(&client, &url, r#"{"timeout":10}"#).await }
    });
    api.wait_calls(TOKEN, 1, Duration::from_secs(5)).await;
    let pushed_at = Instant::now();
    let raw = api.push_message(TOKEN, 7, 1, "hi");
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, format!(r#"{{"ok":true,"result":[{raw}]}}"#));
    assert!(pushed_at.elapsed() < Duration::from_secs(2));

    // A faulted call confirms nothing; the next offset does.
    api.inject(TOKEN, Fault::ServerError(502));
    assert_eq!(post(&client, &get_updates, r#"{"offset":8}"#).await.0, 502);
    assert_eq!((api.pending(TOKEN), api.confirmed(TOKEN)), (1, None));
    let (status, body) = post(&client, &get_updates, r#"{"offset":8}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"result":[]}"#));
    assert_eq!((api.pending(TOKEN), api.confirmed(TOKEN)), (0, Some(7)));

    // A second poll terminates the first with 409.
    let first = tokio::spawn({
        let (client, url) = (client.clone(), get_updates.clone());
        async move { post(&client, &url, r#"{"offset":8,"timeout":10}"#).await }
    });
    api.wait_calls(TOKEN, 4, Duration::from_secs(5)).await;
    let (status, _) = post(&client, &get_updates, r#"{"offset":8,"timeout":0}"#).await;
    assert_eq!(status, 200);
    assert_eq!(first.await.unwrap().0, 409);

    // The backend records everything and counts only 2xx as accepted.
    let backend = Backend::start().await;
    backend.set_script(|_, i| {
        if i == 0 {
            Reply::Status(503)
        } else {
            Reply::Ok
        }
    });
    for _ in 0..2 {
        client.post(backend.url()).body("x").send().await.unwrap();
    }
    backend.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(backend.received().len(), 2);
    let port = backend.port();
    backend.shutdown().await;
    let refused = client
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .send()
        .await;
    assert!(refused.is_err(), "port still open after shutdown");
}
