//! Reading and writing cgroup files, with errors that name the file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_sys::nix::unistd::Pid;

use crate::{Error, Result};

pub(crate) fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { op, path: path.to_path_buf(), source }
}

/// Writes `value` to the cgroup file `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, value: impl AsRef<str>) -> Result<()> {
    let path = dir.join(name);
    tracing::trace!(path = %path.display(), value = value.as_ref(), "cgroup write");
    std::fs::write(&path, value.as_ref()).map_err(|source| io_error("write", &path, source))
}

/// Reads the cgroup file `dir/name`, trimmed.
pub(crate) fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| io_error("read", &path, source))
}

/// Reads a number; `max` reads as `u64::MAX`.
pub(crate) fn read_u64(dir: &Path, name: &str) -> Result<u64> {
    let text = read(dir, name)?;
    parse_u64(&text).ok_or_else(|| {
        io_error("parse", &dir.join(name), std::io::Error::new(ErrorKind::InvalidData, text))
    })
}

pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    if text == "max" {
        return Some(u64::MAX);
    }
    text.parse().ok()
}

/// Reads `key value` lines (memory.stat, cpu.stat) into pairs.
pub(crate) fn read_keyed(dir: &Path, name: &str) -> Result<Vec<(String, u64)>> {
    let text = read(dir, name)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), parse_u64(value.trim())?))
        })
        .collect())
}

pub(crate) fn keyed(pairs: &[(String, u64)], key: &str) -> u64 {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or(0)
}

/// The processes listed in `dir/cgroup.procs` and in every cgroup below it.
pub(crate) fn pids_recursive(dir: &Path) -> Result<Vec<Pid>> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let procs = dir.join("cgroup.procs");
        let text = match std::fs::read_to_string(&procs) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(io_error("read", &procs, source)),
        };
        pids.extend(text.lines().filter_map(|line| line.trim().parse().ok()).map(Pid::from_raw));
        stack.extend(subdirectories(&dir));
    }
    Ok(pids)
}

pub(crate) fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|entry| entry.path())
        .collect()
}

/// Removes a cgroup directory and its sub-cgroups, deepest first.
///
/// A cgroup whose last process has just died can report `EBUSY` for a moment; retried a few
/// times before giving up with [`Error::Busy`].
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    // Most cgroups have no children: try the rmdir before listing (listing a cgroup
    // directory makes kernfs generate every control file's entry).
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for child in subdirectories(dir) {
        remove_tree(&child)?;
    }
    const ATTEMPTS: u32 = 50;
    for attempt in 0..ATTEMPTS {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(berth_sys::libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(2 * u64::from(attempt + 1)));
            }
            Err(source) => return Err(io_error("remove", dir, source)),
        }
    }
    Err(Error::Busy { path: dir.to_path_buf(), attempts: ATTEMPTS })
}

/// Joins a cgroup path (which starts with `/`) onto a hierarchy root.
pub(crate) fn join(root: &Path, cgroup: &Path) -> PathBuf {
    root.join(cgroup.strip_prefix("/").unwrap_or(cgroup))
}
