//! The container lifecycle: create, start, state, kill, delete, pause, resume, update.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use berth_cgroups::{FreezerState, Layout, Manager};
use berth_sys::nix::fcntl::OFlag;
use berth_sys::nix::sys::signal::{kill, Signal};
use berth_sys::nix::sys::stat::Mode;
use berth_sys::nix::unistd::Pid;
use berth_sys::process::Fork;
use berth_sys::Errno;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::error::{invalid, io, sys, Error, Result};
use crate::hooks::{self, HookKind};
use crate::init::{self, InitConfig};
use crate::plan;
use crate::state::{
    rfc3339, user_name, write_pid_file, ContainerDir, HookState, OciState, PersistedState, Status,
};
use crate::sync::{Channel, Message};

/// The runtime: a root directory of container states and the host's cgroup layout.
#[derive(Debug)]
pub struct Runtime {
    root: PathBuf,
    systemd_cgroup: bool,
    layout: OnceLock<Arc<Layout>>,
}

/// Options of `create` (and of `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Descriptors beyond stdio passed to the container's process (3, 4, ...).
    pub preserve_fds: i32,
}

/// How long `delete` and `kill` wait for processes to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

impl Runtime {
    pub fn new(root: impl Into<PathBuf>, systemd_cgroup: bool) -> Runtime {
        Runtime { root: root.into(), systemd_cgroup, layout: OnceLock::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A runtime that uses `layout` instead of the host's (for tests of the cgroup seam).
    pub fn with_layout(root: impl Into<PathBuf>, layout: Layout) -> Runtime {
        let runtime = Runtime::new(root, false);
        let _ = runtime.layout.set(Arc::new(layout));
        runtime
    }

    fn layout(&self) -> Result<Arc<Layout>> {
        if let Some(layout) = self.layout.get() {
            return Ok(layout.clone());
        }
        let layout = Arc::new(Layout::detect()?);
        Ok(self.layout.get_or_init(|| layout).clone())
    }

    fn cgroup(&self, path: &Path) -> Result<Box<dyn Manager>> {
        Ok(berth_cgroups::manager(&self.layout()?, path))
    }

    /// Creates a container from a bundle and leaves it `created`, its init waiting for
    /// `start`. Returns the init's pid.
    pub fn create(&self, options: &CreateOptions) -> Result<i32> {
        self.create_with_console(options, None)
    }

    /// `create`, with an already connected console socket (used by a foreground `run`).
    pub fn create_with_console(
        &self,
        options: &CreateOptions,
        console: Option<OwnedFd>,
    ) -> Result<i32> {
        let bundle =
            std::fs::canonicalize(&options.bundle).map_err(io("open bundle", &options.bundle))?;
        let loaded = crate::spec::load(&bundle)?;
        for field in &loaded.unknown_fields {
            tracing::warn!("config.json: unknown property {field} is ignored");
        }
        let spec = loaded.spec;
        let prepared =
            Prepared::new(&spec, &bundle, options, console.is_some(), self.systemd_cgroup)?;
        let cgroup = self.cgroup(&prepared.cgroup_path)?;
        let dir = ContainerDir::create(&self.root, &options.id)?;
        let span = tracing::debug_span!("create", container.id = %options.id);
        let _guard = span.enter();
        let cgroup_existed = cgroup.exists();
        let mut state = PersistedState::new(
            &options.id,
            &bundle,
            &prepared.rootfs,
            &prepared.cgroup_path,
            spec.clone(),
            rfc3339(SystemTime::now()),
        );
        // The state is saved once the init's pid is known: until then the directory alone
        // says "creating", and `delete --force` can remove it.
        let result = self.spawn(&dir, &mut state, &prepared, options, cgroup.as_ref(), console);
        match result {
            Ok(pid) => Ok(pid),
            Err(err) => {
                // Leave nothing behind: no process, no cgroup we made, no state directory.
                if state.pid > 0 {
                    let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
                    let _ = berth_sys::process::wait_child_timeout(
                        Pid::from_raw(state.pid),
                        Some(KILL_TIMEOUT),
                    );
                }
                if !cgroup_existed {
                    if let Err(cleanup) = cgroup.destroy() {
                        tracing::warn!("cleanup after failed create: {cleanup}");
                    }
                }
                if let Err(cleanup) =
                    undo_host_mounts(&prepared.namespaces, &spec, &prepared.rootfs)
                {
                    tracing::warn!("cleanup after failed create: {cleanup}");
                }
                let _ = dir.remove();
                Err(err)
            }
        }
    }

    fn spawn(
        &self,
        dir: &ContainerDir,
        state: &mut PersistedState,
        prepared: &Prepared,
        options: &CreateOptions,
        cgroup: &dyn Manager,
        console: Option<OwnedFd>,
    ) -> Result<i32> {
        let spec = &state.config.clone();
        tracing::debug!("creating cgroup");
        cgroup.create()?;
        cgroup.apply(&prepared.resources)?;
        let (parent_channel, child_channel) = Channel::pair()?;
        let start_socket = dir.start_socket();
        let listener = dir
            .with_socket_path(|path| UnixListener::bind(path))
            .map_err(io("listen on", &start_socket))?;
        let console_socket = match (console, &options.console_socket) {
            (Some(fd), _) => Some(fd),
            (None, Some(path)) if prepared.terminal => Some(OwnedFd::from(
                UnixStream::connect(path).map_err(io("connect to console socket", path))?,
            )),
            _ => None,
        };
        let seccomp_listener = match (&prepared.seccomp, prepared.seccomp_listener_path.as_ref()) {
            (Some(filter), Some(path)) if filter.notifies => Some(OwnedFd::from(
                UnixStream::connect(path).map_err(io("connect to seccomp listener", path))?,
            )),
            _ => None,
        };
        let layout = self.layout()?;
        let annotations = state.annotations.clone();
        let config = InitConfig {
            id: &options.id,
            spec,
            bundle: &state.bundle,
            rootfs: &prepared.rootfs,
            namespaces: &prepared.namespaces,
            mounts: &prepared.mounts,
            devices: &prepared.devices,
            cgroup_sources: cgroup.mount_sources(),
            cgroup_v2: layout.is_v2(),
            self_join: if prepared.namespaces.has_user() {
                None
            } else {
                Some(cgroup.self_join(None)?)
            },
            seccomp: prepared.seccomp.as_ref(),
            seccomp_listener,
            console_socket,
            start_listener: OwnedFd::from(listener),
            no_pivot: options.no_pivot,
            no_new_keyring: options.no_new_keyring,
            preserved_fds: options.preserve_fds,
            annotations: &annotations,
        };
        tracing::debug!("forking");
        // The common case (no user namespace, nothing joined by path, no time namespace): one
        // clone3 creates the init in its namespaces and cgroup. Otherwise a first stage joins
        // and creates namespaces in the order they need, then forks the init.
        if let Some((namespaces, cgroup_dir)) =
            init::direct_clone(&prepared.namespaces, config.self_join.as_ref())
        {
            let cgroup_fd = berth_sys::nix::fcntl::open(
                cgroup_dir.as_path(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys(format!("open cgroup {}", cgroup_dir.display())))?;
            match berth_sys::process::clone3(namespaces, false, Some(cgroup_fd.as_fd())) {
                Ok(Fork::Child) => {
                    drop(parent_channel);
                    init::run_direct_init(config, child_channel)
                }
                Ok(Fork::Parent(pid)) => {
                    drop(child_channel);
                    drop(config);
                    let spawned = Spawned::Init(pid);
                    return self.drive_init(
                        dir,
                        state,
                        prepared,
                        options,
                        cgroup,
                        &parent_channel,
                        spawned,
                    );
                }
                Err(Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG) => {}
                Err(err) => return Err(sys("clone the container's init")(err)),
            }
        }
        let stage_one = match berth_sys::process::fork().map_err(sys("fork"))? {
            Fork::Child => {
                drop(parent_channel);
                init::run_stage_one(config, child_channel)
            }
            Fork::Parent(pid) => pid,
        };
        drop(child_channel);
        drop(config);
        let spawned = Spawned::StageOne(stage_one);
        let result =
            self.drive_init(dir, state, prepared, options, cgroup, &parent_channel, spawned);
        // Stage one exits right after forking the init; reap it whatever happened.
        let _ = berth_sys::process::wait_child_timeout(stage_one, Some(KILL_TIMEOUT));
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn drive_init(
        &self,
        dir: &ContainerDir,
        state: &mut PersistedState,
        prepared: &Prepared,
        options: &CreateOptions,
        cgroup: &dyn Manager,
        channel: &Channel,
        spawned: Spawned,
    ) -> Result<i32> {
        let pid = match spawned {
            Spawned::Init(pid) => pid.as_raw(),
            Spawned::StageOne(stage_one) => drive_stage_one(prepared, channel, stage_one)?,
        };
        state.pid = pid;
        state.pid_start_time =
            berth_sys::process::process_start_time(Pid::from_raw(pid)).unwrap_or(0);
        dir.save(state)?;
        // Without a user namespace the init has entered its cgroup by itself (see
        // `berth_cgroups::SelfJoin`).
        if prepared.namespaces.has_user() {
            // A process in a user namespace may not write the host's cgroup files: move it.
            // This costs an RCU grace period; the init builds its rootfs meanwhile.
            tracing::debug!(pid, "placing init in its cgroup");
            cgroup.add_process(Pid::from_raw(pid))?;
        }
        tracing::debug!("placed; waiting for the rootfs");
        channel.expect(&Message::RunHooks, "setting up the root filesystem")?;
        tracing::debug!("rootfs ready");
        // The runtime spec's lifecycle runs prestart hooks once the environment is created
        // (as crun does; runc says "creating"); createRuntime hooks run during creation.
        hooks::run_all(
            HookKind::Prestart,
            &HookKind::Prestart.of(&state.config),
            &hook_state_json(state, Status::Created),
        )?;
        hooks::run_all(
            HookKind::CreateRuntime,
            &HookKind::CreateRuntime.of(&state.config),
            &hook_state_json(state, Status::Creating),
        )?;
        channel.send(&Message::Go)?;
        channel.expect(&Message::Ready, "preparing the container process")?;
        tracing::debug!("init ready");
        if let Some(path) = &options.pid_file {
            write_pid_file(path, pid)?;
        }
        Ok(pid)
    }

    /// Lets a created container's init execute the program.
    pub fn start(&self, id: &str) -> Result<()> {
        let dir = ContainerDir::open(&self.root, id, true)?;
        let state = self.load(&dir)?;
        let status = self.status(&state);
        if status != Status::Created {
            return Err(Error::WrongState {
                id: id.to_owned(),
                status,
                action: "start",
                expected: "created",
            });
        }
        let socket = dir.start_socket();
        let mut stream = match dir.with_socket_path(|path| UnixStream::connect(path)) {
            Ok(stream) => stream,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                // A start that died after letting the init go: it is running already.
                let _ = std::fs::remove_file(&socket);
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    status: Status::Running,
                    action: "start",
                    expected: "created",
                });
            }
            Err(err) => return Err(io("connect to the container's init at", &socket)(err)),
        };
        stream.write_all(b"s").map_err(io("signal start through", &socket))?;
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let _ = std::fs::remove_file(&socket);
        if let Some(message) = reply.strip_prefix(b"E") {
            return Err(Error::Setup(String::from_utf8_lossy(message).into_owned()));
        }
        hooks::run_all_warn(
            HookKind::Poststart,
            &HookKind::Poststart.of(&state.config),
            &hook_state_json(&state, Status::Running),
        );
        Ok(())
    }

    fn load(&self, dir: &ContainerDir) -> Result<PersistedState> {
        dir.load()?.ok_or_else(|| Error::WrongState {
            id: dir.id.clone(),
            status: Status::Creating,
            action: "this command",
            expected: "fully created",
        })
    }

    /// The lifecycle status, from the init process, the start socket and the freezer.
    pub fn status(&self, state: &PersistedState) -> Status {
        if state.pid <= 0 {
            return Status::Creating;
        }
        if !init_alive(state) {
            return Status::Stopped;
        }
        if self.root.join(&state.id).join(crate::state::START_SOCKET).exists() {
            return Status::Created;
        }
        match self.cgroup(&state.cgroup_path).and_then(|c| Ok(c.freezer_state()?)) {
            Ok(FreezerState::Frozen | FreezerState::Freezing) => Status::Paused,
            _ => Status::Running,
        }
    }

    fn oci_state(&self, state: &PersistedState) -> OciState {
        let status = self.status(state);
        OciState {
            oci_version: crate::state::OCI_VERSION.to_owned(),
            id: state.id.clone(),
            pid: if status == Status::Stopped { 0 } else { state.pid },
            status,
            bundle: state.bundle.clone(),
            rootfs: state.rootfs.clone(),
            created: state.created.clone(),
            annotations: state.annotations.clone(),
            owner: String::new(),
        }
    }

    /// The state of one container, as `runc state` prints it.
    pub fn state(&self, id: &str) -> Result<OciState> {
        let dir = ContainerDir::open(&self.root, id, false)?;
        let state = self.load(&dir)?;
        Ok(self.oci_state(&state))
    }

    /// Every container under the root, sorted by id; `owner` is filled in.
    pub fn list(&self) -> Result<Vec<OciState>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io("read", &self.root)(err)),
        };
        let mut states = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(crate::state::STATE_FILE);
            // Reading without the lock: a list must not wait for a slow create.
            let Ok(Some(state)) = crate::state::read_state(&path) else { continue };
            let mut oci = self.oci_state(&state);
            oci.owner = user_name(state.owner_uid);
            states.push(oci);
        }
        states.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(states)
    }

    /// Sends a signal to the init, or with `all` to every process of the container.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let dir = ContainerDir::open(&self.root, id, false)?;
        let state = self.load(&dir)?;
        let status = self.status(&state);
        if status == Status::Stopped {
            return Err(Error::WrongState {
                id: id.to_owned(),
                status,
                action: "kill",
                expected: "created, running or paused",
            });
        }
        let cgroup = self.cgroup(&state.cgroup_path)?;
        if all {
            cgroup.kill_all(signal)?;
        } else {
            kill(Pid::from_raw(state.pid), signal).map_err(sys(format!(
                "send {signal} to the container's init (pid {})",
                state.pid
            )))?;
        }
        // A frozen process only dies once thawed.
        if status == Status::Paused && signal == Signal::SIGKILL {
            cgroup.freeze(FreezerState::Thawed)?;
        }
        Ok(())
    }

    /// Removes a stopped (or, with `force`, any) container and everything it holds.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let dir = match ContainerDir::open(&self.root, id, true) {
            Ok(dir) => dir,
            // As runc and crun: forcing the removal of what is already gone succeeds, so a
            // caller cleaning up after a failed create does not report a second error.
            Err(Error::NotFound { .. }) if force => return Ok(()),
            Err(err) => return Err(err),
        };
        let state = match dir.load() {
            Ok(Some(state)) => state,
            Ok(None) if force => return dir.remove(),
            Ok(None) => {
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    status: Status::Creating,
                    action: "delete",
                    expected: "stopped (or use --force)",
                })
            }
            Err(err) => return Err(err),
        };
        let status = self.status(&state);
        match status {
            Status::Stopped | Status::Created => {}
            Status::Creating | Status::Running | Status::Paused if force => {}
            _ => {
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    status,
                    action: "delete",
                    expected: "stopped (or use --force)",
                })
            }
        }
        let cgroup = self.cgroup(&state.cgroup_path)?;
        if status != Status::Stopped {
            self.kill_everything(&state, cgroup.as_ref(), status == Status::Paused)?;
        }
        cgroup.destroy()?;
        let namespaces = plan::plan_namespaces(&state.config)?;
        undo_host_mounts(&namespaces, &state.config, &state.rootfs)?;
        hooks::run_all_warn(
            HookKind::Poststop,
            &HookKind::Poststop.of(&state.config),
            &hook_state_json(&state, Status::Stopped),
        );
        dir.remove()
    }

    fn kill_everything(
        &self,
        state: &PersistedState,
        cgroup: &dyn Manager,
        paused: bool,
    ) -> Result<()> {
        let pid = Pid::from_raw(state.pid);
        if init_alive(state) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if cgroup.exists() {
            cgroup.kill_all(Signal::SIGKILL)?;
        }
        if paused {
            cgroup.freeze(FreezerState::Thawed)?;
        }
        if init_alive(state)
            && !berth_sys::process::wait_exit(pid, KILL_TIMEOUT)
                .map_err(sys("wait for the init to exit"))?
        {
            return Err(Error::Init(format!(
                "the container's init (pid {pid}) did not die within {}s of SIGKILL",
                KILL_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let dir = ContainerDir::open(&self.root, id, true)?;
        let state = self.load(&dir)?;
        let status = self.status(&state);
        if status != Status::Running && status != Status::Created {
            return Err(Error::WrongState {
                id: id.to_owned(),
                status,
                action: "pause",
                expected: "running",
            });
        }
        Ok(self.cgroup(&state.cgroup_path)?.freeze(FreezerState::Frozen)?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let dir = ContainerDir::open(&self.root, id, true)?;
        let state = self.load(&dir)?;
        let status = self.status(&state);
        if status != Status::Paused {
            return Err(Error::WrongState {
                id: id.to_owned(),
                status,
                action: "resume",
                expected: "paused",
            });
        }
        Ok(self.cgroup(&state.cgroup_path)?.freeze(FreezerState::Thawed)?)
    }

    /// Pids (in the host's namespace) of every process of the container.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let dir = ContainerDir::open(&self.root, id, false)?;
        let state = self.load(&dir)?;
        if self.status(&state) == Status::Stopped {
            return Ok(Vec::new());
        }
        let mut pids: Vec<i32> =
            self.cgroup(&state.cgroup_path)?.pids()?.into_iter().map(Pid::as_raw).collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Changes the limits of a live container and records them in its state.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let dir = ContainerDir::open(&self.root, id, true)?;
        let mut state = self.load(&dir)?;
        let status = self.status(&state);
        if status == Status::Stopped {
            return Err(Error::WrongState {
                id: id.to_owned(),
                status,
                action: "update",
                expected: "created, running or paused",
            });
        }
        self.cgroup(&state.cgroup_path)?.apply(resources)?;
        let merged = merge_resources(
            state.config.linux().as_ref().and_then(|l| l.resources().clone()),
            resources,
        )?;
        if let Some(linux) = state.config.linux_mut() {
            linux.set_resources(Some(merged));
        }
        dir.save(&state)
    }

    /// A handle to poll a running container's stats and OOM kills (`events`).
    pub fn watch(&self, id: &str) -> Result<Watcher> {
        let dir = ContainerDir::open(&self.root, id, false)?;
        let state = self.load(&dir)?;
        let cgroup = self.cgroup(&state.cgroup_path)?;
        Ok(Watcher { state, cgroup })
    }

    /// Usage figures of a running container.
    pub fn stats(&self, id: &str) -> Result<berth_cgroups::Stats> {
        let dir = ContainerDir::open(&self.root, id, false)?;
        let state = self.load(&dir)?;
        let status = self.status(&state);
        if status == Status::Stopped {
            return Err(Error::WrongState {
                id: id.to_owned(),
                status,
                action: "events",
                expected: "running",
            });
        }
        Ok(self.cgroup(&state.cgroup_path)?.stats()?)
    }

    /// The saved state of a container, for `exec` and tools that need the full config.
    pub fn saved_state(&self, id: &str) -> Result<(PersistedState, Status)> {
        let dir = ContainerDir::open(&self.root, id, false)?;
        let state = self.load(&dir)?;
        let status = self.status(&state);
        Ok((state, status))
    }

    pub(crate) fn cgroup_of(&self, state: &PersistedState) -> Result<Box<dyn Manager>> {
        self.cgroup(&state.cgroup_path)
    }
}

/// Polls one container for `events`, without re-reading its state each time.
pub struct Watcher {
    state: PersistedState,
    cgroup: Box<dyn Manager>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("id", &self.state.id).finish()
    }
}

impl Watcher {
    /// False once the container's init has exited.
    pub fn running(&self) -> bool {
        init_alive(&self.state)
    }

    pub fn stats(&self) -> Result<berth_cgroups::Stats> {
        Ok(self.cgroup.stats()?)
    }

    pub fn oom_kills(&self) -> Result<u64> {
        Ok(self.cgroup.oom_kills()?)
    }
}

/// True when the saved init pid still names the same process and it has not exited.
pub(crate) fn init_alive(state: &PersistedState) -> bool {
    let pid = Pid::from_raw(state.pid);
    match berth_sys::process::process_start_time(pid) {
        Some(start) if state.pid_start_time == 0 || start == state.pid_start_time => {
            !matches!(berth_sys::process::process_state(pid), Some('Z' | 'X') | None)
        }
        _ => false,
    }
}

pub(crate) fn hook_state_json(state: &PersistedState, status: Status) -> Vec<u8> {
    serde_json::to_vec(&HookState {
        oci_version: crate::state::OCI_VERSION,
        id: &state.id,
        status,
        pid: (state.pid > 0 && status != Status::Stopped).then_some(state.pid),
        bundle: &state.bundle,
        annotations: &state.annotations,
    })
    .unwrap_or_default()
}

/// Overlays the fields `update` sets onto the saved resources.
fn merge_resources(
    saved: Option<LinuxResources>,
    update: &LinuxResources,
) -> Result<LinuxResources> {
    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
                for (key, value) in from {
                    merge(into.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (slot, value) => *slot = value,
        }
    }
    let to_value = |r: &LinuxResources| {
        serde_json::to_value(r).map_err(|err| invalid("resources", err.to_string()))
    };
    let mut base = match &saved {
        Some(saved) => to_value(saved)?,
        None => serde_json::json!({}),
    };
    merge(&mut base, to_value(update)?);
    serde_json::from_value(base).map_err(|err| invalid("resources", err.to_string()))
}

/// The first stage's part of `create`: id mappings, then the init's pid.
fn drive_stage_one(prepared: &Prepared, channel: &Channel, stage_one: Pid) -> Result<i32> {
    if matches!(prepared.namespaces.user, plan::UserNamespace::New { .. }) {
        let mapped = channel
            .expect(&Message::MapIds, "creating the user namespace")
            .and_then(|()| init::write_id_mappings(stage_one, &prepared.namespaces));
        if let Err(err) = mapped {
            let _ = kill(stage_one, Signal::SIGKILL);
            return Err(err);
        }
        channel.send(&Message::Go)?;
    }
    match channel.recv()? {
        Some(Message::Pid(pid)) => Ok(pid),
        Some(Message::Error(text)) => Err(Error::Setup(text)),
        other => {
            Err(Error::Init(format!("the container's first stage ended unexpectedly ({other:?})")))
        }
    }
}

/// The process `create` forked: the init itself, or a first stage that forks it.
enum Spawned {
    Init(Pid),
    StageOne(Pid),
}

/// Everything computed from the spec before anything is touched, so that a bad config
/// fails before a directory, cgroup or process exists.
pub(crate) struct Prepared {
    pub rootfs: PathBuf,
    pub namespaces: plan::NamespacePlan,
    pub mounts: Vec<plan::MountStep>,
    pub devices: Vec<plan::DeviceNode>,
    pub cgroup_path: PathBuf,
    pub resources: LinuxResources,
    pub seccomp: Option<crate::seccomp::Filter>,
    pub seccomp_listener_path: Option<PathBuf>,
    pub terminal: bool,
}

impl Prepared {
    fn new(
        spec: &Spec,
        bundle: &Path,
        options: &CreateOptions,
        has_console: bool,
        systemd_cgroup: bool,
    ) -> Result<Prepared> {
        crate::state::validate_id(&options.id)?;
        let rootfs = crate::spec::rootfs_path(spec, bundle)?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("process", "is missing; a container needs a process to run"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid("process.args", "is empty; give the program to run"));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(
                "process.cwd",
                format!("{} is not an absolute path", process.cwd().display()),
            ));
        }
        let terminal = process.terminal() == Some(true);
        if terminal && options.console_socket.is_none() && !has_console {
            return Err(invalid("process.terminal", "is true, so --console-socket is needed to receive the pty (or set terminal to false)"));
        }
        let linux = spec.linux().as_ref().ok_or_else(|| invalid("linux", "is missing"))?;
        let namespaces = plan::plan_namespaces(spec)?;
        let mounts = plan::plan_mounts(spec.mounts().as_deref().unwrap_or_default())?;
        let devices = plan::plan_devices(linux.devices().as_deref().unwrap_or_default())?;
        for kind in [
            HookKind::Prestart,
            HookKind::CreateRuntime,
            HookKind::CreateContainer,
            HookKind::StartContainer,
            HookKind::Poststart,
            HookKind::Poststop,
        ] {
            for hook in kind.of(spec) {
                plan::hook_timeout(hook.timeout())?;
                if !hook.path().is_absolute() {
                    return Err(invalid(
                        format!("hooks.{}", kind.name()),
                        format!("path {} is not absolute", hook.path().display()),
                    ));
                }
            }
        }
        let no_new_privileges = process.no_new_privileges() == Some(true);
        let seccomp = linux
            .seccomp()
            .as_ref()
            .map(|profile| crate::seccomp::compile(profile, no_new_privileges))
            .transpose()?;
        let seccomp_listener_path =
            linux.seccomp().as_ref().and_then(|p| p.listener_path().clone());
        if seccomp.as_ref().is_some_and(|f| f.notifies) && seccomp_listener_path.is_none() {
            return Err(invalid(
                "linux.seccomp.listenerPath",
                "SCMP_ACT_NOTIFY needs a listener path to send the notify descriptor to",
            ));
        }
        let cgroup_path = berth_cgroups::cgroup_path(
            linux.cgroups_path().as_deref(),
            &options.id,
            systemd_cgroup,
        )?;
        let mut resources = linux.resources().clone().unwrap_or_default();
        let mut rules = resources.devices().clone().unwrap_or_default();
        if !rules.is_empty() {
            // As runc: the standard devices stay usable; what else the spec creates is
            // opened only as far as the spec's own rules allow (`docker run --device X:r`).
            rules.extend(plan::allowed_device_rules(&plan::default_devices()));
            resources.set_devices(Some(rules));
        }
        // Parts of the spec berth does not implement are refused, not silently ignored.
        if linux.intel_rdt().is_some() {
            return Err(invalid(
                "linux.intelRdt",
                "Intel RDT is not supported by berth; remove it",
            ));
        }
        if linux.memory_policy().is_some() {
            return Err(invalid(
                "linux.memoryPolicy",
                "NUMA memory policies are not supported by berth; remove it",
            ));
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(invalid(
                "linux.netDevices",
                "moving network devices into the container is not supported by berth",
            ));
        }
        for (index, mount) in spec.mounts().iter().flatten().enumerate() {
            if mount.uid_mappings().is_some() || mount.gid_mappings().is_some() {
                return Err(invalid(
                    format!("mounts[{index}].uidMappings"),
                    "id-mapped mounts are not supported by berth",
                ));
            }
        }
        if options.preserve_fds < 0 {
            return Err(invalid("--preserve-fds", "must not be negative"));
        }
        Ok(Prepared {
            rootfs,
            namespaces,
            mounts,
            devices,
            cgroup_path,
            resources,
            seccomp,
            seccomp_listener_path,
            terminal,
        })
    }
}

/// Unmounts what the init of a container without a mount namespace of its own mounted in
/// the host's (see `plan::check_without_mount_namespace`); nothing otherwise.
fn undo_host_mounts(namespaces: &plan::NamespacePlan, spec: &Spec, rootfs: &Path) -> Result<()> {
    if namespaces.has(berth_sys::nix::sched::CloneFlags::CLONE_NEWNS) {
        return Ok(());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("read", "/proc/self/mountinfo"))?;
    for point in plan::host_mounts_of(&mountinfo, rootfs, spec) {
        match berth_sys::nix::mount::umount2(&point, berth_sys::nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(err) => return Err(sys(format!("unmount {}", point.display()))(err)),
        }
    }
    Ok(())
}
