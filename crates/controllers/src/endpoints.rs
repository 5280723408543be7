//! The endpoints controllers: for every Service with a selector, the pods it selects
//! become its Endpoints (ready pods in `addresses`, the rest in `notReadyAddresses`) and
//! its EndpointSlice (`discovery.k8s.io/v1`, with ready/serving/terminating conditions),
//! with the Service's ports resolved against each pod's (a named `targetPort` finds the
//! container port of that name). Both are owned by the Service, so the garbage collector
//! removes them with it. What the service proxy and DNS will read.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::{json, Value};

use crate::workload;
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

pub(crate) const SERVICE_NAME: &str = "kubernetes.io/service-name";

struct Controller {
    client: kube::Client,
    services: Arc<Cache<Service>>,
    pods: Arc<Cache<Pod>>,
    endpoints: Arc<Cache<Endpoints>>,
    slices: Arc<Cache<EndpointSlice>>,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let services = informers.typed::<Service>();
    let pods = informers.typed::<Pod>();
    let endpoints = informers.typed::<Endpoints>();
    let slices = informers.typed::<EndpointSlice>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    services.queue_into(&informers, &queue, |service: &Service| {
        Some(workload::key_of(&service.metadata))
    });
    // A pod's change may change any Service of its namespace.
    {
        let (services_cache, queue) = (services.clone(), queue.clone());
        pods.follow(&informers, move |change| {
            let pod = match change {
                berth_reconcile::Change::Applied(pod) | berth_reconcile::Change::Deleted(pod) => {
                    pod
                }
                berth_reconcile::Change::Resynced => {
                    for service in services_cache.store().state() {
                        queue.add(workload::key_of(&service.metadata));
                    }
                    return;
                }
            };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            // Every Service of the namespace that selects pods: one whose selector the pod
            // left must drop it too.
            for service in services_cache.store().state_filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace.as_str()) && selector(s).is_some()
            }) {
                queue.add(workload::key_of(&service.metadata));
            }
        });
    }
    tokio::select! {
        _ = async { tokio::join!(services.ready(), pods.ready(), endpoints.ready(), slices.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for service in services.store().state() {
        queue.add(workload::key_of(&service.metadata));
    }
    let controller = Arc::new(Controller {
        client: informers.client().clone(),
        services,
        pods,
        endpoints,
        slices,
    });
    berth_reconcile::run("endpoints", queue, 2, MAX_BACKOFF, shutdown, move |key: Key| {
        let controller = controller.clone();
        async move { controller.reconcile(key).await }
    })
    .await;
}

/// Pods that resolve the Service's ports alike: one Endpoints subset.
#[derive(Default)]
struct Subset {
    ready: Vec<Value>,
    not_ready: Vec<Value>,
    ports: Vec<Value>,
}

fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty())
}

/// A Service port's target on a pod: a number, or the pod's container port of that name.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(number)) => Some(*number),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

impl Controller {
    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(service) = self.services.store().get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            return Ok(Action::Done);
        };
        let Some(selector) = selector(&service) else { return Ok(Action::Done) };
        if service.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
        let mut pods: Vec<Arc<Pod>> = self.pods.store().state_filter(|pod| {
            pod.metadata.namespace.as_deref() == Some(key.0.as_str())
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_ref())
                    .is_some_and(|ip| !ip.is_empty())
                && !matches!(workload::phase(pod), "Succeeded" | "Failed")
                && selector
                    .iter()
                    .all(|(k, v)| pod.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        });
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        // Endpoints: pods grouped by their resolved ports.
        let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
        let mut slice_endpoints = Vec::new();
        let mut slice_ports: Option<Vec<Value>> = None;
        for pod in &pods {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            let resolved: Vec<Value> = ports
                .iter()
                .filter_map(|p| {
                    target_port(p, pod).map(|number| {
                        json!({"name": p.name, "port": number, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())})
                    })
                })
                .collect();
            let address = json!({"ip": ip, "nodeName": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                "targetRef": {"kind": "Pod", "namespace": key.0, "name": pod.metadata.name, "uid": pod.metadata.uid}});
            let ready = workload::ready(pod) && pod.metadata.deletion_timestamp.is_none();
            let entry = subsets
                .entry(Value::Array(resolved.clone()).to_string())
                .or_insert_with(|| Subset { ports: resolved.clone(), ..Subset::default() });
            if ready {
                entry.ready.push(address);
            } else {
                entry.not_ready.push(address);
            }
            slice_ports.get_or_insert(resolved);
            slice_endpoints.push(json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": workload::ready(pod), "terminating": pod.metadata.deletion_timestamp.is_some()},
                "nodeName": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                "targetRef": {"kind": "Pod", "namespace": key.0, "name": pod.metadata.name, "uid": pod.metadata.uid},
            }));
        }
        let subsets: Vec<Value> = subsets
            .into_values()
            .map(|subset| {
                let mut value = json!({"ports": subset.ports});
                if !subset.ready.is_empty() {
                    value["addresses"] = json!(subset.ready);
                }
                if !subset.not_ready.is_empty() {
                    value["notReadyAddresses"] = json!(subset.not_ready);
                }
                value
            })
            .collect();
        let owner = workload::controller_reference("v1", "Service", &service.metadata);
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": key.1, "namespace": key.0, "labels": service.metadata.labels, "ownerReferences": [owner]},
            "subsets": subsets,
        });
        let current = self.endpoints.store().get(&ObjectRef::new(&key.1).within(&key.0));
        let current_subsets = current.as_ref().map(|e| {
            canonical::<Vec<k8s_openapi::api::core::v1::EndpointSubset>>(
                &serde_json::to_value(&e.subsets).unwrap_or_default(),
            )
        });
        let wanted_subsets =
            canonical::<Vec<k8s_openapi::api::core::v1::EndpointSubset>>(&json!(subsets));
        if current_subsets.as_ref() != Some(&wanted_subsets) {
            let api: Api<Endpoints> = Api::namespaced(self.client.clone(), &key.0);
            write(&api, &key.1, current.is_some(), without_nulls(endpoints), &["subsets"])
                .await
                .map_err(workload::api_error(format!("write endpoints {}/{}", key.0, key.1)))?;
        }
        // The EndpointSlice, named after the Service.
        let slice_name = format!("{}-berth", key.1);
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": key.0,
                "labels": {SERVICE_NAME: key.1, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [owner]},
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": slice_ports.unwrap_or_else(|| ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())})).collect()),
        });
        let current = self.slices.store().get(&ObjectRef::new(&slice_name).within(&key.0));
        let same = current.as_ref().is_some_and(|c| {
            canonical::<Vec<k8s_openapi::api::discovery::v1::Endpoint>>(
                &serde_json::to_value(&c.endpoints).unwrap_or_default(),
            ) == canonical::<Vec<k8s_openapi::api::discovery::v1::Endpoint>>(&slice["endpoints"])
                && canonical::<Vec<k8s_openapi::api::discovery::v1::EndpointPort>>(
                    &serde_json::to_value(&c.ports).unwrap_or_default(),
                ) == canonical::<Vec<k8s_openapi::api::discovery::v1::EndpointPort>>(
                    &slice["ports"],
                )
        });
        if !same {
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.0);
            write(
                &api,
                &slice_name,
                current.is_some(),
                without_nulls(slice),
                &["endpoints", "ports"],
            )
            .await
            .map_err(workload::api_error(format!(
                "write the endpoint slice of {}/{}",
                key.0, key.1
            )))?;
        }
        Ok(Action::Done)
    }
}

/// A value as its typed form writes it (absent fields left out, empty lists as none), so
/// what the controller wants compares equal to what the cache holds when they agree.
fn canonical<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Value {
    let typed: Option<T> =
        if value.is_null() { None } else { serde_json::from_value(value.clone()).ok() };
    let value = serde_json::to_value(typed).unwrap_or_default();
    match value {
        Value::Array(list) if list.is_empty() => Value::Null,
        other => other,
    }
}

/// Creates the object, or replaces `fields` of the existing one (a merge patch replaces
/// lists whole, as these lists are atomic in Kubernetes).
async fn write<K>(
    api: &Api<K>,
    name: &str,
    exists: bool,
    object: Value,
    fields: &[&str],
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    if !exists {
        let typed: K = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &typed).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err),
        }
    }
    let mut patch = json!({});
    for field in fields {
        patch[*field] = object.get(*field).cloned().unwrap_or(Value::Null);
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
}

/// The value without null fields (absent is what Kubernetes writes for "none").
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.into_iter().map(without_nulls).collect()),
        other => other,
    }
}
