//! Foreground mode of `run` and `exec`: forward signals to the container's process, relay a
//! pty between the caller's terminal and the container, and return its exit status.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use berth_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use berth_sys::nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use berth_sys::nix::sys::signalfd::{SfdFlags, SignalFd};
use berth_sys::nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use berth_sys::nix::sys::termios::{self, SetArg, Termios};
use berth_sys::nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use berth_sys::nix::unistd::{self, Pid};
use berth_sys::Errno;

use crate::error::{sys, Error, Result};

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention runc follows: the exit code, or 128 plus the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// A socket pair standing in for `--console-socket` when the runtime itself relays the pty.
pub(crate) fn console_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(sys("create the console socket pair"))
}

/// Receives the pty master the container's init sends over a console socket.
pub fn receive_master(socket: &OwnedFd) -> Result<OwnedFd> {
    receive_fd(socket, "pty master")
}

/// Receives one descriptor sent with `SCM_RIGHTS` (the message text is discarded);
/// `what` names it in errors.
pub fn receive_fd(socket: &OwnedFd, what: &str) -> Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = berth_sys::nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message =
        recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(sys(format!("receive the {what}")))?;
    for control in message.cmsgs().map_err(sys("read the control message"))? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            if let Some(fd) = fds.first() {
                return berth_sys::process::own_fd(*fd).map_err(sys(format!("take the {what}")));
            }
        }
    }
    Err(Error::Init(format!("no {what} arrived on the socket")))
}

/// Puts the caller's terminal in raw mode for as long as it lives.
struct RawTerminal {
    original: Termios,
}

impl RawTerminal {
    fn enter(fd: BorrowedFd<'_>) -> Option<RawTerminal> {
        let original = termios::tcgetattr(fd).ok()?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { original })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.original);
    }
}

/// Waits for `pid` (a child of this process) to exit, forwarding every signal this process
/// receives to it and, with a pty master, relaying stdin to the pty and the pty to stdout.
pub fn foreground_wait(pid: Pid, master: Option<OwnedFd>) -> Result<ExitStatus> {
    let all = SigSet::all();
    let mut previous = SigSet::empty();
    berth_sys::nix::sys::signal::sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&all),
        Some(&mut previous),
    )
    .map_err(sys("block signals"))?;
    let result = relay(pid, master, &all);
    let _ =
        berth_sys::nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    result
}

fn relay(pid: Pid, master: Option<OwnedFd>, signals: &SigSet) -> Result<ExitStatus> {
    let signal_fd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(sys("create a signalfd"))?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let _raw = match &master {
        Some(master) if termios::tcgetattr(stdin.as_fd()).is_ok() => {
            if let Ok(size) = berth_sys::tty::window_size(stdin.as_fd()) {
                let _ = berth_sys::tty::set_window_size(master.as_fd(), size);
            }
            RawTerminal::enter(stdin.as_fd())
        }
        _ => None,
    };
    let mut stdin_open = master.is_some();
    let mut master_open = master.is_some();
    // The process may have exited before signals were blocked: its SIGCHLD is then lost.
    let mut exit: Option<ExitStatus> = reap(pid);
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        if exit.is_some() && !master_open {
            break;
        }
        let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        let master_index = match (&master, master_open) {
            (Some(master), true) => {
                fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let stdin_index = if stdin_open && exit.is_none() {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            Some(fds.len() - 1)
        } else {
            None
        };
        // Once the process is gone, give the pty a moment to drain, then stop.
        let timeout = if exit.is_some() { PollTimeout::from(200u16) } else { PollTimeout::NONE };
        let ready = match poll(&mut fds, timeout) {
            Ok(ready) => ready,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(sys("wait for events")(err)),
        };
        if ready == 0 {
            break;
        }
        let revents = |index: Option<usize>| {
            index.and_then(|i| fds[i].revents()).unwrap_or(PollFlags::empty())
        };
        let signal_ready =
            fds[0].revents().unwrap_or(PollFlags::empty()).contains(PollFlags::POLLIN);
        let master_events = revents(master_index);
        let stdin_events = revents(stdin_index);
        drop(fds);
        if signal_ready {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else { continue };
                match signal {
                    Signal::SIGCHLD => {
                        if let Some(status) = reap(pid) {
                            exit = Some(status);
                        }
                    }
                    Signal::SIGWINCH if master.is_some() => {
                        if let (Some(master), Ok(size)) =
                            (&master, berth_sys::tty::window_size(stdin.as_fd()))
                        {
                            let _ = berth_sys::tty::set_window_size(master.as_fd(), size);
                        }
                    }
                    other => {
                        let _ = kill(pid, other);
                    }
                }
            }
        }
        if let Some(master) = &master {
            if master_events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            {
                match unistd::read(master.as_fd(), &mut buffer) {
                    Ok(0) | Err(Errno::EIO) => master_open = false,
                    Ok(n) => write_all(stdout.as_fd(), &buffer[..n]),
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(_) => master_open = false,
                }
            }
            if stdin_events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                match unistd::read(stdin.as_fd(), &mut buffer) {
                    Ok(0) => stdin_open = false,
                    Ok(n) => write_all(master.as_fd(), &buffer[..n]),
                    Err(Errno::EINTR | Errno::EAGAIN) => {}
                    Err(_) => stdin_open = false,
                }
            }
        }
        if exit.is_none() {
            // A SIGCHLD may have been coalesced with an earlier one.
            if let Some(status) = reap(pid) {
                exit = Some(status);
            }
        }
    }
    exit.map_or_else(|| wait_blocking(pid), Ok)
}

/// Reaps every exited child (this process may be a subreaper); returns `pid`'s status.
fn reap(pid: Pid) -> Option<ExitStatus> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(child, code)) if child == pid => {
                found = Some(ExitStatus::Code(code))
            }
            Ok(WaitStatus::Signaled(child, signal, _)) if child == pid => {
                found = Some(ExitStatus::Signal(signal as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => continue,
        }
    }
}

fn wait_blocking(pid: Pid) -> Result<ExitStatus> {
    match berth_sys::process::wait_child(pid).map_err(sys("wait for the container process"))? {
        WaitStatus::Exited(_, code) => Ok(ExitStatus::Code(code)),
        WaitStatus::Signaled(_, signal, _) => Ok(ExitStatus::Signal(signal as i32)),
        other => Err(Error::Init(format!("unexpected wait status {other:?}"))),
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match unistd::write(fd, data) {
            Ok(0) => return,
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}
