//! The baseline: a forwarder doing the same HTTP work as pollhook (long-poll
//! a batch, POST every update, confirm with the next offset) with no
//! storage, no ordering and no signing. The gap to it is what durability
//! and pollhook's bookkeeping cost.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

#[derive(Deserialize)]
struct Batch {
    result: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Id {
    update_id: i64,
}

pub async fn run(api: &str, backend: &str, in_flight: usize) {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(in_flight)
        .build()
        .expect("client");
    let poll_url = format!("{api}/bot0:baseline/getUpdates");
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut offset: Option<i64> = None;
    loop {
        let params = serde_json::json!({ "timeout": 30, "limit": 100, "offset": offset });
        let Ok(resp) = client.post(&poll_url).json(&params).send().await else {
            continue;
        };
        let Ok(bytes) = resp.bytes().await else {
            continue;
        };
        let Ok(batch) = serde_json::from_slice::<Batch>(&bytes) else {
            continue;
        };
        let mut sends = Vec::with_capacity(batch.result.len());
        for raw in batch.result {
            if let Ok(id) = serde_json::from_str::<Id>(raw.get()) {
                offset = Some(id.update_id + 1);
            }
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let (client, url) = (client.clone(), backend.to_string());
            let body = bytes::Bytes::from(raw.get().to_owned());
            sends.push(tokio::spawn(async move {
                // Retry until accepted, like any at-least-once forwarder.
                while client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_or(true, |r| !r.status().is_success())
                {}
                drop(permit);
            }));
        }
        for s in sends {
            let _ = s.await;
        }
    }
}
