//! Applies a layer tar to a directory of its own, turning OCI whiteouts into overlayfs ones.
//!
//! Each layer is unpacked alone into an empty directory that later becomes one `lowerdir`
//! of an overlay mount, so `.wh.<name>` becomes a 0/0 character device named `<name>` and
//! `.wh..wh..opq` becomes the `trusted.overlay.opaque` attribute of its directory.
//!
//! A layer is untrusted input. Every entry name is checked (no `..`, no empty or NUL
//! components), every parent directory is opened with `openat2(RESOLVE_IN_ROOT)` so a
//! symlink unpacked earlier is resolved inside the directory and never outside it, and the
//! final component is always created with `*at` calls that do not follow symlinks. Hard
//! links are resolved the same way, so they can only point at files of the same layer.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_sys::fs::{resolve_in_root, Create};
use berth_sys::nix::fcntl::{openat, AtFlags, OFlag};
use berth_sys::nix::sys::stat::{
    fchmodat, fstatat, makedev, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use berth_sys::nix::sys::time::TimeSpec;
use berth_sys::nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use berth_sys::Errno;
use tar::EntryType;

use crate::error::{io, sys};
use crate::{Error, Result};

/// OCI whiteout prefix and the opaque-directory marker.
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs attribute that marks a directory opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of regular file content.
    pub size: u64,
    pub entries: u64,
}

/// Checks an entry name and splits it into normal components; `None` for the root itself.
pub fn entry_components(raw: &[u8]) -> Result<Vec<OsString>> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(Error::UnsafeEntry { entry: shown(), reason: "the name contains a NUL byte" });
    }
    let mut components = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(Error::UnsafeEntry {
                    entry: shown(),
                    reason: "the name contains `..` and could leave the layer",
                })
            }
            name => components.push(OsStr::from_bytes(name).to_os_string()),
        }
    }
    Ok(components)
}

struct Unpacker {
    root: OwnedFd,
    root_path: PathBuf,
    /// The last parent directory opened: consecutive entries mostly share it.
    parent_cache: Option<(PathBuf, OwnedFd)>,
    /// Directory mtimes are set at the end: creating children changes them.
    dir_times: Vec<(PathBuf, u64)>,
    result: Unpacked,
}

struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Unpacks the tar stream `layer` into `dir`, which should be empty and private to the
/// caller. Ownership, modes, times, device nodes and extended attributes are kept as root
/// would keep them.
pub fn unpack_layer<R: Read>(layer: R, dir: &Path) -> Result<Unpacked> {
    let root = berth_sys::nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open", dir))?;
    let mut unpacker = Unpacker {
        root,
        root_path: dir.to_path_buf(),
        parent_cache: None,
        dir_times: Vec::new(),
        result: Unpacked::default(),
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(io("read layer into", dir))? {
        let entry = entry.map_err(io("read layer into", dir))?;
        unpacker.entry(entry)?;
    }
    unpacker.finish()?;
    Ok(unpacker.result)
}

fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
    let header = entry.header();
    let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    // Some writers leave numeric fields blank: that means 0, as GNU tar reads it.
    let mut meta = Meta {
        mode: header.mode().map_err(|_| Error::UnsafeEntry {
            entry: shown,
            reason: "its mode field is unreadable",
        })? & 0o7777,
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        mtime: header.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Ok(Some(extensions)) = entry.pax_extensions() {
        for extension in extensions.flatten() {
            let key = extension.key_bytes();
            let value = extension.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
            };
            match key {
                b"uid" => meta.uid = number().unwrap_or(meta.uid),
                b"gid" => meta.gid = number().unwrap_or(meta.gid),
                b"mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        meta.xattrs.push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

impl Unpacker {
    fn full(&self, relative: &Path) -> PathBuf {
        self.root_path.join(relative)
    }

    fn parent(&mut self, relative: &Path) -> Result<BorrowedFd<'_>> {
        let cached = matches!(&self.parent_cache, Some((path, _)) if path == relative);
        if !cached {
            let fd = resolve_in_root(self.root.as_fd(), relative, Create::Directory)
                .map_err(sys("create directory", self.full(relative)))?;
            // O_PATH is enough for *at calls; check it really is a directory.
            let stat =
                berth_sys::nix::sys::stat::fstat(&fd).map_err(sys("stat", self.full(relative)))?;
            if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
                return Err(Error::UnsafeEntry {
                    entry: relative.display().to_string(),
                    reason: "a parent of this entry is not a directory",
                });
            }
            self.parent_cache = Some((relative.to_path_buf(), fd));
        }
        match &self.parent_cache {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(Error::UnsafeEntry {
                entry: relative.display().to_string(),
                reason: "its parent could not be opened",
            }),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let components = entry_components(&raw)?;
        let meta = meta_of(&mut entry)?;
        self.result.entries += 1;
        let Some((name, parents)) = components.split_last() else {
            // The layer's root directory itself ("./"): keep its mode and owner.
            if kind == EntryType::Directory {
                self.set_meta(self.root.as_fd(), OsStr::new("."), &meta, true, &shown)?;
                self.dir_times.push((PathBuf::new(), meta.mtime));
            }
            return Ok(());
        };
        let parent_path: PathBuf = parents.iter().collect();
        let relative = parent_path.join(name);
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let parent = self.parent(&parent_path)?;
            berth_sys::xattr::set(parent, OsStr::new(""), OsStr::new(OVERLAY_OPAQUE_XATTR), b"y")
                .map_err(sys("mark opaque", self.full(&parent_path)))?;
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) || hidden.is_empty() {
                // Other `.wh..wh.` names are AUFS bookkeeping with no meaning here.
                return Ok(());
            }
            let hidden = OsStr::from_bytes(hidden);
            let target = parent_path.join(hidden);
            let parent = self.parent(&parent_path)?;
            let parent = parent.try_clone_to_owned().map_err(io("open", self.root_path.clone()))?;
            self.remove_existing(parent.as_fd(), hidden, false, &target)?;
            mknodat(parent.as_fd(), hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(sys("create whiteout", self.full(&target)))?;
            return Ok(());
        }

        let parent = self.parent(&parent_path)?;
        let parent = parent.try_clone_to_owned().map_err(io("open", self.root_path.clone()))?;
        let parent = parent.as_fd();
        let is_dir = kind == EntryType::Directory;
        self.remove_existing(parent, name, is_dir, &relative)?;
        let full = self.full(&relative);
        match kind {
            EntryType::Directory => {
                match berth_sys::nix::sys::stat::mkdirat(
                    parent,
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(err) => return Err(sys("create directory", full)(err)),
                }
                self.set_meta(parent, name, &meta, true, &shown)?;
                self.dir_times.push((relative, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                let fd = openat(
                    parent,
                    name.as_os_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(sys("create", &full))?;
                let mut file = File::from(fd);
                let copied = std::io::copy(&mut entry, &mut file).map_err(io("write", &full))?;
                self.result.size += copied;
                self.set_meta(parent, name, &meta, false, &shown)?;
                let time = TimeSpec::new(meta.mtime as i64, 0);
                berth_sys::nix::sys::stat::futimens(&file, &time, &time)
                    .map_err(sys("set times of", &full))?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::UnsafeEntry {
                    entry: shown.clone(),
                    reason: "a symlink without a target",
                })?;
                symlinkat(OsStr::from_bytes(&target), parent, name.as_os_str())
                    .map_err(sys("create symlink", &full))?;
                fchownat(
                    parent,
                    name.as_os_str(),
                    Some(Uid::from_raw(meta.uid as u32)),
                    Some(Gid::from_raw(meta.gid as u32)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(sys("chown", &full))?;
                self.set_xattrs(parent, name, &meta, &shown)?;
                let time = TimeSpec::new(meta.mtime as i64, 0);
                utimensat(parent, name.as_os_str(), &time, &time, UtimensatFlags::NoFollowSymlink)
                    .map_err(sys("set times of", &full))?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::UnsafeEntry {
                    entry: shown.clone(),
                    reason: "a hard link without a target",
                })?;
                let target_components = entry_components(&target)?;
                let Some((target_name, target_parents)) = target_components.split_last() else {
                    return Err(Error::UnsafeEntry {
                        entry: shown,
                        reason: "a hard link to the layer's root",
                    });
                };
                let target_parent_path: PathBuf = target_parents.iter().collect();
                let target_parent =
                    resolve_in_root(self.root.as_fd(), &target_parent_path, Create::Nothing)
                        .map_err(sys("find the target of hard link", &full))?;
                linkat(
                    target_parent.as_fd(),
                    target_name.as_os_str(),
                    parent,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(sys("create hard link", &full))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                mknodat(
                    parent,
                    name.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(meta.mode),
                    makedev(major.into(), minor.into()),
                )
                .map_err(sys("create device node", &full))?;
                self.set_meta(parent, name, &meta, false, &shown)?;
                let time = TimeSpec::new(meta.mtime as i64, 0);
                utimensat(parent, name.as_os_str(), &time, &time, UtimensatFlags::NoFollowSymlink)
                    .map_err(sys("set times of", &full))?;
            }
            other => {
                tracing::warn!(entry = %shown, kind = ?other, "skipping a layer entry of a kind berth does not unpack");
            }
        }
        Ok(())
    }

    /// Makes room for a new entry: anything at the name goes, except a directory that a
    /// directory entry updates in place.
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        keep_dir: bool,
        relative: &Path,
    ) -> Result<()> {
        let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(err) => return Err(sys("stat", self.full(relative))(err)),
        };
        let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir && keep_dir {
            return Ok(());
        }
        // Something is replaced: a cached parent below it may be gone.
        self.parent_cache = None;
        if is_dir {
            let path = berth_sys::fs::proc_fd_path(&parent).join(name);
            std::fs::remove_dir_all(&path).map_err(io("remove", self.full(relative)))?;
        } else {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(sys("remove", self.full(relative)))?;
        }
        Ok(())
    }

    fn set_meta(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        directory: bool,
        shown: &str,
    ) -> Result<()> {
        let full = self.root_path.join(name);
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid as u32)),
            Some(Gid::from_raw(meta.gid as u32)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys("chown", &full))?;
        // After chown, which clears set-id bits. A directory was just made (or checked) by
        // us, so following the name cannot lead anywhere else.
        let _ = directory;
        fchmodat(parent, name, Mode::from_bits_truncate(meta.mode), FchmodatFlags::FollowSymlink)
            .map_err(sys("chmod", &full))?;
        self.set_xattrs(parent, name, meta, shown)
    }

    fn set_xattrs(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<()> {
        for (attr, value) in &meta.xattrs {
            if attr.as_bytes().starts_with(b"trusted.overlay.") {
                // Only whiteout entries may say what overlayfs hides.
                tracing::warn!(entry = %shown, "ignoring an overlay attribute carried by the layer");
                continue;
            }
            match berth_sys::xattr::set(parent, name, attr, value) {
                Ok(()) => {}
                Err(Errno::ENOTSUP) => {
                    tracing::warn!(entry = %shown, attr = %attr.to_string_lossy(), "the filesystem does not support this extended attribute");
                }
                Err(err) => {
                    return Err(sys("set extended attribute of", self.root_path.join(shown))(err))
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // Deepest first, so setting a parent's time is the last change under it.
        let mut times: HashMap<PathBuf, u64> = HashMap::new();
        for (path, mtime) in self.dir_times.drain(..) {
            times.insert(path, mtime);
        }
        let mut ordered: Vec<_> = times.into_iter().collect();
        ordered.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, mtime) in ordered {
            let fd = match resolve_in_root(self.root.as_fd(), &path, Create::Nothing) {
                Ok(fd) => fd,
                Err(_) => continue,
            };
            let time = TimeSpec::new(mtime as i64, 0);
            let handle = berth_sys::fs::proc_fd_path(&fd);
            // An absolute path: the directory descriptor argument is ignored.
            utimensat(self.root.as_fd(), &handle, &time, &time, UtimensatFlags::FollowSymlink)
                .map_err(sys("set times of", self.full(&path)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert_eq!(
            entry_components(b"./a/b/").expect("ok"),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert!(entry_components(b"./").expect("root").is_empty());
        assert!(
            entry_components(b"/etc/passwd").is_ok(),
            "absolute names are relative to the layer"
        );
        for bad in [&b"../x"[..], b"a/../../x", b"a/.."] {
            assert!(entry_components(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn is_root() -> bool {
        berth_sys::nix::unistd::geteuid().is_root()
    }

    /// A tar built entry by entry: (name, kind, content or link target).
    fn layer(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == EntryType::Directory { 0o755 } else { 0o644 });
            header.set_uid(1000);
            header.set_gid(1000);
            header.set_mtime(1_600_000_000);
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    header.set_size(0);
                    builder.append_link(&mut header, name, data).expect("link");
                }
                _ => {
                    header.set_size(data.len() as u64);
                    // Names with `..` are refused by the builder's own path setter: write raw.
                    let bytes = name.as_bytes();
                    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                    header.set_cksum();
                    builder.append(&header, data.as_bytes()).expect("append");
                }
            }
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn root_files_links_whiteouts_and_opaque_directories() {
        if !is_root() {
            eprintln!("skipped: needs root (ownership, device nodes, trusted xattrs)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = layer(&[
            ("etc/", EntryType::Directory, ""),
            ("etc/passwd", EntryType::Regular, "root:x:0:0"),
            ("etc/link", EntryType::Link, "etc/passwd"),
            ("etc/sym", EntryType::Symlink, "/etc/passwd"),
            ("etc/.wh.shadow", EntryType::Regular, ""),
            ("var/cache/", EntryType::Directory, ""),
            ("var/cache/.wh..wh..opq", EntryType::Regular, ""),
        ]);
        let unpacked = unpack_layer(&tar[..], dir.path()).expect("unpack");
        assert_eq!(unpacked.size, 10);
        let passwd = dir.path().join("etc/passwd");
        assert_eq!(std::fs::read_to_string(&passwd).expect("read"), "root:x:0:0");
        let meta = std::fs::metadata(&passwd).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777, meta.mtime()),
            (1000, 1000, 0o644, 1_600_000_000)
        );
        assert_eq!(meta.nlink(), 2, "the hard link shares the inode");
        assert_eq!(
            std::fs::read_link(dir.path().join("etc/sym")).expect("link"),
            Path::new("/etc/passwd")
        );
        let whiteout = std::fs::symlink_metadata(dir.path().join("etc/shadow")).expect("whiteout");
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert!(!dir.path().join("etc/.wh.shadow").exists());
        let cache = std::fs::File::open(dir.path().join("var/cache")).expect("open");
        use std::os::fd::AsFd;
        let opaque =
            berth_sys::xattr::get(cache.as_fd(), OsStr::new(""), OsStr::new(OVERLAY_OPAQUE_XATTR))
                .expect("xattr");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        assert_eq!(
            std::fs::metadata(dir.path().join("etc")).expect("etc").mtime(),
            1_600_000_000,
            "directory times are set last"
        );
    }

    #[test]
    fn root_hostile_layers_cannot_write_outside() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let outside = tempfile::tempdir().expect("outside");
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "safe").expect("victim");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", layer(&[("../escape", EntryType::Regular, "x")])),
            ("dotdot-inside", layer(&[("a/../../escape", EntryType::Regular, "x")])),
            ("hardlink-out", layer(&[("passwd", EntryType::Link, "../../../../etc/passwd")])),
        ];
        for (what, tar) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let err = unpack_layer(&tar[..], dir.path()).expect_err(what);
            assert!(matches!(err, Error::UnsafeEntry { .. }), "{what}: {err}");
        }
        // A symlink to a host directory, then a file "through" it: the write lands inside.
        let dir = tempfile::tempdir().expect("tempdir");
        let target = outside.path().to_str().expect("utf-8");
        let tar = layer(&[
            ("escape", EntryType::Symlink, target),
            ("escape/victim", EntryType::Regular, "owned"),
        ]);
        unpack_layer(&tar[..], dir.path()).expect("contained");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "safe",
            "the host file was overwritten"
        );
        let inside = dir.path().join(target.trim_start_matches('/')).join("victim");
        assert_eq!(std::fs::read_to_string(inside).expect("inside"), "owned");
        // A relative symlink climbing out, then a hard link through it: clamped as well.
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = layer(&[
            ("up", EntryType::Symlink, "../../../../../../"),
            ("grab", EntryType::Link, "up/etc/hostname"),
        ]);
        let err = unpack_layer(&tar[..], dir.path()).expect_err("a hard link to a host file");
        assert!(err.to_string().contains("hard link"), "{err}");
    }
}
