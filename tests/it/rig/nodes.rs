//! Three pollhook nodes (issue 16) against one 3-server NATS JetStream
//! cluster, the fake Bot API and the recording backend. Each node has its
//! own directory (config, state, log), admin port and `[cluster] node`
//! name; the bots and forwards are the same on all. Each node's forward
//! posts to its own path on the backend (`/webhook/node-a`), so a test can
//! tell which node delivered a request.
//!
//! Who leads a bot is what the nodes say in `/status`
//! (`"cluster": {"node": …, "leading": […]}`).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    eventually, tail, write_config, Backend, FakeApi, Flavor, NatsCluster, Received, Relay, LONG,
    SECRET, TOKEN,
};

/// `[cluster] lease`: short, so that takeovers fit in a test.
pub const LEASE: Duration = Duration::from_secs(2);
/// Every bot's `poll_timeout`.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a dead leader's bot may stay unled: its lease, one long
/// poll, and slack for a loaded machine (issue 16, test 1).
pub const TAKEOVER_BOUND: Duration =
    Duration::from_secs(LEASE.as_secs() + POLL_TIMEOUT.as_secs() + 2);

/// Every node's `shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

const NODE_NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// A bot as every node's config names it.
#[derive(Debug, Clone)]
pub struct ClusterBot {
    pub name: String,
    pub token: String,
}

struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    log_path: PathBuf,
    relay: Option<Relay>,
    paused: bool,
}

/// The nodes, the servers they share, and the fake platform and backend.
/// Dropping it kills every process.
pub struct Nodes {
    pub nats: NatsCluster,
    pub api: Arc<FakeApi>,
    pub backend: Backend,
    pub bots: Vec<ClusterBot>,
    nodes: Vec<Node>,
    /// Short timeouts: a paused node must not hold a look at the others up.
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Nodes {
    /// A NATS cluster of 3 and 3 nodes sharing `bots` bots (the first is
    /// "main" with the rig's `TOKEN`, so its logs are checked for it), all
    /// started together; returns once every node's `/status` names it.
    pub async fn start(bots: usize) -> Nodes {
        let began = Instant::now();
        let nats = NatsCluster::start(3).await;
        let api = Arc::new(FakeApi::start(Flavor::Telegram).await);
        let backend = Backend::start().await;
        let bots: Vec<ClusterBot> = (0..bots)
            .map(|i| match i {
                0 => ClusterBot {
                    name: "main".into(),
                    token: TOKEN.into(),
                },
                _ => ClusterBot {
                    name: format!("b{i:02}"),
                    token: format!("{}:AAE-otherTOKENpart_{i:02}", 200_000_000 + i),
                },
            })
            .collect();
        for (i, bot) in bots.iter().enumerate() {
            api.add_bot(&bot.token, 100 + i as i64, &format!("{}_bot", bot.name));
        }
        let dir = tempfile::tempdir().unwrap();
        let ports = distinct_ports(NODE_NAMES.len());
        let mut nodes = Vec::new();
        for (name, port) in NODE_NAMES.iter().zip(ports) {
            let home = dir.path().join(name);
            fs::create_dir_all(&home).unwrap();
            let toml = node_config(name, port, &nats.urls(), &api, &backend, &bots);
            let config = write_config(&home, &toml);
            nodes.push(Node {
                name: name.to_string(),
                port,
                log_path: home.join(super::proc::LOG_FILE),
                config,
                relay: None,
                paused: false,
            });
        }
        let mut cluster = Nodes {
            nats,
            api,
            backend,
            bots,
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            _dir: keep_if_asked(dir),
        };
        let spawned = Instant::now();
        for i in 0..cluster.len() {
            cluster.spawn(i);
        }
        let mut joined = Vec::new();
        for i in 0..cluster.len() {
            cluster.wait_up(i).await;
            joined.push(format!(
                "{} {:.2}s",
                cluster.name(i),
                spawned.elapsed().as_secs_f64()
            ));
        }
        eprintln!(
            "rig: 3 pollhook nodes with {} bot(s) on a 3-server NATS cluster, joined after [{}] ({:.2}s in all)",
            cluster.bots.len(),
            joined.join(", "),
            began.elapsed().as_secs_f64()
        );
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s `[cluster] node`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn bot(&self, i: usize) -> &ClusterBot {
        &self.bots[i]
    }

    /// The node that posted `r` (from the path its forward posts to).
    pub fn delivered_by(&self, r: &Received) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| r.path == format!("/webhook/{}", n.name))
    }

    /// Starts node `i` (not running) and waits until it has joined;
    /// returns how long that took.
    pub async fn start_node(&mut self, i: usize) -> Duration {
        let began = Instant::now();
        self.spawn(i);
        self.wait_up(i).await;
        began.elapsed()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(
            node.relay.as_mut().is_none_or(|r| !r.is_running()),
            "rig: node {} is already running",
            node.name
        );
        node.relay = Some(Relay::spawn(&node.config, &[("RUST_LOG", "info")]));
        node.paused = false;
    }

    /// Waits until node `i` has joined: its `/status` names it and counts
    /// it among the live nodes, so its elections run and it may take a bot
    /// over. Panics with its log if it exits first.
    pub async fn wait_up(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        eventually(&format!("node {name} to join"), LONG, async || {
            if !self.is_running(i) {
                panic!(
                    "rig: node {name} exited while starting; log tail:\n{}",
                    tail(&self.logs(i), 40)
                );
            }
            let status = self.status(i).await?;
            let cluster = &status["cluster"];
            let live = cluster["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| *n == name.as_str()));
            if cluster["node"] == name.as_str() && live {
                Ok(())
            } else {
                Err(format!("not joined as {name:?}: {status}"))
            }
        })
        .await
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(relay) = self.nodes[i].relay.as_mut() {
            relay.sigkill();
        }
        self.nodes[i].paused = false;
    }

    /// SIGTERM node `i` and wait for a clean exit.
    pub async fn stop(&mut self, i: usize) {
        let relay = self.nodes[i]
            .relay
            .as_mut()
            .expect("rig: stop a node that was never started");
        relay.stop().await;
    }

    /// SIGSTOP node `i`.
    pub fn pause(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.relay
            .as_ref()
            .expect("rig: pause a node that was never started")
            .signal(libc::SIGSTOP);
        node.paused = true;
    }

    /// SIGCONT node `i`.
    pub fn resume(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.relay
            .as_ref()
            .expect("rig: resume a node that was never started")
            .signal(libc::SIGCONT);
        node.paused = false;
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].relay.as_mut().is_some_and(|r| r.is_running())
    }

    /// Running and not paused: it can answer.
    fn answers(&mut self, i: usize) -> bool {
        !self.nodes[i].paused && self.is_running(i)
    }

    /// Node `i`'s `/status`.
    pub async fn status(&self, i: usize) -> Result<Value, String> {
        let name = &self.nodes[i].name;
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}/status", self.nodes[i].port))
            .send()
            .await
            .map_err(|e| format!("{name}: no /status: {}", e.without_url()))?;
        response
            .json()
            .await
            .map_err(|e| format!("{name}: /status is not JSON: {}", e.without_url()))
    }

    /// The bots node `i` says it leads.
    pub async fn leading(&self, i: usize) -> Result<Vec<String>, String> {
        let status = self.status(i).await?;
        let leading = status["cluster"]["leading"].as_array().ok_or_else(|| {
            format!(
                "{}: /status has no cluster.leading: {status}",
                self.nodes[i].name
            )
        })?;
        Ok(leading
            .iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect())
    }

    /// Bot → the node leading it, as the nodes that answer say now; Err if
    /// a node that should answer does not, or two claim one bot (the
    /// snapshots of two nodes are not taken at one instant, so a handover
    /// can look like that for a moment).
    pub async fn leaders(&mut self) -> Result<BTreeMap<String, usize>, String> {
        let mut out = BTreeMap::new();
        for i in 0..self.len() {
            if !self.answers(i) {
                continue;
            }
            for bot in self.leading(i).await? {
                if let Some(other) = out.insert(bot.clone(), i) {
                    return Err(format!(
                        "{bot} claimed by {} and {}",
                        self.nodes[other].name, self.nodes[i].name
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The node leading `bot`, once one does.
    pub async fn leader_of(&mut self, bot: &str) -> usize {
        eventually(&format!("a node to lead {bot}"), LONG, async || {
            let leaders = self.leaders().await?;
            leaders
                .get(bot)
                .copied()
                .ok_or_else(|| format!("nobody leads {bot}: {leaders:?}"))
        })
        .await
    }

    /// Waits until a node other than `from` says it leads `bot`; returns it
    /// and the time since `since`.
    pub async fn wait_taken_over(
        &mut self,
        bot: &str,
        from: usize,
        since: Instant,
    ) -> (usize, Duration) {
        let what = format!("another node than {} to lead {bot}", self.nodes[from].name);
        eventually(&what, LONG, async || {
            for i in (0..self.len()).filter(|&i| i != from) {
                if self.answers(i) && self.leading(i).await?.iter().any(|b| b == bot) {
                    return Ok((i, since.elapsed()));
                }
            }
            Err("nobody else yet".to_string())
        })
        .await
    }

    /// Node `i`'s log, all its runs.
    pub fn logs(&self, i: usize) -> String {
        fs::read(&self.nodes[i].log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of every node's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        (0..self.len())
            .map(|i| {
                format!(
                    "---- {} ----\n{}",
                    self.nodes[i].name,
                    tail(&self.logs(i), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One node's configuration: the same for all but `node`, `state_dir`
/// (relative to its own directory), the admin port, and the path its
/// forwards post to.
fn node_config(
    node: &str,
    port: u16,
    servers: &[String],
    api: &FakeApi,
    backend: &Backend,
    bots: &[ClusterBot],
) -> String {
    let servers: Vec<String> = servers.iter().map(|u| format!("\"{u}\"")).collect();
    let mut toml = format!(
        r#"state_dir = "state"
shutdown_timeout = "{shutdown}s"

[admin]
listen = "127.0.0.1:{port}"

[nats]
servers = [{servers}]

[cluster]
node = "{node}"
replicas = 3
lease = "{lease}s"
"#,
        servers = servers.join(", "),
        lease = LEASE.as_secs(),
        shutdown = SHUTDOWN_TIMEOUT.as_secs(),
    );
    for bot in bots {
        toml.push_str(&format!(
            r#"
[[bot]]
name = "{name}"
flavor = "telegram"
api_url = "{api}"
token = "{token}"
poll_timeout = "{poll}s"

[[bot.forward]]
name = "app"
url = "http://{backend}/webhook/{node}"
signing_secret = "{SECRET}"
max_in_flight = 8
retry_delay = "100ms"
retry_max_delay = "500ms"
"#,
            name = bot.name,
            api = api.url_template(),
            token = bot.token,
            poll = POLL_TIMEOUT.as_secs(),
            backend = backend.addr,
        ));
    }
    toml
}

/// With `RIG_KEEP_NODES` set, the nodes' directories (configs, state, logs)
/// outlive the test, for a look after a failure.
fn keep_if_asked(dir: tempfile::TempDir) -> Option<tempfile::TempDir> {
    if std::env::var_os("RIG_KEEP_NODES").is_some() {
        eprintln!(
            "rig: the nodes' directories are kept in {}",
            dir.keep().display()
        );
        None
    } else {
        Some(dir)
    }
}

/// `n` free ports, no two alike.
fn distinct_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = super::free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}
