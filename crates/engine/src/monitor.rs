//! The per-container monitor (berth's conmon): started by `berth start`/`run` as
//! `berth __monitor ROOT ID` with a control socket on stdin, it creates and starts the
//! container through the runtime (so the container's init is its child), holds its stdio
//! or pty, writes the log, serves attach clients, reaps it, records the exit, applies the
//! restart policy and, with `--rm`, removes the container.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_runtime::CreateOptions;
use berth_sys::nix::fcntl::OFlag;
use berth_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use berth_sys::nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use berth_sys::nix::unistd::Pid;

use crate::attach::{self, take_frames};
use crate::container::Status;
use crate::logs::{self, Stream};
use crate::{io, sys, Engine, Error, Result};

/// Log rotation defaults: 10 MiB, two files.
const LOG_MAX_SIZE: u64 = 10 << 20;
const LOG_MAX_FILES: u32 = 2;

/// How long to keep reading output after the container's init exited.
const DRAIN: Duration = Duration::from_secs(2);

pub fn main(root: &Path, id: &str) -> i32 {
    let _ = berth_sys::nix::unistd::setsid();
    let _ = berth_sys::nix::sys::prctl::set_child_subreaper(true);
    let control = match take_control() {
        Ok(stream) => stream,
        Err(err) => {
            eprintln!("berth monitor {id}: {err}");
            return 1;
        }
    };
    match run(root, id, control) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("berth monitor {id}: {err}");
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

struct Client {
    stream: UnixStream,
    buffer: Vec<u8>,
}

/// The container's end of things while it runs.
struct Io {
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    master: Option<OwnedFd>,
    /// Where the container's processes send their seccomp notify descriptors.
    seccomp: Option<UnixListener>,
    /// The embedded DNS of a user-defined network; it stops when the container does.
    dns: Option<crate::dns::Resolver>,
}

/// The socket of a container's seccomp listener: short, as `sockaddr_un` needs.
pub fn sysinfo_socket(id: &str) -> std::path::PathBuf {
    std::path::PathBuf::from("/run/berth/seccomp").join(format!("{id}.sock"))
}

fn run(root: &Path, id: &str, control: UnixStream) -> Result<()> {
    let engine = Engine::open(root)?;
    let dir = engine.container_dir(id);
    let listener = bind_attach_socket(&dir)?;
    let _ = control.set_write_timeout(Some(Duration::from_secs(5)));
    let mut clients = vec![Client { stream: control, buffer: Vec::new() }];
    let mut first = true;
    loop {
        let (pid, io_ends, oom_before) = match start_once(&engine, id) {
            Ok(started) => started,
            Err(err) => {
                let message = format!("{err}");
                record_failure(&engine, id, &message);
                for client in &mut clients {
                    crate::ops::send(&mut client.stream, attach::ERROR, message.as_bytes());
                }
                return Err(err);
            }
        };
        if let Ok(record) = engine.peek(id) {
            engine.container_event("start", &record, &[]);
        }
        if first {
            for client in &mut clients {
                crate::ops::send(&mut client.stream, attach::STARTED, &pid.to_be_bytes());
            }
            first = false;
        }
        // The health check runs beside the container, as long as it runs.
        let check = engine.peek(id).ok().and_then(|r| r.healthcheck);
        let (stop_health, health_stop) = std::sync::mpsc::channel::<()>();
        let health = check.map(|check| {
            let (root, id) = (root.to_path_buf(), id.to_owned());
            std::thread::spawn(move || {
                crate::health::run(&crate::health::exe(), &root, &id, &check, &health_stop)
            })
        });
        let code = supervise(&engine, id, pid, io_ends, &listener, &mut clients);
        // Not joined: a probe may be waiting for the container's lock, which whoever is
        // stopping the container may hold; the thread ends on its own once it sees the
        // container is no longer running.
        drop(stop_health);
        drop(health);
        let code = code?;
        let oom = engine
            .runtime()
            .watch(id)
            .and_then(|w| w.oom_kills())
            .map(|n| n > oom_before)
            .unwrap_or(false);
        let mut locked = engine.lock(id)?;
        engine.release_resources(&locked);
        if oom {
            engine.container_event("oom", &locked.record, &[]);
        }
        engine.container_event("die", &locked.record, &[("exitCode", code.to_string())]);
        let state = &mut locked.record.state;
        state.status = Status::Exited;
        state.exit_code = code;
        state.oom_killed = oom;
        state.finished_at = crate::now();
        state.pid = 0;
        let policy = locked.record.options.restart.clone();
        let restart = !state.stopped_by_user && policy.restarts(code, state.restart_count);
        if restart {
            state.status = Status::Restarting;
            state.restart_count += 1;
            let delay = Duration::from_millis(100 << state.restart_count.min(7));
            locked.save()?;
            drop(locked);
            tracing::info!(id, code, "restarting after {delay:?}");
            std::thread::sleep(delay);
            // A user who stopped or removed it meanwhile (`stop`, `rm -f`) has the last word.
            let mut locked = engine.lock(id)?;
            if !locked.record.state.stopped_by_user {
                continue;
            }
            locked.record.state.status = Status::Exited;
            locked.record.state.monitor_pid = 0;
            locked.save()?;
            for client in &mut clients {
                crate::ops::send(&mut client.stream, attach::EXIT, &code.to_be_bytes());
            }
            return Ok(());
        }
        state.monitor_pid = 0;
        if locked.record.options.auto_remove {
            engine.destroy(locked, true)?;
        } else {
            locked.save()?;
        }
        for client in &mut clients {
            crate::ops::send(&mut client.stream, attach::EXIT, &code.to_be_bytes());
        }
        return Ok(());
    }
}

fn record_failure(engine: &Engine, id: &str, message: &str) {
    if let Ok(mut locked) = engine.lock(id) {
        engine.release_resources(&locked);
        let state = &mut locked.record.state;
        if state.status != Status::Created {
            state.status = Status::Exited;
        }
        state.error = message.to_owned();
        state.exit_code = 128;
        state.monitor_pid = 0;
        state.pid = 0;
        let _ = locked.save();
    }
}

/// The attach socket, bound through the directory's descriptor: the socket path limit
/// (108 bytes) is then independent of the root directory's length.
fn bind_attach_socket(dir: &Path) -> Result<UnixListener> {
    let path = dir.join("attach.sock");
    let _ = std::fs::remove_file(&path);
    let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
    let short = format!("/proc/self/fd/{}/attach.sock", handle.as_raw_fd());
    let listener = UnixListener::bind(&short).map_err(io("listen on", &path))?;
    listener.set_nonblocking(true).map_err(io("configure", &path))?;
    Ok(listener)
}

/// Connects to a running container's monitor (for `attach`).
pub fn connect(dir: &Path) -> Result<UnixStream> {
    let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
    let short = format!("/proc/self/fd/{}/attach.sock", handle.as_raw_fd());
    UnixStream::connect(&short).map_err(io("connect to", dir.join("attach.sock")))
}

fn start_once(engine: &Engine, id: &str) -> Result<(i32, Io, u64)> {
    let mut locked = engine.lock(id)?;
    if matches!(locked.record.state.status, Status::Running | Status::Paused) {
        return Err(Error::Conflict(format!(
            "container {} is already running",
            locked.record.name
        )));
    }
    // Stale runtime state from an earlier run (a killed monitor) goes first.
    engine.release_resources(&locked);
    let prepared = engine.prepare_start(&mut locked);
    if let Err(err) = prepared {
        locked.save().ok();
        engine.release_resources(&locked);
        return Err(err);
    }
    let options =
        CreateOptions { id: id.to_owned(), bundle: locked.dir.clone(), ..CreateOptions::default() };
    let tty = locked.record.options.tty;
    let interactive = locked.record.options.interactive;
    let seccomp = match bind_sysinfo_listener(&locked) {
        Ok(listener) => listener,
        Err(err) => {
            engine.release_resources(&locked);
            return Err(err);
        }
    };
    // The addresses are on disk before the container runs: its embedded DNS (and its
    // peers') reads them to answer its first question.
    if let Err(err) = locked.save() {
        engine.release_resources(&locked);
        return Err(err);
    }
    // The embedded DNS listens before the container's first question.
    let dns = match engine.embedded_dns(&locked.record) {
        Ok(dns) => dns,
        Err(err) => {
            engine.release_resources(&locked);
            return Err(err);
        }
    };
    let created = if tty {
        create_with_pty(engine, &options)
    } else {
        create_with_pipes(engine, &options, interactive)
    };
    let (pid, mut io_ends) = match created {
        Ok(done) => done,
        Err(err) => {
            locked.save().ok();
            engine.release_resources(&locked);
            return Err(err);
        }
    };
    io_ends.seccomp = seccomp;
    io_ends.dns = dns;
    if locked.record.options.network == "none" {
        if let Err(err) = engine.pin_own_netns(id, pid) {
            // The container runs; only a live `network connect` waits for its next start.
            tracing::warn!("{err}");
        }
    }
    let oom_before = engine.runtime().watch(id).and_then(|w| w.oom_kills()).unwrap_or(0);
    if let Err(err) = engine.runtime().start(id) {
        engine.release_resources(&locked);
        return Err(err.into());
    }
    let me = Pid::this();
    let state = &mut locked.record.state;
    state.status = Status::Running;
    state.pid = pid;
    state.monitor_pid = me.as_raw();
    state.monitor_start_time = berth_sys::process::process_start_time(me).unwrap_or(0);
    state.started_at = crate::now();
    state.finished_at.clear();
    state.exit_code = 0;
    state.oom_killed = false;
    state.error.clear();
    state.stopped_by_user = false;
    locked.save()?;
    Ok((pid, io_ends, oom_before))
}

/// The container created by berth-task's code (pipes or a pty, the init our child), with
/// our ends made non-blocking for the relay.
fn create_with_pipes(
    engine: &Engine,
    options: &CreateOptions,
    interactive: bool,
) -> Result<(i32, Io)> {
    let (pid, ends) = berth_task::shim::create_with_pipes(engine.runtime(), options, interactive)?;
    Ok((pid, io_of(ends)))
}

fn create_with_pty(engine: &Engine, options: &CreateOptions) -> Result<(i32, Io)> {
    let (pid, ends) = berth_task::shim::create_with_pty(engine.runtime(), options)?;
    Ok((pid, io_of(ends)))
}

fn io_of(ends: berth_task::shim::Ends) -> Io {
    for fd in [&ends.stdout, &ends.stderr, &ends.master].into_iter().flatten() {
        set_nonblocking(fd.as_fd());
    }
    Io {
        stdout: ends.stdout,
        stderr: ends.stderr,
        stdin: ends.stdin,
        master: ends.master,
        seccomp: None,
        dns: None,
    }
}

/// Listens where the spec told the runtime to send seccomp notify descriptors (only for
/// containers whose spec asks for it: those with memory or CPU limits).
fn bind_sysinfo_listener(locked: &crate::container::Locked) -> Result<Option<UnixListener>> {
    let options = &locked.record.options;
    if options.memory.is_none() && options.cpus.is_none() {
        return Ok(None);
    }
    let path = sysinfo_socket(&locked.record.id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io("listen on", &path))?;
    listener.set_nonblocking(true).map_err(io("configure", &path))?;
    Ok(Some(listener))
}

fn set_nonblocking(fd: BorrowedFd<'_>) {
    use berth_sys::nix::fcntl::{fcntl, FcntlArg};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK));
    }
}

/// One read on the descriptor itself (no duplicate per call: this is the output path).
fn read_fd(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match berth_sys::nix::unistd::read(fd, buffer) {
            Err(berth_sys::Errno::EINTR) => continue,
            other => return other.map_err(std::io::Error::from),
        }
    }
}

fn write_fd(fd: BorrowedFd<'_>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match berth_sys::nix::unistd::write(fd, data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(berth_sys::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Relays output to the log and the clients and input from the clients until the init
/// exits and its output is drained; returns the exit code.
fn supervise(
    engine: &Engine,
    id: &str,
    pid: i32,
    mut ends: Io,
    listener: &UnixListener,
    clients: &mut Vec<Client>,
) -> Result<i32> {
    let dir = engine.container_dir(id);
    let record = engine.peek(id)?;
    // `--log-driver none`: output goes to attached clients only.
    let mut log = match record.options.log_driver.as_str() {
        "none" => None,
        _ => Some(logs::Writer::open(
            &dir.join("container.log"),
            record.options.log_max_size.unwrap_or(LOG_MAX_SIZE),
            record.options.log_max_files.unwrap_or(LOG_MAX_FILES),
        )?),
    };
    let pid = Pid::from_raw(pid);
    let pidfd = berth_sys::process::pidfd_open(pid).map_err(sys("watch the container's init"))?;
    let mut exit: Option<i32> = None;
    let mut drain_until: Option<Instant> = None;
    let mut notifiers: Vec<OwnedFd> = Vec::new();
    let started_at = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let outputs_open = ends.stdout.is_some() || ends.stderr.is_some() || ends.master.is_some();
        if exit.is_some() && (!outputs_open || drain_until.is_some_and(|d| Instant::now() >= d)) {
            break;
        }
        // Order of descriptors in the poll set: pidfd, listener, outputs, clients.
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        fds.push(PollFd::new(
            pidfd.as_fd(),
            if exit.is_none() { PollFlags::POLLIN } else { PollFlags::empty() },
        ));
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        let outputs: Vec<(Stream, BorrowedFd<'_>)> = [
            (Stream::Stdout, ends.stdout.as_ref()),
            (Stream::Stderr, ends.stderr.as_ref()),
            (Stream::Stdout, ends.master.as_ref()),
        ]
        .into_iter()
        .filter_map(|(s, fd)| fd.map(|fd| (s, fd.as_fd())))
        .collect();
        for (_, fd) in &outputs {
            fds.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        for client in clients.iter() {
            fds.push(PollFd::new(client.stream.as_fd(), PollFlags::POLLIN));
        }
        // Then the seccomp listener and the notify descriptors.
        let seccomp_base = fds.len();
        if let Some(listener) = &ends.seccomp {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        let notify_base = fds.len();
        for fd in &notifiers {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        // While the container runs, wake now and then to reap orphans (see reap_orphans).
        let timeout =
            if exit.is_some() { PollTimeout::from(100u8) } else { PollTimeout::from(1000u16) };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(berth_sys::Errno::EINTR) => continue,
            Err(err) => return Err(sys("wait for the container")(err)),
        }
        if exit.is_none() {
            reap_orphans(pid);
        }
        let ready: Vec<bool> =
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        let hung: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                })
            })
            .collect();
        drop(fds);
        if ends.seccomp.is_some() && ready[seccomp_base] {
            if let Some(listener) = &ends.seccomp {
                while let Ok((connection, _)) = listener.accept() {
                    let _ = connection.set_nonblocking(false);
                    let _ = connection.set_read_timeout(Some(Duration::from_secs(5)));
                    match berth_runtime::receive_fd(
                        &OwnedFd::from(connection),
                        "seccomp notify descriptor",
                    ) {
                        Ok(fd) => notifiers.push(fd),
                        Err(err) => tracing::warn!("seccomp listener: {err}"),
                    }
                }
            }
        }
        let mut finished = Vec::new();
        // Only those polled: descriptors accepted just now wait for the next round.
        for (index, fd) in notifiers.iter().enumerate() {
            if ready.get(notify_base + index).copied().unwrap_or(false) {
                if hung[notify_base + index] {
                    finished.push(index);
                } else {
                    answer_sysinfo(engine, id, &started_at, fd.as_raw_fd());
                }
            }
        }
        for index in finished.into_iter().rev() {
            notifiers.remove(index);
        }
        if ready[0] && exit.is_none() {
            if let Some(code) = reap(pid) {
                exit = Some(code);
                drain_until = Some(Instant::now() + DRAIN);
            }
        }
        if ready[1] {
            while let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                clients.push(Client { stream, buffer: Vec::new() });
            }
        }
        let mut closed: Vec<Stream> = Vec::new();
        let mut master_closed = false;
        let mut late: Vec<(u8, Vec<u8>)> = Vec::new();
        for (index, (stream, fd)) in outputs.iter().enumerate() {
            if !ready[2 + index] {
                continue;
            }
            match read_fd(*fd, &mut buffer) {
                Ok(0) => {
                    if ends.master.as_ref().is_some_and(|m| m.as_raw_fd() == fd.as_raw_fd()) {
                        master_closed = true;
                    } else {
                        closed.push(*stream);
                    }
                }
                Ok(n) => {
                    let data = &buffer[..n];
                    if let Some(log) = &mut log {
                        log.write(*stream, data)?;
                    }
                    let kind =
                        if *stream == Stream::Stdout { attach::STDOUT } else { attach::STDERR };
                    clients.retain_mut(|c| {
                        let sent = crate::ops::send(&mut c.stream, kind, data);
                        if !sent {
                            // A client gone before its input was read (a resize sent on a
                            // short connection): what it wrote still counts.
                            late.extend(last_frames(c));
                        }
                        sent
                    });
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // EIO on a pty master: the terminal's last user is gone.
                    if ends.master.as_ref().is_some_and(|m| m.as_raw_fd() == fd.as_raw_fd()) {
                        master_closed = true;
                    } else {
                        closed.push(*stream);
                    }
                }
            }
        }
        let client_base = 2 + outputs.len();
        drop(outputs);
        for (kind, payload) in late {
            handle_input(&mut ends, kind, &payload);
        }
        for stream in closed {
            match stream {
                Stream::Stdout => ends.stdout = None,
                Stream::Stderr => ends.stderr = None,
            }
        }
        if master_closed {
            ends.master = None;
        }
        let mut gone = Vec::new();
        for (index, client) in clients.iter_mut().enumerate() {
            if !ready.get(client_base + index).copied().unwrap_or(false) {
                continue;
            }
            match client.stream.read(&mut buffer) {
                Ok(0) | Err(_) => gone.push(index),
                Ok(n) => {
                    client.buffer.extend_from_slice(&buffer[..n]);
                    for (kind, payload) in take_frames(&mut client.buffer) {
                        handle_input(&mut ends, kind, &payload);
                    }
                }
            }
        }
        for index in gone.into_iter().rev() {
            clients.remove(index);
        }
    }
    if let Some(log) = &mut log {
        log.flush()?;
    }
    if ends.seccomp.take().is_some() {
        let _ = std::fs::remove_file(sysinfo_socket(id));
    }
    // Orphans of the init were reparented here (we are a subreaper): reap them too.
    while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
    Ok(exit.unwrap_or(255))
}

/// The frames a client wrote that were not read yet, read without waiting (the client
/// may be gone, or only slow).
fn last_frames(client: &mut Client) -> Vec<(u8, Vec<u8>)> {
    let _ = client.stream.set_nonblocking(true);
    let mut chunk = [0u8; 4096];
    while let Ok(n) = client.stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        client.buffer.extend_from_slice(&chunk[..n]);
    }
    attach::take_frames(&mut client.buffer)
}

fn handle_input(ends: &mut Io, kind: u8, payload: &[u8]) {
    match kind {
        attach::STDIN => {
            let target = ends.master.as_ref().or(ends.stdin.as_ref());
            if let Some(fd) = target {
                let _ = write_fd(fd.as_fd(), payload);
            }
        }
        attach::STDIN_EOF if ends.master.is_none() => ends.stdin = None,
        attach::RESIZE if payload.len() == 4 => {
            if let Some(master) = &ends.master {
                let size = berth_sys::tty::WindowSize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                };
                let _ = berth_sys::tty::set_window_size(master.as_fd(), size);
            }
        }
        _ => {}
    }
}

/// Reaps the children this monitor inherited as a subreaper (processes of the container
/// whose parent died, such as the process of an `exec` whose client was killed), but not
/// the container's init nor a running health probe. Unreaped, such zombies would keep the
/// container's pid namespace, and so its init, from ever finishing its exit.
fn reap_orphans(init: Pid) {
    let probes = crate::health::PROBES.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            if child == init.as_raw() || probes.contains(&(child as u32)) {
                continue;
            }
            let _ = waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG));
        }
    }
}

fn reap(pid: Pid) -> Option<i32> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        Ok(_) => None,
        // Not our child (should not happen) or already reaped: the code is lost.
        Err(_) => Some(255),
    }
}

/// Answers a `sysinfo(2)` the container's seccomp filter stopped: the host's figures with
/// the container's memory limit and use, its process count and its uptime, written into
/// the caller's `struct sysinfo` through /proc/PID/mem.
fn answer_sysinfo(engine: &Engine, id: &str, started: &Instant, fd: std::os::fd::RawFd) {
    use libseccomp::{
        notify_id_valid, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags, ScmpSyscall,
    };
    let Ok(request) = ScmpNotifReq::receive(fd) else { return };
    let is_sysinfo = ScmpSyscall::from_name("sysinfo").is_ok_and(|s| s == request.data.syscall);
    if !is_sysinfo {
        // Not ours to change: let the kernel run it.
        let _ = ScmpNotifResp::new_val(request.id, 0, ScmpNotifRespFlags::CONTINUE).respond(fd);
        return;
    }
    let stats = engine.runtime().stats(id).ok();
    let bytes = sysinfo_bytes(stats.as_ref(), started.elapsed().as_secs() as i64);
    // The pid may have been reused between the notification and now: check after opening.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", request.pid))
        .and_then(|mem| {
            if notify_id_valid(fd, request.id).is_err() {
                return Err(std::io::Error::from_raw_os_error(berth_sys::libc::ENOENT));
            }
            use std::os::unix::fs::FileExt;
            mem.write_all_at(&bytes, request.data.args[0])
        });
    let response = match written {
        Ok(()) => ScmpNotifResp::new_val(request.id, 0, ScmpNotifRespFlags::empty()),
        Err(_) => ScmpNotifResp::new_error(
            request.id,
            -berth_sys::libc::EFAULT,
            ScmpNotifRespFlags::empty(),
        ),
    };
    let _ = response.respond(fd);
}

/// `struct sysinfo` as the x86-64 and aarch64 kernels lay it out (112 bytes): the host's
/// load averages, the container's memory limit, free memory, process count and uptime.
pub fn sysinfo_bytes(stats: Option<&berth_cgroups::Stats>, uptime: i64) -> Vec<u8> {
    let host = berth_sys::nix::sys::sysinfo::sysinfo().ok();
    let host_total = host.as_ref().map(|h| h.ram_total()).unwrap_or(0);
    let (limit, usage, procs) = match stats {
        Some(s) => (s.memory.usage.limit, s.memory.usage.usage, s.pids.current),
        None => (0, 0, 0),
    };
    let total = if limit == 0 || limit >= host_total { host_total } else { limit };
    let free = total.saturating_sub(usage);
    let loads = host.as_ref().map(|h| h.load_average()).unwrap_or((0.0, 0.0, 0.0));
    let load = |l: f64| (l * 65536.0) as u64;
    let mut out = Vec::with_capacity(112);
    out.extend_from_slice(&uptime.to_ne_bytes());
    for l in [loads.0, loads.1, loads.2] {
        out.extend_from_slice(&load(l).to_ne_bytes());
    }
    // totalram, freeram, sharedram, bufferram, totalswap, freeswap
    for value in [total, free, 0, 0, 0, 0] {
        out.extend_from_slice(&value.to_ne_bytes());
    }
    out.extend_from_slice(&(procs.min(u64::from(u16::MAX)) as u16).to_ne_bytes());
    out.extend_from_slice(&[0u8; 6]); // pad, then alignment to 8
    out.extend_from_slice(&0u64.to_ne_bytes()); // totalhigh
    out.extend_from_slice(&0u64.to_ne_bytes()); // freehigh
    out.extend_from_slice(&1u32.to_ne_bytes()); // mem_unit
    out.extend_from_slice(&[0u8; 4]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sysinfo_is_laid_out_as_the_kernel_does() {
        let mut stats = berth_cgroups::Stats::default();
        stats.memory.usage.limit = 64 << 20;
        stats.memory.usage.usage = 1 << 20;
        stats.pids.current = 3;
        let bytes = super::sysinfo_bytes(Some(&stats), 42);
        assert_eq!(bytes.len(), 112);
        let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
        assert_eq!(word(0), 42, "uptime");
        assert_eq!(word(32), 64 << 20, "totalram");
        assert_eq!(word(40), 63 << 20, "freeram");
        assert_eq!(u16::from_ne_bytes([bytes[80], bytes[81]]), 3, "procs");
        assert_eq!(u32::from_ne_bytes(bytes[104..108].try_into().unwrap()), 1, "mem_unit");
    }
}
