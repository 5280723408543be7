//! Node-pressure eviction, as the kubelet's hard thresholds work: every interval the agent
//! reads its signals (`memory.available` from /proc/meminfo, `nodefs.available` and
//! `nodefs.inodesFree` of its own directory's filesystem, `imagefs.available` and
//! `imagefs.inodesFree` of the filesystem the runtime's ImageFsInfo names,
//! `pid.available` from the kernel's process limit less the tasks there are), and when one
//! is below its threshold it reports the Node's MemoryPressure, DiskPressure or
//! PIDPressure condition (the node lifecycle controller then taints the Node so no new
//! pod comes: `node.kubernetes.io/memory-pressure:NoSchedule` and the like), and evicts
//! one pod per interval in the kubelet's order (`rank`): pods using more than they
//! requested of the scarce resource first, then lower priority, then the larger use above
//! the request; ties go BestEffort, Burstable, Guaranteed. The pod is marked Failed with
//! reason Evicted (its sandbox is then stopped, and a controller that owns it makes
//! another). When the signal recovers, the condition goes and the taint with it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One hard threshold: a quantity of bytes or a percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(f64),
}

impl Threshold {
    fn crossed(self, available: u64, capacity: u64) -> bool {
        match self {
            Threshold::Bytes(bytes) => available < bytes,
            Threshold::Percent(percent) => {
                capacity > 0 && (available as f64) < capacity as f64 * percent / 100.0
            }
        }
    }
}

/// The kubelet's `--eviction-hard`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub memory_available: Option<Threshold>,
    pub nodefs_available: Option<Threshold>,
    pub nodefs_inodes_free: Option<Threshold>,
    pub imagefs_available: Option<Threshold>,
    pub imagefs_inodes_free: Option<Threshold>,
    pub pid_available: Option<Threshold>,
}

/// The kubelet's default hard thresholds on Linux.
pub const DEFAULT: &str =
    "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%";

fn quantity(text: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().ok().and_then(|n| n.checked_mul(factor));
        }
    }
    text.parse().ok()
}

impl Thresholds {
    /// `signal<quantity` pairs, comma-separated (`memory.available<100Mi,nodefs.available<10%`);
    /// empty: no eviction.
    pub fn parse(text: &str) -> Result<Thresholds, String> {
        let mut out = Thresholds::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| {
                format!("{part:?}: write SIGNAL<QUANTITY, as memory.available<100Mi")
            })?;
            let threshold = match value.strip_suffix('%') {
                Some(percent) => Threshold::Percent(
                    percent
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| format!("{part:?}: {value} is not a percentage"))?,
                ),
                None => Threshold::Bytes(
                    quantity(value)
                        .ok_or_else(|| format!("{part:?}: {value} is not a quantity"))?,
                ),
            };
            match signal {
                "memory.available" => out.memory_available = Some(threshold),
                "nodefs.available" => out.nodefs_available = Some(threshold),
                "imagefs.available" => out.imagefs_available = Some(threshold),
                "nodefs.inodesFree" => out.nodefs_inodes_free = Some(threshold),
                "imagefs.inodesFree" => out.imagefs_inodes_free = Some(threshold),
                "pid.available" => out.pid_available = Some(threshold),
                other => {
                    return Err(format!(
                        "{other:?} is not a signal berth watches: memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree or pid.available"
                    ))
                }
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        *self == Thresholds::default()
    }
}

/// What the node is short of, as the Node's conditions say.
#[derive(Debug, Default)]
pub struct Pressure {
    pub memory: AtomicBool,
    pub disk: AtomicBool,
    pub pid: AtomicBool,
}

impl Pressure {
    pub fn memory(&self) -> bool {
        self.memory.load(Ordering::Relaxed)
    }

    pub fn disk(&self) -> bool {
        self.disk.load(Ordering::Relaxed)
    }

    pub fn pid(&self) -> bool {
        self.pid.load(Ordering::Relaxed)
    }
}

/// Available and total bytes of the filesystem holding `path`.
pub fn filesystem(path: &Path) -> Option<(u64, u64)> {
    let stat = berth_sys::nix::sys::statvfs::statvfs(path).ok()?;
    let unit = stat.fragment_size() as u64;
    Some((stat.blocks_available() as u64 * unit, stat.blocks() as u64 * unit))
}

/// Free and total inodes of the filesystem holding `path` (`None` where it does not
/// count them, as tmpfs without a limit or btrfs say 0).
pub fn inodes(path: &Path) -> Option<(u64, u64)> {
    let stat = berth_sys::nix::sys::statvfs::statvfs(path).ok()?;
    let total = stat.files() as u64;
    (total > 0).then_some((stat.files_available() as u64, total))
}

/// Process IDs still free and the most there can be: the smaller of `kernel.pid_max` and
/// `kernel.threads-max`, less the tasks there are now (every thread takes an ID), as the
/// kubelet's `pid.available`.
pub fn pids() -> Option<(u64, u64)> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let max = read("/proc/sys/kernel/pid_max")?.min(read("/proc/sys/kernel/threads-max")?);
    // The fourth field of /proc/loadavg is "runnable/existing" scheduling entities.
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let tasks: u64 = loadavg.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()?;
    Some((max.saturating_sub(tasks), max))
}

/// Available and total memory (MemAvailable, MemTotal).
pub fn memory() -> Option<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// What the node is short of: the resource pods are ranked by for an eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Memory,
    /// Disk space or inodes, of the node's or the images' filesystem.
    EphemeralStorage,
    Pids,
}

/// One look at the signals.
#[derive(Debug, Default)]
pub struct Observation {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
    /// The first crossed signal's resource and the message evicted pods get.
    pub reclaim: Option<(Resource, String)>,
}

/// Reads every signal that has a threshold.
pub fn observe(thresholds: &Thresholds, nodefs: &Path, imagefs: Option<&Path>) -> Observation {
    let mut seen = Observation::default();
    let mut crossed = |resource: Resource, name: &str, threshold: Threshold, available: String| {
        seen.reclaim.get_or_insert_with(|| {
            (
                resource,
                format!(
                    "The node was low on resource: {name}. Threshold quantity: {}, available: {available}.",
                    describe(threshold, resource)
                ),
            )
        });
    };
    if let (Some(threshold), Some((available, total))) = (thresholds.memory_available, memory()) {
        if threshold.crossed(available, total) {
            seen.memory = true;
            crossed(Resource::Memory, "memory", threshold, format!("{}Ki", available / 1024));
        }
    }
    let filesystems = [
        (thresholds.nodefs_available, thresholds.nodefs_inodes_free, Some(nodefs)),
        (thresholds.imagefs_available, thresholds.imagefs_inodes_free, imagefs),
    ];
    for (space, files, path) in filesystems {
        let Some(path) = path else { continue };
        if let (Some(threshold), Some((available, total))) =
            (space, space.and_then(|_| filesystem(path)))
        {
            if threshold.crossed(available, total) {
                seen.disk = true;
                let available = format!("{}Ki", available / 1024);
                crossed(Resource::EphemeralStorage, "ephemeral-storage", threshold, available);
            }
        }
        if let (Some(threshold), Some((free, total))) = (files, files.and_then(|_| inodes(path))) {
            if threshold.crossed(free, total) {
                seen.disk = true;
                crossed(Resource::EphemeralStorage, "inodes", threshold, free.to_string());
            }
        }
    }
    if let (Some(threshold), Some((available, total))) = (thresholds.pid_available, pids()) {
        if threshold.crossed(available, total) {
            seen.pid = true;
            crossed(Resource::Pids, "pids", threshold, available.to_string());
        }
    }
    seen
}

fn describe(threshold: Threshold, resource: Resource) -> String {
    match threshold {
        Threshold::Bytes(bytes) if resource == Resource::Pids => bytes.to_string(),
        Threshold::Bytes(bytes) => format!("{}Ki", bytes / 1024),
        Threshold::Percent(percent) => format!("{percent}%"),
    }
}

/// What the eviction order knows of one pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct Candidate<'a> {
    pub qos: &'a str,
    pub priority: i32,
    /// Its use of the scarce resource (bytes; 0 where the runtime does not tell).
    pub usage: u64,
    /// What its containers requested of it.
    pub request: u64,
}

/// The order pods go in (the smallest first), as the kubelet ranks them: for memory and
/// disk, those using more than they requested, then the lower priority, then the larger
/// use above the request; for process IDs, the lower priority, then the larger use. Ties
/// go BestEffort, Burstable, Guaranteed (the kubelet leaves them to its list's order).
pub fn rank(resource: Resource, pod: Candidate) -> (u8, i32, std::cmp::Reverse<u64>, u8) {
    let class = match pod.qos {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    };
    let within = match resource {
        Resource::Pids => 0,
        _ => u8::from(pod.usage <= pod.request),
    };
    let above = match resource {
        Resource::Pids => pod.usage,
        _ => pod.usage.saturating_sub(pod.request),
    };
    (within, pod.priority, std::cmp::Reverse(above), class)
}

/// The priority of `system-cluster-critical`: pods at or above it are never evicted.
pub const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// How often the signals are read.
pub const INTERVAL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_read_as_the_kubelet_writes_them() {
        let t = Thresholds::parse(DEFAULT).unwrap();
        assert_eq!(t.memory_available, Some(Threshold::Bytes(100 << 20)));
        assert_eq!(t.nodefs_available, Some(Threshold::Percent(10.0)));
        assert_eq!(t.imagefs_available, Some(Threshold::Percent(15.0)));
        assert!(Thresholds::parse("").unwrap().is_empty());
        assert!(Thresholds::parse("allocatableMemory.available<10")
            .unwrap_err()
            .contains("signal"));
        assert!(Thresholds::parse("memory.available>1Gi").unwrap_err().contains("SIGNAL<QUANTITY"));
        assert!(Thresholds::parse("nodefs.available<150%").is_err());
        assert!(Threshold::Percent(10.0).crossed(9, 100));
        assert!(!Threshold::Percent(10.0).crossed(10, 100));
        assert!(Threshold::Bytes(100).crossed(99, 1000));
        let t = Thresholds::parse("pid.available<1000,nodefs.inodesFree<5%").unwrap();
        assert_eq!(t.pid_available, Some(Threshold::Bytes(1000)));
        assert_eq!(t.nodefs_inodes_free, Some(Threshold::Percent(5.0)));
        assert_eq!(
            Thresholds::parse(DEFAULT).unwrap().nodefs_inodes_free,
            Some(Threshold::Percent(5.0))
        );
    }

    #[test]
    fn pods_are_ranked_as_the_kubelet_ranks_them() {
        let pod = |qos, priority, usage, request| Candidate { qos, priority, usage, request };
        let memory = |p| rank(Resource::Memory, p);
        // Over its request goes before within it, whatever the QoS class.
        let hog = pod("Burstable", 0, 900 << 20, 16 << 20);
        let idle = pod("BestEffort", 0, 0, 0);
        let within = pod("Guaranteed", 0, 10 << 20, 32 << 20);
        let small = pod("BestEffort", 0, 4 << 20, 0);
        assert!(memory(hog) < memory(small), "the larger use above the request first");
        assert!(memory(small) < memory(within));
        assert!(memory(hog) < memory(within));
        // Priority before use: a higher-priority hog stays longer than a low one.
        assert!(
            memory(pod("Burstable", -10, 1 << 20, 0)) < memory(pod("Burstable", 100, 900 << 20, 0))
        );
        // Equal use (nothing measured): BestEffort, Burstable, Guaranteed.
        assert!(memory(idle) < memory(pod("Burstable", 0, 0, 0)));
        assert!(memory(pod("Burstable", 0, 0, 0)) < memory(pod("Guaranteed", 0, 0, 0)));
        // Process IDs: priority, then the most processes.
        let pids = |p| rank(Resource::Pids, p);
        assert!(pids(pod("Guaranteed", 0, 500, 0)) < pids(pod("BestEffort", 0, 3, 0)));
        assert!(pids(pod("Guaranteed", 10, 500, 0)) > pids(pod("BestEffort", 0, 3, 0)));
    }

    #[test]
    fn the_kernels_counts_are_read() {
        let (free, max) = pids().expect("pid.available on Linux");
        assert!(free > 0 && free < max, "{free} of {max}");
        let (available, total) = memory().unwrap();
        assert!(available > 0 && available <= total);
        let seen = observe(&Thresholds::parse("pid.available<100%").unwrap(), Path::new("/"), None);
        assert!(seen.pid && !seen.memory && !seen.disk, "{seen:?}");
        let (resource, message) = seen.reclaim.unwrap();
        assert_eq!(resource, Resource::Pids);
        assert!(
            message.starts_with("The node was low on resource: pids. Threshold quantity: 100%"),
            "{message}"
        );
    }
}
