//! Volumes: directories under `<root>/volumes/<name>/_data` that outlive containers.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))
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
