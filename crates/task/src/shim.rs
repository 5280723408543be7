//! The per-container supervisor. `spawn` writes the task's description into its directory
//! and starts `berth __task DIR` with a control socket on stdin; the supervisor detaches
//! (forks, the first process exits, the second starts a session of its own and becomes a
//! child subreaper), creates the container through the runtime with its stdio on pipes (or
//! a pty), says the init's pid on the control socket and then, until the init exits:
//! writes its output to the CRI log, answers requests on `task.sock` (`reopen` the log) and
//! reaps orphans. Clients may attach (`attach`): they get the output as it comes and
//! send input and terminal sizes (see [`frame`]). When the init has exited and its output
//! is drained it writes `exit.json` and ends. The container is started (released from `create`) by whoever asked, through
//! the runtime; it is deleted by them too, after the exit.
//!
//! ```text
//! <dir>/task.json   what to run (TaskSpec)      <dir>/shim.pid   the supervisor
//! <dir>/task.sock   requests (reopen, attach)   <dir>/exit.json  how it ended (Exit)
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
    /// Close the container's stdin when the first client that attached with stdin leaves
    /// or closes it (Kubernetes' `stdinOnce`).
    #[serde(default)]
    pub stdin_once: bool,
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
    berth_stdx::fs::write_atomic_volatile(&spec_path, &data, 0o600)
        .map_err(io("write", &spec_path))?;
    let _ = std::fs::remove_file(dir.join(EXIT_FILE));
    let (ours, theirs) = UnixStream::pair().map_err(io("create socket pair", dir))?;
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open", &log_path))?;
    // From a protected copy of the binary when it is ours: the supervisor then need not
    // execute itself again (see `berth_sys::exe::protected_program`).
    let (protected, program) = berth_sys::exe::protected_program(exe);
    let mut child = std::process::Command::new(&program)
        .arg0("berth")
        .arg("__task")
        .arg(dir)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .map_err(io("start the task supervisor from", exe))?;
    drop(protected);
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

fn connect(dir: &Path) -> Result<UnixStream> {
    let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
    let short = format!("/proc/self/fd/{}/{SOCKET}", handle.as_raw_fd());
    UnixStream::connect(&short).map_err(io("connect to", dir.join(SOCKET)))
}

fn request(dir: &Path, line: &str) -> Result<String> {
    let mut stream = connect(dir)?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream.write_all(format!("{line}\n").as_bytes()).map_err(io("write to", dir.join(SOCKET)))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io("read from", dir.join(SOCKET)))?;
    Ok(answer.trim_end().to_owned())
}

/// Attaches to a running task: the returned connection carries [`frame`]s, output from the
/// supervisor, input (when `stdin`), terminal sizes and the end of input to it. It ends
/// when the task has ended and its output has been sent.
pub fn attach(dir: &Path, stdin: bool) -> Result<UnixStream> {
    let mut stream = connect(dir)?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let line = if stdin { "attach stdin\n" } else { "attach\n" };
    stream.write_all(line.as_bytes()).map_err(io("write to", dir.join(SOCKET)))?;
    // Byte by byte: frames may follow the answer at once.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < 4096 {
        let n = std::io::Read::read(&mut stream, &mut byte)
            .map_err(io("read from", dir.join(SOCKET)))?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if answer != "ok" {
        let message = answer.strip_prefix("error: ").unwrap_or(&answer);
        return Err(Error::Other(format!("the task refused to attach: {message}")));
    }
    let _ = stream.set_read_timeout(None);
    Ok(stream)
}

/// The attach protocol after its first line: frames of a kind byte, a big-endian `u32`
/// length and that many bytes, both ways.
pub mod frame {
    /// Client to supervisor: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// Supervisor to client: output (a terminal's output is stdout).
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// Client to supervisor: the terminal's size, rows then columns as big-endian `u16`.
    pub const RESIZE: u8 = 4;
    /// Client to supervisor: no more input from this client.
    pub const CLOSE_STDIN: u8 = 5;
    pub const HEADER: usize = 5;
    /// The largest frame accepted.
    pub const MAX: usize = 1 << 20;

    pub fn encode(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(HEADER + data.len());
        frame.push(kind);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        frame
    }

    /// A RESIZE frame's payload.
    pub fn size(rows: u16, cols: u16) -> [u8; 4] {
        let (r, c) = (rows.to_be_bytes(), cols.to_be_bytes());
        [r[0], r[1], c[0], c[1]]
    }

    /// The header's kind and length.
    pub fn header(bytes: [u8; HEADER]) -> Result<(u8, usize), String> {
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if length > MAX {
            return Err(format!("a frame of {length} bytes (at most {MAX})"));
        }
        Ok((bytes[0], length))
    }

    /// Takes the whole frames off the front of `buffer`.
    pub fn split(buffer: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, String> {
        let mut frames = Vec::new();
        let mut at = 0;
        while buffer.len() - at >= HEADER {
            let mut head = [0u8; HEADER];
            head.copy_from_slice(&buffer[at..at + HEADER]);
            let (kind, length) = header(head)?;
            if buffer.len() - at - HEADER < length {
                break;
            }
            frames.push((kind, buffer[at + HEADER..at + HEADER + length].to_vec()));
            at += HEADER + length;
        }
        buffer.drain(..at);
        Ok(frames)
    }
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
    berth_stdx::fs::write_atomic_volatile(&pid_path, me.as_bytes(), 0o600)
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
    berth_stdx::fs::write_atomic_volatile(&exit_path, &data, 0o600)
        .map_err(io("write", &exit_path))?;
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

/// Output kept for one attached client that reads slower than the container writes;
/// beyond it the client is dropped (the log has everything).
const CLIENT_BACKLOG: usize = 8 << 20;
/// Input waiting for the container to read it; beyond it clients are not read.
const INPUT_BACKLOG: usize = 1 << 20;

/// One attached client.
struct Client {
    stream: UnixStream,
    /// Frames not yet written to it.
    out: Vec<u8>,
    /// Bytes read from it that do not make a whole frame yet.
    partial: Vec<u8>,
    /// It attached with stdin and has not closed it.
    stdin: bool,
}

/// The container's input: the stdin pipe or the pty master, and what waits to be written.
struct Input {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    /// Close once `pending` is written.
    closing: bool,
}

impl Input {
    fn close_when_written(&mut self) {
        self.closing = true;
        if self.pending.is_empty() {
            self.fd = None;
        }
    }

    fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match berth_sys::nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(berth_sys::Errno::EINTR) => continue,
                Err(berth_sys::Errno::EAGAIN) => return,
                // The container closed its stdin.
                Err(_) => {
                    self.pending.clear();
                    self.fd = None;
                    return;
                }
            }
        }
        if self.closing {
            self.fd = None;
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    use berth_sys::nix::fcntl::{fcntl, FcntlArg};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(sys("read descriptor flags"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(sys("make a descriptor non-blocking"))?;
    Ok(())
}

/// Relays output to the log and to attached clients until the init exits and its output is
/// drained; relays clients' input; answers requests; returns the exit code.
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
    let input_fd = match (&ends.master, ends.stdin.take()) {
        (Some(master), _) if spec.stdin => {
            Some(master.try_clone().map_err(io("duplicate", "the terminal"))?)
        }
        (_, pipe) => pipe,
    };
    if let Some(fd) = &input_fd {
        set_nonblocking(fd.as_fd())?;
    }
    let mut input = Input { fd: input_fd, pending: Vec::new(), closing: false };
    let mut clients: Vec<Client> = Vec::new();
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
        let input_at = fds.len();
        let waiting_input = !input.pending.is_empty();
        if let (Some(fd), true) = (&input.fd, waiting_input) {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
        }
        let clients_at = fds.len();
        for client in &clients {
            let mut events = PollFlags::empty();
            if input.pending.len() < INPUT_BACKLOG {
                events |= PollFlags::POLLIN;
            }
            if !client.out.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(client.stream.as_fd(), events));
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
        let mut gone = vec![false; clients.len()];
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
                    let kind = match stream {
                        Stream::Stdout => frame::STDOUT,
                        Stream::Stderr => frame::STDERR,
                    };
                    for (i, client) in clients.iter_mut().enumerate() {
                        if client.out.len() + n > CLIENT_BACKLOG {
                            gone[i] = true;
                        } else {
                            client.out.extend_from_slice(&frame::encode(kind, &buffer[..n]));
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
                _ => {
                    ends.master = None;
                    input.fd = None;
                }
            }
        }
        if waiting_input && revents.get(input_at).is_some_and(|e| !e.is_empty()) {
            input.flush();
        }
        for (i, client) in clients.iter_mut().enumerate() {
            let events = revents[clients_at + i];
            if events.contains(PollFlags::POLLOUT) {
                match client.stream.write(&client.out) {
                    Ok(n) => {
                        client.out.drain(..n);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => gone[i] = true,
                }
            }
            if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                match std::io::Read::read(&mut client.stream, &mut buffer) {
                    Ok(0) => gone[i] = true,
                    Ok(n) => {
                        client.partial.extend_from_slice(&buffer[..n]);
                        match frame::split(&mut client.partial) {
                            Ok(frames) => {
                                for (kind, data) in frames {
                                    from_client(client, kind, &data, &mut input, &ends, spec);
                                }
                            }
                            Err(_) => gone[i] = true,
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => gone[i] = true,
                }
            }
        }
        if gone.iter().any(|g| *g) {
            let mut index = 0;
            clients.retain(|client| {
                let keep = !gone[index];
                index += 1;
                if !keep && client.stdin && spec.stdin_once {
                    input.close_when_written();
                }
                keep
            });
        }
        if !input.pending.is_empty() {
            input.flush();
        }
        if !revents[1].is_empty() {
            while let Ok((connection, _)) = listener.accept() {
                if let Some(client) = answer(connection, spec, &mut log) {
                    clients.push(client);
                }
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
    // What the clients have not read yet, then their end.
    for mut client in clients {
        let _ = client.stream.set_nonblocking(false);
        let _ = client.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = client.stream.write_all(&client.out);
        let _ = client.stream.shutdown(std::net::Shutdown::Both);
    }
    Ok(code.unwrap_or(255))
}

/// One frame from an attached client.
fn from_client(
    client: &mut Client,
    kind: u8,
    data: &[u8],
    input: &mut Input,
    ends: &Ends,
    spec: &TaskSpec,
) {
    match kind {
        frame::STDIN if client.stdin && input.fd.is_some() && !input.closing => {
            input.pending.extend_from_slice(data);
        }
        frame::RESIZE if data.len() == 4 => {
            if let Some(master) = &ends.master {
                let rows = u16::from_be_bytes([data[0], data[1]]);
                let cols = u16::from_be_bytes([data[2], data[3]]);
                let size = berth_sys::tty::WindowSize { rows, cols };
                let _ = berth_sys::tty::set_window_size(master.as_fd(), size);
            }
        }
        frame::CLOSE_STDIN if client.stdin => {
            client.stdin = false;
            if spec.stdin_once {
                input.close_when_written();
            }
        }
        _ => {}
    }
}

/// One request: a line in, a line out; an `attach` connection stays, as a client.
fn answer(
    connection: UnixStream,
    spec: &TaskSpec,
    log: &mut Option<logs::Writer>,
) -> Option<Client> {
    let _ = connection.set_nonblocking(false);
    // A client writes its line as soon as it connects; one that does not holds the loop
    // (output to the log and to attached clients) for no longer than this.
    let _ = connection.set_read_timeout(Some(Duration::from_millis(200)));
    // Byte by byte: an attaching client's frames may follow its line.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = &connection;
    while line.len() < 256 {
        match std::io::Read::read(&mut reader, &mut byte) {
            Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
            Ok(_) => break,
            Err(_) => return None,
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
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
        how @ ("attach" | "attach stdin") => {
            let mut connection = connection;
            if connection.write_all(b"ok\n").is_err() || connection.set_nonblocking(true).is_err() {
                return None;
            }
            let _ = connection.set_read_timeout(None);
            let stdin = how == "attach stdin" && spec.stdin;
            return Some(Client {
                stream: connection,
                out: Vec::new(),
                partial: Vec::new(),
                stdin,
            });
        }
        other => format!("error: unknown request {other:?}"),
    };
    let mut connection = connection;
    let _ = connection.write_all(format!("{reply}\n").as_bytes());
    None
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

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames_split_whole_and_keep_the_rest() {
        let mut wire = frame::encode(frame::STDOUT, b"hello");
        wire.extend(frame::encode(frame::RESIZE, &frame::size(24, 80)));
        let tail = frame::encode(frame::STDIN, b"partial");
        wire.extend_from_slice(&tail[..7]);
        let frames = frame::split(&mut wire).unwrap();
        assert_eq!(
            frames,
            vec![(frame::STDOUT, b"hello".to_vec()), (frame::RESIZE, vec![0, 24, 0, 80])]
        );
        assert_eq!(wire, tail[..7].to_vec(), "the incomplete frame waits for its bytes");
        wire.extend_from_slice(&tail[7..]);
        assert_eq!(frame::split(&mut wire).unwrap(), vec![(frame::STDIN, b"partial".to_vec())]);
        assert!(wire.is_empty());
        let mut huge = vec![frame::STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(frame::split(&mut huge).is_err(), "a length over the limit is refused");
    }
}
