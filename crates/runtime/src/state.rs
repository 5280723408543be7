//! The state directory of each container under the runtime root, and its locking.
//!
//! `<root>/<id>/` holds `state.json` (what the runtime needs to manage the container after
//! the command that created it has exited) and `start.sock`, the socket the container's init
//! waits on until `start`. Commands hold a `flock` on the directory for their whole run, so
//! two commands on one container never interleave; `delete` removes the directory while
//! holding the lock, and a command that was waiting finds it gone.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};

pub const STATE_FILE: &str = "state.json";
pub const START_SOCKET: &str = "start.sock";
/// The runtime-spec version berth implements, reported in `state` and to hooks.
pub const OCI_VERSION: &str = "1.2.0";
const LOCK_FILE: &str = ".lock";
const STATE_VERSION: u32 = 1;

/// The lifecycle states of the runtime spec, plus `paused`, as runc reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime keeps about a container between commands (versioned, on disk).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The init process; 0 while it is not known yet.
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot): a recycled pid has another one.
    pub pid_start_time: u64,
    /// RFC 3339 time of creation.
    pub created: String,
    pub owner_uid: u32,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The cgroup path inside the hierarchies.
    pub cgroup_path: PathBuf,
    /// The configuration the container was created from.
    pub config: Spec,
}

impl PersistedState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        cgroup_path: &Path,
        config: Spec,
        created: String,
    ) -> PersistedState {
        let annotations = config.annotations().clone().unwrap_or_default().into_iter().collect();
        PersistedState {
            version: STATE_VERSION,
            id: id.to_owned(),
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            pid: 0,
            pid_start_time: 0,
            created,
            owner_uid: berth_sys::nix::unistd::geteuid().as_raw(),
            annotations,
            cgroup_path: cgroup_path.to_path_buf(),
            config,
        }
    }
}

/// The state as the runtime spec (and `runc state`) shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
    pub owner: String,
}

/// The state document hooks read on their stdin (the spec's `state` schema).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a Path,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: &'a BTreeMap<String, String>,
}

/// Container ids are path components under the root: restrict them as runc does.
pub fn validate_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidId { id: id.to_owned() })
    }
}

/// A container's state directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
    _lock: File,
}

fn lock(path: &Path, create: bool, exclusive: bool) -> std::io::Result<File> {
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(create).mode(0o600).open(path)?;
    berth_sys::process::lock_file(&file, exclusive).map_err(std::io::Error::from)?;
    Ok(file)
}

impl ContainerDir {
    /// Creates the directory of a new container; fails if the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<ContainerDir> {
        validate_id(id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(io("create", root))?;
        let path = root.join(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists { id: id.to_owned() })
            }
            Err(err) => return Err(io("create", &path)(err)),
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = lock(&lock_path, true, true).map_err(io("lock", &lock_path))?;
        Ok(ContainerDir { id: id.to_owned(), path, _lock: lock })
    }

    /// Opens and locks the directory of an existing container.
    pub fn open(root: &Path, id: &str, exclusive: bool) -> Result<ContainerDir> {
        validate_id(id)?;
        let path = root.join(id);
        let not_found = || Error::NotFound { id: id.to_owned(), root: root.to_path_buf() };
        let lock_path = path.join(LOCK_FILE);
        let lock = match lock(&lock_path, false, exclusive) {
            Ok(lock) => lock,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // A directory without a lock file is a creation that died at its first step.
                return if path.is_dir() {
                    Err(Error::CorruptState { path: path.clone(), message: "no lock file".into() })
                } else {
                    Err(not_found())
                };
            }
            Err(err) => return Err(io("lock", &lock_path)(err)),
        };
        // The container may have been deleted while we waited for the lock.
        let held = lock.metadata().map_err(io("stat", &lock_path))?;
        if held.nlink() == 0 {
            return Err(not_found());
        }
        Ok(ContainerDir { id: id.to_owned(), path, _lock: lock })
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    pub fn start_socket(&self) -> PathBuf {
        self.path.join(START_SOCKET)
    }

    /// Runs `f` with a path to the start socket short enough for `sockaddr_un` (108 bytes)
    /// whatever the root's length: through `/proc/self/fd/N/` of the directory.
    pub fn with_socket_path<T>(
        &self,
        f: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let full = self.start_socket();
        if full.as_os_str().len() < 100 {
            return f(&full);
        }
        let dir = File::open(&self.path)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}/{START_SOCKET}", dir.as_raw_fd()));
        f(&short)
    }

    /// The saved state; `None` while `create` has not written it yet.
    pub fn load(&self) -> Result<Option<PersistedState>> {
        read_state(&self.state_path())
    }

    /// Writes the state atomically: a crash leaves the old or the new file, never half. Not
    /// flushed to disk: it describes processes, which a power cut ends too (runc keeps its
    /// state in /run, on tmpfs, for the same reason).
    pub fn save(&self, state: &PersistedState) -> Result<()> {
        let path = self.state_path();
        let bytes = serde_json::to_vec(state)
            .map_err(|err| Error::CorruptState { path: path.clone(), message: err.to_string() })?;
        berth_stdx::fs::write_atomic_volatile(&path, &bytes, 0o600).map_err(io("write", &path))
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.path).map_err(io("remove", &self.path))
    }
}

pub fn read_state(path: &Path) -> Result<Option<PersistedState>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io("read", path)(err)),
    };
    let state: PersistedState = serde_json::from_slice(&bytes).map_err(|err| {
        Error::CorruptState { path: path.to_path_buf(), message: err.to_string() }
    })?;
    if state.version != STATE_VERSION {
        return Err(Error::CorruptState {
            path: path.to_path_buf(),
            message: format!("unknown state version {}", state.version),
        });
    }
    Ok(Some(state))
}

/// Writes a pid file atomically, as runc does (containerd reads it right after `create`).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    berth_stdx::fs::write_atomic_volatile(path, pid.to_string().as_bytes(), 0o644)
        .map_err(io("write", path))
}

/// Formats a time as Go's `RFC3339Nano` in UTC, which runc prints.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    berth_stdx::time::format_rfc3339_nanos(time)
}

/// The user name of a uid from the host's `/etc/passwd`, or the number.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn ids() {
        for good in ["abc", "a.b_c-d+1", "x"] {
            validate_id(good).expect(good);
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_matches_go() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let time = UNIX_EPOCH + Duration::new(1_795_000_000, 205_768_320);
        assert_eq!(rfc3339(time), "2026-11-18T11:06:40.20576832Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn create_twice_is_refused_and_open_sees_deletion() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ContainerDir::create(root.path(), "one").expect("create");
        assert!(matches!(ContainerDir::create(root.path(), "one"), Err(Error::Exists { .. })));
        assert!(dir.load().expect("load").is_none());
        dir.remove().expect("remove");
        assert!(matches!(
            ContainerDir::open(root.path(), "one", false),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn state_round_trips_and_bad_versions_are_reported() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ContainerDir::create(root.path(), "two").expect("create");
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.2.0"}"#).expect("spec");
        let mut state = PersistedState::new(
            "two",
            Path::new("/b"),
            Path::new("/b/rootfs"),
            Path::new("/two"),
            spec,
            "now".into(),
        );
        state.pid = 42;
        dir.save(&state).expect("save");
        assert_eq!(dir.load().expect("load").expect("some").pid, 42);
        std::fs::write(dir.state_path(), br#"{"version":99}"#).expect("write");
        assert!(matches!(dir.load(), Err(Error::CorruptState { .. })));
    }
}
