//! The Deployment controller: each template is a revision kept as a ReplicaSet named by
//! the template's hash (`pod-template-hash`), numbered by `deployment.kubernetes.io/revision`;
//! RollingUpdate moves pods from the old sets to the new one within `maxSurge` and
//! `maxUnavailable`, Recreate empties the old sets first; `paused` stops progress;
//! `revisionHistoryLimit` old sets are kept; the status (replicas, updated, ready,
//! available) and the Available and Progressing conditions (with
//! `progressDeadlineSeconds`) are what `kubectl rollout status` reads. `rollout undo`
//! (kubectl copies an old set's template back) makes that set the newest revision again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload;
use crate::{Error, MAX_BACKOFF};

pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
pub(crate) const HASH: &str = "pod-template-hash";

type Key = (String, String);

/// The template's hash as Kubernetes shapes it: FNV-1a over the template, its decimal
/// form encoded with the alphabet of names that cannot spell words.
pub(crate) fn template_hash(template: &PodTemplateSpec) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char).collect()
}

/// The template without the hash label (what a set's template is compared by).
fn unhashed(template: &PodTemplateSpec) -> serde_json::Value {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH);
    }
    serde_json::to_value(template).unwrap_or_default()
}

fn revision(set: &ReplicaSet) -> i64 {
    workload::annotation(&set.metadata, REVISION).unwrap_or(0)
}

/// An int-or-percent of `total`, rounded up or down.
fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let value = value.cloned().unwrap_or(IntOrString::String(default.to_owned()));
    match value {
        IntOrString::Int(n) => n.max(0),
        IntOrString::String(text) => {
            let percent: f64 = text.trim_end_matches('%').parse().unwrap_or(0.0);
            let exact = f64::from(total) * percent / 100.0;
            (if round_up { exact.ceil() } else { exact.floor() }) as i32
        }
    }
}

fn spec_replicas(set: &ReplicaSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(set: &ReplicaSet) -> (i32, i32, i32) {
    let status = set.status.clone().unwrap_or_default();
    (status.replicas, status.ready_replicas.unwrap_or(0), status.available_replicas.unwrap_or(0))
}

struct Controller {
    client: kube::Client,
    deployments: Arc<Cache<Deployment>>,
    sets: Arc<Cache<ReplicaSet>>,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let deployments = informers.typed::<Deployment>();
    let sets = informers.typed::<ReplicaSet>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    deployments
        .queue_into(&informers, &queue, |d: &Deployment| Some(workload::key_of(&d.metadata)));
    let owner_of = {
        let deployments = deployments.clone();
        move |set: &ReplicaSet| -> Option<Key> {
            let uid = workload::controller_uid(&set.metadata)?;
            deployments
                .store()
                .state_filter(|d| d.metadata.uid.as_deref() == Some(uid))
                .first()
                .map(|d| workload::key_of(&d.metadata))
        }
    };
    sets.queue_into(&informers, &queue, owner_of);
    tokio::select! {
        _ = async { tokio::join!(deployments.ready(), sets.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for deployment in deployments.store().state() {
        queue.add(workload::key_of(&deployment.metadata));
    }
    let controller = Arc::new(Controller { client: informers.client().clone(), deployments, sets });
    berth_reconcile::run("deployment", queue, 4, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

impl Controller {
    async fn scale(
        &self,
        deployment: &Deployment,
        set: &ReplicaSet,
        replicas: i32,
    ) -> Result<(), Error> {
        let from = spec_replicas(set);
        if from == replicas {
            return Ok(());
        }
        let (namespace, name) = workload::key_of(&set.metadata);
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let patch = json!({"metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": desired.to_string()},
            "resourceVersion": set.metadata.resource_version}, "spec": {"replicas": replicas}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(workload::api_error(format!("scale replicaset {namespace}/{name}")))?;
        let verb = if replicas > from { "up" } else { "down" };
        let message = format!("Scaled {verb} replica set {name} from {from} to {replicas}");
        workload::event(
            &self.client,
            ("apps/v1", "Deployment", &deployment.metadata),
            "Normal",
            "ScalingReplicaSet",
            &message,
        )
        .await;
        Ok(())
    }

    async fn create_set(
        &self,
        deployment: &Deployment,
        hash: &str,
        revision: i64,
        replicas: i32,
    ) -> Result<ReplicaSet, Error> {
        let (namespace, name) = workload::key_of(&deployment.metadata);
        let spec = deployment.spec.clone().unwrap_or_default();
        let mut template = spec.template.clone();
        let mut meta = template.metadata.clone().unwrap_or_default();
        let mut labels = meta.labels.clone().unwrap_or_default();
        labels.insert(HASH.to_owned(), hash.to_owned());
        meta.labels = Some(labels.clone());
        template.metadata = Some(meta);
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH.to_owned(), hash.to_owned());
        let set = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                annotations: Some(
                    [
                        (REVISION.to_owned(), revision.to_string()),
                        (
                            "deployment.kubernetes.io/desired-replicas".to_owned(),
                            spec.replicas.unwrap_or(1).to_string(),
                        ),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![workload::controller_reference(
                    "apps/v1",
                    "Deployment",
                    &deployment.metadata,
                )]),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let made = match api.create(&PostParams::default(), &set).await {
            Ok(made) => made,
            // Made before a restart, and not yet in the cache.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                api.get(&format!("{name}-{hash}")).await.map_err(workload::api_error(format!(
                    "read replicaset {namespace}/{name}-{hash}"
                )))?
            }
            Err(err) => {
                return Err(workload::api_error(format!(
                    "create a replicaset for {namespace}/{name}"
                ))(err))
            }
        };
        let message = format!("Scaled up replica set {name}-{hash} from 0 to {replicas}");
        workload::event(
            &self.client,
            ("apps/v1", "Deployment", &deployment.metadata),
            "Normal",
            "ScalingReplicaSet",
            &message,
        )
        .await;
        Ok(made)
    }

    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(deployment) = self.deployments.store().get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            return Ok(Action::Done);
        };
        if deployment.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        let spec = deployment.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let mut sets: Vec<Arc<ReplicaSet>> = self.sets.store().state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(key.0.as_str())
                && workload::controller_uid(&s.metadata) == Some(uid.as_str())
        });
        sets.sort_by_key(|s| revision(s));
        let wanted_template = unhashed(&spec.template);
        let current = sets
            .iter()
            .find(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.template.as_ref())
                    .is_some_and(|t| unhashed(t) == wanted_template)
            })
            .cloned();
        let olds: Vec<Arc<ReplicaSet>> = sets
            .iter()
            .filter(|s| {
                Some(s.metadata.uid.clone()) != current.as_ref().map(|c| c.metadata.uid.clone())
            })
            .cloned()
            .collect();
        let newest = sets.iter().map(|s| revision(s)).max().unwrap_or(0);
        if spec.paused == Some(true) {
            self.update_status(&deployment, current.as_deref(), &sets).await?;
            return Ok(Action::Done);
        }
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let current = match current {
            Some(set) => {
                // Brought back by `rollout undo`: it becomes the newest revision.
                if revision(&set) < newest {
                    let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &key.0);
                    let patch =
                        json!({"metadata": {"annotations": {REVISION: (newest + 1).to_string()}}});
                    let name = set.metadata.name.clone().unwrap_or_default();
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(
                        workload::api_error(format!("renumber replicaset {}/{name}", key.0)),
                    )?;
                }
                (*set).clone()
            }
            None => {
                let hash = template_hash(&spec.template);
                let first = if olds.is_empty() { replicas } else { 0 };
                self.create_set(
                    &deployment,
                    &hash,
                    newest + 1,
                    if recreate { first } else { first.min(replicas) },
                )
                .await?
            }
        };
        let olds_with_pods = olds.iter().any(|s| spec_replicas(s) > 0 || status_of(s).0 > 0);
        if recreate {
            for old in &olds {
                self.scale(&deployment, old, 0).await?;
            }
            if !olds_with_pods {
                self.scale(&deployment, &current, replicas).await?;
            }
        } else {
            let rolling =
                spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
            let surge = resolve(rolling.max_surge.as_ref(), replicas, true, "25%");
            let mut unavailable = resolve(rolling.max_unavailable.as_ref(), replicas, false, "25%");
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            let total: i32 =
                spec_replicas(&current) + olds.iter().map(|s| spec_replicas(s)).sum::<i32>();
            // Up: the new set grows within the surge.
            let new_wanted = if spec_replicas(&current) > replicas {
                replicas
            } else {
                let room = (replicas + surge - total).max(0);
                (spec_replicas(&current) + room).min(replicas)
            };
            self.scale(&deployment, &current, new_wanted).await?;
            // Down: old sets shrink while enough pods stay available (unhealthy ones first).
            let total = total - spec_replicas(&current) + new_wanted;
            let min_available = replicas - unavailable;
            let new_unavailable = (new_wanted - status_of(&current).2).max(0);
            let mut can_remove = total - min_available - new_unavailable;
            let mut remaining: Vec<(Arc<ReplicaSet>, i32)> =
                olds.iter().map(|s| (s.clone(), spec_replicas(s))).collect();
            for (set, target) in remaining.iter_mut() {
                if can_remove <= 0 {
                    break;
                }
                let unhealthy = (*target - status_of(set).2).max(0);
                let cut = unhealthy.min(can_remove);
                *target -= cut;
                can_remove -= cut;
            }
            let available_total: i32 =
                status_of(&current).2 + olds.iter().map(|s| status_of(s).2).sum::<i32>();
            let mut spare = (available_total - min_available).max(0).min(can_remove.max(0));
            for (_, target) in remaining.iter_mut() {
                if spare <= 0 {
                    break;
                }
                let cut = (*target).min(spare);
                *target -= cut;
                spare -= cut;
            }
            for (set, target) in &remaining {
                self.scale(&deployment, set, *target).await?;
            }
        }
        self.cleanup(&deployment, &olds).await?;
        let complete = self.update_status(&deployment, Some(&current), &sets).await?;
        Ok(if complete { Action::Done } else { Action::RequeueAfter(Duration::from_secs(5)) })
    }

    /// Old sets with nothing left beyond `revisionHistoryLimit` are deleted, oldest first.
    async fn cleanup(
        &self,
        deployment: &Deployment,
        olds: &[Arc<ReplicaSet>],
    ) -> Result<(), Error> {
        let limit =
            deployment.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0)
                as usize;
        let empty: Vec<&Arc<ReplicaSet>> =
            olds.iter().filter(|s| spec_replicas(s) == 0 && status_of(s).0 == 0).collect();
        if empty.len() <= limit {
            return Ok(());
        }
        for set in empty.iter().take(empty.len() - limit) {
            let (namespace, name) = workload::key_of(&set.metadata);
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(workload::api_error(format!(
                        "delete old replicaset {namespace}/{name}"
                    ))(err))
                }
            }
        }
        Ok(())
    }

    /// Writes the status; returns whether the rollout is complete.
    async fn update_status(
        &self,
        deployment: &Deployment,
        current: Option<&ReplicaSet>,
        sets: &[Arc<ReplicaSet>],
    ) -> Result<bool, Error> {
        let (namespace, name) = workload::key_of(&deployment.metadata);
        let spec = deployment.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let rolling =
            spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let unavailable = if recreate {
            replicas
        } else {
            resolve(rolling.max_unavailable.as_ref(), replicas, false, "25%")
        };
        let mut all: Vec<ReplicaSet> = sets.iter().map(|s| (**s).clone()).collect();
        if let Some(current) = current {
            all.retain(|s| s.metadata.uid != current.metadata.uid);
            all.push(current.clone());
        }
        let total: i32 = all.iter().map(|s| status_of(s).0).sum();
        let ready: i32 = all.iter().map(|s| status_of(s).1).sum();
        let available: i32 = all.iter().map(|s| status_of(s).2).sum();
        let updated = current.map(|c| status_of(c).0).unwrap_or(0);
        let current_name = current.and_then(|c| c.metadata.name.clone()).unwrap_or_default();
        let complete = current.is_some()
            && updated == replicas
            && total == replicas
            && available == replicas
            && current.is_some_and(|c| spec_replicas(c) == replicas);
        let now = berth_api::meta::now();
        let old = deployment.status.clone().unwrap_or_default();
        let old_conditions = old.conditions.clone().unwrap_or_default();
        let previous = |kind: &str| old_conditions.iter().find(|c| c.type_ == kind).cloned();
        let available_ok = available >= replicas - unavailable;
        let available_condition = {
            let (status, reason, message) = if available_ok {
                ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
            } else {
                (
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                )
            };
            let since = previous("Available")
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time)
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| now.clone());
            json!({"type": "Available", "status": status, "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": since})
        };
        // Progress: the numbers moved, or the rollout is complete; past the deadline
        // without progress, ProgressDeadlineExceeded.
        let moved = old.updated_replicas.unwrap_or(0) != updated
            || old.available_replicas.unwrap_or(0) != available
            || old.replicas.unwrap_or(0) != total
            || old.observed_generation != deployment.metadata.generation;
        let last_progress = previous("Progressing")
            .and_then(|c| c.last_update_time)
            .and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()));
        let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
        let stalled = !complete
            && !moved
            && last_progress.is_some_and(|t| berth_stdx::time::unix_now() - t > deadline);
        let progressing_condition = if complete {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                "message": format!("ReplicaSet \"{current_name}\" has successfully progressed."),
                "lastUpdateTime": if moved { now.clone() } else { previous("Progressing").and_then(|c| c.last_update_time).map(|t| t.0.to_string()).unwrap_or(now.clone()) },
                "lastTransitionTime": now})
        } else if stalled {
            json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet \"{current_name}\" has timed out progressing."),
                "lastUpdateTime": now, "lastTransitionTime": now})
        } else {
            let since = if moved || last_progress.is_none() {
                now.clone()
            } else {
                previous("Progressing")
                    .and_then(|c| c.last_update_time)
                    .map(|t| t.0.to_string())
                    .unwrap_or(now.clone())
            };
            json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                "message": format!("ReplicaSet \"{current_name}\" is progressing."),
                "lastUpdateTime": since, "lastTransitionTime": now})
        };
        let mut conditions = vec![available_condition, progressing_condition];
        // A template whose pods the API refuses shows here too, with the API's message.
        if let Some(failure) = current
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "ReplicaFailure"))
        {
            conditions.push(
                json!({"type": "ReplicaFailure", "status": failure.status, "reason": failure.reason,
                "message": failure.message, "lastUpdateTime": now, "lastTransitionTime": now}),
            );
        }
        let status = json!({
            "observedGeneration": deployment.metadata.generation,
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
            "availableReplicas": available, "unavailableReplicas": (replicas - available).max(0),
            "conditions": conditions,
        });
        let same = old.observed_generation == deployment.metadata.generation
            && old.replicas.unwrap_or(0) == total
            && old.updated_replicas.unwrap_or(0) == updated
            && old.ready_replicas.unwrap_or(0) == ready
            && old.available_replicas.unwrap_or(0) == available
            && old_conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .eq(status["conditions"].as_array().into_iter().flatten().map(|c| {
                    (
                        c["type"].as_str().unwrap_or("").to_owned(),
                        c["status"].as_str().unwrap_or("").to_owned(),
                        c["reason"].as_str().map(str::to_owned),
                    )
                }));
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
        if !same {
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(true),
                Err(err) => {
                    return Err(workload::api_error(format!(
                        "update the status of deployment {namespace}/{name}"
                    ))(err))
                }
            }
        }
        let revision_now = current.map(revision).unwrap_or(0).to_string();
        let annotated =
            deployment.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned();
        if current.is_some() && annotated.as_deref() != Some(revision_now.as_str()) {
            let patch = json!({"metadata": {"annotations": {REVISION: revision_now}}});
            if let Err(err) = api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await
            {
                tracing::debug!("revision annotation of {namespace}/{name}: {err}");
            }
        }
        Ok(complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_percentages() {
        let template: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox"}]}}))
            .expect("template");
        let hash = template_hash(&template);
        assert_eq!(hash, template_hash(&template.clone()), "stable");
        assert!(hash.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{hash}");
        let mut other = template.clone();
        other.spec.as_mut().expect("spec").containers[0].image = Some("busybox:2".into());
        assert_ne!(template_hash(&other), hash);
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, true, "25%"), 3);
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, false, "25%"), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(5)), 50, true, "25%"), 5);
        assert_eq!(resolve(None, 4, false, "25%"), 1);
    }
}
