//! Events about pods, as the kubelet records them (`kubectl describe pod` shows them):
//! Pulling, Pulled, Created, Started, Killing, BackOff, Unhealthy, Failed, FailedMount.
//! Repeated failures are recorded once per distinct message, so a crash loop or a missing
//! Secret does not flood the API.

use std::collections::HashSet;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

pub struct Recorder {
    client: kube::Client,
    node: String,
    seen: Mutex<HashSet<(String, String, String)>>,
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder { client, node: node.to_owned(), seen: Mutex::new(HashSet::new()) }
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
        let Ok(event) = serde_json::from_value::<Event>(event) else { return };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(err) = api.create(&PostParams::default(), &event).await {
            tracing::debug!("event {reason} for {namespace}/{name}: {err}");
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
        let key =
            (pod.metadata.uid.clone().unwrap_or_default(), reason.to_owned(), message.to_owned());
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
    }
}
