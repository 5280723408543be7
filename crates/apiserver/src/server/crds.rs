//! CustomResourceDefinitions in the running server: a mirror of the definitions keeps the
//! custom-resource table (`crate::crd::install`) current, and a definition being deleted
//! has its objects removed (each as a deletion would: those with finalizers are marked
//! and wait for their controllers) before its own cleanup finalizer goes. Level-triggered:
//! a server started again finds the deleting definitions in its first listing.

use std::collections::{BTreeMap, HashSet};

use super::mirror::Mirror;
use super::*;

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

pub(super) struct CrdCache {
    mirror: Arc<Mirror>,
}

impl CrdCache {
    pub(super) async fn start(
        store: Arc<dyn Store>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<CrdCache>, Error> {
        let cleaning: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        let (cleaner_store, cleaner_tasks, cleaner_shutdown) =
            (store.clone(), tasks.clone(), shutdown.clone());
        let registering = Arc::new(tokio::sync::Mutex::new(()));
        let on_change = Box::new(move |objects: &BTreeMap<String, Value>| {
            let definitions: Vec<Value> = objects.values().cloned().collect();
            crate::crd::install(&definitions);
            // The custom groups' APIServices follow the definitions (one pass at a time).
            let (store, lock) = (cleaner_store.clone(), registering.clone());
            cleaner_tasks.spawn(async move {
                let _one = lock.lock().await;
                register_api_services(&store).await;
            });
            for definition in definitions {
                let deleting = definition["metadata"].get("deletionTimestamp").is_some();
                let held = definition["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == crate::crd::CLEANUP_FINALIZER));
                if !deleting || !held {
                    continue;
                }
                let name = objects::name_of(&definition).to_owned();
                let started = cleaning.lock().map(|mut c| c.insert(name.clone())).unwrap_or(false);
                if !started {
                    continue;
                }
                let (store, shutdown, cleaning) =
                    (cleaner_store.clone(), cleaner_shutdown.clone(), cleaning.clone());
                cleaner_tasks.spawn(async move {
                    clean_up(&store, &definition, &shutdown).await;
                    if let Ok(mut c) = cleaning.lock() {
                        c.remove(&name);
                    }
                });
            }
        });
        let mirror = Mirror::start(
            store,
            CRD_PREFIX,
            "custom resource definitions",
            on_change,
            tasks,
            shutdown,
        )
        .await?;
        Ok(Arc::new(CrdCache { mirror }))
    }

    /// Reads the definitions again, so that a write through the API serves (or stops
    /// serving) its resources before the response goes out.
    pub(super) async fn refresh(&self) {
        if let Err(err) = self.mirror.relist().await {
            tracing::warn!("custom resource definitions: {}", err.message);
        }
    }
}

const API_SERVICES: &str = "/registry/apiregistration.k8s.io/apiservices/";

/// Makes an APIService (automanaged `true`) for every custom group-version served, and
/// removes those no definition serves any more.
async fn register_api_services(store: &Arc<dyn Store>) {
    let mut wanted = std::collections::BTreeSet::new();
    for resource in berth_api::kinds::custom() {
        wanted.insert((resource.group, resource.version));
    }
    let existing = match store.list(API_SERVICES, None, 0, 0).await {
        Ok(page) => page.items,
        Err(err) => {
            tracing::warn!("cannot list APIServices: {err}");
            return;
        }
    };
    for kv in &existing {
        let Ok(service) = decode(kv) else { continue };
        let managed =
            service["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"] == "true";
        let group = service["spec"]["group"].as_str().unwrap_or("");
        let version = service["spec"]["version"].as_str().unwrap_or("");
        if managed && !wanted.iter().any(|(g, v)| *g == group && *v == version) {
            let _ = store.delete(&kv.key, Some(kv.mod_revision)).await;
        }
    }
    let Some(resource) = resources::find("apiregistration.k8s.io", "v1", "apiservices") else {
        return;
    };
    for (group, version) in wanted {
        let key = format!("{API_SERVICES}{version}.{group}");
        if existing.iter().any(|kv| kv.key == key) {
            continue;
        }
        let mut object = resources::api_service(group, version, "true");
        if objects::prepare_create(resource, &mut object, None).is_ok() {
            let _ = store.create(&key, encode(&object)).await;
        }
    }
}

/// Removes a deleting definition's objects, then its cleanup finalizer (and the
/// definition with it when no other finalizer is left).
async fn clean_up(store: &Arc<dyn Store>, definition: &Value, shutdown: &CancellationToken) {
    let name = objects::name_of(definition).to_owned();
    let group = definition["spec"]["group"].as_str().unwrap_or("");
    let plural = definition["spec"]["names"]["plural"].as_str().unwrap_or("");
    if group.is_empty() || plural.is_empty() {
        return;
    }
    let prefix = format!("/registry/{group}/{plural}/");
    loop {
        match store.list(&prefix, None, 0, 0).await {
            Ok(page) if page.items.is_empty() => break,
            Ok(page) => {
                for kv in &page.items {
                    let Ok(mut object) = decode(kv) else { continue };
                    let held =
                        object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
                    let result = if !held {
                        store.delete(&kv.key, Some(kv.mod_revision)).await.map(|_| ())
                    } else if object["metadata"].get("deletionTimestamp").is_none() {
                        object["metadata"]["deletionTimestamp"] = json!(objects::now());
                        store.update(&kv.key, encode(&object), kv.mod_revision).await.map(|_| ())
                    } else {
                        Ok(())
                    };
                    if let Err(err) = result {
                        tracing::debug!(definition = %name, "cleanup of {}: {err}", kv.key);
                    }
                }
            }
            Err(err) => tracing::warn!(definition = %name, "cleanup: {err}"),
        }
        // Objects held by finalizers wait for their controllers.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    let key = format!("{CRD_PREFIX}{name}");
    loop {
        let kv = match store.get(&key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(definition = %name, "cleanup: {err}; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let Ok(mut current) = decode(&kv) else { return };
        let mut finalizers =
            current["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        finalizers.retain(|f| f != crate::crd::CLEANUP_FINALIZER);
        let result = if finalizers.is_empty() {
            store.delete(&key, Some(kv.mod_revision)).await.map(|_| ())
        } else {
            current["metadata"]["finalizers"] = json!(finalizers);
            store.update(&key, encode(&current), kv.mod_revision).await.map(|_| ())
        };
        match result {
            Ok(()) => return,
            Err(berth_store::Error::Conflict { .. }) => continue,
            Err(err) => {
                tracing::warn!(definition = %name, "cannot remove the cleanup finalizer: {err}; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
