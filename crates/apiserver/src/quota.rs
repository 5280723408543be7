//! ResourceQuota and LimitRange, as Kubernetes' admission plugins apply them: what an
//! object uses of a quota (object counts, pods' requests and limits, services' node ports
//! and load balancers, claims' storage), the refusal of a create that would go over
//! (`exceeded quota: NAME, requested: ..., used: ..., limited: ...`) or that leaves out
//! what a quota tracks (`failed quota: NAME: must specify ...`), and of an update that
//! would use more (a Service turned NodePort, a claim grown); quota scopes (`Terminating`,
//! `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`,
//! `CrossNamespacePodAffinity`, as `spec.scopes` or `spec.scopeSelector`), which only pods
//! fall under; a LimitRange's defaults filled into containers and its minimums and maximums
//! enforced.
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

/// The scopes Kubernetes knows.
pub const SCOPES: [&str; 6] = [
    "Terminating",
    "NotTerminating",
    "BestEffort",
    "NotBestEffort",
    "PriorityClass",
    "CrossNamespacePodAffinity",
];

/// A quota's scope requirements: (scope, operator, values), from `spec.scopes` (each as
/// `Exists`) and `spec.scopeSelector.matchExpressions`.
fn scope_requirements(quota: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|scope| (scope.to_owned(), "Exists".to_owned(), Vec::new()))
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"].as_array().into_iter().flatten() {
        let values = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        out.push((
            e["scopeName"].as_str().unwrap_or("").to_owned(),
            e["operator"].as_str().unwrap_or("").to_owned(),
            values,
        ));
    }
    out
}

/// Checks a quota's scopes as Kubernetes' validation does; the problem's field and message.
pub fn validate_scopes(quota: &Value) -> Result<(), (String, String)> {
    for (i, (scope, operator, values)) in scope_requirements(quota).iter().enumerate() {
        if !SCOPES.contains(&scope.as_str()) {
            return Err((
                format!("spec.scopes[{i}]"),
                format!("Unsupported value: {scope:?}: supported values: {}", SCOPES.join(", ")),
            ));
        }
        let ok = match operator.as_str() {
            "In" | "NotIn" => scope == "PriorityClass" && !values.is_empty(),
            "Exists" | "DoesNotExist" => values.is_empty(),
            _ => false,
        };
        if !ok {
            return Err((
                format!("spec.scopeSelector.matchExpressions[{i}]"),
                format!(
                    "Invalid value: {operator:?}: the scope {scope} takes Exists or DoesNotExist without values{}",
                    if scope == "PriorityClass" { ", or In/NotIn with values" } else { "" }
                ),
            ));
        }
    }
    Ok(())
}

fn best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|field| {
        pod["spec"][*field].as_array().into_iter().flatten().all(|c| {
            ["requests", "limits"]
                .iter()
                .all(|kind| ["cpu", "memory"].iter().all(|r| c["resources"][*kind][*r].is_null()))
        })
    })
}

fn cross_namespace_affinity(pod: &Value) -> bool {
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let affinity = &pod["spec"]["affinity"][*kind];
        let required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten();
        let preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| &w["podAffinityTerm"]);
        required.chain(preferred).any(|term| {
            term["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                || term["namespaceSelector"].is_object()
        })
    })
}

/// Whether an object falls under a quota's scopes (every quota without scopes takes
/// everything; one with scopes takes pods only, those matching every requirement).
pub fn in_scope(quota: &Value, resource: &Resource, object: &Value) -> bool {
    let requirements = scope_requirements(quota);
    if requirements.is_empty() {
        return true;
    }
    if !(resource.group.is_empty() && resource.name == "pods") {
        return false;
    }
    let class = object["spec"]["priorityClassName"].as_str().unwrap_or("");
    requirements.iter().all(|(scope, operator, values)| {
        let present = match scope.as_str() {
            "Terminating" => object["spec"]["activeDeadlineSeconds"].as_i64().is_some(),
            "NotTerminating" => object["spec"]["activeDeadlineSeconds"].as_i64().is_none(),
            "BestEffort" => best_effort(object),
            "NotBestEffort" => !best_effort(object),
            "PriorityClass" => !class.is_empty(),
            "CrossNamespacePodAffinity" => cross_namespace_affinity(object),
            _ => false,
        };
        match operator.as_str() {
            "Exists" => present,
            "DoesNotExist" => !present,
            "In" => values.iter().any(|v| v == class),
            "NotIn" => !values.iter().any(|v| v == class),
            _ => false,
        }
    })
}

/// Checks a write against one quota: `used` is what the namespace's objects of the same
/// resource within the quota's scopes use now (an update's `old` object among them). A
/// create asks for all the object uses; an update for what it adds. The refusal is
/// Kubernetes' text after `... is forbidden: `.
pub fn admit(
    quota: &Value,
    resource: &Resource,
    object: &Value,
    old: Option<&Value>,
    used: &Usage,
) -> Result<(), String> {
    let name = quota["metadata"]["name"].as_str().unwrap_or("");
    let Some(hard) = quota["spec"]["hard"].as_object() else { return Ok(()) };
    if !in_scope(quota, resource, object) {
        return Ok(());
    }
    let mut requested = usage_of(resource, object);
    if let Some(old) = old.filter(|old| in_scope(quota, resource, old)) {
        for (key, before) in usage_of(resource, old) {
            if let Some(now) = requested.get_mut(&key) {
                *now = now.saturating_sub(before);
            }
        }
    }
    // A pod must say what a quota on its requests or limits tracks.
    if old.is_none() && resource.group.is_empty() && resource.name == "pods" {
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
        assert!(admit(&quota, pods, &pod("500m", "128Mi"), None, &used).is_ok());
        add(&mut used, &usage);
        assert_eq!(
            admit(&quota, pods, &pod("500m", "128Mi"), None, &used).unwrap_err(),
            "exceeded quota: compute, requested: pods=1,requests.cpu=500m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
        );
        let bare = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(
            admit(&quota, pods, &bare, None, &Usage::new()).unwrap_err(),
            "failed quota: compute: must specify requests.cpu,requests.memory"
        );
        let shown = status(&quota, &used);
        assert_eq!(shown["used"]["requests.memory"], "256Mi");
        let finished = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert!(usage_of(pods, &finished).is_empty());
    }

    #[test]
    fn scopes_choose_the_pods_a_quota_counts() {
        let pods = find("", "v1", "pods").unwrap();
        let services = find("", "v1", "services").unwrap();
        let bare = json!({"spec": {"containers": [{"name": "c"}]}});
        let deadline =
            json!({"spec": {"activeDeadlineSeconds": 60, "containers": [{"name": "c"}]}});
        let best_effort = json!({"metadata": {"name": "be"}, "spec": {"scopes": ["BestEffort"], "hard": {"pods": "1"}}});
        assert!(in_scope(&best_effort, pods, &bare));
        assert!(!in_scope(&best_effort, pods, &pod("1", "1Gi")));
        assert!(!in_scope(&best_effort, services, &json!({})), "scopes take pods only");
        let terminating = json!({"spec": {"scopes": ["Terminating"], "hard": {"pods": "1"}}});
        assert!(in_scope(&terminating, pods, &deadline) && !in_scope(&terminating, pods, &bare));
        let classes = json!({"spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        let high = json!({"spec": {"priorityClassName": "high", "containers": []}});
        assert!(in_scope(&classes, pods, &high) && !in_scope(&classes, pods, &bare));
        // A pod outside the scope is not refused, whatever is used.
        let used: Usage = [("pods".to_owned(), 5000)].into();
        assert!(admit(&best_effort, pods, &pod("1", "1Gi"), None, &used).is_ok());
        assert!(admit(&best_effort, pods, &bare, None, &used).is_err());
        assert!(validate_scopes(&classes).is_ok());
        let wrong = json!({"spec": {"scopes": ["Sometimes"]}});
        assert!(validate_scopes(&wrong).unwrap_err().1.contains("Unsupported value"));
        let no_values = json!({"spec": {"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In"}]}}});
        assert!(validate_scopes(&no_values).is_err());
    }

    #[test]
    fn updates_ask_for_what_they_add() {
        let services = find("", "v1", "services").unwrap();
        let quota =
            json!({"metadata": {"name": "np"}, "spec": {"hard": {"services.nodeports": "1"}}});
        let plain = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}, {"port": 443}]}});
        let exposed = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(
            admit(&quota, services, &exposed, Some(&plain), &Usage::new()).unwrap_err(),
            "exceeded quota: np, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"
        );
        // Unchanged usage asks for nothing, even over the limit.
        let used: Usage = [("services.nodeports".to_owned(), 2000)].into();
        assert!(admit(&quota, services, &exposed, Some(&exposed), &used).is_ok());
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
