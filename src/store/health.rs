//! Whether the store still works, and what to do when it does not.
//!
//! sled keeps the first I/O error it meets (a full disk, EIO, a read-only
//! remount) and returns it from every later write and flush, even after the
//! cause is gone: a full disk would stop pollhook until someone restarted
//! it. So the store records since when its writes fail, and
//! [`needs_restart`] tells the relay when to give up on this handle: once
//! writes have failed for a while *and* the state directory's file system
//! has room again (so the error is sled's stale one, not a disk still full).
//! The relay then exits non-zero and systemd's `Restart=` opens the store
//! afresh; nothing is lost, because nothing unflushed was confirmed.
//!
//! While the disk stays full the process stays up with polling paused,
//! `/readyz` failing and the watchdog withheld (so systemd restarts it after
//! `WatchdogSec=` too, which is harmless).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long writes must have failed before a restart is considered: long
/// enough for the poller's own retries (2 s, 4 s) to find a passing fault.
pub const GRACE: Duration = Duration::from_secs(10);

/// Free space that counts as "room again": two of sled's log segments, what
/// a freshly opened store may need before its first flush.
pub const ROOM: u64 = 2 * super::SEGMENT_SIZE as u64;

#[derive(Default)]
pub struct Health {
    /// When writes started failing (ms since the epoch); 0 while they work.
    failing_since_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Health {
    pub fn failed(&self, now_ms: u64, error: &str) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    pub fn worked(&self) {
        self.failing_since_ms.store(0, Ordering::SeqCst);
    }

    /// Since when writes fail, and the last error, if they do.
    pub fn failing(&self) -> Option<(u64, String)> {
        let since = self.failing_since_ms.load(Ordering::SeqCst);
        (since != 0).then(|| {
            let error = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            (since, error)
        })
    }
}

/// Whether the store has failed long enough, with room on its file system
/// again, that only a fresh handle can help. `room` is the free space now.
pub fn needs_restart(failing_since_ms: u64, now_ms: u64, room: Option<u64>) -> bool {
    now_ms.saturating_sub(failing_since_ms) >= GRACE.as_millis() as u64
        // If free space cannot be read (an odd file system), a restart is
        // the one thing left to try.
        && room.is_none_or(|free| free >= ROOM)
}

/// Bytes an unprivileged user may still write on the file system of `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to
    // writable memory of the right type; statvfs fills it on success only.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between targets (32-bit on some).
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_after_the_grace_period_and_with_room() {
        let g = GRACE.as_millis() as u64;
        assert!(!needs_restart(1_000, 1_000 + g - 1, Some(ROOM)));
        assert!(needs_restart(1_000, 1_000 + g, Some(ROOM)));
        // The disk is still full: a restart would fail the same way.
        assert!(!needs_restart(1_000, 1_000 + 10 * g, Some(ROOM - 1)));
        assert!(needs_restart(1_000, 1_000 + g, None));
    }

    #[test]
    fn failures_keep_their_first_time_until_a_write_works() {
        let h = Health::default();
        assert!(h.failing().is_none());
        h.failed(5, "disk full");
        h.failed(9, "still full");
        assert_eq!(h.failing(), Some((5, "still full".to_string())));
        h.worked();
        assert!(h.failing().is_none());
    }

    #[test]
    fn free_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).is_some_and(|n| n > 0));
        assert!(free_space(&dir.path().join("missing")).is_none());
    }
}
