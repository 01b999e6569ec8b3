//! A client for the relay's admin API on 127.0.0.1.

use serde_json::Value;

use super::wait::{eventually, LONG};

/// `GET path` on the admin API at `port`: (status, body).
pub async fn get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("the admin API on {port} does not answer {path}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `/status` as JSON text.
pub async fn status_json(port: u16) -> String {
    get(port, "/status").await.1
}

/// Waits until `path` answers `code`; returns the body.
pub async fn wait_code(port: u16, path: &str, code: u16) -> String {
    eventually(
        &format!("{path} to answer {code}"),
        LONG,
        async || match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
            Ok(r) if r.status().as_u16() == code => Ok(r.text().await.unwrap_or_default()),
            Ok(r) => Err(format!(
                "{}: {}",
                r.status().as_u16(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Err(e.without_url().to_string()),
        },
    )
    .await
}

/// Waits until `/status` satisfies `done`; returns that status.
pub async fn wait_status(port: u16, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(what, LONG, async || {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/status"))
            .await
            .map_err(|e| format!("no /status on port {port}: {}", e.without_url()))?;
        let status: Value = r.json().await.map_err(|e| e.to_string())?;
        if done(&status) {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
}

/// Waits until the first bot's state in `/status` is `state`; returns that
/// bot's entry.
pub async fn wait_bot_state(port: u16, state: &str) -> Value {
    let status = wait_status(port, &format!("the bot's state to become {state:?}"), |s| {
        s["bots"][0]["state"] == state
    })
    .await;
    status["bots"][0].clone()
}
