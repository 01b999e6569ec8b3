//! The state directory is private: it holds every queued update, users'
//! messages included, so only the service's own user may read it (0700
//! directories, 0600 files), whatever the umask it was started with.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Restricts the process's umask to 077, so every file sled creates from now
/// on (it names no mode of its own) is 0600, and creates `dir` (0700) if it
/// does not exist.
pub fn create(dir: &Path) -> io::Result<()> {
    // SAFETY: umask(2) cannot fail and touches no memory.
    unsafe {
        libc::umask(0o077);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Removes group and other bits from `path` and, for a directory, from
/// everything below it: a directory made by an older pollhook or under
/// another umask. Symbolic links are left alone (and not followed).
pub fn tighten(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path())?;
        }
    }
    Ok(())
}
