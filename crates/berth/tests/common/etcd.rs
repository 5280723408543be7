//! A real etcd (Debian's etcd-server) on loopback ports of its own, for the tests that
//! run the server on etcd instead of its embedded store.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd, killed when dropped.
pub struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts one with its data under `dir`; it and its client endpoint, once it accepts
    /// connections.
    pub fn start(dir: &Path) -> (Etcd, String) {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok(),
            "this test needs etcd (Debian's etcd-server; scripts/deps installs it)"
        );
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd = Etcd(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.join("etcd"))
                .args(["--name", "test", "--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint, "--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("test={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        (etcd, endpoint)
    }
}
