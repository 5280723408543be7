//! The HorizontalPodAutoscaler controller (autoscaling/v2), as kube-controller-manager's:
//! every sync period each autoscaler reads its target's `scale` subresource (replicas
//! and selector), the selected pods' usage from the resource metrics API
//! (`metrics.k8s.io`), and for each resource metric the replicas that would bring the
//! average to its target (utilization of the pods' requests, or an average value), with
//! Kubernetes' 10% tolerance. The largest proposal is stabilized (the highest of the
//! scale-down window's recommendations, the lowest of the scale-up window's: 300 s and
//! 0 s unless `behavior` says), limited by the scaling policies (by default up to double
//! or +4 pods per 15 s, down to none per 15 s), kept within min and max, and written to
//! the target's scale. The status carries the current metrics and the conditions
//! `kubectl describe hpa` shows (AbleToScale, ScalingActive, ScalingLimited).
//! Recommendations and scale events are kept in memory, as Kubernetes keeps them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_reconcile::{Action, Cache, Informers, Queue};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::workload;
use crate::{Error, MAX_BACKOFF};

type Key = (String, String);

/// Kubernetes' `--horizontal-pod-autoscaler-tolerance`.
const TOLERANCE: f64 = 0.1;

#[derive(Default)]
struct History {
    /// (when, recommended replicas)
    recommendations: Vec<(Instant, i32)>,
    /// (when, replicas changed by: positive up, negative down)
    events: Vec<(Instant, i32)>,
    /// The ScalingActive reason last reported as an event (so a failure is told once).
    told: Option<String>,
}

struct Controller {
    client: kube::Client,
    autoscalers: Arc<Cache<HorizontalPodAutoscaler>>,
    pods: Arc<Cache<Pod>>,
    history: Mutex<HashMap<String, History>>,
    period: Duration,
}

pub(crate) async fn run(informers: Arc<Informers>, period: Duration) {
    let autoscalers = informers.typed::<HorizontalPodAutoscaler>();
    let pods = informers.typed::<Pod>();
    let queue = Queue::<Key>::new();
    let shutdown = informers.shutdown().clone();
    autoscalers.queue_into(&informers, &queue, |h: &HorizontalPodAutoscaler| {
        Some(workload::key_of(&h.metadata))
    });
    tokio::select! {
        _ = async { tokio::join!(autoscalers.ready(), pods.ready()) } => {}
        _ = shutdown.cancelled() => return,
    }
    for autoscaler in autoscalers.store().state() {
        queue.add(workload::key_of(&autoscaler.metadata));
    }
    let controller = Arc::new(Controller {
        client: informers.client().clone(),
        autoscalers,
        pods,
        history: Mutex::new(HashMap::new()),
        period,
    });
    berth_reconcile::run(
        "horizontalpodautoscaler",
        queue,
        2,
        MAX_BACKOFF,
        shutdown,
        move |key: Key| {
            let controller = controller.clone();
            async move { controller.reconcile(key).await }
        },
    )
    .await;
}

/// What one metric proposes.
#[derive(Debug, Clone, PartialEq)]
struct Proposal {
    replicas: i32,
    /// The status entry (`currentMetrics[]`).
    current: serde_json::Value,
    /// How the reason reads in events ("cpu resource utilization (percentage of request)").
    describe: String,
    above: bool,
}

/// The replicas a resource metric proposes from the pods' usage and requests (both in
/// thousandths of the unit, per pod with a reading), as Kubernetes' replica calculator:
/// within the tolerance the count stays.
fn propose(
    metric: &MetricSpec,
    current_replicas: i32,
    usage: &[(i128, i128)],
) -> Result<Proposal, (String, String)> {
    let Some(resource) = metric.resource.as_ref() else {
        return Err((
            "InvalidMetricSourceType".into(),
            format!(
                "the metric type {:?} is not supported (only Resource metrics are)",
                metric.type_
            ),
        ));
    };
    let name = resource.name.clone();
    if usage.is_empty() {
        return Err((
            "FailedGetResourceMetric".into(),
            format!(
                "failed to get {name} utilization: no metrics returned from resource metrics API"
            ),
        ));
    }
    let count = usage.len() as f64;
    let used: i128 = usage.iter().map(|(u, _)| u).sum();
    let target = &resource.target;
    let unit = |milli: i128| {
        if name == "cpu" {
            format!("{milli}m")
        } else {
            berth_api::quantity::format_milli(milli, true)
        }
    };
    if let Some(percent) = target.average_utilization {
        let requested: i128 = usage.iter().map(|(_, r)| r).sum();
        if usage.iter().any(|(_, r)| *r <= 0) || requested <= 0 {
            return Err((
                "FailedGetResourceMetric".into(),
                format!("failed to get {name} utilization: missing request for {name}"),
            ));
        }
        let utilization = (used * 100 / requested) as i32;
        let ratio = used as f64 / requested as f64 / (f64::from(percent) / 100.0);
        let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
            current_replicas
        } else {
            (ratio * count).ceil() as i32
        };
        return Ok(Proposal {
            replicas,
            current: json!({"type": "Resource", "resource": {"name": name,
                "current": {"averageUtilization": utilization, "averageValue": unit(used / usage.len() as i128)}}}),
            describe: format!("{name} resource utilization (percentage of request)"),
            above: ratio > 1.0,
        });
    }
    if let Some(value) = target.average_value.as_ref() {
        let wanted = berth_api::quantity::parse_milli(&value.0).unwrap_or(0);
        if wanted <= 0 {
            return Err((
                "InvalidMetricSourceType".into(),
                format!("invalid averageValue for {name}"),
            ));
        }
        let average = used as f64 / count;
        let ratio = average / wanted as f64;
        let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
            current_replicas
        } else {
            (used as f64 / wanted as f64).ceil() as i32
        };
        return Ok(Proposal {
            replicas,
            current: json!({"type": "Resource", "resource": {"name": name,
                "current": {"averageValue": unit(average as i128)}}}),
            describe: format!("{name} resource"),
            above: ratio > 1.0,
        });
    }
    Err((
        "InvalidMetricSourceType".into(),
        format!("the target of {name} has neither averageUtilization nor averageValue"),
    ))
}

/// The scaling rules for one direction, with Kubernetes' defaults.
fn rules(spec: &HorizontalPodAutoscalerSpec, up: bool) -> HPAScalingRules {
    let declared =
        spec.behavior
            .as_ref()
            .and_then(|b| if up { b.scale_up.clone() } else { b.scale_down.clone() });
    let default: HPAScalingRules = if up {
        serde_json::from_value(json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]}))
    } else {
        serde_json::from_value(json!({"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}))
    }
    .unwrap_or_default();
    match declared {
        None => default,
        Some(mut rules) => {
            if rules.stabilization_window_seconds.is_none() {
                rules.stabilization_window_seconds = default.stabilization_window_seconds;
            }
            if rules.policies.is_none() {
                rules.policies = default.policies;
            }
            rules
        }
    }
}

/// The highest (up) or lowest (down) replica count the policies allow now, from the
/// changes made within each policy's period; `None` when the direction is disabled.
fn policy_limit(
    rules: &HPAScalingRules,
    current: i32,
    events: &[(Instant, i32)],
    up: bool,
    now: Instant,
) -> Option<i32> {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return None;
    }
    let mut limits = Vec::new();
    for policy in rules.policies.iter().flatten() {
        let period = Duration::from_secs(policy.period_seconds.max(1) as u64);
        let changed: i32 = events
            .iter()
            .filter(|(at, change)| now.duration_since(*at) < period && (*change > 0) == up)
            .map(|(_, change)| change)
            .sum();
        let start = current - changed;
        let limit = match (policy.type_.as_str(), up) {
            ("Pods", true) => start + policy.value,
            ("Pods", false) => start - policy.value,
            ("Percent", true) => {
                (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i32
            }
            (_, false) => {
                (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)).floor() as i32
            }
            _ => continue,
        };
        limits.push(limit);
    }
    // "Max" takes the policy allowing the biggest change, "Min" the smallest.
    let most = if up { limits.iter().max() } else { limits.iter().min() };
    let least = if up { limits.iter().min() } else { limits.iter().max() };
    match select {
        "Min" => least.copied(),
        _ => most.copied(),
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": kind, "status": if status { "True" } else { "False" }, "reason": reason,
        "message": message, "lastTransitionTime": berth_api::meta::now()})
}

impl Controller {
    fn history(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(autoscaler) = self.autoscalers.store().get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            self.history().remove(&format!("{}/{}", key.0, key.1));
            return Ok(Action::Done);
        };
        if autoscaler.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let id = autoscaler.metadata.uid.clone().unwrap_or_default();
        let spec = autoscaler.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let involved = ("autoscaling/v2", "HorizontalPodAutoscaler", &autoscaler.metadata);
        // The target's scale.
        let api_version = target.api_version.clone().unwrap_or_default();
        let scale = match berth_api::kinds::by_kind(&api_version, &target.kind) {
            None => Err(format!(
                "the server could not find the requested resource {}/{}",
                api_version, target.kind
            )),
            Some(resource) => {
                let api: Api<DynamicObject> = Api::namespaced_with(
                    self.client.clone(),
                    &key.0,
                    &crate::kinds::api_resource(resource),
                );
                api.get_scale(&target.name).await.map_err(|err| match err {
                    kube::Error::Api(status) => status.message,
                    other => other.to_string(),
                })
            }
        };
        let scale = match scale {
            Ok(scale) => scale,
            Err(message) => {
                let message = format!(
                    "the HPA controller was unable to get the target's current scale: {message}"
                );
                self.report_failure(&key, &autoscaler, &id, "FailedGetScale", &message, false)
                    .await?;
                return Ok(Action::RequeueAfter(self.period));
            }
        };
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let selector = scale.status.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        let min = spec.min_replicas.unwrap_or(1).max(0);
        let max = spec.max_replicas;
        if current == 0 && min > 0 {
            let message = "scaling is disabled since the replica count of the target is zero";
            self.report_failure(&key, &autoscaler, &id, "ScalingDisabled", message, true).await?;
            return Ok(Action::RequeueAfter(self.period));
        }
        // The selected pods' usage and requests.
        let parsed = berth_api::selector::LabelSelector::parse(&selector).ok();
        let pods: Vec<Arc<Pod>> = self.pods.store().state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.0.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && workload::phase(p) == "Running"
                && parsed.as_ref().is_some_and(|s| {
                    let labels: serde_json::Map<String, serde_json::Value> = p
                        .metadata
                        .labels
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect();
                    s.matches(Some(&labels))
                })
        });
        let metrics = self.pod_metrics(&key.0, &selector).await;
        let metric_specs = spec.metrics.clone().unwrap_or_else(|| {
            serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]))
            .unwrap_or_default()
        });
        let mut proposals = Vec::new();
        let mut failure: Option<(String, String)> = None;
        for metric in &metric_specs {
            let resource_name =
                metric.resource.as_ref().map(|r| r.name.clone()).unwrap_or_default();
            let usage: Vec<(i128, i128)> = match &metrics {
                Err(message) => {
                    failure = Some(("FailedGetResourceMetric".into(), format!("failed to get {resource_name} utilization: unable to get metrics for resource {resource_name}: {message}")));
                    continue;
                }
                Ok(metrics) => pods
                    .iter()
                    .filter_map(|pod| {
                        let name = pod.metadata.name.as_deref()?;
                        let used = metrics.get(name)?.get(&resource_name).copied()?;
                        let requested: i128 = pod
                            .spec
                            .iter()
                            .flat_map(|s| s.containers.iter())
                            .filter_map(|c| {
                                c.resources.as_ref()?.requests.as_ref()?.get(&resource_name)
                            })
                            .filter_map(|q| berth_api::quantity::parse_milli(&q.0))
                            .sum();
                        Some((used, requested))
                    })
                    .collect(),
            };
            match propose(metric, current, &usage) {
                Ok(proposal) => proposals.push(proposal),
                Err(why) => failure = Some(why),
            }
        }
        if proposals.is_empty() {
            let (reason, message) = failure.unwrap_or_else(|| {
                ("FailedGetResourceMetric".into(), "no metric could be computed".into())
            });
            self.report_failure(&key, &autoscaler, &id, &reason, &message, false).await?;
            return Ok(Action::RequeueAfter(self.period));
        }
        let best = proposals
            .iter()
            .max_by_key(|p| p.replicas)
            .cloned()
            .unwrap_or_else(|| proposals[0].clone());
        // Stabilization and policies.
        let now = Instant::now();
        let (up_rules, down_rules) = (rules(&spec, true), rules(&spec, false));
        let (desired, limited) = {
            let mut history = self.history();
            let entry = history.entry(id.clone()).or_default();
            let up_window = Duration::from_secs(
                up_rules.stabilization_window_seconds.unwrap_or(0).max(0) as u64,
            );
            let down_window = Duration::from_secs(
                down_rules.stabilization_window_seconds.unwrap_or(300).max(0) as u64,
            );
            let keep = up_window.max(down_window).max(Duration::from_secs(600));
            entry.recommendations.retain(|(at, _)| now.duration_since(*at) <= keep);
            entry.events.retain(|(at, _)| now.duration_since(*at) <= Duration::from_secs(1800));
            let raw = best.replicas;
            let up_recommendation = entry
                .recommendations
                .iter()
                .filter(|(at, _)| now.duration_since(*at) <= up_window)
                .map(|(_, r)| *r)
                .chain([raw])
                .min()
                .unwrap_or(raw);
            let down_recommendation = entry
                .recommendations
                .iter()
                .filter(|(at, _)| now.duration_since(*at) <= down_window)
                .map(|(_, r)| *r)
                .chain([raw])
                .max()
                .unwrap_or(raw);
            entry.recommendations.push((now, raw));
            let mut stabilized = current;
            if stabilized < up_recommendation {
                stabilized = up_recommendation;
            }
            if stabilized > down_recommendation {
                stabilized = down_recommendation;
            }
            let mut desired = stabilized;
            if desired > current {
                desired = desired.min(
                    policy_limit(&up_rules, current, &entry.events, true, now).unwrap_or(current),
                );
            } else if desired < current {
                desired = desired.max(
                    policy_limit(&down_rules, current, &entry.events, false, now)
                        .unwrap_or(current),
                );
            }
            let limited = if desired > max {
                Some((
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                ))
            } else if desired < min.max(1) {
                Some((
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                ))
            } else {
                None
            };
            (desired.clamp(min.max(1), max.max(min.max(1))), limited)
        };
        let mut able = condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        );
        let mut last_scale =
            autoscaler.status.as_ref().and_then(|s| s.last_scale_time.clone()).map(|t| json!(t));
        if desired != current {
            let resource = berth_api::kinds::by_kind(&api_version, &target.kind);
            if let Some(resource) = resource {
                let api: Api<DynamicObject> = Api::namespaced_with(
                    self.client.clone(),
                    &key.0,
                    &crate::kinds::api_resource(resource),
                );
                let patch = Patch::Merge(json!({"spec": {"replicas": desired}}));
                if let Err(err) =
                    api.patch_scale(&target.name, &PatchParams::default(), &patch).await
                {
                    let message =
                        format!("the HPA controller was unable to update the target scale: {err}");
                    workload::event(&self.client, involved, "Warning", "FailedRescale", &message)
                        .await;
                    return Err(workload::api_error(format!("rescale {}/{}", key.0, target.name))(
                        err,
                    ));
                }
                self.history().entry(id.clone()).or_default().events.push((now, desired - current));
                let why = if best.above {
                    format!("{} above target", best.describe)
                } else {
                    "All metrics below target".to_owned()
                };
                workload::event(
                    &self.client,
                    involved,
                    "Normal",
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {why}"),
                )
                .await;
                able = condition(
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    &format!("the HPA controller was able to update the target scale to {desired}"),
                );
                last_scale = Some(json!(berth_api::meta::now()));
            }
        }
        let active = condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            &format!(
                "the HPA was able to successfully calculate a replica count from {}",
                best.describe
            ),
        );
        let limited = match limited {
            Some((reason, message)) => condition("ScalingLimited", true, reason, message),
            None => condition(
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            ),
        };
        self.history().entry(id.clone()).or_default().told = None;
        let status = json!({
            "observedGeneration": autoscaler.metadata.generation,
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": proposals.iter().map(|p| p.current.clone()).collect::<Vec<_>>(),
            "lastScaleTime": last_scale,
            "conditions": self.keep_transition_times(&autoscaler, vec![able, active, limited]),
        });
        self.write_status(&key, status).await?;
        Ok(Action::RequeueAfter(self.period))
    }

    /// Usage per pod of the namespace the selector picks: pod → resource → thousandths.
    async fn pod_metrics(
        &self,
        namespace: &str,
        selector: &str,
    ) -> Result<HashMap<String, BTreeMap<String, i128>>, String> {
        let resource = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let list =
            api.list(&ListParams::default().labels(selector)).await.map_err(|err| match err {
                kube::Error::Api(status) => status.message,
                other => other.to_string(),
            })?;
        let mut usage = HashMap::new();
        for item in list.items {
            let Some(name) = item.metadata.name.clone() else { continue };
            let mut sums: BTreeMap<String, i128> = BTreeMap::new();
            for container in item.data["containers"].as_array().into_iter().flatten() {
                for (resource, quantity) in container["usage"].as_object().into_iter().flatten() {
                    if let Some(value) =
                        quantity.as_str().and_then(berth_api::quantity::parse_milli)
                    {
                        *sums.entry(resource.clone()).or_insert(0) += value;
                    }
                }
            }
            usage.insert(name, sums);
        }
        Ok(usage)
    }

    /// Conditions keep their transition time while their status stays.
    fn keep_transition_times(
        &self,
        autoscaler: &HorizontalPodAutoscaler,
        mut conditions: Vec<serde_json::Value>,
    ) -> Vec<serde_json::Value> {
        let old = autoscaler.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        for condition in &mut conditions {
            if let Some(previous) = old.iter().find(|c| c.type_ == condition["type"]) {
                if previous.status == condition["status"] {
                    if let Some(time) = previous.last_transition_time.as_ref() {
                        condition["lastTransitionTime"] = json!(time);
                    }
                }
            }
        }
        conditions
    }

    /// ScalingActive (or AbleToScale) false with the reason; an event when it is new.
    async fn report_failure(
        &self,
        key: &Key,
        autoscaler: &HorizontalPodAutoscaler,
        id: &str,
        reason: &str,
        message: &str,
        normal: bool,
    ) -> Result<(), Error> {
        let involved = ("autoscaling/v2", "HorizontalPodAutoscaler", &autoscaler.metadata);
        let new = {
            let mut history = self.history();
            let entry = history.entry(id.to_owned()).or_default();
            let new = entry.told.as_deref() != Some(reason);
            entry.told = Some(reason.to_owned());
            new
        };
        if new && !normal {
            workload::event(&self.client, involved, "Warning", reason, message).await;
        }
        let conditions = if reason == "FailedGetScale" {
            vec![condition("AbleToScale", false, reason, message)]
        } else {
            vec![
                condition(
                    "AbleToScale",
                    true,
                    "SucceededGetScale",
                    "the HPA controller was able to get the target's current scale",
                ),
                condition("ScalingActive", false, reason, message),
            ]
        };
        let status = json!({
            "observedGeneration": autoscaler.metadata.generation,
            "currentReplicas": autoscaler.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0),
            "desiredReplicas": autoscaler.status.as_ref().map(|s| s.desired_replicas).unwrap_or(0),
            "conditions": self.keep_transition_times(autoscaler, conditions),
        });
        self.write_status(key, status).await
    }

    async fn write_status(&self, key: &Key, status: serde_json::Value) -> Result<(), Error> {
        let current = self
            .autoscalers
            .store()
            .get(&ObjectRef::new(&key.1).within(&key.0))
            .and_then(|a| serde_json::to_value(&a.status).ok())
            .unwrap_or_default();
        let same = ["currentReplicas", "desiredReplicas", "currentMetrics", "conditions"]
            .iter()
            .all(|f| {
                current.get(*f) == status.get(*f)
                    || (current.get(*f).is_none() && status[*f].is_null())
            });
        if same {
            return Ok(());
        }
        workload::patch_status::<HorizontalPodAutoscaler>(&self.client, key, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(value: serde_json::Value) -> MetricSpec {
        serde_json::from_value(value).unwrap_or_default()
    }

    #[test]
    fn proposals_follow_the_replica_calculator() {
        let cpu = metric(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}));
        // Two pods at 200m of 100m requested: 200% against 50%: four times as many.
        let up = propose(&cpu, 2, &[(200, 100), (200, 100)]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(up.replicas, 8);
        assert_eq!(up.current["resource"]["current"]["averageUtilization"], 200);
        assert!(up.above);
        // Within 10% of the target: no change.
        assert_eq!(propose(&cpu, 3, &[(52, 100), (53, 100), (50, 100)]).map(|p| p.replicas), Ok(3));
        // Low: fewer.
        assert_eq!(propose(&cpu, 4, &[(10, 100); 4]).map(|p| p.replicas), Ok(1));
        // A pod without a request cannot be measured against one.
        assert!(propose(&cpu, 1, &[(10, 0)]).is_err());
        let memory = metric(json!({"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "AverageValue", "averageValue": "100Mi"}}}));
        let mib = 1024 * 1024 * 1000;
        assert_eq!(
            propose(&memory, 2, &[(150 * mib, 0), (150 * mib, 0)]).map(|p| p.replicas),
            Ok(3)
        );
    }

    #[test]
    fn policies_limit_each_step() {
        let spec = HorizontalPodAutoscalerSpec::default();
        let now = Instant::now();
        // Up: double or +4, whichever is more.
        assert_eq!(policy_limit(&rules(&spec, true), 1, &[], true, now), Some(5));
        assert_eq!(policy_limit(&rules(&spec, true), 10, &[], true, now), Some(20));
        // Four already added in this period count against it.
        assert_eq!(policy_limit(&rules(&spec, true), 5, &[(now, 4)], true, now), Some(5));
        // Down: all at once by default.
        assert_eq!(policy_limit(&rules(&spec, false), 8, &[], false, now), Some(0));
        assert_eq!(rules(&spec, false).stabilization_window_seconds, Some(300));
    }
}
