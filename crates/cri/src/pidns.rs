//! A pod-wide process namespace (`shareProcessNamespace`, CRI's `NamespaceMode::POD`).
//!
//! A PID namespace ends with its first process, so it cannot be pinned like a network
//! namespace: a process must hold it. `berth __pidns` is that process, in place of
//! Kubernetes' pause container: it joins the sandbox's network, IPC and UTS namespaces,
//! makes the PID namespace, forks its PID 1, prints that process's host pid and exits.
//! The PID 1 gives up everything a container sharing the namespace could reach through
//! it (`/proc/1/root`, `/proc/1/exe`, ptrace with CAP_SYS_PTRACE): it runs from a sealed
//! copy of berth's binary, in a mount namespace of its own whose root is an empty tmpfs,
//! as uid/gid 65535 with no capabilities, no_new_privs and not dumpable, with no
//! descriptor of its starter. It reaps the orphans the pod's containers leave (an init's
//! duty in a shared namespace) and ends on SIGTERM or SIGKILL. It belongs to no CRI server
//! process: a restarted server finds it by its recorded pid and start time, and the
//! namespace itself is pinned in the sandbox's directory, so a container never joins
//! whatever a reused pid would name.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
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
    /// Starts a holder through `exe __pidns SANDBOX` (the id names it in the host's `ps`),
    /// in the namespaces pinned at `join` (network, IPC, UTS).
    pub fn start(exe: &Path, sandbox: &str, join: &[PathBuf]) -> Result<Holder, String> {
        let join: Vec<String> = join.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let (protected, program) = berth_sys::exe::protected_program(exe);
        let mut child = std::process::Command::new(&program)
            .arg0("berth")
            .arg("__pidns")
            .arg(sandbox)
            // Not in argv: every process of the pod can read PID 1's command line.
            .env(JOIN_ENV, join.join(":"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} __pidns: {e}", exe.display()))?;
        drop(protected);
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

const JOIN_ENV: &str = "BERTH_PIDNS_JOIN";

/// The uid and gid the holder runs as (Kubernetes' pause image uses 65535 too).
const NOBODY: u32 = 65535;

/// `berth __pidns`: joins the sandbox's namespaces, makes the PID namespace, forks its
/// PID 1, prints that pid, exits.
pub fn main() -> i32 {
    let join = std::env::var(JOIN_ENV).unwrap_or_default();
    std::env::remove_var(JOIN_ENV);
    for path in join.split(':').filter(|p| !p.is_empty()) {
        let joined = std::fs::File::open(path).map_err(|e| e.to_string()).and_then(|file| {
            berth_sys::nix::sched::setns(&file, CloneFlags::empty()).map_err(|e| e.to_string())
        });
        if let Err(err) = joined {
            eprintln!("cannot join the sandbox's namespace {path}: {err}");
            return 1;
        }
    }
    if let Err(err) = unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("cannot make a pid namespace: {err}");
        return 1;
    }
    let (ready_read, ready_write) = match berth_sys::nix::unistd::pipe() {
        Ok(pipe) => pipe,
        Err(err) => {
            eprintln!("cannot make a pipe: {err}");
            return 1;
        }
    };
    match berth_sys::process::fork() {
        Ok(Fork::Parent(child)) => {
            drop(ready_write);
            // The first process says when it is confined (or why it could not be).
            let mut said = String::new();
            let _ = std::fs::File::from(ready_read).read_to_string(&mut said);
            if said == "ready" {
                println!("{child}");
                0
            } else {
                eprintln!("the namespace's first process did not start: {said}");
                1
            }
        }
        Ok(Fork::Child) => {
            drop(ready_read);
            hold(ready_write)
        }
        Err(err) => {
            eprintln!("cannot fork the namespace's first process: {err}");
            1
        }
    }
}

fn hold(ready: std::os::fd::OwnedFd) -> ! {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let keep = ready.as_raw_fd();
    // Nothing of the caller stays open: its pipe would keep the starter waiting, and no
    // descriptor of the host may reach the namespace's processes.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for target in 0..3 {
            let _ = berth_sys::process::dup_onto(null.as_raw_fd(), target);
        }
    }
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        let _ = berth_sys::nix::unistd::close(fd);
    }
    let _ = berth_sys::nix::unistd::setsid();
    let mut ready = std::fs::File::from(ready);
    if let Err(err) = confine() {
        // A holder that could not give up the host's view must not hold the namespace.
        let _ = ready.write_all(err.as_bytes());
        std::process::exit(1);
    }
    let _ = ready.write_all(b"ready");
    drop(ready);
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

/// An empty root in a mount namespace of its own, then uid/gid 65535 without
/// capabilities or the means to regain them.
fn confine() -> Result<(), String> {
    use berth_sys::nix::mount::{mount, umount2, MntFlags, MsFlags};
    use berth_sys::nix::unistd::{chdir, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare the mount namespace: {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("make mounts private: {e}"))?;
    // Any directory will do as the mount point; /tmp is there on every host berth runs on.
    let at = ["/tmp", "/mnt", "/run"]
        .into_iter()
        .find(|d| Path::new(d).is_dir())
        .ok_or("no directory to mount the empty root on")?;
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0555"),
    )
    .map_err(|e| format!("mount an empty root: {e}"))?;
    chdir(at).map_err(|e| format!("chdir {at}: {e}"))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach the host's root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let (gid, uid) = (Gid::from_raw(NOBODY), Uid::from_raw(NOBODY));
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    // Leaving uid 0 for good clears every capability set.
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    berth_sys::nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    berth_sys::nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    Ok(())
}
