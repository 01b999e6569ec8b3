//! The relays under test as child processes, and what /proc says of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Config {
    pub bots: usize,
    /// Each bot's `poll_timeout`.
    pub poll_timeout: &'static str,
    pub max_in_flight: usize,
    pub retry_max_delay: &'static str,
    /// Publish to JetStream on this NATS server instead of POSTing to the
    /// backend (`nats_subject = "tg.{bot}.{kind}.{chat}"`).
    pub jetstream: Option<SocketAddr>,
    /// Run as a node of a cluster (`[cluster]` and `[nats]`), its queue
    /// in JetStream; the forward still POSTs to the backend.
    pub cluster: Option<ClusterNode>,
    /// Serve the Bot API gateway, every rate limit off.
    pub gateway: Option<GatewayAccess>,
    /// Each bot's `history` (None: the key left out, the default).
    pub history: Option<&'static str>,
    /// Each bot's `history_max_mb` (None: the key left out, the default).
    pub history_max_mb: Option<u64>,
    /// Serve the admin API on this port (for `/metrics`, `/history`), when
    /// neither the gateway nor a cluster node brings an `[admin]` table.
    pub admin_port: Option<u16>,
    /// Export spans to this OTLP/HTTP receiver (`[tracing]`).
    pub otlp: Option<SocketAddr>,
    /// Run this pollhook binary instead of the one built with the bench
    /// (and `BENCH_RELAY_BIN`): an older build, in the same run.
    pub relay_bin: Option<PathBuf>,
    /// The API is served over TLS under the CA in this file: `https://`
    /// and the bot's `ca_file`.
    pub api_ca_file: Option<PathBuf>,
}

/// The gateway's part of the configuration: `[gateway] listen` on this
/// port and, per bot, one `[[bot.client]]` and `[bot.limits]` with every
/// scope off (`[]`), so a call waits for no limit and what is measured is
/// the gateway's own cost.
pub struct GatewayAccess {
    pub port: u16,
    /// The client's methods (`[[bot.client]] methods`).
    pub methods: &'static [&'static str],
    /// The admin API's port, for `/metrics` (the time calls waited for
    /// the budget).
    pub admin_port: u16,
}

impl GatewayAccess {
    /// Bot `bot`'s client key, shaped like a token as the docs advise.
    pub fn key(&self, bot: usize) -> String {
        format!("{bot}:bench-gateway-key-0123456789")
    }
}

/// A cluster node's part of the configuration.
pub struct ClusterNode {
    /// The NATS servers' URLs (`nats://127.0.0.1:PORT`).
    pub servers: Vec<String>,
    pub node: String,
    pub replicas: usize,
    pub lease: &'static str,
    /// The admin API's port, for `/status`.
    pub admin_port: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bots: 1,
            poll_timeout: "30s",
            max_in_flight: 16,
            retry_max_delay: "60s",
            jetstream: None,
            cluster: None,
            gateway: None,
            history: None,
            history_max_mb: None,
            admin_port: None,
            otlp: None,
            relay_bin: None,
            api_ca_file: None,
        }
    }
}

pub struct Child {
    child: std::process::Child,
    _dir: Option<tempfile::TempDir>,
    pub state_dir: PathBuf,
    config: PathBuf,
}

impl Child {
    pub fn pollhook(api: SocketAddr, backend: SocketAddr, cfg: &Config) -> Child {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = String::from("state_dir = \"state\"\nshutdown_timeout = \"5s\"\n");
        if let Some(otlp) = cfg.otlp {
            toml.push_str(&format!("[tracing]\notlp_endpoint = \"http://{otlp}\"\n"));
        }
        if let Some(c) = &cfg.cluster {
            assert!(
                cfg.jetstream.is_none(),
                "one [nats] table: a cluster node or a JetStream forward"
            );
            if let Some(port) = c.admin_port {
                toml.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
            }
            let servers: Vec<String> = c.servers.iter().map(|s| format!("\"{s}\"")).collect();
            toml.push_str(&format!(
                "[nats]\nservers = [{}]\n[cluster]\nnode = \"{}\"\nreplicas = {}\nlease = \"{}\"\n",
                servers.join(", "),
                c.node,
                c.replicas,
                c.lease
            ));
        }
        if let Some(g) = &cfg.gateway {
            assert!(
                cfg.cluster.as_ref().is_none_or(|c| c.admin_port.is_none()),
                "one [admin] table: the cluster node's or the gateway's"
            );
            toml.push_str(&format!(
                "[gateway]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
                g.port, g.admin_port
            ));
        }
        if let Some(port) = cfg.admin_port {
            assert!(
                cfg.gateway.is_none()
                    && cfg.cluster.as_ref().is_none_or(|c| c.admin_port.is_none()),
                "one [admin] table"
            );
            toml.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
        }
        let target = match cfg.jetstream {
            Some(nats) => {
                toml.push_str(&format!("[nats]\nservers = [\"nats://{nats}\"]\n"));
                "nats_subject = \"tg.{bot}.{kind}.{chat}\"".to_string()
            }
            None => format!("url = \"http://{backend}/webhook\""),
        };
        let (scheme, ca_line) = match &cfg.api_ca_file {
            Some(ca) => (
                "https",
                format!("ca_file = {:?}\n", ca.display().to_string()),
            ),
            None => ("http", String::new()),
        };
        for i in 0..cfg.bots {
            toml.push_str(&format!(
                "[[bot]]\nname = \"b{i}\"\napi_url = \"{scheme}://{api}/bot{{token}}/{{method}}\"\ntoken = \"{i}:benchtoken\"\npoll_timeout = \"{}\"\n{ca_line}",
                cfg.poll_timeout
            ));
            // The bot's own keys before its first sub-table.
            if let Some(h) = cfg.history {
                toml.push_str(&format!("history = \"{h}\"\n"));
            }
            if let Some(mb) = cfg.history_max_mb {
                toml.push_str(&format!("history_max_mb = {mb}\n"));
            }
            toml.push_str(&format!(
                "[[bot.forward]]\nname = \"f\"\n{target}\nmax_in_flight = {}\nretry_max_delay = \"{}\"\n\
                 signing_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                cfg.max_in_flight, cfg.retry_max_delay
            ));
            if let Some(g) = &cfg.gateway {
                let methods: Vec<String> = g.methods.iter().map(|m| format!("\"{m}\"")).collect();
                toml.push_str(&format!(
                    "[bot.limits]\nper_chat = []\nper_group = []\nper_bot = []\n\
                     [[bot.client]]\nname = \"bench\"\nkey = \"{}\"\nmethods = [{}]\n",
                    g.key(i),
                    methods.join(", ")
                ));
            }
        }
        let config = dir.path().join("pollhook.toml");
        std::fs::write(&config, toml).expect("config");
        let state_dir = dir.path().join("state");
        let child = spawn_pollhook(&config, cfg.relay_bin.as_deref());
        Child {
            child,
            _dir: Some(dir),
            state_dir,
            config,
        }
    }

    pub fn baseline(api: SocketAddr, backend: SocketAddr, in_flight: usize) -> Child {
        let child = Command::new(std::env::current_exe().expect("own path"))
            .args([
                "baseline",
                &format!("http://{api}"),
                &format!("http://{backend}/webhook"),
            ])
            .args(["--in-flight", &in_flight.to_string()])
            .args(
                std::env::var_os("BENCH_BASELINE")
                    .is_some_and(|v| v == "lean")
                    .then_some("--lean"),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("baseline starts");
        Child {
            child,
            _dir: None,
            state_dir: PathBuf::new(),
            config: PathBuf::new(),
        }
    }

    /// The exit status, if the process has ended (a refused configuration).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Graceful stop (SIGTERM), waiting for the exit.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }

    /// SIGKILL (a crash: no lease handed over), waiting for the exit.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Signals the process and every process it started. A
    /// `BENCH_RELAY_BIN` that is a wrapper script (perf, an allocator's
    /// statistics) and does not `exec` would otherwise leave the relay it
    /// started running when the wrapper goes, polling beside the next
    /// scenario and taking its CPU. They are listed before any is
    /// signalled: a process whose parent has gone is no longer its child.
    /// Nothing is signalled once the process has been waited for: its pid
    /// may belong to another process by then.
    fn signal(&mut self, sig: i32) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.child.id();
        for p in std::iter::once(pid).chain(descendants(pid)) {
            unsafe { libc::kill(p as i32, sig) };
        }
    }

    /// Starts pollhook again on the same configuration and state.
    pub fn restart(mut self, _api: SocketAddr, _backend: SocketAddr, _cfg: &Config) -> Child {
        self.respawn();
        self
    }

    /// Starts pollhook again in place (after `stop` or `kill`).
    pub fn respawn(&mut self) {
        self.child = spawn_pollhook(&self.config, None);
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    /// User + system CPU time so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    fn status_field(&self, key: &str) -> u64 {
        self.proc_field("status", key)
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        self.proc_file(file)
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// A counter of `/proc/<pid>/io`, e.g. `write_bytes:` (bytes the
    /// process caused to be written to storage: dirtied page-cache pages,
    /// counted when dirtied, so writes not yet flushed count too).
    pub fn io_field(&self, key: &str) -> u64 {
        self.proc_field("io", key)
    }

    pub fn rss_kb(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    pub fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every process `pid` started, and what they started, from
/// `/proc/<pid>/task/<tid>/children`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// The relay under test: this build's binary, or `BENCH_RELAY_BIN` to
/// measure another build (an older commit) against the same servers. (Not
/// `POLLHOOK_…`: the relay would read that as a configuration override.)
fn spawn_pollhook(config: &Path, bin: Option<&Path>) -> std::process::Child {
    let bin = bin.map(|b| b.as_os_str().to_owned()).unwrap_or_else(|| {
        std::env::var_os("BENCH_RELAY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pollhook").into())
    });
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pollhook starts");
    std::thread::sleep(Duration::from_millis(10));
    child
}

/// Established TCP connections to `port` on this host (the client side:
/// its remote port is `port`); with the relay the API's only client, its
/// connections to the API.
pub fn tcp_connections_to(port: u16) -> usize {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[2].ends_with(&want) && f[3] == "01"
                })
                .count()
        })
        .sum()
}

/// A process's user + system CPU time so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name: utime is the
    // 12th, stime the 13th (fields 14 and 15 of the whole line).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The bytes of a directory's files (their lengths, not their blocks).
pub fn apparent(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total += if meta.is_dir() {
                apparent(&e.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

/// Bytes a directory occupies on disk (allocated blocks).
pub fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total += if meta.is_dir() {
                du(&e.path())
            } else {
                meta.blocks() * 512
            };
        }
    }
    total
}
