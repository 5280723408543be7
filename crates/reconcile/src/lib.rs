//! The reconcile runtime every loop of berth is built on, in kube-runtime's shape:
//!
//! - [`Informers`]: one cache per kind per process, fed by a watcher (list, then watch
//!   from the list's revision, bookmarks, a relist after 410) and shared by every loop
//!   that reads that kind, as client-go's shared informers are. Each cache announces
//!   what changed (applied, deleted, resynced) to its subscribers.
//! - [`Queue`] and [`run`]: a work queue keyed by object (a key queued twice is worked
//!   once; one reconcile per key at a time; a key changed while being worked is worked
//!   again), workers, requeue after a delay, exponential backoff on errors, and an end
//!   when the shutdown token fires.
//!
//! kube-runtime gives the watcher, the reflector store and the backoff. Its `Controller`
//! is not used: it serves one kind and does not hear deletions, and the garbage collector
//! must hear every kind's. Knows nothing of particular kinds, of HTTP or of Linux.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a cache tells its subscribers.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or modified.
    Applied(Arc<K>),
    /// Gone (its last known state).
    Deleted(Arc<K>),
    /// The cache was listed afresh (at start, or after the watch fell behind): anything
    /// may have changed, deletions included; look at the whole store again.
    Resynced,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(object) => Change::Applied(object.clone()),
            Change::Deleted(object) => Change::Deleted(object.clone()),
            Change::Resynced => Change::Resynced,
        }
    }
}

/// One kind's shared cache.
pub struct Cache<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq,
{
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
    /// True once the first listing is in the store. (The store's own readiness wakes
    /// only one waiter; several loops wait on one cache.)
    listed: tokio::sync::watch::Receiver<bool>,
}

impl<K: Resource + 'static> Cache<K>
where
    K::DynamicType: Hash + Eq,
{
    /// The objects as last seen.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Changes from now on. A subscriber that falls behind gets `Lagged` from the
    /// receiver, which it treats as [`Change::Resynced`].
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }

    /// Waits for the first complete listing.
    pub async fn ready(&self) {
        let mut listed = self.listed.clone();
        if listed.wait_for(|listed| *listed).await.is_err() {
            tracing::warn!("a cache stopped before its first listing");
        }
    }
}

impl<K: Resource + Clone + Send + Sync + 'static> Cache<K>
where
    K::DynamicType: Hash + Eq + Clone,
{
    /// Calls `on_change` with every change of this cache from now on, in a task the
    /// informers track, until shutdown. A subscriber that fell behind hears `Resynced`
    /// (and should look at the whole store again).
    pub fn follow(
        self: &Arc<Self>,
        informers: &Informers,
        mut on_change: impl FnMut(Change<K>) + Send + 'static,
    ) {
        let mut changes = self.subscribe();
        let shutdown = informers.shutdown().clone();
        informers.tasks().spawn(async move {
            loop {
                let change = tokio::select! {
                    change = changes.recv() => change,
                    _ = shutdown.cancelled() => return,
                };
                match change {
                    Ok(change) => on_change(change),
                    Err(broadcast::error::RecvError::Lagged(_)) => on_change(Change::Resynced),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Queues `key(object)` for every change of an object, and for every object when the
    /// cache is listed afresh.
    pub fn queue_into<T>(
        self: &Arc<Self>,
        informers: &Informers,
        queue: &Arc<Queue<T>>,
        key: impl Fn(&K) -> Option<T> + Send + 'static,
    ) where
        T: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let (cache, queue) = (self.clone(), queue.clone());
        self.follow(informers, move |change| match change {
            Change::Applied(object) | Change::Deleted(object) => {
                if let Some(key) = key(&object) {
                    queue.add(key);
                }
            }
            Change::Resynced => {
                for object in cache.store().state() {
                    if let Some(key) = key(&object) {
                        queue.add(key);
                    }
                }
            }
        });
    }
}

/// Changes buffered per cache for subscribers that are busy (one that falls further
/// behind resyncs). Tokio's broadcast channel allocates every slot up front, and a process
/// holds a cache per kind (the garbage collector follows them all): 8192 slots made each
/// cache cost about 400 KB before it held anything, 31 MB of an idle server's 52 MB.
const CHANGES_BUFFERED: usize = 1024;

/// The process's shared caches, by kind, and the client a loop acts with.
pub struct Informers {
    /// What the loop on these informers acts with (its identity).
    client: Client,
    caches: Arc<Caches>,
}

/// The caches themselves, which several loops' informers may share.
struct Caches {
    /// What lists and watches for the caches.
    reader: Client,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    by_kind: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl Informers {
    pub fn new(client: Client, shutdown: CancellationToken) -> Informers {
        let caches = Caches {
            reader: client.clone(),
            shutdown,
            tasks: TaskTracker::new(),
            by_kind: Mutex::default(),
        };
        Informers { client, caches: Arc::new(caches) }
    }

    /// Informers for another loop of this process that read the same caches (fed by this
    /// one's client) and act with `client`, its own identity: as kube-controller-manager's
    /// controllers share one informer factory and write with their own service accounts,
    /// loops in one process decode each object once instead of once per loop.
    pub fn sharing(&self, client: Client) -> Informers {
        Informers { client, caches: self.caches.clone() }
    }

    /// The client this loop acts with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.caches.shutdown
    }

    /// The tasks feeding the caches (for waiting on them at shutdown).
    pub fn tasks(&self) -> &TaskTracker {
        &self.caches.tasks
    }

    /// The cache of a typed kind across all namespaces, started on first use.
    pub fn typed<K>(&self) -> Arc<Cache<K>>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let key = format!("{}/{}", K::api_version(&()), K::plural(&()));
        let reader = self.caches.reader.clone();
        self.cache(key, move || watcher(Api::<K>::all(reader), watcher::Config::default()), ())
    }

    /// The cache of any kind, by its resource, across all namespaces.
    pub fn dynamic(&self, resource: &ApiResource) -> Arc<Cache<DynamicObject>> {
        let key = format!("{}/{}", resource.api_version, resource.plural);
        let api = Api::all_with(self.caches.reader.clone(), resource);
        self.cache(key, move || watcher(api, watcher::Config::default()), resource.clone())
    }

    /// The metadata of any kind's objects (names, uids, owners, finalizers, labels), by
    /// its resource, across all namespaces: what a loop that reads nothing else needs,
    /// listed and watched as `PartialObjectMetadata`, so the server sends, and this
    /// process decodes and keeps, the metadata only (the garbage collector follows every
    /// kind this way: a full copy of each pod and node was decoded for it before).
    pub fn metadata(&self, resource: &ApiResource) -> Arc<Cache<PartialObjectMeta<DynamicObject>>> {
        let key = format!("{}/{}#metadata", resource.api_version, resource.plural);
        // An Api of PartialObjectMeta asks for the metadata only.
        let api =
            Api::<PartialObjectMeta<DynamicObject>>::all_with(self.caches.reader.clone(), resource);
        self.cache(key, move || watcher(api, watcher::Config::default()), resource.clone())
    }

    fn cache<K, S>(
        &self,
        key: String,
        watch: impl FnOnce() -> S,
        dyntype: K::DynamicType,
    ) -> Arc<Cache<K>>
    where
        K: Resource + Clone + Debug + Send + Sync + 'static,
        K::DynamicType: Hash + Eq + Clone + Send + Sync,
        S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let mut caches = match self.caches.by_kind.lock() {
            Ok(caches) => caches,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(existing) = caches.get(&key).and_then(|c| c.clone().downcast::<Cache<K>>().ok())
        {
            return existing;
        }
        let mut writer = reflector::store::Writer::<K>::new(dyntype);
        let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
        let (listed_tx, listed) = tokio::sync::watch::channel(false);
        let cache = Arc::new(Cache { store: writer.as_reader(), changes: changes.clone(), listed });
        caches.insert(key.clone(), cache.clone());
        let stream = watch().default_backoff();
        let shutdown = self.caches.shutdown.clone();
        self.caches.tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = shutdown.cancelled() => return,
                };
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(err)) => {
                        // The backoff paces the retries; the watcher relists by itself.
                        tracing::debug!(cache = %key, "watch: {err}");
                        continue;
                    }
                    None => return,
                };
                writer.apply_watcher_event(&event);
                let change = match event {
                    watcher::Event::Apply(object) => Change::Applied(Arc::new(object)),
                    watcher::Event::Delete(object) => Change::Deleted(Arc::new(object)),
                    watcher::Event::InitDone => {
                        listed_tx.send_replace(true);
                        Change::Resynced
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                };
                // No subscriber yet is fine: they read the store when they start.
                let _ = changes.send(change);
            }
        });
        cache
    }
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the object changes again.
    Done,
    /// Look again after this long (waiting for something the loop does not watch).
    RequeueAfter(Duration),
}

#[derive(Debug)]
struct QueueState<T> {
    /// By priority (highest first), then by arrival.
    ready: std::collections::BTreeMap<(std::cmp::Reverse<i64>, u64), T>,
    /// Arrivals so far (orders keys of one priority).
    arrivals: u64,
    /// The priority a key was queued with, kept for when it is worked again.
    priorities: HashMap<T, i64>,
    queued: HashSet<T>,
    active: HashSet<T>,
    /// Added while active: worked again once the current reconcile ends.
    dirty: HashSet<T>,
    failures: HashMap<T, u32>,
    closed: bool,
}

/// A work queue of keys: each key is queued at most once, and worked by one worker at a
/// time.
#[derive(Debug)]
pub struct Queue<T> {
    state: Mutex<QueueState<T>>,
    notify: Notify,
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Queue<T> {
    pub fn new() -> Arc<Queue<T>> {
        Arc::new(Queue {
            state: Mutex::new(QueueState {
                ready: std::collections::BTreeMap::new(),
                arrivals: 0,
                priorities: HashMap::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues `key` (again, if it is being worked now).
    pub fn add(&self, key: T) {
        let priority = self.lock().priorities.get(&key).copied().unwrap_or(0);
        self.add_with_priority(key, priority);
    }

    /// Queues `key` ahead of keys of lower priority (the scheduler's active queue).
    pub fn add_with_priority(&self, key: T, priority: i64) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        // Only priorities other than the default are kept (until `forget`).
        if priority != 0 {
            state.priorities.insert(key.clone(), priority);
        } else {
            state.priorities.remove(&key);
        }
        if state.active.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.arrivals += 1;
            let order = (std::cmp::Reverse(priority), state.arrivals);
            state.ready.insert(order, key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: T, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Forgets what is known of `key` (its priority): its object is gone.
    pub fn forget(&self, key: &T) {
        self.lock().priorities.remove(key);
    }

    /// How many keys wait to be worked.
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn next(&self, shutdown: &CancellationToken) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some((_, key)) = state.ready.pop_first() {
                    state.queued.remove(&key);
                    state.active.insert(key.clone());
                    return Some(key);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = shutdown.cancelled() => {
                    self.lock().closed = true;
                    self.notify.notify_waiters();
                    return None;
                }
            }
        }
    }

    /// Ends the work on `key`; the number of failures in a row so far.
    fn done(&self, key: &T, failed: bool) -> u32 {
        let mut state = self.lock();
        state.active.remove(key);
        let failures = if failed {
            let count = state.failures.entry(key.clone()).or_insert(0);
            *count += 1;
            *count
        } else {
            state.failures.remove(key);
            0
        };
        if state.dirty.remove(key) && state.queued.insert(key.clone()) {
            state.arrivals += 1;
            let priority = state.priorities.get(key).copied().unwrap_or(0);
            let order = (std::cmp::Reverse(priority), state.arrivals);
            state.ready.insert(order, key.clone());
            drop(state);
            self.notify.notify_one();
        }
        failures
    }
}

/// Exponential backoff for a key that failed `failures` times in a row: 5 ms doubling,
/// at most `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(5);
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(max)
}

/// Works the queue with `workers` concurrent reconciles until `shutdown`; a reconcile
/// that fails is retried with [`backoff`] (at most `max_backoff`), and its error logged
/// with its key.
pub async fn run<T, E, F, Fut>(
    name: &'static str,
    queue: Arc<Queue<T>>,
    workers: usize,
    max_backoff: Duration,
    shutdown: CancellationToken,
    reconcile: F,
) where
    T: Hash + Eq + Clone + Debug + Send + Sync + 'static,
    E: std::fmt::Display,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Action, E>> + Send,
{
    let mut handles = Vec::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let shutdown = shutdown.clone();
        let reconcile = reconcile.clone();
        handles.push(tokio::spawn(async move {
            while let Some(key) = queue.next(&shutdown).await {
                let span = tracing::debug_span!("reconcile", controller = name, object = ?key);
                let result =
                    tracing::Instrument::instrument(reconcile(key.clone()), span).await;
                match result {
                    Ok(action) => {
                        queue.done(&key, false);
                        if let Action::RequeueAfter(delay) = action {
                            queue.add_after(key, delay);
                        }
                    }
                    Err(err) => {
                        let failures = queue.done(&key, true);
                        let delay = backoff(failures, max_backoff);
                        tracing::warn!(controller = name, object = ?key, "{err}; retrying in {delay:?}");
                        queue.add_after(key, delay);
                    }
                }
            }
        }));
    }
    for handle in handles {
        if let Err(err) = handle.await {
            tracing::warn!(controller = name, "a worker ended abnormally: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn keys_are_worked_once_each_and_failures_back_off() {
        let queue = Queue::<String>::new();
        for key in ["a", "b", "a", "a"] {
            queue.add(key.to_owned());
        }
        assert_eq!(queue.len(), 2, "a key is queued once");
        let shutdown = CancellationToken::new();
        let calls = Arc::new(Mutex::new(Vec::<String>::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (worked, stop) = (calls.clone(), shutdown.clone());
        let tries = attempts.clone();
        let runner = tokio::spawn(run(
            "test",
            queue.clone(),
            2,
            Duration::from_millis(50),
            shutdown.clone(),
            move |key: String| {
                let (worked, tries, stop) = (worked.clone(), tries.clone(), stop.clone());
                async move {
                    worked.lock().map(|mut w| w.push(key.clone())).ok();
                    if key == "b" && tries.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err("not yet");
                    }
                    if key == "b" {
                        stop.cancel();
                    }
                    Ok(Action::Done)
                }
            },
        ));
        tokio::time::timeout(Duration::from_secs(5), runner).await.expect("stops").expect("ran");
        let calls = calls.lock().expect("calls").clone();
        assert_eq!(calls.iter().filter(|k| *k == "a").count(), 1, "{calls:?}");
        assert_eq!(calls.iter().filter(|k| *k == "b").count(), 3, "retried until it worked");
        assert_eq!(backoff(1, Duration::from_secs(1)), Duration::from_millis(5));
        // Higher priorities first, then arrival order.
        let ordered = Queue::<&'static str>::new();
        ordered.add("low-1");
        ordered.add_with_priority("high", 100);
        ordered.add("low-2");
        ordered.add_with_priority("middle", 10);
        let never = CancellationToken::new();
        let mut order = Vec::new();
        for _ in 0..4 {
            let key = ordered.next(&never).await.expect("key");
            ordered.done(&key, false);
            order.push(key);
        }
        assert_eq!(order, ["high", "middle", "low-1", "low-2"]);
        assert_eq!(backoff(4, Duration::from_secs(1)), Duration::from_millis(40));
        assert_eq!(backoff(40, Duration::from_secs(1)), Duration::from_secs(1));
    }
}
