//! `berth cp`: files between the host and a container's filesystem (or its volumes).
//!
//! Paths in the container are resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink in the
//! container cannot make the copy read or write outside it; entries are then reached
//! through the resolved descriptor (`/proc/self/fd/N`), symlinks inside the copied tree are
//! copied as symlinks and never followed, and an existing symlink at a destination name is
//! replaced rather than written through.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_sys::fs::{open_in_root, resolve_in_root, Create};
use berth_sys::nix::fcntl::OFlag;

use crate::{invalid, io, Engine, Error, Result};

/// Whether a path ends in `/.` (Path's components drop that last `.`).
fn contents_only(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    bytes == b"." || bytes.ends_with(b"/.")
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Engine {
    /// Copies `path` of the container to `destination` on the host.
    pub fn copy_out(&self, container: &str, path: &Path, destination: &Path) -> Result<()> {
        if !path.is_absolute() {
            return Err(invalid("container path", format!("{} is not absolute", path.display())));
        }
        let access = self.rootfs_for_copy(container)?;
        let name = path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("root"));
        let target =
            if destination.is_dir() { destination.join(&name) } else { destination.to_owned() };
        if let Some(real) = access.etc_file(path) {
            // The container's own hosts/hostname/resolv.conf, not the rootfs placeholder.
            return copy_entry(&real, &target, false);
        }
        let (base, rest) = access.locate(path);
        let root = std::fs::File::open(&base).map_err(io("open", &base))?;
        let source = open_in_root(root.as_fd(), &rest, OFlag::O_PATH).map_err(|e| {
            Error::Other(format!("could not find {} in container {container}: {e}", path.display()))
        })?;
        // The descriptor's /proc link is itself a symlink: follow it at the top only.
        copy_entry(&fd_path(&source), &target, true)
    }

    /// Copies `source` on the host to `path` in the container.
    pub fn copy_in(&self, source: &Path, container: &str, path: &Path) -> Result<()> {
        if !path.is_absolute() {
            return Err(invalid("container path", format!("{} is not absolute", path.display())));
        }
        std::fs::symlink_metadata(source).map_err(io("read", source))?;
        let access = self.rootfs_for_copy(container)?;
        self.writable(&access, path)?;
        if let Some(real) = access.etc_file(path) {
            return copy_entry(source, &real, false);
        }
        let (base, rest) = access.locate(path);
        let root = std::fs::File::open(&base).map_err(io("open", &base))?;
        // An existing directory receives the source under its own name; otherwise the
        // path's parent must exist and the last component is the new name.
        let existing_dir =
            open_in_root(root.as_fd(), &rest, OFlag::O_PATH | OFlag::O_DIRECTORY).ok();
        let (parent, name) = match existing_dir {
            Some(dir) => {
                let name = source
                    .file_name()
                    .map(PathBuf::from)
                    .ok_or_else(|| invalid("source", "has no file name"))?;
                (dir, name)
            }
            None => {
                let name = rest
                    .file_name()
                    .map(PathBuf::from)
                    .ok_or_else(|| invalid("container path", "has no file name"))?;
                let parent_path = rest.parent().unwrap_or(Path::new(""));
                let dir =
                    resolve_in_root(root.as_fd(), parent_path, Create::Nothing).map_err(|e| {
                        Error::Other(format!(
                            "the parent of {} does not exist in container {container}: {e}",
                            path.display()
                        ))
                    })?;
                (dir, name)
            }
        };
        copy_tree(source, &fd_path(&parent).join(name))
    }
}

/// What `stat` says of a path in a container (the Docker API's archive header).
#[derive(Debug, Clone)]
pub struct PathStat {
    pub name: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub is_dir: bool,
    pub modified: std::time::SystemTime,
    /// Set for a symlink.
    pub link_target: Option<String>,
}

impl Engine {
    /// The stat of `path` in the container (a symlink's own, not its target's); a path
    /// that is not there is [`Error::NoSuchPath`].
    pub fn path_stat(&self, container: &str, path: &Path) -> Result<PathStat> {
        if !path.is_absolute() {
            return Err(invalid("container path", format!("{} is not absolute", path.display())));
        }
        let access = self.rootfs_for_copy(container)?;
        let name = if contents_only(path) {
            ".".to_owned()
        } else {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".to_owned())
        };
        let missing = |e: &dyn std::fmt::Display| {
            Error::NoSuchPath(format!(
                "Could not find the file {} in container {container}: {e}",
                path.display()
            ))
        };
        // The parent's descriptor stays open while its /proc path is used.
        let mut _parent = None;
        let real = match access.etc_file(path) {
            Some(real) => real,
            None => {
                let (base, rest) = access.locate(path);
                let root = std::fs::File::open(&base).map_err(io("open", &base))?;
                let parent = rest.parent().unwrap_or(Path::new(""));
                let dir = resolve_in_root(root.as_fd(), parent, Create::Nothing)
                    .map_err(|e| missing(&e))?;
                let real = match rest.file_name() {
                    Some(last) => fd_path(&dir).join(last),
                    None => fd_path(&dir),
                };
                _parent = Some(dir);
                real
            }
        };
        let meta = std::fs::symlink_metadata(&real).map_err(|e| missing(&e))?;
        let link_target = meta
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(&real).ok().map(|t| t.to_string_lossy().into_owned()))
            .flatten();
        Ok(PathStat {
            name,
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            is_dir: meta.is_dir(),
            modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            link_target,
        })
    }
}

impl Engine {
    /// `cp CONTAINER:PATH -`: a tar of `path` (named by its last component) to `out`.
    pub fn copy_out_tar(
        &self,
        container: &str,
        path: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        if !path.is_absolute() {
            return Err(invalid("container path", format!("{} is not absolute", path.display())));
        }
        let access = self.rootfs_for_copy(container)?;
        // `DIR/.` means the directory's contents: entries named `./...`, as Docker's.
        let name = if contents_only(path) {
            PathBuf::from(".")
        } else {
            path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
        };
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        let failed = |e: std::io::Error| Error::Other(format!("cannot write the archive: {e}"));
        if let Some(real) = access.etc_file(path) {
            builder.append_path_with_name(&real, &name).map_err(failed)?;
            return builder.finish().map_err(failed);
        }
        let (base, rest) = access.locate(path);
        let root = std::fs::File::open(&base).map_err(io("open", &base))?;
        let source = open_in_root(root.as_fd(), &rest, OFlag::O_PATH).map_err(|e| {
            Error::Other(format!("could not find {} in container {container}: {e}", path.display()))
        })?;
        let real = fd_path(&source);
        if std::fs::metadata(&real).map_err(io("read", path))?.is_dir() {
            builder.append_dir_all(&name, &real).map_err(failed)?;
        } else {
            builder.append_path_with_name(&real, &name).map_err(failed)?;
        }
        builder.finish().map_err(failed)
    }

    /// `cp - CONTAINER:DIR`: unpacks a tar from `input` into the directory `path`.
    pub fn copy_in_tar(
        &self,
        input: &mut dyn std::io::Read,
        container: &str,
        path: &Path,
    ) -> Result<()> {
        if !path.is_absolute() {
            return Err(invalid("container path", format!("{} is not absolute", path.display())));
        }
        let access = self.rootfs_for_copy(container)?;
        self.writable(&access, path)?;
        let (base, rest) = access.locate(path);
        let root = std::fs::File::open(&base).map_err(io("open", &base))?;
        let dir = open_in_root(root.as_fd(), &rest, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(|e| {
            Error::Other(format!(
                "{} is not a directory in container {container} ({e}): a tar from - is unpacked into a directory",
                path.display()
            ))
        })?;
        berth_image::unpack::unpack_layer(input, &fd_path(&dir)).map_err(|e| {
            Error::Other(format!("cannot unpack the archive into {}: {e}", path.display()))
        })?;
        Ok(())
    }

    /// Refuses a copy into a read-only volume or bind, or a `--read-only` rootfs, as
    /// Docker does.
    pub fn writable(&self, access: &crate::ops::RootfsAccess, path: &Path) -> Result<()> {
        match access.covering(path) {
            Some(mount) if mount.read_only => Err(Error::Other(format!(
                "mounted volume is marked read-only: {} is on {} (mounted with :ro)",
                path.display(),
                mount.destination
            ))),
            Some(_) => Ok(()),
            None if access.read_only && access.etc_file(path).is_none() => Err(Error::Other(format!(
                "container rootfs is marked read-only: {} cannot be written (the container runs with --read-only)",
                path.display()
            ))),
            None => Ok(()),
        }
    }
}

/// Copies a file, symlink or directory tree; never follows a symlink.
fn copy_tree(source: &Path, target: &Path) -> Result<()> {
    copy_entry(source, target, false)
}

fn copy_entry(source: &Path, target: &Path, follow_top: bool) -> Result<()> {
    let meta =
        if follow_top { std::fs::metadata(source) } else { std::fs::symlink_metadata(source) }
            .map_err(io("read", source))?;
    if let Ok(existing) = std::fs::symlink_metadata(target) {
        if existing.file_type().is_symlink() || (existing.is_dir() != meta.is_dir()) {
            if existing.is_dir() {
                std::fs::remove_dir_all(target).map_err(io("replace", target))?;
            } else {
                std::fs::remove_file(target).map_err(io("replace", target))?;
            }
        }
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        let link = std::fs::read_link(source).map_err(io("read link", source))?;
        std::os::unix::fs::symlink(&link, target).map_err(io("create link", target))?;
    } else if kind.is_dir() {
        if !target.exists() {
            std::fs::create_dir(target).map_err(io("create", target))?;
        }
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("chmod", target))?;
        for entry in std::fs::read_dir(source).map_err(io("read", source))? {
            let entry = entry.map_err(io("read", source))?;
            copy_tree(&entry.path(), &target.join(entry.file_name()))?;
        }
    } else if kind.is_file() {
        // O_NOFOLLOW on the target: a symlink appearing there meanwhile fails the copy.
        let mut from = std::fs::File::open(source).map_err(io("open", source))?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(berth_sys::libc::O_NOFOLLOW)
            .open(target)
            .map_err(io("create", target))?;
        std::io::copy(&mut from, &mut to).map_err(io("copy to", target))?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("chmod", target))?;
    } else {
        return Err(Error::Other(format!(
            "{} is a special file; only files, directories and links are copied",
            source.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_copied_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/file"), "data").unwrap();
        std::fs::set_permissions(src.join("sub/file"), std::fs::Permissions::from_mode(0o751))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("sub/file")).unwrap(), "data");
        assert_eq!(std::fs::metadata(dst.join("sub/file")).unwrap().mode() & 0o777, 0o751);
        assert_eq!(std::fs::read_link(dst.join("link")).unwrap(), Path::new("/etc/passwd"));
        // A symlink at the destination is replaced, not written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        copy_tree(&src.join("sub/file"), &target).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "data");
        assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
    }
}
