//! The `pollhook dlq` command: through the admin API while the daemon runs,
//! straight on the state directory while it is stopped (sled lets only one
//! process open the database, so there is no third way).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::ops::client::AdminClient;
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

/// sled's page cache for a one-off command: it reads dead letters once.
const CACHE_BYTES: u64 = 16 << 20;

/// How a command reaches pollhook: its admin API, or its stopped state
/// directory (`dlq`, and `history`/`show`/`replay`/`resend` too).
pub(super) enum Via {
    Api(AdminClient),
    Store(Box<Store>),
}

/// `pollhook dlq` with `--config` (the daemon's admin API if it answers,
/// else its state directory) or `--state-dir` (the default state directory
/// without either).
pub async fn command(
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    command: Command,
) -> anyhow::Result<ExitCode> {
    let via = match config {
        Some(path) => {
            let view = crate::config::load_admin_view(&path)?;
            let api = view
                .listen
                .map(|addr| AdminClient::new(addr, view.token, Duration::from_secs(30)));
            connect(api, view.state_dir).await?
        }
        None => {
            let dir = state_dir.unwrap_or_else(crate::config::default_state_dir);
            connect(None, dir).await?
        }
    };
    let ok = run(&via, command).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a dlq command, printing its result; returns whether it fully worked.
async fn run(via: &Via, command: Command) -> anyhow::Result<bool> {
    match command {
        Command::List { bot, forward, json } => {
            let list: Vec<DeadLetter> = match via {
                Via::Store(s) => deadletters::list(s, bot.as_deref(), forward.as_deref())?,
                Via::Api(api) => {
                    let mut query = Vec::new();
                    if let Some(b) = &bot {
                        query.push(("bot", b.as_str()));
                    }
                    if let Some(f) = &forward {
                        query.push(("forward", f.as_str()));
                    }
                    api.get("/dlq", &query).await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_table(&list);
            }
            Ok(true)
        }
        Command::Show { id } => {
            let one: Option<DeadLetter> = match via {
                Via::Store(s) => deadletters::show(s, id)?,
                Via::Api(api) => api.get_opt(&format!("/dlq/{id}")).await?,
            };
            match one {
                Some(d) => {
                    println!("{}", serde_json::to_string_pretty(&d)?);
                    Ok(true)
                }
                None => {
                    eprintln!("error: no dead letter {id}");
                    Ok(false)
                }
            }
        }
        Command::Replay(sel) => {
            let outcome = match via {
                Via::Store(s) => deadletters::replay(s, &sel).await?,
                Via::Api(api) => api.post("/dlq/replay", &sel).await?,
            };
            Ok(report("replayed", &outcome))
        }
        Command::Drop(sel) => {
            let outcome = match via {
                Via::Store(s) => deadletters::drop(s, &sel).await?,
                Via::Api(api) => api.post("/dlq/drop", &sel).await?,
            };
            Ok(report("dropped", &outcome))
        }
    }
}

pub(super) async fn connect(api: Option<AdminClient>, state_dir: PathBuf) -> anyhow::Result<Via> {
    let addr = api.as_ref().map(AdminClient::addr);
    if let Some(api) = api {
        if api.answers().await {
            return Ok(Via::Api(api));
        }
    }
    // Opening would create an empty database and report "no dead letters"
    // for a mistyped path; say what is wrong instead.
    if !state_dir.join("db").exists() {
        anyhow::bail!(
            "no pollhook state in {} (set state_dir in the configuration, or pass --state-dir)",
            state_dir.display()
        );
    }
    // sled may create files here (run as root from a shell, with its
    // umask): keep them as private as the relay's own.
    crate::store::dir::create(&state_dir)
        .with_context(|| format!("cannot use {}", state_dir.display()))?;
    match Store::open(&state_dir, CACHE_BYTES) {
        Ok(s) => Ok(Via::Store(Box::new(s))),
        Err(e) => Err(match addr {
            Some(addr) => anyhow::anyhow!("{e}; and the admin API at {addr} does not answer. Is pollhook running with a different admin.listen?"),
            None => anyhow::anyhow!("{e}. If pollhook is running, set admin.listen in its configuration so this command can reach it"),
        }),
    }
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
