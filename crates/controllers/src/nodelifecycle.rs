//! Node lifecycle, as kube-controller-manager's node lifecycle controller and taint
//! manager: a node whose kubelet stops renewing its Lease (and posting its status) for
//! longer than the grace period gets its conditions set to `Unknown` ("Kubelet stopped
//! posting node status."), its pods marked not ready (so Services stop sending them
//! traffic), and the `node.kubernetes.io/unreachable` taints (`NoSchedule` and
//! `NoExecute`); a node reporting `Ready=False` gets the `not-ready` ones. Pods on a node
//! with `NoExecute` taints they do not tolerate are deleted at once; those tolerating them
//! for `tolerationSeconds` are deleted that long after the taint was added (Kubernetes
//! gives every pod 300 s for the two taints above, so a dead node's pods move elsewhere
//! after five minutes). When the kubelet is back and reports Ready, the taints go.

use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload;
use crate::{Error, MAX_BACKOFF};

pub(crate) const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub(crate) const NOT_READY: &str = "node.kubernetes.io/not-ready";
const LEASES: &str = "kube-node-lease";
/// The conditions a kubelet reports, set to Unknown when it goes silent.
const KUBELET_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

struct Controller {
    client: kube::Client,
    nodes: Arc<Cache<Node>>,
    leases: Arc<Cache<Lease>>,
    pods: Arc<Cache<Pod>>,
    grace: Duration,
}

pub(crate) async fn run(informers: Arc<Informers>, grace: Duration) {
    let nodes = informers.typed::<Node>();
    let leases = informers.typed::<Lease>();
    let pods = informers.typed::<Pod>();
    let queue = Queue::<String>::new();
    let shutdown = informers.shutdown().clone();
    nodes.queue_into(&informers, &queue, |node: &Node| node.metadata.name.clone());
    leases.queue_into(&informers, &queue, |lease: &Lease| {
        (lease.metadata.namespace.as_deref() == Some(LEASES))
            .then(|| lease.metadata.name.clone())
            .flatten()
    });
    pods.queue_into(&informers, &queue, |pod: &Pod| pod.spec.as_ref()?.node_name.clone());
    tokio::select! {
        _ = async { tokio::join!(nodes.ready(), leases.ready(), pods.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for node in nodes.store().state() {
        if let Some(name) = node.metadata.name.clone() {
            queue.add(name);
        }
    }
    let controller =
        Arc::new(Controller { client: informers.client().clone(), nodes, leases, pods, grace });
    berth_reconcile::run("nodelifecycle", queue, 2, MAX_BACKOFF, shutdown, move |name: String| {
        let controller = controller.clone();
        async move { controller.reconcile(name).await }
    })
    .await;
}

fn seconds(time: Option<&Time>) -> Option<f64> {
    let time = time?;
    Some(time.0.as_millisecond() as f64 / 1e3)
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// The taints the node's Ready condition calls for (both effects), given what it has.
fn wanted_taints(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("Unknown") => Some(UNREACHABLE),
        Some("False") => Some(NOT_READY),
        _ => None,
    }
}

/// The NoSchedule taints the kubelet's pressure conditions call for (Kubernetes'
/// TaintNodesByCondition), with the other taints kept; `None` if nothing changes.
fn pressure_taints(taints: &[Taint], node: &Node) -> Option<Vec<Taint>> {
    const BY_CONDITION: [(&str, &str); 3] = [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    ];
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    let on = |kind: &str| {
        conditions.is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
    };
    let mut next: Vec<Taint> = taints
        .iter()
        .filter(|t| BY_CONDITION.iter().all(|(kind, key)| t.key != *key || on(kind)))
        .cloned()
        .collect();
    for (kind, key) in BY_CONDITION {
        if on(kind) && !next.iter().any(|t| t.key == key && t.effect == "NoSchedule") {
            next.push(Taint {
                key: key.to_owned(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            });
        }
    }
    (next.len() != taints.len() || next.iter().zip(taints).any(|(a, b)| a != b)).then_some(next)
}

/// The node's taints with the lifecycle ones as `key` says (none when `None`), keeping
/// the time an existing one was added; `None` if nothing changes.
fn retaint(taints: &[Taint], key: Option<&str>, now: &Time) -> Option<Vec<Taint>> {
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let mut next: Vec<Taint> =
        taints.iter().filter(|t| !ours(t) || Some(t.key.as_str()) == key).cloned().collect();
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.to_owned(),
                    effect: effect.to_owned(),
                    value: None,
                    time_added: (effect == "NoExecute").then(|| now.clone()),
                });
            }
        }
    }
    (next.len() != taints.len() || next.iter().zip(taints).any(|(a, b)| a != b)).then_some(next)
}

/// When a pod must leave a node with these NoExecute taints: now (`Some(0.0)` or less),
/// at a time (seconds since the epoch), or never (`None`).
fn eviction_time(pod: &Pod, taints: &[Taint], now: f64) -> Option<f64> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let mut at: Option<f64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations
            .iter()
            .filter(|t| berth_scheduler::fit::tolerates(std::slice::from_ref(t), taint))
            .collect();
        if matching.is_empty() {
            return Some(now);
        }
        // Tolerated for the shortest time any matching toleration gives; forever if one
        // gives no limit.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let least = matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0);
        let added = seconds(taint.time_added.as_ref()).unwrap_or(now);
        let due = added + least as f64;
        at = Some(at.map_or(due, |a: f64| a.min(due)));
    }
    at
}

impl Controller {
    async fn reconcile(&self, name: String) -> Result<Action, Error> {
        let Some(node) = self.nodes.store().get(&ObjectRef::new(&name)) else {
            return Ok(Action::Done);
        };
        let now = now_seconds();
        let grace = self.grace.as_secs_f64();
        let mut next: Option<f64> = None;
        let mut soon = |at: f64| next = Some(next.map_or(at, |n: f64| n.min(at)));
        // The last sign of life: the Lease's renewal, the Ready condition's heartbeat, or
        // the node's creation.
        let lease = self.leases.store().get(&ObjectRef::new(&name).within(LEASES));
        let heartbeat = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| seconds(c.last_heartbeat_time.as_ref()));
        let renewed = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
            .and_then(|t| seconds(Some(&Time(t.0))));
        let created = seconds(node.metadata.creation_timestamp.as_ref());
        let alive = [renewed, heartbeat, created].into_iter().flatten().fold(f64::MIN, f64::max);
        let mut ready = ready_status(&node).map(str::to_owned);
        if now - alive > grace {
            if ready.as_deref() != Some("Unknown") {
                self.mark_unknown(&node).await?;
                ready = Some("Unknown".into());
            }
        } else {
            soon(alive + grace);
        }
        // The node's pods, looked up only when something is to be done with them (every
        // pod event queues its node: a scan each time would cost pods x pods).
        let pods_here = || -> Vec<Arc<Pod>> {
            self.pods.store().state_filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            })
        };
        // Pods of a node that is not ready are not ready either.
        if ready.as_deref() == Some("Unknown") {
            for pod in pods_here().iter().filter(|p| workload::ready(p)) {
                self.mark_pod_not_ready(pod).await?;
            }
        }
        let stamp = Time(timestamp_now());
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let lifecycle = retaint(&current, wanted_taints(ready.as_deref()), &stamp);
        let base = lifecycle.clone().unwrap_or_else(|| current.clone());
        // Taint nodes by condition: a kubelet's pressure keeps new pods away.
        let pressured = pressure_taints(&base, &node);
        let taints = current;
        let taints = match pressured.or(lifecycle) {
            Some(changed) => {
                let api: Api<Node> = Api::all(self.client.clone());
                let patch = json!({"spec": {"taints": changed}});
                match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Action::Done),
                    Err(err) => return Err(workload::api_error(format!("taint node {name}"))(err)),
                }
                changed
            }
            None => taints,
        };
        // The taint manager: pods that do not tolerate the NoExecute taints go.
        if taints.iter().any(|t| t.effect == "NoExecute") {
            for pod in &pods_here() {
                match eviction_time(pod, &taints, now) {
                    Some(at) if at <= now => self.evict(pod).await?,
                    Some(at) => soon(at),
                    None => {}
                }
            }
        }
        Ok(match next {
            Some(at) => Action::RequeueAfter(Duration::from_secs_f64((at - now).max(0.0) + 0.05)),
            None => Action::Done,
        })
    }

    async fn mark_unknown(&self, node: &Node) -> Result<(), Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = berth_api::meta::now();
        let mut conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| c.iter().filter_map(|c| serde_json::to_value(c).ok()).collect())
            .unwrap_or_default();
        for kind in KUBELET_CONDITIONS {
            let fresh = json!({"type": kind, "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.", "lastTransitionTime": now});
            match conditions.iter_mut().find(|c| c["type"] == kind) {
                Some(condition) => {
                    let heartbeat = condition["lastHeartbeatTime"].clone();
                    *condition = fresh;
                    condition["lastHeartbeatTime"] = heartbeat;
                }
                None => conditions.push(fresh),
            }
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conditions}});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(err) => return Err(workload::api_error(format!("mark node {name} unknown"))(err)),
        }
        tracing::info!("node {name} stopped posting its status: marked Unknown");
        workload::event(
            &self.client,
            ("v1", "Node", &node.metadata),
            "Normal",
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        )
        .await;
        Ok(())
    }

    async fn mark_pod_not_ready(&self, pod: &Pod) -> Result<(), Error> {
        let (namespace, name) = workload::key_of(&pod.metadata);
        let conditions: Vec<serde_json::Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| {
                c.iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .map(|mut c| {
                        if c["type"] == "Ready" {
                            c["status"] = json!("False");
                            c["lastTransitionTime"] = json!(berth_api::meta::now());
                            c["reason"] = json!("NodeNotReady");
                        }
                        c
                    })
                    .collect()
            })
            .unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({"status": {"conditions": conditions}});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(err) => {
                Err(workload::api_error(format!("mark pod {namespace}/{name} not ready"))(err))
            }
        }
    }

    async fn evict(&self, pod: &Pod) -> Result<(), Error> {
        let (namespace, name) = workload::key_of(&pod.metadata);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = workload::exactly(&pod.metadata, DeleteParams::background());
        match api.delete(&name, &params).await {
            Ok(_) => {
                workload::event(
                    &self.client,
                    ("v1", "Pod", &pod.metadata),
                    "Normal",
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {namespace}/{name}"),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(err) => Err(workload::api_error(format!("evict pod {namespace}/{name}"))(err)),
        }
    }
}

fn timestamp_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: added
                .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default())),
        }
    }

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}}))
            .unwrap_or_default()
    }

    #[test]
    fn lifecycle_taints_follow_the_ready_condition() {
        let now = Time(timestamp_now());
        let user = taint("dedicated", "NoSchedule", None);
        let added =
            retaint(std::slice::from_ref(&user), Some(UNREACHABLE), &now).unwrap_or_default();
        assert_eq!(added.len(), 3);
        assert!(added
            .iter()
            .any(|t| t.key == UNREACHABLE && t.effect == "NoExecute" && t.time_added.is_some()));
        assert_eq!(retaint(&added, Some(UNREACHABLE), &now), None, "unchanged");
        let swapped = retaint(&added, Some(NOT_READY), &now).unwrap_or_default();
        assert!(swapped.iter().all(|t| t.key != UNREACHABLE));
        assert_eq!(swapped.iter().filter(|t| t.key == NOT_READY).count(), 2);
        assert_eq!(retaint(&swapped, None, &now), Some(vec![user]));
        assert_eq!(wanted_taints(Some("True")), None);
    }

    #[test]
    fn pressure_conditions_taint_the_node() {
        let node = |disk: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"conditions": [
                {"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": disk}]}}))
            .unwrap()
        };
        let user = taint("dedicated", "NoSchedule", None);
        let pressed = pressure_taints(std::slice::from_ref(&user), &node("True")).unwrap();
        assert_eq!(pressed.len(), 2);
        assert!(pressed
            .iter()
            .any(|t| t.key == "node.kubernetes.io/disk-pressure" && t.effect == "NoSchedule"));
        assert_eq!(pressure_taints(&pressed, &node("True")), None, "nothing to change");
        assert_eq!(pressure_taints(&pressed, &node("False")), Some(vec![user]));
    }

    #[test]
    fn pods_leave_after_their_toleration_seconds() {
        let taints = [taint(UNREACHABLE, "NoExecute", Some(1000)), taint("x", "NoSchedule", None)];
        let now = 1010.0;
        assert_eq!(eviction_time(&pod(json!([])), &taints, now), Some(now), "not tolerated");
        let tolerating = pod(json!([{"key": UNREACHABLE, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300}]));
        assert_eq!(eviction_time(&tolerating, &taints, now), Some(1300.0));
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &taints, now), None);
        let zero = pod(json!([{"key": UNREACHABLE, "operator": "Exists", "tolerationSeconds": 0}]));
        assert_eq!(eviction_time(&zero, &taints, now), Some(1000.0));
    }
}
