//! The long-poll pool of one API host: leases a stream on a connection
//! with room under the server's limit, opens another connection when none
//! has any, and sends `getUpdates` over it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::conn::{Conn, Opened};
use crate::config::CaFile;

/// Streams per connection at most, whatever the server allows: an HTTP/2
/// connection is one TCP stream, and one lost packet stalls every poll on
/// it. See BENCHMARKS.md ("TLS and HTTP/2") for what a connection costs.
const MAX_STREAMS_PER_CONNECTION: usize = 100;

pub struct Pool {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: TlsConnector,
    /// The same configuration offering only `http/1.1`, for the bots'
    /// lines once the server turned out not to speak HTTP/2.
    h1_tls: TlsConnector,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// One connection is opened at a time, so that many bots starting
    /// together fill a connection rather than each opening its own.
    opening: tokio::sync::Mutex<()>,
    /// The server chose HTTP/1.1 by ALPN: long polls take the HTTP/1.1 path.
    not_h2: AtomicBool,
}

/// A server's answer: what `BotApi` interprets.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

#[derive(Debug)]
pub enum PollError {
    /// The server does not speak HTTP/2; use HTTP/1.1.
    NotH2,
    Timeout,
    TooLarge(usize),
    Transport(String),
}

/// A stream's place on a connection, given back when dropped (the answer
/// read, the poll timed out or was cancelled).
struct Lease(Arc<Conn>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    pub fn new(host: String, port: u16, ca_file: Option<&CaFile>) -> Result<Pool, String> {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("api_url: host {host:?}: {e}"))?;
        let config = crate::http::tls::client_config(ca_file)?;
        // A clone shares the verifier and its roots.
        let mut h1 = config.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Pool {
            host,
            port,
            name,
            tls: TlsConnector::from(Arc::new(config)),
            h1_tls: TlsConnector::from(Arc::new(h1)),
            conns: Mutex::default(),
            opening: tokio::sync::Mutex::default(),
            not_h2: AtomicBool::new(false),
        })
    }

    /// A bot's HTTP/1.1 line to this pool's server, for when it does not
    /// speak HTTP/2.
    pub fn h1_line(&self, default_port: bool) -> super::Line {
        super::Line::new(self.host.clone(), self.port, default_port)
            .with_tls(self.h1_tls.clone(), self.name.clone())
    }

    /// False once the server answered ALPN with HTTP/1.1. Kept for the
    /// process's life: a platform does not drop HTTP/2 between polls, and
    /// asking again would cost a TLS handshake per poll.
    pub fn speaks_h2(&self) -> bool {
        !self.not_h2.load(Ordering::SeqCst)
    }

    /// POSTs `body` (JSON) to `url` and reads the answer, up to `cap`
    /// bytes, all within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        body: Bytes,
        timeout: Duration,
        cap: usize,
    ) -> Result<Answer, PollError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let lease = tokio::time::timeout_at(deadline, self.lease())
            .await
            .map_err(|_| PollError::Timeout)??;
        match tokio::time::timeout_at(deadline, self.post_on(&lease, url, body, cap)).await {
            Ok(answer) => answer,
            Err(_) => {
                // A long poll is answered by the server's own timeout,
                // before ours: no answer at all means the connection may be
                // dead without a word (no RST, no GOAWAY). New polls go to a
                // fresh one; the polls still on this one end by themselves.
                lease.0.mark_dead();
                Err(PollError::Timeout)
            }
        }
    }

    async fn post_on(
        &self,
        lease: &Lease,
        url: &str,
        body: Bytes,
        cap: usize,
    ) -> Result<Answer, PollError> {
        let conn = &lease.0;
        let broken = |e: h2::Error| {
            if !e.is_reset() {
                conn.mark_dead();
            }
            PollError::Transport(format!("HTTP/2: {e}"))
        };
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("pollhook/", env!("CARGO_PKG_VERSION")),
            )
            .body(())
            .map_err(|e| PollError::Transport(e.to_string()))?;
        let mut send = conn.sender().ready().await.map_err(broken)?;
        let (response, mut stream) = send.send_request(request, false).map_err(broken)?;
        stream.send_data(body, true).map_err(broken)?;
        let response = response.await.map_err(broken)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut recv = response.into_body();
        let mut buf = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(broken)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > cap {
                return Err(PollError::TooLarge(cap));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after,
            body: buf.freeze(),
        })
    }

    async fn lease(&self) -> Result<Lease, PollError> {
        if let Some(l) = self.try_lease() {
            return Ok(l);
        }
        if !self.speaks_h2() {
            return Err(PollError::NotH2);
        }
        let _one = self.opening.lock().await;
        // Another poll may have opened one while this one waited.
        if let Some(l) = self.try_lease() {
            return Ok(l);
        }
        // Boxed: opening (TCP, TLS, HTTP/2 handshakes) is a ~6.4 KB future
        // needed once per connection; inline, every waiting poll would
        // carry its space.
        match Box::pin(Conn::open(&self.host, self.port, &self.name, &self.tls)).await {
            Ok(Opened::H2(conn)) => {
                tracing::debug!(
                    host = %self.host,
                    streams = conn.limit(),
                    "long polls: new HTTP/2 connection"
                );
                // This poll takes its stream on the new connection at
                // once: it never loops opening connections that others
                // fill first, or that allow nothing.
                let mut conns = self.conns.lock().unwrap();
                if conn.limit() == 0 {
                    return Err(PollError::Transport(format!(
                        "{}:{} allows no concurrent HTTP/2 streams",
                        self.host, self.port
                    )));
                }
                conn.in_use.fetch_add(1, Ordering::SeqCst);
                conns.push(conn.clone());
                Ok(Lease(conn))
            }
            Ok(Opened::NotH2) => {
                self.not_h2.store(true, Ordering::SeqCst);
                Err(PollError::NotH2)
            }
            Err(e) => Err(PollError::Transport(e)),
        }
    }

    /// A stream on the first live connection with room: filling
    /// connections in order keeps their number at bots / limit.
    fn try_lease(&self) -> Option<Lease> {
        let mut conns = self.conns.lock().unwrap();
        conns.retain(|c| !c.is_dead());
        for c in conns.iter() {
            let room = c.limit().min(MAX_STREAMS_PER_CONNECTION);
            // Raised only here, under the lock; a lease's drop only
            // lowers it, so the check cannot be overtaken.
            if c.in_use.load(Ordering::SeqCst) < room {
                c.in_use.fetch_add(1, Ordering::SeqCst);
                return Some(Lease(c.clone()));
            }
        }
        None
    }
}
