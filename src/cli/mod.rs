//! The command line: what each command takes ([`Cli`]) and does ([`run`]).
//! The binary parses, builds one runtime and hands over here; every error
//! comes back to it and leaves through [`report`].

mod check;
pub mod dlq;
mod history;
mod live;
mod status;
mod tail;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, QuickStart, Settings};
use crate::ops::deadletters::Selection;
use crate::ops::logging::Format;

#[derive(Parser)]
#[command(
    name = "pollhook",
    version,
    about = "Long-polls Telegram-style Bot APIs and forwards every update as a signed webhook, durably"
)]
pub struct Cli {
    /// Log lines as text (default) or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay updates until SIGTERM or SIGINT.
    ///
    /// With --config, relays every bot in the file. Without it, relays one bot
    /// whose token is in the environment variable named by --token-env to the
    /// --forward URLs, and on a terminal prints each event as it happens
    /// (as `pollhook tail` does), with only warnings and errors logged.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, conflicts_with = "quick")]
        config: Option<PathBuf>,
        #[command(flatten)]
        quick: QuickArgs,
    },
    /// Inspect, replay or drop dead letters (through the admin API while
    /// pollhook runs, straight on the state directory while it is stopped).
    Dlq {
        /// The configuration file: where the state is, how to reach the daemon.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The state directory, when there is no configuration file.
        #[arg(long, global = true, value_name = "DIR", conflicts_with = "config")]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Show what a running pollhook is doing (through its admin API).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the JSON the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// Print a running pollhook's events as they happen (through its admin
    /// API): each update received, delivered, failed, dead-lettered, and
    /// each webhook reply; until Ctrl-C.
    Tail {
        /// The configuration file: how to reach the daemon.
        #[arg(long, short, default_value = "/etc/pollhook/pollhook.toml")]
        config: PathBuf,
        /// Only this bot's events.
        #[arg(long)]
        bot: Option<String>,
        /// Only this forward's events (and the updates it receives).
        #[arg(long)]
        forward: Option<String>,
        /// Print each event as the JSON line the admin API sends.
        #[arg(long)]
        json: bool,
    },
    /// List the updates a bot received, with what became of each at each
    /// forward (from its history, kept for `history`, 24h by default).
    History {
        #[command(flatten)]
        at: StateArgs,
        #[command(flatten)]
        select: HistorySelect,
        /// At most this many updates, oldest first.
        #[arg(long, default_value_t = crate::ops::history::DEFAULT_LIMIT)]
        limit: usize,
        /// One JSON object per line, as the admin API answers.
        #[arg(long)]
        json: bool,
    },
    /// Print one update from history (its exact JSON) and every attempt to
    /// deliver it.
    Show {
        #[command(flatten)]
        at: StateArgs,
        #[command(flatten)]
        one: OneUpdate,
        /// The admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue updates from history again, in the order they came; each keeps
    /// its webhook-id and carries `x-pollhook-replay`.
    Replay {
        #[command(flatten)]
        at: StateArgs,
        #[command(flatten)]
        select: HistorySelect,
        /// Only to this forward (default: each update to the forwards it
        /// went to).
        #[arg(long)]
        forward: Option<String>,
        /// Say what would be replayed; queue nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Queue one update from history again.
    Resend {
        #[command(flatten)]
        at: StateArgs,
        #[command(flatten)]
        one: OneUpdate,
        /// Only to this forward (default: the forwards it went to).
        #[arg(long)]
        forward: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Manpage,
    /// Validate a configuration file and print what would run (secrets masked).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Also call getMe for every bot (nothing is polled or forwarded);
        /// exit 1 if any bot fails.
        #[arg(long)]
        probe: bool,
    },
}

/// Where a command finds pollhook: its admin API (from the configuration)
/// while it runs, its state directory while it is stopped.
#[derive(clap::Args)]
struct StateArgs {
    /// The configuration file: where the state is, how to reach the daemon.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The state directory, when there is no configuration file.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    state_dir: Option<PathBuf>,
}

/// One update of a bot's history.
#[derive(clap::Args)]
struct OneUpdate {
    #[arg(long)]
    bot: String,
    #[arg(allow_negative_numbers = true)]
    update_id: i64,
}

/// Which updates of a bot's history.
#[derive(clap::Args)]
struct HistorySelect {
    #[arg(long)]
    bot: String,
    /// From this long ago (`10m`, `2h`) or this time (`2026-12-01T21:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Up to this long ago or this time (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only updates of this kind (`message`, `callback_query`, …).
    #[arg(long)]
    kind: Option<String>,
    /// Only updates of this chat.
    #[arg(long, allow_hyphen_values = true)]
    chat: Option<String>,
}

impl HistorySelect {
    fn selector(self, forward: Option<String>, dry_run: bool) -> crate::ops::history::Selector {
        crate::ops::history::Selector {
            bot: self.bot,
            forward,
            since: self.since,
            until: self.until,
            kind: self.kind,
            chat: self.chat,
            dry_run,
        }
    }
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters.
    List {
        #[arg(long)]
        bot: Option<String>,
        #[arg(long)]
        forward: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload.
    Show { id: u64 },
    /// Put dead letters back in their queue (each keeps its webhook-id).
    Replay(DlqSelect),
    /// Forget dead letters for good.
    Drop(DlqSelect),
}

#[derive(clap::Args)]
struct DlqSelect {
    /// Dead-letter ids, as `dlq list` shows them.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<u64>,
    /// Every dead letter (of --bot / --forward, if given).
    #[arg(long)]
    all: bool,
    #[arg(long, requires = "all")]
    bot: Option<String>,
    #[arg(long, requires = "all")]
    forward: Option<String>,
}

impl From<DlqSelect> for Selection {
    fn from(s: DlqSelect) -> Self {
        Selection {
            ids: s.ids,
            all: s.all,
            bot: s.bot,
            forward: s.forward,
        }
    }
}

#[derive(clap::Args)]
#[group(id = "quick", multiple = true)]
struct QuickArgs {
    /// Quick start: a backend URL to forward every update to (repeatable).
    #[arg(long = "forward", value_name = "URL")]
    forwards: Vec<String>,
    /// Quick start: the environment variable holding the bot token
    /// [default: BOT_TOKEN].
    #[arg(long, value_name = "NAME")]
    token_env: Option<String>,
    /// Quick start: telegram, mpchat or wwchat.
    #[arg(long)]
    flavor: Option<String>,
    /// Quick start: a Bot API URL template with {token} and {method}.
    #[arg(long, value_name = "TEMPLATE")]
    api_url: Option<String>,
    /// Quick start: the environment variable holding a Standard Webhooks
    /// signing secret (whsec_…).
    #[arg(long, value_name = "NAME")]
    signing_secret_env: Option<String>,
    /// Quick start: the environment variable holding the secret token sent
    /// in the platform's X-…-Bot-Api-Secret-Token header.
    #[arg(long, value_name = "NAME")]
    secret_token_env: Option<String>,
    /// Quick start: where to keep the database (default: $STATE_DIRECTORY,
    /// else ./pollhook-state).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Runs one command; `Ok` carries the exit code of a command that ran (one
/// that partly failed, e.g. a replay of ids that are not dead letters, has
/// said so itself), `Err` an error for [`report`].
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(cli.command, Command::Run { .. }) {
        printing_to_a_pipe();
    }
    match cli.command {
        Command::Run { config, quick } => {
            // The quick start at a terminal is a developer watching: events
            // as lines, the log only for what needs attention.
            let live = config.is_none() && std::io::stdout().is_terminal();
            let settings = settings_for_run(config, quick)?;
            let spans = match &settings.tracing {
                Some(t) => Some(crate::trace::export::Exporter::start(t)?),
                None => None,
            };
            crate::ops::logging::init(cli.log_format, live, spans.as_ref());
            let shutdown = CancellationToken::new();
            tokio::spawn(crate::ops::shutdown::on_signals(shutdown.clone()));
            let result = if live {
                run_watched(settings, shutdown).await
            } else {
                crate::relay::run(settings, shutdown).await
            };
            // The last spans (the stop's own deliveries) go out before exit.
            if let Some(spans) = spans {
                spans.stop().await;
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            config,
            bot,
            forward,
            json,
        } => {
            tail::run(tail::Args {
                config: &config,
                bot,
                forward,
                json,
            })
            .await
        }
        Command::CheckConfig { config, probe } => check::run(&config, probe).await,
        Command::Dlq {
            config,
            state_dir,
            action,
        } => dlq::command(config, state_dir, action.into()).await,
        Command::Status { config, json } => status::run(&config, json).await,
        Command::History {
            at,
            select,
            limit,
            json,
        } => {
            let sel = select.selector(None, false);
            history::command(
                at.config,
                at.state_dir,
                history::Command::List { sel, limit, json },
            )
            .await
        }
        Command::Show {
            at,
            one: OneUpdate { bot, update_id },
            json,
        } => {
            history::command(
                at.config,
                at.state_dir,
                history::Command::Show {
                    bot,
                    update_id,
                    json,
                },
            )
            .await
        }
        Command::Replay {
            at,
            select,
            forward,
            dry_run,
        } => {
            let sel = select.selector(forward, dry_run);
            history::command(at.config, at.state_dir, history::Command::Replay(sel)).await
        }
        Command::Resend {
            at,
            one: OneUpdate { bot, update_id },
            forward,
        } => {
            history::command(
                at.config,
                at.state_dir,
                history::Command::Resend {
                    bot,
                    update_id,
                    forward,
                },
            )
            .await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pollhook",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Commands that print (`check-config | head`, `dlq list | less`) end
/// quietly when the reader goes away, as Unix tools do, instead of panicking
/// in `println!`: Rust ignores SIGPIPE, so a write to a closed pipe is an
/// error that `print!` turns into a panic. The relay keeps SIGPIPE ignored:
/// its sockets get EPIPE as an error to handle.
fn printing_to_a_pipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler and touches no
    // memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Says what went wrong: in the log once `run` has set logging up (so the
/// journal files it as an error), else on stderr.
pub fn report(e: &anyhow::Error) {
    if tracing::dispatcher::has_been_set() {
        tracing::error!("{e:#}");
    } else {
        eprintln!("error: {e:#}");
    }
}

/// The relay, with each event printed on stdout as it happens.
async fn run_watched(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let events = crate::events::Bus::new();
    let names: Vec<String> = settings
        .bots
        .iter()
        .flat_map(|b| b.forwards.iter().map(|f| f.name.clone()))
        .collect();
    let printer = tokio::spawn(live::print(
        events.subscribe(),
        live::Style::for_quick_start(&names),
    ));
    let to: Vec<String> = settings
        .bots
        .iter()
        .flat_map(|b| b.forwards.iter().map(|f| f.to.describe()))
        .collect();
    println!(
        "pollhook: forwarding updates to {}; each one shows below as it happens (Ctrl-C to stop)",
        to.join(", ")
    );
    let result = crate::relay::run_with_events(settings, shutdown, events).await;
    // The relay's senders are gone: the printer prints what is left and ends.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), printer).await;
    result
}

fn settings_for_run(config: Option<PathBuf>, q: QuickArgs) -> anyhow::Result<Settings> {
    if let Some(path) = config {
        return Ok(config::load(&path)?);
    }
    if q.forwards.is_empty() {
        anyhow::bail!(
            "nothing to run: give --config FILE, or --forward URL with the bot token in $BOT_TOKEN (see --help)"
        );
    }
    Ok(config::quick_start(QuickStart {
        token_env: q.token_env.unwrap_or_else(|| "BOT_TOKEN".into()),
        flavor: q.flavor,
        api_url: q.api_url,
        forwards: q.forwards,
        signing_secret_env: q.signing_secret_env,
        secret_token_env: q.secret_token_env,
        state_dir: q.state_dir,
    })?)
}

impl From<DlqAction> for dlq::Command {
    fn from(a: DlqAction) -> Self {
        match a {
            DlqAction::List { bot, forward, json } => dlq::Command::List { bot, forward, json },
            DlqAction::Show { id } => dlq::Command::Show { id },
            DlqAction::Replay(sel) => dlq::Command::Replay(sel.into()),
            DlqAction::Drop(sel) => dlq::Command::Drop(sel.into()),
        }
    }
}
