//! Files corrald reads and writes as root, in directories someone else
//! might also reach.
//!
//! The rules: a directory corrald keeps its own files in belongs to it and
//! nobody else can write to it; a file is never created through a symlink
//! (O_NOFOLLOW) nor under a name someone could have planted first (O_EXCL
//! on a fresh temporary name, then rename); and a file is read only if it
//! is a regular file of bounded size, without blocking on a FIFO.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sanitise::sanitise;

/// A path as messages show it: escaped, for it may come from a client.
pub fn shown(path: &Path) -> String {
    sanitise(&path.to_string_lossy())
}

/// Refuses a directory that someone other than corrald's user (or root)
/// owns, or that group or others may write: whoever can write to it could
/// swap corrald's files for links or fakes.
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", shown(dir)))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", shown(dir)));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to corrald's user (uid {me}) or root: refusing to keep files there",
            shown(dir),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:04o}): refusing to keep files there",
            shown(dir),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with `mode` whatever the umask,
/// then checks it as [`check_private_dir`] does.
pub fn private_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", shown(dir)))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", shown(dir)))?;
    }
    check_private_dir(dir)
}

/// Opens a file for appending, creating it with `mode`; never through a
/// symlink, and only a regular file. Readable too, so that a torn last
/// line can be found.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    regular(&file, path)?;
    Ok(file)
}

fn regular(file: &File, path: &Path) -> io::Result<()> {
    let meta = file.metadata()?;
    // Character devices are fine to append to (/dev/null, and /dev/full in
    // the tests); FIFOs, sockets and directories are not.
    if meta.is_file() || meta.file_type().is_char_device() {
        return Ok(());
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", shown(path))))
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new
/// one, never a part: a fresh temporary file beside it (O_EXCL, O_NOFOLLOW,
/// mode 0600), then renamed over it; rename replaces a symlink planted at
/// `path` rather than following it. With `durable`, file and directory are
/// synced.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("cannot write {}: {what}: {e}", shown(path));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| format!("{} names no file", shown(path)))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (tmp, mut file) = (0..16)
        .find_map(|_| {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let tmp = dir.join(format!(
                ".{}.tmp-{}-{n}-{:x}",
                name.to_string_lossy(),
                std::process::id(),
                nanos.subsec_nanos()
            ));
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp);
            match opened {
                Ok(file) => Some(Ok((tmp, file))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                Err(e) => Some(Err(fail("create a temporary file", e))),
            }
        })
        .unwrap_or_else(|| Err(format!("cannot write {}: every temporary name was taken", shown(path))))?;
    let result = (|| {
        file.write_all(bytes).map_err(|e| fail("write", e))?;
        if durable {
            file.sync_all().map_err(|e| fail("sync", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| fail("rename", e))?;
        if durable {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("sync directory", e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a regular file of at most `max` bytes, not through a symlink and
/// without blocking on a FIFO or device.
pub fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    let fail = |e: io::Error| format!("cannot read {}: {e}", shown(path));
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", shown(path)));
    }
    if meta.len() > max as u64 {
        return Err(format!("{} is {} bytes, over the limit of {max} bytes", shown(path), meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() > max {
        return Err(format!("{} grew over the limit of {max} bytes while read", shown(path)));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomically(&target, b"new", true).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn reads_refuse_links_fifos_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        assert!(read_bounded(&file, 9).unwrap_err().contains("over the limit"));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_bounded(&link, 100).is_err());
        let fifo = dir.path().join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_bounded(&fifo, 100).unwrap_err().contains("not a regular file"));
        assert!(open_append(&link, 0o640).is_err());
    }

    #[test]
    fn shared_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_private_dir(dir.path()).unwrap_err().contains("writable by group or others"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(dir.path()).is_ok());
        let fresh = dir.path().join("a/b");
        private_dir(&fresh, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
