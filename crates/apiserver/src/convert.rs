//! Conversion between the versions of a kind that share one stored form. Only
//! HorizontalPodAutoscaler has two here: autoscaling/v2 is stored, autoscaling/v1 is
//! converted on the way in and out. As Kubernetes does, what v1 cannot say (metrics other
//! than CPU utilization, behavior, conditions) travels in annotations, so that a v1 client's
//! read-modify-write loses nothing.
//!
//! Knows nothing of HTTP or storage: it maps JSON objects to JSON objects.

use serde_json::{json, Value};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";

/// The version objects of this group and kind are stored in, when it differs from
/// `version`.
pub fn storage_version(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    if let Some(stored) = crate::crd::storage_version(group, kind) {
        return (stored != version).then_some(stored);
    }
    (group == "autoscaling" && version == "v1" && kind == "HorizontalPodAutoscaler").then_some("v2")
}

/// Whether a group's kind is stored as another group's (events.k8s.io Events as core
/// Events).
pub fn stored_elsewhere(group: &str, kind: &str) -> Option<(&'static str, &'static str)> {
    (group == "events.k8s.io" && kind == "Event").then_some(("", "v1"))
}

/// An object as the client sent it (in `version`) to its stored form.
pub fn to_storage(group: &str, version: &str, kind: &str, object: Value) -> Value {
    if stored_elsewhere(group, kind).is_some() {
        return event_to_core(object);
    }
    match storage_version(group, version, kind) {
        Some(stored) if crate::crd::is_custom(group, kind) => {
            crate::crd::convert(group, stored, kind, object)
        }
        Some(_) => hpa_v1_to_v2(object),
        None => object,
    }
}

/// A stored object (or a list of them) to `version`.
pub fn from_storage(group: &str, version: &str, kind: &str, mut value: Value) -> Value {
    if stored_elsewhere(group, kind).is_some() {
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for item in items.iter_mut() {
                *item = core_to_event(std::mem::take(item));
            }
            return value;
        }
        return if value["kind"] == kind { core_to_event(value) } else { value };
    }
    if crate::crd::is_custom(group, kind) {
        return crate::crd::convert(group, version, kind, value);
    }
    if storage_version(group, version, kind).is_none() {
        return value;
    }
    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
        for item in items.iter_mut() {
            *item = hpa_v2_to_v1(std::mem::take(item));
        }
        if value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) {
            value["apiVersion"] = json!("autoscaling/v1");
        }
        return value;
    }
    if value.get("kind").and_then(Value::as_str) == Some(kind) {
        return hpa_v2_to_v1(value);
    }
    value
}

/// Fields of a core/v1 Event and their events.k8s.io/v1 names.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// A stored (core/v1) Event in events.k8s.io/v1's shape.
pub fn core_to_event(mut event: Value) -> Value {
    if let Some(map) = event.as_object_mut() {
        for (core, new) in EVENT_FIELDS {
            if let Some(value) = map.remove(*core) {
                map.insert((*new).to_owned(), value);
            }
        }
        map.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    }
    event
}

/// An events.k8s.io/v1 Event in the stored (core/v1) shape.
pub fn event_to_core(mut event: Value) -> Value {
    if let Some(map) = event.as_object_mut() {
        for (core, new) in EVENT_FIELDS {
            if let Some(value) = map.remove(*new) {
                map.insert((*core).to_owned(), value);
            }
        }
        if map.get("apiVersion").is_some() {
            map.insert("apiVersion".into(), json!("v1"));
        }
    }
    event
}

fn is_cpu_utilization(metric: &Value) -> bool {
    metric["type"] == "Resource"
        && metric["resource"]["name"] == "cpu"
        && metric["resource"]["target"]["type"] == "Utilization"
}

fn annotate(object: &mut Value, key: &str, value: &Value) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"][key] = json!(value.to_string());
}

fn take(map: &mut Value, key: &str) -> Option<Value> {
    map.as_object_mut().and_then(|m| m.remove(key)).filter(|v| !v.is_null())
}

/// autoscaling/v2 → autoscaling/v1.
pub fn hpa_v2_to_v1(mut hpa: Value) -> Value {
    if !hpa.is_object() {
        return hpa;
    }
    hpa["apiVersion"] = json!("autoscaling/v1");
    let mut stash: Vec<(&str, Value)> = Vec::new();
    if hpa["spec"].is_object() {
        let metrics = take(&mut hpa["spec"], "metrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let (cpu, other): (Vec<Value>, Vec<Value>) =
            metrics.into_iter().partition(is_cpu_utilization);
        if let Some(percent) =
            cpu.first().and_then(|m| m["resource"]["target"]["averageUtilization"].as_i64())
        {
            hpa["spec"]["targetCPUUtilizationPercentage"] = json!(percent);
        }
        if !other.is_empty() {
            stash.push((METRICS, json!(other)));
        }
        if let Some(behavior) = take(&mut hpa["spec"], "behavior") {
            stash.push((BEHAVIOR, behavior));
        }
    }
    if hpa["status"].is_object() {
        let current = take(&mut hpa["status"], "currentMetrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let (cpu, other): (Vec<Value>, Vec<Value>) = current
            .into_iter()
            .partition(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu");
        if let Some(percent) =
            cpu.first().and_then(|m| m["resource"]["current"]["averageUtilization"].as_i64())
        {
            hpa["status"]["currentCPUUtilizationPercentage"] = json!(percent);
        }
        if !other.is_empty() {
            stash.push((CURRENT_METRICS, json!(other)));
        }
        if let Some(conditions) = take(&mut hpa["status"], "conditions") {
            stash.push((CONDITIONS, conditions));
        }
    }
    for (key, value) in stash {
        annotate(&mut hpa, key, &value);
    }
    hpa
}

/// autoscaling/v1 → autoscaling/v2 (the stored form).
pub fn hpa_v1_to_v2(mut hpa: Value) -> Value {
    if !hpa.is_object() {
        // Not an object: left for validation to refuse.
        return hpa;
    }
    hpa["apiVersion"] = json!("autoscaling/v2");
    let mut unstash = |key: &str| -> Option<Value> {
        // (get_mut: indexing mutably would add the keys it looks for.)
        let notes = hpa.get_mut("metadata")?.get_mut("annotations")?.as_object_mut()?;
        let text = notes.remove(key)?;
        if notes.is_empty() {
            if let Some(meta) = hpa["metadata"].as_object_mut() {
                meta.remove("annotations");
            }
        }
        serde_json::from_str(text.as_str()?).ok()
    };
    let (metrics, behavior, current, conditions) =
        (unstash(METRICS), unstash(BEHAVIOR), unstash(CURRENT_METRICS), unstash(CONDITIONS));
    if hpa["spec"].is_object() {
        let mut all = Vec::new();
        if let Some(percent) = take(&mut hpa["spec"], "targetCPUUtilizationPercentage") {
            all.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}));
        }
        all.extend(metrics.and_then(|m| m.as_array().cloned()).unwrap_or_default());
        if !all.is_empty() {
            hpa["spec"]["metrics"] = json!(all);
        }
        if let Some(behavior) = behavior {
            hpa["spec"]["behavior"] = behavior;
        }
    }
    if hpa["status"].is_object() {
        let mut all = Vec::new();
        if let Some(percent) = take(&mut hpa["status"], "currentCPUUtilizationPercentage") {
            all.push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": percent}}}));
        }
        all.extend(current.and_then(|m| m.as_array().cloned()).unwrap_or_default());
        if !all.is_empty() {
            hpa["status"]["currentMetrics"] = json!(all);
        }
        if let Some(conditions) = conditions {
            hpa["status"]["conditions"] = conditions;
        }
    }
    hpa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_round_trip_without_loss() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 2,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]}
        });
        let v1 = hpa_v2_to_v1(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert!(v1["spec"].get("metrics").is_none() && v1["spec"].get("behavior").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 12);
        assert!(v1["metadata"]["annotations"][METRICS].as_str().unwrap().contains("memory"));
        assert_eq!(hpa_v1_to_v2(v1), v2);
    }

    #[test]
    fn a_plain_v1_autoscaler_becomes_a_cpu_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}});
        let v2 = to_storage("autoscaling", "v1", "HorizontalPodAutoscaler", v1.clone());
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
        assert!(v2["metadata"].get("annotations").is_none());
        let list = json!({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2", "items": [v2]});
        let back = from_storage("autoscaling", "v1", "HorizontalPodAutoscaler", list);
        assert_eq!(back["apiVersion"], "autoscaling/v1");
        assert_eq!(back["items"][0], v1);
        // Non-objects are left for validation; other kinds and versions pass through.
        assert_eq!(
            to_storage("autoscaling", "v1", "HorizontalPodAutoscaler", json!([])),
            json!([])
        );
        assert_eq!(hpa_v2_to_v1(json!(1)), json!(1));
        let pod = json!({"kind": "Pod"});
        assert_eq!(to_storage("", "v1", "Pod", pod.clone()), pod);
        assert_eq!(from_storage("autoscaling", "v2", "HorizontalPodAutoscaler", pod.clone()), pod);
    }
}
