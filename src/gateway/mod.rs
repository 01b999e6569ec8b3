//! The way back out: backends call the Bot API through pollhook with a
//! local key instead of the token, and every call of a bot, from any
//! backend and from webhook replies, keeps to the bot's one budget.
//!
//! The URL shape is Telegram's (`/bot{key}/{method}`,
//! `/file/bot{key}/{path}`) whatever the bot's platform, so a framework
//! needs only its API base URL changed.

pub mod answers;
mod call;
pub mod params;
mod traced;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Response;
use axum::Router;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::budget::Budget;
use crate::config::{ClientSettings, GatewaySettings};
use crate::ops::serve::Limits;
use crate::platform::api::BotApi;
use crate::stats::GatewayStats;
use answers::Answers;

/// A bot as the gateway sees it.
pub struct GatewayBot {
    pub name: String,
    pub api: Arc<BotApi>,
    pub budget: Arc<Budget>,
    pub clients: Vec<ClientSettings>,
    /// Streamed uploads in progress at once (see [`uploads_for`]).
    pub uploads: Arc<tokio::sync::Semaphore>,
}

/// A third of the bot's tightest per-bot window, at least one: uploads in
/// progress hold their places until the platform answers.
pub fn uploads_for(limits: &crate::budget::Limits) -> usize {
    limits
        .per_bot
        .iter()
        .map(|w| w.calls as usize / 3)
        .min()
        .unwrap_or(16)
        .max(1)
}

pub struct Gateway {
    bots: Vec<GatewayBot>,
    /// Each key names one client of one bot: (bot, client) indexes.
    keys: HashMap<String, (usize, usize)>,
    answers: Arc<Answers>,
    pub stats: Arc<GatewayStats>,
    max_wait: Duration,
    /// Tracing is on: each method call is a `gateway` span.
    traced: bool,
}

/// The client a key belongs to.
#[derive(Clone, Copy)]
pub struct Caller {
    bot: usize,
    client: usize,
}

impl Caller {
    fn bot<'a>(&self, gw: &'a Gateway) -> &'a GatewayBot {
        &gw.bots[self.bot]
    }

    fn client<'a>(&self, gw: &'a Gateway) -> &'a ClientSettings {
        &gw.bots[self.bot].clients[self.client]
    }
}

/// How often remembered answers past their 24 hours are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(600);

impl Gateway {
    pub fn new(bots: Vec<GatewayBot>, answers: Answers, settings: &GatewaySettings) -> Gateway {
        let mut keys = HashMap::new();
        for (i, b) in bots.iter().enumerate() {
            for (j, c) in b.clients.iter().enumerate() {
                keys.insert(c.key.expose_secret().to_string(), (i, j));
            }
        }
        Gateway {
            bots,
            keys,
            answers: Arc::new(answers),
            stats: Arc::new(GatewayStats::default()),
            max_wait: settings.max_wait,
            traced: false,
        }
    }

    /// Each call becomes a span (tracing on).
    pub fn traced(mut self, on: bool) -> Gateway {
        self.traced = on;
        self
    }

    fn caller(&self, key: &str) -> Option<Caller> {
        let key = percent_decode(key);
        self.keys
            .get(key.as_str())
            .map(|&(bot, client)| Caller { bot, client })
    }
}

/// Serves the gateway on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    settings: GatewaySettings,
    header_timeout: Duration,
    idle_timeout: Duration,
    drain: Duration,
    shutdown: CancellationToken,
) {
    let limits = Limits {
        max_connections: settings.max_connections,
        header_timeout,
        idle_timeout,
        name: "gateway",
        whole_bodies: false,
    };
    let expiring = gateway.answers.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let e = expiring.clone();
            match tokio::task::spawn_blocking(move || e.expire())
                .await
                .unwrap_or(Ok(0))
            {
                Ok(0) => {}
                Ok(n) => info!(
                    "gateway: forgot {n} answers remembered for Idempotency-Keys over 24 h old"
                ),
                Err(e) => warn!("gateway: cannot drop old remembered answers: {e}"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EXPIRE_EVERY) => {}
            }
        }
    });
    let app = Router::new().fallback(route).with_state(gateway);
    // A stop lets calls in progress finish for up to `drain`: calls can
    // wait for the budget (max_wait) or stream uploads for minutes.
    let serving = crate::ops::serve::serve(listener, app, limits, shutdown.clone());
    let cut = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        _ = serving => {}
        _ = cut => warn!("gateway: calls still running at the stop timeout were abandoned"),
    }
}

async fn route(State(gw): State<Arc<Gateway>>, request: Request) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let is_get_or_post =
        parts.method == axum::http::Method::GET || parts.method == axum::http::Method::POST;
    // `/file/bot{key}/{path}` or `/bot{key}/{method}`.
    let (file, rest) = match path.strip_prefix("/file/bot") {
        Some(rest) => (true, rest),
        None => match path.strip_prefix("/bot") {
            Some(rest) => (false, rest),
            None => return call::error(404, "Not Found"),
        },
    };
    let Some((key, tail)) = rest.split_once('/') else {
        return call::error(404, "Not Found");
    };
    let Some(caller) = gw.caller(key) else {
        crate::stats::add(&gw.stats.unknown_key, 1);
        return call::error(401, "Unauthorized: not a pollhook gateway key");
    };
    if !is_get_or_post {
        return call::error(405, "Method Not Allowed: use GET or POST");
    }
    if file {
        call::file(gw.clone(), caller, tail.to_string()).await
    } else {
        let span = gw
            .traced
            .then(|| traced::span(&gw, caller, tail, &parts.headers));
        let call = call::method(
            gw.clone(),
            caller,
            tail.to_string(),
            query,
            parts.headers,
            body,
        );
        match span {
            None => call.await,
            Some(span) => {
                let answer = call.instrument(span.clone()).await;
                traced::record(&span, &answer);
                answer
            }
        }
    }
}

/// `%3A` for `:` and the like: some clients encode the key's colon.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_may_come_percent_encoded() {
        assert_eq!(super::percent_decode("1%3Aabc"), "1:abc");
        assert_eq!(super::percent_decode("1:abc"), "1:abc");
        assert_eq!(super::percent_decode("bad%zz%"), "bad%zz%");
    }
}
