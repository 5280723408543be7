//! The Secrets and ConfigMaps the node's pods use, each watched on its own (a list and
//! watch of that one object, `fieldSelector=metadata.name=N`), as the kubelet's Watch
//! strategy does: the Node authorizer lets a node read only what its pods use, so the
//! agent cannot (and need not) hold every Secret of the cluster. A watch starts when a
//! pod first needs the object and stops when no pod on the node uses it any more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;

type Key = (String, String);

struct Watch<K> {
    /// The object as last seen; `None` before the first listing or once deleted.
    value: tokio::sync::watch::Receiver<Option<Option<K>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Single-object watches of one kind.
pub struct Watched<K> {
    client: kube::Client,
    watches: Mutex<HashMap<Key, Watch<K>>>,
}

impl<K> Watched<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + for<'de> k8s_openapi::serde::Deserialize<'de>
        + Send
        + Sync
        + 'static,
{
    pub fn new(client: kube::Client) -> Watched<K> {
        Watched { client, watches: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Watch<K>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching the object if nobody does; returns what tells its value.
    fn watch(
        &self,
        namespace: &str,
        name: &str,
    ) -> tokio::sync::watch::Receiver<Option<Option<K>>> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut watches = self.lock();
        if let Some(watch) = watches.get(&key) {
            return watch.value.clone();
        }
        let (sender, value) = tokio::sync::watch::channel(None);
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let what = format!("{namespace}/{name}");
        let task = tokio::spawn(async move {
            let stream = watcher(api, config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut listing: Option<Option<K>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => listing = Some(None),
                    Ok(watcher::Event::InitApply(object)) => listing = Some(Some(object)),
                    Ok(watcher::Event::InitDone) => {
                        sender.send_replace(Some(listing.take().flatten()));
                    }
                    Ok(watcher::Event::Apply(object)) => {
                        sender.send_replace(Some(Some(object)));
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        sender.send_replace(Some(None));
                    }
                    Err(err) => tracing::debug!("watch of {what}: {err}"),
                }
            }
        });
        watches.insert(key, Watch { value: value.clone(), task });
        value
    }

    /// Waits (up to `patience`) for the first reading of each object.
    pub async fn ensure(&self, namespace: &str, names: &[String], patience: Duration) {
        for name in names {
            let mut value = self.watch(namespace, name);
            let _ = tokio::time::timeout(patience, value.wait_for(Option::is_some)).await;
        }
    }

    /// The object as last seen (starting its watch if nobody watches it yet).
    pub fn get(&self, namespace: &str, name: &str) -> Option<K> {
        self.watch(namespace, name).borrow().clone().flatten()
    }

    /// Stops the watches of objects outside `used`.
    pub fn retain(&self, used: &HashSet<Key>) {
        self.lock().retain(|key, watch| {
            let keep = used.contains(key);
            if !keep {
                watch.task.abort();
            }
            keep
        });
    }
}

impl<K> Drop for Watched<K> {
    fn drop(&mut self) {
        if let Ok(watches) = self.watches.lock() {
            for watch in watches.values() {
                watch.task.abort();
            }
        }
    }
}

/// The Secret and ConfigMap watches of the node.
pub struct Refs {
    pub secrets: Watched<Secret>,
    pub config_maps: Watched<ConfigMap>,
}

impl Refs {
    pub fn new(client: kube::Client) -> Arc<Refs> {
        Arc::new(Refs { secrets: Watched::new(client.clone()), config_maps: Watched::new(client) })
    }

    /// Makes sure what the pod uses is watched and read once.
    pub async fn prepare(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let (secrets, config_maps) = used_by(pod);
        let patience = Duration::from_secs(2);
        self.secrets.ensure(&namespace, &secrets, patience).await;
        self.config_maps.ensure(&namespace, &config_maps, patience).await;
    }

    /// Keeps only the watches the pods use.
    pub fn retain<'a>(&self, pods: impl Iterator<Item = &'a Pod>) {
        let mut secrets = HashSet::new();
        let mut config_maps = HashSet::new();
        for pod in pods {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let (s, c) = used_by(pod);
            secrets.extend(s.into_iter().map(|n| (namespace.clone(), n)));
            config_maps.extend(c.into_iter().map(|n| (namespace.clone(), n)));
        }
        self.secrets.retain(&secrets);
        self.config_maps.retain(&config_maps);
    }
}

/// The Secrets and ConfigMaps a pod uses (volumes, projected sources, env, envFrom,
/// image pull secrets).
pub fn used_by(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut secrets = Vec::new();
    let mut config_maps = Vec::new();
    let Some(spec) = pod.spec.as_ref() else { return (secrets, config_maps) };
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(name);
        }
        if let Some(cm) = volume.config_map.as_ref() {
            config_maps.push(cm.name.clone());
        }
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = source.secret.as_ref() {
                secrets.push(s.name.clone());
            }
            if let Some(c) = source.config_map.as_ref() {
                config_maps.push(c.name.clone());
            }
        }
    }
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for container in containers {
        for env in container.env.iter().flatten() {
            if let Some(from) = env.value_from.as_ref() {
                if let Some(key) = from.secret_key_ref.as_ref() {
                    secrets.push(key.name.clone());
                }
                if let Some(key) = from.config_map_key_ref.as_ref() {
                    config_maps.push(key.name.clone());
                }
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(s) = from.secret_ref.as_ref() {
                secrets.push(s.name.clone());
            }
            if let Some(c) = from.config_map_ref.as_ref() {
                config_maps.push(c.name.clone());
            }
        }
    }
    for ephemeral in spec.ephemeral_containers.iter().flatten() {
        for env in ephemeral.env.iter().flatten() {
            if let Some(key) = env.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()) {
                secrets.push(key.name.clone());
            }
            if let Some(key) = env.value_from.as_ref().and_then(|f| f.config_map_key_ref.as_ref()) {
                config_maps.push(key.name.clone());
            }
        }
    }
    for pull in spec.image_pull_secrets.iter().flatten() {
        secrets.push(pull.name.clone());
    }
    secrets.retain(|n| !n.is_empty());
    config_maps.retain(|n| !n.is_empty());
    secrets.sort();
    secrets.dedup();
    config_maps.sort();
    config_maps.dedup();
    (secrets, config_maps)
}
