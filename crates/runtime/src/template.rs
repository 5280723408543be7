//! The configuration `spec` writes: a runnable example for a bundle, like `runc spec`'s.

use serde_json::{json, Value};

/// The capabilities Docker-like runtimes leave to a default container's root.
pub const DEFAULT_CAPABILITIES: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// An example `config.json`; `rootless` maps the caller's ids into a user namespace and
/// binds the host's `/sys` instead of mounting sysfs.
pub fn example_spec(rootless: bool, uid: u32, gid: u32) -> Value {
    let capabilities = json!(DEFAULT_CAPABILITIES);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let mut linux = json!({
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    });
    if rootless {
        // No gid 5 (tty) exists in a single-id mapping, and sysfs needs a network namespace
        // owned by the real root.
        mounts[2] = json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]});
        mounts[5] = json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
        namespaces.retain(|ns| ns["type"] != "network");
        namespaces.push(json!({"type": "user"}));
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        if let Some(object) = linux.as_object_mut() {
            object.remove("resources");
        }
    }
    linux["namespaces"] = Value::Array(namespaces);
    json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": capabilities, "effective": capabilities, "permitted": capabilities, "ambient": capabilities},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berth",
        "mounts": mounts,
        "linux": linux
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_plans() {
        for rootless in [false, true] {
            let text = serde_json::to_vec(&example_spec(rootless, 1000, 1000)).expect("json");
            let loaded =
                crate::spec::parse(&text, std::path::Path::new("config.json")).expect("parse");
            assert!(loaded.unknown_fields.is_empty(), "{:?}", loaded.unknown_fields);
            crate::plan::plan_namespaces(&loaded.spec).expect("namespaces");
            crate::plan::plan_mounts(loaded.spec.mounts().as_deref().unwrap_or_default())
                .expect("mounts");
        }
    }
}
