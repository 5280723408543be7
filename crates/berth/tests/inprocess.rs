//! The API server's handler reached in-process (no TLS, no kubectl) over SQLite in a
//! temporary directory, with the controllers running, as `berth server` joins them:
//! verbs, watches, the garbage collector's three modes, namespace termination, the
//! service-account controller, and RBAC answered from its cache.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::time::Duration;

use berth_api::identity::User;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

struct Cluster {
    _dir: tempfile::TempDir,
    handler: berth_apiserver::server::Handler,
    shutdown: CancellationToken,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let config = berth_apiserver::server::Config {
            data_dir: dir.path().to_owned(),
            bind_address: "127.0.0.1".into(),
            tls_san: Vec::new(),
            port: 0,
            datastore_endpoint: None,
            token: None,
            shutdown_grace: Duration::from_secs(5),
            quota_backend_bytes: None,
            compaction_interval: Duration::from_secs(60),
            components: vec!["controller-manager".into()],
            default_toleration_seconds: (300, 300),
            metric_resolution: Duration::from_secs(15),
            service_account_max_token_expiration: None,
        };
        let server =
            berth_apiserver::server::Server::prepare(config, shutdown.clone()).await.unwrap();
        let handler = server.handler();
        let controllers = berth_client::in_process(handler.clone(), User::controller_manager());
        let _manager =
            berth_controllers::Manager::start(controllers, Default::default(), shutdown.clone());
        tokio::spawn(server.serve());
        Cluster { _dir: dir, handler, shutdown }
    }

    fn client(&self, user: User) -> kube::Client {
        berth_client::in_process(self.handler.clone(), user)
    }

    fn admin(&self) -> kube::Client {
        self.client(User::admin())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn configmap(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    let owner_references = owner.map(|owner| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: owner.metadata.name.clone().unwrap(),
            uid: owner.metadata.uid.clone().unwrap(),
            ..OwnerReference::default()
        }]
    });
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), owner_references, ..ObjectMeta::default() },
        ..ConfigMap::default()
    }
}

/// Polls `check` until it holds (a condition, not a sleep), for at most 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn names(api: &Api<ConfigMap>) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_and_watches_through_the_in_process_client() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.admin(), "default");
    let mut labelled = configmap("a", None);
    labelled.metadata.labels = Some([("tier".to_owned(), "web".to_owned())].into());
    let created = api.create(&PostParams::default(), &labelled).await.unwrap();
    api.create(&PostParams::default(), &configmap("b", None)).await.unwrap();
    let selected = api.list(&ListParams::default().labels("tier=web")).await.unwrap();
    assert_eq!(selected.items.len(), 1);
    // A stale resourceVersion is a conflict.
    let mut stale = created.clone();
    stale.data = Some([("k".to_owned(), "v".to_owned())].into());
    api.replace("a", &PostParams::default(), &stale).await.unwrap();
    let err = api.replace("a", &PostParams::default(), &stale).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err:?}");
    let patched = api
        .patch("b", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"x": "1"}})))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["x"], "1");
    // A watch from a revision sees what came after it, in order.
    let from = patched.metadata.resource_version.unwrap();
    let events = tokio::spawn({
        let api = api.clone();
        async move {
            let params = kube::api::WatchParams::default();
            let stream = api.watch(&params, &from).await.unwrap();
            stream.take(2).try_collect::<Vec<_>>().await.unwrap()
        }
    });
    api.create(&PostParams::default(), &configmap("c", None)).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(10), events).await.unwrap().unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            kube::api::WatchEvent::Added(c) => {
                format!("added {}", c.metadata.name.clone().unwrap())
            }
            kube::api::WatchEvent::Deleted(c) => {
                format!("deleted {}", c.metadata.name.clone().unwrap())
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["added c", "deleted a"]);
    // kube-runtime's watcher (list, then watch) works over it too.
    let first = watcher(api.clone(), watcher::Config::default()).boxed().next().await;
    assert!(matches!(first, Some(Ok(watcher::Event::Init))), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_collector_deletes_in_three_modes() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.admin(), "default");
    let family = |prefix: &'static str| {
        let api = api.clone();
        async move {
            let owner = api.create(&PostParams::default(), &configmap(prefix, None)).await.unwrap();
            let child = api
                .create(
                    &PostParams::default(),
                    &configmap(&format!("{prefix}-child"), Some(&owner)),
                )
                .await
                .unwrap();
            api.create(
                &PostParams::default(),
                &configmap(&format!("{prefix}-grandchild"), Some(&child)),
            )
            .await
            .unwrap();
        }
    };
    // Background: the owner goes at once, its dependents after, depth first or not.
    family("bg").await;
    api.delete("bg", &DeleteParams::background()).await.unwrap();
    eventually("background cascade", || async {
        !names(&api).await.iter().any(|n| n.starts_with("bg"))
    })
    .await;

    // Foreground: the owner is held (deletionTimestamp, finalizer) until its dependents,
    // and theirs, are gone; a watch sees the owner's deletion last.
    family("fg").await;
    let order = tokio::spawn({
        let api = api.clone();
        async move {
            let params = kube::api::WatchParams::default();
            let mut stream = api.watch(&params, "0").await.unwrap().boxed();
            let mut deleted = Vec::new();
            while let Some(event) = stream.next().await {
                if let Ok(kube::api::WatchEvent::Deleted(c)) = event {
                    let name = c.metadata.name.unwrap();
                    if name.starts_with("fg") {
                        deleted.push(name.clone());
                    }
                    if name == "fg" {
                        return deleted;
                    }
                }
            }
            deleted
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let held = api.get_opt("fg").await.unwrap();
    if let Some(held) = held {
        assert!(held.metadata.deletion_timestamp.is_some());
        assert!(held
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_owned()));
    }
    let order = tokio::time::timeout(Duration::from_secs(20), order).await.unwrap().unwrap();
    assert_eq!(order.last().map(String::as_str), Some("fg"), "{order:?}");
    assert_eq!(order.len(), 3, "{order:?}");

    // Orphan: dependents stay, without the reference.
    family("or").await;
    api.delete("or", &DeleteParams::orphan()).await.unwrap();
    eventually("orphan finalizer done", || async { api.get_opt("or").await.unwrap().is_none() })
        .await;
    let child = api.get("or-child").await.unwrap();
    assert!(child.metadata.owner_references.unwrap_or_default().is_empty());
    assert!(api.get_opt("or-grandchild").await.unwrap().is_some(), "the grandchild's owner lives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_terminate_and_get_default_service_accounts() {
    let cluster = Cluster::start().await;
    let namespaces: Api<Namespace> = Api::all(cluster.admin());
    let namespace = Namespace {
        metadata: ObjectMeta { name: Some("team".into()), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.admin(), "team");
    eventually("a default service account", || async {
        accounts.get_opt("default").await.unwrap().is_some()
    })
    .await;
    // Deleted, it is made again.
    accounts.delete("default", &DeleteParams::default()).await.unwrap();
    eventually("the default service account again", || async {
        accounts.get_opt("default").await.unwrap().is_some()
    })
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.admin(), "team");
    for index in 0..20 {
        configmaps
            .create(&PostParams::default(), &configmap(&format!("c{index}"), None))
            .await
            .unwrap();
    }
    namespaces.delete("team", &DeleteParams::default()).await.unwrap();
    // Terminating: nothing new may be created in it.
    let refused = configmaps.create(&PostParams::default(), &configmap("late", None)).await;
    if let Err(kube::Error::Api(status)) = &refused {
        assert_eq!(status.code, 403, "{status:?}");
    }
    eventually("the namespace gone", || async {
        namespaces.get_opt("team").await.unwrap().is_none()
    })
    .await;
    assert!(names(&configmaps).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_answered_from_its_cache_and_follows_changes() {
    let cluster = Cluster::start().await;
    let jane = cluster.client(User::new("jane", &[]));
    let janes: Api<ConfigMap> = Api::namespaced(jane.clone(), "default");
    let denied = janes.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(denied, kube::Error::Api(ref s) if s.code == 403), "{denied:?}");
    let role = Role {
        metadata: ObjectMeta { name: Some("reader".into()), ..ObjectMeta::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["list".into(), "get".into()],
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some("jane-reads".into()), ..ObjectMeta::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "jane".into(),
            ..Subject::default()
        }]),
    };
    let admin = cluster.admin();
    Api::<Role>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin, "default");
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    // Allowed at once (a binding just made is never missed), in its namespace only.
    janes.list(&ListParams::default()).await.unwrap();
    let elsewhere: Api<ConfigMap> = Api::namespaced(jane.clone(), "kube-system");
    assert!(elsewhere.list(&ListParams::default()).await.is_err());
    assert!(
        janes.create(&PostParams::default(), &configmap("x", None)).await.is_err(),
        "list is not create"
    );
    bindings.delete("jane-reads", &DeleteParams::default()).await.unwrap();
    eventually("the binding's removal reaches the cache", || async {
        janes.list(&ListParams::default()).await.is_err()
    })
    .await;
}

/// kube-rs's metadata-only list and watch (`PartialObjectMetadata`): names and labels,
/// no bodies.
#[tokio::test]
async fn metadata_only_lists_and_watches() {
    let cluster = Cluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.admin(), "default");
    let mut labelled = configmap("meta", None);
    labelled.metadata.labels = Some([("tier".to_owned(), "web".to_owned())].into());
    api.create(&PostParams::default(), &labelled).await.unwrap();
    let listed = api.list_metadata(&ListParams::default().labels("tier=web")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("meta"));
    let got = api.get_metadata("meta").await.unwrap();
    assert_eq!(got.metadata.labels.unwrap()["tier"], "web");
    let from = listed.metadata.resource_version.clone().unwrap();
    let events = tokio::spawn({
        let api = api.clone();
        async move {
            let params = kube::api::WatchParams::default();
            let stream = api.watch_metadata(&params, &from).await.unwrap();
            stream.take(1).try_collect::<Vec<_>>().await.unwrap()
        }
    });
    api.delete("meta", &DeleteParams::default()).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(10), events).await.unwrap().unwrap();
    assert!(
        matches!(&events[0], kube::api::WatchEvent::Deleted(m) if m.metadata.name.as_deref() == Some("meta")),
        "{events:?}"
    );
}
