//! The disruption controller: each PodDisruptionBudget's status, which the eviction
//! subresource reads and spends. Expected pods are the selected pods (an integer
//! `minAvailable`) or the scale of their controllers (`maxUnavailable`, percentages:
//! Deployments through their ReplicaSets, StatefulSets, ReplicaSets, ReplicationControllers);
//! healthy pods are the selected ready ones not being deleted nor just evicted
//! (`disruptedPods`, forgotten once the pod is gone or after two minutes); the disruptions
//! allowed are the healthy ones above the desired number.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload;
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

/// How long an evicted pod that is still there counts as disrupted.
const DISRUPTED_FOR: f64 = 120.0;

struct Controller {
    client: kube::Client,
    budgets: Arc<Cache<PodDisruptionBudget>>,
    pods: Arc<Cache<Pod>>,
    replica_sets: Arc<Cache<ReplicaSet>>,
    deployments: Arc<Cache<Deployment>>,
    stateful_sets: Arc<Cache<StatefulSet>>,
    controllers: Arc<Cache<ReplicationController>>,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let budgets = informers.typed::<PodDisruptionBudget>();
    let pods = informers.typed::<Pod>();
    let replica_sets = informers.typed::<ReplicaSet>();
    let deployments = informers.typed::<Deployment>();
    let stateful_sets = informers.typed::<StatefulSet>();
    let controllers = informers.typed::<ReplicationController>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    budgets.queue_into(&informers, &queue, |b: &PodDisruptionBudget| {
        Some(workload::key_of(&b.metadata))
    });
    // A change of a pod or of a scale may change any budget of its namespace.
    fn namespace_follower<K: Clone + Send + Sync + 'static>(
        budgets: Arc<Cache<PodDisruptionBudget>>,
        queue: Arc<Queue<Key>>,
        namespace: fn(&K) -> Option<String>,
    ) -> impl FnMut(berth_reconcile::Change<K>) + Send + 'static {
        move |change| {
            let namespace = match &change {
                berth_reconcile::Change::Applied(o) | berth_reconcile::Change::Deleted(o) => {
                    namespace(o)
                }
                berth_reconcile::Change::Resynced => None,
            };
            for budget in budgets.store().state() {
                if namespace.is_none() || budget.metadata.namespace == namespace {
                    queue.add(workload::key_of(&budget.metadata));
                }
            }
        }
    }
    pods.follow(
        &informers,
        namespace_follower(budgets.clone(), queue.clone(), |p: &Pod| p.metadata.namespace.clone()),
    );
    replica_sets.follow(
        &informers,
        namespace_follower(budgets.clone(), queue.clone(), |o: &ReplicaSet| {
            o.metadata.namespace.clone()
        }),
    );
    deployments.follow(
        &informers,
        namespace_follower(budgets.clone(), queue.clone(), |o: &Deployment| {
            o.metadata.namespace.clone()
        }),
    );
    stateful_sets.follow(
        &informers,
        namespace_follower(budgets.clone(), queue.clone(), |o: &StatefulSet| {
            o.metadata.namespace.clone()
        }),
    );
    tokio::select! {
        _ = async {
            tokio::join!(
                budgets.ready(),
                pods.ready(),
                replica_sets.ready(),
                deployments.ready(),
                stateful_sets.ready(),
                controllers.ready()
            )
        } => {}
        _ = shutdown.cancelled() => return,
    }
    for budget in budgets.store().state() {
        queue.add(workload::key_of(&budget.metadata));
    }
    let controller = Arc::new(Controller {
        client: informers.client().clone(),
        budgets,
        pods,
        replica_sets,
        deployments,
        stateful_sets,
        controllers,
    });
    berth_reconcile::run("disruption", queue, 2, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

/// A count or percentage of `total`, percentages rounded up (as Kubernetes does for
/// budgets).
fn scaled(value: &IntOrString, total: i64) -> Option<i64> {
    match value {
        IntOrString::Int(n) => Some(i64::from(*n)),
        IntOrString::String(text) => {
            let percent: i64 = text.strip_suffix('%')?.parse().ok()?;
            Some((percent * total + 99) / 100)
        }
    }
}

/// Expected and desired healthy pods for a budget, given the selected pods' count and the
/// scale of their controllers (`None` when a controller is unknown).
fn desired(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    pods: i64,
    scale: Option<i64>,
) -> Option<(i64, i64)> {
    match (min_available, max_unavailable) {
        (Some(IntOrString::Int(n)), _) => Some((pods, i64::from(*n))),
        (Some(percent), _) => {
            let expected = scale?;
            Some((expected, scaled(percent, expected)?))
        }
        (None, Some(max)) => {
            let expected = scale?;
            Some((expected, (expected - scaled(max, expected)?).max(0)))
        }
        (None, None) => Some((pods, 0)),
    }
}

fn seconds_of(text: &str) -> Option<f64> {
    berth_stdx::time::parse_rfc3339(text).map(|s| s as f64)
}

impl Controller {
    /// The summed scale of the controllers of `pods` (a Deployment's through its
    /// ReplicaSets); pods without a controller count one each.
    fn scale(&self, namespace: &str, pods: &[Arc<Pod>]) -> Option<i64> {
        let mut seen = HashSet::new();
        let mut total = 0i64;
        for pod in pods {
            let Some(owner) =
                pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true))
            else {
                total += 1;
                continue;
            };
            let (kind, name) = match owner.kind.as_str() {
                "ReplicaSet" => {
                    let set = self
                        .replica_sets
                        .store()
                        .get(&ObjectRef::new(&owner.name).within(namespace))?;
                    match set
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .find(|r| r.controller == Some(true) && r.kind == "Deployment")
                    {
                        Some(deployment) => ("Deployment", deployment.name.clone()),
                        None => ("ReplicaSet", owner.name.clone()),
                    }
                }
                kind => (kind, owner.name.clone()),
            };
            if !seen.insert((kind.to_owned(), name.clone())) {
                continue;
            }
            let at = ObjectRef::new(&name);
            let replicas = match kind {
                "Deployment" => self
                    .deployments
                    .store()
                    .get(&at.within(namespace))?
                    .spec
                    .as_ref()?
                    .replicas
                    .unwrap_or(1),
                "ReplicaSet" => self
                    .replica_sets
                    .store()
                    .get(&ObjectRef::new(&name).within(namespace))?
                    .spec
                    .as_ref()?
                    .replicas
                    .unwrap_or(1),
                "StatefulSet" => self
                    .stateful_sets
                    .store()
                    .get(&ObjectRef::new(&name).within(namespace))?
                    .spec
                    .as_ref()?
                    .replicas
                    .unwrap_or(1),
                "ReplicationController" => self
                    .controllers
                    .store()
                    .get(&ObjectRef::new(&name).within(namespace))?
                    .spec
                    .as_ref()?
                    .replicas
                    .unwrap_or(1),
                _ => return None,
            };
            total += i64::from(replicas);
        }
        Some(total)
    }

    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(budget) = self.budgets.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
            return Ok(Action::Done);
        };
        if budget.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let spec = budget.spec.clone().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = match spec.selector.as_ref() {
            None => Vec::new(),
            Some(selector) => self.pods.store().state_filter(|p| {
                p.metadata.namespace.as_deref() == Some(key.0.as_str())
                    && workload::selects(selector, p.metadata.labels.as_ref())
            }),
        };
        let now = berth_stdx::time::unix_now() as f64;
        let status = budget.status.clone().unwrap_or_default();
        // Evicted pods still there stay disrupted for a while; gone ones are forgotten.
        let mut disrupted: BTreeMap<String, String> = BTreeMap::new();
        let mut next_check: Option<f64> = None;
        for (name, time) in status.disrupted_pods.iter().flatten() {
            let text = serde_json::to_value(time).ok().and_then(|v| v.as_str().map(str::to_owned));
            let Some(text) = text else { continue };
            let since = seconds_of(&text).unwrap_or(now);
            let present = pods.iter().any(|p| {
                p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none()
            });
            if present && now - since < DISRUPTED_FOR {
                next_check = Some(
                    next_check.map_or(since + DISRUPTED_FOR, |n: f64| n.min(since + DISRUPTED_FOR)),
                );
                disrupted.insert(name.clone(), text);
            }
        }
        let healthy = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| !p.metadata.name.as_deref().is_some_and(|n| disrupted.contains_key(n)))
            .filter(|p| workload::ready(p))
            .count() as i64;
        let counted = pods.iter().filter(|p| workload::active(p)).count() as i64;
        let scale = self.scale(&key.0, &pods);
        let (expected, wanted, allowed, condition) = match desired(
            spec.min_available.as_ref(),
            spec.max_unavailable.as_ref(),
            counted,
            scale,
        ) {
            Some((expected, wanted)) => {
                let allowed = (healthy - wanted).max(0);
                let condition = if allowed > 0 {
                    json!({"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": ""})
                } else {
                    json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": ""})
                };
                (expected, wanted, allowed, condition)
            }
            // A controller the budget needs is not known: no disruption until it is.
            None => (
                0,
                0,
                0,
                json!({"type": "DisruptionAllowed", "status": "False",
                "reason": "SyncFailed", "message": "found no controllers for pod(s) the budget selects"}),
            ),
        };
        let current = serde_json::to_value(&status).unwrap_or_default();
        let same_condition = current["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"))
            .is_some_and(|c| {
                c["status"] == condition["status"] && c["reason"] == condition["reason"]
            });
        let mut condition = condition;
        condition["lastTransitionTime"] = if same_condition {
            current["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"))
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(berth_api::meta::now()))
        } else {
            json!(berth_api::meta::now())
        };
        condition["observedGeneration"] = json!(budget.metadata.generation);
        let next = json!({
            "observedGeneration": budget.metadata.generation,
            "expectedPods": expected,
            "currentHealthy": healthy,
            "desiredHealthy": wanted,
            "disruptionsAllowed": allowed,
            "disruptedPods": disrupted,
            "conditions": [condition],
        });
        let unchanged = same_condition
            && [
                "observedGeneration",
                "expectedPods",
                "currentHealthy",
                "desiredHealthy",
                "disruptionsAllowed",
            ]
            .iter()
            .all(|f| current[f].as_i64().unwrap_or(0) == next[f].as_i64().unwrap_or(0))
            && current["disruptedPods"].as_object().map_or(0, |m| m.len()) == disrupted.len();
        if !unchanged {
            let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), &key.0);
            // A replace of the whole status (a merge would keep forgotten disrupted pods),
            // at the version read: an eviction that spent a disruption meanwhile wins and
            // this turn is retried.
            let mut object = (*budget).clone();
            object.status = serde_json::from_value(next).ok();
            match api.replace_status(&key.1, &PostParams::default(), &object).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Action::Done),
                Err(err) => {
                    return Err(workload::api_error(format!(
                        "update the status of poddisruptionbudget {}/{}",
                        key.0, key.1
                    ))(err))
                }
            }
        }
        Ok(match next_check {
            Some(at) => Action::RequeueAfter(Duration::from_secs_f64((at - now).max(0.0) + 0.5)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_count_as_kubernetes_does() {
        let int = |n| IntOrString::Int(n);
        let pct = |p: &str| IntOrString::String(p.into());
        assert_eq!(desired(Some(&int(2)), None, 3, None), Some((3, 2)));
        assert_eq!(desired(Some(&pct("50%")), None, 3, Some(3)), Some((3, 2)), "rounded up");
        assert_eq!(desired(None, Some(&int(1)), 2, Some(4)), Some((4, 3)));
        assert_eq!(desired(None, Some(&pct("30%")), 10, Some(10)), Some((10, 7)));
        assert_eq!(desired(None, Some(&int(1)), 2, None), None, "a controller is unknown");
        assert_eq!(desired(None, None, 5, None), Some((5, 0)));
    }
}
