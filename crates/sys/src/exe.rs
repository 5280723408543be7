//! Protection of the runtime binary against being overwritten from a container
//! (CVE-2019-5736).
//!
//! A process that enters a container's namespaces exposes its executable as
//! `/proc/<pid>/exe` to the container's processes. If that is the runtime's binary on the
//! host, a malicious container can open it and, once the runtime exits, write to it. So
//! before creating any such process the runtime re-executes itself from an executable that
//! cannot be written: a detached read-only overlay of the binary's directory (no copy, a few
//! microseconds), or, where overlayfs is unavailable, a sealed `memfd` copy.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{fstatvfs, FsFlags};

use crate::{Errno, Result};

/// True when the running executable cannot be written: a sealed memfd or a file on a
/// read-only mount.
pub fn current_exe_is_protected() -> Result<bool> {
    let exe =
        nix::fcntl::open("/proc/self/exe", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    if let Ok(seals) = fcntl(exe.as_fd(), FcntlArg::F_GET_SEALS) {
        let seals = SealFlag::from_bits_truncate(seals);
        if seals.contains(SealFlag::F_SEAL_WRITE) {
            return Ok(true);
        }
    }
    let stat = fstatvfs(exe.as_fd())?;
    Ok(stat.flags().contains(FsFlags::ST_RDONLY))
}

/// An executable handle to a protected copy of the running binary.
pub fn protected_exe() -> Result<OwnedFd> {
    let path = std::fs::read_link("/proc/self/exe").map_err(|_| Errno::ENOENT)?;
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        if let Ok(mnt) = crate::mount::detached_readonly_overlay(dir) {
            let flags = OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
            if let Ok(fd) = nix::fcntl::openat(mnt.as_fd(), Path::new(name), flags, Mode::empty()) {
                return Ok(fd);
            }
        }
    }
    sealed_memfd_copy()
}

/// What to execute to start a helper of ours that creates or enters containers, given the
/// program the caller would use: for the running binary (`/proc/self/exe`) a protected copy
/// (its descriptor, to be kept until the child has executed it, and its `/proc/self/fd`
/// path), so that the helper need not execute itself again (an exec of a large binary
/// costs milliseconds); the program as given otherwise, or where no copy can be made (the
/// helper then protects itself).
pub fn protected_program(program: &Path) -> (Option<OwnedFd>, std::path::PathBuf) {
    if program == Path::new("/proc/self/exe") {
        if let Ok(fd) = protected_exe() {
            let path = crate::fs::proc_fd_path(&fd);
            return (Some(fd), path);
        }
    }
    (None, program.to_path_buf())
}

fn sealed_memfd_copy() -> Result<OwnedFd> {
    let memfd =
        memfd_create(c"berth-runtime", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let source = std::fs::File::open("/proc/self/exe").map_err(|_| Errno::ENOENT)?;
    let mut source = std::io::BufReader::new(source);
    let mut target = std::fs::File::from(memfd);
    std::io::copy(&mut source, &mut target)
        .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))?;
    let memfd = OwnedFd::from(target);
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(memfd.as_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(memfd)
}

/// Replaces the process with the protected copy of itself, keeping arguments and environment.
///
/// Returns only on failure.
pub fn reexec_protected() -> Result<std::convert::Infallible> {
    let exe = protected_exe()?;
    let args: Vec<CString> = std::env::args_os()
        .map(|arg| CString::new(arg.as_bytes()).map_err(|_| Errno::EINVAL))
        .collect::<Result<_>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(key, value)| {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            CString::new(pair).map_err(|_| Errno::EINVAL)
        })
        .collect::<Result<_>>()?;
    nix::unistd::fexecve(exe.as_fd(), &args, &env)
}
