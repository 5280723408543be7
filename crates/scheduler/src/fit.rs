//! Placement as a pure function of a pod and a snapshot of the nodes, with
//! kube-scheduler's default filters (NodeUnschedulable, NodeName, NodeAffinity with the
//! node selector, TaintToleration, NodeResourcesFit, NodePorts) and scores (least
//! allocated, balanced allocation), and its message when nothing fits.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use crate::quantity::parse_milli;

/// Amounts of resources, in thousandths (millicores, millibytes, milli-units). CPU,
/// memory and the pod count sit inline, as every decision reads them on every node it
/// looks at; other resources (extended ones, ephemeral storage) in a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    common: [Option<i128>; 3],
    other: BTreeMap<String, i128>,
}

/// The resources kept inline in [`Resources`], by position.
const COMMON: [&str; 3] = ["cpu", "memory", "pods"];
const CPU: usize = 0;
const MEMORY: usize = 1;
const PODS: usize = 2;

impl Resources {
    pub fn get(&self, name: &str) -> i128 {
        match COMMON.iter().position(|c| *c == name) {
            Some(at) => self.common[at].unwrap_or(0),
            None => self.other.get(name).copied().unwrap_or(0),
        }
    }

    fn entry(&mut self, name: &str) -> &mut i128 {
        match COMMON.iter().position(|c| *c == name) {
            Some(at) => self.common[at].get_or_insert(0),
            None => self.other.entry(name.to_owned()).or_insert(0),
        }
    }

    /// Every resource named, with its amount.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i128)> {
        COMMON
            .iter()
            .zip(&self.common)
            .filter_map(|(name, amount)| amount.map(|a| (*name, a)))
            .chain(self.other.iter().map(|(name, amount)| (name.as_str(), *amount)))
    }

    fn add(&mut self, other: &Resources) {
        for (name, amount) in other.iter() {
            *self.entry(name) += amount;
        }
    }

    fn subtract(&mut self, other: &Resources) {
        for (name, amount) in other.iter() {
            *self.entry(name) -= amount;
        }
    }

    fn max(&mut self, other: &Resources) {
        for (name, amount) in other.iter() {
            let entry = self.entry(name);
            *entry = (*entry).max(amount);
        }
    }

    fn from_map(
        map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Resources {
        let mut resources = Resources::default();
        for (name, quantity) in map.into_iter().flatten() {
            if let Some(amount) = parse_milli(&quantity.0) {
                *resources.entry(name) = amount;
            }
        }
        resources
    }
}

/// What a pod asks for: the sum of its containers' requests, or more if an init
/// container asks for more, plus its overhead (kube-scheduler's computation).
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else { return Resources::default() };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    let mut total = Resources::default();
    for container in &spec.containers {
        total.add(&requests(container));
    }
    for init in spec.init_containers.iter().flatten() {
        total.max(&requests(init));
    }
    total.add(&Resources::from_map(spec.overhead.as_ref()));
    total
}

/// Host ports a pod takes: (protocol, port, host IP).
fn host_ports(pod: &Pod) -> Vec<(String, i32, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip =
                p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), port, ip))
        })
        .collect()
}

/// One node as the scheduler sees it: what it offers and what its pods take.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub pods: i128,
    pub ports: HashSet<(String, i32, String)>,
    /// The pods on the node, as inter-pod affinity and spreading see them.
    pub placed: Vec<crate::topology::Placed>,
    /// How many of them have required anti-affinity terms (so most decisions can skip
    /// looking at other pods at all).
    pub anti_affine: usize,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let status = node.status.as_ref();
        let spec = node.spec.as_ref();
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable: Resources::from_map(
                status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
            ),
            ..NodeInfo::default()
        }
    }

    /// Keeps what the node's pods take while the node itself changes.
    pub fn refresh(&mut self, node: &Node) {
        let fresh = NodeInfo::from_node(node);
        self.labels = fresh.labels;
        self.taints = fresh.taints;
        self.unschedulable = fresh.unschedulable;
        self.allocatable = fresh.allocatable;
    }

    pub fn add_pod(&mut self, requests: &Resources, pod: &Pod) {
        self.requested.add(requests);
        self.pods += 1;
        self.ports.extend(host_ports(pod));
        let placed = crate::topology::Placed::of(pod);
        if !placed.anti.is_empty() {
            self.anti_affine += 1;
        }
        self.placed.push(placed);
    }

    pub fn remove_pod(&mut self, requests: &Resources, pod: &Pod) {
        self.requested.subtract(requests);
        self.pods -= 1;
        for port in host_ports(pod) {
            self.ports.remove(&port);
        }
        let (namespace, name) = (
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
        );
        if let Some(at) =
            self.placed.iter().position(|p| p.namespace == namespace && p.name == name)
        {
            if !self.placed.swap_remove(at).anti.is_empty() {
                self.anti_affine -= 1;
            }
        }
    }
}

/// Why a node cannot take a pod, in kube-scheduler's words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Unschedulable,
    NodeName,
    Affinity,
    Taint { key: String, value: String },
    Insufficient(String),
    TooManyPods,
    Ports,
    PodAffinity,
    PodAntiAffinity,
    Spread,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Affinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Ports => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
        }
    }
}

/// Nothing fits: the reasons, by how many nodes gave each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> =
            self.reasons.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
        parts.sort();
        if parts.is_empty() {
            return write!(f, "0/{} nodes are available.", self.nodes);
        }
        write!(f, "0/{} nodes are available: {}.", self.nodes, parts.join(", "))
    }
}

/// Whether any of the tolerations tolerates the taint.
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(key) => key == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

fn requirement_holds(
    requirement: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

fn term_holds(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    // Field requirements (metadata.name) are not kept in the snapshot's labels.
    term.match_expressions.iter().flatten().all(|r| requirement_holds(r, labels))
}

/// Whether the pod's node selector and required node affinity admit the node.
pub fn node_affinity_admits(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    let selector_ok =
        spec.node_selector.iter().flatten().all(|(key, value)| node.labels.get(key) == Some(value));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    selector_ok
        && required.is_none_or(|selector| {
            selector.node_selector_terms.iter().any(|term| term_holds(term, &node.labels))
        })
}

/// The node's standing with the pod's soft wishes: the weights of its preferred node
/// affinity terms the node matches, less 100 for each PreferNoSchedule taint it does not
/// tolerate (NodeAffinity's and TaintToleration's scores).
pub fn preference(pod: &Pod, node: &NodeInfo) -> i128 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    let preferred: i128 = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .filter(|term| term_holds(&term.preference, &node.labels))
        .map(|term| i128::from(term.weight))
        .sum();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let avoided = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(tolerations, t))
        .count() as i128;
    preferred - avoided * 100
}

/// The filters, in kube-scheduler's order; the reasons of the first one that fails.
pub fn filter(pod: &Pod, requests: &Resources, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    filter_with_ports(pod, requests, &host_ports(pod), node)
}

/// [`filter`] with the pod's host ports worked out once for all the nodes looked at.
fn filter_with_ports(
    pod: &Pod,
    requests: &Resources,
    ports: &[(String, i32, String)],
    node: &NodeInfo,
) -> Result<(), Vec<Reason>> {
    let spec = pod.spec.as_ref();
    let tolerations = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    if node.unschedulable {
        let unschedulable_taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerates(tolerations, &unschedulable_taint) {
            return Err(vec![Reason::Unschedulable]);
        }
    }
    if let Some(wanted) = spec.and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) {
        if wanted != node.name {
            return Err(vec![Reason::NodeName]);
        }
    }
    if !node_affinity_admits(pod, node) {
        return Err(vec![Reason::Affinity]);
    }
    if let Some(taint) = node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerates(tolerations, t))
    {
        return Err(vec![Reason::Taint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
        }]);
    }
    let mut short = Vec::new();
    if let Some(allowed) = node.allocatable.common[PODS] {
        if node.pods + 1 > allowed / 1000 {
            short.push(Reason::TooManyPods);
        }
    }
    for (at, name) in COMMON.iter().enumerate().take(PODS) {
        let wanted = requests.common[at].unwrap_or(0);
        if wanted > 0 {
            let free =
                node.allocatable.common[at].unwrap_or(0) - node.requested.common[at].unwrap_or(0);
            if wanted > free {
                short.push(Reason::Insufficient((*name).to_owned()));
            }
        }
    }
    for (name, wanted) in &requests.other {
        if *wanted <= 0 {
            continue;
        }
        let free = node.allocatable.get(name) - node.requested.get(name);
        if *wanted > free {
            short.push(Reason::Insufficient(name.clone()));
        }
    }
    if !short.is_empty() {
        return Err(short);
    }
    if ports.iter().any(|(protocol, port, ip)| {
        node.ports.iter().any(|(p, n, i)| {
            p == protocol && n == port && (i == ip || i == "0.0.0.0" || ip == "0.0.0.0")
        })
    }) {
        return Err(vec![Reason::Ports]);
    }
    Ok(())
}

/// Least allocated and balanced allocation over CPU and memory, 0-200, as the default
/// profile weighs them (pods without requests count as kube-scheduler's defaults: 100m
/// and 200 MiB).
pub fn score(requests: &Resources, node: &NodeInfo) -> i128 {
    let fraction = |at: usize, default: i128| {
        let allocatable = node.allocatable.common[at].unwrap_or(0);
        if allocatable <= 0 {
            return 1.0;
        }
        let asked = requests.common[at].unwrap_or(0);
        let wanted = if asked > 0 { asked } else { default };
        ((node.requested.common[at].unwrap_or(0) + wanted) as f64 / allocatable as f64).min(1.0)
    };
    let cpu = fraction(CPU, 100);
    let memory = fraction(MEMORY, 200 * 1024 * 1024 * 1000);
    let least_allocated = ((1.0 - cpu) + (1.0 - memory)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu - memory).abs()) * 100.0;
    (least_allocated + balanced) as i128
}

/// How many feasible nodes to find before choosing (kube-scheduler's adaptive
/// percentageOfNodesToScore: all of a small cluster, a shrinking share of a large one,
/// never fewer than 100).
pub fn feasible_wanted(nodes: usize) -> usize {
    if nodes <= 100 {
        return nodes;
    }
    let percent = (50usize.saturating_sub(nodes / 125)).max(5);
    (nodes * percent / 100).max(100)
}

/// Chooses a node for `pod`: the best score among the feasible nodes found, looking from
/// `start` (rotated between pods, so the nodes looked at first are not always the same).
pub fn schedule<N: Borrow<NodeInfo>>(
    pod: &Pod,
    nodes: &[N],
    start: usize,
) -> Result<String, FitError> {
    let requests = pod_requests(pod);
    let ports = host_ports(pod);
    let wanted = feasible_wanted(nodes.len());
    let mut best: Option<(i128, &str)> = None;
    let mut feasible = 0;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let topology = crate::topology::Topology::needed(pod, nodes)
        .then(|| crate::topology::Topology::of(pod, nodes));
    for offset in 0..nodes.len() {
        let node: &NodeInfo = nodes[(start + offset) % nodes.len()].borrow();
        let admitted =
            filter_with_ports(pod, &requests, &ports, node).and_then(|()| match &topology {
                Some(topology) => topology.admits(node).map_err(|reason| vec![reason]),
                None => Ok(()),
            });
        match admitted {
            Ok(()) => {
                feasible += 1;
                let score = score(&requests, node)
                    + preference(pod, node)
                    + topology.as_ref().map_or(0, |t| t.score(node));
                if best.is_none_or(|(top, _)| score > top) {
                    best = Some((score, &node.name));
                }
                if feasible >= wanted {
                    break;
                }
            }
            Err(failed) => {
                for reason in failed {
                    *reasons.entry(reason.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    best.map(|(_, name)| name.to_owned()).ok_or(FitError { nodes: nodes.len(), reasons })
}

/// A pod's priority (0 when unset).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// What preemption chose: the node, and the pods to remove there (their keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<(String, String)>,
}

/// Preemption, as kube-scheduler's default plugin decides it: on each node where only
/// resources, the pod count or host ports stand in the way, the pods of lower priority
/// are taken away; if the pod then fits, they are given back from the highest priority
/// down as long as it still fits, and the rest are the victims. The node chosen has the
/// lowest highest-victim priority, then the lowest sum of priorities, then the fewest
/// victims. Pods with `preemptionPolicy: Never` preempt nothing; nodes that the pod's
/// affinity or spreading rules out are no candidates.
pub fn preempt(pod: &Pod, nodes: &[(&NodeInfo, Vec<(&Pod, &Resources)>)]) -> Option<Preemption> {
    let spec = pod.spec.as_ref()?;
    if spec.preemption_policy.as_deref() == Some("Never") {
        return None;
    }
    let mine = priority(pod);
    let requests = pod_requests(pod);
    // Nodes where other pods' placement rules the pod out (affinity, spreading) are no
    // candidates: removing pods for a node the pod still could not use helps nobody.
    // (Judged with the pods in place: a victim's own anti-affinity keeps its node out.)
    let infos: Vec<&NodeInfo> = nodes.iter().map(|(n, _)| *n).collect();
    let topology = crate::topology::Topology::needed(pod, &infos)
        .then(|| crate::topology::Topology::of(pod, &infos));
    let mut best: Option<((i64, i64, usize, String), Preemption)> = None;
    for (node, placed) in nodes {
        if topology.as_ref().is_some_and(|t| t.admits(node).is_err()) {
            continue;
        }
        match filter(pod, &requests, node) {
            Ok(()) => continue,
            Err(reasons)
                if reasons.iter().all(|r| {
                    matches!(r, Reason::Insufficient(_) | Reason::TooManyPods | Reason::Ports)
                }) => {}
            Err(_) => continue,
        }
        let mut lower: Vec<&(&Pod, &Resources)> =
            placed.iter().filter(|(p, _)| priority(p) < mine).collect();
        if lower.is_empty() {
            continue;
        }
        let mut trial = (*node).clone();
        for (victim, taken) in &lower {
            trial.remove_pod(taken, victim);
        }
        if filter(pod, &requests, &trial).is_err() {
            continue;
        }
        // Give back the most important first.
        lower.sort_by_key(|(p, _)| std::cmp::Reverse(priority(p)));
        let mut victims = Vec::new();
        for (candidate, taken) in lower {
            trial.add_pod(taken, candidate);
            if filter(pod, &requests, &trial).is_err() {
                trial.remove_pod(taken, candidate);
                victims.push(candidate);
            }
        }
        let rank = (
            victims.iter().map(|p| i64::from(priority(p))).max().unwrap_or(i64::MIN),
            victims.iter().map(|p| i64::from(priority(p))).sum::<i64>(),
            victims.len(),
            node.name.clone(),
        );
        if best.as_ref().is_none_or(|(top, _)| rank < *top) {
            let chosen = Preemption {
                node: node.name.clone(),
                victims: victims
                    .iter()
                    .map(|p| {
                        (
                            p.metadata.namespace.clone().unwrap_or_default(),
                            p.metadata.name.clone().unwrap_or_default(),
                        )
                    })
                    .collect(),
            };
            best = Some((rank, chosen));
        }
    }
    best.map(|(_, chosen)| chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(json: serde_json::Value) -> NodeInfo {
        NodeInfo::from_node(&serde_json::from_value(json).expect("node"))
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    fn small(name: &str) -> NodeInfo {
        node(json!({"metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}}))
    }

    #[test]
    fn resources_filter_and_the_message_counts_reasons() {
        let a = small("a");
        let mut b = small("b");
        b.taints = vec![Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }];
        let mut c = small("c");
        c.taints = b.taints.clone();
        let big = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": "2"}}}]}}));
        let err = schedule(&big, &[&a, &b, &c], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}."
        );
        let tolerant = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]}}),
        );
        assert!(schedule(&tolerant, &[&b], 0).is_ok());
        let any = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "tolerations": [{"operator": "Exists"}]}}));
        assert!(schedule(&any, &[&c], 0).is_ok());
    }

    #[test]
    fn selectors_affinity_names_ports_and_pod_counts() {
        let a = small("a");
        let mut b = small("b");
        b.labels.insert("disk".into(), "ssd".into());
        let wants_ssd =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "nodeSelector": {"disk": "ssd"}}}));
        assert_eq!(schedule(&wants_ssd, &[&a, &b], 0), Ok("b".to_owned()));
        let affinity = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}}}),
        );
        assert_eq!(schedule(&affinity, &[&a, &b], 0), Ok("a".to_owned()));
        let named = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}], "nodeName": "zz"}}),
        );
        assert_eq!(
            schedule(&named, &[&a], 0).unwrap_err().to_string(),
            "0/1 nodes are available: 1 node(s) didn't match the requested node name."
        );
        let ported = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}));
        let mut taken = small("taken");
        taken.add_pod(&Resources::default(), &ported);
        assert!(schedule(&ported, &[&taken], 0).is_err());
        let mut full = small("full");
        full.pods = 10;
        assert_eq!(
            schedule(&named_free(), &[&full], 0).unwrap_err().to_string(),
            "0/1 nodes are available: 1 Too many pods."
        );
        let mut cordoned = small("cordoned");
        cordoned.unschedulable = true;
        assert!(schedule(&named_free(), &[&cordoned], 0).is_err());
    }

    fn named_free() -> Pod {
        pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}))
    }

    #[test]
    fn the_least_allocated_node_wins_and_init_containers_count() {
        let mut busy = small("busy");
        let half = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}),
        );
        busy.add_pod(&pod_requests(&half), &half);
        let idle = small("idle");
        assert_eq!(schedule(&named_free(), &[&busy, &idle], 0), Ok("idle".to_owned()));
        let init = pod(
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "700m"}}}]}}),
        );
        assert_eq!(pod_requests(&init).get("cpu"), 700);
        assert_eq!(feasible_wanted(50), 50);
        assert_eq!(feasible_wanted(5000), 500);
    }

    #[test]
    fn preemption_takes_the_fewest_least_important_pods() {
        let worker = |name: &str, priority: i32, cpu: &str| {
            pod(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"priority": priority, "containers": [{"name": "c",
                    "resources": {"requests": {"cpu": cpu}}}]}}))
        };
        let urgent = worker("urgent", 1000, "600m");
        // a: one pod of priority 10 (300m) and one of 0 (400m); b: one of 5 (800m).
        let (a1, a2, b1) =
            (worker("a1", 10, "300m"), worker("a2", 0, "400m"), worker("b1", 5, "800m"));
        let mut a = small("a");
        let mut b = small("b");
        let (ra1, ra2, rb1) = (pod_requests(&a1), pod_requests(&a2), pod_requests(&b1));
        a.add_pod(&ra1, &a1);
        a.add_pod(&ra2, &a2);
        b.add_pod(&rb1, &b1);
        assert!(schedule(&urgent, &[&a, &b], 0).is_err());
        let nodes = vec![(&a, vec![(&a1, &ra1), (&a2, &ra2)]), (&b, vec![(&b1, &rb1)])];
        // On a, removing a2 (priority 0) is enough; on b, b1 (5): a wins.
        let chosen = preempt(&urgent, &nodes).expect("a node");
        assert_eq!(chosen.node, "a");
        assert_eq!(chosen.victims, [("default".to_owned(), "a2".to_owned())]);
        // Nothing of lower priority, or a policy of Never: no preemption.
        let modest = worker("modest", 0, "600m");
        assert_eq!(preempt(&modest, &nodes), None);
        let mut polite = urgent.clone();
        polite.spec.as_mut().expect("spec").preemption_policy = Some("Never".into());
        assert_eq!(preempt(&polite, &nodes), None);
        // A node the pod could never use (a selector) is not a candidate.
        let mut picky = urgent.clone();
        picky.spec.as_mut().expect("spec").node_selector =
            Some([("zone".to_owned(), "z".to_owned())].into());
        assert_eq!(preempt(&picky, &nodes), None);
    }
}
