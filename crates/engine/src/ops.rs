//! The container verbs: create, start, stop, kill, remove, wait, exec, pause, rename, port,
//! diff, commit, cp, top, stats. Each takes the container's lock for as long as it changes
//! the record; a running container's monitor takes it only to record a start or an exit.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_image::config::{History, RunConfig};
use berth_image::Image;
use berth_runtime::{ExecOptions, ExecOutcome, ProcessOverrides};
use berth_sys::nix::mount::{mount, umount2, MntFlags, MsFlags};
use berth_sys::nix::sys::signal::Signal;

use crate::attach;
use crate::container::{Locked, MountRecord, PortBinding, Record, State, Status};
use crate::options::{valid_container_name, RunOptions};
use crate::spec;
use crate::user::{self, Identity};
use crate::{invalid, io, sys, Engine, Error, Result};

/// Docker's default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: u32 = 10;

/// A started container, as the command that started it sees it.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub pid: i32,
    /// The monitor's attach connection, when the start was attached.
    pub stream: UnixStream,
}

/// What `exec` runs.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub tty: bool,
    pub detach: bool,
    pub privileged: bool,
}

/// What `berth update` changes; `None` keeps the value, 0 (or an empty list) removes
/// the limit.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub cpus: Option<f64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_limit: Option<i64>,
    pub blkio_weight: Option<u16>,
    pub restart: Option<crate::options::RestartPolicy>,
}

/// One row of `berth top`.
pub type TopRow = Vec<String>;

impl Engine {
    // ----- create -----

    /// Creates a container from an image: its directory, record, name, volumes and a hold
    /// on the image. Nothing runs yet.
    pub fn create(&self, mut options: RunOptions) -> Result<Record> {
        if options.network.is_empty() {
            options.network = "bridge".into();
        }
        if let Some(name) = &options.name {
            if !valid_container_name(name) {
                return Err(invalid(
                    format!("container name {name:?}"),
                    "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                ));
            }
        }
        self.check_network_option(&options)?;
        // Docker's validation and defaults, before anything is made.
        for dns in &options.dns {
            if dns.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(format!("--dns {dns:?}"), "not an IP address"));
            }
        }
        for entry in &options.add_hosts {
            let (host, ip) = entry
                .split_once(':')
                .ok_or_else(|| invalid(format!("--add-host {entry:?}"), "expected HOST:IP"))?;
            if host.is_empty() || (ip != "host-gateway" && ip.parse::<std::net::IpAddr>().is_err())
            {
                return Err(invalid(
                    format!("--add-host {entry:?}"),
                    "expected HOST:IP, the IP an address or host-gateway",
                ));
            }
        }
        self.check_namespace_options(&options)?;
        // What this kernel cannot do is dropped with a warning, as Docker does.
        let support = spec::Support::probe();
        if options.oom_kill_disable && !support.oom_kill_disable {
            tracing::warn!(
                "your kernel's cgroups cannot disable the OOM killer: --oom-kill-disable discarded"
            );
            options.oom_kill_disable = false;
        }
        if options.blkio_weight.is_some() && !support.blkio_weight {
            tracing::warn!("your kernel has no proportional I/O scheduler (CFQ or BFQ): --blkio-weight discarded");
            options.blkio_weight = None;
        }
        // 0 means no limit, as in Docker.
        options.memory = options.memory.filter(|m| *m != 0);
        options.cpus = options.cpus.filter(|c| *c != 0.0);
        if options.network == "host" && options.hostname.is_none() {
            // The host's network is the host's name too.
            options.hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty());
        }
        for mount in &options.mounts {
            if mount.kind == "bind" && !Path::new(&mount.source).exists() {
                return Err(invalid(
                    format!("bind mount source {}", mount.source),
                    "the path does not exist on the host; create it first",
                ));
            }
        }
        let store = self.images()?;
        let image = store.resolve(&options.image)?;
        if let Some(wanted) = &options.platform {
            let wanted = berth_image::manifest::Platform::parse(wanted)
                .map_err(|e| invalid(format!("--platform {wanted}"), e.to_string()))?;
            let actual = berth_image::manifest::Platform {
                architecture: image.config.architecture.clone(),
                os: image.config.os.clone(),
                variant: image.config.variant.clone(),
                os_version: None,
            };
            if !actual.satisfies(&wanted) {
                return Err(Error::Conflict(format!(
                    "image {} was found but does not match the specified platform: wanted {wanted}, actual: {actual}; pull it with --platform {wanted} first",
                    options.image
                )));
            }
        }
        let run_config = image.config.config.clone();
        // The image's labels, under the container's own (as Docker merges them).
        let mut labels = run_config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        labels.append(&mut options.labels);
        options.labels = labels;
        let id = crate::random_id()?;
        let name = options.name.clone().unwrap_or_else(|| generated_name(&id));
        let mut record = Record {
            id: id.clone(),
            name: name.clone(),
            created: crate::now(),
            image: options.image.clone(),
            image_id: image.record.id.to_string(),
            hostname: options.hostname.clone().unwrap_or_else(|| id[..12].to_owned()),
            options,
            ..Record::default()
        };
        record.healthcheck = crate::options::health_check(
            run_config.as_ref().and_then(|c| c.extra.get("Healthcheck")),
            &record.options,
        );
        let args = spec::process_args(run_config.as_ref(), &record)?;
        record.path = args[0].clone();
        record.args = args[1..].to_vec();
        record.stop_signal = record
            .options
            .stop_signal
            .clone()
            .or_else(|| run_config.as_ref().and_then(|c| c.stop_signal.clone()))
            .unwrap_or_else(|| "SIGTERM".into());
        parse_signal(&record.stop_signal)?;
        record.exposed_ports = run_config
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        // The user must exist in the image before anything is made.
        let lowers = store.lower_dirs(&image)?;
        self.identity(&record, run_config.as_ref(), &lowers)?;
        self.reserve_name(&name, &id)?;
        let made = self.create_locked(record, &image, run_config.as_ref());
        match made {
            Ok(record) => {
                self.container_event("create", &record, &[]);
                Ok(record)
            }
            Err(err) => {
                self.release_name(&name, &id);
                let _ = store.release(&format!("container:{id}"));
                let _ = std::fs::remove_dir_all(self.container_dir(&id));
                Err(err)
            }
        }
    }

    fn create_locked(
        &self,
        record: Record,
        image: &Image,
        run_config: Option<&RunConfig>,
    ) -> Result<Record> {
        let mut locked = self.new_container(record)?;
        for sub in ["upper", "work", "rootfs", "init/etc"] {
            let dir = locked.dir.join(sub);
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        for file in ["hosts", "hostname", "resolv.conf"] {
            let path = locked.dir.join("init/etc").join(file);
            std::fs::write(&path, b"").map_err(io("write", &path))?;
        }
        self.images()?.hold(&format!("container:{}", locked.record.id), &image.record.id)?;
        let mut mounts = Vec::new();
        let mut wanted = locked.record.options.mounts.clone();
        // The image's VOLUMEs become anonymous volumes unless a mount covers them.
        for path in
            run_config.and_then(|c| c.volumes.as_ref()).into_iter().flatten().map(|(k, _)| k)
        {
            if !wanted
                .iter()
                .any(|m| m.destination.trim_end_matches('/') == path.trim_end_matches('/'))
            {
                wanted.push(crate::options::MountSpec {
                    kind: "volume".into(),
                    source: String::new(),
                    destination: path.clone(),
                    read_only: false,
                    options: Vec::new(),
                });
            }
        }
        for spec in wanted {
            let record = match spec.kind.as_str() {
                "volume" => {
                    let anonymous = spec.source.is_empty();
                    let volume = self.volume_create(
                        if anonymous { None } else { Some(spec.source.as_str()) },
                        Default::default(),
                    )?;
                    MountRecord {
                        kind: "volume".into(),
                        name: volume.name.clone(),
                        source: volume.mountpoint.to_string_lossy().into_owned(),
                        destination: spec.destination,
                        read_only: spec.read_only,
                        anonymous: volume.anonymous,
                        options: spec.options,
                    }
                }
                _ => MountRecord {
                    kind: spec.kind,
                    name: String::new(),
                    source: spec.source,
                    destination: spec.destination,
                    read_only: spec.read_only,
                    anonymous: false,
                    options: spec.options,
                },
            };
            mounts.push(record);
        }
        // New, empty volumes get what the image has at their mount point (not with
        // `nocopy`, and not for binds).
        let fills: Vec<&MountRecord> = mounts
            .iter()
            .filter(|m| m.kind == "volume" && !m.options.iter().any(|o| o == "nocopy"))
            .collect();
        if !fills.is_empty() {
            let view = locked.dir.join("copy-up");
            std::fs::create_dir_all(&view).map_err(io("create", &view))?;
            let empty = locked.dir.join("copy-up-empty");
            std::fs::create_dir_all(&empty).map_err(io("create", &empty))?;
            let mut lower = String::new();
            for layer in self.images()?.lower_dirs(image)? {
                lower.push_str(&layer.to_string_lossy());
                lower.push(':');
            }
            lower.push_str(&empty.to_string_lossy());
            let options = format!("lowerdir={lower}");
            mount(
                Some("overlay"),
                &view,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(options.as_str()),
            )
            .map_err(sys(format!("mount the image at {} to fill its volumes", view.display())))?;
            let filled = fills.iter().try_for_each(|m| {
                crate::volume::fill_from_image(&view, &m.destination, Path::new(&m.source))
            });
            let _ = umount2(&view, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&view);
            let _ = std::fs::remove_dir(&empty);
            filled?;
        }
        locked.record.mounts = mounts;
        locked.record.state = State { status: Status::Created, ..State::default() };
        locked.save()?;
        Ok(locked.record.clone())
    }

    fn identity(
        &self,
        record: &Record,
        image: Option<&RunConfig>,
        lowers: &[PathBuf],
    ) -> Result<Identity> {
        let spec = record
            .options
            .user
            .clone()
            .or_else(|| image.and_then(|c| c.user.clone()))
            .unwrap_or_default();
        let passwd = user::read_from_layers(lowers, Path::new("/etc/passwd"));
        let group = user::read_from_layers(lowers, Path::new("/etc/group"));
        let mut identity = user::resolve(&spec, passwd.as_deref(), group.as_deref())?;
        // `--group-add`: numbers as they are, names from the container's /etc/group.
        for wanted in &record.options.group_add {
            let gid = wanted.parse::<u32>().ok().or_else(|| {
                group.as_deref()?.lines().find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 3 && fields[0] == wanted)
                        .then(|| fields[2].parse().ok())
                        .flatten()
                })
            });
            let Some(gid) = gid else {
                return Err(invalid(
                    format!("--group-add {wanted}"),
                    "no such group in the container's /etc/group; give a number",
                ));
            };
            if !identity.additional_gids.contains(&gid) {
                identity.additional_gids.push(gid);
            }
        }
        Ok(identity)
    }

    /// `--ipc`, `--pid`, `--uts`, `--cgroupns` and what goes with them, checked before
    /// anything is made.
    fn check_namespace_options(&self, options: &RunOptions) -> Result<()> {
        for (flag, mode) in [
            ("ipc", &options.ipc),
            ("pid", &options.pid),
            ("uts", &options.uts),
            ("cgroupns", &options.cgroupns),
        ] {
            crate::options::check_namespace_mode(flag, mode)?;
            if let Some(other) = mode.strip_prefix("container:") {
                self.resolve_id(other)?;
            }
        }
        if options.uts == "host" && options.hostname.is_some() {
            return Err(invalid(
                "--hostname",
                "conflicts with --uts host: the host's UTS namespace keeps the host's name",
            ));
        }
        match options.log_driver.as_str() {
            "" | "json-file" | "none" | "local" | "k8s-file" => {}
            other => {
                return Err(invalid(
                    format!("--log-driver {other}"),
                    "berth writes json-file logs or none: use json-file or none",
                ))
            }
        }
        Ok(())
    }

    /// The namespaces this container joins from others (`--ipc`/`--pid container:NAME`),
    /// and a shareable /dev/shm of its own (`--ipc shareable`), mounted on the host so
    /// that others can join it.
    fn joined_namespaces(&self, record: &Record, dir: &Path) -> Result<spec::Joined> {
        let mut joined = spec::Joined::default();
        for (kind, mode) in [("ipc", &record.options.ipc), ("pid", &record.options.pid)] {
            let Some(other) = mode.strip_prefix("container:") else { continue };
            let other = self.peek(&self.resolve_id(other)?)?;
            if other.state.status != Status::Running || other.state.pid <= 0 {
                return Err(Error::Conflict(format!(
                    "cannot join the {kind} namespace of container {}: it is not running",
                    other.name
                )));
            }
            let path = PathBuf::from(format!("/proc/{}/ns/{kind}", other.state.pid));
            if kind == "pid" {
                joined.pid = Some(path);
                continue;
            }
            let shm = self.container_dir(&other.id).join("shm");
            if other.options.ipc != "shareable" || !is_mount_point(&shm) {
                return Err(Error::Conflict(format!(
                    "cannot join the IPC namespace of container {}: it is not shareable (run it with --ipc shareable)",
                    other.name
                )));
            }
            joined.ipc = Some(path);
            joined.shm = Some(shm);
        }
        if record.options.ipc == "shareable" {
            let shm = dir.join("shm");
            std::fs::create_dir_all(&shm).map_err(io("create", &shm))?;
            if !is_mount_point(&shm) {
                let size = record.options.shm_size.filter(|s| *s > 0).unwrap_or(64 << 20);
                let options = format!("mode=1777,size={size}");
                mount(
                    Some("shm"),
                    &shm,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some(options.as_str()),
                )
                .map_err(sys(format!("mount a shareable /dev/shm at {}", shm.display())))?;
            }
            joined.shm = Some(shm);
        }
        Ok(joined)
    }

    // ----- start -----

    /// Starts a created or exited container: spawns its monitor and waits until the
    /// container runs. With `attach`, the returned stream carries its output from the first
    /// byte and its exit code at the end.
    pub fn start(&self, name_or_id: &str) -> Result<Started> {
        let id = {
            let locked = self.lock(name_or_id)?;
            match locked.record.state.status {
                Status::Created | Status::Exited | Status::Dead => {}
                Status::Running | Status::Restarting | Status::Paused => {
                    return Err(Error::WrongState {
                        id: locked.record.name.clone(),
                        status: locked.record.state.status.to_string(),
                        hint: "it is already running".into(),
                    })
                }
            }
            locked.record.id.clone()
        };
        let record = self.peek(&id)?;
        if record.options.memory.is_some() || record.options.cpus.is_some() {
            // Started from here, not from the monitor, so that it is nobody's child for long.
            ensure_lxcfs();
        }
        let (ours, theirs) = UnixStream::pair().map_err(io("create socket pair", "(monitor)"))?;
        let log = self.container_dir(&id).join("monitor.log");
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io("open", &log))?;
        // The monitor starts a container, so it must run from a copy of the binary that a
        // container cannot write (see `berth_sys::exe`): started from one here, it need not
        // execute itself again (a 50 MB binary's exec is about 3 ms). Where none can be
        // made it starts from /proc/self/exe and protects itself.
        let (protected, program) =
            berth_sys::exe::protected_program(std::path::Path::new("/proc/self/exe"));
        let mut child = std::process::Command::new(&program)
            .arg0("berth")
            .arg("__monitor")
            .arg(&self.root)
            .arg(&id)
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log_file))
            .spawn()
            .map_err(io("start the monitor from", &program))?;
        drop(protected);
        let mut stream = ours;
        match attach::read_frame(&mut stream) {
            Ok(Some((attach::STARTED, payload))) if payload.len() == 4 => {
                let pid = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                // The monitor lives on; it is reaped by whoever inherits it.
                std::mem::forget(child);
                Ok(Started { id, pid, stream })
            }
            Ok(Some((attach::ERROR, message))) => {
                let _ = child.wait();
                Err(Error::Other(String::from_utf8_lossy(&message).into_owned()))
            }
            other => {
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last = tail.lines().last().unwrap_or("").to_owned();
                Err(Error::Other(format!(
                    "the container's monitor failed before it started the container ({other:?}){}",
                    if last.is_empty() { String::new() } else { format!(": {last}") }
                )))
            }
        }
    }

    /// Everything a start needs before the runtime's `create`: the overlay rootfs, the
    /// network, the files of /etc, and the bundle's `config.json`. Returns the netns.
    pub(crate) fn prepare_start(&self, locked: &mut Locked) -> Result<()> {
        let store = self.images()?;
        let image = store.resolve(&locked.record.image_id)?;
        let lowers = store.lower_dirs(&image)?;
        let run_config = image.config.config.clone();
        let identity = self.identity(&locked.record, run_config.as_ref(), &lowers)?;
        self.mount_rootfs(&locked.dir, &lowers)?;
        let joined = self.joined_namespaces(&locked.record, &locked.dir)?;
        let netns = self.network_setup(&mut locked.record)?;
        self.write_etc_files(locked)?;
        let init_binary = Path::new("/usr/bin/tini-static");
        let limited =
            locked.record.options.memory.is_some() || locked.record.options.cpus.is_some();
        let lxcfs = if limited { lxcfs_dir() } else { None };
        let listener = crate::monitor::sysinfo_socket(&locked.record.id);
        let rootfs = locked.dir.join("rootfs");
        let config = spec::build(&spec::Inputs {
            record: &locked.record,
            image: run_config.as_ref(),
            identity: &identity,
            rootfs: &rootfs,
            etc_dir: &locked.dir,
            netns,
            init_binary: init_binary.exists().then_some(init_binary),
            lxcfs: lxcfs.as_deref(),
            sysinfo_listener: limited.then_some(listener.as_path()),
            joined,
            support: spec::Support::probe(),
        })?;
        let data = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
        // Made again at every start: replaced atomically, not flushed to disk.
        let path = locked.dir.join("config.json");
        berth_stdx::fs::write_atomic_volatile(&path, &data, 0o600)
            .map_err(crate::io("write", &path))?;
        Ok(())
    }

    fn mount_rootfs(&self, dir: &Path, lowers: &[PathBuf]) -> Result<()> {
        let rootfs = dir.join("rootfs");
        if is_mount_point(&rootfs) {
            return Ok(());
        }
        let mut lower = dir.join("init").to_string_lossy().into_owned();
        for layer in lowers {
            lower.push(':');
            lower.push_str(&layer.to_string_lossy());
        }
        let options = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            dir.join("upper").display(),
            dir.join("work").display()
        );
        if options.len() >= 4000 {
            return Err(Error::Other(format!(
                "the image has too many layers ({}) for an overlay mount of this root directory; use a shorter --root",
                lowers.len()
            )));
        }
        mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
            .map_err(sys(format!("mount the overlay rootfs at {}", rootfs.display())))
    }

    fn unmount_rootfs(&self, dir: &Path) {
        let rootfs = dir.join("rootfs");
        while is_mount_point(&rootfs) {
            if let Err(err) = umount2(&rootfs, MntFlags::MNT_DETACH) {
                tracing::warn!("cannot unmount {}: {err}", rootfs.display());
                break;
            }
        }
    }

    fn write_etc_files(&self, locked: &Locked) -> Result<()> {
        let record = &locked.record;
        let mut hosts = if record.options.network == "host" {
            // The host's network: the host's own hosts file, as Docker gives it.
            std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| {
                String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
            })
        } else {
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        };
        if !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        if let Some(net) = &record.network {
            if !net.ip.is_empty() {
                hosts.push_str(&format!("{}\t{} {}\n", net.ip, record.hostname, record.name));
            }
        }
        for entry in &record.options.add_hosts {
            let (host, ip) = entry
                .split_once(':')
                .ok_or_else(|| invalid(format!("--add-host {entry:?}"), "expected HOST:IP"))?;
            // host-gateway: the host as the container reaches it (its network's gateway;
            // the host's loopback for the host's network).
            let ip = match (ip, &record.network) {
                ("host-gateway", Some(net)) if !net.gateway.is_empty() => net.gateway.clone(),
                ("host-gateway", _) => "127.0.0.1".to_owned(),
                (ip, _) if ip.parse::<std::net::IpAddr>().is_ok() => ip.to_owned(),
                _ => {
                    return Err(invalid(
                        format!("--add-host {entry:?}"),
                        "the address is not an IP address",
                    ))
                }
            };
            hosts.push_str(&format!("{ip}\t{host}\n"));
        }
        hosts.push_str(&self.peer_hosts(record));
        let user_network = record
            .networks()
            .any(|n| n.network != crate::network::DEFAULT_NETWORK && !n.ip.is_empty());
        let resolv = if user_network {
            // The embedded DNS answers the network's containers and relays the rest
            // (to --dns when given); the host's search domains stay.
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            crate::network::embedded_resolv_conf(&host)
        } else if !record.options.dns.is_empty() {
            record.options.dns.iter().map(|d| format!("nameserver {d}\n")).collect::<String>()
        } else {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let bridged = record.network.as_ref().is_some_and(|n| !n.ip.is_empty());
            // A loopback resolver on the host cannot be reached from a bridged container.
            host.lines()
                .filter(|l| !(bridged && l.starts_with("nameserver") && l.contains(" 127.")))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        for (name, content) in [
            ("hosts", hosts),
            ("hostname", format!("{}\n", record.hostname)),
            ("resolv.conf", resolv),
        ] {
            let path = locked.dir.join(name);
            std::fs::write(&path, content).map_err(io("write", &path))?;
        }
        Ok(())
    }

    /// Undoes what `prepare_start` and the runtime made: the runtime's container, the
    /// rootfs mount, the network. Safe to call more than once.
    pub(crate) fn release_resources(&self, locked: &Locked) {
        let id = &locked.record.id;
        if self.runtime.state(id).is_ok() {
            if let Err(err) = self.runtime.delete(id, true) {
                tracing::warn!("cannot delete the runtime state of {id}: {err}");
            }
        }
        self.network_teardown(&locked.record);
        self.unmount_rootfs(&locked.dir);
        let shm = locked.dir.join("shm");
        if is_mount_point(&shm) {
            let _ = umount2(&shm, MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_file(crate::monitor::sysinfo_socket(id));
    }

    // ----- stop, kill, wait, remove -----

    /// Sends the stop signal, then SIGKILL after `timeout` seconds; returns once it exited.
    pub fn stop(&self, name_or_id: &str, timeout: Option<u32>) -> Result<()> {
        let (id, signal, timeout) = {
            let mut locked = self.lock(name_or_id)?;
            if !matches!(
                locked.record.state.status,
                Status::Running | Status::Paused | Status::Restarting
            ) {
                return Ok(());
            }
            locked.record.state.stopped_by_user = true;
            locked.save()?;
            let timeout =
                timeout.or(locked.record.options.stop_timeout).unwrap_or(DEFAULT_STOP_TIMEOUT);
            (locked.record.id.clone(), parse_signal(&locked.record.stop_signal)?, timeout)
        };
        if self.runtime.state(&id).is_ok_and(|s| s.status == berth_runtime::Status::Paused) {
            let _ = self.runtime.resume(&id);
        }
        let record = self.peek(&id)?;
        self.container_event("kill", &record, &[("signal", (signal as i32).to_string())]);
        let _ = self.runtime.kill(&id, signal, false);
        if self.wait_exit(&id, Some(Duration::from_secs(u64::from(timeout))))?.is_none() {
            self.container_event("kill", &record, &[("signal", "9".into())]);
            let _ = self.runtime.kill(&id, Signal::SIGKILL, true);
            if self.wait_exit(&id, Some(Duration::from_secs(30)))?.is_none() {
                return Err(Error::Other(format!("container {id} did not exit after SIGKILL")));
            }
        }
        self.container_event("stop", &record, &[]);
        Ok(())
    }

    pub fn kill(&self, name_or_id: &str, signal: &str) -> Result<()> {
        let signal = parse_signal(signal)?;
        let mut locked = self.lock(name_or_id)?;
        if !matches!(locked.record.state.status, Status::Running | Status::Paused) {
            return Err(Error::WrongState {
                id: locked.record.name.clone(),
                status: locked.record.state.status.to_string(),
                hint: "only a running container can be killed".into(),
            });
        }
        if matches!(signal, Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT) {
            locked.record.state.stopped_by_user = true;
            locked.save()?;
        }
        self.runtime.kill(&locked.record.id, signal, signal == Signal::SIGKILL)?;
        self.container_event("kill", &locked.record, &[("signal", (signal as i32).to_string())]);
        Ok(())
    }

    /// Waits until the container is no longer running; returns its exit code, or `None`
    /// after `timeout`.
    pub fn wait_exit(&self, name_or_id: &str, timeout: Option<Duration>) -> Result<Option<i32>> {
        let id = self.resolve_id(name_or_id)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut delay = Duration::from_millis(2);
        loop {
            let record = match self.peek(&id) {
                Ok(record) => record,
                // Removed (--rm) after it exited: its code went with it.
                Err(_) => return Ok(Some(0)),
            };
            let active = matches!(
                record.state.status,
                Status::Running | Status::Paused | Status::Restarting
            );
            if !active {
                return Ok(Some(record.state.exit_code));
            }
            if !Self::monitor_alive(&record.state) {
                // A killed monitor: let `lock` repair the record, then look again.
                let locked = self.lock(&id)?;
                if !matches!(
                    locked.record.state.status,
                    Status::Running | Status::Paused | Status::Restarting
                ) {
                    return Ok(Some(locked.record.state.exit_code));
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Removes a container (`rm`); with `force`, a running one is killed first; with
    /// `volumes`, its anonymous volumes go too.
    pub fn remove(&self, name_or_id: &str, force: bool, volumes: bool) -> Result<String> {
        let id = self.resolve_id(name_or_id)?;
        {
            let locked = self.lock(&id)?;
            let status = locked.record.state.status;
            if matches!(status, Status::Running | Status::Paused | Status::Restarting) {
                if !force {
                    return Err(Error::Conflict(format!(
                        "cannot remove container {:?}: it is {status}; stop it first or use `rm -f`",
                        locked.record.name
                    )));
                }
                drop(locked);
                let mut locked = self.lock(&id)?;
                locked.record.state.stopped_by_user = true;
                locked.save()?;
                drop(locked);
                let _ = self.runtime.kill(&id, Signal::SIGKILL, true);
                if self.wait_exit(&id, Some(Duration::from_secs(30)))?.is_none() {
                    return Err(Error::Other(format!("container {id} did not die after SIGKILL")));
                }
            }
        }
        let locked = match self.lock(&id) {
            Ok(locked) => locked,
            // Removed meanwhile by its monitor (--rm).
            Err(Error::NoSuchContainer(_)) => return Ok(id),
            Err(err) => return Err(err),
        };
        self.destroy(locked, volumes)?;
        Ok(id)
    }

    /// Deletes everything of a stopped container. Used by `rm` and by the monitor (--rm).
    pub(crate) fn destroy(&self, locked: Locked, volumes: bool) -> Result<()> {
        self.release_resources(&locked);
        let record = locked.record.clone();
        if volumes {
            for mount in record.mounts.iter().filter(|m| m.anonymous) {
                // Another container may share it (--volumes-from is not supported, but a
                // named reuse of an anonymous volume is possible).
                let users = self.volume_users(&mount.name).unwrap_or_default();
                if users.iter().all(|u| *u == record.name) {
                    let _ = std::fs::remove_dir_all(self.root.join("volumes").join(&mount.name));
                }
            }
        }
        let _ = self.images().map(|s| s.release(&format!("container:{}", record.id)));
        self.release_name(&record.name, &record.id);
        // Rename first so that no command finds a half-removed container.
        let dir = locked.dir.clone();
        let trash = self.containers_dir().join(format!(".removing-{}", record.id));
        std::fs::rename(&dir, &trash).map_err(io("remove", &dir))?;
        drop(locked);
        self.container_event("destroy", &record, &[]);
        std::fs::remove_dir_all(&trash).map_err(io("remove", &trash))
    }

    // ----- list, pause, rename, port -----

    /// Every container's record, newest first (state repaired where a monitor died).
    /// The containers `start --all` would start: not running, and (when policies are
    /// named) with one of those restart policies and started before. As Docker does when
    /// its daemon starts, `unless-stopped` leaves out containers a user stopped. For a boot service:
    /// `berth start --all --filter restart-policy=always --filter restart-policy=unless-stopped`.
    pub fn startable(&self, policies: &[String]) -> Result<Vec<Record>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| matches!(r.state.status, Status::Created | Status::Exited))
            .filter(|r| {
                policies.is_empty()
                    || (!r.state.started_at.is_empty()
                        && policies.iter().any(|p| {
                            // `on-failure:3` names the policy on-failure.
                            let name = p.split(':').next().unwrap_or(p);
                            name == r.options.restart.name
                                && !(name == "unless-stopped" && r.state.stopped_by_user)
                        }))
            })
            .rev() // oldest first, as they were made
            .collect())
    }

    pub fn list(&self) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        for id in self.ids()? {
            let record = match self.peek(&id) {
                Ok(r)
                    if matches!(
                        r.state.status,
                        Status::Running | Status::Paused | Status::Restarting
                    ) && !Self::monitor_alive(&r.state) =>
                {
                    match self.lock(&id) {
                        Ok(locked) => locked.record,
                        Err(_) => continue,
                    }
                }
                Ok(r) => r,
                Err(_) => continue,
            };
            records.push(record);
        }
        records.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(records)
    }

    pub fn pause(&self, name_or_id: &str, pause: bool) -> Result<()> {
        let mut locked = self.lock(name_or_id)?;
        let status = locked.record.state.status;
        let (wanted, target) = if pause {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        if status != wanted {
            return Err(Error::WrongState {
                id: locked.record.name.clone(),
                status: status.to_string(),
                hint: format!(
                    "only a {wanted} container can be {}",
                    if pause { "paused" } else { "unpaused" }
                ),
            });
        }
        if pause {
            self.runtime.pause(&locked.record.id)?;
        } else {
            self.runtime.resume(&locked.record.id)?;
        }
        locked.record.state.status = target;
        locked.save()?;
        self.container_event(if pause { "pause" } else { "unpause" }, &locked.record, &[]);
        Ok(())
    }

    pub fn rename(&self, name_or_id: &str, new_name: &str) -> Result<()> {
        if !valid_container_name(new_name) {
            return Err(invalid(
                format!("container name {new_name:?}"),
                "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            ));
        }
        let mut locked = self.lock(name_or_id)?;
        let id = locked.record.id.clone();
        self.reserve_name(new_name, &id)?;
        let old = std::mem::replace(&mut locked.record.name, new_name.to_owned());
        if let Err(err) = locked.save() {
            self.release_name(new_name, &id);
            return Err(err);
        }
        self.release_name(&old, &id);
        self.container_event("rename", &locked.record, &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    pub fn ports(&self, name_or_id: &str) -> Result<Vec<PortBinding>> {
        let locked = self.lock(name_or_id)?;
        Ok(locked.record.network.map(|n| n.ports).unwrap_or_default())
    }

    // ----- exec, top, stats -----

    /// Runs a process in a running container, from this process (like `runc exec`): its
    /// stdio are this process's.
    pub fn exec(&self, name_or_id: &str, request: ExecRequest) -> Result<i32> {
        self.exec_kept(name_or_id, request, None)
    }

    /// `exec -d` that keeps the process's exit code: once the process runs, `started` is
    /// called and this waits for it (the caller is a keeper process of its own) and
    /// records its end as an `exec_die` event.
    pub fn exec_kept(
        &self,
        name_or_id: &str,
        request: ExecRequest,
        kept: Option<&mut dyn FnMut()>,
    ) -> Result<i32> {
        let locked = self.lock(name_or_id)?;
        let record = locked.record.clone();
        if record.state.status != Status::Running {
            return Err(Error::WrongState {
                id: record.name.clone(),
                status: record.state.status.to_string(),
                hint: if record.state.status == Status::Paused {
                    "unpause it first".into()
                } else {
                    "start it first; exec needs a running container".into()
                },
            });
        }
        drop(locked);
        if request.command.is_empty() {
            return Err(invalid("exec", "no command given"));
        }
        let (state, _) = self.runtime.saved_state(&record.id)?;
        let base = state.config.process().clone().unwrap_or_default();
        let user = match &request.user {
            Some(spec) => {
                let store = self.images()?;
                let image = store.resolve(&record.image_id)?;
                let mut layers = vec![self.container_dir(&record.id).join("upper")];
                layers.extend(store.lower_dirs(&image)?);
                let passwd = user::read_from_layers(&layers, Path::new("/etc/passwd"));
                let group = user::read_from_layers(&layers, Path::new("/etc/group"));
                let id = user::resolve(spec, passwd.as_deref(), group.as_deref())?;
                Some((id.uid, Some(id.gid)))
            }
            None => None,
        };
        let mut env = request.env.clone();
        if request.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        let process = ExecOptions::process_from(
            &base,
            ProcessOverrides {
                args: request.command.clone(),
                env,
                cwd: request.workdir.clone().map(PathBuf::from),
                user,
                tty: request.tty,
                capabilities: if request.privileged { spec::available_caps() } else { Vec::new() },
                ..ProcessOverrides::default()
            },
        )?;
        let options = ExecOptions { process, detach: request.detach, ..ExecOptions::default() };
        let command = request.command.join(" ");
        self.container_event(&format!("exec_create: {command}"), &record, &[]);
        self.container_event(&format!("exec_start: {command}"), &record, &[]);
        match self.runtime.exec(&record.id, options)? {
            ExecOutcome::Detached(pid) => {
                let Some(started) = kept else { return Ok(0) };
                // The process is our child (the runtime forks it as a sibling of its own
                // helper): wait for it, and keep its exit code as an event.
                started();
                let code = loop {
                    match berth_sys::nix::sys::wait::waitpid(
                        berth_sys::nix::unistd::Pid::from_raw(pid),
                        None,
                    ) {
                        Ok(berth_sys::nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
                        Ok(berth_sys::nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                            break 128 + signal as i32
                        }
                        Ok(_) | Err(berth_sys::Errno::EINTR) => continue,
                        Err(_) => break -1,
                    }
                };
                self.container_event("exec_die", &record, &[("exitCode", code.to_string())]);
                Ok(code)
            }
            ExecOutcome::Exited(status) => {
                self.container_event(
                    "exec_die",
                    &record,
                    &[("exitCode", status.code().to_string())],
                );
                Ok(status.code())
            }
        }
    }

    /// `ps` output for the container's processes: pid, user, time, command.
    pub fn top(&self, name_or_id: &str) -> Result<Vec<TopRow>> {
        let locked = self.lock(name_or_id)?;
        if !matches!(locked.record.state.status, Status::Running | Status::Paused) {
            return Err(Error::WrongState {
                id: locked.record.name.clone(),
                status: locked.record.state.status.to_string(),
                hint: "top needs a running container".into(),
            });
        }
        let pids = self.runtime.pids(&locked.record.id)?;
        let mut rows = Vec::new();
        for pid in pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(|l| l.trim().to_owned())
                .unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(vec![uid, pid.to_string(), ppid, command]);
        }
        Ok(rows)
    }

    /// `berth update`: new limits (and restart policy) for a container, applied to its
    /// cgroup at once when it runs and kept for its next start. Fields left `None` keep
    /// their values; nothing changes when a value is refused.
    pub fn update(&self, name_or_id: &str, change: &Update) -> Result<()> {
        let mut locked = self.lock(name_or_id)?;
        let mut record = locked.record.clone();
        let o = &mut record.options;
        let set = |slot: &mut Option<i64>, value: Option<i64>| {
            if let Some(v) = value {
                *slot = (v != 0).then_some(v);
            }
        };
        set(&mut o.memory, change.memory);
        set(&mut o.memory_swap, change.memory_swap);
        set(&mut o.memory_reservation, change.memory_reservation);
        set(&mut o.pids_limit, change.pids_limit);
        set(&mut o.cpu_quota, change.cpu_quota);
        if let Some(cpus) = change.cpus {
            o.cpus = (cpus != 0.0).then_some(cpus);
        }
        if let Some(shares) = change.cpu_shares {
            o.cpu_shares = (shares != 0).then_some(shares);
        }
        if let Some(period) = change.cpu_period {
            o.cpu_period = (period != 0).then_some(period);
        }
        if let Some(list) = &change.cpuset_cpus {
            o.cpuset_cpus = Some(list.clone()).filter(|l| !l.is_empty());
        }
        if let Some(list) = &change.cpuset_mems {
            o.cpuset_mems = Some(list.clone()).filter(|l| !l.is_empty());
        }
        if let Some(weight) = change.blkio_weight {
            o.blkio_weight = (weight != 0).then_some(weight);
        }
        if let Some(policy) = &change.restart {
            if !policy.name.is_empty() && o.auto_remove {
                return Err(invalid("--restart", "a container run with --rm cannot restart"));
            }
            o.restart = policy.clone();
        }
        // The same checks as at `run`; the runtime gets the whole set.
        let mut limits = spec::limits(&record, spec::Support::probe())?;
        // A limit taken away is written as unlimited: left out, the old one would stay.
        if change.memory == Some(0) {
            limits["memory"]["limit"] = serde_json::json!(-1);
        }
        if change.pids_limit == Some(0) {
            limits["pids"]["limit"] = serde_json::json!(-1);
        }
        if change.cpus == Some(0.0) || change.cpu_quota == Some(0) {
            limits["cpu"]["quota"] = serde_json::json!(-1);
        }
        if matches!(record.state.status, Status::Running | Status::Paused) {
            let resources: oci_spec::runtime::LinuxResources =
                serde_json::from_value(limits).map_err(|e| Error::Other(e.to_string()))?;
            self.runtime.update(&record.id, &resources)?;
        }
        locked.record = record;
        locked.save()?;
        self.container_event("update", &locked.record, &[]);
        Ok(())
    }

    pub fn stats(&self, name_or_id: &str) -> Result<berth_cgroups::Stats> {
        let locked = self.lock(name_or_id)?;
        if !matches!(locked.record.state.status, Status::Running | Status::Paused) {
            return Err(Error::WrongState {
                id: locked.record.name.clone(),
                status: locked.record.state.status.to_string(),
                hint: "stats needs a running container".into(),
            });
        }
        Ok(self.runtime.stats(&locked.record.id)?)
    }

    // ----- diff, commit, cp -----

    /// The container's changes against its image (`docker diff`).
    pub fn diff(&self, name_or_id: &str) -> Result<Vec<berth_image::diff::Change>> {
        let locked = self.lock(name_or_id)?;
        let store = self.images()?;
        let image = store.resolve(&locked.record.image_id)?;
        let lowers = store.lower_dirs(&image)?;
        let exclude = self.commit_exclusions(&locked.record);
        Ok(berth_image::diff::changes(&locked.dir.join("upper"), &lowers, &|p| exclude(p))?)
    }

    fn commit_exclusions(&self, record: &Record) -> impl Fn(&Path) -> bool {
        let mut excluded: Vec<PathBuf> = record
            .mounts
            .iter()
            .map(|m| PathBuf::from(m.destination.trim_start_matches('/')))
            .collect();
        excluded.extend(
            ["etc/hosts", "etc/hostname", "etc/resolv.conf", "sbin/berth-init"].map(PathBuf::from),
        );
        move |path: &Path| excluded.iter().any(|e| e == path)
    }

    /// A new image from the container's changes (`docker commit`): the upper directory as
    /// one layer over the image's, without the init files and volumes.
    pub fn commit(
        &self,
        name_or_id: &str,
        reference: Option<&str>,
        message: Option<&str>,
        author: Option<&str>,
        changes: impl FnOnce(&mut RunConfig) -> std::result::Result<(), String>,
        pause: bool,
    ) -> Result<berth_image::Digest> {
        let locked = self.lock(name_or_id)?;
        let record = locked.record.clone();
        let store = self.images()?;
        let image = store.resolve(&record.image_id)?;
        let paused_here = pause
            && record.state.status == Status::Running
            && self.runtime.pause(&record.id).is_ok();
        let exclude = self.commit_exclusions(&record);
        let upper = locked.dir.join("upper");
        let guard = store.writing()?;
        let layer = berth_image::diff::store_layer(store, |out| {
            berth_image::diff::write_layer(&upper, out, &|p| exclude(p)).map(drop)
        });
        if paused_here {
            let _ = self.runtime.resume(&record.id);
        }
        let layer = layer?;
        let mut config = image.config.clone();
        let mut run = config.config.clone().unwrap_or_default();
        if !record.options.command.is_empty() || record.options.entrypoint.is_some() {
            run.cmd = Some(record.options.command.clone()).filter(|c| !c.is_empty()).or(run.cmd);
        }
        if !record.options.env.is_empty() {
            let merged = spec::environment(Some(&run), &record, "/");
            run.env = Some(
                merged
                    .into_iter()
                    .filter(|e| !e.starts_with("HOSTNAME=") && !e.starts_with("HOME="))
                    .collect(),
            );
        }
        // The container's labels (the image's and its own) are the new image's, as in Docker.
        if !record.options.labels.is_empty() {
            run.labels.get_or_insert_with(Default::default).extend(record.options.labels.clone());
        }
        changes(&mut run).map_err(|e| invalid("--change", e))?;
        config.config = Some(run);
        config.created = None;
        config.author = author.map(str::to_owned).or(config.author);
        let history = History {
            created: Some(berth_stdx::time::format_rfc3339(berth_stdx::time::unix_now())),
            created_by: Some(format!("berth commit {}", record.name)),
            author: author.map(str::to_owned),
            comment: message.map(str::to_owned),
            empty_layer: false,
        };
        let names = match reference {
            Some(r) => vec![r.parse::<berth_image::Reference>()?.to_string()],
            None => Vec::new(),
        };
        let digest = berth_image::diff::create_image(
            store,
            Some(&image),
            config,
            vec![(layer, history)],
            names.clone(),
        )?;
        drop(guard);
        let mut extra = vec![("comment", message.unwrap_or_default().to_owned())];
        if let Some(name) = names.first() {
            extra.push(("imageName", name.clone()));
        }
        self.container_event("commit", &locked.record, &extra);
        Ok(digest)
    }

    /// The container's root filesystem, mounted for a copy: the live rootfs of a running
    /// container, or a temporary overlay of a stopped one (unmounted when dropped).
    pub fn rootfs_for_copy(&self, name_or_id: &str) -> Result<RootfsAccess> {
        let locked = self.lock(name_or_id)?;
        let rootfs = locked.dir.join("rootfs");
        if is_mount_point(&rootfs) {
            return Ok(RootfsAccess {
                path: rootfs,
                mounted_here: false,
                mounts: locked.record.mounts.clone(),
                read_only: locked.record.options.read_only,
                dir: locked.dir.clone(),
                _hold: None,
            });
        }
        let store = self.images()?;
        let image = store.resolve(&locked.record.image_id)?;
        self.mount_rootfs(&locked.dir, &store.lower_dirs(&image)?)?;
        Ok(RootfsAccess {
            path: rootfs,
            mounted_here: true,
            mounts: locked.record.mounts.clone(),
            read_only: locked.record.options.read_only,
            dir: locked.dir.clone(),
            // The container stays locked while its rootfs is mounted for the copy: a
            // start meanwhile would take this mount as its own, and the copy's end
            // would detach it from under the running container.
            _hold: Some(locked),
        })
    }
}

/// Where an lxcfs serves per-container views of /proc: the system's (Debian's service
/// mounts it at /var/lib/lxcfs) or berth's own, when either is up.
pub fn lxcfs_dir() -> Option<PathBuf> {
    [SYSTEM_LXCFS_DIR, LXCFS_DIR]
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("proc/meminfo").exists())
}

/// An lxcfs to serve per-container views of /proc, started when none serves and lxcfs is
/// installed. berth's own runs at [`LXCFS_DIR`] with its own pid file, so a system lxcfs
/// (running, or stuck in another mount namespace holding /run/lxcfs.pid) never stops it.
/// Without lxcfs, containers see the host's /proc files.
///
/// Concurrent starts take a lock so that one lxcfs is started; a mount left by an lxcfs
/// that died ("transport endpoint is not connected") is detached and replaced.
fn ensure_lxcfs() -> Option<PathBuf> {
    if let Some(dir) = lxcfs_dir() {
        return Some(dir);
    }
    if !Path::new("/usr/bin/lxcfs").exists() {
        tracing::info!(
            "lxcfs is not installed: /proc in limited containers shows the host's totals"
        );
        return None;
    }
    let dir = PathBuf::from(LXCFS_DIR);
    let _ = std::fs::create_dir_all("/run/berth");
    let lock = std::fs::File::create("/run/berth/lxcfs.lock").ok()?;
    berth_sys::process::lock_file(&lock, true).ok()?;
    if let Some(dir) = lxcfs_dir() {
        return Some(dir);
    }
    if let Err(e) = std::fs::metadata(dir.join("proc/meminfo")) {
        if e.raw_os_error() == Some(berth_sys::nix::libc::ENOTCONN) {
            tracing::warn!("lxcfs died and left its mount at {LXCFS_DIR}; starting it again");
            let _ = umount2(&dir, MntFlags::MNT_DETACH);
        }
    }
    let _ = std::fs::create_dir_all(&dir);
    // lxcfs daemonizes; setsid puts it in a session of its own, nobody's child for long.
    let started = std::process::Command::new("setsid")
        .args(["-f", "/usr/bin/lxcfs", "--enable-cfs", "-p", "/run/berth/lxcfs.pid", LXCFS_DIR])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !started.is_ok_and(|s| s.success()) {
        tracing::warn!("cannot start lxcfs: /proc in limited containers shows the host's totals");
        return None;
    }
    // A cold start on a busy machine scans every cgroup hierarchy first: give it time.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if dir.join("proc/meminfo").exists() {
            return Some(dir);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(
        "lxcfs did not serve {LXCFS_DIR} within 15 s: /proc in limited containers shows the host's totals"
    );
    None
}

/// berth's own lxcfs mount point (with its pid file beside it in /run/berth).
pub const LXCFS_DIR: &str = "/run/berth/lxcfs";
/// Debian's lxcfs service's mount point.
pub const SYSTEM_LXCFS_DIR: &str = "/var/lib/lxcfs";

/// A container's filesystem for `cp`.
#[derive(Debug)]
pub struct RootfsAccess {
    pub path: PathBuf,
    mounted_here: bool,
    /// Volumes and binds: a path under one of them is the volume's, not the rootfs's.
    pub mounts: Vec<MountRecord>,
    /// `--read-only`: the root filesystem takes no writes, `cp` included.
    pub read_only: bool,
    /// The container's directory, which holds its hosts, hostname and resolv.conf.
    pub dir: PathBuf,
    /// The container's lock, held while a rootfs mounted here is in use (dropped after
    /// the unmount, as fields drop after `Drop::drop`).
    _hold: Option<crate::container::Locked>,
}

impl RootfsAccess {
    /// The volume or bind that covers `path`, if any.
    pub fn covering(&self, path: &Path) -> Option<&MountRecord> {
        self.mounts
            .iter()
            .filter(|m| m.kind != "tmpfs" && path.starts_with(&m.destination))
            .max_by_key(|m| m.destination.len())
    }

    /// The file berth bind-mounts at `path` (/etc/hosts, /etc/hostname, /etc/resolv.conf),
    /// whose placeholder in the rootfs is empty.
    pub fn etc_file(&self, path: &Path) -> Option<PathBuf> {
        let name = path.strip_prefix("/etc").ok()?.to_str()?;
        ["hosts", "hostname", "resolv.conf"]
            .contains(&name)
            .then(|| self.dir.join(name))
            .filter(|p| p.is_file())
    }

    /// Where `path` (absolute in the container) lives on the host: the mount that covers
    /// it (its source directory and the rest of the path), or the rootfs.
    pub fn locate(&self, path: &Path) -> (PathBuf, PathBuf) {
        let mut best: Option<(&MountRecord, PathBuf)> = None;
        for m in &self.mounts {
            if m.kind == "tmpfs" {
                continue;
            }
            if let Ok(rest) = path.strip_prefix(&m.destination) {
                if best.as_ref().is_none_or(|(b, _)| b.destination.len() < m.destination.len()) {
                    best = Some((m, rest.to_owned()));
                }
            }
        }
        match best {
            Some((m, rest)) => (PathBuf::from(&m.source), rest),
            None => (self.path.clone(), path.strip_prefix("/").unwrap_or(path).to_owned()),
        }
    }
}

impl Drop for RootfsAccess {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
    }
}

pub(crate) fn is_mount_point(path: &Path) -> bool {
    berth_sys::mount::is_mount_point(path)
}

pub fn parse_signal(text: &str) -> Result<Signal> {
    let upper = text.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| invalid("signal", format!("{text:?} is not a signal number")));
    }
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| invalid("signal", format!("unknown signal {text:?}")))
}

/// Docker-style generated names: an adjective and a scientist, with a number from the id.
pub fn generated_name(id: &str) -> String {
    const LEFT: &[&str] = &[
        "brave", "calm", "eager", "fond", "gentle", "happy", "keen", "lucid", "merry", "nifty",
        "proud", "quiet", "sharp", "tender", "vivid", "witty", "zealous", "bold", "clever",
        "daring",
    ];
    const RIGHT: &[&str] = &[
        "curie",
        "darwin",
        "euler",
        "fermi",
        "galois",
        "hopper",
        "hypatia",
        "kepler",
        "lovelace",
        "noether",
        "pascal",
        "ritchie",
        "shannon",
        "thompson",
        "turing",
        "wozniak",
        "yalow",
        "lamarr",
        "meitner",
        "ramanujan",
    ];
    let byte = |i: usize| u8::from_str_radix(&id[i * 2..i * 2 + 2], 16).unwrap_or(0) as usize;
    format!("{}_{}_{}", LEFT[byte(0) % LEFT.len()], RIGHT[byte(1) % RIGHT.len()], byte(2))
}

/// Sends one attach frame, ignoring a peer that went away.
pub(crate) fn send(stream: &mut UnixStream, kind: u8, payload: &[u8]) -> bool {
    attach::write_frame(stream, kind, payload).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_names() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGFOO").is_err());
        let name = generated_name(&"ab".repeat(32));
        assert!(valid_container_name(&name), "{name}");
    }

    #[test]
    fn copy_paths_resolve_through_mounts() {
        let access = RootfsAccess {
            path: PathBuf::from("/r"),
            mounted_here: false,
            mounts: vec![MountRecord {
                kind: "volume".into(),
                name: "v".into(),
                source: "/vol/_data".into(),
                destination: "/data".into(),
                read_only: false,
                anonymous: false,
                options: vec![],
            }],
            read_only: false,
            dir: PathBuf::from("/c"),
            _hold: None,
        };
        assert_eq!(
            access.locate(Path::new("/data/x/y")),
            (PathBuf::from("/vol/_data"), PathBuf::from("x/y"))
        );
        assert_eq!(
            access.locate(Path::new("/etc/passwd")),
            (PathBuf::from("/r"), PathBuf::from("etc/passwd"))
        );
        assert_eq!(
            access.locate(Path::new("/database")),
            (PathBuf::from("/r"), PathBuf::from("database"))
        );
    }
}
