//! The resource metrics API (`metrics.k8s.io/v1beta1`: NodeMetrics and PodMetrics, what
//! `kubectl top` and the HorizontalPodAutoscaler read), served from what the server
//! collects itself, as metrics-server does: every `--metric-resolution` it reads each
//! node agent's `/metrics/resource` (cumulative CPU seconds and working sets, through the
//! same verified TLS as logs and exec) and turns two readings into a rate. Simulated
//! nodes have no agent: their pods' usage is what their annotations say
//! (`sim.berth.dev/cpu-usage`, `sim.berth.dev/memory-usage`, quantities), and the node's
//! is the sum. Kept in memory only: a restarted server answers again after two readings.

use std::collections::HashSet;

use super::*;

/// The annotations a pod on a simulated node reports its usage with.
pub const SIM_CPU: &str = "sim.berth.dev/cpu-usage";
pub const SIM_MEMORY: &str = "sim.berth.dev/memory-usage";
const SIMULATED_LABEL: &str = "node.berth.dev/simulated";

#[derive(Debug, Clone)]
struct Point {
    /// RFC 3339, the end of the window.
    timestamp: String,
    window_seconds: f64,
    /// Nanocores and bytes.
    cpu: u64,
    memory: u64,
}

#[derive(Debug, Clone)]
struct PodPoint {
    timestamp: String,
    window_seconds: f64,
    /// (container, nanocores, bytes)
    containers: Vec<(String, u64, u64)>,
}

#[derive(Default)]
struct Samples {
    nodes: HashMap<String, Point>,
    pods: HashMap<(String, String), PodPoint>,
    /// The last cumulative CPU reading per series (`node/NAME`, `NS/POD/CONTAINER`):
    /// (seconds of CPU, milliseconds since the epoch).
    last_cpu: HashMap<String, (f64, u128)>,
}

/// What the collector last measured.
#[derive(Default)]
pub(super) struct Usage {
    samples: std::sync::Mutex<Samples>,
}

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One reading of an agent's `/metrics/resource`: series → (value, milliseconds).
#[derive(Debug, Default, PartialEq)]
struct Reading {
    node_cpu: Option<(f64, u128)>,
    node_memory: Option<u64>,
    /// (namespace, pod, container) → (cpu seconds, ms)
    container_cpu: HashMap<(String, String, String), (f64, u128)>,
    container_memory: HashMap<(String, String, String), u64>,
}

/// Parses Prometheus' text format, as far as the resource metrics use it.
fn parse_reading(text: &str, now_ms: u128) -> Reading {
    let mut reading = Reading::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, rest) = match line.find('}') {
            Some(end) => (&line[..=end], &line[end + 1..]),
            None => match line.split_once(' ') {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        let mut fields = rest.split_whitespace();
        let Some(value) = fields.next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let at = fields.next().and_then(|t| t.parse::<u128>().ok()).unwrap_or(now_ms);
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |key: &str| -> Option<String> {
            let mut rest = labels;
            while let Some((k, after)) = rest.split_once("=\"") {
                let k = k.trim_start_matches(',').trim();
                let mut value = String::new();
                let mut chars = after.char_indices();
                let mut end = after.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(if escaped == 'n' { '\n' } else { escaped });
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if k == key {
                    return Some(value);
                }
                rest = &after[end..];
            }
            None
        };
        let container = || Some((label("namespace")?, label("pod")?, label("container")?));
        match name {
            "node_cpu_usage_seconds_total" => reading.node_cpu = Some((value, at)),
            "node_memory_working_set_bytes" => reading.node_memory = Some(value as u64),
            "container_cpu_usage_seconds_total" => {
                if let Some(key) = container() {
                    reading.container_cpu.insert(key, (value, at));
                }
            }
            "container_memory_working_set_bytes" => {
                if let Some(key) = container() {
                    reading.container_memory.insert(key, value as u64);
                }
            }
            _ => {}
        }
    }
    reading
}

/// A CPU rate in nanocores from the last reading of a series, and the window.
fn rate(
    last: &mut HashMap<String, (f64, u128)>,
    series: String,
    now: (f64, u128),
) -> Option<(u64, f64)> {
    let previous = last.insert(series, now)?;
    let window = now.1.checked_sub(previous.1)? as f64 / 1000.0;
    if window <= 0.0 || now.0 < previous.0 {
        return None;
    }
    Some((((now.0 - previous.0) / window * 1e9) as u64, window))
}

fn rfc3339_ms(ms: u128) -> String {
    berth_stdx::time::format_rfc3339((ms / 1000) as i64)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Reads every node's usage every `resolution`, until shutdown.
pub(super) async fn collect(state: Arc<State>, resolution: Duration) {
    loop {
        if let Err(err) = collect_once(&state, resolution).await {
            tracing::debug!("resource metrics: {}", err.message);
        }
        tokio::select! {
            _ = tokio::time::sleep(resolution) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

async fn list(
    state: &State,
    group: &str,
    version: &str,
    name: &str,
) -> Result<Vec<Value>, ApiError> {
    let resource = resources::find(group, version, name)
        .ok_or_else(|| ApiError::new(500, "InternalError", format!("no {name}")))?;
    let page = state
        .store
        .list(&resource.prefix(None), None, 0, 0)
        .await
        .map_err(|e| storage_error(resource, "", e))?;
    page.items.iter().map(decode).collect()
}

async fn collect_once(state: &Arc<State>, resolution: Duration) -> Result<(), ApiError> {
    let nodes = list(state, "", "v1", "nodes").await?;
    let simulated: Vec<&Value> =
        nodes.iter().filter(|n| n["metadata"]["labels"][SIMULATED_LABEL] == "true").collect();
    let real: Vec<&Value> =
        nodes.iter().filter(|n| n["metadata"]["labels"][SIMULATED_LABEL] != "true").collect();
    let mut node_points = HashMap::new();
    let mut pod_points = HashMap::new();
    if !simulated.is_empty() {
        let pods = list(state, "", "v1", "pods").await?;
        let stamp = rfc3339_ms(now_ms());
        let window = resolution.as_secs_f64();
        let names: HashSet<&str> =
            simulated.iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
        for name in &names {
            node_points.insert(
                (*name).to_owned(),
                Point { timestamp: stamp.clone(), window_seconds: window, cpu: 0, memory: 0 },
            );
        }
        for pod in &pods {
            let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| names.contains(n)) else {
                continue;
            };
            if pod["status"]["phase"] != "Running" {
                continue;
            }
            let quantity = |key: &str| {
                pod["metadata"]["annotations"][key]
                    .as_str()
                    .and_then(berth_api::quantity::parse_milli)
                    .unwrap_or(0)
                    .max(0)
            };
            let cpu = (quantity(SIM_CPU) * 1_000_000) as u64; // millicores → nanocores
            let memory = (quantity(SIM_MEMORY) / 1000) as u64;
            let containers: Vec<(String, u64, u64)> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| {
                    let name = c["name"].as_str().unwrap_or_default().to_owned();
                    if i == 0 {
                        (name, cpu, memory)
                    } else {
                        (name, 0, 0)
                    }
                })
                .collect();
            if let Some(point) = node_points.get_mut(node) {
                point.cpu += cpu;
                point.memory += memory;
            }
            let key = (
                pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            );
            pod_points.insert(
                key,
                PodPoint { timestamp: stamp.clone(), window_seconds: window, containers },
            );
        }
    }
    // Agents are read at the same time, each within a few seconds.
    let mut handles = Vec::new();
    for node in &real {
        let state = state.clone();
        let name = node["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let Some((address, port)) = super::kubelet::endpoint(node) else { continue };
        let reading = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), scrape(&state, &address, port))
                .await
                .ok()
                .flatten()
        });
        handles.push((name, reading));
    }
    let mut readings = Vec::new();
    for (name, handle) in handles {
        readings.push((name, handle.await.ok().flatten()));
    }
    let mut samples = state.usage.lock();
    let mut seen: HashSet<String> = HashSet::new();
    for (node, text) in readings {
        let Some(text) = text else { continue };
        let reading = parse_reading(&text, now_ms());
        if let (Some(cpu), Some(memory)) = (reading.node_cpu, reading.node_memory) {
            seen.insert(format!("node/{node}"));
            if let Some((nanocores, window)) =
                rate(&mut samples.last_cpu, format!("node/{node}"), cpu)
            {
                node_points.insert(
                    node.clone(),
                    Point {
                        timestamp: rfc3339_ms(cpu.1),
                        window_seconds: window,
                        cpu: nanocores,
                        memory,
                    },
                );
            }
        }
        let mut pods: HashMap<(String, String), PodPoint> = HashMap::new();
        for ((namespace, pod, container), cpu) in &reading.container_cpu {
            let series = format!("{namespace}/{pod}/{container}");
            seen.insert(series.clone());
            let Some((nanocores, window)) = rate(&mut samples.last_cpu, series, *cpu) else {
                continue;
            };
            let memory = reading
                .container_memory
                .get(&(namespace.clone(), pod.clone(), container.clone()))
                .copied()
                .unwrap_or(0);
            let point = pods.entry((namespace.clone(), pod.clone())).or_insert_with(|| PodPoint {
                timestamp: rfc3339_ms(cpu.1),
                window_seconds: window,
                containers: Vec::new(),
            });
            point.containers.push((container.clone(), nanocores, memory));
        }
        pod_points.extend(pods);
    }
    // Series of pods and nodes gone (or unread this time) are forgotten.
    samples.last_cpu.retain(|series, _| seen.contains(series));
    samples.nodes = node_points;
    samples.pods = pod_points;
    Ok(())
}

/// `GET /metrics/resource` from an agent.
async fn scrape(state: &State, address: &str, port: u16) -> Option<String> {
    let stream = tokio::net::TcpStream::connect((address, port)).await.ok()?;
    let server_name = rustls::pki_types::ServerName::try_from(address.to_owned()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(state.kubelet_tls.clone());
    let tls = connector.connect(server_name, stream).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get("/metrics/resource")
        .header(hyper::header::HOST, format!("{address}:{port}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(bytes.to_vec()).ok()
}

fn cpu_text(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn memory_text(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn window_text(seconds: f64) -> String {
    format!("{}s", seconds.round().max(0.0) as u64)
}

/// `GET /apis/metrics.k8s.io/v1beta1/nodes[/NAME]` and `.../namespaces/NS/pods[/NAME]`
/// (all namespaces without one), with a label selector on lists.
pub(super) async fn answer(
    state: &State,
    method: &Method,
    resource: &Resource,
    namespace: Option<&str>,
    name: Option<&str>,
    params: &HashMap<String, String>,
) -> Response<Body> {
    if method != Method::GET {
        return error_response(&ApiError::new(
            405,
            "MethodNotAllowed",
            "the resource metrics API only answers get and list",
        ));
    }
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return error_response(&ApiError::new(
            405,
            "MethodNotAllowed",
            "the resource metrics API cannot be watched",
        ));
    }
    let selector = match params.get("labelSelector").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match LabelSelector::parse(text) {
            Ok(selector) => Some(selector),
            Err(err) => return error_response(&ApiError::bad_request(err.to_string())),
        },
    };
    // Labels come from the objects themselves.
    let objects =
        match list(state, "", "v1", if resource.kind == "NodeMetrics" { "nodes" } else { "pods" })
            .await
        {
            Ok(objects) => objects,
            Err(err) => return error_response(&err),
        };
    let samples = state.usage.lock();
    let mut items = Vec::new();
    for object in &objects {
        let meta = &object["metadata"];
        let object_name = meta["name"].as_str().unwrap_or_default();
        let object_namespace = meta["namespace"].as_str().unwrap_or_default();
        if name.is_some_and(|n| n != object_name)
            || (resource.namespaced && namespace.is_some_and(|ns| ns != object_namespace))
        {
            continue;
        }
        if let Some(selector) = &selector {
            if !selector.matches(meta["labels"].as_object()) {
                continue;
            }
        }
        let base = |kind: &str| {
            let mut metadata = json!({"name": object_name, "creationTimestamp": now_rfc3339()});
            if resource.namespaced {
                metadata["namespace"] = json!(object_namespace);
            }
            if let Some(labels) = meta.get("labels").filter(|l| l.is_object()) {
                metadata["labels"] = labels.clone();
            }
            json!({"kind": kind, "apiVersion": "metrics.k8s.io/v1beta1", "metadata": metadata})
        };
        if resource.kind == "NodeMetrics" {
            let Some(point) = samples.nodes.get(object_name) else { continue };
            let mut item = base("NodeMetrics");
            item["timestamp"] = json!(point.timestamp);
            item["window"] = json!(window_text(point.window_seconds));
            item["usage"] =
                json!({"cpu": cpu_text(point.cpu), "memory": memory_text(point.memory)});
            items.push(item);
        } else {
            let key = (object_namespace.to_owned(), object_name.to_owned());
            let Some(point) = samples.pods.get(&key) else { continue };
            let mut item = base("PodMetrics");
            item["timestamp"] = json!(point.timestamp);
            item["window"] = json!(window_text(point.window_seconds));
            item["containers"] = json!(point
                .containers
                .iter()
                .map(|(c, cpu, memory)| json!({"name": c, "usage": {"cpu": cpu_text(*cpu), "memory": memory_text(*memory)}}))
                .collect::<Vec<_>>());
            items.push(item);
        }
    }
    drop(samples);
    match name {
        Some(name) => match items.into_iter().next() {
            Some(item) => json_response(200, &item),
            None => error_response(&ApiError::not_found(resource, name)),
        },
        None => json_response(
            200,
            &json!({"kind": format!("{}List", resource.kind), "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {}, "items": items}),
        ),
    }
}

fn now_rfc3339() -> String {
    berth_api::meta::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_readings_become_rates() {
        let first = "# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total 100.5 1000\nnode_memory_working_set_bytes 2048 1000\ncontainer_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"p\"} 1.0 1000\ncontainer_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"p\"} 4096 1000\n";
        let reading = parse_reading(first, 0);
        assert_eq!(reading.node_cpu, Some((100.5, 1000)));
        assert_eq!(reading.node_memory, Some(2048));
        let key = ("default".to_owned(), "p".to_owned(), "c".to_owned());
        assert_eq!(reading.container_cpu.get(&key), Some(&(1.0, 1000)));
        assert_eq!(reading.container_memory.get(&key), Some(&4096));
        let mut last = HashMap::new();
        assert_eq!(rate(&mut last, "s".into(), (1.0, 1000)), None, "one reading is no rate");
        // Half a CPU second over two seconds: a quarter of a core.
        assert_eq!(rate(&mut last, "s".into(), (1.5, 3000)), Some((250_000_000, 2.0)));
        assert_eq!(rate(&mut last, "s".into(), (0.1, 4000)), None, "a counter that went back");
        let escaped = parse_reading("container_memory_working_set_bytes{container=\"a\\\"b\",namespace=\"n\",pod=\"p\"} 1 5\n", 0);
        assert!(escaped.container_memory.contains_key(&(
            "n".to_owned(),
            "p".to_owned(),
            "a\"b".to_owned()
        )));
    }
}
