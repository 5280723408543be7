//! The parts of the new mount API (`mount_setattr`, `fsopen`, `fsmount`) that `nix` lacks.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{check, Errno, Result};

pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
pub const MOUNT_ATTR__ATIME: u64 = 0x0000_0070;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0000_0000;
pub const MOUNT_ATTR_NOATIME: u64 = 0x0000_0010;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x0000_0020;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x0000_0080;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// Changes of mount attributes for `mount_setattr(2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttr {
    pub set: u64,
    pub clear: u64,
    /// `MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE` or `MS_UNBINDABLE`, or 0 to leave it.
    pub propagation: u64,
    /// A user namespace descriptor for `MOUNT_ATTR_IDMAP`.
    pub userns_fd: Option<RawFd>,
}

/// Applies `attr` to the mount at `path` relative to `dirfd`, recursively when asked.
pub fn mount_setattr(
    dirfd: BorrowedFd<'_>,
    path: &Path,
    attr: &MountAttr,
    recursive: bool,
) -> Result<()> {
    #[repr(C)]
    struct RawMountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let raw = RawMountAttr {
        attr_set: attr.set,
        attr_clr: attr.clear,
        propagation: attr.propagation,
        userns_fd: attr.userns_fd.map(|fd| fd as u64).unwrap_or(0),
    };
    let path = cstring(path)?;
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `path` is NUL-terminated and `raw` is a mount_attr of the size we pass; both
    // outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags,
            &raw as *const RawMountAttr,
            std::mem::size_of::<RawMountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// Creates a detached, read-only overlay mount whose single layer is `lower_dir`.
///
/// Nothing can write through such a mount, and being detached it is reachable only through
/// the returned descriptor: the runtime re-executes itself from it (see [`crate::exe`]).
pub fn detached_readonly_overlay(lower_dir: &Path) -> Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;

    let fstype = c"overlay";
    // SAFETY: `fstype` is a NUL-terminated literal.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: fsopen returned a fresh descriptor that we now own.
    let fs = unsafe { OwnedFd::from_raw_fd(check(fs)? as RawFd) };

    // overlayfs options are separated by ',' and layers by ':'; such paths would be misread.
    let bytes = lower_dir.as_os_str().as_bytes();
    if bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\')) {
        return Err(Errno::EINVAL);
    }
    let set = |key: &std::ffi::CStr, value: &CString| -> Result<()> {
        // SAFETY: key and value are NUL-terminated and live across the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        check(ret).map(drop)
    };
    // overlayfs wants two lower layers when there is no upper one; the second is an empty,
    // detached tmpfs, named through /proc/self/fd for as long as the descriptor lives.
    let empty = empty_tmpfs()?;
    let mut layers = bytes.to_vec();
    layers.extend_from_slice(format!(":/proc/self/fd/{}", empty.as_raw_fd()).as_bytes());
    set(c"lowerdir", &CString::new(layers).map_err(|_| Errno::EINVAL)?)?;
    // SAFETY: integer-only call on our descriptor.
    let ret = unsafe {
        libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, 0usize, 0usize, 0)
    };
    check(ret)?;
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID;
    // SAFETY: integer-only call on our descriptor.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    // SAFETY: fsmount returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(check(mnt)? as RawFd) })
}

/// A fresh, empty, detached tmpfs.
fn empty_tmpfs() -> Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: the type is a NUL-terminated literal.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: fsopen returned a fresh descriptor that we now own.
    let fs = unsafe { OwnedFd::from_raw_fd(check(fs)? as RawFd) };
    // SAFETY: integer-only call on our descriptor.
    check(unsafe {
        libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, 0usize, 0usize, 0)
    })?;
    // SAFETY: integer-only call on our descriptor.
    let mnt = unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY)
    };
    // SAFETY: fsmount returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(check(mnt)? as RawFd) })
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x0000_0040;

/// A detached copy (bind) of the mount at `source`, as a descriptor (`open_tree(2)`).
pub fn clone_tree(source: BorrowedFd<'_>, recursive: bool) -> Result<OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the empty path is a NUL-terminated literal; flags are integers.
    let ret =
        unsafe { libc::syscall(libc::SYS_open_tree, source.as_raw_fd(), c"".as_ptr(), flags) };
    // SAFETY: open_tree returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(check(ret)? as RawFd) })
}

/// Attaches a detached mount onto the object `target` refers to (`move_mount(2)`).
pub fn attach(mount: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<()> {
    let flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both paths are empty NUL-terminated literals; descriptors are borrowed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    check(ret).map(drop)
}

/// Bind-mounts what `source` refers to onto what `target` refers to, without any path
/// lookup: neither can be swapped for a symlink in between.
pub fn bind_fd(source: BorrowedFd<'_>, target: BorrowedFd<'_>, recursive: bool) -> Result<()> {
    let tree = clone_tree(source, recursive)?;
    attach(std::os::fd::AsFd::as_fd(&tree), target)
}

/// Mounts a fresh filesystem (e.g. a read-only empty tmpfs) onto `target`.
///
/// `options` are `key=value` or flag strings, as `fsconfig(2)` takes them one by one.
pub fn mount_fs_fd(
    fstype: &std::ffi::CStr,
    options: &[&str],
    attrs: u64,
    target: BorrowedFd<'_>,
) -> Result<()> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: `fstype` is NUL-terminated.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: fsopen returned a fresh descriptor that we now own.
    let fs = unsafe { OwnedFd::from_raw_fd(check(fs)? as RawFd) };
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (*option, None),
        };
        let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
        let value = value.map(CString::new).transpose().map_err(|_| Errno::EINVAL)?;
        let (command, value_ptr) = match &value {
            Some(value) => (FSCONFIG_SET_STRING, value.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: key and value are NUL-terminated (or null for flags) and outlive the call.
        let ret = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), command, key.as_ptr(), value_ptr, 0)
        };
        check(ret)?;
    }
    // SAFETY: integer-only call on our descriptor.
    let ret = unsafe {
        libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, 0usize, 0usize, 0)
    };
    check(ret)?;
    // SAFETY: integer-only call on our descriptor.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    // SAFETY: fsmount returned a fresh descriptor that we now own.
    let mnt = unsafe { OwnedFd::from_raw_fd(check(mnt)? as RawFd) };
    attach(std::os::fd::AsFd::as_fd(&mnt), target)
}

/// A field of `/proc/*/mountinfo` as written: the kernel escapes space, tab, newline and
/// backslash as three octal digits (`\040`).
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 4 <= bytes.len() {
            if let Ok(value) = u8::from_str_radix(&field[index + 1..index + 4], 8) {
                out.push(value);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's mount points, in the order of its mount table (none when it cannot
/// be read).
pub fn mount_points() -> Vec<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| std::path::PathBuf::from(unescape_mountinfo(field)))
        .collect()
}

/// Whether `path` is the root of a mount (not following a final symlink). One `statx(2)`
/// (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8) where the kernel says; the mount table otherwise,
/// which costs far more (the kernel formats every mount: half a millisecond with a hundred
/// mounts).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(c_path) = cstring(path) else { return false };
    // SAFETY: statx fills the zeroed struct; the path is NUL-terminated and outlives the call.
    let (ret, stx) = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let ret = libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            0,
            &mut stx,
        );
        (ret, stx)
    };
    if ret != 0 {
        // Missing: no mount. Any other failure (a seccomp profile without statx, a dead
        // FUSE mount) is not an answer: the mount table says.
        let missing = matches!(Errno::last(), Errno::ENOENT | Errno::ENOTDIR);
        return !missing && in_mount_table(path);
    }
    let flag = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & flag != 0 {
        return stx.stx_attributes & flag != 0;
    }
    in_mount_table(path)
}

/// `path` (its parent resolved, not a final symlink) among the mount table's points.
fn in_mount_table(path: &Path) -> bool {
    let absolute = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        .map(|p| p.join(name))
        .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    };
    mount_points().contains(&absolute)
}

/// The mount points strictly under `dir`, deepest first (the order to unmount them in).
/// `dir` is compared as written: give it canonical, as the mount table is.
pub fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> =
        mount_points().into_iter().filter(|p| p.starts_with(dir) && p != dir).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

#[cfg(test)]
mod mountinfo_tests {
    use super::*;

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b\011c\134d"), "/mnt/a b\tc\\d");
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04", "a short escape stays");
        assert_eq!(unescape_mountinfo("/caf\u{e9}"), "/caf\u{e9}", "UTF-8 passes through");
    }

    #[test]
    fn mount_roots_are_told_from_directories() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(Path::new("/proc/self/fd")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()));
        assert!(!is_mount_point(&dir.path().join("missing")));
    }

    #[test]
    fn this_process_has_its_root_mounted() {
        assert!(mount_points().iter().any(|p| p == Path::new("/")));
        assert!(mounts_under(Path::new("/")).iter().all(|p| p != Path::new("/")));
    }
}
