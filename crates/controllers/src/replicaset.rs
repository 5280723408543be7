//! The ReplicaSet controller: as many active pods as `spec.replicas`, made from the
//! template (slow start: batches of 1, 2, 4, ...) or deleted (those not yet scheduled,
//! pending, or not ready first; newest first), and a status of replicas, ready and
//! available pods. A template the API refuses shows as the `ReplicaFailure` condition
//! with the API's message. The same loop runs ReplicationControllers (core/v1), seen as
//! ReplicaSets whose selector is their label map, as Kubernetes shares it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload::{self, Expectations};
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

/// A kind this loop runs: ReplicaSet, or ReplicationController seen as one.
pub(crate) trait Set:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const API_VERSION: &'static str;
    const KIND: &'static str;
    /// The loop's name in logs and metrics.
    const LOOP: &'static str;
    fn as_replica_set(&self) -> ReplicaSet;
}

impl Set for ReplicaSet {
    const API_VERSION: &'static str = "apps/v1";
    const KIND: &'static str = "ReplicaSet";
    const LOOP: &'static str = "replicaset";
    fn as_replica_set(&self) -> ReplicaSet {
        self.clone()
    }
}

impl Set for ReplicationController {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "ReplicationController";
    const LOOP: &'static str = "replicationcontroller";
    fn as_replica_set(&self) -> ReplicaSet {
        let spec = self.spec.clone().unwrap_or_default();
        // An empty selector selects the template's labels, as Kubernetes defaults it.
        let labels = spec.selector.filter(|s| !s.is_empty()).or_else(|| {
            spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone())
        });
        let status = self.status.clone().map(|s| ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: None,
            ..ReplicaSetStatus::default()
        });
        ReplicaSet {
            metadata: self.metadata.clone(),
            spec: Some(ReplicaSetSpec {
                replicas: spec.replicas,
                min_ready_seconds: spec.min_ready_seconds,
                selector: LabelSelector { match_labels: labels, ..LabelSelector::default() },
                template: spec.template,
            }),
            status,
        }
    }
}

struct Controller<K: Set> {
    client: kube::Client,
    sets: Arc<Cache<K>>,
    pods: Arc<Cache<Pod>>,
    expectations: Expectations,
}

pub(crate) async fn run<K: Set>(informers: Arc<Informers>) {
    let sets = informers.typed::<K>();
    let pods = informers.typed::<Pod>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    let controller = Arc::new(Controller {
        client: informers.client().clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        expectations: Expectations::default(),
    });
    // A pod's change wakes the set that controls it.
    let owner_of = {
        let sets = sets.clone();
        move |pod: &Pod| -> Option<Key> {
            let uid = workload::controller_uid(&pod.metadata)?;
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            sets.store()
                .state_filter(|s| s.meta().uid.as_deref() == Some(uid))
                .first()
                .map(|s| workload::key_of(s.meta()))
                .or(Some((namespace, String::new())))
                .filter(|(_, name)| !name.is_empty())
        }
    };
    sets.queue_into(&informers, &queue, |set: &K| Some(workload::key_of(set.meta())));
    pods.queue_into(&informers, &queue, owner_of);
    tokio::select! {
        _ = async { tokio::join!(sets.ready(), pods.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for set in sets.store().state() {
        queue.add(workload::key_of(set.meta()));
    }
    berth_reconcile::run(K::LOOP, queue, 4, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

/// Deletion order: unscheduled, then pending, then not ready, then the newest.
fn deletion_rank(pod: &Pod) -> (u8, std::cmp::Reverse<String>) {
    let scheduled =
        pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let rank = if !scheduled {
        0
    } else if workload::phase(pod) == "Pending" {
        1
    } else if !workload::ready(pod) {
        2
    } else {
        3
    };
    let created =
        pod.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    (rank, std::cmp::Reverse(created))
}

impl<K: Set> Controller<K> {
    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(set) = self.sets.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
            return Ok(Action::Done);
        };
        let set = set.as_replica_set();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        if set.metadata.deletion_timestamp.is_some() {
            self.expectations.forget(&uid);
            return Ok(Action::Done);
        }
        let spec = set.spec.clone().unwrap_or_default();
        let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
        // Pods whose labels no longer match are released (their reference to this set
        // removed), as Kubernetes does; the set then counts, and replaces, only the rest.
        let (owned, strays): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) =
            workload::owned_pods(&self.pods, &key.0, &uid)
                .into_iter()
                .partition(|pod| workload::selects(&spec.selector, pod.metadata.labels.as_ref()));
        for stray in &strays {
            self.release(&key.0, stray, &uid).await?;
        }
        let cached_active: Vec<Arc<Pod>> =
            owned.iter().filter(|p| workload::active(p)).cloned().collect();
        let (active, unseen) = self.expectations.adjust(&uid, &cached_active, &owned);
        let have = active.len() + unseen;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let involved = (K::API_VERSION, K::KIND, &set.metadata);
        let mut failure = None;
        if have < wanted {
            let template = spec.template.clone().unwrap_or_default();
            let owner = workload::controller_reference(K::API_VERSION, K::KIND, &set.metadata);
            let pod = workload::pod_from_template(&template, &key.1, owner, &BTreeMap::new());
            let created = workload::create_pods(
                &self.client,
                involved,
                &self.expectations,
                &pod,
                wanted - have,
            )
            .await;
            if let Some(error) = created {
                let message = match &error {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                failure = Some((message, error));
            }
        } else if have > wanted && unseen == 0 {
            let mut doomed = active.clone();
            doomed.sort_by_key(|p| deletion_rank(p));
            let doomed: Vec<Arc<Pod>> = doomed.into_iter().take(have - wanted).collect();
            let names: Vec<String> =
                doomed.iter().filter_map(|p| p.metadata.name.clone()).collect();
            self.expectations.deleted(&uid, &names);
            for pod in &doomed {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let options = workload::exactly(&pod.metadata, DeleteParams::default());
                match pods.delete(&name, &options).await {
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
                    Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                    Err(err) => {
                        return Err(workload::api_error(format!("delete pod {}/{name}", key.0))(
                            err,
                        ))
                    }
                }
            }
        }
        self.update_status(&key, &set, &owned, failure.as_ref().map(|(m, _)| m.as_str())).await?;
        match failure {
            Some((_, error)) => {
                Err(workload::api_error(format!("create pods for {}/{}", key.0, key.1))(error))
            }
            None if unseen > 0 => Ok(Action::RequeueAfter(Duration::from_secs(1))),
            None => {
                // Pods becoming available after minReadySeconds are seen by looking again.
                let min_ready = spec.min_ready_seconds.unwrap_or(0);
                Ok(if min_ready > 0 {
                    Action::RequeueAfter(Duration::from_secs(min_ready as u64))
                } else {
                    Action::Done
                })
            }
        }
    }

    async fn release(&self, namespace: &str, pod: &Pod, uid: &str) -> Result<(), Error> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let kept: Vec<_> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != uid)
            .cloned()
            .collect();
        let patch = json!({"metadata": {"ownerReferences": if kept.is_empty() { json!(null) } else { json!(kept) },
            "resourceVersion": pod.metadata.resource_version}});
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(workload::api_error(format!("release pod {namespace}/{name}"))(err)),
        }
    }

    async fn update_status(
        &self,
        key: &Key,
        set: &ReplicaSet,
        owned: &[Arc<Pod>],
        failure: Option<&str>,
    ) -> Result<(), Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| workload::active(p)).collect();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let labelled = active
            .iter()
            .filter(|p| {
                spec.template
                    .as_ref()
                    .and_then(|t| t.metadata.as_ref())
                    .and_then(|m| m.labels.as_ref())
                    .is_none_or(|labels| {
                        labels.iter().all(|(k, v)| {
                            p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)
                        })
                    })
            })
            .count();
        let mut status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": labelled,
            "readyReplicas": active.iter().filter(|p| workload::ready(p)).count(),
            "availableReplicas": active.iter().filter(|p| workload::available(p, min_ready)).count(),
            "observedGeneration": set.metadata.generation,
        });
        let now = berth_api::meta::now();
        status["conditions"] = match failure {
            Some(message) => {
                json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message, "lastTransitionTime": now}])
            }
            None => json!(null),
        };
        let current = serde_json::to_value(&set.status).unwrap_or_default();
        let unchanged = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ]
        .iter()
        .all(|field| current[field].as_i64().unwrap_or(0) == status[field].as_i64().unwrap_or(0))
            && current["conditions"].is_null() == status["conditions"].is_null();
        if unchanged {
            return Ok(());
        }
        workload::patch_status::<K>(&self.client, key, status).await
    }
}
