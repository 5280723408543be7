//! The runtime's error type: every variant names what failed and, where it can, what to do.

use std::path::PathBuf;

use berth_sys::Errno;

use crate::state::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {id:?} does not exist (no state in {root})")]
    NotFound { id: String, root: PathBuf },
    #[error("container {id:?} already exists; pick another id or remove it with `delete {id}`")]
    Exists { id: String },
    #[error("invalid container id {id:?}: use letters, digits, '_', '+', '-' and '.' only")]
    InvalidId { id: String },
    #[error("cannot read {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}: at {field}: {message}")]
    InvalidConfig { path: PathBuf, field: String, message: String },
    #[error("invalid configuration: {field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    #[error("container {id:?} is {status}; {action} needs a {expected} container")]
    WrongState { id: String, status: Status, action: &'static str, expected: &'static str },
    #[error(transparent)]
    Cgroups(#[from] berth_cgroups::Error),
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
        source: Errno,
    },
    /// A failure inside the container's processes, already worded for the user.
    #[error("{0}")]
    Init(String),
    /// What a container process reported back to the runtime command.
    #[error("container process setup failed: {0}")]
    Setup(String),
    #[error("{kind} hook {path} failed: {reason}")]
    Hook { kind: &'static str, path: PathBuf, reason: String },
    #[error("invalid seccomp profile: {0}")]
    Seccomp(String),
    #[error("invalid state file {path}: {message}; the container cannot be managed, remove {path} by hand")]
    CorruptState { path: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for wrapping a syscall error with what was being done.
pub(crate) fn sys(op: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let op = op.into();
    move |source| Error::Sys { op, source }
}

/// Shorthand for wrapping an I/O error with the operation and path.
pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidSpec { field: field.into(), reason: reason.into() }
}
