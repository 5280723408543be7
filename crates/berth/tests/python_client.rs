//! The Kubernetes Python client (PyPI `kubernetes` 32.0.1, the release for Kubernetes 1.32)
//! against `berth server`: create, get, list with selectors, a stale replace (409),
//! patch, delete, a watch receiving ADDED/MODIFIED/DELETED, and a Secret from
//! `stringData` (`tests/python/client.py`). The client is installed once into a virtual
//! environment under the target directory.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
mod common;

use common::python::python_with_client;

#[test]
fn the_python_client_drives_the_api() {
    let python = python_with_client();
    let dir = tempfile::Builder::new().prefix("berth-python-").tempdir().unwrap();
    let mut server = Command::new(BERTH)
        .args([
            "server",
            "--disable-agent",
            "--https-listen-port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "the server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let output = Command::new(&python).arg(&script).arg(&kubeconfig).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
        "the Python client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
