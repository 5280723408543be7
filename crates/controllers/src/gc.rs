//! The garbage collector, as Kubernetes' works: a graph of every object's owners, kept
//! from the shared caches of every stored kind, and a queue of objects to look at.
//!
//! - An object whose owners are all gone (no object with the owner reference's uid) is
//!   deleted in the background; one with some owners gone loses those references.
//! - An owner deleted in the foreground (finalizer `foregroundDeletion`, set by the API
//!   server at deletion) has its dependents deleted first (in the foreground themselves
//!   when they have dependents), and loses the finalizer only when none is left, so it is
//!   gone only after them.
//! - An owner deleted with orphaning (finalizer `orphan`) has its references removed
//!   from every dependent, then loses the finalizer.
//!
//! An owner missing from the caches is looked up through the API before a dependent is
//! deleted for it: a cache that lags never deletes a live object's dependents.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::kinds::Resource;
use berth_reconcile::{Action, Cache, Change, Informers, Queue};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::{kinds, Error, MAX_BACKOFF};

/// What the collector keeps of an object: its metadata (it follows every kind, and reads
/// nothing else of any).
type Meta = PartialObjectMeta<DynamicObject>;

pub(crate) const FOREGROUND: &str = "foregroundDeletion";
pub(crate) const ORPHAN: &str = "orphan";

/// An object, by the index of its kind in `Gc::kinds`, its namespace and name.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct Key {
    kind: usize,
    namespace: Option<String>,
    name: String,
}

#[derive(Debug)]
struct Node {
    key: Key,
    owners: Vec<String>,
}

/// Every object by uid, and the dependents of every uid that has any.
#[derive(Debug, Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, uid: String, key: Key, owners: Vec<String>) {
        if let Some(old) = self.nodes.get(&uid) {
            for owner in &old.owners {
                if let Some(set) = self.dependents.get_mut(owner) {
                    set.remove(&uid);
                }
            }
        }
        for owner in &owners {
            self.dependents.entry(owner.clone()).or_default().insert(uid.clone());
        }
        self.nodes.insert(uid, Node { key, owners });
    }

    /// Forgets `uid`; its references to owners go, its dependents keep theirs to it.
    fn remove(&mut self, uid: &str) -> Option<Node> {
        let node = self.nodes.remove(uid)?;
        for owner in &node.owners {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(uid);
                if set.is_empty() && !self.nodes.contains_key(owner) {
                    self.dependents.remove(owner);
                }
            }
        }
        Some(node)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Key)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|dependent| {
                self.nodes.get(dependent).map(|node| (dependent.clone(), node.key.clone()))
            })
            .collect()
    }
}

struct Gc {
    informers: Arc<Informers>,
    /// Every kind followed, by index (kinds are only added: custom resources' as their
    /// definitions come; an index never changes).
    kinds: std::sync::RwLock<Vec<Kind>>,
    graph: Mutex<Graph>,
    queue: Arc<Queue<Key>>,
}

#[derive(Clone)]
struct Kind {
    resource: &'static Resource,
    api: ApiResource,
    cache: Arc<Cache<Meta>>,
}

/// What the collector knows of an owner reference.
enum Owner {
    Alive,
    Absent,
    /// A kind berth does not serve: never a reason to delete.
    Unresolvable,
}

pub(crate) async fn run(informers: Arc<Informers>) {
    let shutdown = informers.shutdown().clone();
    let gc = Arc::new(Gc {
        informers: informers.clone(),
        kinds: Default::default(),
        graph: Mutex::default(),
        queue: Queue::new(),
    });
    let first = gc.follow_new_kinds();
    for kind in &first {
        let cache = gc.kind(*kind).cache;
        tokio::select! {
            _ = cache.ready() => {}
            _ = shutdown.cancelled() => return,
        }
    }
    for kind in first {
        gc.resync(kind);
    }
    tracing::info!(kinds = gc.count(), "garbage collector running");
    // Custom resources come with their definitions: their kinds are followed as they
    // appear (owners and dependents among them are collected like any other).
    let watching = gc.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut seen = berth_api::kinds::custom_generation();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
            let now = berth_api::kinds::custom_generation();
            if now == seen {
                continue;
            }
            seen = now;
            for kind in watching.follow_new_kinds() {
                let (gc, stop) = (watching.clone(), stop.clone());
                tokio::spawn(async move {
                    let cache = gc.kind(kind).cache;
                    tokio::select! {
                        _ = cache.ready() => gc.resync(kind),
                        _ = stop.cancelled() => {}
                    }
                });
            }
        }
    });
    let worker = gc.clone();
    berth_reconcile::run(
        "garbage-collector",
        gc.queue.clone(),
        4,
        MAX_BACKOFF,
        shutdown,
        move |key| {
            let gc = worker.clone();
            async move { gc.reconcile(key).await }
        },
    )
    .await;
}

fn uid(object: &Meta) -> Option<String> {
    object.metadata.uid.clone().filter(|uid| !uid.is_empty())
}

fn owner_uids(object: &Meta) -> Vec<String> {
    object.metadata.owner_references.iter().flatten().map(|r| r.uid.clone()).collect()
}

fn has_finalizer(object: &Meta, name: &str) -> bool {
    object.metadata.finalizers.iter().flatten().any(|f| f == name)
}

fn not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

fn conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

impl Gc {
    fn kind(&self, index: usize) -> Kind {
        let kinds = self.kinds.read().unwrap_or_else(|p| p.into_inner());
        kinds[index].clone()
    }

    fn count(&self) -> usize {
        self.kinds.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Starts following every stored kind not followed yet; their indexes. Subscribed
    /// before the caches first list, so no change is missed.
    fn follow_new_kinds(self: &Arc<Self>) -> Vec<usize> {
        let mut added = Vec::new();
        let mut kinds = self.kinds.write().unwrap_or_else(|p| p.into_inner());
        for resource in kinds::stored() {
            if kinds
                .iter()
                .any(|k| k.resource.group == resource.group && k.resource.name == resource.name)
            {
                continue;
            }
            let api = kinds::api_resource(resource);
            let cache = self.informers.metadata(&api);
            let index = kinds.len();
            let following = self.clone();
            cache.follow(&self.informers, move |change| match change {
                Change::Applied(object) => following.observe(index, &object),
                Change::Deleted(object) => following.forget(index, &object),
                Change::Resynced => following.resync(index),
            });
            kinds.push(Kind { resource, api, cache });
            added.push(index);
        }
        added
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        match self.graph.lock() {
            Ok(graph) => graph,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn key(&self, kind: usize, object: &Meta) -> Key {
        Key {
            kind,
            namespace: object
                .metadata
                .namespace
                .clone()
                .filter(|_| self.kind(kind).resource.namespaced),
            name: object.metadata.name.clone().unwrap_or_default(),
        }
    }

    fn observe(&self, kind: usize, object: &Meta) {
        let Some(uid) = uid(object) else { return };
        let key = self.key(kind, object);
        let owners = owner_uids(object);
        let interesting = !owners.is_empty()
            || (object.metadata.deletion_timestamp.is_some()
                && (has_finalizer(object, FOREGROUND) || has_finalizer(object, ORPHAN)));
        self.graph().upsert(uid, key.clone(), owners);
        if interesting {
            self.queue.add(key);
        }
    }

    /// A gone object: its dependents may be orphans now, and an owner waiting for it in
    /// the foreground may be done.
    fn forget(&self, _kind: usize, object: &Meta) {
        let Some(uid) = uid(object) else { return };
        let mut graph = self.graph();
        let node = graph.remove(&uid);
        let mut wake: Vec<Key> =
            graph.dependents_of(&uid).into_iter().map(|(_, key)| key).collect();
        if let Some(node) = node {
            wake.extend(
                node.owners.iter().filter_map(|o| graph.nodes.get(o).map(|n| n.key.clone())),
            );
        }
        drop(graph);
        for key in wake {
            self.queue.add(key);
        }
    }

    /// The kind was listed afresh: objects gone meanwhile are forgotten, the rest looked
    /// at again.
    fn resync(&self, kind: usize) {
        let followed = self.kind(kind);
        let objects = followed.cache.store().state();
        let present: HashSet<String> = objects.iter().filter_map(|o| uid(o)).collect();
        let vanished: Vec<String> = self
            .graph()
            .nodes
            .iter()
            .filter(|(uid, node)| node.key.kind == kind && !present.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in vanished {
            let gone = Meta {
                types: None,
                metadata: kube::api::ObjectMeta { uid: Some(uid), ..Default::default() },
                _phantom: std::marker::PhantomData,
            };
            self.forget(kind, &gone);
        }
        for object in &objects {
            self.observe(kind, object);
        }
    }

    fn api(&self, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let client = self.informers.client().clone();
        let followed = self.kind(kind);
        match namespace {
            Some(namespace) if followed.resource.namespaced => {
                Api::namespaced_with(client, namespace, &followed.api)
            }
            _ => Api::all_with(client, &followed.api),
        }
    }

    fn cached(&self, key: &Key) -> Option<Arc<Meta>> {
        let followed = self.kind(key.kind);
        let mut reference = ObjectRef::new_with(&key.name, followed.api.clone());
        if let Some(namespace) = &key.namespace {
            reference = reference.within(namespace);
        }
        followed.cache.store().get(&reference)
    }

    async fn reconcile(&self, key: Key) -> Result<Action, Error> {
        let Some(object) = self.cached(&key) else { return Ok(Action::Done) };
        let Some(uid) = uid(&object) else { return Ok(Action::Done) };
        if object.metadata.deletion_timestamp.is_some() {
            if has_finalizer(&object, ORPHAN) {
                return self.orphan_dependents(&key, &object, &uid).await;
            }
            if has_finalizer(&object, FOREGROUND) {
                return self.delete_dependents(&key, &object, &uid).await;
            }
            return Ok(Action::Done);
        }
        if object.metadata.owner_references.as_ref().is_some_and(|refs| !refs.is_empty()) {
            return self.check_owners(&key, &object, &uid).await;
        }
        Ok(Action::Done)
    }

    async fn owner(
        &self,
        dependent: &Key,
        reference: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Result<Owner, Error> {
        if self.graph().nodes.contains_key(&reference.uid) {
            return Ok(Owner::Alive);
        }
        let Some(resource) = kinds::by_reference(&reference.api_version, &reference.kind) else {
            tracing::debug!(
                "owner {} {} of {:?} is of a kind berth does not serve; kept",
                reference.kind,
                reference.name,
                dependent
            );
            return Ok(Owner::Unresolvable);
        };
        if resource.namespaced && dependent.namespace.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one.
            return Ok(Owner::Unresolvable);
        }
        let client = self.informers.client().clone();
        let namespaced = resource.namespaced;
        let resource = kinds::api_resource(resource);
        let api: Api<DynamicObject> = match (&dependent.namespace, namespaced) {
            (Some(namespace), true) => Api::namespaced_with(client, namespace, &resource),
            _ => Api::all_with(client, &resource),
        };
        let found = api
            .get_opt(&reference.name)
            .await
            .map_err(Error::api(format!("look up owner {} {}", reference.kind, reference.name)))?;
        Ok(match found {
            Some(owner) if owner.metadata.uid.as_deref() == Some(reference.uid.as_str()) => {
                Owner::Alive
            }
            _ => Owner::Absent,
        })
    }

    async fn check_owners(&self, key: &Key, object: &Meta, uid: &str) -> Result<Action, Error> {
        let references = object.metadata.owner_references.clone().unwrap_or_default();
        let mut absent = Vec::new();
        for reference in &references {
            if let Owner::Absent = self.owner(key, reference).await? {
                absent.push(reference.uid.clone());
            }
        }
        if absent.is_empty() {
            return Ok(Action::Done);
        }
        let api = self.api(key.kind, key.namespace.as_deref());
        if absent.len() == references.len() {
            tracing::debug!(object = ?key, "owners gone: deleting");
            let options = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_owned()),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            return match api.delete(&key.name, &options).await {
                Ok(_) => Ok(Action::Done),
                Err(err) if not_found(&err) || conflict(&err) => Ok(Action::Done),
                Err(err) => Err(Error::api(format!("delete {key:?}"))(err)),
            };
        }
        let kept: Vec<_> = references.into_iter().filter(|r| !absent.contains(&r.uid)).collect();
        self.patch_metadata(key, object, json!({"ownerReferences": kept})).await?;
        Ok(Action::Done)
    }

    /// A merge patch of metadata, on the version of the object just read.
    async fn patch_metadata(
        &self,
        key: &Key,
        object: &Meta,
        mut metadata: serde_json::Value,
    ) -> Result<(), Error> {
        metadata["resourceVersion"] = json!(object.metadata.resource_version);
        let api = self.api(key.kind, key.namespace.as_deref());
        match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(json!({"metadata": metadata})))
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if not_found(&err) => Ok(()),
            Err(err) => Err(Error::api(format!("update {key:?}"))(err)),
        }
    }

    async fn orphan_dependents(
        &self,
        key: &Key,
        object: &Meta,
        uid: &str,
    ) -> Result<Action, Error> {
        let dependents = self.graph().dependents_of(uid);
        for (_, dependent_key) in dependents {
            let Some(dependent) = self.cached(&dependent_key) else { continue };
            let references = dependent.metadata.owner_references.clone().unwrap_or_default();
            if !references.iter().any(|r| r.uid == uid) {
                continue;
            }
            let kept: Vec<_> = references.into_iter().filter(|r| r.uid != uid).collect();
            let value = if kept.is_empty() { serde_json::Value::Null } else { json!(kept) };
            self.patch_metadata(&dependent_key, &dependent, json!({"ownerReferences": value}))
                .await?;
        }
        self.remove_finalizer(key, object, ORPHAN).await?;
        Ok(Action::Done)
    }

    async fn delete_dependents(
        &self,
        key: &Key,
        object: &Meta,
        uid: &str,
    ) -> Result<Action, Error> {
        let dependents = self.graph().dependents_of(uid);
        let mut waiting = 0;
        for (dependent_uid, dependent_key) in dependents {
            let Some(dependent) = self.cached(&dependent_key) else { continue };
            if !dependent.metadata.owner_references.iter().flatten().any(|r| r.uid == uid) {
                continue;
            }
            waiting += 1;
            if dependent.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // Dependents with dependents of their own go in the foreground too, so the
            // whole tree is gone before the owner.
            let nested = !self.graph().dependents_of(&dependent_uid).is_empty();
            let options = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(dependent_uid.clone()),
                    resource_version: None,
                }),
                ..if nested { DeleteParams::foreground() } else { DeleteParams::background() }
            };
            let api = self.api(dependent_key.kind, dependent_key.namespace.as_deref());
            match api.delete(&dependent_key.name, &options).await {
                Ok(_) => {}
                Err(err) if not_found(&err) || conflict(&err) => {}
                Err(err) => return Err(Error::api(format!("delete {dependent_key:?}"))(err)),
            }
        }
        if waiting > 0 {
            // Their deletions wake this owner; the delay only guards against a lost event.
            return Ok(Action::RequeueAfter(Duration::from_secs(5)));
        }
        self.remove_finalizer(key, object, FOREGROUND).await?;
        Ok(Action::Done)
    }

    async fn remove_finalizer(&self, key: &Key, object: &Meta, name: &str) -> Result<(), Error> {
        let kept: Vec<&String> =
            object.metadata.finalizers.iter().flatten().filter(|f| *f != name).collect();
        self.patch_metadata(key, object, json!({"finalizers": kept})).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key { kind: 0, namespace: Some("ns".into()), name: name.into() }
    }

    #[test]
    fn the_graph_follows_owners_and_keeps_orphans_findable() {
        let mut graph = Graph::default();
        graph.upsert("d1".into(), key("rs"), vec![]);
        graph.upsert("r1".into(), key("pod-a"), vec!["d1".into()]);
        graph.upsert("r2".into(), key("pod-b"), vec!["d1".into()]);
        let mut found: Vec<String> =
            graph.dependents_of("d1").into_iter().map(|(_, k)| k.name).collect();
        found.sort();
        assert_eq!(found, ["pod-a", "pod-b"]);
        // A dependent that changes owners moves.
        graph.upsert("r2".into(), key("pod-b"), vec![]);
        assert_eq!(graph.dependents_of("d1").len(), 1);
        // An owner that goes leaves its dependents findable by its uid.
        graph.remove("d1");
        assert_eq!(graph.dependents_of("d1").len(), 1, "orphans are found by the gone owner's uid");
        graph.remove("r1");
        assert!(graph.dependents_of("d1").is_empty());
        assert!(graph.dependents.is_empty(), "nothing is kept for an owner without dependents");
    }
}
