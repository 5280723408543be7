//! The changes of an overlayfs upper directory as an OCI layer, and new images made of
//! such layers (commit, import, build).
//!
//! An upper directory already is a diff against its lower layers: what is in it was added
//! or changed, a 0/0 character device is a deletion, a directory with the
//! `trusted.overlay.opaque` attribute hides everything below it. Turning that into a tar
//! means writing the whiteouts the OCI way (`.wh.<name>`, `.wh..wh..opq`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{rfc3339, History, ImageConfig};
use crate::digest::{Digest, HashingWriter};
use crate::error::io;
use crate::manifest::{media, Compression, Descriptor, Manifest};
use crate::meta::ImageRecord;
use crate::pull::unpack_stored;
use crate::store::{now, Image, ImageStore};
use crate::unpack::{OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX};
use crate::{Error, Result};

/// One change, as `docker diff` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added(PathBuf),
    Changed(PathBuf),
    Deleted(PathBuf),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added(p) => write!(f, "A /{}", p.display()),
            Change::Changed(p) => write!(f, "C /{}", p.display()),
            Change::Deleted(p) => write!(f, "D /{}", p.display()),
        }
    }
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let Ok(dir) = File::open(path) else { return false };
    use std::os::fd::AsFd;
    matches!(berth_sys::xattr::get(dir.as_fd(), OsStr::new(""), OsStr::new(OVERLAY_OPAQUE_XATTR)), Ok(Some(v)) if v == b"y")
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .collect::<std::io::Result<_>>()
        .map_err(io("list", dir))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    Ok(entries)
}

/// `docker diff`: what the upper directory adds, changes and deletes relative to `lowers`.
pub fn changes(
    upper: &Path,
    lowers: &[PathBuf],
    exclude: &dyn Fn(&Path) -> bool,
) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    walk_changes(upper, Path::new(""), lowers, exclude, &mut out)?;
    Ok(out)
}

fn walk_changes(
    upper: &Path,
    relative: &Path,
    lowers: &[PathBuf],
    exclude: &dyn Fn(&Path) -> bool,
    out: &mut Vec<Change>,
) -> Result<()> {
    for entry in sorted_entries(&upper.join(relative))? {
        let path = relative.join(entry.file_name());
        if exclude(&path) {
            continue;
        }
        let meta = entry.metadata().map_err(io("stat", entry.path()))?;
        let in_lower = lowers
            .iter()
            .any(|l| std::fs::symlink_metadata(l.join(&path)).is_ok_and(|m| !is_whiteout(&m)));
        if is_whiteout(&meta) {
            if in_lower {
                out.push(Change::Deleted(path));
            }
            continue;
        }
        out.push(if in_lower {
            Change::Changed(path.clone())
        } else {
            Change::Added(path.clone())
        });
        if meta.is_dir() {
            if is_opaque(&entry.path()) {
                // Everything the lower layers had below is gone, except what the upper re-adds.
                let mut hidden = std::collections::BTreeSet::new();
                for lower in lowers {
                    if let Ok(children) = std::fs::read_dir(lower.join(&path)) {
                        for child in children.flatten() {
                            hidden.insert(child.file_name());
                        }
                    }
                }
                for name in hidden {
                    if std::fs::symlink_metadata(upper.join(&path).join(&name)).is_err() {
                        out.push(Change::Deleted(path.join(name)));
                    }
                }
            }
            walk_changes(upper, &path, lowers, exclude, out)?;
        }
    }
    Ok(())
}

/// Writes the upper directory as an OCI layer tar to `out`. `exclude` leaves paths out
/// (relative, without a leading `/`): the init layer's files, volume mount points.
pub fn write_layer<W: Write>(upper: &Path, out: W, exclude: &dyn Fn(&Path) -> bool) -> Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    write_dir(&mut builder, upper, Path::new(""), exclude, &mut links)?;
    builder.into_inner().map_err(io("write layer of", upper))
}

fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(meta.mtime().max(0) as u64);
    header.set_size(0);
    header
}

fn xattrs_of(path: &Path, meta: &std::fs::Metadata) -> Vec<(String, Vec<u8>)> {
    use std::os::fd::AsFd;
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => return Vec::new(),
    };
    let Ok(dir) = File::open(parent) else { return Vec::new() };
    let _ = meta;
    let names = berth_sys::xattr::list(dir.as_fd(), name).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| !n.starts_with(b"trusted.overlay."))
        .filter_map(|n| {
            let value = berth_sys::xattr::get(dir.as_fd(), name, OsStr::from_bytes(&n)).ok()??;
            Some((format!("SCHILY.xattr.{}", String::from_utf8_lossy(&n)), value))
        })
        .collect()
}

fn write_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    upper: &Path,
    relative: &Path,
    exclude: &dyn Fn(&Path) -> bool,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let failed = |path: &Path| io("write layer entry", upper.join(path));
    for entry in sorted_entries(&upper.join(relative))? {
        let path = relative.join(entry.file_name());
        if exclude(&path) {
            continue;
        }
        let full = entry.path();
        let meta = std::fs::symlink_metadata(&full).map_err(io("stat", &full))?;
        let file_type = meta.file_type();
        let xattrs = xattrs_of(&full, &meta);
        if !xattrs.is_empty() && !is_whiteout(&meta) {
            builder
                .append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(failed(&path))?;
        }
        if is_whiteout(&meta) {
            let mut name = OsStr::new(WHITEOUT_PREFIX).to_os_string();
            name.push(entry.file_name());
            let mut header = header_for(&meta, tar::EntryType::Regular);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, relative.join(name), std::io::empty())
                .map_err(failed(&path))?;
        } else if file_type.is_dir() {
            let mut header = header_for(&meta, tar::EntryType::Directory);
            builder.append_data(&mut header, &path, std::io::empty()).map_err(failed(&path))?;
            if is_opaque(&full) {
                let mut marker = header_for(&meta, tar::EntryType::Regular);
                marker.set_mode(0o644);
                builder
                    .append_data(&mut marker, path.join(OPAQUE_MARKER), std::io::empty())
                    .map_err(failed(&path))?;
            }
            write_dir(builder, upper, &path, exclude, links)?;
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&full).map_err(io("read link", &full))?;
            let mut header = header_for(&meta, tar::EntryType::Symlink);
            builder.append_link(&mut header, &path, &target).map_err(failed(&path))?;
        } else if file_type.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    let mut header = header_for(&meta, tar::EntryType::Link);
                    builder.append_link(&mut header, &path, first).map_err(failed(&path))?;
                    continue;
                }
                links.insert(key, path.clone());
            }
            let mut header = header_for(&meta, tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(&full).map_err(io("open", &full))?;
            builder.append_data(&mut header, &path, file).map_err(failed(&path))?;
        } else {
            let kind = if file_type.is_char_device() {
                tar::EntryType::Char
            } else if file_type.is_block_device() {
                tar::EntryType::Block
            } else if file_type.is_fifo() {
                tar::EntryType::Fifo
            } else {
                continue; // sockets have no place in a layer
            };
            let mut header = header_for(&meta, kind);
            let rdev = meta.rdev();
            header
                .set_device_major(berth_sys::nix::sys::stat::major(rdev) as u32)
                .map_err(failed(&path))?;
            header
                .set_device_minor(berth_sys::nix::sys::stat::minor(rdev) as u32)
                .map_err(failed(&path))?;
            builder.append_data(&mut header, &path, std::io::empty()).map_err(failed(&path))?;
        }
    }
    Ok(())
}

/// A layer blob stored in the content store.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// Stores a gzip-compressed layer whose tar `produce` writes, computing both digests.
pub fn store_layer(
    store: &ImageStore,
    produce: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<LayerBlob> {
    let tmp = store.temp_dir()?;
    let path = tmp.path().join("layer.tar.gz");
    let file = File::create(&path).map_err(io("create", &path))?;
    let compressed = HashingWriter::new(std::io::BufWriter::with_capacity(256 << 10, file));
    let encoder = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
    let mut uncompressed = HashingWriter::new(encoder);
    produce(&mut uncompressed)?;
    let (encoder, diff_id, _) = uncompressed.finish();
    let compressed = encoder.finish().map_err(io("write", &path))?;
    let (buffered, digest, size) = compressed.finish();
    let file = buffered.into_inner().map_err(|err| Error::Io {
        op: "write",
        path: path.clone(),
        source: err.into_error(),
    })?;
    file.sync_all().map_err(io("sync", &path))?;
    store.content.adopt(&path, &digest)?;
    Ok(LayerBlob { digest, diff_id, size, media_type: media::OCI_LAYER_GZIP.to_owned() })
}

/// Stores the config and manifest of an image made of `base` plus `layers`, unpacks the
/// new layers, and records it under `names`.
pub fn create_image(
    store: &ImageStore,
    base: Option<&Image>,
    config: ImageConfig,
    layers: Vec<(LayerBlob, History)>,
    names: Vec<String>,
) -> Result<Digest> {
    let mut record = store_image(store, base, config, layers)?;
    record.names = names;
    store.record(&record, None, &[])?;
    Ok(record.id)
}

/// Stores the config and manifest of an image made of `base` plus `layers` and unpacks the
/// new layers, without making it visible: the caller records it (an image) or keeps it as
/// a build cache entry.
pub fn store_image(
    store: &ImageStore,
    base: Option<&Image>,
    mut config: ImageConfig,
    layers: Vec<(LayerBlob, History)>,
) -> Result<ImageRecord> {
    let mut descriptors = Vec::new();
    match base {
        Some(base) => {
            descriptors.extend(base.manifest.layers.iter().cloned());
            config.rootfs.diff_ids = base.diff_ids.iter().map(ToString::to_string).collect();
        }
        None => config.rootfs.diff_ids.clear(),
    }
    config.rootfs.kind = "layers".into();
    for (layer, history) in &layers {
        descriptors.push(Descriptor::new(&layer.media_type, &layer.digest, layer.size));
        config.rootfs.diff_ids.push(layer.diff_id.to_string());
        config.history.push(history.clone());
    }
    if config.created.is_none() {
        config.created = Some(rfc3339(std::time::SystemTime::now()));
    }
    let config_bytes = config.to_bytes();
    let config_digest = store.content.put(&config_bytes, None)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: Descriptor::new(media::OCI_CONFIG, &config_digest, config_bytes.len() as u64),
        layers: descriptors,
        annotations: None,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = store.content.put(&manifest_bytes, None)?;
    let diff_ids = config.diff_ids()?;
    let chains = crate::digest::chain_ids(&diff_ids);
    for (i, descriptor) in manifest.layers.iter().enumerate() {
        if store.snapshot(&chains[i])?.is_none() {
            let compression = Compression::of_media_type(&descriptor.media_type)?;
            unpack_stored(store, &descriptor.digest()?, compression, &diff_ids[i], &chains[i])?;
        }
    }
    Ok(ImageRecord {
        id: config_digest,
        manifest: manifest_digest,
        media_type: media::OCI_MANIFEST.into(),
        index_digest: None,
        created: now(),
        names: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_an_upper_dir() {
        let lower = tempfile::tempdir().expect("lower");
        let upper = tempfile::tempdir().expect("upper");
        std::fs::create_dir_all(lower.path().join("etc")).expect("mkdir");
        std::fs::write(lower.path().join("etc/passwd"), "root").expect("write");
        std::fs::write(lower.path().join("gone"), "x").expect("write");
        std::fs::create_dir_all(upper.path().join("etc")).expect("mkdir");
        std::fs::write(upper.path().join("etc/passwd"), "root\nme").expect("write");
        std::fs::write(upper.path().join("new"), "x").expect("write");
        std::fs::write(upper.path().join("skipped"), "x").expect("write");
        let whiteout = berth_sys::nix::sys::stat::mknod(
            &upper.path().join("gone"),
            berth_sys::nix::sys::stat::SFlag::S_IFCHR,
            berth_sys::nix::sys::stat::Mode::empty(),
            0,
        );
        if whiteout.is_err() {
            return; // not root: no device nodes
        }
        let found =
            changes(upper.path(), &[lower.path().to_path_buf()], &|p| p == Path::new("skipped"))
                .expect("changes");
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(shown, vec!["C /etc", "C /etc/passwd", "D /gone", "A /new"]);
    }

    #[test]
    fn root_an_upper_dir_becomes_a_layer_that_unpacks_to_the_same_tree() {
        if !berth_sys::nix::unistd::geteuid().is_root() {
            eprintln!(
                "skipped: needs root (whiteouts are device nodes, opaque is a trusted xattr)"
            );
            return;
        }
        use std::os::fd::AsFd;
        let upper = tempfile::tempdir().expect("upper");
        std::fs::create_dir_all(upper.path().join("etc/conf.d")).expect("mkdir");
        std::fs::write(upper.path().join("etc/hostname"), "box\n").expect("write");
        std::fs::write(upper.path().join("etc/conf.d/a"), "a").expect("write");
        std::fs::hard_link(upper.path().join("etc/conf.d/a"), upper.path().join("etc/conf.d/b"))
            .expect("link");
        std::os::unix::fs::symlink("/etc/hostname", upper.path().join("etc/alias"))
            .expect("symlink");
        std::fs::write(upper.path().join("etc/skip-me"), "init layer").expect("write");
        berth_sys::nix::sys::stat::mknod(
            &upper.path().join("etc/gone"),
            berth_sys::nix::sys::stat::SFlag::S_IFCHR,
            berth_sys::nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("whiteout");
        let dir = File::open(upper.path().join("etc/conf.d")).expect("open");
        berth_sys::xattr::set(dir.as_fd(), OsStr::new(""), OsStr::new(OVERLAY_OPAQUE_XATTR), b"y")
            .expect("opaque");
        let tar = write_layer(upper.path(), Vec::new(), &|p| p == Path::new("etc/skip-me"))
            .expect("layer");
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            names.push((
                entry.path().expect("path").display().to_string(),
                entry.header().entry_type(),
            ));
        }
        let listed: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert!(listed.contains(&"etc/.wh.gone"), "{listed:?}");
        assert!(listed.contains(&"etc/conf.d/.wh..wh..opq"), "{listed:?}");
        assert!(!listed.iter().any(|n| n.contains("skip-me")), "{listed:?}");
        assert!(
            names.iter().any(|(n, kind)| n == "etc/conf.d/b" && *kind == tar::EntryType::Link),
            "{names:?}"
        );
        // Unpacked again, it is the same upper directory.
        let again = tempfile::tempdir().expect("again");
        crate::unpack::unpack_layer(&tar[..], again.path()).expect("unpack");
        let meta = std::fs::symlink_metadata(again.path().join("etc/gone")).expect("whiteout");
        assert!(is_whiteout(&meta));
        assert!(is_opaque(&again.path().join("etc/conf.d")));
        assert_eq!(
            std::fs::read_link(again.path().join("etc/alias")).expect("link"),
            Path::new("/etc/hostname")
        );
        assert_eq!(
            std::fs::metadata(again.path().join("etc/conf.d/a")).expect("a").ino(),
            std::fs::metadata(again.path().join("etc/conf.d/b")).expect("b").ino()
        );
        assert!(!again.path().join("etc/skip-me").exists());
    }
}
