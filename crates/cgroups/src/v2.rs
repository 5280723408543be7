//! cgroup v2: one unified tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_sys::nix::sys::signal::Signal;
use berth_sys::nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use crate::fs::{self, join, read, read_keyed, read_u64, write};
use crate::stats::{parse_v2_io, HugetlbStats, Stats};
use crate::v1::{check_limit, check_range, hugepage_size_name, rdma_line, signal_all};
use crate::{DeviceRule, Error, FreezerState, Layout, Manager, Result};

pub(crate) struct V2Cgroup {
    root: PathBuf,
    path: PathBuf,
}

impl V2Cgroup {
    pub(crate) fn new(layout: Arc<Layout>, path: &Path) -> V2Cgroup {
        let root = match layout.as_ref() {
            Layout::V2 { root } => root.clone(),
            Layout::V1 { unified, .. } => unified.clone().unwrap_or_default(),
        };
        V2Cgroup { root, path: path.to_path_buf() }
    }

    fn dir(&self) -> PathBuf {
        join(&self.root, &self.path)
    }

    /// Writes a limit file, turning a missing file into "controller not enabled".
    fn write_limit(
        &self,
        field: &'static str,
        controller: &'static str,
        file: &str,
        value: impl AsRef<str>,
    ) -> Result<()> {
        let dir = self.dir();
        if !dir.join(file).exists() {
            return Err(Error::MissingController { field, controller });
        }
        write(&dir, file, value)
    }

    /// Enables every available controller for the children of each ancestor, so that the
    /// container's cgroup gets its limit files.
    fn enable_controllers(&self) -> Result<()> {
        let mut current = self.root.clone();
        for component in self.path.components().skip(1) {
            let available = read(&current, "cgroup.controllers").unwrap_or_default();
            for controller in available.split_whitespace() {
                // One at a time: a controller that cannot be enabled here (e.g. cpuset under a
                // parent with processes) must not prevent the others.
                if let Err(err) =
                    write(&current, "cgroup.subtree_control", format!("+{controller}"))
                {
                    tracing::debug!(%err, controller, "controller not enabled");
                }
            }
            current.push(component);
        }
        Ok(())
    }

    fn apply_memory(&self, resources: &LinuxResources) -> Result<()> {
        let Some(memory) = resources.memory() else { return Ok(()) };
        let limit = memory.limit();
        if let Some(limit) = limit {
            check_limit("memory.limit", limit)?;
            if memory.check_before_update() == Some(true) && limit > 0 {
                let usage = read_u64(&self.dir(), "memory.current")?;
                if usage > limit as u64 {
                    return Err(Error::InvalidValue {
                        field: "memory.limit",
                        reason: format!("{limit} is below the current usage of {usage} bytes"),
                    });
                }
            }
        }
        if let Some(swap) = memory.swap() {
            let swap_max = swap_to_v2(swap, limit.unwrap_or(0))?;
            if let Some(swap_max) = swap_max {
                self.write_limit("memory.swap", "memory", "memory.swap.max", max_or(swap_max))?;
            }
        }
        if let Some(limit) = limit {
            self.write_limit("memory.limit", "memory", "memory.max", max_or(limit))?;
        }
        if let Some(reservation) = memory.reservation() {
            check_limit("memory.reservation", reservation)?;
            self.write_limit("memory.reservation", "memory", "memory.low", max_or(reservation))?;
        }
        if memory.swappiness().is_some_and(|s| s != 0) {
            return Err(Error::InvalidValue {
                field: "memory.swappiness",
                reason: "cgroup v2 has no per-cgroup swappiness".into(),
            });
        }
        if memory.disable_oom_killer() == Some(true) {
            return Err(Error::InvalidValue {
                field: "memory.disableOOMKiller",
                reason: "cgroup v2 cannot disable the OOM killer".into(),
            });
        }
        Ok(())
    }

    fn apply_cpu(&self, resources: &LinuxResources) -> Result<()> {
        let Some(cpu) = resources.cpu() else { return Ok(()) };
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            if !(2..=262_144).contains(&shares) {
                return Err(Error::InvalidValue {
                    field: "cpu.shares",
                    reason: format!("{shares} is outside 2..=262144"),
                });
            }
            self.write_limit(
                "cpu.shares",
                "cpu",
                "cpu.weight",
                shares_to_weight(shares).to_string(),
            )?;
        }
        let quota = cpu.quota().filter(|q| *q != 0);
        let period = cpu.period().filter(|p| *p != 0);
        if quota.is_some() || period.is_some() {
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
            let period = period.unwrap_or(100_000);
            let quota = match quota {
                Some(quota) if quota > 0 => quota.to_string(),
                _ => "max".to_owned(),
            };
            self.write_limit("cpu.quota", "cpu", "cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(idle) = cpu.idle() {
            self.write_limit("cpu.idle", "cpu", "cpu.idle", idle.to_string())?;
        }
        if cpu.realtime_runtime().is_some_and(|r| r != 0)
            || cpu.realtime_period().is_some_and(|p| p != 0)
        {
            return Err(Error::InvalidValue {
                field: "cpu.realtimeRuntime",
                reason: "cgroup v2 has no realtime CPU limits".into(),
            });
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            self.write_limit("cpu.cpus", "cpuset", "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            self.write_limit("cpu.mems", "cpuset", "cpuset.mems", mems)?;
        }
        Ok(())
    }

    fn apply_io(&self, resources: &LinuxResources) -> Result<()> {
        let Some(blkio) = resources.block_io() else { return Ok(()) };
        let dir = self.dir();
        let weight_file =
            if dir.join("io.bfq.weight").exists() { "io.bfq.weight" } else { "io.weight" };
        if let Some(weight) = blkio.weight().filter(|w| *w != 0) {
            check_range("blockIO.weight", weight.into(), 10, 1000)?;
            let value = if weight_file == "io.bfq.weight" {
                weight.into()
            } else {
                blkio_weight_to_io(weight.into())
            };
            self.write_limit("blockIO.weight", "io", weight_file, format!("default {value}"))?;
        }
        for device in blkio.weight_device().iter().flatten() {
            if let Some(weight) = device.weight() {
                check_range("blockIO.weightDevice.weight", weight.into(), 10, 1000)?;
                let value = if weight_file == "io.bfq.weight" {
                    weight.into()
                } else {
                    blkio_weight_to_io(weight.into())
                };
                self.write_limit(
                    "blockIO.weightDevice",
                    "io",
                    weight_file,
                    format!("{}:{} {value}", device.major(), device.minor()),
                )?;
            }
        }
        let throttles = [
            (blkio.throttle_read_bps_device(), "rbps"),
            (blkio.throttle_write_bps_device(), "wbps"),
            (blkio.throttle_read_iops_device(), "riops"),
            (blkio.throttle_write_iops_device(), "wiops"),
        ];
        for (devices, key) in throttles {
            for device in devices.iter().flatten() {
                let rate =
                    if device.rate() == 0 { "max".to_owned() } else { device.rate().to_string() };
                self.write_limit(
                    "blockIO.throttle",
                    "io",
                    "io.max",
                    format!("{}:{} {key}={rate}", device.major(), device.minor()),
                )?;
            }
        }
        Ok(())
    }

    fn apply_unified(&self, resources: &LinuxResources) -> Result<()> {
        let Some(unified) = resources.unified() else { return Ok(()) };
        let mut keys: Vec<_> = unified.iter().collect();
        keys.sort();
        for (key, value) in keys {
            let valid =
                !key.is_empty() && !key.contains('/') && !key.starts_with('.') && key.contains('.');
            if !valid {
                return Err(Error::InvalidValue {
                    field: "unified",
                    reason: format!("{key:?} is not a cgroup file name"),
                });
            }
            if !self.dir().join(key).exists() {
                let controller = key.split('.').next().unwrap_or_default().to_owned();
                return Err(Error::InvalidValue {
                    field: "unified",
                    reason: format!("{key:?} does not exist: is the {controller} controller enabled on this host?"),
                });
            }
            write(&self.dir(), key, value)?;
        }
        Ok(())
    }
}

impl V2Cgroup {
    /// cgroup v2 has no device files: an eBPF program attached to the cgroup decides. The
    /// new program is attached first and the old ones detached after, so no moment is left
    /// without a filter.
    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<()> {
        use std::os::fd::AsFd;
        let dir = self.dir();
        let cgroup =
            std::fs::File::open(&dir).map_err(|source| fs::io_error("open", &dir, source))?;
        let program = crate::devices::bpf::program(rules);
        let loaded =
            berth_sys::bpf::load_cgroup_device_program(&program).map_err(|(errno, log)| {
                Error::Bpf { op: "load the device program", source: errno, detail: log }
            })?;
        let previous =
            berth_sys::bpf::attached_cgroup_device_programs(cgroup.as_fd()).map_err(|source| {
                Error::Bpf { op: "list device programs", source, detail: String::new() }
            })?;
        berth_sys::bpf::attach_cgroup_device(cgroup.as_fd(), loaded.as_fd()).map_err(|source| {
            Error::Bpf { op: "attach the device program", source, detail: String::new() }
        })?;
        for old in previous {
            berth_sys::bpf::detach_cgroup_device(cgroup.as_fd(), old.as_fd()).map_err(
                |source| Error::Bpf {
                    op: "detach an old device program",
                    source,
                    detail: String::new(),
                },
            )?;
        }
        Ok(())
    }
}

/// OCI `memory.swap` counts memory plus swap; v2 `memory.swap.max` counts swap alone.
/// Returns `None` when nothing is to be written.
pub(crate) fn swap_to_v2(swap: i64, limit: i64) -> Result<Option<i64>> {
    check_limit("memory.swap", swap)?;
    match (swap, limit) {
        (-1, _) => Ok(Some(-1)),
        (0, _) => Ok(None),
        (_, 0) => Err(Error::InvalidValue {
            field: "memory.swap",
            reason: "a swap limit needs a memory limit on cgroup v2".into(),
        }),
        (_, -1) => Err(Error::InvalidValue {
            field: "memory.swap",
            reason: "a swap limit cannot go with an unlimited memory.limit".into(),
        }),
        (swap, limit) if swap < limit => Err(Error::InvalidValue {
            field: "memory.swap",
            reason: format!("{swap} is below memory.limit {limit}; swap counts memory plus swap"),
        }),
        (swap, limit) => Ok(Some(swap - limit)),
    }
}

/// cpu.shares (2..=262144, default 1024) to cpu.weight (1..=10000, default 100), as runc maps it.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.saturating_sub(2)) * 9999) / 262_142
}

/// blkio.weight (10..=1000) to io.weight (1..=10000), as runc maps it.
pub(crate) fn blkio_weight_to_io(weight: u64) -> u64 {
    1 + (weight.saturating_sub(10) * 9999) / 990
}

fn max_or(value: i64) -> String {
    if value == -1 {
        "max".to_owned()
    } else {
        value.to_string()
    }
}

impl Manager for V2Cgroup {
    fn path(&self) -> &Path {
        &self.path
    }

    fn create(&self) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|source| fs::io_error("create", &dir, source))?;
        self.enable_controllers()
    }

    fn add_process(&self, pid: Pid) -> Result<()> {
        if !self.dir().exists() {
            self.create()?;
        }
        write(&self.dir(), "cgroup.procs", pid.to_string())
    }

    fn add_process_to(&self, pid: Pid, sub: Option<&str>) -> Result<()> {
        let Some(sub) = sub else { return self.add_process(pid) };
        let sub_path =
            crate::cgroup_path(Some(&self.path.join(sub.trim_start_matches('/'))), "", false)?;
        V2Cgroup { root: self.root.clone(), path: sub_path }.add_process(pid)
    }

    fn apply(&self, resources: &LinuxResources) -> Result<()> {
        if let Some(rules) = resources.devices() {
            let rules: Vec<DeviceRule> =
                rules.iter().map(DeviceRule::from_oci).collect::<Result<_>>()?;
            if !rules.is_empty() {
                self.apply_devices(&rules)?;
            }
        }
        self.apply_memory(resources)?;
        self.apply_cpu(resources)?;
        if let Some(pids) = resources.pids() {
            let value = if pids.limit() <= 0 { "max".to_owned() } else { pids.limit().to_string() };
            self.write_limit("pids.limit", "pids", "pids.max", value)?;
        }
        self.apply_io(resources)?;
        for limit in resources.hugepage_limits().iter().flatten() {
            let size = hugepage_size_name(limit.page_size())?;
            self.write_limit(
                "hugepageLimits",
                "hugetlb",
                &format!("hugetlb.{size}.max"),
                limit.limit().to_string(),
            )?;
        }
        for (device, limit) in resources.rdma().iter().flatten() {
            self.write_limit(
                "rdma",
                "rdma",
                "rdma.max",
                rdma_line(device, limit.hca_handles(), limit.hca_objects()),
            )?;
        }
        if resources.network().is_some() {
            tracing::warn!("linux.resources.network has no cgroup v2 equivalent and is ignored");
        }
        self.apply_unified(resources)
    }

    fn freeze(&self, state: FreezerState) -> Result<()> {
        let dir = self.dir();
        let (value, want) = match state {
            FreezerState::Frozen | FreezerState::Freezing => ("1", "1"),
            FreezerState::Thawed => ("0", "0"),
        };
        write(&dir, "cgroup.freeze", value)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = read_keyed(&dir, "cgroup.events")?;
            if fs::keyed(&events, "frozen").to_string() == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::FreezeTimeout { path: dir, state });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        let dir = self.dir();
        if !dir.join("cgroup.freeze").exists() {
            return Ok(FreezerState::Thawed);
        }
        let wanted = read(&dir, "cgroup.freeze")? == "1";
        let frozen = fs::keyed(&read_keyed(&dir, "cgroup.events")?, "frozen") == 1;
        Ok(match (wanted, frozen) {
            (true, true) => FreezerState::Frozen,
            (true, false) => FreezerState::Freezing,
            (false, _) => FreezerState::Thawed,
        })
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        fs::pids_recursive(&self.dir())
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        let dir = self.dir();
        if signal == Signal::SIGKILL && dir.join("cgroup.kill").exists() {
            return write(&dir, "cgroup.kill", "1");
        }
        let frozen = self.freeze(FreezerState::Frozen).is_ok();
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
        fs::remove_tree(&self.dir())
    }

    fn stats(&self) -> Result<Stats> {
        let dir = self.dir();
        let mut stats = Stats::default();
        if let Ok(cpu) = read_keyed(&dir, "cpu.stat") {
            stats.cpu.usage.total = fs::keyed(&cpu, "usage_usec") * 1000;
            stats.cpu.usage.user = fs::keyed(&cpu, "user_usec") * 1000;
            stats.cpu.usage.kernel = fs::keyed(&cpu, "system_usec") * 1000;
            stats.cpu.throttling.periods = fs::keyed(&cpu, "nr_periods");
            stats.cpu.throttling.throttled_periods = fs::keyed(&cpu, "nr_throttled");
            stats.cpu.throttling.throttled_time = fs::keyed(&cpu, "throttled_usec") * 1000;
        }
        let unlimited = |v: u64| if v == u64::MAX { 0 } else { v };
        stats.memory.usage.usage = read_u64(&dir, "memory.current").unwrap_or(0);
        stats.memory.usage.max = read_u64(&dir, "memory.peak").unwrap_or(0);
        stats.memory.usage.limit = read_u64(&dir, "memory.max").map(unlimited).unwrap_or(0);
        stats.memory.swap.usage = read_u64(&dir, "memory.swap.current").unwrap_or(0);
        stats.memory.swap.limit = read_u64(&dir, "memory.swap.max").map(unlimited).unwrap_or(0);
        if let Ok(events) = read_keyed(&dir, "memory.events") {
            stats.memory.usage.failcnt = fs::keyed(&events, "max");
            stats.memory.oom_kill = fs::keyed(&events, "oom_kill");
        }
        if let Ok(pairs) = read_keyed(&dir, "memory.stat") {
            stats.memory.cache = fs::keyed(&pairs, "file");
            stats.memory.raw = pairs.into_iter().collect();
        }
        stats.pids.current = read_u64(&dir, "pids.current").unwrap_or(0);
        stats.pids.limit = read_u64(&dir, "pids.max").map(unlimited).unwrap_or(0);
        if let Ok(text) = read(&dir, "io.stat") {
            let (bytes, ios) = parse_v2_io(&text);
            stats.blkio.io_service_bytes_recursive = bytes;
            stats.blkio.io_serviced_recursive = ios;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(size) = name.strip_prefix("hugetlb.").and_then(|n| n.strip_suffix(".current"))
            else {
                continue;
            };
            let failcnt = read_keyed(&dir, &format!("hugetlb.{size}.events"))
                .map(|e| fs::keyed(&e, "max"))
                .unwrap_or(0);
            stats.hugetlb.insert(
                size.to_owned(),
                HugetlbStats { usage: read_u64(&dir, &name).unwrap_or(0), max: 0, failcnt },
            );
        }
        Ok(stats)
    }

    fn oom_kills(&self) -> Result<u64> {
        match read_keyed(&self.dir(), "memory.events") {
            Ok(events) => Ok(fs::keyed(&events, "oom_kill")),
            // Without the memory controller there is no OOM killer acting on the cgroup.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(err) => Err(err),
        }
    }

    fn exists(&self) -> bool {
        self.dir().exists()
    }

    fn self_join(&self, sub: Option<&str>) -> Result<crate::SelfJoin> {
        let path = match sub {
            Some(sub) => {
                crate::cgroup_path(Some(&self.path.join(sub.trim_start_matches('/'))), "", false)?
            }
            None => self.path.clone(),
        };
        Ok(crate::SelfJoin { clone_into: Some(join(&self.root, &path)), thread_files: Vec::new() })
    }

    fn mount_sources(&self) -> Vec<(PathBuf, PathBuf)> {
        vec![(PathBuf::new(), self.dir())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, V2Cgroup) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("box");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for file in [
            "memory.max",
            "memory.swap.max",
            "memory.low",
            "cpu.weight",
            "cpu.max",
            "pids.max",
            "io.weight",
            "io.max",
            "cpuset.cpus",
        ] {
            std::fs::write(dir.join(file), "").expect("touch");
        }
        let layout = Arc::new(Layout::V2 { root: root.path().to_path_buf() });
        (root, V2Cgroup::new(layout, Path::new("/box")))
    }

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).expect("resources json")
    }

    #[test]
    fn converts_v1_values_as_runc_does() {
        let (root, cgroup) = fake();
        cgroup
            .apply(&resources(
                r#"{"memory":{"limit":1000000,"swap":3000000,"reservation":-1},
                    "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1"},
                    "pids":{"limit":0},
                    "blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1024}]}}"#,
            ))
            .expect("apply");
        let file =
            |name: &str| std::fs::read_to_string(root.path().join("box").join(name)).expect(name);
        assert_eq!(file("memory.max"), "1000000");
        assert_eq!(file("memory.swap.max"), "2000000");
        assert_eq!(file("memory.low"), "max");
        assert_eq!(file("cpu.weight"), "39");
        assert_eq!(file("cpu.max"), "50000 100000");
        assert_eq!(file("cpuset.cpus"), "0-1");
        assert_eq!(file("pids.max"), "max");
        assert_eq!(file("io.weight"), "default 4950");
        assert_eq!(file("io.max"), "8:0 rbps=1024");
    }

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10_000);
        assert_eq!(swap_to_v2(-1, 100).expect("swap"), Some(-1));
        assert_eq!(swap_to_v2(0, 100).expect("swap"), None);
        assert!(swap_to_v2(50, 100).is_err());
        assert!(swap_to_v2(200, 0).is_err());
    }

    #[test]
    fn unknown_unified_keys_and_v1_only_fields_are_refused() {
        let (_root, cgroup) = fake();
        for json in [
            r#"{"unified":{"../escape":"1"}}"#,
            r#"{"unified":{"memory.nonexistent":"1"}}"#,
            r#"{"memory":{"swappiness":60}}"#,
            r#"{"cpu":{"realtimeRuntime":100}}"#,
        ] {
            assert!(
                matches!(cgroup.apply(&resources(json)), Err(Error::InvalidValue { .. })),
                "{json}"
            );
        }
        let err = cgroup
            .apply(&resources(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#))
            .expect_err("hugetlb");
        assert!(matches!(err, Error::MissingController { controller: "hugetlb", .. }), "{err}");
    }

    #[test]
    fn oom_kills_come_from_memory_events() {
        let (root, cgroup) = fake();
        assert_eq!(cgroup.oom_kills().expect("no memory.events"), 0);
        std::fs::write(
            root.path().join("box/memory.events"),
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .expect("write");
        assert_eq!(cgroup.oom_kills().expect("oom_kills"), 2);
    }
}
