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

use super::mirror::Mirror;
use super::*;
use crate::rbac::{Attributes, Index, User};

/// Where the four RBAC kinds live in the store.
const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

pub(super) struct RbacCache {
    mirror: Arc<Mirror>,
    index: Arc<RwLock<Arc<Index>>>,
}

fn index_of(objects: &BTreeMap<String, Value>) -> Index {
    let of = |kind: &str| -> Vec<Value> {
        let prefix = format!("{RBAC_PREFIX}{kind}/");
        objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    };
    Index::new(&of("clusterroles"), &of("roles"), &of("clusterrolebindings"), &of("rolebindings"))
}

impl RbacCache {
    /// Lists the RBAC objects, then keeps them current in a task `tasks` tracks, until
    /// `shutdown`.
    pub(super) async fn start(
        store: Arc<dyn Store>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<RbacCache>, Error> {
        let index: Arc<RwLock<Arc<Index>>> = Arc::default();
        let writer = index.clone();
        let on_change = Box::new(move |objects: &BTreeMap<String, Value>| {
            if let Ok(mut index) = writer.write() {
                *index = Arc::new(index_of(objects));
            }
        });
        let mirror =
            Mirror::start(store, RBAC_PREFIX, "RBAC objects", on_change, tasks, shutdown).await?;
        Ok(Arc::new(RbacCache { mirror, index }))
    }

    async fn relist(&self) -> Result<i64, ApiError> {
        self.mirror.relist().await
    }

    fn index(&self) -> Arc<Index> {
        self.index.read().map(|index| index.clone()).unwrap_or_default()
    }
}

impl State {
    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview).
    pub(super) fn rbac_rules(&self, user: &User, namespace: &str) -> Vec<Value> {
        self.rbac.index().rules_for(user, namespace)
    }

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
