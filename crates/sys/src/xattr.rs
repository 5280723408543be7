//! Extended attributes of a name under a directory descriptor, never following a final
//! symlink (the `l*xattr` calls on the `/proc/self/fd/N/name` path). An empty name means
//! the descriptor's own object, reached through its magic link (which must be followed).
//!
//! Image layers carry xattrs (file capabilities, SELinux labels, the overlay opaque marker);
//! unpacking sets them and `diff` reads them back.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::{Errno, Result};

fn path_of(dir: BorrowedFd<'_>, name: &OsStr) -> Result<CString> {
    let mut path = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        path.push(b'/');
        path.extend_from_slice(name.as_bytes());
    }
    CString::new(path).map_err(|_| Errno::EINVAL)
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Sets attribute `attr` of `name` in `dir` (an empty `name` means `dir` itself).
pub fn set(dir: BorrowedFd<'_>, name: &OsStr, attr: &OsStr, value: &[u8]) -> Result<()> {
    let path = path_of(dir, name)?;
    let attr = c_name(attr)?;
    // SAFETY: both strings are NUL-terminated and live across the call; the value pointer
    // and length describe one readable slice.
    let ret = unsafe {
        if name.is_empty() {
            libc::setxattr(path.as_ptr(), attr.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        } else {
            libc::lsetxattr(path.as_ptr(), attr.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        }
    };
    crate::check(ret as libc::c_long).map(drop)
}

/// The value of attribute `attr` of `name` in `dir`, or `None` when it has none.
pub fn get(dir: BorrowedFd<'_>, name: &OsStr, attr: &OsStr) -> Result<Option<Vec<u8>>> {
    let path = path_of(dir, name)?;
    let attr = c_name(attr)?;
    let mut buffer = vec![0u8; 256];
    loop {
        // SAFETY: the strings are NUL-terminated; the buffer is writable for its length.
        let ret = unsafe {
            if name.is_empty() {
                libc::getxattr(
                    path.as_ptr(),
                    attr.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            } else {
                libc::lgetxattr(
                    path.as_ptr(),
                    attr.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            }
        };
        match crate::check(ret as libc::c_long) {
            Ok(len) => {
                buffer.truncate(len as usize);
                return Ok(Some(buffer));
            }
            Err(Errno::ENODATA | Errno::ENOTSUP) => return Ok(None),
            Err(Errno::ERANGE) if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            Err(err) => return Err(err),
        }
    }
}

/// The names of the attributes of `name` in `dir`.
pub fn list(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<Vec<u8>>> {
    let path = path_of(dir, name)?;
    let mut buffer = vec![0u8; 1024];
    let len = loop {
        // SAFETY: the path is NUL-terminated; the buffer is writable for its length.
        let ret = unsafe {
            if name.is_empty() {
                libc::listxattr(path.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len())
            } else {
                libc::llistxattr(path.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len())
            }
        };
        match crate::check(ret as libc::c_long) {
            Ok(len) => break len as usize,
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(Errno::ERANGE) if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            Err(err) => return Err(err),
        }
    };
    Ok(buffer[..len].split(|b| *b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn user_attributes_round_trip_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        let fd = std::fs::File::open(dir.path()).expect("open");
        let name = OsStr::new("file");
        match set(fd.as_fd(), name, OsStr::new("user.berth"), b"value") {
            // tmpfs without user xattrs (old kernels): nothing to check here.
            Err(Errno::ENOTSUP | Errno::EPERM) => return,
            other => other.expect("set"),
        }
        assert_eq!(
            get(fd.as_fd(), name, OsStr::new("user.berth")).expect("get"),
            Some(b"value".to_vec())
        );
        assert_eq!(get(fd.as_fd(), name, OsStr::new("user.none")).expect("get"), None);
        assert!(list(fd.as_fd(), name).expect("list").contains(&b"user.berth".to_vec()));
    }
}
