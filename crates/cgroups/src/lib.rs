//! cgroup management for berth containers, on cgroup v1, hybrid and v2 hosts.
//!
//! The runtime (and later the node agent) asks for a [`Manager`] for one cgroup path and
//! uses it to place processes, apply `linux.resources`, freeze, list, signal and remove.
//! [`Layout::detect`] reads the host's mounts once; a hybrid host (v1 controllers plus a
//! cgroup2 tree without controllers) is driven as v1, with processes also placed in the
//! cgroup2 tree so that tools reading it see them.
//!
//! This crate knows nothing of containers, bundles or namespaces: its inputs are a cgroup
//! path, pids and the OCI `LinuxResources` document.

mod devices;
mod fs;
mod layout;
mod path;
mod stats;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_sys::nix::sys::signal::Signal;
use berth_sys::nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

pub use devices::DeviceRule;
pub use layout::{Hierarchy, Layout};
pub use path::cgroup_path;
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, HugetlbStats, MemoryData, MemoryStats, PidsStats,
    Stats, Throttling,
};

/// Errors of cgroup management; each names the path or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cgroup hierarchy is mounted (neither cgroup v1 controllers nor cgroup2 in /proc/self/mountinfo)")]
    NoHierarchy,
    #[error("cgroups path {path:?} leaves the cgroup hierarchy; give a path without '..'")]
    PathEscapes { path: String },
    #[error("invalid systemd cgroups path {path:?}: expected \"slice:prefix:name\", e.g. \"system.slice:berth:abc\"")]
    BadSystemdPath { path: String },
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid value for linux.resources.{field}: {reason}")]
    InvalidValue { field: &'static str, reason: String },
    #[error("linux.resources.{field} needs the {controller} cgroup controller, which this host does not have")]
    MissingController { field: &'static str, controller: &'static str },
    #[error("failed to send {signal} to process {pid} of the cgroup")]
    Signal {
        signal: Signal,
        pid: Pid,
        #[source]
        source: berth_sys::Errno,
    },
    #[error("cgroup {path} still holds processes after {attempts} attempts to empty it")]
    Busy { path: PathBuf, attempts: u32 },
    #[error("failed to {op} for cgroup v2 device control{}", if detail.is_empty() { String::new() } else { format!(" (verifier: {detail})") })]
    Bpf {
        op: &'static str,
        #[source]
        source: berth_sys::Errno,
        detail: String,
    },
    #[error("cgroup {path} did not reach the {state:?} freezer state")]
    FreezeTimeout { path: PathBuf, state: FreezerState },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The state of a cgroup's freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    Thawed,
    Freezing,
    Frozen,
}

/// One cgroup of a container, on whatever hierarchy the host has.
///
/// Two implementations exist (v1, which also drives hybrid hosts, and v2); the runtime only
/// sees this trait, and tests may pass their own.
pub trait Manager: Send + Sync {
    /// The cgroup's path relative to the hierarchy root, e.g. `/berth/abc`.
    fn path(&self) -> &Path;
    /// Creates the cgroup (and its parents) without placing any process.
    fn create(&self) -> Result<()>;
    /// Moves a process into the cgroup.
    fn add_process(&self, pid: Pid) -> Result<()>;
    /// Moves a process into a sub-cgroup (`exec --cgroup`); `None` is the cgroup itself.
    fn add_process_to(&self, pid: Pid, sub: Option<&str>) -> Result<()> {
        let _ = sub;
        self.add_process(pid)
    }
    /// Writes every limit `resources` sets; fields left out are not touched.
    fn apply(&self, resources: &LinuxResources) -> Result<()>;
    /// Freezes or thaws every process in the cgroup and waits until it is done.
    fn freeze(&self, state: FreezerState) -> Result<()>;
    /// The current freezer state.
    fn freezer_state(&self) -> Result<FreezerState>;
    /// Every process in the cgroup and its descendants.
    fn pids(&self) -> Result<Vec<Pid>>;
    /// Sends `signal` to every process in the cgroup, without races with forks.
    fn kill_all(&self, signal: Signal) -> Result<()>;
    /// Removes the cgroup, killing what still runs in it first.
    fn destroy(&self) -> Result<()>;
    /// Usage figures, in runc's `events --stats` shape.
    fn stats(&self) -> Result<Stats>;
    /// How many processes the kernel's OOM killer has killed in the cgroup so far; cheap
    /// enough to poll.
    fn oom_kills(&self) -> Result<u64>;
    /// True when the cgroup directory exists.
    fn exists(&self) -> bool;
    /// How a process can enter this cgroup (or its sub-cgroup `sub`) by itself; see
    /// [`SelfJoin`].
    fn self_join(&self, sub: Option<&str>) -> Result<SelfJoin>;
    /// The hierarchies to show inside the container for a `cgroup` mount: pairs of
    /// (subdirectory of `/sys/fs/cgroup` in the container, host directory of this cgroup).
    fn mount_sources(&self) -> Vec<(PathBuf, PathBuf)>;
}

/// How a single-threaded process enters a cgroup without migrating a whole thread group.
///
/// Writing a pid to `cgroup.procs` takes a global lock whose write side waits for an RCU
/// grace period: several milliseconds per container start. A process that moves only its own
/// thread (`0` into v1 `tasks`) skips that lock, and a child created with
/// `clone3(CLONE_INTO_CGROUP)` starts in its cgroup2 cgroup without any migration. The
/// runtime forks into `clone_into` and has the child call [`SelfJoin::join_current_thread`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfJoin {
    /// A cgroup2 directory to create the process in, if the host has one.
    pub clone_into: Option<PathBuf>,
    /// v1 `tasks` files the process writes `0` to.
    pub thread_files: Vec<PathBuf>,
}

impl SelfJoin {
    /// Moves the calling thread into every v1 hierarchy. The process must be single-threaded:
    /// other threads would stay behind.
    pub fn join_current_thread(&self) -> Result<()> {
        for file in &self.thread_files {
            std::fs::write(file, "0").map_err(|source| Error::Io {
                op: "join",
                path: file.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// A manager for `path` on the host's layout.
pub fn manager(layout: &Arc<Layout>, path: &Path) -> Box<dyn Manager> {
    match layout.as_ref() {
        Layout::V2 { .. } => Box::new(v2::V2Cgroup::new(layout.clone(), path)),
        Layout::V1 { .. } => Box::new(v1::V1Cgroup::new(layout.clone(), path)),
    }
}
