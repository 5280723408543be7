//! The node IPAM controller, as kube-controller-manager's with `--allocate-node-cidrs`:
//! every Node gets a range of the cluster's pod network of its own (`spec.podCIDR`, the
//! lowest free one of `--node-cidr-mask-size` bits in `--cluster-cidr`), which its agent
//! hands its runtime's network and the other nodes route to. A range is given once and
//! stays with its Node; it is free again when the Node is gone. Simulated nodes run no
//! pods' network and get none.
//!
//! What is taken is read from the Nodes themselves (level-triggered: a restart finds
//! every range where it was), plus the ranges handed out whose Node the cache has not
//! shown with them yet, so two new Nodes never get one range.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use berth_reconcile::{Action, Informers, Queue};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::{Error, MAX_BACKOFF};

/// The label simulated nodes carry (berth-simnodes' `SIMULATED`).
const SIMULATED: &str = "node.berth.dev/simulated";

/// An IPv4 range, `address/bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub bits: u8,
}

impl Cidr {
    /// Parses `10.42.0.0/16`; the address must be the range's first.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an IPv4 range such as 10.42.0.0/16");
        let (address, bits) = text.trim().split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(bad)?;
        let cidr = Cidr { base, bits };
        if u32::from(base) & !cidr.mask() != 0 {
            return Err(format!(
                "{text:?} has host bits set: write {}",
                Cidr { base: Ipv4Addr::from(u32::from(base) & cidr.mask()), bits }
            ));
        }
        Ok(cidr)
    }

    fn mask(self) -> u32 {
        if self.bits == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.bits))
        }
    }

    /// The `index`th range of `bits` bits inside this one, if there is one.
    fn sub(self, bits: u8, index: u32) -> Option<Cidr> {
        if bits < self.bits || bits > 32 {
            return None;
        }
        let count = 1u64 << (bits - self.bits);
        if u64::from(index) >= count {
            return None;
        }
        let step = if bits == 32 { 1 } else { 1u64 << (32 - bits) };
        let base = u64::from(u32::from(self.base)) + u64::from(index) * step;
        Some(Cidr { base: Ipv4Addr::from(u32::try_from(base).ok()?), bits })
    }

    fn ranges(self, bits: u8) -> u32 {
        if bits < self.bits {
            return 0;
        }
        u32::try_from(1u64 << (bits - self.bits).min(31)).unwrap_or(u32::MAX)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

/// What the controller hands out.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub cluster: Cidr,
    /// Bits of each node's range (24: 254 pods a node).
    pub node_bits: u8,
}

/// The lowest range of `config` that is not in `taken`.
pub fn first_free(config: Config, taken: &BTreeSet<Cidr>) -> Option<Cidr> {
    (0..config.cluster.ranges(config.node_bits))
        .filter_map(|i| config.cluster.sub(config.node_bits, i))
        .find(|c| !taken.contains(c))
}

pub(crate) async fn run(informers: Arc<Informers>, config: Config) {
    let nodes = informers.typed::<Node>();
    let queue = Queue::<String>::new();
    let shutdown = informers.shutdown().clone();
    nodes.queue_into(&informers, &queue, |node: &Node| node.metadata.name.clone());
    tokio::select! {
        _ = nodes.ready() => {}
        _ = shutdown.cancelled() => return,
    }
    for node in nodes.store().state() {
        queue.add(node.metadata.name.clone().unwrap_or_default());
    }
    // Ranges handed out, by the Node's uid (a Node made again under its name is
    // another), until the cache shows them on their Node.
    let handed: Arc<Mutex<BTreeMap<String, Cidr>>> = Arc::default();
    let client = informers.client().clone();
    // One worker: a range is chosen knowing every earlier choice.
    berth_reconcile::run(
        "node-ipam-controller",
        queue,
        1,
        MAX_BACKOFF,
        shutdown,
        move |name: String| {
            let (client, nodes, handed) = (client.clone(), nodes.clone(), handed.clone());
            async move {
                let all = nodes.store().state();
                let mut taken = BTreeSet::new();
                {
                    let mut handed = handed.lock().unwrap_or_else(|p| p.into_inner());
                    // Forget the ranges of Nodes that are gone or show theirs now.
                    handed.retain(|uid, _| {
                        all.iter().any(|n| {
                            n.metadata.uid.as_deref() == Some(uid.as_str())
                                && n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none()
                        })
                    });
                    taken.extend(handed.values().copied());
                }
                for node in &all {
                    if let Some(Ok(cidr)) =
                        node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).map(Cidr::parse)
                    {
                        taken.insert(cidr);
                    }
                }
                let Some(node) = nodes.store().get(&ObjectRef::new(&name)) else {
                    return Ok::<_, Error>(Action::Done);
                };
                let simulated =
                    node.metadata.labels.as_ref().is_some_and(|l| l.contains_key(SIMULATED));
                let has = node.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some();
                if simulated || has || node.metadata.deletion_timestamp.is_some() {
                    return Ok(Action::Done);
                }
                let uid = node.metadata.uid.clone().unwrap_or_default();
                if let Some(cidr) = handed.lock().unwrap_or_else(|p| p.into_inner()).get(&uid) {
                    // Patched already; the cache has not caught up.
                    tracing::debug!(node = %name, %cidr, "pod range handed out, not seen yet");
                    return Ok(Action::RequeueAfter(std::time::Duration::from_secs(2)));
                }
                let Some(cidr) = first_free(config, &taken) else {
                    let message = format!(
                        "Node {name} status is now: CIDRNotAvailable (every /{} of {} is taken)",
                        config.node_bits, config.cluster
                    );
                    tracing::warn!("{message}");
                    crate::workload::event(
                        &client,
                        ("v1", "Node", &node.metadata),
                        "Normal",
                        "CIDRNotAvailable",
                        &message,
                    )
                    .await;
                    return Ok(Action::RequeueAfter(std::time::Duration::from_secs(30)));
                };
                let api: Api<Node> = Api::all(client);
                let patch =
                    json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(
                    crate::workload::api_error(format!("give node {name} its pod range")),
                )?;
                tracing::info!(node = %name, %cidr, "pod range given");
                handed.lock().unwrap_or_else(|p| p.into_inner()).insert(uid, cidr);
                Ok(Action::Done)
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_lowest_first_and_never_twice() {
        let config = Config { cluster: Cidr::parse("10.42.0.0/16").unwrap(), node_bits: 24 };
        let mut taken = BTreeSet::new();
        let first = first_free(config, &taken).unwrap();
        assert_eq!(first.to_string(), "10.42.0.0/24");
        taken.insert(first);
        taken.insert(Cidr::parse("10.42.2.0/24").unwrap());
        assert_eq!(first_free(config, &taken).unwrap().to_string(), "10.42.1.0/24");
        let all: BTreeSet<Cidr> = (0..256).map(|i| config.cluster.sub(24, i).unwrap()).collect();
        assert_eq!(all.len(), 256);
        assert!(all.iter().next_back().unwrap().to_string() == "10.42.255.0/24");
        assert_eq!(first_free(config, &all), None, "exhausted");
        assert!(Cidr::parse("10.42.0.1/16").unwrap_err().contains("write 10.42.0.0/16"));
        assert!(Cidr::parse("10.42.0.0").is_err());
        assert!(Cidr::parse("10.42.0.0/33").is_err());
        let small = Config { cluster: Cidr::parse("10.0.0.0/8").unwrap(), node_bits: 26 };
        assert_eq!(small.cluster.sub(26, 5).unwrap().to_string(), "10.0.1.64/26");
    }
}
