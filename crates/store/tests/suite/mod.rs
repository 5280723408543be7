//! The conformance suite both backends pass: the behaviour the API server relies on.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::time::Duration;

use berth_store::{Error, EventKind, Store};

async fn next(stream: &mut berth_store::WatchStream) -> berth_store::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch is open")
        .expect("no watch error")
}

/// Create, get, compare-and-swap update and delete, with revisions.
pub async fn crud(store: &dyn Store, p: &str) {
    let key = format!("{p}/configmaps/default/a");
    let before = store.revision().await.unwrap();
    let created = store.create(&key, b"v1".to_vec()).await.unwrap();
    assert!(created > before, "every write gets a new revision");
    assert_eq!(
        store.create(&key, b"again".to_vec()).await,
        Err(Error::AlreadyExists { key: key.clone() })
    );
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (got.value.as_slice(), got.create_revision, got.mod_revision),
        (&b"v1"[..], created, created)
    );
    let updated = store.update(&key, b"v2".to_vec(), created).await.unwrap();
    assert!(updated > created);
    // A stale revision is a conflict and changes nothing.
    match store.update(&key, b"stale".to_vec(), created).await {
        Err(Error::Conflict { expected, actual, .. }) => {
            assert_eq!((expected, actual), (created, updated))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(
        (got.value.as_slice(), got.create_revision, got.mod_revision),
        (&b"v2"[..], created, updated)
    );
    assert!(matches!(store.delete(&key, Some(created)).await, Err(Error::Conflict { .. })));
    let deleted = store.delete(&key, Some(updated)).await.unwrap();
    assert_eq!(deleted.value, b"v2");
    assert!(deleted.mod_revision > updated);
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(store.delete(&key, None).await, Err(Error::NotFound { key: key.clone() }));
    assert_eq!(
        store.update(&key, b"x".to_vec(), updated).await,
        Err(Error::NotFound { key: key.clone() })
    );
    // A key made again starts a new life: a new create revision.
    let again = store.create(&key, b"v3".to_vec()).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().create_revision, again);
}

/// Listing by prefix, in key order, in pages, and as of an earlier revision.
pub async fn list(store: &dyn Store, p: &str) {
    let prefix = format!("{p}/pods/");
    let mut revisions = Vec::new();
    for name in ["ns1/c", "ns1/a", "ns2/b", "ns1/b"] {
        revisions.push(
            store.create(&format!("{prefix}{name}"), name.as_bytes().to_vec()).await.unwrap(),
        );
    }
    store.create(&format!("{p}/podsx/other"), b"x".to_vec()).await.unwrap();
    let all = store.list(&prefix, None, 0, 0).await.unwrap();
    let keys: Vec<&str> = all.items.iter().map(|k| k.key.trim_start_matches(&prefix)).collect();
    assert_eq!(keys, ["ns1/a", "ns1/b", "ns1/c", "ns2/b"]);
    assert!(!all.more);
    assert!(all.revision >= *revisions.last().unwrap());
    let ns1 = store.list(&format!("{prefix}ns1/"), None, 0, 0).await.unwrap();
    assert_eq!(ns1.items.len(), 3);
    // Pages: two, then the rest after the last key, all at one revision.
    let first = store.list(&prefix, None, 2, 0).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.more);
    let last_key = first.items.last().unwrap().key.clone();
    let second = store.list(&prefix, Some(&last_key), 2, first.revision).await.unwrap();
    assert_eq!(
        second.items.iter().map(|k| k.key.trim_start_matches(&prefix)).collect::<Vec<_>>(),
        ["ns1/c", "ns2/b"]
    );
    assert!(!second.more);
    // As of the revision after the second create: two pods existed.
    let then = store.list(&prefix, None, 0, revisions[1]).await.unwrap();
    assert_eq!(then.items.len(), 2);
    assert_eq!(then.revision, revisions[1]);
    // Changes after that revision do not show in it.
    let key = format!("{prefix}ns1/a");
    let current = store.get(&key).await.unwrap().unwrap();
    store.update(&key, b"changed".to_vec(), current.mod_revision).await.unwrap();
    let then = store.list(&prefix, None, 0, revisions[1]).await.unwrap();
    assert!(then.items.iter().any(|k| k.value == b"ns1/a"));
    let future = store.revision().await.unwrap() + 1000;
    assert!(matches!(
        store.list(&prefix, None, 0, future).await,
        Err(Error::FutureRevision { .. })
    ));
}

/// Watches replay from a revision, then follow live writes, in order, per prefix.
pub async fn watch(store: &dyn Store, p: &str) {
    let prefix = format!("{p}/services/");
    let start = store.revision().await.unwrap();
    let a = format!("{prefix}default/a");
    let r1 = store.create(&a, b"1".to_vec()).await.unwrap();
    let r2 = store.update(&a, b"2".to_vec(), r1).await.unwrap();
    let mut from_start = store.watch(&prefix, start).await.unwrap();
    let e1 = next(&mut from_start).await;
    assert_eq!(
        (e1.kind, e1.kv.mod_revision, e1.kv.value.as_slice()),
        (EventKind::Put, r1, &b"1"[..])
    );
    assert_eq!(e1.prev, None);
    let e2 = next(&mut from_start).await;
    assert_eq!((e2.kind, e2.kv.mod_revision), (EventKind::Put, r2));
    assert_eq!(e2.prev.as_ref().map(|p| p.value.as_slice()), Some(&b"1"[..]));
    // A watch from now sees only what comes next; other prefixes do not show.
    let mut live = store.watch(&prefix, r2).await.unwrap();
    store.create(&format!("{p}/secrets/default/x"), b"s".to_vec()).await.unwrap();
    let r3 = store.delete(&a, Some(r2)).await.unwrap().mod_revision;
    for stream in [&mut from_start, &mut live] {
        let e = next(stream).await;
        assert_eq!(
            (e.kind, e.kv.mod_revision, e.kv.key.as_str()),
            (EventKind::Delete, r3, a.as_str())
        );
        assert_eq!(e.kv.value, b"2", "a delete carries the last value");
    }
    // Many writes arrive complete and in order.
    let mut revisions = Vec::new();
    for i in 0..200 {
        revisions
            .push(store.create(&format!("{prefix}bulk/{i:03}"), vec![b'x'; 100]).await.unwrap());
    }
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        seen.push(next(&mut live).await.kv.mod_revision);
    }
    assert_eq!(seen, revisions);
}

/// Compaction forgets history but keeps current values; old watches and lists say so.
pub async fn compaction(store: &dyn Store, p: &str) {
    let key = format!("{p}/leases/kube-system/l");
    let mut revision = store.create(&key, b"0".to_vec()).await.unwrap();
    let first = revision;
    for i in 1..50 {
        revision = store.update(&key, format!("{i}").into_bytes(), revision).await.unwrap();
    }
    let gone = format!("{p}/leases/kube-system/gone");
    let g = store.create(&gone, b"g".to_vec()).await.unwrap();
    let deleted = store.delete(&gone, Some(g)).await.unwrap().mod_revision;
    store.compact(deleted).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"49");
    assert_eq!(store.get(&gone).await.unwrap(), None);
    let listed = store.list(&format!("{p}/leases/"), None, 0, 0).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    // A watch from before the compaction: 410 Gone, in the API server's words.
    match store.watch(&format!("{p}/leases/"), first).await {
        Err(Error::Compacted { .. }) => {}
        Ok(mut stream) => {
            match tokio::time::timeout(Duration::from_secs(10), stream.recv()).await {
                Ok(Some(Err(Error::Compacted { .. }))) => {}
                other => panic!("expected a compacted error, got {other:?}"),
            }
        }
        Err(other) => panic!("expected a compacted error, got {other:?}"),
    }
    assert!(matches!(
        store.list(&format!("{p}/leases/"), None, 0, first).await,
        Err(Error::Compacted { .. })
    ));
    // A watch from the compaction point works.
    let mut stream = store.watch(&format!("{p}/leases/"), deleted).await.unwrap();
    let current = store.get(&key).await.unwrap().unwrap();
    let r = store.update(&key, b"after".to_vec(), current.mod_revision).await.unwrap();
    assert_eq!(next(&mut stream).await.kv.mod_revision, r);
}

/// Concurrent writers to one key: exactly one wins each round.
pub async fn concurrent_cas(store: std::sync::Arc<dyn Store>, p: &str) {
    let key = format!("{p}/counters/c");
    store.create(&key, b"0".to_vec()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let current = store.get(&key).await.unwrap().unwrap();
                let n: u64 = String::from_utf8_lossy(&current.value).parse().unwrap();
                match store
                    .update(&key, (n + 1).to_string().into_bytes(), current.mod_revision)
                    .await
                {
                    Ok(_) => done += 1,
                    Err(Error::Conflict { .. }) => {}
                    Err(other) => panic!("{other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"80", "no lost update");
}
