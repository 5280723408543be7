//! Objects as the API server handles them: metadata on create and update, name rules,
//! `Status` errors with Kubernetes' reasons and codes, and `Table` rows for `kubectl get`.

use serde_json::{json, Map, Value};

use crate::resources::Resource;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: Value::Null }
    }

    pub fn not_found(resource: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource_name(resource)),
        );
        e.details = json!({"name": name, "group": resource.group, "kind": resource.name});
        e
    }

    pub fn already_exists(resource: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource_name(resource)),
        );
        e.details = json!({"name": name, "group": resource.group, "kind": resource.name});
        e
    }

    pub fn conflict(resource: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource_name(resource)
            ),
        );
        e.details = json!({"name": name, "group": resource.group, "kind": resource.name});
        e
    }

    pub fn invalid(resource: &Resource, name: &str, field: &str, message: &str) -> ApiError {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {field}: {message}", kind_of(resource)),
        );
        e.details = json!({"name": name, "group": resource.group, "kind": resource.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]});
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// `pods`, or `deployments.apps` for a named group: how Kubernetes names resources in
/// messages.
pub fn resource_name(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.name.to_owned()
    } else {
        format!("{}.{}", resource.name, resource.group)
    }
}

fn kind_of(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.kind.to_owned()
    } else {
        format!("{}.{}", resource.kind, resource.group)
    }
}

pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buffer));
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID.
pub fn uuid() -> String {
    let h = random_hex(16);
    let variant = ["8", "9", "a", "b"][usize::from_str_radix(&h[16..17], 16).unwrap_or(0) % 4];
    format!("{}-{}-4{}-{}{}-{}", &h[0..8], &h[8..12], &h[13..16], variant, &h[17..20], &h[20..32])
}

/// Now, as `metav1.Time` writes it (seconds, UTC).
pub fn now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_time(seconds)
}

pub fn format_time(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

pub fn parse_time(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.trim_end_matches('Z').split(':').map(|p| p.parse::<f64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h as i64 * 3600 + min as i64 * 60 + s as i64)
}

/// kubectl's short age: 5s, 3m12s, 4h, 2d.
pub fn age(created: &str) -> String {
    let Some(created) = parse_time(created) else { return "<unknown>".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = (now - created).max(0);
    match d {
        d if d < 120 => format!("{d}s"),
        d if d < 600 => format!("{}m{}s", d / 60, d % 60),
        d if d < 3 * 3600 => format!("{}m", d / 60),
        d if d < 8 * 3600 => format!("{}h{}m", d / 3600, d % 3600 / 60),
        d if d < 2 * 86_400 => format!("{}h", d / 3600),
        d if d < 8 * 86_400 => format!("{}d{}h", d / 86_400, d % 86_400 / 3600),
        d => format!("{}d", d / 86_400),
    }
}

/// DNS-1123 subdomain (most names) or label (namespaces, services).
pub fn validate_name(name: &str, label: bool) -> Result<(), String> {
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.'));
    let ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() {
        return Err("name or generateName is required".into());
    }
    if name.len() > max || !ok_chars || !ends {
        return Err(if label {
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
        } else {
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
        });
    }
    Ok(())
}

/// Kinds whose names are DNS labels.
fn label_names(resource: &Resource) -> bool {
    matches!(resource.kind, "Namespace" | "Service")
}

pub fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

pub fn name_of(object: &Value) -> &str {
    meta(object).and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("")
}

/// Checks and completes an object being created: kind, name (or generateName), namespace,
/// uid, creation time, generation, defaults. Returns its name.
pub fn prepare_create(
    resource: &Resource,
    object: &mut Value,
    namespace: Option<&str>,
) -> Result<String, ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the request body is not a JSON object"));
    };
    let api_version = resource.group_version();
    match map.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != resource.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind {kind:?} of the object does not match the resource {} ({})",
                resource.name, resource.kind
            )))
        }
        _ => {}
    }
    map.insert("kind".into(), json!(resource.kind));
    map.insert("apiVersion".into(), json!(api_version));
    let metadata = map.entry("metadata").or_insert_with(|| json!({}));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(ApiError::bad_request("metadata is not an object"));
    };
    let mut name = metadata.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    if name.is_empty() {
        if let Some(prefix) = metadata.get("generateName").and_then(Value::as_str) {
            name = format!("{prefix}{}", &random_hex(3)[..5]);
            metadata.insert("name".into(), json!(name));
        }
    }
    if let Err(message) = validate_name(&name, label_names(resource)) {
        return Err(ApiError::invalid(resource, &name, "metadata.name", &message));
    }
    if resource.namespaced {
        let ns = namespace.unwrap_or("default");
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
        metadata.insert("namespace".into(), json!(ns));
    } else {
        metadata.remove("namespace");
    }
    for (key, value) in metadata.iter() {
        if matches!(key.as_str(), "labels" | "annotations") {
            if let Some(m) = value.as_object() {
                if m.values().any(|v| !v.is_string()) {
                    return Err(ApiError::bad_request(format!(
                        "metadata.{key} values must be strings"
                    )));
                }
            }
        }
    }
    metadata.insert("uid".into(), json!(uuid()));
    metadata.insert("creationTimestamp".into(), json!(now()));
    metadata.remove("resourceVersion");
    metadata.remove("deletionTimestamp");
    metadata.remove("selfLink");
    if map.contains_key("spec")
        || !matches!(
            resource.kind,
            "ConfigMap" | "Secret" | "Event" | "Endpoints" | "ServiceAccount"
        )
    {
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("generation".into(), json!(1));
        }
    }
    default(resource, object);
    Ok(name)
}

/// Defaults Kubernetes sets on creation, for the fields clients read back.
fn default(resource: &Resource, object: &mut Value) {
    match resource.kind {
        "Namespace" => {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        "Secret" if object.get("type").is_none() => object["type"] = json!("Opaque"),
        "Deployment" if object["spec"].is_object() => {
            let spec = &mut object["spec"];
            for (key, value) in [
                ("replicas", json!(1)),
                ("revisionHistoryLimit", json!(10)),
                ("progressDeadlineSeconds", json!(600)),
                (
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                ),
            ] {
                if spec.get(key).is_none_or(|v| v.as_object().is_some_and(|o| o.is_empty())) {
                    spec[key] = value;
                }
            }
        }
        "Pod" => {
            let spec = &mut object["spec"];
            if spec.is_object() {
                for (key, value) in [
                    ("restartPolicy", json!("Always")),
                    ("terminationGracePeriodSeconds", json!(30)),
                    ("dnsPolicy", json!("ClusterFirst")),
                    ("schedulerName", json!("default-scheduler")),
                    ("securityContext", json!({})),
                ] {
                    if spec.get(key).is_none() {
                        spec[key] = value;
                    }
                }
                if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
                    for c in containers {
                        if c.get("imagePullPolicy").is_none() {
                            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                            let latest = !image.contains(':') || image.ends_with(":latest");
                            c["imagePullPolicy"] =
                                json!(if latest { "Always" } else { "IfNotPresent" });
                        }
                        if c.get("terminationMessagePath").is_none() {
                            c["terminationMessagePath"] = json!("/dev/termination-log");
                            c["terminationMessagePolicy"] = json!("File");
                        }
                    }
                }
            }
            if object.get("status").is_none() {
                object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        _ => {}
    }
}

/// The columns `kubectl get` shows for a kind, and each object's cells.
pub fn table(resource: &Resource, items: &[Value], revision: i64, include_object: bool) -> Value {
    let columns: Vec<(&str, &str)> = match resource.kind {
        "Namespace" => vec![("Name", "name"), ("Status", ""), ("Age", "")],
        "ConfigMap" => vec![("Name", "name"), ("Data", ""), ("Age", "")],
        "Secret" => vec![("Name", "name"), ("Type", ""), ("Data", ""), ("Age", "")],
        "Pod" => {
            vec![("Name", "name"), ("Ready", ""), ("Status", ""), ("Restarts", ""), ("Age", "")]
        }
        "Service" => vec![
            ("Name", "name"),
            ("Type", ""),
            ("Cluster-IP", ""),
            ("External-IP", ""),
            ("Port(s)", ""),
            ("Age", ""),
        ],
        "Deployment" => vec![
            ("Name", "name"),
            ("Ready", ""),
            ("Up-to-date", ""),
            ("Available", ""),
            ("Age", ""),
        ],
        "ServiceAccount" => vec![("Name", "name"), ("Secrets", ""), ("Age", "")],
        _ => vec![("Name", "name"), ("Age", "")],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let created = meta(item).and_then(|m| m.get("creationTimestamp")).and_then(Value::as_str).unwrap_or("");
            let count = |v: &Value| v.as_object().map(|o| o.len()).unwrap_or(0);
            let cells: Vec<Value> = columns
                .iter()
                .map(|(column, _)| match *column {
                    "Name" => json!(name_of(item)),
                    "Age" => json!(age(created)),
                    "Status" if resource.kind == "Namespace" => item["status"]["phase"].clone(),
                    "Status" => item["status"]["phase"].clone(),
                    "Data" => json!(count(&item["data"]) + count(&item["binaryData"])),
                    "Type" if resource.kind == "Secret" => item["type"].clone(),
                    "Type" => item["spec"]["type"].as_str().map(|t| json!(t)).unwrap_or(json!("ClusterIP")),
                    "Cluster-IP" => item["spec"]["clusterIP"].as_str().map(|t| json!(t)).unwrap_or(json!("<none>")),
                    "External-IP" => json!("<none>"),
                    "Port(s)" => json!(item["spec"]["ports"]
                        .as_array()
                        .map(|ports| ports
                            .iter()
                            .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                            .collect::<Vec<_>>()
                            .join(","))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "<none>".into())),
                    "Ready" if resource.kind == "Pod" => {
                        let total = item["spec"]["containers"].as_array().map(Vec::len).unwrap_or(0);
                        let ready = item["status"]["containerStatuses"]
                            .as_array()
                            .map(|s| s.iter().filter(|c| c["ready"] == true).count())
                            .unwrap_or(0);
                        json!(format!("{ready}/{total}"))
                    }
                    "Ready" => json!(format!(
                        "{}/{}",
                        item["status"]["readyReplicas"].as_i64().unwrap_or(0),
                        item["spec"]["replicas"].as_i64().unwrap_or(1)
                    )),
                    "Restarts" => json!(item["status"]["containerStatuses"]
                        .as_array()
                        .map(|s| s.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum::<i64>())
                        .unwrap_or(0)),
                    "Up-to-date" => json!(item["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
                    "Available" => json!(item["status"]["availableReplicas"].as_i64().unwrap_or(0)),
                    "Secrets" => json!(item["secrets"].as_array().map(Vec::len).unwrap_or(0)),
                    _ => Value::Null,
                })
                .collect();
            let object = if include_object {
                item.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]})
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|(name, format)| {
            json!({"name": name, "type": if matches!(*name, "Data" | "Restarts" | "Up-to-date" | "Available" | "Secrets") { "integer" } else { "string" }, "format": format, "description": "", "priority": 0})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn creation_fills_metadata_and_checks_names() {
        let cm = find("", "v1", "configmaps").unwrap();
        let mut object = json!({"metadata": {"name": "app-config"}, "data": {"a": "1"}});
        assert_eq!(prepare_create(cm, &mut object, Some("team")).unwrap(), "app-config");
        assert_eq!(object["kind"], "ConfigMap");
        assert_eq!(object["apiVersion"], "v1");
        assert_eq!(object["metadata"]["namespace"], "team");
        assert_eq!(object["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert!(object["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'));
        let mut generated = json!({"metadata": {"generateName": "job-"}});
        let name = prepare_create(cm, &mut generated, None).unwrap();
        assert!(name.starts_with("job-") && name.len() == 9, "{name}");
        let mut bad = json!({"metadata": {"name": "Bad_Name"}});
        let err = prepare_create(cm, &mut bad, None).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(err.message.contains("metadata.name"), "{}", err.message);
        let mut wrong_kind = json!({"kind": "Secret", "metadata": {"name": "x"}});
        assert_eq!(prepare_create(cm, &mut wrong_kind, None).unwrap_err().code, 400);
        let mut other_ns = json!({"metadata": {"name": "x", "namespace": "b"}});
        assert_eq!(prepare_create(cm, &mut other_ns, Some("a")).unwrap_err().code, 400);
        let ns = find("", "v1", "namespaces").unwrap();
        let mut dotted = json!({"metadata": {"name": "a.b"}});
        assert_eq!(prepare_create(ns, &mut dotted, None).unwrap_err().code, 422);
        let mut fine = json!({"metadata": {"name": "team-a"}});
        prepare_create(ns, &mut fine, None).unwrap();
        assert_eq!(fine["status"]["phase"], "Active");
        assert!(fine["metadata"].get("namespace").is_none());
    }

    #[test]
    fn pods_get_defaults() {
        let pods = find("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}, {"name": "d", "image": "busybox:1.36"}]}});
        prepare_create(pods, &mut pod, Some("default")).unwrap();
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn times_ages_and_statuses() {
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(age(&now()), "0s");
        let status =
            ApiError::not_found(find("apps", "v1", "deployments").unwrap(), "web").status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(
            (status["reason"].as_str(), status["code"].as_u64()),
            (Some("NotFound"), Some(404))
        );
        let table = table(
            find("", "v1", "configmaps").unwrap(),
            &[
                json!({"metadata": {"name": "c", "creationTimestamp": now()}, "data": {"a": "1", "b": "2"}}),
            ],
            7,
            false,
        );
        assert_eq!(table["rows"][0]["cells"], json!(["c", 2, "0s"]));
        assert_eq!(table["metadata"]["resourceVersion"], "7");
    }
}
