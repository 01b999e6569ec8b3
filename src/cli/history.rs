//! `pollhook history`, `show`, `replay` and `resend`: through the admin API
//! while the daemon runs, on the state directory while it is stopped (a
//! replay queued so is delivered when pollhook starts).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::live::local_time;
use crate::clock::now_ms;
use crate::history::History;
use crate::ops::client::{AdminClient, ClientError};
use crate::ops::history::{self as api, Selector};
use crate::replay::{Progress, ReplayError, Replays, Target};

pub enum Command {
    List {
        sel: Selector,
        limit: usize,
        json: bool,
    },
    Show {
        bot: String,
        update_id: i64,
        json: bool,
    },
    Replay(Selector),
    Resend {
        bot: String,
        update_id: i64,
        forward: Option<String>,
    },
}

enum Via {
    Api(AdminClient),
    Local(Arc<Replays>),
}

pub async fn command(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let (api, dir) = match config {
        Some(path) => {
            let view = crate::config::load_admin_view(&path)?;
            // Replays of many updates stream progress: only silence is bounded.
            let api = view
                .listen
                .map(|addr| AdminClient::streaming(addr, view.token, Duration::from_secs(60)));
            (api, view.state_dir)
        }
        None => (
            None,
            state_dir.unwrap_or_else(crate::config::default_state_dir),
        ),
    };
    let via = connect(api, dir).await?;
    run(&via, command).await
}

async fn connect(api: Option<AdminClient>, dir: PathBuf) -> anyhow::Result<Via> {
    let store = match super::dlq::connect(api, dir.clone()).await? {
        super::dlq::Via::Api(api) => return Ok(Via::Api(api)),
        super::dlq::Via::Store(s) => Arc::new(*s),
    };
    let history = History::reader(&dir);
    let mut bots: HashMap<String, Vec<Target>> = history
        .bots()
        .iter()
        .map(|b| (b.name.clone(), Vec::new()))
        .collect();
    for f in store.forwards()? {
        bots.entry(f.bot).or_default().push(Target {
            id: f.id,
            name: f.name,
            filter: Default::default(),
            wake: Default::default(),
        });
    }
    Ok(Via::Local(Arc::new(Replays::new(store, history, bots))))
}

/// An error as the API words it (`{"error": …}`), else as it is.
fn said(e: ClientError) -> anyhow::Error {
    if let ClientError::Refused { body, .. } = &e {
        if let Some(msg) = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
        {
            return anyhow::anyhow!(msg);
        }
    }
    e.into()
}

async fn run(via: &Via, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { sel, limit, json } => {
            let lines = match via {
                Via::Local(r) => {
                    let (mut lines, more) =
                        api::list(r, &sel, limit).map_err(|e| anyhow::anyhow!(e.0))??;
                    if more {
                        lines.push(json!({ "more": true }));
                    }
                    lines
                }
                Via::Api(c) => {
                    let limit = limit.to_string();
                    let mut q = vec![("bot", sel.bot.as_str()), ("limit", limit.as_str())];
                    for (k, v) in [
                        ("since", &sel.since),
                        ("until", &sel.until),
                        ("kind", &sel.kind),
                        ("chat", &sel.chat),
                    ] {
                        if let Some(v) = v {
                            q.push((k, v.as_str()));
                        }
                    }
                    let text = c
                        .open("/history", &q)
                        .await
                        .map_err(said)?
                        .text()
                        .await
                        .map_err(|e| c.broken(e))?;
                    text.lines()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect()
                }
            };
            print_list(&lines, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            bot,
            update_id,
            json,
        } => {
            let story: Result<String, anyhow::Error> = match via {
                Via::Local(r) => api::show(r, &bot, update_id).map_err(Into::into),
                Via::Api(c) => {
                    let q = update_id.to_string();
                    match c
                        .open("/history/show", &[("bot", &bot), ("update_id", &q)])
                        .await
                    {
                        Ok(resp) => resp.text().await.map_err(|e| c.broken(e).into()),
                        Err(e) => Err(said(e)),
                    }
                }
            };
            let story = match story {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if json {
                println!("{story}");
            } else {
                print_story(&serde_json::from_str(&story)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(sel) => replay(via, sel).await,
        Command::Resend {
            bot,
            update_id,
            forward,
        } => {
            let done: anyhow::Result<Value> = match via {
                Via::Local(r) => r
                    .resend(&bot, update_id, forward)
                    .await
                    .map(|(n, f)| json!({ "queued": n, "forwards": f }))
                    .map_err(Into::into),
                Via::Api(c) => c
                    .post(
                        "/history/resend",
                        &json!({ "bot": bot, "update_id": update_id, "forward": forward }),
                    )
                    .await
                    .map_err(said),
            };
            match done {
                Ok(v) => {
                    println!(
                        "resent update {update_id} of bot {bot} to {}",
                        names(&v["forwards"])
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn names(v: &Value) -> String {
    let list: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if list.is_empty() {
        "its forwards".to_string()
    } else {
        list.join(", ")
    }
}

async fn replay(via: &Via, sel: Selector) -> anyhow::Result<ExitCode> {
    let bot = sel.bot.clone();
    if sel.dry_run {
        let found: Value = match via {
            Via::Local(r) => {
                let state = sel.replay(now_ms()).map_err(|e| anyhow::anyhow!(e.0))?;
                serde_json::to_value(r.dry_run(&state)?)?
            }
            Via::Api(c) => {
                let text = post_stream(c, &sel)
                    .await?
                    .text()
                    .await
                    .map_err(|e| c.broken(e))?;
                serde_json::from_str(text.lines().next().unwrap_or("{}"))?
            }
        };
        let kinds: Vec<String> = found["kinds"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let span = match (found["first_at"].as_u64(), found["last_at"].as_u64()) {
            (Some(a), Some(b)) => format!(" (received {} to {})", stamp(a), stamp(b)),
            _ => String::new(),
        };
        println!(
            "would replay {} updates of bot {bot} to {}{}{span}",
            found["matched"].as_u64().unwrap_or(0),
            names(&found["forwards"]),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(": {}", kinds.join(", "))
            },
        );
        return Ok(ExitCode::SUCCESS);
    }
    let terminal = std::io::stderr().is_terminal();
    let last = match via {
        Via::Local(r) => {
            let state = sel.replay(now_ms()).map_err(|e| anyhow::anyhow!(e.0))?;
            let (id, state) = r.create(state)?;
            let progress = Progress::new(id, &state);
            let mut watch = progress.watch();
            let runner = r.clone();
            let job = tokio::spawn(async move { runner.run(id, state, progress).await });
            loop {
                let snap = serde_json::to_value(&*watch.borrow_and_update())?;
                draw(&snap, terminal);
                if snap["done"] == true || watch.changed().await.is_err() {
                    break;
                }
            }
            job.await?.map_err(|e: ReplayError| anyhow::anyhow!(e))?;
            let last = serde_json::to_value(&*watch.borrow())?;
            last
        }
        Via::Api(c) => {
            let mut resp = post_stream(c, &sel).await?;
            let mut pending = String::new();
            let mut last = Value::Null;
            while let Some(chunk) = resp.chunk().await.map_err(|e| c.broken(e))? {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        draw(&v, terminal);
                        last = v;
                    }
                }
            }
            last
        }
    };
    if terminal {
        eprintln!();
    }
    if let Some(e) = last["error"].as_str() {
        anyhow::bail!(
            "replay {} stopped: {e}; it resumes when pollhook starts again",
            last["replay"]
        );
    }
    if last["done"] != true {
        anyhow::bail!(
            "the admin API stopped answering before replay {} finished; it goes on in pollhook (see `GET /history/replays`)",
            last["replay"]
        );
    }
    println!(
        "replayed {} updates of bot {bot} to {} (replay {})",
        last["queued"].as_u64().unwrap_or(0),
        names(&last["forwards"]),
        last["replay"]
    );
    Ok(ExitCode::SUCCESS)
}

async fn post_stream(c: &AdminClient, sel: &Selector) -> anyhow::Result<reqwest::Response> {
    c.post_open(
        "/history/replay",
        &json!({
            "bot": sel.bot, "forward": sel.forward, "since": sel.since, "until": sel.until,
            "kind": sel.kind, "chat": sel.chat, "dry_run": sel.dry_run,
        }),
    )
    .await
    .map_err(said)
}

/// A progress line rewritten in place on a terminal; nothing otherwise.
fn draw(snap: &Value, terminal: bool) {
    if !terminal {
        return;
    }
    let queued = snap["queued"].as_u64().unwrap_or(0);
    let (scanned, total) = (
        snap["scanned_bytes"].as_u64().unwrap_or(0),
        snap["total_bytes"].as_u64().unwrap_or(0),
    );
    let pct = (scanned * 100).checked_div(total).unwrap_or(0);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r\x1b[2Kreplaying: {} queued, {pct}% of history read",
        thousands(queued)
    );
    let _ = err.flush();
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn stamp(ms: u64) -> String {
    let (d, t) = local_time(ms);
    format!("{d} {t}")
}

/// One forward's outcome as a token: `app=200`, `app=ack`,
/// `app=failed(502)x3`, `app=dead`, `app=dropped`, `app=pending`.
fn token(name: &str, f: &Value) -> String {
    let attempts = f["attempts"].as_u64().unwrap_or(0);
    let status = f["status"].as_u64();
    let what = match f["result"].as_str().unwrap_or("pending") {
        "delivered" => status.map_or("ack".to_string(), |s| s.to_string()),
        "failed" => format!(
            "failed({}){}",
            status.map_or("-".to_string(), |s| s.to_string()),
            if attempts > 1 {
                format!("x{attempts}")
            } else {
                String::new()
            }
        ),
        other => other.to_string(),
    };
    format!("{name}={what}")
}

fn print_list(lines: &[Value], json: bool) {
    if json {
        for l in lines {
            println!("{l}");
        }
        return;
    }
    println!(
        "{:<23}  {:>12}  {:<16} {:<14} OUTCOME PER FORWARD",
        "RECEIVED", "UPDATE", "KIND", "CHAT"
    );
    for l in lines {
        if l["more"] == true {
            println!("(more: narrow --since / --until, or raise --limit)");
            continue;
        }
        let outcomes: Vec<String> = l["forwards"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| token(k, v))
            .collect();
        println!(
            "{:<23}  {:>12}  {:<16} {:<14} {}",
            stamp(l["received_at"].as_u64().unwrap_or(0)),
            l["update_id"]
                .as_i64()
                .map_or("-".into(), |i| i.to_string()),
            l["kind"].as_str().unwrap_or("-"),
            l["chat"].as_str().unwrap_or("-"),
            outcomes.join(" ")
        );
    }
}

fn print_story(s: &Value) {
    println!(
        "update {} of bot {}: {} in chat {}, received {}",
        s["update_id"],
        s["bot"].as_str().unwrap_or("?"),
        s["kind"].as_str().unwrap_or("?"),
        s["chat"].as_str().unwrap_or("-"),
        stamp(s["received_at"].as_u64().unwrap_or(0))
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&s["update"]).unwrap_or_default()
    );
    let deliveries = s["deliveries"].as_array().cloned().unwrap_or_default();
    if deliveries.is_empty() {
        println!("deliveries: none yet");
    }
    for d in deliveries {
        let status = d["status"]
            .as_u64()
            .map_or("-".to_string(), |s| s.to_string());
        println!(
            "{}  {:<16} attempt {:<3} {:<9} {:>4}  {:>6} ms{}{}",
            stamp(d["at"].as_u64().unwrap_or(0)),
            d["forward"].as_str().unwrap_or("?"),
            d["attempt"],
            d["result"].as_str().unwrap_or("?"),
            status,
            d["ms"],
            if d["replay"] == true {
                "  (replay)"
            } else {
                ""
            },
            d["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        );
    }
}
