//! Limits that really bite, observed from inside and outside the container: the OOM killer
//! and `events`, fork past `pids.limit`, CPU throttling by quota.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::time::{Duration, Instant};

use common::{root_or_skip, World};
use serde_json::{json, Value};

fn stats(world: &World, id: &str) -> Value {
    let event: Value =
        serde_json::from_str(world.ok(&["events", "--stats", id]).trim()).expect("event");
    event["data"].clone()
}

#[test]
fn root_a_process_over_its_memory_limit_is_killed_and_events_reports_oom() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&[
        "sh",
        "-c",
        "read go < /tmp/go.fifo; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1000",
    ]);
    std::process::Command::new("mkfifo")
        .arg(world.rootfs().join("tmp/go.fifo"))
        .status()
        .expect("mkfifo");
    world.edit(|config| {
        config["linux"]["resources"]["memory"] = json!({"limit": 16 << 20, "swap": 16 << 20})
    });
    let id = world.id("oom");
    world.ok(&["run", "-d", &id]);
    // Watch first, then let the container allocate.
    let log = world.dir.path().join("events.log");
    let mut events = world
        .command()
        .args(["events", "--interval", "1s", &id])
        .stdout(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("events");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(world.rootfs().join("tmp/go.fifo"), "go\n").expect("go");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_oom = false;
    while Instant::now() < deadline && !saw_oom {
        saw_oom = std::fs::read_to_string(&log).unwrap_or_default().lines().any(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|event| event["type"] == "oom" && event["id"] == id.as_str())
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_oom, "no oom event: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let data = stats(&world, &id);
    assert!(data["memory"]["oom_kill"].as_u64().unwrap_or(0) >= 1, "{data}");
    // The peak reached the limit: the kernel held the cgroup there until it killed.
    assert_eq!(data["memory"]["usage"]["max"].as_u64(), Some(16 << 20), "{data}");
    assert_eq!(data["memory"]["usage"]["limit"].as_u64(), Some(16 << 20));
    // The container lives on (pid 1 was not the one killed); events ends when it stops.
    assert_eq!(world.status(&id), "running");
    world.ok(&["delete", "-f", &id]);
    let status = events.wait().expect("events");
    assert!(status.success(), "events must end quietly when the container goes");
}

#[test]
fn root_fork_past_the_pids_limit_fails() {
    if !root_or_skip() {
        return;
    }
    // The shell gives up at the first fork that fails; until then it reports each one.
    let world = World::new(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 8 ]; do sleep 100 & i=$((i+1)); echo forked $i; done",
    ]);
    world.edit(|config| config["linux"]["resources"]["pids"] = json!({"limit": 4}));
    let id = world.id("pids");
    let output = world.runc(&["run", &id]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("can't fork") || text.contains("Resource temporarily unavailable"),
        "{text}"
    );
    // pid 1 is the shell: three more processes fit under the limit of four, the fourth does not.
    assert!(text.contains("forked 3") && !text.contains("forked 4"), "{text}");
    assert!(!output.status.success());
    world.assert_no_leftovers(&id);
}

#[test]
fn root_cpu_quota_throttles() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sh", "-c", "while :; do :; done"]);
    world.edit(|config| {
        config["linux"]["resources"]["cpu"] =
            json!({"quota": 10000, "period": 100000, "shares": 256})
    });
    let id = world.id("cpu");
    world.ok(&["run", "-d", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut throttled = 0;
    while Instant::now() < deadline && throttled == 0 {
        std::thread::sleep(Duration::from_millis(200));
        throttled =
            stats(&world, &id)["cpu"]["throttling"]["throttledPeriods"].as_u64().unwrap_or(0);
    }
    assert!(throttled > 0, "a busy loop under a 10% quota must be throttled");
    let quota = world.ok(&[
        "exec",
        &id,
        "cat",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "/sys/fs/cgroup/cpu/cpu.shares",
    ]);
    assert_eq!(quota.split_whitespace().collect::<Vec<_>>(), vec!["10000", "256"]);
    // Lifting the quota live.
    world.ok(&["update", "--cpu-quota", "-1", &id]);
    assert_eq!(world.ok(&["exec", &id, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"]).trim(), "-1");
    world.ok(&["delete", "-f", &id]);
    world.assert_no_leftovers(&id);
}
