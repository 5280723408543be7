//! Pure planning: from an OCI `Spec` to the list of things the container's init must do.
//!
//! Nothing here touches the system, so every decision (mount flags, namespace order, which
//! devices to create, which sysctls are allowed) is unit-tested without root. The executor in
//! `init.rs` applies a [`Plan`] step by step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use berth_sys::mount::{self as sysmount, MountAttr};
use berth_sys::nix::mount::MsFlags;
use berth_sys::nix::sched::CloneFlags;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, Mount, PosixRlimitType, Spec,
};

use crate::error::{invalid, Result};

/// What the container's mount namespace should contain, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStep {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    pub kind: MountKind,
    /// Flags for `mount(2)`; for binds, the flags of the read-only/nosuid/... remount.
    pub flags: MsFlags,
    /// Flags that options such as `rw` or `dev` explicitly clear, so that a bind remount
    /// does not re-add them from the source mount.
    pub cleared: MsFlags,
    /// Filesystem-specific options (`mode=755,size=65536k`).
    pub data: String,
    /// Propagation changes, applied after the mount (`rprivate`, `shared`, ...).
    pub propagation: Vec<MsFlags>,
    /// Recursive attribute changes (`rro`, `rnosuid`, ...), applied with `mount_setattr`.
    pub recursive: Option<MountAttr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A bind mount of a host path (`bind`, `rbind`, or `type: bind`).
    Bind { source: PathBuf, recursive: bool },
    /// A filesystem of its own: tmpfs, proc, sysfs, devpts, mqueue, ...
    Filesystem { fstype: String, source: String },
    /// The container's own cgroup, shown at the destination.
    Cgroup,
}

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub cleared: MsFlags,
    pub bind: bool,
    pub recursive_bind: bool,
    pub propagation: Vec<MsFlags>,
    pub recursive: MountAttr,
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            bind: false,
            recursive_bind: false,
            propagation: Vec::new(),
            recursive: MountAttr::default(),
            data: Vec::new(),
        }
    }
}

/// Parses the `options` of a mount as `mount(8)` and runc understand them.
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions::default();
    for option in options {
        let (set, clear): (MsFlags, MsFlags) = match option.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "iversion" => (MsFlags::MS_I_VERSION, MsFlags::empty()),
            "noiversion" => (MsFlags::empty(), MsFlags::MS_I_VERSION),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            "bind" => {
                parsed.bind = true;
                continue;
            }
            "rbind" => {
                parsed.bind = true;
                parsed.recursive_bind = true;
                continue;
            }
            other => {
                if let Some(propagation) = propagation_flag(other) {
                    parsed.propagation.push(propagation);
                } else if let Some((set, clear)) = recursive_attr(other) {
                    parsed.recursive.set |= set;
                    parsed.recursive.clear |= clear;
                } else if !matches!(other, "tmpcopyup" | "idmap" | "ridmap" | "") {
                    parsed.data.push(other.to_owned());
                }
                continue;
            }
        };
        parsed.flags = (parsed.flags | set) & !clear;
        parsed.cleared = (parsed.cleared | clear) & !set;
    }
    parsed
}

/// `private`, `rshared`, ...: the propagation flags of `mount(2)`.
pub fn propagation_flag(option: &str) -> Option<MsFlags> {
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// `rro`, `rnosuid`, ...: attributes set (or cleared) on a mount and everything below it.
fn recursive_attr(option: &str) -> Option<(u64, u64)> {
    let atime = sysmount::MOUNT_ATTR__ATIME;
    Some(match option {
        "rro" => (sysmount::MOUNT_ATTR_RDONLY, 0),
        "rrw" => (0, sysmount::MOUNT_ATTR_RDONLY),
        "rnosuid" => (sysmount::MOUNT_ATTR_NOSUID, 0),
        "rsuid" => (0, sysmount::MOUNT_ATTR_NOSUID),
        "rnodev" => (sysmount::MOUNT_ATTR_NODEV, 0),
        "rdev" => (0, sysmount::MOUNT_ATTR_NODEV),
        "rnoexec" => (sysmount::MOUNT_ATTR_NOEXEC, 0),
        "rexec" => (0, sysmount::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (sysmount::MOUNT_ATTR_NODIRATIME, 0),
        "rdiratime" => (0, sysmount::MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => (sysmount::MOUNT_ATTR_NOSYMFOLLOW, 0),
        "rsymfollow" => (0, sysmount::MOUNT_ATTR_NOSYMFOLLOW),
        // The atime modes are one field: clearing it and setting the wanted mode.
        "rrelatime" => (sysmount::MOUNT_ATTR_RELATIME, atime),
        "rnoatime" => (sysmount::MOUNT_ATTR_NOATIME, atime),
        "rstrictatime" => (sysmount::MOUNT_ATTR_STRICTATIME, atime),
        "ratime" | "rnorelatime" | "rnostrictatime" => (sysmount::MOUNT_ATTR_RELATIME, atime),
        _ => return None,
    })
}

/// Plans every entry of `mounts`, in order.
pub fn plan_mounts(mounts: &[Mount]) -> Result<Vec<MountStep>> {
    mounts.iter().enumerate().map(|(index, mount)| plan_mount(index, mount)).collect()
}

fn plan_mount(index: usize, mount: &Mount) -> Result<MountStep> {
    let field = |name: &str| format!("mounts[{index}].{name}");
    let destination = mount.destination().clone();
    if !destination.is_absolute() {
        return Err(invalid(
            field("destination"),
            format!("{} is not an absolute path", destination.display()),
        ));
    }
    let options = parse_mount_options(mount.options().as_deref().unwrap_or_default());
    let fstype = mount.typ().clone().unwrap_or_default();
    let source = mount.source().clone();
    let kind = if options.bind || fstype == "bind" {
        let source =
            source.ok_or_else(|| invalid(field("source"), "a bind mount needs a source"))?;
        MountKind::Bind { source, recursive: options.recursive_bind }
    } else if fstype == "cgroup" || fstype == "cgroup2" {
        MountKind::Cgroup
    } else if fstype.is_empty() {
        return Err(invalid(field("type"), "is empty; give a filesystem type or a bind option"));
    } else {
        let source =
            source.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| fstype.clone());
        MountKind::Filesystem { fstype, source }
    };
    let recursive = (options.recursive != MountAttr::default()).then_some(options.recursive);
    Ok(MountStep {
        destination,
        kind,
        flags: options.flags,
        cleared: options.cleared,
        data: options.data.join(","),
        propagation: options.propagation,
        recursive,
    })
}

/// How the container gets its user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserNamespace {
    /// The host's: no user namespace in the spec.
    Host,
    /// A new one, with these mappings written by the runtime.
    New { uid_mappings: Vec<LinuxIdMapping>, gid_mappings: Vec<LinuxIdMapping> },
    /// An existing one, joined by path.
    Join(PathBuf),
}

/// Which namespaces to join and which to create, in the order they must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    pub user: UserNamespace,
    /// Namespaces (other than user) joined by path, in the order to join them.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// Namespaces (other than user) to create.
    pub create: CloneFlags,
    /// Contents for `/proc/self/timens_offsets`, when a time namespace is created.
    pub time_offsets: Option<String>,
}

impl NamespacePlan {
    pub fn has(&self, flag: CloneFlags) -> bool {
        self.create.contains(flag) || self.join.iter().any(|(f, _)| *f == flag)
    }

    pub fn has_user(&self) -> bool {
        self.user != UserNamespace::Host
    }
}

pub fn clone_flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CLONE_NEWTIME,
    }
}

/// `CLONE_NEWTIME`, which `nix` does not name.
pub const CLONE_NEWTIME: CloneFlags = CloneFlags::from_bits_retain(0x0000_0080);

/// The name of a namespace under `/proc/<pid>/ns/`.
pub fn proc_ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        f if f == CloneFlags::CLONE_NEWNS => "mnt",
        f if f == CloneFlags::CLONE_NEWCGROUP => "cgroup",
        f if f == CloneFlags::CLONE_NEWUTS => "uts",
        f if f == CloneFlags::CLONE_NEWIPC => "ipc",
        f if f == CloneFlags::CLONE_NEWUSER => "user",
        f if f == CloneFlags::CLONE_NEWPID => "pid",
        f if f == CloneFlags::CLONE_NEWNET => "net",
        _ => "time",
    }
}

/// Plans namespaces and checks the rules between them and the rest of the spec.
pub fn plan_namespaces(spec: &Spec) -> Result<NamespacePlan> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux", "is missing; berth only runs Linux containers"))?;
    let mut seen = BTreeSet::new();
    let mut user = UserNamespace::Host;
    let mut join = Vec::new();
    let mut create = CloneFlags::empty();
    for (index, namespace) in linux.namespaces().iter().flatten().enumerate() {
        let flag = clone_flag(namespace.typ());
        if !seen.insert(flag.bits()) {
            return Err(invalid(
                format!("linux.namespaces[{index}]"),
                format!("the {} namespace is listed twice", proc_ns_name(flag)),
            ));
        }
        let path = namespace.path().clone().filter(|p| !p.as_os_str().is_empty());
        match (flag == CloneFlags::CLONE_NEWUSER, path) {
            (true, Some(path)) => user = UserNamespace::Join(path),
            (true, None) => {
                user = UserNamespace::New {
                    uid_mappings: linux.uid_mappings().clone().unwrap_or_default(),
                    gid_mappings: linux.gid_mappings().clone().unwrap_or_default(),
                }
            }
            (false, Some(path)) => join.push((flag, path)),
            (false, None) => create |= flag,
        }
    }
    // Joining order: the user namespace first (done separately), then the rest with mnt last,
    // because joining a mount namespace changes how later paths resolve.
    join.sort_by_key(|(flag, _)| *flag == CloneFlags::CLONE_NEWNS);

    let has_mappings = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    match &user {
        UserNamespace::New { uid_mappings, gid_mappings }
            if uid_mappings.is_empty() || gid_mappings.is_empty() =>
        {
            return Err(invalid(
                "linux.uidMappings",
                "a new user namespace needs both uidMappings and gidMappings",
            ));
        }
        UserNamespace::Host if has_mappings => {
            return Err(invalid(
                "linux.uidMappings",
                "mappings are set but linux.namespaces has no user namespace",
            ));
        }
        _ => {}
    }
    let plan = NamespacePlan { user, join, create, time_offsets: None };
    if !plan.has(CloneFlags::CLONE_NEWNS) {
        check_without_mount_namespace(spec)?;
    }
    let time_offsets = match linux.time_offsets() {
        Some(offsets) if !offsets.is_empty() => {
            if !create.contains(CLONE_NEWTIME) {
                return Err(invalid(
                    "linux.timeOffsets",
                    "offsets need a new time namespace in linux.namespaces",
                ));
            }
            let mut lines = String::new();
            let mut clocks: Vec<_> = offsets.iter().collect();
            clocks.sort_by(|a, b| a.0.cmp(b.0));
            for (clock, offset) in clocks {
                if clock != "monotonic" && clock != "boottime" {
                    return Err(invalid(
                        "linux.timeOffsets",
                        format!("unknown clock {clock:?}; use monotonic or boottime"),
                    ));
                }
                let nanos = offset.nanosecs().unwrap_or(0);
                if nanos >= 1_000_000_000 {
                    return Err(invalid(
                        "linux.timeOffsets",
                        format!("nanosecs {nanos} must be below one second"),
                    ));
                }
                lines.push_str(&format!("{clock} {} {nanos}\n", offset.secs().unwrap_or(0)));
            }
            Some(lines)
        }
        _ => None,
    };
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !plan.has(CloneFlags::CLONE_NEWUTS) {
            return Err(invalid(
                "hostname",
                format!("cannot set hostname {hostname:?} without a UTS namespace"),
            ));
        }
    }
    if spec.domainname().as_deref().is_some_and(|d| !d.is_empty())
        && !plan.has(CloneFlags::CLONE_NEWUTS)
    {
        return Err(invalid("domainname", "cannot set the domain name without a UTS namespace"));
    }
    for key in linux.sysctl().iter().flatten().map(|(key, _)| key) {
        check_sysctl(key, &plan)?;
    }
    Ok(NamespacePlan { time_offsets, ..plan })
}

/// A sysctl may only be set when it belongs to a namespace the container has of its own.
/// Without a mount namespace of its own, the container shares the host's mount table, as
/// runc and crun allow: its mounts are made in the host's namespace under the rootfs (and
/// undone by `delete`), and it enters the rootfs with `chroot`. What would change mounts
/// the host already has is refused: masking and read-only paths (runc refuses them too),
/// a read-only root, and a root propagation.
fn check_without_mount_namespace(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let advice = "needs a mount namespace of the container's own: add {\"type\": \"mount\"} to linux.namespaces";
    if linux.and_then(|l| l.masked_paths().as_ref()).is_some_and(|p| !p.is_empty()) {
        return Err(invalid(
            "linux.maskedPaths",
            format!("masking paths {advice}, or empty the list"),
        ));
    }
    if linux.and_then(|l| l.readonly_paths().as_ref()).is_some_and(|p| !p.is_empty()) {
        return Err(invalid(
            "linux.readonlyPaths",
            format!("read-only paths {advice}, or empty the list"),
        ));
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        return Err(invalid(
            "root.readonly",
            format!("a read-only root {advice}, or set it to false"),
        ));
    }
    if linux.and_then(|l| l.rootfs_propagation().as_ref()).is_some_and(|p| !p.is_empty()) {
        return Err(invalid(
            "linux.rootfsPropagation",
            format!("a root propagation {advice}, or remove it"),
        ));
    }
    Ok(())
}

pub fn check_sysctl(key: &str, namespaces: &NamespacePlan) -> Result<()> {
    let field = format!("linux.sysctl.{key}");
    if key.contains("..") || key.starts_with('/') || key.contains('\0') {
        return Err(invalid(field, "is not a sysctl name"));
    }
    let key = key.replace('/', ".");
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needs = if ipc.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
        (CloneFlags::CLONE_NEWIPC, "an IPC")
    } else if key.starts_with("net.") {
        (CloneFlags::CLONE_NEWNET, "a network")
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        (CloneFlags::CLONE_NEWUTS, "a UTS")
    } else {
        return Err(invalid(field, "is not namespaced: setting it would change the host"));
    };
    if !namespaces.has(needs.0) {
        return Err(invalid(field, format!("needs {} namespace of the container's own", needs.1)));
    }
    Ok(())
}

/// A device node to create in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    /// `c`, `b`, `u` (unbuffered char) or `p` (fifo).
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices every container has, as runc and Docker give them.
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(name, major, minor)| DeviceNode {
        path: PathBuf::from("/dev").join(name),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Default devices plus `linux.devices` (a spec entry replaces a default one of that path).
pub fn plan_devices(devices: &[LinuxDevice]) -> Result<Vec<DeviceNode>> {
    let mut nodes: BTreeMap<PathBuf, DeviceNode> =
        default_devices().into_iter().map(|d| (d.path.clone(), d)).collect();
    for (index, device) in devices.iter().enumerate() {
        let path = device.path().clone();
        if !path.is_absolute() || !path.starts_with("/dev") {
            return Err(invalid(
                format!("linux.devices[{index}].path"),
                format!("{} must be under /dev", path.display()),
            ));
        }
        let kind = match device.typ() {
            LinuxDeviceType::C => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::U => 'u',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => {
                return Err(invalid(
                    format!("linux.devices[{index}].type"),
                    "\"a\" is not a device type; use c, b, u or p",
                ))
            }
        };
        nodes.insert(
            path.clone(),
            DeviceNode {
                path,
                kind,
                major: device.major(),
                minor: device.minor(),
                mode: device.file_mode().unwrap_or(0o666) & 0o7777,
                uid: device.uid().unwrap_or(0),
                gid: device.gid().unwrap_or(0),
            },
        );
    }
    Ok(nodes.into_values().collect())
}

/// The device cgroup rules that let the container use its own `/dev`: runc's default
/// allow-list plus the given devices (the standard ones). They come after the spec's
/// rules, so a "deny all" in the spec still leaves these usable.
pub fn allowed_device_rules(devices: &[DeviceNode]) -> Vec<oci_spec::runtime::LinuxDeviceCgroup> {
    let rule = |kind: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut rule = oci_spec::runtime::LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(kind));
        rule.set_major(major);
        rule.set_minor(minor);
        rule.set_access(Some(access.to_owned()));
        rule
    };
    // What runc and crun both allow. Not the host's console (c 5:1): with CAP_MKNOD a
    // container could make the node and open it. A terminal's /dev/console is a bind of the
    // container's own pty, which c 136:* covers.
    let mut rules = vec![
        // mknod of anything; opening is what the other rules decide.
        rule(LinuxDeviceType::C, None, None, "m"),
        rule(LinuxDeviceType::B, None, None, "m"),
        rule(LinuxDeviceType::C, Some(136), None, "rwm"), // /dev/pts/*
        rule(LinuxDeviceType::C, Some(5), Some(2), "rwm"), // /dev/ptmx
    ];
    for device in devices {
        let kind = match device.kind {
            'b' => LinuxDeviceType::B,
            'p' => continue,
            _ => LinuxDeviceType::C,
        };
        rules.push(rule(kind, Some(device.major), Some(device.minor), "rwm"));
    }
    rules
}

/// Symlinks every container's `/dev` has.
pub fn default_dev_symlinks(host_has_kcore: bool) -> Vec<(PathBuf, PathBuf)> {
    let mut links = vec![
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ];
    if host_has_kcore {
        links.push(("/dev/core", "/proc/kcore"));
    }
    links.into_iter().map(|(link, target)| (PathBuf::from(link), PathBuf::from(target))).collect()
}

/// `RLIMIT_*` of the spec to the kernel's resource.
pub fn rlimit_resource(typ: PosixRlimitType) -> berth_sys::nix::sys::resource::Resource {
    use berth_sys::nix::sys::resource::Resource;
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Finds the program to execute: a path with a `/` is taken as it is, a bare name is looked
/// up in `PATH` (from the process environment, or the usual default).
pub fn find_executable(
    program: &str,
    env: &[String],
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find_map(|entry| entry.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| if dir.is_empty() { PathBuf::from(".") } else { PathBuf::from(dir) })
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// The mount point of the mount holding `path` (the last, so topmost, of the longest
/// matching mount points in `/proc/self/mountinfo`), and whether it is shared.
pub fn mount_holding(mountinfo: &str, path: &Path) -> Option<(PathBuf, bool)> {
    let mut best: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else { continue };
        let Some(point) =
            fields.get(4).map(|p| PathBuf::from(berth_sys::mount::unescape_mountinfo(p)))
        else {
            continue;
        };
        if !path.starts_with(&point) {
            continue;
        }
        let shared = fields[6.min(separator)..separator].iter().any(|f| f.starts_with("shared:"));
        let deeper = best
            .as_ref()
            .is_none_or(|(current, _)| point.components().count() >= current.components().count());
        if deeper {
            best = Some((point, shared));
        }
    }
    best
}

/// The mounts a container without a mount namespace of its own left on the host: mount
/// points at or below the spec's mount destinations (and `/dev/console`, and the device
/// paths) under `rootfs`, latest first, so each is unmounted before what it covers.
pub fn host_mounts_of(mountinfo: &str, rootfs: &Path, spec: &Spec) -> Vec<PathBuf> {
    let mut destinations: Vec<PathBuf> =
        spec.mounts().iter().flatten().map(|m| m.destination().clone()).collect();
    destinations.push(PathBuf::from("/dev/console"));
    let devices = spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
    destinations.extend(devices.iter().map(|d| d.path().clone()));
    let targets: Vec<PathBuf> = destinations
        .iter()
        .filter_map(|d| d.strip_prefix("/").ok())
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| rootfs.join(d))
        .collect();
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            line.split(' ').nth(4).map(berth_sys::mount::unescape_mountinfo).map(PathBuf::from)
        })
        .filter(|point| targets.iter().any(|target| point.starts_with(target)))
        .collect();
    found.reverse();
    found
}

/// The time each hook may take, if it says.
pub fn hook_timeout(timeout: Option<i64>) -> Result<Option<std::time::Duration>> {
    match timeout {
        None => Ok(None),
        Some(seconds) if seconds > 0 => Ok(Some(std::time::Duration::from_secs(seconds as u64))),
        Some(seconds) => {
            Err(invalid("hooks.timeout", format!("{seconds} must be greater than zero")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(list: &[&str]) -> MountOptions {
        parse_mount_options(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn the_mount_holding_a_path_is_the_deepest_and_last() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:25 / /var rw shared:5 - tmpfs tmpfs rw
31 22 0:26 / /var/lib rw master:7 - tmpfs tmpfs rw
32 31 0:27 / /var/lib/my\\040dir rw shared:9 master:3 - tmpfs tmpfs rw
33 31 0:28 / /var/lib rw - tmpfs tmpfs rw
";
        let holding = |path: &str| mount_holding(mountinfo, Path::new(path));
        assert_eq!(holding("/usr/bin"), Some((PathBuf::from("/"), true)));
        assert_eq!(holding("/var/x"), Some((PathBuf::from("/var"), true)));
        // Two mounts on /var/lib: the later one is on top.
        assert_eq!(holding("/var/lib/x"), Some((PathBuf::from("/var/lib"), false)));
        assert_eq!(
            holding("/var/lib/my dir/rootfs"),
            Some((PathBuf::from("/var/lib/my dir"), true))
        );
        // Not a path prefix by characters: /variable is not under /var.
        assert_eq!(holding("/variable"), Some((PathBuf::from("/"), true)));
    }

    #[test]
    fn host_mounts_of_a_container_are_its_own_latest_first() {
        let mountinfo = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/vda1 rw
40 22 8:1 /b/rootfs /b/rootfs rw - ext4 /dev/vda1 rw
41 40 0:40 / /b/rootfs/proc rw - proc proc rw
42 40 0:41 / /b/rootfs/dev rw - tmpfs tmpfs rw
43 42 0:42 / /b/rootfs/dev/pts rw - devpts devpts rw
44 22 0:43 / /b/rootfs2/proc rw - proc proc rw
45 40 0:44 / /b/rootfs/srv rw - tmpfs tmpfs rw
";
        let spec = spec(
            r#"{"mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                          {"destination":"/dev","type":"tmpfs","source":"tmpfs"}]}"#,
        );
        // The rootfs itself, another rootfs and a mount the spec did not ask for stay.
        assert_eq!(
            host_mounts_of(mountinfo, Path::new("/b/rootfs"), &spec),
            vec![
                PathBuf::from("/b/rootfs/dev/pts"),
                PathBuf::from("/b/rootfs/dev"),
                PathBuf::from("/b/rootfs/proc")
            ]
        );
    }

    #[test]
    fn mount_options_split_into_flags_propagation_and_data() {
        let parsed = options(&["nosuid", "strictatime", "mode=755", "size=65536k", "rslave"]);
        assert_eq!(parsed.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(parsed.data, vec!["mode=755", "size=65536k"]);
        assert_eq!(parsed.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert!(!parsed.bind);
    }

    #[test]
    fn later_options_win() {
        assert_eq!(options(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(options(&["ro", "rw"]).cleared, MsFlags::MS_RDONLY);
        assert_eq!(options(&["rw", "ro"]).flags, MsFlags::MS_RDONLY);
    }

    #[test]
    fn rbind_and_recursive_attributes() {
        let parsed = options(&["rbind", "rro", "rnosuid"]);
        assert!(parsed.bind && parsed.recursive_bind);
        assert_eq!(parsed.recursive.set, sysmount::MOUNT_ATTR_RDONLY | sysmount::MOUNT_ATTR_NOSUID);
    }

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).expect("spec json")
    }

    #[test]
    fn bind_mounts_need_a_source_and_absolute_destination() {
        let mounts: Vec<Mount> = serde_json::from_str(
            r#"[{"destination":"/data","type":"bind","options":["rbind","ro"]}]"#,
        )
        .expect("json");
        assert!(plan_mounts(&mounts)
            .expect_err("no source")
            .to_string()
            .contains("mounts[0].source"));
        let mounts: Vec<Mount> =
            serde_json::from_str(r#"[{"destination":"data","type":"tmpfs","source":"tmpfs"}]"#)
                .expect("json");
        assert!(plan_mounts(&mounts).is_err());
        let mounts: Vec<Mount> = serde_json::from_str(
            r#"[{"destination":"/data","source":"/srv","options":["rbind","ro"]}]"#,
        )
        .expect("json");
        let steps = plan_mounts(&mounts).expect("plan");
        assert_eq!(
            steps[0].kind,
            MountKind::Bind { source: PathBuf::from("/srv"), recursive: true }
        );
        assert_eq!(steps[0].flags, MsFlags::MS_RDONLY);
    }

    #[test]
    fn namespaces_are_planned_and_checked() {
        let plan = plan_namespaces(&spec(
            r#"{"ociVersion":"1.2.0","hostname":"box","linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"network","path":"/var/run/netns/x"}]}}"#,
        ))
        .expect("plan");
        assert_eq!(
            plan.create,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS
        );
        assert_eq!(plan.join, vec![(CloneFlags::CLONE_NEWNET, PathBuf::from("/var/run/netns/x"))]);
        assert_eq!(plan.user, UserNamespace::Host);
    }

    #[test]
    fn namespace_rules() {
        let cases = [
            (
                r#"{"linux":{"namespaces":[{"type":"pid"}],"maskedPaths":["/proc/kcore"]}}"#,
                "masking paths needs a mount namespace",
            ),
            (
                r#"{"root":{"path":"rootfs","readonly":true},"linux":{"namespaces":[{"type":"pid"}]}}"#,
                "a read-only root needs a mount namespace",
            ),
            (r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"mount"}]}}"#, "listed twice"),
            (r#"{"hostname":"x","linux":{"namespaces":[{"type":"mount"}]}}"#, "UTS namespace"),
            (
                r#"{"linux":{"namespaces":[{"type":"mount"},{"type":"user"}]}}"#,
                "uidMappings and gidMappings",
            ),
            (
                r#"{"linux":{"uidMappings":[{"containerID":0,"hostID":1000,"size":1}],"namespaces":[{"type":"mount"}]}}"#,
                "no user namespace",
            ),
            (
                r#"{"linux":{"timeOffsets":{"monotonic":{"secs":1}},"namespaces":[{"type":"mount"}]}}"#,
                "time namespace",
            ),
            (
                r#"{"linux":{"sysctl":{"kernel.panic":"1"},"namespaces":[{"type":"mount"}]}}"#,
                "not namespaced",
            ),
            (
                r#"{"linux":{"sysctl":{"net.ipv4.ip_forward":"1"},"namespaces":[{"type":"mount"}]}}"#,
                "network namespace",
            ),
        ];
        for (json, expected) in cases {
            let json = json.replacen('{', r#"{"ociVersion":"1.2.0","#, 1);
            let err = plan_namespaces(&spec(&json)).expect_err(&json);
            assert!(err.to_string().contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn time_offsets_are_rendered_for_the_kernel() {
        let plan = plan_namespaces(&spec(
            r#"{"ociVersion":"1.2.0","linux":{"namespaces":[{"type":"mount"},{"type":"time"}],"timeOffsets":{"monotonic":{"secs":86400,"nanosecs":5},"boottime":{"secs":-10}}}}"#,
        ))
        .expect("plan");
        assert_eq!(plan.time_offsets.as_deref(), Some("boottime -10 0\nmonotonic 86400 5\n"));
    }

    #[test]
    fn devices_merge_defaults_with_the_spec() {
        let devices: Vec<LinuxDevice> =
            serde_json::from_str(r#"[{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":438},{"path":"/dev/null","type":"c","major":1,"minor":3,"fileMode":420}]"#).expect("json");
        let nodes = plan_devices(&devices).expect("plan");
        assert_eq!(nodes.len(), 7);
        let null = nodes.iter().find(|n| n.path == Path::new("/dev/null")).expect("null");
        assert_eq!(null.mode, 0o644);
        let bad: Vec<LinuxDevice> =
            serde_json::from_str(r#"[{"path":"/etc/passwd","type":"c","major":1,"minor":3}]"#)
                .expect("json");
        assert!(plan_devices(&bad).is_err());
    }

    #[test]
    fn executables_are_found_in_path() {
        let env = vec!["PATH=/usr/bin:/bin".to_owned()];
        let found = find_executable("sh", &env, |p| p == Path::new("/bin/sh"));
        assert_eq!(found, Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_executable("./run", &env, |_| false), Some(PathBuf::from("./run")));
        assert_eq!(find_executable("nope", &env, |_| false), None);
    }
}
