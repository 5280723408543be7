//! Container records on disk: `containers/<id>/container.json`, names, locks and lookup.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::options::RunOptions;
use crate::{io, write_atomic, Engine, Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Dead => "dead",
        };
        f.write_str(name)
    }
}

/// The run state, as `docker inspect` shows it under `State`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub status: Status,
    /// The container's init, as the host sees it.
    pub pid: i32,
    /// The monitor holding the container; 0 when none runs.
    pub monitor_pid: i32,
    /// Start time of the monitor process (guards against a reused pid).
    pub monitor_start_time: u64,
    pub started_at: String,
    pub finished_at: String,
    pub exit_code: i32,
    pub oom_killed: bool,
    pub error: String,
    pub restart_count: u32,
    /// Set by `stop`/`kill`: the restart policy does not apply.
    pub stopped_by_user: bool,
    /// The health check's state, when the container has one.
    pub health: Option<Health>,
}

/// A container's health check, from the image's HEALTHCHECK and the `--health-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    /// `["CMD", prog, args...]` or `["CMD-SHELL", "command"]`.
    pub test: Vec<String>,
    /// Nanoseconds, as Docker's config writes them.
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub retries: u32,
}

/// `State.Health` as Docker shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// starting, healthy or unhealthy.
    pub status: String,
    pub failing_streak: u32,
    /// The last five probes.
    pub log: Vec<HealthProbe>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthProbe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// A published port once bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// How the container is attached to a network, once started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkState {
    pub network: String,
    pub ip: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac: String,
    pub ports: Vec<PortBinding>,
    /// The namespace file the container joins.
    pub netns: String,
    /// The interface in the container (empty: `eth0`, the first network's).
    pub ifname: String,
}

impl NetworkState {
    pub fn interface(&self) -> &str {
        if self.ifname.is_empty() {
            "eth0"
        } else {
            &self.ifname
        }
    }
}

/// A mount as made for this container (volumes resolved to their directories).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub kind: String,
    /// Volume name, if a volume.
    pub name: String,
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    pub anonymous: bool,
    pub options: Vec<String>,
}

/// Everything berth knows of a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    /// The image's id (its config digest).
    pub image_id: String,
    /// The program and its arguments, after entrypoint and cmd were combined.
    pub path: String,
    pub args: Vec<String>,
    pub hostname: String,
    pub options: RunOptions,
    pub state: State,
    pub mounts: Vec<MountRecord>,
    pub network: Option<NetworkState>,
    /// Networks joined beside the first (`network connect`), while it runs.
    pub extra_networks: Vec<NetworkState>,
    /// The image's exposed ports (for `-P`).
    pub exposed_ports: Vec<String>,
    pub stop_signal: String,
    /// The health check in force, if any.
    pub healthcheck: Option<HealthCheck>,
}

impl Record {
    /// Every network the running container is on: its first, then those connected later.
    pub fn networks(&self) -> impl Iterator<Item = &NetworkState> {
        self.network.iter().chain(self.extra_networks.iter())
    }

    /// Whether the container is (or, once started, will be) on the named network.
    pub fn uses_network(&self, name: &str) -> bool {
        self.options.network == name
            || self.options.connected.iter().any(|c| c.network == name)
            || self.networks().any(|n| n.network == name)
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// A container's directory, locked.
#[derive(Debug)]
pub struct Locked {
    pub dir: PathBuf,
    pub record: Record,
    /// The record's definition (see `definition`) as last read or written: while the lock
    /// is held nobody else writes the file, so a save can tell what changed without
    /// reading it back.
    stored: std::cell::RefCell<Option<Record>>,
    _lock: File,
}

impl Locked {
    fn new(dir: PathBuf, record: Record, lock: File, stored: bool) -> Locked {
        let stored = std::cell::RefCell::new(stored.then(|| definition(&record)));
        Locked { dir, record, stored, _lock: lock }
    }

    /// Writes the record. What the user made (the container, its name, options, mounts)
    /// is flushed to disk before this returns; a save that changes only what describes
    /// its processes (run state, network attachments) is replaced atomically without the
    /// flush, as those end with a power cut too (and the next `ps` finds the monitor
    /// gone).
    pub fn save(&self) -> Result<()> {
        let data =
            serde_json::to_vec_pretty(&self.record).map_err(|e| Error::Other(e.to_string()))?;
        let path = self.dir.join("container.json");
        let now = definition(&self.record);
        if self.stored.borrow().as_ref() == Some(&now) {
            berth_stdx::fs::write_atomic_volatile(&path, &data, 0o600)
                .map_err(io("write", &path))?;
        } else {
            write_atomic(&path, &data)?;
        }
        *self.stored.borrow_mut() = Some(now);
        Ok(())
    }
}

/// A record without what describes its processes.
fn definition(record: &Record) -> Record {
    Record { state: State::default(), network: None, extra_networks: Vec::new(), ..record.clone() }
}

pub(crate) fn load(dir: &Path) -> Result<Record> {
    let path = dir.join("container.json");
    let data = std::fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&data).map_err(|e| {
        Error::Other(format!(
            "{} is corrupt ({e}); remove the container with `berth rm -f` or delete the directory",
            path.display()
        ))
    })
}

fn lock_file(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    file.lock().map_err(io("lock", &path))?;
    Ok(file)
}

impl Engine {
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    fn names_dir(&self) -> PathBuf {
        self.containers_dir().join("names")
    }

    /// Takes `name` for container `id`, atomically: a symlink `names/<name>` → `<id>`.
    /// A name left by a container that no longer exists is taken over.
    pub(crate) fn reserve_name(&self, name: &str, id: &str) -> Result<()> {
        let link = self.names_dir().join(name);
        for _ in 0..2 {
            match std::os::unix::fs::symlink(id, &link) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_link(&link).ok();
                    let alive = holder.as_ref().is_some_and(|h| {
                        self.container_dir(&h.to_string_lossy()).join("container.json").exists()
                            || self.container_dir(&h.to_string_lossy()).exists()
                    });
                    if alive {
                        let holder =
                            holder.map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
                        return Err(Error::Conflict(format!(
                            "the container name \"/{name}\" is already in use by container \"{holder}\"; remove (or rename) that container to be able to reuse the name"
                        )));
                    }
                    let _ = std::fs::remove_file(&link);
                }
                Err(err) => return Err(io("create name link", &link)(err)),
            }
        }
        Err(Error::Conflict(format!(
            "the container name {name:?} is being taken by another command"
        )))
    }

    pub(crate) fn release_name(&self, name: &str, id: &str) {
        let link = self.names_dir().join(name);
        if std::fs::read_link(&link).is_ok_and(|h| h.as_os_str() == id) {
            let _ = std::fs::remove_file(&link);
        }
    }

    /// Finds a container by full id, name or unique id prefix.
    pub fn resolve_id(&self, name_or_id: &str) -> Result<String> {
        let wanted = name_or_id.trim_start_matches('/');
        if wanted.is_empty() || wanted.contains('/') || wanted == "names" || wanted.starts_with('.')
        {
            return Err(Error::NoSuchContainer(name_or_id.to_owned()));
        }
        if self.container_dir(wanted).join("container.json").exists() {
            return Ok(wanted.to_owned());
        }
        if let Ok(target) = std::fs::read_link(self.names_dir().join(wanted)) {
            let id = target.to_string_lossy().into_owned();
            if self.container_dir(&id).join("container.json").exists() {
                return Ok(id);
            }
        }
        let mut found = Vec::new();
        for id in self.ids()? {
            if id.starts_with(wanted) {
                found.push(id);
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::NoSuchContainer(name_or_id.to_owned())),
            _ => Err(Error::Conflict(format!(
                "{name_or_id:?} matches {} containers; give more of the id",
                found.len()
            ))),
        }
    }

    /// Ids of every container with a record.
    pub fn ids(&self) -> Result<Vec<String>> {
        let dir = self.containers_dir();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let entry = entry.map_err(io("read", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && entry.path().join("container.json").exists() {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    /// Locks a container's directory and reads its record, repairing what a killed monitor
    /// or command left behind.
    pub fn lock(&self, name_or_id: &str) -> Result<Locked> {
        let id = self.resolve_id(name_or_id)?;
        let dir = self.container_dir(&id);
        let lock = lock_file(&dir)?;
        let record = load(&dir).map_err(|err| match err {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::NoSuchContainer(name_or_id.to_owned())
            }
            other => other,
        })?;
        let mut locked = Locked::new(dir, record, lock, true);
        self.reconcile(&mut locked)?;
        Ok(locked)
    }

    /// Reads a record without locking (for listings); repairs nothing.
    pub fn peek(&self, id: &str) -> Result<Record> {
        load(&self.container_dir(id))
    }

    /// Every record as stored, without locking or repair (for code already holding locks).
    pub(crate) fn peek_all(&self) -> Vec<Record> {
        self.ids().unwrap_or_default().iter().filter_map(|id| self.peek(id).ok()).collect()
    }

    /// Makes a new container directory with its lock held.
    pub(crate) fn new_container(&self, record: Record) -> Result<Locked> {
        let dir = self.container_dir(&record.id);
        std::fs::create_dir(&dir).map_err(io("create", &dir))?;
        let lock = lock_file(&dir)?;
        let locked = Locked::new(dir, record, lock, false);
        Ok(locked)
    }

    /// True while the container's monitor process lives.
    pub(crate) fn monitor_alive(state: &State) -> bool {
        if state.monitor_pid <= 0 {
            return false;
        }
        let pid = berth_sys::nix::unistd::Pid::from_raw(state.monitor_pid);
        match berth_sys::process::process_start_time(pid) {
            Some(start) => state.monitor_start_time == 0 || start == state.monitor_start_time,
            None => false,
        }
    }

    /// A record that says running while no monitor lives was left by a killed monitor:
    /// if the container's process is gone too, it has exited; clean up after it.
    fn reconcile(&self, locked: &mut Locked) -> Result<()> {
        let state = &locked.record.state;
        let active = matches!(state.status, Status::Running | Status::Paused | Status::Restarting);
        if !active || Self::monitor_alive(state) {
            return Ok(());
        }
        let runtime_status = self.runtime.state(&locked.record.id).ok().map(|s| s.status);
        let alive = matches!(
            runtime_status,
            Some(
                berth_runtime::Status::Running
                    | berth_runtime::Status::Paused
                    | berth_runtime::Status::Created
            )
        );
        if alive {
            // The container runs on without its monitor: its output is lost, but stop, kill
            // and rm still work through the runtime.
            if locked.record.state.error.is_empty() {
                locked.record.state.error =
                    "the container's monitor died; output is no longer logged".into();
                locked.save()?;
            }
            return Ok(());
        }
        tracing::warn!(id = %locked.record.id, "the monitor died; recording the container as exited");
        let record = &mut locked.record;
        record.state.status = Status::Exited;
        record.state.monitor_pid = 0;
        record.state.pid = 0;
        if record.state.finished_at.is_empty() || record.state.finished_at < record.state.started_at
        {
            record.state.finished_at = crate::now();
        }
        record.state.exit_code = 255;
        record.state.error = "the container's monitor died; the exit code is unknown".into();
        locked.save()?;
        self.release_resources(locked);
        Ok(())
    }
}
