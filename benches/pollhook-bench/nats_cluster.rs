//! A JetStream cluster of real `nats-server`s on 127.0.0.1 for the
//! `cluster` scenario: each server its own client and route ports, store
//! and log, a `cluster {}` block routing to the others (as the test rig's
//! `tests/it/rig/nats_cluster.rs`). Ready once every server answers
//! JetStream and a replicated stream can be created and deleted.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::nats::server_bin;

struct Member {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// Running servers of one cluster; every one is killed when dropped.
pub struct NatsCluster {
    members: Vec<Member>,
}

impl NatsCluster {
    /// `n` servers, all started at once (none answers JetStream before a
    /// quorum is up); returns once the cluster places an R`min(n, 3)`
    /// stream.
    pub async fn start(n: usize) -> NatsCluster {
        let bin = server_bin()
            .expect("the cluster scenario needs nats-server (apt install nats-server, or set NATS_SERVER_BIN)");
        let ports = distinct_free_ports(2 * n);
        let (clients, routes) = ports.split_at(n);
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::tempdir().expect("tempdir");
            let peers: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("\"nats-route://127.0.0.1:{}\"", routes[j]))
                .collect();
            let conf = format!(
                "server_name: \"n{i}\"\ncluster {{\n  name: \"bench\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                routes[i],
                peers.join(", ")
            );
            let conf_path = dir.path().join("server.conf");
            std::fs::write(&conf_path, conf).expect("server.conf");
            let log = std::fs::File::create(dir.path().join("nats-server.log")).expect("log");
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf_path)
                .args([
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &clients[i].to_string(),
                    "-sd",
                ])
                .arg(dir.path().join("store"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("nats-server starts");
            members.push(Member {
                child,
                port: clients[i],
                dir,
            });
        }
        let cluster = NatsCluster { members };
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            while let Err(e) = cluster.answers(i).await {
                assert!(
                    Instant::now() < deadline,
                    "nats-server n{i} not ready in 60 s ({e}); its log:\n{}",
                    cluster.log(i)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while let Err(e) = cluster.probe(n.min(3)).await {
            assert!(
                Instant::now() < deadline,
                "the cluster cannot place a replicated stream in 60 s: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// The client URLs, in member order.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("nats://127.0.0.1:{}", m.port))
            .collect()
    }

    /// CPU seconds of all the servers so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.members
            .iter()
            .map(|m| crate::proc::cpu_seconds(m.child.id()))
            .sum()
    }

    fn log(&self, i: usize) -> String {
        let path: PathBuf = self.members[i].dir.path().join("nats-server.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    async fn client(&self, i: usize) -> Result<async_nats::Client, String> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(format!("nats://127.0.0.1:{}", self.members[i].port))
            .await
            .map_err(|e| e.to_string())
    }

    /// JetStream answers through server `i` (a member without a meta
    /// leader yet stays silent, so the question is asked with a short
    /// timeout; raw, as async-nats cannot parse 2.9's account info).
    async fn answers(&self, i: usize) -> Result<(), String> {
        let client = self.client(i).await?;
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            client.request("$JS.API.INFO", Bytes::new()),
        )
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
        let info: serde_json::Value =
            serde_json::from_slice(&answer.payload).map_err(|e| e.to_string())?;
        match info.get("error") {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        }
    }

    /// Creates and deletes a stream with `replicas`.
    async fn probe(&self, replicas: usize) -> Result<(), String> {
        let js = jetstream::new(self.client(0).await?);
        js.create_stream(stream::Config {
            name: "BENCH_PROBE".into(),
            subjects: vec!["bench.probe".into()],
            storage: stream::StorageType::Memory,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create: {e}"))?;
        js.delete_stream("BENCH_PROBE")
            .await
            .map_err(|e| format!("delete: {e}"))?;
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

/// `n` free ports, no two alike.
fn distinct_free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let port = crate::nats::free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}
