//! What the workload controllers share: the pods an object controls, pods made from a
//! template, readiness and availability, and events for `kubectl describe`.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_reconcile::Cache;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;

use crate::Error;

/// An object's queue key: (namespace, name).
pub(crate) fn key_of(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// The uid of the object that controls `meta` (its controller owner reference).
pub(crate) fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// The controller owner reference an object gives what it makes.
pub(crate) fn controller_reference(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Pods in `namespace` controlled by `uid`.
pub(crate) fn owned_pods(pods: &Cache<Pod>, namespace: &str, uid: &str) -> Vec<Arc<Pod>> {
    pods.store().state_filter(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace)
            && controller_uid(&pod.metadata) == Some(uid)
    })
}

/// A number an object carries in an annotation (None when absent or not a number).
pub(crate) fn annotation<T: std::str::FromStr>(meta: &ObjectMeta, key: &str) -> Option<T> {
    meta.annotations.as_ref()?.get(key)?.parse().ok()
}

pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// Neither finished nor being deleted.
pub(crate) fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

pub(crate) fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds`.
pub(crate) fn available(pod: &Pod, min_ready_seconds: i32) -> bool {
    if !ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .and_then(|t| berth_stdx::time::parse_rfc3339(&t.0.to_string()));
    since.is_some_and(|since| berth_stdx::time::unix_now() - since >= i64::from(min_ready_seconds))
}

/// A pod made from `template` for its controller: `generateName` from the controller's
/// name, the template's labels and annotations, a controller owner reference.
pub(crate) fn pod_from_template(
    template: &PodTemplateSpec,
    prefix: &str,
    owner: OwnerReference,
    extra_labels: &BTreeMap<String, String>,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.extend(extra_labels.clone());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates `count` copies of `pod` for the controller `involved` (api version, kind,
/// metadata), in batches that double (1, 2, 4, ... as Kubernetes' slow start does, at most
/// 16 requests at a time); the first error stops the rest. What is made is recorded in
/// `expectations` and as `SuccessfulCreate` events, a failure as a `FailedCreate` event
/// with the API's message, and returned.
pub(crate) async fn create_pods(
    client: &kube::Client,
    involved: (&str, &str, &ObjectMeta),
    expectations: &Expectations,
    pod: &Pod,
    count: usize,
) -> Option<kube::Error> {
    use futures::StreamExt;
    let (_, _, meta) = involved;
    let uid = meta.uid.clone().unwrap_or_default();
    let api: Api<Pod> =
        Api::namespaced(client.clone(), meta.namespace.as_deref().unwrap_or("default"));
    let mut batch = 1;
    let mut left = count;
    while left > 0 {
        let size = batch.min(left);
        let results: Vec<Result<Pod, kube::Error>> = futures::stream::iter(0..size)
            .map(|_| async { api.create(&PostParams::default(), pod).await })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut failed = None;
        let mut made = Vec::new();
        for result in results {
            match result {
                Ok(pod) => made.push(pod.metadata.name.unwrap_or_default()),
                Err(err) => failed = Some(err),
            }
        }
        expectations.made(&uid, &made);
        for name in &made {
            event(client, involved, "Normal", "SuccessfulCreate", &format!("Created pod: {name}"))
                .await;
        }
        if let Some(error) = failed {
            let message = match &error {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            event(
                client,
                involved,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {message}"),
            )
            .await;
            return Some(error);
        }
        left -= size;
        batch *= 2;
    }
    None
}

/// What a controller has asked for and not yet seen in its cache: pods it made and pods
/// it deleted, by its object's uid, so a lagging cache never makes it act twice. Entries
/// older than a minute are dropped (the cache has surely caught up, or the request was
/// lost).
#[derive(Default)]
pub(crate) struct Expectations {
    pending: std::sync::Mutex<std::collections::HashMap<String, Pending>>,
}

#[derive(Default)]
struct Pending {
    made: std::collections::HashSet<String>,
    deleted: std::collections::HashSet<String>,
    since: Option<std::time::Instant>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        match self.pending.lock() {
            Ok(pending) => pending,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn made(&self, uid: &str, names: &[String]) {
        let mut pending = self.lock();
        let entry = pending.entry(uid.to_owned()).or_default();
        entry.made.extend(names.iter().cloned());
        entry.since = Some(std::time::Instant::now());
    }

    pub(crate) fn deleted(&self, uid: &str, names: &[String]) {
        let mut pending = self.lock();
        let entry = pending.entry(uid.to_owned()).or_default();
        entry.deleted.extend(names.iter().cloned());
        entry.since = Some(std::time::Instant::now());
    }

    /// The active pods as the controller must count them: `cached` (active ones), plus
    /// those made but not yet seen, minus those deleted but still seen.
    pub(crate) fn adjust(
        &self,
        uid: &str,
        cached: &[Arc<Pod>],
        all: &[Arc<Pod>],
    ) -> (Vec<Arc<Pod>>, usize) {
        let mut pending = self.lock();
        let Some(entry) = pending.get_mut(uid) else { return (cached.to_vec(), 0) };
        if entry.since.is_some_and(|since| since.elapsed() > std::time::Duration::from_secs(60)) {
            pending.remove(uid);
            return (cached.to_vec(), 0);
        }
        let seen: std::collections::HashSet<&str> =
            all.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        entry.made.retain(|name| !seen.contains(name.as_str()));
        let gone_or_going: std::collections::HashSet<&str> = all
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        entry.deleted.retain(|name| gone_or_going.contains(name.as_str()));
        let kept: Vec<Arc<Pod>> = cached
            .iter()
            .filter(|p| !p.metadata.name.as_deref().is_some_and(|n| entry.deleted.contains(n)))
            .cloned()
            .collect();
        let unseen = entry.made.len();
        if entry.made.is_empty() && entry.deleted.is_empty() {
            pending.remove(uid);
        }
        (kept, unseen)
    }

    pub(crate) fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

/// Records an event about `object` (kind, namespace, name, uid) for `kubectl describe`.
/// Losing an event never stops a controller: failures are logged.
pub(crate) async fn event(
    client: &kube::Client,
    involved: (&str, &str, &ObjectMeta),
    kind: &str,
    reason: &str,
    message: &str,
) {
    let (api_version, object_kind, meta) = involved;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let now = berth_api::meta::now();
    let value = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": namespace},
        "involvedObject": {"apiVersion": api_version, "kind": object_kind, "name": name,
            "namespace": namespace, "uid": meta.uid},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "berth-controller-manager"}, "reportingComponent": "berth-controller-manager",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let Ok(event) = serde_json::from_value::<k8s_openapi::api::core::v1::Event>(value) else {
        return;
    };
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(err) = api.create(&PostParams::default(), &event).await {
        tracing::debug!("event {reason} for {object_kind} {namespace}/{name}: {err}");
    }
}

/// Whether a workload's label selector selects these labels.
pub(crate) fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Ok(value) = serde_json::to_value(selector) else { return false };
    let Ok(selector) = berth_api::selector::LabelSelector::from_object(&value) else {
        return false;
    };
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.into_iter().flatten().map(|(k, v)| (k.clone(), json!(v))).collect();
    selector.matches(Some(&labels))
}

/// Merges `status` into the object's status; one gone meanwhile is no error.
pub(crate) async fn patch_status<K>(
    client: &kube::Client,
    (namespace, name): &(String, String),
    status: serde_json::Value,
) -> Result<(), Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    use kube::api::{Patch, PatchParams};
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => {
            let what = K::kind(&()).to_ascii_lowercase();
            Err(api_error(format!("update the status of {what} {namespace}/{name}"))(err))
        }
    }
}

/// Delete options that remove exactly this object (by uid), not a newer one of its name.
pub(crate) fn exactly(
    meta: &ObjectMeta,
    options: kube::api::DeleteParams,
) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: meta.uid.clone(),
            resource_version: None,
        }),
        ..options
    }
}

pub(crate) fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    Error::api(action)
}
