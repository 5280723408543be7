//! Authorization: RBAC answered from an in-memory index of the Roles, ClusterRoles and
//! their bindings, kept current by a watch on the store (a list, then every change after
//! its revision; a relist when the watch falls behind compaction), so a request reads only
//! the bindings that name its user or groups, however many bindings exist.
//!
//! The watch lags a write by a moment: a request the index denies is checked again
//! against the store itself before it is refused, so a binding just created is never
//! missed (denials pay for a read; allowed requests do not).

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::*;
use crate::rbac::{Attributes, Index, User};

/// Where the four RBAC kinds live in the store.
const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

pub(super) struct RbacCache {
    store: Arc<dyn Store>,
    inner: RwLock<Cached>,
}

#[derive(Default)]
struct Cached {
    /// Stored key → object, for the four kinds.
    objects: BTreeMap<String, Value>,
    index: Arc<Index>,
}

impl Cached {
    fn rebuild(&mut self) {
        let of = |kind: &str| -> Vec<Value> {
            let prefix = format!("{RBAC_PREFIX}{kind}/");
            self.objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| v.clone())
                .collect()
        };
        self.index = Arc::new(Index::new(
            &of("clusterroles"),
            &of("roles"),
            &of("clusterrolebindings"),
            &of("rolebindings"),
        ));
    }
}

impl RbacCache {
    /// Lists the RBAC objects, then keeps them current in a task `tasks` tracks, until
    /// `shutdown`.
    pub(super) async fn start(
        store: Arc<dyn Store>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<RbacCache>, Error> {
        let cache = Arc::new(RbacCache { store, inner: RwLock::new(Cached::default()) });
        let revision = cache
            .relist()
            .await
            .map_err(|e| Error::Setup(format!("cannot read the RBAC objects: {}", e.message)))?;
        let watching = cache.clone();
        tasks.spawn(async move { watching.follow(revision, shutdown).await });
        Ok(cache)
    }

    /// Replaces the cache with what the store holds now; returns the listing's revision.
    async fn relist(&self) -> Result<i64, ApiError> {
        let page = self
            .store
            .list(RBAC_PREFIX, None, 0, 0)
            .await
            .map_err(|e| ApiError::new(500, "InternalError", format!("storage: {e}")))?;
        let mut objects = BTreeMap::new();
        for kv in &page.items {
            match decode(kv) {
                Ok(object) => {
                    objects.insert(kv.key.clone(), object);
                }
                // One broken object must not take authorization down: it grants nothing.
                Err(err) => tracing::warn!("RBAC object skipped: {}", err.message),
            }
        }
        if let Ok(mut cached) = self.inner.write() {
            cached.objects = objects;
            cached.rebuild();
        }
        Ok(page.revision)
    }

    async fn follow(&self, mut revision: i64, shutdown: CancellationToken) {
        loop {
            let mut stream = match self.store.watch(RBAC_PREFIX, revision).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!("RBAC watch: {err}; listing again");
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
                        tracing::debug!("RBAC watch ended: {err}; listing again");
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
            Err(err) => tracing::warn!("RBAC relist: {}", err.message),
        }
        true
    }

    fn apply(&self, event: &berth_store::WatchEvent) {
        let Ok(mut cached) = self.inner.write() else { return };
        match event.kind {
            EventKind::Delete => {
                cached.objects.remove(&event.kv.key);
            }
            EventKind::Put => match decode(&event.kv) {
                Ok(object) => {
                    cached.objects.insert(event.kv.key.clone(), object);
                }
                Err(err) => tracing::warn!("RBAC object skipped: {}", err.message),
            },
        }
        cached.rebuild();
    }

    fn index(&self) -> Arc<Index> {
        self.inner.read().map(|cached| cached.index.clone()).unwrap_or_default()
    }
}

impl State {
    /// RBAC: the admin may do everything; others what their bindings grant.
    pub(super) async fn authorize(&self, user: &User, attributes: &Attributes) -> bool {
        if user.is_master() || self.rbac.index().allowed(user, attributes) {
            return true;
        }
        // Not in the index: perhaps not yet. Read the store before refusing.
        if let Err(err) = self.rbac.relist().await {
            tracing::warn!("cannot read RBAC objects to confirm a denial: {}", err.message);
            return false;
        }
        self.rbac.index().allowed(user, attributes)
    }
}
