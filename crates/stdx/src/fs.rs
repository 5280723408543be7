//! Files written so that a crash leaves the old content or the new, never a part; with
//! `write_atomic` the new content is also on the disk when the call returns.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to `path` atomically with permissions `mode`: a temporary file in the
/// same directory, flushed to disk, renamed over `path`, then the directory flushed so the
/// rename itself survives a power cut.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, data, mode, true)
}

/// Writes `data` to `path` atomically with permissions `mode`, without waiting for the
/// disk: a killed process leaves the old content or the new (the kernel has both), a power
/// cut may leave the old. For what describes running processes (a container's runtime
/// state, pid and exit files), which a power cut ends as well; each flush costs a
/// container start about a millisecond here (two per file: the file and its directory).
pub fn write_atomic_volatile(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, data, mode, false)
}

fn replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temporary)?;
        file.write_all(data)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Flushes a directory's entries (a rename or create in it) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Bytes used by the files under `path` (their sizes; symlinks are not followed), 0 for
/// what cannot be read.
pub fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() {
            total += meta.len();
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&path) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn disk_usage_sums_files_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).expect("write");
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).expect("symlink");
        let link = std::fs::symlink_metadata(dir.path().join("link")).expect("stat").len();
        assert_eq!(super::disk_usage(dir.path()), 15 + link);
        assert_eq!(super::disk_usage(&dir.path().join("missing")), 0);
    }

    #[test]
    fn replaces_content_with_the_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        super::write_atomic(&path, b"one", 0o600).expect("first");
        super::write_atomic(&path, b"two", 0o600).expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("file");
        assert!(super::write_atomic(&path, b"x", 0o644).is_err());
    }
}
