//! Volumes: directories under `<root>/volumes/<name>/_data` that outlive containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::options::valid_volume_name;
use crate::{invalid, io, write_atomic, Engine, Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: PathBuf,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    /// Made for one container (`-v /path` or an image VOLUME); removed with it by `rm -v`.
    pub anonymous: bool,
}

/// Copies what the image has at a volume's mount point into the new, empty volume, as
/// Docker does (contents, owners, modes, times; symlinks as symlinks): images such as
/// postgres rely on it. `image_root` is a read-only view of the image's layers.
pub(crate) fn fill_from_image(image_root: &Path, destination: &str, volume: &Path) -> Result<()> {
    use std::os::fd::AsFd;
    let empty = std::fs::read_dir(volume).map(|mut d| d.next().is_none()).unwrap_or(false);
    if !empty {
        return Ok(());
    }
    let root = std::fs::File::open(image_root).map_err(io("open", image_root))?;
    let source = match berth_sys::fs::open_in_root(
        root.as_fd(),
        Path::new(destination),
        berth_sys::nix::fcntl::OFlag::O_PATH | berth_sys::nix::fcntl::OFlag::O_DIRECTORY,
    ) {
        Ok(fd) => fd,
        // Nothing (or not a directory) at the mount point: nothing to copy.
        Err(_) => return Ok(()),
    };
    let source = berth_sys::fs::proc_fd_path(&source);
    let meta = std::fs::metadata(&source).map_err(io("read", &source))?;
    copy_attributes(&meta, volume, false)?;
    copy_children(&source, volume)
}

fn copy_attributes(meta: &std::fs::Metadata, target: &Path, symlink: bool) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))
        .map_err(io("chown", target))?;
    if !symlink {
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("chmod", target))?;
    }
    Ok(())
}

fn copy_children(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(io("read", from))? {
        let entry = entry.map_err(io("read", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&source).map_err(io("read", &source))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io("read", &source))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io("create", &target))?;
            copy_attributes(&meta, &target, true)?;
        } else if kind.is_dir() {
            std::fs::create_dir(&target).map_err(io("create", &target))?;
            copy_children(&source, &target)?;
            copy_attributes(&meta, &target, false)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target).map_err(io("copy to", &target))?;
            copy_attributes(&meta, &target, false)?;
            if let Ok(modified) = meta.modified() {
                if let Ok(file) = std::fs::File::options().write(true).open(&target) {
                    let _ = file.set_modified(modified);
                }
            }
        }
        // Devices, fifos and sockets are not copied (Docker copies them; no image needs it).
    }
    Ok(())
}

impl Engine {
    fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// Creates a volume, or returns the existing one of that name.
    pub fn volume_create(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume> {
        let anonymous = name.is_none();
        let name = match name {
            Some(name) => name.to_owned(),
            None => crate::random_id()?,
        };
        if !valid_volume_name(&name) {
            return Err(invalid(
                format!("volume name {name:?}"),
                "use letters, digits, '_', '.' and '-', starting with a letter or digit",
            ));
        }
        let dir = self.volumes_dir().join(&name);
        if let Ok(existing) = self.volume_inspect(&name) {
            return Ok(existing);
        }
        let data = dir.join("_data");
        std::fs::create_dir_all(&data).map_err(io("create", &data))?;
        let volume = Volume {
            name,
            driver: "local".into(),
            mountpoint: data,
            created_at: crate::now(),
            labels,
            anonymous,
        };
        let json = serde_json::to_vec_pretty(&volume).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&dir.join("volume.json"), &json)?;
        self.event("volume", "create", &volume.name, &[("driver", "local".into())]);
        Ok(volume)
    }

    pub fn volume_inspect(&self, name: &str) -> Result<Volume> {
        if !valid_volume_name(name) {
            return Err(Error::Other(format!("no such volume: {name}")));
        }
        let path = self.volumes_dir().join(name).join("volume.json");
        let data =
            std::fs::read(&path).map_err(|_| Error::Other(format!("no such volume: {name}")))?;
        serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("{} is corrupt: {e}", path.display())))
    }

    pub fn volume_list(&self) -> Result<Vec<Volume>> {
        let dir = self.volumes_dir();
        let mut volumes = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(volumes) };
        for entry in entries.flatten() {
            if let Ok(volume) = self.volume_inspect(&entry.file_name().to_string_lossy()) {
                volumes.push(volume);
            }
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Containers (ids) whose mounts use the volume.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>> {
        let mut users = Vec::new();
        for id in self.ids()? {
            if let Ok(record) = self.peek(&id) {
                if record.mounts.iter().any(|m| m.kind == "volume" && m.name == name) {
                    users.push(record.name.clone());
                }
            }
        }
        Ok(users)
    }

    pub fn volume_remove(&self, name: &str, force: bool) -> Result<()> {
        self.volume_inspect(name)?;
        let users = self.volume_users(name)?;
        if !users.is_empty() && !force {
            return Err(Error::Conflict(format!(
                "volume {name} is in use by container(s) {}; remove them first",
                users.join(", ")
            )));
        }
        let dir = self.volumes_dir().join(name);
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        self.event("volume", "destroy", name, &[("driver", "local".into())]);
        Ok(())
    }

    /// Removes volumes no container uses; returns their names.
    pub fn volume_prune(&self, all: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for volume in self.volume_list()? {
            if !all && !volume.anonymous {
                continue;
            }
            if self.volume_users(&volume.name)?.is_empty() {
                self.volume_remove(&volume.name, false)?;
                removed.push(volume.name);
            }
        }
        Ok(removed)
    }
}
