//! Driving the real `pollhook` binary as a child process.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::wait::{eventually, LONG};

/// How often `wait_exit` looks again (tokio's "process" feature isn't
/// enabled, so exits are polled with try_wait).
const POLL: Duration = Duration::from_millis(20);

/// The name `write_config` uses, next to which `spawn` puts the log.
pub const CONFIG_FILE: &str = "pollhook.toml";
pub const LOG_FILE: &str = "pollhook.log";
/// How the log line `spawn` writes before each start begins.
pub const MARKER: &str = "==== rig: starting pollhook";

/// Process limits for `Relay::spawn_limited`, applied in the child.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProcLimits {
    /// RLIMIT_NOFILE, soft and hard.
    pub nofile: Option<u64>,
    pub umask: Option<u32>,
}

impl ProcLimits {
    fn apply(self) -> std::io::Result<()> {
        if let Some(n) = self.nofile {
            let limit = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: a plain system call on a valid struct.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(mask) = self.umask {
            // SAFETY: umask(2) cannot fail.
            unsafe {
                libc::umask(mask as libc::mode_t);
            }
        }
        Ok(())
    }
}

/// A running `pollhook`; killed (SIGKILL) when dropped.
pub struct Relay {
    child: Child,
    /// Exit status once reaped; after that the pid may belong to someone
    /// else, so no signal is sent any more.
    exited: Option<ExitStatus>,
    /// stdout and stderr, appended across restarts.
    pub log_path: PathBuf,
}

impl Relay {
    /// Runs `pollhook run --config <config_path>`, logging to
    /// `<config dir>/pollhook.log`.
    pub fn spawn(config_path: &Path, extra_env: &[(&str, &str)]) -> Relay {
        let dir = config_path
            .parent()
            .expect("rig: config path has no parent directory");
        let config = config_path.to_str().expect("rig: config path is not UTF-8");
        Self::spawn_args(&["run", "--config", config], extra_env, &dir.join(LOG_FILE))
    }

    /// Runs the binary with arbitrary arguments. `RUST_LOG=debug`,
    /// `RUST_BACKTRACE=1` and `NO_COLOR=1` are set unless `env` overrides them.
    pub fn spawn_args(args: &[&str], env: &[(&str, &str)], log_path: &Path) -> Relay {
        Self::spawn_limited(args, env, log_path, ProcLimits::default())
    }

    /// Like `spawn_args`, with a file-handle limit or a umask of its own.
    pub fn spawn_limited(
        args: &[&str],
        env: &[(&str, &str)],
        log_path: &Path,
        limits: ProcLimits,
    ) -> Relay {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("rig: cannot open log {}: {e}", log_path.display()));
        // A marker so a test reading the log can tell restarts apart.
        writeln!(log, "{MARKER} {args:?} ====").expect("rig: write log");
        let stderr = log.try_clone().expect("rig: clone log handle");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pollhook"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .env("RUST_LOG", "debug")
            .env("RUST_BACKTRACE", "1")
            // Plain logs are easier to grep than ANSI-coloured ones.
            .env("NO_COLOR", "1");
        // Keep tests hermetic: the developer's own POLLHOOK_* settings (and
        // OpenTelemetry's OTEL_*, which turn traces on) must not leak into
        // the relay under test.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("POLLHOOK_") || name.starts_with("OTEL_") {
                cmd.env_remove(key);
            }
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        if limits != ProcLimits::default() {
            // SAFETY: between fork and exec only async-signal-safe calls are
            // allowed; setrlimit(2) and umask(2) are system calls.
            unsafe {
                cmd.pre_exec(move || limits.apply());
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("rig: cannot spawn pollhook: {e}"));
        Relay {
            child,
            exited: None,
            log_path: log_path.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` unless the process was already reaped.
    pub fn signal(&self, signal: i32) {
        if self.exited.is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // our unreaped child, so it cannot have been reused.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Kills the process hard and reaps it.
    pub fn sigkill(&mut self) {
        if self.try_exit().is_none() {
            self.signal(libc::SIGKILL);
            let status = self.child.wait().expect("rig: wait for pollhook");
            self.exited = Some(status);
        }
    }

    /// Asks for a graceful shutdown; pair with `wait_exit`.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// The exit status if the process has exited (reaping it), else None.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("rig: try_wait pollhook");
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the process to exit; None on timeout (it keeps running).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The whole log file (all runs that shared it).
    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }

    /// Waits until the log contains `needle`; panics with the log's tail on
    /// timeout or if the process exits first.
    pub async fn wait_log(&mut self, needle: &str, within: Duration) {
        self.wait_log_count(needle, 1, within).await
    }

    /// Waits until `needle` occurs at least `n` times in the log; panics
    /// with the log's tail on timeout or if the process exits first.
    pub async fn wait_log_count(&mut self, needle: &str, n: usize, within: Duration) {
        let what = format!("{needle:?} {n} time(s) in pollhook's log");
        eventually(&what, within, async || {
            let logs = self.logs();
            if logs.matches(needle).count() >= n {
                return Ok(());
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "rig: pollhook exited ({status}) while waiting for {what}; log tail:\n{}",
                    tail(&logs, 60)
                );
            }
            Err(format!("log tail:\n{}", tail(&logs, 60)))
        })
        .await
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub async fn stop(&mut self) {
        self.sigterm();
        match self.wait_exit(LONG).await {
            Some(status) if status.success() => {}
            other => panic!(
                "rig: pollhook did not stop cleanly after SIGTERM (exit {other:?}); log tail:\n{}",
                tail(&self.logs(), 40)
            ),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // kill_on_drop, and reap so no zombie is left behind.
        if self.try_exit().is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Writes `dir/pollhook.toml` and returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join(CONFIG_FILE);
    fs::write(&path, toml).unwrap_or_else(|e| panic!("rig: write {}: {e}", path.display()));
    path
}

fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// The relay's own lines in `logs`, without the rig's start markers.
pub fn relay_lines(logs: &str) -> Vec<&str> {
    logs.lines().filter(|l| !l.starts_with(MARKER)).collect()
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> &str {
    let mut start = text.len();
    for _ in 0..=lines {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => return text,
        }
    }
    &text[start + 1..]
}

/// Runs `pollhook` with `args` to completion: (success, stdout, stderr).
pub fn pollhook(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pollhook"))
        .args(args)
        .output()
        .expect("pollhook runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pollhook` run off the test's async threads (it may talk to servers the
/// test runtime serves).
pub async fn pollhook_async(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        pollhook(&refs)
    })
    .await
    .unwrap()
}

/// A field of /proc/<pid>/status in KiB: `VmRSS` (resident now), `VmHWM`
/// (its peak), `RssAnon`, `RssFile`.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
