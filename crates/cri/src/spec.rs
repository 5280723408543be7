//! A container's OCI runtime spec from a CRI request, as containerd's CRI plugin maps it:
//! the image's entrypoint, command, environment and user under the request's overrides;
//! containerd's default mounts, capabilities, masked and read-only paths and seccomp
//! profile; the sandbox's namespaces joined by path; resources and security context from
//! the request. Pure: it reads nothing but the seccomp profile a request names.

use std::path::{Path, PathBuf};

use berth_image::config::RunConfig;
use berth_task::defaults::{ALL_CAPS, DEFAULT_CAPS, DENIED_SYSCALLS, MASKED_PATHS, READONLY_PATHS};
use berth_task::user::Identity;
use k8s_cri::v1::{
    ContainerConfig, LinuxContainerResources, MountPropagation, NamespaceMode, PodSandboxConfig,
    SecurityProfile,
};
use serde_json::{json, Value};

/// Why a request cannot become a spec; the gRPC layer answers InvalidArgument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// Where the sandbox's shared namespaces are pinned (absent: the host's, or the
/// container's own, as the namespace options say).
#[derive(Debug, Clone, Default)]
pub struct SandboxNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The process namespace to join: the pod's (`POD`, held by the sandbox's holder) or
    /// the container's a `TARGET` pid mode names (`kubectl debug --target`).
    pub pid_target: Option<PathBuf>,
}

/// Everything the spec is made of.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub container_id: &'a str,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    pub namespaces: &'a SandboxNamespaces,
    pub image: Option<&'a RunConfig>,
    pub identity: &'a Identity,
    pub rootfs: &'a Path,
    /// The sandbox's `hosts`, `hostname` and `resolv.conf`.
    pub etc_dir: &'a Path,
    pub cgroups_path: &'a str,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entrypoint and command as the CRI says: `command` replaces the image's entrypoint (and
/// then the image's cmd is dropped), `args` replaces the image's cmd.
pub fn process_args(
    config: &ContainerConfig,
    image: Option<&RunConfig>,
) -> Result<Vec<String>, Invalid> {
    let entrypoint = if config.command.is_empty() {
        image.and_then(|i| i.entrypoint.clone()).unwrap_or_default()
    } else {
        config.command.clone()
    };
    let cmd = if !config.args.is_empty() {
        config.args.clone()
    } else if config.command.is_empty() {
        image.and_then(|i| i.cmd.clone()).unwrap_or_default()
    } else {
        Vec::new()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(invalid("no command specified: the request has no command and the image none"));
    }
    Ok(args)
}

/// The image's environment, then the request's (a request's variable replaces the image's).
pub fn environment(
    config: &ContainerConfig,
    image: Option<&RunConfig>,
    hostname: &str,
    home: &str,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    set(DEFAULT_PATH.to_owned());
    set(format!("HOSTNAME={hostname}"));
    for entry in image.and_then(|i| i.env.clone()).unwrap_or_default() {
        set(entry);
    }
    for kv in &config.envs {
        set(format!("{}={}", kv.key, kv.value));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

fn normalize_cap(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn capabilities(config: &ContainerConfig, privileged: bool) -> Result<Vec<String>, Invalid> {
    if privileged {
        return Ok(ALL_CAPS.iter().map(|c| (*c).to_owned()).collect());
    }
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect();
    let Some(caps) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.capabilities.as_ref())
    else {
        return Ok(set);
    };
    for add in &caps.add_capabilities {
        if add.eq_ignore_ascii_case("ALL") {
            set = ALL_CAPS.iter().map(|c| (*c).to_owned()).collect();
            continue;
        }
        let cap = normalize_cap(add);
        if !ALL_CAPS.contains(&cap.as_str()) {
            return Err(invalid(format!("unknown capability {add:?} in add_capabilities")));
        }
        if !set.contains(&cap) {
            set.push(cap);
        }
    }
    for drop in &caps.drop_capabilities {
        if drop.eq_ignore_ascii_case("ALL") {
            set.clear();
            continue;
        }
        let cap = normalize_cap(drop);
        set.retain(|c| *c != cap);
    }
    Ok(set)
}

fn default_seccomp() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    })
}

/// The seccomp profile a security profile asks for. The CRI's default (no profile) is
/// Unconfined, as the kubelet's is for pods that do not ask.
fn seccomp(profile: Option<&SecurityProfile>, privileged: bool) -> Result<Option<Value>, Invalid> {
    use k8s_cri::v1::security_profile::ProfileType;
    let Some(profile) = profile else { return Ok(None) };
    if privileged {
        return Ok(None);
    }
    match ProfileType::try_from(profile.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(Some(default_seccomp())),
        Ok(ProfileType::Unconfined) => Ok(None),
        Ok(ProfileType::Localhost) => {
            let path = &profile.localhost_ref;
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "seccomp localhost profile {path:?} is not an absolute path"
                )));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("cannot read the seccomp profile {path}: {e}")))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| invalid(format!("the seccomp profile {path} is not JSON: {e}")))
        }
        Err(_) => Err(invalid(format!("unknown seccomp profile type {}", profile.profile_type))),
    }
}

/// The OCI `linux.resources` of CRI resources.
pub fn resources(r: &LinuxContainerResources) -> Value {
    let mut out = json!({});
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out["cpu"] = Value::Object(cpu);
    }
    if r.memory_limit_in_bytes > 0 {
        out["memory"] = json!({"limit": r.memory_limit_in_bytes});
        if r.memory_swap_limit_in_bytes > 0 {
            out["memory"]["swap"] = json!(r.memory_swap_limit_in_bytes);
        }
    }
    if !r.hugepage_limits.is_empty() {
        out["hugepageLimits"] = r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
    }
    if !r.unified.is_empty() {
        out["unified"] = json!(r.unified);
    }
    out
}

fn propagation(mode: i32) -> &'static str {
    match MountPropagation::try_from(mode) {
        Ok(MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

/// The spec, as JSON the runtime reads (checked against the OCI types by the caller).
pub fn build(inputs: &Inputs<'_>) -> Result<Value, Invalid> {
    let config = inputs.config;
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let privileged = security.privileged;
    let sandbox_privileged = inputs
        .sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged && !sandbox_privileged {
        return Err(invalid("a privileged container needs a privileged sandbox"));
    }
    let args = process_args(config, inputs.image)?;
    let cwd = if config.working_dir.is_empty() {
        inputs
            .image
            .and_then(|i| i.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    } else {
        config.working_dir.clone()
    };
    if !cwd.starts_with('/') {
        return Err(invalid(format!("working_dir {cwd:?} is not an absolute path")));
    }
    let hostname = inputs.sandbox.hostname.clone();
    let caps = capabilities(config, privileged)?;
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}),
    ];
    let readonly_root = security.readonly_rootfs;
    let mut taken: Vec<String> = Vec::new();
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            return Err(invalid(format!(
                "mount container_path {:?} is not an absolute path",
                m.container_path
            )));
        }
        if m.host_path.is_empty() || !m.host_path.starts_with('/') {
            return Err(invalid(format!(
                "mount host_path {:?} for {} is not an absolute path",
                m.host_path, m.container_path
            )));
        }
        if taken.contains(&m.container_path) {
            return Err(invalid(format!("two mounts at {}", m.container_path)));
        }
        taken.push(m.container_path.clone());
        let mut options = vec!["rbind".to_owned(), propagation(m.propagation).to_owned()];
        options.push(if m.readonly { "ro".into() } else { "rw".into() });
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": options}));
    }
    // The sandbox's files, unless the request mounts its own.
    for name in ["hosts", "hostname", "resolv.conf"] {
        let destination = format!("/etc/{name}");
        if taken.contains(&destination) {
            continue;
        }
        let source = inputs.etc_dir.join(name);
        mounts.push(json!({"destination": destination, "type": "bind", "source": source, "options": ["rbind", "rprivate", if readonly_root { "ro" } else { "rw" }]}));
    }
    let ns = security.namespace_options.clone().unwrap_or_default();
    let mut namespaces = vec![json!({"type": "mount"})];
    match (NamespaceMode::try_from(ns.pid), &inputs.namespaces.pid_target) {
        (Ok(NamespaceMode::Node), _) => {}
        (Ok(NamespaceMode::Target), Some(path)) => {
            namespaces.push(json!({"type": "pid", "path": path}))
        }
        (Ok(NamespaceMode::Target), None) => {
            return Err(invalid(format!(
                "namespace_options.pid is TARGET but target_id {:?} names no running container",
                ns.target_id
            )))
        }
        (Ok(NamespaceMode::Pod) | Err(_), Some(path)) => {
            namespaces.push(json!({"type": "pid", "path": path}))
        }
        _ => namespaces.push(json!({"type": "pid"})),
    }
    let host_network = NamespaceMode::try_from(ns.network) == Ok(NamespaceMode::Node);
    match (&inputs.namespaces.net, host_network) {
        (_, true) => {}
        (Some(path), false) => namespaces.push(json!({"type": "network", "path": path})),
        (None, false) => namespaces.push(json!({"type": "network"})),
    }
    match (&inputs.namespaces.ipc, NamespaceMode::try_from(ns.ipc)) {
        (_, Ok(NamespaceMode::Node)) => {}
        (Some(path), _) => namespaces.push(json!({"type": "ipc", "path": path})),
        (None, _) => namespaces.push(json!({"type": "ipc"})),
    }
    match &inputs.namespaces.uts {
        Some(path) => namespaces.push(json!({"type": "uts", "path": path})),
        None if host_network => {}
        None => namespaces.push(json!({"type": "uts"})),
    }
    let mut resources_json = linux.resources.as_ref().map(resources).unwrap_or_else(|| json!({}));
    resources_json["devices"] = if privileged {
        json!([{"allow": true, "access": "rwm"}])
    } else {
        let allow = |major: i64, minor: Option<i64>| json!({"allow": true, "type": "c", "major": major, "minor": minor.map_or(Value::Null, Value::from), "access": "rwm"});
        json!([
            {"allow": false, "access": "rwm"},
            allow(1, Some(3)), allow(1, Some(5)), allow(1, Some(7)), allow(1, Some(8)), allow(1, Some(9)),
            allow(5, Some(0)), allow(5, Some(2)), allow(136, None),
        ])
    };
    let mut devices = Vec::new();
    for device in &config.devices {
        let node = host_device(&device.host_path)
            .map_err(|e| invalid(format!("device {}: {e}", device.host_path)))?;
        let permissions =
            if device.permissions.is_empty() { "rwm" } else { device.permissions.as_str() };
        if !device.container_path.starts_with("/dev/") {
            return Err(invalid(format!(
                "device container_path {} is outside /dev",
                device.container_path
            )));
        }
        devices.push(json!({"path": device.container_path, "type": node.0, "major": node.1, "minor": node.2, "fileMode": node.3, "uid": 0, "gid": 0}));
        if let Some(rules) = resources_json["devices"].as_array_mut() {
            rules.push(json!({"allow": true, "type": node.0, "major": node.1, "minor": node.2, "access": permissions}));
        }
    }
    let mut sysctl = serde_json::Map::new();
    if let Some(sandbox_linux) = &inputs.sandbox.linux {
        for (k, v) in &sandbox_linux.sysctls {
            sysctl.insert(k.clone(), json!(v));
        }
    }
    let mut linux_json = json!({
        "cgroupsPath": inputs.cgroups_path,
        "namespaces": namespaces,
        "resources": resources_json,
        "devices": devices,
        "rootfsPropagation": "rslave",
    });
    if !sysctl.is_empty() {
        linux_json["sysctl"] = Value::Object(sysctl);
    }
    if !privileged {
        let masked: Vec<String> = if security.masked_paths.is_empty() {
            MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect()
        } else {
            security.masked_paths.clone()
        };
        let readonly: Vec<String> = if security.readonly_paths.is_empty() {
            READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect()
        } else {
            security.readonly_paths.clone()
        };
        linux_json["maskedPaths"] = json!(masked);
        linux_json["readonlyPaths"] = json!(readonly);
    }
    if let Some(profile) = seccomp(security.seccomp.as_ref(), privileged)? {
        linux_json["seccomp"] = profile;
    }
    let identity = inputs.identity;
    let mut user = json!({"uid": identity.uid, "gid": identity.gid});
    let mut additional: Vec<u32> = identity.additional_gids.clone();
    for g in &security.supplemental_groups {
        let g = u32::try_from(*g)
            .map_err(|_| invalid(format!("supplemental group {g} is out of range")))?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    if !additional.is_empty() {
        user["additionalGids"] = json!(additional);
    }
    let env = environment(config, inputs.image, &hostname, &identity.home);
    let mut process = json!({
        "terminal": config.tty,
        "user": user,
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": security.no_new_privs,
    });
    if let Some(caps_req) = &security.capabilities {
        if !caps_req.add_ambient_capabilities.is_empty() {
            let ambient: Vec<String> =
                caps_req.add_ambient_capabilities.iter().map(|c| normalize_cap(c)).collect();
            process["capabilities"]["ambient"] = json!(ambient);
            process["capabilities"]["inheritable"] = json!(ambient);
        }
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in &config.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    annotations.insert("io.kubernetes.cri.container-type".into(), json!("container"));
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        json!(config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()),
    );
    annotations.insert("io.berth.cri.container-id".into(), json!(inputs.container_id));
    Ok(json!({
        "ociVersion": "1.2.0",
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": readonly_root},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux_json,
        "annotations": annotations,
    }))
}

/// A host device node: type, major, minor, mode.
fn host_device(path: &str) -> Result<(&'static str, u64, u64, u32), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err("is not a device".into());
    };
    let rdev = meta.rdev();
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    Ok((kind, major, minor, meta.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        Capability, ContainerMetadata, KeyValue, LinuxContainerConfig,
        LinuxContainerSecurityContext, Mount, NamespaceOption,
    };

    fn identity() -> Identity {
        Identity { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() }
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: "web".into(), attempt: 0 }),
            ..ContainerConfig::default()
        }
    }

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            env: Some(vec!["MODE=prod".into(), "PATH=/opt/bin".into()]),
            ..RunConfig::default()
        }
    }

    fn spec(config: &ContainerConfig) -> Result<Value, Invalid> {
        let sandbox = PodSandboxConfig { hostname: "pod".into(), ..PodSandboxConfig::default() };
        let namespaces = SandboxNamespaces {
            net: Some("/ns/net".into()),
            ipc: Some("/ns/ipc".into()),
            uts: Some("/ns/uts".into()),
            pid_target: None,
        };
        let image = image();
        build(&Inputs {
            container_id: "c1",
            config,
            sandbox: &sandbox,
            namespaces: &namespaces,
            image: Some(&image),
            identity: &identity(),
            rootfs: Path::new("/r"),
            etc_dir: Path::new("/etc-dir"),
            cgroups_path: "/kubepods/pod1/c1",
        })
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd_as_the_cri_says() {
        let image = image();
        let mut c = config();
        assert_eq!(process_args(&c, Some(&image)).unwrap(), ["/entry", "serve"]);
        c.args = vec!["x".into()];
        assert_eq!(process_args(&c, Some(&image)).unwrap(), ["/entry", "x"]);
        c.command = vec!["/bin/sh".into()];
        c.args.clear();
        assert_eq!(process_args(&c, Some(&image)).unwrap(), ["/bin/sh"]);
        assert!(process_args(&config(), None).is_err());
    }

    #[test]
    fn the_spec_joins_the_sandbox_and_takes_the_request() {
        let mut c = config();
        c.envs = vec![KeyValue { key: "MODE".into(), value: "dev".into() }];
        c.mounts = vec![Mount {
            container_path: "/data".into(),
            host_path: "/srv".into(),
            readonly: true,
            ..Mount::default()
        }];
        c.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["CHOWN".into()],
                    ..Default::default()
                }),
                readonly_rootfs: true,
                ..Default::default()
            }),
        });
        let spec = spec(&c).unwrap();
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).unwrap();
        assert_eq!(parsed.hostname().as_deref(), Some("pod"));
        let env = spec["process"]["env"].as_array().unwrap();
        assert!(env.contains(&json!("MODE=dev")) && !env.contains(&json!("MODE=prod")));
        assert!(env.contains(&json!("PATH=/opt/bin")));
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.contains(&json!({"type": "network", "path": "/ns/net"})));
        assert!(namespaces.contains(&json!({"type": "ipc", "path": "/ns/ipc"})));
        assert!(namespaces.contains(&json!({"type": "pid"})));
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        let caps = spec["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")) && !caps.contains(&json!("CAP_CHOWN")));
        assert_eq!(spec["root"]["readonly"], true);
        let data = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap()
            .clone();
        assert_eq!(data["options"], json!(["rbind", "rprivate", "ro"]));
        assert!(spec["linux"].get("seccomp").is_none(), "no profile asked: unconfined");
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/pod1/c1");
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut c = config();
        c.mounts = vec![Mount {
            container_path: "data".into(),
            host_path: "/srv".into(),
            ..Mount::default()
        }];
        assert!(spec(&c).unwrap_err().0.contains("not an absolute path"));
        let mut c = config();
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(spec(&c).unwrap_err().0.contains("privileged sandbox"));
        let mut c = config();
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["FLY".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(spec(&c).unwrap_err().0.contains("FLY"));
    }

    #[test]
    fn host_namespaces_when_asked_and_runtime_default_seccomp() {
        let mut c = config();
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                seccomp: Some(SecurityProfile { profile_type: 0, localhost_ref: String::new() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = spec(&c).unwrap();
        assert!(!spec["linux"]["namespaces"].as_array().unwrap().contains(&json!({"type": "pid"})));
        assert_eq!(spec["linux"]["seccomp"]["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn a_target_pid_mode_joins_the_target_or_is_refused() {
        let mut c = config();
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Target as i32,
                    target_id: "abc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = spec(&c).unwrap_err();
        assert!(err.0.contains("\"abc\" names no running container"), "{}", err.0);
        let sandbox = PodSandboxConfig::default();
        let namespaces =
            SandboxNamespaces { pid_target: Some("/proc/42/ns/pid".into()), ..Default::default() };
        let (identity, image) = (identity(), image());
        let spec = build(&Inputs {
            container_id: "c1",
            config: &c,
            sandbox: &sandbox,
            namespaces: &namespaces,
            image: Some(&image),
            identity: &identity,
            rootfs: Path::new("/r"),
            etc_dir: Path::new("/etc-dir"),
            cgroups_path: "/pod/c1",
        })
        .unwrap();
        let listed = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(listed.contains(&json!({"type": "pid", "path": "/proc/42/ns/pid"})), "{listed:?}");
    }
}
