//! The runc-compatible command line: the same commands and flags, the same outputs and exit
//! codes, so containerd, podman or any tool that drives runc can drive berth instead.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use berth_runtime::{CreateOptions, ExecOptions, ExecOutcome, ProcessOverrides, Runtime};
use berth_sys::nix::sys::signal::Signal;
use clap::{Args, Parser, Subcommand};
use oci_spec::runtime::{LinuxResources, Process};

use crate::logging;

/// Where container states live unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/berth-runc";

#[derive(Debug, Parser)]
#[command(name = "berth-runc", version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.2.0"), about = "berth's OCI runtime, command-compatible with runc")]
pub struct Cli {
    /// Enable debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true, value_name = "PATH")]
    log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: logging::Format,
    /// Root directory for container state (best on tmpfs).
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Accepted for compatibility; "slice:prefix:name" cgroup paths are mapped onto cgroupfs.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility (checkpointing is not supported).
    #[arg(long, hide = true)]
    criu: Option<String>,
    /// Accepted for compatibility (before the command, as runc's global flag).
    #[arg(long = "rootless", id = "global_rootless", hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
struct CreateFlags {
    /// Path to the bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// AF_UNIX socket that receives the pty master of the container's terminal.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// File to write the container's init pid to.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Move the rootfs over / and chroot instead of pivot_root (for ramdisk roots).
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Keep the caller's session keyring instead of a new one.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass N more descriptors (3, 4, ...) to the container's process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container from a bundle; its process waits for `start`.
    Create {
        id: String,
        #[command(flatten)]
        flags: CreateFlags,
    },
    /// Let a created container run its process.
    Start { id: String },
    /// Create and start a container, waiting for it unless --detach.
    Run {
        id: String,
        #[command(flatten)]
        flags: CreateFlags,
        /// Return once the process has started.
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits.
        #[arg(long)]
        keep: bool,
        /// Do not become a subreaper for the container's orphans.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
    },
    /// Print the state of a container as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or to all its processes.
    Kill {
        id: String,
        signal: Option<String>,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container and everything it holds.
    Delete {
        id: String,
        /// Kill it first if it still runs.
        #[arg(short, long)]
        force: bool,
    },
    /// Run a new process inside a running container.
    Exec(Box<ExecArgs>),
    /// List containers.
    #[command(visible_alias = "ls")]
    List {
        #[arg(short, long, default_value = "table")]
        format: ListFormat,
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the processes of a container.
    Ps {
        id: String,
        #[arg(short, long, default_value = "table")]
        format: ListFormat,
        /// Arguments for ps(1), default -ef.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print resource usage of a container as JSON events.
    Events {
        id: String,
        /// Time between two stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
        /// Print the stats once and exit.
        #[arg(long)]
        stats: bool,
    },
    /// Change the resource limits of a running container.
    Update(Box<UpdateArgs>),
    /// Write an example config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Make it runnable without root (a user namespace mapping the caller).
        #[arg(long)]
        rootless: bool,
    },
    /// Print what this runtime implements, as the runtime spec's features document.
    Features,
    /// Not supported: berth does not checkpoint containers.
    #[command(hide = true)]
    Checkpoint {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Not supported: berth does not restore checkpoints.
    #[command(hide = true)]
    Restore {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct ExecArgs {
    id: String,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short, long)]
    env: Vec<String>,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Additional group ids.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// A process.json to run instead of the command line.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Return once the process has started.
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long)]
    apparmor: Option<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Add a capability (to the bounding, effective and permitted sets).
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Run in a sub-cgroup of the container ([controller:]path).
    #[arg(long)]
    cgroup: Vec<String>,
    /// Allow exec into a paused container.
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    id: String,
    /// JSON file with the resources to set, or - for stdin.
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpu-quota", allow_negative_numbers = true)]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime", allow_negative_numbers = true)]
    cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    memory_reservation: Option<String>,
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    #[arg(long = "l3-cache-schema")]
    l3_cache_schema: Option<String>,
    #[arg(long = "mem-bw-schema")]
    mem_bw_schema: Option<String>,
}

/// Runs the CLI with `args` (including the program name) and returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    // Commands that put processes into containers run from a sealed copy of this binary.
    // Re-executing before parsing saves parsing twice; a false positive (a container named
    // "run") costs one exec and nothing else.
    if args.iter().skip(1).any(|a| a == "create" || a == "run" || a == "exec") {
        if let Err(err) = protect_binary() {
            eprintln!("berth-runc: {err:#}");
            return 1;
        }
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { 1 } else { 0 };
        }
    };
    // Before opening anything: descriptors the caller asked us to pass on must already be
    // open at 3, 4, ..., or our own files would take their numbers and leak into the container.
    if let Err(err) = check_preserved_fds(&cli.command) {
        eprintln!("berth-runc: {err:#}");
        return 1;
    }
    let log_to_file = cli.log.is_some();
    let sink: Box<dyn Write + Send> = match &cli.log {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Box::new(file),
            Err(err) => {
                eprintln!("berth-runc: cannot open log file {}: {err}", path.display());
                return 1;
            }
        },
        None => Box::new(std::io::stderr()),
    };
    logging::init(sink, cli.log_format, cli.debug);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let message = format!("{err:#}");
            tracing::error!("{message}");
            if log_to_file {
                eprintln!("berth-runc: {message}");
            }
            1
        }
    }
}

fn check_preserved_fds(command: &Command) -> Result<()> {
    let count = match command {
        Command::Create { flags, .. } | Command::Run { flags, .. } => flags.preserve_fds,
        Command::Exec(exec) => exec.preserve_fds,
        _ => return Ok(()),
    } + listen_fds();
    for fd in 3..3 + count {
        berth_sys::process::set_cloexec(fd).ok();
        let open = std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok();
        if !open {
            bail!("--preserve-fds asks for descriptor {fd}, which is not open");
        }
        // set_cloexec above only probed; preserved descriptors must survive exec.
        berth_sys::process::clear_cloexec(fd).ok();
    }
    Ok(())
}

/// `LISTEN_FDS` (socket activation) descriptors are passed on too, as runc does.
fn listen_fds() -> i32 {
    std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Re-executes from a protected copy of the binary before any process enters a container.
pub fn protect_binary() -> Result<()> {
    if berth_sys::exe::current_exe_is_protected().unwrap_or(false) {
        return Ok(());
    }
    let err = match berth_sys::exe::reexec_protected() {
        Ok(never) => match never {},
        Err(err) => err,
    };
    bail!("cannot re-execute from a sealed copy of the runtime binary ({err}); refusing to run containers with a writable runtime binary")
}

/// Defence in depth for the early re-exec in `main`: refuse to start container processes
/// from a writable binary.
fn ensure_protected() -> Result<()> {
    if berth_sys::exe::current_exe_is_protected().unwrap_or(false) {
        Ok(())
    } else {
        bail!("the runtime binary is writable and was not re-executed from a sealed copy; refusing to start container processes")
    }
}

fn run(cli: Cli) -> Result<i32> {
    tracing::debug!("parsed arguments");
    let runtime = Runtime::new(&cli.root, cli.systemd_cgroup);
    match cli.command {
        Command::Create { id, flags } => {
            ensure_protected()?;
            runtime.create(&create_options(&id, &flags))?;
            Ok(0)
        }
        Command::Start { id } => {
            runtime.start(&id)?;
            Ok(0)
        }
        Command::Run { id, flags, detach, keep, no_subreaper } => {
            ensure_protected()?;
            run_container(&runtime, &id, &flags, detach, keep, no_subreaper)
        }
        Command::State { id } => {
            let state = runtime.state(&id)?;
            print!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        Command::Kill { id, signal, all } => {
            let signal = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            runtime.kill(&id, signal, all)?;
            Ok(0)
        }
        Command::Delete { id, force } => {
            runtime.delete(&id, force)?;
            Ok(0)
        }
        Command::Exec(args) => {
            ensure_protected()?;
            exec(&runtime, *args)
        }
        Command::List { format, quiet } => {
            list(&runtime, format, quiet)?;
            Ok(0)
        }
        Command::Ps { id, format, ps_args } => {
            ps(&runtime, &id, format, ps_args)?;
            Ok(0)
        }
        Command::Pause { id } => {
            runtime.pause(&id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            runtime.resume(&id)?;
            Ok(0)
        }
        Command::Events { id, interval, stats } => events(&runtime, &id, &interval, stats),
        Command::Update(args) => {
            let resources = update_resources(&args)?;
            runtime.update(&args.id, &resources)?;
            Ok(0)
        }
        Command::Spec { bundle, rootless } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} exists; remove it first", path.display());
            }
            let uid = berth_sys::nix::unistd::geteuid().as_raw();
            let gid = berth_sys::nix::unistd::getegid().as_raw();
            let spec = berth_runtime::example_spec(rootless, uid, gid);
            std::fs::write(&path, serde_json::to_string_pretty(&spec)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(0)
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&berth_runtime::features())?);
            Ok(0)
        }
        Command::Checkpoint { .. } | Command::Restore { .. } => {
            bail!("checkpoint and restore are not supported by berth")
        }
    }
}

fn create_options(id: &str, flags: &CreateFlags) -> CreateOptions {
    CreateOptions {
        id: id.to_owned(),
        bundle: flags.bundle.clone(),
        pid_file: flags.pid_file.clone(),
        console_socket: flags.console_socket.clone(),
        no_pivot: flags.no_pivot,
        no_new_keyring: flags.no_new_keyring,
        preserve_fds: flags.preserve_fds + listen_fds(),
    }
}

fn run_container(
    runtime: &Runtime,
    id: &str,
    flags: &CreateFlags,
    detach: bool,
    keep: bool,
    no_subreaper: bool,
) -> Result<i32> {
    let options = create_options(id, flags);
    if detach {
        runtime.create(&options)?;
        if let Err(err) = runtime.start(id) {
            let _ = runtime.delete(id, true);
            return Err(err.into());
        }
        return Ok(0);
    }
    if !no_subreaper {
        berth_sys::nix::sys::prctl::set_child_subreaper(true)
            .context("cannot become a subreaper")?;
    }
    let terminal = berth_runtime::spec::load(&flags.bundle)
        .map(|l| l.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true))
        .unwrap_or(false);
    let (relay, console) = if terminal && flags.console_socket.is_none() {
        let (ours, theirs) = console_pair()?;
        (Some(ours), Some(theirs))
    } else {
        (None, None)
    };
    let pid = runtime.create_with_console(&options, console)?;
    let master = match &relay {
        Some(socket) => Some(berth_runtime::receive_master(socket)?),
        None => None,
    };
    tracing::debug!("created; starting");
    // Signals are held from before the start: one that arrives while the container's
    // process already runs but the relay has not begun waits for the relay, instead of
    // killing this process and leaving the container behind (as runc installs its
    // handlers before it starts the container).
    use berth_sys::nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    let mut original = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut original))
        .context("cannot block signals")?;
    let started = runtime.start(id);
    tracing::debug!("started");
    let status = match started {
        Ok(()) => {
            berth_runtime::foreground_wait(berth_sys::nix::unistd::Pid::from_raw(pid), master)
                .map_err(anyhow::Error::from)
        }
        Err(err) => Err(err.into()),
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&original), None);
    tracing::debug!("exited; deleting");
    if !keep {
        if let Err(err) = runtime.delete(id, true) {
            tracing::warn!("cannot delete container {id} after it exited: {err}");
        }
    }
    Ok(status?.code())
}

fn console_pair() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (a, b) =
        std::os::unix::net::UnixStream::pair().context("cannot create the console socket pair")?;
    Ok((a.into(), b.into()))
}

fn exec(runtime: &Runtime, args: ExecArgs) -> Result<i32> {
    let (state, _) = runtime.saved_state(&args.id)?;
    let process: Process = match &args.process {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("invalid process file {}", path.display()))?
        }
        None => {
            let base = state.config.process().clone().unwrap_or_default();
            let user = args.user.as_deref().map(parse_user).transpose()?;
            ExecOptions::process_from(
                &base,
                ProcessOverrides {
                    args: args.command.clone(),
                    env: args.env.clone(),
                    cwd: args.cwd.clone(),
                    user,
                    additional_gids: args.additional_gids.clone(),
                    capabilities: args.cap.clone(),
                    tty: args.tty,
                    no_new_privileges: args.no_new_privs,
                    apparmor: args.apparmor.clone(),
                    selinux_label: args.process_label.clone(),
                },
            )?
        }
    };
    let sub_cgroup = match args.cgroup.as_slice() {
        [] => None,
        [one] => Some(
            one.rsplit_once(':').map(|(_, path)| path.to_owned()).unwrap_or_else(|| one.clone()),
        ),
        _ => bail!("--cgroup may be given once: per-controller sub-cgroups are not supported"),
    };
    let options = ExecOptions {
        process,
        console_socket: args.console_socket,
        pid_file: args.pid_file,
        detach: args.detach,
        preserve_fds: args.preserve_fds + listen_fds(),
        sub_cgroup,
        ignore_paused: args.ignore_paused,
    };
    match runtime.exec(&args.id, options)? {
        ExecOutcome::Detached(_) => Ok(0),
        ExecOutcome::Exited(status) => Ok(status.code()),
    }
}

fn parse_user(text: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match text.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (text, None),
    };
    let uid = uid.parse().map_err(|_| anyhow!("--user {text:?}: expected UID[:GID] as numbers"))?;
    let gid = gid
        .map(|g| g.parse())
        .transpose()
        .map_err(|_| anyhow!("--user {text:?}: expected UID[:GID] as numbers"))?;
    Ok((uid, gid))
}

/// `KILL`, `SIGKILL`, `kill` and `9` all name SIGKILL.
pub fn parse_signal(text: &str) -> Result<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| anyhow!("unknown signal number {number}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| anyhow!("unknown signal {text:?}"))
}

fn list(runtime: &Runtime, format: ListFormat, quiet: bool) -> Result<()> {
    let states = runtime.list()?;
    if quiet {
        for state in &states {
            println!("{}", state.id);
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => {
            let mut text = serde_json::to_string(&states)?;
            if states.is_empty() {
                text = "null".to_owned();
            }
            println!("{text}");
        }
        ListFormat::Table => {
            let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                .map(str::to_owned)
                .to_vec()];
            for state in &states {
                rows.push(vec![
                    state.id.clone(),
                    state.pid.to_string(),
                    state.status.to_string(),
                    state.bundle.display().to_string(),
                    state.created.clone(),
                    state.owner.clone(),
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

/// Columns padded like Go's tabwriter as runc configures it: at least 12 wide, 3 of padding.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count() + 3)
                .max()
                .unwrap_or(0)
                .max(12)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}", width = widths[index]));
            }
        }
        out.push('\n');
    }
    out
}

fn ps(runtime: &Runtime, id: &str, format: ListFormat, ps_args: Vec<String>) -> Result<()> {
    let pids = runtime.pids(id)?;
    if format == ListFormat::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    let args = if ps_args.is_empty() { vec!["-ef".to_owned()] } else { ps_args };
    let output = std::process::Command::new("ps").args(&args).output().context("cannot run ps")?;
    if !output.status.success() {
        bail!("ps {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let column = header
        .split_whitespace()
        .position(|field| field == "PID")
        .ok_or_else(|| anyhow!("ps output has no PID column"))?;
    println!("{header}");
    for line in lines {
        let pid: Option<i32> = line.split_whitespace().nth(column).and_then(|p| p.parse().ok());
        if pid.is_some_and(|pid| pids.contains(&pid)) {
            println!("{line}");
        }
    }
    Ok(())
}

/// Prints `stats` events every interval and an `oom` event as soon as the kernel's OOM
/// killer acts in the container (checked every 100 ms), until the container stops.
fn events(runtime: &Runtime, id: &str, interval: &str, once: bool) -> Result<i32> {
    let interval = parse_duration(interval)?;
    if once {
        let event = serde_json::json!({"type": "stats", "id": id, "data": runtime.stats(id)?});
        println!("{event}");
        return Ok(0);
    }
    let watcher = runtime.watch(id)?;
    let tick = Duration::from_millis(100).min(interval);
    let mut oom_kills = watcher.oom_kills()?;
    let mut next_stats = std::time::Instant::now();
    let mut stdout = std::io::stdout();
    while watcher.running() {
        let kills = watcher.oom_kills().unwrap_or(oom_kills);
        let mut lines = Vec::new();
        if kills > oom_kills {
            oom_kills = kills;
            lines.push(serde_json::json!({"type": "oom", "id": id}));
        }
        if std::time::Instant::now() >= next_stats {
            match watcher.stats() {
                Ok(stats) => {
                    lines.push(serde_json::json!({"type": "stats", "id": id, "data": stats}))
                }
                Err(err) => tracing::warn!("cannot read stats of {id}: {err}"),
            }
            next_stats += interval;
        }
        for line in lines {
            // A reader that went away (`events | head`) ends the stream quietly.
            if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                return Ok(0);
            }
        }
        std::thread::sleep(tick);
    }
    Ok(0)
}

/// `5s`, `500ms`, `1m`, `2h` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| anyhow!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("invalid duration {text:?}: use a unit of ms, s, m or h"),
    };
    if seconds <= 0.0 {
        bail!("duration {text:?} must be positive");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `512m`, `1g`, `1024` (bytes), or -1.
fn parse_size(text: &str) -> Result<i64> {
    if text == "-1" {
        return Ok(-1);
    }
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (number, multiplier) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1i64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ => (trimmed, 1),
    };
    let value: i64 = number
        .parse()
        .map_err(|_| anyhow!("invalid size {text:?}: use bytes or a k, m, g suffix"))?;
    value.checked_mul(multiplier).ok_or_else(|| anyhow!("size {text:?} is too large"))
}

fn update_resources(args: &UpdateArgs) -> Result<LinuxResources> {
    if let Some(path) = &args.resources {
        let mut text = Vec::new();
        if path == Path::new("-") {
            std::io::stdin().read_to_end(&mut text)?;
        } else {
            text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        return serde_json::from_slice(&text)
            .with_context(|| format!("invalid resources JSON in {}", path.display()));
    }
    if args.l3_cache_schema.is_some() || args.mem_bw_schema.is_some() {
        bail!("Intel RDT is not supported by berth");
    }
    let mut json = serde_json::json!({});
    let mut set = |path: &[&str], value: serde_json::Value| {
        let mut slot = &mut json;
        for key in path {
            slot = &mut slot[*key];
        }
        *slot = value;
    };
    if let Some(v) = args.blkio_weight {
        set(&["blockIO", "weight"], v.into());
    }
    if let Some(v) = args.cpu_period {
        set(&["cpu", "period"], v.into());
    }
    if let Some(v) = args.cpu_quota {
        set(&["cpu", "quota"], v.into());
    }
    if let Some(v) = args.cpu_share {
        set(&["cpu", "shares"], v.into());
    }
    if let Some(v) = args.cpu_rt_period {
        set(&["cpu", "realtimePeriod"], v.into());
    }
    if let Some(v) = args.cpu_rt_runtime {
        set(&["cpu", "realtimeRuntime"], v.into());
    }
    if let Some(v) = &args.cpuset_cpus {
        set(&["cpu", "cpus"], v.clone().into());
    }
    if let Some(v) = &args.cpuset_mems {
        set(&["cpu", "mems"], v.clone().into());
    }
    if let Some(v) = &args.memory {
        set(&["memory", "limit"], parse_size(v)?.into());
    }
    if let Some(v) = &args.memory_reservation {
        set(&["memory", "reservation"], parse_size(v)?.into());
    }
    if let Some(v) = &args.memory_swap {
        set(&["memory", "swap"], parse_size(v)?.into());
    }
    if let Some(v) = args.pids_limit {
        set(&["pids", "limit"], v.into());
    }
    serde_json::from_value(json).context("invalid resource values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        for text in ["KILL", "SIGKILL", "kill", "9"] {
            assert_eq!(parse_signal(text).expect(text), Signal::SIGKILL);
        }
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512m").expect("size"), 512 << 20);
        assert_eq!(parse_size("1G").expect("size"), 1 << 30);
        assert_eq!(parse_size("4096").expect("size"), 4096);
        assert_eq!(parse_size("-1").expect("size"), -1);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("5s").expect("duration"), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").expect("duration"), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn table_matches_runc_layout() {
        let rows = vec![
            vec!["ID".to_owned(), "PID".to_owned(), "OWNER".to_owned()],
            vec!["t3".to_owned(), "7233".to_owned(), "root".to_owned()],
        ];
        assert_eq!(table(&rows), "ID          PID         OWNER\nt3          7233        root\n");
    }

    #[test]
    fn update_flags_become_resources() {
        let args = UpdateArgs::parse_from([
            "update",
            "box",
            "--memory",
            "64m",
            "--pids-limit",
            "10",
            "--cpu-quota",
            "50000",
        ]);
        let resources = update_resources(&args).expect("resources");
        assert_eq!(resources.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(10));
        assert_eq!(resources.cpu().as_ref().and_then(|c| c.quota()), Some(50000));
    }

    #[derive(Debug, Parser)]
    struct UpdateOnly {
        #[command(flatten)]
        args: UpdateArgs,
    }

    impl UpdateArgs {
        fn parse_from<const N: usize>(args: [&str; N]) -> UpdateArgs {
            UpdateOnly::parse_from(args).args
        }
    }
}
