//! Process creation, waiting and the few process attributes `nix` does not wrap.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::{check, Errno, Result};

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    Parent(Pid),
    Child,
}

/// Fails with `EDEADLK` when the process has more than one thread.
///
/// A forked child of a multi-threaded process may only call async-signal-safe functions; our
/// children run ordinary Rust code (they allocate), so forking is only sound with one thread.
/// When `/proc/self` is not visible (a process that joined another pid namespace's mounts),
/// the count cannot be read and the check passes: berth's runtime never starts threads.
fn ensure_single_threaded() -> Result<()> {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Ok(()) };
    // Fields after the command name, which is the only field that may contain spaces.
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    // state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    // cutime cstime priority nice num_threads(20)
    let threads = after_comm.split_whitespace().nth(17).and_then(|s| s.parse::<u32>().ok());
    match threads {
        Some(n) if n > 1 => Err(Errno::EDEADLK),
        _ => Ok(()),
    }
}

/// `fork(2)` for a single-threaded process.
pub fn fork() -> Result<Fork> {
    ensure_single_threaded()?;
    // SAFETY: the process has a single thread (checked above), so the child may run any code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Fork::Child),
    }
}

/// Forks a child whose parent is the caller's parent (`CLONE_PARENT`), as a sibling.
///
/// The runtime uses it so that the container's init, created by an intermediate process that
/// unshared the pid namespace, is a child of the runtime command that waits for it.
pub fn fork_sibling() -> Result<Fork> {
    ensure_single_threaded()?;
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and with a null stack is fork(2) with extra flags: the
    // child gets a copy of the address space. The process is single-threaded (checked above).
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match check(ret)? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Marks every descriptor from `first` upwards close-on-exec (`close_range(2)`).
///
/// Called right before `execve` of a container process, so that nothing but stdio and the
/// descriptors the caller chose to preserve reaches it, whatever leaked into this process.
pub fn cloexec_from(first: RawFd) -> Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; it takes no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if check(ret).is_ok() {
        return Ok(());
    }
    // Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: walk the open descriptors instead.
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|_| Errno::ENOSYS)?;
    let fds: Vec<RawFd> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        set_cloexec(fd)?;
    }
    Ok(())
}

/// Sets `FD_CLOEXEC` on one descriptor by number.
pub fn set_cloexec(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl on a raw descriptor number; a closed number yields EBADF, which we ignore.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if ret < 0 && Errno::last() != Errno::EBADF {
        return Err(Errno::last());
    }
    Ok(())
}

/// Clears `FD_CLOEXEC` on one descriptor by number, so that it survives `execve`.
pub fn clear_cloexec(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl on a raw descriptor number, no pointers involved.
    let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    check(ret as libc::c_long).map(drop)
}

/// Duplicates `fd` onto `target` (`dup3`), without close-on-exec.
pub fn dup_onto(fd: RawFd, target: RawFd) -> Result<()> {
    if fd == target {
        return clear_cloexec(fd);
    }
    // SAFETY: dup2 on raw descriptor numbers; the kernel validates both.
    let ret = unsafe { libc::dup2(fd, target) };
    check(ret as libc::c_long).map(drop)
}

/// Takes ownership of a descriptor number received from elsewhere (e.g. `LISTEN_FDS`).
///
/// Fails with `EBADF` when the number is not an open descriptor, so that no two owners exist
/// for one number as long as the caller owns the numbers it passes.
pub fn own_fd(fd: RawFd) -> Result<OwnedFd> {
    nix::fcntl::fcntl(
        // SAFETY: borrowing for the duration of one fcntl; validity is what we check.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )?;
    // SAFETY: the descriptor is open (checked above) and the caller hands over its ownership.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Duplicates a descriptor known only by number (close-on-exec), e.g. one a C library keeps.
pub fn dup_raw_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer; the kernel validates `fd` and returns a new
    // descriptor, which nothing else owns.
    let ret = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    let new = check(ret as libc::c_long)? as RawFd;
    // SAFETY: `new` is a fresh descriptor (see above).
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `pidfd_open(2)`: a descriptor that becomes readable when the process exits.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; a returned descriptor is new and ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends a signal through a pidfd, immune to pid reuse.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> Result<()> {
    // SAFETY: a null siginfo is allowed; the descriptor is borrowed for the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, 0usize, 0u32)
    };
    check(ret).map(drop)
}

/// Waits for a child to exit, at most `timeout` (forever when `None`).
///
/// Returns `Ok(None)` when the timeout elapsed and the child still runs.
pub fn wait_child_timeout(pid: Pid, timeout: Option<Duration>) -> Result<Option<WaitStatus>> {
    let Some(timeout) = timeout else {
        return wait_child(pid).map(Some);
    };
    let pidfd = pidfd_open(pid)?;
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => {}
            status => return Ok(Some(status)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&pidfd), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => return Err(err),
        }
    }
}

/// Waits for a child to terminate, retrying on `EINTR` and skipping stop/continue reports.
pub fn wait_child(pid: Pid) -> Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(status),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Joins a new anonymous session keyring (`KEYCTL_JOIN_SESSION_KEYRING`).
pub fn join_session_keyring(name: &CStr) -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    check(ret).map(drop)
}

/// Sets the NIS domain name of the current UTS namespace.
pub fn set_domainname(name: &[u8]) -> Result<()> {
    // SAFETY: pointer and length describe the borrowed slice.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    check(ret as libc::c_long).map(drop)
}

/// Sets the I/O priority of the calling process (`ioprio_set(IOPRIO_WHO_PROCESS, 0, ..)`).
pub fn set_io_priority(class: u32, level: u32) -> Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    let prio = ((class as libc::c_long) << 13) | (level as libc::c_long & 0x1fff);
    // SAFETY: integer-only syscall.
    let ret = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
    check(ret).map(drop)
}

/// The scheduling attributes of `sched_setattr(2)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedAttr {
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
}

/// Applies scheduling attributes to the calling process.
pub fn sched_setattr(attr: &SchedAttr) -> Result<()> {
    #[repr(C)]
    struct RawSchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }
    let raw = RawSchedAttr {
        size: std::mem::size_of::<RawSchedAttr>() as u32,
        sched_policy: attr.policy,
        sched_flags: attr.flags,
        sched_nice: attr.nice,
        sched_priority: attr.priority,
        sched_runtime: attr.runtime,
        sched_deadline: attr.deadline,
        sched_period: attr.period,
    };
    // SAFETY: `raw` is a correctly sized, initialised sched_attr that outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw as *const RawSchedAttr, 0) };
    check(ret).map(drop)
}

/// Sets the CPU affinity of the calling process to the given CPUs.
pub fn set_cpu_affinity(cpus: &[usize]) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus {
        set.set(*cpu)?;
    }
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)
}

/// Reads the start time of a process (field 22 of `/proc/<pid>/stat`, in clock ticks).
///
/// Together with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: Pid) -> Option<u64> {
    stat_field(pid, 19)?.parse().ok()
}

/// Reads the one-letter state of a process (`R`, `S`, `Z`, ...), `None` when it is gone.
pub fn process_state(pid: Pid) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

/// The parent of a process, `None` when it is gone.
pub fn parent_of(pid: Pid) -> Option<Pid> {
    stat_field(pid, 1)?.parse().ok().map(Pid::from_raw)
}

/// Field `index` of `/proc/PID/stat` counted from the one after the command (the
/// command, in parentheses, may hold spaces: the fields start after its last `)`).
fn stat_field(pid: Pid, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(index).map(str::to_owned)
}

/// Takes a POSIX record lock on a whole file, waiting for it (`F_SETLKW`).
///
/// Unlike `flock`, such locks belong to the process and are not inherited by `fork`: a
/// container init forked while a command holds the lock never keeps it alive.
pub fn lock_file(file: &impl AsRawFd, exclusive: bool) -> Result<()> {
    // SAFETY: an all-zero flock is a valid value (whole file from offset 0).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if exclusive { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: F_SETLKW reads the flock through the pointer, which outlives the call.
        let ret =
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock as *const libc::flock) };
        match check(ret as libc::c_long) {
            Err(Errno::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

/// Waits until a process (not necessarily a child) has exited, at most `timeout`.
///
/// Returns `true` when it is gone (or a zombie), `false` on timeout.
pub fn wait_exit(pid: Pid, timeout: Duration) -> Result<bool> {
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(Errno::ESRCH) => return Ok(true),
        Err(err) => return Err(err),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&pidfd), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(err) => return Err(err),
        }
    }
}

/// Restores default dispositions for every signal and unblocks them all, so that a program
/// executed next starts the way a fresh process does (ignored signals survive `execve`).
pub fn reset_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe { sigaction(signal, &default) }?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Ends the calling process at once (`_exit(2)`): no destructors, no stdio flushing, which
/// in a forked child would run the parent's cleanup a second time.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `clone3(2)` without a new stack, so a fork that can also create namespaces (`namespaces`,
/// `CLONE_NEW*` bits), make the child a sibling (`sibling`: `CLONE_PARENT`) and start it in
/// the cgroup2 directory `cgroup` (`CLONE_INTO_CGROUP`) so it never has to be migrated.
///
/// Fails with `ENOSYS`, `E2BIG` or `EINVAL` on kernels without `clone3` or
/// `CLONE_INTO_CGROUP` (before 5.7); callers fall back to [`fork`] or [`fork_sibling`].
pub fn clone3(
    namespaces: u64,
    sibling: bool,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Fork> {
    ensure_single_threaded()?;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut flags = namespaces;
    if sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        // With CLONE_PARENT the exit signal is the caller's own; clone3 wants 0 then.
        exit_signal: if sibling { 0 } else { libc::SIGCHLD as u64 },
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.map(|fd| fd.as_raw_fd() as u64).unwrap_or(0),
    };
    // SAFETY: without CLONE_VM and with no stack, clone3 behaves as fork(2); `args` is a
    // correctly sized clone_args that outlives the call. Single-threaded (checked above).
    let ret = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>())
    };
    match check(ret)? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Makes a `Command`'s child get SIGKILL when the thread that spawns it ends, so a helper
/// (an ssh-agent a build started) never outlives a caller killed with SIGKILL.
pub fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let pid = nix::unistd::getpid();
        let first = process_start_time(pid).expect("own start time");
        assert_eq!(process_start_time(pid), Some(first));
        assert!(matches!(process_state(pid), Some('R' | 'S')));
    }

    #[test]
    fn wait_timeout_reports_a_running_child_then_its_exit() {
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().expect("spawn");
        let pid = Pid::from_raw(child.id() as i32);
        let early = wait_child_timeout(pid, Some(Duration::from_millis(20))).expect("wait");
        assert_eq!(early, None);
        let late = wait_child_timeout(pid, Some(Duration::from_secs(10))).expect("wait");
        assert_eq!(late, Some(WaitStatus::Exited(pid, 0)));
        // Reaped above: std must see the child as gone rather than block.
        assert!(child.try_wait().is_err());
    }
}
