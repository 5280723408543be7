//! Network plumbing that knows nothing of containers, pods or services: namespaces kept
//! alive by bind mounts on files, CNI plugins run as the CNI specification says (single
//! plugins and configuration lists with `prevResult` chaining), and nftables scripts applied
//! atomically. The engine (Docker's networks) and the CRI (pod networks) sit on top.

pub mod cni;
pub mod netns;
pub mod nft;

use std::path::PathBuf;

/// What went wrong, with the path or plugin that failed.
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
    /// A plugin, a configuration or nft said no; the text says what and why.
    #[error("{0}")]
    Failed(String),
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
