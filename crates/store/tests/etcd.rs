//! The conformance suite against a real etcd (Debian's etcd-server) started by the test on
//! free loopback ports.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod suite;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_store::{EtcdStore, Store};

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        if std::env::var_os("BERTH_SKIP_ETCD_TESTS").is_some() {
            eprintln!("skipped: etcd is not installed (BERTH_SKIP_ETCD_TESTS is set)");
            return None;
        }
        panic!("these tests need etcd (Debian's etcd-server; scripts/deps installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--name", "test"])
        .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("test=http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd { child, endpoint, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(etcd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(etcd) = start_etcd() else { return };
    let store = EtcdStore::connect(&etcd.endpoint).await.unwrap();
    suite::crud(&store, "/registry").await;
    suite::list(&store, "/registry").await;
    suite::watch(&store, "/registry").await;
    suite::compaction(&store, "/registry").await;
    suite::concurrent_cas(Arc::new(store), "/registry").await;
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_reported() {
    let port = free_port();
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        match EtcdStore::connect(&format!("http://127.0.0.1:{port}")).await {
            Err(err) => err.to_string(),
            Ok(store) => store.revision().await.unwrap_err().to_string(),
        }
    })
    .await
    .expect("an answer within 20 s");
    assert!(result.contains("etcd") || result.contains("storage backend"), "{result}");
}
