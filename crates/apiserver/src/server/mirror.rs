//! A copy in memory of every object under a store prefix, kept current by a watch (a
//! list, then every change after its revision; a relist when the watch falls behind
//! compaction or ends), with a callback after each change. The RBAC index and the
//! custom-resource table are built this way.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::*;

/// What a mirror calls with the objects (stored key → object) after every change.
pub(super) type OnChange = Box<dyn Fn(&BTreeMap<String, Value>) + Send + Sync>;

pub(super) struct Mirror {
    store: Arc<dyn Store>,
    prefix: &'static str,
    what: &'static str,
    /// The copy, and the store revision it reflects (a listing older than the last
    /// event applied must not replace it).
    objects: RwLock<(BTreeMap<String, Value>, i64)>,
    on_change: OnChange,
}

impl Mirror {
    /// Lists the prefix, then keeps the copy current in a task `tasks` tracks, until
    /// `shutdown`. `what` names the objects in log lines.
    pub(super) async fn start(
        store: Arc<dyn Store>,
        prefix: &'static str,
        what: &'static str,
        on_change: OnChange,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Mirror>, Error> {
        let mirror = Arc::new(Mirror {
            store,
            prefix,
            what,
            objects: RwLock::new((BTreeMap::new(), 0)),
            on_change,
        });
        let revision = mirror
            .relist()
            .await
            .map_err(|e| Error::Setup(format!("cannot read the {what}: {}", e.message)))?;
        let watching = mirror.clone();
        tasks.spawn(async move { watching.follow(revision, shutdown).await });
        Ok(mirror)
    }

    /// Replaces the copy with what the store holds now; returns the listing's revision.
    pub(super) async fn relist(&self) -> Result<i64, ApiError> {
        let page = self
            .store
            .list(self.prefix, None, 0, 0)
            .await
            .map_err(|e| ApiError::new(500, "InternalError", format!("storage: {e}")))?;
        let mut objects = BTreeMap::new();
        for kv in &page.items {
            match decode(kv) {
                Ok(object) => {
                    objects.insert(kv.key.clone(), object);
                }
                // One broken object must not take the rest down.
                Err(err) => tracing::warn!("{} skipped: {}", self.what, err.message),
            }
        }
        if let Ok(mut held) = self.objects.write() {
            // A watch event applied meanwhile is newer than this listing: keep the copy.
            if page.revision >= held.1 {
                *held = (objects, page.revision);
                (self.on_change)(&held.0);
            }
        }
        Ok(page.revision)
    }

    async fn follow(&self, mut revision: i64, shutdown: CancellationToken) {
        loop {
            let mut stream = match self.store.watch(self.prefix, revision).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!("{} watch: {err}; listing again", self.what);
                    if !self.pause_and_relist(&mut revision, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                let event = tokio::select! {
                    event = stream.recv() => event,
                    _ = shutdown.cancelled() => return,
                };
                match event {
                    Some(Ok(event)) => {
                        revision = event.revision();
                        self.apply(&event);
                    }
                    Some(Err(err)) => {
                        tracing::debug!("{} watch ended: {err}; listing again", self.what);
                        break;
                    }
                    None => break,
                }
            }
            if !self.pause_and_relist(&mut revision, &shutdown).await {
                return;
            }
        }
    }

    /// Waits a moment, then relists; false when the server is stopping.
    async fn pause_and_relist(&self, revision: &mut i64, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => return false,
        }
        match self.relist().await {
            Ok(listed) => *revision = listed,
            Err(err) => tracing::warn!("{} relist: {}", self.what, err.message),
        }
        true
    }

    fn apply(&self, event: &berth_store::WatchEvent) {
        let Ok(mut held) = self.objects.write() else { return };
        if event.revision() <= held.1 {
            return; // the copy was listed after this change
        }
        held.1 = event.revision();
        match event.kind {
            EventKind::Delete => {
                held.0.remove(&event.kv.key);
            }
            EventKind::Put => match decode(&event.kv) {
                Ok(object) => {
                    held.0.insert(event.kv.key.clone(), object);
                }
                Err(err) => tracing::warn!("{} skipped: {}", self.what, err.message),
            },
        }
        (self.on_change)(&held.0);
    }
}
