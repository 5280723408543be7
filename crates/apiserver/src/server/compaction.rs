//! The store's history trimmed: a supervised task that ends with the server.

use super::*;

/// Revisions of history kept for watches to resume from (as kine keeps 1000).
const HISTORY: i64 = 1000;

/// Compacts the store every `every` (a minute by default), keeping the last `HISTORY`
/// revisions, so the store does not grow with every write ever made.
pub(super) async fn run(store: Arc<dyn Store>, every: Duration, shutdown: CancellationToken) {
    let mut done = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(current) = store.revision().await else { continue };
        // Near its quota, the store keeps no history: space comes before resumable watches
        // (which relist after a 410).
        let target = if store.under_pressure() { current } else { current - HISTORY };
        if target <= done {
            continue;
        }
        match store.compact(target).await {
            Ok(()) | Err(berth_store::Error::Compacted { .. }) => done = target,
            Err(err) => tracing::warn!("compaction to {target}: {err}"),
        }
    }
}
