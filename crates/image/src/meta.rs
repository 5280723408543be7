//! Image metadata in SQLite: which images exist, their names, the snapshots (unpacked
//! layers) they stand on, where blobs came from, and who holds an image (containers).
//!
//! Content lives in the content store; this database only says what is reachable. Writes
//! that make an image visible are one transaction, so an image appears whole or not at all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::digest::Digest;
use crate::{Error, Result};

/// The schema's version in `PRAGMA user_version`; raise it with every change to SCHEMA
/// (whose statements must stay safe to run over an older database).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,                -- the config digest, Docker's image id
    manifest TEXT NOT NULL,             -- the manifest digest
    media_type TEXT NOT NULL,           -- the manifest's media type
    index_digest TEXT,                  -- the multi-platform index it was chosen from
    created INTEGER NOT NULL            -- when it was stored here (unix seconds)
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,              -- normalized: docker.io/library/busybox:latest
    image TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS names_image ON names(image);
CREATE TABLE IF NOT EXISTS repo_digests (
    image TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    repository TEXT NOT NULL,           -- docker.io/library/busybox
    digest TEXT NOT NULL,               -- what the registry calls it
    PRIMARY KEY (image, repository, digest)
);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- its directory: snapshots/<id>
    chain_id TEXT NOT NULL UNIQUE,
    diff_id TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_sources (
    digest TEXT NOT NULL,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
CREATE TABLE IF NOT EXISTS holds (
    holder TEXT PRIMARY KEY,            -- e.g. container:<id>
    image TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,               -- a build step: its parent's key, instruction, inputs
    image TEXT NOT NULL,                -- the config digest of the state after the step
    manifest TEXT NOT NULL,             -- its manifest digest
    created INTEGER NOT NULL
);
";

#[derive(Debug)]
pub struct Db {
    connection: Connection,
    path: PathBuf,
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest: Digest,
    pub media_type: String,
    pub index_digest: Option<Digest>,
    pub created: i64,
    pub names: Vec<String>,
}

/// A layer unpacked on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: i64,
    pub chain_id: Digest,
    pub size: u64,
}

fn parse_digest(text: String) -> rusqlite::Result<Digest> {
    text.parse().map_err(|err: Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(err))
    })
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let db_err = |source| Error::Database { path: path.to_path_buf(), source };
        let connection = Connection::open(path).map_err(db_err)?;
        connection.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
        // WAL lets readers run beside one writer; FULL syncs each commit, so a name that a
        // command reported is still there after a crash.
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )
            .map_err(db_err)?;
        // No checkpoint when a connection closes: every berth command opens the store, and
        // a checkpoint on close syncs the database, deletes the WAL (and syncs the
        // directory), which the next command creates again (another directory sync). The
        // WAL stays, is read by the next opener, and is checkpointed as it grows
        // (`wal_autocheckpoint`). Commits are as durable as before (FULL).
        connection
            .set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(db_err)?;
        // Kept small: each opener reads the whole WAL to index it.
        connection
            .execute_batch("PRAGMA wal_autocheckpoint = 256; PRAGMA journal_size_limit = 1048576;")
            .map_err(db_err)?;
        // The schema is made once per database, not parsed again at every open (each
        // berth command opens the store): `user_version` says it is there.
        let version: i64 =
            connection.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(db_err)?;
        if version < SCHEMA_VERSION {
            connection
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(db_err)?;
        }
        Ok(Db { connection, path: path.to_path_buf() })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        |source| Error::Database { path: self.path.clone(), source }
    }

    /// Runs `f` in one immediate (write-locked) transaction.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let path = self.path.clone();
        let db_err = |source| Error::Database { path: path.clone(), source };
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let value = f(&tx).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(value)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut statement = self
            .connection
            .prepare("SELECT id, manifest, media_type, index_digest, created FROM images ORDER BY created DESC, id")
            .map_err(self.err())?;
        let rows = statement
            .query_map([], |row| {
                Ok(ImageRecord {
                    id: parse_digest(row.get(0)?)?,
                    manifest: parse_digest(row.get(1)?)?,
                    media_type: row.get(2)?,
                    index_digest: row.get::<_, Option<String>>(3)?.map(parse_digest).transpose()?,
                    created: row.get(4)?,
                    names: Vec::new(),
                })
            })
            .map_err(self.err())?;
        let mut images = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(self.err())?;
        let mut names = self
            .connection
            .prepare("SELECT name FROM names WHERE image = ?1 ORDER BY name")
            .map_err(self.err())?;
        for image in &mut images {
            image.names = names
                .query_map([image.id.to_string()], |row| row.get(0))
                .map_err(self.err())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.err())?;
        }
        Ok(images)
    }

    pub fn image(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        Ok(self.images()?.into_iter().find(|image| &image.id == id))
    }

    /// The image a name points at.
    pub fn lookup_name(&self, name: &str) -> Result<Option<Digest>> {
        self.connection
            .query_row("SELECT image FROM names WHERE name = ?1", [name], |row| {
                parse_digest(row.get(0)?)
            })
            .optional()
            .map_err(self.err())
    }

    pub fn repo_digests(&self, image: &Digest) -> Result<Vec<String>> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT repository || '@' || digest FROM repo_digests WHERE image = ?1 ORDER BY 1",
            )
            .map_err(self.err())?;
        let rows =
            statement.query_map([image.to_string()], |row| row.get(0)).map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    pub fn snapshot(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>> {
        self.connection
            .query_row(
                "SELECT id, chain_id, size FROM snapshots WHERE chain_id = ?1",
                [chain_id.to_string()],
                |row| {
                    Ok(SnapshotRecord {
                        id: row.get(0)?,
                        chain_id: parse_digest(row.get(1)?)?,
                        size: row.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let mut statement = self
            .connection
            .prepare("SELECT id, chain_id, size FROM snapshots")
            .map_err(self.err())?;
        let rows = statement
            .query_map([], |row| {
                Ok(SnapshotRecord {
                    id: row.get(0)?,
                    chain_id: parse_digest(row.get(1)?)?,
                    size: row.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// Repositories of `registry` known to hold `digest`, for cross-repository mounts.
    pub fn blob_sources(&self, digest: &Digest, registry: &str) -> Result<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT repository FROM blob_sources WHERE digest = ?1 AND registry = ?2")
            .map_err(self.err())?;
        let rows = statement
            .query_map(params![digest.to_string(), registry], |row| row.get(0))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    pub fn holders(&self, image: &Digest) -> Result<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT holder FROM holds WHERE image = ?1 ORDER BY holder")
            .map_err(self.err())?;
        let rows =
            statement.query_map([image.to_string()], |row| row.get(0)).map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    /// The state a build step left, by the step's cache key: (config, manifest).
    pub fn build_cache(&self, key: &str) -> Result<Option<(Digest, Digest)>> {
        self.connection
            .query_row("SELECT image, manifest FROM build_cache WHERE key = ?1", [key], |row| {
                Ok((parse_digest(row.get(0)?)?, parse_digest(row.get(1)?)?))
            })
            .optional()
            .map_err(self.err())
    }

    /// Every build cache entry: (config, manifest).
    pub fn build_cache_entries(&self) -> Result<Vec<(Digest, Digest)>> {
        let mut statement = self
            .connection
            .prepare("SELECT image, manifest FROM build_cache")
            .map_err(self.err())?;
        let rows = statement
            .query_map([], |row| Ok((parse_digest(row.get(0)?)?, parse_digest(row.get(1)?)?)))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }

    pub fn all_holds(&self) -> Result<Vec<(String, Digest)>> {
        let mut statement =
            self.connection.prepare("SELECT holder, image FROM holds").map_err(self.err())?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, parse_digest(row.get(1)?)?)))
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.err())
    }
}

/// Inserts or replaces an image record and points `names` at it (taking them from any
/// image that had them).
pub fn put_image(tx: &rusqlite::Transaction<'_>, record: &ImageRecord) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO images (id, manifest, media_type, index_digest, created) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(id) DO UPDATE SET manifest = excluded.manifest, media_type = excluded.media_type,
             index_digest = COALESCE(excluded.index_digest, images.index_digest)",
        params![
            record.id.to_string(),
            record.manifest.to_string(),
            record.media_type,
            record.index_digest.as_ref().map(ToString::to_string),
            record.created
        ],
    )?;
    for name in &record.names {
        tx.execute(
            "INSERT INTO names (name, image) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image = excluded.image",
            params![name, record.id.to_string()],
        )?;
    }
    Ok(())
}

pub fn put_repo_digest(
    tx: &rusqlite::Transaction<'_>,
    image: &Digest,
    repository: &str,
    digest: &Digest,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO repo_digests (image, repository, digest) VALUES (?1, ?2, ?3)",
        params![image.to_string(), repository, digest.to_string()],
    )
    .map(drop)
}

pub fn put_blob_source(
    tx: &rusqlite::Transaction<'_>,
    digest: &Digest,
    registry: &str,
    repository: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO blob_sources (digest, registry, repository) VALUES (?1, ?2, ?3)",
        params![digest.to_string(), registry, repository],
    )
    .map(drop)
}

/// Records a snapshot; returns its id, or the existing one's if another writer won.
pub fn put_snapshot(
    tx: &rusqlite::Transaction<'_>,
    chain_id: &Digest,
    diff_id: &Digest,
    size: u64,
) -> rusqlite::Result<(i64, bool)> {
    if let Some(id) = tx
        .query_row("SELECT id FROM snapshots WHERE chain_id = ?1", [chain_id.to_string()], |row| {
            row.get(0)
        })
        .optional()?
    {
        return Ok((id, false));
    }
    tx.execute(
        "INSERT INTO snapshots (chain_id, diff_id, size) VALUES (?1, ?2, ?3)",
        params![chain_id.to_string(), diff_id.to_string(), size as i64],
    )?;
    Ok((tx.last_insert_rowid(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_names_and_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = Db::open(&dir.path().join("meta.db")).expect("open");
        let id = Digest::of(b"config");
        let record = ImageRecord {
            id: id.clone(),
            manifest: Digest::of(b"manifest"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            index_digest: None,
            created: 1,
            names: vec!["docker.io/library/a:1".into(), "docker.io/library/a:2".into()],
        };
        db.write(|tx| put_image(tx, &record)).expect("put");
        assert_eq!(db.lookup_name("docker.io/library/a:2").expect("lookup"), Some(id.clone()));
        assert_eq!(db.images().expect("images")[0].names.len(), 2);
        db.write(|tx| {
            tx.execute(
                "INSERT INTO holds (holder, image) VALUES ('container:x', ?1)",
                [id.to_string()],
            )
        })
        .expect("hold");
        assert_eq!(db.holders(&id).expect("holders"), vec!["container:x".to_owned()]);
        // Deleting the image takes its names with it.
        db.write(|tx| tx.execute("DELETE FROM images WHERE id = ?1", [id.to_string()]))
            .expect("delete");
        assert_eq!(db.lookup_name("docker.io/library/a:1").expect("lookup"), None);
    }

    #[test]
    fn closing_leaves_the_wal_for_the_next_opener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        let db = Db::open(&path).expect("open");
        db.connection
            .execute("INSERT INTO holds (holder, image) VALUES ('container:a', 'x')", [])
            .expect("row");
        drop(db);
        // No checkpoint at close: the WAL (with the row) stays for the next command.
        assert!(dir.path().join("meta.db-wal").exists());
        let db = Db::open(&path).expect("open again");
        let kept: i64 =
            db.connection.query_row("SELECT count(*) FROM holds", [], |r| r.get(0)).expect("count");
        assert_eq!(kept, 1);
    }

    #[test]
    fn the_schema_is_made_once_and_an_old_database_is_brought_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        // A database of before the version was kept: tables there, user_version 0.
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch(SCHEMA).expect("schema");
            connection
                .execute("INSERT INTO holds (holder, image) VALUES ('container:old', 'x')", [])
                .expect("row");
        }
        let db = Db::open(&path).expect("open an old database");
        let version: i64 =
            db.connection.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let kept: i64 =
            db.connection.query_row("SELECT count(*) FROM holds", [], |r| r.get(0)).expect("count");
        assert_eq!(kept, 1, "rows survive");
        drop(db);
        Db::open(&path).expect("open again");
    }

    #[test]
    fn snapshots_are_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = Db::open(&dir.path().join("meta.db")).expect("open");
        let chain = Digest::of(b"chain");
        let (first, new) = db.write(|tx| put_snapshot(tx, &chain, &chain, 10)).expect("put");
        assert!(new);
        let (second, new) = db.write(|tx| put_snapshot(tx, &chain, &chain, 10)).expect("put");
        assert!(!new);
        assert_eq!(first, second);
    }
}
