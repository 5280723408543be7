//! Objects as the API server handles them: metadata on create and update, name rules,
//! `Status` errors with Kubernetes' reasons and codes, and `Table` rows for `kubectl get`.

use serde_json::{json, Value};

use crate::resources::Resource;

pub use berth_api::status::{kind_of, resource_name, ApiError};

/// Five characters for `generateName`, from Kubernetes' alphabet (no vowels, no
/// look-alikes: 27^5 names).
fn generated_suffix() -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    berth_stdx::random::fill(&mut bytes).map_err(random_failed)?;
    Ok(bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect())
}

/// Random hex from the OS generator; a failure is a 500, never predictable bytes.
pub fn random_hex(bytes: usize) -> Result<String, ApiError> {
    berth_stdx::random::hex(bytes).map_err(random_failed)
}

/// A random (version 4) UUID, for object uids.
pub fn uuid() -> Result<String, ApiError> {
    berth_stdx::random::uuid().map_err(random_failed)
}

fn random_failed(err: std::io::Error) -> ApiError {
    ApiError::new(500, "InternalError", format!("cannot read random bytes from the OS: {err}"))
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

/// RBAC names are path segments (`system:kube-controller-manager`), as Kubernetes
/// validates them: anything but empty, `.`, `..`, and names with `/` or `%`.
pub fn validate_path_segment(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name or generateName is required".into());
    }
    if name == "." || name == ".." {
        return Err(format!("Invalid value: {name:?}: may not be '.' or '..'"));
    }
    if let Some(bad) = name.chars().find(|c| *c == '/' || *c == '%') {
        return Err(format!("Invalid value: {name:?}: may not contain '{bad}'"));
    }
    Ok(())
}

pub use berth_api::meta::{format_time, meta, name_of, now, parse_time, unix_now};

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
            name = format!("{prefix}{}", generated_suffix()?);
            metadata.insert("name".into(), json!(name));
        }
    }
    let checked = match crate::strategy::of(resource).names() {
        crate::strategy::NameRule::PathSegment => validate_path_segment(&name),
        crate::strategy::NameRule::Label => validate_name(&name, true),
        crate::strategy::NameRule::Subdomain => validate_name(&name, false),
    };
    if let Err(message) = checked {
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
    metadata.insert("uid".into(), json!(uuid()?));
    metadata.insert("creationTimestamp".into(), json!(now()));
    metadata.remove("resourceVersion");
    metadata.remove("deletionTimestamp");
    metadata.remove("selfLink");
    if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        if crate::strategy::has_generation(resource) {
            metadata.insert("generation".into(), json!(1));
        } else {
            metadata.remove("generation");
        }
    }
    default(resource, object);
    Ok(name)
}

/// Defaults Kubernetes sets on creation, for the fields clients read back.
fn default(resource: &Resource, object: &mut Value) {
    default_fields(resource, object);
    crate::strategy::of(resource).prepare_create(object);
}

/// Sets `value` at `key` of `map` when it is missing (or null).
/// A Secret's `stringData` is write-only: its values go into `data` (base64, over a
/// `data` value of the same key) and it is never stored or returned.
fn merge_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(map) = secret.as_object_mut() else { return };
    let Some(Value::Object(strings)) = map.remove("stringData") else { return };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (key, value) in strings {
        let text = match value {
            Value::String(text) => text,
            other => other.to_string(),
        };
        data[key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn or_default(map: &mut Value, key: &str, value: Value) {
    if map.is_object() && map.get(key).is_none_or(Value::is_null) {
        map[key] = value;
    }
}

/// The defaults every decode applies, on create and on update, as Kubernetes' defaulting
/// functions do for these kinds (`SetDefaults_*`): an update that leaves a defaulted field
/// out gets the default again rather than losing it.
pub fn default_fields(resource: &Resource, object: &mut Value) {
    if let Some(custom) = crate::crd::lookup(resource) {
        crate::crd::default(&custom.schema, object);
        return;
    }
    if resource.kind == "Secret" {
        or_default(object, "type", json!("Opaque"));
        merge_string_data(object);
    }
    // (Indexing a JSON object mutably would add the key: only existing specs are touched.)
    let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    match resource.kind {
        "Pod" => {
            default_pod_spec(spec);
            requests_from_limits(spec);
        }
        "Deployment" => {
            or_default(spec, "replicas", json!(1));
            or_default(spec, "revisionHistoryLimit", json!(10));
            or_default(spec, "progressDeadlineSeconds", json!(600));
            if spec.get("strategy").is_none_or(|v| v.as_object().is_none_or(|o| o.is_empty())) {
                spec["strategy"] = json!({"type": "RollingUpdate"});
            }
            if spec["strategy"]["type"] == "RollingUpdate" {
                or_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                or_default(&mut spec["strategy"]["rollingUpdate"], "maxUnavailable", json!("25%"));
                or_default(&mut spec["strategy"]["rollingUpdate"], "maxSurge", json!("25%"));
            }
            default_template(spec);
        }
        "ReplicaSet" => {
            or_default(spec, "replicas", json!(1));
            default_template(spec);
        }
        "DaemonSet" => {
            or_default(spec, "revisionHistoryLimit", json!(10));
            or_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                or_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
                or_default(
                    &mut spec["updateStrategy"]["rollingUpdate"],
                    "maxUnavailable",
                    json!(1),
                );
                or_default(&mut spec["updateStrategy"]["rollingUpdate"], "maxSurge", json!(0));
            }
            default_template(spec);
        }
        "StatefulSet" => {
            or_default(spec, "replicas", json!(1));
            or_default(spec, "podManagementPolicy", json!("OrderedReady"));
            or_default(spec, "revisionHistoryLimit", json!(10));
            or_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                or_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
                or_default(&mut spec["updateStrategy"]["rollingUpdate"], "partition", json!(0));
            }
            or_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(spec);
        }
        "Job" => default_job_spec(spec),
        "CronJob" => {
            or_default(spec, "concurrencyPolicy", json!("Allow"));
            or_default(spec, "suspend", json!(false));
            or_default(spec, "successfulJobsHistoryLimit", json!(3));
            or_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(job) = spec.get_mut("jobTemplate").and_then(|t| t.get_mut("spec")) {
                if job.is_object() {
                    default_job_spec(job);
                }
            }
        }
        "HorizontalPodAutoscaler" => {
            or_default(spec, "minReplicas", json!(1));
            if resource.version == "v2" {
                // No metrics named: scale on CPU at 80% of requests.
                if spec.get("metrics").is_none_or(|m| m.as_array().is_none_or(|a| a.is_empty())) {
                    spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
                }
            }
        }
        _ => {}
    }
}

fn default_job_spec(spec: &mut Value) {
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec["completions"] = json!(1);
    }
    or_default(spec, "parallelism", json!(1));
    // With a limit per index, the Job-wide limit is off unless it is given.
    let per_index = spec.get("backoffLimitPerIndex").is_some_and(|v| !v.is_null());
    or_default(spec, "backoffLimit", json!(if per_index { i32::MAX } else { 6 }));
    or_default(spec, "completionMode", json!("NonIndexed"));
    or_default(spec, "suspend", json!(false));
    // A pod failure policy judges pods once they have failed, so only Failed pods are
    // replaced under one.
    let replacement = if spec.get("podFailurePolicy").is_some_and(|v| !v.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    or_default(spec, "podReplacementPolicy", json!(replacement));
    default_template(spec);
}

/// A Job selects its pods by its uid (unless `manualSelector`): the labels Kubernetes
/// puts on the template and the selector matching them.
pub(crate) fn job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == true || !job["spec"].is_object() {
        return;
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let Some(template) = job["spec"].get_mut("template").filter(|t| t.is_object()) else {
        return;
    };
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[key] = json!(value);
    }
    if job["spec"].get("selector").is_none_or(Value::is_null) {
        job["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
}

/// The pod template of a workload spec, when it has one.
fn default_template(spec: &mut Value) {
    if let Some(pod) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        default_pod_spec(pod);
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for (key, value) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
    ] {
        or_default(spec, key, value);
    }
    for field in ["initContainers", "containers"] {
        for c in spec.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten() {
            // (Entries that are not objects are validation's to refuse.)
            if !c.is_object() {
                continue;
            }
            if c.get("imagePullPolicy").is_none() {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let tag = image.rsplit('/').next().unwrap_or("");
                let latest =
                    !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
                c["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
            }
            or_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            or_default(c, "terminationMessagePolicy", json!("File"));
            or_default(c, "resources", json!({}));
            for port in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                or_default(port, "protocol", json!("TCP"));
            }
        }
    }
}

/// A pod's container that limits a resource and does not request it requests its limit
/// (Kubernetes defaults Pods so, not their templates): the scheduler counts requests,
/// and an extended resource such as a device is given only in limits.
fn requests_from_limits(spec: &mut Value) {
    for field in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(resources) = c.get_mut("resources").filter(|r| r.is_object()) else {
                continue;
            };
            let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
                continue;
            };
            if limits.is_empty() {
                continue;
            }
            if !resources.get("requests").is_some_and(Value::is_object) {
                resources["requests"] = json!({});
            }
            if let Some(requests) = resources.get_mut("requests").and_then(Value::as_object_mut) {
                for (name, limit) in limits {
                    requests.entry(name).or_insert(limit);
                }
            }
        }
    }
}

/// A pod's quality of service: Guaranteed when every container limits CPU and memory and
/// requests what it limits, BestEffort when nothing asks or limits, Burstable otherwise.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let (requests, limits) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        let set = |m: &Value| m.as_object().is_some_and(|o| !o.is_empty());
        any |= set(requests) || set(limits);
        for resource in ["cpu", "memory"] {
            let limit = &limits[resource];
            // A missing request defaults to the limit.
            let request = if requests[resource].is_null() { limit } else { &requests[resource] };
            if limit.is_null() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Kubernetes' validation of the fields clients most often get wrong, on create and
/// update: required fields, selectors that must select their template, data keys.
pub fn validate(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    let name = name_of(object).to_owned();
    let invalid =
        |field: &str, message: &str| Err(ApiError::invalid(resource, &name, field, message));
    if let Some(custom) = crate::crd::lookup(resource) {
        let problems = crate::crd::validate(&custom.schema, object);
        return if problems.is_empty() {
            Ok(())
        } else {
            Err(invalid_all(resource, &name, &problems))
        };
    }
    match resource.kind {
        "CustomResourceDefinition" => {
            crate::crd::validate_definition(object)
                .map_err(|(f, m)| ApiError::invalid(resource, &name, &f, &m))?;
            let group = object["spec"]["group"].as_str().unwrap_or("");
            if crate::resources::RESOURCES.iter().any(|r| r.group == group) {
                return invalid(
                    "spec.group",
                    &format!(
                        "Invalid value: {group:?}: the group is served by the API server itself"
                    ),
                );
            }
        }
        "PodDisruptionBudget" => {
            let spec = &object["spec"];
            let set = |f: &str| !spec[f].is_null();
            if set("minAvailable") && set("maxUnavailable") {
                return invalid(
                    "spec",
                    "Invalid value: minAvailable and maxUnavailable cannot be both set",
                );
            }
            for field in ["minAvailable", "maxUnavailable"] {
                let ok = match &spec[field] {
                    Value::Null => true,
                    Value::Number(n) => n.as_i64().is_some_and(|n| n >= 0),
                    Value::String(p) => p
                        .strip_suffix('%')
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n <= 100),
                    _ => false,
                };
                if !ok {
                    return invalid(
                        &format!("spec.{field}"),
                        &format!("Invalid value: {}: must be a non-negative integer or a percentage between 0% and 100%", spec[field]),
                    );
                }
            }
            if let Some(policy) = spec["unhealthyPodEvictionPolicy"].as_str() {
                if !matches!(policy, "IfHealthyBudget" | "AlwaysAllow") {
                    return invalid("spec.unhealthyPodEvictionPolicy", &format!("Unsupported value: {policy:?}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""));
                }
            }
        }
        "ResourceQuota" => {
            crate::quota::validate_scopes(object)
                .map_err(|(f, m)| ApiError::invalid(resource, &name, &f, &m))?;
        }
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                for key in object[field].as_object().into_iter().flatten().map(|(k, _)| k) {
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        return invalid(&format!("{field}[{key}]"), &format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
                    }
                }
            }
        }
        "Pod" => validate_pod_spec(&object["spec"], "spec")
            .map_err(|(f, m)| ApiError::invalid(resource, &name, &f, &m))?,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            validate_workload(resource.kind, &object["spec"], "spec")
                .map_err(|(f, m)| ApiError::invalid(resource, &name, &f, &m))?;
        }
        "CronJob" => {
            let spec = &object["spec"];
            match spec["schedule"].as_str().filter(|s| !s.is_empty()) {
                None => return invalid("spec.schedule", "Required value"),
                Some(schedule) => {
                    if let Err(err) = crate::cron::Schedule::parse(schedule) {
                        return invalid(
                            "spec.schedule",
                            &format!("Invalid value: {schedule:?}: {err}"),
                        );
                    }
                }
            }
            if let Some(policy) = spec["concurrencyPolicy"].as_str() {
                if !matches!(policy, "Allow" | "Forbid" | "Replace") {
                    return invalid("spec.concurrencyPolicy", &format!("Unsupported value: {policy:?}: supported values: \"Allow\", \"Forbid\", \"Replace\""));
                }
            }
            validate_workload("Job", &spec["jobTemplate"]["spec"], "spec.jobTemplate.spec")
                .map_err(|(f, m)| ApiError::invalid(resource, &name, &f, &m))?;
        }
        "HorizontalPodAutoscaler" => {
            let spec = &object["spec"];
            for field in ["kind", "name"] {
                if spec["scaleTargetRef"][field].as_str().is_none_or(str::is_empty) {
                    return invalid(&format!("spec.scaleTargetRef.{field}"), "Required value");
                }
            }
            let min = spec["minReplicas"].as_i64().unwrap_or(1);
            let max = spec["maxReplicas"].as_i64().unwrap_or(0);
            if min < 1 {
                return invalid(
                    "spec.minReplicas",
                    &format!("Invalid value: {min}: must be greater than or equal to 1"),
                );
            }
            if max < min {
                return invalid(
                    "spec.maxReplicas",
                    &format!(
                        "Invalid value: {max}: must be greater than or equal to `minReplicas`"
                    ),
                );
            }
        }
        "Service" => {
            let kind = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
            let ports = object["spec"]["ports"].as_array();
            if kind != "ExternalName"
                && object["spec"]["clusterIP"] != "None"
                && ports.is_none_or(|p| p.is_empty())
            {
                return invalid("spec.ports", "Required value");
            }
            for (i, port) in ports.into_iter().flatten().enumerate() {
                let number = port["port"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&number) {
                    return invalid(
                        &format!("spec.ports[{i}].port"),
                        &format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
                    );
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every problem of an object at once, as Kubernetes reports a list of field errors:
/// `Kind.group "name" is invalid: [a: ..., b: ...]` (no brackets for one).
pub fn invalid_all(resource: &Resource, name: &str, problems: &[crate::crd::Problem]) -> ApiError {
    let texts: Vec<String> =
        problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect();
    let list = if texts.len() == 1 { texts[0].clone() } else { format!("[{}]", texts.join(", ")) };
    let mut error = ApiError::new(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {list}", berth_api::status::kind_of(resource)),
    );
    error.details = json!({"name": name, "group": resource.group, "kind": resource.kind,
        "causes": problems.iter().map(|p| json!({"reason": p.reason, "message": p.message, "field": p.field})).collect::<Vec<_>>()});
    error
}

fn validate_pod_spec(spec: &Value, at: &str) -> Result<(), (String, String)> {
    let Some(containers) = spec["containers"].as_array().filter(|c| !c.is_empty()) else {
        return Err((format!("{at}.containers"), "Required value".into()));
    };
    // Volume names are DNS labels (they name directories on the node).
    for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = volume["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err((format!("{at}.volumes[{i}].name"), "Required value".into()));
        }
        if let Some(problem) = dns_label_problem(name) {
            return Err((
                format!("{at}.volumes[{i}].name"),
                format!("Invalid value: {name:?}: {problem}"),
            ));
        }
    }
    // Ephemeral containers given at creation: names are DNS labels (they name
    // directories on the node) and, as Kubernetes says, no subPath.
    for (i, c) in spec["ephemeralContainers"].as_array().into_iter().flatten().enumerate() {
        ephemeral_container_problem(c).map_or(Ok(()), |(field, message)| {
            Err((format!("{at}.ephemeralContainers[{i}].{field}"), message))
        })?;
    }
    let mut seen = std::collections::BTreeSet::new();
    let init =
        spec["initContainers"].as_array().into_iter().flatten().map(|c| ("initContainers", c));
    for (i, (field, c)) in
        init.enumerate().chain(containers.iter().map(|c| ("containers", c)).enumerate())
    {
        let Some(container) = c["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err((format!("{at}.{field}[{i}].name"), "Required value".into()));
        };
        if let Some(problem) = dns_label_problem(container) {
            return Err((
                format!("{at}.{field}[{i}].name"),
                format!("Invalid value: {container:?}: {problem}"),
            ));
        }
        if !seen.insert(container.to_owned()) {
            return Err((
                format!("{at}.{field}[{i}].name"),
                format!("Duplicate value: {container:?}"),
            ));
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            return Err((format!("{at}.{field}[{i}].image"), "Required value".into()));
        }
        // Requests and limits are quantities, never negative, a request never above its
        // limit.
        for kind in ["requests", "limits"] {
            for (resource, value) in c["resources"][kind].as_object().into_iter().flatten() {
                let text = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
                let at = format!("{at}.{field}[{i}].resources.{kind}[{resource}]");
                match berth_api::quantity::parse_milli(&text) {
                    None => {
                        return Err((at, format!("Invalid value: {text:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")))
                    }
                    Some(n) if n < 0 => {
                        return Err((at, format!("Invalid value: {text:?}: must be greater than or equal to 0")))
                    }
                    // Devices and other extended resources come whole.
                    Some(n) if extended_resource(resource) && n % 1000 != 0 => {
                        return Err((at, format!("Invalid value: {text:?}: must be an integer")))
                    }
                    Some(_) => {}
                }
            }
        }
        for (resource, request) in c["resources"]["requests"].as_object().into_iter().flatten() {
            let amount = |v: &Value| {
                berth_api::quantity::parse_milli(
                    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()).as_str(),
                )
            };
            let limit = c["resources"]["limits"].get(resource).and_then(amount);
            if extended_resource(resource) {
                // Never overcommitted: a limit, and a request equal to it.
                match limit {
                    None => {
                        return Err((
                            format!("{at}.{field}[{i}].resources.limits[{resource}]"),
                            "Required value: Limit must be set for non overcommitable resources"
                                .into(),
                        ))
                    }
                    Some(limit) if amount(request) != Some(limit) => {
                        return Err((
                            format!("{at}.{field}[{i}].resources.requests[{resource}]"),
                            format!(
                                "Invalid value: {:?}: must be equal to {resource} limit of {}",
                                request.as_str().unwrap_or(""),
                                c["resources"]["limits"][resource].as_str().unwrap_or("")
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let (Some(wanted), Some(limit)) = (amount(request), limit) {
                if wanted > limit {
                    return Err((
                        format!("{at}.{field}[{i}].resources.requests"),
                        format!("Invalid value: {:?}: must be less than or equal to {resource} limit of {}", request.as_str().unwrap_or(""), c["resources"]["limits"][resource].as_str().unwrap_or("")),
                    ));
                }
            }
        }
        for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
            let number = port["containerPort"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&number) {
                return Err((
                    format!("{at}.{field}[{i}].ports[{j}].containerPort"),
                    format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
                ));
            }
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str() {
        if !matches!(policy, "Always" | "OnFailure" | "Never") {
            return Err((
                format!("{at}.restartPolicy"),
                format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
    Ok(())
}

/// Whether a resource name is an extended resource (a device, or anything a cluster
/// adds): a name with a domain that is not Kubernetes' own, as `example.com/dev`; those
/// are counted in whole units and never overcommitted.
fn extended_resource(name: &str) -> bool {
    match name.split_once('/') {
        Some((domain, _)) => {
            domain != "kubernetes.io"
                && !domain.ends_with(".kubernetes.io")
                && !name.starts_with("requests.")
        }
        None => false,
    }
}

/// Why `name` is not an RFC 1123 label (what container and port names must be), if it is not.
/// What is wrong with an ephemeral container's name or mounts: the field under it and the
/// message, as the API says it.
pub(crate) fn ephemeral_container_problem(c: &Value) -> Option<(String, String)> {
    let name = c["name"].as_str().unwrap_or("");
    if name.is_empty() {
        return Some(("name".into(), "Required value".into()));
    }
    if let Some(problem) = dns_label_problem(name) {
        return Some(("name".into(), format!("Invalid value: {name:?}: {problem}")));
    }
    for (j, mount) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
        for field in ["subPath", "subPathExpr"] {
            if mount[field].as_str().is_some_and(|s| !s.is_empty()) {
                return Some((
                    format!("volumeMounts[{j}].{field}"),
                    "Forbidden: cannot be set for an Ephemeral Container".into(),
                ));
            }
        }
    }
    None
}

fn dns_label_problem(name: &str) -> Option<&'static str> {
    let ok = name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then_some("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
}

/// The spec of a pod-template workload: a selector that selects the template, counts that
/// are not negative, the restart policies the kind allows, and the pod spec itself.
fn validate_workload(kind: &str, spec: &Value, at: &str) -> Result<(), (String, String)> {
    for field in ["replicas", "parallelism", "completions", "backoffLimit", "minReadySeconds"] {
        if let Some(n) = spec[field].as_i64().filter(|n| *n < 0) {
            return Err((
                format!("{at}.{field}"),
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
    }
    let selector = &spec["selector"];
    let labels = spec["template"]["metadata"]["labels"].as_object();
    if kind != "Job" || spec["manualSelector"] == true || !selector.is_null() {
        if selector.as_object().is_none_or(|s| s.is_empty()) {
            return Err((format!("{at}.selector"), "Required value".into()));
        }
        let parsed = crate::selector::LabelSelector::from_object(selector)
            .map_err(|e| (format!("{at}.selector"), format!("Invalid value: {e}")))?;
        if parsed.requirements.is_empty() {
            return Err((
                format!("{at}.selector"),
                "Invalid value: empty selector is invalid for deployment".into(),
            ));
        }
        if !parsed.matches(labels) {
            return Err((
                format!("{at}.template.metadata.labels"),
                "Invalid value: selector does not match template labels".into(),
            ));
        }
    }
    let template_spec = &spec["template"]["spec"];
    if !template_spec.is_object() {
        return Err((format!("{at}.template.spec.containers"), "Required value".into()));
    }
    validate_pod_spec(template_spec, &format!("{at}.template.spec"))?;
    let policy = template_spec["restartPolicy"].as_str().unwrap_or("Always");
    let (allowed, words): (&[&str], &str) = match kind {
        "Job" => (&["OnFailure", "Never"], "\"OnFailure\", \"Never\""),
        _ => (&["Always"], "\"Always\""),
    };
    if !allowed.contains(&policy) {
        return Err((
            format!("{at}.template.spec.restartPolicy"),
            format!("Unsupported value: {policy:?}: supported values: {words}"),
        ));
    }
    if kind == "StatefulSet" {
        if let Some(policy) = spec["podManagementPolicy"].as_str() {
            if !matches!(policy, "OrderedReady" | "Parallel") {
                return Err((
                    format!("{at}.podManagementPolicy"),
                    format!("Unsupported value: {policy:?}: supported values: \"OrderedReady\", \"Parallel\""),
                ));
            }
        }
    }
    Ok(())
}

/// What only a new object is checked for: rules berth came to enforce after objects
/// that break them could be stored (an update of those, a finalizer removed or a label
/// changed, must still pass). The fields they look at do not change after creation.
pub fn validate_create(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    let name = name_of(object).to_owned();
    let checked = match resource.kind {
        "Job" => validate_job_spec(&object["spec"], "spec"),
        "CronJob" => {
            validate_job_spec(&object["spec"]["jobTemplate"]["spec"], "spec.jobTemplate.spec")
        }
        _ => Ok(()),
    };
    checked.map_err(|(f, m)| ApiError::invalid(resource, &name, &f, &m))
}

/// What a Job's spec adds to a workload's: the per-index back-off limits, which only an
/// Indexed Job has, and a pod failure policy's rules.
fn validate_job_spec(spec: &Value, at: &str) -> Result<(), (String, String)> {
    let invalid = |field: &str, message: String| Err((format!("{at}.{field}"), message));
    for field in ["backoffLimitPerIndex", "maxFailedIndexes", "activeDeadlineSeconds"] {
        if let Some(n) = spec[field].as_i64().filter(|n| *n < 0) {
            return invalid(
                field,
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            );
        }
    }
    let per_index = spec["backoffLimitPerIndex"].as_i64();
    let max_failed = spec["maxFailedIndexes"].as_i64();
    let indexed = spec["completionMode"] == "Indexed";
    if let Some(mode) = spec["completionMode"].as_str() {
        if !matches!(mode, "Indexed" | "NonIndexed") {
            return invalid(
                "completionMode",
                format!(
                    "Unsupported value: {mode:?}: supported values: \"Indexed\", \"NonIndexed\""
                ),
            );
        }
    }
    if max_failed.is_some() && per_index.is_none() {
        return invalid(
            "backoffLimitPerIndex",
            "Required value: when maxFailedIndexes is specified".into(),
        );
    }
    if indexed {
        if spec["completions"].is_null() {
            return invalid(
                "completions",
                "Required value: when completion mode is Indexed".into(),
            );
        }
        if let (Some(max), Some(completions)) = (max_failed, spec["completions"].as_i64()) {
            if max > completions {
                return invalid(
                    "maxFailedIndexes",
                    format!("Invalid value: {max}: must be less than or equal to completions"),
                );
            }
        }
    } else {
        if let Some(n) = per_index {
            return invalid(
                "backoffLimitPerIndex",
                format!("Invalid value: {n}: requires indexed completion mode"),
            );
        }
        if let Some(n) = max_failed {
            return invalid(
                "maxFailedIndexes",
                format!("Invalid value: {n}: requires indexed completion mode"),
            );
        }
    }
    if spec["podFailurePolicy"].is_null() {
        return Ok(());
    }
    let rules = spec["podFailurePolicy"]["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for (i, rule) in rules.iter().enumerate() {
        let action = rule["action"].as_str().unwrap_or("");
        let path = format!("podFailurePolicy.rules[{i}]");
        match action {
            "" => return invalid(&format!("{path}.action"), "Required value: valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]".into()),
            "FailIndex" if per_index.is_none() => {
                return invalid(&format!("{path}.action"), "Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set".into())
            }
            "Count" | "FailIndex" | "FailJob" | "Ignore" => {}
            other => return invalid(&format!("{path}.action"), format!("Unsupported value: {other:?}: supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"")),
        }
        let exit_codes = !rule["onExitCodes"].is_null();
        let conditions = rule["onPodConditions"].as_array().is_some_and(|c| !c.is_empty());
        if exit_codes == conditions {
            let what = if exit_codes {
                "specifying both OnExitCodes and OnPodConditions is not supported"
            } else {
                "specifying one of OnExitCodes and OnPodConditions is required"
            };
            return invalid(&path, format!("Invalid value: \"object\": {what}"));
        }
    }
    let policy = spec["template"]["spec"]["restartPolicy"].as_str().unwrap_or("");
    if policy != "Never" {
        return invalid("template.spec.restartPolicy", format!("Invalid value: {policy:?}: only \"Never\" is supported when podFailurePolicy is specified"));
    }
    if let Some(replacement) = spec["podReplacementPolicy"].as_str().filter(|p| *p != "Failed") {
        return invalid(
            "podReplacementPolicy",
            format!("Unsupported value: {replacement:?}: supported values: \"Failed\""),
        );
    }
    Ok(())
}

/// Fields an update may not change.
pub fn validate_update(resource: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = name_of(new).to_owned();
    let immutable =
        |field: &str| Err(ApiError::invalid(resource, &name, field, "field is immutable"));
    match resource.kind {
        "ConfigMap" | "Secret"
            if old["immutable"] == true
                && (old["data"] != new["data"]
                    || old["binaryData"] != new["binaryData"]
                    || new["immutable"] != true) =>
        {
            return Err(ApiError::invalid(
                resource,
                &name,
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
        "Service"
            if old["spec"]["clusterIP"] != new["spec"]["clusterIP"]
                && !new["spec"]["clusterIP"].is_null() =>
        {
            return immutable("spec.clusterIPs[0]");
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job"
            if old["spec"]["selector"] != new["spec"]["selector"] =>
        {
            return immutable("spec.selector");
        }
        // A node's pod range is given once: other nodes route it there.
        "Node"
            if old["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty())
                && old["spec"]["podCIDR"] != new["spec"]["podCIDR"] =>
        {
            return Err(ApiError::invalid(
                resource,
                &name,
                "spec.podCIDR",
                "Forbidden: node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The TARGETS of `kubectl get hpa`: each metric's current value over its target (`cpu:
/// 12%/80%`), the first two and a count of the rest. A v1 autoscaler's CPU percentage is
/// shown as the v2 metric it stands for.
pub fn hpa_targets(hpa: &Value) -> String {
    let mut specs = hpa["spec"]["metrics"].as_array().cloned().unwrap_or_default();
    let mut statuses = hpa["status"]["currentMetrics"].as_array().cloned().unwrap_or_default();
    if let Some(percent) = hpa["spec"]["targetCPUUtilizationPercentage"].as_i64() {
        specs = vec![
            json!({"type": "Resource", "resource": {"name": "cpu", "target": {"averageUtilization": percent}}}),
        ];
        statuses = match hpa["status"]["currentCPUUtilizationPercentage"].as_i64() {
            Some(now) => vec![json!({"resource": {"current": {"averageUtilization": now}}})],
            None => Vec::new(),
        };
    }
    if specs.is_empty() {
        return "<none>".into();
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let shown: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i).unwrap_or(&Value::Null);
            let unknown = || "<unknown>".to_owned();
            let current = |source: &str, field: &str| {
                status[source]["current"]
                    .get(field)
                    .filter(|v| !v.is_null())
                    .map(text)
                    .unwrap_or_else(unknown)
            };
            match spec["type"].as_str().unwrap_or("") {
                kind @ ("Resource" | "ContainerResource") => {
                    let source = if kind == "Resource" { "resource" } else { "containerResource" };
                    let metric = &spec[source];
                    let name = metric["name"].as_str().unwrap_or("");
                    if let Some(value) =
                        metric["target"].get("averageValue").filter(|v| !v.is_null())
                    {
                        format!("{name}: {}/{}", current(source, "averageValue"), text(value))
                    } else {
                        let now = status[source]["current"]["averageUtilization"]
                            .as_i64()
                            .map_or_else(unknown, |p| format!("{p}%"));
                        let target = metric["target"]["averageUtilization"]
                            .as_i64()
                            .map_or_else(|| "<auto>".to_owned(), |p| format!("{p}%"));
                        format!("{name}: {now}/{target}")
                    }
                }
                "Pods" => format!(
                    "{}/{}",
                    current("pods", "averageValue"),
                    text(&spec["pods"]["target"]["averageValue"])
                ),
                kind @ ("Object" | "External") => {
                    let source = if kind == "Object" { "object" } else { "external" };
                    let target = &spec[source]["target"];
                    match target.get("averageValue").filter(|v| !v.is_null()) {
                        Some(average) => {
                            format!("{}/{} (avg)", current(source, "averageValue"), text(average))
                        }
                        None => format!("{}/{}", current(source, "value"), text(&target["value"])),
                    }
                }
                _ => "<unknown type>".to_owned(),
            }
        })
        .collect();
    match shown.len() {
        0..=2 => shown.join(", "),
        n => format!("{} + {} more...", shown[..2].join(", "), n - 2),
    }
}

/// What `kubectl get pods` shows as STATUS: the phase, unless a reason, an init
/// container's progress, a container's waiting or terminated reason, or deletion says more.
pub fn pod_status(pod: &Value) -> String {
    let status = &pod["status"];
    let mut reason =
        status["reason"].as_str().or_else(|| status["phase"].as_str()).unwrap_or("").to_owned();
    let exit = |terminated: &Value| -> String {
        match (terminated["reason"].as_str(), terminated["signal"].as_i64()) {
            (Some(r), _) if !r.is_empty() => r.to_owned(),
            (_, Some(signal)) if signal != 0 => format!("Signal:{signal}"),
            _ => format!("ExitCode:{}", terminated["exitCode"].as_i64().unwrap_or(0)),
        }
    };
    let inits = status["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    let init_total = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let terminated = &c["state"]["terminated"];
        if terminated.is_object() && terminated["exitCode"].as_i64() == Some(0) {
            continue;
        }
        initializing = true;
        reason = if terminated.is_object() {
            format!("Init:{}", exit(terminated))
        } else if let Some(waiting) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut running = false;
        let containers = status["containerStatuses"].as_array().cloned().unwrap_or_default();
        for c in containers.iter().rev() {
            let state = &c["state"];
            if let Some(waiting) = state["waiting"]["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = waiting.to_owned();
            } else if state["terminated"].is_object() {
                reason = exit(&state["terminated"]);
            } else if state["running"].is_object() && c["ready"] == true {
                running = true;
            }
        }
        if reason == "Completed" && running {
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if ready { "Running" } else { "NotReady" }.to_owned();
        }
    }
    if pod["metadata"].get("deletionTimestamp").is_some_and(|d| !d.is_null()) {
        reason = if status["reason"] == "NodeLost" { "Unknown" } else { "Terminating" }.to_owned();
    }
    reason
}

type Cell = fn(&Value) -> Value;

/// A column of `kubectl get`: its name, type, priority (1: only with `-o wide`) and cell.
struct Column(&'static str, &'static str, u8, Cell);

fn s(v: &Value) -> Value {
    v.as_str().map(|t| json!(t)).unwrap_or(json!("<none>"))
}

/// A budget's count or percentage as kubectl prints it (`N/A` when unset).
fn budget(v: &Value) -> Value {
    match v {
        Value::Null => json!("N/A"),
        Value::String(text) => json!(text),
        other => json!(other.to_string()),
    }
}

fn count(v: &Value) -> usize {
    v.as_object().map(|o| o.len()).or_else(|| v.as_array().map(Vec::len)).unwrap_or(0)
}

fn join(values: impl Iterator<Item = String>) -> Value {
    let list: Vec<String> = values.filter(|v| !v.is_empty()).collect();
    if list.is_empty() {
        json!("<none>")
    } else {
        json!(list.join(","))
    }
}

fn selector_text(v: &Value) -> Value {
    join(
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))),
    )
}

fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

fn name_cell(item: &Value) -> Value {
    json!(name_of(item))
}

fn age_cell(item: &Value) -> Value {
    json!(age(item["metadata"]["creationTimestamp"].as_str().unwrap_or("")))
}

fn created_at(item: &Value) -> Value {
    item["metadata"]["creationTimestamp"].clone()
}

/// A duration as kubectl prints one (`10m`, `24h`, `365d`).
fn humane_duration(seconds: i64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A ResourceQuota's `used/hard` pairs as kubectl prints them: limits.* under LIMIT, the
/// rest under REQUEST.
fn quota_cells(quota: &Value, limits: bool) -> Value {
    let used = &quota["status"]["used"];
    join(
        quota["spec"]["hard"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("limits.") == limits)
            .map(|(k, hard)| {
                format!(
                    "{k}: {}/{}",
                    used[k].as_str().unwrap_or("0"),
                    hard.as_str().map(str::to_owned).unwrap_or_else(|| hard.to_string())
                )
            }),
    )
}

fn ports_text(ports: &Value) -> Value {
    join(ports.as_array().into_iter().flatten().map(|p| {
        let node = p["nodePort"].as_i64().map(|n| format!(":{n}")).unwrap_or_default();
        format!("{}{node}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
    }))
}

/// The columns Kubernetes' printers give each kind (names as `kubectl get` shows them).
fn columns(kind: &str) -> Vec<Column> {
    let name = Column("Name", "string", 0, name_cell);
    let age_column = Column("Age", "string", 0, age_cell);
    match kind {
        "Namespace" => {
            vec![name, Column("Status", "string", 0, |i| i["status"]["phase"].clone()), age_column]
        }
        "ConfigMap" => vec![
            name,
            Column("Data", "integer", 0, |i| json!(count(&i["data"]) + count(&i["binaryData"]))),
            age_column,
        ],
        "Secret" => vec![
            name,
            Column("Type", "string", 0, |i| i["type"].clone()),
            Column("Data", "integer", 0, |i| json!(count(&i["data"]))),
            age_column,
        ],
        "ServiceAccount" => {
            vec![name, Column("Secrets", "integer", 0, |i| json!(count(&i["secrets"]))), age_column]
        }
        "Pod" => vec![
            name,
            Column("Ready", "string", 0, |i| {
                let total = count(&i["spec"]["containers"]);
                let ready = i["status"]["containerStatuses"]
                    .as_array()
                    .map(|c| c.iter().filter(|c| c["ready"] == true).count())
                    .unwrap_or(0);
                json!(format!("{ready}/{total}"))
            }),
            Column("Status", "string", 0, |i| json!(pod_status(i))),
            Column("Restarts", "string", 0, |i| {
                json!(i["status"]["containerStatuses"]
                    .as_array()
                    .map(|c| c.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum::<i64>())
                    .unwrap_or(0)
                    .to_string())
            }),
            age_column,
            Column("IP", "string", 1, |i| s(&i["status"]["podIP"])),
            Column("Node", "string", 1, |i| s(&i["spec"]["nodeName"])),
            Column("Nominated Node", "string", 1, |i| s(&i["status"]["nominatedNodeName"])),
            Column("Readiness Gates", "string", 1, |i| {
                join(
                    i["spec"]["readinessGates"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|g| g["conditionType"].as_str().unwrap_or("").to_owned()),
                )
            }),
        ],
        "Service" => vec![
            name,
            Column("Type", "string", 0, |i| {
                json!(i["spec"]["type"].as_str().unwrap_or("ClusterIP"))
            }),
            Column("Cluster-IP", "string", 0, |i| s(&i["spec"]["clusterIP"])),
            Column("External-IP", "string", 0, |i| {
                join(
                    i["spec"]["externalIPs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned)),
                )
            }),
            Column("Port(s)", "string", 0, |i| ports_text(&i["spec"]["ports"])),
            age_column,
            Column("Selector", "string", 1, |i| selector_text(&i["spec"]["selector"])),
        ],
        "Endpoints" => vec![
            name,
            Column("Endpoints", "string", 0, |i| {
                join(i["subsets"].as_array().into_iter().flatten().flat_map(|sub| {
                    let ports: Vec<i64> = sub["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_i64())
                        .collect();
                    sub["addresses"].as_array().cloned().unwrap_or_default().into_iter().flat_map(
                        move |a| {
                            let ip = a["ip"].as_str().unwrap_or("").to_owned();
                            ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                        },
                    )
                }))
            }),
            age_column,
        ],
        "Node" => vec![
            name,
            Column("Status", "string", 0, |i| {
                let ready = i["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready");
                let mut status = match ready.map(|c| c["status"].as_str().unwrap_or("")) {
                    Some("True") => "Ready".to_owned(),
                    _ => "NotReady".to_owned(),
                };
                if i["spec"]["unschedulable"] == true {
                    status.push_str(",SchedulingDisabled");
                }
                json!(status)
            }),
            Column("Roles", "string", 0, |i| {
                join(i["metadata"]["labels"].as_object().into_iter().flatten().filter_map(
                    |(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned),
                ))
            }),
            age_column,
            Column("Version", "string", 0, |i| {
                json!(i["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or(""))
            }),
            Column("Internal-IP", "string", 1, |i| {
                join(
                    i["status"]["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|a| a["type"] == "InternalIP")
                        .map(|a| a["address"].as_str().unwrap_or("").to_owned()),
                )
            }),
            Column("OS-Image", "string", 1, |i| s(&i["status"]["nodeInfo"]["osImage"])),
            Column("Kernel-Version", "string", 1, |i| s(&i["status"]["nodeInfo"]["kernelVersion"])),
            Column("Container-Runtime", "string", 1, |i| {
                s(&i["status"]["nodeInfo"]["containerRuntimeVersion"])
            }),
        ],
        "Event" => vec![
            Column("Last Seen", "string", 0, |i| {
                json!(super::objects::age(
                    i["lastTimestamp"]
                        .as_str()
                        .or(i["eventTime"].as_str())
                        .or(i["metadata"]["creationTimestamp"].as_str())
                        .unwrap_or("")
                ))
            }),
            Column("Type", "string", 0, |i| i["type"].clone()),
            Column("Reason", "string", 0, |i| i["reason"].clone()),
            Column("Object", "string", 0, |i| {
                json!(format!(
                    "{}/{}",
                    i["involvedObject"]["kind"].as_str().unwrap_or("").to_lowercase(),
                    i["involvedObject"]["name"].as_str().unwrap_or("")
                ))
            }),
            Column("Message", "string", 0, |i| i["message"].clone()),
        ],
        "PersistentVolume" => vec![
            name,
            Column("Capacity", "string", 0, |i| s(&i["spec"]["capacity"]["storage"])),
            Column("Access Modes", "string", 0, |i| access_modes(&i["spec"]["accessModes"])),
            Column("Reclaim Policy", "string", 0, |i| {
                json!(i["spec"]["persistentVolumeReclaimPolicy"].as_str().unwrap_or("Retain"))
            }),
            Column("Status", "string", 0, |i| i["status"]["phase"].clone()),
            Column("Claim", "string", 0, |i| {
                json!(i["spec"]["claimRef"]["name"]
                    .as_str()
                    .map(|n| format!(
                        "{}/{n}",
                        i["spec"]["claimRef"]["namespace"].as_str().unwrap_or("")
                    ))
                    .unwrap_or_default())
            }),
            Column("StorageClass", "string", 0, |i| {
                json!(i["spec"]["storageClassName"].as_str().unwrap_or(""))
            }),
            Column("VolumeAttributesClass", "string", 0, |i| {
                s(&i["spec"]["volumeAttributesClassName"])
            }),
            Column("Reason", "string", 0, |i| json!(i["status"]["reason"].as_str().unwrap_or(""))),
            age_column,
        ],
        "PersistentVolumeClaim" => vec![
            name,
            Column("Status", "string", 0, |i| i["status"]["phase"].clone()),
            Column("Volume", "string", 0, |i| {
                json!(i["spec"]["volumeName"].as_str().unwrap_or(""))
            }),
            Column("Capacity", "string", 0, |i| {
                json!(i["status"]["capacity"]["storage"].as_str().unwrap_or(""))
            }),
            Column("Access Modes", "string", 0, |i| access_modes(&i["status"]["accessModes"])),
            Column("StorageClass", "string", 0, |i| s(&i["spec"]["storageClassName"])),
            Column("VolumeAttributesClass", "string", 0, |i| {
                s(&i["spec"]["volumeAttributesClassName"])
            }),
            age_column,
        ],
        "Deployment" => vec![
            name,
            Column("Ready", "string", 0, |i| {
                json!(format!(
                    "{}/{}",
                    i["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    i["spec"]["replicas"].as_i64().unwrap_or(1)
                ))
            }),
            Column("Up-to-date", "integer", 0, |i| int(&i["status"]["updatedReplicas"])),
            Column("Available", "integer", 0, |i| int(&i["status"]["availableReplicas"])),
            age_column,
            Column("Containers", "string", 1, |i| containers(i, "name")),
            Column("Images", "string", 1, |i| containers(i, "image")),
            Column("Selector", "string", 1, |i| {
                selector_text(&i["spec"]["selector"]["matchLabels"])
            }),
        ],
        "ReplicaSet" => vec![
            name,
            Column("Desired", "integer", 0, |i| json!(i["spec"]["replicas"].as_i64().unwrap_or(1))),
            Column("Current", "integer", 0, |i| int(&i["status"]["replicas"])),
            Column("Ready", "integer", 0, |i| int(&i["status"]["readyReplicas"])),
            age_column,
            Column("Containers", "string", 1, |i| containers(i, "name")),
            Column("Images", "string", 1, |i| containers(i, "image")),
            Column("Selector", "string", 1, |i| {
                selector_text(&i["spec"]["selector"]["matchLabels"])
            }),
        ],
        "DaemonSet" => vec![
            name,
            Column("Desired", "integer", 0, |i| int(&i["status"]["desiredNumberScheduled"])),
            Column("Current", "integer", 0, |i| int(&i["status"]["currentNumberScheduled"])),
            Column("Ready", "integer", 0, |i| int(&i["status"]["numberReady"])),
            Column("Up-to-date", "integer", 0, |i| int(&i["status"]["updatedNumberScheduled"])),
            Column("Available", "integer", 0, |i| int(&i["status"]["numberAvailable"])),
            Column("Node Selector", "string", 0, |i| {
                selector_text(&i["spec"]["template"]["spec"]["nodeSelector"])
            }),
            age_column,
        ],
        "PodDisruptionBudget" => vec![
            name,
            Column("Min Available", "string", 0, |i| budget(&i["spec"]["minAvailable"])),
            Column("Max Unavailable", "string", 0, |i| budget(&i["spec"]["maxUnavailable"])),
            Column("Allowed Disruptions", "integer", 0, |i| {
                json!(i["status"]["disruptionsAllowed"].as_i64().unwrap_or(0))
            }),
            age_column,
        ],
        "StatefulSet" => vec![
            name,
            Column("Ready", "string", 0, |i| {
                json!(format!(
                    "{}/{}",
                    i["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    i["spec"]["replicas"].as_i64().unwrap_or(1)
                ))
            }),
            age_column,
            Column("Containers", "string", 1, |i| containers(i, "name")),
            Column("Images", "string", 1, |i| containers(i, "image")),
        ],
        "ControllerRevision" => vec![
            name,
            Column("Controller", "string", 0, |i| {
                json!(i["metadata"]["ownerReferences"][0]["name"]
                    .as_str()
                    .map(|n| format!(
                        "{}/{n}",
                        i["metadata"]["ownerReferences"][0]["kind"]
                            .as_str()
                            .unwrap_or("")
                            .to_lowercase()
                    ))
                    .unwrap_or_else(|| "<none>".into()))
            }),
            Column("Revision", "integer", 0, |i| int(&i["revision"])),
            age_column,
        ],
        "Job" => vec![
            name,
            Column("Status", "string", 0, |i| {
                let done = i["status"]["conditions"].as_array().into_iter().flatten().find(|c| {
                    c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed")
                });
                json!(done.and_then(|c| c["type"].as_str()).unwrap_or("Running"))
            }),
            Column("Completions", "string", 0, |i| {
                json!(format!(
                    "{}/{}",
                    i["status"]["succeeded"].as_i64().unwrap_or(0),
                    i["spec"]["completions"].as_i64().unwrap_or(1)
                ))
            }),
            Column("Duration", "string", 0, |i| {
                json!(i["status"]["startTime"]
                    .as_str()
                    .map(super::objects::age)
                    .unwrap_or_default())
            }),
            age_column,
        ],
        "CronJob" => vec![
            name,
            Column("Schedule", "string", 0, |i| i["spec"]["schedule"].clone()),
            Column("TimeZone", "string", 0, |i| s(&i["spec"]["timeZone"])),
            Column("Suspend", "string", 0, |i| {
                json!(if i["spec"]["suspend"] == true { "True" } else { "False" })
            }),
            Column("Active", "integer", 0, |i| json!(count(&i["status"]["active"]))),
            Column("Last Schedule", "string", 0, |i| {
                s(&i["status"]["lastScheduleTime"]
                    .as_str()
                    .map(|t| json!(super::objects::age(t)))
                    .unwrap_or(Value::Null))
            }),
            age_column,
        ],
        "HorizontalPodAutoscaler" => vec![
            name,
            Column("Reference", "string", 0, |i| {
                json!(format!(
                    "{}/{}",
                    i["spec"]["scaleTargetRef"]["kind"].as_str().unwrap_or(""),
                    i["spec"]["scaleTargetRef"]["name"].as_str().unwrap_or("")
                ))
            }),
            Column("Targets", "string", 0, |i| json!(hpa_targets(i))),
            Column("MinPods", "string", 0, |i| {
                json!(i["spec"]["minReplicas"].as_i64().unwrap_or(1).to_string())
            }),
            Column("MaxPods", "integer", 0, |i| int(&i["spec"]["maxReplicas"])),
            Column("Replicas", "integer", 0, |i| int(&i["status"]["currentReplicas"])),
            age_column,
        ],
        "Lease" => vec![
            name,
            Column("Holder", "string", 0, |i| {
                json!(i["spec"]["holderIdentity"].as_str().unwrap_or(""))
            }),
            age_column,
        ],
        "EndpointSlice" => vec![
            name,
            Column("AddressType", "string", 0, |i| i["addressType"].clone()),
            Column("Ports", "string", 0, |i| {
                join(i["ports"].as_array().into_iter().flatten().map(|p| p["port"].to_string()))
            }),
            Column("Endpoints", "string", 0, |i| {
                join(
                    i["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .map(|a| a.as_str().unwrap_or("").to_owned()),
                )
            }),
            age_column,
        ],
        "APIService" => vec![
            name,
            Column("Service", "string", 0, |i| match i["spec"]["service"]["name"].as_str() {
                Some(service) => json!(format!(
                    "{}/{service}",
                    i["spec"]["service"]["namespace"].as_str().unwrap_or("")
                )),
                None => json!("Local"),
            }),
            Column("Available", "string", 0, |i| {
                let available = i["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Available");
                available.map(|c| c["status"].clone()).unwrap_or(json!("Unknown"))
            }),
            age_column,
        ],
        "CertificateSigningRequest" => vec![
            name,
            age_column,
            Column("SignerName", "string", 0, |i| i["spec"]["signerName"].clone()),
            Column("Requestor", "string", 0, |i| i["spec"]["username"].clone()),
            Column("RequestedDuration", "string", 0, |i| {
                match i["spec"]["expirationSeconds"].as_i64() {
                    Some(seconds) => json!(format!("{}", humane_duration(seconds))),
                    None => json!("<none>"),
                }
            }),
            Column("Condition", "string", 0, |i| json!(crate::csr::condition(i))),
        ],
        "ComponentStatus" => vec![
            name,
            Column("Status", "string", 0, |i| {
                let healthy = i["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Healthy" && c["status"] == "True");
                json!(if healthy { "Healthy" } else { "Unhealthy" })
            }),
            Column("Message", "string", 0, |i| i["conditions"][0]["message"].clone()),
            Column("Error", "string", 0, |i| i["conditions"][0]["error"].clone()),
        ],
        "ResourceQuota" => vec![
            name,
            age_column,
            Column("Request", "string", 0, |i| quota_cells(i, false)),
            Column("Limit", "string", 0, |i| quota_cells(i, true)),
        ],
        "Role" | "ClusterRole" | "CustomResourceDefinition" => {
            vec![name, Column("Created At", "string", 0, created_at)]
        }
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            Column("Role", "string", 0, |i| {
                json!(format!(
                    "{}/{}",
                    i["roleRef"]["kind"].as_str().unwrap_or(""),
                    i["roleRef"]["name"].as_str().unwrap_or("")
                ))
            }),
            age_column,
            Column("Users", "string", 1, |i| subjects(i, "User")),
            Column("Groups", "string", 1, |i| subjects(i, "Group")),
            Column("ServiceAccounts", "string", 1, |i| subjects(i, "ServiceAccount")),
        ],
        _ => vec![name, age_column],
    }
}

fn access_modes(v: &Value) -> Value {
    json!(v
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m.as_str().unwrap_or("") {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            _ => "",
        })
        .collect::<Vec<_>>()
        .join(","))
}

fn containers(item: &Value, field: &str) -> Value {
    join(
        item["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c[field].as_str().unwrap_or("").to_owned()),
    )
}

fn subjects(item: &Value, kind: &str) -> Value {
    json!(item["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .map(|s| match s["namespace"].as_str() {
            Some(ns) if kind == "ServiceAccount" =>
                format!("{ns}/{}", s["name"].as_str().unwrap_or("")),
            _ => s["name"].as_str().unwrap_or("").to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// The `Table` `kubectl get` prints: the kind's columns and each object's cells.
pub fn table(resource: &Resource, items: &[Value], revision: i64, include_object: bool) -> Value {
    if let Some(custom) = crate::crd::lookup(resource) {
        return crate::crd::table(&custom, items, revision, include_object);
    }
    let columns = columns(resource.kind);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|Column(name, kind, priority, _)| {
            json!({"name": name, "type": kind, "format": if *name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
        })
        .collect();
    let cells = |item: &Value| columns.iter().map(|Column(_, _, _, cell)| cell(item)).collect();
    table_of(definitions, items, cells, revision, include_object)
}

/// A `Table` of `items`: the column definitions, and a row per item of its cells and the
/// item itself (or, unless `include_object`, its metadata).
pub fn table_of(
    definitions: Vec<Value>,
    items: &[Value],
    cells: impl Fn(&Value) -> Vec<Value>,
    revision: i64,
    include_object: bool,
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let object = if include_object { item.clone() } else { partial_metadata(item) };
            json!({"cells": cells(item), "object": object})
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

/// An object as metadata-only clients read it, and as table rows carry it
/// (`PartialObjectMetadata`).
pub fn partial_metadata(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

#[cfg(test)]
mod hpa_tests {
    use serde_json::json;

    #[test]
    fn targets_as_kubectl_shows_them() {
        let targets = |hpa: serde_json::Value| super::hpa_targets(&hpa);
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}});
        assert_eq!(targets(json!({"spec": {"metrics": [cpu]}})), "cpu: <unknown>/80%");
        assert_eq!(
            targets(
                json!({"spec": {"metrics": [cpu]}, "status": {"currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]}})
            ),
            "cpu: 12%/80%"
        );
        let memory = json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}});
        let pods = json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}});
        assert_eq!(
            targets(json!({"spec": {"metrics": [cpu, memory, pods]}})),
            "cpu: <unknown>/80%, memory: <unknown>/500Mi + 1 more..."
        );
        let external = json!({"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "30"}}});
        assert_eq!(targets(json!({"spec": {"metrics": [external]}})), "<unknown>/30");
        assert_eq!(
            targets(json!({"spec": {"targetCPUUtilizationPercentage": 50}})),
            "cpu: <unknown>/50%"
        );
        assert_eq!(targets(json!({"spec": {}})), "<none>");
    }
}

#[cfg(test)]
mod pod_status_tests {
    use serde_json::json;

    #[test]
    fn statuses_as_kubectl_shows_them() {
        let status = |pod: serde_json::Value| super::pod_status(&pod);
        assert_eq!(status(json!({"status": {"phase": "Pending"}})), "Pending");
        assert_eq!(
            status(
                json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}})
            ),
            "ContainerCreating"
        );
        assert_eq!(
            status(
                json!({"status": {"phase": "Running", "containerStatuses": [{"ready": true, "state": {"running": {}}}]}})
            ),
            "Running"
        );
        assert_eq!(
            status(
                json!({"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]}})
            ),
            "ExitCode:3"
        );
        assert_eq!(
            status(
                json!({"status": {"phase": "Running", "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}})
            ),
            "OOMKilled"
        );
        assert_eq!(
            status(
                json!({"spec": {"initContainers": [{}, {}]}, "status": {"phase": "Pending", "initContainerStatuses": [{"state": {"terminated": {"exitCode": 0}}}, {"state": {"running": {}}}]}})
            ),
            "Init:1/2"
        );
        assert_eq!(
            status(
                json!({"status": {"phase": "Pending", "initContainerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})
            ),
            "Init:CrashLoopBackOff"
        );
        assert_eq!(
            status(
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}})
            ),
            "Terminating"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    /// Jobs and CronJobs that berth stored before it checked pod failure policies (with
    /// the replacement policy it defaulted to then) can still be updated; new ones with
    /// that shape are refused, as Kubernetes refuses them.
    #[test]
    fn job_policy_rules_bind_new_objects_only() {
        let jobs = find("batch", "v1", "jobs").unwrap();
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "old"},
            "spec": {"podReplacementPolicy": "TerminatingOrFailed",
                "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]},
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        validate(jobs, &job).unwrap();
        let refused = validate_create(jobs, &job).unwrap_err();
        assert!(
            refused
                .message
                .contains("spec.podReplacementPolicy: Unsupported value: \"TerminatingOrFailed\""),
            "{}",
            refused.message
        );
        let cronjobs = find("batch", "v1", "cronjobs").unwrap();
        let cronjob = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "old"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": job["spec"].clone()}}});
        validate(cronjobs, &cronjob).unwrap();
        let refused = validate_create(cronjobs, &cronjob).unwrap_err();
        assert!(
            refused.message.contains("spec.jobTemplate.spec.podReplacementPolicy"),
            "{}",
            refused.message
        );
    }

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
        // Limits without requests request the limit; a request given is kept.
        let mut pod = json!({"metadata": {"name": "q"}, "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"limits": {"cpu": "1", "example.com/dev": "2"}, "requests": {"cpu": "500m"}}}]}});
        prepare_create(pods, &mut pod, Some("default")).unwrap();
        let requests = &pod["spec"]["containers"][0]["resources"]["requests"];
        assert_eq!(
            (requests["cpu"].as_str(), requests["example.com/dev"].as_str()),
            (Some("500m"), Some("2"))
        );
    }

    #[test]
    fn validation_and_immutable_fields() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let good = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        validate(deploy, &good).unwrap();
        let mut mismatch = good.clone();
        mismatch["spec"]["template"]["metadata"]["labels"]["app"] = json!("db");
        let err = validate(deploy, &mismatch).unwrap_err();
        assert!(err.message.contains("selector does not match template labels"), "{}", err.message);
        let mut no_image = good.clone();
        no_image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        assert!(validate(deploy, &no_image)
            .unwrap_err()
            .message
            .contains("containers[0].image: Required value"));
        let mut other_selector = good.clone();
        other_selector["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
        other_selector["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
        assert!(validate_update(deploy, &good, &other_selector)
            .unwrap_err()
            .message
            .contains("spec.selector: field is immutable"));
        let cm = find("", "v1", "configmaps").unwrap();
        assert!(
            validate(cm, &json!({"metadata": {"name": "c"}, "data": {"bad key": "x"}})).is_err()
        );
        let node = find("", "v1", "nodes").unwrap();
        let given = json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.42.1.0/24"}});
        let moved = json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "0.0.0.0/0"}});
        assert!(validate_update(node, &given, &moved)
            .unwrap_err()
            .message
            .contains("may not change podCIDR"));
        validate_update(node, &json!({"metadata": {"name": "n"}, "spec": {}}), &given).unwrap();
        let frozen = json!({"metadata": {"name": "c"}, "data": {"a": "1"}, "immutable": true});
        let changed = json!({"metadata": {"name": "c"}, "data": {"a": "2"}, "immutable": true});
        assert!(validate_update(cm, &frozen, &changed).unwrap_err().message.contains("immutable"));
        let svc = find("", "v1", "services").unwrap();
        assert!(validate(svc, &json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}}))
            .unwrap_err()
            .message
            .contains("spec.ports: Required value"));
        assert!(validate(
            svc,
            &json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}]}})
        )
        .is_err());
        // Extended resources: whole units, a limit, and a request equal to it.
        let pod = find("", "v1", "pods").unwrap();
        let with = |resources: Value| {
            let object = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]}});
            validate(pod, &object).map_err(|e| e.message)
        };
        with(json!({"limits": {"example.com/dev": "2"}, "requests": {"example.com/dev": "2"}}))
            .unwrap();
        with(json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "kubernetes.io/x": "1"}}))
            .unwrap();
        let unequal =
            with(json!({"limits": {"example.com/dev": "2"}, "requests": {"example.com/dev": "1"}}));
        assert!(unequal.unwrap_err().contains("spec.containers[0].resources.requests[example.com/dev]: Invalid value: \"1\": must be equal to example.com/dev limit of 2"));
        let unlimited = with(json!({"requests": {"example.com/dev": "1"}}));
        assert!(unlimited.unwrap_err().contains("spec.containers[0].resources.limits[example.com/dev]: Required value: Limit must be set for non overcommitable resources"));
        let half = with(json!({"limits": {"example.com/dev": "500m"}}));
        assert!(half.unwrap_err().contains("Invalid value: \"500m\": must be an integer"));
        // Ephemeral containers at creation: names are DNS labels (they name directories
        // on the node), and no subPath.
        let ephemeral = |c: Value| {
            let object = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}], "ephemeralContainers": [c]}});
            validate(pod, &object).map_err(|e| e.message)
        };
        ephemeral(json!({"name": "dbg", "image": "busybox"})).unwrap();
        let pathlike = ephemeral(json!({"name": "../../etc", "image": "busybox"}));
        assert!(pathlike.unwrap_err().contains("spec.ephemeralContainers[0].name: Invalid value"));
        let sub = ephemeral(
            json!({"name": "dbg", "image": "busybox", "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}]}),
        );
        assert!(sub
            .unwrap_err()
            .contains("spec.ephemeralContainers[0].volumeMounts[0].subPath: Forbidden"));
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
