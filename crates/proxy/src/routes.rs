//! The pod network between nodes, as flannel's `host-gw` backend: for every other Node
//! with a pod range (`spec.podCIDR`, given by the server's node IPAM controller) a route
//! to that range through the Node's InternalIP. Pods then reach pods on any node at
//! their own addresses, without encapsulation and without address translation; the
//! nodes must share a network (the next hop is a neighbour).
//!
//! The routes carry a protocol number of berth's own (`proto 66`), so the loop knows
//! which are its and removes those whose Node is gone or moved; everything else in the
//! routing table is left alone. Level-triggered: on every Node change and every
//! `RESYNC`, the table is made what the Nodes say (a route someone deleted comes back).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth_reconcile::Informers;
use k8s_openapi::api::core::v1::Node;

/// The routing protocol number that marks berth's routes (`ip route ... proto 66`).
pub const PROTO: &str = "66";

/// How often the table is checked when nothing changed.
const RESYNC: Duration = Duration::from_secs(30);

/// The label of simulated nodes, which run no pods' network.
const SIMULATED: &str = "node.berth.dev/simulated";

/// The routes this node wants: each other node's pod range, through its InternalIP.
pub fn wanted(nodes: &[Arc<Node>], own_name: &str) -> BTreeMap<String, String> {
    let mut routes = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(own_name)
            || node.metadata.labels.as_ref().is_some_and(|l| l.contains_key(SIMULATED))
        {
            continue;
        }
        let Some(range) = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()) else {
            continue;
        };
        let address = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        // IPv4 ranges through IPv4 next hops (the IPAM hands out IPv4 only), and only
        // what can be a node's range: a /16 or smaller, never a default route.
        let per_node = range.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::Ipv4Addr>().is_ok()
                && bits.parse::<u8>().is_ok_and(|b| (16..=32).contains(&b))
        });
        if !per_node {
            tracing::warn!(
                "node {:?}: pod range {range:?} is not one to route",
                node.metadata.name
            );
            continue;
        }
        if let Some(address) = address.filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok()) {
            routes.insert(range, address);
        }
    }
    routes
}

/// berth's routes in the main table now: range → next hop.
fn current() -> Result<BTreeMap<String, String>, String> {
    let output = Command::new("ip")
        .args(["-j", "-4", "route", "show", "proto", PROTO])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !output.status.success() {
        return Err(format!("ip route show: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    let listed: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Array(Vec::new()));
    Ok(listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?.to_owned();
            let via = r["gateway"].as_str().unwrap_or("").to_owned();
            Some((dst, via))
        })
        .collect())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output =
        Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Whether the main table holds a route to exactly `range` (any protocol).
fn others_route(range: &str) -> bool {
    Command::new("ip")
        .args(["-4", "route", "show", "exact", range])
        .output()
        .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// Makes the table hold `wanted` of berth's routes and no other; says what failed.
pub fn apply(wanted: &BTreeMap<String, String>) -> Vec<String> {
    let mut failures = Vec::new();
    let now = match current() {
        Ok(now) => now,
        Err(err) => return vec![err],
    };
    for (range, via) in &now {
        if wanted.get(range) != Some(via) {
            if let Err(err) = ip(&["route", "del", range, "proto", PROTO]) {
                failures.push(format!("cannot remove the route to {range}: {err}"));
            } else {
                tracing::info!("route to {range} via {via} removed");
            }
        }
    }
    for (range, via) in wanted {
        if now.get(range) == Some(via) {
            continue;
        }
        // A route to the range that is not berth's (this node's own bridge, an
        // administrator's) is left alone: only berth's routes are replaced.
        if !now.contains_key(range) && others_route(range) {
            failures.push(format!(
                "a route to {range} that is not berth's is there already: the pods of that range are not routed through {via}"
            ));
            continue;
        }
        match ip(&["route", "replace", range, "via", via, "proto", PROTO]) {
            Ok(()) => tracing::info!("pods of {range} through {via}"),
            Err(err) => failures.push(format!(
                "cannot route {range} through {via}: {err} (the nodes' pod network routes through each node's InternalIP, which must be on a network this node is on)"
            )),
        }
    }
    failures
}

/// Keeps the routes to the other nodes' pods until shutdown.
pub async fn run(informers: Arc<Informers>, node_name: String) {
    let nodes = informers.typed::<Node>();
    let shutdown = informers.shutdown().clone();
    let dirty = Arc::new(tokio::sync::Notify::new());
    {
        let dirty = dirty.clone();
        nodes.follow(&informers, move |_| dirty.notify_one());
    }
    tokio::select! {
        _ = nodes.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    let mut said = Vec::new();
    loop {
        let wanted = wanted(&nodes.store().state(), &node_name);
        let failures = tokio::task::spawn_blocking(move || apply(&wanted))
            .await
            .unwrap_or_else(|e| vec![format!("the route worker failed: {e}")]);
        // Each failure once, not every resync.
        if failures != said {
            for failure in &failures {
                tracing::warn!("pod network: {failure}");
            }
            said = failures;
        }
        tokio::select! {
            _ = dirty.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_nodes_ranges_go_through_their_addresses() {
        let node = |name: &str, range: Option<&str>, ip: &str, simulated: bool| -> Arc<Node> {
            let labels = if simulated {
                serde_json::json!({SIMULATED: "true"})
            } else {
                serde_json::json!({})
            };
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"podCIDR": range},
                    "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
                }))
                .unwrap(),
            )
        };
        let nodes = vec![
            node("a", Some("10.42.0.0/24"), "192.168.1.1", false),
            node("b", Some("10.42.1.0/24"), "192.168.1.2", false),
            node("c", None, "192.168.1.3", false),
            node("sim", Some("10.42.9.0/24"), "10.244.0.1", true),
            node("v6", Some("10.42.2.0/24"), "fd00::2", false),
            node("greedy", Some("0.0.0.0/0"), "192.168.1.9", false),
        ];
        let routes = wanted(&nodes, "a");
        assert_eq!(routes, BTreeMap::from([("10.42.1.0/24".to_owned(), "192.168.1.2".to_owned())]));
        assert_eq!(
            wanted(&nodes, "b").get("10.42.0.0/24").map(String::as_str),
            Some("192.168.1.1")
        );
    }
}
