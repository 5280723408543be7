//! The OCI runtime spec of a container: the image's config and the user's options turned
//! into `config.json`, with Docker's defaults (capabilities, seccomp, masked paths, /dev/shm,
//! the files of `/etc` that name the container). Pure: unit-tested without root.

use std::path::{Path, PathBuf};

use berth_image::config::RunConfig;
use serde_json::{json, Value};

use crate::container::{MountRecord, Record};
use crate::user::Identity;
use crate::{invalid, Result};

pub use berth_task::defaults::{
    ALL_CAPS, DEFAULT_CAPS, DENIED_SYSCALLS, MASKED_PATHS, READONLY_PATHS,
};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Files of lxcfs that give a container its own view of memory, cpus and uptime.
pub const LXCFS_FILES: &[&str] =
    &["cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime"];

/// How the container gets its network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// The host's: no namespace.
    Host,
    /// A fresh, empty one (loopback only).
    New,
    /// Join this one (a berth-made namespace file, or another container's).
    Join(String),
}

/// Everything `build` needs besides the record.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub record: &'a Record,
    pub image: Option<&'a RunConfig>,
    pub identity: &'a Identity,
    pub rootfs: &'a Path,
    /// Where hosts, hostname and resolv.conf are (the container's directory).
    pub etc_dir: &'a Path,
    pub netns: NetNs,
    /// A static init (tini) to run as PID 1 with `--init`.
    pub init_binary: Option<&'a Path>,
    /// lxcfs's mount point, when it runs.
    pub lxcfs: Option<&'a Path>,
    /// Where the monitor listens for seccomp notifications: `sysinfo(2)` is then answered
    /// by the monitor with the container's limits (what lxcfs does for /proc files).
    pub sysinfo_listener: Option<&'a Path>,
    /// Namespaces joined from other containers (`--ipc`/`--pid container:NAME`).
    pub joined: Joined,
    /// What the host's cgroups can do.
    pub support: Support,
}

/// Limits a kernel may lack; Docker warns and drops them there, and so does berth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Support {
    /// `--oom-kill-disable`: cgroup v1's memory.oom_control.
    pub oom_kill_disable: bool,
    /// `--blkio-weight`: a proportional-weight I/O scheduler (CFQ or BFQ).
    pub blkio_weight: bool,
}

impl Support {
    pub fn probe() -> Support {
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        let v2_io = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"));
        Support {
            oom_kill_disable: Path::new("/sys/fs/cgroup/memory/memory.oom_control").exists(),
            blkio_weight: v1.join("blkio.weight").exists()
                || v1.join("blkio.bfq.weight").exists()
                || v2_io,
        }
    }
}

/// Namespaces of other containers this one joins, as paths.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Joined {
    pub ipc: Option<PathBuf>,
    /// The other container's /dev/shm, shared with its IPC namespace.
    pub shm: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

/// The program and arguments: Docker's rules for Entrypoint, Cmd and their overrides.
pub fn process_args(image: Option<&RunConfig>, record: &Record) -> Result<Vec<String>> {
    let options = &record.options;
    let entrypoint: Vec<String> = match &options.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => image.and_then(|i| i.entrypoint.clone()).unwrap_or_default(),
    };
    let cmd: Vec<String> = if !options.command.is_empty() {
        options.command.clone()
    } else if options.entrypoint.is_some() {
        // A new entrypoint drops the image's Cmd, as Docker does.
        Vec::new()
    } else {
        image.and_then(|i| i.cmd.clone()).unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(invalid(
            "command",
            "no command specified: the image has no Entrypoint or Cmd; give one after the image name",
        ));
    }
    Ok(args)
}

/// The environment: image, then `-e` (same keys replace), plus PATH, HOSTNAME, HOME, TERM.
pub fn environment(image: Option<&RunConfig>, record: &Record, home: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: &str| {
        let key = entry.split_once('=').map_or(entry, |(k, _)| k);
        match env.iter().position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
            Some(at) => env[at] = entry.to_owned(),
            None => env.push(entry.to_owned()),
        }
    };
    set(DEFAULT_PATH);
    set(&format!("HOSTNAME={}", record.hostname));
    for entry in image.and_then(|i| i.env.as_ref()).into_iter().flatten() {
        set(entry);
    }
    if record.options.tty {
        set("TERM=xterm");
    }
    for entry in &record.options.env {
        set(entry);
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

/// The capabilities this process may pass on (its bounding set): what "all" means for a
/// privileged container here. Root in a container or a restricted host lacks some.
pub fn available_caps() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_owned()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| (*c).to_owned())
        .collect()
}

fn caps(record: &Record) -> Result<Vec<String>> {
    let normalize = |c: &str| {
        let upper = c.to_ascii_uppercase();
        if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        }
    };
    let options = &record.options;
    if options.privileged {
        return Ok(available_caps());
    }
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect();
    for cap in &options.cap_drop {
        if cap.eq_ignore_ascii_case("all") {
            set.clear();
            continue;
        }
        let cap = normalize(cap);
        if !ALL_CAPS.contains(&cap.as_str()) {
            return Err(invalid("--cap-drop", format!("unknown capability {cap}")));
        }
        set.retain(|c| *c != cap);
    }
    for cap in &options.cap_add {
        if cap.eq_ignore_ascii_case("all") {
            return Ok(available_caps());
        }
        let cap = normalize(cap);
        if !ALL_CAPS.contains(&cap.as_str()) {
            return Err(invalid("--cap-add", format!("unknown capability {cap}")));
        }
        if !set.contains(&cap) {
            set.push(cap);
        }
    }
    Ok(set)
}

fn seccomp(record: &Record) -> Result<Option<Value>> {
    let mut profile = None;
    for opt in &record.options.security_opt {
        if let Some(value) = opt.strip_prefix("seccomp=").or_else(|| opt.strip_prefix("seccomp:")) {
            profile = Some(value.to_owned());
        }
    }
    if record.options.privileged && profile.is_none() {
        return Ok(None);
    }
    match profile.as_deref() {
        Some("unconfined") => Ok(None),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid("--security-opt seccomp", format!("cannot read {path}: {e}"))
            })?;
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                invalid("--security-opt seccomp", format!("{path} is not JSON: {e}"))
            })?;
            Ok(Some(value))
        }
        None => Ok(Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{
                "names": DENIED_SYSCALLS,
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1
            }]
        }))),
    }
}

fn mount_json(m: &MountRecord) -> Value {
    match m.kind.as_str() {
        "tmpfs" => {
            let mut options = vec!["nosuid".to_owned(), "nodev".to_owned()];
            if m.read_only {
                options.push("ro".into());
            }
            options.extend(m.options.iter().cloned());
            json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": options})
        }
        _ => {
            let mut options = vec!["rbind".to_owned()];
            options.push(if m.read_only { "ro" } else { "rw" }.into());
            let propagation = m
                .options
                .iter()
                .find(|o| o.contains("private") || o.contains("shared") || o.contains("slave"));
            options.push(propagation.cloned().unwrap_or_else(|| "rprivate".into()));
            json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options})
        }
    }
}

/// The whole `config.json`.
/// A device node found on the host.
struct HostDevice {
    host: PathBuf,
    kind: char,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl HostDevice {
    fn spec(&self, inside: &Path) -> Value {
        json!({"path": inside, "type": self.kind.to_string(), "major": self.major, "minor": self.minor,
            "fileMode": self.mode, "uid": self.uid, "gid": self.gid})
    }
}

/// The device nodes at `path`: itself when it is one, those below it when it is a
/// directory (not the pseudo-terminal, shared-memory and message-queue mounts, which every
/// container has its own of, nor the console). Symlinks are not followed.
fn device_nodes(path: &Path) -> Result<Vec<HostDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let metadata = std::fs::symlink_metadata(path)
        .map_err(|e| invalid("--device", format!("{}: {e}", path.display())))?;
    let kind = metadata.file_type();
    if kind.is_char_device() || kind.is_block_device() {
        let rdev = metadata.rdev();
        return Ok(vec![HostDevice {
            host: path.to_owned(),
            kind: if kind.is_char_device() { 'c' } else { 'b' },
            major: berth_sys::nix::sys::stat::major(rdev),
            minor: berth_sys::nix::sys::stat::minor(rdev),
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
        }]);
    }
    if !kind.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let entries = std::fs::read_dir(path)
        .map_err(|e| invalid("--device", format!("{}: {e}", path.display())))?;
    for entry in entries.flatten() {
        let child = entry.path();
        if ["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/console", "/dev/ptmx"]
            .iter()
            .any(|skip| child == Path::new(skip))
        {
            continue;
        }
        // Devices that vanish while we look, or subdirectories we cannot read, are skipped.
        if let Ok(mut nodes) = device_nodes(&child) {
            found.append(&mut nodes);
        }
    }
    Ok(found)
}

pub fn build(inputs: &Inputs<'_>) -> Result<Value> {
    let record = inputs.record;
    let options = &record.options;
    let mut args = process_args(inputs.image, record)?;
    let init_mount = match inputs.init_binary {
        Some(binary) if options.init => {
            args.splice(0..0, ["/sbin/berth-init".to_owned(), "--".to_owned()]);
            Some(json!({"destination": "/sbin/berth-init", "type": "bind", "source": binary, "options": ["bind", "ro"]}))
        }
        None if options.init => {
            return Err(invalid(
                "--init",
                "needs a static init: install Debian's `tini` package (it provides /usr/bin/tini-static)",
            ))
        }
        _ => None,
    };
    let cwd = options
        .workdir
        .clone()
        .or_else(|| inputs.image.and_then(|i| i.working_dir.clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(invalid("--workdir", format!("{cwd:?} is not an absolute path")));
    }
    let caps = caps(record)?;
    let no_new_privileges = options.security_opt.iter().any(|o| {
        o == "no-new-privileges" || o == "no-new-privileges:true" || o == "no-new-privileges=true"
    });
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if options.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if options.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    // /dev/shm follows the IPC namespace: the host's, another container's, none, or a
    // tmpfs of its own (64 MiB unless `--shm-size` says).
    match (options.ipc.as_str(), &inputs.joined.shm) {
        ("none", _) => {}
        ("host", _) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rw", "rprivate"]})),
        (_, Some(shm)) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rw", "rprivate"]})),
        _ => {
            let size = options.shm_size.filter(|s| *s > 0).unwrap_or(64 << 20);
            mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={size}")]}));
        }
    }
    // The files that name the container live in its directory and are bind-mounted, so
    // neither the image nor `commit` ever sees them.
    for name in ["hosts", "hostname", "resolv.conf"] {
        let source: PathBuf = inputs.etc_dir.join(name);
        mounts.push(json!({"destination": format!("/etc/{name}"), "type": "bind", "source": source, "options": ["rbind", "rprivate", if options.read_only { "ro" } else { "rw" }]}));
    }
    if let Some(lxcfs) = inputs.lxcfs {
        for file in LXCFS_FILES {
            mounts.push(json!({"destination": format!("/proc/{file}"), "type": "bind", "source": lxcfs.join("proc").join(file), "options": ["rbind", "ro"]}));
        }
    }
    if let Some(init) = init_mount {
        mounts.push(init);
    }
    for m in &record.mounts {
        mounts.push(mount_json(m));
    }
    let mut namespaces = vec![json!({"type": "mount"})];
    let mut namespace = |kind: &str, mode: &str, joined: &Option<PathBuf>| match joined {
        Some(path) => namespaces.push(json!({"type": kind, "path": path})),
        None if mode == "host" => {}
        None => namespaces.push(json!({"type": kind})),
    };
    namespace("pid", &options.pid, &inputs.joined.pid);
    namespace("ipc", &options.ipc, &inputs.joined.ipc);
    namespace("uts", &options.uts, &None);
    namespace("cgroup", &options.cgroupns, &None);
    match &inputs.netns {
        NetNs::Host => {}
        NetNs::New => namespaces.push(json!({"type": "network"})),
        NetNs::Join(path) => namespaces.push(json!({"type": "network", "path": path})),
    }
    let mut devices = Vec::new();
    let mut device_rules = Vec::new();
    if options.privileged {
        // Every device the host has, as Docker gives a privileged container.
        for node in device_nodes(Path::new("/dev"))? {
            devices.push(node.spec(&node.host));
        }
    }
    for wanted in &options.devices {
        // The path given may be a link (/dev/serial/by-id/...): the device it names counts;
        // links below a directory are not followed.
        let host = std::fs::canonicalize(&wanted.host)
            .map_err(|e| invalid("--device", format!("{}: {e}", wanted.host)))?;
        let host = host.as_path();
        let nodes = device_nodes(host)?;
        if nodes.is_empty() {
            return Err(invalid("--device", format!("{} is not a device", wanted.host)));
        }
        if !wanted.container.starts_with("/dev/") {
            return Err(invalid(
                "--device",
                format!("{} is outside /dev: name a container path under /dev", wanted.container),
            ));
        }
        for node in nodes {
            // A directory's devices keep their place under the container path.
            let relative = node.host.strip_prefix(host).unwrap_or(Path::new(""));
            let inside = if relative.as_os_str().is_empty() {
                PathBuf::from(&wanted.container)
            } else {
                Path::new(&wanted.container).join(relative)
            };
            device_rules.push(json!({"allow": true, "type": node.kind.to_string(), "major": node.major, "minor": node.minor, "access": wanted.permissions}));
            devices.retain(|d: &Value| d["path"] != json!(inside));
            devices.push(node.spec(&inside));
        }
    }
    let mut resources = json!({"devices": [{"allow": options.privileged, "access": "rwm"}]});
    if !options.privileged {
        // Docker's default device rules: the usual character devices and ptys.
        let allow = |major: i64, minor: Option<i64>| json!({"allow": true, "type": "c", "major": major, "minor": minor.map_or(Value::Null, Value::from), "access": "rwm"});
        resources["devices"] = json!([
            {"allow": false, "access": "rwm"},
            allow(1, Some(3)), allow(1, Some(5)), allow(1, Some(7)), allow(1, Some(8)), allow(1, Some(9)),
            allow(5, Some(0)), allow(5, Some(1)), allow(5, Some(2)), allow(136, None), allow(10, Some(200)),
            {"allow": false, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
        ]);
    }
    if let Some(rules) = resources["devices"].as_array_mut() {
        rules.extend(device_rules);
    }
    if let (Some(all), Value::Object(limits)) =
        (resources.as_object_mut(), limits(record, inputs.support)?)
    {
        all.extend(limits);
    }
    let mut linux = json!({
        "devices": devices,
        "cgroupsPath": format!("/berth/{}", record.id),
        "namespaces": namespaces,
        "resources": resources,
        "rootfsPropagation": "rprivate",
    });
    if !options.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if let Some(mut profile) = seccomp(record)? {
        if let (Some(listener), Some(rules)) =
            (inputs.sysinfo_listener, profile["syscalls"].as_array_mut())
        {
            rules.push(json!({"names": ["sysinfo"], "action": "SCMP_ACT_NOTIFY"}));
            profile["listenerPath"] = json!(listener);
        }
        linux["seccomp"] = profile;
    }
    let env = environment(inputs.image, record, &inputs.identity.home);
    let mut process = json!({
        "terminal": options.tty,
        "user": {"uid": inputs.identity.uid, "gid": inputs.identity.gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": no_new_privileges,
    });
    if !inputs.identity.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(inputs.identity.additional_gids);
    }
    if !options.ulimits.is_empty() {
        process["rlimits"] = options
            .ulimits
            .iter()
            .map(|u| json!({"type": u.rlimit(), "soft": u.soft, "hard": u.hard}))
            .collect();
    }
    if !options.sysctls.is_empty() {
        linux["sysctl"] = json!(options.sysctls);
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in &options.labels {
        annotations.insert(k.clone(), Value::from(v.clone()));
    }
    annotations.insert("io.berth.container.name".into(), Value::from(record.name.clone()));
    let mut spec = json!({
        "ociVersion": "1.2.0",
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": options.read_only},
        "hostname": record.hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    });
    if let (true, Some(fields)) = (options.uts == "host", spec.as_object_mut()) {
        // The host's UTS namespace has the host's name; a runtime may not set it.
        fields.remove("hostname");
    }
    Ok(spec)
}

/// The container's resource limits (memory, cpu, blockIO, pids) in the spec's
/// `linux.resources` form, checked as Docker checks them: what `build` puts in the spec
/// and what `update` gives the runtime of a running container.
pub fn limits(record: &Record, support: Support) -> Result<Value> {
    let options = &record.options;
    let mut limits = json!({});
    let memory = memory(options, support.oom_kill_disable)?;
    if memory.as_object().is_some_and(|m| !m.is_empty()) {
        limits["memory"] = memory;
    }
    if let Some(cpus) = options.cpus {
        if cpus.is_nan() || cpus <= 0.0 {
            return Err(invalid("--cpus", "must be a positive number"));
        }
        let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        if cpus > online {
            return Err(invalid(
                "--cpus",
                format!("{cpus} is more than the {online} CPUs this machine has"),
            ));
        }
        // The quota limits time; the cpuset makes the limit visible (nproc, and the
        // parallelism a runtime such as the JVM or Go picks) as whole CPUs, chosen from
        // the id so that containers spread over the machine.
        let count = (cpus.ceil() as usize).max(1);
        let total = online as usize;
        let first =
            usize::from_str_radix(&record.id[..4.min(record.id.len())], 16).unwrap_or(0) % total;
        let mut set: Vec<usize> = (0..count).map(|i| (first + i) % total).collect();
        set.sort_unstable();
        let cpus_list = set.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        limits["cpu"] =
            json!({"quota": (cpus * 100_000.0) as i64, "period": 100_000, "cpus": cpus_list});
    }
    if options.cpus.is_some() && (options.cpu_quota.is_some() || options.cpu_period.is_some()) {
        return Err(invalid(
            "--cpus",
            "conflicts with --cpu-quota and --cpu-period: give one or the others",
        ));
    }
    let mut cpu = limits.get("cpu").cloned().unwrap_or_else(|| json!({}));
    if let Some(shares) = options.cpu_shares.filter(|s| *s > 0) {
        if shares < 2 {
            return Err(invalid("--cpu-shares", "the minimum is 2"));
        }
        cpu["shares"] = json!(shares.min(262_144));
    }
    if let Some(quota) = options.cpu_quota.filter(|q| *q != 0) {
        if quota > 0 && quota < 1000 {
            return Err(invalid("--cpu-quota", "the minimum is 1000 microseconds (1ms)"));
        }
        cpu["quota"] = json!(quota);
        cpu["period"] = json!(options.cpu_period.unwrap_or(100_000));
    } else if let Some(period) = options.cpu_period.filter(|p| *p != 0) {
        cpu["period"] = json!(period);
    }
    if let Some(period) = cpu["period"].as_u64() {
        if !(1000..=1_000_000).contains(&period) {
            return Err(invalid("--cpu-period", "must be between 1000 and 1000000 microseconds"));
        }
    }
    for (value, flag, key) in [
        (&options.cpuset_cpus, "--cpuset-cpus", "cpus"),
        (&options.cpuset_mems, "--cpuset-mems", "mems"),
    ] {
        if let Some(list) = value.as_deref().filter(|l| !l.is_empty()) {
            if !list.split(',').all(|part| {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if a <= b)
            }) {
                return Err(invalid(format!("{flag} {list:?}"), "expected a list like 0-3,5"));
            }
            cpu[key] = json!(list);
        }
    }
    if cpu.as_object().is_some_and(|c| !c.is_empty()) {
        limits["cpu"] = cpu;
    }
    if let Some(io) = block_io(options, support.blkio_weight)? {
        limits["blockIO"] = io;
    }
    if let Some(pids) = options.pids_limit {
        if pids > 0 {
            limits["pids"] = json!({"limit": pids});
        }
    }
    Ok(limits)
}

/// `--memory`, `--memory-swap`, `--memory-reservation`, `--oom-kill-disable`, with
/// Docker's rules between them.
fn memory(options: &crate::options::RunOptions, oom_switch: bool) -> Result<Value> {
    let mut memory = json!({});
    if let Some(limit) = options.memory {
        if limit < 6 * 1024 * 1024 {
            return Err(invalid("--memory", "the minimum memory limit is 6 MiB"));
        }
        memory["limit"] = json!(limit);
    }
    if let Some(swap) = options.memory_swap.filter(|s| *s != 0) {
        let Some(limit) = options.memory else {
            return Err(invalid(
                "--memory-swap",
                "needs --memory: it is the total of memory and swap",
            ));
        };
        if swap != -1 && swap < limit {
            return Err(invalid(
                "--memory-swap",
                "is memory plus swap: it cannot be below --memory (-1 is unlimited swap)",
            ));
        }
        memory["swap"] = json!(swap);
    }
    if let Some(reservation) = options.memory_reservation.filter(|r| *r > 0) {
        if options.memory.is_some_and(|limit| reservation > limit) {
            return Err(invalid("--memory-reservation", "must be below --memory"));
        }
        memory["reservation"] = json!(reservation);
    }
    if options.oom_kill_disable {
        if oom_switch {
            memory["disableOOMKiller"] = json!(true);
        } else {
            // As Docker on cgroup v2: the kernel has no such switch there.
            tracing::warn!("this kernel's cgroups cannot disable the OOM killer: --oom-kill-disable is ignored");
        }
    }
    Ok(memory)
}

/// `--blkio-weight` and the `--device-*-bps/iops` throttles, devices looked up on the host.
fn block_io(options: &crate::options::RunOptions, weight_works: bool) -> Result<Option<Value>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut io = json!({});
    if let Some(weight) = options.blkio_weight.filter(|w| *w != 0) {
        if !(10..=1000).contains(&weight) {
            return Err(invalid("--blkio-weight", "must be between 10 and 1000"));
        }
        if weight_works {
            io["weight"] = json!(weight);
        } else {
            tracing::warn!("this kernel has no proportional I/O scheduler (CFQ or BFQ): --blkio-weight is ignored");
        }
    }
    for throttle in &options.device_throttles {
        let flag = format!("--device-{}", throttle.kind.replace('_', "-"));
        let meta = std::fs::metadata(&throttle.device)
            .map_err(|e| invalid(format!("{flag} {}", throttle.device), e.to_string()))?;
        if !meta.file_type().is_block_device() {
            return Err(invalid(format!("{flag} {}", throttle.device), "is not a block device"));
        }
        let key = match throttle.kind.as_str() {
            "read_bps" => "throttleReadBpsDevice",
            "write_bps" => "throttleWriteBpsDevice",
            "read_iops" => "throttleReadIOPSDevice",
            _ => "throttleWriteIOPSDevice",
        };
        let entry = json!({
            "major": berth_sys::nix::sys::stat::major(meta.rdev()),
            "minor": berth_sys::nix::sys::stat::minor(meta.rdev()),
            "rate": throttle.rate,
        });
        match io[key].as_array_mut() {
            Some(list) => list.push(entry),
            None => io[key] = json!([entry]),
        }
    }
    Ok(io.as_object().is_some_and(|o| !o.is_empty()).then_some(io))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RunOptions;

    fn record(options: RunOptions) -> Record {
        Record {
            id: "a".repeat(64),
            name: "web".into(),
            hostname: "aaaaaaaaaaaa".into(),
            options,
            ..Record::default()
        }
    }

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into(), "--port=80".into()]),
            env: Some(vec!["PATH=/opt/bin:/bin".into(), "MODE=prod".into()]),
            working_dir: Some("/srv".into()),
            ..RunConfig::default()
        }
    }

    fn inputs<'a>(record: &'a Record, image: &'a RunConfig, identity: &'a Identity) -> Inputs<'a> {
        Inputs {
            record,
            image: Some(image),
            identity,
            rootfs: Path::new("/c/rootfs"),
            etc_dir: Path::new("/c"),
            netns: NetNs::New,
            init_binary: None,
            lxcfs: None,
            sysinfo_listener: None,
            joined: Joined::default(),
            support: Support::default(),
        }
    }

    fn root() -> Identity {
        Identity { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() }
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let img = image();
        let r = record(RunOptions::default());
        assert_eq!(process_args(Some(&img), &r).unwrap(), ["/entry", "serve", "--port=80"]);
        let r = record(RunOptions { command: vec!["sh".into()], ..RunOptions::default() });
        assert_eq!(process_args(Some(&img), &r).unwrap(), ["/entry", "sh"]);
        let r =
            record(RunOptions { entrypoint: Some("/bin/true".into()), ..RunOptions::default() });
        assert_eq!(process_args(Some(&img), &r).unwrap(), ["/bin/true"]);
        let r = record(RunOptions {
            entrypoint: Some(String::new()),
            command: vec!["ls".into()],
            ..RunOptions::default()
        });
        assert_eq!(process_args(Some(&img), &r).unwrap(), ["ls"]);
        let err = process_args(None, &record(RunOptions::default())).unwrap_err().to_string();
        assert!(err.contains("no command specified"), "{err}");
    }

    #[test]
    fn environment_layers_image_then_user() {
        let img = image();
        let r = record(RunOptions {
            env: vec!["MODE=dev".into(), "EXTRA=1".into()],
            tty: true,
            ..RunOptions::default()
        });
        let env = environment(Some(&img), &r, "/root");
        assert_eq!(
            env,
            [
                "PATH=/opt/bin:/bin",
                "HOSTNAME=aaaaaaaaaaaa",
                "MODE=dev",
                "TERM=xterm",
                "EXTRA=1",
                "HOME=/root"
            ]
        );
    }

    #[test]
    fn defaults_are_dockers() {
        let (img, id) = (image(), root());
        let r = record(RunOptions::default());
        let spec = build(&inputs(&r, &img, &id)).unwrap();
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(
            spec["process"]["capabilities"]["bounding"].as_array().unwrap().len(),
            DEFAULT_CAPS.len()
        );
        assert_eq!(spec["linux"]["seccomp"]["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert!(spec["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        let mounts = spec["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/dev/shm"));
        assert!(mounts
            .iter()
            .any(|m| m["destination"] == "/etc/hosts" && m["source"] == "/c/hosts"));
        assert_eq!(spec["linux"]["cgroupsPath"], format!("/berth/{}", "a".repeat(64)));
        assert!(spec["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn options_change_the_spec() {
        let (img, id) = (
            image(),
            Identity { uid: 1000, gid: 1000, additional_gids: vec![50], home: "/home/app".into() },
        );
        let r = record(RunOptions {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(20),
            cap_drop: vec!["net_raw".into()],
            cap_add: vec!["SYS_TIME".into()],
            read_only: true,
            workdir: Some("/tmp".into()),
            security_opt: vec!["no-new-privileges".into(), "seccomp=unconfined".into()],
            ..RunOptions::default()
        });
        let mut inp = inputs(&r, &img, &id);
        inp.netns = NetNs::Host;
        let spec = build(&inp).unwrap();
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(
            spec["linux"]["resources"]["cpu"]["cpus"].as_str().unwrap().split(',').count(),
            1
        );
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 20);
        let bounding = spec["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(
            bounding.iter().any(|c| c == "CAP_SYS_TIME")
                && !bounding.iter().any(|c| c == "CAP_NET_RAW")
        );
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["cwd"], "/tmp");
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["user"]["additionalGids"], json!([50]));
        assert!(spec["linux"].get("seccomp").is_none());
        assert!(!spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }

    #[test]
    fn privileged_and_bad_values() {
        let (img, id) = (image(), root());
        let r = record(RunOptions { privileged: true, ..RunOptions::default() });
        let spec = build(&inputs(&r, &img, &id)).unwrap();
        assert_eq!(
            spec["process"]["capabilities"]["bounding"].as_array().unwrap().len(),
            available_caps().len()
        );
        assert!(
            spec["linux"].get("maskedPaths").is_none() && spec["linux"].get("seccomp").is_none()
        );
        for (options, needle) in [
            (RunOptions { memory: Some(1024), ..RunOptions::default() }, "minimum memory"),
            (RunOptions { cpus: Some(-1.0), ..RunOptions::default() }, "positive"),
            (RunOptions { cpus: Some(4096.0), ..RunOptions::default() }, "CPUs this machine has"),
            (
                RunOptions { cap_add: vec!["CAP_FLY".into()], ..RunOptions::default() },
                "unknown capability",
            ),
            (
                RunOptions { workdir: Some("rel".into()), ..RunOptions::default() },
                "not an absolute path",
            ),
            (RunOptions { init: true, ..RunOptions::default() }, "tini"),
        ] {
            let r = record(options);
            let err = build(&inputs(&r, &img, &id)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
