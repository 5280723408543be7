//! Placement that depends on other pods: inter-pod affinity and anti-affinity (required
//! and preferred, with the symmetric check of existing pods' anti-affinity) and topology
//! spread constraints, as kube-scheduler's InterPodAffinity and PodTopologySpread plugins
//! judge them. Built once per pod from the snapshot of all nodes, then asked per node.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};

use berth_api::selector::LabelSelector;
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use serde_json::{Map, Value};

use crate::fit::{NodeInfo, Reason};

/// A pod placed on a node, as affinity and spreading see it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub namespace: String,
    pub name: String,
    pub labels: Map<String, Value>,
    /// Its required anti-affinity terms (they keep matching pods out of its domain).
    pub anti: Vec<PodAffinityTerm>,
}

impl Placed {
    pub fn of(pod: &Pod) -> Placed {
        Placed {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: labels_of(pod),
            anti: pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
                .unwrap_or_default(),
        }
    }
}

fn labels_of(pod: &Pod) -> Map<String, Value> {
    pod.metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// An affinity term ready to match: its selector and the namespaces it looks in (`None`:
/// all of them, from an empty `namespaceSelector`).
struct Term {
    selector: LabelSelector,
    namespaces: Option<HashSet<String>>,
    key: String,
}

impl Term {
    /// `None` for a term that matches nothing (no label selector).
    fn of(term: &PodAffinityTerm, own_namespace: &str) -> Option<Term> {
        let selector =
            LabelSelector::from_object(&serde_json::to_value(term.label_selector.as_ref()?).ok()?)
                .ok()?;
        let everywhere = term.namespace_selector.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        });
        let namespaces = (!everywhere).then(|| {
            let mut set: HashSet<String> =
                term.namespaces.clone().unwrap_or_default().into_iter().collect();
            if set.is_empty() {
                set.insert(own_namespace.to_owned());
            }
            set
        });
        Some(Term { selector, namespaces, key: term.topology_key.clone() })
    }

    fn matches(&self, namespace: &str, labels: &Map<String, Value>) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.contains(namespace))
            && self.selector.matches(Some(labels))
    }
}

struct Spread {
    key: String,
    max_skew: i64,
    counts: HashMap<String, i64>,
    min: i64,
}

/// What other pods mean for one pod's placement.
#[derive(Default)]
pub struct Topology {
    /// Required affinity: per term, its topology key and the domains where a matching
    /// pod runs.
    affinity: Vec<(String, HashSet<String>)>,
    /// No pod matches the required terms anywhere and the pod matches them itself: the
    /// first of its group may go anywhere.
    first_of_group: bool,
    /// Required anti-affinity, the pod's own and (symmetric) existing pods': domains it
    /// may not enter, per topology key.
    anti: Vec<(String, HashSet<String>)>,
    spread: Vec<Spread>,
    soft_spread: Vec<Spread>,
    /// Preferred terms: weight (negative for anti-affinity), key, matching pods per domain.
    preferred: Vec<(i64, String, HashMap<String, i64>)>,
}

impl Topology {
    /// Whether anything about other pods matters for `pod` here (to skip the work).
    pub fn needed<N: Borrow<NodeInfo>>(pod: &Pod, nodes: &[N]) -> bool {
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        affinity.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
            || spec
                .and_then(|s| s.topology_spread_constraints.as_ref())
                .is_some_and(|c| !c.is_empty())
            || nodes.iter().any(|n| n.borrow().anti_affine > 0)
    }

    pub fn of<N: Borrow<NodeInfo>>(pod: &Pod, nodes: &[N]) -> Topology {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let own_labels = labels_of(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let affinity = spec.affinity.clone().unwrap_or_default();
        let domain_counts = |term: &Term| -> HashMap<String, i64> {
            let mut counts = HashMap::new();
            for node in nodes {
                let node: &NodeInfo = node.borrow();
                let Some(value) = node.labels.get(&term.key) else { continue };
                let n =
                    node.placed.iter().filter(|p| term.matches(&p.namespace, &p.labels)).count();
                if n > 0 {
                    *counts.entry(value.clone()).or_insert(0) += n as i64;
                }
            }
            counts
        };
        let mut topology = Topology::default();
        let required = affinity
            .pod_affinity
            .as_ref()
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        let mut self_match = true;
        for term in &required {
            match Term::of(term, &namespace) {
                Some(term) => {
                    self_match &= term.matches(&namespace, &own_labels);
                    let domains = domain_counts(&term).into_keys().collect();
                    topology.affinity.push((term.key.clone(), domains));
                }
                None => {
                    self_match = false;
                    topology.affinity.push((term.topology_key.clone(), HashSet::new()));
                }
            }
        }
        topology.first_of_group =
            self_match && topology.affinity.iter().all(|(_, domains)| domains.is_empty());
        let anti_required = affinity
            .pod_anti_affinity
            .as_ref()
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default();
        for term in anti_required.iter().filter_map(|t| Term::of(t, &namespace)) {
            let domains = domain_counts(&term).into_keys().collect();
            topology.anti.push((term.key.clone(), domains));
        }
        // Existing pods' anti-affinity keeps this pod out of their domains.
        for node in nodes.iter().map(Borrow::borrow).filter(|n: &&NodeInfo| n.anti_affine > 0) {
            for placed in node.placed.iter().filter(|p| !p.anti.is_empty()) {
                for term in placed.anti.iter().filter_map(|t| Term::of(t, &placed.namespace)) {
                    if term.matches(&namespace, &own_labels) {
                        if let Some(value) = node.labels.get(&term.key) {
                            topology.anti.push((term.key.clone(), [value.clone()].into()));
                        }
                    }
                }
            }
        }
        let preferred = affinity
            .pod_affinity
            .as_ref()
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|w| (i64::from(w.weight), w.pod_affinity_term))
            .chain(
                affinity
                    .pod_anti_affinity
                    .as_ref()
                    .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|w| (-i64::from(w.weight), w.pod_affinity_term)),
            );
        for (weight, term) in preferred {
            if let Some(term) = Term::of(&term, &namespace) {
                let counts = domain_counts(&term);
                topology.preferred.push((weight, term.key.clone(), counts));
            }
        }
        // Spreading counts matching pods of the namespace per domain, over the nodes the
        // pod's node selector and required node affinity admit.
        for constraint in spec.topology_spread_constraints.iter().flatten() {
            let Some(selector) = constraint
                .label_selector
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|s| LabelSelector::from_object(&s).ok())
            else {
                continue;
            };
            let mut counts: HashMap<String, i64> = HashMap::new();
            let admitted = nodes
                .iter()
                .map(Borrow::borrow)
                .filter(|n: &&NodeInfo| crate::fit::node_affinity_admits(pod, n));
            for node in admitted {
                let Some(value) = node.labels.get(&constraint.topology_key) else { continue };
                let n = node
                    .placed
                    .iter()
                    .filter(|p| p.namespace == namespace && selector.matches(Some(&p.labels)))
                    .count() as i64;
                *counts.entry(value.clone()).or_insert(0) += n;
            }
            let mut min = counts.values().copied().min().unwrap_or(0);
            if constraint.min_domains.is_some_and(|m| (counts.len() as i32) < m) {
                min = 0;
            }
            let spread = Spread {
                key: constraint.topology_key.clone(),
                max_skew: i64::from(constraint.max_skew.max(1)),
                counts,
                min,
            };
            if constraint.when_unsatisfiable == "ScheduleAnyway" {
                topology.soft_spread.push(spread);
            } else {
                topology.spread.push(spread);
            }
        }
        topology
    }

    /// The filters: required affinity, anti-affinity (both ways), hard spreading.
    pub fn admits(&self, node: &NodeInfo) -> Result<(), Reason> {
        if !self.first_of_group {
            for (key, domains) in &self.affinity {
                if !node.labels.get(key).is_some_and(|v| domains.contains(v)) {
                    return Err(Reason::PodAffinity);
                }
            }
        }
        for (key, domains) in &self.anti {
            if node.labels.get(key).is_some_and(|v| domains.contains(v)) {
                return Err(Reason::PodAntiAffinity);
            }
        }
        for spread in &self.spread {
            let Some(value) = node.labels.get(&spread.key) else {
                return Err(Reason::Spread);
            };
            let here = spread.counts.get(value).copied().unwrap_or(0);
            if here + 1 - spread.min > spread.max_skew {
                return Err(Reason::Spread);
            }
        }
        Ok(())
    }

    /// Preferences: domains with pods the pod prefers (or fewer it avoids), and fewer
    /// matching pods where spreading is asked for, score higher.
    pub fn score(&self, node: &NodeInfo) -> i128 {
        let mut score: i128 = 0;
        for (weight, key, counts) in &self.preferred {
            if let Some(n) = node.labels.get(key).and_then(|v| counts.get(v)) {
                score += i128::from(*weight) * i128::from((*n).min(10)) * 2;
            }
        }
        for spread in &self.soft_spread {
            let here = node.labels.get(&spread.key).and_then(|v| spread.counts.get(v)).copied();
            score -= i128::from(here.unwrap_or(0)) * 20;
        }
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, zone: &str, pods: &[Pod]) -> NodeInfo {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"zone": zone, "kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}))
        .unwrap_or_default();
        let mut info = NodeInfo::from_node(&node);
        for pod in pods {
            info.add_pod(&crate::fit::pod_requests(pod), pod);
        }
        info
    }

    fn pod(name: &str, app: &str, spec: Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "labels": {"app": app}}, "spec": spec}))
        .unwrap_or_default()
    }

    fn term(app: &str, key: &str) -> Value {
        json!([{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}])
    }

    #[test]
    fn affinity_and_anti_affinity_by_domain() {
        let db = pod("db", "db", json!({}));
        let a = node("a", "z1", std::slice::from_ref(&db));
        let b = node("b", "z1", &[]);
        let c = node("c", "z2", &[]);
        let nodes = [&a, &b, &c];
        let near = pod(
            "near",
            "cache",
            json!({"affinity": {"podAffinity":
            {"requiredDuringSchedulingIgnoredDuringExecution": term("db", "zone")}}}),
        );
        let t = Topology::of(&near, &nodes);
        assert!(t.admits(&a).is_ok() && t.admits(&b).is_ok(), "same zone as db");
        assert_eq!(t.admits(&c), Err(Reason::PodAffinity));
        let away = pod(
            "away",
            "web",
            json!({"affinity": {"podAntiAffinity":
            {"requiredDuringSchedulingIgnoredDuringExecution": term("db", "kubernetes.io/hostname")}}}),
        );
        let t = Topology::of(&away, &nodes);
        assert_eq!(t.admits(&a), Err(Reason::PodAntiAffinity));
        assert!(t.admits(&b).is_ok());
        // The first pod of a group that wants its own company may go anywhere.
        let first = pod(
            "first",
            "group",
            json!({"affinity": {"podAffinity":
            {"requiredDuringSchedulingIgnoredDuringExecution": term("group", "zone")}}}),
        );
        assert!(Topology::of(&first, &nodes).admits(&c).is_ok());
        // Symmetry: a placed pod's anti-affinity keeps matching pods out of its zone.
        let loner = pod(
            "loner",
            "loner",
            json!({"affinity": {"podAntiAffinity":
            {"requiredDuringSchedulingIgnoredDuringExecution": term("web", "zone")}}}),
        );
        let d = node("d", "z3", std::slice::from_ref(&loner));
        let plain = pod("plain", "web", json!({}));
        let t = Topology::of(&plain, &[&a, &d]);
        assert!(Topology::needed(&plain, &[&a, &d]));
        assert_eq!(t.admits(&d), Err(Reason::PodAntiAffinity));
        assert!(t.admits(&a).is_ok());
    }

    #[test]
    fn spreading_keeps_the_skew() {
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let placed = [pod("w1", "web", json!({})), pod("w2", "web", json!({}))];
        let a = node("a", "z1", &placed);
        let b = node("b", "z2", &[]);
        let next = pod("w3", "web", spread);
        let t = Topology::of(&next, &[&a, &b]);
        assert_eq!(t.admits(&a), Err(Reason::Spread), "z1 would be 3 against 0");
        assert!(t.admits(&b).is_ok());
        assert!(!Topology::needed(&pod("x", "x", json!({})), &[&a, &b]));
    }
}
