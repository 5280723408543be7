//! cgroup v1 (and hybrid hosts, whose controllers are all v1).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_sys::nix::sys::signal::{kill, Signal};
use berth_sys::nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::fs::{self, join, read, read_keyed, read_u64, write};
use crate::stats::{parse_v1_blkio, HugetlbStats, Stats};
use crate::{DeviceRule, Error, FreezerState, Layout, Manager, Result};

pub(crate) struct V1Cgroup {
    layout: Arc<Layout>,
    path: PathBuf,
}

impl V1Cgroup {
    pub(crate) fn new(layout: Arc<Layout>, path: &Path) -> V1Cgroup {
        V1Cgroup { layout, path: path.to_path_buf() }
    }

    /// The cgroup's directory in the hierarchy of `controller`, if that is mounted.
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.layout.hierarchy(controller).map(|h| join(&h.mount_point, &self.path))
    }

    fn require(&self, controller: &'static str, field: &'static str) -> Result<PathBuf> {
        self.dir(controller).ok_or(Error::MissingController { field, controller })
    }

    /// Every directory of this cgroup: one per hierarchy, plus the unified tree when hybrid.
    fn all_dirs(&self) -> Vec<PathBuf> {
        let Layout::V1 { hierarchies, unified } = self.layout.as_ref() else { return Vec::new() };
        let mut dirs: Vec<PathBuf> =
            hierarchies.iter().map(|h| join(&h.mount_point, &self.path)).collect();
        if let Some(unified) = unified {
            dirs.push(join(unified, &self.path));
        }
        dirs
    }

    /// The directory whose `cgroup.procs` lists the cgroup's processes most reliably.
    fn procs_dir(&self) -> Option<PathBuf> {
        ["pids", "freezer", "memory", "devices", "cpu", "cpuacct", "blkio"]
            .iter()
            .find_map(|controller| self.dir(controller))
            .or_else(|| self.all_dirs().into_iter().next())
    }

    /// A new cpuset cgroup starts with empty `cpus` and `mems`, which refuses every process;
    /// fill each level from its parent, as the kernel's `cgroup.clone_children` would.
    fn init_cpuset(&self) -> Result<()> {
        let Some(hierarchy) = self.layout.hierarchy("cpuset") else { return Ok(()) };
        let mut current = hierarchy.mount_point.clone();
        for component in self.path.components().skip(1) {
            let parent = current.clone();
            current.push(component);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if read(&current, file).map(|value| value.is_empty()).unwrap_or(false) {
                    let value = read(&parent, file)?;
                    write(&current, file, value)?;
                }
            }
        }
        Ok(())
    }

    fn apply_memory(&self, resources: &LinuxResources) -> Result<()> {
        let Some(memory) = resources.memory() else { return Ok(()) };
        let dir = || self.require("memory", "memory");
        if let Some(limit) = memory.limit() {
            let dir = dir()?;
            check_limit("memory.limit", limit)?;
            if memory.check_before_update() == Some(true) && limit > 0 {
                let usage = read_u64(&dir, "memory.usage_in_bytes")?;
                if usage > limit as u64 {
                    return Err(Error::InvalidValue {
                        field: "memory.limit",
                        reason: format!("{limit} is below the current usage of {usage} bytes"),
                    });
                }
            }
            let swap = memory.swap();
            let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
            // memory.limit_in_bytes may never exceed memsw.limit_in_bytes: raise whichever
            // must go first.
            let memsw_first = has_memsw
                && swap.is_some()
                && (limit == -1
                    || read_u64(&dir, "memory.memsw.limit_in_bytes")
                        .map(|cur| limit as u64 > cur)
                        .unwrap_or(false));
            if memsw_first {
                write_swap(&dir, swap, limit, has_memsw)?;
                write(&dir, "memory.limit_in_bytes", limit.to_string())?;
            } else {
                write(&dir, "memory.limit_in_bytes", limit.to_string())?;
                write_swap(&dir, swap, limit, has_memsw)?;
            }
        } else if memory.swap().is_some() {
            let dir = dir()?;
            let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
            write_swap(&dir, memory.swap(), -1, has_memsw)?;
        }
        if let Some(reservation) = memory.reservation() {
            check_limit("memory.reservation", reservation)?;
            write(&dir()?, "memory.soft_limit_in_bytes", reservation.to_string())?;
        }
        if let Some(swappiness) = memory.swappiness() {
            if swappiness > 100 {
                return Err(Error::InvalidValue {
                    field: "memory.swappiness",
                    reason: format!("{swappiness} is outside 0..=100"),
                });
            }
            write(&dir()?, "memory.swappiness", swappiness.to_string())?;
        }
        if let Some(disable) = memory.disable_oom_killer() {
            write(&dir()?, "memory.oom_control", if disable { "1" } else { "0" })?;
        }
        if memory.kernel().is_some() || memory.kernel_tcp().is_some() {
            tracing::warn!("linux.resources.memory.kernel and kernelTCP are ignored: kernel memory limits no longer exist in Linux");
        }
        Ok(())
    }

    fn apply_cpu(&self, resources: &LinuxResources) -> Result<()> {
        let Some(cpu) = resources.cpu() else { return Ok(()) };
        if let Some(shares) = cpu.shares() {
            if shares != 0 {
                if !(2..=262_144).contains(&shares) {
                    return Err(Error::InvalidValue {
                        field: "cpu.shares",
                        reason: format!("{shares} is outside 2..=262144"),
                    });
                }
                write(&self.require("cpu", "cpu.shares")?, "cpu.shares", shares.to_string())?;
            }
        }
        let period = cpu.period().filter(|p| *p != 0);
        let quota = cpu.quota().filter(|q| *q != 0);
        if period.is_some() || quota.is_some() {
            let dir = self.require("cpu", "cpu.quota")?;
            if let Some(period) = period {
                if !(1_000..=1_000_000).contains(&period) {
                    return Err(Error::InvalidValue {
                        field: "cpu.period",
                        reason: format!("{period} is outside 1000..=1000000 microseconds"),
                    });
                }
            }
            if let Some(quota) = quota {
                if quota < -1 || (quota > 0 && quota < 1_000) {
                    return Err(Error::InvalidValue {
                        field: "cpu.quota",
                        reason: format!(
                            "{quota} must be -1 (no limit) or at least 1000 microseconds"
                        ),
                    });
                }
            }
            // The kernel checks quota against the period in place, so set them in an order
            // that never passes through an invalid pair.
            let write_period = |dir: &Path| match period {
                Some(period) => write(dir, "cpu.cfs_period_us", period.to_string()),
                None => Ok(()),
            };
            let write_quota = |dir: &Path| match quota {
                Some(quota) => write(dir, "cpu.cfs_quota_us", quota.to_string()),
                None => Ok(()),
            };
            if write_period(&dir).is_err() {
                write_quota(&dir)?;
                write_period(&dir)?;
            } else {
                write_quota(&dir)?;
            }
        }
        if let Some(runtime) = cpu.realtime_runtime().filter(|r| *r != 0) {
            let dir = self.require("cpu", "cpu.realtimeRuntime")?;
            if let Some(period) = cpu.realtime_period().filter(|p| *p != 0) {
                write(&dir, "cpu.rt_period_us", period.to_string())?;
            }
            write(&dir, "cpu.rt_runtime_us", runtime.to_string())?;
        } else if let Some(period) = cpu.realtime_period().filter(|p| *p != 0) {
            write(
                &self.require("cpu", "cpu.realtimePeriod")?,
                "cpu.rt_period_us",
                period.to_string(),
            )?;
        }
        if let Some(idle) = cpu.idle() {
            let dir = self.require("cpu", "cpu.idle")?;
            if dir.join("cpu.idle").exists() {
                write(&dir, "cpu.idle", idle.to_string())?;
            } else if idle != 0 {
                return Err(Error::InvalidValue {
                    field: "cpu.idle",
                    reason: "this kernel has no cpu.idle for cgroup v1".into(),
                });
            }
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            write(&self.require("cpuset", "cpu.cpus")?, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            write(&self.require("cpuset", "cpu.mems")?, "cpuset.mems", mems)?;
        }
        Ok(())
    }

    fn apply_pids(&self, resources: &LinuxResources) -> Result<()> {
        let Some(pids) = resources.pids() else { return Ok(()) };
        let value = if pids.limit() <= 0 { "max".to_owned() } else { pids.limit().to_string() };
        write(&self.require("pids", "pids.limit")?, "pids.max", value)
    }

    fn apply_blkio(&self, resources: &LinuxResources) -> Result<()> {
        let Some(blkio) = resources.block_io() else { return Ok(()) };
        let dir = || self.require("blkio", "blockIO");
        let weight_file = |dir: &Path| {
            if dir.join("blkio.weight").exists() {
                "blkio.weight"
            } else {
                "blkio.bfq.weight"
            }
        };
        if let Some(weight) = blkio.weight().filter(|w| *w != 0) {
            check_range("blockIO.weight", weight.into(), 10, 1000)?;
            let dir = dir()?;
            write(&dir, weight_file(&dir), weight.to_string())?;
        }
        if let Some(weight) = blkio.leaf_weight().filter(|w| *w != 0) {
            check_range("blockIO.leafWeight", weight.into(), 10, 1000)?;
            write(&dir()?, "blkio.leaf_weight", weight.to_string())?;
        }
        for device in blkio.weight_device().iter().flatten() {
            let dir = dir()?;
            if let Some(weight) = device.weight() {
                check_range("blockIO.weightDevice.weight", weight.into(), 10, 1000)?;
                let file = if weight_file(&dir) == "blkio.weight" {
                    "blkio.weight_device"
                } else {
                    "blkio.bfq.weight_device"
                };
                write(&dir, file, format!("{}:{} {}", device.major(), device.minor(), weight))?;
            }
            if let Some(weight) = device.leaf_weight() {
                write(
                    &dir,
                    "blkio.leaf_weight_device",
                    format!("{}:{} {}", device.major(), device.minor(), weight),
                )?;
            }
        }
        let throttles = [
            (blkio.throttle_read_bps_device(), "blkio.throttle.read_bps_device"),
            (blkio.throttle_write_bps_device(), "blkio.throttle.write_bps_device"),
            (blkio.throttle_read_iops_device(), "blkio.throttle.read_iops_device"),
            (blkio.throttle_write_iops_device(), "blkio.throttle.write_iops_device"),
        ];
        for (devices, file) in throttles {
            for device in devices.iter().flatten() {
                write(
                    &dir()?,
                    file,
                    format!("{}:{} {}", device.major(), device.minor(), device.rate()),
                )?;
            }
        }
        Ok(())
    }

    fn apply_hugetlb(&self, resources: &LinuxResources) -> Result<()> {
        for limit in resources.hugepage_limits().iter().flatten() {
            let dir = self.require("hugetlb", "hugepageLimits")?;
            let size = hugepage_size_name(limit.page_size())?;
            let file = format!("hugetlb.{size}.limit_in_bytes");
            if !dir.join(&file).exists() {
                return Err(Error::InvalidValue {
                    field: "hugepageLimits.pageSize",
                    reason: format!("{} is not a huge page size of this host", limit.page_size()),
                });
            }
            write(&dir, &file, limit.limit().to_string())?;
        }
        Ok(())
    }

    fn apply_network(&self, resources: &LinuxResources) -> Result<()> {
        let Some(network) = resources.network() else { return Ok(()) };
        if let Some(class_id) = network.class_id() {
            write(
                &self.require("net_cls", "network.classID")?,
                "net_cls.classid",
                class_id.to_string(),
            )?;
        }
        for priority in network.priorities().iter().flatten() {
            let dir = self.require("net_prio", "network.priorities")?;
            write(
                &dir,
                "net_prio.ifpriomap",
                format!("{} {}", priority.name(), priority.priority()),
            )?;
        }
        Ok(())
    }

    fn apply_devices(&self, resources: &LinuxResources) -> Result<()> {
        let Some(rules) = resources.devices() else { return Ok(()) };
        let rules: Vec<DeviceRule> =
            rules.iter().map(DeviceRule::from_oci).collect::<Result<_>>()?;
        if rules.is_empty() {
            return Ok(());
        }
        let dir = self.require("devices", "devices")?;
        for rule in rules {
            let file = if rule.allow { "devices.allow" } else { "devices.deny" };
            write(&dir, file, rule.v1_line())?;
        }
        Ok(())
    }

    fn apply_rdma(&self, resources: &LinuxResources) -> Result<()> {
        for (device, limit) in resources.rdma().iter().flatten() {
            let dir = self.require("rdma", "rdma")?;
            write(&dir, "rdma.max", rdma_line(device, limit.hca_handles(), limit.hca_objects()))?;
        }
        Ok(())
    }
}

pub(crate) fn rdma_line(device: &str, handles: Option<u32>, objects: Option<u32>) -> String {
    let value = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "max".to_owned());
    format!("{device} hca_handle={} hca_object={}", value(handles), value(objects))
}

fn write_swap(dir: &Path, swap: Option<i64>, limit: i64, has_memsw: bool) -> Result<()> {
    let Some(swap) = swap else { return Ok(()) };
    check_limit("memory.swap", swap)?;
    if swap != -1 && limit != -1 && swap < limit {
        return Err(Error::InvalidValue {
            field: "memory.swap",
            reason: format!("{swap} is below memory.limit {limit}; swap counts memory plus swap"),
        });
    }
    if !has_memsw {
        if swap == -1 || swap == limit {
            return Ok(());
        }
        return Err(Error::InvalidValue {
            field: "memory.swap",
            reason: "swap accounting is disabled on this host (no memory.memsw.limit_in_bytes)"
                .into(),
        });
    }
    write(dir, "memory.memsw.limit_in_bytes", swap.to_string())
}

pub(crate) fn check_limit(field: &'static str, value: i64) -> Result<()> {
    if value < -1 {
        return Err(Error::InvalidValue {
            field,
            reason: format!("{value} is negative; use -1 for no limit"),
        });
    }
    Ok(())
}

pub(crate) fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    if value < min || value > max {
        return Err(Error::InvalidValue {
            field,
            reason: format!("{value} is outside {min}..={max}"),
        });
    }
    Ok(())
}

/// `2MB` → `2MB`, `1GB` → `1GB`: the kernel's names for huge page sizes, validated.
pub(crate) fn hugepage_size_name(page_size: &str) -> Result<&str> {
    let valid = page_size.len() > 2
        && (page_size.ends_with("KB") || page_size.ends_with("MB") || page_size.ends_with("GB"))
        && page_size[..page_size.len() - 2].chars().all(|c| c.is_ascii_digit());
    if valid {
        Ok(page_size)
    } else {
        Err(Error::InvalidValue {
            field: "hugepageLimits.pageSize",
            reason: format!("{page_size:?} is not a size like 2MB or 1GB"),
        })
    }
}

impl Manager for V1Cgroup {
    fn path(&self) -> &Path {
        &self.path
    }

    fn create(&self) -> Result<()> {
        for dir in self.all_dirs() {
            std::fs::create_dir_all(&dir).map_err(|source| fs::io_error("create", &dir, source))?;
        }
        self.init_cpuset()
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        for dir in self.all_dirs() {
            if !dir.exists() {
                self.create()?;
            }
            write(&dir, "cgroup.procs", pid.to_string())?;
        }
        Ok(())
    }

    fn add_process_to(&self, pid: Pid, sub: Option<&str>) -> Result<()> {
        let Some(sub) = sub else { return self.add_process(pid) };
        let sub_path =
            crate::cgroup_path(Some(&self.path.join(sub.trim_start_matches('/'))), "", false)?;
        V1Cgroup::new(self.layout.clone(), &sub_path).add_process(pid)
    }

    fn apply(&self, resources: &LinuxResources) -> Result<()> {
        if resources.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::InvalidValue {
                field: "unified",
                reason: "raw cgroup v2 keys cannot be applied on a cgroup v1 host".into(),
            });
        }
        self.apply_devices(resources)?;
        self.apply_memory(resources)?;
        self.apply_cpu(resources)?;
        self.apply_pids(resources)?;
        self.apply_blkio(resources)?;
        self.apply_hugetlb(resources)?;
        self.apply_network(resources)?;
        self.apply_rdma(resources)
    }

    fn freeze(&self, state: FreezerState) -> Result<()> {
        let dir = self.require("freezer", "freezer")?;
        let (value, want) = match state {
            FreezerState::Frozen | FreezerState::Freezing => ("FROZEN", "FROZEN"),
            FreezerState::Thawed => ("THAWED", "THAWED"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Writing FROZEN again nudges a cgroup stuck in FREEZING (a task in vfork).
            write(&dir, "freezer.state", value)?;
            if read(&dir, "freezer.state")? == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::FreezeTimeout { path: dir, state });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        let Some(dir) = self.dir("freezer") else { return Ok(FreezerState::Thawed) };
        match read(&dir, "freezer.state") {
            Ok(state) if state == "FROZEN" => Ok(FreezerState::Frozen),
            Ok(state) if state == "FREEZING" => Ok(FreezerState::Freezing),
            Ok(_) => Ok(FreezerState::Thawed),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(FreezerState::Thawed)
            }
            Err(err) => Err(err),
        }
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        match self.procs_dir() {
            Some(dir) => fs::pids_recursive(&dir),
            None => Ok(Vec::new()),
        }
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        let frozen = self.dir("freezer").is_some_and(|d| d.exists())
            && self.freeze(FreezerState::Frozen).is_ok();
        let result = signal_all(&self.pids()?, signal);
        if frozen {
            self.freeze(FreezerState::Thawed)?;
        }
        result
    }

    fn destroy(&self) -> Result<()> {
        if self.exists() && !self.pids()?.is_empty() {
            self.kill_all(Signal::SIGKILL)?;
        }
        for dir in self.all_dirs() {
            fs::remove_tree(&dir)?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        if let Some(dir) = self.dir("cpuacct").filter(|d| d.exists()) {
            stats.cpu.usage.total = read_u64(&dir, "cpuacct.usage").unwrap_or(0);
            stats.cpu.usage.percpu = read(&dir, "cpuacct.usage_percpu")
                .map(|text| text.split_whitespace().filter_map(|v| v.parse().ok()).collect())
                .unwrap_or_default();
            if let Ok(pairs) = read_keyed(&dir, "cpuacct.stat") {
                // USER_HZ ticks; Linux fixes USER_HZ at 100.
                const NANOS_PER_TICK: u64 = 10_000_000;
                stats.cpu.usage.user = fs::keyed(&pairs, "user") * NANOS_PER_TICK;
                stats.cpu.usage.kernel = fs::keyed(&pairs, "system") * NANOS_PER_TICK;
            }
        }
        if let Some(dir) = self.dir("cpu").filter(|d| d.exists()) {
            if let Ok(pairs) = read_keyed(&dir, "cpu.stat") {
                stats.cpu.throttling.periods = fs::keyed(&pairs, "nr_periods");
                stats.cpu.throttling.throttled_periods = fs::keyed(&pairs, "nr_throttled");
                stats.cpu.throttling.throttled_time = fs::keyed(&pairs, "throttled_time");
            }
        }
        if let Some(dir) = self.dir("memory").filter(|d| d.exists()) {
            let entry = |prefix: &str| crate::MemoryData {
                limit: read_u64(&dir, &format!("{prefix}.limit_in_bytes")).unwrap_or(0),
                usage: read_u64(&dir, &format!("{prefix}.usage_in_bytes")).unwrap_or(0),
                max: read_u64(&dir, &format!("{prefix}.max_usage_in_bytes")).unwrap_or(0),
                failcnt: read_u64(&dir, &format!("{prefix}.failcnt")).unwrap_or(0),
            };
            stats.memory.usage = entry("memory");
            stats.memory.swap = entry("memory.memsw");
            stats.memory.kernel = entry("memory.kmem");
            if let Ok(pairs) = read_keyed(&dir, "memory.stat") {
                stats.memory.cache = fs::keyed(&pairs, "cache");
                stats.memory.raw = pairs.into_iter().collect();
            }
            if let Ok(pairs) = read_keyed(&dir, "memory.oom_control") {
                stats.memory.oom_kill = fs::keyed(&pairs, "oom_kill");
            }
        }
        if let Some(dir) = self.dir("pids").filter(|d| d.exists()) {
            stats.pids.current = read_u64(&dir, "pids.current").unwrap_or(0);
            stats.pids.limit =
                read_u64(&dir, "pids.max").map(|v| if v == u64::MAX { 0 } else { v }).unwrap_or(0);
        }
        if let Some(dir) = self.dir("blkio").filter(|d| d.exists()) {
            let entries =
                |file: &str| read(&dir, file).map(|t| parse_v1_blkio(&t)).unwrap_or_default();
            stats.blkio.io_service_bytes_recursive =
                entries("blkio.throttle.io_service_bytes_recursive");
            stats.blkio.io_serviced_recursive = entries("blkio.throttle.io_serviced_recursive");
        }
        if let Some(dir) = self.dir("hugetlb").filter(|d| d.exists()) {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(size) =
                    name.strip_prefix("hugetlb.").and_then(|n| n.strip_suffix(".usage_in_bytes"))
                else {
                    continue;
                };
                stats.hugetlb.insert(
                    size.to_owned(),
                    HugetlbStats {
                        usage: read_u64(&dir, &name).unwrap_or(0),
                        max: read_u64(&dir, &format!("hugetlb.{size}.max_usage_in_bytes"))
                            .unwrap_or(0),
                        failcnt: read_u64(&dir, &format!("hugetlb.{size}.failcnt")).unwrap_or(0),
                    },
                );
            }
        }
        Ok(stats)
    }

    fn oom_kills(&self) -> Result<u64> {
        match self.dir("memory") {
            Some(dir) => Ok(fs::keyed(&read_keyed(&dir, "memory.oom_control")?, "oom_kill")),
            None => Ok(0),
        }
    }

    fn exists(&self) -> bool {
        self.procs_dir().is_some_and(|dir| dir.exists())
    }

    fn self_join(&self, sub: Option<&str>) -> Result<crate::SelfJoin> {
        let path = match sub {
            Some(sub) => {
                crate::cgroup_path(Some(&self.path.join(sub.trim_start_matches('/'))), "", false)?
            }
            None => self.path.clone(),
        };
        let Layout::V1 { hierarchies, unified } = self.layout.as_ref() else {
            return Ok(crate::SelfJoin::default());
        };
        Ok(crate::SelfJoin {
            clone_into: unified.as_ref().map(|root| join(root, &path)),
            thread_files: hierarchies
                .iter()
                .map(|h| join(&h.mount_point, &path).join("tasks"))
                .collect(),
        })
    }

    /// The v1 hierarchies only: on a hybrid host the controller-less cgroup2 tree is not
    /// shown, as runc does not show it.
    fn mount_sources(&self) -> Vec<(PathBuf, PathBuf)> {
        let Layout::V1 { hierarchies, .. } = self.layout.as_ref() else { return Vec::new() };
        hierarchies
            .iter()
            .map(|h| {
                let name = h
                    .mount_point
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(h.controllers.join(",")));
                (name, join(&h.mount_point, &self.path))
            })
            .collect()
    }
}

pub(crate) fn signal_all(pids: &[Pid], signal: Signal) -> Result<()> {
    for pid in pids {
        match kill(*pid, signal) {
            Ok(()) | Err(berth_sys::Errno::ESRCH) => {}
            Err(source) => return Err(Error::Signal { signal, pid: *pid, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hierarchy;

    /// A fake v1 hierarchy in a temporary directory, with the files the kernel would create.
    fn fake(controllers: &[&str]) -> (tempfile::TempDir, Arc<Layout>) {
        let root = tempfile::tempdir().expect("tempdir");
        let hierarchies = controllers
            .iter()
            .map(|c| {
                let mount_point = root.path().join(c);
                std::fs::create_dir_all(mount_point.join("box")).expect("mkdir");
                Hierarchy { mount_point, controllers: vec![(*c).to_owned()] }
            })
            .collect();
        (root, Arc::new(Layout::V1 { hierarchies, unified: None }))
    }

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).expect("resources json")
    }

    #[test]
    fn writes_memory_cpu_pids_and_devices() {
        let (root, layout) = fake(&["memory", "cpu", "pids", "devices", "cpuset"]);
        let cgroup = V1Cgroup::new(layout, Path::new("/box"));
        cgroup
            .apply(&resources(
                r#"{"memory":{"limit":1048576,"reservation":524288,"swappiness":10},
                    "cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0"},
                    "pids":{"limit":32},
                    "devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#,
            ))
            .expect("apply");
        let file = |path: &str| std::fs::read_to_string(root.path().join(path)).expect(path);
        assert_eq!(file("memory/box/memory.limit_in_bytes"), "1048576");
        assert_eq!(file("memory/box/memory.soft_limit_in_bytes"), "524288");
        assert_eq!(file("memory/box/memory.swappiness"), "10");
        assert_eq!(file("cpu/box/cpu.shares"), "512");
        assert_eq!(file("cpu/box/cpu.cfs_quota_us"), "50000");
        assert_eq!(file("cpu/box/cpu.cfs_period_us"), "100000");
        assert_eq!(file("cpuset/box/cpuset.cpus"), "0");
        assert_eq!(file("pids/box/pids.max"), "32");
        // Each write replaces the file in the fake; the kernel appends rules instead.
        assert_eq!(file("devices/box/devices.allow"), "c 1:3 rwm");
        assert_eq!(file("devices/box/devices.deny"), "a");
    }

    #[test]
    fn impossible_values_are_refused_before_writing() {
        let (root, layout) = fake(&["memory", "cpu", "blkio"]);
        let cgroup = V1Cgroup::new(layout, Path::new("/box"));
        for json in [
            r#"{"memory":{"limit":-5}}"#,
            r#"{"memory":{"swappiness":150}}"#,
            r#"{"cpu":{"shares":1}}"#,
            r#"{"cpu":{"quota":10}}"#,
            r#"{"blockIO":{"weight":5}}"#,
            r#"{"unified":{"memory.max":"1"}}"#,
        ] {
            let err = cgroup.apply(&resources(json)).expect_err(json);
            assert!(matches!(err, Error::InvalidValue { .. }), "{json}: {err}");
        }
        assert!(!root.path().join("memory/box/memory.limit_in_bytes").exists());
    }

    #[test]
    fn a_missing_controller_is_named() {
        let (_root, layout) = fake(&["memory"]);
        let err = V1Cgroup::new(layout, Path::new("/box"))
            .apply(&resources(r#"{"pids":{"limit":3}}"#))
            .expect_err("pids");
        assert!(matches!(err, Error::MissingController { controller: "pids", .. }), "{err}");
    }

    #[test]
    fn oom_kills_come_from_oom_control() {
        let (root, layout) = fake(&["memory"]);
        let cgroup = V1Cgroup::new(layout, Path::new("/box"));
        std::fs::write(
            root.path().join("memory/box/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .expect("write");
        assert_eq!(cgroup.oom_kills().expect("oom_kills"), 3);
        let (_root, layout) = fake(&["cpu"]);
        assert_eq!(V1Cgroup::new(layout, Path::new("/box")).oom_kills().expect("no memory"), 0);
    }
}
