//! Network interfaces of the calling thread's network namespace, by the ioctls every
//! kernel has (no netlink needed to bring a link up).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{check, Errno, Result};

/// Sets `IFF_UP` on the interface `name` (`lo` in a new namespace) of the network
/// namespace the calling thread is in.
pub fn set_up(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long)?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq, which
    // outlives the call.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    check(ret as libc::c_long)?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled.
    unsafe {
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which outlives the call.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) };
    check(ret as libc::c_long).map(drop)
}
