//! The embedded backend: one SQLite file, one row per write (the row id is the revision),
//! as kine lays it out. A write is acknowledged once its transaction is committed with
//! `synchronous=FULL` in WAL mode, so it survives a crash of the process or the machine.
//! Compaction deletes superseded rows and tombstones, and incremental vacuum gives the
//! pages back, so the file does not grow without bound.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, mpsc};

use crate::{
    prefix_end, BoxFuture, Error, EventKind, KeyValue, ListResult, Result, Store, WatchEvent,
    WatchStream,
};

/// Events kept for watchers that fall behind before they re-read from the table.
const BROADCAST_CAPACITY: usize = 4096;
/// Reading connections kept for reuse (more are opened while reads overlap, then closed).
const KEPT_READERS: usize = 8;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What the writer thread shares with the rest: the writing connection and the
    /// events it sends.
    shared: Arc<Shared>,
    /// Connections for reads: in WAL mode they see the last commit without waiting for
    /// the writer's transaction or its fsync (one per concurrent read, kept for reuse).
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    /// Writes for the writer thread, which commits what has queued in one transaction.
    writes: std::sync::mpsc::Sender<Queued>,
    /// Bytes the store may hold before writes that grow it are refused (0: no limit).
    quota: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Shared {
    db: Mutex<Connection>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// The database's WAL file, whose size counts toward the quota.
    wal: std::path::PathBuf,
    /// What the quota counts, as of the last commit or compaction.
    used: std::sync::atomic::AtomicU64,
    /// The latest value of keys lately written or read, so that a `get` (the API server
    /// reads an object before each update, and admission its namespace and service
    /// account) is answered without a trip to SQLite.
    latest: Mutex<Latest>,
}

/// The cache of latest values. Exact, not eventually right: the writer thread puts every
/// write it commits here (a delete as a `None`) before acknowledging it; a read that
/// missed puts what it read from SQLite only if the key is still absent and the cache has
/// not been emptied since the read began (so a value older than a write committed
/// meanwhile can never land: that write's entry is there, or the emptying moved
/// `epoch`). Past its byte budget the cache is emptied as a whole, never entry by entry.
#[derive(Debug, Default)]
struct Latest {
    epoch: u64,
    bytes: usize,
    values: std::collections::HashMap<String, Option<KeyValue>>,
}

/// What the cache of latest values may hold (keys and values, with an allowance for
/// the map's own overhead).
const LATEST_BYTES: usize = 256 << 20;

impl Latest {
    fn cost(key: &str, value: &Option<KeyValue>) -> usize {
        2 * key.len() + value.as_ref().map_or(0, |kv| kv.value.len()) + 96
    }

    /// Sets `key`'s latest value (the writer's, after a commit).
    fn put(&mut self, key: &str, value: Option<KeyValue>) {
        let cost = Latest::cost(key, &value);
        if let Some(slot) = self.values.get_mut(key) {
            self.bytes = self.bytes - Latest::cost(key, slot) + cost;
            *slot = value;
            // A value that grew may take the cache past its budget.
            if self.bytes > LATEST_BYTES {
                self.empty();
            }
            return;
        }
        if self.bytes + cost > LATEST_BYTES {
            self.empty();
        }
        self.bytes += cost;
        self.values.insert(key.to_owned(), value);
    }

    /// Forgets everything; reads that began before cannot fill it with what they read.
    fn empty(&mut self) {
        self.values = Default::default();
        self.bytes = 0;
        self.epoch += 1;
    }

    /// Remembers what a read found, unless the key was written meanwhile (it is present)
    /// or the cache was emptied since the read began (`epoch` moved).
    fn offer(&mut self, epoch: u64, key: &str, value: Option<KeyValue>) {
        if epoch == self.epoch && !self.values.contains_key(key) {
            self.put(key, value);
        }
    }
}

fn backend(err: rusqlite::Error) -> Error {
    Error::Backend(err.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    rev INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_key_rev ON kv (key, rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('compact_rev', 0);
";

struct Row {
    rev: i64,
    key: String,
    create_rev: i64,
    prev_rev: i64,
    deleted: bool,
    value: Vec<u8>,
}

impl Row {
    fn kv(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create_rev,
            mod_revision: self.rev,
        }
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        rev: r.get(0)?,
        key: r.get(1)?,
        create_rev: r.get(2)?,
        prev_rev: r.get(3)?,
        deleted: r.get::<_, i64>(4)? != 0,
        value: r.get(5)?,
    })
}

const COLUMNS: &str = "rev, key, create_rev, prev_rev, deleted, value";

fn latest(db: &Connection, key: &str) -> rusqlite::Result<Option<Row>> {
    db.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM kv WHERE key = ?1 ORDER BY rev DESC LIMIT 1"
    ))?
    .query_row([key], row)
    .optional()
}

fn current_revision(db: &Connection) -> rusqlite::Result<i64> {
    // AUTOINCREMENT keeps the highest revision ever used in sqlite_sequence, even after
    // compaction deleted the rows.
    Ok(db
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'kv'", [], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

fn compact_revision(db: &Connection) -> rusqlite::Result<i64> {
    db.query_row("SELECT value FROM meta WHERE name = 'compact_rev'", [], |r| r.get(0))
}

/// What a write asks of the latest row of its key before it goes in.
type Check = Box<dyn FnOnce(Option<&Row>) -> Result<()> + Send>;

/// A write waiting for its group's transaction.
struct Request {
    key: String,
    value: Option<Vec<u8>>,
    check: Check,
}

/// A write on its way to the writer thread, with where its result goes.
struct Queued {
    request: Request,
    reply: tokio::sync::oneshot::Sender<Result<WatchEvent>>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").field("key", &self.request.key).finish_non_exhaustive()
    }
}

/// One write inside the group's transaction: the row appended after `check` accepts the
/// latest one. A tombstone stores no value: its last value is the row it points to
/// (`prev_rev`), which compaction keeps as long as the tombstone, so a delete costs a few
/// bytes whatever the object's size (which matters most when the store is full).
fn apply_write(tx: &rusqlite::Transaction<'_>, request: Request) -> Result<WatchEvent> {
    let Request { key, value, check } = request;
    let prev = latest(tx, &key).map_err(backend)?;
    let live = prev.as_ref().filter(|p| !p.deleted);
    check(live)?;
    let deleting = value.is_none();
    let (create_rev, prev_rev) = match live {
        Some(p) => (p.create_rev, p.rev),
        None => (0, 0),
    };
    let stored = match &value {
        Some(v) => v.clone(),
        None => live.map(|p| p.value.clone()).unwrap_or_default(),
    };
    let written: &[u8] = if deleting { &[] } else { &stored };
    tx.prepare_cached(
        "INSERT INTO kv (key, create_rev, prev_rev, deleted, value) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut insert| {
        insert.execute(params![key, create_rev, prev_rev, i64::from(deleting), written])
    })
    .map_err(backend)?;
    let rev = tx.last_insert_rowid();
    let create_rev = if create_rev == 0 { rev } else { create_rev };
    if !deleting && create_rev == rev {
        tx.execute("UPDATE kv SET create_rev = ?1 WHERE rev = ?1", [rev]).map_err(backend)?;
    }
    let kv = KeyValue { key, value: stored, create_revision: create_rev, mod_revision: rev };
    Ok(WatchEvent {
        kind: if deleting { EventKind::Delete } else { EventKind::Put },
        kv,
        prev: live.map(Row::kv),
    })
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

impl SqliteStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        // Readable by its owner only: SQLite gives its WAL and shared-memory files the
        // database file's mode, so this covers them too.
        for file in [path.to_path_buf(), with_suffix(path, "-wal"), with_suffix(path, "-shm")] {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && file == path => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| {
                            Error::Backend(format!("cannot create {}: {e}", path.display()))
                        })?;
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(Error::Backend(format!(
                        "cannot restrict {}: {err}",
                        file.display()
                    )))
                }
            }
        }
        let db = Connection::open(path).map_err(backend)?;
        // auto_vacuum must be chosen before the first table exists.
        db.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;",
        )
        .map_err(backend)?;
        db.busy_timeout(std::time::Duration::from_secs(30)).map_err(backend)?;
        db.execute_batch(SCHEMA).map_err(backend)?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let wal = with_suffix(path, "-wal");
        let shared = Arc::new(Shared {
            db: Mutex::new(db),
            events,
            wal,
            used: std::sync::atomic::AtomicU64::new(0),
            latest: Mutex::default(),
        });
        shared.refresh_used(&shared.db())?;
        let (writes, queue) = std::sync::mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.write_loop(&queue))
            .map_err(|e| Error::Backend(format!("cannot start the store's writer: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                shared,
                readers: Mutex::default(),
                path: path.to_path_buf(),
                writes,
                quota: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Past `bytes` (the database file and its write-ahead log), creates and updates are
    /// refused with [`Error::QuotaExceeded`]; deletes and compaction are not, so space
    /// can always be freed, and freed pages are reused. 0 means no limit.
    pub fn with_quota(self, bytes: u64) -> SqliteStore {
        self.inner.quota.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The default quota for a database at `path`: 2 GiB (etcd's default), or less where
    /// the filesystem is smaller, so that deletes and compaction always find room: half
    /// of what the database and the free space together come to (a checkpoint may copy
    /// the whole write-ahead log into the database file before truncating it).
    pub fn default_quota(path: &Path) -> u64 {
        const DEFAULT: u64 = 2 << 30;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let database = [path.to_path_buf(), with_suffix(path, "-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>();
        match berth_sys::fs::free_space(dir) {
            Ok(free) => DEFAULT.min((free + database) / 2),
            Err(err) => {
                tracing::warn!("cannot tell the free space of {}: {err}", dir.display());
                DEFAULT
            }
        }
    }

    /// What the quota counts: the database file and the write-ahead log.
    pub fn used_bytes(&self) -> Result<u64> {
        let shared = &self.inner.shared;
        shared.refresh_used(&shared.db())
    }

    /// Bytes the database file takes (for tests and metrics).
    pub fn file_size(&self) -> Result<u64> {
        let db = self.inner.shared.db();
        let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(backend)?;
        let size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(backend)?;
        Ok((pages * size) as u64)
    }

    /// Runs a blocking database job on tokio's blocking pool.
    fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || job(&inner))
                .await
                .map_err(|e| Error::Backend(format!("storage task failed: {e}")))?
        })
    }
}

impl Shared {
    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the store takes on disk (the database file, which compaction's vacuum gives
    /// freed pages back to, and the write-ahead log), remembered for the quota checks.
    fn refresh_used(&self, db: &Connection) -> Result<u64> {
        let pragma = |name: &str| -> Result<i64> {
            db.prepare_cached(&format!("PRAGMA {name}"))
                .and_then(|mut pragma| pragma.query_row([], |r| r.get(0)))
                .map_err(backend)
        };
        let database = pragma("page_count")?.max(0) * pragma("page_size")?;
        let wal = std::fs::metadata(&self.wal).map(|m| m.len()).unwrap_or(0);
        let used = database as u64 + wal;
        self.used.store(used, std::sync::atomic::Ordering::Relaxed);
        Ok(used)
    }

    /// The writer thread: takes the first write queued, then every write queued behind
    /// it, and commits them in one transaction with one fsync (each in a savepoint of its
    /// own, so one refused write does not undo the others); each write is acknowledged
    /// only once its group is durable, and events go out in revision order. While a
    /// group is being synced the next one gathers. Ends when the store is dropped.
    fn write_loop(&self, queue: &std::sync::mpsc::Receiver<Queued>) {
        /// Bounds one transaction (and the time its first write waits).
        const MAX_GROUP: usize = 1024;
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let (requests, replies): (Vec<Request>, Vec<_>) =
                batch.into_iter().map(|q| (q.request, q.reply)).unzip();
            let results = {
                let mut db = self.db();
                let results = self.commit_group(&mut db, requests);
                if let Err(err) = self.refresh_used(&db) {
                    tracing::warn!("cannot tell the store's size: {err}");
                }
                results
            };
            for (reply, result) in replies.into_iter().zip(results) {
                // A writer that stopped waiting (its request was dropped) has nobody to
                // tell; its write stands either way, as a write to etcd does.
                let _ = reply.send(result);
            }
        }
    }

    /// One transaction for `batch`; a result per write, in order.
    fn commit_group(&self, db: &mut Connection, batch: Vec<Request>) -> Vec<Result<WatchEvent>> {
        let count = batch.len();
        let tx = match db.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) => {
                let failed = backend(err);
                return (0..count).map(|_| Err(failed.clone())).collect();
            }
        };
        let mut results = Vec::with_capacity(count);
        for request in batch {
            let outcome = (|| -> Result<WatchEvent> {
                // Statements prepared once per connection: parsing them each time showed
                // in profiles of many small writes.
                let run = |sql: &str| -> Result<()> {
                    tx.prepare_cached(sql)
                        .and_then(|mut s| s.execute([]))
                        .map(drop)
                        .map_err(backend)
                };
                run("SAVEPOINT one")?;
                let applied = apply_write(&tx, request);
                if applied.is_err() {
                    run("ROLLBACK TO one")?;
                }
                run("RELEASE one")?;
                applied
            })();
            results.push(outcome);
        }
        if let Err(err) = tx.commit() {
            let failed = backend(err);
            return (0..count).map(|_| Err(failed.clone())).collect();
        }
        {
            let mut latest = self.latest();
            // A write that failed inside SQLite (not one its check refused) may still be
            // part of what was committed: nothing cached can be trusted for its key.
            if results.iter().any(|r| matches!(r, Err(Error::Backend(_)))) {
                latest.empty();
            }
            for event in results.iter().flatten() {
                let value = (event.kind == EventKind::Put).then(|| event.kv.clone());
                latest.put(&event.kv.key, value);
            }
        }
        for event in results.iter().flatten() {
            let _ = self.events.send(Arc::new(event.clone()));
        }
        results
    }
}

impl Inner {
    /// Runs `read` on a reading connection (a kept one if there is one; kept again after,
    /// up to `KEPT_READERS`).
    fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let kept = self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let db = match kept {
            Some(db) => db,
            None => {
                let db = Connection::open(&self.path).map_err(backend)?;
                db.busy_timeout(std::time::Duration::from_secs(30)).map_err(backend)?;
                db
            }
        };
        let result = read(&db);
        let mut kept = self.readers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Enough for the reads that overlap in practice; each keeps its own page cache.
        if kept.len() < KEPT_READERS {
            kept.push(db);
        }
        result
    }

    /// Appends a row after `check` accepts the latest row of `key`, and returns the event
    /// once the writer thread has committed it (see [`Shared::write_loop`]). Past the quota
    /// a value is refused; a delete (no value) never is, so space can always be freed.
    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        check: impl FnOnce(Option<&Row>) -> Result<()> + Send + 'static,
    ) -> Result<WatchEvent> {
        let quota = self.quota.load(std::sync::atomic::Ordering::Relaxed);
        let used = self.shared.used.load(std::sync::atomic::Ordering::Relaxed);
        if value.is_some() && quota > 0 && used >= quota {
            return Err(Error::QuotaExceeded { quota, used });
        }
        let (reply, result) = tokio::sync::oneshot::channel();
        let request = Request { key: key.to_owned(), value, check: Box::new(check) };
        self.writes
            .send(Queued { request, reply })
            .map_err(|_| Error::Backend("the store's writer has stopped".into()))?;
        result.await.map_err(|_| Error::Backend("the store's writer has stopped".into()))?
    }
}

/// Rows under `prefix` with revisions in (after, up_to], as events.
fn read_history(db: &Connection, prefix: &str, after: i64, up_to: i64) -> Result<Vec<WatchEvent>> {
    let compacted = compact_revision(db).map_err(backend)?;
    if after < compacted {
        return Err(Error::Compacted { requested: after + 1, compacted: compacted + 1 });
    }
    let end = prefix_end(prefix);
    let mut statement = db
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM kv WHERE rev > ?1 AND rev <= ?2 AND key >= ?3 AND key < ?4 ORDER BY rev"
        ))
        .map_err(backend)?;
    let rows = statement
        .query_map(params![after, up_to, prefix, end], row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<Row>>>()
        .map_err(backend)?;
    let mut events = Vec::with_capacity(rows.len());
    for r in rows {
        let prev = if r.prev_rev > 0 {
            db.query_row(&format!("SELECT {COLUMNS} FROM kv WHERE rev = ?1"), [r.prev_rev], row)
                .optional()
                .map_err(backend)?
                .map(|p| p.kv())
        } else {
            None
        };
        let kind = if r.deleted { EventKind::Delete } else { EventKind::Put };
        let mut kv = r.kv();
        if r.deleted {
            // The deleted value is the previous row's (see `write`).
            kv.value = prev.map(|p| p.value).unwrap_or_default();
            events.push(WatchEvent { kind, kv, prev: None });
        } else {
            events.push(WatchEvent { kind, kv, prev });
        }
    }
    Ok(events)
}

impl Store for SqliteStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let epoch = {
            let latest = self.inner.shared.latest();
            if let Some(known) = latest.values.get(key) {
                let known = known.clone();
                return Box::pin(std::future::ready(Ok(known)));
            }
            latest.epoch
        };
        let key = key.to_owned();
        self.blocking(move |inner| {
            let found = inner.read(|db| {
                Ok(latest(db, &key).map_err(backend)?.filter(|r| !r.deleted).map(|r| r.kv()))
            })?;
            inner.shared.latest().offer(epoch, &key, found.clone());
            Ok(found)
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListResult>> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.blocking(move |inner| {
            inner.read(|db| {
                let current = current_revision(db).map_err(backend)?;
                let at = if revision > 0 { revision } else { current };
                if at > current {
                    return Err(Error::FutureRevision { requested: at, current });
                }
                let compacted = compact_revision(db).map_err(backend)?;
                if revision > 0 && revision < compacted {
                    return Err(Error::Compacted { requested: revision, compacted: compacted + 1 });
                }
                let end = prefix_end(&prefix);
                let from = start_after.unwrap_or_default();
                let take = if limit == 0 { i64::MAX } else { limit as i64 + 1 };
                let mut statement = db
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM kv JOIN (
                        SELECT MAX(rev) AS latest FROM kv
                        WHERE key >= ?1 AND key < ?2 AND key > ?3 AND rev <= ?4 GROUP BY key
                     ) ON rev = latest WHERE deleted = 0 ORDER BY key LIMIT ?5"
                    ))
                    .map_err(backend)?;
                let mut items = statement
                    .query_map(params![prefix, end, from, at, take], row)
                    .map_err(backend)?
                    .map(|r| r.map(|r| r.kv()))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(backend)?;
                let more = limit > 0 && items.len() > limit;
                items.truncate(if limit == 0 { items.len() } else { limit });
                Ok(ListResult { items, revision: at, more })
            })
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let named = key.to_owned();
            let event = self
                .inner
                .write(key, Some(value), move |live| match live {
                    Some(_) => Err(Error::AlreadyExists { key: named }),
                    None => Ok(()),
                })
                .await?;
            Ok(event.kv.mod_revision)
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let named = key.to_owned();
            let event = self
                .inner
                .write(key, Some(value), move |live| match live {
                    None => Err(Error::NotFound { key: named }),
                    Some(r) if r.rev != expected => {
                        Err(Error::Conflict { key: named, expected, actual: r.rev })
                    }
                    Some(_) => Ok(()),
                })
                .await?;
            Ok(event.kv.mod_revision)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<i64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            let named = key.to_owned();
            let event = self
                .inner
                .write(key, None, move |live| match (live, expected) {
                    (None, _) => Err(Error::NotFound { key: named }),
                    (Some(r), Some(e)) if r.rev != e => {
                        Err(Error::Conflict { key: named, expected: e, actual: r.rev })
                    }
                    _ => Ok(()),
                })
                .await?;
            Ok(event.kv)
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<WatchStream>> {
        let prefix = prefix.to_owned();
        let inner = self.inner.clone();
        Box::pin(async move {
            // Subscribe first, then read history: nothing falls between the two.
            let mut live = inner.shared.events.subscribe();
            let (history, mut last) = {
                let inner = inner.clone();
                let prefix = prefix.clone();
                tokio::task::spawn_blocking(move || {
                    inner.read(|db| {
                        let up_to = current_revision(db).map_err(backend)?;
                        read_history(db, &prefix, after, up_to).map(|h| (h, up_to.max(after)))
                    })
                })
                .await
                .map_err(|e| Error::Backend(e.to_string()))??
            };
            let (sender, receiver) = mpsc::channel(1024);
            tokio::spawn(async move {
                for event in history {
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                loop {
                    match live.recv().await {
                        Ok(event) => {
                            if event.revision() <= last || !event.kv.key.starts_with(&prefix) {
                                last = last.max(event.revision());
                                continue;
                            }
                            last = event.revision();
                            if sender.send(Ok((*event).clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind the in-memory queue: catch up from the table.
                            let (inner, prefix2, from) = (inner.clone(), prefix.clone(), last);
                            let caught = tokio::task::spawn_blocking(move || {
                                inner.read(|db| {
                                    let up_to = current_revision(db).map_err(backend)?;
                                    read_history(db, &prefix2, from, up_to).map(|h| (h, up_to))
                                })
                            })
                            .await;
                            match caught {
                                Ok(Ok((events, up_to))) => {
                                    for event in events {
                                        if sender.send(Ok(event)).await.is_err() {
                                            return;
                                        }
                                    }
                                    last = up_to.max(last);
                                }
                                Ok(Err(err)) => {
                                    let _ = sender.send(Err(err)).await;
                                    return;
                                }
                                Err(err) => {
                                    let _ = sender.send(Err(Error::Backend(err.to_string()))).await;
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(receiver)
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<i64>> {
        self.blocking(|inner| inner.read(|db| current_revision(db).map_err(backend)))
    }

    fn under_pressure(&self) -> bool {
        let quota = self.inner.quota.load(std::sync::atomic::Ordering::Relaxed);
        quota > 0
            && self.inner.shared.used.load(std::sync::atomic::Ordering::Relaxed) >= quota / 10 * 9
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>> {
        self.blocking(move |inner| {
            let mut db = inner.shared.db();
            let current = current_revision(&db).map_err(backend)?;
            if revision > current {
                return Err(Error::FutureRevision { requested: revision, current });
            }
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let done = compact_revision(&tx).map_err(backend)?;
            if revision <= done {
                return Err(Error::Compacted { requested: revision, compacted: done + 1 });
            }
            // Rows superseded by a newer row at or below the revision, and tombstones.
            tx.execute(
                "DELETE FROM kv WHERE rev <= ?1 AND (deleted = 1 OR EXISTS (
                    SELECT 1 FROM kv AS newer WHERE newer.key = kv.key AND newer.rev > kv.rev AND newer.rev <= ?1))",
                [revision],
            )
            .map_err(backend)?;
            tx.execute("UPDATE meta SET value = ?1 WHERE name = 'compact_rev'", [revision]).map_err(backend)?;
            tx.commit().map_err(backend)?;
            // Both pragmas return rows and work as they are stepped: run them to the end.
            for pragma in ["PRAGMA incremental_vacuum", "PRAGMA wal_checkpoint(TRUNCATE)"] {
                let mut statement = db.prepare(pragma).map_err(backend)?;
                let mut rows = statement.query([]).map_err(backend)?;
                while rows.next().map_err(backend)?.is_some() {}
            }
            inner.shared.refresh_used(&db)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, revision: i64) -> Option<KeyValue> {
        Some(KeyValue {
            key: key.into(),
            value: vec![b'v'; 10],
            create_revision: 1,
            mod_revision: revision,
        })
    }

    #[test]
    fn a_read_never_replaces_a_write_in_the_cache_of_latest_values() {
        let mut latest = Latest::default();
        // A read that began before a write to its key lands after it: the write stays.
        let epoch = latest.epoch;
        latest.put("/a", kv("/a", 5));
        latest.offer(epoch, "/a", kv("/a", 4));
        assert_eq!(latest.values["/a"].as_ref().map(|kv| kv.mod_revision), Some(5));
        // A delete is remembered as gone, not forgotten (a stale read cannot revive it).
        latest.put("/a", None);
        latest.offer(epoch, "/a", kv("/a", 5));
        assert!(latest.values["/a"].is_none());
        // A read of a key nobody wrote meanwhile is kept.
        latest.offer(epoch, "/b", kv("/b", 3));
        assert!(latest.values.contains_key("/b"));
        // Emptied past its budget: a read that began before is not kept.
        latest.bytes = LATEST_BYTES;
        latest.put("/c", kv("/c", 9));
        assert_eq!(latest.values.len(), 1, "emptied as a whole");
        latest.offer(epoch, "/a", kv("/a", 4));
        assert!(!latest.values.contains_key("/a"));
        assert_eq!(latest.bytes, Latest::cost("/c", &kv("/c", 9)));
        // A value that grows past the budget empties it too.
        let epoch = latest.epoch;
        let mut big = kv("/c", 10);
        if let Some(big) = big.as_mut() {
            big.value = vec![0; 1024];
        }
        latest.bytes = LATEST_BYTES - 10;
        latest.put("/c", big);
        assert!(latest.values.is_empty());
        assert_eq!((latest.bytes, latest.epoch), (0, epoch + 1));
    }
}
