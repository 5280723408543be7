//! The conformance suite on the embedded SQLite backend, plus what only it promises:
//! durability across a killed process and a file that compaction keeps small.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod suite;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth_store::{SqliteStore, Store};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let (_dir, store) = store();
    suite::crud(&store, "/registry").await;
    suite::list(&store, "/registry").await;
    suite::watch(&store, "/registry").await;
    suite::compaction(&store, "/registry").await;
    suite::concurrent_cas(Arc::new(store), "/registry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_stores_keep_revisions_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let revision = {
        let store = SqliteStore::open(&path).unwrap();
        let r = store.create("/registry/a", b"1".to_vec()).await.unwrap();
        store.update("/registry/a", b"2".to_vec(), r).await.unwrap()
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), revision);
    assert_eq!(store.get("/registry/a").await.unwrap().unwrap().mod_revision, revision);
    assert!(store.create("/registry/b", b"x".to_vec()).await.unwrap() > revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_file_small() {
    let (_dir, store) = store();
    let value = vec![b'v'; 4096];
    let mut revision = store.create("/registry/leases/l", value.clone()).await.unwrap();
    for _ in 0..2000 {
        revision = store.update("/registry/leases/l", value.clone(), revision).await.unwrap();
    }
    let before = store.file_size().unwrap();
    store.compact(revision).await.unwrap();
    let after = store.file_size().unwrap();
    assert!(before > 8 << 20, "2000 versions of 4 KiB: {before} bytes");
    assert!(after < 1 << 20, "after compaction: {after} bytes (was {before})");
}

/// The child side of the crash test: writes keys and says which were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: the process acknowledged_writes_survive_a_killed_process kills"]
async fn crash_child() {
    let Ok(path) = std::env::var("BERTH_STORE_CRASH_DB") else { return };
    let store = SqliteStore::open(std::path::Path::new(&path)).unwrap();
    for i in 0.. {
        store.create(&format!("/registry/burst/{i:06}"), vec![b'x'; 512]).await.unwrap();
        println!("acked {i}");
    }
}

#[test]
fn acknowledged_writes_survive_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("BERTH_STORE_CRASH_DB", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = None;
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = Some(n.parse::<u64>().unwrap());
            if acked >= Some(300) {
                // Kill it mid-burst, without warning.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    let acked = acked.expect("the child wrote");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).unwrap();
        let listed = store.list("/registry/burst/", None, 0, 0).await.unwrap();
        assert!(
            listed.items.len() as u64 > acked,
            "{} stored, {acked} acknowledged",
            listed.items.len()
        );
        for (i, kv) in listed.items.iter().enumerate() {
            assert_eq!(kv.key, format!("/registry/burst/{i:06}"));
        }
    });
}

/// Concurrent writes are committed in groups: each keeps its own revision and its own
/// outcome (a refused write in a group undoes nothing of the others), and every event
/// arrives in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_writes_keep_their_own_outcomes() {
    let (_dir, store) = store();
    let store = std::sync::Arc::new(store);
    store.create("/g/taken", b"x".to_vec()).await.unwrap();
    let mut watch = store.watch("/g/", 0).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 8 == 0 {
                // Refused: the key exists.
                store.create("/g/taken", b"again".to_vec()).await.map(|_| 0)
            } else {
                store.create(&format!("/g/{i}"), vec![b'v'; 100]).await
            }
        }));
    }
    let mut revisions = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(revision) => revisions.push(revision),
            Err(berth_store::Error::AlreadyExists { .. }) => refused += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(refused, 8);
    assert_eq!(revisions.len(), 56);
    let mut sorted = revisions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 56, "every write has a revision of its own");
    let listed = store.list("/g/", None, 0, 0).await.unwrap();
    assert_eq!(listed.items.len(), 57);
    let mut seen = Vec::new();
    while seen.len() < 57 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(event.revision());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "events in revision order: {seen:?}");
}

/// Reads racing writes never go back in time: once a write is acknowledged, every get
/// that starts after it sees it or a later one (gets are answered from the store's cache
/// of latest values, which reads that miss also fill), and a delete is seen as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_racing_writes_see_every_acknowledged_write() {
    let (dir, store) = store();
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for k in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("/race/{k}");
            let mut revision = store.create(&key, b"0".to_vec()).await.unwrap();
            for i in 1..200u32 {
                // A reader of its own, started before the write, may see either value;
                // the get after the acknowledgement must see this one.
                let early = {
                    let (store, key) = (store.clone(), key.clone());
                    tokio::spawn(async move { store.get(&key).await })
                };
                revision = store.update(&key, i.to_string().into_bytes(), revision).await.unwrap();
                let seen = store.get(&key).await.unwrap().unwrap();
                assert_eq!(seen.mod_revision, revision, "{key} after write {i}");
                assert_eq!(seen.value, i.to_string().into_bytes());
                let early = early.await.unwrap().unwrap().unwrap();
                assert!(early.mod_revision <= revision);
            }
            store.delete(&key, Some(revision)).await.unwrap();
            assert!(store.get(&key).await.unwrap().is_none(), "{key} deleted");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    store.create("/race/kept", b"v".to_vec()).await.unwrap();
    drop(store);
    // A store opened afresh (an empty cache) reads the same from SQLite.
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
    for k in 0..4 {
        assert!(store.get(&format!("/race/{k}")).await.unwrap().is_none());
    }
    assert_eq!(store.get("/race/kept").await.unwrap().unwrap().value, b"v");
}
