//! The `pollhook` command line: parse, then hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pollhook::config::{self, QuickStart, Settings};

// glibc's malloc serialises on an arena lock under this allocation pattern
// (sled copies nodes on write, hyper and reqwest allocate per request): the
// throughput benchmark ran at 0.34x the baseline with it and 0.7x with a
// thread-caching allocator. jemalloc rather than mimalloc, because mimalloc
// committed sled's large zeroed buffers up front (54 MB idle RSS vs 11 MB).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "pollhook",
    version,
    about = "Long-polls Telegram-style Bot APIs and forwards every update as a signed webhook, durably"
)]
struct Cli {
    /// Log lines as text (default) or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: pollhook::ops::logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay updates until SIGTERM or SIGINT.
    ///
    /// With --config, relays every bot in the file. Without it, relays one bot
    /// whose token is in the environment variable named by --token-env to the
    /// --forward URLs.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
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
        #[arg(long, global = true, value_name = "DIR")]
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

impl From<DlqSelect> for pollhook::ops::deadletters::Selection {
    fn from(s: DlqSelect) -> Self {
        pollhook::ops::deadletters::Selection {
            ids: s.ids,
            all: s.all,
            bot: s.bot,
            forward: s.forward,
        }
    }
}

#[derive(clap::Args)]
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

impl QuickArgs {
    fn is_used(&self) -> bool {
        !self.forwards.is_empty()
            || self.token_env.is_some()
            || self.flavor.is_some()
            || self.api_url.is_some()
            || self.signing_secret_env.is_some()
            || self.secret_token_env.is_some()
            || self.state_dir.is_some()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    match cli.command {
        Command::Status { config, json } => status(&config, json),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pollhook",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config, probe } => match config::load(&config) {
            Ok(settings) => {
                print!("{settings}");
                if probe {
                    probe_bots(&settings)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Dlq {
            config,
            state_dir,
            action,
        } => dlq(config, state_dir, action),
        Command::Run { config, quick } => {
            let settings = match settings_for_run(config, quick) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            run(settings, log_format)
        }
    }
}

fn settings_for_run(config: Option<PathBuf>, q: QuickArgs) -> Result<Settings, String> {
    match config {
        Some(path) => {
            if q.is_used() {
                return Err("--forward, --token-env, --flavor, --api-url, --signing-secret-env, --secret-token-env and --state-dir are for the quick start; with --config, put them in the file".into());
            }
            config::load(&path).map_err(|e| e.to_string())
        }
        None if q.forwards.is_empty() => Err(
            "nothing to run: give --config FILE, or --forward URL with the bot token in $BOT_TOKEN (see --help)".into(),
        ),
        None => config::quick_start(QuickStart {
            token_env: q.token_env.unwrap_or_else(|| "BOT_TOKEN".into()),
            flavor: q.flavor,
            api_url: q.api_url,
            forwards: q.forwards,
            signing_secret_env: q.signing_secret_env,
            secret_token_env: q.secret_token_env,
            state_dir: q.state_dir,
        })
        .map_err(|e| e.to_string()),
    }
}

fn dlq(config: Option<PathBuf>, state_dir: Option<PathBuf>, action: DlqAction) -> ExitCode {
    use pollhook::cli::dlq::{Command as C, Target};
    let target = match (config, state_dir) {
        (Some(_), Some(_)) => {
            eprintln!("error: give --config or --state-dir, not both");
            return ExitCode::FAILURE;
        }
        (Some(path), None) => match config::load_admin_view(&path) {
            Ok(v) => Target {
                state_dir: v.state_dir,
                admin: v.listen,
                token: v.token,
                cache_bytes: 16 << 20,
            },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, dir) => Target {
            state_dir: dir.unwrap_or_else(|| PathBuf::from("./pollhook-state")),
            admin: None,
            token: None,
            cache_bytes: 16 << 20,
        },
    };
    let command = match action {
        DlqAction::List { bot, forward, json } => C::List { bot, forward, json },
        DlqAction::Show { id } => C::Show { id },
        DlqAction::Replay(sel) => C::Replay(sel.into()),
        DlqAction::Drop(sel) => C::Drop(sel.into()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pollhook::cli::dlq::run(target, command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe_bots(settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = runtime.block_on(pollhook::cli::probe::probe(settings));
    let mut failed = Vec::new();
    for (bot, result) in results {
        match result {
            Ok(who) => println!("probe: bot {bot:?}: ok, {who}"),
            Err(why) => {
                eprintln!("error: probe: bot {bot:?}: {why}");
                failed.push(bot);
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} bot(s) failed the probe: {}",
            failed.len(),
            failed.join(", ")
        );
        ExitCode::FAILURE
    }
}

fn status(config: &std::path::Path, json: bool) -> ExitCode {
    let view = match config::load_admin_view(config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pollhook::ops::status::fetch(view.listen, view.token)) {
        Ok(snap) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&snap).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(snap) => {
            print!("{}", pollhook::ops::status::render_table(&snap));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings, log_format: pollhook::ops::logging::Format) -> ExitCode {
    pollhook::ops::logging::init(log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(pollhook::ops::shutdown::on_signals(shutdown.clone()));
        pollhook::relay::run(settings, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
