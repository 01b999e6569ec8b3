//! A real `nats-server` with JetStream on 127.0.0.1, for the JetStream
//! forward's tests: its own free port and store directory, stopped, killed,
//! paused and restarted on the same port and store like a production server;
//! and a test consumer that reads back what the relay published. A member
//! of a `NatsCluster` is one of these, launched without waiting (see
//! `nats_cluster.rs`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use super::proc::tail;
use super::serve::free_port;
use super::tools;
use super::wait::{eventually, LONG};

/// What the server asks of its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    /// `--user` / `--pass`.
    UserPassword(String, String),
    /// `--auth`.
    Token(String),
}

/// A running `nats-server -js`; killed (SIGKILL) when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    auth: NatsAuth,
    /// Holds the store (`store/`) and the server's log (`nats-server.log`).
    dir: tempfile::TempDir,
    /// "Server is ready" lines in the log before the current start.
    starts: usize,
    /// A configuration file's text (`-c`), for limits no flag sets.
    conf: Option<String>,
    /// SIGSTOPped and not yet SIGCONTinued.
    paused: bool,
}

const READY: &str = "Server is ready";

/// How long a readiness probe waits for `$JS.API.INFO`'s answer.
const INFO_PATIENCE: Duration = Duration::from_millis(500);

impl NatsServer {
    /// A server without authentication.
    pub async fn start() -> NatsServer {
        Self::start_with(NatsAuth::None).await
    }

    pub async fn start_with(auth: NatsAuth) -> NatsServer {
        Self::start_full(auth, None).await
    }

    /// A server without authentication, with `conf` as its configuration
    /// file (e.g. `max_payload: 4096`).
    pub async fn start_configured(conf: &str) -> NatsServer {
        Self::start_full(NatsAuth::None, Some(conf.to_string())).await
    }

    async fn start_full(auth: NatsAuth, conf: Option<String>) -> NatsServer {
        let mut server = Self::unstarted(free_port(), auth, conf);
        server.spawn().await;
        server
    }

    /// A server on `port` with its own store directory, not started yet:
    /// a cluster member, which `launch`es with its peers before any of them
    /// can answer (JetStream waits for a quorum).
    pub(super) fn unstarted(port: u16, auth: NatsAuth, conf: Option<String>) -> NatsServer {
        NatsServer {
            child: None,
            port,
            auth,
            dir: tempfile::tempdir().expect("rig: a directory for nats-server"),
            starts: 0,
            conf,
            paused: false,
        }
    }

    /// `nats://127.0.0.1:PORT` (no credentials in it).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`), kept across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Everything the server logged, all starts.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Running (paused counts: the process is there).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child
                .try_wait()
                .expect("rig: try_wait nats-server")
                .is_none(),
            None => false,
        }
    }

    /// SIGTERM (nats-server's graceful shutdown) and wait for the exit.
    pub async fn stop(&mut self) {
        self.signal_and_reap(libc::SIGTERM).await;
    }

    /// SIGSTOP: the process stays, with its sockets open, and answers
    /// nothing (a hung machine, as its peers and clients see it).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        self.signal_and_reap(libc::SIGKILL).await;
    }

    /// Starts again on the same port, store and credentials (stopping the
    /// running one first, if any) and waits until JetStream answers.
    pub async fn restart(&mut self) {
        if self.is_running() {
            self.stop().await;
        }
        self.spawn().await;
    }

    /// A client with the server's credentials.
    pub async fn client(&self) -> async_nats::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("rig: cannot connect to nats-server at {}: {e}", self.url()))
    }

    async fn try_client(&self) -> Result<async_nats::Client, String> {
        let options = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::UserPassword(user, pass) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), pass.clone())
            }
            NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        };
        options
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url())
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// A file-backed stream with the server's default duplicate window
    /// (2 min), capturing `subjects` (wildcards allowed).
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) {
        self.jetstream()
            .await
            .create_stream(stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("rig: cannot create stream {name} on {subjects:?}: {e}"));
    }

    /// How many messages `stream` holds now.
    pub async fn stream_len(&self, name: &str) -> u64 {
        stream_len(&self.jetstream().await, name)
            .await
            .unwrap_or_else(|e| panic!("rig: {e}"))
    }

    /// Waits until `stream` holds at least `n` messages, then reads every
    /// message it holds (maybe more than `n`), in stream order, with an
    /// ordered consumer; panics after `within`.
    pub async fn read_all(&self, name: &str, n: u64, within: Duration) -> Vec<StreamMsg> {
        read_stream(&self.jetstream().await, name, n, within).await
    }

    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the process and returns at once; `wait_ready` waits for it.
    pub(super) fn launch(&mut self) {
        if let Some(mut old) = self.child.take() {
            // Exited by itself (a crash): reaped here and started again.
            let exited = old.try_wait().expect("rig: try_wait nats-server");
            assert!(exited.is_some(), "rig: nats-server is already running");
        }
        let binary = tools::locate("nats-server", "apt-get install nats-server");
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("rig: open {}: {e}", log_path.display()));
        let stderr = log.try_clone().expect("rig: clone log handle");
        let store = self.store_dir();
        let mut cmd = Command::new(binary);
        if let Some(conf) = &self.conf {
            let path = self.dir.path().join("server.conf");
            std::fs::write(&path, conf).expect("rig: write server.conf");
            cmd.arg("-c").arg(path);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&store)
            // No monitoring port, no cluster (unless `conf` asks for them,
            // with ports the caller chose): nothing else to collide with.
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::UserPassword(user, pass) => {
                cmd.args(["--user", user, "--pass", pass]);
            }
            NatsAuth::Token(token) => {
                cmd.args(["--auth", token]);
            }
        }
        self.starts = self.logs().matches(READY).count();
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("rig: cannot start nats-server: {e}")),
        );
    }

    /// Ready: this start logged "Server is ready" and JetStream answers
    /// through this server (in a cluster: the meta group has a leader this
    /// server can reach).
    pub(super) async fn wait_ready(&mut self) {
        let starts = self.starts;
        let store = self.store_dir();
        eventually(
            &format!(
                "nats-server on port {} (store {store:?}) to be ready",
                self.port
            ),
            LONG,
            async || {
                if !self.is_running() {
                    panic!(
                        "rig: nats-server exited while starting; log tail:\n{}",
                        tail(&self.logs(), 30)
                    );
                }
                if self.logs().matches(READY).count() <= starts {
                    return Err(format!("log tail:\n{}", tail(&self.logs(), 10)));
                }
                // Account info, raw: async-nats 0.46 cannot parse 2.9's
                // answer into its `Account`, and the question is only
                // whether JetStream answers without an error.
                // Asked again soon if unanswered: a cluster member without
                // a meta leader yet stays silent, and the client's own
                // request timeout (10 s) would stall the start that long.
                let client = self.try_client().await?;
                let answer = tokio::time::timeout(
                    INFO_PATIENCE,
                    client.request("$JS.API.INFO", Bytes::new()),
                )
                .await
                .map_err(|_| format!("JetStream: no answer in {INFO_PATIENCE:?}"))?
                .map_err(|e| format!("JetStream: {e}"))?;
                let info: serde_json::Value = serde_json::from_slice(&answer.payload)
                    .map_err(|e| format!("JetStream account info: {e}"))?;
                match info.get("error") {
                    None => Ok(()),
                    Some(error) => Err(format!("JetStream: {error}")),
                }
            },
        )
        .await
    }

    /// Sends `signal` to the process if it is running (unreaped).
    fn signal(&mut self, signal: i32) {
        let Some(child) = &mut self.child else {
            return;
        };
        if child
            .try_wait()
            .expect("rig: try_wait nats-server")
            .is_none()
        {
            // SAFETY: kill(2) on our own unreaped child, so the pid is ours.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    async fn signal_and_reap(&mut self, signal: i32) {
        self.signal(signal);
        if self.paused {
            // A stopped process handles SIGTERM only once continued.
            self.resume();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        eventually("nats-server to exit", LONG, async || {
            child.try_wait().expect("rig: try_wait nats-server")
        })
        .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `stream` holds at least `n` messages, then reads every
/// message it holds (maybe more than `n`), in stream order, with an
/// ordered consumer of `js` (any server of a cluster); panics after
/// `within`.
pub async fn read_stream(
    js: &jetstream::Context,
    name: &str,
    n: u64,
    within: Duration,
) -> Vec<StreamMsg> {
    let count = eventually(
        &format!("stream {name} to hold {n} messages"),
        within,
        async || match stream_len(js, name).await {
            Ok(len) if len >= n => Ok(len),
            Ok(len) => Err(format!("{len} messages")),
            Err(e) => Err(e),
        },
    )
    .await;
    let stream = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("rig: stream {name}: {e}"));
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap_or_else(|e| panic!("rig: an ordered consumer on {name}: {e}"));
    let mut messages = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("rig: reading {name}: {e}"));
    let mut out = Vec::with_capacity(count as usize);
    while (out.len() as u64) < count {
        let next = tokio::time::timeout(within, messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "rig: read {} of the {count} messages of {name} in {within:?}",
                    out.len()
                )
            });
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => panic!("rig: reading {name}: {e}"),
            None => panic!("rig: the consumer of {name} ended after {}", out.len()),
        };
        let seq = msg
            .info()
            .unwrap_or_else(|e| panic!("rig: a message of {name} without its info: {e}"))
            .stream_sequence;
        out.push(StreamMsg {
            subject: msg.subject.to_string(),
            headers: msg
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.to_string(), v.as_str().to_string()))
                })
                .collect(),
            payload: msg.payload.clone(),
            seq,
        });
    }
    out
}

/// Creates a key-value bucket on nats-server 2.9: async-nats 0.46's
/// `create_key_value` first parses the account info, which 2.9's answer
/// does not fit ("data did not match any variant"), so this creates the
/// bucket's stream as that function would (no mirror or sources) and opens
/// it as a bucket.
pub async fn create_key_value(js: &jetstream::Context, config: kv::Config) -> kv::Store {
    assert!(
        config.mirror.is_none() && config.sources.is_none(),
        "rig: create_key_value makes plain buckets only"
    );
    let bucket = config.bucket.clone();
    js.create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(config.description),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: config.history.max(1),
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        max_message_size: config.max_value_size,
        storage: config.storage,
        republish: config.republish,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: config.num_replicas.max(1),
        discard: stream::DiscardPolicy::New,
        placement: config.placement,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("rig: cannot create the stream of bucket {bucket}: {e}"));
    js.get_key_value(&bucket)
        .await
        .unwrap_or_else(|e| panic!("rig: cannot open bucket {bucket}: {e}"))
}

async fn stream_len(js: &jetstream::Context, name: &str) -> Result<u64, String> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    Ok(info.state.messages)
}

/// One message as the stream stored it.
#[derive(Debug, Clone)]
pub struct StreamMsg {
    pub subject: String,
    /// As sent, names in their case, in no particular order.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// The stream sequence: the order JetStream stored the messages in.
    pub seq: u64,
}

impl StreamMsg {
    /// A header's value, its name in any case (as HTTP compares them).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header's value, its name exactly so (JetStream's own headers, e.g.
    /// `Nats-Msg-Id`, are matched that way by the server).
    pub fn header_exact(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers as an HTTP header map, for a Standard Webhooks verifier.
    pub fn http_headers(&self) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        for (name, value) in &self.headers {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .unwrap_or_else(|e| panic!("header name {name:?}: {e}")),
                hyper::header::HeaderValue::from_str(value)
                    .unwrap_or_else(|e| panic!("header {name}: {value:?}: {e}")),
            );
        }
        map
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("stream: payload is not JSON")
    }

    /// The update_id of the update in the payload.
    pub fn update_id(&self) -> i64 {
        self.json()["update_id"]
            .as_i64()
            .expect("stream: payload has an update_id")
    }
}

/// Update ids per subject, in stream order.
pub fn per_subject(msgs: &[StreamMsg]) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for m in msgs {
        out.entry(m.subject.clone())
            .or_default()
            .push(m.update_id());
    }
    out
}
