//! Helpers for the root integration tests: a busybox bundle, a private state root, and the
//! real `berth-runc` binary driven as a user would drive it.
//!
//! These tests create namespaces, mounts and cgroups, so they need root. They refuse to pass
//! silently without it: run them as root (CI does) or set `BERTH_SKIP_ROOT_TESTS=1` to skip.

#![allow(dead_code)]
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use berth_testkit::BusyboxBundle;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth-runc");

/// Returns false (after saying so) when root tests are to be skipped on this machine.
pub fn root_or_skip() -> bool {
    if berth_testkit::is_root() {
        return true;
    }
    if std::env::var_os("BERTH_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: needs root (BERTH_SKIP_ROOT_TESTS is set)");
        return false;
    }
    panic!("this test needs root: run it as root, or set BERTH_SKIP_ROOT_TESTS=1 to skip it");
}

/// One test's world: a state root, a bundle, and a unique container id prefix.
pub struct World {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub bundle: BusyboxBundle,
    prefix: String,
    counter: AtomicU32,
}

impl World {
    /// A bundle whose process runs `args`.
    pub fn new(args: &[&str]) -> World {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().expect("tempdir");
        let root = dir.path().join("state");
        let bundle = BusyboxBundle::create(&dir.path().join("bundle"), args).expect("bundle");
        let prefix = format!("bt{}", std::process::id());
        World { dir, root, bundle, prefix, counter: AtomicU32::new(0) }
    }

    /// A fresh container id, unique on the host (cgroups are host-wide).
    pub fn id(&self, name: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let random: u32 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}-{name}-{n}-{random:x}", self.prefix)
    }

    pub fn edit(&self, change: impl FnOnce(&mut Value)) {
        self.bundle.edit(change).expect("edit config");
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--root").arg(&self.root);
        command
    }

    /// Runs `berth-runc --root <root> args...` and returns its output.
    ///
    /// Output goes through files, not pipes: a detached container inherits the command's
    /// stdout and stderr and keeps them open, so reading pipes to the end would wait for it.
    pub fn runc(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args).current_dir(&self.bundle.dir);
        capture(&mut command)
    }

    /// Like `runc`, asserting success.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.runc(args);
        assert!(
            output.status.success(),
            "berth-runc {args:?} failed ({:?}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Like `runc`, asserting failure, and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.runc(args);
        assert!(
            !output.status.success(),
            "berth-runc {args:?} should have failed but printed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `run` in the foreground; returns (exit code, stdout, stderr).
    pub fn run(&self, id: &str) -> (i32, String, String) {
        let output = self.runc(&["run", id]);
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs a shell script in a fresh container and returns its stdout, asserting exit 0.
    pub fn sh(&self, script: &str) -> String {
        self.set_args(&["sh", "-c", script]);
        let id = self.id("sh");
        let (code, stdout, stderr) = self.run(&id);
        assert_eq!(
            code, 0,
            "script failed with {code}:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }

    pub fn set_args(&self, args: &[&str]) {
        self.edit(|config| {
            config["process"]["args"] =
                args.iter().map(|a| Value::String((*a).to_owned())).collect()
        });
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state json")
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the container reports `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..500 {
            if self.status(id) == status {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("container {id} never reached {status}; it is {}", self.status(id));
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.rootfs()
    }

    /// Asserts that nothing of container `id` is left: no state, no cgroup, no mount.
    pub fn assert_no_leftovers(&self, id: &str) {
        assert!(!self.root.join(id).exists(), "state of {id} left in {}", self.root.display());
        for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
            let path = Path::new("/sys/fs/cgroup").join(controller).join(id);
            assert!(!path.exists(), "cgroup {} left behind", path.display());
        }
        let unified = Path::new("/sys/fs/cgroup").join(id);
        assert!(
            !unified.exists() || !unified.join("cgroup.procs").exists(),
            "cgroup {} left behind",
            unified.display()
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let bundle = self.bundle.dir.to_string_lossy().into_owned();
        assert!(!mountinfo.contains(&bundle), "a mount under {bundle} is left on the host");
    }
}

/// Runs a command with stdin closed and stdout/stderr captured through files.
pub fn capture(command: &mut Command) -> Output {
    let stdout = tempfile::tempfile().expect("stdout file");
    let stderr = tempfile::tempfile().expect("stderr file");
    let status = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone"))
        .stderr(stderr.try_clone().expect("clone"))
        .status()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    Output { status, stdout: read_all(stdout), stderr: read_all(stderr) }
}

fn read_all(mut file: std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    file.rewind().expect("rewind");
    file.read_to_end(&mut bytes).expect("read output");
    bytes
}

/// Reads a file of the container's rootfs from the host.
pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|err| panic!("read {}: {err}", path.as_ref().display()))
}
/// The fixture image (busybox in three layers) written as an OCI layout under `dir` and
/// packed into `dir/fixture.tar`, which `berth load`, `podman load` and `docker load` read.
pub fn fixture_archive(dir: &Path) -> PathBuf {
    let layout = dir.join("fixture-layout");
    berth_testkit::image::fixture_image(&layout, "v1").expect("fixture image");
    let archive = dir.join("fixture.tar");
    let packed = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(packed.success(), "tar of the fixture layout failed");
    archive
}

/// Loads `archive` into the berth root `root` and names it `name`; returns the image id.
pub fn load_fixture(root: &Path, archive: &Path, name: &str) -> String {
    let berth = env!("CARGO_BIN_EXE_berth");
    let loaded = Command::new(berth)
        .env("BERTH_ROOT", root)
        .arg("load")
        .arg("-i")
        .arg(archive)
        .output()
        .expect("berth load");
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let id = String::from_utf8_lossy(&loaded.stdout).trim().rsplit(' ').next().unwrap().to_owned();
    let tagged =
        Command::new(berth).env("BERTH_ROOT", root).args(["tag", &id, name]).output().unwrap();
    assert!(tagged.status.success(), "{}", String::from_utf8_lossy(&tagged.stderr));
    id
}

pub mod containerd;
pub mod fake_registry;
pub mod python;
pub mod registry;
