//! One pod's sync, level-triggered: what the API says the pod should be, what the runtime
//! says it is, one step toward the former, and the status written back. Called again
//! every second while the pod lives (the kubelet's relist), and at once on any change.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};

use crate::cri::Runtime;
use crate::volumes;
use crate::{Config, Error};

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// How often a running pod is looked at again.
pub const RELIST: Duration = Duration::from_secs(1);

/// What the agent remembers between syncs (lost on restart, and nothing depends on it
/// surviving): the last failure per container, for the waiting reason.
#[derive(Debug, Default)]
pub struct Memory {
    waiting: Mutex<HashMap<(String, String), (String, String)>>,
    /// Probe results by container id.
    pub probes: crate::probes::Results,
    /// Service-account tokens for projected volumes.
    pub tokens: crate::tokens::Tokens,
    /// The `KUBERNETES_SERVICE_*` variables, read once (the API's Service keeps its
    /// address), not at every container start.
    master_env: Mutex<Option<Vec<(String, String)>>>,
    /// Per container, the attempt its restart back-off counts from: the one after its
    /// last run of 10 minutes (the kubelet forgets a back-off that long unused).
    backoff_from: Mutex<HashMap<(String, String), u32>>,
    /// Per container, its image pulls that failed in a row and when the last one ended:
    /// the next pull waits, as the kubelet's image back-off (10 s doubling to 5 minutes).
    pull_failures: Mutex<HashMap<(String, String), (u32, Instant)>>,
    /// Per container, the attempt its first container in a new sandbox takes: its count
    /// goes on from the sandbox that went (a reboot), as restartCount does on Kubernetes.
    carried: Mutex<HashMap<(String, String), u32>>,
}

impl Memory {
    fn set(&self, uid: &str, container: &str, reason: &str, message: String) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.insert((uid.to_owned(), container.to_owned()), (reason.to_owned(), message));
    }

    fn clear(&self, uid: &str, container: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.remove(&(uid.to_owned(), container.to_owned()));
    }

    fn get(&self, uid: &str, container: &str) -> Option<(String, String)> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.get(&(uid.to_owned(), container.to_owned())).cloned()
    }

    pub fn forget_pod(&self, uid: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|(u, _), _| u != uid);
        let mut from = self.backoff_from.lock().unwrap_or_else(|p| p.into_inner());
        from.retain(|(u, _), _| u != uid);
        let mut pulls = self.pull_failures.lock().unwrap_or_else(|p| p.into_inner());
        pulls.retain(|(u, _), _| u != uid);
        let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        carried.retain(|(u, _), _| u != uid);
        self.tokens.forget(uid);
    }
}

/// Everything a sync needs.
pub struct Context<'a> {
    pub client: &'a kube::Client,
    pub runtime: &'a Runtime,
    pub config: &'a Config,
    pub sources: &'a dyn volumes::Sources,
    pub memory: &'a Memory,
    pub events: &'a crate::events::Recorder,
    pub host_ip: &'a str,
    pub devices: Option<&'a crate::devices::Devices>,
    /// Every pod the agent sees (those of other nodes too), for admission.
    pub pods: &'a berth_reconcile::Cache<Pod>,
}

fn cri_error(action: String) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Runtime { action, message: status.message().to_owned() }
}

/// The pod's sandboxes, newest first.
pub async fn sandboxes_of(runtime: &Runtime, uid: &str) -> Result<Vec<cri::PodSandbox>, Error> {
    let mut rt = runtime.runtime.clone();
    let filter = cri::PodSandboxFilter {
        label_selector: [(LABEL_POD_UID.to_owned(), uid.to_owned())].into(),
        ..Default::default()
    };
    let mut items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) })
        .await
        .map_err(cri_error(format!("list the sandboxes of pod {uid}")))?
        .into_inner()
        .items;
    items.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    Ok(items)
}

async fn containers_of(
    runtime: &Runtime,
    sandbox: &str,
) -> Result<Vec<cri::ContainerStatus>, Error> {
    let mut rt = runtime.runtime.clone();
    let filter = cri::ContainerFilter { pod_sandbox_id: sandbox.to_owned(), ..Default::default() };
    let listed = rt
        .list_containers(cri::ListContainersRequest { filter: Some(filter) })
        .await
        .map_err(cri_error(format!("list the containers of sandbox {sandbox}")))?
        .into_inner()
        .containers;
    let mut statuses = Vec::new();
    for container in listed {
        match rt
            .container_status(cri::ContainerStatusRequest {
                container_id: container.id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(status) => statuses.extend(status.into_inner().status),
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => {
                return Err(cri_error(format!("inspect container {}", container.id))(status))
            }
        }
    }
    Ok(statuses)
}

/// Stops and removes every sandbox of a pod (its containers with `grace` seconds).
pub async fn kill_pod(runtime: &Runtime, uid: &str, grace: i64) -> Result<(), Error> {
    let mut rt = runtime.runtime.clone();
    for sandbox in sandboxes_of(runtime, uid).await? {
        let containers = containers_of(runtime, &sandbox.id).await?;
        let stops = containers
            .iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| {
                let mut rt = rt.clone();
                let id = c.id.clone();
                async move {
                    rt.stop_container(cri::StopContainerRequest {
                        container_id: id,
                        timeout: grace,
                    })
                    .await
                }
            });
        for result in futures::future::join_all(stops).await {
            result.map_err(cri_error(format!("stop the containers of pod {uid}")))?;
        }
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.id.clone() })
            .await
            .map_err(cri_error(format!("stop sandbox {}", sandbox.id)))?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.id.clone() })
            .await
            .map_err(cri_error(format!("remove sandbox {}", sandbox.id)))?;
    }
    Ok(())
}

/// The outcome of a sync: look again after this long (or not at all).
pub type Next = Option<Duration>;

pub async fn sync(ctx: &Context<'_>, pod: &Pod) -> Result<Next, Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let message = format!("Stopping container {}", container.name);
            ctx.events.record_once(pod, Some(&container.name), false, "Killing", &message).await;
        }
        let grace = pre_stop(ctx, pod, grace).await;
        kill_pod(ctx.runtime, &uid, grace).await?;
        crate::remove_pod_dir(&ctx.config.pod_dir(&uid));
        ctx.memory.forget_pod(&uid);
        if let Some(devices) = ctx.devices {
            devices.release(&uid);
        }
        ctx.events.forget_pod(&uid);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        return match api.delete(&name, &params).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(None),
            Err(err) => {
                Err(Error::Api { action: format!("remove {namespace}/{name}"), source: err })
            }
        };
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        // Finished: its containers are stopped; the sandbox goes (its logs stay), and its
        // devices go back once it is.
        for sandbox in sandboxes_of(ctx.runtime, &uid).await? {
            if sandbox.state == cri::PodSandboxState::SandboxReady as i32 {
                let mut rt = ctx.runtime.runtime.clone();
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                })
                .await
                .map_err(cri_error(format!("stop sandbox {}", sandbox.id)))?;
            }
        }
        // Its volumes go too, as the kubelet tears down a terminated pod's: a
        // memory-backed emptyDir gives its memory back (an evicted pod's must, or the
        // pressure stays).
        // The subPath pins first: each holds a piece of a volume.
        crate::remove_pod_dir(&ctx.config.pod_dir(&uid).join("volume-subpaths"));
        crate::remove_pod_dir(&ctx.config.pod_dir(&uid).join("volumes"));
        if let Some(devices) = ctx.devices {
            devices.release(&uid);
        }
        return Ok(None);
    }
    // The sandbox: the newest ready one, or a new one.
    let sandboxes = sandboxes_of(ctx.runtime, &uid).await?;
    // Admission of a pod not started yet, as the kubelet's: a pod asking for more
    // devices than the node has free, or for a host port a pod admitted before it holds,
    // is rejected (Failed, with the kubelet's reason), not left waiting; its controller
    // makes another that the scheduler places.
    if sandboxes.is_empty() {
        let refused = match ctx.devices.map(|d| d.admit(&uid, &wanted_devices(d, &spec))) {
            Some(Err(message)) => Some(("UnexpectedAdmissionError", message)),
            _ => host_port_conflict(ctx.pods, pod, &ctx.config.node_name).then(|| {
                (
                    "NodePorts",
                    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports".to_owned(),
                )
            }),
        };
        if let Some((reason, message)) = refused {
            let message = format!("Pod was rejected: {message}");
            tracing::warn!("{namespace}/{name}: {message}");
            ctx.events.record_once(pod, None, true, reason, &message).await;
            let patch =
                json!({"status": {"phase": "Failed", "reason": reason, "message": message}});
            return match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(err) => {
                    Err(Error::Api { action: format!("reject {namespace}/{name}"), source: err })
                }
            };
        }
    }
    // A pod that never restarts gets no new sandbox once its containers ran (its sandbox
    // went with a reboot): as the kubelet, it ends with what its containers did.
    let ran = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.container_id.is_some()));
    let never = spec.restart_policy.as_deref() == Some("Never");
    let ready = sandboxes.iter().find(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
    let newest = sandboxes.iter().max_by_key(|s| s.created_at);
    let sandbox = match (ready, newest) {
        (Some(sandbox), _) => sandbox.clone(),
        (None, Some(newest)) if never && ran => newest.clone(),
        (None, _) => {
            let attempt = sandboxes
                .iter()
                .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
                .max()
                .unwrap_or(0);
            // The sandboxes that went (stopped, or gone with a reboot) go: their
            // containers' names are free again, and their attempts carry on (if they
            // cannot be listed, the sync fails and is tried again, the count kept).
            for old in &sandboxes {
                for status in containers_of(ctx.runtime, &old.id).await? {
                    if let Some(meta) = &status.metadata {
                        let mut carried =
                            ctx.memory.carried.lock().unwrap_or_else(|p| p.into_inner());
                        let entry = carried.entry((uid.clone(), meta.name.clone())).or_insert(0);
                        *entry = (*entry).max(meta.attempt + 1);
                    }
                }
                let mut rt = ctx.runtime.runtime.clone();
                let id = old.id.clone();
                if let Err(status) = rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() })
                    .await
                {
                    tracing::warn!(
                        "{namespace}/{name}: stop the old sandbox {id}: {}",
                        status.message()
                    );
                }
                if let Err(status) = rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() })
                    .await
                {
                    tracing::warn!(
                        "{namespace}/{name}: remove the old sandbox {id}: {}",
                        status.message()
                    );
                }
            }
            let config = sandbox_config(ctx.config, pod, attempt);
            let mut rt = ctx.runtime.runtime.clone();
            let id = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .map_err(cri_error(format!("run the sandbox of {namespace}/{name}")))?
                .into_inner()
                .pod_sandbox_id;
            sandbox_by_id(ctx.runtime, &id).await?
        }
    };
    let sandbox_status = {
        let mut rt = ctx.runtime.runtime.clone();
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.id.clone(),
            verbose: false,
        })
        .await
        .map_err(cri_error(format!("inspect sandbox {}", sandbox.id)))?
        .into_inner()
        .status
        .unwrap_or_default()
    };
    let pod_ip = sandbox_status.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    // Volumes, made or refreshed.
    let prepared = match ctx.memory.tokens.refresh(ctx.client, pod).await {
        Err(message) => Err(volumes::MountFailure(message)),
        Ok(_) => volumes::prepare(pod, &ctx.config.pod_dir(&uid), ctx.sources),
    };
    let volume_paths = match prepared {
        Ok(paths) => Some(paths),
        Err(failure) => {
            for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
                ctx.memory.set(
                    &uid,
                    &c.name,
                    "ContainerCreating",
                    format!("FailedMount: {}", failure.0),
                );
            }
            None
        }
    };
    let statuses = containers_of(ctx.runtime, &sandbox.id).await?;
    let latest = |name: &str| -> Option<&cri::ContainerStatus> {
        statuses
            .iter()
            .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == name))
            .max_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt))
    };
    let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let mut next: Next = Some(RELIST);
    let mut changed = false;
    // Init containers, in order: each must have succeeded before the next (sidecars,
    // with restartPolicy Always, must be running).
    let mut initialized = true;
    // Once a main container was made, the pod stays initialized: a sidecar that exits
    // then is restarted beside the main containers, which go on being looked after.
    let main_made = spec.containers.iter().any(|c| latest(&c.name).is_some());
    if let Some(paths) = &volume_paths {
        for container in spec.init_containers.iter().flatten() {
            let sidecar = container.restart_policy.as_deref() == Some("Always");
            match latest(&container.name) {
                None => {
                    initialized = false;
                    start(
                        ctx,
                        pod,
                        &sandbox.id,
                        &sandbox_status,
                        container,
                        first_attempt(ctx, &uid, &container.name),
                        paths,
                        &pod_ip,
                    )
                    .await?;
                    changed = true;
                    break;
                }
                // A running sidecar lets the next one start once its startup probe (if
                // it has one) passed, as the kubelet waits for it.
                Some(s) if s.state == cri::ContainerState::ContainerRunning as i32 && sidecar => {
                    if container.startup_probe.is_some()
                        && !main_made
                        && !ctx.memory.probes.started(&s.id)
                    {
                        initialized = false;
                        break;
                    }
                }
                Some(s)
                    if s.state == cri::ContainerState::ContainerExited as i32
                        && s.exit_code == 0
                        && !sidecar => {}
                Some(s) if s.state == cri::ContainerState::ContainerExited as i32 => {
                    let beside = sidecar && main_made;
                    if !beside {
                        initialized = false;
                    }
                    if restart_policy == "Never" && !sidecar {
                        break;
                    }
                    let attempt = s.metadata.as_ref().map_or(0, |m| m.attempt) + 1;
                    match backoff_left(ctx, &uid, s) {
                        Some(wait) => {
                            next = Some(crash_loop(ctx, &uid, &name, &container.name, wait))
                        }
                        None => {
                            start(
                                ctx,
                                pod,
                                &sandbox.id,
                                &sandbox_status,
                                container,
                                attempt,
                                paths,
                                &pod_ip,
                            )
                            .await?;
                            changed = true;
                        }
                    }
                    if !beside {
                        break;
                    }
                }
                Some(_) if sidecar && main_made => {}
                Some(_) => {
                    initialized = false;
                    break;
                }
            }
        }
        if initialized {
            for container in &spec.containers {
                let Some(s) = latest(&container.name) else {
                    start(
                        ctx,
                        pod,
                        &sandbox.id,
                        &sandbox_status,
                        container,
                        first_attempt(ctx, &uid, &container.name),
                        paths,
                        &pod_ip,
                    )
                    .await?;
                    changed = true;
                    continue;
                };
                if s.state != cri::ContainerState::ContainerExited as i32 {
                    continue;
                }
                let restart = match restart_policy.as_str() {
                    "Never" => false,
                    "OnFailure" => s.exit_code != 0,
                    _ => true,
                };
                if !restart {
                    continue;
                }
                match backoff_left(ctx, &uid, s) {
                    Some(wait) => next = Some(crash_loop(ctx, &uid, &name, &container.name, wait)),
                    None => {
                        let attempt = s.metadata.as_ref().map_or(0, |m| m.attempt) + 1;
                        start(
                            ctx,
                            pod,
                            &sandbox.id,
                            &sandbox_status,
                            container,
                            attempt,
                            paths,
                            &pod_ip,
                        )
                        .await?;
                        changed = true;
                    }
                }
            }
        }
        // Ephemeral containers (`kubectl debug`) start once each and never restart.
        if initialized {
            for container in ephemeral_containers(&spec) {
                if latest(&container.name).is_none() {
                    start(
                        ctx,
                        pod,
                        &sandbox.id,
                        &sandbox_status,
                        &container,
                        first_attempt(ctx, &uid, &container.name),
                        paths,
                        &pod_ip,
                    )
                    .await?;
                    changed = true;
                }
            }
        }
    } else {
        initialized = false;
    }
    let statuses = if changed { containers_of(ctx.runtime, &sandbox.id).await? } else { statuses };
    // Probes of the running containers: readiness and started for the status; a failed
    // liveness (or startup) probe kills the container, which restarts as its policy says.
    let mut verdicts: HashMap<String, crate::probes::Verdict> = HashMap::new();
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let Some(status) = statuses
            .iter()
            .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == container.name))
            .max_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt))
        else {
            continue;
        };
        if status.state != cri::ContainerState::ContainerRunning as i32 {
            continue;
        }
        let verdict = ctx.memory.probes.check(ctx.runtime, container, status, &pod_ip).await;
        // Each failed probe, as the kubelet's Unhealthy event (repeats counted).
        for message in &verdict.failed {
            ctx.events.record_counted(pod, Some(&container.name), true, "Unhealthy", message).await;
        }
        if let Some(why) = &verdict.kill {
            tracing::info!(pod = %name, container = %container.name, "{why}; restarting");
            ctx.memory.set(&uid, &container.name, "Unhealthy", why.clone());
            let mut rt = ctx.runtime.runtime.clone();
            rt.stop_container(cri::StopContainerRequest {
                container_id: status.id.clone(),
                timeout: grace,
            })
            .await
            .map_err(cri_error(format!("stop container {}", status.id)))?;
            next = Some(Duration::from_millis(10));
        }
        verdicts.insert(status.id.clone(), verdict);
    }
    for container in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
        let Some((reason, message)) = ctx.memory.get(&uid, &container.name) else { continue };
        let restarts = statuses
            .iter()
            .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == container.name))
            .count();
        let (event, text) = match reason.as_str() {
            "CrashLoopBackOff" => (
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {name} ({restarts})",
                    container.name
                ),
            ),
            "ImagePullBackOff" => (
                "BackOff",
                format!("Back-off pulling image {:?}", container.image.clone().unwrap_or_default()),
            ),
            // (Each failed probe is an Unhealthy event already, counted: see the probes.)
            "Unhealthy" => ("", String::new()),
            "ContainerCreating" => match message.strip_prefix("FailedMount: ") {
                Some(text) => ("FailedMount", format!("MountVolume.SetUp failed: {text}")),
                None => continue,
            },
            _ => ("Failed", format!("{reason}: {message}")),
        };
        if !event.is_empty() {
            ctx.events.record_once(pod, Some(&container.name), true, event, &text).await;
        }
        if reason == "Unhealthy" {
            let kill = format!(
                "Container {} failed a probe, will be restarted ({restarts})",
                container.name
            );
            ctx.events.record_once(pod, Some(&container.name), false, "Killing", &kill).await;
        }
    }
    let status = pod_status(ctx, pod, &sandbox_status, &statuses, initialized, &verdicts);
    let current =
        serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
    if differs(&current, &status) {
        let patch = json!({"status": status});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(err) => {
                return Err(Error::Api {
                    action: format!("update the status of {namespace}/{name}"),
                    source: err,
                })
            }
        }
    }
    let finished = matches!(status["phase"].as_str(), Some("Succeeded" | "Failed"));
    Ok(if finished { Some(Duration::from_millis(10)) } else { next })
}

/// The hosts file the kubelet writes for a pod's containers: localhost, the pod's own
/// address under its hostname (and FQDN when it has a subdomain), and its hostAliases;
/// with the host's network, the host's file and the aliases. `None`: the runtime's is
/// right (host network without aliases).
fn hosts_file(config: &Config, pod: &Pod, pod_ip: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let mut aliases = String::new();
    for alias in spec.host_aliases.iter().flatten() {
        let names = alias.hostnames.clone().unwrap_or_default();
        if !alias.ip.is_empty() && !names.is_empty() {
            aliases.push_str(&format!("{}\t{}\n", alias.ip, names.join("\t")));
        }
    }
    if !aliases.is_empty() {
        aliases = format!("\n# Entries added by HostAliases.\n{aliases}");
    }
    if spec.host_network.unwrap_or(false) {
        if aliases.is_empty() {
            return None;
        }
        let host = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        return Some(format!("# Kubernetes-managed hosts file (host network).\n{host}{aliases}"));
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().filter(|h| !h.is_empty()).unwrap_or(name);
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut text = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !pod_ip.is_empty() {
        match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(subdomain) => text.push_str(&format!(
                "{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.{}\t{hostname}\n",
                config.cluster_domain
            )),
            None => text.push_str(&format!("{pod_ip}\t{hostname}\n")),
        }
    }
    text.push_str(&aliases);
    Some(text)
}

/// The host ports a pod asks for: (host IP, "0.0.0.0" for all; protocol; port).
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    let host_network = spec.host_network.unwrap_or(false);
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port =
                p.host_port.filter(|h| *h > 0).or(host_network.then_some(p.container_port))?;
            let ip =
                p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            Some((ip, p.protocol.clone().unwrap_or_else(|| "TCP".into()), port))
        })
        .collect()
}

/// Whether a pod admitted before `pod` on this node (an active one created earlier)
/// holds a host port `pod` asks for, as the kubelet's NodePorts admission sees it.
fn host_port_conflict(pods: &berth_reconcile::Cache<Pod>, pod: &Pod, node: &str) -> bool {
    let wanted = host_ports(pod);
    if wanted.is_empty() {
        return false;
    }
    let order =
        |p: &Pod| (p.metadata.creation_timestamp.clone().map(|t| t.0), p.metadata.name.clone());
    let mine = order(pod);
    pods.store().state().iter().any(|other| {
        other.metadata.uid != pod.metadata.uid
            && other.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
            && other.metadata.deletion_timestamp.is_none()
            && !matches!(
                other.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
            && order(other) < mine
            && host_ports(other).iter().any(|(ip, protocol, port)| {
                wanted.iter().any(|(wip, wprotocol, wport)| {
                    port == wport
                        && protocol == wprotocol
                        && (ip == wip || ip == "0.0.0.0" || wip == "0.0.0.0")
                })
            })
    })
}

/// The devices a pod's containers ask for, per resource: the sum over its containers, or
/// the largest init container's when that is more (init containers run one at a time).
fn wanted_devices(
    devices: &crate::devices::Devices,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> BTreeMap<String, usize> {
    let of = |c: &Container| {
        let limits = c.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
        crate::devices::wanted(devices, limits.iter().map(|(k, q)| (k, q.0.as_str())))
    };
    let mut total = BTreeMap::new();
    for c in &spec.containers {
        for (resource, n) in of(c) {
            *total.entry(resource).or_insert(0) += n;
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (resource, n) in of(c) {
            let entry = total.entry(resource).or_insert(0);
            *entry = (*entry).max(n);
        }
    }
    total
}

/// The attempt of a container's first start in this sandbox: 0, or where the count of a
/// sandbox that went left it.
fn first_attempt(ctx: &Context<'_>, uid: &str, container: &str) -> u32 {
    let carried = ctx.memory.carried.lock().unwrap_or_else(|p| p.into_inner());
    carried.get(&(uid.to_owned(), container.to_owned())).copied().unwrap_or(0)
}

/// Whether the written status would change anything the agent owns.
fn differs(current: &Value, wanted: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(conditions) = v["conditions"].as_array_mut() {
            for c in conditions.iter_mut() {
                if let Some(map) = c.as_object_mut() {
                    map.remove("lastTransitionTime");
                    map.remove("lastProbeTime");
                }
            }
        }
        v
    };
    let (current, wanted) = (strip(current), strip(wanted));
    wanted.as_object().is_some_and(|w| w.iter().any(|(k, v)| current.get(k) != Some(v)))
}

async fn sandbox_by_id(runtime: &Runtime, id: &str) -> Result<cri::PodSandbox, Error> {
    let mut rt = runtime.runtime.clone();
    let filter = cri::PodSandboxFilter { id: id.to_owned(), ..Default::default() };
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) })
        .await
        .map_err(cri_error(format!("find sandbox {id}")))?
        .into_inner()
        .items
        .into_iter()
        .next()
        .ok_or_else(|| Error::Runtime {
            action: format!("find sandbox {id}"),
            message: "it vanished".into(),
        })
}

/// Records a container waiting out its restart back-off (CrashLoopBackOff, as the status
/// shows it); returns when to look again.
fn crash_loop(
    ctx: &Context<'_>,
    uid: &str,
    pod: &str,
    container: &str,
    wait: Duration,
) -> Duration {
    let message = format!(
        "back-off {}s restarting failed container={container} pod={pod}",
        wait.as_secs().max(1)
    );
    ctx.memory.set(uid, container, "CrashLoopBackOff", message);
    wait.min(RELIST)
}

/// How long a restart must still wait: the kubelet's back-off, 10 s doubling per restart
/// up to 5 minutes (scaled by the configured base), none after a run of 10 minutes, and
/// counted again from 10 s for the crashes after such a run.
fn backoff_left(ctx: &Context<'_>, uid: &str, status: &cri::ContainerStatus) -> Option<Duration> {
    let attempt = status.metadata.as_ref().map_or(0, |m| m.attempt);
    let name = status.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    // A container that never started (its start failed) ran for no time at all.
    let ran = if status.started_at > 0 {
        Duration::from_nanos(u64::try_from(status.finished_at - status.started_at).unwrap_or(0))
    } else {
        Duration::ZERO
    };
    let key = (uid.to_owned(), name);
    let mut from = ctx.memory.backoff_from.lock().unwrap_or_else(|p| p.into_inner());
    if ran >= BACKOFF_RESET {
        from.insert(key.clone(), attempt + 1);
    }
    let delay = backoff_delay(ctx.config.restart_backoff, attempt, from.get(&key).copied(), ran);
    let finished = std::time::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(status.finished_at).unwrap_or(0));
    let elapsed = std::time::SystemTime::now().duration_since(finished).unwrap_or_default();
    (elapsed < delay).then(|| delay - elapsed)
}

/// A run this long resets a container's back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The back-off before restarting a container whose attempt `attempt` ran for `ran`:
/// none after a long run; else `base` doubled per crash since the back-off was last reset
/// (at attempt `from`), at most 30 times `base` (10 s to 5 minutes).
fn backoff_delay(base: Duration, attempt: u32, from: Option<u32>, ran: Duration) -> Duration {
    if ran >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    let crashes = attempt.saturating_sub(from.unwrap_or(0));
    (base * (1u32 << crashes.min(5))).min(base * 30)
}

fn sandbox_config(config: &Config, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> =
        pod.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    labels.insert(LABEL_POD_NAME.into(), name.clone());
    labels.insert(LABEL_POD_NAMESPACE.into(), namespace.clone());
    labels.insert(LABEL_POD_UID.into(), uid.clone());
    let host_network = spec.host_network.unwrap_or(false);
    let node =
        |b: bool| if b { cri::NamespaceMode::Node as i32 } else { cri::NamespaceMode::Pod as i32 };
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let dns = dns_config(config, &spec, &namespace);
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt,
        }),
        hostname: if host_network { String::new() } else { hostname },
        log_directory: config
            .log_dir
            .join(format!("{namespace}_{name}_{uid}"))
            .to_string_lossy()
            .into_owned(),
        dns_config: dns,
        port_mappings: ports,
        labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup(qos_class(pod), &uid),
            resources: pod_resources(&spec),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: node(host_network),
                    pid: if spec.host_pid.unwrap_or(false) {
                        cri::NamespaceMode::Node as i32
                    } else if spec.share_process_namespace.unwrap_or(false) {
                        cri::NamespaceMode::Pod as i32
                    } else {
                        cri::NamespaceMode::Container as i32
                    },
                    ipc: node(spec.host_ipc.unwrap_or(false)),
                    ..Default::default()
                }),
                privileged: spec.containers.iter().any(|c| {
                    c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false)
                }),
                ..Default::default()
            }),
            sysctls: spec
                .security_context
                .as_ref()
                .and_then(|s| s.sysctls.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.name, s.value))
                .collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The pod's resolver settings by `dnsPolicy`, as the kubelet makes them: ClusterFirst
/// (the default) gives the cluster DNS and the search path of the pod's namespace (the
/// host's resolvers for host-network pods, unless ClusterFirstWithHostNet), Default the
/// host's, None only what `dnsConfig` says; `dnsConfig` adds to the first two.
fn dns_config(
    config: &Config,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    namespace: &str,
) -> Option<cri::DnsConfig> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let cluster = match (policy, &config.cluster_dns) {
        ("ClusterFirst", Some(ip)) if !host_network => Some(ip.clone()),
        ("ClusterFirstWithHostNet", Some(ip)) => Some(ip.clone()),
        _ => None,
    };
    let mut dns = match (&cluster, policy) {
        (Some(ip), _) => {
            let domain = &config.cluster_domain;
            cri::DnsConfig {
                servers: vec![ip.clone()],
                searches: vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ],
                options: vec!["ndots:5".into()],
            }
        }
        (None, "None") => cri::DnsConfig::default(),
        // Default (and ClusterFirst without a cluster DNS): the node's resolv.conf, with
        // the pod's dnsConfig added.
        (None, _) => return spec.dns_config.as_ref().map(|d| extra_dns(host_dns(), d)),
    };
    if let Some(extra) = &spec.dns_config {
        dns = extra_dns(dns, extra);
    }
    Some(dns)
}

/// The node's /etc/resolv.conf as a CRI DNS configuration.
fn host_dns() -> cri::DnsConfig {
    let mut dns = cri::DnsConfig::default();
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_owned)),
            Some("search" | "domain") => {
                dns.searches = words.map(str::to_owned).collect();
            }
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}

fn extra_dns(
    mut dns: cri::DnsConfig,
    extra: &k8s_openapi::api::core::v1::PodDNSConfig,
) -> cri::DnsConfig {
    dns.servers.extend(extra.nameservers.clone().unwrap_or_default());
    dns.searches.extend(extra.searches.clone().unwrap_or_default());
    for option in extra.options.iter().flatten() {
        let name = option.name.clone().unwrap_or_default();
        dns.options.retain(|o| o.split(':').next() != Some(name.as_str()));
        dns.options.push(match &option.value {
            Some(v) => format!("{name}:{v}"),
            None => name,
        });
    }
    dns
}

/// What a pod's containers request of an eviction's scarce resource (bytes): memory, or
/// ephemeral storage; a limit without a request counts as the request, as the API server
/// defaults it.
pub fn requested(pod: &Pod, resource: crate::eviction::Resource) -> u64 {
    let name = match resource {
        crate::eviction::Resource::Memory => "memory",
        crate::eviction::Resource::EphemeralStorage => "ephemeral-storage",
        crate::eviction::Resource::Pids => return 0,
    };
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| {
            let resources = c.resources.as_ref()?;
            resources
                .requests
                .as_ref()
                .and_then(|r| r.get(name))
                .or_else(|| resources.limits.as_ref().and_then(|l| l.get(name)))
        })
        .map(|q| u64::try_from(bytes(&q.0)).unwrap_or(0))
        .sum()
}

/// Kubernetes' QoS class of a pod.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else { return "BestEffort" };
    let containers: Vec<&Container> =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let resources = c.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.get(resource);
            let request = requests.get(resource).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The pod cgroup's limits, as the kubelet sizes it: CPU shares from the sum of the
/// containers' requests; a CPU quota and a memory limit only when every container has
/// that limit (one unlimited container leaves the pod unlimited). Init containers run
/// one at a time, so the largest of them counts when it is larger than the sum.
fn pod_resources(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Option<cri::LinuxContainerResources> {
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.clone().unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        let cpu_request =
            requests.get("cpu").or(limits.get("cpu")).map(|q| milli_cpu(&q.0)).unwrap_or(0);
        let cpu_limit = limits.get("cpu").map(|q| milli_cpu(&q.0));
        let memory_limit = limits.get("memory").map(|q| bytes(&q.0));
        (cpu_request, cpu_limit, memory_limit)
    };
    let sum = |list: &[k8s_openapi::api::core::v1::Container]| {
        list.iter().map(of).fold((0i64, Some(0i64), Some(0i64)), |acc, c| {
            (acc.0 + c.0, acc.1.zip(c.1).map(|(a, b)| a + b), acc.2.zip(c.2).map(|(a, b)| a + b))
        })
    };
    let (mut cpu_request, mut cpu_limit, mut memory_limit) = sum(&spec.containers);
    for init in spec.init_containers.iter().flatten() {
        let (r, l, m) = of(init);
        cpu_request = cpu_request.max(r);
        cpu_limit = cpu_limit.zip(l).map(|(a, b)| a.max(b));
        memory_limit = memory_limit.zip(m).map(|(a, b)| a.max(b));
    }
    if spec.containers.is_empty() {
        return None;
    }
    let cpu_limit = cpu_limit.filter(|l| *l > 0);
    let memory_limit = memory_limit.filter(|m| *m > 0);
    Some(cri::LinuxContainerResources {
        cpu_shares: if cpu_request > 0 { (cpu_request * 1024 / 1000).max(2) } else { 2 },
        cpu_quota: cpu_limit.map_or(0, |l| (l * 100).max(1000)),
        cpu_period: if cpu_limit.is_some() { 100_000 } else { 0 },
        memory_limit_in_bytes: memory_limit.unwrap_or(0),
        ..Default::default()
    })
}

/// Quantity text to millicores / bytes.
fn milli_cpu(text: &str) -> i64 {
    if let Some(m) = text.strip_suffix('m') {
        return m.parse().unwrap_or(0);
    }
    text.parse::<f64>().map(|c| (c * 1000.0) as i64).unwrap_or(0)
}

fn bytes(text: &str) -> i64 {
    let units: [(&str, i64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<f64>().map(|n| (n * factor as f64) as i64).unwrap_or(0);
        }
    }
    text.parse::<f64>().map(|n| n as i64).unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
async fn start(
    ctx: &Context<'_>,
    pod: &Pod,
    sandbox_id: &str,
    sandbox: &cri::PodSandboxStatus,
    container: &Container,
    attempt: u32,
    volume_paths: &BTreeMap<String, PathBuf>,
    pod_ip: &str,
) -> Result<(), Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let image = container.image.clone().unwrap_or_default();
    let mut rt = ctx.runtime.runtime.clone();
    // The image, as imagePullPolicy says.
    let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
        let tag = image.rsplit('/').next().unwrap_or(&image);
        if image.contains('@') || (tag.contains(':') && !tag.ends_with(":latest")) {
            "IfNotPresent".into()
        } else {
            "Always".into()
        }
    });
    let mut images = ctx.runtime.images.clone();
    let present = images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
            verbose: false,
        })
        .await
        .map_err(cri_error(format!("inspect image {image}")))?
        .into_inner()
        .image
        .is_some();
    let pull = match policy.as_str() {
        "Never" if !present => {
            ctx.memory.set(
                &uid,
                &container.name,
                "ErrImageNeverPull",
                format!("image {image:?} is not present and the pull policy is Never"),
            );
            return Ok(());
        }
        "Always" => true,
        _ => !present,
    };
    // (By image too: a container whose image was fixed pulls the new one at once.)
    let pull_key = (uid.clone(), format!("{}\0{image}", container.name));
    if pull {
        // Still backing off from the last failed pull: no new pull yet.
        let failed = ctx
            .memory
            .pull_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pull_key)
            .copied();
        if let Some((count, at)) = failed {
            let wait = backoff_delay(
                ctx.config.restart_backoff,
                count.saturating_sub(1),
                None,
                Duration::ZERO,
            );
            if at.elapsed() < wait {
                let message =
                    ctx.memory.get(&uid, &container.name).map(|(_, m)| m).unwrap_or_default();
                ctx.memory.set(&uid, &container.name, "ImagePullBackOff", message);
                return Ok(());
            }
        }
        ctx.events
            .record(
                pod,
                Some(&container.name),
                false,
                "Pulling",
                &format!("Pulling image \"{image}\""),
            )
            .await;
        let missing: Vec<&str> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.as_str())
            .filter(|name| ctx.sources.secret(name).is_none())
            .collect();
        if !missing.is_empty() {
            // As the kubelet: the pull goes on without them, and the user is told.
            ctx.events
                .record(
                    pod,
                    None,
                    true,
                    "FailedToRetrieveImagePullSecret",
                    &format!(
                        "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                        missing.join(", ")
                    ),
                )
                .await;
        }
        // A failed pull is ErrImagePull, then ImagePullBackOff while it keeps failing.
        let pull_failed = |message: String| {
            let mut failures = ctx.memory.pull_failures.lock().unwrap_or_else(|p| p.into_inner());
            let count = failures.get(&pull_key).map_or(0, |(n, _)| *n) + 1;
            failures.insert(pull_key.clone(), (count, Instant::now()));
            drop(failures);
            let previous = ctx.memory.get(&uid, &container.name);
            let reason =
                if previous.is_some_and(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff") {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
            ctx.memory.set(&uid, &container.name, reason, message);
        };
        let auth = match pull_auth(pod, ctx.sources, &image) {
            Ok(auth) => auth,
            Err(message) => {
                pull_failed(message);
                return Ok(());
            }
        };
        let pulled = images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
                auth,
                sandbox_config: None,
            })
            .await;
        if pulled.is_ok() {
            ctx.memory.pull_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&pull_key);
            ctx.events
                .record(
                    pod,
                    Some(&container.name),
                    false,
                    "Pulled",
                    &format!("Successfully pulled image \"{image}\""),
                )
                .await;
        }
        if let Err(status) = pulled {
            // Also when the image is here already: `Always` means every start pulls (and
            // so shows its credentials), as the kubelet does; a copy another pod pulled is
            // not used in its place.
            pull_failed(format!("failed to pull image {image:?}: {}", status.message()));
            return Ok(());
        }
    }
    let cached = ctx.memory.master_env.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut env = match cached {
        Some(env) => env,
        None => {
            let env = master_service_env(ctx.client).await;
            if !env.is_empty() {
                *ctx.memory.master_env.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(env.clone());
            }
            env
        }
    };
    let own = match environment(ctx, pod, container, pod_ip) {
        Ok(own) => own,
        Err(message) => {
            ctx.memory.set(&uid, &container.name, "CreateContainerConfigError", message);
            return Ok(());
        }
    };
    env.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
    env.extend(own);
    let mut mounts = Vec::new();
    for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
        let Some(host) = volume_paths.get(&m.name) else {
            ctx.memory.set(
                &uid,
                &container.name,
                "CreateContainerConfigError",
                format!("volume {:?} is not defined in the pod", m.name),
            );
            return Ok(());
        };
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|c| c == "..") || sub.starts_with('/') => {
                ctx.memory.set(
                    &uid,
                    &container.name,
                    "CreateContainerConfigError",
                    format!("subPath {sub:?} must be relative and may not contain '..'"),
                );
                return Ok(());
            }
            Some(_) if !one_component(&container.name) || !one_component(&m.name) => {
                // They name directories here: never a path (the API checks them too).
                ctx.memory.set(
                    &uid,
                    &container.name,
                    "CreateContainerConfigError",
                    format!(
                        "container {:?} or volume {:?} is not a DNS label: no subPath for it",
                        container.name, m.name
                    ),
                );
                return Ok(());
            }
            Some(sub) => {
                let pin = ctx
                    .config
                    .pod_dir(&uid)
                    .join("volume-subpaths")
                    .join(&m.name)
                    .join(&container.name)
                    .join(index.to_string());
                match crate::volumes::pin_subpath(host, sub, &pin) {
                    Ok(()) => pin,
                    Err(err) => {
                        let message = match err {
                            crate::volumes::SubPathError::Outside => format!(
                                "subPath {sub:?} of volume {:?} leads outside the volume",
                                m.name
                            ),
                            crate::volumes::SubPathError::Failed(said) => {
                                format!("subPath {sub:?} of volume {:?}: {said}", m.name)
                            }
                        };
                        ctx.memory.set(
                            &uid,
                            &container.name,
                            "CreateContainerConfigError",
                            message,
                        );
                        return Ok(());
                    }
                }
            }
            None => host.clone(),
        };
        // Secret, ConfigMap, downward API and projected volumes are the agent's to write:
        // always read-only in the container, as Kubernetes mounts them.
        let agents = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| {
            v.name == m.name
                && (v.secret.is_some()
                    || v.config_map.is_some()
                    || v.downward_api.is_some()
                    || v.projected.is_some())
        });
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false) || agents,
            propagation: match m.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer as i32,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional as i32,
                _ => cri::MountPropagation::PropagationPrivate as i32,
            },
            ..Default::default()
        });
    }
    // The kubelet's hosts file (the pod's FQDN with a subdomain, hostAliases), unless the
    // container mounts its own.
    if !mounts.iter().any(|m| m.container_path == "/etc/hosts") {
        if let Some(text) = hosts_file(ctx.config, pod, pod_ip) {
            let path = ctx.config.pod_dir(&uid).join("etc-hosts");
            if let Err(err) = berth_stdx::fs::write_atomic(&path, text.as_bytes(), 0o644) {
                ctx.memory.set(
                    &uid,
                    &container.name,
                    "CreateContainerConfigError",
                    format!("cannot write the pod's hosts file {}: {err}", path.display()),
                );
                return Ok(());
            }
            mounts.push(cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: path.to_string_lossy().into_owned(),
                ..Default::default()
            });
        }
    }
    let resources = container.resources.clone().unwrap_or_default();
    let requests = resources.requests.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    // Devices from plugins: allocated once per pod and container, given through CRI.
    let mut device_nodes = Vec::new();
    let mut device_annotations = HashMap::new();
    if let Some(devices) = ctx.devices {
        for (resource, count) in
            crate::devices::wanted(devices, limits.iter().map(|(k, q)| (k, q.0.as_str())))
        {
            match devices.allocate(&uid, &container.name, &resource, count).await {
                Ok(allocation) => {
                    env.retain(|(k, _)| !allocation.envs.contains_key(k));
                    env.extend(allocation.envs.clone());
                    for (container_path, host_path, readonly) in &allocation.mounts {
                        mounts.push(cri::Mount {
                            container_path: container_path.clone(),
                            host_path: host_path.clone(),
                            readonly: *readonly,
                            ..Default::default()
                        });
                    }
                    for (container_path, host_path, permissions) in &allocation.device_nodes {
                        device_nodes.push(cri::Device {
                            container_path: container_path.clone(),
                            host_path: host_path.clone(),
                            permissions: permissions.clone(),
                        });
                    }
                    device_annotations.extend(allocation.annotations.clone());
                }
                Err(message) => {
                    // As the kubelet's admission: the pod does not start, and says why.
                    ctx.memory.set(
                        &uid,
                        &container.name,
                        "UnexpectedAdmissionError",
                        message.clone(),
                    );
                    ctx.events
                        .record_once(
                            pod,
                            Some(&container.name),
                            true,
                            "UnexpectedAdmissionError",
                            &message,
                        )
                        .await;
                    return Ok(());
                }
            }
        }
    }
    let cpu_request =
        requests.get("cpu").or(limits.get("cpu")).map(|q| milli_cpu(&q.0)).unwrap_or(0);
    let cpu_limit = limits.get("cpu").map(|q| milli_cpu(&q.0)).unwrap_or(0);
    let memory_limit = limits.get("memory").map(|q| bytes(&q.0)).unwrap_or(0);
    let security = container.security_context.clone().unwrap_or_default();
    let pod_security =
        pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let run_as_user = security.run_as_user.or(pod_security.run_as_user);
    let run_as_group = security.run_as_group.or(pod_security.run_as_group);
    // runAsNonRoot, checked as the kubelet does: against runAsUser, else the image's user.
    if security.run_as_non_root.or(pod_security.run_as_non_root).unwrap_or(false) {
        let who = format!(
            "(pod: \"{}_{}({uid})\", container: {})",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            container.name
        );
        let problem = match run_as_user {
            Some(0) => Some(format!("container's runAsUser breaks non-root policy {who}")),
            Some(_) => None,
            None => {
                let image_user = images
                    .image_status(cri::ImageStatusRequest {
                        image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|answer| answer.into_inner().image)
                    .map(|i| (i.uid.map(|u| u.value), i.username));
                match image_user {
                    Some((Some(0), _)) => {
                        Some(format!("container has runAsNonRoot and image will run as root {who}"))
                    }
                    Some((None, name)) if name.is_empty() => {
                        Some(format!("container has runAsNonRoot and image will run as root {who}"))
                    }
                    Some((None, name)) => Some(format!(
                        "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root {who}"
                    )),
                    Some((Some(_), _)) => None,
                    // Not known: not started (the check fails closed).
                    None => Some(format!(
                        "container has runAsNonRoot and the image's user cannot be read {who}"
                    )),
                }
            }
        };
        if let Some(message) = problem {
            ctx.memory.set(&uid, &container.name, "CreateContainerConfigError", message);
            return Ok(());
        }
    }
    let seccomp =
        security.seccomp_profile.clone().or(pod_security.seccomp_profile.clone()).map(|p| {
            cri::SecurityProfile {
                profile_type: match p.type_.as_str() {
                    "RuntimeDefault" => cri::security_profile::ProfileType::RuntimeDefault as i32,
                    "Localhost" => cri::security_profile::ProfileType::Localhost as i32,
                    _ => cri::security_profile::ProfileType::Unconfined as i32,
                },
                localhost_ref: p.localhost_profile.unwrap_or_default(),
            }
        });
    // `kubectl debug --target`: an ephemeral container joins its target's process
    // namespace (the target must be running).
    let mut namespace_options =
        sandbox.linux.as_ref().and_then(|l| l.namespaces.as_ref()).and_then(|n| n.options.clone());
    let target = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_ref())
        .and_then(|list| list.iter().find(|e| e.name == container.name))
        .and_then(|e| e.target_container_name.clone());
    if let Some(target) = target {
        let running = containers_of(ctx.runtime, sandbox_id)
            .await?
            .into_iter()
            .filter(|s| {
                s.metadata.as_ref().is_some_and(|m| m.name == target)
                    && s.state == cri::ContainerState::ContainerRunning as i32
            })
            .max_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt));
        let Some(running) = running else {
            return Err(Error::Runtime {
                action: format!("start ephemeral container {}", container.name),
                message: format!("its target container {target} is not running"),
            });
        };
        let options = namespace_options.get_or_insert_with(Default::default);
        options.pid = cri::NamespaceMode::Target as i32;
        options.target_id = running.id;
    }
    let mut labels: HashMap<String, String> = HashMap::new();
    labels.insert(LABEL_POD_NAME.into(), pod.metadata.name.clone().unwrap_or_default());
    labels.insert(LABEL_POD_NAMESPACE.into(), pod.metadata.namespace.clone().unwrap_or_default());
    labels.insert(LABEL_POD_UID.into(), uid.clone());
    labels.insert(LABEL_CONTAINER_NAME.into(), container.name.clone());
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: container.name.clone(), attempt }),
        image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env.into_iter().map(|(key, value)| cri::KeyValue { key, value }).collect(),
        mounts,
        labels,
        annotations: {
            let mut annotations = device_annotations;
            annotations
                .insert("io.kubernetes.container.restartCount".to_owned(), attempt.to_string());
            annotations
        },
        devices: device_nodes,
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: if cpu_request > 0 { (cpu_request * 1024 / 1000).max(2) } else { 2 },
                cpu_quota: if cpu_limit > 0 { (cpu_limit * 100).max(1000) } else { 0 },
                cpu_period: if cpu_limit > 0 { 100_000 } else { 0 },
                memory_limit_in_bytes: memory_limit,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: security.capabilities.as_ref().map(|c| cri::Capability {
                    add_capabilities: c.add.clone().unwrap_or_default(),
                    drop_capabilities: c.drop.clone().unwrap_or_default(),
                    add_ambient_capabilities: Vec::new(),
                }),
                privileged: security.privileged.unwrap_or(false),
                namespace_options,
                run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: security.read_only_root_filesystem.unwrap_or(false),
                // fsGroup too, as the kubelet adds it: the volumes it owns are readable.
                supplemental_groups: pod_security
                    .supplemental_groups
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(pod_security.fs_group)
                    .collect(),
                no_new_privs: security.allow_privilege_escalation == Some(false),
                seccomp,
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config),
            // The kubelet always sends it, and containerd names the container from it.
            sandbox_config: Some(sandbox_config(
                ctx.config,
                pod,
                sandbox.metadata.as_ref().map_or(0, |m| m.attempt),
            )),
        })
        .await;
    let id = match created {
        Ok(response) => {
            ctx.events
                .record(
                    pod,
                    Some(&container.name),
                    false,
                    "Created",
                    &format!("Created container {}", container.name),
                )
                .await;
            response.into_inner().container_id
        }
        Err(status) => {
            ctx.memory.set(
                &uid,
                &container.name,
                "CreateContainerError",
                status.message().to_owned(),
            );
            return Ok(());
        }
    };
    if let Err(status) =
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await
    {
        ctx.memory.set(&uid, &container.name, "RunContainerError", status.message().to_owned());
        return Ok(());
    }
    ctx.events
        .record(
            pod,
            Some(&container.name),
            false,
            "Started",
            &format!("Started container {}", container.name),
        )
        .await;
    ctx.memory.clear(&uid, &container.name);
    // postStart: the container counts as started once its hook returns; a failed hook
    // kills it, and it restarts as its policy says.
    if let Some(hook) = container.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        let grace =
            pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        if let Err(why) = crate::probes::run_hook(
            ctx.runtime,
            container,
            &id,
            hook,
            pod_ip,
            Duration::from_secs(30),
        )
        .await
        {
            let message = format!("PostStartHook failed: {why}");
            ctx.events
                .record(pod, Some(&container.name), true, "FailedPostStartHook", &message)
                .await;
            ctx.memory.set(&uid, &container.name, "PostStartHookError", message);
            let _ = rt
                .stop_container(cri::StopContainerRequest { container_id: id, timeout: grace })
                .await;
        }
    }
    Ok(())
}

/// preStop hooks of the pod's running containers, in parallel, within the grace period;
/// returns the seconds of grace left for the stop.
async fn pre_stop(ctx: &Context<'_>, pod: &Pod, grace: i64) -> i64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = &pod.spec else { return grace };
    let started = std::time::Instant::now();
    let Ok(sandboxes) = sandboxes_of(ctx.runtime, &uid).await else { return grace };
    let mut hooks = Vec::new();
    for sandbox in sandboxes.iter().filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
    {
        let Ok(statuses) = containers_of(ctx.runtime, &sandbox.id).await else { continue };
        for status in
            statuses.iter().filter(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        {
            let Some(container) = spec
                .containers
                .iter()
                .find(|c| status.metadata.as_ref().is_some_and(|m| m.name == c.name))
            else {
                continue;
            };
            let Some(hook) = container.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) else {
                continue;
            };
            let id = status.id.clone();
            let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            hooks.push(async move {
                let outcome = crate::probes::run_hook(
                    ctx.runtime,
                    container,
                    &id,
                    &hook,
                    &pod_ip,
                    Duration::from_secs(u64::try_from(grace.max(1)).unwrap_or(1)),
                )
                .await;
                (container.name.clone(), outcome)
            });
        }
    }
    for (name, outcome) in futures::future::join_all(hooks).await {
        if let Err(why) = outcome {
            ctx.events
                .record(
                    pod,
                    Some(&name),
                    true,
                    "FailedPreStopHook",
                    &format!("PreStopHook failed: {why}"),
                )
                .await;
        }
    }
    (grace - i64::try_from(started.elapsed().as_secs()).unwrap_or(0)).max(0)
}

/// The container's environment: `envFrom` sources, then `env` (later wins), with
/// `$(VAR)` references expanded as Kubernetes does.
/// The variables every container gets for the API server's Service (`default/kubernetes`),
/// as the kubelet sets them: in-cluster clients find the API with them.
async fn master_service_env(client: &kube::Client) -> Vec<(String, String)> {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), "default");
    let Ok(service) = api.get("kubernetes").await else { return Vec::new() };
    let spec = service.spec.unwrap_or_default();
    let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
        return Vec::new();
    };
    let port = spec.ports.iter().flatten().find(|p| p.name.as_deref() == Some("https"));
    let port = port.map(|p| p.port).unwrap_or(443);
    let url = format!("tcp://{ip}:{port}");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), ip.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip),
    ]
}

fn environment(
    ctx: &Context<'_>,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |key: String, value: String, env: &mut Vec<(String, String)>| {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(reference) = &from.config_map_ref {
            match ctx.sources.config_map(&reference.name) {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(format!("{prefix}{k}"), v, &mut env);
                    }
                }
                None if reference.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", reference.name)),
            }
        }
        if let Some(reference) = &from.secret_ref {
            match ctx.sources.secret(&reference.name) {
                Some(secret) => {
                    for (k, v) in secret.data.unwrap_or_default() {
                        set(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                            &mut env,
                        );
                    }
                }
                None if reference.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", reference.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = value_of(ctx, pod, container, var, pod_ip, &env, &namespace)?;
        set(var.name.clone(), value, &mut env);
    }
    Ok(env)
}

/// A variable's value, as the kubelet resolves it; a reference to a ConfigMap or Secret
/// (or one of their keys) that is not there is an error, unless it is optional (then
/// the variable is empty).
#[allow(clippy::too_many_arguments)]
fn value_of(
    ctx: &Context<'_>,
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    pod_ip: &str,
    earlier: &[(String, String)],
    namespace: &str,
) -> Result<String, String> {
    if let Some(value) = &var.value {
        return Ok(expand(value, earlier));
    }
    let Some(from) = &var.value_from else { return Ok(String::new()) };
    if let Some(field) = &from.field_ref {
        return Ok(match field.field_path.as_str() {
            "status.podIP" => pod_ip.to_owned(),
            "status.hostIP" => ctx.host_ip.to_owned(),
            path => volumes::field_value(pod, path).unwrap_or_default(),
        });
    }
    if let Some(key) = &from.config_map_key_ref {
        let optional = key.optional == Some(true);
        return match ctx.sources.config_map(&key.name) {
            None if optional => Ok(String::new()),
            None => Err(format!("configmap \"{}\" not found", key.name)),
            Some(cm) => match cm.data.and_then(|d| d.get(&key.key).cloned()) {
                Some(value) => Ok(value),
                None if optional => Ok(String::new()),
                None => Err(format!(
                    "couldn't find key {} in ConfigMap {namespace}/{}",
                    key.key, key.name
                )),
            },
        };
    }
    if let Some(key) = &from.secret_key_ref {
        let optional = key.optional == Some(true);
        return match ctx.sources.secret(&key.name) {
            None if optional => Ok(String::new()),
            None => Err(format!("secret \"{}\" not found", key.name)),
            Some(secret) => match secret
                .data
                .and_then(|d| d.get(&key.key).map(|v| String::from_utf8_lossy(&v.0).into_owned()))
            {
                Some(value) => Ok(value),
                None if optional => Ok(String::new()),
                None => {
                    Err(format!("couldn't find key {} in Secret {namespace}/{}", key.key, key.name))
                }
            },
        };
    }
    if let Some(resource) = &from.resource_field_ref {
        // The named container, or this one (env's default).
        let target = match resource.container_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                .find(|c| c.name == name),
            None => Some(container),
        };
        let divisor = resource.divisor.as_ref().map(|q| q.0.clone());
        return resource_value(target, &resource.resource, divisor.as_deref());
    }
    Ok(String::new())
}

/// A container's resource as `resourceFieldRef` gives it, rounded up in units of the
/// divisor (1 for CPU and memory by default); an unset limit is the node's capacity, as
/// the kubelet gives its allocatable.
fn resource_value(
    container: Option<&Container>,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let resources = container.and_then(|c| c.resources.clone()).unwrap_or_default();
    let (kind, name) = resource.split_once('.').ok_or_else(|| {
        format!("resourceFieldRef {resource:?} is not limits.NAME or requests.NAME")
    })?;
    let quantities = match kind {
        "limits" => resources.limits.unwrap_or_default(),
        "requests" => resources.requests.or(resources.limits).unwrap_or_default(),
        _ => {
            return Err(format!(
                "resourceFieldRef {resource:?} is not limits.NAME or requests.NAME"
            ))
        }
    };
    let given = quantities.get(name).map(|q| q.0.clone());
    match name {
        "cpu" => {
            let milli = match given {
                Some(q) => milli_cpu(&q),
                None if kind == "limits" => {
                    std::thread::available_parallelism().map_or(1, |n| n.get() as i64) * 1000
                }
                None => 0,
            };
            let per = divisor.map(milli_cpu).filter(|d| *d > 0).unwrap_or(1000);
            Ok(((milli + per - 1) / per).max(if kind == "limits" { 1 } else { 0 }).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let value = match given {
                Some(q) => bytes(&q),
                None if kind == "limits" && name == "memory" => crate::eviction::memory()
                    .map_or(0, |(_, total)| i64::try_from(total).unwrap_or(i64::MAX)),
                None => 0,
            };
            let per = divisor.map(bytes).filter(|d| *d > 0).unwrap_or(1);
            Ok(((value + per - 1) / per).to_string())
        }
        other => {
            Err(format!("resourceFieldRef: {other:?} is not cpu, memory or ephemeral-storage"))
        }
    }
}

/// `$(NAME)` from earlier variables; `$$(NAME)` stays literal `$(NAME)`.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(stripped) = tail.strip_prefix("$$") {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = tail.strip_prefix("$(") {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&tail[..end + 3]),
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(tail);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn time_of(nanos: i64) -> Value {
    if nanos <= 0 {
        return Value::Null;
    }
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    let text = berth_stdx::time::format_rfc3339_nanos(time);
    // Kubernetes' Time is whole seconds.
    let trimmed = match text.find('.') {
        Some(dot) => format!("{}Z", &text[..dot]),
        None => text,
    };
    json!(trimmed)
}

fn container_state(s: &cri::ContainerStatus) -> Value {
    if s.state == cri::ContainerState::ContainerRunning as i32 {
        json!({"running": {"startedAt": time_of(s.started_at)}})
    } else if s.state == cri::ContainerState::ContainerExited as i32 {
        let mut t = json!({"exitCode": s.exit_code, "reason": s.reason, "startedAt": time_of(s.started_at), "finishedAt": time_of(s.finished_at), "containerID": format!("berth://{}", s.id)});
        if !s.message.is_empty() {
            t["message"] = json!(s.message);
        }
        json!({"terminated": t})
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    }
}

/// A pod's ephemeral containers as containers (the same fields, less those an ephemeral
/// container may not have; `start` reads `targetContainerName` from the pod).
fn ephemeral_containers(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<Container> {
    spec.ephemeral_containers
        .iter()
        .flatten()
        .filter_map(|e| serde_json::to_value(e).ok())
        .filter_map(|v| serde_json::from_value::<Container>(v).ok())
        .collect()
}

fn pod_status(
    ctx: &Context<'_>,
    pod: &Pod,
    sandbox: &cri::PodSandboxStatus,
    statuses: &[cri::ContainerStatus],
    initialized: bool,
    verdicts: &HashMap<String, crate::probes::Verdict>,
) -> Value {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let now = berth_api::meta::now();
    let container_status = |c: &Container| -> (Value, Option<&cri::ContainerStatus>) {
        let mut mine: Vec<&cri::ContainerStatus> = statuses
            .iter()
            .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == c.name))
            .collect();
        mine.sort_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt));
        let latest = mine.last().copied();
        let previous = mine.len().checked_sub(2).and_then(|i| mine.get(i)).copied();
        let mut state = latest
            .map(container_state)
            .unwrap_or_else(|| json!({"waiting": {"reason": "ContainerCreating"}}));
        if let Some((reason, message)) = ctx.memory.get(&uid, &c.name) {
            let running =
                latest.is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
            if !running {
                state = json!({"waiting": {"reason": reason, "message": message}});
            }
        }
        let running =
            latest.is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
        let mut value = json!({
            "name": c.name,
            "image": c.image,
            "imageID": latest.map(|s| s.image_ref.clone()).unwrap_or_default(),
            "ready": running && latest.and_then(|s| verdicts.get(&s.id)).is_none_or(|v| v.ready),
            "started": running && latest.and_then(|s| verdicts.get(&s.id)).is_none_or(|v| v.started),
            "restartCount": latest.and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.attempt),
            "state": state,
            "lastState": previous.map(container_state).unwrap_or_else(|| json!({})),
        });
        if let Some(s) = latest {
            value["containerID"] = json!(format!("berth://{}", s.id));
        }
        (value, latest)
    };
    let init: Vec<(Value, Option<&cri::ContainerStatus>)> =
        spec.init_containers.iter().flatten().map(container_status).collect();
    let main: Vec<(Value, Option<&cri::ContainerStatus>)> =
        spec.containers.iter().map(container_status).collect();
    let exited = |s: Option<&cri::ContainerStatus>| {
        s.is_some_and(|s| s.state == cri::ContainerState::ContainerExited as i32)
    };
    let init_failed_for_good = restart_policy == "Never"
        && spec.init_containers.iter().flatten().zip(&init).any(|(c, (_, s))| {
            c.restart_policy.as_deref() != Some("Always")
                && exited(*s)
                && s.is_some_and(|s| s.exit_code != 0)
        });
    let all_exited = !main.is_empty() && main.iter().all(|(_, s)| exited(*s));
    let all_zero = main.iter().all(|(_, s)| s.is_some_and(|s| s.exit_code == 0));
    let phase = if init_failed_for_good {
        "Failed"
    } else if all_exited
        && (restart_policy == "Never" || (restart_policy == "OnFailure" && all_zero))
    {
        if all_zero {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized && main.iter().any(|(_, s)| s.is_some()) {
        "Running"
    } else {
        "Pending"
    };
    let ready = phase == "Running" && main.iter().all(|(v, _)| v["ready"] == json!(true));
    let sandbox_ready = sandbox.state == cri::PodSandboxState::SandboxReady as i32;
    let condition = |kind: &str, ok: bool| {
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind).cloned());
        let status = if ok { "True" } else { "False" };
        let since = match &previous {
            Some(p) if p.status == status => {
                p.last_transition_time.as_ref().map(|t| json!(t)).unwrap_or(json!(now))
            }
            _ => json!(now),
        };
        let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
        if !ok && (kind == "Ready" || kind == "ContainersReady") {
            c["reason"] = json!(if phase == "Succeeded" || phase == "Failed" {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            });
        }
        c
    };
    let ip = sandbox.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    let mut ips: Vec<Value> = Vec::new();
    if !ip.is_empty() {
        ips.push(json!({"ip": ip}));
    }
    for extra in sandbox.network.iter().flat_map(|n| n.additional_ips.iter()) {
        ips.push(json!({"ip": extra.ip}));
    }
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| json!(t))
        .unwrap_or_else(|| json!(now));
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", sandbox_ready),
            condition("Initialized", initialized),
            condition("ContainersReady", ready),
            condition("Ready", ready),
            condition("PodScheduled", true),
        ],
        "hostIP": ctx.host_ip,
        "hostIPs": [{"ip": ctx.host_ip}],
        "startTime": start_time,
        "qosClass": qos_class(pod),
        "containerStatuses": main.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(),
    });
    if !init.is_empty() {
        status["initContainerStatuses"] =
            json!(init.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>());
    }
    let ephemeral: Vec<Value> =
        ephemeral_containers(&spec).iter().map(|c| container_status(c).0).collect();
    if !ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral);
    }
    if !ip.is_empty() {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!(ips);
    } else if spec.host_network.unwrap_or(false) && !ctx.host_ip.is_empty() {
        // A pod on the host's network has the node's address, as the kubelet reports it.
        status["podIP"] = json!(ctx.host_ip);
        status["podIPs"] = json!([{"ip": ctx.host_ip}]);
    }
    status
}

/// Whether `name` is one plain path component (no `/`, not `.` or `..`, not empty).
fn one_component(name: &str) -> bool {
    let mut parts = std::path::Path::new(name).components();
    matches!(parts.next(), Some(std::path::Component::Normal(_)))
        && parts.next().is_none()
        && !name.contains('/')
}

/// A pod's cgroup as the kubelet lays them out (cgroupfs driver): Guaranteed pods right
/// under `kubepods`, the others under their QoS class's cgroup.
fn pod_cgroup(qos: &str, uid: &str) -> String {
    match qos {
        "Guaranteed" => format!("/kubepods/pod{uid}"),
        other => format!("/kubepods/{}/pod{uid}", other.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_as_kubernetes_does() {
        let env = vec![("A".to_owned(), "x".to_owned())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn quantities() {
        assert_eq!(milli_cpu("250m"), 250);
        assert_eq!(milli_cpu("1.5"), 1500);
        assert_eq!(bytes("64Mi"), 64 << 20);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1000"), 1000);
    }

    #[test]
    fn restart_backoff_doubles_and_resets_after_a_long_run() {
        let base = Duration::from_secs(10);
        let short = Duration::from_secs(1);
        let delays: Vec<u64> =
            (0..7).map(|attempt| backoff_delay(base, attempt, None, short).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff_delay(base, 9, None, Duration::from_secs(600)), Duration::ZERO);
        // After attempt 9 ran ten minutes, attempt 10's crash waits 10 s again, then 20 s.
        assert_eq!(backoff_delay(base, 10, Some(10), short).as_secs(), 10);
        assert_eq!(backoff_delay(base, 11, Some(10), short).as_secs(), 20);
    }

    #[test]
    fn names_that_could_be_paths_are_not_one_component() {
        assert!(one_component("web"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc", "a/"] {
            assert!(!one_component(bad), "{bad:?}");
        }
    }

    #[test]
    fn pod_cgroups_are_laid_out_as_the_kubelets() {
        assert_eq!(pod_cgroup("Guaranteed", "u1"), "/kubepods/podu1");
        assert_eq!(pod_cgroup("Burstable", "u2"), "/kubepods/burstable/podu2");
        assert_eq!(pod_cgroup("BestEffort", "u3"), "/kubepods/besteffort/podu3");
    }

    #[test]
    fn qos_classes() {
        let pod = |resources: Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": resources}]}})).unwrap()
        };
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))), "Guaranteed");
        assert_eq!(qos_class(&pod(json!({"requests": {"cpu": "1"}}))), "Burstable");
    }
}

/// The registry an image reference names, as Docker reads it (`docker.io` when the first
/// part is no host), Docker Hub's other names as `docker.io` too.
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize_registry(first)
        }
        _ => "docker.io".to_owned(),
    }
}

/// A registry as written in a docker config key (`https://index.docker.io/v1/`,
/// `registry:5000`), reduced to its host, Docker Hub's names to `docker.io`.
fn normalize_registry(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    }
}

/// The credentials for `image` from the pod's `imagePullSecrets`
/// (`kubernetes.io/dockerconfigjson` or the older `kubernetes.io/dockercfg`): the first
/// entry whose registry is the image's, as the kubelet picks them. A secret whose
/// config is not JSON is an error naming it (the kubelet fails the pull so too).
fn pull_auth(
    pod: &Pod,
    sources: &dyn volumes::Sources,
    image: &str,
) -> Result<Option<cri::AuthConfig>, String> {
    let wanted = registry_of(image);
    let references = pod.spec.iter().flat_map(|s| s.image_pull_secrets.iter().flatten());
    for reference in references {
        let Some(secret) = sources.secret(&reference.name) else { continue };
        let data = secret.data.unwrap_or_default();
        let (field, config) = match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
            (Some(config), _) => (".dockerconfigjson", config),
            (None, Some(config)) => (".dockercfg", config),
            (None, None) => continue,
        };
        let parsed: serde_json::Value = serde_json::from_slice(&config.0).map_err(|err| {
            format!(
                "image pull secret {:?}: its {field} is not JSON ({err}); recreate it with kubectl create secret docker-registry",
                reference.name
            )
        })?;
        let entries = if field == ".dockerconfigjson" { &parsed["auths"] } else { &parsed };
        for (key, entry) in entries.as_object().into_iter().flatten() {
            if normalize_registry(key) != wanted {
                continue;
            }
            let text = |field: &str| entry[field].as_str().unwrap_or_default().to_owned();
            return Ok(Some(cri::AuthConfig {
                username: text("username"),
                password: text("password"),
                auth: text("auth"),
                server_address: key.clone(),
                identity_token: text("identitytoken"),
                registry_token: text("registrytoken"),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod pull_secret_tests {
    use super::*;

    struct One(k8s_openapi::api::core::v1::Secret);
    impl volumes::Sources for One {
        fn config_map(&self, _: &str) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
            None
        }
        fn secret(&self, name: &str) -> Option<k8s_openapi::api::core::v1::Secret> {
            (self.0.metadata.name.as_deref() == Some(name)).then(|| self.0.clone())
        }
        fn service_account_token(&self, _: &str, _: i64) -> Option<String> {
            None
        }
    }

    #[test]
    fn pull_secrets_give_the_registrys_credentials() {
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"username": "hub", "password": "h"},
            "registry.local:5000": {"auth": "dTpw"}}});
        let mut secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "creds"}, "type": "kubernetes.io/dockerconfigjson"}),
        )
        .unwrap_or_default();
        secret.data = Some(
            [(
                ".dockerconfigjson".to_owned(),
                k8s_openapi::ByteString(config.to_string().into_bytes()),
            )]
            .into(),
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [], "imagePullSecrets": [{"name": "creds"}, {"name": "absent"}]}}))
        .unwrap_or_default();
        let sources = One(secret);
        let auth = |image: &str| pull_auth(&pod, &sources, image).expect("readable secrets");
        let local = auth("registry.local:5000/app:v1").unwrap_or_default();
        assert_eq!(
            (local.auth.as_str(), local.server_address.as_str()),
            ("dTpw", "registry.local:5000")
        );
        let hub = auth("busybox:1.36").unwrap_or_default();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("hub", "h"));
        let hub = auth("index.docker.io/library/busybox:1.36");
        assert_eq!(hub.map(|a| a.username), Some("hub".to_owned()), "Docker Hub by another name");
        assert!(auth("quay.io/x/y").is_none());

        // A config that is not JSON: the pull is refused with the secret's name.
        let mut broken = sources.0.clone();
        broken.data = Some(
            [(".dockerconfigjson".to_owned(), k8s_openapi::ByteString(b"{not json".to_vec()))]
                .into(),
        );
        let refused = pull_auth(&pod, &One(broken), "busybox:1.36").expect_err("refused");
        assert!(refused.contains("\"creds\"") && refused.contains("not JSON"), "{refused}");
    }
}
