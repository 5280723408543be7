//! What runs in the forked children: entering namespaces, building the root filesystem,
//! applying the process attributes, and finally `execve` of the container's program.
//!
//! The runtime never re-executes itself for this: it forks, and the children run the plan
//! already computed and validated in the parent. Process tree during `create`:
//!
//! ```text
//! runtime command ─┬─ stage one: joins/creates namespaces, forks (CLONE_PARENT) and exits
//!                  └─ init: pid 1 of the container, builds the rootfs, waits for `start`,
//!                           then execs the container's program
//! ```
//!
//! Every step reports failure to the parent over the sync channel, as a readable message.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_sys::fs::{open_in_root, proc_fd_path, resolve_in_root, Create};
use berth_sys::mount::{self as sysmount, MountAttr};
use berth_sys::nix::fcntl::OFlag;
use berth_sys::nix::mount::{mount, umount2, MntFlags, MsFlags};
use berth_sys::nix::sched::{setns, unshare, CloneFlags};
use berth_sys::nix::sys::stat::{fstat, makedev, mknodat, Mode, SFlag};
use berth_sys::nix::sys::statvfs::{fstatvfs, FsFlags};
use berth_sys::nix::unistd::{self, Gid, Pid, Uid};
use berth_sys::process::Fork;
use berth_sys::Errno;
use oci_spec::runtime::{Process, Spec};

use crate::error::{io, sys, Error, Result};
use crate::hooks::{self, HookKind};
use crate::plan::{DeviceNode, MountKind, MountStep, NamespacePlan, UserNamespace, CLONE_NEWTIME};
use crate::seccomp::Filter;
use crate::state::{HookState, Status};
use crate::sync::{Channel, Message};

/// Everything the container's init needs, prepared by the parent before forking.
pub(crate) struct InitConfig<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub namespaces: &'a NamespacePlan,
    pub mounts: &'a [MountStep],
    pub devices: &'a [DeviceNode],
    /// (subdirectory of the cgroup mount, host directory) pairs for `cgroup` mounts.
    pub cgroup_sources: Vec<(PathBuf, PathBuf)>,
    pub cgroup_v2: bool,
    /// Set when the init enters its cgroup by itself (no user namespace); otherwise the
    /// parent moves it.
    pub self_join: Option<berth_cgroups::SelfJoin>,
    pub seccomp: Option<&'a Filter>,
    /// Connected to `linux.seccomp.listenerPath`, when the profile notifies.
    pub seccomp_listener: Option<OwnedFd>,
    /// Connected to `--console-socket`, when the process has a terminal.
    pub console_socket: Option<OwnedFd>,
    /// The socket `start` connects to.
    pub start_listener: OwnedFd,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Descriptors 3.. that pass to the container's process.
    pub preserved_fds: i32,
    pub annotations: &'a BTreeMap<String, String>,
}

/// Formats an error with its chain of causes, the way the user will read it.
pub(crate) use berth_stdx::error::chain as error_chain;

fn exit(code: i32) -> ! {
    berth_sys::process::exit_now(code)
}

/// Stage one of `create`: namespaces, then the fork of the container's init.
pub(crate) fn run_stage_one(config: InitConfig<'_>, channel: Channel) -> ! {
    match stage_one(config, &channel) {
        Ok(never) => match never {},
        Err(err) => {
            let _ = channel.send(&Message::Error(error_chain(&err)));
            exit(1)
        }
    }
}

fn stage_one(config: InitConfig<'_>, channel: &Channel) -> Result<Infallible> {
    berth_sys::nix::sys::prctl::set_pdeathsig(berth_sys::nix::sys::signal::Signal::SIGKILL)
        .map_err(sys("set the parent-death signal"))?;
    let namespaces = config.namespaces;
    if let UserNamespace::Join(path) = &namespaces.user {
        join_namespace(path, CloneFlags::CLONE_NEWUSER)?;
    }
    for (flag, path) in &namespaces.join {
        join_namespace(path, *flag)?;
    }
    if let UserNamespace::New { .. } = &namespaces.user {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("create a user namespace"))?;
        channel.send(&Message::MapIds)?;
        channel.expect(&Message::Go, "waiting for the id mappings")?;
    }
    if namespaces.has_user() {
        become_root()?;
    }
    if namespaces.create.contains(CLONE_NEWTIME) {
        unshare(CLONE_NEWTIME).map_err(sys("create a time namespace"))?;
        if let Some(offsets) = &namespaces.time_offsets {
            std::fs::write("/proc/self/timens_offsets", offsets)
                .map_err(io("write", "/proc/self/timens_offsets"))?;
        }
    }
    // The cgroup namespace waits until the init has been moved into its cgroup (see `init`).
    let rest = namespaces.create - CLONE_NEWTIME - CloneFlags::CLONE_NEWCGROUP;
    if !rest.is_empty() {
        unshare(rest).map_err(sys(format!("create namespaces ({rest:?})")))?;
    }
    // The init and this stage share the channel: the init must not speak before the pid
    // is sent, or a slow first stage would let its message overtake ours. The init waits
    // for this stage to exit (the pipe's write end closing) before it goes on.
    let (hold_read, hold_write) =
        berth_sys::nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    let (fork, in_cgroup2) = fork_into(config.self_join.as_ref())?;
    match fork {
        Fork::Child => {
            drop(hold_write);
            let mut byte = [0u8; 1];
            while let Err(Errno::EINTR) = berth_sys::nix::unistd::read(&hold_read, &mut byte) {}
            drop(hold_read);
            run_init(config, channel, in_cgroup2)
        }
        Fork::Parent(pid) => {
            channel.send(&Message::Pid(pid.as_raw()))?;
            drop(hold_write);
            exit(0)
        }
    }
}

pub(crate) fn join_namespace(path: &Path, flag: CloneFlags) -> Result<()> {
    let fd = berth_sys::nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys(format!("open namespace {}", path.display())))?;
    setns(fd.as_fd(), flag).map_err(sys(format!(
        "join namespace {} ({})",
        path.display(),
        crate::plan::proc_ns_name(flag)
    )))
}

/// In a new user namespace the process is mapped to nobody until it takes uid and gid 0.
fn become_root() -> Result<()> {
    unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(sys("become gid 0 in the user namespace (is container gid 0 mapped?)"))?;
    unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(sys("become uid 0 in the user namespace (is container uid 0 mapped?)"))
}

/// Forks a sibling, inside the cgroup2 directory of `join` when there is one. Returns
/// whether the child already is in that cgroup2 cgroup.
pub(crate) fn fork_into(join: Option<&berth_cgroups::SelfJoin>) -> Result<(Fork, bool)> {
    if let Some(dir) = join.and_then(|j| j.clone_into.as_ref()) {
        let fd = berth_sys::nix::fcntl::open(
            dir.as_path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("open cgroup {}", dir.display())))?;
        match berth_sys::process::clone3(0, true, Some(fd.as_fd())) {
            Ok(fork) => return Ok((fork, true)),
            Err(Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG) => {}
            Err(err) => return Err(sys("fork into the container's cgroup")(err)),
        }
    }
    Ok((berth_sys::process::fork_sibling().map_err(sys("fork the container's process"))?, false))
}

/// Enters the cgroup as planned by `fork_into`: v1 hierarchies thread-wise, and the cgroup2
/// tree by a (slower) migration only when the fork could not start there.
pub(crate) fn join_cgroup(join: &berth_cgroups::SelfJoin, in_cgroup2: bool) -> Result<()> {
    join.join_current_thread()?;
    if let (Some(dir), false) = (&join.clone_into, in_cgroup2) {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, "0").map_err(io("join", &procs))?;
    }
    Ok(())
}

/// The flags and cgroup2 directory for creating the init with one `clone3`, when the plan
/// allows it: nothing joined by path, no user or time namespace (both need steps between
/// creating the namespace and forking), and a cgroup2 tree to start in.
pub(crate) fn direct_clone(
    namespaces: &NamespacePlan,
    join: Option<&berth_cgroups::SelfJoin>,
) -> Option<(u64, PathBuf)> {
    let simple = namespaces.user == UserNamespace::Host
        && namespaces.join.is_empty()
        && !namespaces.create.contains(CLONE_NEWTIME);
    let dir = join?.clone_into.clone()?;
    // The cgroup namespace waits until the init is in its cgroups (see `init`).
    let flags = namespaces.create - CloneFlags::CLONE_NEWCGROUP;
    simple.then_some((flags.bits() as u64, dir))
}

/// The init created directly by the runtime command (see [`direct_clone`]).
pub(crate) fn run_direct_init(config: InitConfig<'_>, channel: Channel) -> ! {
    run_init(config, &channel, true)
}

fn run_init(config: InitConfig<'_>, channel: &Channel, in_cgroup2: bool) -> ! {
    match init(config, channel, in_cgroup2) {
        Ok(never) => match never {},
        Err(err) => {
            let _ = channel.send(&Message::Error(error_chain(&err)));
            exit(1)
        }
    }
}

/// The container's init (pid 1 when it has a pid namespace of its own).
fn init(mut config: InitConfig<'_>, channel: &Channel, in_cgroup2: bool) -> Result<Infallible> {
    berth_sys::nix::sys::prctl::set_pdeathsig(berth_sys::nix::sys::signal::Signal::SIGKILL)
        .map_err(sys("set the parent-death signal"))?;
    unistd::setsid().map_err(sys("start a new session"))?;
    // Device nodes and files get exactly the modes the spec asks for.
    berth_sys::nix::sys::stat::umask(Mode::empty());
    tracing::debug!("init: joining cgroup");
    if let Some(join) = &config.self_join {
        join_cgroup(join, in_cgroup2)?;
    }
    tracing::debug!("init: joined cgroup");
    let host_pid = host_pid()?;
    let process = config
        .spec
        .process()
        .clone()
        .ok_or_else(|| crate::error::invalid("process", "is missing"))?;
    if let Some(score) = process.oom_score_adj() {
        set_oom_score_adj(score)?;
    }
    if config.namespaces.create.contains(CloneFlags::CLONE_NEWNET) {
        // A network namespace made for the container has its loopback up, as runc's do.
        berth_sys::link::set_up("lo").map_err(sys("bring up the loopback device"))?;
    }
    prepare_rootfs(&config)?;

    // The parent has been moving us into the cgroup meanwhile; it answers once that is done
    // and the prestart and createRuntime hooks have run in the runtime's namespaces.
    channel.send(&Message::RunHooks)?;
    channel.expect(&Message::Go, "running createRuntime hooks")?;
    if config.namespaces.create.contains(CloneFlags::CLONE_NEWCGROUP) {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("create a cgroup namespace"))?;
    }
    let hook_state = |status| {
        serde_json::to_vec(&HookState {
            oci_version: crate::state::OCI_VERSION,
            id: config.id,
            status,
            pid: Some(host_pid),
            bundle: config.bundle,
            annotations: config.annotations,
        })
        .unwrap_or_default()
    };
    hooks::run_all(
        HookKind::CreateContainer,
        &HookKind::CreateContainer.of(config.spec),
        &hook_state(Status::Creating),
    )?;

    enter_rootfs(&config)?;
    set_identity(config.spec)?;
    // Before the read-only paths, which usually include /proc/sys.
    for (key, value) in
        config.spec.linux().as_ref().and_then(|l| l.sysctl().clone()).unwrap_or_default()
    {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes()).map_err(io("write sysctl", &path))?;
    }
    finish_rootfs(&config)?;
    apply_process_attributes(&process, config.spec)?;
    if process.terminal() == Some(true) {
        let socket = config.console_socket.take().ok_or_else(|| {
            crate::error::invalid("process.terminal", "a terminal needs --console-socket")
        })?;
        setup_terminal(&socket, &process, true)?;
    }
    if !config.no_new_keyring {
        let name =
            CString::new(format!("_ses.{}", config.id)).unwrap_or_else(|_| c"_ses".to_owned());
        // Kernels without keyrings (or a seccomp profile that blocks keyctl) just skip this.
        if let Err(err) = berth_sys::process::join_session_keyring(&name) {
            tracing::debug!(%err, "no new session keyring");
        }
    }
    let program = resolve_program(&process)?;
    check_cwd_exists(&process)?;
    berth_sys::nix::sys::prctl::set_pdeathsig(None)
        .map_err(sys("clear the parent-death signal"))?;
    channel.send(&Message::Ready)?;

    // Wait for `start`. Anything failing from here is reported to the start command.
    let connection = wait_for_start(&config.start_listener)?;
    if let Err(err) = hooks::run_all(
        HookKind::StartContainer,
        &HookKind::StartContainer.of(config.spec),
        &hook_state(Status::Created),
    ) {
        report_to_start(&connection, &err);
    }
    let seccomp = config.seccomp;
    match exec_process(
        &process,
        &program,
        seccomp,
        config.seccomp_listener.as_ref(),
        config.preserved_fds,
        &listener_payload(config.spec, host_pid, &hook_state(Status::Running)),
    ) {
        Ok(never) => match never {},
        Err(err) => report_to_start(&connection, &err),
    }
}

/// After `start` connected, failures go back to it (prefixed `E`); then the init exits.
fn report_to_start(connection: &OwnedFd, err: &Error) -> ! {
    let mut text = error_chain(err).into_bytes();
    text.insert(0, b'E');
    let _ = unistd::write(connection.as_fd(), &text);
    exit(1)
}

/// The pid of this process in the host's pid namespace, read from the host's `/proc`
/// before the root changes.
fn host_pid() -> Result<i32> {
    let link = std::fs::read_link("/proc/self").map_err(io("read", "/proc/self"))?;
    link.to_string_lossy()
        .parse()
        .map_err(|_| Error::Init(format!("unexpected /proc/self link {}", link.display())))
}

fn set_oom_score_adj(score: i32) -> Result<()> {
    std::fs::write("/proc/self/oom_score_adj", score.to_string()).map_err(|source| {
        let hint = if score < 0 && source.raw_os_error() == Some(berth_sys::libc::EACCES) {
            " (lowering it needs CAP_SYS_RESOURCE, which this runtime does not have)"
        } else {
            ""
        };
        Error::Init(format!("cannot set process.oomScoreAdj to {score}: {source}{hint}"))
    })
}

/// Everything before `pivot_root`: propagation, the rootfs bind, the spec's mounts, `/dev`.
fn prepare_rootfs(config: &InitConfig<'_>) -> Result<()> {
    if config.namespaces.has(CloneFlags::CLONE_NEWNS) {
        isolate_mounts(config)?;
    }
    let root = open_dir(config.rootfs)?;
    let in_userns = config.namespaces.has_user();
    for step in config.mounts {
        tracing::debug!("init: mounting {}", step.destination.display());
        mount_step(root.as_fd(), step, config).map_err(|err| {
            Error::Init(format!(
                "cannot mount {}: {}",
                step.destination.display(),
                error_chain(&err)
            ))
        })?;
    }
    tracing::debug!("init: mounts done");
    let dev_is_bound = config
        .mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev") && matches!(m.kind, MountKind::Bind { .. }));
    if !dev_is_bound {
        for device in config.devices {
            create_device(root.as_fd(), device, in_userns).map_err(|err| {
                Error::Init(format!(
                    "cannot create device {}: {}",
                    device.path.display(),
                    error_chain(&err)
                ))
            })?;
        }
        let has_pts = config.mounts.iter().any(|m| m.destination == Path::new("/dev/pts"));
        create_dev_symlinks(root.as_fd(), has_pts)?;
    }
    if config.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        resolve_in_root(root.as_fd(), Path::new("/dev/console"), Create::File)
            .map_err(sys("create /dev/console"))?;
    }
    Ok(())
}

/// In the container's own mount namespace: the propagation of `/`, and the rootfs made a
/// mount point (which `pivot_root` needs).
fn isolate_mounts(config: &InitConfig<'_>) -> Result<()> {
    let linux = config.spec.linux().as_ref();
    let propagation = linux.and_then(|l| l.rootfs_propagation().clone());
    let requested = match propagation.as_deref() {
        None | Some("") => None,
        Some(option) => Some(crate::plan::propagation_flag(option).ok_or_else(|| {
            crate::error::invalid("linux.rootfsPropagation", format!("{option:?} is not one of private, rprivate, shared, rshared, slave, rslave, unbindable, runbindable"))
        })?),
    };
    // Keep host mount events from reaching us, and ours from reaching the host: slave by
    // default; private, or shared with the host (as runc and crun do for `rshared`, which
    // `mountPropagation: Bidirectional` relies on), when asked. Unbindable is set after
    // pivot_root.
    let initial = match requested {
        Some(flags) if flags.intersects(MsFlags::MS_PRIVATE | MsFlags::MS_SHARED) => flags,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    mount(None::<&str>, "/", None::<&str>, initial, None::<&str>)
        .map_err(sys("set the propagation of /"))?;
    if initial.contains(MsFlags::MS_SHARED) {
        // The rootfs is bound onto itself next: under a shared parent that bind would appear
        // on the host too. Only the parent mount becomes private; mounts below it (the
        // sources of the spec's binds) stay in the host's peer groups.
        make_parent_mount_private(config.rootfs)?;
    }
    tracing::debug!("init: propagation set");
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(config.rootfs),
        config.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind-mount the rootfs {}", config.rootfs.display())))?;
    Ok(())
}

/// Makes the mount holding `path` private when it is shared.
fn make_parent_mount_private(path: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("read", "/proc/self/mountinfo"))?;
    let path = std::fs::canonicalize(path).map_err(io("resolve", path))?;
    let Some((mount_point, shared)) = crate::plan::mount_holding(&mountinfo, &path) else {
        return Err(Error::Init(format!("no mount holds {}", path.display())));
    };
    if shared {
        mount(None::<&str>, &mount_point, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(sys(format!("make {} private", mount_point.display())))?;
    }
    Ok(())
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    berth_sys::nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("open {}", path.display())))
}

fn mount_step(root: BorrowedFd<'_>, step: &MountStep, config: &InitConfig<'_>) -> Result<()> {
    let destination = &step.destination;
    match &step.kind {
        MountKind::Bind { source, recursive } => {
            let source_fd = berth_sys::nix::fcntl::open(
                source.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys(format!("open bind source {}", source.display())))?;
            let is_dir = fstat(source_fd.as_fd())
                .map(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits())
                .unwrap_or(true);
            let target = resolve_in_root(
                root,
                destination,
                if is_dir { Create::Directory } else { Create::File },
            )
            .map_err(sys("resolve the target in the rootfs"))?;
            let mut flags = MsFlags::MS_BIND;
            if *recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(&proc_fd_path(&source_fd)),
                &proc_fd_path(&target),
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(sys(format!("bind {}", source.display())))?;
            let mounted = resolve_in_root(root, destination, Create::Nothing)
                .map_err(sys("reopen the mount"))?;
            let remount = step.flags - MsFlags::MS_REMOUNT;
            if !remount.is_empty() {
                remount_bind(mounted.as_fd(), remount)?;
            }
            finish_mount(mounted.as_fd(), step)
        }
        MountKind::Filesystem { fstype, source } => {
            let target = resolve_in_root(root, destination, Create::Directory)
                .map_err(sys("resolve the target in the rootfs"))?;
            let data = (!step.data.is_empty()).then_some(step.data.as_str());
            let result = mount(
                Some(source.as_str()),
                &proc_fd_path(&target),
                Some(fstype.as_str()),
                step.flags,
                data,
            );
            match (result, fstype.as_str()) {
                (Ok(()), _) => {}
                // Without a network namespace of its own (or in a user namespace), a container
                // may not mount sysfs or mqueue; show the host's, read-only, as runc does.
                (Err(Errno::EPERM | Errno::EBUSY), "sysfs") => {
                    fallback_bind(root, destination, "/sys", step.flags | MsFlags::MS_RDONLY)?
                }
                (Err(Errno::EPERM | Errno::EBUSY), "mqueue") => {
                    fallback_bind(root, destination, "/dev/mqueue", step.flags)?
                }
                (Err(err), _) => return Err(sys(format!("mount {fstype}"))(err)),
            }
            let mounted = resolve_in_root(root, destination, Create::Nothing)
                .map_err(sys("reopen the mount"))?;
            finish_mount(mounted.as_fd(), step)
        }
        MountKind::Cgroup => mount_cgroup(root, step, config),
    }
}

fn fallback_bind(
    root: BorrowedFd<'_>,
    destination: &Path,
    host_path: &str,
    flags: MsFlags,
) -> Result<()> {
    let target = resolve_in_root(root, destination, Create::Directory)
        .map_err(sys("resolve the target in the rootfs"))?;
    mount(
        Some(host_path),
        &proc_fd_path(&target),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind {host_path}")))?;
    let remount = flags - MsFlags::MS_REMOUNT;
    if !remount.is_empty() {
        let mounted =
            resolve_in_root(root, destination, Create::Nothing).map_err(sys("reopen the mount"))?;
        remount_bind(mounted.as_fd(), remount)?;
    }
    Ok(())
}

/// Applies flags to a bind mount. A flag the source mount has and that a user namespace
/// may not clear (nodev, nosuid, ...) is kept rather than failing, as runc does.
fn remount_bind(target: BorrowedFd<'_>, flags: MsFlags) -> Result<()> {
    let path = proc_fd_path(&target.as_raw_fd());
    let base = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    match mount(None::<&str>, &path, None::<&str>, base | flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) => {
            let locked = locked_flags(target)?;
            mount(None::<&str>, &path, None::<&str>, base | flags | locked, None::<&str>)
                .map_err(sys("remount with the source's locked flags"))
        }
        Err(err) => Err(sys("remount")(err)),
    }
}

fn locked_flags(target: BorrowedFd<'_>) -> Result<MsFlags> {
    let stat = fstatvfs(target).map_err(sys("statvfs"))?;
    let flags = stat.flags();
    let mut locked = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if flags.contains(fs_flag) {
            locked |= ms_flag;
        }
    }
    Ok(locked)
}

/// Propagation and recursive attributes, shared by every kind of mount.
fn finish_mount(mounted: BorrowedFd<'_>, step: &MountStep) -> Result<()> {
    let path = proc_fd_path(&mounted.as_raw_fd());
    for propagation in &step.propagation {
        mount(None::<&str>, &path, None::<&str>, *propagation, None::<&str>)
            .map_err(sys("set mount propagation"))?;
    }
    if let Some(attr) = &step.recursive {
        sysmount::mount_setattr(mounted, Path::new(""), attr, true)
            .map_err(sys("set recursive mount attributes"))?;
    }
    Ok(())
}

/// Shows the container's own cgroup at the destination: bind mounts of its cgroup
/// directories, which is what a cgroup mount inside its cgroup namespace would show, and
/// needs no namespace yet (it is created after the rootfs, see `init`).
fn mount_cgroup(root: BorrowedFd<'_>, step: &MountStep, config: &InitConfig<'_>) -> Result<()> {
    let target = resolve_in_root(root, &step.destination, Create::Directory)
        .map_err(sys("resolve the target in the rootfs"))?;
    let flags = step.flags - MsFlags::MS_REMOUNT;
    if config.cgroup_v2 {
        let (_, host_dir) = config
            .cgroup_sources
            .first()
            .ok_or_else(|| Error::Init("no cgroup directory to show".into()))?;
        return bind_cgroup_dir(root, &step.destination, host_dir, flags);
    }
    // v1: a tmpfs holding one directory per hierarchy, as on the host. As runc, the mount's
    // flags (`ro`) apply to the hierarchies; the tmpfs holding them stays writable.
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), &proc_fd_path(&target), Some("tmpfs"), tmpfs_flags, Some("mode=755"))
        .map_err(sys("mount the cgroup tmpfs"))?;
    for (name, host_dir) in &config.cgroup_sources {
        if !host_dir.exists() {
            continue;
        }
        bind_cgroup_dir(root, &step.destination.join(name), host_dir, flags)?;
    }
    Ok(())
}

fn bind_cgroup_dir(
    root: BorrowedFd<'_>,
    destination: &Path,
    host_dir: &Path,
    flags: MsFlags,
) -> Result<()> {
    let target = resolve_in_root(root, destination, Create::Directory)
        .map_err(sys(format!("create {}", destination.display())))?;
    mount(
        Some(host_dir),
        &proc_fd_path(&target),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind {}", host_dir.display())))?;
    // The descriptor still names the directory under the new mount: look the path up again.
    let mounted =
        resolve_in_root(root, destination, Create::Nothing).map_err(sys("reopen the mount"))?;
    remount_bind(
        mounted.as_fd(),
        flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

fn create_device(root: BorrowedFd<'_>, device: &DeviceNode, in_userns: bool) -> Result<()> {
    let parent_path = device.path.parent().unwrap_or(Path::new("/dev"));
    let name = device
        .path
        .file_name()
        .ok_or_else(|| crate::error::invalid("linux.devices.path", "has no file name"))?;
    let parent = resolve_in_root(root, parent_path, Create::Directory)
        .map_err(sys("create the parent directory"))?;
    let parent_dir = berth_sys::nix::fcntl::openat(
        parent.as_fd(),
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open the parent directory"))?;
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node over an empty file.
        let target = resolve_in_root(root, &device.path, Create::File)
            .map_err(sys("create the mount point"))?;
        let host = berth_sys::nix::fcntl::open(
            device.path.as_path(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("open host {}", device.path.display())))?;
        return mount(
            Some(&proc_fd_path(&host)),
            &proc_fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("bind the host device"));
    }
    match unistd::unlinkat(parent_dir.as_fd(), name, unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(err) => return Err(sys("remove what the image has at that path")(err)),
    }
    let kind = match device.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let dev = makedev(device.major as u64, device.minor as u64);
    mknodat(parent_dir.as_fd(), name, kind, Mode::from_bits_truncate(device.mode), dev)
        .map_err(sys("mknod"))?;
    unistd::fchownat(
        parent_dir.as_fd(),
        name,
        Some(Uid::from_raw(device.uid)),
        Some(Gid::from_raw(device.gid)),
        berth_sys::nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys("chown"))
}

fn create_dev_symlinks(root: BorrowedFd<'_>, has_pts: bool) -> Result<()> {
    let dev =
        resolve_in_root(root, Path::new("/dev"), Create::Directory).map_err(sys("open /dev"))?;
    let dev = berth_sys::nix::fcntl::openat(
        dev.as_fd(),
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open /dev"))?;
    let kcore = Path::new("/proc/kcore").exists();
    let mut links = crate::plan::default_dev_symlinks(kcore);
    if has_pts {
        // Each container's devpts has its own ptmx; /dev/ptmx must lead to it.
        match unistd::unlinkat(dev.as_fd(), "ptmx", unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(err) => return Err(sys("remove /dev/ptmx")(err)),
        }
        links.push((PathBuf::from("/dev/ptmx"), PathBuf::from("pts/ptmx")));
    }
    for (link, target) in links {
        let name = link.file_name().unwrap_or_default();
        match unistd::symlinkat(target.as_path(), dev.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => return Err(sys(format!("create symlink {}", link.display()))(err)),
        }
    }
    Ok(())
}

/// `pivot_root` into the rootfs (or, with `--no-pivot`, move it over `/` and chroot).
fn enter_rootfs(config: &InitConfig<'_>) -> Result<()> {
    let rootfs = config.rootfs;
    if !config.namespaces.has(CloneFlags::CLONE_NEWNS) {
        // The host's mount table is shared: only this process's root changes.
        unistd::chroot(rootfs).map_err(sys(format!("chroot into {}", rootfs.display())))?;
        return unistd::chdir("/").map_err(sys("chdir to /"));
    }
    if config.no_pivot {
        unistd::chdir(rootfs).map_err(sys(format!("chdir to {}", rootfs.display())))?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(sys("move the rootfs over /"))?;
        unistd::chroot(".").map_err(sys("chroot into the rootfs"))?;
        return unistd::chdir("/").map_err(sys("chdir to /"));
    }
    let old_root = berth_sys::nix::fcntl::open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open /"))?;
    let new_root = berth_sys::nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open the rootfs"))?;
    unistd::fchdir(new_root.as_fd()).map_err(sys("chdir to the rootfs"))?;
    // Stacking the old root under the new one and detaching it leaves no directory behind.
    unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    unistd::fchdir(old_root.as_fd()).map_err(sys("chdir to the old root"))?;
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("make the old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    unistd::chdir("/").map_err(sys("chdir to /"))
}

/// After `pivot_root`: read-only root, masked and read-only paths, root propagation.
///
/// These use the new mount API on descriptors, so they need no `/proc` in the container and
/// never follow a symlink planted in the image.
fn finish_rootfs(config: &InitConfig<'_>) -> Result<()> {
    let root = berth_sys::nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open /"))?;
    let linux = config.spec.linux().as_ref();
    for path in linux.and_then(|l| l.readonly_paths().clone()).unwrap_or_default() {
        let Some(fd) = open_existing(root.as_fd(), Path::new(&path))? else { continue };
        sysmount::bind_fd(fd.as_fd(), fd.as_fd(), true)
            .map_err(sys(format!("bind readonly path {path}")))?;
        let mounted =
            open_in_root(root.as_fd(), Path::new(&path), OFlag::O_PATH | OFlag::O_NOFOLLOW)
                .map_err(sys(format!("reopen {path}")))?;
        let attr = MountAttr {
            set: sysmount::MOUNT_ATTR_RDONLY
                | sysmount::MOUNT_ATTR_NOSUID
                | sysmount::MOUNT_ATTR_NODEV
                | sysmount::MOUNT_ATTR_NOEXEC,
            ..MountAttr::default()
        };
        sysmount::mount_setattr(mounted.as_fd(), Path::new(""), &attr, true)
            .map_err(sys(format!("make {path} read-only")))?;
    }
    let masked = linux.and_then(|l| l.masked_paths().clone()).unwrap_or_default();
    if !masked.is_empty() {
        let null = verified_dev_null(root.as_fd())?;
        for path in masked {
            let Some(fd) = open_existing(root.as_fd(), Path::new(&path))? else { continue };
            let stat = fstat(fd.as_fd()).map_err(sys(format!("stat {path}")))?;
            let kind = stat.st_mode & SFlag::S_IFMT.bits();
            if kind == SFlag::S_IFLNK.bits() {
                continue;
            }
            if kind == SFlag::S_IFDIR.bits() {
                sysmount::mount_fs_fd(
                    c"tmpfs",
                    &["size=0"],
                    sysmount::MOUNT_ATTR_RDONLY,
                    fd.as_fd(),
                )
                .map_err(sys(format!("mask directory {path}")))?;
            } else {
                sysmount::bind_fd(null.as_fd(), fd.as_fd(), false)
                    .map_err(sys(format!("mask {path}")))?;
            }
        }
    }
    if config.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let attr = MountAttr { set: sysmount::MOUNT_ATTR_RDONLY, ..MountAttr::default() };
        sysmount::mount_setattr(root.as_fd(), Path::new(""), &attr, false)
            .map_err(sys("make the root filesystem read-only"))?;
    }
    if let Some(propagation) = linux
        .and_then(|l| l.rootfs_propagation().clone())
        .and_then(|p| crate::plan::propagation_flag(&p))
    {
        if propagation.contains(MsFlags::MS_SHARED) || propagation.contains(MsFlags::MS_UNBINDABLE)
        {
            mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
                .map_err(sys("set the propagation of the root"))?;
        }
    }
    Ok(())
}

/// Opens a path inside the root without following a symlink at its end; `None` if missing.
fn open_existing(root: BorrowedFd<'_>, path: &Path) -> Result<Option<OwnedFd>> {
    match open_in_root(root, path, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(err) => Err(sys(format!("open {}", path.display()))(err)),
    }
}

/// `/dev/null` of the container, checked to be the null device before it is bound over
/// masked paths: an image could have replaced it with a link to something else.
fn verified_dev_null(root: BorrowedFd<'_>) -> Result<OwnedFd> {
    let null = open_in_root(root, Path::new("/dev/null"), OFlag::O_PATH | OFlag::O_NOFOLLOW)
        .map_err(sys("open /dev/null"))?;
    let stat = fstat(null.as_fd()).map_err(sys("stat /dev/null"))?;
    let is_char = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits();
    if !is_char || stat.st_rdev != makedev(1, 3) {
        return Err(Error::Init(
            "refusing to mask paths: /dev/null in the container is not the null device".into(),
        ));
    }
    Ok(null)
}

fn set_identity(spec: &Spec) -> Result<()> {
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        unistd::sethostname(hostname).map_err(sys(format!("set hostname {hostname:?}")))?;
    }
    if let Some(domain) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        berth_sys::process::set_domainname(domain.as_bytes())
            .map_err(sys(format!("set domainname {domain:?}")))?;
    }
    Ok(())
}

/// rlimits, personality, I/O priority, scheduler, AppArmor: attributes inherited by exec.
pub(crate) fn apply_process_attributes(process: &Process, spec: &Spec) -> Result<()> {
    for limit in process.rlimits().iter().flatten() {
        let resource = crate::plan::rlimit_resource(limit.typ());
        berth_sys::nix::sys::resource::setrlimit(resource, limit.soft(), limit.hard()).map_err(
            |errno| {
                Error::Init(format!(
                    "cannot set {:?} to soft {} hard {}: {errno}{}",
                    limit.typ(),
                    limit.soft(),
                    limit.hard(),
                    if errno == Errno::EPERM {
                        " (raising a hard limit needs CAP_SYS_RESOURCE)"
                    } else {
                        ""
                    }
                ))
            },
        )?;
    }
    if let Some(personality) = spec.linux().as_ref().and_then(|l| l.personality().clone()) {
        let mut persona = berth_sys::nix::sys::personality::Persona::empty();
        if personality.domain() == oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 {
            persona = berth_sys::nix::sys::personality::Persona::from_bits_retain(0x0008);
        }
        if personality.flags().as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(crate::error::invalid(
                "linux.personality.flags",
                "no personality flags are defined by the runtime spec",
            ));
        }
        berth_sys::nix::sys::personality::set(persona).map_err(sys("set the personality"))?;
    }
    if let Some(priority) = process.io_priority() {
        let class = match priority.class() {
            oci_spec::runtime::IOPriorityClass::IoprioClassRt => 1,
            oci_spec::runtime::IOPriorityClass::IoprioClassBe => 2,
            oci_spec::runtime::IOPriorityClass::IoprioClassIdle => 3,
        };
        if !(0..=7).contains(&priority.priority()) {
            return Err(crate::error::invalid(
                "process.ioPriority.priority",
                format!("{} is outside 0..=7", priority.priority()),
            ));
        }
        berth_sys::process::set_io_priority(class, priority.priority() as u32)
            .map_err(sys("set the I/O priority"))?;
    }
    if let Some(scheduler) = process.scheduler() {
        use oci_spec::runtime::{LinuxSchedulerFlag as F, LinuxSchedulerPolicy as P};
        let policy = match scheduler.policy() {
            P::SchedOther => 0,
            P::SchedFifo => 1,
            P::SchedRr => 2,
            P::SchedBatch => 3,
            P::SchedIso => 4,
            P::SchedIdle => 5,
            P::SchedDeadline => 6,
        };
        let flags = scheduler.flags().iter().flatten().fold(0u64, |acc, flag| {
            acc | match flag {
                F::SchedResetOnFork => 0x01,
                F::SchedFlagReclaim => 0x02,
                F::SchedFlagDLOverrun => 0x04,
                F::SchedFlagKeepPolicy => 0x08,
                F::SchedFlagKeepParams => 0x10,
                F::SchedFlagUtilClampMin => 0x20,
                F::SchedFlagUtilClampMax => 0x40,
            }
        });
        let attr = berth_sys::process::SchedAttr {
            policy,
            flags,
            nice: scheduler.nice().unwrap_or(0),
            priority: scheduler.priority().unwrap_or(0).max(0) as u32,
            runtime: scheduler.runtime().unwrap_or(0),
            deadline: scheduler.deadline().unwrap_or(0),
            period: scheduler.period().unwrap_or(0),
        };
        berth_sys::process::sched_setattr(&attr).map_err(sys("set the scheduler"))?;
    }
    if let Some(profile) = process.apparmor_profile().as_deref().filter(|p| !p.is_empty()) {
        if !Path::new("/sys/kernel/security/apparmor").exists()
            && !Path::new("/sys/module/apparmor").exists()
        {
            return Err(crate::error::invalid(
                "process.apparmorProfile",
                format!("profile {profile:?} is set but AppArmor is not enabled on this host"),
            ));
        }
        let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
            "/proc/self/attr/apparmor/exec"
        } else {
            "/proc/self/attr/exec"
        };
        std::fs::write(attr, format!("exec {profile}")).map_err(io("write", attr))?;
    }
    if process.selinux_label().as_deref().is_some_and(|l| !l.is_empty())
        && Path::new("/sys/fs/selinux/enforce").exists()
    {
        let label = process.selinux_label().clone().unwrap_or_default();
        std::fs::write("/proc/self/attr/exec", label.as_bytes())
            .map_err(io("write", "/proc/self/attr/exec"))?;
    }
    Ok(())
}

/// Creates the container's pty from its own devpts, makes it the controlling terminal and
/// stdio, and hands the master to whoever listens on the console socket.
pub(crate) fn setup_terminal(
    socket: &OwnedFd,
    process: &Process,
    bind_console: bool,
) -> Result<()> {
    let master = berth_sys::nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open /dev/ptmx"))?;
    berth_sys::tty::unlock(master.as_fd()).map_err(sys("unlock the pty"))?;
    let peer = berth_sys::tty::open_peer(master.as_fd()).map_err(sys("open the pty peer"))?;
    if let Some(size) = process.console_size() {
        let size =
            berth_sys::tty::WindowSize { rows: size.height() as u16, cols: size.width() as u16 };
        berth_sys::tty::set_window_size(peer.as_fd(), size)
            .map_err(sys("set the terminal size"))?;
    }
    if bind_console {
        let root = berth_sys::nix::fcntl::open(
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("open /"))?;
        let console = resolve_in_root(root.as_fd(), Path::new("/dev/console"), Create::File)
            .map_err(sys("open /dev/console"))?;
        sysmount::bind_fd(peer.as_fd(), console.as_fd(), false)
            .map_err(sys("bind the pty to /dev/console"))?;
    }
    for target in 0..3 {
        berth_sys::process::dup_onto(peer.as_raw_fd(), target)
            .map_err(sys("make the pty the standard streams"))?;
    }
    berth_sys::tty::set_controlling(peer.as_fd())
        .map_err(sys("make the pty the controlling terminal"))?;
    send_fd(socket, &master, b"/dev/ptmx")
}

pub(crate) fn send_fd(socket: &OwnedFd, fd: &OwnedFd, name: &[u8]) -> Result<()> {
    use berth_sys::nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let control = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &control, MsgFlags::empty(), None)
        .map_err(sys("send the pty master to the console socket"))?;
    Ok(())
}

fn wait_for_start(listener: &OwnedFd) -> Result<OwnedFd> {
    use berth_sys::nix::sys::socket::{accept4, SockFlag};
    loop {
        let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(err) => return Err(sys("wait for start")(err)),
        };
        let connection = berth_sys::process::own_fd(fd).map_err(sys("accept"))?;
        let mut request = [0u8; 1];
        if matches!(unistd::read(connection.as_fd(), &mut request), Ok(1)) && request[0] == b's' {
            return Ok(connection);
        }
    }
}

/// The program to execute, found in the container's `PATH` at create time, as runc does.
pub(crate) fn resolve_program(process: &Process) -> Result<PathBuf> {
    let args = process.args().clone().unwrap_or_default();
    let program = args.first().ok_or_else(|| {
        crate::error::invalid("process.args", "is empty; give the program to run")
    })?;
    let env = process.env().clone().unwrap_or_default();
    let is_executable = |path: &Path| {
        let executable = unistd::access(path, unistd::AccessFlags::X_OK).is_ok();
        executable && std::fs::metadata(path).map(|m| m.is_file()).unwrap_or(false)
    };
    let found = crate::plan::find_executable(program, &env, is_executable).ok_or_else(|| {
        Error::Init(format!("exec: {program:?}: executable file not found in $PATH"))
    })?;
    if program.contains('/') {
        // As runc: a program that cannot be executed fails `create`, not `start`, so callers
        // (podman's 126) report it at the right moment.
        let absolute = if found.is_absolute() { found.clone() } else { process.cwd().join(&found) };
        match std::fs::metadata(&absolute) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Init(format!("exec: {program:?}: no such file or directory")));
            }
            Ok(meta) if meta.is_dir() => {
                return Err(Error::Init(format!("exec: {program:?}: is a directory")));
            }
            _ if !is_executable(&absolute) => {
                return Err(Error::Init(format!("exec: {program:?}: permission denied")));
            }
            _ => {}
        }
    }
    Ok(found)
}

fn check_cwd_exists(process: &Process) -> Result<()> {
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(crate::error::invalid(
            "process.cwd",
            format!("{} is not absolute", cwd.display()),
        ));
    }
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::Init(format!("process.cwd {} is not a directory", cwd.display()))),
        Err(err) => {
            Err(Error::Init(format!("process.cwd {} cannot be used: {err}", cwd.display())))
        }
    }
}

/// What a seccomp listener receives with the notify descriptor: the runtime spec's
/// "containerProcessState" document.
pub(crate) fn listener_payload(spec: &Spec, pid: i32, state_json: &[u8]) -> Vec<u8> {
    let metadata = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .and_then(|s| s.listener_metadata().clone())
        .unwrap_or_default();
    let state: serde_json::Value =
        serde_json::from_slice(state_json).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": metadata,
        "state": state,
    }))
    .unwrap_or_default()
}

/// The last steps, shared by the init and by `exec`: user, capabilities, no_new_privs,
/// seccomp, then `execve`. Returns only on failure.
pub(crate) fn exec_process(
    process: &Process,
    program: &Path,
    seccomp: Option<&Filter>,
    seccomp_listener: Option<&OwnedFd>,
    preserved_fds: i32,
    listener_payload: &[u8],
) -> Result<Infallible> {
    let no_new_privileges = process.no_new_privileges() == Some(true);
    let load_seccomp = |listener: Option<&OwnedFd>| -> Result<()> {
        let Some(filter) = seccomp else { return Ok(()) };
        let notify = filter.load()?;
        if let (Some(notify), Some(listener)) = (notify, listener) {
            crate::seccomp::send_to_listener(listener, &notify, listener_payload)?;
        }
        Ok(())
    };
    // The working directory is entered and checked before any filter goes in: a profile may
    // refuse getcwd, and the check (CVE-2024-21626) must not depend on the profile. As root
    // first; a directory only the container's user may enter is tried again as that user.
    let cwd_entered = enter_working_directory(process.cwd(), true)?;
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so it must come before the
    // capabilities are dropped; with it, as late as possible, so the filter sees the least.
    if !no_new_privileges {
        load_seccomp(seccomp_listener)?;
    }
    set_user_and_capabilities(process, cwd_entered)?;
    if no_new_privileges {
        berth_sys::nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
        load_seccomp(seccomp_listener)?;
    }
    berth_sys::nix::sys::stat::umask(Mode::from_bits_truncate(
        process.user().umask().unwrap_or(0o022),
    ));
    let args: Vec<CString> =
        process.args().iter().flatten().map(|arg| cstring(arg)).collect::<Result<_>>()?;
    let env: Vec<CString> =
        process.env().iter().flatten().map(|pair| cstring(pair)).collect::<Result<_>>()?;
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| crate::error::invalid("process.args", "contains a NUL byte"))?;
    berth_sys::process::reset_signals().map_err(sys("reset signal handling"))?;
    // Nothing but stdio and the preserved descriptors may reach the container's program.
    berth_sys::process::cloexec_from(3 + preserved_fds)
        .map_err(sys("close inherited descriptors"))?;
    for fd in 3..3 + preserved_fds {
        berth_sys::process::clear_cloexec(fd).map_err(sys(format!("preserve descriptor {fd}")))?;
    }
    let err = match unistd::execve(&path, &args, &env) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    Err(Error::Init(format!("exec {}: {err}", program.display())))
}

fn cstring(text: &str) -> Result<CString> {
    CString::new(text)
        .map_err(|_| crate::error::invalid("process", format!("{text:?} contains a NUL byte")))
}

/// Bounding set, uid/gid/groups, working directory (unless already entered), then the
/// other capability sets.
fn set_user_and_capabilities(process: &Process, cwd_entered: bool) -> Result<()> {
    use caps::{CapSet, CapsHashSet};
    let capabilities = process.capabilities().clone().unwrap_or_default();
    let convert = |set: &Option<oci_spec::runtime::Capabilities>| -> CapsHashSet {
        set.iter()
            .flatten()
            .filter_map(|cap| format!("CAP_{cap}").parse::<caps::Capability>().ok())
            .collect()
    };
    let bounding = convert(capabilities.bounding());
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            match caps::drop(None, CapSet::Bounding, cap) {
                Ok(()) => {}
                // A capability this kernel does not know cannot be in the set anyway.
                Err(_) if cap.index() > last_cap() => {}
                Err(err) => {
                    return Err(Error::Init(format!(
                        "cannot drop {cap} from the bounding set: {err}"
                    )))
                }
            }
        }
    }
    berth_sys::nix::sys::prctl::set_keepcaps(true)
        .map_err(sys("keep capabilities across setuid"))?;
    let user = process.user();
    let in_userns_without_setgroups = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() == "deny")
        .unwrap_or(false);
    if !in_userns_without_setgroups {
        let groups: Vec<Gid> =
            user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect();
        unistd::setgroups(&groups).map_err(sys("set the supplementary groups"))?;
    }
    let gid = Gid::from_raw(user.gid());
    unistd::setresgid(gid, gid, gid).map_err(sys(format!("set gid {}", user.gid())))?;
    let uid = Uid::from_raw(user.uid());
    unistd::setresuid(uid, uid, uid).map_err(sys(format!("set uid {}", user.uid())))?;
    if !cwd_entered {
        enter_working_directory(process.cwd(), false)?;
    }
    berth_sys::nix::sys::prctl::set_keepcaps(false).map_err(sys("reset keepcaps"))?;
    let capset = |set: CapSet, value: &CapsHashSet| {
        caps::set(None, set, value)
            .map_err(|err| Error::Init(format!("cannot set the {set:?} capabilities: {err}")))
    };
    capset(CapSet::Effective, &convert(capabilities.effective()))?;
    capset(CapSet::Inheritable, &convert(capabilities.inheritable()))?;
    capset(CapSet::Permitted, &convert(capabilities.permitted()))?;
    // The kernel only raises an ambient capability that is also permitted and inheritable;
    // specs (runc's default among them) often list ambient ones without inheritable ones, so
    // those are skipped rather than failing the container.
    for cap in convert(capabilities.ambient()) {
        if let Err(err) = caps::raise(None, CapSet::Ambient, cap) {
            tracing::debug!(%err, %cap, "ambient capability not raised");
        }
    }
    Ok(())
}

fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// chdir, then check the result is inside the root: a descriptor leaked into the process
/// (CVE-2024-21626) could otherwise leave it in a host directory. With `may_defer`, a
/// directory this (privileged) process may not enter returns false, to be tried again
/// once the process has the container's user.
fn enter_working_directory(cwd: &Path, may_defer: bool) -> Result<bool> {
    match unistd::chdir(cwd) {
        Ok(()) => {}
        Err(Errno::EACCES | Errno::EPERM) if may_defer => return Ok(false),
        Err(err) => return Err(sys(format!("chdir to {}", cwd.display()))(err)),
    }
    match unistd::getcwd() {
        Ok(path)
            if path.is_absolute() && !path.as_os_str().as_bytes().starts_with(b"(unreachable)") =>
        {
            Ok(true)
        }
        Ok(path) => Err(Error::Init(format!(
            "working directory {} is outside the container",
            path.display()
        ))),
        Err(err) => Err(Error::Init(format!(
            "working directory {} is outside the container: {err}",
            cwd.display()
        ))),
    }
}

/// Writes the id mappings of a child's new user namespace (done by the parent).
pub(crate) fn write_id_mappings(pid: Pid, namespaces: &NamespacePlan) -> Result<()> {
    let UserNamespace::New { uid_mappings, gid_mappings } = &namespaces.user else { return Ok(()) };
    let render = |mappings: &[oci_spec::runtime::LinuxIdMapping]| {
        mappings
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let write = |file: &str, content: String| -> Result<()> {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        let mut handle =
            std::fs::OpenOptions::new().write(true).open(&path).map_err(io("open", &path))?;
        handle.write_all(content.as_bytes()).map_err(io("write", &path))
    };
    write("uid_map", render(uid_mappings))?;
    write("gid_map", render(gid_mappings))
}
