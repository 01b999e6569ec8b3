//! The admin HTTP API, on loopback by default: health, status, live
//! events (`/events`, see [`crate::ops::events`]) and dead letters while
//! the daemon runs (sled lets only one process open the
//! database, so `pollhook dlq` talks to this instead).
//!
//! With `admin.token` set, every request but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`. Every request needs a `Host` naming this
//! API and no `Origin`: a web page the operator visits could otherwise reach
//! a loopback API through DNS rebinding.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::events::Filter;
use crate::ops::cluster_dlq;
use crate::ops::deadletters::{self, Selection};
use crate::ops::events::Streams;
use crate::ops::history;
use crate::ops::serve::{Limits, LocalAddr};
use crate::ops::status::{self, Observed};

pub struct Admin {
    pub relay: Arc<Observed>,
    pub token: Option<SecretString>,
    /// Host names accepted besides localhost and IP addresses of this API.
    pub allowed_hosts: Vec<String>,
    /// What `/events` streams.
    pub events: crate::events::Bus,
}

type Shared = Arc<Admin>;

pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Admin,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let streams = Arc::new(Streams::new(
        admin.events.clone(),
        &limits,
        shutdown.clone(),
    ));
    let admin = Arc::new(admin);
    let guarded = Router::new()
        .route(
            "/events",
            get(move |Query(filter): Query<Filter>| async move { streams.open(filter) }),
        )
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/dlq", get(dlq_list))
        .route("/dlq/{id}", get(dlq_show))
        .route("/dlq/replay", post(dlq_replay))
        .route("/dlq/drop", post(dlq_drop))
        .route(
            "/history",
            get(|State(a): State<Shared>, Query(p)| async move {
                history::get_list(a.relay.replays.clone(), p).await
            }),
        )
        .route(
            "/history/show",
            get(|State(a): State<Shared>, Query(p)| async move {
                history::get_show(a.relay.replays.clone(), p).await
            }),
        )
        .route(
            "/history/replay",
            post(
                |State(a): State<Shared>, body: axum::body::Bytes| async move {
                    history::post_replay(a.relay.replays.clone(), body).await
                },
            ),
        )
        .route(
            "/history/resend",
            post(
                |State(a): State<Shared>, body: axum::body::Bytes| async move {
                    history::post_resend(a.relay.replays.clone(), body).await
                },
            ),
        )
        .route(
            "/history/replays",
            get(|State(a): State<Shared>| async move {
                history::get_replays(a.relay.replays.clone()).await
            }),
        )
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .layer(middleware::from_fn_with_state(
            admin.clone(),
            same_host_only,
        ))
        .with_state(admin);
    crate::ops::serve::serve(listener, app, limits, shutdown).await;
}

/// Refuses what a browser sends on a web page's behalf: an `Origin` header
/// (no admin client sends one), or a `Host` that is not this API (a
/// rebinding domain that resolves to 127.0.0.1).
async fn same_host_only(State(admin): State<Shared>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return (
            StatusCode::FORBIDDEN,
            "refused: requests from web pages (with an Origin header) may not use the admin API\n",
        )
            .into_response();
    }
    let local = request.extensions().get::<LocalAddr>().map(|a| a.0.ip());
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match host {
        Some(h) if host_allowed(h, local, &admin.allowed_hosts) => next.run(request).await,
        _ => (
            StatusCode::FORBIDDEN,
            format!(
                "refused: Host {:?} is not this admin API; use its IP address, localhost, or a name listed in admin.allowed_hosts\n",
                host.unwrap_or("")
            ),
        )
            .into_response(),
    }
}

/// Whether `host` (a `Host` header: name or address, optional port) names
/// this API: localhost, a loopback address, the address the connection came
/// in on, 0.0.0.0 or `::` (what `pollhook status` uses when `admin.listen`
/// is one of them), or a configured name. Rebinding needs a name the
/// attacker's DNS answers for, never an address. The port is not compared:
/// a rebinding page cannot choose the name, and an SSH tunnel changes the
/// port.
fn host_allowed(host: &str, local: Option<IpAddr>, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || valid_port(tail) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        if ip.is_loopback() || ip.is_unspecified() || Some(ip) == local {
            return true;
        }
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn valid_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

async fn require_token(State(admin): State<Shared>, request: Request, next: Next) -> Response {
    let Some(token) = &admin.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare in constant time: the token guards replay and drop.
    let ok = given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), token.expose_secret().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if ok {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response()
    }
}

fn store_error(e: crate::store::StoreError) -> Response {
    error!("admin API: {e}");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn status_json(State(admin): State<Shared>) -> Response {
    Json(admin.relay.snapshot()).into_response()
}

async fn metrics(State(admin): State<Shared>) -> Response {
    let snap = admin.relay.snapshot();
    let mut body = crate::ops::metrics::render(
        &snap,
        &admin.relay.bots,
        &admin.relay.forwards,
        admin.relay.gateway.as_deref(),
    );
    if let Some(replays) = &admin.relay.replays {
        crate::ops::metrics::history(&mut body, replays);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Ready: every bot polled successfully within twice its poll timeout and
/// the store takes writes. Open, like /healthz: it says nothing secret.
async fn readyz(State(admin): State<Shared>) -> Response {
    let mut problems = status::unready(&admin.relay.polling());
    if let Some((_, e)) = admin.relay.store.failing() {
        problems.push(format!("the store is failing: {e}"));
    } else if !admin.relay.store.writable() {
        problems.push("the store does not take writes".into());
    }
    if admin.relay.nats.as_ref().is_some_and(|n| !n.connected()) {
        problems.push(
            "NATS is not connected: JetStream forwards wait (updates are kept in the local queue)"
                .into(),
        );
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct ListQuery {
    bot: Option<String>,
    forward: Option<String>,
}

async fn dlq_list(State(admin): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    let (bot, forward) = (q.bot.as_deref(), q.forward.as_deref());
    let listed = match &admin.relay.cluster {
        Some(c) => cluster_dlq::list(&c.js, &admin.relay.forwards, bot, forward).await,
        None => deadletters::list(&admin.relay.store, bot, forward),
    };
    match listed {
        Ok(list) => Json(list).into_response(),
        Err(e) => store_error(e),
    }
}

async fn dlq_show(State(admin): State<Shared>, Path(id): Path<u64>) -> Response {
    let shown = match &admin.relay.cluster {
        Some(c) => cluster_dlq::show(&c.js, &admin.relay.forwards, id).await,
        None => deadletters::show(&admin.relay.store, id),
    };
    match shown {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no dead letter {id}\n")).into_response(),
        Err(e) => store_error(e),
    }
}

async fn dlq_replay(State(admin): State<Shared>, Json(sel): Json<Selection>) -> Response {
    let replayed = match &admin.relay.cluster {
        Some(c) => cluster_dlq::replay(&c.js, &admin.relay.forwards, &sel).await,
        None => deadletters::replay(&admin.relay.store, &sel).await,
    };
    match replayed {
        Ok(outcome) => {
            // Wake the dispatchers so replayed jobs go out now.
            for f in admin
                .relay
                .forwards
                .iter()
                .filter(|f| outcome.touched.contains(&f.id))
            {
                f.wake.notify_one();
            }
            info!(
                replayed = outcome.done.len(),
                "dead letters replayed through the admin API"
            );
            Json(outcome).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn dlq_drop(State(admin): State<Shared>, Json(sel): Json<Selection>) -> Response {
    let dropped = match &admin.relay.cluster {
        Some(c) => cluster_dlq::drop(&c.js, &admin.relay.forwards, &sel).await,
        None => deadletters::drop(&admin.relay.store, &sel).await,
    };
    match dropped {
        Ok(outcome) => {
            info!(
                dropped = outcome.done.len(),
                "dead letters dropped through the admin API"
            );
            Json(outcome).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn hosts_that_name_this_api() {
        let local = Some("10.0.0.5".parse().unwrap());
        let extra = vec!["pollhook.internal".to_string()];
        for ok in [
            "localhost",
            "LOCALHOST:9807",
            "127.0.0.1",
            "127.0.0.1:9807",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:9807",
            "10.0.0.5:9807",
            "0.0.0.0:9807",
            "[::]:9807",
            "pollhook.internal",
            "Pollhook.Internal:9807",
        ] {
            assert!(host_allowed(ok, local, &extra), "{ok}");
        }
        for bad in [
            "",
            "attacker.example",
            "attacker.example:9807",
            "localhost.attacker.example",
            "10.0.0.6:9807",
            "[::1",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "::1",
            "internal",
        ] {
            assert!(!host_allowed(bad, local, &extra), "{bad}");
        }
    }
}
