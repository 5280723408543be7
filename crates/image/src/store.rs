//! The image store: content, snapshots and metadata under `<root>/images`, and the
//! operations on whole images (resolve a name, tag, remove, prune, collect garbage).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::ImageConfig;
use crate::content::ContentStore;
use crate::digest::{chain_ids, Digest};
use crate::error::io;
use crate::manifest::{parse_document, Document, Manifest};
use crate::meta::{self, Db, ImageRecord, SnapshotRecord};
use crate::reference::Reference;
use crate::{Error, Result};

/// One image with its documents read and checked.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub config_bytes: Vec<u8>,
    pub diff_ids: Vec<Digest>,
    pub chain_ids: Vec<Digest>,
}

impl Image {
    /// `docker images` names: `busybox:latest`.
    pub fn familiar_names(&self) -> Vec<String> {
        self.record
            .names
            .iter()
            .map(|n| n.parse::<Reference>().map(|r| r.familiar()).unwrap_or_else(|_| n.clone()))
            .collect()
    }
}

/// What `remove` did, in `docker rmi`'s words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Untagged(String),
    Deleted(Digest),
}

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    pub content: ContentStore,
    db: Mutex<Db>,
}

/// Held while blobs and snapshots are written that no image references yet: garbage
/// collection waits for it, so it never deletes what a pull is about to name.
#[derive(Debug)]
pub struct WriteGuard<'a> {
    _store: &'a ImageStore,
    file: File,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl ImageStore {
    /// Opens (creating) the store under `<berth_root>/images`.
    pub fn open(berth_root: &Path) -> Result<ImageStore> {
        let root = berth_root.join("images");
        for dir in [root.join("snapshots"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        let content = ContentStore::open(&root)?;
        let db = Db::open(&root.join("meta.db"))?;
        let lock_path = root.join("lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("create", &lock_path))?;
        Ok(ImageStore { root, content, db: Mutex::new(db) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn writing(&self) -> Result<WriteGuard<'_>> {
        let path = self.root.join("lock");
        // A file description of its own, so each writer holds its own shared lock.
        let file = File::options().write(true).open(&path).map_err(io("open", &path))?;
        file.lock_shared().map_err(io("lock", &path))?;
        self.remove_dead_temps();
        Ok(WriteGuard { _store: self, file })
    }

    /// Removes the unpack directories of writers that died (a pull killed with SIGKILL):
    /// each is named after its writer's pid and start time, so a live one is never taken.
    fn remove_dead_temps(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("tmp")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.strip_prefix("unpack-").unwrap_or("").split('-');
            let (Some(pid), Some(start)) = (parts.next(), parts.next()) else { continue };
            let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else { continue };
            let alive =
                berth_sys::process::process_start_time(berth_sys::nix::unistd::Pid::from_raw(pid))
                    .is_some_and(|s| s == start);
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub fn snapshot_dir(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// A private directory on the store's filesystem to unpack into.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir> {
        let dir = self.root.join("tmp");
        // Named after this process (pid and start time), so that a later writer can tell
        // the leftovers of a dead one from a live one's work.
        let me = std::process::id() as i32;
        let start =
            berth_sys::process::process_start_time(berth_sys::nix::unistd::Pid::from_raw(me))
                .unwrap_or(0);
        tempfile::Builder::new()
            .prefix(&format!("unpack-{me}-{start}-"))
            .tempdir_in(&dir)
            .map_err(io("create a directory in", &dir))
    }

    /// Moves an unpacked layer into place and records it; if another writer recorded the
    /// same chain first, this copy is dropped and theirs is returned.
    pub fn commit_snapshot(
        &self,
        unpacked: tempfile::TempDir,
        chain_id: &Digest,
        diff_id: &Digest,
        size: u64,
    ) -> Result<SnapshotRecord> {
        let mut db = self.db();
        let snapshots = self.root.join("snapshots");
        let staged = unpacked.path().to_path_buf();
        let mut rename_error = None;
        let written = db.write(|tx| {
            let (id, new) = meta::put_snapshot(tx, chain_id, diff_id, size)?;
            if new {
                let target = snapshots.join(id.to_string());
                if let Err(err) = std::fs::rename(&staged, &target) {
                    rename_error = Some((target, err));
                    // Any error rolls the row back.
                    return Err(rusqlite::Error::InvalidQuery);
                }
            }
            Ok(id)
        });
        let id = match (written, rename_error) {
            (_, Some((target, source))) => {
                return Err(Error::Io { op: "move a layer to", path: target, source })
            }
            (result, None) => result?,
        };
        // Dropping the TempDir removes the copy that lost, and nothing once it was moved.
        drop(unpacked);
        Ok(SnapshotRecord { id, chain_id: chain_id.clone(), size })
    }

    /// A snapshot whose directory really exists (a crash may have left a row without one).
    pub fn snapshot(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>> {
        let record = self.db().snapshot(chain_id)?;
        Ok(record.filter(|r| self.snapshot_dir(r.id).is_dir()))
    }

    /// Reads and checks an image's manifest and config.
    pub fn load(&self, record: ImageRecord) -> Result<Image> {
        let manifest_bytes = self.content.read(&record.manifest)?;
        let manifest = match parse_document(
            &manifest_bytes,
            Some(&record.media_type),
            &record.manifest.to_string(),
        )? {
            (Document::Manifest(manifest), _) => manifest,
            (Document::Index(_), _) => {
                return Err(Error::Malformed {
                    what: "manifest",
                    digest: record.manifest.to_string(),
                    reason: "an index where a manifest was expected".into(),
                })
            }
        };
        let config_bytes = self.content.read(&record.id)?;
        let config = ImageConfig::parse(&config_bytes, &record.id)?;
        let diff_ids = config.diff_ids()?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::Malformed {
                what: "image",
                digest: record.id.to_string(),
                reason: format!("{} layers but {} diff ids", manifest.layers.len(), diff_ids.len()),
            });
        }
        let chain_ids = chain_ids(&diff_ids);
        Ok(Image { record, manifest, config, config_bytes, diff_ids, chain_ids })
    }

    /// Finds an image by name (`busybox`, `busybox:1`), full or short id, or `name@digest`.
    pub fn resolve(&self, name: &str) -> Result<Image> {
        let db = self.db();
        let not_found = |hint| Error::ImageNotFound { name: name.to_owned(), hint };
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let looks_like_id =
            hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let images = db.images()?;
        if looks_like_id {
            let matches: Vec<&ImageRecord> =
                images.iter().filter(|i| i.id.hex().starts_with(hex)).collect();
            match matches.len() {
                1 => {
                    let record = matches[0].clone();
                    drop(db);
                    return self.load(record);
                }
                0 => {}
                count => return Err(Error::AmbiguousImage { name: name.to_owned(), count }),
            }
        }
        let reference: Reference = match name.parse() {
            Ok(reference) => reference,
            Err(_) if looks_like_id => return Err(not_found("")),
            Err(err) => return Err(err),
        };
        let id = match &reference.digest {
            Some(digest) => {
                let repository = reference.name();
                images
                    .iter()
                    .find(|i| {
                        &i.manifest == digest
                            && (db
                                .repo_digests(&i.id)
                                .unwrap_or_default()
                                .iter()
                                .any(|r| r.starts_with(&format!("{repository}@")))
                                || i.names.iter().any(|n| n.starts_with(&format!("{repository}:"))))
                    })
                    .map(|i| i.id.clone())
            }
            None => db.lookup_name(&reference.to_string())?,
        };
        let Some(id) = id else {
            return Err(not_found("; pull it with `berth pull` or build it"));
        };
        let record = images.into_iter().find(|i| i.id == id).ok_or_else(|| not_found(""))?;
        drop(db);
        self.load(record)
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        let records = self.db().images()?;
        let mut images = Vec::with_capacity(records.len());
        for record in records {
            match self.load(record.clone()) {
                Ok(image) => images.push(image),
                Err(err) => {
                    tracing::warn!(image = %record.id, "skipping an unreadable image: {err}")
                }
            }
        }
        Ok(images)
    }

    /// Unpacked size of an image (what `docker images` shows).
    pub fn size(&self, image: &Image) -> u64 {
        image.chain_ids.iter().filter_map(|c| self.snapshot(c).ok().flatten()).map(|s| s.size).sum()
    }

    /// The snapshot directories of an image, top layer first, as overlayfs wants them.
    pub fn lower_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(image.chain_ids.len());
        for (chain_id, diff_id) in image.chain_ids.iter().zip(&image.diff_ids) {
            let snapshot = self.snapshot(chain_id)?.ok_or_else(|| Error::Layer {
                digest: diff_id.to_string(),
                message: format!(
                    "image {} is missing its unpacked layer; pull or load it again",
                    image.record.id.short()
                ),
                source: None,
            })?;
            dirs.push(self.snapshot_dir(snapshot.id));
        }
        dirs.reverse();
        Ok(dirs)
    }

    /// Gives `image` the name `target` (taking it from any image that had it).
    pub fn tag(&self, source: &str, target: &str) -> Result<Reference> {
        let image = self.resolve(source)?;
        let reference: Reference = target.parse()?;
        if reference.digest.is_some() {
            return Err(Error::BadReference {
                reference: target.to_owned(),
                reason: "a tag cannot contain a digest".into(),
            });
        }
        let name = reference.to_string();
        let id = image.record.id.to_string();
        self.db().write(|tx| {
            tx.execute(
                "INSERT INTO names (name, image) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image = excluded.image",
                rusqlite::params![name, id],
            )
        })?;
        Ok(reference)
    }

    /// `docker rmi`: a name removes that name, and the image when it was the last; an id
    /// removes the image and all its names (with `force` when it has several).
    pub fn remove(&self, name: &str, force: bool) -> Result<Vec<Removed>> {
        let image = self.resolve(name)?;
        let id = image.record.id.clone();
        let by_name = name
            .parse::<Reference>()
            .ok()
            .map(|r| r.to_string())
            .filter(|n| image.record.names.contains(n));
        let holders = self.db().holders(&id)?;
        let mut removed = Vec::new();
        let untag_only = match &by_name {
            Some(_) => image.record.names.len() > 1,
            None => false,
        };
        if untag_only {
            let name = by_name.unwrap_or_default();
            self.db().write(|tx| tx.execute("DELETE FROM names WHERE name = ?1", [&name]))?;
            removed.push(Removed::Untagged(familiar(&name)));
            return Ok(removed);
        }
        if by_name.is_none() && image.record.names.len() > 1 && !force {
            return Err(Error::ImageHasNames {
                image: id.short().to_owned(),
                names: image.familiar_names().join(", "),
            });
        }
        if !holders.is_empty() && !force {
            return Err(Error::ImageInUse { image: name.to_owned(), holders: holders.join(", ") });
        }
        for name in &image.record.names {
            removed.push(Removed::Untagged(familiar(name)));
        }
        if holders.is_empty() {
            self.db()
                .write(|tx| tx.execute("DELETE FROM images WHERE id = ?1", [id.to_string()]))?;
            removed.push(Removed::Deleted(id));
            self.collect_garbage()?;
        } else {
            // Forced while in use: the names go, the image stays for its containers.
            self.db()
                .write(|tx| tx.execute("DELETE FROM names WHERE image = ?1", [id.to_string()]))?;
        }
        Ok(removed)
    }

    /// `docker image prune`: images without names (or, with `all`, every image) that no
    /// container holds. Returns the ids removed and the bytes freed.
    pub fn prune(&self, all: bool) -> Result<(Vec<Digest>, u64)> {
        let before = self.disk_usage();
        let held: HashSet<Digest> =
            self.db().all_holds()?.into_iter().map(|(_, image)| image).collect();
        let victims: Vec<Digest> = self
            .db()
            .images()?
            .into_iter()
            .filter(|i| (all || i.names.is_empty()) && !held.contains(&i.id))
            .map(|i| i.id)
            .collect();
        self.db().write(|tx| {
            for id in &victims {
                tx.execute("DELETE FROM images WHERE id = ?1", [id.to_string()])?;
            }
            Ok(())
        })?;
        self.collect_garbage()?;
        Ok((victims, before.saturating_sub(self.disk_usage())))
    }

    /// Records that `holder` (a container) uses `image`, so it cannot be removed.
    pub fn hold(&self, holder: &str, image: &Digest) -> Result<()> {
        self.db().write(|tx| {
            tx.execute(
                "INSERT INTO holds (holder, image) VALUES (?1, ?2) ON CONFLICT(holder) DO UPDATE SET image = excluded.image",
                rusqlite::params![holder, image.to_string()],
            )
        })?;
        Ok(())
    }

    pub fn release(&self, holder: &str) -> Result<()> {
        self.db().write(|tx| tx.execute("DELETE FROM holds WHERE holder = ?1", [holder]))?;
        Ok(())
    }

    /// The state a build step left, if its cache entry and everything it names still exist.
    pub fn build_cache(&self, key: &str) -> Result<Option<Image>> {
        let Some((id, manifest)) = self.db().build_cache(key)? else { return Ok(None) };
        let record = build_record(id, manifest);
        let Ok(image) = self.load(record) else { return Ok(None) };
        for chain in &image.chain_ids {
            if self.snapshot(chain)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(image))
    }

    /// Remembers the state (stored with [`crate::diff::store_image`]) a build step left.
    pub fn put_build_cache(&self, key: &str, image: &ImageRecord) -> Result<()> {
        self.db().write(|tx| {
            tx.execute(
                "INSERT INTO build_cache (key, image, manifest, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET image = excluded.image, manifest = excluded.manifest, created = excluded.created",
                rusqlite::params![key, image.id.to_string(), image.manifest.to_string(), now()],
            )
            .map(drop)
        })
    }

    /// `docker builder prune`: forgets the build cache and frees what only it reached.
    /// Returns the number of entries and the bytes freed.
    pub fn prune_build_cache(&self) -> Result<(usize, u64)> {
        let before = self.disk_usage();
        let entries = self.db().write(|tx| tx.execute("DELETE FROM build_cache", []))?;
        self.collect_garbage()?;
        Ok((entries, before.saturating_sub(self.disk_usage())))
    }

    /// Deletes blobs and snapshots that no image reaches, and leftovers of interrupted
    /// writes. Waits for writers (pulls, loads) to finish first.
    pub fn collect_garbage(&self) -> Result<()> {
        let path = self.root.join("lock");
        let lock = File::options().write(true).open(&path).map_err(io("open", &path))?;
        lock.lock().map_err(io("lock", &path))?;
        let mut blobs: HashSet<Digest> = HashSet::new();
        let mut chains: HashSet<Digest> = HashSet::new();
        let cached = self.db().build_cache_entries()?;
        let records = self.db().images()?;
        let cached = cached.into_iter().map(|(id, manifest)| build_record(id, manifest));
        for record in records.into_iter().chain(cached) {
            blobs.insert(record.manifest.clone());
            blobs.insert(record.id.clone());
            if let Some(index) = &record.index_digest {
                blobs.insert(index.clone());
            }
            match self.load(record) {
                Ok(image) => {
                    for layer in &image.manifest.layers {
                        if let Ok(digest) = layer.digest() {
                            blobs.insert(digest);
                        }
                    }
                    chains.extend(image.chain_ids.iter().cloned());
                }
                Err(err) => tracing::warn!("garbage collection keeps what it cannot read: {err}"),
            }
        }
        for digest in self.content.list()? {
            if !blobs.contains(&digest) {
                self.content.delete(&digest)?;
            }
        }
        let mut db = self.db();
        let snapshots = db.snapshots()?;
        let doomed: Vec<&SnapshotRecord> =
            snapshots.iter().filter(|s| !chains.contains(&s.chain_id)).collect();
        db.write(|tx| {
            for snapshot in &doomed {
                tx.execute("DELETE FROM snapshots WHERE id = ?1", [snapshot.id])?;
            }
            tx.execute("DELETE FROM blob_sources WHERE digest NOT IN (SELECT manifest FROM images UNION SELECT id FROM images)", []).map(drop)
        })?;
        let kept: HashSet<String> = snapshots
            .iter()
            .filter(|s| chains.contains(&s.chain_id))
            .map(|s| s.id.to_string())
            .collect();
        drop(db);
        let dir = self.root.join("snapshots");
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
            if !kept.contains(&entry.file_name().to_string_lossy().into_owned()) {
                std::fs::remove_dir_all(entry.path()).map_err(io("remove", entry.path()))?;
            }
        }
        // Unpack directories of writers that died (live writers hold the shared lock, so
        // none exist while this one holds it exclusively).
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io("list", &tmp))?.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
        self.content.clean_ingest(std::time::Duration::from_secs(24 * 3600))?;
        let _ = lock.unlock();
        Ok(())
    }

    /// Bytes used by blobs and snapshots (approximate: file sizes).
    pub fn disk_usage(&self) -> u64 {
        berth_stdx::fs::disk_usage(&self.root.join("blobs"))
            + berth_stdx::fs::disk_usage(&self.root.join("snapshots"))
    }

    /// Makes an image visible under `names`, all at once.
    pub fn record(
        &self,
        record: &ImageRecord,
        repo_digest: Option<(&str, &Digest)>,
        sources: &[(Digest, String, String)],
    ) -> Result<()> {
        self.db().write(|tx| {
            meta::put_image(tx, record)?;
            if let Some((repository, digest)) = repo_digest {
                meta::put_repo_digest(tx, &record.id, repository, digest)?;
            }
            for (digest, registry, repository) in sources {
                meta::put_blob_source(tx, digest, registry, repository)?;
            }
            Ok(())
        })
    }
}

/// The record of a state a build stored without naming it.
pub fn build_record(id: Digest, manifest: Digest) -> ImageRecord {
    ImageRecord {
        id,
        manifest,
        media_type: crate::manifest::media::OCI_MANIFEST.into(),
        index_digest: None,
        created: now(),
        names: Vec::new(),
    }
}

fn familiar(name: &str) -> String {
    name.parse::<Reference>().map(|r| r.familiar()).unwrap_or_else(|_| name.to_owned())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{History, ImageConfig};
    use crate::diff::{create_image, store_layer};

    fn small_image(store: &ImageStore, name: &str) -> Digest {
        let layer = store_layer(store, |out| {
            let mut builder = tar::Builder::new(out);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(5);
            builder.append_data(&mut header, "hello", &b"hello"[..]).map_err(|e| Error::Io {
                op: "write",
                path: "layer".into(),
                source: e,
            })?;
            builder.finish().map_err(|e| Error::Io { op: "write", path: "layer".into(), source: e })
        })
        .expect("layer");
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..ImageConfig::default()
        };
        create_image(
            store,
            None,
            config,
            vec![(layer, History::default())],
            vec![format!("docker.io/library/{name}:latest")],
        )
        .expect("image")
    }

    #[test]
    fn a_dead_writers_unpack_directories_go_at_the_next_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let mine = store.temp_dir().expect("temp");
        // pid 0 is never a process of ours: its directory is a dead writer's.
        let stale = store.root().join("tmp/unpack-0-1-abcdef");
        std::fs::create_dir_all(&stale).expect("stale");
        std::fs::write(stale.join("half-a-layer"), vec![0u8; 1024]).expect("write");
        let other = store.root().join("tmp/not-an-unpack-dir");
        std::fs::create_dir_all(&other).expect("other");
        let _guard = store.writing().expect("writing");
        assert!(!stale.exists(), "the dead writer's directory is removed");
        assert!(mine.path().exists(), "a live writer's directory stays");
        assert!(other.exists(), "what is not an unpack directory is left alone");
    }

    #[test]
    fn root_held_images_are_not_removed_without_force() {
        if !berth_sys::nix::unistd::geteuid().is_root() {
            eprintln!("skipped: unpacking sets ownership, which needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let id = small_image(&store, "held");
        store.hold("container:abc", &id).expect("hold");
        let err = store.remove("held", false).expect_err("in use");
        assert!(matches!(err, Error::ImageInUse { .. }), "{err}");
        let (pruned, _) = store.prune(true).expect("prune");
        assert!(pruned.is_empty(), "a held image survives prune -a");
        // Forced: the name goes, the image stays for its container.
        store.remove("held", true).expect("forced");
        assert!(store.resolve(&id.to_string()).is_ok());
        assert!(store.resolve("held").is_err());
        store.release("container:abc").expect("release");
        let (pruned, _) = store.prune(false).expect("prune");
        assert_eq!(pruned, vec![id]);
        assert!(store.content.list().expect("list").is_empty());
    }
}
