use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong with images. Messages say what was wrong and, where the
/// user can do something, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {digest:?}: {reason}")]
    BadDigest { digest: String, reason: String },
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {op} {path}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: berth_sys::Errno,
    },
    #[error("image metadata database {path}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("content {expected} failed verification: got {actual} ({size} bytes); the data is corrupt or was cut short and was discarded")]
    DigestMismatch { expected: Digest, actual: Digest, size: u64 },
    #[error("content {digest} should be {expected} bytes, got {actual}; the data was discarded")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("blob {digest} is not in the content store")]
    BlobNotFound { digest: Digest },
    #[error("image {name:?} not found locally{hint}")]
    ImageNotFound { name: String, hint: &'static str },
    #[error("{name} not found: the registry has no such repository, tag or digest")]
    NotInRegistry { name: String },
    #[error("image {name:?} is ambiguous: {count} images match; give more of the id")]
    AmbiguousImage { name: String, count: usize },
    #[error("image {image} is in use by {holders}; stop and remove those first, or force")]
    ImageInUse { image: String, holders: String },
    #[error("image {image} has several names ({names}); remove them one by one, or force")]
    ImageHasNames { image: String, names: String },
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType { media_type: String, what: &'static str },
    #[error("malformed {what} {digest}: {reason}")]
    Malformed { what: &'static str, digest: String, reason: String },
    #[error("no image for platform {wanted} in {reference}; it has {available}")]
    NoMatchingPlatform { reference: String, wanted: String, available: String },
    #[error("unsafe layer entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: &'static str },
    #[error("layer {digest}: {message}")]
    Layer {
        digest: String,
        message: String,
        #[source]
        source: Option<Box<Error>>,
    },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("registry {registry}: {status} {what}{hint}")]
    RegistryStatus { registry: String, status: u16, what: String, hint: String },
    #[error("registry {registry}: authentication failed{hint}")]
    Unauthorized { registry: String, hint: String },
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("invalid platform {platform:?}: expected os/arch[/variant], e.g. linux/amd64")]
    BadPlatform { platform: String },
    #[error("{source}; the image needs {human} for its compressed layers, and more once unpacked")]
    DiskFull { needed: u64, human: String, source: Box<Error> },
}

impl Error {
    /// Whether the disk (or the filesystem's quota) is full, here or in a cause.
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            let full = error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
                || error.downcast_ref::<berth_sys::Errno>() == Some(&berth_sys::Errno::ENOSPC)
                || matches!(error.downcast_ref::<Error>(), Some(Error::DiskFull { .. }));
            if full {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io<P: Into<PathBuf>>(
    op: &'static str,
    path: P,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn sys<P: Into<PathBuf>>(
    op: &'static str,
    path: P,
) -> impl FnOnce(berth_sys::Errno) -> Error {
    let path = path.into();
    move |source| Error::Sys { op, path, source }
}
