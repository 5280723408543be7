//! The DaemonSet controller: one pod on every node the set's node selector, required
//! node affinity and tolerations admit (with the tolerations Kubernetes gives every
//! DaemonSet pod: not-ready, unreachable, the pressures, unschedulable), none elsewhere;
//! pods go straight to their node. RollingUpdate replaces pods of an older template
//! (label `controller-revision-hash`) at most `maxUnavailable` at a time; OnDelete waits.
//! Status counts scheduled, misscheduled, ready, available and updated pods, as `kubectl
//! rollout status ds` reads them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload::{self, Expectations};
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

const REVISION: &str = "controller-revision-hash";

struct Controller {
    client: kube::Client,
    sets: Arc<Cache<DaemonSet>>,
    nodes: Arc<Cache<Node>>,
    pods: Arc<Cache<Pod>>,
    expectations: Expectations,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let sets = informers.typed::<DaemonSet>();
    let nodes = informers.typed::<Node>();
    let pods = informers.typed::<Pod>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    sets.queue_into(&informers, &queue, |set: &DaemonSet| Some(workload::key_of(&set.metadata)));
    {
        // Any node's change may change where every set runs.
        let (sets, queue) = (sets.clone(), queue.clone());
        nodes.follow(&informers, move |_| {
            for set in sets.store().state() {
                queue.add(workload::key_of(&set.metadata));
            }
        });
    }
    let owner_of = {
        let sets = sets.clone();
        move |pod: &Pod| -> Option<Key> {
            let uid = workload::controller_uid(&pod.metadata)?;
            sets.store()
                .state_filter(|s| s.metadata.uid.as_deref() == Some(uid))
                .first()
                .map(|s| workload::key_of(&s.metadata))
        }
    };
    pods.queue_into(&informers, &queue, owner_of);
    tokio::select! {
        _ = async { tokio::join!(sets.ready(), nodes.ready(), pods.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for set in sets.store().state() {
        queue.add(workload::key_of(&set.metadata));
    }
    let controller = Arc::new(Controller {
        client: informers.client().clone(),
        sets,
        nodes,
        pods,
        expectations: Expectations::default(),
    });
    berth_reconcile::run("daemonset", queue, 2, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

/// The tolerations Kubernetes adds to every DaemonSet pod.
fn default_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether a pod of the set may run on the node (selector, affinity, taints; not
/// resources: a node's own admission decides those).
fn admits(pod: &Pod, node: &Node) -> bool {
    use berth_scheduler::fit::{self, Reason};
    match fit::filter(pod, &fit::Resources::default(), &fit::NodeInfo::from_node(node)) {
        Ok(()) => true,
        Err(reasons) => reasons
            .iter()
            .all(|r| matches!(r, Reason::Insufficient(_) | Reason::TooManyPods | Reason::Ports)),
    }
}

impl Controller {
    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(set) = self.sets.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
            return Ok(Action::Done);
        };
        let uid = set.metadata.uid.clone().unwrap_or_default();
        if set.metadata.deletion_timestamp.is_some() {
            self.expectations.forget(&uid);
            return Ok(Action::Done);
        }
        let spec = set.spec.clone().unwrap_or_default();
        let hash = crate::deployment::template_hash(&spec.template);
        // The pod every node gets, with the default tolerations.
        let mut template = spec.template.clone();
        if let Some(pod_spec) = template.spec.as_mut() {
            let mut tolerations = pod_spec.tolerations.clone().unwrap_or_default();
            for toleration in default_tolerations() {
                if !tolerations
                    .iter()
                    .any(|t| t.key == toleration.key && t.effect == toleration.effect)
                {
                    tolerations.push(toleration);
                }
            }
            pod_spec.tolerations = Some(tolerations);
        }
        let owner = workload::controller_reference("apps/v1", "DaemonSet", &set.metadata);
        let labels: BTreeMap<String, String> = [(REVISION.to_owned(), hash.clone())].into();
        let pod = workload::pod_from_template(&template, &key.1, owner, &labels);
        let owned = workload::owned_pods(&self.pods, &key.0, &uid);
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| workload::active(p)).cloned().collect();
        let (active, unseen) = self.expectations.adjust(&uid, &active, &owned);
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in &active {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            by_node.entry(node).or_default().push(pod.clone());
        }
        let nodes = self.nodes.store().state();
        let involved = ("apps/v1", "DaemonSet", &set.metadata);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let mut desired = 0;
        let mut missing = Vec::new();
        let mut doomed: Vec<Arc<Pod>> = Vec::new();
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut on_node = by_node.remove(&name).unwrap_or_default();
            if admits(&pod, node) {
                desired += 1;
                if on_node.is_empty() {
                    missing.push(name);
                } else {
                    // One per node: extras go.
                    on_node.sort_by_key(|p| {
                        p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string())
                    });
                    doomed.extend(on_node.drain(1..));
                }
            } else {
                doomed.extend(on_node);
            }
        }
        // Pods on nodes that no longer exist.
        doomed.extend(by_node.into_values().flatten());
        if unseen == 0 {
            for node in &missing {
                let mut placed = pod.clone();
                if let Some(pod_spec) = placed.spec.as_mut() {
                    pod_spec.node_name = Some(node.clone());
                }
                if let Some(error) =
                    workload::create_pods(&self.client, involved, &self.expectations, &placed, 1)
                        .await
                {
                    return Err(workload::api_error(format!(
                        "create a pod of daemonset {}/{} on {node}",
                        key.0, key.1
                    ))(error));
                }
            }
        }
        // RollingUpdate: pods of an older template go, maxUnavailable at a time.
        let rolling =
            spec.update_strategy.as_ref().is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
        if rolling && missing.is_empty() && unseen == 0 {
            let max_unavailable = spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.clone())
                .map(|v| match v {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => {
                        n.max(1) as usize
                    }
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(p) => {
                        ((desired as f64) * p.trim_end_matches('%').parse::<f64>().unwrap_or(0.0)
                            / 100.0)
                            .floor()
                            .max(1.0) as usize
                    }
                })
                .unwrap_or(1);
            let unavailable = active.iter().filter(|p| !workload::ready(p)).count();
            let outdated: Vec<Arc<Pod>> = active
                .iter()
                .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(REVISION)) != Some(&hash))
                .filter(|p| !doomed.iter().any(|d| d.metadata.uid == p.metadata.uid))
                .cloned()
                .collect();
            doomed.extend(outdated.into_iter().take(max_unavailable.saturating_sub(unavailable)));
        }
        let names: Vec<String> = doomed.iter().filter_map(|p| p.metadata.name.clone()).collect();
        self.expectations.deleted(&uid, &names);
        for name in &names {
            match pods_api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {
                    workload::event(
                        &self.client,
                        involved,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(workload::api_error(format!("delete pod {}/{name}", key.0))(err))
                }
            }
        }
        self.update_status(&key, &set, &active, desired, &hash).await?;
        Ok(Action::Done)
    }

    async fn update_status(
        &self,
        key: &Key,
        set: &DaemonSet,
        active: &[Arc<Pod>],
        desired: usize,
        hash: &str,
    ) -> Result<(), Error> {
        let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": active.len(),
            "numberMisscheduled": 0,
            "numberReady": active.iter().filter(|p| workload::ready(p)).count(),
            "numberAvailable": active.iter().filter(|p| workload::available(p, min_ready)).count(),
            "numberUnavailable": desired.saturating_sub(active.iter().filter(|p| workload::available(p, min_ready)).count()),
            "updatedNumberScheduled": active.iter().filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(REVISION)).map(String::as_str) == Some(hash)).count(),
            "observedGeneration": set.metadata.generation,
        });
        let current = serde_json::to_value(&set.status).unwrap_or_default();
        let fields = [
            "desiredNumberScheduled",
            "currentNumberScheduled",
            "numberReady",
            "numberAvailable",
            "numberUnavailable",
            "updatedNumberScheduled",
            "observedGeneration",
        ];
        if fields
            .iter()
            .all(|f| current[f].as_i64().unwrap_or(0) == status[f].as_i64().unwrap_or(0))
        {
            return Ok(());
        }
        workload::patch_status::<DaemonSet>(&self.client, key, status).await
    }
}
