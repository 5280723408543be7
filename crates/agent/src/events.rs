//! Events about pods, as the kubelet records them (`kubectl describe pod` shows them):
//! Pulling, Pulled, Created, Started, Killing, BackOff, Unhealthy, Failed, FailedMount.
//! Repeated failures are recorded once per distinct message, so a crash loop or a missing
//! Secret does not flood the API; failing probes are counted on one event per message
//! (`count`, `lastTimestamp`), as the kubelet's event correlator does.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

pub struct Recorder {
    client: kube::Client,
    node: String,
    seen: Mutex<HashSet<Key>>,
    /// Counted events: their name and count.
    counted: Mutex<HashMap<Key, (String, i32)>>,
}

/// An event's identity: the pod's uid, the reason and the message.
type Key = (String, String, String);

fn key_of(pod: &Pod, reason: &str, message: &str) -> Key {
    (pod.metadata.uid.clone().unwrap_or_default(), reason.to_owned(), message.to_owned())
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_owned(),
            seen: Mutex::new(HashSet::new()),
            counted: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `pod` (and one of its containers).
    pub async fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        self.create(pod, container, warning, reason, message).await;
    }

    /// Creates the event; its name when it was made.
    async fn create(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Option<String> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let now = berth_api::meta::now();
        let mut involved = json!({"kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version});
        if let Some(container) = container {
            involved["fieldPath"] = json!(format!("spec.containers{{{container}}}"));
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{nanos:x}"), "namespace": namespace},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet", "reportingInstance": self.node,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let Ok(event) = serde_json::from_value::<Event>(event) else { return None };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(made) => made.metadata.name,
            Err(err) => {
                tracing::debug!("event {reason} for {namespace}/{name}: {err}");
                None
            }
        }
    }

    /// Records it, or counts it on the event recorded for the same (pod, reason,
    /// message) before.
    pub async fn record_counted(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let key = key_of(pod, reason, message);
        let known = self.counted.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        match known {
            Some((name, count)) => {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
                let patch = json!({"count": count + 1, "lastTimestamp": berth_api::meta::now()});
                let params = kube::api::PatchParams::default();
                match api.patch(&name, &params, &kube::api::Patch::Merge(&patch)).await {
                    Ok(_) => {
                        self.counted
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, (name, count + 1));
                    }
                    Err(err) => {
                        // Gone (events expire): the next one is recorded anew.
                        tracing::debug!("event {name}: {err}");
                        self.counted.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    }
                }
            }
            None => {
                if let Some(name) = self.create(pod, container, warning, reason, message).await {
                    self.counted.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (name, 1));
                }
            }
        }
    }

    /// Records it unless the same (pod, reason, message) was recorded before.
    pub async fn record_once(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let key = key_of(pod, reason, message);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.insert(key) {
                return;
            }
        }
        self.record(pod, container, warning, reason, message).await;
    }

    pub fn forget_pod(&self, uid: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|(u, _, _)| u != uid);
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        counted.retain(|(u, _, _), _| u != uid);
    }
}
