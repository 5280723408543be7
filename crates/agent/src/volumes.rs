//! A pod's volumes as directories on this machine, made before its containers start and
//! refreshed while it runs: emptyDir, hostPath, configMap, secret, downwardAPI and projected
//! (configMap, secret, downwardAPI and service-account token sources). Files that come from the API are written the
//! way the kubelet writes them: into a fresh timestamped directory, then the `..data` link
//! swapped atomically, and a link per key into `..data`, so a reader never sees half an
//! update and an edit of the Secret reaches running containers.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

/// A file of a volume: its bytes and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// What a volume needs from the API: a lookup of ConfigMaps and Secrets by name (the
/// pod's namespace), answered from the agent's caches.
pub trait Sources: Send + Sync {
    fn config_map(&self, name: &str) -> Option<ConfigMap>;
    fn secret(&self, name: &str) -> Option<Secret>;
    /// The pod's service-account token for an audience and lifetime (see `tokens`).
    fn service_account_token(&self, audience: &str, seconds: i64) -> Option<String>;
}

/// Why a volume cannot be made now (`FailedMount`): the pod waits and is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFailure(pub String);

/// Makes (or refreshes) every volume of the pod under `pod_dir`; returns each volume's
/// host path by name.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    sources: &dyn Sources,
) -> Result<BTreeMap<String, PathBuf>, MountFailure> {
    let mut paths = BTreeMap::new();
    let Some(spec) = &pod.spec else { return Ok(paths) };
    let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
    for volume in spec.volumes.iter().flatten() {
        let path = prepare_one(pod, volume, pod_dir, sources)?;
        if let Some(group) = fs_group.and_then(|g| u32::try_from(g).ok()) {
            own(volume, &path, group)
                .map_err(|e| fail(format!("volume {:?}: fsGroup {group}: {e}", volume.name)))?;
        }
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

/// The kubelet's volume ownership for `fsGroup`: the volume's files belong to the group,
/// which may read them (and write an emptyDir's), and directories pass the group on
/// (setgid). Volumes the pod does not own (hostPath) are left as they are.
fn own(volume: &Volume, path: &Path, group: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let chown = |p: &Path| std::os::unix::fs::lchown(p, None, Some(group));
    if volume.empty_dir.is_some() {
        // The directory only, once (a later chmod inside stays): what containers make in
        // it takes its group (setgid).
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(path)?.gid() == group {
            return Ok(());
        }
        chown(path)?;
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o2777));
    }
    let read_only = volume.secret.is_some()
        || volume.config_map.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some();
    if !read_only {
        return Ok(());
    }
    // These volumes are mounted read-only in containers (see `pods::start`): nothing
    // but the agent writes here, and symlinks are never followed.
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let p = entry.path();
            chown(&p)?;
            if kind.is_symlink() {
                continue;
            }
            let mode = entry.metadata()?.permissions().mode();
            if kind.is_dir() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o2550))?;
                stack.push(p);
            } else {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o440))?;
            }
        }
    }
    chown(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode((mode & 0o7777) | 0o2550))
}

/// A path as mountinfo writes it: absolute, symlinks resolved.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Whether `path` is where something is mounted.
fn is_mount_point(path: &Path) -> bool {
    berth_sys::mount::is_mount_point(path)
}

/// Unmounts what is mounted under `dir` (memory-backed emptyDirs), deepest first, before
/// the directory is removed.
pub fn unmount_under(dir: &Path) {
    for point in berth_sys::mount::mounts_under(&canonical(dir)) {
        if let Err(err) = berth_sys::nix::mount::umount2(
            point.as_path(),
            berth_sys::nix::mount::MntFlags::MNT_DETACH,
        ) {
            tracing::warn!("cannot unmount {}: {err}", point.display());
        }
    }
}

fn fail(message: impl Into<String>) -> MountFailure {
    MountFailure(message.into())
}

fn prepare_one(
    pod: &Pod,
    volume: &Volume,
    pod_dir: &Path,
    sources: &dyn Sources,
) -> Result<PathBuf, MountFailure> {
    let name = &volume.name;
    // The name becomes a directory under the pod's: nothing that could leave it.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(fail(format!("volume name {name:?} is not a valid directory name")));
    }
    let dir_for = |plugin: &str| pod_dir.join("volumes").join(plugin).join(name);
    let io = |what: &str, path: &Path, err: std::io::Error| {
        fail(format!("volume {name:?}: {what} {}: {err}", path.display()))
    };
    if let Some(empty) = &volume.empty_dir {
        let dir = dir_for("empty-dir");
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        if empty.medium.as_deref() == Some("Memory") && !is_mount_point(&dir) {
            // A tmpfs, as the kubelet mounts one, its size the volume's limit.
            let mut options = "mode=0777".to_owned();
            if let Some(limit) = empty.size_limit.as_ref() {
                let bytes = berth_api::quantity::parse_milli(&limit.0)
                    .map(|m| m / 1000)
                    .filter(|b| *b > 0)
                    .ok_or_else(|| fail(format!("volume {name:?}: bad sizeLimit {:?}", limit.0)))?;
                options.push_str(&format!(",size={bytes}"));
            }
            use berth_sys::nix::mount::{mount, MsFlags};
            mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|e| {
                fail(format!("volume {name:?}: mount a tmpfs on {}: {e}", dir.display()))
            })?;
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        return Ok(dir);
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        let kind = host.type_.clone().unwrap_or_default();
        match kind.as_str() {
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&path).map_err(|e| io("create", &path, e))?;
            }
            "FileOrCreate" if !path.exists() => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
                }
                std::fs::File::create(&path).map_err(|e| io("create", &path, e))?;
            }
            "Directory" if !path.is_dir() => {
                return Err(fail(format!(
                    "hostPath type check failed: {} is not a directory",
                    host.path
                )))
            }
            "File" if !path.is_file() => {
                return Err(fail(format!(
                    "hostPath type check failed: {} is not a file",
                    host.path
                )))
            }
            "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => {
                return Err(fail(format!(
                    "hostPath type check failed: {} does not exist",
                    host.path
                )))
            }
            _ => {}
        }
        return Ok(path);
    }
    let mut files = Files::new();
    let dir;
    if let Some(source) = &volume.config_map {
        dir = dir_for("configmap");
        let optional = source.optional.unwrap_or(false);
        match sources.config_map(&source.name) {
            Some(map) => add_config_map(
                &mut files,
                &map,
                source.items.as_deref(),
                source.default_mode.unwrap_or(0o644),
                name,
            )?,
            None if optional => {}
            None => return Err(fail(format!("configmap {:?} not found", source.name))),
        }
    } else if let Some(source) = &volume.secret {
        dir = dir_for("secret");
        let secret_name = source.secret_name.clone().unwrap_or_default();
        let optional = source.optional.unwrap_or(false);
        match sources.secret(&secret_name) {
            Some(secret) => add_secret(
                &mut files,
                &secret,
                source.items.as_deref(),
                source.default_mode.unwrap_or(0o644),
                name,
            )?,
            None if optional => {}
            None => return Err(fail(format!("secret {secret_name:?} not found"))),
        }
    } else if let Some(source) = &volume.downward_api {
        dir = dir_for("downward-api");
        add_downward(
            &mut files,
            pod,
            source.items.as_deref().unwrap_or_default(),
            source.default_mode.unwrap_or(0o644),
        )?;
    } else if let Some(projected) = &volume.projected {
        dir = dir_for("projected");
        let mode = projected.default_mode.unwrap_or(0o644);
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                match sources.config_map(&cm.name) {
                    Some(map) => add_config_map(&mut files, &map, cm.items.as_deref(), mode, name)?,
                    None if cm.optional.unwrap_or(false) => {}
                    None => return Err(fail(format!("configmap {:?} not found", cm.name))),
                }
            }
            if let Some(s) = &source.secret {
                match sources.secret(&s.name) {
                    Some(secret) => {
                        add_secret(&mut files, &secret, s.items.as_deref(), mode, name)?
                    }
                    None if s.optional.unwrap_or(false) => {}
                    None => return Err(fail(format!("secret {:?} not found", s.name))),
                }
            }
            if let Some(d) = &source.downward_api {
                add_downward(&mut files, pod, d.items.as_deref().unwrap_or_default(), mode)?;
            }
            if let Some(token) = &source.service_account_token {
                let audience = token.audience.clone().unwrap_or_default();
                let seconds = token.expiration_seconds.unwrap_or(3600);
                check_relative(&token.path)?;
                match sources.service_account_token(&audience, seconds) {
                    Some(value) => {
                        files.insert(token.path.clone(), (value.into_bytes(), mode as u32));
                    }
                    None => {
                        return Err(fail(format!(
                            "volume {name:?}: the service-account token is not there yet"
                        )))
                    }
                }
            }
        }
    } else {
        return Err(fail(format!(
            "volume {name:?}: this kind of volume is not supported by berth's agent yet"
        )));
    }
    write_atomic_dir(&dir, &files)
        .map_err(|e| fail(format!("volume {name:?}: write {}: {e}", dir.display())))?;
    Ok(dir)
}

fn add_items(
    files: &mut Files,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: i32,
    volume: &str,
) -> Result<(), MountFailure> {
    match items {
        None => {
            for (key, value) in data {
                files.insert(key, (value, mode as u32));
            }
        }
        Some(items) => {
            for item in items {
                let value = data.get(&item.key).ok_or_else(|| {
                    fail(format!("volume {volume:?}: key {:?} is not in the source", item.key))
                })?;
                check_relative(&item.path)?;
                files.insert(item.path.clone(), (value.clone(), item.mode.unwrap_or(mode) as u32));
            }
        }
    }
    Ok(())
}

fn add_config_map(
    files: &mut Files,
    map: &ConfigMap,
    items: Option<&[KeyToPath]>,
    mode: i32,
    volume: &str,
) -> Result<(), MountFailure> {
    let mut data: BTreeMap<String, Vec<u8>> = map
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in map.binary_data.clone().unwrap_or_default() {
        data.insert(k, v.0);
    }
    add_items(files, data, items, mode, volume)
}

fn add_secret(
    files: &mut Files,
    secret: &Secret,
    items: Option<&[KeyToPath]>,
    mode: i32,
    volume: &str,
) -> Result<(), MountFailure> {
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in secret.string_data.clone().unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    add_items(files, data, items, mode, volume)
}

fn add_downward(
    files: &mut Files,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
) -> Result<(), MountFailure> {
    for item in items {
        check_relative(&item.path)?;
        let Some(field) = &item.field_ref else {
            return Err(fail(format!(
                "downwardAPI {:?}: only fieldRef items are supported yet",
                item.path
            )));
        };
        let value = field_value(pod, &field.field_path).ok_or_else(|| {
            fail(format!("downwardAPI {:?}: unsupported field {:?}", item.path, field.field_path))
        })?;
        files.insert(item.path.clone(), (value.into_bytes(), item.mode.unwrap_or(mode) as u32));
    }
    Ok(())
}

/// The value of a `fieldRef` path, as the downward API gives it.
pub fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let map_text = |map: &Option<BTreeMap<String, String>>| {
        map.iter().flatten().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n")
    };
    if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|k| k.strip_suffix("']")) {
        return Some(meta.labels.as_ref().and_then(|l| l.get(key).cloned()).unwrap_or_default());
    }
    if let Some(key) =
        path.strip_prefix("metadata.annotations['").and_then(|k| k.strip_suffix("']"))
    {
        return Some(
            meta.annotations.as_ref().and_then(|l| l.get(key).cloned()).unwrap_or_default(),
        );
    }
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(&meta.labels),
        "metadata.annotations" => map_text(&meta.annotations),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        "status.hostIP" => status.host_ip.unwrap_or_default(),
        "status.podIPs" => {
            status.pod_ips.iter().flatten().map(|p| p.ip.clone()).collect::<Vec<_>>().join(",")
        }
        _ => return None,
    })
}

fn check_relative(path: &str) -> Result<(), MountFailure> {
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|c| c == "..")
        || path.starts_with("..")
    {
        return Err(fail(format!("item path {path:?} must be relative and may not contain '..'")));
    }
    Ok(())
}

/// Writes `files` under `dir` as the kubelet's atomic writer does; a no-op when the
/// current contents are the same.
pub fn write_atomic_dir(dir: &Path, files: &Files) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current_dir = dir.join(&current);
        if same_contents(&current_dir, files) {
            return Ok(false);
        }
    }
    let stamp = format!(
        "..{}",
        berth_stdx::time::format_rfc3339_nanos(std::time::SystemTime::now()).replace(':', "_")
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for (path, (bytes, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode & 0o7777))?;
    }
    let old = std::fs::read_link(&data_link).ok();
    let temp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(&stamp, &temp)?;
    std::fs::rename(&temp, &data_link)?;
    let tops: std::collections::BTreeSet<String> =
        files.keys().map(|k| k.split('/').next().unwrap_or(k).to_owned()).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old {
        if old != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(true)
}

fn same_contents(dir: &Path, files: &Files) -> bool {
    let mut count = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { return false };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
            }
        }
    }
    count == files.len()
        && files.iter().all(|(path, (bytes, mode))| {
            let file = dir.join(path);
            std::fs::read(&file).is_ok_and(|b| b == *bytes)
                && std::fs::metadata(&file)
                    .is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode & 0o7777)
        })
}

/// Why a subPath cannot be given to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubPathError {
    /// A symlink (or `..`) leads the path out of its volume.
    Outside,
    /// Anything else, said.
    Failed(String),
}

/// Pins `sub` of the volume at `volume` for one container, as the kubelet's
/// `volume-subpaths`: the path is opened beneath the volume's root in one `openat2(2)`
/// with `RESOLVE_BENEATH` (symlinks that stay inside are followed, one that leads out is
/// refused), missing directories are made with `mkdirat` under what was opened, and the
/// very object opened is bind-mounted, by its descriptor, onto `target`, a path under the
/// pod's directory that only the agent writes. The runtime then mounts `target`: a
/// symlink a container swaps into the volume after the check changes nothing (Kubernetes'
/// CVE-2017-1002101 and CVE-2021-25741 were such races).
pub fn pin_subpath(volume: &Path, sub: &str, target: &Path) -> Result<(), SubPathError> {
    use berth_sys::nix::errno::Errno;
    use berth_sys::nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    use berth_sys::nix::sys::stat::{Mode, SFlag};
    use std::os::fd::AsFd;
    let failed = |what: &str, err: &dyn std::fmt::Display| {
        SubPathError::Failed(format!("cannot {what}: {err}"))
    };
    let root = berth_sys::nix::fcntl::open(
        volume,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed(&format!("open the volume {}", volume.display()), &e))?;
    let open = || loop {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match berth_sys::nix::fcntl::openat2(root.as_fd(), Path::new(sub), how) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            other => break other,
        }
    };
    let opened = match open() {
        Err(Errno::ENOENT) => {
            // Made beneath the root (never through a link leading out), then opened again
            // under the same rule as an existing path.
            berth_sys::fs::resolve_in_root(
                root.as_fd(),
                Path::new(sub),
                berth_sys::fs::Create::Directory,
            )
            .map_err(|e| failed(&format!("make {sub:?} in the volume"), &e))?;
            open()
        }
        other => other,
    };
    let source = match opened {
        Ok(fd) => fd,
        Err(Errno::EXDEV | Errno::ELOOP) => return Err(SubPathError::Outside),
        Err(err) => return Err(failed(&format!("open {sub:?} in the volume"), &err)),
    };
    let kind = berth_sys::nix::sys::stat::fstat(source.as_fd())
        .map_err(|e| failed(&format!("look at {sub:?}"), &e))?;
    let directory = SFlag::from_bits_truncate(kind.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    // A pin left by the container's earlier start is replaced: the source may have changed.
    if is_mount_point(target) {
        berth_sys::nix::mount::umount2(target, berth_sys::nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| failed(&format!("unmount {}", target.display()), &e))?;
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| failed(&format!("make {}", parent.display()), &e))?;
    }
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() == directory => {}
        Ok(meta) => {
            let removed = if meta.is_dir() {
                std::fs::remove_dir(target)
            } else {
                std::fs::remove_file(target)
            };
            removed.map_err(|e| failed(&format!("remove {}", target.display()), &e))?;
        }
        Err(_) => {}
    }
    if std::fs::symlink_metadata(target).is_err() {
        let made = if directory {
            std::fs::create_dir(target)
        } else {
            std::fs::File::create(target).map(drop)
        };
        made.map_err(|e| failed(&format!("make {}", target.display()), &e))?;
    }
    let onto = berth_sys::nix::fcntl::open(
        target,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed(&format!("open {}", target.display()), &e))?;
    berth_sys::mount::bind_fd(source.as_fd(), onto.as_fd(), false)
        .map_err(|e| failed(&format!("bind {sub:?} onto {}", target.display()), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_swap_the_data_link_and_keep_per_key_links() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new();
        files.insert("user".into(), (b"admin".to_vec(), 0o644));
        files.insert("conf/app.ini".into(), (b"x=1".to_vec(), 0o600));
        assert!(write_atomic_dir(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("user")).unwrap(), "admin");
        assert_eq!(std::fs::read_to_string(dir.path().join("conf/app.ini")).unwrap(), "x=1");
        assert!(!write_atomic_dir(dir.path(), &files).unwrap(), "unchanged: nothing written");
        let first = std::fs::read_link(dir.path().join("..data")).unwrap();
        files.insert("user".into(), (b"root".to_vec(), 0o644));
        files.remove("conf/app.ini");
        assert!(write_atomic_dir(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("user")).unwrap(), "root");
        assert!(!dir.path().join("conf").exists(), "a key that went away goes");
        assert!(!dir.path().join(first).exists(), "the old generation is removed");
    }

    #[test]
    fn item_paths_stay_inside() {
        assert!(check_relative("a/b").is_ok());
        assert!(check_relative("../x").is_err());
        assert!(check_relative("/etc/x").is_err());
        assert!(check_relative("a/../../x").is_err());
    }

    #[test]
    fn root_a_pinned_subpath_is_what_was_checked() {
        if !berth_sys::nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(volume.join("data")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(volume.join("data/file"), "inside").unwrap();
        std::fs::write(outside.join("file"), "outside").unwrap();
        let pins = dir.path().join("pins");
        // A directory and a file of the volume.
        pin_subpath(&volume, "data", &pins.join("0")).unwrap();
        pin_subpath(&volume, "data/file", &pins.join("1")).unwrap();
        assert_eq!(std::fs::read_to_string(pins.join("0/file")).unwrap(), "inside");
        assert_eq!(std::fs::read_to_string(pins.join("1")).unwrap(), "inside");
        // The volume's path swapped for a link out after the pin: the pin still holds the
        // directory that was checked.
        std::fs::rename(volume.join("data"), volume.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, volume.join("data")).unwrap();
        assert_eq!(std::fs::read_to_string(pins.join("0/file")).unwrap(), "inside");
        // Pinning again now is refused, and through the link nothing is made.
        assert_eq!(pin_subpath(&volume, "data", &pins.join("0")), Err(SubPathError::Outside));
        assert_eq!(
            pin_subpath(&volume, "data/new/deeper", &pins.join("2")),
            Err(SubPathError::Outside)
        );
        assert!(!outside.join("new").exists());
        // A link that stays inside is followed; a missing path is made in the volume.
        std::os::unix::fs::symlink("moved", volume.join("alias")).unwrap();
        pin_subpath(&volume, "alias", &pins.join("3")).unwrap();
        assert_eq!(std::fs::read_to_string(pins.join("3/file")).unwrap(), "inside");
        pin_subpath(&volume, "made/here", &pins.join("4")).unwrap();
        assert!(volume.join("made/here").is_dir());
        unmount_under(&pins);
        assert!(berth_sys::mount::mounts_under(&canonical(&pins)).is_empty());
    }
}
