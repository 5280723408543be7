//! The engine: containers made from images, the way `docker run` makes them, without a daemon.
//!
//! Every command works on the state under the berth root and takes per-container locks, so
//! commands can run concurrently. A small monitor process per running container (berth's own,
//! like Podman's conmon) holds the container's stdio, writes its log, serves `attach`, reaps
//! it, records its exit code and tears down what the container used.
//!
//! Layout under `<root>`:
//! ```text
//! containers/<id>/        container.json, config.json (the OCI bundle), rootfs/ (overlay),
//!                         upper/ work/ init/, hosts hostname resolv.conf, container.log,
//!                         monitor.log, lock
//! containers/names/<name> symlink to the id: names are taken atomically
//! runtime/                the OCI runtime's state (berth-runtime)
//! volumes/<name>/_data    named and anonymous volumes (volume.json beside)
//! networks/               network definitions, IP reservations, per-container netns
//! ```

pub mod attach;
pub mod container;
pub mod copy;
pub mod dns;
pub mod events;
pub mod health;
pub mod monitor;
pub mod network;
pub mod ops;
pub mod options;
pub mod ports;
pub mod spec;
pub mod volume;

/// Container logs in the CRI format live with the neutral supervision code.
pub use berth_task::{logs, user};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth_image::ImageStore;
use berth_runtime::Runtime;

pub use container::{Record, State, Status};
pub use options::{MountSpec, PortSpec, RestartPolicy, RunOptions};

/// What went wrong, said so that the user knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    /// A path that is not in a container's filesystem.
    #[error("{0}")]
    NoSuchPath(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("container {id} is {status}: {hint}")]
    WrongState { id: String, status: String, hint: String },
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {op}")]
    Sys {
        op: String,
        #[source]
        source: berth_sys::Errno,
    },
    #[error(transparent)]
    Runtime(#[from] berth_runtime::Error),
    #[error(transparent)]
    Image(#[from] berth_image::Error),
    #[error(transparent)]
    Cgroups(#[from] berth_cgroups::Error),
    #[error(transparent)]
    Task(berth_task::Error),
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Other(String),
}

impl From<berth_task::Error> for Error {
    fn from(err: berth_task::Error) -> Error {
        match err {
            berth_task::Error::Invalid { what, reason } => Error::Invalid { what, reason },
            other => Error::Task(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn sys(op: impl Into<String>) -> impl FnOnce(berth_sys::Errno) -> Error {
    let op = op.into();
    move |source| Error::Sys { op, source }
}

pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid { what: what.into(), reason: reason.into() }
}

/// The engine over one berth root.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    runtime: Runtime,
    images: OnceLock<ImageStore>,
}

impl Engine {
    pub fn open(root: &Path) -> Result<Engine> {
        let containers = root.join("containers");
        std::fs::create_dir_all(containers.join("names")).map_err(io("create", &containers))?;
        Ok(Engine {
            root: root.to_owned(),
            runtime: Runtime::new(root.join("runtime"), false),
            images: OnceLock::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn images(&self) -> Result<&ImageStore> {
        if let Some(store) = self.images.get() {
            return Ok(store);
        }
        let store = ImageStore::open(&self.root)?;
        Ok(self.images.get_or_init(|| store))
    }

    /// Records an event about a container, with Docker's attributes (its name, image and
    /// labels) and `extra` ones (`exitCode`, `signal`).
    pub fn container_event(
        &self,
        action: &str,
        record: &container::Record,
        extra: &[(&str, String)],
    ) {
        let mut attributes = record.options.labels.clone();
        attributes.insert("name".into(), record.name.clone());
        attributes.insert("image".into(), record.image.clone());
        for (k, v) in extra {
            attributes.insert((*k).to_owned(), v.clone());
        }
        events::record(
            &self.root,
            &events::Event::new("container", action, &record.id, attributes),
        );
    }

    /// Records an event about something other than a container.
    pub fn event(&self, kind: &str, action: &str, id: &str, attributes: &[(&str, String)]) {
        let attributes = attributes.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        events::record(&self.root, &events::Event::new(kind, action, id, attributes));
    }

    pub(crate) fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
}

/// A random 64-hex-digit id, as Docker's container ids are.
pub fn random_id() -> Result<String> {
    berth_stdx::random::hex(32).map_err(io("make", "a random id"))
}

/// Now, as RFC 3339 with nanoseconds.
pub fn now() -> String {
    berth_stdx::time::format_rfc3339_nanos(std::time::SystemTime::now())
}

/// Writes a record atomically and durably, readable by its owner only.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    berth_stdx::fs::write_atomic(path, data, 0o600).map_err(io("write", path))
}
