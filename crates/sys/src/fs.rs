//! Path resolution that stays inside a directory, whatever symlinks the directory holds.
//!
//! A container image is untrusted input: its `/dev` may be a symlink to `/etc`, a mount
//! target may be `../../../host`. Every lookup here goes through `openat2(2)` with
//! `RESOLVE_IN_ROOT`, so `..` and absolute symlinks are clamped to the root descriptor, and
//! magic links (`/proc/self/root`) are refused.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

use crate::{Errno, Result};

/// What `resolve_in_root` should leave at the path when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing path is `ENOENT`.
    Nothing,
    /// Directories for every missing component.
    Directory,
    /// Directories for the parents and an empty regular file at the end.
    File,
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `path` (absolute or relative, it does not matter) inside `root`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd> {
    let relative = relative(path);
    let target: &Path = if relative.as_os_str().is_empty() { Path::new(".") } else { &relative };
    loop {
        match openat2(root, target, how(flags)) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Resolves `path` inside `root`, creating what is missing, and returns an `O_PATH` handle.
///
/// Each missing component is created with `mkdirat` under its parent's real directory (the
/// one resolution found, not a path string), so a component swapped for a symlink cannot
/// redirect the creation outside the root.
pub fn resolve_in_root(root: BorrowedFd<'_>, path: &Path, create: Create) -> Result<OwnedFd> {
    resolve_in_root_depth(root, &relative(path), create, 0)
}

/// Symlinks followed while creating, as the kernel's own limit for one lookup.
const MAX_SYMLINKS: usize = 40;

fn resolve_in_root_depth(
    root: BorrowedFd<'_>,
    relative: &Path,
    create: Create,
    depth: usize,
) -> Result<OwnedFd> {
    if depth > MAX_SYMLINKS {
        return Err(Errno::ELOOP);
    }
    match open_in_root(root, relative, OFlag::O_PATH) {
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        other => return other,
    }
    let components: Vec<&OsStr> = relative.iter().collect();
    let mut parent = open_in_root(root, Path::new("."), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    let mut prefix = PathBuf::new();
    for (index, name) in components.iter().enumerate() {
        prefix.push(name);
        let last = index + 1 == components.len();
        match open_in_root(root, &prefix, OFlag::O_PATH) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(err) => return Err(err),
        }
        let made = if last && create == Create::File {
            let flags = OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_WRONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            nix::fcntl::openat(parent.as_fd(), *name, flags, Mode::from_bits_truncate(0o644))
                .map(drop)
        } else {
            mkdirat(parent.as_fd(), *name, Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                // The name exists but does not resolve: a dangling symlink. Create its target,
                // read inside the root, and carry on from there with what is left of the path.
                let link = open_in_root(root, &prefix, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
                let target = readlink_fd(link.as_fd())?;
                let base = if target.is_absolute() {
                    PathBuf::new()
                } else {
                    prefix.parent().map(Path::to_path_buf).unwrap_or_default()
                };
                let mut rest = base.join(self::relative(&target));
                for remaining in &components[index + 1..] {
                    rest.push(remaining);
                }
                return resolve_in_root_depth(root, &rest, create, depth + 1);
            }
            Err(err) => return Err(err),
        }
        parent = open_in_root(root, &prefix, OFlag::O_PATH)?;
    }
    Ok(parent)
}

/// `path` with its root and `.` components removed; `..` is kept (openat2 clamps it).
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(Path::new(name)),
            Component::ParentDir => Some(Path::new("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// The `/proc/self/fd/N` path of a descriptor, for syscalls that only take paths (mount).
///
/// The kernel follows such a magic link to the exact object the descriptor holds, so a path
/// checked once cannot be swapped between the check and its use.
pub fn proc_fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The target of a symlink given as an `O_PATH | O_NOFOLLOW` descriptor.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> Result<PathBuf> {
    let target = nix::fcntl::readlinkat(fd, OsStr::from_bytes(b""))?;
    Ok(PathBuf::from(target))
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    Ok(stats.blocks_available() as u64 * stats.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("open root");
        (dir, fd)
    }

    #[test]
    fn absolute_symlink_is_clamped_to_the_root() {
        let (dir, fd) = root();
        let outside = tempfile::tempdir().expect("outside");
        symlink(outside.path(), dir.path().join("escape")).expect("symlink");
        resolve_in_root(fd.as_fd(), Path::new("/escape/x/y"), Create::Directory).expect("resolve");
        assert!(!outside.path().join("x").exists(), "created outside the root");
        // The absolute link target was re-read relative to the root.
        let inside =
            dir.path().join(outside.path().strip_prefix("/").expect("absolute")).join("x/y");
        assert!(inside.is_dir(), "{} missing", inside.display());
    }

    #[test]
    fn dotdot_cannot_leave_the_root() {
        let (dir, fd) = root();
        resolve_in_root(fd.as_fd(), Path::new("../../../etc/berth-test"), Create::File)
            .expect("resolve");
        assert!(dir.path().join("etc/berth-test").is_file());
    }

    #[test]
    fn missing_path_without_create_is_enoent() {
        let (_dir, fd) = root();
        let err =
            resolve_in_root(fd.as_fd(), Path::new("/nope"), Create::Nothing).expect_err("missing");
        assert_eq!(err, Errno::ENOENT);
    }

    #[test]
    fn relative_drops_root_and_dots() {
        assert_eq!(relative(Path::new("/a/./b/../c")), PathBuf::from("a/b/../c"));
        assert_eq!(relative(Path::new("/")), PathBuf::new());
    }
}
