//! A pod-wide process namespace (`shareProcessNamespace`, CRI's `NamespaceMode::POD`).
//!
//! A PID namespace ends with its first process, so it cannot be pinned like a network
//! namespace: a process must hold it. `berth __pidns` is that process, in place of
//! Kubernetes' pause container: it makes the namespace, forks its PID 1, prints that
//! process's host pid and exits. The PID 1 reaps the orphans the pod's containers leave
//! (an init's duty in a shared namespace), ends on SIGTERM or SIGKILL, and is not
//! dumpable, so a container sharing the namespace cannot reach berth's binary through
//! `/proc/1/exe`. It belongs to no CRI server process: a restarted server finds it by its
//! recorded pid and start time.

use std::io::Read;
use std::path::{Path, PathBuf};

use berth_sys::nix::sched::{unshare, CloneFlags};
use berth_sys::nix::sys::signal::{SigSet, Signal};
use berth_sys::nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use berth_sys::nix::unistd::Pid;
use berth_sys::process::Fork;
use serde::{Deserialize, Serialize};

/// The holder of a sandbox's process namespace, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22), so a reused
    /// pid is never taken for it.
    pub started: u64,
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Fields after the command: state(3) ... starttime(22).
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Holder {
    /// Starts a holder through `exe __pidns SANDBOX` (the id names it in the host's `ps`).
    pub fn start(exe: &Path, sandbox: &str) -> Result<Holder, String> {
        let mut child = std::process::Command::new(exe)
            .arg("__pidns")
            .arg(sandbox)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} __pidns: {e}", exe.display()))?;
        let mut said = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut said);
        }
        let status = child.wait().map_err(|e| format!("wait for the pid holder: {e}"))?;
        let pid: i32 = match said.trim().parse() {
            Ok(pid) if status.success() => pid,
            _ => {
                let mut why = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut why);
                }
                return Err(format!("the pid namespace holder did not start: {}", why.trim()));
            }
        };
        let started =
            start_time(pid).ok_or_else(|| format!("the pid namespace holder {pid} is gone"))?;
        Ok(Holder { pid, started })
    }

    /// Whether the recorded process is still this holder.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.started)
    }

    /// The namespace to join, while the holder lives.
    pub fn namespace(&self) -> Option<PathBuf> {
        self.alive().then(|| PathBuf::from(format!("/proc/{}/ns/pid", self.pid)))
    }

    /// Ends the holder (and with it every process left in the namespace).
    pub fn stop(&self) {
        let Ok(pidfd) = berth_sys::process::pidfd_open(Pid::from_raw(self.pid)) else { return };
        // Checked after the pidfd is held: the pid cannot be reused under it.
        if !self.alive() {
            return;
        }
        let _ = berth_sys::process::pidfd_send_signal(&pidfd, Signal::SIGKILL as i32);
        // Gone from its cgroup before the sandbox's is removed.
        use berth_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(2000u16));
    }
}

/// `berth __pidns`: makes the namespace, forks its PID 1, prints that pid, exits.
pub fn main() -> i32 {
    if let Err(err) = unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("cannot make a pid namespace: {err}");
        return 1;
    }
    match berth_sys::process::fork() {
        Ok(Fork::Parent(child)) => {
            println!("{child}");
            0
        }
        Ok(Fork::Child) => hold(),
        Err(err) => {
            eprintln!("cannot fork the namespace's first process: {err}");
            1
        }
    }
}

fn hold() -> ! {
    // Nothing of the caller stays open: its pipe would keep the starter waiting.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for target in 0..3 {
            let _ = berth_sys::process::dup_onto(null.as_raw_fd(), target);
        }
    }
    let _ = berth_sys::process::cloexec_from(3);
    let _ = berth_sys::nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    let _ = berth_sys::nix::sys::prctl::set_dumpable(false);
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD, Signal::SIGHUP] {
        signals.add(signal);
    }
    let _ = signals.thread_block();
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            Ok(Signal::SIGTERM | Signal::SIGINT) => std::process::exit(0),
            _ => {}
        }
    }
}
