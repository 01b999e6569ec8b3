//! Waiting for something to become true, with a deadline: one mechanism for
//! every test, so no test writes its own `Instant::now() + …` loop.

use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The patience for anything a test waits on: generous, because a loaded CI
/// machine is slow, and never spent when the test passes.
pub const LONG: Duration = Duration::from_secs(60);

/// How often `eventually` looks again.
const POLL: Duration = Duration::from_millis(20);

/// What a check returns: done (with a value) or not yet (with, perhaps, what
/// it saw, for the failure message).
pub trait Outcome {
    type Value;
    fn settle(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn settle(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err(what was seen instead)`: the last one is in the failure message.
impl<T> Outcome for Result<T, String> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Runs `check` every 20 ms until it is done (`true`, `Some(v)`, `Ok(v)`)
/// and returns its value; panics naming `what` (and the last `Err` seen)
/// once `within` has passed. `check` may await, and may borrow mutably.
pub async fn eventually<C: Outcome>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> C,
) -> C::Value {
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await.settle() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            match last {
                Some(seen) => {
                    panic!("timed out after {within:?} waiting for {what}; last seen: {seen}")
                }
                None => panic!("timed out after {within:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `eventually` for a check that does not await.
pub async fn wait_until<C: Outcome>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> C,
) -> C::Value {
    eventually(what, within, async || check()).await
}

/// Waits until `check` returns Some, looking again whenever `changed` is
/// notified rather than on a timer (the fake servers notify on every change
/// of their state). Returns the last check's result at the deadline.
pub async fn on_change<T>(
    changed: &Notify,
    deadline: tokio::time::Instant,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        // Register interest before checking so a change between the check
        // and the await is not missed.
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check() {
            return Some(v);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return check(),
        }
    }
}
