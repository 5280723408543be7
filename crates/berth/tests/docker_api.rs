//! `berth system service` driven by the real docker CLI (Debian's docker.io, its client
//! only): the Docker Engine API over the same state the `berth` commands use. In a
//! private network namespace, on a private root holding the fixture image.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::path::{Path, PathBuf};
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
    // With -t the process has a terminal, and its output comes raw.
    let tty = service.ok(&["exec", "-t", "web", "sh", "-c", "tty; exit 0"]);
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");
    let tty = service.ok(&["run", "--rm", "-t", "fixture:v1", "tty"]);
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");
    // -it from a terminal (`script` gives the client a pty of a chosen size): what is
    // typed reaches the shell, the terminal's size is passed on, the exit code comes back.
    let on_terminal = |command: &str, typed: &str| -> (Option<i32>, String) {
        use std::io::Write;
        let mut child = Command::new("script")
            .args(["-qec", &format!("stty cols 100 rows 30; {DOCKER} {command}"), "/dev/null"])
            .env("DOCKER_HOST", format!("unix://{}", service.socket().display()))
            .env("DOCKER_CONFIG", service.dir.path().join("docker-config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script (util-linux)");
        // Typed once the shell shows its prompt: busybox's line editor, starting, would
        // take input typed ahead for the answer to its cursor query.
        let mut stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 4096];
            loop {
                match stdout.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = sender.send(buffer[..n].to_vec());
                    }
                }
            }
        });
        let mut shown = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&shown).contains("# ") {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(chunk) => shown.extend(chunk),
                Err(_) => panic!("no prompt: {}", String::from_utf8_lossy(&shown)),
            }
        }
        child.stdin.take().unwrap().write_all(typed.as_bytes()).unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        shown.extend(receiver.try_iter().flatten());
        (status.code(), String::from_utf8_lossy(&shown).replace('\r', ""))
    };
    // The client sends the terminal's size just after the start, which may come after
    // the shell's prompt: the shell waits for it (10 s at most) before printing it.
    let sized = "i=0; while [ \"$(stty size)\" != \"30 100\" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size";
    let (code, shown) =
        on_terminal("exec -it web sh", &format!("{sized}; echo typed-$((6*7)); exit 5\n"));
    assert_eq!(code, Some(5), "{shown}");
    assert!(shown.contains("\n30 100\n") && shown.contains("\ntyped-42\n"), "{shown}");
    // The size `docker run -it` sends just after the start travels on a connection of
    // its own that closes at once; the monitor must read it even when relaying output to
    // that connection fails first (it did not: the size was lost under load).
    let (code, shown) =
        on_terminal("run -it --rm fixture:v1 sh", &format!("{sized}; echo run-$((6*7)); exit 3\n"));
    assert_eq!(code, Some(3), "{shown}");
    assert!(shown.contains("\n30 100\n") && shown.contains("\nrun-42\n"), "{shown}");
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

/// Waits until `check` holds, or fails with `what`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn root_docker_cli_networks_volumes_files_and_images() {
    if !root_or_skip() {
        return;
    }
    let service = start();
    // Networks: made, listed, inspected, joined by name and alias, removed.
    let net = service.ok(&[
        "network",
        "create",
        "--subnet",
        "10.231.0.0/24",
        "--label",
        "app=shop",
        "shopnet",
    ]);
    assert_eq!(net.trim().len(), 64, "{net}");
    assert!(service
        .ok(&["network", "ls", "--filter", "label=app=shop", "--format", "{{.Name}}"])
        .lines()
        .eq(["shopnet"]));
    assert_eq!(
        service.ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            "shopnet"
        ]),
        "10.231.0.0/24\n"
    );
    let err = service.fails(&["network", "create", "shopnet"]);
    assert!(err.contains("already exists"), "{err}");
    let err = service.fails(&["network", "inspect", "nonet"]);
    assert!(err.contains("nonet"), "{err}");
    // Volumes: made with labels, used, listed as in use, inspected, removed.
    service.ok(&["volume", "create", "--label", "app=shop", "data"]);
    assert_eq!(service.ok(&["volume", "ls", "-q", "--filter", "label=app=shop"]), "data\n");
    let mountpoint = service.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "data"]);
    assert!(mountpoint.trim().starts_with(service.root().to_str().unwrap()), "{mountpoint}");
    service.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "shopnet",
        "--network-alias",
        "database",
        "-v",
        "data:/data",
        "fixture:v1",
        "sh",
        "-c",
        "echo kept > /data/f; exec sleep 300",
    ]);
    service.ok(&[
        "run",
        "-d",
        "--name",
        "app",
        "--network",
        "shopnet",
        "fixture:v1",
        "sleep",
        "300",
    ]);
    eventually("the volume's file", || std::path::Path::new(mountpoint.trim()).join("f").exists());
    let members = service.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Containers}}{{.Name}} {{end}}",
        "shopnet",
    ]);
    assert!(members.contains("db") && members.contains("app"), "{members}");
    // The alias given at create resolves on the network.
    let looked_up = service.ok(&["exec", "app", "nslookup", "database"]);
    assert!(looked_up.contains("10.231.0."), "{looked_up}");
    let err = service.fails(&["volume", "rm", "data"]);
    assert!(err.contains("in use"), "{err}");
    // docker network connect/disconnect on a second network.
    service.ok(&["network", "create", "backnet"]);
    service.ok(&["network", "connect", "--alias", "cache", "backnet", "app"]);
    assert!(service
        .ok(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            "app"
        ])
        .contains("backnet"));
    service.ok(&["network", "disconnect", "backnet", "app"]);
    service.ok(&["network", "rm", "backnet"]);
    // Files both ways (docker cp), what changed, the whole filesystem (export).
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
    service.ok(&["cp", host.path().join("in.txt").to_str().unwrap(), "app:/tmp/in.txt"]);
    assert_eq!(service.ok(&["exec", "app", "cat", "/tmp/in.txt"]), "from the host\n");
    service.ok(&["exec", "app", "sh", "-c", "mkdir -p /tmp/d && echo deep > /tmp/d/x"]);
    service.ok(&["cp", "app:/tmp/d", host.path().to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(host.path().join("d/x")).unwrap(), "deep\n");
    // DIR/. copies what the directory holds, not the directory.
    let contents = host.path().join("contents");
    std::fs::create_dir(&contents).unwrap();
    service.ok(&["cp", "app:/tmp/d/.", contents.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(contents.join("x")).unwrap(), "deep\n");
    // exec -d: the process runs on after the command returns.
    service.ok(&["exec", "-d", "app", "sh", "-c", "sleep 0.2; echo later > /tmp/detached"]);
    eventually("the detached exec's file", || {
        service.docker(&["exec", "app", "cat", "/tmp/detached"]).stdout == b"later\n"
    });
    // An exec's environment reaches it, and never a command line (/proc/*/cmdline is
    // every user's to read).
    service.ok(&[
        "exec",
        "-d",
        "-e",
        "TOKEN=hunter2-value",
        "app",
        "sh",
        "-c",
        "echo $TOKEN > /tmp/token; sleep 3",
    ]);
    eventually("the exec's environment", || {
        service.docker(&["exec", "app", "cat", "/tmp/token"]).stdout == b"hunter2-value\n"
    });
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("hunter2-value"),
            "a secret on a command line: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    let err = service.fails(&["cp", "app:/no/such", host.path().to_str().unwrap()]);
    assert!(err.contains("/no/such"), "{err}");
    let changes = service.ok(&["diff", "app"]);
    assert!(changes.lines().any(|l| l == "A /tmp/in.txt"), "{changes}");
    let exported = host.path().join("app.tar");
    service.ok(&["export", "-o", exported.to_str().unwrap(), "app"]);
    let listing = Command::new("tar").arg("-tf").arg(&exported).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|l| l.trim_start_matches("./") == "tmp/in.txt"), "{listing}");
    assert!(listing.lines().any(|l| l.trim_start_matches("./") == "bin/busybox"), "{listing}");
    // top, stats, pause, rename, update.
    let top = service.ok(&["top", "app"]);
    assert!(top.lines().next().unwrap().contains("PID") && top.contains("sleep 300"), "{top}");
    // (The detached exec above may still be running: one process, or a few more.)
    let stats = service.ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "app"]);
    let pids: u32 = stats.trim().strip_prefix("app ").and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!((1..=4).contains(&pids), "{stats}");
    service.ok(&["pause", "app"]);
    assert_eq!(service.ok(&["inspect", "-f", "{{.State.Status}}", "app"]), "paused\n");
    service.ok(&["unpause", "app"]);
    service.ok(&["rename", "app", "shop"]);
    service.ok(&["update", "--memory", "64m", "--memory-swap", "128m", "shop"]);
    assert_eq!(service.ok(&["inspect", "-f", "{{.HostConfig.Memory}}", "shop"]), "67108864\n");
    // Follow the logs: lines come as they are written, and the stream ends with the
    // container.
    service.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "fixture:v1",
        "sh",
        "-c",
        "for i in 1 2 3; do echo tick$i; sleep 0.3; done",
    ]);
    let followed = service.ok(&["logs", "-f", "ticker"]);
    assert_eq!(followed, "tick1\ntick2\ntick3\n");
    // ps: the latest (stopped ones included, as Docker's -l), by image, by exit code.
    assert_eq!(service.ok(&["ps", "-l", "--format", "{{.Names}}"]), "ticker\n");
    let by_image =
        service.ok(&["ps", "-a", "--filter", "ancestor=fixture:v1", "--format", "{{.Names}}"]);
    assert!(by_image.contains("ticker") && by_image.contains("db"), "{by_image}");
    assert_eq!(
        service.ok(&["ps", "-a", "--filter", "exited=0", "--format", "{{.Names}}"]),
        "ticker\n"
    );
    // Events, from the start and bounded in time (the monitor records the death just
    // after the state changes, so it may take a moment to show).
    let mut events = String::new();
    eventually("the die event", || {
        events = service.ok(&[
            "events",
            "--since",
            "0",
            "--until",
            "0s",
            "--filter",
            "container=ticker",
            "--format",
            "{{.Action}}",
        ]);
        events.lines().any(|e| e == "die")
    });
    assert!(events.lines().take(2).eq(["create", "start"]), "{events}");
    // A start during the export of a stopped container waits for the export (which
    // holds the container while its rootfs is mounted for the copy): the archive is
    // whole, and the started container's rootfs stays its own.
    service.ok(&["create", "--name", "still", "fixture:v1", "sleep", "300"]);
    let slow = Command::new("curl")
        .args(["-sf", "--limit-rate", "400k", "-o"])
        .arg(host.path().join("still.tar"))
        .arg("--unix-socket")
        .arg(service.socket())
        .arg("http://localhost/v1.41/containers/still/export")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    service.ok(&["start", "still"]);
    let status = slow.wait_with_output().unwrap().status;
    assert!(status.success(), "export: {status}");
    let listing =
        Command::new("tar").arg("-tf").arg(host.path().join("still.tar")).output().unwrap();
    assert!(
        listing.status.success()
            && String::from_utf8_lossy(&listing.stdout).contains("bin/busybox")
    );
    service.ok(&["cp", host.path().join("in.txt").to_str().unwrap(), "still:/tmp/in.txt"]);
    assert_eq!(service.ok(&["exec", "still", "cat", "/tmp/in.txt"]), "from the host\n");
    service.ok(&["rm", "-f", "still"]);
    // Images: tag, history, save/load, remove, build, prune.
    service.ok(&["tag", "fixture:v1", "shop/base:1"]);
    let history = service.ok(&["history", "--format", "{{.Size}}", "shop/base:1"]);
    assert!(history.lines().count() >= 3, "{history}");
    let saved = host.path().join("saved.tar");
    service.ok(&["save", "-o", saved.to_str().unwrap(), "shop/base:1"]);
    let untagged = service.ok(&["rmi", "shop/base:1"]);
    assert!(untagged.contains("Untagged: shop/base:1"), "{untagged}");
    let loaded = service.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert!(loaded.contains("shop/base:1"), "{loaded}");
    // docker import: a filesystem tar, with a change to its config.
    let rootfs = host.path().join("rootfs.tar");
    service.ok(&["export", "-o", rootfs.to_str().unwrap(), "shop"]);
    let imported = service.ok(&[
        "import",
        "--change",
        "ENV IMPORTED=yes",
        rootfs.to_str().unwrap(),
        "shop/imported:1",
    ]);
    assert!(imported.trim().starts_with("sha256:"), "{imported}");
    assert_eq!(
        service.ok(&[
            "run",
            "--rm",
            "shop/imported:1",
            "sh",
            "-c",
            "echo $IMPORTED; cat /tmp/in.txt"
        ]),
        "yes\nfrom the host\n"
    );
    let err = service.fails(&["rmi", "nothing:here"]);
    assert!(err.contains("No such image"), "{err}");
    let context = host.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("hello.txt"), "built\n").unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM fixture:v1\nARG WHO=nobody\nCOPY hello.txt /hello.txt\nRUN echo \"by $WHO\" >> /hello.txt\nCMD [\"cat\", \"/hello.txt\"]\n",
    )
    .unwrap();
    let built = service.ok(&[
        "build",
        "-t",
        "shop/built:1",
        "--build-arg",
        "WHO=api",
        context.to_str().unwrap(),
    ]);
    assert!(built.contains("Successfully tagged shop/built:1"), "{built}");
    assert_eq!(service.ok(&["run", "--rm", "shop/built:1"]), "built\nby api\n");
    std::fs::write(context.join("Dockerfile"), "FROM fixture:v1\nRUN exit 7\n").unwrap();
    let err = service.fails(&["build", context.to_str().unwrap()]);
    assert!(err.contains("exit"), "{err}");
    // Push and pull through a registry that wants a login.
    let registry = common::registry::Registry::start_with_auth("shopper", "s3cret");
    let remote = format!("{}/shop/built:1", registry.host());
    service.ok(&["tag", "shop/built:1", &remote]);
    let err = service.fails(&["push", &remote]);
    assert!(err.to_lowercase().contains("auth") || err.contains("401"), "{err}");
    let login = service.docker_with_input(
        &["login", "-u", "shopper", "--password-stdin", &registry.host()],
        b"s3cret\n",
    );
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let bad = service.docker_with_input(
        &["login", "-u", "shopper", "--password-stdin", &registry.host()],
        b"wrong\n",
    );
    assert!(!bad.status.success());
    let pushed = service.ok(&["push", &remote]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    service.ok(&["rmi", &remote]);
    service.ok(&["pull", &remote]);
    assert_eq!(service.ok(&["run", "--rm", &remote]), "built\nby api\n");
    // Disk usage, and pruning what is left.
    let df = service.ok(&["system", "df", "--format", "{{.Type}}"]);
    assert!(
        df.contains("Images") && df.contains("Containers") && df.contains("Local Volumes"),
        "{df}"
    );
    service.ok(&["rm", "-f", "db", "shop"]);
    let pruned = service.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert_eq!(service.berth(&["ps", "-a", "-q"]), "");
    service.ok(&["volume", "rm", "data"]);
    service.ok(&["network", "rm", "shopnet"]);
    assert!(!service.ok(&["network", "ls", "--format", "{{.Name}}"]).contains("shopnet"));
}

/// Debian's docker-compose (1.29, on Debian's docker-py) brings up three services with
/// a build, two networks, a named volume, a health-gated `depends_on`, environment and a
/// published port, then takes them down leaving nothing.
#[test]
fn root_docker_compose_up_and_down() {
    if !root_or_skip() {
        return;
    }
    let compose = "/usr/bin/docker-compose";
    assert!(Path::new(compose).exists(), "docker-compose is needed: scripts/deps installs it");
    let service = start();
    let project = service.dir.path().join("shop");
    std::fs::create_dir_all(project.join("api")).unwrap();
    std::fs::write(
        project.join("api/Dockerfile"),
        "FROM fixture:v1\nLABEL tier=api\nCOPY motd /etc/motd\n",
    )
    .unwrap();
    std::fs::write(project.join("api/motd"), "welcome\n").unwrap();
    std::fs::write(
        project.join("docker-compose.yml"),
        r#"version: "2.4"
services:
  db:
    image: fixture:v1
    command: ["sh", "-c", "echo db up; echo stock-42 > /srv/stock; exec httpd -f -p 5432 -h /srv"]
    volumes: ["dbdata:/srv"]
    networks: [back]
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:5432/stock"]
      interval: 1s
      timeout: 2s
      retries: 20
  api:
    build: ./api
    environment:
      SHOP_NAME: berth-shop
    depends_on:
      db:
        condition: service_healthy
    networks: [back, front]
    command: ["sh", "-c", "mkdir -p /www && wget -qO /www/stock http://db:5432/stock && echo $$SHOP_NAME > /www/name && exec httpd -f -p 8080 -h /www"]
  web:
    image: fixture:v1
    depends_on: [api]
    networks: [front]
    ports: ["18280:80"]
    command: ["sh", "-c", "mkdir -p /www && echo front > /www/index.html && exec httpd -f -p 80 -h /www"]
volumes:
  dbdata:
networks:
  back:
  front:
"#,
    )
    .unwrap();
    let run = |args: &[&str]| -> Output {
        Command::new(compose)
            .current_dir(&project)
            .env("DOCKER_HOST", format!("unix://{}", service.socket().display()))
            .env("DOCKER_CONFIG", service.dir.path().join("docker-config"))
            .args(["-p", "shop"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker-compose")
    };
    let ok = |args: &[&str]| -> String {
        let output = run(args);
        assert!(
            output.status.success(),
            "docker-compose {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    ok(&["up", "-d"]);
    let names = service.ok(&["ps", "--format", "{{.Names}}"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort_unstable();
    assert_eq!(names, ["shop_api_1", "shop_db_1", "shop_web_1"]);
    let listed = ok(&["ps"]);
    assert_eq!(listed.lines().filter(|l| l.contains(" Up")).count(), 3, "{listed}");
    assert_eq!(
        service.ok(&["inspect", "-f", "{{.State.Health.Status}}", "shop_db_1"]),
        "healthy\n"
    );
    // The api read the db over the back network, by service name, after db was healthy.
    assert_eq!(
        ok(&["exec", "-T", "api", "cat", "/www/stock", "/www/name", "/etc/motd"]),
        "stock-42\nberth-shop\nwelcome\n"
    );
    // web reaches api over the front network; the published port reaches web.
    assert_eq!(ok(&["exec", "-T", "web", "wget", "-qO-", "http://api:8080/name"]), "berth-shop\n");
    let mut page = String::new();
    eventually("the published port", || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:18280") else { return false };
        let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
        page.clear();
        let _ = stream.read_to_string(&mut page);
        page.ends_with("front\n")
    });
    assert!(ok(&["logs", "db"]).contains("db up"));
    let volumes = service.ok(&["volume", "ls", "-q"]);
    assert!(volumes.lines().any(|v| v == "shop_dbdata"), "{volumes}");
    // Down with -v: containers, networks and the volume go.
    ok(&["down", "-v"]);
    assert_eq!(service.berth(&["ps", "-a", "-q"]), "");
    let networks = service.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.contains("shop_"), "{networks}");
    assert!(!service.ok(&["volume", "ls", "-q"]).contains("shop_dbdata"));
}

/// docker-py (Debian's python3-docker) through its Python API: containers, logs, exec,
/// build, images, networks and volumes.
#[test]
fn root_docker_py_drives_berth() {
    if !root_or_skip() {
        return;
    }
    let python = "/usr/bin/python3";
    let check = Command::new(python).args(["-c", "import docker"]).status().unwrap();
    assert!(check.success(), "python3-docker is needed: scripts/deps installs it");
    let service = start();
    let script = r#"
import io, sys, docker
client = docker.DockerClient(base_url=sys.argv[1], version="auto")
assert client.ping()
# containers: run detached, logs, exec, wait, remove
c = client.containers.run("fixture:v1", ["sh", "-c", "echo hello-py; sleep 300"], detach=True,
                          name="py1", labels={"made": "py"}, environment={"X": "1"})
import time
for _ in range(600):
    if b"hello-py" in c.logs():
        break
    time.sleep(0.05)
assert c.logs() == b"hello-py\n", c.logs()
c.reload()
assert c.status == "running", c.status
code, out = c.exec_run(["sh", "-c", "echo $X; exit 2"])
assert (code, out) == (2, b"1\n"), (code, out)
assert [x.name for x in client.containers.list(filters={"label": "made=py"})] == ["py1"]
c.stop(timeout=1)
assert c.wait()["StatusCode"] == 137
c.remove()
assert client.containers.list(all=True) == []
# an exit code and output from a foreground run
assert client.containers.run("fixture:v1", ["echo", "once"], remove=True) == b"once\n"
try:
    client.containers.run("fixture:v1", ["sh", "-c", "exit 5"], remove=True)
    raise SystemExit("a failing container should raise")
except docker.errors.ContainerError as e:
    assert e.exit_status == 5
# build from an in-memory Dockerfile, then run what was built
image, logs = client.images.build(fileobj=io.BytesIO(b"FROM fixture:v1\nRUN echo built > /b\nCMD [\"cat\", \"/b\"]\n"), tag="py/built:1", rm=True)
assert "py/built:1" in image.tags, image.tags
assert client.containers.run("py/built:1", remove=True) == b"built\n"
assert any("py/built:1" in i.tags for i in client.images.list())
# networks and volumes
net = client.networks.create("pynet", labels={"made": "py"})
vol = client.volumes.create("pyvol", labels={"made": "py"})
c = client.containers.run("fixture:v1", ["sleep", "300"], detach=True, name="py2", network="pynet",
                          volumes={"pyvol": {"bind": "/v", "mode": "rw"}})
net.reload()
assert [x.name for x in net.containers] == ["py2"], net.containers
assert client.volumes.get("pyvol").attrs["Labels"] == {"made": "py"}
c.remove(force=True)
net.remove()
vol.remove()
client.images.remove("py/built:1")
try:
    client.containers.get("ghost")
    raise SystemExit("ghost should be missing")
except docker.errors.NotFound:
    pass
print("ok")
"#;
    let output = Command::new(python)
        .args(["-c", script, &format!("unix://{}", service.socket().display())])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker-py script failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
}

/// Bad requests get Docker's status codes and messages, and leave nothing behind.
#[test]
fn root_docker_api_bad_input() {
    if !root_or_skip() {
        return;
    }
    let service = start();
    let curl = |method: &str, path: &str, body: &[u8]| -> (u16, String) {
        use std::io::Write;
        let mut child = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(service.socket())
            .args(["-X", method, "-H", "Content-Type: application/json", "--data-binary", "@-"])
            .arg(format!("http://localhost/v1.41{path}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl");
        child.stdin.take().unwrap().write_all(body).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_owned())
    };
    let (code, body) = curl("POST", "/containers/create?name=bad", b"{\"Image\": ");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid JSON"), "{body}");
    let (code, body) = curl("POST", "/containers/create", b"{\"Cmd\": [\"true\"]}");
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl("POST", "/containers/create", b"{\"Image\": \"missing:1\"}");
    assert_eq!((code, body.contains("No such image: missing:1")), (404, true), "{body}");
    let (code, body) = curl("GET", "/containers/ghost/json", b"");
    assert_eq!((code, body.contains("No such container: ghost")), (404, true), "{body}");
    let (code, body) = curl("GET", "/networks/nonet", b"");
    assert_eq!((code, body.contains("network nonet not found")), (404, true), "{body}");
    let (code, body) = curl("GET", "/volumes/novol", b"");
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl("GET", "/containers/json?filters=notjson", b"");
    assert_eq!(code, 400, "{body}");
    let (code, body) =
        curl("POST", "/networks/create", b"{\"Name\": \"n1\", \"Driver\": \"overlay\"}");
    assert_eq!((code, body.contains("bridge")), (400, true), "{body}");
    // A build context that is not a tar: a 400 saying so (its temporary directory goes
    // with the request), and no image.
    let (code, body) =
        curl("POST", "/build?t=x:1", b"this is not a tar archive, not even close........");
    assert_eq!((code, body.contains("not a tar")), (400, true), "{body}");
    // The Dockerfile must be a file of the context: not an absolute path, not a symlink
    // out of it (its text would come back in the error).
    let context = service.dir.path().join("sneaky");
    std::fs::create_dir_all(&context).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", context.join("Dockerfile")).unwrap();
    let tar = service.dir.path().join("sneaky.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&context)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let archive = std::fs::read(&tar).unwrap();
    let (code, body) = curl("POST", "/build", &archive);
    assert_eq!((code, body.contains("inside the build context")), (400, true), "{body}");
    let (code, body) = curl("POST", "/build?dockerfile=%2Fetc%2Fpasswd", &archive);
    assert_eq!((code, body.contains("inside the build context")), (400, true), "{body}");
    assert!(!body.contains("root:"), "{body}");
    // A JSON body past the bound is refused whole, not held.
    let huge = vec![b' '; 17 << 20];
    let (code, body) = curl("POST", "/containers/create", &huge);
    assert_eq!((code, body.contains("at most 16 MiB")), (400, true), "{body}");
    // Filters berth cannot apply are refused, never ignored (ignoring one would list, or
    // prune, more than asked).
    let (code, body) =
        curl("GET", "/containers/json?filters=%7B%22before%22%3A%5B%22x%22%5D%7D", b"");
    assert_eq!((code, body.contains("invalid filter 'before'")), (400, true), "{body}");
    let (code, body) =
        curl("POST", "/images/prune?filters=%7B%22until%22%3A%5B%2224h%22%5D%7D", b"");
    assert_eq!((code, body.contains("invalid filter 'until'")), (400, true), "{body}");
    // A web page cannot drive the API: what browsers add to a page's requests.
    for extra in [["-H", "Origin: http://evil.example"], ["-H", "Sec-Fetch-Mode: no-cors"]] {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
            .arg(service.socket())
            .args(["-X", "POST", "--data-binary", "{\"Image\": \"fixture:v1\"}"])
            .args(extra)
            .arg("http://localhost/v1.41/containers/create?name=fromapage")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "403", "{extra:?}");
    }
    // Only loopback for TCP (no TLS, no authentication).
    let open = Command::new(BERTH)
        .env("BERTH_ROOT", service.root())
        .args(["system", "service", "--listen", "tcp://0.0.0.0:18399"])
        .output()
        .unwrap();
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("loopback"));
    // The socket is its owner's only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(service.socket()).unwrap().permissions().mode() & 0o777, 0o600);
    // Conflicts: a name in use, a port in use.
    service.ok(&["run", "-d", "--name", "one", "-p", "18377:80", "fixture:v1", "sleep", "300"]);
    let err = service.fails(&["run", "-d", "--name", "one", "fixture:v1", "true"]);
    assert!(err.contains("Conflict") || err.contains("already in use"), "{err}");
    let err =
        service.fails(&["run", "-d", "--name", "two", "-p", "18377:80", "fixture:v1", "true"]);
    assert!(err.contains("18377"), "{err}");
    service.ok(&["rm", "-f", "one"]);
    // Nothing was left by the failures.
    let left = service.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!left.contains("bad") && !left.contains("one"), "{left}");
    assert_eq!(service.ok(&["images", "-q", "x"]), "");
    assert_eq!(service.ok(&["images", "-q", "fixture"]).lines().count(), 1);
    assert_eq!(service.ok(&["images", "-q", "fixture:v2"]), "");
}

/// Debian's dockerd, started privately in the test's network namespace: its own data and
/// exec roots and socket, no bridge and no iptables rules.
struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-R").arg(self.dir.path().join("data")).status();
    }
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = tempfile::Builder::new().prefix("berth-dockerd-").tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.path().join("docker.sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/deps installs docker.io)");
        let dockerd = Dockerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dockerd.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd never answered: {}",
                std::fs::read_to_string(dockerd.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        dockerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .env("DOCKER_BUILDKIT", "0")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker")
    }
}

/// Every key path of a JSON value (`.State.Status`, `.Mounts[].Type`), not descending into
/// maps whose keys are data (labels, networks, ports, ...).
fn key_paths(
    value: &serde_json::Value,
    prefix: &str,
    out: &mut std::collections::BTreeSet<String>,
) {
    const DATA_MAPS: &[&str] = &[
        "Labels",
        "Networks",
        "Ports",
        "ExposedPorts",
        "Volumes",
        "Options",
        "Containers",
        "Plugins",
        "Runtimes",
        "RegistryConfig",
        "Env",
        "Status",
        "Sysctls",
        "Tmpfs",
        "PortBindings",
        "Data",
        "Config",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = format!("{prefix}.{key}");
                out.insert(path.clone());
                // `Config` is data only under IPAM; elsewhere it is a section.
                if DATA_MAPS.contains(&key.as_str())
                    && (key != "Config" || prefix.ends_with("IPAM"))
                {
                    continue;
                }
                key_paths(inner, &path, out);
            }
        }
        serde_json::Value::Array(list) => {
            if let Some(first) = list.first().filter(|f| f.is_object()) {
                key_paths(first, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The same scenario through berth's API and through dockerd's, with the same docker
/// client: the JSON berth answers has every field dockerd's has, and the documented,
/// deterministic fields have the same values.
#[test]
fn root_docker_api_json_matches_dockerd() {
    if !root_or_skip() {
        return;
    }
    let service = start();
    let dockerd = Dockerd::start();
    // The same image in both, built through each API: busybox on scratch.
    let context = service.dir.path().join("busybox-context");
    std::fs::create_dir_all(context.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", context.join("bin/busybox")).unwrap();
    for link in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", context.join("bin").join(link)).unwrap();
    }
    std::fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY bin /bin\nCMD [\"sh\"]\n")
        .unwrap();
    let both = |args: &[&str]| -> [Output; 2] {
        let mut berth_args = vec![];
        berth_args.extend_from_slice(args);
        [service.docker(&berth_args), dockerd.docker(args)]
    };
    let json_of = |outputs: [Output; 2], what: &str| -> [serde_json::Value; 2] {
        outputs.map(|o| {
            assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
            let value: serde_json::Value = serde_json::from_slice(&o.stdout)
                .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&o.stdout)));
            match value {
                serde_json::Value::Array(mut list) if !list.is_empty() => list.remove(0),
                other => other,
            }
        })
    };
    let raw = |path: &str| -> [serde_json::Value; 2] {
        [service.socket(), dockerd.socket()].map(|socket| {
            let output = Command::new("curl")
                .args(["-sf", "--unix-socket"])
                .arg(&socket)
                .arg(format!("http://localhost/v1.41{path}"))
                .output()
                .unwrap();
            assert!(output.status.success(), "GET {path} on {}", socket.display());
            let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            match value {
                serde_json::Value::Array(mut list) if !list.is_empty() => list.remove(0),
                other => other,
            }
        })
    };
    for output in both(&["build", "-q", "-t", "fix:1", context.to_str().unwrap()]) {
        assert!(output.status.success(), "build: {}", String::from_utf8_lossy(&output.stderr));
    }
    for output in both(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "none",
        "-l",
        "a=b",
        "-e",
        "K=V",
        "-v",
        "vol1:/data",
        "--memory",
        "64m",
        "--restart",
        "on-failure:2",
        "fix:1",
        "sleep",
        "300",
    ]) {
        assert!(output.status.success(), "run: {}", String::from_utf8_lossy(&output.stderr));
    }
    for output in both(&["network", "create", "--label", "n=1", "n1"]) {
        assert!(
            output.status.success(),
            "network create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let objects = [
        ("container inspect", json_of(both(&["inspect", "c1"]), "inspect")),
        ("container list", raw("/containers/json")),
        ("image inspect", json_of(both(&["image", "inspect", "fix:1"]), "image inspect")),
        ("volume inspect", json_of(both(&["volume", "inspect", "vol1"]), "volume inspect")),
        ("network inspect", json_of(both(&["network", "inspect", "n1"]), "network inspect")),
        ("version", raw("/version")),
        ("info", raw("/info")),
    ];
    // Every field dockerd answers, berth answers.
    for (what, [ours, theirs]) in &objects {
        let (mut mine, mut docker) = (Default::default(), Default::default());
        key_paths(ours, "", &mut mine);
        key_paths(theirs, "", &mut docker);
        let missing: Vec<&String> = docker.difference(&mine).collect();
        assert!(missing.is_empty(), "{what}: berth lacks {missing:?}");
    }
    // The documented fields with values that do not depend on the daemon agree.
    let pointer = |value: &serde_json::Value, at: &str| value.pointer(at).cloned();
    let same = [
        (
            "container inspect",
            vec![
                "/Path",
                "/Args",
                "/Name",
                "/State/Status",
                "/State/Running",
                "/State/Paused",
                "/Config/Cmd",
                "/Config/Labels",
                "/Config/Image",
                "/Config/Tty",
                "/Config/OpenStdin",
                "/HostConfig/Memory",
                "/HostConfig/NetworkMode",
                "/HostConfig/RestartPolicy",
                "/HostConfig/Binds",
                "/HostConfig/AutoRemove",
                "/HostConfig/Privileged",
                "/Mounts/0/Type",
                "/Mounts/0/Name",
                "/Mounts/0/Destination",
                "/Mounts/0/RW",
                "/Mounts/0/Driver",
                "/Mounts/0/Mode",
            ],
        ),
        (
            "container list",
            vec![
                "/Names",
                "/Image",
                "/Command",
                "/State",
                "/Labels",
                "/HostConfig/NetworkMode",
                "/Mounts/0/Type",
                "/Mounts/0/Name",
                "/Mounts/0/Destination",
                "/Mounts/0/RW",
            ],
        ),
        (
            "image inspect",
            vec![
                "/RepoTags",
                "/Config/Cmd",
                "/Config/Env",
                "/Os",
                "/Architecture",
                "/RootFS/Type",
                "/Comment",
            ],
        ),
        ("volume inspect", vec!["/Name", "/Driver", "/Scope", "/Labels"]),
        (
            "network inspect",
            vec![
                "/Name",
                "/Driver",
                "/Scope",
                "/Internal",
                "/Attachable",
                "/Ingress",
                "/EnableIPv6",
                "/Labels",
                "/IPAM/Driver",
                "/ConfigOnly",
            ],
        ),
        ("version", vec!["/ApiVersion", "/Os", "/Arch"]),
        ("info", vec!["/OSType", "/Architecture", "/NCPU", "/MemTotal", "/KernelVersion"]),
    ];
    for (what, fields) in same {
        let [ours, theirs] = &objects.iter().find(|(w, _)| *w == what).unwrap().1;
        for field in fields {
            assert_eq!(
                pointer(ours, field),
                pointer(theirs, field),
                "{what} {field}: berth and dockerd differ"
            );
        }
    }
    let env =
        |value: &serde_json::Value| value["Config"]["Env"].as_array().cloned().unwrap_or_default();
    let [ours, theirs] = &objects[0].1;
    assert!(
        env(ours).contains(&serde_json::json!("K=V"))
            && env(theirs).contains(&serde_json::json!("K=V"))
    );
    // Behaviour: exit codes, output, and errors the client prints.
    let [mine, docker] = both(&[
        "run",
        "--rm",
        "--network",
        "none",
        "fix:1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(mine.status.code(), docker.status.code());
    assert_eq!((mine.stdout, mine.stderr), (docker.stdout, docker.stderr));
    let [mine, docker] = both(&["inspect", "ghost"]);
    assert_eq!(
        (mine.status.code(), String::from_utf8_lossy(&mine.stderr).into_owned()),
        (docker.status.code(), String::from_utf8_lossy(&docker.stderr).into_owned())
    );
    let [mine, docker] = both(&["rm", "c1"]);
    assert_eq!(mine.status.code(), docker.status.code());
    for output in both(&["rm", "-f", "c1"]) {
        assert!(output.status.success());
    }
    for output in both(&["network", "rm", "n1"]) {
        assert!(output.status.success());
    }
    for output in both(&["volume", "rm", "vol1"]) {
        assert!(output.status.success());
    }
}
