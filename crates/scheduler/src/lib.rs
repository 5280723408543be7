//! The scheduler, as kube-scheduler works: pods without a node wait in a queue; each is
//! placed by a pure decision over a snapshot of the nodes (`fit`: filters, scores, the
//! message when nothing fits), bound through the `binding` subresource, and counted on
//! its node at once (assumed) so the next decision sees it. A pod that fits nowhere gets
//! `PodScheduled=False` with the reasons and a `FailedScheduling` event, and is tried
//! again when the cluster changes (a node added or changed, a pod gone); if removing pods
//! of lower priority from a node would let it fit, they are preempted (deleted, with a
//! `Preempted` event) and the node is nominated for it (`status.nominatedNodeName`).
//!
//! It reaches the API only through its client and keeps nothing a restart would lose:
//! the snapshot is rebuilt from the caches. Knows nothing of storage, HTTP or Linux.

pub mod fit;
pub mod topology;
pub use berth_api::quantity;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_reconcile::{Action, Change, Informers, Queue};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use fit::{NodeInfo, Resources};

/// The name pods give in `spec.schedulerName` to be placed by this scheduler.
pub const SCHEDULER_NAME: &str = "default-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

/// A pod by namespace and name.
type Key = (String, String);

/// The nodes, sorted by name: a decision reads them in one stable order, side by side in
/// memory (a decision over thousands of nodes is bound by memory reads), found by name
/// by binary search.
#[derive(Default)]
struct Nodes(Vec<NodeInfo>);

impl Nodes {
    fn at(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|n| n.name.as_str().cmp(name))
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.at(name).ok().map(|at| &mut self.0[at])
    }

    fn insert(&mut self, info: NodeInfo) {
        match self.at(&info.name) {
            Ok(at) => self.0[at] = info,
            Err(at) => self.0.insert(at, info),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(at) = self.at(name) {
            self.0.remove(at);
        }
    }

    fn retain(&mut self, keep: impl FnMut(&NodeInfo) -> bool) {
        self.0.retain(keep);
    }

    fn all(&self) -> &[NodeInfo] {
        &self.0
    }
}

#[derive(Default)]
struct Snapshot {
    nodes: Nodes,
    /// Pods counted on a node, by uid: the node and what they take.
    placed: HashMap<String, (String, Resources, Arc<Pod>)>,
    /// Pods that fit nowhere last time, tried again when the cluster changes.
    waiting: HashSet<Key>,
    /// The last FailedScheduling message per pod uid (an event is made when it changes).
    told: HashMap<String, String>,
    /// Where the next pod's search starts.
    next_start: usize,
}

impl Snapshot {
    fn place(&mut self, uid: &str, node: &str, pod: &Arc<Pod>) {
        if self.placed.get(uid).is_some_and(|(at, _, _)| at == node) {
            return;
        }
        self.unplace(uid);
        let requests = fit::pod_requests(pod);
        if let Some(info) = self.nodes.get_mut(node) {
            info.add_pod(&requests, pod);
        }
        self.placed.insert(uid.to_owned(), (node.to_owned(), requests, Arc::clone(pod)));
    }

    fn unplace(&mut self, uid: &str) {
        if let Some((node, requests, pod)) = self.placed.remove(uid) {
            if let Some(info) = self.nodes.get_mut(&node) {
                info.remove_pod(&requests, &pod);
            }
        }
    }

    /// Every waiting pod goes back to the queue.
    fn wake(&mut self, queue: &Queue<Key>) {
        for key in self.waiting.drain() {
            queue.add(key);
        }
    }
}

fn key_of(pod: &Pod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn wants_this_scheduler(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.is_some_and(|s| s.node_name.as_deref().is_none_or(str::is_empty))
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|name| name.is_empty() || name == SCHEDULER_NAME)
        && pod.metadata.deletion_timestamp.is_none()
}

struct Scheduler {
    informers: Arc<Informers>,
    pods: Arc<berth_reconcile::Cache<Pod>>,
    snapshot: Mutex<Snapshot>,
    queue: Arc<Queue<Key>>,
    /// Binds in flight, at most this many.
    binds: Arc<tokio::sync::Semaphore>,
}

impl Scheduler {
    fn snapshot(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        match self.snapshot.lock() {
            Ok(snapshot) => snapshot,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn observe_pod(&self, pod: &Arc<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let mut snapshot = self.snapshot();
        match node {
            Some(node) if !finished(pod) => snapshot.place(&uid, &node, pod),
            Some(_) => {
                snapshot.unplace(&uid);
                snapshot.wake(&self.queue);
            }
            None if wants_this_scheduler(pod) => {
                drop(snapshot);
                // Higher-priority pods are decided first.
                let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                self.queue.add_with_priority(key_of(pod), i64::from(priority));
            }
            None => {}
        }
    }

    fn forget_pod(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut snapshot = self.snapshot();
        snapshot.told.remove(&uid);
        let was_placed = snapshot.placed.contains_key(&uid);
        snapshot.unplace(&uid);
        snapshot.waiting.remove(&key_of(pod));
        self.queue.forget(&key_of(pod));
        if was_placed {
            snapshot.wake(&self.queue);
        }
    }

    fn observe_node(&self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut snapshot = self.snapshot();
        match snapshot.nodes.get_mut(&name) {
            Some(info) => info.refresh(node),
            None => {
                let mut info = NodeInfo::from_node(node);
                let placed: Vec<(Resources, Arc<Pod>)> = snapshot
                    .placed
                    .values()
                    .filter(|(at, _, _)| *at == name)
                    .map(|(_, requests, pod)| (requests.clone(), Arc::clone(pod)))
                    .collect();
                for (requests, pod) in placed {
                    info.add_pod(&requests, &pod);
                }
                snapshot.nodes.insert(info);
            }
        }
        snapshot.wake(&self.queue);
    }

    fn resync_pods(&self) {
        let pods = self.pods.store().state();
        let present: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let gone: Vec<String> =
            self.snapshot().placed.keys().filter(|uid| !present.contains(*uid)).cloned().collect();
        {
            let mut snapshot = self.snapshot();
            for uid in gone {
                snapshot.unplace(&uid);
            }
        }
        for pod in pods {
            self.observe_pod(&pod);
        }
        self.snapshot().wake(&self.queue);
    }

    fn resync_nodes(&self, nodes: &berth_reconcile::Cache<Node>) {
        let current = nodes.store().state();
        let names: HashSet<String> =
            current.iter().filter_map(|n| n.metadata.name.clone()).collect();
        self.snapshot().nodes.retain(|node| names.contains(&node.name));
        for node in current {
            self.observe_node(&node);
        }
    }

    async fn reconcile(self: &Arc<Self>, key: Key) -> Result<Action, Error> {
        let reference = ObjectRef::<Pod>::new(&key.1).within(&key.0);
        let Some(pod) = self.pods.store().get(&reference) else { return Ok(Action::Done) };
        if !wants_this_scheduler(&pod) {
            return Ok(Action::Done);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.snapshot().placed.contains_key(&uid) {
            return Ok(Action::Done); // bound already; the cache has not caught up
        }
        let decision = {
            let mut snapshot = self.snapshot();
            let start = snapshot.next_start;
            let decision = fit::schedule(&pod, snapshot.nodes.all(), start);
            snapshot.next_start = start.wrapping_add(1);
            decision
        };
        let client = self.informers.client().clone();
        let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
        match decision {
            Ok(node) => {
                // Assumed at once, so the next decision counts it; bound in the
                // background (many binds in flight let the store commit them together).
                {
                    let mut snapshot = self.snapshot();
                    snapshot.place(&uid, &node, &pod);
                    snapshot.told.remove(&uid);
                }
                let permit = match self.binds.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return Ok(Action::Done),
                };
                let binding = json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": key.1, "namespace": key.0, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                });
                let scheduler = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let bound: Result<serde_json::Value, kube::Error> = api
                        .create_subresource("binding", &key.1, &PostParams::default(), &binding)
                        .await;
                    match bound {
                        Ok(_) => {
                            tracing::debug!(pod = %format!("{}/{}", key.0, key.1), node = %node, "bound")
                        }
                        // Bound meanwhile (or gone): the cache will say.
                        Err(kube::Error::Api(status))
                            if status.code == 409 || status.code == 404 => {}
                        Err(err) => {
                            tracing::warn!(
                                "binding {}/{} to {node}: {err}; trying again",
                                key.0,
                                key.1
                            );
                            scheduler.snapshot().unplace(&uid);
                            scheduler.queue.add_after(key, Duration::from_millis(200));
                        }
                    }
                });
                Ok(Action::Done)
            }
            Err(fit_error) => {
                // Room made by removing pods of lower priority: the pod waits for them to
                // go (their removal wakes it) and is nominated for the node meanwhile.
                if let Some(preemption) = self.preemption(&pod) {
                    self.preempt(&pod, &preemption).await?;
                }
                let message = fit_error.to_string();
                let changed = {
                    let mut snapshot = self.snapshot();
                    snapshot.waiting.insert(key.clone());
                    snapshot.told.insert(uid.clone(), message.clone()) != Some(message.clone())
                };
                if changed {
                    self.report_unschedulable(&pod, &message).await?;
                }
                // Tried again when the cluster changes; the delay only guards a lost event.
                Ok(Action::RequeueAfter(Duration::from_secs(60)))
            }
        }
    }

    /// Where preemption would place `pod`, unless victims it chose before are still going.
    fn preemption(&self, pod: &Pod) -> Option<fit::Preemption> {
        let mine = fit::priority(pod);
        if let Some(nominated) = pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref())
        {
            let going = self.pods.store().state_filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(nominated)
                    && p.metadata.deletion_timestamp.is_some()
                    && fit::priority(p) < mine
            });
            if !going.is_empty() {
                return None;
            }
        }
        let snapshot = self.snapshot();
        let mut by_node: HashMap<&str, Vec<(&Pod, &Resources)>> = HashMap::new();
        for (node, requests, placed) in snapshot.placed.values() {
            by_node.entry(node.as_str()).or_default().push((placed, requests));
        }
        let nodes: Vec<(&NodeInfo, Vec<(&Pod, &Resources)>)> = snapshot
            .nodes
            .all()
            .iter()
            .map(|info| (info, by_node.remove(info.name.as_str()).unwrap_or_default()))
            .collect();
        fit::preempt(pod, &nodes)
    }

    /// Deletes the victims (each told why, with a `Preempted` event) and nominates the
    /// node for the pod (`status.nominatedNodeName`).
    async fn preempt(&self, pod: &Pod, preemption: &fit::Preemption) -> Result<(), Error> {
        let (namespace, name) = key_of(pod);
        let client = self.informers.client().clone();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for (victim_namespace, victim) in &preemption.victims {
            let api: Api<Pod> = Api::namespaced(client.clone(), victim_namespace);
            match api.delete(victim, &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(source) => {
                    return Err(Error::Api {
                        action: format!("preempt {victim_namespace}/{victim}"),
                        source,
                    })
                }
            }
            tracing::info!(
                "preempted {victim_namespace}/{victim} on {} for {namespace}/{name}",
                preemption.node
            );
            self.event(
                victim_namespace,
                victim,
                None,
                "Normal",
                "Preempted",
                &format!("Preempted by pod {uid} on node {}", preemption.node),
            )
            .await;
        }
        let api: Api<Pod> = Api::namespaced(client, &namespace);
        let patch = Patch::Merge(json!({"status": {"nominatedNodeName": preemption.node}}));
        match api.patch_status(&name, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::Api {
                action: format!("nominate a node for {namespace}/{name}"),
                source,
            }),
        }
    }

    /// Records an event about a pod; losing one never stops scheduling.
    async fn event(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        let now = berth_api::meta::now();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace,
                "uid": uid},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": SCHEDULER_NAME}, "reportingComponent": SCHEDULER_NAME,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.informers.client().clone(), namespace);
        match serde_json::from_value::<k8s_openapi::api::core::v1::Event>(event) {
            Ok(event) => {
                if let Err(err) = events.create(&PostParams::default(), &event).await {
                    tracing::warn!("{reason} event for {namespace}/{name}: {err}");
                }
            }
            Err(err) => tracing::warn!("cannot make the {reason} event: {err}"),
        }
    }

    /// `PodScheduled=False` with the reasons, and a `FailedScheduling` event, as
    /// `kubectl describe pod` shows them.
    async fn report_unschedulable(&self, pod: &Pod, message: &str) -> Result<(), Error> {
        let (namespace, name) = key_of(pod);
        let client = self.informers.client().clone();
        let now = berth_api::meta::now();
        let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now});
        let mut conditions: Vec<serde_json::Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "PodScheduled")
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        conditions.push(condition);
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let patch = Patch::Merge(json!({"status": {"conditions": conditions}}));
        match api.patch_status(&name, &PatchParams::default(), &patch).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(source) => {
                return Err(Error::Api {
                    action: format!("mark {namespace}/{name} unschedulable"),
                    source,
                })
            }
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace,
                "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
            "reason": "FailedScheduling", "message": message, "type": "Warning",
            "source": {"component": SCHEDULER_NAME}, "reportingComponent": SCHEDULER_NAME,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, &namespace);
        let event: k8s_openapi::api::core::v1::Event = match serde_json::from_value(event) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!("cannot make the FailedScheduling event: {err}");
                return Ok(());
            }
        };
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            // An event is information: losing one never stops scheduling.
            tracing::warn!("FailedScheduling event for {namespace}/{name}: {err}");
        }
        Ok(())
    }
}

/// Runs the scheduler until the informers' shutdown token fires.
pub async fn run(informers: Arc<Informers>) {
    let pods = informers.typed::<Pod>();
    let nodes = informers.typed::<Node>();
    let shutdown = informers.shutdown().clone();
    let scheduler = Arc::new(Scheduler {
        informers: informers.clone(),
        pods: pods.clone(),
        snapshot: Mutex::default(),
        queue: Queue::new(),
        binds: Arc::new(tokio::sync::Semaphore::new(64)),
    });
    {
        let scheduler = scheduler.clone();
        pods.follow(&informers, move |change| match change {
            Change::Applied(pod) => scheduler.observe_pod(&pod),
            Change::Deleted(pod) => scheduler.forget_pod(&pod),
            Change::Resynced => scheduler.resync_pods(),
        });
    }
    {
        let (scheduler, cache) = (scheduler.clone(), nodes.clone());
        nodes.follow(&informers, move |change| match change {
            Change::Applied(node) => scheduler.observe_node(&node),
            Change::Deleted(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                scheduler.snapshot().nodes.remove(&name);
            }
            Change::Resynced => scheduler.resync_nodes(&cache),
        });
    }
    tokio::select! {
        _ = async { tokio::join!(pods.ready(), nodes.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    scheduler.resync_nodes(&nodes);
    scheduler.resync_pods();
    tracing::info!("scheduler running");
    let worker = scheduler.clone();
    // One decision at a time (each sees the last one's pod), as kube-scheduler decides.
    berth_reconcile::run(
        "scheduler",
        scheduler.queue.clone(),
        1,
        Duration::from_secs(10),
        shutdown,
        move |key| {
            let scheduler = worker.clone();
            async move { scheduler.reconcile(key).await }
        },
    )
    .await;
}
