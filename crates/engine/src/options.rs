//! What a user asks of a container (`berth run`'s flags), parsed and checked. Pure: no
//! file is touched here, so every rule is unit-tested.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{invalid, Result};

/// Everything `create`/`run` was told, kept in the container's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunOptions {
    pub image: String,
    pub name: Option<String>,
    /// Arguments after the image: they replace the image's Cmd.
    pub command: Vec<String>,
    /// `--entrypoint`: `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub tty: bool,
    pub interactive: bool,
    pub auto_remove: bool,
    pub publish: Vec<PortSpec>,
    pub publish_all: bool,
    pub mounts: Vec<MountSpec>,
    /// `none`, `host`, `bridge` (default), `container:NAME` or a user-created network.
    pub network: String,
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    /// `--device HOST[:CONTAINER][:PERMISSIONS]`.
    pub devices: Vec<DeviceSpec>,
    pub read_only: bool,
    pub security_opt: Vec<String>,
    pub init: bool,
    pub add_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u32>,
    pub restart: RestartPolicy,
    /// Rotate the log when it reaches this many bytes.
    pub log_max_size: Option<u64>,
    /// How many log files to keep, the current one included.
    pub log_max_files: Option<u32>,
    /// `--health-cmd` (run with the shell) and the other `--health-*` flags, in
    /// nanoseconds; they override the image's HEALTHCHECK field by field.
    pub health_cmd: Option<String>,
    /// A whole test in Docker's form (`["CMD", ...]`, `["CMD-SHELL", "..."]`), as the
    /// Docker API's `Healthcheck.Test` gives it; `health_cmd` wins over it.
    pub health_test: Option<Vec<String>>,
    pub health_interval: Option<u64>,
    pub health_timeout: Option<u64>,
    pub health_start_period: Option<u64>,
    pub health_retries: Option<u32>,
    /// `--no-healthcheck`: the image's HEALTHCHECK does not apply.
    pub no_healthcheck: bool,
    /// `--ulimit NAME=SOFT[:HARD]`.
    pub ulimits: Vec<Ulimit>,
    /// `--shm-size`: the size of /dev/shm in bytes (Docker's 64 MiB when unset).
    pub shm_size: Option<i64>,
    /// `--sysctl KEY=VALUE` (namespaced keys only; the runtime checks which).
    pub sysctls: BTreeMap<String, String>,
    /// `--ipc`: `private`/`shareable` (empty: private), `host`, `none`, `container:NAME`.
    pub ipc: String,
    /// `--pid`: empty (a namespace of its own), `host`, `container:NAME`.
    pub pid: String,
    /// `--uts`: empty or `host`.
    pub uts: String,
    /// `--cgroupns`: `private` (empty) or `host`.
    pub cgroupns: String,
    /// `--group-add`: groups (names from the container's /etc/group, or numbers).
    pub group_add: Vec<String>,
    /// `--cpu-shares`: the relative weight (Docker's 1024 is the default).
    pub cpu_shares: Option<u64>,
    /// `--cpuset-cpus` and `--cpuset-mems`: `0-2,4`.
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// `--cpu-quota` and `--cpu-period` in microseconds (what `--cpus` sets for you).
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// `--memory-swap`: memory plus swap in bytes; -1 is unlimited swap.
    pub memory_swap: Option<i64>,
    /// `--memory-reservation`: a soft limit, in bytes.
    pub memory_reservation: Option<i64>,
    /// `--oom-kill-disable` (cgroup v1 only, as in Docker).
    pub oom_kill_disable: bool,
    /// `--blkio-weight` (10 to 1000).
    pub blkio_weight: Option<u16>,
    /// `--device-read-bps`, `--device-write-bps`, `--device-read-iops`,
    /// `--device-write-iops`.
    pub device_throttles: Vec<Throttle>,
    /// `--network-alias`: more names the container answers to on user networks.
    pub network_aliases: Vec<String>,
    /// Networks joined beside the first (`network connect`), attached at each start.
    pub connected: Vec<Connection>,
    /// `--mac-address` and `--ip`: the container's addresses on its network.
    pub mac_address: Option<String>,
    pub ip: Option<String>,
    /// `--log-driver`: `json-file` (empty) or `none`.
    pub log_driver: String,
    /// `--platform`, as asked (checked against the image's).
    pub platform: Option<String>,
}

/// A network a container was connected to with `network connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub network: String,
    pub aliases: Vec<String>,
    pub ip: Option<String>,
}

/// One `--ulimit`: a resource limit of the container's processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Docker's name (`nofile`, `nproc`, ...).
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The names `--ulimit` takes and the rlimits they are.
const ULIMITS: &[(&str, &str)] = &[
    ("as", "RLIMIT_AS"),
    ("core", "RLIMIT_CORE"),
    ("cpu", "RLIMIT_CPU"),
    ("data", "RLIMIT_DATA"),
    ("fsize", "RLIMIT_FSIZE"),
    ("locks", "RLIMIT_LOCKS"),
    ("memlock", "RLIMIT_MEMLOCK"),
    ("msgqueue", "RLIMIT_MSGQUEUE"),
    ("nice", "RLIMIT_NICE"),
    ("nofile", "RLIMIT_NOFILE"),
    ("nproc", "RLIMIT_NPROC"),
    ("rss", "RLIMIT_RSS"),
    ("rtprio", "RLIMIT_RTPRIO"),
    ("rttime", "RLIMIT_RTTIME"),
    ("sigpending", "RLIMIT_SIGPENDING"),
    ("stack", "RLIMIT_STACK"),
];

impl Ulimit {
    /// `nofile=1024:2048`, `nproc=512` (soft and hard alike), `-1` for unlimited.
    pub fn parse(text: &str) -> Result<Ulimit> {
        let bad = |reason: &str| invalid(format!("--ulimit {text:?}"), reason.to_owned());
        let (name, values) =
            text.split_once('=').ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
        if !ULIMITS.iter().any(|(n, _)| *n == name) {
            let names: Vec<&str> = ULIMITS.iter().map(|(n, _)| *n).collect();
            return Err(bad(&format!("unknown limit {name:?}; one of {}", names.join(", "))));
        }
        let value = |v: &str| -> Result<u64> {
            if v == "-1" || v == "unlimited" {
                return Ok(u64::MAX);
            }
            v.parse().map_err(|_| bad("limits are numbers, or -1 for unlimited"))
        };
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (value(s)?, value(h)?),
            None => (value(values)?, value(values)?),
        };
        if soft > hard {
            return Err(bad(&format!("the soft limit {soft} is above the hard limit {hard}")));
        }
        Ok(Ulimit { name: name.to_owned(), soft, hard })
    }

    /// The OCI name (`RLIMIT_NOFILE`).
    pub fn rlimit(&self) -> &'static str {
        ULIMITS.iter().find(|(n, _)| *n == self.name).map_or("RLIMIT_NOFILE", |(_, r)| r)
    }
}

/// One `--device-{read,write}-{bps,iops} DEVICE:RATE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// `read_bps`, `write_bps`, `read_iops` or `write_iops`.
    pub kind: String,
    pub device: String,
    pub rate: u64,
}

impl Throttle {
    /// `kind` as above; bps rates take sizes (`1mb`), iops rates plain numbers.
    pub fn parse(kind: &str, text: &str) -> Result<Throttle> {
        let flag = format!("--device-{}", kind.replace('_', "-"));
        let bad = |reason: &str| invalid(format!("{flag} {text:?}"), reason.to_owned());
        let (device, rate) = text.rsplit_once(':').ok_or_else(|| bad("expected DEVICE:RATE"))?;
        if !device.starts_with("/dev/") {
            return Err(bad("the device is a path under /dev"));
        }
        let rate = if kind.ends_with("bps") {
            parse_bytes(rate).map_err(|_| bad("the rate is a size: 1mb, 500kb"))? as u64
        } else {
            rate.parse().map_err(|_| bad("the rate is a number of operations per second"))?
        };
        Ok(Throttle { kind: kind.to_owned(), device: device.to_owned(), rate })
    }
}

/// `--sysctl KEY=VALUE`.
pub fn parse_sysctl(text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(invalid(format!("--sysctl {text:?}"), "expected KEY=VALUE")),
    }
}

/// `--ipc`, `--pid`, `--uts`, `--cgroupns`: which modes each takes.
pub fn check_namespace_mode(flag: &str, mode: &str) -> Result<()> {
    let allowed: &[&str] = match flag {
        "ipc" => &["", "private", "shareable", "host", "none"],
        "pid" => &["", "private", "host"],
        "uts" => &["", "private", "host"],
        _ => &["", "private", "host"],
    };
    let joins = matches!(flag, "ipc" | "pid");
    if allowed.contains(&mode)
        || (joins && mode.strip_prefix("container:").is_some_and(|c| !c.is_empty()))
    {
        return Ok(());
    }
    let mut choices = allowed[1..].join(", ");
    if joins {
        choices.push_str(", container:NAME");
    }
    Err(invalid(format!("--{flag} {mode:?}"), format!("use one of {choices}")))
}

/// Go durations as Docker's flags take them (`30s`, `1m30s`, `500ms`), in nanoseconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    berth_stdx::time::parse_go_duration(text).ok_or_else(|| {
        invalid(format!("duration {text:?}"), "use a number with a unit: 30s, 1m30s, 500ms")
    })
}

/// The health check a container gets: the image's, changed by the flags; `None` when
/// there is none, `--no-healthcheck` was given, or the image says `NONE`.
pub fn health_check(
    image: Option<&serde_json::Value>,
    options: &RunOptions,
) -> Option<crate::container::HealthCheck> {
    if options.no_healthcheck {
        return None;
    }
    let from_image = image.filter(|v| !v.is_null());
    let mut check = crate::container::HealthCheck {
        test: from_image
            .and_then(|v| v.get("Test"))
            .and_then(|t| serde_json::from_value::<Vec<String>>(t.clone()).ok())
            .unwrap_or_default(),
        interval: from_image.and_then(|v| v["Interval"].as_u64()).unwrap_or(0),
        timeout: from_image.and_then(|v| v["Timeout"].as_u64()).unwrap_or(0),
        start_period: from_image.and_then(|v| v["StartPeriod"].as_u64()).unwrap_or(0),
        retries: from_image.and_then(|v| v["Retries"].as_u64()).unwrap_or(0) as u32,
    };
    if let Some(test) = options.health_test.as_ref().filter(|t| !t.is_empty()) {
        check.test = test.clone();
    }
    if let Some(cmd) = &options.health_cmd {
        check.test = vec!["CMD-SHELL".into(), cmd.clone()];
    }
    if check.test.is_empty() || check.test[0] == "NONE" {
        return None;
    }
    // Docker's defaults for what neither says.
    check.interval = options.health_interval.filter(|n| *n > 0).unwrap_or(if check.interval > 0 {
        check.interval
    } else {
        30_000_000_000
    });
    check.timeout = options.health_timeout.filter(|n| *n > 0).unwrap_or(if check.timeout > 0 {
        check.timeout
    } else {
        30_000_000_000
    });
    check.start_period = options.health_start_period.unwrap_or(check.start_period);
    check.retries = options.health_retries.filter(|n| *n > 0).unwrap_or(if check.retries > 0 {
        check.retries
    } else {
        3
    });
    Some(check)
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]`: a host device (or every device under a host
/// directory) in the container, with cgroup permissions `r`, `w`, `m` (default all three).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub host: String,
    pub container: String,
    pub permissions: String,
}

impl DeviceSpec {
    pub fn parse(text: &str) -> Result<DeviceSpec> {
        let bad = |reason: &str| invalid(format!("--device {text:?}"), reason.to_owned());
        let permissions_like = |p: &str| {
            !p.is_empty() && p.len() <= 3 && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, permissions) = match parts.as_slice() {
            [host] => (*host, *host, "rwm"),
            [host, p] if permissions_like(p) => (*host, *host, *p),
            [host, container] => (*host, *container, "rwm"),
            [host, container, p] => (*host, *container, *p),
            _ => return Err(bad("expected HOST[:CONTAINER][:PERMISSIONS]")),
        };
        if !permissions_like(permissions) {
            return Err(bad("permissions are made of r, w and m"));
        }
        if !host.starts_with('/') {
            return Err(bad("the host path must be absolute"));
        }
        // (A container path that defaults to the host's is judged with the device itself.)
        if container != host && (!container.starts_with("/dev/") || container.contains("..")) {
            return Err(bad("the container path must be under /dev"));
        }
        Ok(DeviceSpec {
            host: host.into(),
            container: container.into(),
            permissions: permissions.into(),
        })
    }
}

/// `-p [IP:][HOST:]CONTAINER[/PROTO]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    /// 0: pick a free port.
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

impl PortSpec {
    pub fn parse(text: &str) -> Result<Vec<PortSpec>> {
        let bad = |reason: &str| invalid(format!("port spec {text:?}"), reason.to_owned());
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((rest, proto)) => (rest, proto.to_ascii_lowercase()),
            None => (text, "tcp".to_owned()),
        };
        if protocol != "tcp" && protocol != "udp" {
            return Err(bad("the protocol must be tcp or udp"));
        }
        let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [container] => (None, "", *container),
            [container, host] => (None, *host, *container),
            [container, host, ip] => {
                (Some(ip.trim_matches(['[', ']']).to_owned()), *host, *container)
            }
            _ => return Err(bad("expected [IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]")),
        };
        if let Some(ip) = &host_ip {
            if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad("the host address is not an IP address"));
            }
        }
        let range = |s: &str| -> Result<(u16, u16)> {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let a: u16 = a.parse().map_err(|_| bad("ports are numbers from 1 to 65535"))?;
            let b: u16 = b.parse().map_err(|_| bad("ports are numbers from 1 to 65535"))?;
            if a == 0 || b < a {
                return Err(bad("ports are numbers from 1 to 65535, ranges low-high"));
            }
            Ok((a, b))
        };
        let (c0, c1) = range(container)?;
        let (h0, h1) = if host.is_empty() { (0, 0) } else { range(host)? };
        if host.is_empty() {
            return Ok((c0..=c1)
                .map(|c| PortSpec {
                    host_ip: host_ip.clone().filter(|i| !i.is_empty()),
                    host_port: 0,
                    container_port: c,
                    protocol: protocol.clone(),
                })
                .collect());
        }
        if h1 - h0 != c1 - c0 {
            return Err(bad("the host and container port ranges differ in length"));
        }
        Ok((c0..=c1)
            .zip(h0..=h1)
            .map(|(c, h)| PortSpec {
                host_ip: host_ip.clone().filter(|i| !i.is_empty()),
                host_port: h,
                container_port: c,
                protocol: protocol.clone(),
            })
            .collect())
    }
}

/// A mount asked for by `-v`, `--mount` or `--tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// Host path (bind), volume name (empty: anonymous), unused for tmpfs.
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    /// Extra mount options (tmpfs size, mode; bind propagation).
    pub options: Vec<String>,
}

impl MountSpec {
    /// `-v SRC:DST[:OPTS]` or `-v DST` (an anonymous volume).
    pub fn parse_volume(text: &str) -> Result<MountSpec> {
        let bad = |reason: &str| invalid(format!("volume spec {text:?}"), reason.to_owned());
        let parts: Vec<&str> = text.split(':').collect();
        let (source, destination, opts) = match parts.as_slice() {
            [dst] => ("", *dst, ""),
            [src, dst] => (*src, *dst, ""),
            [src, dst, opts] => (*src, *dst, *opts),
            _ => return Err(bad("expected [SOURCE:]DESTINATION[:ro|rw]")),
        };
        if parts.len() >= 2 && source.is_empty() {
            return Err(bad("empty section between colons: give a volume name or a host path"));
        }
        // A relative host path (./data, ../x, .) is a bind of that path, as Docker takes it.
        let relative;
        let source = if source == "." || source.starts_with("./") || source.starts_with("../") {
            let cwd = std::env::current_dir()
                .map_err(|e| bad(&format!("cannot resolve the relative path: {e}")))?;
            let joined = cwd.join(source);
            relative =
                std::fs::canonicalize(&joined).unwrap_or(joined).to_string_lossy().into_owned();
            relative.as_str()
        } else {
            source
        };
        if !destination.starts_with('/') {
            return Err(bad("the destination must be an absolute path in the container"));
        }
        if destination == "/" {
            return Err(bad("the destination cannot be /"));
        }
        let mut read_only = false;
        let mut options = Vec::new();
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                "z" | "Z" | "copy" => {}
                // New volumes are not filled from the image.
                "nocopy" => options.push("nocopy".to_owned()),
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                    options.push(opt.to_owned())
                }
                other => {
                    return Err(bad(&format!("unknown option {other:?} (ro, rw, propagation)")))
                }
            }
        }
        let kind = if source.starts_with('/') {
            "bind"
        } else if source.is_empty() || valid_volume_name(source) {
            "volume"
        } else {
            return Err(bad(
                "a source is an absolute host path or a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
            ));
        };
        Ok(MountSpec {
            kind: kind.to_owned(),
            source: source.to_owned(),
            destination: destination.to_owned(),
            read_only,
            options,
        })
    }

    /// `--mount type=bind|volume|tmpfs,source=...,target=...,readonly,...`.
    pub fn parse_mount(text: &str) -> Result<MountSpec> {
        let bad = |reason: &str| invalid(format!("mount spec {text:?}"), reason.to_owned());
        let mut spec = MountSpec {
            kind: "volume".into(),
            source: String::new(),
            destination: String::new(),
            read_only: false,
            options: Vec::new(),
        };
        for field in text.split(',').filter(|f| !f.is_empty()) {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            match key {
                "type" => spec.kind = value.to_owned(),
                "source" | "src" => spec.source = value.to_owned(),
                "target" | "destination" | "dst" => spec.destination = value.to_owned(),
                "readonly" | "ro" => {
                    spec.read_only = value.is_empty() || value == "true" || value == "1"
                }
                "tmpfs-size" => spec.options.push(format!("size={value}")),
                "tmpfs-mode" => spec.options.push(format!("mode={value}")),
                "bind-propagation" => spec.options.push(value.to_owned()),
                "volume-nocopy" => {
                    if value.is_empty() || value == "true" || value == "1" {
                        spec.options.push("nocopy".to_owned())
                    }
                }
                "consistency" => {}
                other => return Err(bad(&format!("unknown field {other:?}"))),
            }
        }
        if !matches!(spec.kind.as_str(), "bind" | "volume" | "tmpfs") {
            return Err(bad("type must be bind, volume or tmpfs"));
        }
        if !spec.destination.starts_with('/') {
            return Err(bad("target must be an absolute path in the container"));
        }
        match spec.kind.as_str() {
            "bind" if !spec.source.starts_with('/') => {
                return Err(bad("a bind mount's source must be an absolute host path"))
            }
            "volume" if !spec.source.is_empty() && !valid_volume_name(&spec.source) => {
                return Err(bad("invalid volume name"))
            }
            "tmpfs" if !spec.source.is_empty() => return Err(bad("a tmpfs mount has no source")),
            _ => {}
        }
        Ok(spec)
    }

    /// `--tmpfs DST[:OPTS]`.
    pub fn parse_tmpfs(text: &str) -> Result<MountSpec> {
        let (destination, opts) = text.split_once(':').unwrap_or((text, ""));
        if !destination.starts_with('/') {
            return Err(invalid(
                format!("tmpfs spec {text:?}"),
                "the destination must be an absolute path",
            ));
        }
        let mut read_only = false;
        let options = opts
            .split(',')
            .filter(|o| !o.is_empty())
            .filter(|o| {
                if *o == "ro" {
                    read_only = true;
                }
                *o != "ro" && *o != "rw"
            })
            .map(str::to_owned)
            .collect();
        Ok(MountSpec {
            kind: "tmpfs".into(),
            source: String::new(),
            destination: destination.to_owned(),
            read_only,
            options,
        })
    }
}

pub fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Container names follow Docker's rule.
pub fn valid_container_name(name: &str) -> bool {
    valid_volume_name(name) && name.len() <= 128
}

/// `--restart no|always|unless-stopped|on-failure[:N]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub name: String,
    pub max_retries: u32,
}

impl RestartPolicy {
    pub fn parse(text: &str) -> Result<RestartPolicy> {
        let (name, count) = text.split_once(':').unwrap_or((text, ""));
        let bad = || {
            invalid(
                format!("restart policy {text:?}"),
                "use no, always, unless-stopped or on-failure[:MAX_RETRIES]",
            )
        };
        match name {
            "no" | "always" | "unless-stopped" if count.is_empty() => {}
            "on-failure" => {}
            _ => return Err(bad()),
        }
        let max_retries = if count.is_empty() { 0 } else { count.parse().map_err(|_| bad())? };
        Ok(RestartPolicy {
            name: if name == "no" { String::new() } else { name.into() },
            max_retries,
        })
    }

    /// Whether a container that ended with `code` (not stopped by a user) starts again.
    pub fn restarts(&self, code: i32, restarts_so_far: u32) -> bool {
        match self.name.as_str() {
            "always" | "unless-stopped" => true,
            "on-failure" => {
                code != 0 && (self.max_retries == 0 || restarts_so_far < self.max_retries)
            }
            _ => false,
        }
    }
}

/// `--memory 512m`, `--log-opt max-size=10m`: bytes, with Docker's binary suffixes.
pub fn parse_bytes(text: &str) -> Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(lower.len());
    let (number, suffix) = lower.split_at(digits_end);
    let value: f64 = number.parse().map_err(|_| {
        invalid(format!("size {text:?}"), "expected a number with an optional b, k, m, g suffix")
    })?;
    let unit: f64 = match suffix.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid(format!("size {text:?}"), "unknown unit (b, k, m, g, t)")),
    };
    if value < 0.0 {
        return Err(invalid(format!("size {text:?}"), "cannot be negative"));
    }
    Ok((value * unit) as i64)
}

/// `KEY=VALUE` lines of an `--env-file` (comments and blank lines skipped; a bare `KEY`
/// takes the value from the caller's environment, as Docker does).
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            if l.contains('=') {
                Some(l.to_owned())
            } else {
                std::env::var(l).ok().map(|v| format!("{l}={v}"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        let spec =
            |t: &str| DeviceSpec::parse(t).map(|d| (d.host, d.container, d.permissions)).ok();
        let owned = |a: &str, b: &str, c: &str| Some((a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(spec("/dev/fuse"), owned("/dev/fuse", "/dev/fuse", "rwm"));
        assert_eq!(spec("/dev/fuse:r"), owned("/dev/fuse", "/dev/fuse", "r"));
        assert_eq!(spec("/dev/sdc:/dev/xvdc"), owned("/dev/sdc", "/dev/xvdc", "rwm"));
        assert_eq!(spec("/dev/sdc:/dev/xvdc:rw"), owned("/dev/sdc", "/dev/xvdc", "rw"));
        for bad in [
            "dev/fuse",
            "/dev/a:/dev/b:x",
            "/dev/a:/etc/b",
            "/dev/a:/dev/../etc",
            "/a:/dev/b:r:w",
            "/dev/a:",
        ] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_specs() {
        let p = PortSpec::parse("8080:80").unwrap();
        assert_eq!(
            p,
            vec![PortSpec {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into()
            }]
        );
        let p = PortSpec::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            (p[0].host_port, p[0].container_port, p[0].protocol.as_str()),
            (5353, 53, "udp")
        );
        let p = PortSpec::parse("80").unwrap();
        assert_eq!(p[0].host_port, 0);
        let p = PortSpec::parse("9000-9002:7000-7002").unwrap();
        assert_eq!(
            p.iter().map(|p| (p.host_port, p.container_port)).collect::<Vec<_>>(),
            [(9000, 7000), (9001, 7001), (9002, 7002)]
        );
        for bad in
            ["", "x:80", "80:0", "80/sctp", "1.2.3:80:80", "70000", "9000-9001:80", "a:b:c:d"]
        {
            let err = PortSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains("port spec"), "{bad}: {err}");
        }
    }

    #[test]
    fn volume_specs() {
        let m = MountSpec::parse_volume("/srv/data:/data:ro").unwrap();
        assert_eq!(
            (m.kind.as_str(), m.source.as_str(), m.destination.as_str(), m.read_only),
            ("bind", "/srv/data", "/data", true)
        );
        let m = MountSpec::parse_volume("cache:/var/cache").unwrap();
        assert_eq!((m.kind.as_str(), m.source.as_str()), ("volume", "cache"));
        let m = MountSpec::parse_volume("/scratch").unwrap();
        assert_eq!(
            (m.kind.as_str(), m.source.as_str(), m.destination.as_str()),
            ("volume", "", "/scratch")
        );
        for bad in ["rel/path:/x", "v:relative", "v:/x:bogus", "/a:/", "a:b:c:d", "-v:/x"] {
            assert!(MountSpec::parse_volume(bad).is_err(), "{bad}");
        }
        let m = MountSpec::parse_mount("type=tmpfs,target=/run,tmpfs-size=64m").unwrap();
        assert_eq!((m.kind.as_str(), m.options.clone()), ("tmpfs", vec!["size=64m".to_owned()]));
        let m = MountSpec::parse_mount("type=bind,source=/etc,target=/host-etc,readonly").unwrap();
        assert!(m.read_only);
        assert!(MountSpec::parse_mount("type=bind,source=etc,target=/x").is_err());
        assert!(MountSpec::parse_mount("type=nfs,target=/x").is_err());
        assert!(MountSpec::parse_mount("type=volume,target=/x,colour=red").is_err());
        let t = MountSpec::parse_tmpfs("/tmp:size=1m,mode=1777").unwrap();
        assert_eq!(t.options, ["size=1m", "mode=1777"]);
    }

    #[test]
    fn restart_policies() {
        assert_eq!(RestartPolicy::parse("no").unwrap().name, "");
        let p = RestartPolicy::parse("on-failure:3").unwrap();
        assert!(p.restarts(1, 2) && !p.restarts(1, 3) && !p.restarts(0, 0));
        assert!(RestartPolicy::parse("always").unwrap().restarts(0, 100));
        assert!(!RestartPolicy::default().restarts(1, 0));
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("always:3").is_err());
    }

    #[test]
    fn ulimits_throttles_and_modes() {
        let u = Ulimit::parse("nofile=1024:2048").unwrap();
        assert_eq!((u.soft, u.hard, u.rlimit()), (1024, 2048, "RLIMIT_NOFILE"));
        let u = Ulimit::parse("nproc=-1").unwrap();
        assert_eq!((u.soft, u.hard), (u64::MAX, u64::MAX));
        for bad in ["nofile", "files=1", "nofile=2:1", "nofile=x"] {
            assert!(Ulimit::parse(bad).is_err(), "{bad}");
        }
        let t = Throttle::parse("read_bps", "/dev/sda:1mb").unwrap();
        assert_eq!((t.device.as_str(), t.rate), ("/dev/sda", 1 << 20));
        assert_eq!(Throttle::parse("write_iops", "/dev/sda:300").unwrap().rate, 300);
        assert!(Throttle::parse("read_iops", "/dev/sda:1mb").is_err());
        assert!(Throttle::parse("read_bps", "sda:1mb").is_err());
        assert_eq!(parse_sysctl("net.core.somaxconn=1024").unwrap().1, "1024");
        assert!(parse_sysctl("=1").is_err());
        for (flag, mode) in [("ipc", "host"), ("ipc", "container:db"), ("pid", ""), ("uts", "host")]
        {
            assert!(check_namespace_mode(flag, mode).is_ok(), "{flag} {mode}");
        }
        for (flag, mode) in [("ipc", "other"), ("uts", "container:x"), ("pid", "container:")] {
            assert!(check_namespace_mode(flag, mode).is_err(), "{flag} {mode}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("64KiB").unwrap(), 64 << 10);
        assert!(parse_bytes("-1m").is_err());
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_container_name("web-1.prod_a"));
        assert!(!valid_container_name("-web"));
        assert!(!valid_container_name("a/b"));
        assert!(!valid_container_name(""));
    }
}
