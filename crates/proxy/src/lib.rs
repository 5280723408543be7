//! The service proxy, as kube-proxy's nftables mode: every Service's cluster IPs (and
//! external IPs, and node ports on this node's addresses) lead to its ready endpoints,
//! picked at random per connection; a port without endpoints is rejected at once. `plan`
//! is the pure part (objects → ruleset → the transaction from the last one); this module
//! watches the shared caches and applies each change as one `nft -f` transaction.
//!
//! `health` serves the health-check node ports of `Local` load balancers; `routes` keeps
//! the routes to the other nodes' pods (the pod network between nodes).
//!
//! Level-triggered: any change of a Service or EndpointSlice marks the whole state dirty,
//! and the loop plans from the caches as they are then. On start the table a killed proxy
//! left is reconciled: read back (`nft -j`), and only the chains whose stamp differs and
//! the elements that differ are written. Without one (or after a failed transaction) the
//! table is rebuilt whole, atomically, so traffic never sees a gap.

pub mod health;
pub mod plan;
pub mod routes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_reconcile::Informers;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What the proxy needs to know of its node.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The node's address: LoadBalancer Services get it as their ingress (the built-in
    /// balancer, as k3s's ServiceLB), and answer there on their own ports.
    pub node_ip: Option<String>,
    /// The node's name: its endpoints are the local ones of the `Local` traffic policies.
    pub node_name: Option<String>,
    /// Node ports answer on 127.0.0.1 too (route_localnet is turned on for it).
    pub nodeport_localhost: bool,
}

/// Gives LoadBalancer Services this node's address as their ingress.
async fn balance(client: &kube::Client, services: &[Arc<Service>], node_ip: &str) {
    use kube::api::{Api, Patch, PatchParams};
    for service in services {
        if service.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
            continue;
        }
        let current: Vec<String> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip)
            .collect();
        if current == [node_ip.to_owned()] {
            continue;
        }
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": node_ip, "ipMode": "VIP"}]}}});
        if let Err(err) =
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await
        {
            tracing::warn!("the load balancer address of {namespace}/{name}: {err}");
        }
    }
}

/// Runs until the informers' shutdown.
pub async fn run(informers: Arc<Informers>, config: Config) {
    if config.nodeport_localhost {
        // Packets from 127.0.0.1 translated to a pod's address may leave the host.
        let path = "/proc/sys/net/ipv4/conf/all/route_localnet";
        if let Err(err) = std::fs::write(path, "1") {
            tracing::warn!(
                "cannot turn on {path} ({err}): node ports will not answer on 127.0.0.1"
            );
        }
    }
    let services = informers.typed::<Service>();
    let slices = informers.typed::<EndpointSlice>();
    let shutdown = informers.shutdown().clone();
    let dirty = Arc::new(tokio::sync::Notify::new());
    {
        let dirty = dirty.clone();
        services.follow(&informers, move |_| dirty.notify_one());
    }
    {
        let dirty = dirty.clone();
        slices.follow(&informers, move |_| dirty.notify_one());
    }
    tokio::select! {
        _ = async { services.ready().await; slices.ready().await } => {}
        _ = shutdown.cancelled() => return,
    }
    let mut applied: Option<plan::Plan> = None;
    let mut health = health::Servers::default();
    let client = informers.client().clone();
    loop {
        // The caches' own objects, shared, not copied.
        let all = services.store().state();
        if let Some(node_ip) = &config.node_ip {
            balance(&client, &all, node_ip).await;
        }
        let all_slices = slices.store().state();
        if let Some(node) = config.node_name.as_deref() {
            health.update(health::wanted(&all, &all_slices, node)).await;
        }
        let next = plan::plan(&all, &all_slices, config.node_name.as_deref());
        if applied.as_ref() != Some(&next) {
            let started = Instant::now();
            let script = match &applied {
                Some(previous) => plan::changes(previous, &next),
                // At start: what a proxy before this one left in the kernel is reconciled
                // (only what differs is written; remembered session-affinity clients
                // stay), unless it is not this proxy's table.
                None => berth_net::nft::list_table_json(plan::TABLE)
                    .and_then(|listing| {
                        plan::from_kernel(&listing, config.nodeport_localhost, &next)
                    })
                    .map(|previous| {
                        tracing::info!("reconciling the service rules left in the kernel");
                        plan::changes(&previous, &next)
                    })
                    .unwrap_or_else(|| plan::full(&next, config.nodeport_localhost)),
            };
            // Empty when a restart finds the kernel's table as planned.
            let applying = if script.is_empty() { Ok(()) } else { berth_net::nft::apply(&script) };
            match applying {
                Ok(()) => {
                    tracing::debug!(rules = script.lines().count(), elapsed = ?started.elapsed(), "service rules applied");
                    applied = Some(next);
                }
                Err(err) => {
                    tracing::warn!("service rules: {err}; rebuilding the table");
                    applied = match berth_net::nft::apply(&plan::full(
                        &next,
                        config.nodeport_localhost,
                    )) {
                        Ok(()) => Some(next),
                        Err(err) => {
                            tracing::error!("service rules cannot be applied: {err}");
                            None
                        }
                    };
                }
            }
        }
        tokio::select! {
            _ = dirty.notified() => {}
            // A failed rebuild is tried again.
            _ = tokio::time::sleep(if applied.is_some() { Duration::from_secs(3600) } else { Duration::from_secs(1) }) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Removes the table (for a node that stops proxying).
pub fn remove() {
    let _ = berth_net::nft::apply(&format!("table ip {0}\ndelete table ip {0}\n", plan::TABLE));
}
