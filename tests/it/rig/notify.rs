//! A stand-in for systemd's notification socket (`NOTIFY_SOCKET`).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A stand-in for systemd's notification socket.
pub struct NotifySocket {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            _dir: dir,
            path,
        }
    }

    /// Messages received within `within`, until one contains `until`.
    pub fn read_until(&self, until: &str, within: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.contains(until);
                got.push(msg);
                if done {
                    return got;
                }
            }
        }
        panic!("no {until:?} from pollhook within {within:?}; got {got:?}");
    }
}
