//! Pods and containers on this machine: the CRI's verbs as blocking calls over state on
//! disk. A sandbox is a set of pinned namespaces (network, IPC, UTS) and the files of its
//! /etc, with the pod network made by the CNI configuration list; it has no process. A
//! container is an overlay rootfs, an OCI bundle joining the sandbox's namespaces, and a
//! `berth-task` supervisor. Every record is a file written atomically, so a restarted
//! server finds everything as it was; container states are read from the supervisor's
//! files, never kept only in memory.
//!
//! ```text
//! <root>/cri/sandboxes/<id>/   sandbox.json, ns/{net,ipc,uts}, hosts, hostname, resolv.conf
//! <root>/cri/containers/<id>/  container.json, config.json, rootfs/ upper/ work/ (overlay),
//!                              task.json shim.pid exit.json task.sock (berth-task)
//! <root>/cri/runtime/          berth-runtime's state
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_image::ImageStore;
use berth_runtime::Runtime;
use berth_sys::nix::mount::{mount, umount2, MntFlags, MsFlags};
use berth_sys::nix::sys::signal::Signal;
use berth_task::shim::{self, TaskSpec};
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tonic::{Code, Status};

use crate::spec::{self, SandboxNamespaces};

pub type Result<T> = std::result::Result<T, Status>;

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Status {
    move |err| Status::internal(format!("{context}: {err}"))
}

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// berth's root: images are shared with `berth pull`, CRI state is under `cri/`.
    pub root: PathBuf,
    /// Where the CNI configuration lists are (`/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// berth's binary, for the task supervisors and `exec`.
    pub exe: PathBuf,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `registries.yaml` (mirrors, per-host TLS and credentials), read at each pull.
    pub registries_config: Option<PathBuf>,
    /// A CNI configuration list with `{{.PodCIDR}}` where the node's pod range goes, as
    /// containerd's `conf_template`: written into `cni_conf_dir` as `10-berth.conflist`
    /// when the kubelet's UpdateRuntimeConfig gives the range. `None`: the directory's
    /// configuration is someone else's.
    pub cni_conf_template: Option<String>,
}

/// The file a CNI template is written to.
pub const TEMPLATED_CONFLIST: &str = "10-berth.conflist";

/// A pod sandbox as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub name: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
    pub ready: bool,
    pub ip: String,
    pub additional_ips: Vec<String>,
    pub cni_result: Option<Value>,
    pub network: Option<String>,
    pub network_torn_down: bool,
    pub namespaces: Namespaces,
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The process holding a pod-wide PID namespace (`NamespaceMode::POD`).
    #[serde(default)]
    pub pid: Option<crate::pidns::Holder>,
    /// That namespace, pinned beside the others (containers join this, never a pid's).
    #[serde(default)]
    pub pid_ns: Option<PathBuf>,
}

/// A container as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image as the request named it.
    pub image: String,
    pub image_id: String,
    pub image_ref: String,
    pub created_at: i64,
    pub started_at: i64,
    pub log_path: String,
    pub cgroups_path: String,
    pub pid: i32,
}

/// What a container is doing now, read from its supervisor's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub state: cri::ContainerState,
    pub exit: Option<shim::Exit>,
    pub reason: String,
    pub message: String,
}

/// The node: records in memory (loaded from disk at start), written through on change.
#[derive(Debug)]
pub struct Node {
    config: Config,
    runtime: Runtime,
    images: ImageStore,
    sandboxes: Mutex<BTreeMap<String, SandboxRecord>>,
    containers: Mutex<BTreeMap<String, ContainerRecord>>,
    /// Names taken (sandbox and container names share nothing: two maps).
    events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
    /// One lock per sandbox for its lifecycle verbs.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Node {
    pub fn open(config: Config) -> std::result::Result<Node, String> {
        let base = config.root.join("cri");
        for dir in ["sandboxes", "containers", "runtime"] {
            let path = base.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("create {}: {e}", path.display()))?;
        }
        let images = ImageStore::open(&config.root).map_err(|e| e.to_string())?;
        let runtime = Runtime::new(base.join("runtime"), false);
        let mut sandboxes = BTreeMap::new();
        // A sandbox whose namespaces are no longer pinned (the machine rebooted, or
        // someone unmounted them) is not ready, whatever its record says: the kubelet
        // then makes a new one, as the pod's restart policy says.
        let mounted: std::collections::HashSet<PathBuf> =
            berth_sys::mount::mount_points().into_iter().collect();
        for (id, mut record) in load_all::<SandboxRecord>(&base.join("sandboxes"), "sandbox.json") {
            let ns = &record.namespaces;
            let lost = [&ns.net, &ns.ipc, &ns.uts, &ns.pid_ns].into_iter().flatten().any(|pin| {
                !mounted.contains(&std::fs::canonicalize(pin).unwrap_or_else(|_| pin.clone()))
            });
            if record.ready && lost {
                tracing::warn!(sandbox = %id, "its namespaces are gone (a reboot?): not ready");
                record.ready = false;
                let path = base.join("sandboxes").join(&id).join("sandbox.json");
                if let Err(err) = write_json(&path, &record) {
                    tracing::warn!("sandbox {id}: {}", err.message());
                }
            }
            sandboxes.insert(id, record);
        }
        let mut containers = BTreeMap::new();
        for (id, record) in load_all::<ContainerRecord>(&base.join("containers"), "container.json")
        {
            containers.insert(id, record);
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(Node {
            config,
            runtime,
            images,
            sandboxes: Mutex::new(sandboxes),
            containers: Mutex::new(containers),
            events,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn events(&self) -> tokio::sync::broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    fn base(&self) -> PathBuf {
        self.config.root.join("cri")
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.base().join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.base().join("containers").join(id)
    }

    fn lock_of(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    fn save_sandbox(&self, record: &SandboxRecord) -> Result<()> {
        let path = self.sandbox_dir(&record.id).join("sandbox.json");
        write_json(&path, record)?;
        self.sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    fn save_container(&self, record: &ContainerRecord) -> Result<()> {
        let path = self.container_dir(&record.id).join("container.json");
        write_json(&path, record)?;
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// A sandbox by full id or unique prefix.
    pub fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        let sandboxes = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        find_by_prefix(&sandboxes, id).ok_or_else(|| {
            Status::not_found(format!("an error occurred when try to find sandbox: not found: sandbox {id:?} does not exist"))
        })
    }

    /// A container by full id or unique prefix.
    pub fn container(&self, id: &str) -> Result<ContainerRecord> {
        let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        find_by_prefix(&containers, id).ok_or_else(|| {
            Status::not_found(format!(
                "an error occurred when try to find container {id:?}: not found"
            ))
        })
    }

    // ----- sandboxes -----

    pub fn run_pod_sandbox(&self, request: cri::RunPodSandboxRequest) -> Result<String> {
        let config =
            request.config.ok_or_else(|| Status::invalid_argument("sandbox config is required"))?;
        let metadata = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("sandbox config must include metadata"))?;
        if metadata.name.is_empty() || metadata.namespace.is_empty() || metadata.uid.is_empty() {
            return Err(Status::invalid_argument(
                "sandbox metadata.name, .namespace and .uid are required",
            ));
        }
        if !request.runtime_handler.is_empty()
            && request.runtime_handler != "berth"
            && request.runtime_handler != "runc"
        {
            return Err(Status::not_found(format!(
                "no runtime for {:?} is configured",
                request.runtime_handler
            )));
        }
        let name = format!(
            "{}_{}_{}_{}",
            metadata.name, metadata.namespace, metadata.uid, metadata.attempt
        );
        let id = random_id()?;
        {
            let sandboxes = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = sandboxes.values().find(|s| s.name == name) {
                return Err(Status::unknown(format!(
                    "failed to reserve sandbox name {name:?}: name is reserved for {:?}",
                    other.id
                )));
            }
        }
        let dir = self.sandbox_dir(&id);
        let linux = config.linux.clone().unwrap_or_default();
        let ns_options = linux
            .security_context
            .as_ref()
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_network =
            cri::NamespaceMode::try_from(ns_options.network) == Ok(cri::NamespaceMode::Node);
        let host_ipc = cri::NamespaceMode::try_from(ns_options.ipc) == Ok(cri::NamespaceMode::Node);
        let mut record = SandboxRecord {
            id: id.clone(),
            name,
            config: config.clone(),
            runtime_handler: request.runtime_handler.clone(),
            created_at: berth_task::now_nanos(),
            ready: false,
            ip: String::new(),
            additional_ips: Vec::new(),
            cni_result: None,
            network: None,
            network_torn_down: false,
            namespaces: Namespaces::default(),
            cgroup_parent: linux.cgroup_parent.clone(),
        };
        let made = (|| -> Result<()> {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
            let mut kinds = Vec::new();
            if !host_network {
                kinds.push(berth_net::netns::Kind::Net);
                kinds.push(berth_net::netns::Kind::Uts);
            }
            if !host_ipc {
                kinds.push(berth_net::netns::Kind::Ipc);
            }
            let hostname = if config.hostname.is_empty() {
                metadata.name.clone()
            } else {
                config.hostname.clone()
            };
            let paths = berth_net::netns::pin(
                &dir.join("ns"),
                &berth_net::netns::Request { kinds: &kinds, hostname: Some(&hostname) },
            )
            .map_err(|e| {
                Status::internal(format!("failed to create the sandbox's namespaces: {e}"))
            })?;
            for (kind, path) in kinds.iter().zip(paths) {
                match kind {
                    berth_net::netns::Kind::Net => record.namespaces.net = Some(path),
                    berth_net::netns::Kind::Ipc => record.namespaces.ipc = Some(path),
                    berth_net::netns::Kind::Uts => record.namespaces.uts = Some(path),
                }
            }
            let cgroup = self.make_sandbox_cgroup(&record, &linux)?;
            if cri::NamespaceMode::try_from(ns_options.pid) == Ok(cri::NamespaceMode::Pod) {
                let join: Vec<PathBuf> =
                    [&record.namespaces.net, &record.namespaces.ipc, &record.namespaces.uts]
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                let holder = crate::pidns::Holder::start(&self.config.exe, &record.id, &join)
                    .map_err(|e| {
                        Status::internal(format!(
                            "failed to create the sandbox's pid namespace: {e}"
                        ))
                    })?;
                record.namespaces.pid = Some(holder.clone());
                let pinned = dir.join("ns/pid");
                berth_net::netns::pin_existing(
                    Path::new(&format!("/proc/{}/ns/pid", holder.pid)),
                    &pinned,
                )
                .map_err(|e| {
                    Status::internal(format!("failed to pin the sandbox's pid namespace: {e}"))
                })?;
                record.namespaces.pid_ns = Some(pinned);
                if let Some(cgroup) = &cgroup {
                    // In a leaf of the pod's cgroup, as the pause container is: cgroup v2
                    // gives no controllers to children of a cgroup that holds a process.
                    let layout = berth_cgroups::Layout::detect()
                        .map_err(|e| Status::internal(format!("the cgroup layout: {e}")))?;
                    let leaf = berth_cgroups::manager(
                        &Arc::new(layout),
                        &cgroup.path().join(PIDNS_CGROUP),
                    );
                    leaf.create().map_err(|e| {
                        Status::internal(format!("failed to create the holder's cgroup: {e}"))
                    })?;
                    let _ = leaf.add_process(berth_sys::nix::unistd::Pid::from_raw(holder.pid));
                }
            }
            // Saved before the network, so that a crash part-way leaves a record to clean.
            self.save_sandbox(&record)?;
            if !host_network {
                self.setup_network(&mut record, &metadata)?;
            }
            write_etc_files(&dir, &config, &hostname, &record.ip, host_network)?;
            record.ready = true;
            self.save_sandbox(&record)
        })();
        if let Err(err) = made {
            self.teardown_sandbox(&record);
            remove_cgroup_parent(&self.cgroup_parent(&record));
            let _ = std::fs::remove_dir_all(&dir);
            self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(err);
        }
        Ok(id)
    }

    fn setup_network(
        &self,
        record: &mut SandboxRecord,
        metadata: &cri::PodSandboxMetadata,
    ) -> Result<()> {
        let Some(netns) = record.namespaces.net.clone() else { return Ok(()) };
        let list = berth_net::cni::ConfList::first_in(&self.config.cni_conf_dir)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "cni config not initialized: no network configuration in {}",
                    self.config.cni_conf_dir.display()
                ))
            })?;
        let args = cni_args(&record.id, metadata);
        let runtime_config = runtime_config(&record.config);
        // The loopback is up already: the namespace was made with it (no loopback plugin).
        let who = berth_net::cni::Attachment {
            container_id: &record.id,
            netns: &netns,
            ifname: "eth0",
            args: &args,
            runtime_config: &runtime_config,
        };
        let result = list.add(&who).map_err(|e| {
            Status::internal(format!(
                "failed to set up the network of sandbox {:?}: {e}",
                record.id
            ))
        })?;
        let mut ips = berth_net::cni::result_ips(&result);
        record.network = Some(list.source.to_string_lossy().into_owned());
        record.ip = if ips.is_empty() { String::new() } else { ips.remove(0) };
        record.additional_ips = ips;
        record.cni_result = Some(result);
        self.save_sandbox(record)
    }

    /// CNI DEL (once), then the namespaces. Safe to call again.
    fn teardown_sandbox(&self, record: &SandboxRecord) {
        if let (Some(netns), Some(result), false) =
            (&record.namespaces.net, &record.cni_result, record.network_torn_down)
        {
            if let Ok(Some(list)) = berth_net::cni::ConfList::first_in(&self.config.cni_conf_dir) {
                let metadata = record.config.metadata.clone().unwrap_or_default();
                let args = cni_args(&record.id, &metadata);
                let runtime_config = runtime_config(&record.config);
                let netns = still_pinned(netns);
                let who = berth_net::cni::Attachment {
                    container_id: &record.id,
                    netns: &netns,
                    ifname: "eth0",
                    args: &args,
                    runtime_config: &runtime_config,
                };
                if let Err(err) = list.del(&who, Some(result)) {
                    tracing::warn!(sandbox = %record.id, "CNI DEL: {err}");
                }
            }
        }
        for path in [&record.namespaces.net, &record.namespaces.ipc, &record.namespaces.uts]
            .into_iter()
            .flatten()
        {
            berth_net::netns::unpin(path);
        }
        if let Some(holder) = &record.namespaces.pid {
            holder.stop();
        }
        if let Some(path) = &record.namespaces.pid_ns {
            berth_net::netns::unpin(path);
        }
    }

    /// Makes the sandbox's cgroup, which its containers' go under, limited to the pod's
    /// `resources` plus its `overhead` when the request sizes the pod (the kubelet sizes its
    /// pod cgroups so). None for a systemd slice, which is not ours to make.
    fn make_sandbox_cgroup(
        &self,
        record: &SandboxRecord,
        linux: &cri::LinuxPodSandboxConfig,
    ) -> Result<Option<Box<dyn berth_cgroups::Manager>>> {
        let parent = self.cgroup_parent(record);
        if parent.ends_with(".slice") || parent.trim_matches('/').is_empty() {
            return Ok(None);
        }
        let layout = berth_cgroups::Layout::detect()
            .map_err(|e| Status::internal(format!("cannot read the cgroup layout: {e}")))?;
        let cgroup = berth_cgroups::manager(&Arc::new(layout), Path::new(&parent));
        cgroup.create().map_err(|e| {
            Status::internal(format!("failed to create the sandbox cgroup {parent}: {e}"))
        })?;
        if let Some(resources) = pod_resources(linux) {
            let typed: oci_spec::runtime::LinuxResources =
                serde_json::from_value(spec::resources(&resources))
                    .map_err(|e| Status::invalid_argument(format!("sandbox resources: {e}")))?;
            cgroup.apply(&typed).map_err(|e| {
                Status::internal(format!("failed to limit the sandbox cgroup {parent}: {e}"))
            })?;
        }
        Ok(Some(cgroup))
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut record = self.sandbox(id)?;
        let lock = self.lock_of(&record.id);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        for container in self.containers_of(&record.id) {
            self.stop_container(&container.id, 0)?;
        }
        if let Some(holder) = &record.namespaces.pid {
            holder.stop();
        }
        if !record.network_torn_down {
            // The namespaces stay pinned until the sandbox is removed (CRI: resources are
            // released on stop, but a status must still be answerable); the network goes now.
            if let (Some(netns), Some(result)) = (&record.namespaces.net, &record.cni_result) {
                if let Ok(Some(list)) =
                    berth_net::cni::ConfList::first_in(&self.config.cni_conf_dir)
                {
                    let metadata = record.config.metadata.clone().unwrap_or_default();
                    let args = cni_args(&record.id, &metadata);
                    let runtime_config = runtime_config(&record.config);
                    let netns = still_pinned(netns);
                    let who = berth_net::cni::Attachment {
                        container_id: &record.id,
                        netns: &netns,
                        ifname: "eth0",
                        args: &args,
                        runtime_config: &runtime_config,
                    };
                    list.del(&who, Some(result)).map_err(|e| {
                        Status::internal(format!(
                            "failed to tear down the network of sandbox {:?}: {e}",
                            record.id
                        ))
                    })?;
                }
            }
            record.network_torn_down = true;
        }
        record.ready = false;
        self.save_sandbox(&record)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let record = match self.sandbox(id) {
            Ok(record) => record,
            Err(status) if status.code() == Code::NotFound => return Ok(()),
            Err(status) => return Err(status),
        };
        let lock = self.lock_of(&record.id);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        for container in self.containers_of(&record.id) {
            self.remove_container(&container.id)?;
        }
        self.teardown_sandbox(&record);
        remove_cgroup_parent(&self.cgroup_parent(&record));
        let dir = self.sandbox_dir(&record.id);
        std::fs::remove_dir_all(&dir)
            .or_else(ignore_missing)
            .map_err(io_err(format!("remove {}", dir.display())))?;
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.id);
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.id);
        Ok(())
    }

    /// The cgroup its containers go under: the request's, or one of berth's per sandbox.
    fn cgroup_parent(&self, sandbox: &SandboxRecord) -> String {
        if sandbox.cgroup_parent.is_empty() {
            format!("/berth-cri/{}", sandbox.id)
        } else {
            sandbox.cgroup_parent.clone()
        }
    }

    fn containers_of(&self, sandbox: &str) -> Vec<ContainerRecord> {
        let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        containers.values().filter(|c| c.sandbox_id == sandbox).cloned().collect()
    }

    pub fn sandbox_status(&self, record: &SandboxRecord) -> cri::PodSandboxStatus {
        let ns = record
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        cri::PodSandboxStatus {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            state: if record.ready {
                cri::PodSandboxState::SandboxReady
            } else {
                cri::PodSandboxState::SandboxNotready
            } as i32,
            created_at: record.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: record.ip.clone(),
                additional_ips: record
                    .additional_ips
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: ns }),
            }),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
            runtime_handler: record.runtime_handler.clone(),
        }
    }

    pub fn list_sandboxes(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let sandboxes = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        sandboxes
            .values()
            .filter(|s| {
                let Some(f) = filter else { return true };
                (f.id.is_empty() || s.id.starts_with(&f.id))
                    && f.state.as_ref().is_none_or(|st| {
                        (st.state == cri::PodSandboxState::SandboxReady as i32) == s.ready
                    })
                    && labels_match(&s.config.labels, &f.label_selector)
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: if s.ready {
                    cri::PodSandboxState::SandboxReady
                } else {
                    cri::PodSandboxState::SandboxNotready
                } as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect()
    }

    // ----- containers -----

    pub fn create_container(&self, request: cri::CreateContainerRequest) -> Result<String> {
        let sandbox = self.sandbox(&request.pod_sandbox_id)?;
        if !sandbox.ready {
            return Err(Status::failed_precondition(format!(
                "sandbox {:?} is not ready: start a new one",
                sandbox.id
            )));
        }
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let metadata = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("container config must include metadata"))?;
        if metadata.name.is_empty() {
            return Err(Status::invalid_argument("container metadata.name is required"));
        }
        let pod = sandbox.config.metadata.clone().unwrap_or_default();
        let name = format!(
            "{}_{}_{}_{}_{}",
            metadata.name, pod.name, pod.namespace, pod.uid, metadata.attempt
        );
        {
            let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = containers.values().find(|c| c.name == name) {
                return Err(Status::unknown(format!(
                    "failed to reserve container name {name:?}: name is reserved for {:?}",
                    other.id
                )));
            }
        }
        let wanted = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if wanted.is_empty() {
            return Err(Status::invalid_argument("container config must name an image"));
        }
        let image = self.images.resolve(&wanted).map_err(|e| match e {
            berth_image::Error::ImageNotFound { .. } => Status::not_found(format!(
                "failed to get image {wanted:?}: not found; pull it first"
            )),
            other => Status::internal(other.to_string()),
        })?;
        let lowers = self.images.lower_dirs(&image).map_err(|e| Status::internal(e.to_string()))?;
        let run_config = image.config.config.clone();
        let security =
            config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
        let user_spec = match (&security.run_as_user, security.run_as_username.as_str()) {
            (Some(uid), _) => {
                let gid = security
                    .run_as_group
                    .as_ref()
                    .map(|g| format!(":{}", g.value))
                    .unwrap_or_default();
                format!("{}{gid}", uid.value)
            }
            (None, name) if !name.is_empty() => name.to_owned(),
            _ => run_config.as_ref().and_then(|c| c.user.clone()).unwrap_or_default(),
        };
        let user_spec = if user_spec.is_empty() { "0".to_owned() } else { user_spec };
        let passwd = berth_task::user::read_from_layers(&lowers, Path::new("/etc/passwd"));
        let group = berth_task::user::read_from_layers(&lowers, Path::new("/etc/group"));
        let identity = berth_task::user::resolve(&user_spec, passwd.as_deref(), group.as_deref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = random_id()?;
        let dir = self.container_dir(&id);
        let log_path = if sandbox.config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&sandbox.config.log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        let parent = self.cgroup_parent(&sandbox);
        let cgroups_path = format!("{}/{}", parent.trim_end_matches('/'), id);
        let record = ContainerRecord {
            id: id.clone(),
            name,
            sandbox_id: sandbox.id.clone(),
            config: config.clone(),
            image: wanted.clone(),
            image_id: image.record.id.to_string(),
            image_ref: image.record.id.to_string(),
            created_at: berth_task::now_nanos(),
            started_at: 0,
            log_path: log_path.clone(),
            cgroups_path: cgroups_path.clone(),
            pid: 0,
        };
        // `kubectl debug --target`: the target's process namespace, while it runs.
        let options = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let pid_target = match options {
            Some(o) if o.pid == cri::NamespaceMode::Target as i32 => {
                let target = self.running_container(&o.target_id)?;
                if target.sandbox_id != sandbox.id {
                    return Err(Status::invalid_argument(format!(
                        "the target container {:?} is in another pod sandbox",
                        o.target_id
                    )));
                }
                Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)))
            }
            // POD is the CRI's zero value, so a container that says nothing shares the
            // pod's process namespace, as under containerd (where the pause container
            // holds it); the kubelet says CONTAINER unless shareProcessNamespace is set.
            Some(o) if o.pid != cri::NamespaceMode::Pod as i32 => None,
            _ => match (&sandbox.namespaces.pid, &sandbox.namespaces.pid_ns) {
                (Some(holder), Some(pinned)) => {
                    if !holder.alive() {
                        return Err(Status::failed_precondition(format!(
                                "the process namespace of sandbox {:?} is gone (its holder {} ended): stop and remove the sandbox",
                                sandbox.id, holder.pid
                            )));
                    }
                    Some(pinned.clone())
                }
                _ => None,
            },
        };
        let made = (|| -> Result<i32> {
            let spec = spec::build(&spec::Inputs {
                container_id: &id,
                config: &config,
                sandbox: &sandbox.config,
                namespaces: &SandboxNamespaces {
                    net: sandbox.namespaces.net.clone(),
                    ipc: sandbox.namespaces.ipc.clone(),
                    uts: sandbox.namespaces.uts.clone(),
                    pid_target: pid_target.clone(),
                },
                image: run_config.as_ref(),
                identity: &identity,
                rootfs: &dir.join("rootfs"),
                etc_dir: &self.sandbox_dir(&sandbox.id),
                cgroups_path: &cgroups_path,
            })
            .map_err(|e| Status::invalid_argument(e.0))?;
            // Checked against the OCI types before anything is made.
            serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(|e| {
                Status::invalid_argument(format!("the container's spec is not valid: {e}"))
            })?;
            for m in &config.mounts {
                let host = Path::new(&m.host_path);
                if !host.exists() {
                    // As containerd does: a missing host path becomes a directory.
                    std::fs::create_dir_all(host)
                        .map_err(io_err(format!("create the mount source {}", host.display())))?;
                }
                if host.starts_with(&self.config.root) {
                    return Err(Status::invalid_argument(format!(
                        "mount source {} is inside berth's state directory {}; mount something else",
                        host.display(),
                        self.config.root.display()
                    )));
                }
            }
            for sub in ["rootfs", "upper", "work"] {
                let path = dir.join(sub);
                std::fs::create_dir_all(&path)
                    .map_err(io_err(format!("create {}", path.display())))?;
            }
            self.save_container(&record)?;
            self.images
                .hold(&format!("cri:{id}"), &image.record.id)
                .map_err(|e| Status::internal(e.to_string()))?;
            mount_overlay(&dir, &lowers)?;
            let data =
                serde_json::to_vec_pretty(&spec).map_err(|e| Status::internal(e.to_string()))?;
            berth_stdx::fs::write_atomic(&dir.join("config.json"), &data, 0o600)
                .map_err(io_err(format!("write {}", dir.join("config.json").display())))?;
            if !log_path.is_empty() {
                if let Some(parent) = Path::new(&log_path).parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(io_err(format!("create {}", parent.display())))?;
                }
            }
            let task = TaskSpec {
                id: id.clone(),
                runtime_root: self.base().join("runtime"),
                bundle: dir.clone(),
                log_path: (!log_path.is_empty()).then(|| PathBuf::from(&log_path)),
                tty: config.tty,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
                log_max_size: 0,
                log_max_files: 1,
            };
            shim::spawn(&self.config.exe, &dir, &task)
                .map_err(|e| Status::internal(format!("failed to create the container: {e}")))
        })();
        match made {
            Ok(pid) => {
                let mut record = record;
                record.pid = pid;
                self.save_container(&record)?;
                self.event(&record, cri::ContainerEventType::ContainerCreatedEvent);
                Ok(id)
            }
            Err(err) => {
                self.destroy_container(&record);
                Err(err)
            }
        }
    }

    /// Removes everything a container has: runtime state, rootfs mount, directory, name.
    fn destroy_container(&self, record: &ContainerRecord) {
        if self.runtime.state(&record.id).is_ok() {
            if let Err(err) = self.runtime.delete(&record.id, true) {
                tracing::warn!(container = %record.id, "cannot delete the runtime state: {err}");
            }
        }
        let dir = self.container_dir(&record.id);
        unmount_all(&dir.join("rootfs"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = self.images.release(&format!("cri:{}", record.id));
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.id);
    }

    pub fn observe(&self, record: &ContainerRecord) -> Observed {
        let dir = self.container_dir(&record.id);
        if let Some(exit) = shim::exit(&dir) {
            let reason = if exit.oom_killed {
                "OOMKilled"
            } else if exit.code == 0 {
                "Completed"
            } else {
                "Error"
            };
            return Observed {
                state: cri::ContainerState::ContainerExited,
                exit: Some(exit),
                reason: reason.into(),
                message: String::new(),
            };
        }
        let alive = shim::supervisor(&dir).is_some();
        if alive {
            let state = if record.started_at == 0 {
                cri::ContainerState::ContainerCreated
            } else {
                cri::ContainerState::ContainerRunning
            };
            return Observed { state, exit: None, reason: String::new(), message: String::new() };
        }
        // The supervisor is gone without a word (killed): trust the runtime.
        match self.runtime.state(&record.id).map(|s| s.status) {
            Ok(berth_runtime::Status::Running) if record.started_at != 0 => Observed {
                state: cri::ContainerState::ContainerRunning,
                exit: None,
                reason: String::new(),
                message: "the container's supervisor is gone; its output is no longer logged"
                    .into(),
            },
            Ok(berth_runtime::Status::Created) => Observed {
                state: cri::ContainerState::ContainerCreated,
                exit: None,
                reason: String::new(),
                message: String::new(),
            },
            _ => Observed {
                state: cri::ContainerState::ContainerExited,
                exit: Some(shim::Exit {
                    code: 255,
                    finished_at: record.started_at.max(record.created_at),
                    oom_killed: false,
                }),
                reason: "Unknown".into(),
                message: "the container's supervisor ended without recording an exit".into(),
            },
        }
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut record = self.container(id)?;
        let observed = self.observe(&record);
        if observed.state != cri::ContainerState::ContainerCreated {
            return Err(Status::failed_precondition(format!(
                "container {:?} is in {} state: only a created container can be started",
                record.id,
                observed.state.as_str_name()
            )));
        }
        let sandbox = self.sandbox(&record.sandbox_id)?;
        if !sandbox.ready {
            return Err(Status::failed_precondition(format!(
                "sandbox {:?} is not ready",
                sandbox.id
            )));
        }
        record.started_at = berth_task::now_nanos();
        self.save_container(&record)?;
        if let Err(err) = self.runtime.start(&record.id) {
            record.started_at = 0;
            self.save_container(&record)?;
            return Err(Status::internal(format!(
                "failed to start container {:?}: {err}",
                record.id
            )));
        }
        self.event(&record, cri::ContainerEventType::ContainerStartedEvent);
        Ok(())
    }

    /// SIGTERM (or the image's stop signal), then SIGKILL after `timeout` seconds; returns
    /// once the container exited. Stopping a stopped container succeeds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let record = self.container(id)?;
        let observed = self.observe(&record);
        if observed.state == cri::ContainerState::ContainerExited {
            return Ok(());
        }
        let dir = self.container_dir(&record.id);
        if timeout > 0 && observed.state == cri::ContainerState::ContainerRunning {
            let signal = self.stop_signal(&record);
            let _ = self.runtime.kill(&record.id, signal, false);
            if wait_for_exit(&dir, Duration::from_secs(timeout.unsigned_abs())) {
                self.event(&record, cri::ContainerEventType::ContainerStoppedEvent);
                return Ok(());
            }
        }
        if let Err(err) = self.runtime.kill(&record.id, Signal::SIGKILL, true) {
            tracing::debug!(container = %record.id, "SIGKILL: {err}");
        }
        if !wait_for_exit(&dir, Duration::from_secs(10)) && shim::supervisor(&dir).is_some() {
            return Err(Status::deadline_exceeded(format!(
                "container {:?} did not exit after SIGKILL",
                record.id
            )));
        }
        self.event(&record, cri::ContainerEventType::ContainerStoppedEvent);
        Ok(())
    }

    fn stop_signal(&self, record: &ContainerRecord) -> Signal {
        let named = self
            .images
            .resolve(&record.image_id)
            .ok()
            .and_then(|i| i.config.config.and_then(|c| c.stop_signal));
        named
            .and_then(|name| {
                let name = name.to_ascii_uppercase();
                let full = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
                full.parse::<Signal>().ok()
            })
            .unwrap_or(Signal::SIGTERM)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let record = match self.container(id) {
            Ok(record) => record,
            Err(status) if status.code() == Code::NotFound => return Ok(()),
            Err(status) => return Err(status),
        };
        let observed = self.observe(&record);
        if observed.state != cri::ContainerState::ContainerExited {
            self.stop_container(&record.id, 0)?;
        }
        self.destroy_container(&record);
        self.event(&record, cri::ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    pub fn container_status(&self, record: &ContainerRecord) -> cri::ContainerStatus {
        let observed = self.observe(record);
        let exit = observed.exit.clone();
        let mounts = record.config.mounts.clone();
        cri::ContainerStatus {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            state: observed.state as i32,
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at: exit.as_ref().map_or(0, |e| e.finished_at),
            exit_code: exit.as_ref().map_or(0, |e| e.code),
            image: Some(cri::ImageSpec { image: record.image.clone(), ..Default::default() }),
            image_ref: record.image_ref.clone(),
            reason: observed.reason,
            message: observed.message,
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
            mounts,
            log_path: record.log_path.clone(),
            resources: record
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources { linux: Some(r), windows: None }),
            image_id: record.image_id.clone(),
            user: None,
        }
    }

    pub fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        let records: Vec<ContainerRecord> =
            self.containers.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        records
            .iter()
            .filter(|c| {
                let Some(f) = filter else { return true };
                (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                    && labels_match(&c.config.labels, &f.label_selector)
            })
            .filter_map(|c| {
                let state = self.observe(c).state as i32;
                if let Some(wanted) = filter.and_then(|f| f.state.as_ref()) {
                    if wanted.state != state {
                        return None;
                    }
                }
                Some(cri::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.sandbox_id.clone(),
                    metadata: c.config.metadata.clone(),
                    image: Some(cri::ImageSpec { image: c.image.clone(), ..Default::default() }),
                    image_ref: c.image_ref.clone(),
                    state,
                    created_at: c.created_at,
                    labels: c.config.labels.clone(),
                    annotations: c.config.annotations.clone(),
                    image_id: c.image_id.clone(),
                })
            })
            .collect()
    }

    pub fn update_resources(
        &self,
        id: &str,
        resources: &cri::LinuxContainerResources,
    ) -> Result<()> {
        let mut record = self.container(id)?;
        let value = spec::resources(resources);
        let typed: oci_spec::runtime::LinuxResources = serde_json::from_value(value)
            .map_err(|e| Status::invalid_argument(format!("resources: {e}")))?;
        if self.observe(&record).state == cri::ContainerState::ContainerRunning {
            self.runtime.update(&record.id, &typed).map_err(|e| Status::internal(e.to_string()))?;
        }
        let linux = record.config.linux.get_or_insert_with(Default::default);
        linux.resources = Some(resources.clone());
        self.save_container(&record)
    }

    pub fn reopen_log(&self, id: &str) -> Result<()> {
        let record = self.running_container(id)?;
        shim::reopen_log(&self.container_dir(&record.id))
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// A connection to a running container's supervisor carrying its output (and its
    /// input, with `stdin`) as the supervisor's attach frames.
    pub fn attach(&self, id: &str, stdin: bool) -> Result<std::os::unix::net::UnixStream> {
        let record = self.running_container(id)?;
        shim::attach(&self.container_dir(&record.id), stdin)
            .map_err(|e| Status::internal(format!("attach to container {:?}: {e}", record.id)))
    }

    /// The `berth-runc exec` command that runs `cmd` in a container with the container's
    /// own process settings (user, environment, capabilities, working directory), and the
    /// process file it reads (the caller removes it). With `console_socket`, the pty
    /// master is sent there.
    pub fn exec_command(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        console_socket: Option<&Path>,
    ) -> Result<(std::process::Command, PathBuf)> {
        let dir = self.container_dir(id);
        let bundle: Value = read_json(&dir.join("config.json"))?;
        let mut process = bundle["process"].clone();
        process["args"] = json!(cmd);
        process["terminal"] = json!(tty);
        let file = tempfile_in(&dir, "exec-", ".json")?;
        std::fs::write(&file, process.to_string())
            .map_err(io_err(format!("write {}", file.display())))?;
        let mut command = std::process::Command::new(&self.config.exe);
        std::os::unix::process::CommandExt::arg0(&mut command, "berth-runc");
        command.arg("--root").arg(self.base().join("runtime")).arg("exec");
        if let Some(socket) = console_socket {
            command.arg("--console-socket").arg(socket);
        }
        command.arg("--process").arg(&file).arg(id);
        Ok((command, file))
    }

    /// Checks that a container can be exec'd into now: it exists and runs.
    /// A container that is not running is Unknown, as containerd answers.
    pub fn running_container(&self, id: &str) -> Result<ContainerRecord> {
        let record = self.container(id)?;
        let state = self.observe(&record).state;
        if state != cri::ContainerState::ContainerRunning {
            return Err(Status::unknown(format!(
                "container {:?} is in {} state: it is not running",
                record.id,
                state.as_str_name()
            )));
        }
        Ok(record)
    }

    /// Runs a command in a running container and returns its output and exit code.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        let record = self.running_container(id)?;
        if cmd.is_empty() {
            return Err(Status::invalid_argument("cmd is empty"));
        }
        let (mut command, file) = self.exec_command(&record.id, cmd, false, None)?;
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = command.spawn().map_err(io_err("run berth-runc exec".into()));
        let child = match child {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_file(&file);
                return Err(err);
            }
        };
        let outcome =
            wait_output(child, (timeout > 0).then(|| Duration::from_secs(timeout.unsigned_abs())));
        let _ = std::fs::remove_file(&file);
        match outcome {
            Some(output) => Ok((
                output.stdout,
                output.stderr,
                output.status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + output.status.signal().unwrap_or(9)
                }),
            )),
            None => Err(Status::deadline_exceeded(format!(
                "command {cmd:?} did not finish within {timeout} seconds"
            ))),
        }
    }

    pub fn container_stats(&self, record: &ContainerRecord) -> cri::ContainerStats {
        let now = berth_task::now_nanos();
        let stats = self.runtime.stats(&record.id).ok();
        let upper = self.container_dir(&record.id).join("upper");
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            cpu: stats.as_ref().map(|s| cri::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: s.cpu.usage.total }),
                usage_nano_cores: None,
            }),
            memory: stats.as_ref().map(|s| {
                let inactive = s
                    .memory
                    .raw
                    .get("inactive_file")
                    .or_else(|| s.memory.raw.get("total_inactive_file"))
                    .copied()
                    .unwrap_or(0);
                cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(cri::UInt64Value {
                        value: s.memory.usage.usage.saturating_sub(inactive),
                    }),
                    available_bytes: None,
                    usage_bytes: Some(cri::UInt64Value { value: s.memory.usage.usage }),
                    rss_bytes: s
                        .memory
                        .raw
                        .get("rss")
                        .or_else(|| s.memory.raw.get("anon"))
                        .map(|v| cri::UInt64Value { value: *v }),
                    page_faults: s
                        .memory
                        .raw
                        .get("pgfault")
                        .map(|v| cri::UInt64Value { value: *v }),
                    major_page_faults: s
                        .memory
                        .raw
                        .get("pgmajfault")
                        .map(|v| cri::UInt64Value { value: *v }),
                }
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: upper.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(cri::UInt64Value { value: berth_stdx::fs::disk_usage(&upper) }),
                inodes_used: None,
            }),
            swap: None,
        }
    }

    pub fn all_containers(&self) -> Vec<ContainerRecord> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn all_sandboxes(&self) -> Vec<SandboxRecord> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn sandbox_stats(&self, record: &SandboxRecord) -> cri::PodSandboxStats {
        let containers: Vec<cri::ContainerStats> = self
            .containers_of(&record.id)
            .iter()
            .filter(|c| self.observe(c).state == cri::ContainerState::ContainerRunning)
            .map(|c| self.container_stats(c))
            .collect();
        let now = berth_task::now_nanos();
        let cpu: u64 = containers
            .iter()
            .filter_map(|c| c.cpu.as_ref()?.usage_core_nano_seconds.as_ref().map(|v| v.value))
            .sum();
        let working: u64 = containers
            .iter()
            .filter_map(|c| c.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value))
            .sum();
        let usage: u64 = containers
            .iter()
            .filter_map(|c| c.memory.as_ref()?.usage_bytes.as_ref().map(|v| v.value))
            .sum();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: Some(cri::UInt64Value { value: cpu }),
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(cri::UInt64Value { value: working }),
                    usage_bytes: Some(cri::UInt64Value { value: usage }),
                    ..Default::default()
                }),
                network: None,
                process: None,
                containers,
            }),
            windows: None,
        }
    }

    fn event(&self, record: &ContainerRecord, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let sandbox = self.sandbox(&record.sandbox_id).ok().map(|s| self.sandbox_status(&s));
        let statuses = if kind == cri::ContainerEventType::ContainerDeletedEvent {
            Vec::new()
        } else {
            vec![self.container_status(record)]
        };
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: record.id.clone(),
            container_event_type: kind as i32,
            created_at: berth_task::now_nanos(),
            pod_sandbox_status: sandbox,
            containers_statuses: statuses,
        });
    }

    // ----- images -----

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn image_of(&self, image: &berth_image::store::Image) -> cri::Image {
        let repo_digests = self.images.db().repo_digests(&image.record.id).unwrap_or_default();
        let user = image.config.config.as_ref().and_then(|c| c.user.clone()).unwrap_or_default();
        let user = user.split(':').next().unwrap_or_default().to_owned();
        let (uid, username) = match user.parse::<i64>() {
            Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
            Err(_) => (None, user),
        };
        cri::Image {
            id: image.record.id.to_string(),
            repo_tags: image.record.names.clone(),
            repo_digests,
            size: self.images.size(image),
            uid,
            username,
            spec: None,
            pinned: false,
        }
    }

    pub fn pull(&self, name: &str, auth: Option<&cri::AuthConfig>) -> Result<String> {
        let reference: berth_image::reference::Reference =
            name.parse().map_err(|e: berth_image::Error| {
                Status::invalid_argument(format!("failed to parse image reference {name:?}: {e}"))
            })?;
        let credentials = auth.and_then(|a| {
            if !a.username.is_empty() {
                Some(berth_image::credentials::Credentials {
                    username: a.username.clone(),
                    password: a.password.clone(),
                })
            } else if !a.auth.is_empty() {
                decode_auth(&a.auth)
            } else {
                None
            }
        });
        let mirrors = match &self.config.registries_config {
            Some(path) => Some(Arc::new(
                berth_image::mirrors::Registries::load(path)
                    .map_err(|e| Status::failed_precondition(e.to_string()))?,
            )),
            None => None,
        };
        let options = berth_image::pull::PullOptions {
            client: berth_image::registry::ClientOptions {
                insecure: self.config.insecure_registries.clone(),
                credentials,
            },
            mirrors,
            ..Default::default()
        };
        let pulled = berth_image::pull::pull(
            &self.images,
            &reference,
            &options,
            &berth_image::progress::Silent,
        )
        .map_err(|e| match e {
            berth_image::Error::ImageNotFound { .. } => {
                Status::not_found(format!("failed to pull image {name:?}: {e}"))
            }
            other => Status::unknown(format!("failed to pull and unpack image {name:?}: {other}")),
        })?;
        Ok(pulled.id.to_string())
    }

    pub fn remove_image(&self, name: &str) -> Result<()> {
        let image = match self.images.resolve(name) {
            Ok(image) => image,
            Err(berth_image::Error::ImageNotFound { .. }) => return Ok(()),
            Err(err) => return Err(Status::internal(err.to_string())),
        };
        let in_use =
            self.all_containers().iter().any(|c| c.image_id == image.record.id.to_string());
        if in_use {
            return Err(Status::failed_precondition(format!(
                "image {name:?} is in use by a container; remove the container first"
            )));
        }
        let id = image.record.id.to_string();
        match self.images.remove(&id, true) {
            Ok(_) | Err(berth_image::Error::ImageNotFound { .. }) => Ok(()),
            Err(err) => Err(Status::internal(err.to_string())),
        }
    }

    pub fn image_fs_info(&self) -> cri::ImageFsInfoResponse {
        let now = berth_task::now_nanos();
        let usage = |mountpoint: &Path, bytes: u64| cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: mountpoint.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: 0 }),
        };
        let containers = self.base().join("containers");
        cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(self.images.root(), self.images.disk_usage())],
            container_filesystems: vec![usage(
                &containers,
                berth_stdx::fs::disk_usage(&containers),
            )],
        }
    }

    /// The kubelet's UpdateRuntimeConfig: the node's pod range into the CNI template, when
    /// there is one; the file is written only when it changes (atomically: a sandbox
    /// being made reads the old list or the new one).
    pub fn set_pod_cidr(&self, pod_cidr: &str) -> Result<()> {
        let Some(template) = &self.config.cni_conf_template else { return Ok(()) };
        if pod_cidr.is_empty() {
            return Ok(());
        }
        for range in pod_cidr.split(',') {
            let valid = range.split_once('/').is_some_and(|(ip, bits)| {
                ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
            });
            if !valid {
                return Err(Status::invalid_argument(format!(
                    "pod CIDR {range:?} is not an address range"
                )));
            }
        }
        let first = pod_cidr.split(',').next().unwrap_or(pod_cidr);
        let text = template.replace("{{.PodCIDR}}", first);
        berth_net::cni::ConfList::parse(text.as_bytes(), Path::new(TEMPLATED_CONFLIST))
            .map_err(|e| Status::invalid_argument(format!("the CNI template with {first}: {e}")))?;
        let path = self.config.cni_conf_dir.join(TEMPLATED_CONFLIST);
        if std::fs::read_to_string(&path).is_ok_and(|now| now == text) {
            return Ok(());
        }
        berth_stdx::fs::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(io_err(format!("write {}", path.display())))?;
        tracing::info!(pod_cidr = first, "pod network configured: {}", path.display());
        Ok(())
    }

    pub fn network_ready(&self) -> std::result::Result<(), String> {
        match berth_net::cni::ConfList::first_in(&self.config.cni_conf_dir) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "cni config not initialized: no network configuration in {}",
                self.config.cni_conf_dir.display()
            )),
            Err(err) => Err(err.to_string()),
        }
    }
}

fn decode_auth(auth: &str) -> Option<berth_image::credentials::Credentials> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(berth_image::credentials::Credentials {
        username: username.into(),
        password: password.into(),
    })
}

fn cni_args(id: &str, metadata: &cri::PodSandboxMetadata) -> Vec<(String, String)> {
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), metadata.namespace.clone()),
        ("K8S_POD_NAME".into(), metadata.name.clone()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_owned()),
        ("K8S_POD_UID".into(), metadata.uid.clone()),
    ]
}

/// The CNI `runtimeConfig` values a sandbox offers: port mappings and DNS.
fn runtime_config(config: &cri::PodSandboxConfig) -> Map<String, Value> {
    let mut map = Map::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": protocol});
            if !p.host_ip.is_empty() {
                m["hostIP"] = json!(p.host_ip);
            }
            m
        })
        .collect();
    if !ports.is_empty() {
        map.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(dns) = &config.dns_config {
        map.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    map
}

/// The network namespace to give CNI DEL: its pin while it is mounted, else none (the
/// namespace is gone, after a reboot: plugins then release what they hold outside it,
/// addresses and port mappings, as CNI asks of a DEL without a namespace).
fn still_pinned(netns: &Path) -> PathBuf {
    let real = std::fs::canonicalize(netns).unwrap_or_else(|_| netns.to_owned());
    if berth_sys::mount::mount_points().contains(&real) {
        netns.to_owned()
    } else {
        PathBuf::new()
    }
}

fn write_etc_files(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    hostname: &str,
    ip: &str,
    host_network: bool,
) -> Result<()> {
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if !ip.is_empty() {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        hosts
    };
    let resolv = match &config.dns_config {
        Some(dns)
            if !dns.servers.is_empty() || !dns.searches.is_empty() || !dns.options.is_empty() =>
        {
            let mut text = String::new();
            if !dns.searches.is_empty() {
                text.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            for server in &dns.servers {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if !dns.options.is_empty() {
                text.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            text
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    let name = if host_network {
        berth_sys::nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        hostname.to_owned()
    };
    for (file, content) in
        [("hosts", hosts), ("hostname", format!("{name}\n")), ("resolv.conf", resolv)]
    {
        let path = dir.join(file);
        std::fs::write(&path, content).map_err(io_err(format!("write {}", path.display())))?;
    }
    Ok(())
}

fn mount_overlay(dir: &Path, lowers: &[PathBuf]) -> Result<()> {
    let rootfs = dir.join("rootfs");
    let lower =
        lowers.iter().map(|l| l.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        dir.join("upper").display(),
        dir.join("work").display()
    );
    if options.len() >= 4000 {
        return Err(Status::invalid_argument(format!(
            "the image has too many layers ({}) for an overlay mount under this root directory",
            lowers.len()
        )));
    }
    mount(Some("overlay"), &rootfs, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| {
            Status::internal(format!("mount the overlay rootfs at {}: {e}", rootfs.display()))
        })
}

/// A sandbox's cgroup directory, removed from every hierarchy once its containers' are
/// gone (only the last component: parents such as a QoS class's are shared). Nothing is
/// removed that still holds something: `rmdir` refuses.
fn remove_cgroup_parent(parent: &str) {
    let relative = parent.trim_start_matches('/');
    if relative.is_empty() || relative.ends_with(".slice") {
        return;
    }
    let Ok(layout) = berth_cgroups::Layout::detect() else { return };
    let roots: Vec<PathBuf> = match layout {
        berth_cgroups::Layout::V1 { hierarchies, unified } => {
            hierarchies.into_iter().map(|h| h.mount_point).chain(unified).collect()
        }
        berth_cgroups::Layout::V2 { root } => vec![root],
    };
    for root in roots {
        let _ = std::fs::remove_dir(root.join(relative).join(PIDNS_CGROUP));
        let _ = std::fs::remove_dir(root.join(relative));
    }
}

/// The leaf of a sandbox's cgroup that holds its PID namespace's holder.
const PIDNS_CGROUP: &str = "pidns";

/// A pod's limits: its `resources` with its `overhead` added (none when it has no
/// resources: a BestEffort pod's cgroup is not limited).
fn pod_resources(linux: &cri::LinuxPodSandboxConfig) -> Option<cri::LinuxContainerResources> {
    let mut total = linux.resources.clone()?;
    if let Some(overhead) = &linux.overhead {
        if total.memory_limit_in_bytes > 0 {
            total.memory_limit_in_bytes += overhead.memory_limit_in_bytes.max(0);
        }
        if total.cpu_quota > 0 {
            total.cpu_quota += overhead.cpu_quota.max(0);
        }
        if total.cpu_shares > 0 {
            total.cpu_shares += overhead.cpu_shares.max(0);
        }
    }
    Some(total)
}

fn unmount_all(path: &Path) {
    while umount2(path, MntFlags::MNT_DETACH).is_ok() {}
}

/// Waits for the supervisor's exit record (or its death).
fn wait_for_exit(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if shim::exit(dir).is_some() {
            return true;
        }
        if shim::supervisor(dir).is_none() {
            // Gone without a record (killed): nothing more will come.
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Collects a child's output, killing it after the timeout (then `None`).
fn wait_output(
    mut child: std::process::Child,
    timeout: Option<Duration>,
) -> Option<std::process::Output> {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut data = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut data);
        }
        data
    });
    let err = std::thread::spawn(move || {
        let mut data = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut data);
        }
        data
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(_) => return None,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Some(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn find_by_prefix<T: Clone>(map: &BTreeMap<String, T>, id: &str) -> Option<T> {
    if id.is_empty() {
        return None;
    }
    if let Some(found) = map.get(id) {
        return Some(found.clone());
    }
    let mut matches = map.range(id.to_owned()..).take_while(|(k, _)| k.starts_with(id));
    let first = matches.next()?;
    matches.next().is_none().then(|| first.1.clone())
}

fn random_id() -> Result<String> {
    berth_stdx::random::hex(32).map_err(|e| Status::internal(format!("random bytes: {e}")))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(|e| Status::internal(e.to_string()))?;
    berth_stdx::fs::write_atomic(path, &data, 0o600)
        .map_err(io_err(format!("write {}", path.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    serde_json::from_slice(&data).map_err(|e| Status::internal(format!("{}: {e}", path.display())))
}

fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path, file: &str) -> Vec<(String, T)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path().join(file);
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::from_slice::<T>(&d).map_err(|e| e.to_string()))
        {
            Ok(record) => out.push((id, record)),
            Err(err) => tracing::warn!("skipping {}: {err}", path.display()),
        }
    }
    out
}

fn ignore_missing(err: std::io::Error) -> std::io::Result<()> {
    if err.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

fn tempfile_in(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    let name = format!("{prefix}{}{suffix}", random_id()?.get(..16).unwrap_or("x"));
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_docker_auth() {
        let creds = decode_auth("dXNlcjpwYXNz").unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("user", "pass"));
        assert!(decode_auth("!!").is_none());
    }

    #[test]
    fn prefixes_find_one_or_none() {
        let mut map = BTreeMap::new();
        map.insert("abc1".to_owned(), 1);
        map.insert("abc2".to_owned(), 2);
        map.insert("def".to_owned(), 3);
        assert_eq!(find_by_prefix(&map, "abc1"), Some(1));
        assert_eq!(find_by_prefix(&map, "abc"), None);
        assert_eq!(find_by_prefix(&map, "d"), Some(3));
        assert_eq!(find_by_prefix(&map, ""), None);
    }

    #[test]
    fn port_mappings_become_cni_runtime_config() {
        let config = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                cri::PortMapping {
                    protocol: 0,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        };
        let map = runtime_config(&config);
        assert_eq!(
            map["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}])
        );
    }
}
