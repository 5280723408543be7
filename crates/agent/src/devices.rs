//! Device plugins, as the kubelet serves them (`deviceplugin/v1beta1`): a plugin registers
//! through the Registration service on `kubelet.sock` in the plugin directory, naming its
//! resource (`example.com/dev`) and its own socket there; the agent then follows its
//! ListAndWatch stream (the devices and their health), shows them in the Node's capacity
//! and allocatable (unhealthy ones, and all of a plugin that went away, leave allocatable),
//! and before a container that asks for the resource starts, picks free healthy devices
//! (the plugin's preference when it offers one), calls Allocate, and gives the container
//! what the answer says (environment, mounts, device nodes) through CRI. A device is never
//! given to two pods: allocations are kept per pod and container in a checkpoint file
//! beside the socket, so a restarted agent keeps them, and are released when the pod goes.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The API's messages (`k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto`), written
/// with prost's derive as the gRPC health probe's are.
pub mod api {
    pub const VERSION: &str = "v1beta1";
    pub const HEALTHY: &str = "Healthy";
    pub const UNHEALTHY: &str = "Unhealthy";
    pub const KUBELET_SOCKET: &str = "kubelet.sock";

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DevicePluginOptions {
        #[prost(bool, tag = "1")]
        pub pre_start_required: bool,
        #[prost(bool, tag = "2")]
        pub get_preferred_allocation_available: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RegisterRequest {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub endpoint: String,
        #[prost(string, tag = "3")]
        pub resource_name: String,
        #[prost(message, optional, tag = "4")]
        pub options: Option<DevicePluginOptions>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListAndWatchResponse {
        #[prost(message, repeated, tag = "1")]
        pub devices: Vec<Device>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NumaNode {
        #[prost(int64, tag = "1")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TopologyInfo {
        #[prost(message, repeated, tag = "1")]
        pub nodes: Vec<NumaNode>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Device {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub health: String,
        #[prost(message, optional, tag = "3")]
        pub topology: Option<TopologyInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PreStartContainerRequest {
        #[prost(string, repeated, tag = "1")]
        pub devices_ids: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PreStartContainerResponse {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PreferredAllocationRequest {
        #[prost(message, repeated, tag = "1")]
        pub container_requests: Vec<ContainerPreferredAllocationRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerPreferredAllocationRequest {
        #[prost(string, repeated, tag = "1")]
        pub available_device_ids: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub must_include_device_ids: Vec<String>,
        #[prost(int32, tag = "3")]
        pub allocation_size: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PreferredAllocationResponse {
        #[prost(message, repeated, tag = "1")]
        pub container_responses: Vec<ContainerPreferredAllocationResponse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerPreferredAllocationResponse {
        #[prost(string, repeated, tag = "1")]
        pub device_ids: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AllocateRequest {
        #[prost(message, repeated, tag = "1")]
        pub container_requests: Vec<ContainerAllocateRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerAllocateRequest {
        #[prost(string, repeated, tag = "1")]
        pub devices_ids: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CdiDevice {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AllocateResponse {
        #[prost(message, repeated, tag = "1")]
        pub container_responses: Vec<ContainerAllocateResponse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerAllocateResponse {
        #[prost(map = "string, string", tag = "1")]
        pub envs: std::collections::HashMap<String, String>,
        #[prost(message, repeated, tag = "2")]
        pub mounts: Vec<Mount>,
        #[prost(message, repeated, tag = "3")]
        pub devices: Vec<DeviceSpec>,
        #[prost(map = "string, string", tag = "4")]
        pub annotations: std::collections::HashMap<String, String>,
        #[prost(message, repeated, tag = "5")]
        pub cdi_devices: Vec<CdiDevice>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mount {
        #[prost(string, tag = "1")]
        pub container_path: String,
        #[prost(string, tag = "2")]
        pub host_path: String,
        #[prost(bool, tag = "3")]
        pub read_only: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeviceSpec {
        #[prost(string, tag = "1")]
        pub container_path: String,
        #[prost(string, tag = "2")]
        pub host_path: String,
        #[prost(string, tag = "3")]
        pub permissions: String,
    }
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(socket: &Path) -> Result<tonic::transport::Channel, String> {
    let socket = socket.to_owned();
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect: {}", berth_stdx::error::chain(&e)))
}

/// One unary call of `path` on `channel`.
pub async fn unary<Q, A>(
    channel: &tonic::transport::Channel,
    path: &'static str,
    request: Q,
) -> Result<A, tonic::Status>
where
    Q: prost::Message + Send + Sync + 'static,
    A: prost::Message + Default + Send + Sync + 'static,
{
    let call = async {
        let mut client = tonic::client::Grpc::new(channel.clone());
        client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        Ok(client.unary(tonic::Request::new(request), path, codec).await?.into_inner())
    };
    // A plugin that hangs fails the call (the kubelet gives PreStartContainer 30 s).
    tokio::time::timeout(std::time::Duration::from_secs(30), call)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded(format!("{path}: no answer in 30 s")))?
}

#[derive(Debug, Default)]
struct Resource {
    /// Its plugin's socket, options and connection while it is registered.
    plugin: Option<(PathBuf, api::DevicePluginOptions, tonic::transport::Channel)>,
    /// Device id → healthy.
    devices: BTreeMap<String, bool>,
    /// Bumped at each registration, so an old stream's end does not touch a new one's.
    generation: u64,
}

/// What a container was given: its devices and the plugin's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    pub resource: String,
    pub devices: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub mounts: Vec<(String, String, bool)>,
    /// container path, host path, permissions
    pub device_nodes: Vec<(String, String, String)>,
    pub annotations: BTreeMap<String, String>,
}

type AllocationKey = (String, String, String); // pod uid, container, resource

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    allocations: Vec<(AllocationKey, Allocation)>,
}

/// The agent's device manager.
#[derive(Debug)]
pub struct Devices {
    dir: PathBuf,
    resources: Mutex<BTreeMap<String, Resource>>,
    allocations: Mutex<BTreeMap<AllocationKey, Allocation>>,
    /// Rung when capacity or health changes (the node's status is posted then).
    pub changed: tokio::sync::Notify,
    /// Serializes allocations, so two containers never pick the same free device.
    allocating: tokio::sync::Mutex<()>,
    /// What admitted pods asked for, per resource, until they go: admission counts them
    /// as taken before their containers are allocated (two pods admitted at once never
    /// share the last device).
    admitted: Mutex<BTreeMap<String, BTreeMap<String, usize>>>,
}

const CHECKPOINT: &str = "berth_device_checkpoint.json";

impl Devices {
    /// Serves the Registration service on `dir/kubelet.sock` until `shutdown`.
    pub fn start(
        dir: &Path,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Devices>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("create the device plugin directory {}: {e}", dir.display()))?;
        let checkpoint: Checkpoint = match std::fs::read(dir.join(CHECKPOINT)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(checkpoint) => checkpoint,
                Err(err) => {
                    // Kept aside for whoever looks; allocations start over.
                    let aside = dir.join(format!("{CHECKPOINT}.corrupt"));
                    if let Err(moved) = std::fs::rename(dir.join(CHECKPOINT), &aside) {
                        return Err(format!(
                            "the device checkpoint is unreadable ({err}) and cannot be set aside ({moved}): remove {} and restart",
                            dir.join(CHECKPOINT).display()
                        ));
                    }
                    tracing::error!(
                        "the device checkpoint was unreadable ({err}); moved to {}",
                        aside.display()
                    );
                    Checkpoint::default()
                }
            },
            Err(_) => Checkpoint::default(),
        };
        let devices = Arc::new(Devices {
            dir: dir.to_owned(),
            resources: Mutex::new(BTreeMap::new()),
            allocations: Mutex::new(checkpoint.allocations.into_iter().collect()),
            changed: tokio::sync::Notify::new(),
            allocating: tokio::sync::Mutex::new(()),
            admitted: Mutex::new(BTreeMap::new()),
        });
        let socket = dir.join(api::KUBELET_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| format!("listen at {}: {e}", socket.display()))?;
        use std::os::unix::fs::PermissionsExt;
        // Only root may register devices: a socket others could reach is not served.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("make {} private: {e}", socket.display()))?;
        let service = Registration(devices.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!("device plugin registration: {err}");
            }
        });
        Ok(devices)
    }

    /// Capacity and allocatable per resource.
    pub fn capacity(&self) -> BTreeMap<String, (usize, usize)> {
        // Resources known from the checkpoint but whose plugin has not registered since a
        // restart are there with nothing allocatable (the Node must not keep the old count).
        let mut out: BTreeMap<String, (usize, usize)> = self
            .allocations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|(_, _, resource)| (resource.clone(), (0, 0)))
            .collect();
        let resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
        for (name, r) in resources.iter() {
            let healthy =
                if r.plugin.is_some() { r.devices.values().filter(|h| **h).count() } else { 0 };
            out.insert(name.clone(), (r.devices.len(), healthy));
        }
        out
    }

    /// Whether `name` is a resource a plugin has registered (or had, before a restart:
    /// its allocations are in the checkpoint).
    pub fn knows(&self, name: &str) -> bool {
        self.resources.lock().unwrap_or_else(|p| p.into_inner()).contains_key(name)
            || self
                .allocations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .any(|(_, _, resource)| resource == name)
    }

    fn register(self: &Arc<Self>, request: api::RegisterRequest) -> Result<(), tonic::Status> {
        if request.version != api::VERSION {
            return Err(tonic::Status::invalid_argument(format!(
                "unsupported device plugin API version {:?}: berth's agent speaks {}",
                request.version,
                api::VERSION
            )));
        }
        let name = &request.resource_name;
        let valid_name = name.split_once('/').is_some_and(|(domain, rest)| {
            !domain.is_empty()
                && !rest.is_empty()
                && !rest.contains('/')
                && domain != "kubernetes.io"
                && !domain.ends_with(".kubernetes.io")
        });
        if !valid_name {
            return Err(tonic::Status::invalid_argument(format!(
                "{name:?} is not an extended resource name (domain/name, outside kubernetes.io)"
            )));
        }
        let endpoint = &request.endpoint;
        if endpoint.is_empty() || endpoint.contains('/') || endpoint == ".." || endpoint == "." {
            return Err(tonic::Status::invalid_argument(format!(
                "endpoint {endpoint:?} must be a socket's name in the plugin directory {}",
                self.dir.display()
            )));
        }
        let socket = self.dir.join(endpoint);
        let options = request.options.clone().unwrap_or_default();
        let generation = {
            let mut resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            let resource = resources.entry(name.clone()).or_default();
            resource.generation += 1;
            resource.generation
        };
        let devices = self.clone();
        let name = name.clone();
        tokio::spawn(async move { devices.watch(name, socket, options, generation).await });
        Ok(())
    }

    /// Follows a plugin's ListAndWatch until it ends; then its devices leave allocatable.
    async fn watch(
        self: Arc<Self>,
        name: String,
        socket: PathBuf,
        options: api::DevicePluginOptions,
        generation: u64,
    ) {
        let forget = |devices: &Devices| {
            let mut resources = devices.resources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(resource) = resources.get_mut(&name).filter(|r| r.generation == generation)
            {
                resource.plugin = None;
            }
        };
        let channel = match unix_channel(&socket).await {
            Ok(channel) => channel,
            Err(err) => {
                tracing::warn!(resource = %name, "device plugin: {err}");
                forget(&self);
                self.changed.notify_waiters();
                return;
            }
        };
        let mut client = tonic::client::Grpc::new(channel.clone());
        let stream = async {
            client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<api::Empty, api::ListAndWatchResponse>::default();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/v1beta1.DevicePlugin/ListAndWatch",
            );
            client.server_streaming(tonic::Request::new(api::Empty {}), path, codec).await
        };
        let mut stream = match stream.await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::warn!(resource = %name, "device plugin ListAndWatch: {}", status.message());
                forget(&self);
                self.changed.notify_waiters();
                return;
            }
        };
        tracing::info!(resource = %name, "device plugin registered at {}", socket.display());
        {
            let mut resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(resource) = resources.get_mut(&name).filter(|r| r.generation == generation)
            {
                resource.plugin = Some((socket.clone(), options, channel));
            }
        }
        while let Ok(Some(list)) = stream.message().await {
            let listed: BTreeMap<String, bool> =
                list.devices.iter().map(|d| (d.id.clone(), d.health == api::HEALTHY)).collect();
            let changed = {
                let mut resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
                let Some(resource) =
                    resources.get_mut(&name).filter(|r| r.generation == generation)
                else {
                    return; // re-registered: the new stream owns it
                };
                let changed = resource.devices != listed;
                resource.devices = listed;
                changed
            };
            // Only a real change reaches the Node (a chatty plugin repeats itself).
            if changed {
                self.changed.notify_waiters();
            }
        }
        tracing::warn!(resource = %name, "device plugin went away; its devices leave allocatable until it registers again");
        {
            let mut resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(resource) = resources.get_mut(&name).filter(|r| r.generation == generation)
            {
                resource.plugin = None;
            }
        }
        self.changed.notify_waiters();
    }

    /// The kubelet's device admission of a pod before its sandbox is made: for each
    /// resource a registered plugin serves, whether its healthy devices not held by
    /// other pods cover what the pod asks (`wanted`, per resource). The message a
    /// rejected pod gets when they do not. A plugin that is not registered now (it may be
    /// restarting) rejects nothing: the pod waits for it.
    pub fn admit(&self, uid: &str, wanted: &BTreeMap<String, usize>) -> Result<(), String> {
        let resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
        let allocations = self.allocations.lock().unwrap_or_else(|p| p.into_inner());
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        for (resource, count) in wanted {
            let Some(r) = resources.get(resource).filter(|r| r.plugin.is_some()) else {
                continue;
            };
            let held_by_others: BTreeSet<&String> = allocations
                .iter()
                .filter(|((pod, _, res), _)| res == resource && pod != uid)
                .flat_map(|(_, a)| a.devices.iter())
                .collect();
            // Other admitted pods' asks not allocated yet count as taken.
            let promised: usize = admitted
                .iter()
                .filter(|(pod, _)| pod.as_str() != uid)
                .map(|(pod, asks)| {
                    let asked = asks.get(resource).copied().unwrap_or(0);
                    let holds = allocations
                        .iter()
                        .filter(|((p, _, res), _)| p == pod && res == resource)
                        .map(|(_, a)| a.devices.len())
                        .sum::<usize>();
                    asked.saturating_sub(holds)
                })
                .sum();
            let free = r
                .devices
                .iter()
                .filter(|(id, healthy)| **healthy && !held_by_others.contains(id))
                .count()
                .saturating_sub(promised);
            if free < *count {
                return Err(format!(
                    "Allocate failed due to requested number of devices unavailable for {resource}. Requested: {count}, Available: {free}, which is unexpected"
                ));
            }
        }
        if !wanted.is_empty() {
            admitted.insert(uid.to_owned(), wanted.clone());
        }
        Ok(())
    }

    /// The devices of `resource` for a container (`count` of them), allocated once per pod
    /// and container: a restarted container gets what it had.
    pub async fn allocate(
        &self,
        uid: &str,
        container: &str,
        resource: &str,
        count: usize,
    ) -> Result<Allocation, String> {
        let key = (uid.to_owned(), container.to_owned(), resource.to_owned());
        let _one_at_a_time = self.allocating.lock().await;
        let known = self.allocations.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some(allocation) = known {
            self.pre_start(resource, &allocation.devices).await?;
            return Ok(allocation);
        }
        let (channel, options, free) = {
            let resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = resources.get(resource) else {
                return Err(format!("no device plugin serves {resource}"));
            };
            let Some((_, options, channel)) = r.plugin.clone() else {
                return Err(format!("the device plugin of {resource} is not registered now"));
            };
            let taken: BTreeSet<String> = self
                .allocations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|((_, _, res), _)| res == resource)
                .flat_map(|(_, a)| a.devices.iter().cloned())
                .collect();
            let free: Vec<String> = r
                .devices
                .iter()
                .filter(|(id, healthy)| **healthy && !taken.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            (channel, options, free)
        };
        if free.len() < count {
            return Err(format!(
                "requested number of devices unavailable for {resource}. Requested: {count}, Available: {}",
                free.len()
            ));
        }
        let mut chosen: Vec<String> = free.iter().take(count).cloned().collect();
        if options.get_preferred_allocation_available {
            let request = api::PreferredAllocationRequest {
                container_requests: vec![api::ContainerPreferredAllocationRequest {
                    available_device_ids: free.clone(),
                    must_include_device_ids: Vec::new(),
                    allocation_size: i32::try_from(count).unwrap_or(i32::MAX),
                }],
            };
            if let Ok(answer) = unary::<_, api::PreferredAllocationResponse>(
                &channel,
                "/v1beta1.DevicePlugin/GetPreferredAllocation",
                request,
            )
            .await
            {
                let preferred: Vec<String> = answer
                    .container_responses
                    .first()
                    .map(|r| r.device_ids.clone())
                    .unwrap_or_default();
                // Only a preference that is a valid choice is taken.
                if preferred.len() == count && preferred.iter().all(|id| free.contains(id)) {
                    chosen = preferred;
                }
            }
        }
        let answer: api::AllocateResponse = unary(
            &channel,
            "/v1beta1.DevicePlugin/Allocate",
            api::AllocateRequest {
                container_requests: vec![api::ContainerAllocateRequest {
                    devices_ids: chosen.clone(),
                }],
            },
        )
        .await
        .map_err(|status| {
            format!("the device plugin of {resource} refused Allocate: {}", status.message())
        })?;
        let response = answer.container_responses.into_iter().next().unwrap_or_default();
        let allocation = Allocation {
            resource: resource.to_owned(),
            devices: chosen,
            envs: response.envs.into_iter().collect(),
            mounts: response
                .mounts
                .into_iter()
                .map(|m| (m.container_path, m.host_path, m.read_only))
                .collect(),
            device_nodes: response
                .devices
                .into_iter()
                .map(|d| (d.container_path, d.host_path, d.permissions))
                .collect(),
            annotations: response.annotations.into_iter().collect(),
        };
        self.allocations.lock().unwrap_or_else(|p| p.into_inner()).insert(key, allocation.clone());
        self.save();
        self.pre_start(resource, &allocation.devices).await?;
        Ok(allocation)
    }

    async fn pre_start(&self, resource: &str, devices: &[String]) -> Result<(), String> {
        let plugin = {
            let resources = self.resources.lock().unwrap_or_else(|p| p.into_inner());
            resources.get(resource).and_then(|r| r.plugin.clone())
        };
        let Some((_, options, channel)) = plugin else { return Ok(()) };
        if !options.pre_start_required {
            return Ok(());
        }
        unary::<_, api::PreStartContainerResponse>(
            &channel,
            "/v1beta1.DevicePlugin/PreStartContainer",
            api::PreStartContainerRequest { devices_ids: devices.to_vec() },
        )
        .await
        .map(drop)
        .map_err(|status| {
            format!(
                "the device plugin of {resource} failed PreStartContainer: {}",
                status.message()
            )
        })
    }

    /// Gives back what a pod held.
    pub fn release(&self, uid: &str) {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        let removed = {
            let mut allocations = self.allocations.lock().unwrap_or_else(|p| p.into_inner());
            let before = allocations.len();
            allocations.retain(|(u, _, _), _| u != uid);
            before != allocations.len()
        };
        if removed {
            self.save();
        }
    }

    /// Gives back what pods that are not in `live` held (pods gone while the agent was
    /// down).
    pub fn keep_only(&self, live: &BTreeSet<String>) {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner()).retain(|uid, _| live.contains(uid));
        let removed = {
            let mut allocations = self.allocations.lock().unwrap_or_else(|p| p.into_inner());
            let before = allocations.len();
            allocations.retain(|(u, _, _), _| live.contains(u));
            before != allocations.len()
        };
        if removed {
            self.save();
        }
    }

    fn save(&self) {
        let checkpoint = Checkpoint {
            allocations: self
                .allocations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let path = self.dir.join(CHECKPOINT);
        let bytes = match serde_json::to_vec(&checkpoint) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!("cannot encode the device checkpoint: {err}");
                return;
            }
        };
        if let Err(err) = berth_stdx::fs::write_atomic(&path, &bytes, 0o600) {
            tracing::warn!("cannot save the device checkpoint {}: {err}", path.display());
        }
    }
}

/// The Registration service, by hand (as the gRPC health probe's server in the tests).
#[derive(Clone)]
struct Registration(Arc<Devices>);

impl tonic::server::NamedService for Registration {
    const NAME: &'static str = "v1beta1.Registration";
}

struct Register(Arc<Devices>);

impl tonic::server::UnaryService<api::RegisterRequest> for Register {
    type Response = api::Empty;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<api::Empty>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<api::RegisterRequest>) -> Self::Future {
        let devices = self.0.clone();
        Box::pin(async move {
            devices.register(request.into_inner())?;
            Ok(tonic::Response::new(api::Empty {}))
        })
    }
}

type Http = tonic::codegen::http::Request<tonic::body::Body>;
type Answer = tonic::codegen::http::Response<tonic::body::Body>;

impl tower::Service<Http> for Registration {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Http) -> Self::Future {
        let devices = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != "/v1beta1.Registration/Register" {
                return Ok(tonic::Status::unimplemented(format!(
                    "{} is not a method of v1beta1.Registration",
                    request.uri().path()
                ))
                .into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                api::Empty,
                api::RegisterRequest,
            >::default());
            Ok(grpc.unary(Register(devices), request).await)
        })
    }
}

/// The extended resources (with a plugin) a container's limits ask for, and how many.
pub fn wanted<'a>(
    devices: &Devices,
    limits: impl Iterator<Item = (&'a String, &'a str)>,
) -> Vec<(String, usize)> {
    limits
        .filter(|(name, _)| devices.knows(name))
        .filter_map(|(name, quantity)| quantity.parse::<usize>().ok().map(|n| (name.clone(), n)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
