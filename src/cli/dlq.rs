//! The `pollhook dlq` command: through the admin API while the daemon runs,
//! straight on the state directory while it is stopped (sled lets only one
//! process open the database, so there is no third way).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::ops::deadletters::{self, DeadLetter, Outcome, Selection};
use crate::store::Store;

pub enum Command {
    List {
        bot: Option<String>,
        forward: Option<String>,
        json: bool,
    },
    Show {
        id: u64,
    },
    Replay(Selection),
    Drop(Selection),
}

/// Where the dead letters are.
pub struct Target {
    pub state_dir: PathBuf,
    pub admin: Option<SocketAddr>,
    pub token: Option<SecretString>,
    pub cache_bytes: u64,
}

enum Via {
    Api {
        base: String,
        client: reqwest::Client,
        token: Option<SecretString>,
    },
    Store(Box<Store>),
}

/// Runs a dlq command, printing its result; returns whether it fully worked.
pub async fn run(target: Target, command: Command) -> Result<bool, String> {
    let via = connect(target).await?;
    match command {
        Command::List { bot, forward, json } => {
            let list = match &via {
                Via::Store(s) => deadletters::list(s, bot.as_deref(), forward.as_deref())
                    .map_err(|e| e.to_string())?,
                Via::Api { .. } => {
                    let mut query = Vec::new();
                    if let Some(b) = &bot {
                        query.push(("bot", b.as_str()));
                    }
                    if let Some(f) = &forward {
                        query.push(("forward", f.as_str()));
                    }
                    get_json(&via, "/dlq", &query).await?
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
                );
            } else {
                print_table(&list);
            }
            Ok(true)
        }
        Command::Show { id } => {
            let one: Option<DeadLetter> = match &via {
                Via::Store(s) => deadletters::show(s, id).map_err(|e| e.to_string())?,
                Via::Api { .. } => get_json_opt(&via, &format!("/dlq/{id}")).await?,
            };
            match one {
                Some(d) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?
                    );
                    Ok(true)
                }
                None => {
                    eprintln!("error: no dead letter {id}");
                    Ok(false)
                }
            }
        }
        Command::Replay(sel) => {
            let outcome = match &via {
                Via::Store(s) => deadletters::replay(s, &sel)
                    .await
                    .map_err(|e| e.to_string())?,
                Via::Api { .. } => post_json(&via, "/dlq/replay", &sel).await?,
            };
            Ok(report("replayed", &outcome))
        }
        Command::Drop(sel) => {
            let outcome = match &via {
                Via::Store(s) => deadletters::drop(s, &sel)
                    .await
                    .map_err(|e| e.to_string())?,
                Via::Api { .. } => post_json(&via, "/dlq/drop", &sel).await?,
            };
            Ok(report("dropped", &outcome))
        }
    }
}

async fn connect(t: Target) -> Result<Via, String> {
    if let Some(addr) = t.admin {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let base = format!("http://{addr}");
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            return Ok(Via::Api {
                base,
                client,
                token: t.token,
            });
        }
    }
    // Opening would create an empty database and report "no dead letters"
    // for a mistyped path; say what is wrong instead.
    if !t.state_dir.join("db").exists() {
        return Err(format!(
            "no pollhook state in {} (set state_dir in the configuration, or pass --state-dir)",
            t.state_dir.display()
        ));
    }
    // sled may create files here (run as root from a shell, with its
    // umask): keep them as private as the relay's own.
    if let Err(e) = crate::store::dir::create(&t.state_dir) {
        return Err(format!("cannot use {}: {e}", t.state_dir.display()));
    }
    match Store::open(&t.state_dir, t.cache_bytes) {
        Ok(s) => Ok(Via::Store(Box::new(s))),
        Err(e) => Err(match t.admin {
            Some(addr) => format!("{e}; and the admin API at {addr} does not answer. Is pollhook running with a different admin.listen?"),
            None => format!("{e}. If pollhook is running, set admin.listen in its configuration so `pollhook dlq` can reach it"),
        }),
    }
}

fn request(via: &Via, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let Via::Api {
        base,
        client,
        token,
    } = via
    else {
        unreachable!("only called for the API")
    };
    let mut r = client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t.expose_secret());
    }
    r
}

async fn answer(r: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
    let resp = r
        .send()
        .await
        .map_err(|e| format!("admin API: {}", crate::http::error_chain(&e)))?;
    Ok(resp)
}

async fn expect_ok<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, String> {
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("admin API answered {status}: {}", text.trim()));
    }
    resp.json()
        .await
        .map_err(|e| format!("admin API: unreadable answer: {e}"))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    via: &Via,
    path: &str,
    query: &[(&str, &str)],
) -> Result<T, String> {
    expect_ok(answer(request(via, reqwest::Method::GET, path).query(query)).await?).await
}

async fn get_json_opt<T: serde::de::DeserializeOwned>(
    via: &Via,
    path: &str,
) -> Result<Option<T>, String> {
    let resp = answer(request(via, reqwest::Method::GET, path)).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    expect_ok(resp).await.map(Some)
}

async fn post_json(via: &Via, path: &str, sel: &Selection) -> Result<Outcome, String> {
    expect_ok(answer(request(via, reqwest::Method::POST, path).json(sel)).await?).await
}

fn report(verb: &str, o: &Outcome) -> bool {
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    println!(
        "{verb} {}{}",
        o.done.len(),
        if o.done.is_empty() {
            String::new()
        } else {
            format!(": {}", ids(&o.done))
        }
    );
    if !o.missing.is_empty() {
        eprintln!("error: not dead letters: {}", ids(&o.missing));
    }
    o.missing.is_empty()
}

fn print_table(list: &[DeadLetter]) {
    if list.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:<8} {:<12} {:<20} {:>12} {:<16} {:>8}  {:<20}  LAST ERROR",
        "ID", "BOT", "FORWARD", "UPDATE", "KIND", "ATTEMPTS", "DEAD AT"
    );
    for d in list {
        let update = d.update_id.map_or("-".to_string(), |u| u.to_string());
        let mut fwd = d.forward.clone();
        if fwd.chars().count() > 20 {
            fwd = fwd.chars().take(19).collect::<String>() + "…";
        }
        println!(
            "{:<8} {:<12} {:<20} {:>12} {:<16} {:>8}  {:<20}  {}",
            d.id, d.bot, fwd, update, d.kind, d.attempts, d.dead_at, d.last_error
        );
    }
}
