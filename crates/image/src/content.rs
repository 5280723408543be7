//! The content store: blobs addressed by digest under `blobs/<algorithm>/<hex>`.
//!
//! Nothing becomes visible under `blobs/` until it has been verified against its digest and
//! size and synced: writes go to `ingest/<algorithm>-<hex>`, locked while written, and are
//! renamed into place at the end. A download that is cut off leaves its partial file in
//! `ingest/`, and the next attempt resumes from there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::error::io;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore> {
        let store = ContentStore { blobs: root.join("blobs"), ingest: root.join("ingest") };
        for dir in [store.blobs.join("sha256"), store.blobs.join("sha512"), store.ingest.clone()] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        Ok(store)
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.algorithm().name()).join(digest.hex())
    }

    /// The size of a stored blob, or `None` when it is not stored.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.size(digest).is_some()
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::BlobNotFound { digest: digest.clone() },
            _ => Error::Io { op: "open", path, source: err },
        })
    }

    /// A small blob (manifest, config, index), checked against its digest on every read so
    /// that a blob damaged on disk is reported instead of used.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(digest)?.read_to_end(&mut data).map_err(io("read", self.path(digest)))?;
        let mut hasher = Hasher::new(digest.algorithm());
        hasher.update(&data);
        let actual = hasher.finish();
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
                size: data.len() as u64,
            });
        }
        Ok(data)
    }

    /// Stores `data`; when `expected` is given the data must match it.
    pub fn put(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let digest = match expected {
            Some(expected) => {
                let mut hasher = Hasher::new(expected.algorithm());
                hasher.update(data);
                let actual = hasher.finish();
                if &actual != expected {
                    return Err(Error::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                        size: data.len() as u64,
                    });
                }
                actual
            }
            None => Digest::of(data),
        };
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut ingest = self.ingest(&digest, Some(data.len() as u64))?;
        ingest.restart()?;
        ingest.write_all(data).map_err(io("write", ingest.path.clone()))?;
        ingest.commit()?;
        Ok(digest)
    }

    /// Starts or resumes writing the blob `digest`. Blocks while another process or thread
    /// is writing the same blob; afterwards the caller should check [`ContentStore::contains`]
    /// again.
    pub fn ingest(&self, digest: &Digest, size: Option<u64>) -> Result<Ingest> {
        let path = self.ingest.join(format!("{}-{}", digest.algorithm().name(), digest.hex()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        let offset = file.metadata().map_err(io("stat", &path))?.len();
        Ok(Ingest {
            file,
            path,
            target: self.path(digest),
            digest: digest.clone(),
            size,
            offset,
            written: 0,
            hasher: Hasher::new(digest.algorithm()),
        })
    }

    /// Moves a file whose digest the caller computed while writing it into the store. The
    /// file must be on the store's filesystem.
    pub fn adopt(&self, path: &Path, digest: &Digest) -> Result<()> {
        let target = self.path(digest);
        std::fs::rename(path, &target).map_err(io("store", &target))?;
        if let Some(dir) = target.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
        }
        Ok(())
    }

    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { op: "remove", path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for algorithm in ["sha256", "sha512"] {
            let dir = self.blobs.join(algorithm);
            for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
                let entry = entry.map_err(io("list", &dir))?;
                if let Ok(digest) =
                    format!("{algorithm}:{}", entry.file_name().to_string_lossy()).parse()
                {
                    digests.push(digest);
                }
            }
        }
        Ok(digests)
    }

    /// Removes partial downloads nobody is writing that are older than `age`.
    pub fn clean_ingest(&self, age: std::time::Duration) -> Result<()> {
        for entry in std::fs::read_dir(&self.ingest).map_err(io("list", &self.ingest))?.flatten() {
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e > age);
            if old {
                if let Ok(file) = File::open(entry.path()) {
                    if file.try_lock().is_ok() {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A blob being written: the locked partial file in `ingest/`.
#[derive(Debug)]
pub struct Ingest {
    file: File,
    path: PathBuf,
    target: PathBuf,
    digest: Digest,
    size: Option<u64>,
    /// Bytes already in the partial file when it was opened.
    offset: u64,
    written: u64,
    hasher: Hasher,
}

impl Ingest {
    /// How many bytes an earlier attempt left: the download resumes from here.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// True when the blob was stored by someone else while this one waited for the lock.
    pub fn already_stored(&self) -> bool {
        self.target.is_file()
    }

    /// Forgets the partial data and starts again from byte 0.
    pub fn restart(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(io("truncate", &self.path))?;
        self.offset = 0;
        self.written = 0;
        self.hasher = Hasher::new(self.digest.algorithm());
        Ok(())
    }

    /// A reader that yields the partial data already on disk, then `rest` (the remainder
    /// from the network), appending `rest` to the partial file; everything is hashed.
    pub fn resume<R: Read>(self, rest: R) -> IngestReader<R> {
        IngestReader { ingest: self, replayed: 0, rest }
    }

    /// Verifies size and digest, syncs, and moves the blob into the store.
    pub fn commit(self) -> Result<Digest> {
        let Ingest { file, path, target, digest, size, offset, written, hasher } = self;
        let total = offset + written;
        if let Some(expected) = size {
            if expected != total {
                let _ = std::fs::remove_file(&path);
                return Err(Error::SizeMismatch { digest, expected, actual: total });
            }
        }
        let actual = hasher.finish();
        if actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(Error::DigestMismatch { expected: digest, actual, size: total });
        }
        file.sync_all().map_err(io("sync", &path))?;
        std::fs::rename(&path, &target).map_err(io("store", &target))?;
        if let Some(dir) = target.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
        }
        Ok(digest)
    }

    /// Drops the partial data: it is known to be bad.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn check_size(&self, extra: u64) -> std::io::Result<()> {
        match self.size {
            Some(size) if self.offset + self.written + extra > size => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is longer than the {size} bytes its descriptor says", self.digest),
            )),
            _ => Ok(()),
        }
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check_size(buf.len() as u64)?;
        self.file.seek(SeekFrom::End(0))?;
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// See [`Ingest::resume`].
#[derive(Debug)]
pub struct IngestReader<R> {
    ingest: Ingest,
    replayed: u64,
    rest: R,
}

impl<R: Read> IngestReader<R> {
    /// Call at the end of the stream: verifies and stores the blob.
    pub fn commit(mut self) -> Result<Digest> {
        // Whatever the consumer did not read still belongs to the blob.
        let mut sink = std::io::sink();
        std::io::copy(&mut self, &mut sink).map_err(io("read", self.ingest.path.clone()))?;
        self.ingest.commit()
    }

    /// Keeps the partial data for a later resume.
    pub fn keep(self) -> Ingest {
        self.ingest
    }

    pub fn bytes(&self) -> u64 {
        self.replayed + self.ingest.written
    }
}

impl<R: Read> Read for IngestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.replayed < self.ingest.offset {
            self.ingest.file.seek(SeekFrom::Start(self.replayed))?;
            let want = buf.len().min((self.ingest.offset - self.replayed) as usize);
            let n = self.ingest.file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "partial download shrank",
                ));
            }
            self.ingest.hasher.update(&buf[..n]);
            self.replayed += n as u64;
            return Ok(n);
        }
        let n = self.rest.read(buf)?;
        if n > 0 {
            self.ingest.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_refuse_bad_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let digest = store.put(b"hello", None).expect("put");
        assert_eq!(store.read(&digest).expect("read"), b"hello");
        let wrong = Digest::of(b"other");
        assert!(matches!(store.put(b"hello", Some(&wrong)), Err(Error::DigestMismatch { .. })));
        assert!(!store.contains(&wrong));
        // Corruption on disk is noticed on read.
        std::fs::write(store.path(&digest), b"jello").expect("corrupt");
        assert!(matches!(store.read(&digest), Err(Error::DigestMismatch { .. })));
    }

    #[test]
    fn an_interrupted_ingest_resumes_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        // First attempt: the connection dies after 30000 bytes.
        let ingest = store.ingest(&digest, Some(data.len() as u64)).expect("ingest");
        let mut reader = ingest.resume(&data[..30_000]);
        std::io::copy(&mut reader, &mut std::io::sink()).expect("copy");
        drop(reader.keep());
        assert!(!store.contains(&digest), "a partial blob must not be visible");
        // Second attempt resumes at 30000 and the consumer still sees every byte.
        let ingest = store.ingest(&digest, Some(data.len() as u64)).expect("ingest");
        assert_eq!(ingest.offset(), 30_000);
        let mut reader = ingest.resume(&data[30_000..]);
        let mut seen = Vec::new();
        reader.read_to_end(&mut seen).expect("read");
        assert_eq!(seen, data);
        reader.commit().expect("commit");
        assert_eq!(store.read(&digest).expect("read"), data);
    }

    #[test]
    fn too_long_or_wrong_content_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let digest = Digest::of(b"abc");
        let ingest = store.ingest(&digest, Some(3)).expect("ingest");
        let mut reader = ingest.resume(&b"abcdef"[..]);
        assert!(std::io::copy(&mut reader, &mut std::io::sink()).is_err());
        drop(reader);
        let ingest = store.ingest(&digest, Some(3)).expect("ingest");
        let reader = ingest.resume(&b"xyz"[..]);
        assert!(matches!(reader.commit(), Err(Error::DigestMismatch { .. })));
        assert!(!store.contains(&digest));
        let ingest = store.ingest(&digest, Some(3)).expect("ingest");
        assert_eq!(ingest.offset(), 0, "bad data is not resumed from");
    }
}
