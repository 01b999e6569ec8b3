//! One HTTP/2 connection of the long-poll pool: TCP, TLS (ALPN `h2`), the
//! h2 handshake, and a driver task that publishes the server's current
//! SETTINGS_MAX_CONCURRENT_STREAMS after every poll of the connection.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long opening a connection (TCP, TLS, h2 preface and the server's
/// settings) may take, as for reqwest's connections.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Flow-control windows: a batch of updates (up to a few MB) arrives in
/// one round trip rather than in 64 KB steps. They are credit, not
/// buffers: memory is only used by data received and not yet read, and
/// the poller reads at once.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

pub struct Conn {
    send: h2::client::SendRequest<Bytes>,
    /// The server's stream limit as last seen by the driver.
    limit: AtomicUsize,
    /// Long polls on this connection now (changed under the pool's lock
    /// upwards, on a lease's drop downwards).
    pub in_use: AtomicUsize,
    dead: AtomicBool,
}

pub enum Opened {
    H2(Arc<Conn>),
    /// The server chose HTTP/1.1 by ALPN.
    NotH2,
}

impl Conn {
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Set when a request found the connection broken (GOAWAY, reset):
    /// the pool stops leasing it.
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    pub fn sender(&self) -> h2::client::SendRequest<Bytes> {
        self.send.clone()
    }

    pub async fn open(
        host: &str,
        port: u16,
        name: &ServerName<'static>,
        tls: &TlsConnector,
    ) -> Result<Opened, String> {
        tokio::time::timeout(CONNECT_TIMEOUT, Conn::open_unbounded(host, port, name, tls))
            .await
            .map_err(|_| {
                format!(
                    "connecting to {host}:{port} took longer than {}s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
    }

    async fn open_unbounded(
        host: &str,
        port: u16,
        name: &ServerName<'static>,
        tls: &TlsConnector,
    ) -> Result<Opened, String> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = tls
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {}", crate::http::error_chain(&e)))?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Ok(Opened::NotH2);
        }
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| format!("HTTP/2 with {host}:{port}: {e}"))?;
        // The server's SETTINGS frame is the first it sends, so once the
        // answer to our PING is in, the limit read is the server's, not
        // h2's "unlimited until told" starting value.
        let mut ping = connection.ping_pong().expect("taken only here");
        ping.send_ping(h2::Ping::opaque())
            .map_err(|e| format!("HTTP/2 with {host}:{port}: {e}"))?;
        let conn = Arc::new(Conn {
            send,
            limit: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let shared = conn.clone();
        tokio::spawn(async move {
            let mut ping = Some(ping);
            let mut ready = Some(ready_tx);
            let _ = poll_fn(|cx| {
                let done = Pin::new(&mut connection).poll(cx);
                // Read in the same task right after the frames were
                // processed: no request can see a stale limit after the
                // pong, and a later SETTINGS (lowered or raised) is
                // seen on the next poll.
                shared
                    .limit
                    .store(connection.max_concurrent_send_streams(), Ordering::SeqCst);
                if let Some(p) = ping.as_mut() {
                    if let Poll::Ready(r) = p.poll_pong(cx) {
                        ping = None;
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
                        }
                    }
                }
                done
            })
            .await;
            shared.mark_dead();
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(Opened::H2(conn)),
            Ok(Err(e)) => Err(format!("HTTP/2 with {host}:{port}: {e}")),
            Err(_) => Err(format!(
                "HTTP/2 with {host}:{port}: the connection closed before its settings arrived"
            )),
        }
    }
}
