//! `-u`/`USER` resolved through the container's own `/etc/passwd` and `/etc/group`, read
//! from the image's layers (never the host's).

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use berth_sys::nix::fcntl::OFlag;

use crate::{invalid, Result};

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Reads a file of the container's filesystem from its layers, top first: the first layer
/// holding the path wins, a whiteout hides it. Lookups stay inside each layer.
pub fn read_from_layers(layers: &[PathBuf], path: &Path) -> Option<String> {
    for layer in layers {
        let Ok(root) = std::fs::File::open(layer) else { continue };
        // O_NONBLOCK: a fifo in an image's place of /etc/passwd must not hang the caller.
        match berth_sys::fs::open_in_root(
            root.as_fd(),
            path,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
        ) {
            Ok(fd) => {
                let mut file = std::fs::File::from(fd);
                let meta = file.metadata().ok()?;
                if !meta.is_file() {
                    return None;
                }
                let mut text = String::new();
                file.read_to_string(&mut text).ok()?;
                return Some(text);
            }
            Err(berth_sys::Errno::ENOENT) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Resolves `USER[:GROUP]` (names or numbers) against passwd and group file contents.
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Identity> {
    let spec = if spec.is_empty() { "0" } else { spec };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users: Vec<Vec<&str>> = passwd
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let entry = users.iter().find(|f| f[0] == user).or_else(|| {
        user.parse::<u32>().ok().and_then(|uid| users.iter().find(|f| f[2].parse() == Ok(uid)))
    });
    let (uid, mut gid, home, name) = match (entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| invalid("/etc/passwd", format!("bad uid for {}", f[0])))?,
            f[3].parse::<u32>()
                .map_err(|_| invalid("/etc/passwd", format!("bad gid for {}", f[0])))?,
            f[5].to_owned(),
            Some(f[0].to_owned()),
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_owned(), None),
        (None, Err(_)) => {
            return Err(invalid(
                "user",
                format!(
                "unable to find user {user}: no matching entries in the container's /etc/passwd"
            ),
            ))
        }
    };
    if let Some(grp) = grp {
        gid = match groups.iter().find(|f| f[0] == grp) {
            Some(f) => f[2]
                .parse()
                .map_err(|_| invalid("/etc/group", format!("bad gid for group {grp}")))?,
            None => grp.parse().map_err(|_| {
                invalid(
                    "group",
                    format!("unable to find group {grp}: no matching entries in the container's /etc/group"),
                )
            })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let (Some(name), None) = (&name, grp) {
        for f in &groups {
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !additional_gids.contains(&g) {
                        additional_gids.push(g);
                    }
                }
            }
        }
    }
    Ok(Identity { uid, gid, additional_gids, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:app,www\napp:x:1000:\n";

    #[test]
    fn names_numbers_and_groups() {
        let id = resolve("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.additional_gids.clone(), id.home.as_str()),
            (1000, 1000, vec![50], "/home/app")
        );
        let id = resolve("www:staff", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid, id.additional_gids.len()), (33, 50, 0));
        let id = resolve("1234:5", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (1234, 5, "/"));
        let id = resolve("33", Some(PASSWD), None).unwrap();
        assert_eq!((id.uid, id.gid), (33, 33));
        let id = resolve("", None, None).unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
        let err = resolve("nobody", Some(PASSWD), Some(GROUP)).unwrap_err().to_string();
        assert!(err.contains("unable to find user nobody"), "{err}");
        let err = resolve("app:wheel", Some(PASSWD), Some(GROUP)).unwrap_err().to_string();
        assert!(err.contains("unable to find group wheel"), "{err}");
    }

    #[test]
    fn files_come_from_the_top_layer_that_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "old").unwrap();
        std::fs::write(bottom.join("etc/group"), "g").unwrap();
        std::fs::write(top.join("etc/passwd"), "new").unwrap();
        // A symlink pointing out of the layer resolves inside it, so finds nothing.
        std::os::unix::fs::symlink("/etc/hostname", top.join("etc/hosts")).unwrap();
        let layers = [top, bottom];
        assert_eq!(read_from_layers(&layers, Path::new("/etc/passwd")).as_deref(), Some("new"));
        assert_eq!(read_from_layers(&layers, Path::new("/etc/group")).as_deref(), Some("g"));
        assert_eq!(read_from_layers(&layers, Path::new("/etc/shadow")), None);
        assert_eq!(read_from_layers(&layers, Path::new("/etc/hosts")), None);
    }
}
