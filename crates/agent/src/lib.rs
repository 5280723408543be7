//! berth's node agent, the kubelet's part: it registers its Node (capacity, addresses,
//! node info, conditions) and renews its Lease, runs the pods bound to it through a CRI
//! runtime (sandbox, init containers in order, containers, restarts with back-off,
//! volumes, environment), writes their status back, and finishes their deletion. It
//! speaks to containers only through CRI (`k8s-cri`'s clients on a unix socket), so it
//! drives berth's CRI or containerd's alike, and knows nothing of namespaces or mounts.
//!
//! Every loop is level-triggered over the API's caches and the runtime's own listing: a
//! restarted agent adopts the pods it finds running and removes sandboxes whose pods are
//! gone.

pub mod cri;
pub mod devices;
pub mod events;
pub mod eviction;
pub mod join;
pub mod pods;
pub mod probes;
mod refs;
pub mod server;
pub mod tokens;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Informers, Queue};
use k8s_cri::v1 as k8s_cri_v1;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// The CRI runtime's socket.
    pub runtime_socket: PathBuf,
    /// The agent's own state: pods' volumes under `pods/<uid>/`.
    pub root: PathBuf,
    /// Where the pods' container logs go (`<ns>_<name>_<uid>/<container>/<n>.log`).
    pub log_dir: PathBuf,
    /// The first restart back-off (the kubelet's 10 s); it doubles per restart, up to 30×.
    pub restart_backoff: Duration,
    /// The node's address (InternalIP), and the pods' hostIP.
    pub node_ip: String,
    pub lease_interval: Duration,
    pub labels: BTreeMap<String, String>,
    /// The cluster DNS address for `dnsPolicy: ClusterFirst` pods (none: the host's).
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    /// The kubelet API (logs for the API server): where to listen and the TLS material;
    /// not served when absent.
    pub api: Option<ApiConfig>,
    /// Where device plugins register (`kubelet.sock`) and keep their sockets; none: no
    /// device plugins.
    pub device_plugin_dir: Option<PathBuf>,
    /// Hard eviction thresholds (`--eviction-hard`); empty: no node-pressure eviction.
    pub eviction: eviction::Thresholds,
    /// What the system and berth keep for themselves (`--system-reserved` plus
    /// `--kube-reserved`): left out of the Node's allocatable.
    pub reserved: Reserved,
}

/// Resources kept from pods, as the kubelet's reservations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reserved {
    pub cpu_milli: u64,
    pub memory: u64,
    pub ephemeral_storage: u64,
}

impl Reserved {
    /// `cpu=100m,memory=256Mi,ephemeral-storage=1Gi` (any of them), as the kubelet's
    /// `--system-reserved`; added to what is there already.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: write NAME=QUANTITY, as cpu=100m"))?;
            let milli = berth_api::quantity::parse_milli(value)
                .filter(|m| *m >= 0)
                .ok_or_else(|| format!("{pair:?}: {value} is not a quantity"))?;
            let milli = u64::try_from(milli).unwrap_or(0);
            match name {
                "cpu" => self.cpu_milli += milli,
                "memory" => self.memory += milli / 1000,
                "ephemeral-storage" => self.ephemeral_storage += milli / 1000,
                "pid" => {}
                other => {
                    return Err(format!(
                        "{other:?} cannot be reserved: cpu, memory or ephemeral-storage"
                    ))
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub bind_address: String,
    /// 0: any free port (the Node reports which).
    pub port: u16,
    pub tls: server::Tls,
}

impl Config {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action}: {message}")]
    Runtime { action: String, message: String },
}

/// The address this machine reaches others from, without sending anything (a UDP
/// socket's connect only picks the route); loopback when there is no route.
pub fn default_node_ip() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

struct CacheSources {
    refs: Arc<refs::Refs>,
    namespace: String,
    memory: Arc<pods::Memory>,
    uid: String,
}

impl volumes::Sources for CacheSources {
    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.refs.config_maps.get(&self.namespace, name)
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.refs.secrets.get(&self.namespace, name)
    }

    fn service_account_token(&self, audience: &str, seconds: i64) -> Option<String> {
        self.memory.tokens.get(&self.uid, audience, seconds)
    }
}

/// Runs the agent until the informers' shutdown.
pub async fn run(informers: Arc<Informers>, config: Config) {
    let shutdown = informers.shutdown().clone();
    let runtime = tokio::select! {
        connected = cri::connect(&config.runtime_socket, Duration::from_secs(120)) => match connected {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!("node agent: {err}");
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    let client = informers.client().clone();
    let devices = match &config.device_plugin_dir {
        Some(dir) => match devices::Devices::start(dir, shutdown.clone()) {
            Ok(devices) => Some(devices),
            Err(err) => {
                tracing::error!("node agent: device plugins: {err}");
                None
            }
        },
        None => None,
    };
    let mut port = 0;
    if let Some(api) = &config.api {
        match tokio::net::TcpListener::bind((api.bind_address.as_str(), api.port)).await {
            Ok(listener) => {
                port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                let shared = server::Shared {
                    pods: informers.typed::<Pod>(),
                    runtime: runtime.clone(),
                    shutdown: shutdown.clone(),
                    node_name: config.node_name.clone(),
                    root: config.root.clone(),
                };
                let tls = api.tls.clone();
                informers.tasks().spawn(server::serve(listener, tls, shared));
            }
            Err(err) => tracing::error!(
                "node agent: cannot listen on {}:{} for the kubelet API: {err}",
                api.bind_address,
                api.port
            ),
        }
    }
    if let Err(err) = register(&client, &runtime, &config, port, devices.as_deref()).await {
        tracing::error!("node agent: {err}");
    }
    let pressure = Arc::new(eviction::Pressure::default());
    {
        let (client, runtime, config, shutdown, devices, pressure) = (
            client.clone(),
            runtime.clone(),
            config.clone(),
            shutdown.clone(),
            devices.clone(),
            pressure.clone(),
        );
        informers.tasks().spawn(async move {
            heartbeat(client, runtime, config, port, shutdown, devices, pressure).await
        });
    }
    if !config.eviction.is_empty() {
        let (client, runtime, config, shutdown, devices, pressure, pods) = (
            client.clone(),
            runtime.clone(),
            config.clone(),
            shutdown.clone(),
            devices.clone(),
            pressure.clone(),
            informers.typed::<Pod>(),
        );
        informers.tasks().spawn(async move {
            evict(client, runtime, config, port, shutdown, devices, pressure, pods).await
        });
    }
    run_pods(informers, config, runtime, devices).await;
}

async fn node_object(
    runtime: &cri::Runtime,
    config: &Config,
    port: u16,
    devices: Option<&devices::Devices>,
    pressure: &eviction::Pressure,
) -> serde_json::Value {
    let mut rt = runtime.runtime.clone();
    let version = rt
        .version(k8s_cri_v1::VersionRequest { version: "v1".into() })
        .await
        .map(|v| v.into_inner())
        .ok();
    let ready = match rt.status(k8s_cri_v1::StatusRequest { verbose: false }).await {
        Ok(status) => {
            let conditions = status.into_inner().status.map(|s| s.conditions).unwrap_or_default();
            match conditions.iter().find(|c| !c.status) {
                Some(c) => Err(format!("container runtime not ready: {} {}", c.reason, c.message)),
                None => Ok(()),
            }
        }
        Err(status) => Err(format!("container runtime is down: {}", status.message())),
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_default();
    let mut capacity =
        json!({"cpu": cpus.to_string(), "memory": format!("{memory_kib}Ki"), "pods": "110"});
    let storage = eviction::filesystem(&config.root).map(|(_, total)| total);
    if let Some(total) = storage {
        capacity["ephemeral-storage"] = json!(format!("{}Ki", total / 1024));
    }
    // Allocatable, as the kubelet's: capacity less the reservations and the hard
    // eviction thresholds (what pods may use before the node starts evicting).
    let mut allocatable = capacity.clone();
    let reserved = config.reserved;
    let cpu_milli = (cpus as u64 * 1000).saturating_sub(reserved.cpu_milli);
    allocatable["cpu"] = json!(if cpu_milli.is_multiple_of(1000) {
        (cpu_milli / 1000).to_string()
    } else {
        format!("{cpu_milli}m")
    });
    let threshold = |t: Option<eviction::Threshold>, total: u64| match t {
        Some(eviction::Threshold::Bytes(b)) => b,
        Some(eviction::Threshold::Percent(p)) => (total as f64 * p / 100.0) as u64,
        None => 0,
    };
    let memory_total = memory_kib * 1024;
    let memory = memory_total
        .saturating_sub(reserved.memory)
        .saturating_sub(threshold(config.eviction.memory_available, memory_total));
    allocatable["memory"] = json!(format!("{}Ki", memory / 1024));
    if let Some(total) = storage {
        let free = total
            .saturating_sub(reserved.ephemeral_storage)
            .saturating_sub(threshold(config.eviction.nodefs_available, total));
        allocatable["ephemeral-storage"] = json!(free.to_string());
    }
    // Devices of registered plugins: all in capacity, the healthy ones (of a plugin that is
    // there) in allocatable.
    for (name, (total, healthy)) in devices.map(|d| d.capacity()).unwrap_or_default() {
        capacity[&name] = json!(total.to_string());
        allocatable[&name] = json!(healthy.to_string());
    }
    let mut labels = config.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), config.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
    );
    let now = berth_api::meta::now();
    let (ready_status, ready_reason, ready_message) = match &ready {
        Ok(()) => ("True", "KubeletReady", "berth's node agent is posting ready status".to_owned()),
        Err(message) => ("False", "KubeletNotReady", message.clone()),
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels},
        "status": {
            "capacity": capacity, "allocatable": allocatable,
            "conditions": [
                {"type": "Ready", "status": ready_status, "reason": ready_reason, "message": ready_message, "lastHeartbeatTime": now, "lastTransitionTime": now},
                if pressure.memory() {
                    json!({"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory", "message": "kubelet has insufficient memory available", "lastHeartbeatTime": now, "lastTransitionTime": now})
                } else {
                    json!({"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now})
                },
                if pressure.disk() {
                    json!({"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure", "message": "kubelet has disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": now})
                } else {
                    json!({"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": now, "lastTransitionTime": now})
                },
                if pressure.pid() {
                    json!({"type": "PIDPressure", "status": "True", "reason": "KubeletHasInsufficientPID", "message": "kubelet has insufficient PID available", "lastHeartbeatTime": now, "lastTransitionTime": now})
                } else {
                    json!({"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": now, "lastTransitionTime": now})
                },
            ],
            "addresses": [{"type": "InternalIP", "address": config.node_ip}, {"type": "Hostname", "address": config.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "kubeletVersion": format!("v1.32.0-berth-{}", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
                "containerRuntimeVersion": version.map(|v| format!("{}://{}", v.runtime_name, v.runtime_version)).unwrap_or_default(),
                "operatingSystem": "linux", "architecture": std::env::consts::ARCH.replace("x86_64", "amd64"),
                "kernelVersion": kernel, "osImage": os_image, "machineID": "", "systemUUID": "", "bootID": ""},
        },
    })
}

async fn register(
    client: &kube::Client,
    runtime: &cri::Runtime,
    config: &Config,
    port: u16,
    devices: Option<&devices::Devices>,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object = node_object(runtime, config, port, devices, &eviction::Pressure::default()).await;
    let node: Node = serde_json::from_value(object.clone()).map_err(|e| Error::Runtime {
        action: "describe the node".into(),
        message: e.to_string(),
    })?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let patch = Patch::Merge(json!({"metadata": {"labels": object["metadata"]["labels"]}}));
            if let Err(err) = nodes.patch(&config.node_name, &PatchParams::default(), &patch).await
            {
                tracing::warn!("node {}: cannot update its labels: {err}", config.node_name);
            }
            let status = Patch::Merge(json!({"status": object["status"]}));
            nodes
                .patch_status(&config.node_name, &PatchParams::default(), &status)
                .await
                .map(|_| ())
        }
        Err(err) => Err(err),
    }
    .map_err(|source| Error::Api { action: format!("register node {}", config.node_name), source })
}

/// This machine's CPU time in use since boot (seconds, all CPUs, idle and iowait left
/// out) and its working set (bytes: total memory less what is available), as the kubelet
/// reports them for the node; `None` where /proc does not tell.
pub(crate) fn host_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: u64 =
        cpu.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let ticks = 100.0; // USER_HZ, 100 on every Linux ABI the agent runs on
    let (available, total) = eviction::memory()?;
    let working_set = total.saturating_sub(available);
    Some((busy as f64 / ticks, working_set))
}

/// How long after its start the agent looks at its node often while it is not Ready.
const STARTING: Duration = Duration::from_secs(60);

/// Renews the Lease every interval and re-posts the node's status every few (or when it
/// was marked not ready by someone else).
async fn heartbeat(
    client: kube::Client,
    runtime: cri::Runtime,
    config: Config,
    port: u16,
    shutdown: tokio_util::sync::CancellationToken,
    devices: Option<Arc<devices::Devices>>,
    pressure: Arc<eviction::Pressure>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut devices_changed = false;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut beats = 0u64;
    // The node's pod range as last handed to the runtime (the kubelet's updatePodCIDR).
    let mut pod_cidr: Option<String> = None;
    let mut warned = false;
    let started = std::time::Instant::now();
    loop {
        let now = berth_stdx::time::format_rfc3339_nanos(std::time::SystemTime::now());
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": config.node_name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": config.node_name, "leaseDurationSeconds": 40, "renewTime": now}});
        let params = PatchParams::apply("berth-agent").force();
        if let Err(err) = leases.patch(&config.node_name, &params, &Patch::Apply(&lease)).await {
            tracing::debug!("lease of {}: {err}", config.node_name);
        }
        beats += 1;
        // Every few beats, and at once when someone else changed the Ready condition (the
        // node lifecycle controller marks a silent node Unknown).
        let node = nodes.get_status(&config.node_name).await.ok();
        // The range the server gave the node goes to the runtime's network (CRI
        // UpdateRuntimeConfig), once and again if it changes.
        let given = node.as_ref().and_then(|n| n.spec.as_ref()?.pod_cidr.clone());
        if given.is_some() && given != pod_cidr {
            let cidr = given.clone().unwrap_or_default();
            let mut rt = runtime.runtime.clone();
            let request = k8s_cri_v1::UpdateRuntimeConfigRequest {
                runtime_config: Some(k8s_cri_v1::RuntimeConfig {
                    network_config: Some(k8s_cri_v1::NetworkConfig { pod_cidr: cidr.clone() }),
                }),
            };
            match rt.update_runtime_config(request).await {
                Ok(_) => {
                    tracing::info!("node {}: pod range {cidr}", config.node_name);
                    pod_cidr = given;
                }
                Err(status) => tracing::warn!(
                    "node {}: the runtime refused the pod range {cidr}: {}",
                    config.node_name,
                    status.message()
                ),
            }
        }
        if pod_cidr.is_none() && !warned && started.elapsed() > Duration::from_secs(30) {
            warned = true;
            tracing::warn!(
                "node {}: no pod range (spec.podCIDR) after 30 s; a runtime network that waits for one (berth's bridge) is not ready until the server's node IPAM gives it (berth server --cluster-cidr, with its controller manager)",
                config.node_name
            );
        }
        let marked = node
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status != "True");
        if marked || devices_changed || beats.is_multiple_of(6) {
            devices_changed = false;
            let object = node_object(&runtime, &config, port, devices.as_deref(), &pressure).await;
            let patch = Patch::Merge(json!({"status": {
                "conditions": object["status"]["conditions"],
                "capacity": object["status"]["capacity"],
                "allocatable": object["status"]["allocatable"],
            }}));
            if let Err(err) =
                nodes.patch_status(&config.node_name, &PatchParams::default(), &patch).await
            {
                tracing::debug!("status of node {}: {err}", config.node_name);
            }
        }
        let device_change = async {
            match &devices {
                Some(devices) => devices.changed.notified().await,
                None => std::future::pending().await,
            }
        };
        // Starting (not Ready yet, or no pod range yet): look again soon, so the node is
        // Ready as soon as its runtime's network is.
        let wait = if (marked || pod_cidr.is_none()) && started.elapsed() < STARTING {
            config.lease_interval.min(Duration::from_millis(250))
        } else {
            config.lease_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A plugin's devices appeared, changed health or went: posted at once.
            _ = device_change => devices_changed = true,
            _ = shutdown.cancelled() => return,
        }
    }
}

type Key = (String, String);

/// Node-pressure eviction (see `eviction`): the signals every interval; on a change the
/// Node's conditions and taints; while under pressure, one pod evicted per interval.
#[allow(clippy::too_many_arguments)]
async fn evict(
    client: kube::Client,
    runtime: cri::Runtime,
    config: Config,
    port: u16,
    shutdown: tokio_util::sync::CancellationToken,
    devices: Option<Arc<devices::Devices>>,
    pressure: Arc<eviction::Pressure>,
    pods: Arc<berth_reconcile::Cache<Pod>>,
) {
    use std::sync::atomic::Ordering;
    let nodes: Api<Node> = Api::all(client.clone());
    let events = events::Recorder::new(client.clone(), &config.node_name);
    loop {
        // The image filesystem as the runtime reports it (CRI ImageFsInfo).
        let mut rt = runtime.images.clone();
        let imagefs = rt
            .image_fs_info(k8s_cri_v1::ImageFsInfoRequest {})
            .await
            .ok()
            .and_then(|answer| answer.into_inner().image_filesystems.into_iter().next())
            .and_then(|fs| fs.fs_id)
            .map(|id| PathBuf::from(id.mountpoint));
        let seen = eviction::observe(&config.eviction, &config.root, imagefs.as_deref());
        let mut changed = false;
        for (flag, now) in [
            (&pressure.memory, seen.memory),
            (&pressure.disk, seen.disk),
            (&pressure.pid, seen.pid),
        ] {
            changed |= flag.swap(now, Ordering::Relaxed) != now;
        }
        if changed {
            tracing::warn!(
                memory = seen.memory,
                disk = seen.disk,
                pid = seen.pid,
                "node pressure changed"
            );
            let object = node_object(&runtime, &config, port, devices.as_deref(), &pressure).await;
            let patch =
                Patch::Merge(json!({"status": {"conditions": object["status"]["conditions"]}}));
            if let Err(err) =
                nodes.patch_status(&config.node_name, &PatchParams::default(), &patch).await
            {
                tracing::warn!("conditions of node {}: {err}", config.node_name);
            }
            // The taints follow from the conditions: the node lifecycle controller sets
            // them (a node may not change its own taints).
        }
        if let Some((resource, message)) = seen.reclaim {
            // One pod per interval, in the kubelet's order.
            let usage = pod_usage(&runtime, resource).await;
            let victim = pods
                .store()
                .state()
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                        == Some(config.node_name.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                        && !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                        // Critical pods (system-cluster-critical and above) stay, as the
                        // kubelet keeps them.
                        && p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
                            < eviction::CRITICAL_PRIORITY
                })
                .min_by_key(|p| {
                    let key = (
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                    );
                    eviction::rank(
                        resource,
                        eviction::Candidate {
                            qos: pods::qos_class(p),
                            priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                            usage: usage.get(&key).copied().unwrap_or(0),
                            request: pods::requested(p, resource),
                        },
                    )
                });
            if let Some(pod) = victim {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                tracing::warn!("evicting {namespace}/{name}: {message}");
                events.record(&pod, None, true, "Evicted", &message).await;
                let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let patch = Patch::Merge(
                    json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message}}),
                );
                if let Err(err) = api.patch_status(&name, &PatchParams::default(), &patch).await {
                    tracing::warn!("evict {namespace}/{name}: {err}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(eviction::INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Each running pod's use of `resource` by (namespace, name), summed over its
/// containers from the runtime's stats: the memory working set, or the writable layer's
/// bytes; empty for process IDs (CRI's container stats do not count them) or when the
/// runtime gives no stats (the order then falls back to priority and QoS class).
async fn pod_usage(runtime: &cri::Runtime, resource: eviction::Resource) -> HashMap<Key, u64> {
    let mut usage = HashMap::new();
    if resource == eviction::Resource::Pids {
        return usage;
    }
    let mut rt = runtime.runtime.clone();
    let stats =
        match rt.list_container_stats(k8s_cri_v1::ListContainerStatsRequest::default()).await {
            Ok(answer) => answer.into_inner().stats,
            Err(status) => {
                tracing::warn!("eviction: the runtime gave no stats: {}", status.message());
                return usage;
            }
        };
    for stat in stats {
        let Some(attributes) = &stat.attributes else { continue };
        let (Some(namespace), Some(name)) = (
            attributes.labels.get(pods::LABEL_POD_NAMESPACE),
            attributes.labels.get(pods::LABEL_POD_NAME),
        ) else {
            continue;
        };
        let bytes = match resource {
            eviction::Resource::Memory => {
                stat.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value)
            }
            _ => stat.writable_layer.as_ref().and_then(|w| w.used_bytes.as_ref()).map(|v| v.value),
        };
        *usage.entry((namespace.clone(), name.clone())).or_insert(0) += bytes.unwrap_or(0);
    }
    usage
}

async fn run_pods(
    informers: Arc<Informers>,
    config: Config,
    runtime: cri::Runtime,
    devices: Option<Arc<devices::Devices>>,
) {
    let pods = informers.typed::<Pod>();
    // Secrets and ConfigMaps one by one, those the node's pods use (all the Node
    // authorizer lets a node read).
    let refs = refs::Refs::new(informers.client().clone());
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    let node = config.node_name.clone();
    let ours = move |pod: &Pod| {
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
    };
    let key = |pod: &Pod| {
        (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        )
    };
    {
        let ours = ours.clone();
        pods.queue_into(&informers, &queue, move |pod: &Pod| ours(pod).then(|| key(pod)));
    }
    tokio::select! {
        _ = pods.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    for pod in pods.store().state().iter().filter(|p| ours(p)) {
        queue.add(key(pod));
    }
    let memory = Arc::new(pods::Memory::default());
    // Housekeeping: sandboxes whose pods are gone from the API (deleted while the agent
    // was down, or force-deleted) are stopped and removed.
    {
        let (pods, runtime, config, shutdown, memory, refs, devices) = (
            pods.clone(),
            runtime.clone(),
            config.clone(),
            shutdown.clone(),
            memory.clone(),
            refs.clone(),
            devices.clone(),
        );
        let ours = ours.clone();
        informers.tasks().spawn(async move {
            loop {
                let here: Vec<Arc<Pod>> = pods.store().state().into_iter().filter(|p| ours(p)).collect();
                refs.retain(here.iter().map(|p| p.as_ref()));
                let known: std::collections::HashSet<String> =
                    here.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                let mut rt = runtime.runtime.clone();
                if let Ok(listed) = rt.list_containers(k8s_cri_v1::ListContainersRequest { filter: None }).await {
                    let ids = listed.into_inner().containers.into_iter().map(|c| c.id).collect();
                    memory.probes.retain(&ids);
                }
                memory.tokens.retain(&known);
                if let Ok(listed) = rt.list_pod_sandbox(k8s_cri_v1::ListPodSandboxRequest { filter: None }).await {
                    let with_sandbox: std::collections::BTreeSet<String> = listed
                        .into_inner()
                        .items
                        .iter()
                        .filter_map(|s| s.labels.get(pods::LABEL_POD_UID).cloned())
                        .collect();
                    // A pod directory of a pod that is gone and has no sandbox left (a
                    // deletion that raced with the pod's last sync can leave one).
                    if let Ok(entries) = std::fs::read_dir(config.root.join("pods")) {
                        for entry in entries.flatten() {
                            let uid = entry.file_name().to_string_lossy().into_owned();
                            if !known.contains(&uid) && !with_sandbox.contains(&uid) {
                                remove_pod_dir(&entry.path());
                            }
                        }
                    }
                    // Devices go back only from pods that are gone and hold no sandbox: an
                    // orphan's containers may still run until the kill below succeeds.
                    if let Some(devices) = &devices {
                        let live: std::collections::BTreeSet<String> =
                            known.iter().cloned().chain(with_sandbox.iter().cloned()).collect();
                        devices.keep_only(&live);
                    }
                    let orphans: std::collections::BTreeSet<String> =
                        with_sandbox.into_iter().filter(|uid| !known.contains(uid)).collect();
                    for uid in orphans {
                        tracing::info!(pod_uid = %uid, "removing the sandboxes of a pod that is gone");
                        if let Err(err) = pods::kill_pod(&runtime, &uid, 0).await {
                            tracing::warn!("{err}");
                            continue;
                        }
                        remove_pod_dir(&config.pod_dir(&uid));
                        memory.forget_pod(&uid);
                        if let Some(devices) = &devices {
                            devices.release(&uid);
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    let client = informers.client().clone();
    let host_ip = config.node_ip.clone();
    let config = Arc::new(config);
    let runtime = Arc::new(runtime);
    let events = Arc::new(events::Recorder::new(client.clone(), &config.node_name));
    berth_reconcile::run(
        "node-agent",
        queue,
        8,
        Duration::from_secs(10),
        shutdown,
        move |key: Key| {
            let events = events.clone();
            let (client, pods, config, runtime, memory, refs, host_ip, devices) = (
                client.clone(),
                pods.clone(),
                config.clone(),
                runtime.clone(),
                memory.clone(),
                refs.clone(),
                host_ip.clone(),
                devices.clone(),
            );
            async move {
                let Some(pod) = pods.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
                    return Ok::<Action, Error>(Action::Done);
                };
                if pod.metadata.deletion_timestamp.is_none() {
                    refs.prepare(&pod).await;
                }
                let sources = CacheSources {
                    refs,
                    namespace: key.0.clone(),
                    memory: memory.clone(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                };
                let ctx = pods::Context {
                    client: &client,
                    runtime: &runtime,
                    config: &config,
                    sources: &sources,
                    memory: &memory,
                    events: &events,
                    host_ip: &host_ip,
                    devices: devices.as_deref(),
                    pods: &pods,
                };
                match pods::sync(&ctx, &pod).await? {
                    Some(after) => Ok(Action::RequeueAfter(after)),
                    None => Ok(Action::Done),
                }
            }
        },
    )
    .await;
}

/// A gone pod's volumes; a failure is said (the directory holds its Secrets' files).
pub(crate) fn remove_pod_dir(dir: &std::path::Path) {
    volumes::unmount_under(dir);
    // Never a removal through a mount still there (a hostPath's subPath pin is the host's
    // own directory): the directory stays and is said.
    let left = berth_sys::mount::mounts_under(
        &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()),
    );
    if !left.is_empty() {
        tracing::warn!(
            "{} still has mounts ({}); not removed: unmount them, then remove it by hand",
            dir.display(),
            left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!("cannot remove {}: {err}; remove it by hand", dir.display()),
    }
}
