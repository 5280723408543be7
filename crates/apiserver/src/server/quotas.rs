//! ResourceQuota and LimitRange in the running server (the rules are `crate::quota`'s):
//! both kinds are mirrored from the store, so a create in a namespace without them reads
//! nothing more; a create in one with quotas counts what the namespace's objects of its
//! resource use, under one lock, so two creates cannot both take the last unit. A quota's
//! `status` (hard and used) is computed when it is read, so it is never stale.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::mirror::Mirror;
use super::*;

pub(super) struct Quotas {
    _mirrors: Vec<Arc<Mirror>>,
    /// Stored key → object, for ResourceQuotas and LimitRanges.
    objects: Arc<RwLock<BTreeMap<String, Value>>>,
    /// Held from a quota check to the write it allowed.
    pub(super) admission: tokio::sync::Mutex<()>,
}

const QUOTAS: &str = "/registry/core/resourcequotas/";
const RANGES: &str = "/registry/core/limitranges/";

impl Quotas {
    pub(super) async fn start(
        store: Arc<dyn Store>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Quotas>, Error> {
        let objects: Arc<RwLock<BTreeMap<String, Value>>> = Arc::default();
        let mut mirrors = Vec::new();
        for (prefix, what) in [(QUOTAS, "resource quotas"), (RANGES, "limit ranges")] {
            let writer = objects.clone();
            let on_change = Box::new(move |held: &BTreeMap<String, Value>| {
                if let Ok(mut all) = writer.write() {
                    all.retain(|k, _| !k.starts_with(prefix));
                    all.extend(held.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            });
            mirrors.push(
                Mirror::start(store.clone(), prefix, what, on_change, tasks, shutdown.clone())
                    .await?,
            );
        }
        Ok(Arc::new(Quotas { _mirrors: mirrors, objects, admission: Default::default() }))
    }

    fn in_namespace(&self, prefix: &str, namespace: &str) -> Vec<Value> {
        let start = format!("{prefix}{namespace}/");
        self.objects
            .read()
            .map(|all| {
                all.range(start.clone()..)
                    .take_while(|(k, _)| k.starts_with(&start))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    /// LimitRange defaults and bounds for a pod being created.
    pub(super) fn apply_limit_ranges(&self, object: &mut Value) -> Result<(), ApiError> {
        let resource = self.resource();
        if !(resource.group.is_empty() && resource.name == "pods") {
            return Ok(());
        }
        let namespace = self.target.namespace.as_deref().unwrap_or("default");
        let ranges = self.state.quotas.in_namespace(RANGES, namespace);
        crate::quota::limit_pod(&ranges, object).map_err(|why| self.forbidden(object, &why))
    }

    /// The quotas of the namespace that track this resource; empty for most creates.
    pub(super) fn quotas_tracking(&self) -> Vec<Value> {
        let Some(namespace) = self.target.namespace.as_deref() else { return Vec::new() };
        let resource = self.stored();
        self.state
            .quotas
            .in_namespace(QUOTAS, namespace)
            .into_iter()
            .filter(|q| {
                q["spec"]["hard"]
                    .as_object()
                    .is_some_and(|hard| hard.keys().any(|k| crate::quota::tracks(resource, k)))
            })
            .collect()
    }

    /// Checks a create (no `old`) or an update against the quotas that track it (the caller
    /// holds the admission lock until the write is done).
    pub(super) async fn check_quotas(
        &self,
        quotas: &[Value],
        object: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if quotas.is_empty() {
            return Ok(());
        }
        let namespace = self.target.namespace.as_deref().unwrap_or("default");
        let resource = self.stored();
        let objects = self.objects_of(resource, namespace).await?;
        for quota in quotas {
            let used = usage_within(quota, resource, &objects);
            crate::quota::admit(quota, resource, object, old, &used)
                .map_err(|why| self.forbidden(object, &why))?;
        }
        Ok(())
    }

    /// A namespace's objects of one resource.
    async fn objects_of(
        &self,
        resource: &Resource,
        namespace: &str,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self
            .state
            .store
            .list(&resource.prefix(Some(namespace)), None, 0, 0)
            .await
            .map_err(|e| storage_error(resource, "", e))?;
        page.items.iter().map(decode).collect()
    }

    /// A ResourceQuota with its status as of now.
    pub(super) async fn with_quota_status(&self, mut quota: Value) -> Result<Value, ApiError> {
        let namespace = quota["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
        let keys: Vec<String> = quota["spec"]["hard"]
            .as_object()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        let mut used = crate::quota::Usage::new();
        for resource in resources::all() {
            if !resource.namespaced
                || !resource.verbs.contains(&"list")
                || !keys.iter().any(|k| crate::quota::tracks(resource, k))
                || !seen.insert((resource.group, resource.name))
            {
                continue;
            }
            let objects = self.objects_of(resource, &namespace).await?;
            crate::quota::add(&mut used, &usage_within(&quota, resource, &objects));
        }
        quota["status"] = crate::quota::status(&quota, &used);
        Ok(quota)
    }

    fn forbidden(&self, object: &Value, why: &str) -> ApiError {
        let resource = self.resource();
        let name = objects::name_of(object);
        ApiError::about(
            resource,
            name,
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: {why}",
                berth_api::status::resource_name(resource)
            ),
        )
    }
}

/// What the objects within a quota's scopes use.
fn usage_within(quota: &Value, resource: &Resource, objects: &[Value]) -> crate::quota::Usage {
    let mut used = crate::quota::Usage::new();
    for object in objects.iter().filter(|o| crate::quota::in_scope(quota, resource, o)) {
        crate::quota::add(&mut used, &crate::quota::usage_of(resource, object));
    }
    used
}
