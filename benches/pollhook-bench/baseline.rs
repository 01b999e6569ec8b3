//! The baseline: a forwarder doing the same HTTP work as pollhook (long-poll
//! a batch, POST every update, confirm with the next offset) with no
//! storage, no ordering and no signing. The gap to it is what durability
//! and pollhook's bookkeeping cost.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
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
    let poll_url = format!("{api}/bot0:baseline/getUpdates");
    if lean {
        let client = lean::client(in_flight);
        let (poll_url, backend) = (lean::uri(&poll_url), lean::uri(backend));
        let c = client.clone();
        let poll = move |params| {
            let answer = lean::post(c.clone(), poll_url.clone(), params);
            async move { answer.await.map(|a| a.body) }
        };
        let send = move |body| {
            let answer = lean::post(client.clone(), backend.clone(), body);
            async move { answer.await.is_some_and(|a| a.accepted) }
        };
        return forward(in_flight, poll, send).await;
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(in_flight)
        .build()
        .expect("client");
    let c = client.clone();
    let poll = move |params: Bytes| {
        let request = c
            .post(&poll_url)
            .header("content-type", "application/json")
            .body(params);
        async move { request.send().await.ok()?.bytes().await.ok() }
    };
    let backend = backend.to_string();
    let send = move |body: Bytes| {
        let request = client
            .post(&backend)
            .header("content-type", "application/json")
            .body(body);
        async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
    };
    forward(in_flight, poll, send).await
}

/// The forwarder over any client: `poll` sends a getUpdates body and
/// returns the answer's, `send` posts one update and says whether the
/// backend accepted it.
async fn forward<P, PF, S, SF>(in_flight: usize, mut poll: P, send: S)
where
    P: FnMut(Bytes) -> PF,
    PF: Future<Output = Option<Bytes>>,
    S: Fn(Bytes) -> SF + Clone + Send + 'static,
    SF: Future<Output = bool> + Send,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut offset: Option<i64> = None;
    loop {
        let params = serde_json::json!({ "timeout": 30, "limit": 100, "offset": offset });
        let params = Bytes::from(serde_json::to_vec(&params).expect("JSON"));
        let Some(bytes) = poll(params).await else {
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
            let send = send.clone();
            let body = Bytes::from(raw.get().to_owned());
            sends.push(tokio::spawn(async move {
                // Retry until accepted, like any at-least-once forwarder.
                while !send(body.clone()).await {}
                drop(permit);
            }));
        }
        for s in sends {
            let _ = s.await;
        }
    }
}

mod lean {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Method, Request, Uri};
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;

    pub type Lean = Client<HttpConnector, Full<Bytes>>;

    pub struct Answer {
        pub accepted: bool,
        pub body: Bytes,
    }

    pub fn client(in_flight: usize) -> Lean {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(in_flight)
            .build(http)
    }

    pub fn uri(url: &str) -> Uri {
        url.parse().expect("baseline: a URL")
    }

    /// A JSON POST; its answer read whole.
    pub async fn post(client: Lean, url: Uri, body: Bytes) -> Option<Answer> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = url;
        req.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        let resp = client.request(req).await.ok()?;
        let accepted = resp.status().is_success();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Answer { accepted, body })
    }
}
