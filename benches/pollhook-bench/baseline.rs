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

/// `lean`: hyper's pooled client instead of reqwest, the client pollhook
/// delivers with since it dropped reqwest's per-request layers (see
/// BENCHMARKS.md): the same forwarder with HTTP as cheap as pollhook's.
pub async fn run(api: &str, backend: &str, in_flight: usize, lean: bool) {
    if lean {
        return lean::run(api, backend, in_flight).await;
    }
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

mod lean {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Method, Request};
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use tokio::sync::Semaphore;

    use super::{Batch, Id};

    type Lean = Client<HttpConnector, Full<Bytes>>;

    fn post(url: &hyper::Uri, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = url.clone();
        req.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        req
    }

    async fn body_of(client: &Lean, req: Request<Full<Bytes>>) -> Option<(u16, Bytes)> {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }

    pub async fn run(api: &str, backend: &str, in_flight: usize) {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Lean = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(in_flight)
            .build(http);
        let poll_url: hyper::Uri = format!("{api}/bot0:baseline/getUpdates")
            .parse()
            .expect("poll URL");
        let backend: hyper::Uri = backend.parse().expect("backend URL");
        let permits = Arc::new(Semaphore::new(in_flight));
        let mut offset: Option<i64> = None;
        loop {
            let params = serde_json::json!({ "timeout": 30, "limit": 100, "offset": offset });
            let params = Bytes::from(serde_json::to_vec(&params).expect("JSON"));
            let Some((_, bytes)) = body_of(&client, post(&poll_url, params)).await else {
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
                let (client, url) = (client.clone(), backend.clone());
                let body = Bytes::from(raw.get().to_owned());
                sends.push(tokio::spawn(async move {
                    // Retry until accepted, like any at-least-once forwarder.
                    while body_of(&client, post(&url, body.clone()))
                        .await
                        .is_none_or(|(status, _)| !(200..300).contains(&status))
                    {
                    }
                    drop(permit);
                }));
            }
            for s in sends {
                let _ = s.await;
            }
        }
    }
}
