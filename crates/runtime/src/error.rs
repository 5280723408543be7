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

/// The exit status Docker's and podman's CLIs give when a container's program cannot be
/// started, recognized in an error's text (the message crosses processes as text): 127
/// when the program does not exist, 126 when it cannot be executed or its user does not
/// exist. `None` for every other failure (the engine's own: 125).
pub fn program_exit_code(message: &str) -> Option<i32> {
    let exec = message.find("exec: \"").map(|at| &message[at..]);
    if let Some(exec) = exec {
        if exec.contains("executable file not found") || exec.contains("no such file or directory")
        {
            return Some(127);
        }
        if exec.contains("permission denied") || exec.contains("is a directory") {
            return Some(126);
        }
    }
    if message.contains("unable to find user") || message.contains("unable to find group") {
        return Some(126);
    }
    None
}

#[cfg(test)]
mod exit_code_tests {
    use super::*;

    #[test]
    fn programs_that_cannot_start_have_their_own_codes() {
        assert_eq!(program_exit_code("container process setup failed: exec: \"nope\": executable file not found in $PATH"), Some(127));
        assert_eq!(program_exit_code("exec: \"/x\": no such file or directory"), Some(127));
        assert_eq!(
            program_exit_code(
                "container process setup failed: exec: \"/etc/passwd\": permission denied"
            ),
            Some(126)
        );
        assert_eq!(program_exit_code("exec: \"/etc\": is a directory"), Some(126));
        assert_eq!(
            program_exit_code("unable to find user nobody2: no matching entries in passwd file"),
            Some(126)
        );
        assert_eq!(program_exit_code("failed to mount /proc"), None);
    }
}
