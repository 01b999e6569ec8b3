//! The admin HTTP API, on loopback by default: health, status, and dead
//! letters while the daemon runs (sled lets only one process open the
//! database, so `pollhook dlq` talks to this instead).
//!
//! With `admin.token` set, every request but `/healthz` needs
//! `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::deadletters::{self, Selection};
use crate::status::{self, Observed};

pub struct Admin {
    pub relay: Arc<Observed>,
    pub token: Option<SecretString>,
}

type Shared = Arc<Admin>;

pub async fn serve(listener: tokio::net::TcpListener, admin: Admin, shutdown: CancellationToken) {
    let admin = Arc::new(admin);
    let guarded = Router::new()
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/dlq", get(dlq_list))
        .route("/dlq/{id}", get(dlq_show))
        .route("/dlq/replay", post(dlq_replay))
        .route("/dlq/drop", post(dlq_drop))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(admin);
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        error!("admin API stopped: {e}");
    }
}

async fn require_token(State(admin): State<Shared>, request: Request, next: Next) -> Response {
    let Some(token) = &admin.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
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
    let body = crate::metrics::render(&snap, &admin.relay.bots, &admin.relay.forwards);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// Ready: every bot polled successfully within twice its poll timeout and
/// the store takes writes. Open, like /healthz: it says nothing secret.
async fn readyz(State(admin): State<Shared>) -> Response {
    let mut problems = status::unready(&admin.relay.bots);
    if !admin.relay.store.writable() {
        problems.push("the store does not take writes".into());
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
    match deadletters::list(&admin.relay.store, q.bot.as_deref(), q.forward.as_deref()) {
        Ok(list) => Json(list).into_response(),
        Err(e) => store_error(e),
    }
}

async fn dlq_show(State(admin): State<Shared>, Path(id): Path<u64>) -> Response {
    match deadletters::show(&admin.relay.store, id) {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no dead letter {id}\n")).into_response(),
        Err(e) => store_error(e),
    }
}

async fn dlq_replay(State(admin): State<Shared>, Json(sel): Json<Selection>) -> Response {
    match deadletters::replay(&admin.relay.store, &sel).await {
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
    match deadletters::drop(&admin.relay.store, &sel).await {
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
