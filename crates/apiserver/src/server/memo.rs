//! What watches share of one stored event: every watch on a kind meets the same write,
//! and without sharing each would decode the stored bytes and encode the event line
//! again (a pod write reaches the scheduler's, the controllers', the simulated nodes'
//! and every client's watch). The first watch to meet an event decodes it (and encodes
//! its line for a served version); the others take the result. A revision names one
//! write for good, so an entry never goes stale; the oldest go when there are too many.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_store::KeyValue;
use bytes::Bytes;
use serde_json::Value;

use super::{decode, ApiError};

/// Revisions kept: watches read an event within moments of each other.
const KEPT: usize = 1024;
/// Bytes kept at most (the stored sizes of the objects and the lines' lengths), so a run
/// of large objects (ConfigMaps near the 1.5 MB limit) cannot hold a gigabyte.
const KEPT_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Entry {
    object: Option<Arc<Value>>,
    /// Encoded event lines by served `group/version`.
    lines: Vec<(String, Bytes)>,
    /// What this entry counts toward `KEPT_BYTES`.
    bytes: usize,
}

#[derive(Default)]
pub(super) struct WatchMemo {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<i64, Entry>,
    order: VecDeque<i64>,
    bytes: usize,
}

impl Inner {
    /// The entry of `revision`, grown by `bytes`, and the entries pushed out to make room
    /// (to be dropped once the lock is let go: freeing a decoded object is not free).
    fn entry(&mut self, revision: i64, bytes: usize) -> (&mut Entry, Vec<Entry>) {
        let mut evicted = Vec::new();
        let known = self.entries.contains_key(&revision);
        while self.order.len() + usize::from(!known) > KEPT
            || (self.bytes + bytes > KEPT_BYTES && !self.order.is_empty())
        {
            let Some(old) = self.order.pop_front() else { break };
            if old == revision {
                // Its own entry goes last of all: keep it at the back.
                self.order.push_back(old);
                if self.order.len() == 1 {
                    break;
                }
                continue;
            }
            if let Some(entry) = self.entries.remove(&old) {
                self.bytes -= entry.bytes;
                evicted.push(entry);
            }
        }
        if !known {
            self.order.push_back(revision);
        }
        self.bytes += bytes;
        let entry = self.entries.entry(revision).or_default();
        entry.bytes += bytes;
        (entry, evicted)
    }
}

impl WatchMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The event's object as stored (with its resourceVersion), decoded once.
    /// The object written at `revision`, if a watch has decoded it and it is still kept.
    pub(super) fn decoded(&self, revision: i64) -> Option<Arc<Value>> {
        self.lock().entries.get(&revision).and_then(|e| e.object.clone())
    }

    pub(super) fn object(&self, kv: &KeyValue) -> Result<Arc<Value>, ApiError> {
        let revision = kv.mod_revision;
        if let Some(object) = self.lock().entries.get(&revision).and_then(|e| e.object.clone()) {
            return Ok(object);
        }
        let object = Arc::new(decode(kv)?);
        let evicted = {
            let mut inner = self.lock();
            let (entry, evicted) = inner.entry(revision, kv.value.len());
            entry.object = Some(object.clone());
            evicted
        };
        drop(evicted);
        Ok(object)
    }

    /// The event's line as `group_version` serves it, encoded once by `encode`.
    pub(super) fn line(
        &self,
        revision: i64,
        group_version: &str,
        encode: impl FnOnce() -> Bytes,
    ) -> Bytes {
        let known = self.lock().entries.get(&revision).and_then(|e| {
            e.lines.iter().find(|(gv, _)| gv == group_version).map(|(_, line)| line.clone())
        });
        if let Some(line) = known {
            return line;
        }
        let line = encode();
        let evicted = {
            let mut inner = self.lock();
            let (entry, evicted) = inner.entry(revision, line.len());
            if !entry.lines.iter().any(|(gv, _)| gv == group_version) {
                entry.lines.push((group_version.to_owned(), line.clone()));
            }
            evicted
        };
        drop(evicted);
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(revision: i64, name: &str) -> KeyValue {
        KeyValue {
            key: format!("/registry/pods/default/{name}"),
            value: serde_json::to_vec(
                &serde_json::json!({"kind": "Pod", "metadata": {"name": name}}),
            )
            .unwrap_or_default(),
            create_revision: revision,
            mod_revision: revision,
        }
    }

    #[test]
    fn one_decode_and_one_encoding_per_event_and_version() {
        let memo = WatchMemo::default();
        let (Ok(first), Ok(again)) = (memo.object(&kv(7, "a")), memo.object(&kv(7, "a"))) else {
            panic!("decode failed")
        };
        assert!(Arc::ptr_eq(&first, &again), "the second watch must reuse the decoded object");
        assert_eq!(first["metadata"]["resourceVersion"], "7");
        let mut encodings = 0;
        for _ in 0..3 {
            let line = memo.line(7, "v1", || {
                encodings += 1;
                Bytes::from_static(b"one\n")
            });
            assert_eq!(line, Bytes::from_static(b"one\n"));
        }
        assert_eq!(encodings, 1);
        // Another served version is encoded on its own.
        let other = memo.line(7, "v2", || Bytes::from_static(b"two\n"));
        assert_eq!(other, Bytes::from_static(b"two\n"));
    }

    #[test]
    fn the_oldest_revisions_are_forgotten() {
        let memo = WatchMemo::default();
        for revision in 1..=(KEPT as i64 + 10) {
            let _ = memo.line(revision, "v1", || Bytes::from_static(b"x"));
        }
        let inner = memo.lock();
        assert_eq!(inner.entries.len(), KEPT);
        assert!(!inner.entries.contains_key(&1));
        assert!(inner.entries.contains_key(&(KEPT as i64 + 10)));
    }

    #[test]
    fn large_lines_are_kept_within_the_byte_bound() {
        let memo = WatchMemo::default();
        let big = Bytes::from(vec![b'x'; 1 << 20]);
        for revision in 1..=100 {
            let _ = memo.line(revision, "v1", || big.clone());
        }
        let inner = memo.lock();
        assert!(inner.bytes <= KEPT_BYTES, "{} bytes kept", inner.bytes);
        assert_eq!(inner.bytes, inner.entries.values().map(|e| e.bytes).sum::<usize>());
        assert!(inner.entries.contains_key(&100), "the newest is kept");
        assert!(!inner.entries.contains_key(&1), "the oldest went");
    }
}
