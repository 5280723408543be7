//! The container endpoints beyond the lifecycle: pause, rename, top, stats, changes,
//! export, archive (`docker cp`), update, prune, resize.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use berth_engine::container::Status;
use berth_engine::Engine;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::{
    empty, filters, json_body, json_reply, labels_match, streamed, truthy, whole, ApiError, Reply,
    API_VERSION,
};

/// `POST /containers/{id}/pause` and `/unpause`.
pub(super) fn pause(engine: &Engine, id: &str, pause: bool) -> Reply {
    engine.pause(id, pause).map_err(ApiError::of)?;
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/rename?name=`.
pub(super) fn rename(engine: &Engine, id: &str, q: &BTreeMap<String, String>) -> Reply {
    let name = q
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("the new name is required (?name=)"))?;
    engine.rename(id, name.trim_start_matches('/')).map_err(ApiError::of)?;
    empty(StatusCode::NO_CONTENT)
}

/// `GET /containers/{id}/top?ps_args=`: the container's processes, as the host's `ps`
/// shows them with the options given (Docker's default is `-ef`).
pub(super) fn top(engine: &Engine, id: &str, q: &BTreeMap<String, String>) -> Reply {
    let rows = engine.top(id).map_err(ApiError::of)?;
    let pids: Vec<&str> = rows.iter().map(|row| row[1].as_str()).collect();
    let options: Vec<&str> =
        q.get("ps_args").map(|a| a.split_whitespace().collect()).unwrap_or_else(|| vec!["-ef"]);
    let output = std::process::Command::new("ps").args(&options).output().map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot run ps (install procps): {e}"))
    })?;
    if !output.status.success() {
        return Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "ps {} failed: {}",
                options.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let titles: Vec<String> =
        lines.next().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    let column = titles.iter().position(|t| t == "PID").ok_or_else(|| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ps {} shows no PID column: add one (-o pid,...)", options.join(" ")),
        )
    })?;
    let mut processes = Vec::new();
    for line in lines {
        // The last title takes the rest of the line (the command and its arguments).
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields.get(column).is_some_and(|pid| pids.contains(pid)) {
            continue;
        }
        let last = titles.len().saturating_sub(1);
        let mut row: Vec<String> = fields.iter().take(last).map(|f| (*f).to_owned()).collect();
        row.push(fields.get(last..).map(|rest| rest.join(" ")).unwrap_or_default());
        processes.push(row);
    }
    json_reply(StatusCode::OK, &json!({"Titles": titles, "Processes": processes}))
}

/// The host's CPU time in nanoseconds (the `cpu` line of /proc/stat, in USER_HZ ticks):
/// the docker client divides the container's CPU time by its change.
fn system_cpu_nanos() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| l.split_whitespace().skip(1).take(7).filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux ABI that berth runs on.
    ticks * 10_000_000
}

/// One sample in the shape of Docker's stats: what its client reads for `docker stats`.
fn sample(engine: &Engine, id: &str) -> Option<Value> {
    let record = engine.peek(id).ok()?;
    let stats = engine.stats(id).ok()?;
    let limit = match stats.memory.usage.limit {
        0 | u64::MAX => crate::containers::host_memory(),
        l => l.min(crate::containers::host_memory()),
    };
    let (rx, tx) = crate::containers::net_io(record.state.pid);
    let mut memory_stats: serde_json::Map<String, Value> =
        stats.memory.raw.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    memory_stats.entry("cache").or_insert(json!(stats.memory.cache));
    let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Some(json!({
        "id": record.id,
        "name": format!("/{}", record.name),
        "read": berth_engine::now(),
        "pids_stats": {"current": stats.pids.current, "limit": stats.pids.limit},
        "blkio_stats": {
            // Entries serialize as Docker's: major, minor, op, value.
            "io_service_bytes_recursive": stats.blkio.io_service_bytes_recursive,
            "io_serviced_recursive": stats.blkio.io_serviced_recursive,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {
            "cpu_usage": {
                "total_usage": stats.cpu.usage.total,
                "percpu_usage": stats.cpu.usage.percpu,
                "usage_in_kernelmode": stats.cpu.usage.kernel,
                "usage_in_usermode": stats.cpu.usage.user,
            },
            "system_cpu_usage": system_cpu_nanos(),
            "online_cpus": online,
            "throttling_data": {
                "periods": stats.cpu.throttling.periods,
                "throttled_periods": stats.cpu.throttling.throttled_periods,
                "throttled_time": stats.cpu.throttling.throttled_time,
            },
        },
        "memory_stats": {
            "usage": stats.memory.usage.usage,
            "max_usage": stats.memory.usage.max,
            "failcnt": stats.memory.usage.failcnt,
            "limit": limit,
            "stats": memory_stats,
        },
        "networks": {"eth0": {"rx_bytes": rx, "tx_bytes": tx, "rx_packets": 0, "tx_packets": 0,
            "rx_errors": 0, "tx_errors": 0, "rx_dropped": 0, "tx_dropped": 0}},
    }))
}

/// `GET /containers/{id}/stats?stream=&one-shot=`: a sample a second (with the one
/// before it as `precpu_stats`, which the client's CPU % needs), or one sample.
pub(super) fn stats(engine: &Arc<Engine>, id: &str, q: &BTreeMap<String, String>) -> Reply {
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let record = engine.peek(&id).map_err(ApiError::of)?;
    let running = matches!(record.state.status, Status::Running | Status::Paused);
    let stream = q.get("stream").is_none_or(|s| s == "1" || s == "true");
    let empty_sample = || {
        json!({"id": record.id, "name": format!("/{}", record.name), "read": "0001-01-01T00:00:00Z",
            "cpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0, "online_cpus": 0},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}, "pids_stats": {},
            "blkio_stats": {}, "networks": {}})
    };
    let pair = |before: Option<&Value>, mut now: Value| -> Value {
        now["precpu_stats"] = before
            .map(|b| b["cpu_stats"].clone())
            .unwrap_or_else(|| json!({"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0}));
        now["preread"] = before.map(|b| b["read"].clone()).unwrap_or(json!("0001-01-01T00:00:00Z"));
        now
    };
    if !stream {
        if !running {
            return json_reply(StatusCode::OK, &empty_sample());
        }
        let before = if truthy(q, "one-shot") {
            None
        } else {
            let first = sample(engine, &id);
            std::thread::sleep(std::time::Duration::from_millis(500));
            first
        };
        let now = sample(engine, &id).unwrap_or_else(empty_sample);
        return json_reply(StatusCode::OK, &pair(before.as_ref(), now));
    }
    let (feed, response) = streamed("application/json");
    let engine = engine.clone();
    std::thread::spawn(move || {
        let mut before: Option<Value> = None;
        loop {
            let Some(now) = sample(&engine, &id) else {
                // Stopped: Docker sends an empty sample and ends.
                feed.line(&json!({"read": "0001-01-01T00:00:00Z", "cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}));
                return;
            };
            if !feed.line(&pair(before.as_ref(), now.clone())) {
                return;
            }
            before = Some(now);
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    Ok(response)
}

/// `GET /containers/{id}/changes`: Kind 0 changed, 1 added, 2 deleted.
pub(super) fn changes(engine: &Engine, id: &str) -> Reply {
    use berth_image::diff::Change;
    let list: Vec<Value> = engine
        .diff(id)
        .map_err(ApiError::of)?
        .iter()
        .map(|change| {
            let (kind, path) = match change {
                Change::Changed(p) => (0, p),
                Change::Added(p) => (1, p),
                Change::Deleted(p) => (2, p),
            };
            json!({"Path": format!("/{}", path.display()), "Kind": kind})
        })
        .collect();
    json_reply(StatusCode::OK, &Value::Array(list))
}

/// Writes what a producer makes into a streamed body, a chunk at a time.
pub(super) struct FeedWriter(pub(super) super::Feed);

impl std::io::Write for FeedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.send(Bytes::copy_from_slice(buf)) {
            Ok(buf.len())
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET /containers/{id}/export`: the container's filesystem as a tar stream.
pub(super) fn export(engine: &Arc<Engine>, id: &str) -> Reply {
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    let (feed, response) = streamed("application/x-tar");
    let engine = engine.clone();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, FeedWriter(feed));
        if let Err(err) = engine.copy_out_tar(&id, Path::new("/"), &mut out) {
            tracing::warn!("export of {id} ended early: {err}");
        }
        let _ = std::io::Write::flush(&mut out);
    });
    Ok(response)
}

/// The `X-Docker-Container-Path-Stat` header: the path's stat as base64 JSON, with the
/// mode in Go's `os.FileMode` bits (the client reads `IsDir` from them).
fn path_stat_header(engine: &Engine, id: &str, path: &str) -> Result<String, ApiError> {
    let stat = engine.path_stat(id, Path::new(path)).map_err(ApiError::of)?;
    let mut mode = stat.mode & 0o777;
    if stat.is_dir {
        mode |= 1 << 31;
    }
    if stat.link_target.is_some() {
        mode |= 1 << 27;
    }
    let value = json!({
        "name": stat.name, "size": stat.size, "mode": mode,
        "mtime": berth_stdx::time::format_rfc3339_nanos(stat.modified),
        "linkTarget": stat.link_target.unwrap_or_default(),
    });
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(value.to_string()))
}

/// `HEAD|GET|PUT /containers/{id}/archive?path=`: a path's stat, a tar of it, or a tar
/// unpacked into it (`docker cp` both ways).
pub(super) fn archive(
    engine: &Arc<Engine>,
    method: &hyper::Method,
    id: &str,
    q: &BTreeMap<String, String>,
    body: std::fs::File,
) -> Reply {
    let path = q
        .get("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad("path is required (?path=)"))?
        .clone();
    let id = engine.resolve_id(id).map_err(ApiError::of)?;
    if *method == hyper::Method::PUT {
        if !path.starts_with('/') {
            return Err(ApiError::bad(format!("path {path:?} is not absolute")));
        }
        let mut input = std::io::BufReader::with_capacity(1 << 20, body);
        engine.copy_in_tar(&mut input, &id, Path::new(&path)).map_err(ApiError::of)?;
        return empty(StatusCode::OK);
    }
    let stat = path_stat_header(engine, &id, &path)?;
    if *method == hyper::Method::HEAD {
        return Ok(Response::builder()
            .header("X-Docker-Container-Path-Stat", stat)
            .header("Api-Version", API_VERSION)
            .body(whole(Bytes::new()))
            .unwrap_or_default());
    }
    let (feed, mut response) = streamed("application/x-tar");
    if let Ok(value) = stat.parse() {
        response.headers_mut().insert("X-Docker-Container-Path-Stat", value);
    }
    let engine = engine.clone();
    std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, FeedWriter(feed));
        if let Err(err) = engine.copy_out_tar(&id, Path::new(&path), &mut out) {
            tracing::warn!("archive of {path} in {id} ended early: {err}");
        }
        let _ = std::io::Write::flush(&mut out);
    });
    Ok(response)
}

/// `POST /containers/{id}/update`: limits and the restart policy of a container.
pub(super) fn update(engine: &Engine, id: &str, body: &Bytes) -> Reply {
    let config = json_body(body)?;
    let int = |key: &str| config[key].as_i64();
    let restart = super::restart_policy(&config["RestartPolicy"])?;
    let change = berth_engine::ops::Update {
        memory: int("Memory"),
        memory_swap: int("MemorySwap"),
        memory_reservation: int("MemoryReservation"),
        cpus: int("NanoCpus").filter(|n| *n > 0).map(|n| n as f64 / 1e9),
        cpu_shares: config["CpuShares"].as_u64().filter(|s| *s > 0),
        cpu_quota: int("CpuQuota").filter(|q| *q != 0),
        cpu_period: config["CpuPeriod"].as_u64().filter(|p| *p > 0),
        cpuset_cpus: config["CpusetCpus"].as_str().filter(|c| !c.is_empty()).map(str::to_owned),
        cpuset_mems: config["CpusetMems"].as_str().filter(|c| !c.is_empty()).map(str::to_owned),
        pids_limit: int("PidsLimit").filter(|p| *p != 0),
        blkio_weight: config["BlkioWeight"].as_u64().filter(|w| *w > 0).map(|w| w as u16),
        restart,
    };
    engine.update(id, &change).map_err(ApiError::of)?;
    json_reply(StatusCode::OK, &json!({"Warnings": []}))
}

/// `POST /containers/prune?filters=`: removes stopped containers (filters `label`,
/// `label!`, `until`).
pub(super) fn prune(engine: &Engine, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    if let Some(other) =
        filters.keys().find(|k| !matches!(k.as_str(), "label" | "label!" | "until"))
    {
        return Err(ApiError::bad(format!(
            "invalid filter '{other}': berth prunes containers by label, label! and until"
        )));
    }
    let until = super::until(&filters)?;
    let empty_list = Vec::new();
    let not_labels = filters.get("label!").unwrap_or(&empty_list);
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for record in engine.list().map_err(ApiError::of)? {
        if !matches!(record.state.status, Status::Created | Status::Exited | Status::Dead) {
            continue;
        }
        if !labels_match(&record.options.labels, filters.get("label").unwrap_or(&empty_list)) {
            continue;
        }
        if not_labels.iter().any(|l| labels_match(&record.options.labels, std::slice::from_ref(l)))
        {
            continue;
        }
        let created = berth_image::config::parse_rfc3339(&record.created).unwrap_or(0) as f64;
        if until.is_some_and(|u| created >= u) {
            continue;
        }
        reclaimed += berth_stdx::fs::disk_usage(&engine.container_dir(&record.id).join("upper"));
        if engine.remove(&record.id, false, false).is_ok() {
            deleted.push(record.id);
        }
    }
    json_reply(StatusCode::OK, &json!({"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}))
}
