//! The relay's state directory seen from outside, between runs.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::Path;

use pollhook::store::Store;

use super::wait::{wait_until, LONG};

/// sled releases its file lock (a `flock` on `db/db`) when its last
/// background thread lets go of the database, a moment after the drop; a
/// relay started then would find it still held and exit. Waits until a
/// `flock` of our own succeeds (and is released again by closing the file).
pub async fn wait_for_sled_to_let_go(state_dir: &Path) {
    let lock_file = state_dir.join("db").join("db");
    wait_until(&format!("sled to unlock {lock_file:?}"), LONG, || {
        let file = std::fs::File::open(&lock_file).expect("sled's lock file exists");
        // SAFETY: flock on a file descriptor we own, which is open here.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    })
    .await;
}

/// The update ids queued in the store for bot "main", forward "app", read
/// while no relay runs; the store is closed again (and its lock released)
/// before this returns.
pub async fn stored_update_ids(state_dir: &Path) -> HashSet<i64> {
    stored_update_ids_of(state_dir, "app").await
}

/// `stored_update_ids` for bot "main"'s forward `forward`.
pub async fn stored_update_ids_of(state_dir: &Path, forward: &str) -> HashSet<i64> {
    let ids = {
        let store = Store::open(state_dir, 1 << 20).expect("the relay's store opens");
        let fwd = store.forward_id("main", forward).unwrap();
        store
            .pending(fwd, None, usize::MAX)
            .unwrap()
            .iter()
            .filter_map(|j| j.update_id)
            .collect()
    };
    wait_for_sled_to_let_go(state_dir).await;
    ids
}
