//! The per-container supervisor. `spawn` writes the task's description into its directory
//! and starts `berth __task DIR` with a control socket on stdin; the supervisor detaches
//! (forks, the first process exits, the second starts a session of its own and becomes a
//! child subreaper), creates the container through the runtime with its stdio on pipes (or
//! a pty), says the init's pid on the control socket and then, until the init exits:
//! writes its output to the CRI log, answers requests on `task.sock` (`reopen` the log) and
//! reaps orphans. When the init has exited and its output is drained it writes `exit.json`
//! and ends. The container is started (released from `create`) by whoever asked, through
//! the runtime; it is deleted by them too, after the exit.
//!
//! ```text
//! <dir>/task.json   what to run (TaskSpec)      <dir>/shim.pid   the supervisor
//! <dir>/task.sock   requests (reopen)           <dir>/exit.json  how it ended (Exit)
//! <dir>/shim.log    the supervisor's own errors
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_runtime::{CreateOptions, Runtime};
use berth_sys::nix::fcntl::OFlag;
use berth_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use berth_sys::nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use berth_sys::nix::unistd::{pipe2, Pid};
use serde::{Deserialize, Serialize};

use crate::logs::{self, Stream};
use crate::{io, sys, Error, Result};

pub const SPEC_FILE: &str = "task.json";
pub const EXIT_FILE: &str = "exit.json";
pub const PID_FILE: &str = "shim.pid";
pub const SOCKET: &str = "task.sock";
pub const LOG_FILE: &str = "shim.log";

/// How long output is still read after the init exited (its children may hold the pipes).
const DRAIN: Duration = Duration::from_secs(2);

/// What to supervise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskSpec {
    /// The runtime's container id.
    pub id: String,
    /// The runtime's state root.
    pub runtime_root: PathBuf,
    /// The OCI bundle (config.json and the rootfs it names).
    pub bundle: PathBuf,
    /// Where the CRI-format log goes; no log when absent.
    pub log_path: Option<PathBuf>,
    /// A pty instead of pipes (the spec's `process.terminal` must agree).
    pub tty: bool,
    /// Keep a stdin pipe open (else stdin is /dev/null).
    pub stdin: bool,
    /// Rotation: size in bytes (0: never) and files kept.
    pub log_max_size: u64,
    pub log_max_files: u32,
}

/// How a task ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// The exit status, or 128 + the signal that killed the init.
    pub code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// The kernel's OOM killer killed a process of the container while it ran.
    pub oom_killed: bool,
}

/// Starts the supervisor for a task described in `dir`; returns the container's init pid
/// once it is created (not yet started). `exe` is berth's binary.
pub fn spawn(exe: &Path, dir: &Path, spec: &TaskSpec) -> Result<i32> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let data = serde_json::to_vec_pretty(spec).map_err(|e| Error::Other(e.to_string()))?;
    let spec_path = dir.join(SPEC_FILE);
    berth_stdx::fs::write_atomic(&spec_path, &data, 0o600).map_err(io("write", &spec_path))?;
    let _ = std::fs::remove_file(dir.join(EXIT_FILE));
    let (ours, theirs) = UnixStream::pair().map_err(io("create socket pair", dir))?;
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open", &log_path))?;
    let mut child = std::process::Command::new(exe)
        .arg0("berth")
        .arg("__task")
        .arg(dir)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .map_err(io("start the task supervisor from", exe))?;
    // The first process forks the supervisor and exits at once: reap it here.
    let _ = child.wait();
    let _ = ours.set_read_timeout(Some(Duration::from_secs(60)));
    let mut answer = String::new();
    let read = BufReader::new(&ours).read_line(&mut answer);
    let reply: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_default();
    if let Some(pid) = reply["pid"].as_i64() {
        return i32::try_from(pid).map_err(|_| Error::Other(format!("bad pid {pid}")));
    }
    if let Some(error) = reply["error"].as_str() {
        return Err(Error::Other(error.to_owned()));
    }
    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
    Err(Error::Other(format!(
        "the task supervisor ended before it created the container ({}){}",
        read.err().map(|e| e.to_string()).unwrap_or_else(|| "no answer".into()),
        tail.lines().last().map(|l| format!(": {l}")).unwrap_or_default()
    )))
}

/// How the task ended, once it has.
pub fn exit(dir: &Path) -> Option<Exit> {
    let data = std::fs::read(dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The supervisor's pid, when it is alive.
pub fn supervisor(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let alive = berth_sys::process::process_state(Pid::from_raw(pid)).is_some_and(|s| s != 'Z');
    alive.then_some(pid)
}

/// Asks the supervisor to reopen the log file (after whoever rotates logs moved it).
pub fn reopen_log(dir: &Path) -> Result<()> {
    let answer = request(dir, "reopen")?;
    match answer.strip_prefix("error: ") {
        Some(message) => Err(Error::Other(message.to_owned())),
        None => Ok(()),
    }
}

fn request(dir: &Path, line: &str) -> Result<String> {
    let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
    let short = format!("/proc/self/fd/{}/{SOCKET}", handle.as_raw_fd());
    let mut stream = UnixStream::connect(&short).map_err(io("connect to", dir.join(SOCKET)))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream.write_all(format!("{line}\n").as_bytes()).map_err(io("write to", dir.join(SOCKET)))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io("read from", dir.join(SOCKET)))?;
    Ok(answer.trim_end().to_owned())
}

/// The supervisor's entry point (`berth __task DIR`).
pub fn main(dir: &Path) -> i32 {
    let control = match take_control() {
        Ok(control) => control,
        Err(err) => {
            eprintln!("berth task {}: {err}", dir.display());
            return 1;
        }
    };
    // Detach: the one who spawned us reaps the first process at once.
    match berth_sys::process::fork() {
        Ok(berth_sys::process::Fork::Parent(_)) => return 0,
        Ok(berth_sys::process::Fork::Child) => {}
        Err(err) => {
            eprintln!("berth task {}: fork: {err}", dir.display());
            return 1;
        }
    }
    let _ = berth_sys::nix::unistd::setsid();
    let _ = berth_sys::nix::sys::prctl::set_child_subreaper(true);
    match run(dir, control) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("berth task {}: {err}", dir.display());
            1
        }
    }
}

/// The control socket arrives as stdin; stdin becomes /dev/null.
fn take_control() -> Result<UnixStream> {
    let fd = berth_sys::process::dup_raw_fd(0).map_err(sys("take the control socket"))?;
    let null = std::fs::File::open("/dev/null").map_err(io("open", "/dev/null"))?;
    berth_sys::process::dup_onto(null.as_raw_fd(), 0).map_err(sys("replace stdin"))?;
    Ok(UnixStream::from(fd))
}

/// The supervisor's end of a container's stdio: pipes, or a pty master.
#[derive(Debug)]
pub struct Ends {
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub master: Option<OwnedFd>,
    /// The write end of its stdin pipe (held, a container reading stdin waits for input
    /// instead of seeing its end).
    pub stdin: Option<OwnedFd>,
}

fn run(dir: &Path, mut control: UnixStream) -> Result<()> {
    let spec_path = dir.join(SPEC_FILE);
    let data = std::fs::read(&spec_path).map_err(io("read", &spec_path))?;
    let spec: TaskSpec = serde_json::from_slice(&data)
        .map_err(|e| Error::Other(format!("{}: {e}", spec_path.display())))?;
    let runtime = Runtime::new(&spec.runtime_root, false);
    let listener = bind(dir)?;
    let options = CreateOptions {
        id: spec.id.clone(),
        bundle: spec.bundle.clone(),
        ..CreateOptions::default()
    };
    let created = if spec.tty {
        create_with_pty(&runtime, &options)
    } else {
        create_with_pipes(&runtime, &options, spec.stdin)
    };
    let (pid, ends) = match created {
        Ok(created) => created,
        Err(err) => {
            let message = serde_json::json!({ "error": err.to_string() });
            let _ = writeln!(control, "{message}");
            return Err(err);
        }
    };
    let me = std::process::id().to_string();
    let pid_path = dir.join(PID_FILE);
    berth_stdx::fs::write_atomic(&pid_path, me.as_bytes(), 0o600)
        .map_err(io("write", &pid_path))?;
    let oom_before = runtime.watch(&spec.id).and_then(|w| w.oom_kills()).unwrap_or(0);
    let _ = writeln!(control, "{}", serde_json::json!({ "pid": pid }));
    drop(control);
    let code = supervise(&spec, pid, ends, &listener)?;
    let oom_killed = runtime
        .watch(&spec.id)
        .and_then(|w| w.oom_kills())
        .map(|n| n > oom_before)
        .unwrap_or(false);
    let exit = Exit { code, finished_at: crate::now_nanos(), oom_killed };
    let data = serde_json::to_vec(&exit).map_err(|e| Error::Other(e.to_string()))?;
    let exit_path = dir.join(EXIT_FILE);
    berth_stdx::fs::write_atomic(&exit_path, &data, 0o600).map_err(io("write", &exit_path))?;
    let _ = std::fs::remove_file(dir.join(SOCKET));
    Ok(())
}

/// The request socket, bound through the directory's descriptor so that the path limit of
/// `sockaddr_un` does not depend on where the directory is.
fn bind(dir: &Path) -> Result<UnixListener> {
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
    let short = format!("/proc/self/fd/{}/{SOCKET}", handle.as_raw_fd());
    let listener = UnixListener::bind(&short).map_err(io("listen on", &path))?;
    listener.set_nonblocking(true).map_err(io("configure", &path))?;
    Ok(listener)
}

/// Creates the container with its stdio on pipes (and a stdin pipe when asked), so that its
/// init is this process's child; returns the init's pid and our ends.
pub fn create_with_pipes(
    runtime: &Runtime,
    options: &CreateOptions,
    stdin: bool,
) -> Result<(i32, Ends)> {
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    let (in_r, in_w) = if stdin {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let null = std::fs::File::open("/dev/null").map_err(io("open", "/dev/null"))?;
    // The init inherits this process's 0, 1 and 2: point them at the pipes for the
    // duration of `create`, keeping our own stderr (the supervisor's log) aside.
    let saved_stderr = berth_sys::process::dup_raw_fd(2).map_err(sys("save stderr"))?;
    let set = |fd: BorrowedFd<'_>, target| {
        berth_sys::process::dup_onto(fd.as_raw_fd(), target).map_err(sys("set up stdio"))
    };
    let result = (|| {
        set(in_r.as_ref().map_or(null.as_fd(), |r| r.as_fd()), 0)?;
        set(out_w.as_fd(), 1)?;
        set(err_w.as_fd(), 2)?;
        Ok::<i32, Error>(runtime.create_with_console(options, None)?)
    })();
    let _ = set(null.as_fd(), 0);
    let _ = set(null.as_fd(), 1);
    let _ = set(saved_stderr.as_fd(), 2);
    let pid = result?;
    drop((out_w, err_w, in_r));
    Ok((pid, Ends { stdout: Some(out_r), stderr: Some(err_r), master: None, stdin: in_w }))
}

/// Creates the container on a pty whose master the runtime hands back.
pub fn create_with_pty(runtime: &Runtime, options: &CreateOptions) -> Result<(i32, Ends)> {
    let (ours, theirs) = UnixStream::pair().map_err(io("create", "console socket pair"))?;
    let pid = runtime.create_with_console(options, Some(OwnedFd::from(theirs)))?;
    let master = berth_runtime::receive_master(&OwnedFd::from(ours))?;
    Ok((pid, Ends { stdout: None, stderr: None, master: Some(master), stdin: None }))
}

/// Relays output to the log until the init exits and its output is drained; answers
/// requests; returns the exit code.
fn supervise(spec: &TaskSpec, pid: i32, mut ends: Ends, listener: &UnixListener) -> Result<i32> {
    let mut log = match &spec.log_path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            Some(logs::Writer::open(path, spec.log_max_size, spec.log_max_files)?)
        }
        None => None,
    };
    let init = Pid::from_raw(pid);
    let pidfd = berth_sys::process::pidfd_open(init).map_err(sys("watch the container's init"))?;
    let mut code: Option<i32> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let open = ends.stdout.is_some() || ends.stderr.is_some() || ends.master.is_some();
        if code.is_some() && (!open || drain_until.is_some_and(|d| Instant::now() >= d)) {
            break;
        }
        let outputs: Vec<(Stream, BorrowedFd<'_>)> = [
            (Stream::Stdout, ends.stdout.as_ref()),
            (Stream::Stderr, ends.stderr.as_ref()),
            (Stream::Stdout, ends.master.as_ref()),
        ]
        .into_iter()
        .filter_map(|(s, fd)| fd.map(|fd| (s, fd.as_fd())))
        .collect();
        let mut fds = vec![
            PollFd::new(
                pidfd.as_fd(),
                if code.is_none() { PollFlags::POLLIN } else { PollFlags::empty() },
            ),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        for (_, fd) in &outputs {
            fds.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        let timeout = if code.is_some() { PollTimeout::from(100u8) } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(berth_sys::Errno::EINTR) => continue,
            Err(err) => return Err(sys("wait for the container")(err)),
        }
        let revents: Vec<PollFlags> =
            fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        let mut closed = Vec::new();
        for (index, (stream, fd)) in outputs.iter().enumerate() {
            let events = revents[index + 2];
            if events.is_empty() {
                continue;
            }
            match read_fd(*fd, &mut buffer) {
                Ok(0) => closed.push(index),
                Ok(n) => {
                    if let Some(log) = &mut log {
                        if let Err(err) = log.write(*stream, &buffer[..n]) {
                            eprintln!("cannot write the log: {err}");
                        }
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                // A pty whose other side closed says EIO.
                Err(_) => closed.push(index),
            }
        }
        // Map closed indexes back to the descriptors they came from.
        let present: Vec<u8> = [
            ends.stdout.as_ref().map(|_| 0u8),
            ends.stderr.as_ref().map(|_| 1u8),
            ends.master.as_ref().map(|_| 2u8),
        ]
        .into_iter()
        .flatten()
        .collect();
        drop(outputs);
        for index in closed {
            match present[index] {
                0 => ends.stdout = None,
                1 => ends.stderr = None,
                _ => ends.master = None,
            }
        }
        if !revents[1].is_empty() {
            while let Ok((connection, _)) = listener.accept() {
                answer(connection, spec, &mut log);
            }
        }
        // Orphans reparented to us (a subreaper) are reaped as they end, the init with them.
        if let Some(exited) = reap(init) {
            if code.is_none() {
                code = Some(exited);
                drain_until = Some(Instant::now() + DRAIN);
            }
        }
    }
    if let Some(log) = &mut log {
        let _ = log.flush();
    }
    Ok(code.unwrap_or(255))
}

/// One request: a line in, a line out.
fn answer(connection: UnixStream, spec: &TaskSpec, log: &mut Option<logs::Writer>) {
    let _ = connection.set_nonblocking(false);
    let _ = connection.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut reader = BufReader::new(&connection);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = match line.trim() {
        "reopen" => match &spec.log_path {
            Some(path) => {
                if let Some(old) = log {
                    let _ = old.flush();
                }
                match logs::Writer::open(path, spec.log_max_size, spec.log_max_files) {
                    Ok(writer) => {
                        *log = Some(writer);
                        "ok".to_owned()
                    }
                    Err(err) => format!("error: {err}"),
                }
            }
            None => "error: the container has no log".to_owned(),
        },
        other => format!("error: unknown request {other:?}"),
    };
    let mut connection = connection;
    let _ = connection.write_all(format!("{reply}\n").as_bytes());
}

/// Reaps every child that has ended; the init's exit code if it was among them.
fn reap(init: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) if pid == init => code = Some(status),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == init => {
                code = Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
    code
}

fn read_fd(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match berth_sys::nix::unistd::read(fd, buffer) {
            Err(berth_sys::Errno::EINTR) => continue,
            other => return other.map_err(std::io::Error::from),
        }
    }
}
