//! A JetStream cluster of real `nats-server`s on 127.0.0.1, for the
//! failure tests of a replicated queue (issue 16): each member is a
//! `NatsServer` with its own client, route and monitoring ports, store and
//! log, started from a configuration file that names it and lists its
//! peers' routes. Members are stopped, killed, paused and restarted one by
//! one or all together, the way servers fail in production.
//!
//! Readiness is what a client needs, not a log line: every member answers
//! `$JS.API.INFO`, says it is current with the cluster (`/healthz`, which
//! in 2.9 checks the meta leader and every stream and consumer placed on
//! it), and a throw-away replicated stream can be created and deleted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::future::join_all;

use super::nats::{NatsAuth, NatsServer};
use super::proc::tail;
use super::serve::free_port;
use super::wait::{eventually, LONG};

/// The `cluster { name }` every member joins.
const CLUSTER_NAME: &str = "rig";

/// The stream `start` creates and deletes to prove the cluster places and
/// replicates streams.
const PROBE_STREAM: &str = "RIG_CLUSTER_PROBE";

/// Running `nats-server -js` processes forming one JetStream cluster;
/// every one is killed (SIGKILL) when dropped.
pub struct NatsCluster {
    members: Vec<Member>,
}

struct Member {
    /// `server_name`: how JetStream names it (stream leaders, peers).
    name: String,
    server: NatsServer,
    /// The monitoring port (`/healthz`, `/routez`).
    http_port: u16,
}

impl NatsCluster {
    /// `n` servers in one cluster, each routing to all the others; returns
    /// once the cluster is ready (see the module comment).
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "rig: a cluster needs at least one server");
        let began = Instant::now();
        let ports = distinct_free_ports(3 * n);
        let (client_ports, rest) = ports.split_at(n);
        let (route_ports, http_ports) = rest.split_at(n);
        let members = (0..n)
            .map(|i| {
                let name = format!("n{i}");
                let routes: Vec<String> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| format!("\"nats-route://127.0.0.1:{}\"", route_ports[j]))
                    .collect();
                // Client port, store and JetStream come as flags (as for a
                // lone `NatsServer`); what no flag says goes here.
                let conf = format!(
                    "server_name: \"{name}\"\n\
                     http: \"127.0.0.1:{http}\"\n\
                     cluster {{\n  \
                       name: \"{CLUSTER_NAME}\"\n  \
                       listen: \"127.0.0.1:{route}\"\n  \
                       routes: [{routes}]\n\
                     }}\n",
                    http = http_ports[i],
                    route = route_ports[i],
                    routes = routes.join(", "),
                );
                Member {
                    name,
                    server: NatsServer::unstarted(client_ports[i], NatsAuth::None, Some(conf)),
                    http_port: http_ports[i],
                }
            })
            .collect();
        let mut cluster = NatsCluster { members };
        // All at once: none can answer JetStream before a quorum is up.
        for member in &mut cluster.members {
            member.server.launch();
        }
        cluster.wait_back(&(0..n).collect::<Vec<_>>()).await;
        cluster.probe_replicated_stream().await;
        eprintln!(
            "rig: {n}-server NATS JetStream cluster ready in {:?}",
            began.elapsed()
        );
        cluster
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The client URLs of all servers, in member order.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.server.url()).collect()
    }

    /// `nats://127.0.0.1:PORT` of server `i`.
    pub fn url(&self, i: usize) -> String {
        self.members[i].server.url()
    }

    /// Server `i`'s `server_name` (as stream infos name leaders).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Server `i`, for its logs and store.
    pub fn server(&self, i: usize) -> &NatsServer {
        &self.members[i].server
    }

    /// SIGTERM server `i` and wait for its exit.
    pub async fn stop(&mut self, i: usize) {
        self.members[i].server.stop().await;
    }

    /// SIGKILL server `i` and reap it.
    pub async fn kill(&mut self, i: usize) {
        self.members[i].server.kill().await;
    }

    /// SIGSTOP server `i`.
    pub fn pause(&mut self, i: usize) {
        self.members[i].server.pause();
    }

    /// SIGCONT server `i`; `wait_current` waits until it caught up.
    pub fn resume(&mut self, i: usize) {
        self.members[i].server.resume();
    }

    /// Waits until server `i` (running, e.g. resumed) is routed to every
    /// other running server, current with the cluster, and answers
    /// JetStream.
    pub async fn wait_current(&mut self, i: usize) {
        self.wait_back(&[i]).await;
    }

    /// Starts server `i` again (stopping it first if it runs) on the same
    /// ports, store and name, and waits until it is back in the cluster:
    /// routed to every other running server, current with the meta leader
    /// and its streams, and JetStream answers through it. Needs a quorum of
    /// the others to be up.
    pub async fn restart(&mut self, i: usize) {
        let server = &mut self.members[i].server;
        if server.is_running() {
            server.stop().await;
        }
        server.launch();
        self.wait_back(&[i]).await;
    }

    /// SIGTERM every running server, all at once, and wait for them.
    pub async fn stop_all(&mut self) {
        join_all(self.members.iter_mut().map(|m| m.server.stop())).await;
    }

    /// Starts every server that is not running, all at once (alone, none
    /// of them would find a quorum), and waits until each is back.
    pub async fn start_all(&mut self) {
        let mut stopped = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if !member.server.is_running() {
                member.server.launch();
                stopped.push(i);
            }
        }
        self.wait_back(&stopped).await;
    }

    /// A client that knows every server and reconnects quickly (tests wait
    /// for it after outages; the library's default backs off to 4 s). It
    /// pings every second, so that a paused server it is connected to is
    /// given up within seconds: with the default (60 s, two unanswered) a
    /// client stays on a hung server for minutes, its publishes unanswered.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(1))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 25).min(250))
            })
            .connect(self.urls())
            .await
            .unwrap_or_else(|e| panic!("rig: cannot connect to the cluster {:?}: {e}", self.urls()))
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// The member `client` is connected to now.
    pub fn serving(&self, client: &async_nats::Client) -> Option<usize> {
        let name = client.server_info().server_name;
        self.members.iter().position(|m| m.name == name)
    }

    /// The member that leads `stream` now, if it has a leader.
    pub async fn stream_leader(&self, js: &jetstream::Context, stream: &str) -> Option<usize> {
        let leader = stream_leader_name(js, stream).await.ok()??;
        self.members.iter().position(|m| m.name == leader)
    }

    /// Makes server `to` the leader of `stream` (stepping leaders down until
    /// the election lands on it), so that what the stream then answers is
    /// that server's copy.
    pub async fn move_stream_leader(&self, js: &jetstream::Context, stream: &str, to: usize) {
        let target = self.members[to].name.clone();
        let client = js.client();
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        // The leader last asked to step down, and when: asked again only if
        // it still leads a while later.
        let mut asked: Option<(String, Instant)> = None;
        eventually(
            &format!("server {target} to lead stream {stream}"),
            LONG,
            async || {
                let leader = match stream_leader_name(js, stream).await? {
                    Some(leader) if leader == target => return Ok(()),
                    Some(leader) => leader,
                    None => return Err("no leader".to_string()),
                };
                let fresh = asked.as_ref().is_some_and(|(name, at)| {
                    *name == leader && at.elapsed() < Duration::from_secs(2)
                });
                if !fresh {
                    let answer = client
                        .request(subject.clone(), Bytes::new())
                        .await
                        .map_err(|e| format!("step down: {e}"))?;
                    let answer: serde_json::Value = serde_json::from_slice(&answer.payload)
                        .map_err(|e| format!("step down answer: {e}"))?;
                    if let Some(error) = answer.get("error") {
                        return Err(format!("step down: {error}"));
                    }
                    asked = Some((leader.clone(), Instant::now()));
                }
                Err(format!("led by {leader}"))
            },
        )
        .await
    }

    /// Waits until each server in `which` (just launched) is back: it logged
    /// ready and JetStream answers through it, then it is routed to every
    /// other running server and `/healthz` says it is current.
    async fn wait_back(&mut self, which: &[usize]) {
        let which: BTreeSet<usize> = which.iter().copied().collect();
        join_all(
            self.members
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| which.contains(i))
                .map(|(_, m)| m.server.wait_ready()),
        )
        .await;
        // Others a member must be routed to: running and not paused (a
        // paused server accepts the TCP connection but never completes the
        // route's handshake).
        let mut up = BTreeSet::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if member.server.is_running() && !member.server.is_paused() {
                up.insert(i);
            }
        }
        let http = monitor_client();
        for &i in &which {
            let member = &self.members[i];
            let peers = up.iter().filter(|&&j| j != i).count() as u64;
            eventually(
                &format!("nats-server {} to be back in the cluster", member.name),
                LONG,
                async || {
                    let routes = routes(&http, member.http_port).await?;
                    if routes < peers {
                        return Err(format!("{routes} of {peers} routes"));
                    }
                    healthz(&http, member.http_port).await
                },
            )
            .await;
        }
        // Every member had its chance to fail; say which one did, with its log.
        for &i in &which {
            let member = &mut self.members[i];
            assert!(
                member.server.is_running(),
                "rig: nats-server {} exited; log tail:\n{}",
                member.name,
                tail(&member.server.logs(), 30)
            );
        }
    }

    /// Creates and deletes a stream replicated on min(3, n) servers: the
    /// meta leader can place one and its group elects a leader.
    async fn probe_replicated_stream(&self) {
        let js = self.jetstream().await;
        let replicas = self.members.len().min(3);
        eventually(
            &format!("an R{replicas} stream to be created and deleted"),
            LONG,
            async || {
                js.create_stream(stream::Config {
                    name: PROBE_STREAM.to_string(),
                    subjects: vec!["rig.cluster.probe".to_string()],
                    storage: stream::StorageType::Memory,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("create: {e}"))?;
                js.delete_stream(PROBE_STREAM)
                    .await
                    .map_err(|e| format!("delete: {e}"))?;
                Ok(())
            },
        )
        .await
    }
}

/// The `server_name` of the member leading `stream`.
async fn stream_leader_name(
    js: &jetstream::Context,
    stream: &str,
) -> Result<Option<String>, String> {
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let info = handle
        .info()
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
}

/// Short timeouts: a paused server must not hold a check up.
fn monitor_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("rig: an HTTP client")
}

/// `/healthz`: 200 once the server is current with the meta leader and
/// with every stream and consumer it holds a replica of.
async fn healthz(http: &reqwest::Client, port: u16) -> Result<(), String> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .map_err(|e| format!("healthz: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("healthz {status}: {body}"))
    }
}

/// How many routes the server has (`/routez`).
async fn routes(http: &reqwest::Client, port: u16) -> Result<u64, String> {
    let routez: serde_json::Value = http
        .get(format!("http://127.0.0.1:{port}/routez"))
        .send()
        .await
        .map_err(|e| format!("routez: {e}"))?
        .json()
        .await
        .map_err(|e| format!("routez: {e}"))?;
    routez["num_routes"]
        .as_u64()
        .ok_or_else(|| format!("routez without num_routes: {routez}"))
}

/// `n` free ports, no two alike (`free_port` may hand the same one out twice).
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let mut seen = BTreeSet::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_port();
        if seen.insert(port) {
            ports.push(port);
        }
    }
    ports
}
