//! The Kubernetes Python client (PyPI `kubernetes` 32.0.1, the release for Kubernetes 1.32)
//! in a virtual environment under the target directory, made once (under a lock, since
//! several test binaries use it) and kept.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const CLIENT_VERSION: &str = "32.0.1";

pub fn python_with_client() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = target.join(format!("python-kubernetes-{CLIENT_VERSION}"));
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if marker.exists() {
        return python;
    }
    std::fs::create_dir_all(&target).unwrap();
    let lock =
        std::fs::File::create(target.join(format!(".python-kubernetes-{CLIENT_VERSION}.lock")))
            .unwrap();
    lock.lock().unwrap();
    if marker.exists() {
        return python; // another test made it meanwhile
    }
    // An interrupted attempt is simply redone.
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success(), "python3 -m venv failed: apt-get install python3-venv");
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("kubernetes=={CLIENT_VERSION}"))
        .status()
        .unwrap();
    assert!(installed.success(), "pip install kubernetes=={CLIENT_VERSION} failed");
    std::fs::write(&marker, "").unwrap();
    python
}
