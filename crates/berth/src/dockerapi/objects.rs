//! Networks, volumes, events and disk usage over the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_engine::network::Network;
use berth_engine::volume::Volume;
use berth_engine::Engine;
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{
    empty, filters, json_body, json_reply, labels_match, streamed, truthy, ApiError, Reply,
};

/// The engine's "not found" errors for networks and volumes as 404s with Docker's words.
fn not_found(err: berth_engine::Error) -> ApiError {
    let message = err.to_string();
    if message.contains("not found") || message.starts_with("no such volume") {
        ApiError(StatusCode::NOT_FOUND, message)
    } else {
        ApiError::of(err)
    }
}

/// A network by name, full ID or ID prefix.
fn find_network(engine: &Engine, name_or_id: &str) -> Result<Network, ApiError> {
    let networks = engine.network_list().map_err(ApiError::of)?;
    if let Some(n) = networks.iter().find(|n| n.name == name_or_id || n.id == name_or_id) {
        return Ok(n.clone());
    }
    let mut by_prefix = networks.iter().filter(|n| n.id.starts_with(name_or_id));
    match (by_prefix.next(), by_prefix.next()) {
        (Some(n), None) if !name_or_id.is_empty() => Ok(n.clone()),
        (Some(_), Some(_)) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("network {name_or_id} is ambiguous: give more of its ID"),
        )),
        _ => Err(ApiError(StatusCode::NOT_FOUND, format!("network {name_or_id} not found"))),
    }
}

fn builtin(network: &Network) -> bool {
    network.name == berth_engine::network::DEFAULT_NETWORK
}

/// A network as `GET /networks/{id}` shows it; `containers` adds who is attached.
fn network_json(engine: &Engine, network: &Network, containers: bool) -> Value {
    let mut attached = serde_json::Map::new();
    if containers {
        for record in engine.list().unwrap_or_default() {
            if let Some(state) = record.networks().find(|s| s.network == network.name) {
                attached.insert(
                    record.id.clone(),
                    json!({"Name": record.name, "EndpointID": "", "MacAddress": state.mac,
                        "IPv4Address": format!("{}/{}", state.ip, state.prefix_len), "IPv6Address": ""}),
                );
            }
        }
    }
    json!({
        "Name": network.name,
        "Id": network.id,
        "Created": network.created,
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": network.subnet, "Gateway": network.gateway}]},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": attached,
        "Options": {"com.docker.network.bridge.name": network.bridge},
        "Labels": network.labels,
    })
}

/// `GET /networks?filters=`: `name` (substring), `id` (prefix), `label`, `driver`,
/// `type` (custom|builtin), `dangling`.
pub(super) fn network_list(engine: &Engine, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    let users: Vec<String> = engine
        .list()
        .map_err(ApiError::of)?
        .iter()
        .flat_map(|r| r.networks().map(|n| n.network.clone()).collect::<Vec<_>>())
        .collect();
    let none = Vec::new();
    let list: Vec<Value> = engine
        .network_list()
        .map_err(ApiError::of)?
        .iter()
        .filter(|n| {
            let names = filters.get("name").unwrap_or(&none);
            let ids = filters.get("id").unwrap_or(&none);
            let drivers = filters.get("driver").unwrap_or(&none);
            let types = filters.get("type").unwrap_or(&none);
            let dangling = filters.get("dangling").unwrap_or(&none);
            (names.is_empty() || names.iter().any(|x| n.name.contains(x.as_str())))
                && (ids.is_empty() || ids.iter().any(|x| n.id.starts_with(x.as_str())))
                && (drivers.is_empty() || drivers.iter().any(|d| d == "bridge"))
                && (types.is_empty()
                    || types.iter().any(|t| (t == "builtin") == builtin(n) && t != "ignored"))
                && labels_match(&n.labels, filters.get("label").unwrap_or(&none))
                && (dangling.is_empty()
                    || dangling.iter().any(|d| {
                        (d == "true" || d == "1") == (!builtin(n) && !users.contains(&n.name))
                    }))
        })
        .map(|n| network_json(engine, n, false))
        .collect();
    json_reply(StatusCode::OK, &Value::Array(list))
}

pub(super) fn network_inspect(engine: &Engine, id: &str) -> Reply {
    let network = find_network(engine, id)?;
    json_reply(StatusCode::OK, &network_json(engine, &network, true))
}

/// `POST /networks/create`: a bridge network (`IPAM.Config[0].Subnet` chooses its
/// subnet).
pub(super) fn network_create(engine: &Engine, body: &Bytes) -> Reply {
    let config = json_body(body)?;
    let name = config["Name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("the network needs a Name"))?;
    let driver = config["Driver"].as_str().unwrap_or("bridge");
    if !driver.is_empty() && driver != "bridge" {
        return Err(ApiError::bad(format!(
            "network driver {driver:?} is not available: berth has the bridge driver"
        )));
    }
    if config["EnableIPv6"].as_bool() == Some(true) {
        return Err(ApiError::bad("IPv6 networks are not supported by berth yet"));
    }
    let subnet = config["IPAM"]["Config"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| c["Subnet"].as_str())
        .filter(|s| !s.is_empty());
    let labels = string_map(&config["Labels"]);
    let network = engine.network_create(name, subnet, labels).map_err(ApiError::of)?;
    json_reply(StatusCode::CREATED, &json!({"Id": network.id, "Warning": ""}))
}

pub(super) fn network_remove(engine: &Engine, id: &str) -> Reply {
    let network = find_network(engine, id)?;
    engine.network_remove(&network.name).map_err(not_found)?;
    empty(StatusCode::NO_CONTENT)
}

/// A connect or disconnect request: its body, the network, and the `Container` named.
fn endpoint_request(
    engine: &Engine,
    id: &str,
    body: &Bytes,
) -> Result<(Value, Network, String), ApiError> {
    let config = json_body(body)?;
    let network = find_network(engine, id)?;
    let container = config["Container"]
        .as_str()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad("Container is required"))?
        .to_owned();
    Ok((config, network, container))
}

/// `POST /networks/{id}/connect` with `{"Container", "EndpointConfig": {"Aliases",
/// "IPAMConfig": {"IPv4Address"}}}`.
pub(super) fn network_connect(engine: &Engine, id: &str, body: &Bytes) -> Reply {
    let (config, network, container) = endpoint_request(engine, id, body)?;
    let endpoint = &config["EndpointConfig"];
    let aliases: Vec<String> = endpoint["Aliases"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let ip = endpoint["IPAMConfig"]["IPv4Address"].as_str().filter(|i| !i.is_empty());
    engine.network_connect(&network.name, &container, &aliases, ip).map_err(ApiError::of)?;
    empty(StatusCode::OK)
}

pub(super) fn network_disconnect(engine: &Engine, id: &str, body: &Bytes) -> Reply {
    let (_, network, container) = endpoint_request(engine, id, body)?;
    engine.network_disconnect(&network.name, &container).map_err(ApiError::of)?;
    empty(StatusCode::OK)
}

/// `POST /networks/prune`: user networks no container uses.
pub(super) fn network_prune(engine: &Engine, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    refuse_other_filters(&filters, &["label", "label!", "until"], "networks")?;
    let until = super::until(&filters)?;
    let none = Vec::new();
    let mut deleted = Vec::new();
    for network in engine.network_list().map_err(ApiError::of)? {
        if builtin(&network)
            || !labels_match(&network.labels, filters.get("label").unwrap_or(&none))
            || excluded(&network.labels, &filters)
            || until.is_some_and(|u| {
                berth_image::config::parse_rfc3339(&network.created).unwrap_or(0) as f64 >= u
            })
        {
            continue;
        }
        if engine.network_remove(&network.name).is_ok() {
            deleted.push(network.name);
        }
    }
    json_reply(StatusCode::OK, &json!({"NetworksDeleted": deleted}))
}

/// Refuses filters a prune cannot apply: ignoring one would delete more than asked.
fn refuse_other_filters(
    filters: &BTreeMap<String, Vec<String>>,
    known: &[&str],
    what: &str,
) -> Result<(), ApiError> {
    match filters.keys().find(|k| !known.contains(&k.as_str())) {
        Some(other) => Err(ApiError::bad(format!(
            "invalid filter '{other}': berth prunes {what} by {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Whether a `label!` filter excludes these labels.
fn excluded(labels: &BTreeMap<String, String>, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters
        .get("label!")
        .is_some_and(|not| not.iter().any(|l| labels_match(labels, std::slice::from_ref(l))))
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|l| {
            l.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
        })
        .unwrap_or_default()
}

fn volume_json(volume: &Volume) -> Value {
    // No labels is null, as Docker shows a volume a container's `-v` made.
    let labels = if volume.labels.is_empty() { Value::Null } else { json!(volume.labels) };
    json!({"Name": volume.name, "Driver": volume.driver, "Mountpoint": volume.mountpoint,
        "CreatedAt": volume.created_at, "Labels": labels, "Scope": "local", "Options": null})
}

/// `GET /volumes?filters=`: `name`, `label`, `dangling`, `driver`.
pub(super) fn volume_list(engine: &Engine, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    let none = Vec::new();
    let dangling = filters.get("dangling").unwrap_or(&none);
    let mut list = Vec::new();
    for volume in engine.volume_list().map_err(ApiError::of)? {
        let names = filters.get("name").unwrap_or(&none);
        if !names.is_empty() && !names.iter().any(|n| volume.name.contains(n.as_str())) {
            continue;
        }
        if !labels_match(&volume.labels, filters.get("label").unwrap_or(&none)) {
            continue;
        }
        if !dangling.is_empty() {
            let unused = engine.volume_users(&volume.name).map_err(ApiError::of)?.is_empty();
            if !dangling.iter().any(|d| (d == "true" || d == "1") == unused) {
                continue;
            }
        }
        list.push(volume_json(&volume));
    }
    json_reply(StatusCode::OK, &json!({"Volumes": list, "Warnings": []}))
}

pub(super) fn volume_inspect(engine: &Engine, name: &str) -> Reply {
    let volume = engine.volume_inspect(name).map_err(not_found)?;
    json_reply(StatusCode::OK, &volume_json(&volume))
}

/// `POST /volumes/create`: a named volume (an existing one is answered as it is, as
/// Docker does) or, with no name, an anonymous one.
pub(super) fn volume_create(engine: &Engine, body: &Bytes) -> Reply {
    let config = json_body(body)?;
    let driver = config["Driver"].as_str().unwrap_or("local");
    if !driver.is_empty() && driver != "local" {
        return Err(ApiError::bad(format!(
            "volume driver {driver:?} is not available: berth has the local driver"
        )));
    }
    let name = config["Name"].as_str().filter(|n| !n.is_empty());
    let volume = engine.volume_create(name, string_map(&config["Labels"])).map_err(ApiError::of)?;
    json_reply(StatusCode::CREATED, &volume_json(&volume))
}

pub(super) fn volume_remove(engine: &Engine, name: &str, q: &BTreeMap<String, String>) -> Reply {
    engine.volume_remove(name, truthy(q, "force")).map_err(not_found)?;
    empty(StatusCode::NO_CONTENT)
}

/// `POST /volumes/prune`: unused anonymous volumes, or all unused with `all=true` in the
/// filters (API 1.42's rule; 1.41 clients expect every unused volume, and get them with
/// `all`).
pub(super) fn volume_prune(engine: &Engine, q: &BTreeMap<String, String>) -> Reply {
    let filters = filters(q)?;
    refuse_other_filters(&filters, &["label", "label!", "all"], "volumes")?;
    let all = filters.get("all").is_some_and(|a| a.iter().any(|v| v == "true" || v == "1"));
    let none = Vec::new();
    let mut removed = Vec::new();
    let mut reclaimed = 0;
    for volume in engine.volume_list().map_err(ApiError::of)? {
        if (!all && !volume.anonymous)
            || !labels_match(&volume.labels, filters.get("label").unwrap_or(&none))
            || excluded(&volume.labels, &filters)
            || !engine.volume_users(&volume.name).map_err(ApiError::of)?.is_empty()
        {
            continue;
        }
        let size = berth_stdx::fs::disk_usage(&volume.mountpoint);
        if engine.volume_remove(&volume.name, false).is_ok() {
            reclaimed += size;
            removed.push(volume.name);
        }
    }
    json_reply(StatusCode::OK, &json!({"VolumesDeleted": removed, "SpaceReclaimed": reclaimed}))
}

/// `GET /events?since=&until=&filters=`: past events from `since`, then new ones as they
/// happen, until `until` or until the client goes.
pub(super) fn events(engine: &Arc<Engine>, q: &BTreeMap<String, String>) -> Reply {
    use berth_engine::events;
    let filters = filters(q)?;
    let time = |key: &str| -> Result<Option<i64>, ApiError> {
        match q.get(key).filter(|t| !t.is_empty()) {
            Some(text) => crate::containers::parse_time(text)
                .map(|s| Some((s * 1e9) as i64))
                .map_err(|e| ApiError::bad(format!("{key}: {e:#}"))),
            None => Ok(None),
        }
    };
    let (since, until) = (time("since")?, time("until")?);
    let (feed, response) = streamed("application/json");
    let root = engine.root().to_path_buf();
    std::thread::spawn(move || {
        let send = |event: &events::Event| -> bool {
            if !event.matches(&filters) {
                return true;
            }
            let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
            if event.kind == "container" {
                value["status"] = json!(event.action);
                value["id"] = json!(event.actor.id);
                if let Some(image) = event.actor.attributes.get("image") {
                    value["from"] = json!(image);
                }
            }
            feed.line(&value)
        };
        let (past, mut position) = events::history(&root);
        if let Some(since) = since {
            for event in past.iter().filter(|e| e.time_nano >= since) {
                if until.is_some_and(|u| event.time_nano > u) {
                    return;
                }
                if !send(event) {
                    return;
                }
            }
        }
        // An empty first chunk: the client prints nothing until the headers come, and
        // hyper sends them with the first data.
        if !feed.send(Bytes::new()) {
            return;
        }
        loop {
            let (new, next) = events::read_from(&root, &position);
            position = next;
            for event in &new {
                if until.is_some_and(|u| event.time_nano > u) {
                    return;
                }
                if since.is_none_or(|s| event.time_nano >= s) && !send(event) {
                    return;
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            if until.is_some_and(|u| now > u) || !feed.open() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    Ok(response)
}

/// `GET /system/df`: images, containers, volumes and their sizes.
pub(super) fn disk_usage(engine: &Engine, global: &crate::cli::Global) -> Reply {
    let records = engine.list().map_err(ApiError::of)?;
    let store = crate::images::open_store(global)?;
    let mut images = Vec::new();
    let mut layers_size = 0u64;
    for image in store.list()? {
        let full = crate::images::image_json(&store, &image)?;
        let size = full["Size"].as_u64().unwrap_or(0);
        layers_size += size;
        let id = full["Id"].as_str().unwrap_or("").to_owned();
        let users = records.iter().filter(|r| r.image_id == id).count();
        images.push(json!({
            "Id": id, "ParentId": "", "RepoTags": full["RepoTags"], "RepoDigests": full["RepoDigests"],
            "Created": berth_image::config::parse_rfc3339(full["Created"].as_str().unwrap_or("")).unwrap_or(0),
            "Size": size, "SharedSize": 0, "VirtualSize": size, "Labels": full["Config"]["Labels"],
            "Containers": users,
        }));
    }
    let containers: Vec<Value> = records
        .iter()
        .map(|record| {
            let mut row = super::row(record);
            row["SizeRw"] =
                json!(berth_stdx::fs::disk_usage(&engine.container_dir(&record.id).join("upper")));
            row["SizeRootFs"] = json!(0);
            row
        })
        .collect();
    let mut volumes = Vec::new();
    for volume in engine.volume_list().map_err(ApiError::of)? {
        let users = engine.volume_users(&volume.name).map_err(ApiError::of)?.len();
        let mut value = volume_json(&volume);
        value["UsageData"] =
            json!({"Size": berth_stdx::fs::disk_usage(&volume.mountpoint), "RefCount": users});
        volumes.push(value);
    }
    json_reply(
        StatusCode::OK,
        &json!({"LayersSize": layers_size, "Images": images, "Containers": containers,
            "Volumes": volumes, "BuildCache": []}),
    )
}
