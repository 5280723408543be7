//! Health-check node ports, as kube-proxy serves them: a LoadBalancer Service with
//! `externalTrafficPolicy: Local` has a `healthCheckNodePort`, and every node answers
//! HTTP there with 200 when it has ready endpoints of the Service (so an external
//! balancer sends traffic only to such nodes) and 503 when it has none; the body says
//! how many (`{"service":{"namespace":...,"name":...},"localEndpoints":N,
//! "serviceProxyHealthy":true}`).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Who a health-check port answers for: (namespace, name, local ready endpoints).
type Answer = Arc<Mutex<(String, String, usize)>>;

/// The health-check ports a node serves, by port.
#[derive(Default)]
pub struct Servers {
    serving: BTreeMap<u16, (Answer, tokio::task::JoinHandle<()>)>,
}

/// The health-check ports wanted: port → (namespace, name, local ready endpoints).
pub fn wanted<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    node: &str,
) -> BTreeMap<u16, (String, String, usize)> {
    let mut ports = BTreeMap::new();
    for service in services {
        let service = service.borrow();
        let Some(spec) = service.spec.as_ref() else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer")
            || spec.external_traffic_policy.as_deref() != Some("Local")
        {
            continue;
        }
        let Some(port) = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let local = slices
            .iter()
            .map(Borrow::borrow)
            .filter(|s: &&EndpointSlice| {
                s.metadata.namespace.as_deref() == Some(namespace.as_str())
            })
            .filter(|s| {
                s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(&name)
            })
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.node_name.as_deref() == Some(node))
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .count();
        ports.insert(port, (namespace, name, local));
    }
    ports
}

/// The response to a health check.
fn respond((namespace, name, local): &(String, String, usize)) -> String {
    let body = serde_json::json!({"service": {"namespace": namespace, "name": name},
        "localEndpoints": local, "serviceProxyHealthy": true})
    .to_string();
    let status = if *local > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl Servers {
    /// Serves exactly the wanted ports, with their current counts.
    pub async fn update(&mut self, wanted: BTreeMap<u16, (String, String, usize)>) {
        self.serving.retain(|port, (_, task)| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, answer) in wanted {
            if let Some((current, _)) = self.serving.get(&port) {
                if let Ok(mut current) = current.lock() {
                    *current = answer;
                }
                continue;
            }
            let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(
                        "the health-check node port {port} of {}/{}: {err}",
                        answer.0,
                        answer.1
                    );
                    continue;
                }
            };
            let shared: Answer = Arc::new(Mutex::new(answer));
            let serving = shared.clone();
            let task = tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let now = serving.lock().map(|a| a.clone()).unwrap_or_default();
                    tokio::spawn(async move {
                        let mut request = [0u8; 2048];
                        let read = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            stream.read(&mut request),
                        )
                        .await;
                        if matches!(read, Ok(Ok(n)) if n > 0) {
                            let _ = stream.write_all(respond(&now).as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                    });
                }
            });
            self.serving.insert(port, (shared, task));
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, task) in self.serving.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn local_ready_endpoints_are_counted_per_service() {
        let service: Service = serde_json::from_value(json!({"metadata": {"name": "lb", "namespace": "web"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000}}))
        .unwrap_or_default();
        let cluster: Service = serde_json::from_value(json!({"metadata": {"name": "other", "namespace": "web"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "healthCheckNodePort": 31001}}))
        .unwrap_or_default();
        let slice: EndpointSlice = serde_json::from_value(json!({"addressType": "IPv4",
            "metadata": {"name": "lb-1", "namespace": "web", "labels": {"kubernetes.io/service-name": "lb"}},
            "endpoints": [
                {"addresses": ["10.42.0.2"], "nodeName": "here", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.3"], "nodeName": "here", "conditions": {"ready": false}},
                {"addresses": ["10.42.1.2"], "nodeName": "there", "conditions": {"ready": true}}]}))
        .unwrap_or_default();
        let ports = wanted(&[service, cluster], &[slice], "here");
        assert_eq!(ports.len(), 1, "only Local load balancers");
        assert_eq!(ports.get(&31000), Some(&("web".to_owned(), "lb".to_owned(), 1)));
        let ok = respond(&("web".into(), "lb".into(), 1));
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with(r#""localEndpoints":1,"service":{"name":"lb","namespace":"web"},"serviceProxyHealthy":true}"#), "{ok}");
        assert!(respond(&("web".into(), "lb".into(), 0)).starts_with("HTTP/1.1 503"));
    }
}
