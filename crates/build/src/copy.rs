//! COPY and ADD: finding sources (wildcards, `.dockerignore`, never leaving their root),
//! hashing them for the cache, and writing them into a build's root filesystem through
//! descriptors resolved inside it, so an image's symlinks cannot send a write outside.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_sys::fs::{open_in_root, resolve_in_root, Create};
use berth_sys::nix::fcntl::{openat, AtFlags, OFlag};
use berth_sys::nix::sys::stat::{
    fchmod, fstatat, futimens, mkdirat, utimensat, Mode, UtimensatFlags,
};
use berth_sys::nix::sys::time::TimeSpec;
use berth_sys::nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use berth_sys::Errno;
use sha2::{Digest as _, Sha256};

use crate::ignore::{clean, glob_match, Ignore};

/// A copy error, said in the words of the instruction.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CopyError(pub String);

type Result<T> = std::result::Result<T, CopyError>;

fn fail(what: impl std::fmt::Display, err: impl std::fmt::Display) -> CopyError {
    CopyError(format!("{what}: {err}"))
}

/// Where sources are read from: the build context (symlinks must stay inside it) or a
/// stage's or image's root filesystem (symlinks resolve inside it, as in a container).
#[derive(Debug)]
pub struct SourceRoot {
    pub dir: PathBuf,
    fd: OwnedFd,
    context: bool,
    ignore: Ignore,
}

/// A resolved source: its path as written and a handle to what it names.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    fd: OwnedFd,
}

impl Source {
    /// A path that reaches the source through its descriptor.
    pub fn path(&self) -> PathBuf {
        berth_sys::fs::proc_fd_path(&self.fd)
    }
}

fn has_meta(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

impl SourceRoot {
    pub fn context(dir: &Path, ignore: Ignore) -> Result<SourceRoot> {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| fail(format!("the build context {}", dir.display()), e))?;
        let fd = File::open(&dir).map_err(|e| fail(format!("open {}", dir.display()), e))?;
        Ok(SourceRoot { dir, fd: fd.into(), context: true, ignore })
    }

    pub fn filesystem(dir: &Path) -> Result<SourceRoot> {
        let fd = File::open(dir).map_err(|e| fail(format!("open {}", dir.display()), e))?;
        Ok(SourceRoot {
            dir: dir.to_owned(),
            fd: fd.into(),
            context: false,
            ignore: Ignore::default(),
        })
    }

    /// What is at `rel` (a path as it is, never a pattern), through the root.
    pub fn metadata(&self, rel: &str) -> Result<std::fs::Metadata> {
        let fd = self.open(rel)?;
        std::fs::metadata(berth_sys::fs::proc_fd_path(&fd)).map_err(|e| fail(rel, e))
    }

    /// Leaves out what `ignore` matches (COPY --from=... --exclude=...).
    pub fn with_ignore(mut self, ignore: Ignore) -> SourceRoot {
        self.ignore = ignore;
        self
    }

    fn open(&self, rel: &str) -> Result<OwnedFd> {
        if self.context {
            // Inside the context, a symlink that leaves it is an error, not a clamp.
            if let Ok(real) = std::fs::canonicalize(self.dir.join(rel)) {
                let Ok(inside) = real.strip_prefix(&self.dir) else {
                    return Err(CopyError(format!(
                        "{rel:?} leaves the build context through a symlink: only files inside the context can be copied"
                    )));
                };
                // A symlink to what .dockerignore leaves out does not bring it in.
                let inside = inside.to_string_lossy();
                if !inside.is_empty() && self.ignore.excludes(&inside) {
                    return Err(CopyError(format!(
                        "{rel:?} leads to {inside:?}, which .dockerignore excludes"
                    )));
                }
            }
        }
        open_in_root(self.fd.as_fd(), Path::new(rel), OFlag::O_PATH).map_err(|e| match e {
            Errno::ENOENT => CopyError(format!(
                "{rel:?} not found{}",
                if self.context { " in the build context" } else { "" }
            )),
            other => fail(rel, other),
        })
    }

    /// Expands a source as written (wildcards as Go's filepath.Match) into what it names.
    pub fn expand(&self, written: &str) -> Result<Vec<Source>> {
        let cleaned = clean(written);
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(CopyError(format!(
                "{written:?} is outside the build context: only files inside it can be copied"
            )));
        }
        if !has_meta(&cleaned) {
            if cleaned != "." && self.ignore.excludes(&cleaned) {
                let by = if self.context { ".dockerignore or --exclude" } else { "--exclude" };
                return Err(CopyError(format!("{written:?} is excluded by {by}")));
            }
            let fd = self.open(&cleaned)?;
            return Ok(vec![Source { name: cleaned, fd }]);
        }
        let mut candidates = vec![String::new()];
        let segments: Vec<&str> = cleaned.split('/').collect();
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut next = Vec::new();
            for base in &candidates {
                let joined = |name: &str| {
                    if base.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{base}/{name}")
                    }
                };
                if !has_meta(segment) {
                    next.push(joined(segment));
                    continue;
                }
                let dir = match self.open(if base.is_empty() { "." } else { base }) {
                    Ok(dir) => dir,
                    Err(_) => continue,
                };
                let Ok(entries) = std::fs::read_dir(berth_sys::fs::proc_fd_path(&dir)) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for name in names {
                    match glob_match(segment, &name) {
                        Some(true) => next.push(joined(&name)),
                        Some(false) => {}
                        None => {
                            return Err(CopyError(format!("{written:?} is not a valid pattern")))
                        }
                    }
                }
                if !last {
                    next.retain(|p| self.open(p).is_ok());
                }
            }
            candidates = next;
        }
        let mut found = Vec::new();
        for name in candidates {
            if self.ignore.excludes(&name) {
                continue;
            }
            if let Ok(fd) = self.open(&name) {
                found.push(Source { name, fd });
            }
        }
        if found.is_empty() {
            return Err(CopyError(format!(
                "no source files were specified: {written:?} matches nothing"
            )));
        }
        Ok(found)
    }

    /// Whether `.dockerignore` leaves anything out.
    pub fn has_ignores(&self) -> bool {
        self.context && !self.ignore.is_empty()
    }

    /// Whether a path under a copied directory (relative to the root) is left out.
    fn skipped(&self, rel: &str) -> bool {
        self.ignore.excludes(rel)
    }

    /// A digest of what copying `source` reads: names, types, modes, link targets and
    /// contents, not times, so touching a file keeps the cache.
    pub fn hash(&self, source: &Source, hasher: &mut Sha256) -> Result<()> {
        let top = source.path();
        let meta = std::fs::metadata(&top).map_err(|e| fail(&source.name, e))?;
        hasher.update(source.name.as_bytes());
        if meta.is_dir() {
            self.hash_dir(&top, &source.name, hasher)
        } else {
            hash_entry(&top, &meta, hasher).map_err(|e| fail(&source.name, e))
        }
    }

    fn hash_dir(&self, dir: &Path, rel: &str, hasher: &mut Sha256) -> Result<()> {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).map_err(|e| fail(rel, e))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let full = clean(&join(rel, &entry.file_name()));
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(&full, e))?;
            let skipped = self.skipped(&full);
            if skipped && !(meta.is_dir() && self.ignore.may_include_under(&full)) {
                continue;
            }
            hasher.update(b"\0");
            hasher.update(full.as_bytes());
            if !skipped {
                hash_entry(&path, &meta, hasher).map_err(|e| fail(&full, e))?;
            }
            if meta.is_dir() {
                self.hash_dir(&path, &full, hasher)?;
            }
        }
        Ok(())
    }
}

fn join(rel: &str, name: &OsStr) -> String {
    let name = name.to_string_lossy();
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn hash_entry(path: &Path, meta: &std::fs::Metadata, hasher: &mut Sha256) -> std::io::Result<()> {
    hasher.update(format!(":{:o}:{}:{}:", meta.mode(), meta.uid(), meta.gid()).as_bytes());
    if meta.file_type().is_symlink() {
        hasher.update(std::fs::read_link(path)?.as_os_str().as_bytes());
    } else if meta.is_file() {
        let mut file = File::open(path)?;
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(())
}

/// How copied files are owned and moded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes {
    /// `--chown`; without it, files are root's (COPY) or the archive's (ADD of a tar).
    pub owner: Option<(u32, u32)>,
    /// `--chmod`.
    pub mode: Option<u32>,
}

/// Writes into a build's root filesystem.
#[derive(Debug)]
pub struct Target<'a> {
    pub root: BorrowedFd<'a>,
    pub attributes: Attributes,
}

fn io_error(path: &Path) -> impl Fn(Errno) -> CopyError + '_ {
    move |e| fail(format!("write {}", path.display()), e)
}

impl Target<'_> {
    /// Whether `path` is a directory in the root (following its symlinks inside the root).
    pub fn is_dir(&self, path: &Path) -> bool {
        open_in_root(self.root, path, OFlag::O_PATH | OFlag::O_DIRECTORY).is_ok()
    }

    /// Makes `path` a directory (and its parents), owned as asked when created here.
    pub fn make_dir(&self, path: &Path) -> Result<OwnedFd> {
        let rel = berth_sys::fs::relative(path);
        let mut created = Vec::new();
        let mut prefix = PathBuf::new();
        for component in rel.iter() {
            prefix.push(component);
            if open_in_root(self.root, &prefix, OFlag::O_PATH).is_err() {
                created.push(prefix.clone());
            }
        }
        let fd = resolve_in_root(self.root, &rel, Create::Directory).map_err(io_error(path))?;
        if let Some((uid, gid)) = self.attributes.owner {
            for dir in created {
                let handle =
                    resolve_in_root(self.root, &dir, Create::Nothing).map_err(io_error(&dir))?;
                chown_fd(handle.as_fd(), uid, gid).map_err(io_error(&dir))?;
            }
        }
        Ok(fd)
    }

    /// The directory that holds `path` (made if missing) and the last component's name.
    fn parent_of<'p>(&self, path: &'p Path) -> Result<(OwnedFd, &'p OsStr)> {
        let name = path
            .file_name()
            .ok_or_else(|| CopyError(format!("cannot write to {}", path.display())))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let dir = self.make_dir(parent)?;
        let dir = berth_sys::fs::open_in_root(
            dir.as_fd(),
            Path::new("."),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(io_error(parent))?;
        Ok((dir, name))
    }

    /// Removes what is at `name` in `dir` unless it is a directory (which stays, to merge).
    fn clear(&self, dir: BorrowedFd<'_>, name: &OsStr, path: &Path, keep_dir: bool) -> Result<()> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if stat.st_mode & libc_mode::S_IFMT == libc_mode::S_IFDIR => {
                if keep_dir {
                    Ok(())
                } else {
                    Err(CopyError(format!(
                        "cannot replace the directory {} with a file",
                        path.display()
                    )))
                }
            }
            Ok(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io_error(path)),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_error(path)(e)),
        }
    }

    /// Writes a regular file from `reader`.
    pub fn write_file(
        &self,
        path: &Path,
        reader: &mut dyn Read,
        mode: u32,
        owner: (u32, u32),
        mtime: Option<i64>,
    ) -> Result<()> {
        let (dir, name) = self.parent_of(path)?;
        self.clear(dir.as_fd(), name, path, false)?;
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_error(path))?;
        let mut file = File::from(fd);
        std::io::copy(reader, &mut file)
            .map_err(|e| fail(format!("write {}", path.display()), e))?;
        file.flush().map_err(|e| fail(format!("write {}", path.display()), e))?;
        let (uid, gid) = self.attributes.owner.unwrap_or(owner);
        chown_fd(file.as_fd(), uid, gid).map_err(io_error(path))?;
        let mode = self.attributes.mode.unwrap_or(mode) & 0o7777;
        fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).map_err(io_error(path))?;
        if let Some(mtime) = mtime {
            let time = TimeSpec::new(mtime, 0);
            futimens(file.as_fd(), &time, &time).map_err(io_error(path))?;
        }
        Ok(())
    }

    pub fn write_symlink(
        &self,
        path: &Path,
        target: &Path,
        owner: (u32, u32),
        mtime: Option<i64>,
    ) -> Result<()> {
        let (dir, name) = self.parent_of(path)?;
        self.clear(dir.as_fd(), name, path, false)?;
        symlinkat(target, dir.as_fd(), name).map_err(io_error(path))?;
        let (uid, gid) = self.attributes.owner.unwrap_or(owner);
        fchownat(
            dir.as_fd(),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_error(path))?;
        if let Some(mtime) = mtime {
            let time = TimeSpec::new(mtime, 0);
            let _ = utimensat(dir.as_fd(), name, &time, &time, UtimensatFlags::NoFollowSymlink);
        }
        Ok(())
    }

    /// Makes a directory with the given attributes (an existing one keeps its own, as
    /// Docker merges into it).
    pub fn write_dir(
        &self,
        path: &Path,
        mode: u32,
        owner: (u32, u32),
        mtime: Option<i64>,
    ) -> Result<()> {
        if path == Path::new("/") {
            return Ok(());
        }
        let (dir, name) = self.parent_of(path)?;
        self.clear(dir.as_fd(), name, path, true)?;
        match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {
                let handle = openat(
                    dir.as_fd(),
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_error(path))?;
                let (uid, gid) = self.attributes.owner.unwrap_or(owner);
                chown_fd(handle.as_fd(), uid, gid).map_err(io_error(path))?;
                let mode = self.attributes.mode.unwrap_or(mode) & 0o7777;
                fchmod(handle.as_fd(), Mode::from_bits_truncate(mode)).map_err(io_error(path))?;
                if let Some(mtime) = mtime {
                    let time = TimeSpec::new(mtime, 0);
                    futimens(handle.as_fd(), &time, &time).map_err(io_error(path))?;
                }
                Ok(())
            }
            Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(io_error(path)(e)),
        }
    }

    /// Copies a source (a file, a symlink's target, or a directory's content) to `dest`.
    pub fn copy(&self, from: &SourceRoot, source: &Source, dest: &Path) -> Result<()> {
        let top = source.path();
        let meta = std::fs::metadata(&top).map_err(|e| fail(&source.name, e))?;
        if meta.is_dir() {
            self.make_dir(dest)?;
            if let Some((uid, gid)) = self.attributes.owner {
                let handle =
                    resolve_in_root(self.root, dest, Create::Nothing).map_err(io_error(dest))?;
                chown_fd(handle.as_fd(), uid, gid).map_err(io_error(dest))?;
            }
            self.copy_dir(from, &top, &source.name, dest)
        } else {
            self.copy_one(&top, &meta, dest, false)
        }
    }

    fn copy_dir(&self, from: &SourceRoot, dir: &Path, rel: &str, dest: &Path) -> Result<()> {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).map_err(|e| fail(rel, e))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_rel = join(rel, &entry.file_name());
            if from.skipped(&clean(&child_rel)) {
                let meta = std::fs::symlink_metadata(entry.path()).ok();
                if !(meta.is_some_and(|m| m.is_dir()) && from.ignore.may_include_under(&child_rel))
                {
                    continue;
                }
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| fail(&child_rel, e))?;
            let target = dest.join(entry.file_name());
            if meta.is_dir() {
                if !from.skipped(&clean(&child_rel)) {
                    self.write_dir(&target, meta.mode(), (0, 0), Some(meta.mtime()))?;
                }
                self.copy_dir(from, &path, &child_rel, &target)?;
            } else {
                self.copy_one(&path, &meta, &target, true)?;
            }
        }
        Ok(())
    }

    fn copy_one(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        dest: &Path,
        nested: bool,
    ) -> Result<()> {
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| fail(path.display(), e))?;
            return self.write_symlink(dest, &target, (0, 0), Some(meta.mtime()));
        }
        if file_type.is_file() {
            let mut file = File::open(path).map_err(|e| fail(dest.display(), e))?;
            return self.write_file(
                dest,
                &mut file,
                meta.permissions().mode(),
                (0, 0),
                Some(meta.mtime()),
            );
        }
        if nested
            && (file_type.is_fifo()
                || file_type.is_socket()
                || file_type.is_char_device()
                || file_type.is_block_device())
        {
            {
                tracing::warn!(
                    "{} is not a file, directory or symlink; not copied",
                    dest.display()
                );
                return Ok(());
            }
        }
        Err(CopyError(format!("{} is not a file, directory or symlink", dest.display())))
    }
}

fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> std::result::Result<(), Errno> {
    fchownat(fd, "", Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_EMPTY_PATH)
}

mod libc_mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFREG: u32 = 0o100000;
}

/// The archive formats ADD unpacks, by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// A reader of what a compressed file holds. gzip and zstd are decoded in-process; xz and
/// bzip2 by Debian's `xz` and `bzip2` (as Docker runs `xz` for its own unpacking), whose
/// output is read from a pipe; the child is reaped when the reader goes.
pub fn decompress(kind: Archive, file: std::fs::File) -> std::io::Result<Box<dyn Read>> {
    Ok(match kind {
        Archive::Tar => Box::new(file),
        Archive::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))),
        Archive::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
        Archive::Xz | Archive::Bzip2 => {
            let program = if kind == Archive::Xz { "xz" } else { "bzip2" };
            let mut child = std::process::Command::new(program)
                .arg("-dcq")
                .stdin(file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot run {program} to unpack the archive (install it): {e}"),
                    )
                })?;
            let out = child.stdout.take().ok_or_else(|| std::io::Error::other("no pipe"))?;
            Box::new(Piped { child, out })
        }
    })
}

/// The output of a decompressing child; the child is waited for when this is dropped.
struct Piped {
    child: std::process::Child,
    out: std::process::ChildStdout,
}

impl Read for Piped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.out.read(buf)
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        // A reader that stopped early leaves the child writing to a closed pipe: it ends.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn archive_kind(head: &[u8]) -> Option<Archive> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Archive::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(Archive::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Archive::Xz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Archive::Zstd)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Archive::Tar)
    } else {
        None
    }
}

/// Unpacks a tar (ADD of a local archive) into `dest`, keeping the archive's owners and
/// modes unless `--chown`/`--chmod` say otherwise. Names with `..` are refused.
pub fn extract(target: &Target<'_>, reader: impl Read, dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| fail("read the archive", e))?;
    let mut links = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| fail("read the archive", e))?;
        let name = entry.path().map_err(|e| fail("read the archive", e))?.into_owned();
        if name.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(CopyError(format!(
                "the archive holds {}, which leaves its directory",
                name.display()
            )));
        }
        let path = dest.join(berth_sys::fs::relative(&name));
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let owner = (header.uid().unwrap_or(0) as u32, header.gid().unwrap_or(0) as u32);
        let mtime = header.mtime().ok().map(|m| m as i64);
        match header.entry_type() {
            tar::EntryType::Directory => target.write_dir(&path, mode, owner, mtime)?,
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| fail("read the archive", e))?
                    .unwrap_or_default()
                    .into_owned();
                target.write_symlink(&path, &link, owner, mtime)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| fail("read the archive", e))?
                    .unwrap_or_default()
                    .into_owned();
                links.push((path, dest.join(berth_sys::fs::relative(&link)), mode, owner, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                target.write_file(&path, &mut entry, mode, owner, mtime)?;
            }
            _ => tracing::warn!(
                "{} in the archive is not a file, directory or link; skipped",
                name.display()
            ),
        }
    }
    // Hard links become copies of what they name (already written above).
    for (path, original, mode, owner, mtime) in links {
        // Only a regular file is read: a link to a device node must not copy a host disk.
        let handle = open_in_root(target.root, &original, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|e| fail(format!("link {} to {}", path.display(), original.display()), e))?;
        let stat = berth_sys::nix::sys::stat::fstat(handle.as_fd())
            .map_err(|e| fail(format!("link {} to {}", path.display(), original.display()), e))?;
        if stat.st_mode & libc_mode::S_IFMT != libc_mode::S_IFREG {
            return Err(CopyError(format!(
                "the archive links {} to {}, which is not a regular file",
                path.display(),
                original.display()
            )));
        }
        let mut file = File::open(berth_sys::fs::proc_fd_path(&handle))
            .map_err(|e| fail(format!("link {} to {}", path.display(), original.display()), e))?;
        target.write_file(&path, &mut file, mode, owner, mtime)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_known_by_their_first_bytes() {
        assert_eq!(archive_kind(&[0x1f, 0x8b, 8]), Some(Archive::Gzip));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(archive_kind(&tar), Some(Archive::Tar));
        assert_eq!(archive_kind(b"hello world"), None);
    }

    #[test]
    fn sources_stay_in_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src/a")).expect("mkdir");
        std::fs::write(dir.path().join("src/a/one.txt"), "1").expect("write");
        std::fs::write(dir.path().join("src/two.txt"), "2").expect("write");
        std::fs::write(dir.path().join("secret.key"), "k").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("escape")).expect("symlink");
        std::os::unix::fs::symlink("src/two.txt", dir.path().join("inside")).expect("symlink");
        let root = SourceRoot::context(dir.path(), Ignore::parse("*.key\n").expect("ignore"))
            .expect("root");
        let names = |pattern: &str| -> Vec<String> {
            root.expand(pattern).expect(pattern).into_iter().map(|s| s.name).collect()
        };
        assert_eq!(names("src/*.txt"), vec!["src/two.txt"]);
        assert_eq!(names("src/*/*.txt"), vec!["src/a/one.txt"]);
        assert_eq!(names("./src/../src/two.txt"), vec!["src/two.txt"]);
        assert_eq!(names("inside"), vec!["inside"]);
        let err = root.expand("escape").expect_err("escapes").to_string();
        assert!(err.contains("leaves the build context"), "{err}");
        let err = root.expand("../x").expect_err("outside").to_string();
        assert!(err.contains("outside the build context"), "{err}");
        let err = root.expand("secret.key").expect_err("ignored").to_string();
        assert!(err.contains(".dockerignore"), "{err}");
        assert!(root.expand("*.nothing").is_err());
        assert!(root.expand("missing").expect_err("missing").to_string().contains("not found"));
    }

    #[test]
    fn the_hash_follows_content_not_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("d")).expect("mkdir");
        std::fs::write(dir.path().join("d/f"), "content").expect("write");
        let digest = || {
            let root = SourceRoot::context(dir.path(), Ignore::default()).expect("root");
            let mut hasher = Sha256::new();
            for source in root.expand("d").expect("expand") {
                root.hash(&source, &mut hasher).expect("hash");
            }
            format!("{:x}", hasher.finalize())
        };
        let first = digest();
        let file = File::options().write(true).open(dir.path().join("d/f")).expect("open");
        file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .expect("touch");
        assert_eq!(digest(), first, "a touch keeps the hash");
        std::fs::write(dir.path().join("d/f"), "contenT").expect("write");
        assert_ne!(digest(), first, "one byte changes it");
    }
}
