//! Pseudo-terminal ioctls that `nix` does not wrap.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{check, Result};

/// Opens the peer (slave) of a pty master by descriptor (`TIOCGPTPEER`).
///
/// Unlike opening `/dev/pts/N` by name, the peer cannot be substituted by whoever controls the
/// path.
pub fn open_peer(master: BorrowedFd<'_>) -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes an integer argument and returns a new descriptor.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    let fd = check(ret as libc::c_long)?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Unlocks a pty master so that its peer may be opened (`TIOCSPTLCK` 0).
pub fn unlock(master: BorrowedFd<'_>) -> Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which outlives the call.
    let ret =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock as *const libc::c_int) };
    check(ret as libc::c_long).map(drop)
}

/// Makes `tty` the controlling terminal of the calling session leader (`TIOCSCTTY`).
pub fn set_controlling(tty: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    let ret = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Window size of a terminal: rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// Reads a terminal's window size (`TIOCGWINSZ`).
pub fn window_size(tty: BorrowedFd<'_>) -> Result<WindowSize> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which outlives the call.
    let ret =
        unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut size as *mut libc::winsize) };
    check(ret as libc::c_long)?;
    Ok(WindowSize { rows: size.ws_row, cols: size.ws_col })
}

/// Sets a terminal's window size (`TIOCSWINSZ`).
pub fn set_window_size(tty: BorrowedFd<'_>, size: WindowSize) -> Result<()> {
    let raw = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which outlives the call.
    let ret =
        unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &raw as *const libc::winsize) };
    check(ret as libc::c_long).map(drop)
}

/// Makes `command` start in a session of its own with `terminal` (a pty peer) as its
/// controlling terminal and as its stdin, stdout and stderr, as a login shell gets one.
pub fn spawn_on_terminal(
    command: &mut std::process::Command,
    terminal: OwnedFd,
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    command
        .stdin(Stdio::from(terminal.try_clone()?))
        .stdout(Stdio::from(terminal.try_clone()?))
        .stderr(Stdio::from(terminal));
    // SAFETY: between fork and exec the closure calls only setsid and ioctl, which are
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // stdin is the terminal by now: make it the session's controlling one.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
