//! Simulated nodes, like kwok but inside berth: N Nodes registered with a capacity, labels
//! and taints that can be set, their Leases kept fresh, and the kubelet's part played for
//! the pods bound to them: Pending → Running with the Ready conditions after a delay,
//! Succeeded or Failed when the pod's annotations say so (so Jobs finish), and the final
//! removal of a pod being deleted. No container runs: this is for testing and measuring
//! the control plane (scheduler, controllers) without a machine per node.
//!
//! Annotations a pod may carry:
//! - `sim.berth.dev/exit-after`: seconds (fractions allowed) of running before its
//!   containers exit;
//! - `sim.berth.dev/exit-code`: their exit code (default 0: Succeeded; else Failed);
//! - `sim.berth.dev/exit-code-by-index`: exit codes for the pods of an Indexed Job by
//!   their index (`batch.kubernetes.io/job-completion-index`), as `0=1,3=42`; the other
//!   indexes exit with `exit-code`.
//!
//! A node annotated `sim.berth.dev/stopped: "true"` plays a dead kubelet: its Lease is no
//! longer renewed and its pods are left as they are, until the annotation goes. A node
//! whose Ready condition someone else changed (the node lifecycle controller marking it
//! Unknown) gets its status posted again at the next renewal, as a kubelet does.
//!
//! Knows nothing of containers or Linux; it speaks only to the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Informers, Queue};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

/// The exit code a pod's annotations ask for.
fn exit_code(annotations: &BTreeMap<String, String>) -> i32 {
    let index = annotations.get("batch.kubernetes.io/job-completion-index");
    let by_index = annotations.get(EXIT_CODE_BY_INDEX).and_then(|codes| {
        codes.split(',').find_map(|pair| {
            let (i, code) = pair.trim().split_once('=')?;
            (Some(i) == index.map(String::as_str)).then(|| code.parse().ok())?
        })
    });
    by_index.or_else(|| annotations.get(EXIT_CODE).and_then(|c| c.parse().ok())).unwrap_or(0)
}

pub const EXIT_AFTER: &str = "sim.berth.dev/exit-after";
pub const EXIT_CODE: &str = "sim.berth.dev/exit-code";
pub const EXIT_CODE_BY_INDEX: &str = "sim.berth.dev/exit-code-by-index";
/// The Node annotation that stops a simulated kubelet.
pub const STOPPED: &str = "sim.berth.dev/stopped";
/// The label every simulated node carries.
pub const SIMULATED: &str = "node.berth.dev/simulated";

#[derive(Debug, Clone)]
pub struct Config {
    pub count: usize,
    /// Node names are `{prefix}{index}`.
    pub prefix: String,
    /// Capacity (and allocatable): `cpu`, `memory`, `pods`, extended resources.
    pub capacity: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// From binding to Running.
    pub start_delay: Duration,
    /// How often each node's Lease is renewed.
    pub lease_interval: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            count: 0,
            prefix: "sim-".into(),
            capacity: [("cpu", "32"), ("memory", "256Gi"), ("pods", "110")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            start_delay: Duration::from_millis(100),
            lease_interval: Duration::from_secs(10),
        }
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
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

fn node_object(config: &Config, name: &str, index: usize) -> serde_json::Value {
    let mut labels = config.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.to_owned());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert(SIMULATED.into(), "true".into());
    let now = berth_api::meta::now();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": config.taints},
        "status": {
            "capacity": config.capacity, "allocatable": config.capacity,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated node is ready",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.244.{}.{}", index / 250, index % 250 + 1)},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.32.0-berth-simulated", "kubeProxyVersion": "",
                "containerRuntimeVersion": "simulated://0", "operatingSystem": "linux", "architecture": "amd64",
                "kernelVersion": "", "osImage": "simulated", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    })
}

/// Registers the nodes (creating those missing, restoring the status of those that
/// exist) and keeps them alive until shutdown.
pub async fn run(informers: Arc<Informers>, config: Config) {
    let client = informers.client().clone();
    let shutdown = informers.shutdown().clone();
    let names: Vec<String> = (0..config.count).map(|i| format!("{}{i}", config.prefix)).collect();
    if let Err(err) = register(&client, &config, &names).await {
        tracing::warn!("simulated nodes: {err}");
    }
    let nodes = informers.typed::<Node>();
    let leases = {
        let (config, names, nodes) = (config.clone(), names.clone(), nodes.clone());
        informers.tasks().spawn(async move {
            renew_leases(client, config, names, nodes, shutdown).await;
        })
    };
    drop(leases);
    run_pods(informers, config, names, nodes).await;
}

fn stopped(node: &Node) -> bool {
    node.metadata.annotations.as_ref().and_then(|a| a.get(STOPPED)).is_some_and(|v| v == "true")
}

async fn register(client: &kube::Client, config: &Config, names: &[String]) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let made = futures::future::join_all(names.iter().enumerate().map(|(index, name)| {
        let nodes = nodes.clone();
        async move {
            let object: Node = match serde_json::from_value(node_object(config, name, index)) {
                Ok(node) => node,
                Err(err) => {
                    tracing::warn!("simulated node {name}: {err}");
                    return Ok(());
                }
            };
            match nodes.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // Known from before a restart: its status is what the kubelet reports.
                    let status = Patch::Merge(json!({"status": object.status}));
                    nodes.patch_status(name, &PatchParams::default(), &status).await.map(|_| ())
                }
                Err(err) => Err(err),
            }
            .map_err(api_error(format!("register simulated node {name}")))
        }
    }))
    .await;
    made.into_iter().collect::<Result<Vec<()>, Error>>()?;
    tracing::info!(nodes = names.len(), "simulated nodes registered");
    Ok(())
}

async fn renew_leases(
    client: kube::Client,
    config: Config,
    names: Vec<String>,
    nodes: Arc<berth_reconcile::Cache<Node>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let node_api: Api<Node> = Api::all(client);
    loop {
        let now = berth_stdx::time::format_rfc3339_nanos(std::time::SystemTime::now());
        for (index, name) in names.iter().enumerate() {
            let node = nodes.store().get(&ObjectRef::new(name));
            if node.as_deref().is_some_and(stopped) {
                continue;
            }
            // Marked Unknown by the node lifecycle controller while stopped: report again.
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            if ready.is_some_and(|r| r != "True") {
                let object = node_object(&config, name, index);
                let patch =
                    Patch::Merge(json!({"status": {"conditions": object["status"]["conditions"]}}));
                if let Err(err) = node_api.patch_status(name, &PatchParams::default(), &patch).await
                {
                    tracing::debug!("status of {name}: {err}");
                }
            }
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
            let params = PatchParams::apply("berth-simulated-kubelet").force();
            if let Err(err) = leases.patch(name, &params, &Patch::Apply(&lease)).await {
                tracing::debug!("lease of {name}: {err}");
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.lease_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

type Key = (String, String);

async fn run_pods(
    informers: Arc<Informers>,
    config: Config,
    names: Vec<String>,
    nodes: Arc<berth_reconcile::Cache<Node>>,
) {
    let pods = informers.typed::<Pod>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    let ours = Arc::new(names.into_iter().collect::<std::collections::HashSet<String>>());
    let on_ours = {
        let ours = ours.clone();
        move |pod: &Pod| {
            pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| ours.contains(n))
        }
    };
    let key = |pod: &Pod| {
        (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        )
    };
    {
        let on_ours = on_ours.clone();
        pods.queue_into(&informers, &queue, move |pod: &Pod| on_ours(pod).then(|| key(pod)));
    }
    {
        // A node started again picks up its pods.
        let (pods, queue, ours) = (pods.clone(), queue.clone(), ours.clone());
        nodes.follow(&informers, move |change| {
            let berth_reconcile::Change::Applied(node) = change else { return };
            let Some(name) = node.metadata.name.as_deref() else { return };
            if !ours.contains(name) || stopped(&node) {
                return;
            }
            for pod in pods.store().state_filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name)
            }) {
                queue.add(key(&pod));
            }
        });
    }
    tokio::select! {
        _ = pods.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    for pod in pods.store().state().iter().filter(|p| on_ours(p)) {
        queue.add(key(pod));
    }
    let client = informers.client().clone();
    let config = Arc::new(config);
    berth_reconcile::run(
        "simulated-kubelet",
        queue,
        4,
        Duration::from_secs(10),
        shutdown,
        move |key: Key| {
            let (client, pods, config, nodes) =
                (client.clone(), pods.clone(), config.clone(), nodes.clone());
            async move {
                let Some(pod) = pods.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
                    return Ok(Action::Done);
                };
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                if nodes.store().get(&ObjectRef::new(&node)).is_some_and(|n| stopped(&n)) {
                    return Ok(Action::Done);
                }
                step(&client, &config, &pod).await
            }
        },
    )
    .await;
}

fn seconds_since(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> f64 {
    let Some(time) = time else { return 0.0 };
    let then = berth_stdx::time::parse_rfc3339(&time.0.to_string()).unwrap_or(0);
    (berth_stdx::time::unix_now() - then) as f64
}

/// Moves a pod on a simulated node one step: removed once deleted, Running after the
/// start delay, finished when its annotations say.
async fn step(client: &kube::Client, config: &Config, pod: &Pod) -> Result<Action, Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        // The containers are "stopped": the kubelet's final delete.
        return match api
            .delete(
                &name,
                &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() },
            )
            .await
        {
            Ok(_) => Ok(Action::Done),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                Ok(Action::Done)
            }
            Err(err) => Err(api_error(format!("remove {namespace}/{name}"))(err)),
        };
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let containers: Vec<(String, String)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    let now = berth_api::meta::now();
    match phase.as_str() {
        "Pending" | "" => {
            // Bound by the scheduler (PodScheduled), or made for this node directly.
            let scheduled_for = seconds_since(
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "PodScheduled")
                    .and_then(|c| c.last_transition_time.as_ref())
                    .or(pod.metadata.creation_timestamp.as_ref()),
            );
            let wait = config.start_delay.as_secs_f64() - scheduled_for;
            if wait > 0.0 {
                return Ok(Action::RequeueAfter(Duration::from_secs_f64(wait)));
            }
            let statuses: Vec<serde_json::Value> = containers
                .iter()
                .map(|(container, image)| json!({"name": container, "image": image, "imageID": format!("simulated://{image}"),
                    "containerID": format!("simulated://{namespace}/{name}/{container}"),
                    "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": now}}}))
                .collect();
            let condition = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
            let ip = format!(
                "10.42.{}.{}",
                (name.len() * 7 + namespace.len()) % 250,
                (name.bytes().map(usize::from).sum::<usize>()) % 250 + 1
            );
            let patch = json!({"status": {"phase": "Running", "startTime": now, "podIP": ip, "podIPs": [{"ip": ip}],
                "hostIP": "10.244.0.1",
                "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("ContainersReady"), condition("Ready"), condition("PodScheduled")],
                "containerStatuses": statuses}});
            patch_status(&api, &namespace, &name, patch).await?;
            Ok(match exit_after(&annotations) {
                Some(after) => Action::RequeueAfter(after),
                None => Action::Done,
            })
        }
        "Running" => {
            let Some(after) = exit_after(&annotations) else { return Ok(Action::Done) };
            let ran = seconds_since(status.start_time.as_ref());
            let wait = after.as_secs_f64() - ran;
            if wait > 0.0 {
                return Ok(Action::RequeueAfter(Duration::from_secs_f64(wait)));
            }
            let code = exit_code(&annotations);
            let (phase, reason) =
                if code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
            let statuses: Vec<serde_json::Value> = containers
                .iter()
                .map(|(container, image)| json!({"name": container, "image": image, "imageID": format!("simulated://{image}"),
                    "ready": false, "started": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": status.start_time, "finishedAt": now}}}))
                .collect();
            let condition = |kind: &str, value: &str| json!({"type": kind, "status": value, "lastProbeTime": null, "lastTransitionTime": now});
            let patch = json!({"status": {"phase": phase,
                "conditions": [condition("PodReadyToStartContainers", "False"), condition("Initialized", "True"),
                    condition("ContainersReady", "False"), condition("Ready", "False"), condition("PodScheduled", "True")],
                "containerStatuses": statuses}});
            patch_status(&api, &namespace, &name, patch).await?;
            Ok(Action::Done)
        }
        _ => Ok(Action::Done),
    }
}

fn exit_after(annotations: &BTreeMap<String, String>) -> Option<Duration> {
    annotations
        .get(EXIT_AFTER)
        .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}

async fn patch_status(
    api: &Api<Pod>,
    namespace: &str,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), Error> {
    match api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(api_error(format!("update the status of {namespace}/{name}"))(err)),
    }
}
