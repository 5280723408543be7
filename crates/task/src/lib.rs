//! Container supervision that knows nothing of Docker's names or of Kubernetes: a task is
//! an OCI bundle, a runtime state root and a log path. `shim` starts a supervisor process
//! per task (berth's conmon, as containerd has its shim) that creates the container through
//! `berth-runtime`, so that the container's init is its child; holds its stdio or pty;
//! writes the output as a CRI-format log (`logs`); reaps it; and records its exit in the
//! task directory. The supervisor outlives whoever started it, so a restarted CRI server
//! finds its containers running.

pub mod defaults;
pub mod logs;
pub mod shim;
pub mod user;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid { what: what.into(), reason: reason.into() }
}

pub(crate) fn sys(op: impl Into<String>) -> impl FnOnce(berth_sys::Errno) -> Error {
    let op = op.into();
    move |source| Error::Sys { op, source }
}

/// Now, as RFC 3339 with nanoseconds.
pub fn now() -> String {
    berth_stdx::time::format_rfc3339_nanos(std::time::SystemTime::now())
}

/// Now, in nanoseconds since the epoch (the CRI's timestamps).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
