//! Node-pressure eviction, as the kubelet's hard thresholds work: every interval the agent
//! reads its signals (`memory.available` from /proc/meminfo, `nodefs.available` of its own
//! directory's filesystem, `imagefs.available` of the filesystem the runtime's
//! ImageFsInfo names), and when one is below its threshold it reports the Node's
//! MemoryPressure or DiskPressure condition, taints the Node so no new pod comes
//! (`node.kubernetes.io/memory-pressure:NoSchedule`, `disk-pressure`), and evicts one pod
//! per interval, BestEffort first, then Burstable, then Guaranteed, lower priority first:
//! the pod is marked Failed with reason Evicted (its sandbox is then stopped, and a
//! controller that owns it makes another). When the signal recovers, the condition and
//! taint go.

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
    pub imagefs_available: Option<Threshold>,
}

/// The kubelet's default hard thresholds.
pub const DEFAULT: &str = "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%";

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
                other => {
                    return Err(format!(
                        "{other:?} is not a signal berth watches: memory.available, nodefs.available or imagefs.available"
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
}

impl Pressure {
    pub fn memory(&self) -> bool {
        self.memory.load(Ordering::Relaxed)
    }

    pub fn disk(&self) -> bool {
        self.disk.load(Ordering::Relaxed)
    }
}

/// Available and total bytes of the filesystem holding `path`.
pub fn filesystem(path: &Path) -> Option<(u64, u64)> {
    let stat = berth_sys::nix::sys::statvfs::statvfs(path).ok()?;
    let unit = stat.fragment_size() as u64;
    Some((stat.blocks_available() as u64 * unit, stat.blocks() as u64 * unit))
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

/// One look at the signals: which pressure there is, and the first crossed signal's
/// message for an eviction.
pub fn observe(
    thresholds: &Thresholds,
    nodefs: &Path,
    imagefs: Option<&Path>,
) -> (bool, bool, Option<String>) {
    let mut message = None;
    let mut memory_pressure = false;
    if let (Some(threshold), Some((available, total))) = (thresholds.memory_available, memory()) {
        if threshold.crossed(available, total) {
            memory_pressure = true;
            message = Some(format!(
                "The node was low on resource: memory. Threshold quantity: {}, available: {}Ki.",
                describe(threshold),
                available / 1024
            ));
        }
    }
    let mut disk_pressure = false;
    for (signal, path) in
        [(thresholds.nodefs_available, Some(nodefs)), (thresholds.imagefs_available, imagefs)]
    {
        let (Some(threshold), Some(path)) = (signal, path) else { continue };
        let Some((available, total)) = filesystem(path) else { continue };
        if threshold.crossed(available, total) {
            disk_pressure = true;
            message.get_or_insert_with(|| {
                format!(
                    "The node was low on resource: ephemeral-storage. Threshold quantity: {}, available: {}Ki.",
                    describe(threshold),
                    available / 1024
                )
            });
        }
    }
    (memory_pressure, disk_pressure, message)
}

fn describe(threshold: Threshold) -> String {
    match threshold {
        Threshold::Bytes(bytes) => format!("{}Ki", bytes / 1024),
        Threshold::Percent(percent) => format!("{percent}%"),
    }
}

/// The order pods go in: BestEffort, Burstable, Guaranteed; lower priority first.
pub fn rank(qos: &str, priority: i32) -> (u8, i32) {
    let class = match qos {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    };
    (class, priority)
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
        assert!(Thresholds::parse("pid.available<10").unwrap_err().contains("signal"));
        assert!(Thresholds::parse("memory.available>1Gi").unwrap_err().contains("SIGNAL<QUANTITY"));
        assert!(Thresholds::parse("nodefs.available<150%").is_err());
        assert!(Threshold::Percent(10.0).crossed(9, 100));
        assert!(!Threshold::Percent(10.0).crossed(10, 100));
        assert!(Threshold::Bytes(100).crossed(99, 1000));
        assert!(rank("BestEffort", 1000) < rank("Burstable", 0));
        assert!(rank("Guaranteed", 0) > rank("Burstable", 1_000_000));
    }
}
