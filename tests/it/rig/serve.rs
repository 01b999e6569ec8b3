//! Plumbing shared by the rig's HTTP servers: bind a loopback port, accept
//! connections and serve each one with hyper's HTTP/1 server on its own task.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub type Body = Full<Bytes>;

/// Returned by a handler to make hyper close the connection without writing
/// any response (hyper treats a service error that way).
#[derive(Debug)]
pub struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rig: connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

/// Binds 127.0.0.1:`port` (0 = any free port).
pub fn bind(port: u16) -> TcpListener {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = TcpSocket::new_v4().expect("rig: create socket");
    // SO_REUSEADDR so a server restarted on the same port (Backend::start_on)
    // is not refused because of connections left in TIME_WAIT.
    socket.set_reuseaddr(true).expect("rig: SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("rig: cannot bind {addr}: {e}"));
    socket.listen(1024).expect("rig: listen")
}

/// A running accept loop. Dropping it (or `shutdown`) stops listening and
/// closes every open connection.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    pub fn serve<H, F>(listener: TcpListener, handler: H) -> Server
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, DropConnection>> + Send + 'static,
    {
        Server::accepting(listener, move |stream| {
            let handler = handler.clone();
            async move {
                // No timer is configured, so hyper applies no header-read
                // timeout and never closes idle keep-alive connections on
                // its own: the client under test decides when to close.
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            }
        })
    }

    /// Accepts connections on `listener` and runs `connection` for each
    /// (the plain server above, the TLS front in tls.rs).
    pub fn accepting<C, CF>(listener: TcpListener, connection: C) -> Server
    where
        C: Fn(TcpStream) -> CF + Send + 'static,
        CF: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().expect("rig: local_addr");
        let task = tokio::spawn(async move {
            // Connection tasks live in this JoinSet, owned by the accept task,
            // so aborting the accept task also aborts them and closes their
            // sockets (a JoinSet aborts its tasks when dropped).
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let stream = match accepted {
                            Ok((stream, _)) => stream,
                            // Transient (e.g. the peer reset before accept): keep serving.
                            Err(_) => continue,
                        };
                        let _ = stream.set_nodelay(true);
                        conns.spawn(connection(stream));
                    }
                    // Reap finished connection tasks so the set doesn't grow forever.
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Server { addr, task }
    }

    /// Stops listening and closes all connections; when this returns the
    /// port refuses connections.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // Awaiting the aborted task guarantees the listener and the
        // connections have actually been dropped.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on right now (for admin.listen in a config, a
/// nats-server's ports), and that nothing else is handed while its server
/// is down: it is taken below the kernel's ephemeral range, where an
/// outgoing connection never gets a port. (A port from `bind(:0)` is an
/// ephemeral one: a nats-server restarted after 10 s found its monitor
/// port taken by some connection meanwhile.)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if ephemeral_low > LOW + 1_000 {
        let span = ephemeral_low - LOW;
        // Test binaries run one at a time, but start each at its own place.
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let port = (LOW + (start + n) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
