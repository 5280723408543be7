//! Which cgroup hierarchies the host has mounted, read from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/cpu,cpuacct`.
    pub mount_point: PathBuf,
    /// Its controllers, e.g. `["cpu", "cpuacct"]`, or `["name=systemd"]` for a named one.
    pub controllers: Vec<String>,
}

/// The cgroup layout of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1 controllers; `unified` is the cgroup2 tree of a hybrid host.
    V1 { hierarchies: Vec<Hierarchy>, unified: Option<PathBuf> },
    /// A single cgroup2 tree.
    V2 { root: PathBuf },
}

impl Layout {
    /// Reads the layout of the running host: from `/sys/fs/cgroup` where it is mounted as
    /// systemd mounts it (one `statfs` per hierarchy), else from the mount table (which
    /// costs about half a millisecond on a host with a hundred mounts, at every container
    /// start).
    pub fn detect() -> Result<Layout> {
        if let Some(layout) = Layout::from_sysfs() {
            return Ok(layout);
        }
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
        Layout::from_mountinfo(&text)
    }

    /// The layout under `/sys/fs/cgroup`: a cgroup2 mount there is a v2 host; a tmpfs
    /// holds v1 hierarchies, each mounted at the name of its controllers (as this
    /// process's `/proc/self/cgroup` lists them: `cpu,cpuacct`, `systemd` for
    /// `name=systemd`) and the cgroup2 tree of a hybrid host at `unified`. `None` when
    /// the host is laid out otherwise (the mount table then says).
    fn from_sysfs() -> Option<Layout> {
        use berth_sys::nix::sys::statfs::{
            statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, TMPFS_MAGIC,
        };
        let root = Path::new("/sys/fs/cgroup");
        let kind = statfs(root).ok()?.filesystem_type();
        if kind == CGROUP2_SUPER_MAGIC {
            return Some(Layout::V2 { root: root.to_path_buf() });
        }
        if kind != TMPFS_MAGIC {
            return None;
        }
        let listed = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mut hierarchies = Vec::new();
        for line in listed.lines() {
            let mut fields = line.splitn(3, ':');
            let (id, names) = (fields.next()?, fields.next()?);
            if id == "0" || names.is_empty() {
                continue;
            }
            let mount_point = root.join(names.strip_prefix("name=").unwrap_or(names));
            if statfs(&mount_point).ok()?.filesystem_type() != CGROUP_SUPER_MAGIC {
                return None;
            }
            let controllers: Vec<String> =
                names.split(',').filter(|c| is_controller(c)).map(str::to_owned).collect();
            if !controllers.is_empty() {
                hierarchies.push(Hierarchy { mount_point, controllers });
            }
        }
        let unified = root.join("unified");
        let unified = statfs(&unified)
            .is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
            .then_some(unified);
        if !hierarchies.iter().any(|h| h.controllers.iter().any(|c| !c.starts_with("name="))) {
            return None;
        }
        // The mount table's order (it is the order controllers are set up in).
        hierarchies.reverse();
        Some(Layout::V1 { hierarchies, unified })
    }

    /// Interprets the text of a `mountinfo` file.
    pub fn from_mountinfo(text: &str) -> Result<Layout> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = match left.split(' ').nth(4) {
                Some(point) => PathBuf::from(berth_sys::mount::unescape_mountinfo(point)),
                None => continue,
            };
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let super_options = right.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" => {
                    // The first one wins; a later one is a bind mount of it.
                    unified.get_or_insert(mount_point);
                }
                "cgroup" => {
                    let controllers: Vec<String> = super_options
                        .split(',')
                        .filter(|option| is_controller(option))
                        .map(str::to_owned)
                        .collect();
                    let seen = hierarchies.iter().any(|h| h.controllers == controllers);
                    if !controllers.is_empty() && !seen {
                        hierarchies.push(Hierarchy { mount_point, controllers });
                    }
                }
                _ => {}
            }
        }
        let has_v1_controllers =
            hierarchies.iter().any(|h| h.controllers.iter().any(|c| !c.starts_with("name=")));
        match (has_v1_controllers, unified) {
            (true, unified) => Ok(Layout::V1 { hierarchies, unified }),
            (false, Some(root)) => Ok(Layout::V2 { root }),
            (false, None) => Err(Error::NoHierarchy),
        }
    }

    /// The v1 hierarchy that holds `controller`, if it is mounted.
    pub fn hierarchy(&self, controller: &str) -> Option<&Hierarchy> {
        match self {
            Layout::V1 { hierarchies, .. } => {
                hierarchies.iter().find(|h| h.controllers.iter().any(|c| c == controller))
            }
            Layout::V2 { .. } => None,
        }
    }

    /// True for cgroup v2 only hosts.
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }
}

fn is_controller(option: &str) -> bool {
    const CONTROLLERS: &[&str] = &[
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "blkio",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ];
    CONTROLLERS.contains(&option) || option.starts_with("name=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_look_agrees_with_the_mount_table() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Ok(table) = Layout::from_mountinfo(&text) else { return };
        let Some(quick) = Layout::from_sysfs() else { return };
        let sorted = |layout: &Layout| match layout {
            Layout::V1 { hierarchies, unified } => {
                let mut h = hierarchies.clone();
                h.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
                (h, unified.clone())
            }
            Layout::V2 { root } => (Vec::new(), Some(root.clone())),
        };
        assert_eq!(sorted(&quick), sorted(&table));
        assert_eq!(quick.is_v2(), table.is_v2());
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_is_v1_with_a_unified_tree() {
        let layout = Layout::from_mountinfo(HYBRID).expect("layout");
        let Layout::V1 { hierarchies, unified } = &layout else { panic!("not v1: {layout:?}") };
        assert_eq!(unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(hierarchies.len(), 4);
        assert_eq!(
            layout.hierarchy("memory").map(|h| h.mount_point.clone()),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert!(layout.hierarchy("pids").is_none());
    }

    #[test]
    fn pure_v2_host() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Layout::from_mountinfo(text).expect("layout"),
            Layout::V2 { root: PathBuf::from("/sys/fs/cgroup") }
        );
    }

    #[test]
    fn co_mounted_controllers_and_escaped_paths() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu\\040acct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let layout = Layout::from_mountinfo(text).expect("layout");
        let hierarchy = layout.hierarchy("cpuacct").expect("cpuacct");
        assert_eq!(hierarchy.mount_point, PathBuf::from("/sys/fs/cgroup/cpu acct"));
        assert_eq!(hierarchy.controllers, vec!["cpu", "cpuacct"]);
    }

    #[test]
    fn no_cgroups_is_an_error() {
        let err = Layout::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n").expect_err("none");
        assert!(matches!(err, Error::NoHierarchy));
    }
}
