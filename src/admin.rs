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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::deadletters::{self, Selection};
use crate::stats::{self, BotStats, ForwardStats};
use crate::store::Store;

/// What the admin API needs to know of a running forward.
pub struct ForwardHandle {
    pub bot: String,
    pub name: String,
    pub id: u32,
    pub wake: Arc<Notify>,
    pub stats: Arc<ForwardStats>,
}

pub struct Admin {
    pub store: Arc<Store>,
    pub bots: Vec<(String, Arc<BotStats>)>,
    pub forwards: Vec<ForwardHandle>,
    pub token: Option<SecretString>,
}

type Shared = Arc<Admin>;

pub async fn serve(listener: tokio::net::TcpListener, admin: Admin, shutdown: CancellationToken) {
    let admin = Arc::new(admin);
    let guarded = Router::new()
        .route("/status", get(status))
        .route("/dlq", get(dlq_list))
        .route("/dlq/{id}", get(dlq_show))
        .route("/dlq/replay", post(dlq_replay))
        .route("/dlq/drop", post(dlq_drop))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
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

async fn status(State(admin): State<Shared>) -> Response {
    let forwards: Vec<serde_json::Value> = admin
        .forwards
        .iter()
        .map(|f| {
            serde_json::json!({
                "bot": f.bot,
                "forward": f.name,
                "queue_depth": admin.store.depth(f.id),
                "dead_letters": admin.store.dead_count(f.id),
                "counters": f.stats.snapshot(),
                "last_error": stats::last(&f.stats.last_error).map(|(_, e)| e),
            })
        })
        .collect();
    let bots: Vec<serde_json::Value> = admin
        .bots
        .iter()
        .map(|(name, s)| {
            serde_json::json!({
                "bot": name,
                "updates_received": stats::get(&s.updates_received),
                "updates_unrouted": stats::get(&s.updates_unrouted),
                "polls_ok": stats::get(&s.polls_ok),
                "polls_failed": stats::get(&s.polls_failed),
                "last_poll": stats::last(&s.last_poll).map(|(_, r)| r),
            })
        })
        .collect();
    Json(serde_json::json!({ "bots": bots, "forwards": forwards })).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    bot: Option<String>,
    forward: Option<String>,
}

async fn dlq_list(State(admin): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    match deadletters::list(&admin.store, q.bot.as_deref(), q.forward.as_deref()) {
        Ok(list) => Json(list).into_response(),
        Err(e) => store_error(e),
    }
}

async fn dlq_show(State(admin): State<Shared>, Path(id): Path<u64>) -> Response {
    match deadletters::show(&admin.store, id) {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no dead letter {id}\n")).into_response(),
        Err(e) => store_error(e),
    }
}

async fn dlq_replay(State(admin): State<Shared>, Json(sel): Json<Selection>) -> Response {
    match deadletters::replay(&admin.store, &sel).await {
        Ok(outcome) => {
            // Wake the dispatchers so replayed jobs go out now.
            for f in admin
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
    match deadletters::drop(&admin.store, &sel).await {
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
