//! The StatefulSet controller: pods with a stable identity (`NAME-ORDINAL`, hostname and
//! subdomain from the set's Service), each with its own PersistentVolumeClaims made from
//! `volumeClaimTemplates` (`TEMPLATE-NAME-ORDINAL`, kept or deleted as
//! `persistentVolumeClaimRetentionPolicy` says). `OrderedReady` creates in ordinal order,
//! each pod only once its predecessors run and are ready, and removes from the highest
//! ordinal down, one at a time; `Parallel` does both at once. Every template is a
//! ControllerRevision (`NAME-HASH`, numbered, `revisionHistoryLimit` kept); RollingUpdate
//! replaces pods of older revisions from the highest ordinal down to `partition`, one at
//! a time once the previous one is ready again; OnDelete waits for the user. The status
//! (replicas, ready, current, updated, available, the two revisions) is what `kubectl
//! rollout status|history|undo sts` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload;
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

/// The pod label naming the revision a pod was made from.
pub(crate) const REVISION: &str = "controller-revision-hash";
const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX: &str = "apps.kubernetes.io/pod-index";
/// The ControllerRevision label with the template's hash.
const HASH: &str = "controller.kubernetes.io/hash";

struct Controller {
    client: kube::Client,
    sets: Arc<Cache<StatefulSet>>,
    pods: Arc<Cache<Pod>>,
    revisions: Arc<Cache<ControllerRevision>>,
    claims: Arc<Cache<PersistentVolumeClaim>>,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let sets = informers.typed::<StatefulSet>();
    let pods = informers.typed::<Pod>();
    let revisions = informers.typed::<ControllerRevision>();
    let claims = informers.typed::<PersistentVolumeClaim>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    sets.queue_into(&informers, &queue, |set: &StatefulSet| Some(workload::key_of(&set.metadata)));
    let owner_of = |sets: Arc<Cache<StatefulSet>>| {
        move |meta: &ObjectMeta| -> Option<Key> {
            let uid = workload::controller_uid(meta)?;
            sets.store()
                .state_filter(|s| s.metadata.uid.as_deref() == Some(uid))
                .first()
                .map(|s| workload::key_of(&s.metadata))
        }
    };
    {
        let owner = owner_of(sets.clone());
        pods.queue_into(&informers, &queue, move |pod: &Pod| owner(&pod.metadata));
        let owner = owner_of(sets.clone());
        revisions.queue_into(&informers, &queue, move |r: &ControllerRevision| owner(&r.metadata));
    }
    tokio::select! {
        _ = async { tokio::join!(sets.ready(), pods.ready(), revisions.ready(), claims.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for set in sets.store().state() {
        queue.add(workload::key_of(&set.metadata));
    }
    let controller =
        Arc::new(Controller { client: informers.client().clone(), sets, pods, revisions, claims });
    berth_reconcile::run("statefulset", queue, 2, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

/// The ordinal a pod of set `set` carries in its name, if it is one of the set's names.
fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || rest.starts_with('0') && rest.len() > 1 {
        return None;
    }
    rest.parse().ok().filter(|n: &i32| *n >= 0)
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION).map(String::as_str)
}

/// Running with the Ready condition, and not being deleted.
fn running_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && workload::phase(pod) == "Running"
        && workload::ready(pod)
}

fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// What the ControllerRevision of a template holds: the patch `kubectl rollout undo`
/// applies to bring the template back.
fn revision_data(spec: &StatefulSetSpec) -> serde_json::Value {
    let mut template = serde_json::to_value(&spec.template).unwrap_or_default();
    if let Some(object) = template.as_object_mut() {
        object.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// Whether the pod at `index` (from the first ordinal) is made at the update revision:
/// below a rolling update's partition pods stay at the current one; OnDelete sets' pods
/// deleted by the user come back at the new template.
fn updating(spec: &StatefulSetSpec, index: i32) -> bool {
    let strategy = spec.update_strategy.as_ref();
    if strategy.is_some_and(|s| s.type_.as_deref() == Some("OnDelete")) {
        return true;
    }
    let partition =
        strategy.and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
    index >= partition
}

impl Controller {
    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(set) = self.sets.store().get(&ObjectRef::new(&key.1).within(&key.0)) else {
            return Ok(Action::Done);
        };
        if set.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let (current_revision, update_revision) = self.revisions(&key, &set, &spec).await?;
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let owned = workload::owned_pods(&self.pods, &key.0, &uid);
        let mut slots: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        let mut strays = Vec::new();
        for pod in owned {
            match pod.metadata.name.as_deref().and_then(|n| ordinal_of(&key.1, n)) {
                Some(ordinal) => {
                    slots.insert(ordinal, pod);
                }
                None => strays.push(pod),
            }
        }
        let wanted = start..start + replicas;
        let involved = ("apps/v1", "StatefulSet", &set.metadata);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let mut waiting = false;
        // Pods of the set's range: finished ones are replaced, missing ones made.
        for ordinal in wanted.clone() {
            match slots.get(&ordinal) {
                Some(pod) if matches!(workload::phase(pod), "Failed" | "Succeeded") => {
                    if pod.metadata.deletion_timestamp.is_none() {
                        self.delete_pod(&pods_api, involved, pod, &key).await?;
                    }
                    if !parallel {
                        waiting = true;
                        break;
                    }
                }
                Some(pod) => {
                    if !parallel && !running_ready(pod) {
                        waiting = true;
                        break;
                    }
                }
                None => {
                    // A pod that a rolling update removed comes back at the update revision;
                    // others at the revision the set's pods are at.
                    let revision = if updating(&spec, ordinal - start) {
                        &update_revision
                    } else {
                        &current_revision
                    };
                    self.create_pod(&key, &set, &spec, ordinal, revision).await?;
                    if !parallel {
                        waiting = true;
                        break;
                    }
                }
            }
        }
        // Pods past the range go, from the highest ordinal down.
        let condemned: Vec<Arc<Pod>> =
            slots.range(start + replicas..).rev().map(|(_, p)| p.clone()).collect();
        let mut condemned: Vec<Arc<Pod>> = condemned
            .into_iter()
            .chain(slots.range(..start).rev().map(|(_, p)| p.clone()))
            .collect();
        condemned.extend(strays);
        if !waiting {
            for pod in &condemned {
                if pod.metadata.deletion_timestamp.is_some() {
                    if parallel {
                        continue;
                    }
                    waiting = true;
                    break;
                }
                // OrderedReady removes only while the others are healthy (the one being
                // removed may be the unhealthy one).
                let unhealthy_other =
                    slots.values().any(|p| p.metadata.uid != pod.metadata.uid && !running_ready(p));
                if !parallel && unhealthy_other {
                    waiting = true;
                    break;
                }
                self.scale_down_claims(&key, &spec, pod).await?;
                self.delete_pod(&pods_api, involved, pod, &key).await?;
                if !parallel {
                    waiting = true;
                    break;
                }
            }
        }
        // RollingUpdate: from the highest ordinal down to the partition, one pod at a time.
        let rolling =
            spec.update_strategy.as_ref().is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
        if rolling && !waiting && condemned.is_empty() {
            let partition = spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0)
                .max(0);
            for ordinal in wanted.clone().rev() {
                if ordinal - start < partition {
                    break;
                }
                let Some(pod) = slots.get(&ordinal) else { break };
                if revision_of(pod) != Some(update_revision.as_str()) {
                    if pod.metadata.deletion_timestamp.is_none() {
                        self.delete_pod(&pods_api, involved, pod, &key).await?;
                    }
                    break;
                }
                if !running_ready(pod) {
                    break;
                }
            }
        }
        self.update_status(&key, &set, &slots, wanted, &current_revision, &update_revision).await?;
        // Availability with minReadySeconds is a matter of time: look again then.
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        if min_ready > 0 && slots.values().any(|p| !workload::available(p, min_ready)) {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        Ok(Action::Done)
    }

    /// The set's revisions: the current one (what its pods are at, by the status) and the
    /// update one (the template now); makes the
    /// ControllerRevision of the template if it is new (or renumbers an old one the
    /// template went back to), and trims the history.
    async fn revisions(
        &self,
        key: &Key,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
    ) -> Result<(String, String), Error> {
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let mut owned: Vec<Arc<ControllerRevision>> = self.revisions.store().state_filter(|r| {
            r.metadata.namespace.as_deref() == Some(key.0.as_str())
                && workload::controller_uid(&r.metadata) == Some(uid.as_str())
        });
        owned.sort_by_key(|r| r.revision);
        let hash = crate::deployment::template_hash(&spec.template);
        let name = format!("{}-{hash}", key.1);
        let latest = owned.last().map(|r| r.revision).unwrap_or(0);
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &key.0);
        match owned.iter().find(|r| r.metadata.name.as_deref() == Some(&name)) {
            Some(existing) if existing.revision == latest => {}
            Some(_) => {
                // The template went back to an older revision: it becomes the newest.
                let patch = json!({"revision": latest + 1});
                match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(err) => {
                        return Err(workload::api_error(format!(
                            "renumber controllerrevision {}/{name}",
                            key.0
                        ))(err))
                    }
                }
            }
            None => {
                let labels = spec
                    .selector
                    .match_labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain([(HASH.to_owned(), hash.clone())])
                    .collect();
                let revision = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(key.0.clone()),
                        labels: Some(labels),
                        owner_references: Some(vec![workload::controller_reference(
                            "apps/v1",
                            "StatefulSet",
                            &set.metadata,
                        )]),
                        ..ObjectMeta::default()
                    },
                    data: Some(RawExtension(revision_data(spec))),
                    revision: latest + 1,
                };
                match api.create(&PostParams::default(), &revision).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(err) => {
                        return Err(workload::api_error(format!(
                            "create controllerrevision {}/{name}",
                            key.0
                        ))(err))
                    }
                }
            }
        }
        let status = set.status.clone().unwrap_or_default();
        let current = status
            .current_revision
            .filter(|c| owned.iter().any(|r| r.metadata.name.as_deref() == Some(c.as_str())))
            .unwrap_or_else(|| name.clone());
        // History: at most revisionHistoryLimit revisions that no pod uses besides the
        // current and update ones.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let pods = workload::owned_pods(&self.pods, &key.0, &uid);
        let in_use = |r: &ControllerRevision| {
            let n = r.metadata.name.as_deref().unwrap_or_default();
            n == name || n == current || pods.iter().any(|p| revision_of(p) == Some(n))
        };
        let old: Vec<&Arc<ControllerRevision>> = owned.iter().filter(|r| !in_use(r)).collect();
        for revision in old.iter().take(old.len().saturating_sub(limit)) {
            let Some(old_name) = revision.metadata.name.as_deref() else { continue };
            match api.delete(old_name, &DeleteParams::background()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(err) => {
                    return Err(workload::api_error(format!(
                        "delete controllerrevision {}/{old_name}",
                        key.0
                    ))(err))
                }
            }
        }
        Ok((current, name))
    }

    /// Makes the pod of `ordinal` at `revision` (and its claims first).
    async fn create_pod(
        &self,
        key: &Key,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        ordinal: i32,
        revision: &str,
    ) -> Result<(), Error> {
        let involved = ("apps/v1", "StatefulSet", &set.metadata);
        let name = format!("{}-{ordinal}", key.1);
        // The template of the pod's revision: the set's own unless it is an older one.
        let mut template = spec.template.clone();
        if !revision.ends_with(&crate::deployment::template_hash(&spec.template)) {
            if let Some(old) = self
                .revisions
                .store()
                .get(&ObjectRef::new(revision).within(&key.0))
                .and_then(|r| r.data.as_ref().map(|d| d.0["spec"]["template"].clone()))
            {
                let mut old = old;
                if let Some(object) = old.as_object_mut() {
                    object.remove("$patch");
                }
                if let Ok(old) = serde_json::from_value(old) {
                    template = old;
                }
            }
        }
        let labels: BTreeMap<String, String> = [
            (REVISION.to_owned(), revision.to_owned()),
            (POD_NAME.to_owned(), name.clone()),
            (POD_INDEX.to_owned(), ordinal.to_string()),
        ]
        .into();
        let owner = workload::controller_reference("apps/v1", "StatefulSet", &set.metadata);
        let mut pod = workload::pod_from_template(&template, &key.1, owner, &labels);
        pod.metadata.generate_name = None;
        pod.metadata.name = Some(name.clone());
        let mut pod_spec = pod.spec.take().unwrap_or_default();
        pod_spec.hostname = Some(name.clone());
        if let Some(service) = spec.service_name.as_deref().filter(|s| !s.is_empty()) {
            pod_spec.subdomain = Some(service.to_owned());
        }
        // Each claim template becomes a claim of this pod, mounted as the volume of its name.
        let mut volumes = pod_spec.volumes.take().unwrap_or_default();
        for template in spec.volume_claim_templates.iter().flatten() {
            let template_name = template.metadata.name.clone().unwrap_or_default();
            let claim = claim_name(&template_name, &key.1, ordinal);
            self.ensure_claim(key, set, spec, template, &claim).await?;
            volumes.retain(|v| v.name != template_name);
            volumes.push(Volume {
                name: template_name,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim,
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
        if !volumes.is_empty() {
            pod_spec.volumes = Some(volumes);
        }
        pod.spec = Some(pod_spec);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                workload::event(
                    &self.client,
                    involved,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("create Pod {name} in StatefulSet {} successful", key.1),
                )
                .await;
                Ok(())
            }
            // Made already (the cache lags), or still being deleted: the next turn sees it.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => {
                let message = match &err {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                workload::event(
                    &self.client,
                    involved,
                    "Warning",
                    "FailedCreate",
                    &format!("create Pod {name} in StatefulSet {} failed error: {message}", key.1),
                )
                .await;
                Err(workload::api_error(format!("create pod {}/{name}", key.0))(err))
            }
        }
    }

    /// Makes the claim if it is missing; with `whenDeleted: Delete` it belongs to the set.
    async fn ensure_claim(
        &self,
        key: &Key,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        template: &PersistentVolumeClaim,
        claim: &str,
    ) -> Result<(), Error> {
        if self.claims.store().get(&ObjectRef::new(claim).within(&key.0)).is_some() {
            return Ok(());
        }
        let mut labels = template.metadata.labels.clone().unwrap_or_default();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        let delete_with_set = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_deleted.as_deref())
            == Some("Delete");
        let owners: Option<Vec<OwnerReference>> = delete_with_set.then(|| {
            let mut owner = workload::controller_reference("apps/v1", "StatefulSet", &set.metadata);
            owner.controller = None;
            vec![owner]
        });
        let object = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim.to_owned()),
                namespace: Some(key.0.clone()),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                owner_references: owners,
                ..ObjectMeta::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &key.0);
        let involved = ("apps/v1", "StatefulSet", &set.metadata);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                workload::event(
                    &self.client,
                    involved,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("create Claim {claim} in StatefulSet {} success", key.1),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => Err(workload::api_error(format!("create claim {}/{claim}", key.0))(err)),
        }
    }

    /// With `whenScaled: Delete`, the claims of a pod removed by scaling down go with it
    /// (they are given the pod as owner, so the garbage collector removes them after it).
    async fn scale_down_claims(
        &self,
        key: &Key,
        spec: &StatefulSetSpec,
        pod: &Pod,
    ) -> Result<(), Error> {
        let when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref());
        if when_scaled != Some("Delete") {
            return Ok(());
        }
        let Some(ordinal) = pod.metadata.name.as_deref().and_then(|n| ordinal_of(&key.1, n)) else {
            return Ok(());
        };
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &key.0);
        for template in spec.volume_claim_templates.iter().flatten() {
            let claim =
                claim_name(template.metadata.name.as_deref().unwrap_or_default(), &key.1, ordinal);
            let Some(cached) = self.claims.store().get(&ObjectRef::new(&claim).within(&key.0))
            else {
                continue;
            };
            // The pod joins the claim's owners (a merge patch replaces the whole list).
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let mut owners: Vec<serde_json::Value> = cached
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.uid != uid)
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect();
            owners.push(json!({"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                "uid": pod.metadata.uid}));
            let owner = json!({"metadata": {"ownerReferences": owners}});
            match api.patch(&claim, &PatchParams::default(), &Patch::Merge(owner)).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(workload::api_error(format!("release claim {}/{claim}", key.0))(
                        err,
                    ))
                }
            }
        }
        Ok(())
    }

    async fn delete_pod(
        &self,
        api: &Api<Pod>,
        involved: (&str, &str, &ObjectMeta),
        pod: &Pod,
        key: &Key,
    ) -> Result<(), Error> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Only this pod (by uid): a newer pod of the same name must not go instead.
        let params = workload::exactly(&pod.metadata, DeleteParams::background());
        match api.delete(&name, &params).await {
            Ok(_) => {
                workload::event(
                    &self.client,
                    involved,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("delete Pod {name} in StatefulSet {} successful", key.1),
                )
                .await;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(err) => Err(workload::api_error(format!("delete pod {}/{name}", key.0))(err)),
        }
    }

    async fn update_status(
        &self,
        key: &Key,
        set: &StatefulSet,
        slots: &BTreeMap<i32, Arc<Pod>>,
        wanted: std::ops::Range<i32>,
        current_revision: &str,
        update_revision: &str,
    ) -> Result<(), Error> {
        let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
        let pods: Vec<&Arc<Pod>> = slots
            .iter()
            .filter(|(o, p)| wanted.contains(o) && p.metadata.deletion_timestamp.is_none())
            .map(|(_, p)| p)
            .collect();
        let count = |f: &dyn Fn(&Pod) -> bool| pods.iter().filter(|p| f(p)).count();
        let replicas = slots.values().filter(|p| workload::active(p)).count();
        let ready = count(&|p| running_ready(p));
        let available = count(&|p| running_ready(p) && workload::available(p, min_ready));
        let updated = count(&|p| revision_of(p) == Some(update_revision));
        let mut current = count(&|p| revision_of(p) == Some(current_revision));
        let desired = wanted.len();
        // Every pod at the update revision: it becomes the current one.
        let mut current_revision = current_revision.to_owned();
        if updated == desired && pods.len() == desired {
            current_revision = update_revision.to_owned();
            current = updated;
        }
        let status = json!({
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": available,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": update_revision,
            "collisionCount": 0,
            "observedGeneration": set.metadata.generation,
        });
        let now = serde_json::to_value(&set.status).unwrap_or_default();
        let same = status.as_object().is_some_and(|o| {
            o.iter().all(|(k, v)| {
                now.get(k).unwrap_or(&serde_json::Value::Null) == v
                    || (v == &json!(0) && now.get(k).is_none_or(|n| n.is_null()))
            })
        });
        if same {
            return Ok(());
        }
        workload::patch_status::<StatefulSet>(&self.client, key, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names_of_the_set_only() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web-db", "web-db-3"), Some(3));
    }

    #[test]
    fn a_revision_holds_the_patch_that_brings_its_template_back() {
        let spec: StatefulSetSpec = serde_json::from_value(json!({
            "selector": {"matchLabels": {"app": "db"}},
            "serviceName": "db",
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        }))
        .unwrap();
        let data = revision_data(&spec);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(data["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:1.36");
    }
}
