//! `berth server` as a process, killed and stopped on purpose, driven over HTTPS by the
//! kube-rs client from its kubeconfig: the controllers' work survives a SIGKILL, and a
//! SIGTERM drains watches and writes within the grace period.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

struct Server {
    child: Child,
    dir: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let _ = std::fs::remove_file(dir.join("kubeconfig"));
        let child = Command::new(BERTH)
            .args([
                "server",
                "--disable-agent",
                "--https-listen-port",
                "0",
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--shutdown-grace-period", "5", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.join("kubeconfig").exists() {
            assert!(Instant::now() < deadline, "the server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, dir: dir.to_owned() }
    }

    async fn client(&self) -> kube::Client {
        let client = berth_client::from_kubeconfig(&self.dir.join("kubeconfig")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while client.apiserver_version().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "the API does not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn configmap(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|owner| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: owner.metadata.name.clone().unwrap(),
                    uid: owner.metadata.uid.clone().unwrap(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `count` objects with at most 16 requests in flight.
async fn create_many(api: &Api<ConfigMap>, count: usize, make: impl Fn(usize) -> ConfigMap) {
    let objects: Vec<ConfigMap> = (0..count).map(make).collect();
    futures::stream::iter(objects)
        .for_each_concurrent(16, |object| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &object).await.unwrap();
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_finish_after_a_sigkill() {
    let dir = tempfile::Builder::new().prefix("berth-kill-").tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = api.create(&PostParams::default(), &configmap("owner", None)).await.unwrap();
    create_many(&api, 200, |i| configmap(&format!("dependent-{i}"), Some(&owner))).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta { name: Some("doomed".into()), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    let inside: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    create_many(&inside, 500, |i| configmap(&format!("c{i}"), None)).await;
    let before = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    // Both deletions start, then the server dies mid-way: once each has begun.
    api.delete("owner", &DeleteParams::foreground()).await.unwrap();
    namespaces.delete("doomed", &DeleteParams::default()).await.unwrap();
    let count = |api: &Api<ConfigMap>| {
        let api = api.clone();
        async move {
            api.list_metadata(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (dependents, content) = (count(&api).await, count(&inside).await);
        if dependents < 201 && content < 500 {
            if dependents <= 1 || content == 0 {
                eprintln!(
                    "note: a deletion finished before the kill ({dependents}, {content} left)"
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "the deletions never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let server = Server::start(dir.path());
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let inside: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    eventually("the owner gone after restart", 60, || async {
        api.get_opt("owner").await.unwrap().is_none()
    })
    .await;
    eventually("the namespace gone after restart", 60, || async {
        namespaces.get_opt("doomed").await.unwrap().is_none()
    })
    .await;
    let left = api.list(&ListParams::default()).await.unwrap();
    assert!(
        !left.items.iter().any(|c| c
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .starts_with("dependent-")),
        "dependents left"
    );
    assert!(inside.list(&ListParams::default()).await.unwrap().items.is_empty());
    // The history, replayed from before the deletion: the owner went last.
    let mut events = api.watch(&WatchParams::default(), &before).await.unwrap().boxed();
    let mut deleted = Vec::new();
    while let Some(event) =
        tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap()
    {
        if let WatchEvent::Deleted(object) = event.unwrap() {
            let name = object.metadata.name.unwrap();
            let done = name == "owner";
            deleted.push(name);
            if done {
                break;
            }
        }
    }
    assert_eq!(deleted.len(), 201, "every dependent, then the owner: {deleted:?}");
    assert_eq!(deleted.last().map(String::as_str), Some("owner"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_watches_and_keeps_every_acknowledged_write() {
    let dir = tempfile::Builder::new().prefix("berth-term-").tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // 50 open watches.
    let mut watches = Vec::new();
    for _ in 0..50 {
        let api = api.clone();
        let mut stream =
            api.watch(&WatchParams::default().timeout(290), "0").await.unwrap().boxed();
        watches.push(tokio::spawn(async move {
            let mut seen = 0usize;
            while let Some(event) = stream.next().await {
                if event.is_ok() {
                    seen += 1;
                }
            }
            seen
        }));
    }
    // A write burst, recording what was acknowledged.
    let writer = tokio::spawn({
        let api = api.clone();
        async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let name = format!("burst-{i}");
                match api.create(&PostParams::default(), &configmap(&name, None)).await {
                    Ok(_) => acknowledged.push(name),
                    Err(_) => break,
                }
            }
            acknowledged
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (server, status)
    });
    let (server, status) =
        tokio::time::timeout(Duration::from_secs(10), status).await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(status.success(), "a drained server exits 0: {status:?}");
    assert!(took < Duration::from_secs(8), "exited within its 5 s grace period (took {took:?})");
    for watch in watches {
        // Every stream ends (no client hangs on a dead server).
        tokio::time::timeout(Duration::from_secs(5), watch).await.unwrap().unwrap();
    }
    let acknowledged =
        tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
    assert!(!acknowledged.is_empty());
    drop(server);
    let server = Server::start(dir.path());
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let stored: std::collections::HashSet<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|name| !stored.contains(*name)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// A full disk must not lock the cluster: on a 12 MB filesystem the embedded store's
/// default quota refuses creates with an error naming the quota, deletes still succeed,
/// and once compaction has reclaimed their space, creates succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_at_its_quota_still_deletes_and_recovers() {
    if !berth_testkit::is_root() {
        assert!(
            std::env::var_os("BERTH_SKIP_ROOT_TESTS").is_some(),
            "this test mounts a tmpfs: run it as root"
        );
        return;
    }
    let dir = tempfile::Builder::new().prefix("berth-quota-").tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let mut server = {
        let _ = std::fs::remove_file(small.join("kubeconfig"));
        let child = Command::new(BERTH)
            .args([
                "server",
                "--disable-agent",
                "--https-listen-port",
                "0",
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--compaction-interval-seconds", "1", "--data-dir"])
            .arg(&small)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !small.join("kubeconfig").exists() {
            assert!(Instant::now() < deadline, "the server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, dir: small.clone() }
    };
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let big = |i: usize| {
        let mut object = configmap(&format!("big-{i}"), None);
        object.data = Some([("blob".to_owned(), "x".repeat(200 * 1024))].into());
        object
    };
    let mut created = 0;
    let refusal = loop {
        match api.create(&PostParams::default(), &big(created)).await {
            Ok(_) => created += 1,
            Err(err) => break err.to_string(),
        }
        assert!(created < 200, "12 MB never filled");
    };
    assert!(created > 5, "only {created} objects fit");
    assert!(refusal.contains("quota") && refusal.contains("delete objects"), "{refusal}");
    for i in 0..created {
        api.delete(&format!("big-{i}"), &DeleteParams::default()).await.unwrap();
    }
    // Compaction reclaims what the deletes freed; the space is used again.
    let mut again = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while again < created / 2 {
        match api.create(&PostParams::default(), &big(1000 + again)).await {
            Ok(_) => again += 1,
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "space never came back");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    server.kill();
}
