//! The service proxy, as kube-proxy's nftables mode: every Service's cluster IPs (and
//! external IPs, and node ports on this node's addresses) lead to its ready endpoints,
//! picked at random per connection; a port without endpoints is rejected at once. `plan`
//! is the pure part (objects → ruleset → the transaction from the last one); this module
//! watches the shared caches and applies each change as one `nft -f` transaction.
//!
//! Level-triggered: any change of a Service or EndpointSlice marks the whole state dirty,
//! and the loop plans from the caches as they are then. On start (and after a failed
//! transaction) the table is rebuilt whole, atomically, so traffic never sees a gap.

pub mod plan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_reconcile::Informers;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Runs until the informers' shutdown.
pub async fn run(informers: Arc<Informers>) {
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
    loop {
        let next = plan::plan(
            &services.store().state().iter().map(|s| (**s).clone()).collect::<Vec<_>>(),
            &slices.store().state().iter().map(|s| (**s).clone()).collect::<Vec<_>>(),
        );
        if applied.as_ref() != Some(&next) {
            let started = Instant::now();
            let script = match &applied {
                Some(previous) => plan::changes(previous, &next),
                None => plan::full(&next),
            };
            match berth_net::nft::apply(&script) {
                Ok(()) => {
                    tracing::debug!(rules = script.lines().count(), elapsed = ?started.elapsed(), "service rules applied");
                    applied = Some(next);
                }
                Err(err) => {
                    tracing::warn!("service rules: {err}; rebuilding the table");
                    applied = match berth_net::nft::apply(&plan::full(&next)) {
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
