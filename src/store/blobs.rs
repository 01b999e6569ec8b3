//! fsyncs sled's blob files, which sled 0.34 itself never does.
//!
//! sled writes a page bigger than a quarter of a segment to a file of its
//! own under `blobs/` and only a pointer to it into the log. Its flush
//! fsyncs the log, not the blob file, so after a power cut the log can
//! point at a page that never reached the disk, although pollhook has
//! already confirmed the batch to the platform. 8 MiB segments keep Bot API
//! sized leaves out of blobs (see `SEGMENT_SIZE`), but a state directory
//! made by an older pollhook keeps its 512 KiB segments, and a very large
//! leaf can still spill. So after every flush the store calls [`Blobs::sync`].
//!
//! sled finishes writing a blob before the reservation that owns it is
//! complete, and its flush waits for every reservation it covers, so once a
//! flush has returned, every blob that flush points to is whole. Syncing
//! those files and the directory then makes the flush's promise true.
//!
//! What this cannot cover: sled's own thread (every 500 ms) cleans old
//! segments by rewriting their pages, which can put a page in a new blob
//! file, and then fsyncs the log that points to it. Until pollhook's next
//! flush syncs that file, a power cut can leave the log pointing at a
//! blob whose bytes never reached the disk. The cleaning is sled's alone
//! (no API runs it), so the remedy is a directory with 8 MiB segments,
//! where Bot API pages never become blobs; `Store::open` warns about small
//! ones.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct Blobs {
    dir: PathBuf,
    /// Blob files already fsynced, with their length then. A length that
    /// changed means the file was caught mid-write and is synced again.
    synced: Mutex<HashMap<OsString, u64>>,
}

impl Blobs {
    pub fn new(db: PathBuf) -> Blobs {
        Blobs {
            dir: db.join("blobs"),
            synced: Mutex::new(HashMap::new()),
        }
    }

    /// fsyncs every blob file not synced yet, then the directory that names
    /// them. Returns how many files it synced. With no blob files (the
    /// normal case) this is one `readdir` of an empty directory.
    pub fn sync(&self) -> io::Result<usize> {
        // One caller at a time: a second flush must not return while the
        // first is still syncing a file the second one depends on.
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut present = HashMap::with_capacity(synced.len());
        let mut count = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // sled garbage-collects blobs whose pages were rewritten.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                count += 1;
            }
            present.insert(name, len);
        }
        if count > 0 {
            // A new file's name is durable only once its directory is.
            File::open(&self.dir)?.sync_all()?;
        }
        // Forget files sled has removed, so the map stays as small as the
        // directory.
        *synced = present;
        Ok(count)
    }
}

#[cfg(test)]
impl Blobs {
    /// The files synced so far, with their lengths then.
    pub fn synced(&self) -> HashMap<OsString, u64> {
        self.synced.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncs_new_and_grown_files_once_and_forgets_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().to_path_buf());
        // sled has not made the directory yet.
        assert_eq!(blobs.sync().unwrap(), 0);

        let at = dir.path().join("blobs");
        std::fs::create_dir(&at).unwrap();
        assert_eq!(blobs.sync().unwrap(), 0);
        std::fs::write(at.join("100"), b"abc").unwrap();
        std::fs::write(at.join("200"), b"defg").unwrap();
        assert_eq!(blobs.sync().unwrap(), 2);
        assert_eq!(blobs.sync().unwrap(), 0, "nothing new");

        // A file caught mid-write is synced again once it has grown.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(at.join("200"))
            .unwrap();
        f.write_all(b"hij").unwrap();
        std::fs::write(at.join("300"), b"k").unwrap();
        assert_eq!(blobs.sync().unwrap(), 2);

        std::fs::remove_file(at.join("100")).unwrap();
        assert_eq!(blobs.sync().unwrap(), 0);
        let synced = blobs.synced();
        assert_eq!(synced.len(), 2);
        assert_eq!(synced.get(&OsString::from("200")), Some(&7));
    }
}
