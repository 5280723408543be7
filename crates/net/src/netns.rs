//! Namespaces that outlive every process in them: each is made by a short-lived thread
//! (`unshare` of a network, IPC or UTS namespace changes only the calling thread) and kept
//! by a bind mount of `/proc/thread-self/ns/<kind>` on a file. Processes join them by path.

use std::fs::File;
use std::path::{Path, PathBuf};

use berth_sys::nix::mount::{mount, umount2, MntFlags, MsFlags};
use berth_sys::nix::sched::CloneFlags;

use crate::{io, sys, Error, Result};

/// A kind of namespace that can be pinned without a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Ipc,
    Uts,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// What to make: the kinds, each pinned at `dir/<kind>`, and the UTS namespace's hostname.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub kinds: &'a [Kind],
    pub hostname: Option<&'a str>,
}

/// Makes new namespaces of the kinds asked, pinned at `dir/<kind>` (a network namespace
/// with its loopback up); returns the paths in the order asked. On failure nothing is
/// left pinned.
pub fn pin(dir: &Path, request: &Request<'_>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut paths = Vec::new();
    for kind in request.kinds {
        let path = dir.join(kind.name());
        if path.exists() {
            unpin(&path);
        }
        File::create(&path).map_err(io("create", &path))?;
        paths.push(path);
    }
    let kinds: Vec<Kind> = request.kinds.to_vec();
    let targets = paths.clone();
    let hostname = request.hostname.map(str::to_owned);
    let made = std::thread::spawn(move || -> Result<()> {
        let flags = kinds.iter().fold(CloneFlags::empty(), |all, k| all | k.flag());
        berth_sys::nix::sched::unshare(flags).map_err(sys("create namespaces"))?;
        if let Some(name) = &hostname {
            if kinds.contains(&Kind::Uts) {
                berth_sys::nix::unistd::sethostname(name)
                    .map_err(sys(format!("set the hostname {name:?}")))?;
            }
        }
        if kinds.contains(&Kind::Net) {
            berth_sys::link::set_up("lo").map_err(sys("bring up the namespace's loopback"))?;
        }
        for (kind, target) in kinds.iter().zip(&targets) {
            let source = format!("/proc/thread-self/ns/{}", kind.name());
            mount(Some(source.as_str()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(sys(format!("pin the namespace at {}", target.display())))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| Error::Failed("the namespace thread panicked".into()))?;
    if let Err(err) = made {
        for path in &paths {
            unpin(path);
        }
        return Err(err);
    }
    Ok(paths)
}

/// Makes one new network namespace pinned at `path` (its parent directory is created),
/// with its loopback up.
pub fn pin_net(path: &Path) -> Result<PathBuf> {
    let target = path.to_owned();
    std::thread::spawn(move || -> Result<()> {
        berth_sys::nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(sys("create a network namespace"))?;
        // Its loopback up, as every container expects (no CNI loopback plugin to run).
        berth_sys::link::set_up("lo").map_err(sys("bring up the namespace's loopback"))?;
        pin_existing(Path::new("/proc/thread-self/ns/net"), &target)
    })
    .join()
    .map_err(|_| Error::Failed("the namespace thread panicked".into()))??;
    Ok(path.to_owned())
}

/// Pins the namespace at `source` (a `/proc/PID/ns/KIND` file) at `path` (its parent
/// directory is created): it can be entered by path, and lives until `unpin` even after
/// its processes end.
pub fn pin_existing(source: &Path, path: &Path) -> Result<()> {
    let dir =
        path.parent().ok_or_else(|| Error::Failed(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    if path.exists() {
        unpin(path);
    }
    File::create(path).map_err(io("create", path))?;
    if let Err(err) = mount(Some(source), path, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(path);
        return Err(sys(format!("pin {} at {}", source.display(), path.display()))(err));
    }
    Ok(())
}

/// Releases a pinned namespace (it ends when no process is left in it) and removes the
/// file. Safe to call on a path that was never pinned or is already gone.
pub fn unpin(path: &Path) {
    while umount2(path, MntFlags::MNT_DETACH).is_ok() {}
    let _ = std::fs::remove_file(path);
}

/// Whether something is mounted on the file (a pinned namespace).
pub fn is_pinned(path: &Path) -> bool {
    berth_sys::mount::mount_points().iter().any(|point| point == path)
}
