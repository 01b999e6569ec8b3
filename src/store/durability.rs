//! sled's quirks, kept together: the log segment size that keeps long
//! updates out of blob files, the blob files sled never fsyncs (blobs.rs),
//! and the I/O error it keeps for good once it met one (health.rs).

use super::*;

/// sled's log segment size. sled writes any page bigger than a quarter of
/// a segment to its own blob file, which sled 0.34 never fsyncs: the store
/// does that after each flush (blobs.rs), at the price of a file and an
/// fsync per blob. A page is a whole leaf (up to ~17 records), so with
/// sled's default 512 KiB a leaf of long updates (8 KiB each: a
/// 4,096-character Cyrillic message) already went to a blob. 8 MiB
/// segments keep leaves of 100 KiB updates in the log; the cost is sled's
/// larger I/O buffers (measured in BENCHMARKS.md, "backlog").
pub const SEGMENT_SIZE: usize = 8 << 20;

/// Removes snapshot files sled began and never finished. sled writes a
/// snapshot to `snap.<lsn>.generating` and renames it when complete, so a
/// leftover is garbage; but an open that meets one (an empty file, left by
/// an open on a full disk) fails with "Read corrupted data" for good.
pub(super) fn drop_unfinished_snapshots(db: &Path) {
    let Ok(entries) = std::fs::read_dir(db) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    warn!("removed an unfinished sled snapshot, {name}, left by an earlier run")
                }
                Err(e) => warn!("cannot remove the unfinished sled snapshot {name}: {e}"),
            }
        }
    }
}

/// The segment size to open `db` with: the one it was created with (sled
/// refuses any other), else [`SEGMENT_SIZE`].
pub(super) fn segment_size(db: &Path) -> usize {
    // sled keeps its creation parameters in `conf`: `key: value` lines
    // followed by a binary checksum.
    std::fs::read(db.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_SIZE)
}

impl Store {
    /// Whether the database still takes writes (for readiness).
    pub fn writable(&self) -> bool {
        self.tree
            .insert(b"m/probe", &crate::clock::now_ms().to_be_bytes()[..])
            .is_ok()
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }

    /// sled's flush, then the blob files it does not sync itself. Every
    /// flush after `open` goes through here, except `forward_id`'s blocking
    /// one, which syncs the blobs the same way.
    ///
    /// Both run on tokio's blocking pool, not through sled's `flush_async`:
    /// that hands the flush to sled's thread pool, whose every job wakes
    /// all of its (seven) idle threads (`notify_all`) for one to take it,
    /// and the blob check's `readdir` ran on a runtime worker. The flush
    /// itself is the same call (`Db::flush`: write and fsync the log up to
    /// now), so a batch is as durable when this returns as before.
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let (db, blobs) = (self.db.clone(), self.blobs.clone());
        let result = tokio::task::spawn_blocking(move || {
            db.flush()?;
            blobs.sync()?;
            Ok::<(), StoreError>(())
        })
        .await
        .unwrap_or_else(|e| {
            // A panic in sled, or a runtime shutting down: not flushed.
            Err(StoreError::Sync(std::io::Error::other(format!(
                "the flush did not complete: {e}"
            ))))
        });
        match &result {
            Ok(()) => self.health.worked(),
            Err(e) => self.health.failed(crate::clock::now_ms(), &e.to_string()),
        }
        result
    }

    /// Applies a batch of writes, noting a failure in the store's health:
    /// sled keeps an I/O error, so a failed write means a broken store even
    /// for a bot that has nothing to append.
    pub(super) fn apply(&self, b: sled::Batch) -> Result<(), StoreError> {
        self.tree.apply_batch(b).map_err(|e| {
            self.health.failed(crate::clock::now_ms(), &e.to_string());
            e.into()
        })
    }

    /// Since when (ms since the epoch) writes fail, and the last error, if
    /// they do.
    pub fn failing(&self) -> Option<(u64, String)> {
        self.health.failing()
    }

    /// Whether this handle is beyond repair: sled keeps an I/O error for
    /// good, so once writes have failed a while with room on the disk again,
    /// only reopening the store helps (see health.rs).
    pub fn needs_restart(&self, now_ms: u64) -> bool {
        self.failing().is_some_and(|(since, _)| {
            health::needs_restart(since, now_ms, health::free_space(&self.dir))
        })
    }
}
