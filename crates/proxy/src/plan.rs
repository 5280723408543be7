//! Services and EndpointSlices → the nftables ruleset that makes them answer, as a pure
//! function; and the transaction that turns one ruleset into the next, touching only what
//! changed. The table (`ip berth-services`):
//!
//! ```text
//! map service-ips     { ipv4_addr . inet_proto . inet_service : verdict }   ClusterIP, externalIPs
//! map service-nodeports { inet_proto . inet_service : verdict }             NodePort on local addresses
//! set no-endpoints    { ipv4_addr . inet_proto . inet_service }             rejected at once
//! chain nat-prerouting / nat-output  → services: the two maps
//! chain svc-<hash>  one per service port: a rule per ready endpoint, each marking for
//!                   masquerade and DNATing; rule i of n is taken with probability
//!                   1/(n-i) (`numgen random mod (n-i) 0`), so each endpoint gets 1/n
//! chain nat-postrouting: masquerade what was marked (so replies come back through us)
//! chain filter-*: reject traffic to a service port without endpoints
//! ```
//! With `sessionAffinity: ClientIP` a service port needs per-endpoint state: its chain
//! first sends a client to the endpoint it was sent to within the timeout, then picks one
//! the same way, through a chain per endpoint (`ep-<hash>`: mark, remember the client in
//! `aff-<hash>`, dnat).
//!
//! Why rules and not a chain per endpoint behind a verdict map (kube-proxy's shape): a
//! transaction that adds a jump or goto makes the kernel walk every chain reachable from
//! the base chains to check for loops, and nft reads every chain and set before it sends
//! anything; with 1,000 services of 10 endpoints that is 11,000 chains and 21,000 rules
//! per change (about 75 ms for a one-endpoint change measured with `nft -f` here) against
//! 1,000 chains (about 25 ms). Why not `numgen random mod n map { ... }` either: on this
//! machine's kernel (6.18) a transaction that replaces a rule holding an anonymous map (or
//! swaps a verdict map's element) lets an occasional packet through with no translation,
//! lost: 6 of 434,000 connections over 600 such changes, none with plain rules (a scratch
//! namespace toggling one service's endpoints, as benches/proxy.sh does).
//!
//! Only ready endpoints serve; when a port has none ready, the serving-but-terminating ones
//! do, as Kubernetes falls back.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub const TABLE: &str = "berth-services";
/// The packet mark that asks for masquerade on the way out.
const MARK: u32 = 0x4000;

/// The desired ruleset: chains with their rules, and the elements of the maps and set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub chains: BTreeMap<String, Vec<String>>,
    /// `ip . proto . port` → `goto chain`.
    pub service_ips: BTreeMap<String, String>,
    /// `proto . port` → `goto chain`.
    pub node_ports: BTreeMap<String, String>,
    /// `ip . proto . port` with no endpoint at all.
    pub no_endpoints: BTreeSet<String>,
    /// Session-affinity sets: name → timeout in seconds.
    pub sets: BTreeMap<String, i32>,
}

/// A short stable name for a chain (FNV-1a, 64 bits).
fn hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One endpoint address and port of a service port, and the node it is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    ip: String,
    port: i32,
    node: Option<String>,
}

fn protocol(text: Option<&str>) -> &'static str {
    match text {
        Some("UDP") => "udp",
        Some("SCTP") => "sctp",
        _ => "tcp",
    }
}

/// A service chain choosing among `targets`; `masquerade` marks the traffic for source
/// NAT (not for `externalTrafficPolicy: Local`, which keeps the client's address);
/// `affinity` is a ClientIP timeout.
fn service_chain(
    plan: &mut Plan,
    key: &str,
    proto: &str,
    targets: &[Target],
    masquerade: bool,
    affinity: Option<i32>,
) -> String {
    let chain = format!("svc-{}", hash(key));
    let mark =
        if masquerade { format!("meta mark set meta mark | {MARK:#x} ") } else { String::new() };
    let Some(timeout) = affinity else {
        let rules = pick(targets, |_, target| {
            format!("{mark}meta l4proto {proto} dnat to {}:{}", target.ip, target.port)
        });
        plan.chains.insert(chain.clone(), rules);
        return chain;
    };
    let mut sticky = Vec::new();
    let mut endpoint_chains = Vec::new();
    for target in targets {
        let endpoint = format!("{key}/{}:{}", target.ip, target.port);
        let endpoint_chain = format!("ep-{}", hash(&endpoint));
        let set = format!("aff-{}", hash(&format!("{endpoint}/{timeout}")));
        let mut rules = Vec::new();
        if masquerade {
            rules.push(format!("meta mark set meta mark | {MARK:#x}"));
        }
        rules.push(format!("update @{set} {{ ip saddr }}"));
        sticky.push(format!("ip saddr @{set} goto {endpoint_chain}"));
        plan.sets.insert(set, timeout);
        rules.push(format!("meta l4proto {proto} dnat to {}:{}", target.ip, target.port));
        plan.chains.insert(endpoint_chain.clone(), rules);
        endpoint_chains.push(endpoint_chain);
    }
    sticky.extend(pick(targets, |index, _| format!("goto {}", endpoint_chains[index])));
    plan.chains.insert(chain.clone(), sticky);
    chain
}

/// Rules that send a connection to one of `targets` (`action` of its index and itself)
/// with equal chances: the i-th of n is taken with probability 1/(n-i) when the ones
/// before were not, the last always.
fn pick(targets: &[Target], action: impl Fn(usize, &Target) -> String) -> Vec<String> {
    let n = targets.len();
    targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            if i + 1 == n {
                action(i, target)
            } else {
                format!("numgen random mod {} 0 {}", n - i, action(i, target))
            }
        })
        .collect()
}

/// The ruleset for these Services and EndpointSlices, on the node `node` (whose
/// endpoints are the local ones for the `Local` traffic policies).
pub fn plan<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    node: Option<&str>,
) -> Plan {
    // The IPv4 slices of each service, found once (not a scan of all slices per service).
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let slice = slice.borrow();
        if slice.address_type != "IPv4" {
            continue;
        }
        let owner =
            slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
        if let (Some(namespace), Some(owner)) = (slice.metadata.namespace.as_deref(), owner) {
            by_service.entry((namespace, owner.as_str())).or_default().push(slice);
        }
    }
    let mut plan = Plan::default();
    for service in services {
        let service = service.borrow();
        let Some(spec) = &service.spec else { continue };
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let cluster_ips: Vec<String> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip != "None" && !ip.is_empty() && !ip.contains(':'))
            .collect();
        if cluster_ips.is_empty() {
            continue; // headless: DNS only
        }
        let mine: &[&EndpointSlice] =
            by_service.get(&(namespace.as_str(), name.as_str())).map_or(&[], Vec::as_slice);
        for port in spec.ports.iter().flatten() {
            let proto = protocol(port.protocol.as_deref());
            let port_name = port.name.clone().unwrap_or_default();
            // Endpoints of this port: the slice port with the same name and protocol.
            let mut ready = BTreeSet::new();
            let mut serving = BTreeSet::new();
            for slice in mine {
                let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && protocol(p.protocol.as_deref()) == proto
                }) else {
                    continue;
                };
                let Some(target_port) = slice_port.port else { continue };
                for endpoint in &slice.endpoints {
                    let conditions = endpoint.conditions.clone().unwrap_or_default();
                    for ip in &endpoint.addresses {
                        let target = Target {
                            ip: ip.clone(),
                            port: target_port,
                            node: endpoint.node_name.clone(),
                        };
                        if conditions.ready.unwrap_or(true) {
                            ready.insert(target);
                        } else if conditions.serving.unwrap_or(false)
                            && conditions.terminating.unwrap_or(false)
                        {
                            serving.insert(target);
                        }
                    }
                }
            }
            let targets: Vec<Target> = if ready.is_empty() {
                serving.into_iter().collect()
            } else {
                ready.into_iter().collect()
            };
            let key = format!("{namespace}/{name}/{port_name}/{proto}");
            // Addresses reached from inside the cluster, and from outside it.
            let internal_addresses = cluster_ips.clone();
            let mut external_addresses = spec.external_ips.clone().unwrap_or_default();
            // A LoadBalancer's ingress addresses (this node's, from the built-in balancer).
            if kind == "LoadBalancer" {
                let ingress = service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.clone());
                external_addresses.extend(
                    ingress
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.ip)
                        .filter(|ip| !ip.contains(':')),
                );
            }
            let node_port = port.node_port.filter(|_| kind == "NodePort" || kind == "LoadBalancer");
            // The `Local` traffic policies: only this node's endpoints (none: refused).
            let local = |targets: &[Target]| -> Vec<Target> {
                targets
                    .iter()
                    .filter(|t| node.is_some_and(|n| t.node.as_deref() == Some(n)))
                    .cloned()
                    .collect()
            };
            let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
            let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
            let internal = if internal_local { local(&targets) } else { targets.clone() };
            let external = if external_local { local(&targets) } else { targets.clone() };
            // `sessionAffinity: ClientIP`: a client goes back to the endpoint it was sent
            // to, until it has been quiet for the timeout (Kubernetes' default: 3 hours).
            let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .filter(|t| *t > 0)
                    .unwrap_or(10_800)
            });
            let internal_key =
                if internal_local { format!("{key}/internal-local") } else { key.clone() };
            let external_key =
                if external_local { format!("{key}/external-local") } else { key.clone() };
            let mut internal_chain = None;
            if internal.is_empty() {
                for ip in &internal_addresses {
                    plan.no_endpoints.insert(format!("{ip} . {proto} . {}", port.port));
                }
            } else {
                let chain =
                    service_chain(&mut plan, &internal_key, proto, &internal, true, affinity);
                for ip in &internal_addresses {
                    plan.service_ips
                        .insert(format!("{ip} . {proto} . {}", port.port), format!("goto {chain}"));
                }
                internal_chain = Some(chain);
            }
            if external.is_empty() {
                for ip in &external_addresses {
                    plan.no_endpoints.insert(format!("{ip} . {proto} . {}", port.port));
                }
                if let Some(node_port) = node_port {
                    plan.no_endpoints.insert(format!("0.0.0.0 . {proto} . {node_port}"));
                }
                continue;
            }
            let chain = match internal_chain.filter(|_| external_key == internal_key) {
                Some(chain) => chain,
                None => service_chain(
                    &mut plan,
                    &external_key,
                    proto,
                    &external,
                    !external_local,
                    affinity,
                ),
            };
            for ip in &external_addresses {
                plan.service_ips
                    .insert(format!("{ip} . {proto} . {}", port.port), format!("goto {chain}"));
            }
            if let Some(node_port) = node_port {
                plan.node_ports.insert(format!("{proto} . {node_port}"), format!("goto {chain}"));
            }
        }
    }
    plan
}

/// The fixed part of the table: hooks, maps, the set and the chains that use them.
fn skeleton(localhost: bool) -> String {
    // Node ports answer on the node's addresses; on loopback only when asked (traffic
    // from 127.0.0.1 can leave the host only with route_localnet, as kube-proxy's
    // iptables mode sets it).
    let local = if localhost {
        "fib daddr type local".to_owned()
    } else {
        "fib daddr type local ip daddr != 127.0.0.0/8".to_owned()
    };
    let stamp = skeleton_stamp(localhost);
    format!(
        r#"table ip {TABLE} {{
  map service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map service-nodeports {{ type inet_proto . inet_service : verdict; }}
  set no-endpoints {{ type ipv4_addr . inet_proto . inet_service; }}
  set no-endpoint-nodeports {{ type inet_proto . inet_service; }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    {local} meta l4proto . th dport vmap @service-nodeports comment "{stamp}"
  }}
  chain nat-prerouting {{ type nat hook prerouting priority -100; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain nat-postrouting {{ type nat hook postrouting priority 100; policy accept; meta mark & {MARK:#x} == {MARK:#x} masquerade; }}
  chain reject-no-endpoints {{
    ip daddr . meta l4proto . th dport @no-endpoints reject
    {local} meta l4proto . th dport @no-endpoint-nodeports reject
  }}
  chain filter-output {{ type filter hook output priority 0; policy accept; jump reject-no-endpoints; }}
  chain filter-forward {{ type filter hook forward priority 0; policy accept; jump reject-no-endpoints; }}
  chain filter-input {{ type filter hook input priority 0; policy accept; jump reject-no-endpoints; }}
}}
"#
    )
}

/// The comment on the skeleton's last `services` rule: which skeleton this is (a restarted
/// proxy whose skeleton differs rebuilds the table).
fn skeleton_stamp(localhost: bool) -> String {
    format!("berth:skeleton:1:{}", if localhost { "localhost" } else { "addresses" })
}

/// The comment on the last rule of a chain: a hash of its rules, so that a restarted proxy
/// can tell which chains in the kernel are as planned.
fn stamp(rules: &[String]) -> String {
    format!("berth:{}", hash(&rules.join("\n")))
}

/// The plan the kernel's table holds, from `nft -j list table` (its JSON), as far as it
/// matters for reaching `next`: chains whose stamp matches `next`'s rules count as
/// planned, others (changed, or written by someone else) as to be rewritten; map and set
/// elements as they are. `None` when there is no table, or its skeleton is not this one:
/// then the table is rebuilt whole.
pub fn from_kernel(listing: &str, localhost: bool, next: &Plan) -> Option<Plan> {
    let listing: serde_json::Value = serde_json::from_str(listing).ok()?;
    let objects = listing.get("nftables")?.as_array()?;
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let key = |value: &serde_json::Value| match value.get("concat").and_then(|c| c.as_array()) {
        Some(parts) => parts.iter().map(text).collect::<Vec<_>>().join(" . "),
        None => text(value),
    };
    let verdict = |value: &serde_json::Value| {
        ["goto", "jump"].iter().find_map(|kind| {
            let target = value.get(kind)?.get("target")?.as_str()?;
            Some(format!("{kind} {target}"))
        })
    };
    const SKELETON: [&str; 8] = [
        "services",
        "nat-prerouting",
        "nat-output",
        "nat-postrouting",
        "reject-no-endpoints",
        "filter-output",
        "filter-forward",
        "filter-input",
    ];
    let mut previous = Plan::default();
    let mut last_comment: BTreeMap<String, Option<String>> = BTreeMap::new();
    for object in objects {
        if let Some(chain) = object.get("chain") {
            let name = chain.get("name")?.as_str()?.to_owned();
            last_comment.entry(name).or_insert(None);
        } else if let Some(rule) = object.get("rule") {
            let chain = rule.get("chain")?.as_str()?.to_owned();
            let comment = rule.get("comment").and_then(|c| c.as_str()).map(str::to_owned);
            last_comment.insert(chain, comment);
        } else if let Some(map) = object.get("map") {
            let elements = map.get("elem").and_then(|e| e.as_array()).cloned().unwrap_or_default();
            let target = match map.get("name")?.as_str()? {
                "service-ips" => &mut previous.service_ips,
                "service-nodeports" => &mut previous.node_ports,
                _ => continue,
            };
            for element in elements {
                let pair = element.as_array()?;
                target.insert(key(pair.first()?), verdict(pair.get(1)?)?);
            }
        } else if let Some(set) = object.get("set") {
            let name = set.get("name")?.as_str()?;
            let elements = set.get("elem").and_then(|e| e.as_array()).cloned().unwrap_or_default();
            match name {
                "no-endpoints" => {
                    previous.no_endpoints.extend(elements.iter().map(key));
                }
                "no-endpoint-nodeports" => previous
                    .no_endpoints
                    .extend(elements.iter().map(|e| format!("0.0.0.0 . {}", key(e)))),
                _ if name.starts_with("aff-") => {
                    let timeout = set.get("timeout").and_then(|t| t.as_i64()).unwrap_or(0);
                    previous.sets.insert(name.to_owned(), i32::try_from(timeout).unwrap_or(0));
                }
                _ => {}
            }
        }
    }
    if last_comment.get("services")? != &Some(skeleton_stamp(localhost)) {
        return None;
    }
    for (chain, comment) in last_comment {
        if SKELETON.contains(&chain.as_str()) {
            continue;
        }
        let rules = match next.chains.get(&chain) {
            Some(rules) if comment.as_deref() == Some(stamp(rules).as_str()) => rules.clone(),
            // Not as planned: rewritten (or deleted, when `next` has no such chain).
            _ => Vec::new(),
        };
        previous.chains.insert(chain, rules);
    }
    Some(previous)
}

/// Splits the no-endpoints entries between the address set and the node-port set.
fn no_endpoint_sets(plan: &Plan) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut addresses = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for entry in &plan.no_endpoints {
        match entry.strip_prefix("0.0.0.0 . ") {
            Some(rest) => node_ports.insert(rest.to_owned()),
            None => addresses.insert(entry.clone()),
        };
    }
    (addresses, node_ports)
}

/// The whole table from nothing: the old one (if any) removed in the same transaction.
/// `localhost`: node ports answer on 127.0.0.1 too.
pub fn full(plan: &Plan, localhost: bool) -> String {
    let mut script = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    script.push_str(&skeleton(localhost));
    script.push_str(&changes(&Plan::default(), plan));
    script
}

/// Only what differs between `previous` and `next`, in an order nft accepts in one
/// transaction: new chains, changed chains rewritten, map elements swapped, old chains
/// deleted once nothing points at them.
pub fn changes(previous: &Plan, next: &Plan) -> String {
    let mut script = String::new();
    // Sets before the rules that name them.
    for (set, timeout) in &next.sets {
        if !previous.sets.contains_key(set) {
            script.push_str(&format!(
                "add set ip {TABLE} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}\n"
            ));
        }
    }
    for (chain, rules) in &next.chains {
        match previous.chains.get(chain) {
            Some(old) if old == rules => continue,
            Some(_) => script.push_str(&format!("flush chain ip {TABLE} {chain}\n")),
            None => script.push_str(&format!("add chain ip {TABLE} {chain}\n")),
        }
        // The last rule carries the chain's stamp (see `from_kernel`).
        for (index, rule) in rules.iter().enumerate() {
            script.push_str(&format!("add rule ip {TABLE} {chain} {rule}"));
            if index + 1 == rules.len() {
                script.push_str(&format!(" comment \"{}\"", stamp(rules)));
            }
            script.push('\n');
        }
    }
    let swap = |name: &str,
                old: &BTreeMap<String, String>,
                new: &BTreeMap<String, String>,
                script: &mut String| {
        let gone: Vec<&String> =
            old.iter().filter(|(k, v)| new.get(*k) != Some(*v)).map(|(k, _)| k).collect();
        if !gone.is_empty() {
            let list: Vec<&str> = gone.iter().map(|k| k.as_str()).collect();
            script
                .push_str(&format!("delete element ip {TABLE} {name} {{ {} }}\n", list.join(", ")));
        }
        let added: Vec<String> = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} : {v}"))
            .collect();
        if !added.is_empty() {
            script.push_str(&format!("add element ip {TABLE} {name} {{ {} }}\n", added.join(", ")));
        }
    };
    swap("service-ips", &previous.service_ips, &next.service_ips, &mut script);
    swap("service-nodeports", &previous.node_ports, &next.node_ports, &mut script);
    let (old_addresses, old_ports) = no_endpoint_sets(previous);
    let (new_addresses, new_ports) = no_endpoint_sets(next);
    for (name, old, new) in [
        ("no-endpoints", old_addresses, new_addresses),
        ("no-endpoint-nodeports", old_ports, new_ports),
    ] {
        let gone: Vec<&String> = old.difference(&new).collect();
        if !gone.is_empty() {
            let list: Vec<&str> = gone.iter().map(|s| s.as_str()).collect();
            script
                .push_str(&format!("delete element ip {TABLE} {name} {{ {} }}\n", list.join(", ")));
        }
        let added: Vec<&String> = new.difference(&old).collect();
        if !added.is_empty() {
            let list: Vec<&str> = added.iter().map(|s| s.as_str()).collect();
            script.push_str(&format!("add element ip {TABLE} {name} {{ {} }}\n", list.join(", ")));
        }
    }
    // Service chains go before the endpoint chains they jump to.
    let mut gone: Vec<&String> =
        previous.chains.keys().filter(|c| !next.chains.contains_key(*c)).collect();
    gone.sort_by_key(|c| !c.starts_with("svc-"));
    for chain in gone {
        script.push_str(&format!("delete chain ip {TABLE} {chain}\n"));
    }
    // Sets after the rules that named them.
    for set in previous.sets.keys().filter(|s| !next.sets.contains_key(*s)) {
        script.push_str(&format!("delete set ip {TABLE} {set}\n"));
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn web() -> Service {
        service(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]}}))
    }

    fn endpoints(ready: &[(&str, bool)]) -> EndpointSlice {
        slice(
            json!({"metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": ready.iter().map(|(ip, ok)| json!({"addresses": [ip], "conditions": {"ready": ok, "serving": ok, "terminating": false}})).collect::<Vec<_>>()}),
        )
    }

    #[test]
    fn ready_endpoints_share_the_service_port() {
        let plan = plan(
            &[web()],
            &[endpoints(&[("10.42.0.5", true), ("10.42.0.6", true), ("10.42.0.7", false)])],
            None,
        );
        let chain = plan.service_ips.get("10.43.0.20 . tcp . 80").expect("the ClusterIP is mapped");
        assert_eq!(plan.node_ports.get("tcp . 30080"), Some(chain));
        let name = chain.strip_prefix("goto ").unwrap();
        assert_eq!(plan.chains.len(), 1, "one chain, no chain per endpoint: {:?}", plan.chains);
        assert_eq!(
            plan.chains[name],
            vec![
                "numgen random mod 2 0 meta mark set meta mark | 0x4000 meta l4proto tcp dnat to 10.42.0.5:8080",
                "meta mark set meta mark | 0x4000 meta l4proto tcp dnat to 10.42.0.6:8080",
            ],
            "marked for masquerade; the unready endpoint serves nothing"
        );
        assert!(plan.no_endpoints.is_empty());
    }

    #[test]
    fn no_endpoints_rejects_and_terminating_ones_serve_as_a_last_resort() {
        let none = plan(&[web()], &[] as &[EndpointSlice], None);
        assert!(none.service_ips.is_empty());
        assert!(none.no_endpoints.contains("10.43.0.20 . tcp . 80"));
        assert!(none.no_endpoints.contains("0.0.0.0 . tcp . 30080"));
        let mut terminating = endpoints(&[("10.42.0.9", false)]);
        terminating.endpoints[0].conditions = Some(
            serde_json::from_value(json!({"ready": false, "serving": true, "terminating": true}))
                .unwrap(),
        );
        let last = plan(&[web()], &[terminating], None);
        assert!(last.chains.values().flatten().any(|r| r.contains("dnat to 10.42.0.9:8080")));
    }

    #[test]
    fn a_load_balancer_answers_on_its_ingress_address() {
        let mut lb = web();
        lb.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        lb.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.168.77.1"}]}}))
                .unwrap(),
        );
        let plan = plan(&[lb], &[endpoints(&[("10.42.0.5", true)])], None);
        assert!(plan.service_ips.contains_key("192.168.77.1 . tcp . 80"), "{:?}", plan.service_ips);
        assert!(plan.node_ports.contains_key("tcp . 30080"));
    }

    #[test]
    fn headless_and_external_name_services_program_nothing() {
        let headless = service(
            json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}),
        );
        let external = service(
            json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        );
        assert_eq!(plan(&[headless, external], &[] as &[EndpointSlice], None), Plan::default());
    }

    #[test]
    fn client_ip_affinity_sends_a_client_back_to_its_endpoint() {
        let mut sticky = web();
        let spec = sticky.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(k8s_openapi::api::core::v1::SessionAffinityConfig {
            client_ip: Some(k8s_openapi::api::core::v1::ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        let plan = plan(&[sticky], &[endpoints(&[("10.42.0.5", true), ("10.42.0.6", true)])], None);
        assert_eq!(plan.sets.len(), 2);
        assert!(plan.sets.values().all(|t| *t == 60));
        let chain = plan.chains.iter().find(|(c, _)| c.starts_with("svc-")).unwrap().1;
        assert_eq!(
            chain.len(),
            4,
            "two remembered clients' rules, then the random pick: {chain:?}"
        );
        assert!(chain[0].starts_with("ip saddr @aff-"), "{chain:?}");
        assert!(chain[2].starts_with("numgen random mod 2 0 goto ep-"), "{chain:?}");
        assert!(chain[3].starts_with("goto ep-"), "{chain:?}");
        let endpoint = plan.chains.iter().find(|(c, _)| c.starts_with("ep-")).unwrap().1;
        assert!(endpoint[1].starts_with("update @aff-") && endpoint[2].contains("dnat to"));
        // Made before their chains, removed after them; service chains go before the
        // endpoint chains they jump to.
        let made = changes(&Plan::default(), &plan);
        assert!(made.find("add set").unwrap() < made.find("add chain").unwrap(), "{made}");
        let removed = changes(&plan, &Plan::default());
        assert!(
            removed.rfind("delete chain").unwrap() < removed.find("delete set").unwrap(),
            "{removed}"
        );
        let svc = removed.find("delete chain ip berth-services svc-").unwrap();
        assert!(svc < removed.find("delete chain ip berth-services ep-").unwrap(), "{removed}");
    }

    #[test]
    fn local_traffic_policies_keep_to_this_nodes_endpoints() {
        let mut both = slice(
            json!({"metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "nodeName": "here", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.5"], "nodeName": "there", "conditions": {"ready": true}}]}),
        );
        let mut local = web();
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let plan_here = plan(&[local.clone()], std::slice::from_ref(&both), Some("here"));
        // The ClusterIP balances over both; the node port only to this node's, unmasqueraded.
        let internal = &plan_here.chains
            [plan_here.service_ips["10.43.0.20 . tcp . 80"].trim_start_matches("goto ")];
        assert!(internal[0].contains("numgen random mod 2"), "{internal:?}");
        let external =
            &plan_here.chains[plan_here.node_ports["tcp . 30080"].trim_start_matches("goto ")];
        assert_eq!(
            external,
            &vec!["meta l4proto tcp dnat to 10.42.0.5:8080".to_owned()],
            "the client's address kept"
        );
        // A node without a local endpoint refuses its node port, not the ClusterIP.
        let plan_elsewhere = plan(&[local], std::slice::from_ref(&both), Some("nowhere"));
        assert!(plan_elsewhere.no_endpoints.contains("0.0.0.0 . tcp . 30080"));
        assert!(plan_elsewhere.service_ips.contains_key("10.43.0.20 . tcp . 80"));
        // internalTrafficPolicy: Local: the ClusterIP only to this node's.
        let mut internal_only = web();
        internal_only.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        both.endpoints.retain(|e| e.node_name.as_deref() == Some("there"));
        let plan_internal = plan(&[internal_only], &[both], Some("here"));
        assert!(plan_internal.no_endpoints.contains("10.43.0.20 . tcp . 80"));
        assert!(
            plan_internal.node_ports.contains_key("tcp . 30080"),
            "external traffic still balances"
        );
    }

    #[test]
    fn node_ports_answer_on_loopback_only_when_asked() {
        let plan = plan(&[web()], &[endpoints(&[("10.42.0.5", true)])], None);
        assert!(full(&plan, false)
            .contains("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto"));
        assert!(!full(&plan, true).contains("127.0.0.0/8"));
    }

    #[test]
    fn changes_touch_only_what_changed() {
        let before =
            plan(&[web()], &[endpoints(&[("10.42.0.5", true), ("10.42.0.6", true)])], None);
        let after = plan(&[web()], &[endpoints(&[("10.42.0.5", true), ("10.42.0.8", true)])], None);
        let script = changes(&before, &after);
        assert_eq!(script.lines().count(), 3, "{script}");
        assert!(script.starts_with("flush chain ip berth-services svc-"), "{script}");
        assert!(script.contains("dnat to 10.42.0.8:8080"), "{script}");
        assert!(
            !script.contains("service-ips"),
            "the ClusterIP still goes to the same chain: {script}"
        );
        assert_eq!(changes(&after, &after), "");
        let removed = changes(&after, &Plan::default());
        let svc = removed.find("delete chain ip berth-services svc-").unwrap();
        let element = removed.find("delete element ip berth-services service-ips").unwrap();
        assert!(element < svc, "elements, then the chains they named: {removed}");
        assert!(full(&after, false)
            .starts_with("table ip berth-services\ndelete table ip berth-services\n"));
    }

    #[test]
    fn every_endpoint_gets_an_equal_share() {
        for n in 1..=12usize {
            let targets: Vec<Target> = (0..n)
                .map(|i| Target { ip: format!("10.42.0.{i}"), port: 80, node: None })
                .collect();
            let rules = pick(&targets, |_, t| format!("dnat to {}:{}", t.ip, t.port));
            // The chance of reaching rule i and taking it, as a fraction of n!: reaching
            // it keeps (m-1)/m of what each earlier `mod m` rule passed on.
            let factorial: u64 = (1..=n as u64).product();
            let mut reaching = factorial;
            for (i, rule) in rules.iter().enumerate() {
                assert!(rule.ends_with(&format!("dnat to 10.42.0.{i}:80")), "{rule}");
                let taken = match rule.strip_prefix("numgen random mod ") {
                    Some(rest) => {
                        let m: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                        let taken = reaching / m;
                        reaching -= taken;
                        taken
                    }
                    None => {
                        assert_eq!(i, n - 1, "only the last rule is unconditional");
                        reaching
                    }
                };
                assert_eq!(taken * n as u64, factorial, "rule {i} of {n}: {rules:?}");
            }
        }
    }

    /// What `nft -j list table` shows of a table that `full(plan, localhost)` made, with the
    /// chains' stamps replaced where `tampered` names them.
    fn listing(plan: &Plan, localhost: bool, tampered: &[&str]) -> String {
        let concat = |key: &str| {
            let parts: Vec<serde_json::Value> = key
                .split(" . ")
                .map(|p| p.parse::<u64>().map_or_else(|_| json!(p), |n| json!(n)))
                .collect();
            json!({"concat": parts})
        };
        let goto = |value: &str| json!({"goto": {"target": value.trim_start_matches("goto ")}});
        let (addresses, node_ports) = no_endpoint_sets(plan);
        let mut objects = vec![
            json!({"metainfo": {"version": "1.0.6"}}),
            json!({"table": {"family": "ip", "name": TABLE}}),
            json!({"map": {"name": "service-ips", "elem": plan.service_ips.iter().map(|(k, v)| json!([concat(k), goto(v)])).collect::<Vec<_>>()}}),
            json!({"map": {"name": "service-nodeports", "elem": plan.node_ports.iter().map(|(k, v)| json!([concat(k), goto(v)])).collect::<Vec<_>>()}}),
            json!({"set": {"name": "no-endpoints", "elem": addresses.iter().map(|k| concat(k)).collect::<Vec<_>>()}}),
            json!({"set": {"name": "no-endpoint-nodeports", "elem": node_ports.iter().map(|k| concat(k)).collect::<Vec<_>>()}}),
            json!({"chain": {"name": "services"}}),
            json!({"rule": {"chain": "services", "expr": []}}),
            json!({"rule": {"chain": "services", "comment": skeleton_stamp(localhost), "expr": []}}),
        ];
        for (set, timeout) in &plan.sets {
            objects.push(json!({"set": {"name": set, "timeout": timeout, "flags": ["timeout"]}}));
        }
        for (chain, rules) in &plan.chains {
            objects.push(json!({"chain": {"name": chain}}));
            let comment = if tampered.contains(&chain.as_str()) {
                "berth:0".to_owned()
            } else {
                stamp(rules)
            };
            objects.push(json!({"rule": {"chain": chain, "comment": comment, "expr": []}}));
        }
        json!({"nftables": objects}).to_string()
    }

    #[test]
    fn a_restart_reconciles_what_the_kernel_holds() {
        let two = endpoints(&[("10.42.0.5", true), ("10.42.0.6", true)]);
        let mut sticky = web();
        sticky.metadata.name = Some("sticky".into());
        let spec = sticky.spec.as_mut().unwrap();
        spec.cluster_ips = Some(vec!["10.43.0.21".into()]);
        spec.session_affinity = Some("ClientIP".into());
        let mut sticky_slice = two.clone();
        sticky_slice.metadata.labels =
            Some([("kubernetes.io/service-name".to_owned(), "sticky".to_owned())].into());
        let before = plan(&[web(), sticky.clone()], &[two.clone(), sticky_slice.clone()], None);
        let after = plan(
            &[web(), sticky],
            &[endpoints(&[("10.42.0.5", true), ("10.42.0.8", true)]), sticky_slice],
            None,
        );
        // As planned: the kernel's table counts as `before`, and the step is the usual one.
        let kernel = from_kernel(&listing(&before, false, &[]), false, &after).unwrap();
        assert_eq!(changes(&kernel, &after), changes(&before, &after));
        assert_eq!(
            changes(&from_kernel(&listing(&after, false, &[]), false, &after).unwrap(), &after),
            ""
        );
        // A chain someone changed is rewritten; chains and elements the plan no longer
        // has go; the affinity sets (and the clients they remember) stay.
        let (name, _) = after.chains.iter().find(|(c, _)| c.starts_with("ep-")).unwrap();
        let mut stale = after.clone();
        stale.chains.insert("svc-gone".into(), vec!["accept".into()]);
        stale.service_ips.insert("10.43.9.9 . tcp . 80".into(), "goto svc-gone".into());
        let script =
            changes(&from_kernel(&listing(&stale, false, &[name]), false, &after).unwrap(), &after);
        assert!(script.contains(&format!("flush chain ip {TABLE} {name}\n")), "{script}");
        assert!(
            script
                .contains("delete element ip berth-services service-ips { 10.43.9.9 . tcp . 80 }"),
            "{script}"
        );
        assert!(script.contains("delete chain ip berth-services svc-gone"), "{script}");
        assert!(!script.contains("add set") && !script.contains("delete set"), "{script}");
        assert_eq!(script.matches("add rule").count(), after.chains[name].len(), "{script}");
        // Another skeleton (node ports on loopback asked for now), or no table: rebuilt.
        assert!(from_kernel(&listing(&after, false, &[]), true, &after).is_none());
        assert!(from_kernel("", false, &after).is_none());
    }
}
