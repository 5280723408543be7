//! The OCI runtime configuration of one RUN step: Docker's default confinement
//! (capabilities, seccomp, masked paths), the step's mounts, and the network it may use.
//! Pure.

use std::path::{Path, PathBuf};

use berth_task::defaults::{DEFAULT_CAPS, DENIED_SYSCALLS, MASKED_PATHS, READONLY_PATHS};
use serde_json::{json, Value};

/// The network a RUN step has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network (standalone BuildKit's default, and what offline builds need
    /// to reach a local registry or proxy).
    #[default]
    Host,
    /// Only a loopback device.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Network, String> {
        match text {
            "default" | "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(format!("unknown network {other:?}: use default, host or none")),
        }
    }
}

/// A mount a RUN step asks for with `--mount` (already resolved to host paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMount {
    Bind { source: PathBuf, target: String, readonly: bool },
    Tmpfs { target: String },
}

#[derive(Debug, Clone)]
pub struct RunStep<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rootfs: &'a Path,
    /// A directory holding the step's `hosts`, `hostname` and `resolv.conf`.
    pub etc_dir: &'a Path,
    pub network: Network,
    pub mounts: Vec<StepMount>,
    pub cgroup: String,
}

/// The `config.json` of a RUN step.
pub fn run_spec(step: &RunStep<'_>) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}),
    ];
    // Read-only copies: a step that writes /etc/hosts must not reach the host's file, and
    // none of them may end up in a layer.
    for name in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({"destination": format!("/etc/{name}"), "type": "bind", "source": step.etc_dir.join(name), "options": ["rbind", "rprivate", "ro"]}));
    }
    for mount in &step.mounts {
        mounts.push(match mount {
            StepMount::Bind { source, target, readonly } => json!({
                "destination": target, "type": "bind", "source": source,
                "options": ["rbind", "rprivate", if *readonly { "ro" } else { "rw" }],
            }),
            StepMount::Tmpfs { target } => json!({
                "destination": target, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            }),
        });
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if step.network == Network::None {
        namespaces.push(json!({"type": "network"}));
    }
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mut user = json!({"uid": step.uid, "gid": step.gid});
    if !step.additional_gids.is_empty() {
        user["additionalGids"] = json!(step.additional_gids);
    }
    json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": false,
            "user": user,
            "args": step.args,
            "env": step.env,
            "cwd": step.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
        },
        "root": {"path": step.rootfs, "readonly": false},
        "hostname": "berth-build",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": step.cgroup,
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "rootfsPropagation": "rprivate",
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(network: Network) -> Value {
        run_spec(&RunStep {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/src".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            rootfs: Path::new("/b/merged"),
            etc_dir: Path::new("/b/etc"),
            network,
            mounts: vec![StepMount::Tmpfs { target: "/tmp/cache".into() }],
            cgroup: "/berth-build/x".into(),
        })
    }

    #[test]
    fn a_step_is_confined_as_a_container() {
        let spec = step(Network::None);
        assert_eq!(spec["process"]["cwd"], "/src");
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        let namespaces: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .map(|n| n["type"].as_str().unwrap_or(""))
            .collect();
        assert!(namespaces.contains(&"network"));
        assert!(!spec["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("caps")
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));
        let mounts = spec["mounts"].as_array().expect("mounts");
        let hosts = mounts.iter().find(|m| m["destination"] == "/etc/hosts").expect("hosts");
        assert!(hosts["options"].as_array().expect("options").iter().any(|o| o == "ro"));
        assert!(mounts.iter().any(|m| m["destination"] == "/tmp/cache"));
        let host = step(Network::Host);
        assert!(!host["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .any(|n| n["type"] == "network"));
    }
}
