//! The cgroup v2 manager against the host's real cgroup2 tree: the whole tree on a v2 host,
//! the `unified` tree on a hybrid one. Freezing, killing and the eBPF device filter need no
//! controllers, so they are tested for real even where the tree has none. Needs root.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use berth_cgroups::{FreezerState, Layout, Manager};
use berth_sys::nix::unistd::Pid;

fn is_root() -> bool {
    berth_sys::nix::unistd::geteuid().is_root()
}

/// A v2 layout rooted at the host's cgroup2 tree, or `None` (after saying why) to skip.
fn v2_layout() -> Option<Arc<Layout>> {
    if !is_root() {
        if std::env::var_os("BERTH_SKIP_ROOT_TESTS").is_some() {
            return None;
        }
        panic!("this test needs root: run it as root, or set BERTH_SKIP_ROOT_TESTS=1 to skip it");
    }
    let root = match Layout::detect().expect("layout") {
        Layout::V2 { root } => root,
        Layout::V1 { unified: Some(root), .. } => root,
        Layout::V1 { unified: None, .. } => {
            panic!("this host has no cgroup2 tree to test the v2 manager on")
        }
    };
    Some(Arc::new(Layout::V2 { root }))
}

fn cgroup(layout: &Arc<Layout>, name: &str) -> Box<dyn Manager> {
    let path = PathBuf::from(format!("/berth-v2-test-{}-{name}", std::process::id()));
    let manager = berth_cgroups::manager(layout, &path);
    manager.create().expect("create");
    manager
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}

#[test]
fn freeze_thaw_kill_and_destroy() {
    let Some(layout) = v2_layout() else { return };
    let cgroup = cgroup(&layout, "freeze");
    let mut child = Command::new("sleep").arg("1000").spawn().expect("spawn");
    cgroup.add_process(pid(&child)).expect("add");
    assert_eq!(cgroup.pids().expect("pids"), vec![pid(&child)]);
    assert_eq!(cgroup.freezer_state().expect("state"), FreezerState::Thawed);
    cgroup.freeze(FreezerState::Frozen).expect("freeze");
    assert_eq!(cgroup.freezer_state().expect("state"), FreezerState::Frozen);
    cgroup.freeze(FreezerState::Thawed).expect("thaw");
    assert_eq!(cgroup.freezer_state().expect("state"), FreezerState::Thawed);
    // SIGKILL through cgroup.kill, and destroy removes the directory.
    cgroup.freeze(FreezerState::Frozen).expect("freeze");
    cgroup.kill_all(berth_sys::nix::sys::signal::Signal::SIGKILL).expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    cgroup.destroy().expect("destroy");
    assert!(!cgroup.exists());
}

/// Runs a shell in the cgroup that waits for a line, then tries /dev/null and /dev/zero.
fn probe_devices(cgroup: &dyn Manager) -> String {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("read go; cat /dev/null && echo null-ok; head -c1 /dev/zero >/dev/null 2>&1 && echo zero-ok || echo zero-denied")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    cgroup.add_process(pid(&child)).expect("add");
    writeln!(child.stdin.take().expect("stdin"), "go").expect("write");
    let lines: Vec<String> = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map(|l| l.expect("line"))
        .collect();
    child.wait().expect("wait");
    lines.join(" ")
}

#[test]
fn the_ebpf_device_filter_enforces_rules_and_is_replaced_on_update() {
    let Some(layout) = v2_layout() else { return };
    let cgroup = cgroup(&layout, "devices");
    let rules = |json: &str| -> oci_spec::runtime::LinuxResources {
        serde_json::from_str(json).expect("json")
    };
    cgroup
        .apply(&rules(r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#))
        .expect("apply");
    assert_eq!(probe_devices(cgroup.as_ref()), "null-ok zero-denied");
    // An update swaps the program: exactly one stays attached.
    cgroup.apply(&rules(r#"{"devices":[{"allow":true,"access":"rwm"}]}"#)).expect("update");
    assert_eq!(probe_devices(cgroup.as_ref()), "null-ok zero-ok");
    let dir = std::fs::File::open(
        Path::new(match layout.as_ref() {
            Layout::V2 { root } => root,
            Layout::V1 { .. } => unreachable!(),
        })
        .join(cgroup.path().strip_prefix("/").expect("absolute")),
    )
    .expect("open");
    let attached = berth_sys::bpf::attached_cgroup_device_programs(std::os::fd::AsFd::as_fd(&dir))
        .expect("query");
    assert_eq!(attached.len(), 1);
    cgroup.destroy().expect("destroy");
}

#[test]
fn bad_device_rules_are_refused_before_anything_is_attached() {
    let Some(layout) = v2_layout() else { return };
    let cgroup = cgroup(&layout, "baddev");
    let resources: oci_spec::runtime::LinuxResources = serde_json::from_str(
        r#"{"devices":[{"allow":true,"type":"c","major":1,"minor":3,"access":"rwq"}]}"#,
    )
    .expect("json");
    let err = cgroup.apply(&resources).expect_err("bad access");
    assert!(err.to_string().contains("rwq"), "{err}");
    assert_eq!(probe_devices(cgroup.as_ref()), "null-ok zero-ok", "no filter may be left behind");
    cgroup.destroy().expect("destroy");
}
