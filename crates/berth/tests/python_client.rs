//! The Kubernetes Python client (PyPI `kubernetes` 32.0.1, the release for Kubernetes 1.32)
//! against `berth server`: create, get, list with selectors, a stale replace (409),
//! patch, delete, a watch receiving ADDED/MODIFIED/DELETED, and a Secret from
//! `stringData` (`tests/python/client.py`). The client is installed once into a virtual
//! environment under the target directory.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const CLIENT_VERSION: &str = "32.0.1";

/// A virtual environment with the client, made once and kept.
fn python_with_client() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = target.join(format!("python-kubernetes-{CLIENT_VERSION}"));
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if marker.exists() {
        return python;
    }
    std::fs::create_dir_all(&target).unwrap();
    // The only test in this binary makes it; an interrupted attempt is simply redone.
    {
        let made =
            Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv).status().unwrap();
        assert!(made.success(), "python3 -m venv failed: apt-get install python3-venv");
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes=={CLIENT_VERSION}"))
            .status()
            .unwrap();
        assert!(installed.success(), "pip install kubernetes=={CLIENT_VERSION} failed");
        std::fs::write(&marker, "").unwrap();
    }
    python
}

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
