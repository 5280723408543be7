//! `berth system service` driven by the real docker CLI (Debian's docker.io, its client
//! only): the Docker Engine API over the same state the `berth` commands use. In a
//! private network namespace, on a private root holding the fixture image.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::root_or_skip;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// Debian's docker client (the package CI installs), whatever else is on PATH.
const DOCKER: &str = "/usr/bin/docker";

struct Service {
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.docker_with_input(args, b"")
    }

    fn docker_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(DOCKER)
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        child.wait_with_output().expect("docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.docker(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let output = self.docker(args);
        assert!(!output.status.success(), "docker {args:?} should have failed");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn berth(&self, args: &[&str]) -> String {
        let output =
            Command::new(BERTH).env("BERTH_ROOT", self.root()).args(args).output().expect("berth");
        assert!(
            output.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn start() -> Service {
    berth_sys::nix::sched::unshare(berth_sys::nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare the network namespace");
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
    let dir = tempfile::Builder::new().prefix("berth-docker-api-").tempdir().unwrap();
    let root = dir.path().join("root");
    common::load_fixture(&root, &common::fixture_archive(dir.path()), "fixture:v1");
    let socket = dir.path().join("docker.sock");
    let child = Command::new(BERTH)
        .env("BERTH_ROOT", &root)
        .args(["system", "service", "--listen", &format!("unix://{}", socket.display())])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let service = Service { dir, child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !service.docker(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "the service never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    service
}

#[test]
fn root_the_docker_cli_drives_berth() {
    if !root_or_skip() {
        return;
    }
    assert!(
        std::path::Path::new(DOCKER).exists(),
        "the docker client is needed: scripts/deps installs docker.io"
    );
    let service = start();
    // Versions are negotiated: the server says 1.41 and its minimum.
    let version = service.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Server.Os}}",
    ]);
    assert_eq!(version, "1.41 1.24 linux\n");
    let images = service.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.lines().any(|l| l == "fixture:v1"), "{images}");
    // A container made through the API is berth's, and the other way round.
    let id = service.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-l",
        "tier=front",
        "-e",
        "GREETING=hi",
        "-p",
        "18091:80",
        "fixture:v1",
        "sh",
        "-c",
        "echo $GREETING; echo oops >&2; exec sleep 300",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(
        service.berth(&["ps", "--format", "{{.Names}} {{.Ports}}"]),
        "web 0.0.0.0:18091->80/tcp\n"
    );
    service.berth(&["create", "--name", "made-by-berth", "fixture:v1", "true"]);
    let listed = service.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort_unstable();
    assert_eq!(listed, ["made-by-berth created", "web running"]);
    assert_eq!(service.ok(&["ps", "--filter", "label=tier=front", "-q"]).trim(), &id[..12]);
    assert_eq!(service.ok(&["ps", "--filter", "label=tier=back", "-q"]), "");
    assert_eq!(
        service.ok(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.Config.Labels.tier}} {{.Name}}",
            "web"
        ]),
        "true front /web\n"
    );
    // Logs come back as Docker frames them: stdout and stderr apart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let logs = service.docker(&["logs", "web"]);
        if String::from_utf8_lossy(&logs.stderr).contains("oops") || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "oops\n");
    // Attached runs and execs: the streams apart, the input passed on, the exit codes.
    let attached = service.docker(&[
        "run",
        "--rm",
        "fixture:v1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(attached.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&attached.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&attached.stderr), "err\n");
    let piped =
        service.docker_with_input(&["run", "-i", "--rm", "fixture:v1", "cat"], b"piped in\n");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "piped in\n");
    assert_eq!(
        service.docker(&["exec", "web", "sh", "-c", "echo $GREETING; exit 4"]).status.code(),
        Some(4)
    );
    assert_eq!(service.ok(&["exec", "web", "sh", "-c", "echo $GREETING"]), "hi\n");
    let into = service.docker_with_input(&["exec", "-i", "web", "cat"], b"to exec\n");
    assert_eq!(String::from_utf8_lossy(&into.stdout), "to exec\n");
    assert_eq!(service.docker(&["exec", "web", "nope"]).status.code(), Some(127));
    // Errors as Docker gives them.
    let err = service.fails(&["run", "-d", "--name", "web", "fixture:v1", "true"]);
    assert!(err.contains("web"), "{err}");
    let err = service.fails(&["rm", "ghost"]);
    assert!(err.contains("No such container: ghost"), "{err}");
    let err = service.fails(&["rm", "web"]);
    assert!(err.contains("running"), "{err}");
    // The end of a container.
    service.ok(&["stop", "-t", "1", "web"]);
    assert_eq!(
        service.ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "web"]),
        "exited 137\n"
    );
    assert_eq!(service.ok(&["wait", "web"]), "137\n");
    service.ok(&["start", "web"]);
    service.ok(&["kill", "web"]);
    service.ok(&["rm", "web", "made-by-berth"]);
    assert_eq!(service.berth(&["ps", "-a", "-q"]), "");
    assert!(service.ok(&["network", "ls", "--format", "{{.Name}}"]).contains("bridge"));
    assert!(service.ok(&["info", "--format", "{{.Driver}}"]).contains("overlay2"));
    // A second service does not take a live socket from the first.
    let second = Command::new(BERTH)
        .env("BERTH_ROOT", service.root())
        .args(["system", "service", "--listen", &format!("unix://{}", service.socket().display())])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listens"));
    service.ok(&["version"]);
}
