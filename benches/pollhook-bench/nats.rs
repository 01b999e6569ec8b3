//! A real `nats-server` with JetStream for the `jetstream` scenario: its
//! own free port and store directory, a file-storage stream, and a count of
//! what the stream holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

/// Where `nats-server` is: `NATS_SERVER_BIN`, else the PATH, else Debian's
/// `/usr/sbin` (not on a normal user's PATH).
pub fn server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(p.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/nats-server");
        p.is_file().then_some(p)
    })
}

pub struct NatsServer {
    child: std::process::Child,
    pub addr: SocketAddr,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh store and waits
    /// until it accepts a client.
    pub async fn start() -> NatsServer {
        let bin = server_bin()
            .expect("the jetstream scenario needs nats-server (apt install nats-server, or set NATS_SERVER_BIN)");
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let server = NatsServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _store: store,
        };
        // Ready means a client got in; the port may take a moment to open.
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.client().await.is_none() {
            assert!(
                Instant::now() < deadline,
                "nats-server on {} did not accept a client within 20 s",
                server.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    async fn client(&self) -> Option<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(self.url())
            .await
            .ok()
    }

    /// Creates a file-storage stream capturing `subjects` and returns it.
    pub async fn stream(&self, name: &str, subjects: &str) -> stream::Stream {
        let client = self.client().await.expect("nats-server accepts a client");
        jetstream::new(client)
            .create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![subjects.to_string()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("stream created")
    }

    /// The server process's CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::proc::cpu_seconds(self.child.id())
    }
}

/// Waits until `stream` holds `n` messages (JetStream already dropped
/// duplicates by `Nats-Msg-Id`, so these are distinct updates).
pub async fn wait_messages(stream: &stream::Stream, n: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if stream
            .get_info()
            .await
            .is_ok_and(|info| info.state.messages >= n)
        {
            return true;
        }
        // Often enough to add at most ~0.3 % to a 3 s run; each look is one
        // small request the server answers from memory.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
