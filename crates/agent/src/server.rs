//! The kubelet API, as far as berth's agent serves it: `GET /metrics/resource` (usage
//! for the metrics API), `GET /containerLogs/{ns}/{pod}/
//! {container}` (with `follow`, `previous`, `timestamps`, `tailLines`, `sinceSeconds`,
//! `sinceTime`, `limitBytes`) and `/healthz`, over HTTPS with a serving certificate signed
//! by the cluster's CA. Only the API server may call it: a client certificate from the
//! same CA naming `kube-apiserver-kubelet-client` (or a member of `system:masters`).
//! Logs are read from the files the runtime writes (the CRI log format), as the kubelet
//! reads them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::Cache;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cri::Runtime;
use crate::pods::{LABEL_CONTAINER_NAME, LABEL_POD_UID};

type Body = BoxBody<Bytes, Infallible>;

/// The agent's TLS material (PEM).
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

fn tls_config(tls: &Tls) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| format!("bad serving key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| format!("bad CA: {e}"))?).map_err(|e| format!("bad CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verification: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the handlers read.
#[derive(Clone)]
pub struct Shared {
    pub pods: Arc<Cache<Pod>>,
    pub runtime: Runtime,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The node's name and the agent's directory (its filesystem is the node's), for
    /// `/stats/summary`.
    pub node_name: String,
    pub root: PathBuf,
}

/// Serves the kubelet API on `listener` until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, tls: Tls, shared: Shared) {
    let config = match tls_config(&tls) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("kubelet API: {err}");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            let allowed = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| berth_api::identity::certificate_subject(cert.as_ref()))
                .is_some_and(|(name, groups)| {
                    name == berth_api::identity::KUBELET_CLIENT
                        || groups.iter().any(|g| g == "system:masters")
                });
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, request, allowed).await) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())).boxed());
    *response.status_mut() = code;
    response
}

fn decode(segment: &str) -> String {
    berth_stdx::url::decode(segment, false)
}

async fn handle(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
    allowed: bool,
) -> Response<Body> {
    if !allowed {
        return text(
            StatusCode::FORBIDDEN,
            "Forbidden: only the API server may use the node agent's API",
        );
    }
    let path = request.uri().path().to_owned();
    let query: HashMap<String, String> =
        berth_stdx::url::query_pairs(request.uri().query().unwrap_or(""), false)
            .into_iter()
            .collect();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if path == "/metrics/resource" {
        return resource_metrics(shared).await;
    }
    if path == "/stats/summary" {
        return summary(shared).await;
    }
    let parts: Vec<String> = path.trim_start_matches('/').split('/').map(decode).collect();
    match parts.as_slice() {
        [kind, namespace, pod, container]
            if kind == "containerLogs" && request.method() == hyper::Method::GET =>
        {
            logs(shared, namespace, pod, container, &query).await
        }
        [kind, namespace, pod, container] if kind == "exec" || kind == "attach" => {
            let (kind, namespace, pod, container) =
                (kind.clone(), namespace.clone(), pod.clone(), container.clone());
            stream(shared, request, &kind, &namespace, &pod, &container).await
        }
        [kind, namespace, pod] if kind == "portForward" => {
            let (namespace, pod) = (namespace.clone(), pod.clone());
            port_forward(shared, request, &namespace, &pod).await
        }
        _ => text(StatusCode::NOT_FOUND, format!("{path} is not served by berth's node agent")),
    }
}

/// `GET /metrics/resource`: what metrics-server (here the API server's collector) reads
/// from a kubelet, in Prometheus' text format: the node's cumulative CPU seconds and
/// working set, and each running container's (from the runtime's stats over CRI), each
/// sample with its time in milliseconds.
async fn resource_metrics(shared: &Shared) -> Response<Body> {
    let stats = match container_stats(shared).await {
        Ok(stats) => stats,
        Err(response) => return response,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut out = String::new();
    if let Some((cpu_seconds, working_set)) = crate::host_usage() {
        out.push_str("# TYPE node_cpu_usage_seconds_total counter\n");
        out.push_str(&format!("node_cpu_usage_seconds_total {cpu_seconds:.9} {now_ms}\n"));
        out.push_str("# TYPE node_memory_working_set_bytes gauge\n");
        out.push_str(&format!("node_memory_working_set_bytes {working_set} {now_ms}\n"));
    }
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut cpu = String::from("# TYPE container_cpu_usage_seconds_total counter\n");
    let mut memory = String::from("# TYPE container_memory_working_set_bytes gauge\n");
    for stat in stats {
        let Some(attributes) = stat.attributes else { continue };
        let labels = &attributes.labels;
        let (Some(pod), Some(namespace), Some(container)) = (
            labels.get(crate::pods::LABEL_POD_NAME),
            labels.get(crate::pods::LABEL_POD_NAMESPACE),
            labels.get(LABEL_CONTAINER_NAME),
        ) else {
            continue;
        };
        let series = format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            escape(container),
            escape(namespace),
            escape(pod)
        );
        if let Some(usage) = stat.cpu.as_ref() {
            if let Some(total) = usage.usage_core_nano_seconds.as_ref() {
                let at = if usage.timestamp > 0 {
                    (usage.timestamp / 1_000_000) as u128
                } else {
                    now_ms
                };
                cpu.push_str(&format!(
                    "container_cpu_usage_seconds_total{series} {:.9} {at}\n",
                    total.value as f64 / 1e9
                ));
            }
        }
        if let Some(usage) = stat.memory.as_ref() {
            if let Some(working_set) = usage.working_set_bytes.as_ref() {
                let at = if usage.timestamp > 0 {
                    (usage.timestamp / 1_000_000) as u128
                } else {
                    now_ms
                };
                memory.push_str(&format!(
                    "container_memory_working_set_bytes{series} {} {at}\n",
                    working_set.value
                ));
            }
        }
    }
    out.push_str(&cpu);
    out.push_str(&memory);
    let mut response = text(StatusCode::OK, out);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Every container's stats from the runtime, or the 500 that says it gave none.
async fn container_stats(shared: &Shared) -> Result<Vec<cri::ContainerStats>, Response<Body>> {
    let mut runtime = shared.runtime.runtime.clone();
    match runtime.list_container_stats(cri::ListContainerStatsRequest::default()).await {
        Ok(answer) => Ok(answer.into_inner().stats),
        Err(status) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the container runtime gave no stats: {}", status.message()),
        )),
    }
}

/// `GET /stats/summary`: the kubelet's Summary API (stats/v1alpha1) from what this node
/// and the runtime's container stats say: the node's CPU, memory and filesystem, and
/// each running pod's containers' CPU, memory and writable layer, summed per pod.
async fn summary(shared: &Shared) -> Response<Body> {
    let stats = match container_stats(shared).await {
        Ok(stats) => stats,
        Err(response) => return response,
    };
    let now = berth_api::meta::now();
    let mut node = serde_json::json!({"nodeName": shared.node_name});
    if let Some((cpu_seconds, working_set)) = crate::host_usage() {
        node["cpu"] =
            serde_json::json!({"time": now, "usageCoreNanoSeconds": (cpu_seconds * 1e9) as u64});
        let available = crate::eviction::memory().map(|(a, _)| a).unwrap_or(0);
        node["memory"] = serde_json::json!({"time": now, "availableBytes": available, "usageBytes": working_set, "workingSetBytes": working_set});
    }
    if let Some((available, capacity)) = crate::eviction::filesystem(&shared.root) {
        node["fs"] = serde_json::json!({"time": now, "availableBytes": available, "capacityBytes": capacity, "usedBytes": capacity.saturating_sub(available)});
    }
    // Pods by uid: their reference and containers.
    let mut pods: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for stat in stats {
        let Some(attributes) = stat.attributes else { continue };
        let labels = &attributes.labels;
        let (Some(uid), Some(name), Some(namespace), Some(container)) = (
            labels.get(LABEL_POD_UID),
            labels.get(crate::pods::LABEL_POD_NAME),
            labels.get(crate::pods::LABEL_POD_NAMESPACE),
            labels.get(LABEL_CONTAINER_NAME),
        ) else {
            continue;
        };
        let cpu = stat
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        let nano_cores =
            stat.cpu.as_ref().and_then(|c| c.usage_nano_cores.as_ref()).map(|v| v.value);
        let memory = stat.memory.as_ref();
        let working_set =
            memory.and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
        let usage =
            memory.and_then(|m| m.usage_bytes.as_ref()).map(|v| v.value).unwrap_or(working_set);
        let rss = memory.and_then(|m| m.rss_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
        let rootfs = stat
            .writable_layer
            .as_ref()
            .and_then(|w| w.used_bytes.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        let mut cpu_json = serde_json::json!({"time": now, "usageCoreNanoSeconds": cpu});
        if let Some(n) = nano_cores {
            cpu_json["usageNanoCores"] = serde_json::json!(n);
        }
        let entry = pods.entry(uid.clone()).or_insert_with(|| {
            serde_json::json!({
                "podRef": {"name": name, "namespace": namespace, "uid": uid},
                "containers": [],
                "cpu": {"time": now, "usageCoreNanoSeconds": 0},
                "memory": {"time": now, "usageBytes": 0, "workingSetBytes": 0, "rssBytes": 0},
                "ephemeral-storage": {"time": now, "usedBytes": 0},
            })
        });
        let add = |field: &mut serde_json::Value, by: u64| {
            *field = serde_json::json!(field.as_u64().unwrap_or(0) + by);
        };
        add(&mut entry["cpu"]["usageCoreNanoSeconds"], cpu);
        add(&mut entry["memory"]["usageBytes"], usage);
        add(&mut entry["memory"]["workingSetBytes"], working_set);
        add(&mut entry["memory"]["rssBytes"], rss);
        add(&mut entry["ephemeral-storage"]["usedBytes"], rootfs);
        if let Some(list) = entry["containers"].as_array_mut() {
            list.push(serde_json::json!({
                "name": container,
                "cpu": cpu_json,
                "memory": {"time": now, "usageBytes": usage, "workingSetBytes": working_set, "rssBytes": rss},
                "rootfs": {"time": now, "usedBytes": rootfs},
            }));
        }
    }
    let body = serde_json::json!({"node": node, "pods": pods.into_values().collect::<Vec<_>>()});
    let mut response = text(StatusCode::OK, body.to_string());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The uid of a pod this agent runs, or the 404 that says it is not here.
fn pod_uid(shared: &Shared, namespace: &str, pod_name: &str) -> Result<String, NotHere> {
    match shared.pods.store().get(&ObjectRef::new(pod_name).within(namespace)) {
        Some(pod) => Ok(pod.metadata.uid.clone().unwrap_or_default()),
        None => Err(not_here(namespace, pod_name)),
    }
}

/// A pod this agent does not run.
struct NotHere(String);

fn not_here(namespace: &str, pod_name: &str) -> NotHere {
    NotHere(format!("pod {namespace}/{pod_name} is not on this node"))
}

impl From<NotHere> for Response<Body> {
    fn from(NotHere(message): NotHere) -> Response<Body> {
        text(StatusCode::NOT_FOUND, message)
    }
}

/// One line of a CRI log file.
struct Line {
    time: String,
    stream: String,
    full: bool,
    content: String,
}

fn parse(line: &str) -> Option<Line> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.to_owned();
    let stream = parts.next()?.to_owned();
    let tag = parts.next()?;
    let content = parts.next().unwrap_or("").to_owned();
    Some(Line { time, stream, full: !tag.starts_with('P'), content })
}

/// Whole lines from CRI log text (partial lines joined), as (time, text with newline).
fn assemble(text: &str, pending: &mut HashMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let Some(line) = parse(raw) else { continue };
        let buffer = pending.entry(line.stream.clone()).or_default();
        buffer.push_str(&line.content);
        if line.full {
            let mut whole = std::mem::take(buffer);
            whole.push('\n');
            out.push((line.time, whole));
        }
    }
    out
}

async fn logs(
    shared: &Shared,
    namespace: &str,
    pod_name: &str,
    container: &str,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let uid = match pod_uid(shared, namespace, pod_name) {
        Ok(uid) => uid,
        Err(not_here) => return not_here.into(),
    };
    let flag = |key: &str| query.get(key).is_some_and(|v| v == "true" || v == "1");
    let mut rt = shared.runtime.runtime.clone();
    let filter = cri::ContainerFilter {
        label_selector: [
            (LABEL_POD_UID.to_owned(), uid.clone()),
            (LABEL_CONTAINER_NAME.to_owned(), container.to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    let listed = match rt.list_containers(cri::ListContainersRequest { filter: Some(filter) }).await
    {
        Ok(listed) => listed.into_inner().containers,
        Err(status) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the container runtime: {}", status.message()),
            )
        }
    };
    let mut attempts: Vec<&cri::Container> = listed.iter().collect();
    attempts.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map_or(0, |m| m.attempt)));
    let chosen = if flag("previous") {
        match attempts.get(1) {
            Some(c) => *c,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
                ),
                )
            }
        }
    } else {
        match attempts.first() {
            Some(c) => *c,
            None => return text(StatusCode::BAD_REQUEST, format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start: ContainerCreating")),
        }
    };
    let id = chosen.id.clone();
    let status = match rt
        .container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: false })
        .await
    {
        Ok(status) => status.into_inner().status.unwrap_or_default(),
        Err(status) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the container runtime: {}", status.message()),
            )
        }
    };
    let path = PathBuf::from(&status.log_path);
    let timestamps = flag("timestamps");
    let tail: Option<usize> = query.get("tailLines").and_then(|t| t.parse().ok());
    let limit: Option<usize> = query.get("limitBytes").and_then(|t| t.parse().ok());
    let since: Option<i64> = query
        .get("sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| berth_stdx::time::unix_now() - s)
        .or_else(|| query.get("sinceTime").and_then(|t| berth_stdx::time::parse_rfc3339(t)));
    let follow = flag("follow") && !flag("previous");
    let format = move |(time, line): &(String, String)| -> Option<String> {
        if let Some(since) = since {
            if berth_stdx::time::parse_rfc3339(time).is_some_and(|t| t < since) {
                return None;
            }
        }
        Some(if timestamps { format!("{time} {line}") } else { line.clone() })
    };
    let initial = tokio::fs::read(&path).await.unwrap_or_default();
    let mut offset = initial.len() as u64;
    let mut pending = HashMap::new();
    let mut lines: Vec<String> = assemble(&String::from_utf8_lossy(&initial), &mut pending)
        .iter()
        .filter_map(&format)
        .collect();
    if let Some(tail) = tail {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut first: String = lines.concat();
    if let Some(limit) = limit {
        first.truncate(limit);
    }
    if !follow {
        let mut response = text(StatusCode::OK, first);
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        return response;
    }
    let (mut sender, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
    let (mut runtime, shutdown) = (shared.runtime.runtime.clone(), shared.shutdown.clone());
    tokio::spawn(async move {
        let mut sent = first.len();
        if sender.send(Frame::data(Bytes::from(first))).await.is_err() {
            return;
        }
        loop {
            let data = tokio::fs::read(&path).await.unwrap_or_default();
            if (data.len() as u64) < offset {
                offset = 0; // rotated or truncated: start over
            }
            let fresh = &data[usize::try_from(offset).unwrap_or(0).min(data.len())..];
            // Only whole records; a record being written waits for the next look.
            let upto = fresh.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if upto > 0 {
                offset += upto as u64;
                let chunk: String =
                    assemble(&String::from_utf8_lossy(&fresh[..upto]), &mut pending)
                        .iter()
                        .filter_map(&format)
                        .collect();
                if !chunk.is_empty() {
                    if limit.is_some_and(|l| sent >= l) {
                        return;
                    }
                    sent += chunk.len();
                    if sender.send(Frame::data(Bytes::from(chunk))).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            let running = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|s| s.into_inner().status)
                .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
            if !running {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}

/// Every value of a query parameter, in order (`command` repeats).
fn all_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(k, _)| decode(k) == key)
        .map(|(_, v)| decode(&v.replace('+', " ")))
        .collect()
}

/// The container id of a pod's running container (its newest attempt), through CRI.
async fn container_id(
    shared: &Shared,
    namespace: &str,
    pod_name: &str,
    container: &str,
) -> Result<String, Response<Body>> {
    let uid = pod_uid(shared, namespace, pod_name)?;
    let mut rt = shared.runtime.runtime.clone();
    let filter = cri::ContainerFilter {
        label_selector: [
            (LABEL_POD_UID.to_owned(), uid),
            (LABEL_CONTAINER_NAME.to_owned(), container.to_owned()),
        ]
        .into(),
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    let listed = rt
        .list_containers(cri::ListContainersRequest { filter: Some(filter) })
        .await
        .map_err(|status| {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the container runtime: {}", status.message()),
            )
        })?
        .into_inner()
        .containers;
    listed
        .into_iter()
        .max_by_key(|c| c.metadata.as_ref().map_or(0, |m| m.attempt))
        .map(|c| c.id)
        .ok_or_else(|| {
            text(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running in pod {pod_name}"),
            )
        })
}

/// `exec` and `attach`: the runtime's streaming URL for the command or the container, and
/// the client's upgraded connection joined to it byte for byte (the protocol is between the
/// client and the runtime's streaming server).
async fn stream(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
    kind: &str,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let query = request.uri().query().unwrap_or("").to_owned();
    let flag = |key: &str| all_values(&query, key).first().is_some_and(|v| v == "true" || v == "1");
    let command = all_values(&query, "command");
    if kind == "exec" && command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command");
    }
    let id = match container_id(shared, namespace, pod, container).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    let tty = flag("tty");
    let (stdin, stdout, stderr) =
        (flag("stdin"), flag("stdout") || !query.contains("stdout="), flag("stderr") && !tty);
    let mut rt = shared.runtime.runtime.clone();
    let url = if kind == "exec" {
        rt.exec(cri::ExecRequest { container_id: id, cmd: command, tty, stdin, stdout, stderr })
            .await
            .map(|r| r.into_inner().url)
    } else {
        rt.attach(cri::AttachRequest { container_id: id, tty, stdin, stdout, stderr })
            .await
            .map(|r| r.into_inner().url)
    };
    let url = match url {
        Ok(url) => url,
        Err(status) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the container runtime: {}", status.message()),
            )
        }
    };
    relay(request, &url).await
}

/// `portForward`: the runtime's streaming URL for the pod's sandbox, joined to the
/// client's upgraded connection as `stream` does.
async fn port_forward(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
    namespace: &str,
    pod_name: &str,
) -> Response<Body> {
    let uid = match pod_uid(shared, namespace, pod_name) {
        Ok(uid) => uid,
        Err(not_here) => return not_here.into(),
    };
    let sandboxes = match crate::pods::sandboxes_of(&shared.runtime, &uid).await {
        Ok(sandboxes) => sandboxes,
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    let Some(sandbox) =
        sandboxes.into_iter().find(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("pod {namespace}/{pod_name} has no running sandbox on this node"),
        );
    };
    let mut rt = shared.runtime.runtime.clone();
    let url = match rt
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: sandbox.id, port: Vec::new() })
        .await
    {
        Ok(response) => response.into_inner().url,
        Err(status) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the container runtime: {}", status.message()),
            )
        }
    };
    relay(request, &url).await
}

/// The client's upgrade request sent on to the runtime's streaming server at `url`, and
/// the two upgraded connections joined byte for byte.
async fn relay(mut request: Request<hyper::body::Incoming>, url: &str) -> Response<Body> {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime gave a bad URL {url:?}"),
        );
    };
    let address = format!("{}:{}", uri.host().unwrap_or("127.0.0.1"), uri.port_u16().unwrap_or(80));
    let stream = match tokio::net::TcpStream::connect(&address).await {
        Ok(stream) => stream,
        Err(err) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's streaming server at {address}: {err}"),
            )
        }
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the runtime's streaming server did not speak HTTP",
        );
    };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    // The client's query goes along: a WebSocket port-forward names its ports there.
    let target = match request.uri().query() {
        Some(query) if !query.is_empty() => format!("{}?{query}", uri.path()),
        _ => uri.path().to_owned(),
    };
    let mut upstream = Request::get(target).header(hyper::header::HOST, address.as_str());
    for (name, value) in request.headers() {
        let lower = name.as_str();
        if lower.starts_with("sec-websocket-")
            || lower == "upgrade"
            || lower == "connection"
            || lower == "x-stream-protocol-version"
        {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(upstream) = upstream.body(Full::new(Bytes::new())) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot make the upstream request");
    };
    let mut answer = match sender.send_request(upstream).await {
        Ok(answer) => answer,
        Err(err) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's streaming server: {err}"),
            )
        }
    };
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = answer.status();
        let body = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return text(code, String::from_utf8_lossy(&body).into_owned());
    }
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in answer.headers() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    let client_side = hyper::upgrade::on(&mut request);
    let runtime_side = hyper::upgrade::on(&mut answer);
    tokio::spawn(async move {
        if let (Ok(client), Ok(runtime)) = (client_side.await, runtime_side.await) {
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut runtime = hyper_util::rt::TokioIo::new(runtime);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut runtime).await;
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_are_joined_and_streams_kept_apart() {
        let mut pending = HashMap::new();
        let text = "t1 stdout P hel\nt2 stderr F oops\nt3 stdout F lo\n";
        let lines = assemble(text, &mut pending);
        assert_eq!(
            lines,
            vec![("t2".to_owned(), "oops\n".to_owned()), ("t3".to_owned(), "hello\n".to_owned())]
        );
        assert_eq!(decode("a%20b"), "a b");
    }
}
