//! ResourceQuota and LimitRange, as Kubernetes' admission plugins apply them: what an
//! object uses of a quota (object counts, pods' requests and limits, services' node ports
//! and load balancers, claims' storage), the refusal of a create that would go over
//! (`exceeded quota: NAME, requested: ..., used: ..., limited: ...`) or that leaves out
//! what a quota tracks (`failed quota: NAME: must specify ...`); a LimitRange's defaults
//! filled into containers and its minimums and maximums enforced.
//!
//! Knows nothing of storage or HTTP: objects are JSON, amounts are thousandths
//! (`berth_api::quantity`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::resources::Resource;
use berth_api::quantity::{format_milli, parse_milli};

/// Amounts by quota key (`pods`, `requests.cpu`, `count/deployments.apps`), in thousandths.
pub type Usage = BTreeMap<String, i128>;

const ONE: i128 = 1000;

fn amount(v: &Value) -> i128 {
    match v {
        Value::String(s) => parse_milli(s).unwrap_or(0),
        Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).round() as i128).unwrap_or(0),
        _ => 0,
    }
}

fn binary(key: &str) -> bool {
    key.contains("memory") || key.contains("storage")
}

/// The quota keys a resource's objects count under (besides `count/...`).
fn count_key(resource: &Resource) -> Option<&'static str> {
    if !resource.group.is_empty() {
        return None;
    }
    Some(match resource.name {
        "pods" => "pods",
        "configmaps" => "configmaps",
        "secrets" => "secrets",
        "services" => "services",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "replicationcontrollers" => "replicationcontrollers",
        "resourcequotas" => "resourcequotas",
        _ => return None,
    })
}

/// `count/deployments.apps`, `count/pods`: the generic object-count key.
fn generic_key(resource: &Resource) -> String {
    if resource.group.is_empty() {
        format!("count/{}", resource.name)
    } else {
        format!("count/{}.{}", resource.name, resource.group)
    }
}

/// Whether objects of a resource can use what a quota key limits.
pub fn tracks(resource: &Resource, key: &str) -> bool {
    if key == generic_key(resource) || Some(key) == count_key(resource) {
        return true;
    }
    match (resource.group, resource.name) {
        ("", "pods") => matches!(
            key,
            "cpu"
                | "memory"
                | "requests.cpu"
                | "requests.memory"
                | "limits.cpu"
                | "limits.memory"
                | "requests.ephemeral-storage"
                | "limits.ephemeral-storage"
                | "ephemeral-storage"
        ),
        ("", "services") => matches!(key, "services.nodeports" | "services.loadbalancers"),
        ("", "persistentvolumeclaims") => key == "requests.storage",
        _ => false,
    }
}

/// What one pod's containers request and limit (init containers count by their largest,
/// as the scheduler does); finished pods use nothing.
fn pod_resources(pod: &Value) -> Usage {
    let mut usage = Usage::new();
    if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        return usage;
    }
    usage.insert("pods".into(), ONE);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory", "ephemeral-storage"] {
            let of = |c: &Value| amount(&c["resources"][kind][resource]);
            let sum: i128 = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(of)
                .fold(0i128, i128::saturating_add);
            let init: i128 = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(of)
                .max()
                .unwrap_or(0);
            let total = sum.max(init);
            if total > 0 {
                usage.insert(format!("{kind}.{resource}"), total);
                if kind == "requests" {
                    usage.insert(resource.to_owned(), total);
                }
            }
        }
    }
    usage
}

/// What one object uses.
pub fn usage_of(resource: &Resource, object: &Value) -> Usage {
    let mut usage = if resource.group.is_empty() && resource.name == "pods" {
        pod_resources(object)
    } else {
        let mut usage = Usage::new();
        if let Some(key) = count_key(resource) {
            usage.insert(key.into(), ONE);
        }
        usage
    };
    if usage.contains_key("pods") || !(resource.group.is_empty() && resource.name == "pods") {
        usage.insert(generic_key(resource), ONE);
    }
    if resource.group.is_empty() && resource.name == "services" {
        let kind = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
        if kind == "NodePort" || kind == "LoadBalancer" {
            let ports = object["spec"]["ports"].as_array().map(Vec::len).unwrap_or(0) as i128;
            usage.insert("services.nodeports".into(), ports * ONE);
        }
        if kind == "LoadBalancer" {
            usage.insert("services.loadbalancers".into(), ONE);
        }
    }
    if resource.group.is_empty() && resource.name == "persistentvolumeclaims" {
        usage.insert(
            "requests.storage".into(),
            amount(&object["spec"]["resources"]["requests"]["storage"]),
        );
    }
    usage
}

/// Adds `more` into `total`.
pub fn add(total: &mut Usage, more: &Usage) {
    for (key, value) in more {
        let sum = total.entry(key.clone()).or_insert(0);
        *sum = sum.saturating_add(*value);
    }
}

fn listing(usage: &[(String, i128)]) -> String {
    usage
        .iter()
        .map(|(k, v)| format!("{k}={}", format_milli(*v, binary(k))))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks a create against one quota: `used` is what the namespace's objects of the
/// same resource use now. The refusal is Kubernetes' text after `... is forbidden: `.
pub fn admit(
    quota: &Value,
    resource: &Resource,
    object: &Value,
    used: &Usage,
) -> Result<(), String> {
    let name = quota["metadata"]["name"].as_str().unwrap_or("");
    let Some(hard) = quota["spec"]["hard"].as_object() else { return Ok(()) };
    let requested = usage_of(resource, object);
    // A pod must say what a quota on its requests or limits tracks.
    if resource.group.is_empty() && resource.name == "pods" {
        let mut missing = Vec::new();
        for key in hard.keys() {
            let (kind, what) = match key.as_str() {
                "cpu" | "memory" => ("requests", key.as_str()),
                other => match other.split_once('.') {
                    Some((kind @ ("requests" | "limits"), what @ ("cpu" | "memory"))) => {
                        (kind, what)
                    }
                    _ => continue,
                },
            };
            let containers = object["spec"]["containers"].as_array().cloned().unwrap_or_default();
            if containers.iter().any(|c| c["resources"][kind][what].is_null()) {
                missing.push(format!("{kind}.{what}"));
            }
        }
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            return Err(format!("failed quota: {name}: must specify {}", missing.join(",")));
        }
    }
    let mut over_requested = Vec::new();
    let mut over_used = Vec::new();
    let mut over_limited = Vec::new();
    for (key, limit) in hard {
        let Some(wanted) = requested.get(key).filter(|w| **w > 0) else { continue };
        let limit = amount(limit);
        let now = used.get(key).copied().unwrap_or(0);
        if now.saturating_add(*wanted) > limit {
            over_requested.push((key.clone(), *wanted));
            over_used.push((key.clone(), now));
            over_limited.push((key.clone(), limit));
        }
    }
    if over_requested.is_empty() {
        return Ok(());
    }
    Err(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        listing(&over_requested),
        listing(&over_used),
        listing(&over_limited)
    ))
}

/// A quota's status: its hard limits and what is used of each.
pub fn status(quota: &Value, used: &Usage) -> Value {
    let hard = quota["spec"]["hard"].clone();
    let mut shown = serde_json::Map::new();
    for key in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
        let value = used.get(key).copied().unwrap_or(0);
        shown.insert(key.clone(), json!(format_milli(value, binary(key))));
    }
    json!({"hard": hard, "used": shown})
}

/// Applies a namespace's LimitRanges to a pod being created: containers get the
/// `defaultRequest` and `default` (limit) they leave out, then every container's requests
/// and limits are checked against `min` and `max`. The refusal is Kubernetes' text.
pub fn limit_pod(ranges: &[Value], pod: &mut Value) -> Result<(), String> {
    for range in ranges {
        for limit in range["spec"]["limits"].as_array().into_iter().flatten() {
            if limit["type"] != "Container" {
                continue;
            }
            for field in ["initContainers", "containers"] {
                let Some(containers) = pod["spec"][field].as_array_mut() else { continue };
                for container in containers.iter_mut() {
                    for (kind, source) in [("requests", "defaultRequest"), ("limits", "default")] {
                        for (resource, value) in limit[source].as_object().into_iter().flatten() {
                            if container["resources"][kind][resource].is_null() {
                                container["resources"][kind][resource] = value.clone();
                            }
                        }
                    }
                    // A limit defaulted without a request: the request is the limit.
                    let limits =
                        container["resources"]["limits"].as_object().cloned().unwrap_or_default();
                    for (resource, value) in limits {
                        if container["resources"]["requests"][&resource].is_null() {
                            container["resources"]["requests"][&resource] = value;
                        }
                    }
                    for (resource, max) in limit["max"].as_object().into_iter().flatten() {
                        let given = &container["resources"]["limits"][resource];
                        if given.is_null() {
                            return Err(format!("maximum {resource} usage per Container is {}.  No limit is specified", max.as_str().unwrap_or("")));
                        }
                        if amount(given) > amount(max) {
                            return Err(format!(
                                "maximum {resource} usage per Container is {}, but limit is {}",
                                max.as_str().unwrap_or(""),
                                given.as_str().unwrap_or("")
                            ));
                        }
                    }
                    for (resource, min) in limit["min"].as_object().into_iter().flatten() {
                        let given = &container["resources"]["requests"][resource];
                        if given.is_null() {
                            return Err(format!("minimum {resource} usage per Container is {}.  No request is specified", min.as_str().unwrap_or("")));
                        }
                        if amount(given) < amount(min) {
                            return Err(format!(
                                "minimum {resource} usage per Container is {}, but request is {}",
                                min.as_str().unwrap_or(""),
                                given.as_str().unwrap_or("")
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn pod(cpu: &str, memory: &str) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}}]}})
    }

    #[test]
    fn pods_use_their_requests_and_a_quota_refuses_in_kubernetes_words() {
        let pods = find("", "v1", "pods").unwrap();
        let usage = usage_of(pods, &pod("500m", "128Mi"));
        assert_eq!(usage["pods"], 1000);
        assert_eq!(usage["requests.cpu"], 500);
        assert_eq!(usage["cpu"], 500);
        let quota = json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1", "requests.memory": "1Gi"}}});
        let mut used = Usage::new();
        add(&mut used, &usage);
        assert!(admit(&quota, pods, &pod("500m", "128Mi"), &used).is_ok());
        add(&mut used, &usage);
        assert_eq!(
            admit(&quota, pods, &pod("500m", "128Mi"), &used).unwrap_err(),
            "exceeded quota: compute, requested: pods=1,requests.cpu=500m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
        );
        let bare = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(
            admit(&quota, pods, &bare, &Usage::new()).unwrap_err(),
            "failed quota: compute: must specify requests.cpu,requests.memory"
        );
        let shown = status(&quota, &used);
        assert_eq!(shown["used"]["requests.memory"], "256Mi");
        let finished = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert!(usage_of(pods, &finished).is_empty());
    }

    #[test]
    fn counts_of_other_kinds() {
        let services = find("", "v1", "services").unwrap();
        let usage = usage_of(
            services,
            &json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}}),
        );
        assert_eq!((usage["services"], usage["services.nodeports"]), (1000, 2000));
        let deployments = find("apps", "v1", "deployments").unwrap();
        assert_eq!(usage_of(deployments, &json!({}))["count/deployments.apps"], 1000);
        assert!(tracks(deployments, "count/deployments.apps") && !tracks(deployments, "pods"));
    }

    #[test]
    fn limit_ranges_default_and_bound_containers() {
        let range = json!({"spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "200m"}, "max": {"cpu": "1"}, "min": {"memory": "10Mi"}}]}});
        let mut given = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "64Mi"}}}]}});
        limit_pod(std::slice::from_ref(&range), &mut given).unwrap();
        assert_eq!(given["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m");
        assert_eq!(given["spec"]["containers"][0]["resources"]["requests"]["cpu"], "200m");
        let mut big = pod("2", "64Mi");
        assert_eq!(
            limit_pod(std::slice::from_ref(&range), &mut big).unwrap_err(),
            "maximum cpu usage per Container is 1, but limit is 2"
        );
        let mut small = pod("100m", "5Mi");
        assert_eq!(
            limit_pod(std::slice::from_ref(&range), &mut small).unwrap_err(),
            "minimum memory usage per Container is 10Mi, but request is 5Mi"
        );
    }
}
