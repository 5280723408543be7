//! Storage for the API server, with etcd's model: a key space where every write gets the
//! next cluster-wide revision, values carry the revision that created and last modified
//! them, writes are compare-and-swap on that revision, and watches replay every change
//! after a revision (or say that it was compacted away).
//!
//! Two backends pass one conformance suite (`tests/`): [`SqliteStore`], embedded and the
//! default, and [`EtcdStore`], etcd v3 through `etcd-client`.

mod etcd;
mod sqlite;

use std::future::Future;
use std::pin::Pin;

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

/// A key's value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: i64,
    /// The revision of the last write (the object's `resourceVersion`).
    pub mod_revision: i64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the listing reflects.
    pub revision: i64,
    /// True when keys beyond `limit` exist (continue after the last item's key).
    pub more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a put, the new value; for a delete, the key with its last value and the
    /// deletion's revision as `mod_revision`.
    pub kv: KeyValue,
    /// The value before a put that replaced one.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict { key: String, expected: i64, actual: i64 },
    /// The revision asked for is older than the oldest one kept (HTTP 410 Gone).
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The revision asked for is newer than the store's.
    #[error("revision {requested} is in the future (current: {current})")]
    FutureRevision { requested: i64, current: i64 },
    /// The store holds its quota: writes that would grow it are refused until deletes and
    /// compaction free space.
    #[error("the store is over its quota ({used} of {quota} bytes used): delete objects to free space (compaction reclaims it within a minute), or restart the server with a larger --quota-backend-bytes")]
    QuotaExceeded { quota: u64, used: u64 },
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The changes of a watch, in revision order. A `Compacted` error ends it.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<WatchEvent>>;

/// What the API server needs of its storage.
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// Keys starting with `prefix`, in key order, after `start_after` if given, at most
    /// `limit` (0: no limit), as of `revision` (0: now).
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListResult>>;

    /// Creates `key`; fails with `AlreadyExists`. Returns the new revision.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<i64>>;

    /// Replaces `key` if its `mod_revision` is `expected`; `Conflict` otherwise,
    /// `NotFound` if it does not exist. Returns the new revision.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64>>;

    /// Deletes `key` (if its `mod_revision` is `expected`, when given). Returns the deleted
    /// value with the deletion's revision as `mod_revision`.
    fn delete<'a>(&'a self, key: &'a str, expected: Option<i64>)
        -> BoxFuture<'a, Result<KeyValue>>;

    /// Every change under `prefix` with a revision above `after`, then live ones.
    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<WatchStream>>;

    /// The latest revision.
    fn revision(&self) -> BoxFuture<'_, Result<i64>>;

    /// Forgets history at and below `revision` (current values stay).
    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>>;

    /// True when the store is near its quota: compaction should then keep no history.
    fn under_pressure(&self) -> bool {
        false
    }
}

/// The first key after every key with this prefix (etcd's range end).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    // An empty prefix (or all 0xff): everything.
    "\u{10FFFF}".to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_ends() {
        assert_eq!(super::prefix_end("/registry/pods/"), "/registry/pods0");
        assert_eq!(super::prefix_end("a"), "b");
    }
}
