//! The engine end to end: `berth run` and friends on the fixture image (busybox in three
//! layers), as root, each test in a network namespace of its own so that bridges, veths
//! and nftables rules never touch the host's network.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::root_or_skip;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const IMAGE: &str = "fixture:v1";

/// A private berth root holding the fixture image, in a private network namespace.
struct Berth {
    dir: tempfile::TempDir,
}

impl Berth {
    fn new() -> Berth {
        // This thread (and every process it starts) gets a network namespace of its own.
        berth_sys::nix::sched::unshare(berth_sys::nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare the network namespace");
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        assert!(up.success());
        let dir = tempfile::Builder::new().prefix("berth-engine-").tempdir().expect("tempdir");
        let berth = Berth { dir };
        let archive = common::fixture_archive(berth.dir.path());
        common::load_fixture(&berth.root(), &archive, IMAGE);
        berth
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BERTH);
        command.env("BERTH_ROOT", self.root());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().expect("berth")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "berth {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "berth {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn inspect(&self, name: &str) -> Value {
        let text = self.ok(&["inspect", name]);
        serde_json::from_str::<Value>(&text).expect("inspect json")[0].clone()
    }

    fn container_dirs(&self) -> usize {
        std::fs::read_dir(self.root().join("containers"))
            .map(|d| d.flatten().filter(|e| e.file_name() != "names").count())
            .unwrap_or(0)
    }

    /// Nothing of any container left: no directory, mount, netns, veth or cgroup.
    fn assert_clean(&self) {
        assert_eq!(self.container_dirs(), 0, "container directories left");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root();
        let root = root.to_str().unwrap();
        assert!(!mounts.contains(root), "mounts left under {root}:\n{mounts}");
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains("veth"), "veths left: {links}");
        let netns = self.root().join("networks/netns");
        assert_eq!(
            std::fs::read_dir(&netns).map(|d| d.count()).unwrap_or(0),
            0,
            "netns files left"
        );
        let berth_cgroups = std::fs::read_dir("/sys/fs/cgroup/memory/berth")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for id in berth_cgroups {
            assert!(!self.root().join("containers").join(&id).exists(), "cgroup of {id} left");
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn http_get(address: &str, path: &str) -> String {
    let mut stream =
        std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn root_foreground_runs_give_output_and_exit_codes() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let output = berth.run(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; cat /etc/motd; exit 3",
    ]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\nlayer 3\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    // Killed by a signal: 128 + the signal, as a shell says it.
    let child = berth
        .command()
        .args(["run", "--rm", "--name", "victim", IMAGE, "sleep", "600"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the victim to run", Duration::from_secs(10), || {
        berth.ok(&["ps", "-q"]).lines().count() == 1
    });
    berth.ok(&["kill", "victim"]);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(137));
    // The image's Cmd (sh) with stdin from -i.
    let mut child = berth
        .command()
        .args(["run", "--rm", "-i", IMAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"echo from stdin $((6 * 7))\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from stdin 42\n");
    // What a container sees: its hostname, hosts file, user, workdir and environment.
    let text = berth.ok(&[
        "run",
        "--rm",
        "-h",
        "box",
        "-u",
        "app",
        "-w",
        "/tmp",
        "-e",
        "GREETING=hi",
        "--add-host",
        "db.example:10.1.2.3",
        IMAGE,
        "sh",
        "-c",
        "hostname; id -u; id -g; pwd; echo $GREETING $HOME; grep db.example /etc/hosts",
    ]);
    assert_eq!(text, "box\n1000\n1000\n/tmp\nhi /home/app\n10.1.2.3\tdb.example\n");
    assert_eq!(berth.ok(&["ps", "-aq"]), "", "--rm containers are gone");
    berth.assert_clean();
}

#[test]
fn root_detached_containers_outlive_the_command_and_are_managed() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let id = berth.ok(&["run", "-d", "--name", "ticker", "-l", "team=a", IMAGE, "sh", "-c", "trap 'echo bye; exit 7' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"]);
    let id = id.trim().to_owned();
    assert_eq!(id.len(), 64);
    // The command returned; the container runs on under its monitor.
    wait_for("three ticks", Duration::from_secs(10), || {
        berth.ok(&["logs", "ticker"]).lines().count() >= 3
    });
    let ps = berth.ok(&["ps"]);
    assert!(ps.contains("ticker") && ps.contains("Up "), "{ps}");
    // The monitor the container's init was cloned from runs from a binary no container
    // can write (CVE-2019-5736): started from a read-only copy, not berth's own file.
    let pid = berth.ok(&["inspect", "-f", "{{.State.Pid}}", "ticker"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let monitor = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().to_owned();
    let written = std::fs::OpenOptions::new().append(true).open(format!("/proc/{monitor}/exe"));
    assert_eq!(
        written.as_ref().err().and_then(std::io::Error::raw_os_error),
        Some(30),
        "the monitor's executable must be read-only (EROFS): {written:?}"
    );
    assert_eq!(berth.ok(&["ps", "-q", "--filter", "label=team=a"]).trim(), &id[..12]);
    assert_eq!(berth.ok(&["ps", "-q", "--filter", "label=team=b"]).trim(), "");
    let logs = berth.ok(&["logs", "--tail", "2", "ticker"]);
    assert_eq!(logs.lines().count(), 2, "{logs}");
    let stamped = berth.ok(&["logs", "-t", "--tail", "1", "ticker"]);
    assert!(stamped.starts_with("20") && stamped.contains("Z tick "), "{stamped}");
    // The log file is in the CRI format.
    let raw =
        std::fs::read_to_string(berth.root().join("containers").join(&id).join("container.log"))
            .unwrap();
    let first = raw.lines().next().unwrap();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert_eq!((fields[1], fields[2], fields[3]), ("stdout", "F", "tick 0"), "{first}");
    // exec: output, exit code, user, environment, working directory.
    let output = berth.run(&["exec", "ticker", "sh", "-c", "echo in exec; exit 4"]);
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "in exec\n");
    assert_eq!(
        berth.ok(&[
            "exec",
            "-u",
            "app",
            "-w",
            "/home/app",
            "-e",
            "X=1",
            "ticker",
            "sh",
            "-c",
            "id -u; pwd; echo $X"
        ]),
        "1000\n/home/app\n1\n"
    );
    let top = berth.ok(&["top", "ticker"]);
    assert!(top.contains("while true"), "{top}");
    // ps options, as Docker passes them to the host's ps: only the container's rows.
    let top = berth.ok(&["top", "ticker", "-o", "pid,user,args"]);
    let lines: Vec<&str> = top.lines().collect();
    assert!(lines[0].contains("PID") && lines[0].contains("COMMAND"), "{top}");
    assert!(lines[1..].iter().all(|l| !l.contains("cargo")), "host rows leaked: {top}");
    assert!(lines[1..].iter().any(|l| l.contains("while true")), "{top}");
    let err = berth.fails(&["top", "ticker", "-o", "comm"]);
    assert!(err.contains("no PID column"), "{err}");
    let inspect = berth.inspect("ticker");
    assert_eq!(inspect["State"]["Status"], "running");
    assert!(inspect["State"]["Pid"].as_i64().unwrap() > 0);
    assert_eq!(
        berth.ok(&["inspect", "-f", "{{.Name}} {{.Config.Labels.team}}", "ticker"]),
        "/ticker a\n"
    );
    // pause stops the ticking; unpause restarts it.
    berth.ok(&["pause", "ticker"]);
    assert_eq!(berth.inspect("ticker")["State"]["Status"], "paused");
    let before = berth.ok(&["logs", "ticker"]).lines().count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(berth.ok(&["logs", "ticker"]).lines().count(), before, "a paused container ticked");
    berth.ok(&["unpause", "ticker"]);
    wait_for("ticks after unpause", Duration::from_secs(5), || {
        berth.ok(&["logs", "ticker"]).lines().count() > before
    });
    // stop: the stop signal reaches the process, which exits with its own code.
    berth.ok(&["stop", "ticker"]);
    let inspect = berth.inspect("ticker");
    assert_eq!(inspect["State"]["Status"], "exited");
    assert_eq!(inspect["State"]["ExitCode"], 7);
    assert!(berth.ok(&["logs", "ticker"]).ends_with("bye\n"));
    assert_eq!(berth.ok(&["wait", "ticker"]), "7\n");
    let ps = berth.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (7)"), "{ps}");
    // An exec into a stopped container is refused; so is removing a running one.
    let err = berth.fails(&["exec", "ticker", "true"]);
    assert!(err.contains("exited") && err.contains("start it first"), "{err}");
    berth.ok(&["start", "ticker"]);
    assert_eq!(berth.inspect("ticker")["State"]["Status"], "running");
    let err = berth.fails(&["rm", "ticker"]);
    assert!(err.contains("stop it first or use `rm -f`"), "{err}");
    berth.ok(&["rename", "ticker", "tocker"]);
    berth.ok(&["kill", "tocker"]);
    assert_eq!(berth.ok(&["wait", "tocker"]), "137\n");
    berth.ok(&["rm", "tocker"]);
    berth.fails(&["inspect", "tocker"]);
    berth.assert_clean();
}

#[test]
fn root_a_terminal_works_through_a_pty() {
    if !root_or_skip() {
        return;
    }
    use berth_sys::nix::pty::openpty;
    let berth = Berth::new();
    let pty = openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = berth
        .command()
        .args(["run", "--rm", "-it", IMAGE, "sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    master.write_all(b"tty; echo answer=$((6 * 7)); exit 5\n").unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = master.read(&mut buffer) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
            if String::from_utf8_lossy(&seen).contains("answer=42") {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let status = child.wait().unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(status.code(), Some(5), "{seen}");
    assert!(seen.contains("/dev/pts/0"), "the container's stdin is a terminal: {seen}");
    assert!(seen.contains("answer=42"), "{seen}");
}

/// Runs berth on a new pty, types `input` once `ready` shows, and returns its exit code
/// and what the terminal showed.
fn on_a_terminal(berth: &Berth, args: &[&str], ready: &str, input: &[u8]) -> (Option<i32>, String) {
    use berth_sys::nix::pty::openpty;
    use std::os::fd::AsFd;
    let pty = openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = berth
        .command()
        .args(args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(ready) {
        let n = master.read(&mut buffer).unwrap();
        assert!(n > 0, "the terminal closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    master.write_all(input).unwrap();
    let status = child.wait().unwrap();
    // What is left to read (the pty is still open on our side).
    let _ = berth_sys::nix::fcntl::fcntl(
        master.as_fd(),
        berth_sys::nix::fcntl::FcntlArg::F_SETFL(berth_sys::nix::fcntl::OFlag::O_NONBLOCK),
    );
    while let Ok(n) = master.read(&mut buffer) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..n]);
    }
    (status.code(), String::from_utf8_lossy(&seen).into_owned())
}

#[test]
fn root_detach_keys_leave_the_container_running() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // Ctrl-P Ctrl-Q leaves `run -it`; the container runs on.
    let (code, seen) = on_a_terminal(
        &berth,
        &[
            "run",
            "-it",
            "--name",
            "leave-me",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo ready; exec cat",
        ],
        "ready",
        b"\x10\x11",
    );
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("read escape sequence"), "{seen}");
    assert_eq!(berth.ok(&["inspect", "-f", "{{.State.Status}}", "leave-me"]).trim(), "running");
    // attach with other keys; what is typed before them reaches the container.
    let (code, seen) = on_a_terminal(
        &berth,
        &["attach", "--detach-keys", "ctrl-a,d", "leave-me"],
        "",
        b"typed\n\x01d",
    );
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("typed") && seen.contains("read escape sequence"), "{seen}");
    assert_eq!(berth.ok(&["inspect", "-f", "{{.State.Status}}", "leave-me"]).trim(), "running");
    let err = berth.fails(&["attach", "--detach-keys", "alt-x", "leave-me"]);
    assert!(err.contains("--detach-keys"), "{err}");
    berth.ok(&["rm", "-f", "leave-me"]);
    berth.assert_clean();
}

#[test]
fn root_published_ports_answer_from_the_host_loopback_and_other_containers() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1::80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/srv",
    ]);
    let ip =
        berth.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]).trim().to_owned();
    // The default network takes the first free subnet of Docker's pool.
    assert!(ip.starts_with("172.17."), "{ip}");
    let gateway =
        berth.ok(&["inspect", "-f", "{{.NetworkSettings.Gateway}}", "web"]).trim().to_owned();
    assert_eq!(gateway, "172.17.0.1");
    let ports = berth.ok(&["port", "web"]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    let loopback_port = ports
        .lines()
        .find(|l| l.contains("127.0.0.1:"))
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    wait_for("httpd", Duration::from_secs(10), || {
        std::net::TcpStream::connect(format!("{ip}:80")).is_ok()
    });
    // From the host: the loopback address, the bridge's address (a local address other
    // hosts would reach the same way), and the port bound to 127.0.0.1 only.
    for address in [
        "127.0.0.1:8080".to_owned(),
        format!("{gateway}:8080"),
        format!("127.0.0.1:{loopback_port}"),
    ] {
        let response = http_get(&address, "/run.sh");
        assert!(
            response.starts_with("HTTP/1.") && response.contains("fixture says hi"),
            "{address}: {response}"
        );
    }
    // From another container, directly and through the published port (hairpin).
    let text = berth.ok(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        &format!("wget -qO- http://{ip}/run.sh; wget -qO- http://{gateway}:8080/run.sh"),
    ]);
    assert_eq!(text.matches("fixture says hi").count(), 2, "{text}");
    // A second container cannot take the same host port.
    let err = berth.fails(&["run", "-d", "-p", "8080:80", IMAGE, "sleep", "60"]);
    assert!(err.contains("8080") && err.contains("already allocated"), "{err}");
    berth.ok(&["rm", "-f", "web"]);
    assert!(std::net::TcpStream::connect_timeout(
        &"127.0.0.1:8080".parse().unwrap(),
        Duration::from_millis(500)
    )
    .is_err());
    let rules = Command::new("nft").args(["list", "map", "ip", "berth", "ports"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("8080"), "rule left behind");
    for leftover in berth.ok(&["ps", "-aq"]).lines() {
        berth.ok(&["rm", "-f", leftover]);
    }
    berth.assert_clean();
}

#[test]
fn root_containers_on_a_user_network_reach_each_other_by_name() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["network", "create", "app"]);
    let networks = berth.ok(&["network", "ls"]);
    assert!(networks.contains("app") && networks.contains("bridge"), "{networks}");
    berth.ok(&[
        "run",
        "-d",
        "--network",
        "app",
        "--name",
        "db",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/srv",
    ]);
    let db_ip =
        berth.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"]).trim().to_owned();
    assert!(db_ip.starts_with("10.89."), "{db_ip}");
    wait_for("httpd", Duration::from_secs(10), || {
        std::net::TcpStream::connect(format!("{db_ip}:80")).is_ok()
    });
    berth.ok(&["run", "-d", "--network", "app", "--name", "client", IMAGE, "sleep", "600"]);
    let text = berth.ok(&["exec", "client", "wget", "-qO-", "http://db/run.sh"]);
    assert!(text.contains("fixture says hi"), "{text}");
    // Names go both ways, and go away with the container.
    let hosts = berth.ok(&["exec", "db", "cat", "/etc/hosts"]);
    assert!(hosts.contains("client"), "{hosts}");
    let inspect = berth.ok(&["network", "inspect", "app"]);
    assert!(inspect.contains("\"db\"") && inspect.contains("\"client\""), "{inspect}");
    let err = berth.fails(&["network", "rm", "app"]);
    assert!(err.contains("remove them first"), "{err}");
    berth.ok(&["rm", "-f", "client"]);
    let hosts = berth.ok(&["exec", "db", "cat", "/etc/hosts"]);
    assert!(!hosts.contains("client"), "{hosts}");
    berth.ok(&["rm", "-f", "db"]);
    berth.ok(&["network", "rm", "app"]);
    berth.assert_clean();
}

#[test]
fn root_volumes_survive_containers_and_binds_show_host_files() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["run", "--rm", "-v", "data:/data", IMAGE, "sh", "-c", "echo kept > /data/file"]);
    assert!(berth.ok(&["volume", "ls", "-q"]).contains("data"));
    assert_eq!(
        berth.ok(&["run", "--rm", "-v", "data:/data:ro", IMAGE, "cat", "/data/file"]),
        "kept\n"
    );
    let err = berth.fails(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        IMAGE,
        "sh",
        "-c",
        "echo x > /data/file",
    ]);
    assert!(err.contains("Read-only"), "{err}");
    // Not in use any more (the --rm containers are gone): it can be removed.
    berth.ok(&["volume", "rm", "data"]);
    assert!(berth.ok(&["volume", "ls", "-q"]).is_empty());
    // A bind mount shows the host's files and writes through.
    let host = berth.dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in"), "from host\n").unwrap();
    let spec = format!("{}:/mnt", host.display());
    assert_eq!(
        berth.ok(&[
            "run",
            "--rm",
            "-v",
            &spec,
            IMAGE,
            "sh",
            "-c",
            "cat /mnt/in; echo back > /mnt/out"
        ]),
        "from host\n"
    );
    assert_eq!(std::fs::read_to_string(host.join("out")).unwrap(), "back\n");
    // Anonymous volumes go with `rm -v`; tmpfs mounts are tmpfs.
    berth.ok(&[
        "run",
        "--name",
        "anon",
        "-v",
        "/scratch",
        "--tmpfs",
        "/run/t:size=1m",
        IMAGE,
        "sh",
        "-c",
        "echo x > /scratch/f; grep /run/t /proc/mounts",
    ]);
    let logs = berth.ok(&["logs", "anon"]);
    assert!(logs.contains("tmpfs"), "{logs}");
    assert_eq!(berth.ok(&["volume", "ls", "-q"]).lines().count(), 1);
    berth.ok(&["rm", "-v", "anon"]);
    assert_eq!(berth.ok(&["volume", "ls", "-q"]), "");
    berth.assert_clean();
}

#[test]
fn root_commit_diff_and_cp() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["run", "--name", "maker", "-v", "/cache", IMAGE, "sh", "-c", "echo changed > /etc/motd; rm /srv/data; echo 10.9.9.9 extra >> /etc/hosts; echo vol > /cache/f; mkdir /made"]);
    let diff = berth.ok(&["diff", "maker"]);
    for line in ["C /etc/motd", "D /srv/data", "A /made"] {
        assert!(diff.lines().any(|l| l == line), "{line} missing in:\n{diff}");
    }
    assert!(!diff.contains("hosts") && !diff.contains("cache"), "{diff}");
    // cp both ways, on a stopped container.
    let out = berth.dir.path().join("motd");
    berth.ok(&["cp", "maker:/etc/motd", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "changed\n");
    let input = berth.dir.path().join("note");
    std::fs::write(&input, "copied in\n").unwrap();
    berth.ok(&["cp", input.to_str().unwrap(), "maker:/made/"]);
    let digest = berth.ok(&["commit", "-m", "test", "-c", "ENV MADE=yes", "maker", "made:v1"]);
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    let text = berth.ok(&["run", "--rm", "made:v1", "sh", "-c", "cat /etc/motd /made/note; echo $MADE; ls /srv; grep -c extra /etc/hosts; ls /cache | wc -l"]);
    assert_eq!(
        text, "changed\ncopied in\nyes\nrun.sh\n0\n0\n",
        "the commit has the changes, not /etc/hosts or volumes"
    );
    let history = berth.ok(&["history", "made:v1"]);
    assert!(history.contains("berth commit maker"), "{history}");
    // cp into a running container, through a symlink that points outside: it stays inside.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "live",
        IMAGE,
        "sh",
        "-c",
        "ln -s / /tmp/escape; ln -s /etc /tmp/etc-link; sleep 600",
    ]);
    wait_for("links", Duration::from_secs(5), || {
        berth.run(&["exec", "live", "test", "-L", "/tmp/etc-link"]).status.success()
    });
    let outside = berth.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let link_target = format!("live:/tmp/escape{}/", outside.display());
    let result = berth.run(&["cp", input.to_str().unwrap(), &link_target]);
    assert!(!outside.join("note").exists(), "cp wrote through a container symlink to the host");
    let _ = result;
    berth.ok(&["cp", input.to_str().unwrap(), "live:/tmp/etc-link/note"]);
    assert_eq!(berth.ok(&["exec", "live", "cat", "/etc/note"]), "copied in\n");
    assert!(!Path::new("/etc/note").exists());
    berth.ok(&["rm", "-f", "live"]);
    berth.ok(&["rm", "-v", "maker"]);
    berth.assert_clean();
}

#[test]
fn root_cp_respects_read_only_mounts_and_streams_tars() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let host = berth.dir.path().join("host-dir");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("kept"), "original\n").unwrap();
    let input = berth.dir.path().join("input");
    std::fs::write(&input, "new\n").unwrap();
    berth.ok(&["volume", "create", "data"]);
    let bind = format!("{}:/ro-bind:ro", host.display());
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "ro",
        "-v",
        &bind,
        "-v",
        "data:/ro-vol:ro",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "600",
    ]);
    // Read-only binds and volumes take no writes from cp, and the host's files stay.
    let err = berth.fails(&["cp", input.to_str().unwrap(), "ro:/ro-bind/kept"]);
    assert!(err.contains("mounted volume is marked read-only"), "{err}");
    assert_eq!(std::fs::read_to_string(host.join("kept")).unwrap(), "original\n");
    let err = berth.fails(&["cp", input.to_str().unwrap(), "ro:/ro-vol/"]);
    assert!(err.contains("mounted volume is marked read-only"), "{err}");
    // Reading from them is fine.
    let out = berth.dir.path().join("out");
    berth.ok(&["cp", "ro:/ro-bind/kept", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "original\n");
    // A --read-only root filesystem takes none either.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "rofs",
        "--read-only",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "600",
    ]);
    let err = berth.fails(&["cp", input.to_str().unwrap(), "rofs:/etc/new"]);
    assert!(err.contains("container rootfs is marked read-only"), "{err}");
    assert!(!berth.run(&["exec", "rofs", "test", "-e", "/etc/new"]).status.success());
    // /etc/hosts and /etc/hostname are the container's, not the empty placeholders.
    let hosts = berth.dir.path().join("hosts");
    berth.ok(&["cp", "rofs:/etc/hosts", hosts.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&hosts).unwrap().contains("localhost"));
    let hostname = berth.dir.path().join("hostname");
    berth.ok(&["cp", "rofs:/etc/hostname", hostname.to_str().unwrap()]);
    let inside = berth.ok(&["exec", "rofs", "hostname"]);
    assert_eq!(std::fs::read_to_string(&hostname).unwrap().trim(), inside.trim());
    // cp to and from - streams a tar.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "rw",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /srv/tree/sub && echo leaf > /srv/tree/sub/leaf && sleep 600",
    ]);
    wait_for("the tree", Duration::from_secs(10), || {
        berth.run(&["exec", "rw", "test", "-e", "/srv/tree/sub/leaf"]).status.success()
    });
    let tar = berth.command().args(["cp", "rw:/srv/tree", "-"]).output().unwrap();
    assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));
    let listed =
        Command::new("tar").arg("-t").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut listed = listed;
    listed.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let names = String::from_utf8_lossy(&listed.wait_with_output().unwrap().stdout).into_owned();
    assert!(names.lines().any(|l| l.trim_end_matches('/') == "tree/sub/leaf"), "{names}");
    let mut child = berth
        .command()
        .args(["cp", "-", "rw:/tmp"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(berth.ok(&["exec", "rw", "cat", "/tmp/tree/sub/leaf"]), "leaf\n");
    let err = berth.fails(&["cp", "-", "ro:/ro-vol"]);
    assert!(err.contains("mounted volume is marked read-only"), "{err}");
    berth.ok(&["rm", "-f", "ro", "rofs", "rw"]);
    berth.ok(&["volume", "rm", "data"]);
    berth.assert_clean();
}

#[test]
fn root_exit_codes_and_small_conventions_are_dockers() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let code = |args: &[&str]| berth.run(args).status.code();
    // 127: no such program; 126: not executable or no such user; 125: berth's own failure.
    assert_eq!(code(&["run", "--rm", "--network", "none", IMAGE, "no-such-program"]), Some(127));
    assert_eq!(code(&["run", "--rm", "--network", "none", IMAGE, "/etc/passwd"]), Some(126));
    assert_eq!(
        code(&["run", "--rm", "--network", "none", "-u", "nobody-here", IMAGE, "true"]),
        Some(126)
    );
    assert_eq!(
        code(&["run", "--rm", "--network", "none", "--memory", "lots", IMAGE, "true"]),
        Some(125)
    );
    assert_eq!(code(&["run", "--rm", "--network", "none", IMAGE, "sh", "-c", "exit 3"]), Some(3));
    berth.ok(&["run", "-d", "--name", "up", "--network", "none", IMAGE, "sleep", "600"]);
    assert_eq!(code(&["exec", "up", "no-such-program"]), Some(127));
    assert_eq!(code(&["exec", "up", "/etc/passwd"]), Some(126));
    // Starting a running container is not an error.
    assert_eq!(berth.ok(&["start", "up"]).trim(), "up");
    // --network none has a loopback device, up.
    let lo = berth.ok(&["exec", "up", "ip", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    berth.ok(&["rm", "-f", "up"]);
    // berth help and subcommands that say what they do.
    assert!(berth.ok(&["help"]).contains("Build an image from a Dockerfile"));
    let network = berth.ok(&["network", "--help"]);
    assert!(network.contains("Create a bridge network"), "{network}");
    berth.assert_clean();
}

#[test]
fn root_new_volumes_get_the_image_content_at_their_mount_point() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["run", "--name", "seed", "--network", "none", IMAGE, "sh", "-c", "mkdir -p /var/lib/app/sub && echo seed > /var/lib/app/seed && ln -s seed /var/lib/app/link && chown -R 999:998 /var/lib/app && chmod 750 /var/lib/app"]);
    berth.ok(&["commit", "seed", "seeded:v1"]);
    berth.ok(&["rm", "seed"]);
    let look = "stat -c '%u:%g %a' /var/lib/app /var/lib/app/seed; readlink /var/lib/app/link; ls /var/lib/app";
    // A new named volume: the image's files, owners and modes.
    let first = berth.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "appdata:/var/lib/app",
        "seeded:v1",
        "sh",
        "-c",
        &format!("{look}; echo mine > /var/lib/app/added"),
    ]);
    assert_eq!(first, "999:998 750\n999:998 644\nseed\nlink\nseed\nsub\n");
    // Not empty any more: nothing is copied again, the volume's own content stays.
    let again = berth.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "appdata:/var/lib/app",
        "seeded:v1",
        "ls",
        "/var/lib/app",
    ]);
    assert_eq!(again, "added\nlink\nseed\nsub\n");
    // nocopy, and binds, get nothing.
    let nocopy = berth.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "empty:/var/lib/app:nocopy",
        "seeded:v1",
        "ls",
        "-A",
        "/var/lib/app",
    ]);
    assert_eq!(nocopy, "");
    let host = berth.dir.path().join("bind");
    std::fs::create_dir(&host).unwrap();
    let bind = format!("{}:/var/lib/app", host.display());
    berth.ok(&["run", "--rm", "--network", "none", "-v", &bind, "seeded:v1", "true"]);
    assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0);
    // Anonymous volumes are filled too.
    let anonymous = berth.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "/var/lib/app",
        "seeded:v1",
        "cat",
        "/var/lib/app/seed",
    ]);
    assert_eq!(anonymous, "seed\n");
    berth.ok(&["volume", "rm", "appdata", "empty"]);
    berth.assert_clean();
}

#[test]
fn root_subnets_avoid_the_hosts_routes_other_networks_and_other_roots() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // This namespace's "host" already routes 172.17.0.0/16 (as a Docker host would) and
    // 172.18.0.0/16 (as a podman or VPN one might).
    for script in [
        "ip link add taken0 type bridge && ip link set taken0 up && ip addr add 172.17.0.1/16 dev taken0",
        "ip route add 172.18.0.0/16 dev taken0",
    ] {
        assert!(Command::new("sh").args(["-c", script]).status().unwrap().success(), "{script}");
    }
    berth.ok(&["run", "-d", "--name", "one", IMAGE, "sleep", "600"]);
    let ip =
        berth.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "one"]).trim().to_owned();
    assert!(ip.starts_with("172.19."), "the default network avoids the host's routes: {ip}");
    // Overlapping subnets are refused, not only identical ones.
    let err = berth.fails(&["network", "create", "--subnet", "172.19.5.0/24", "clash"]);
    assert!(err.contains("overlaps 172.19.0.0/16 of network bridge"), "{err}");
    let err = berth.fails(&["network", "create", "--subnet", "172.17.9.0/24", "routed"]);
    assert!(err.contains("overlaps a route of this host"), "{err}");
    berth.ok(&["network", "create", "--subnet", "10.77.0.0/24", "mine"]);
    let err = berth.fails(&["network", "create", "--subnet", "10.77.0.128/25", "inside"]);
    assert!(err.contains("overlaps 10.77.0.0/24 of network mine"), "{err}");
    // A second root on the same host gets a bridge and a subnet of its own.
    let other = berth.dir.path().join("other-root");
    let second = Command::new(BERTH)
        .env("BERTH_ROOT", &other)
        .args(["run", "-d", "--name", "two", IMAGE, "sleep", "600"])
        .output()
        .unwrap();
    assert!(!second.status.success(), "the other root has no image yet");
    let layout = berth.dir.path().join("fixture.tar");
    let loaded = Command::new(BERTH)
        .env("BERTH_ROOT", &other)
        .args(["load", "-i", layout.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let id = String::from_utf8_lossy(&loaded.stdout).trim().rsplit(' ').next().unwrap().to_owned();
    let other_berth = |args: &[&str]| {
        let output = Command::new(BERTH).env("BERTH_ROOT", &other).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    other_berth(&["run", "-d", "--name", "two", &id, "sleep", "600"]);
    let other_ip =
        other_berth(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "two"]).trim().to_owned();
    assert!(other_ip.starts_with("172.20."), "{other_ip}");
    // Both networks work: neither root broke the other.
    let ping = berth.ok(&["exec", "one", "ping", "-c", "1", "-W", "2", "172.19.0.1"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    let ping = other_berth(&["exec", "two", "ping", "-c", "1", "-W", "2", "172.20.0.1"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    // Each root has its own nftables table; a published port is held on the host, so the
    // other root (or any process) cannot take it, and it answers on IPv6's loopback too.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "served",
        "-p",
        "18088:80",
        IMAGE,
        "sh",
        "-c",
        "echo served > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
    ]);
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert_eq!(tables.matches("table ip berth_").count(), 2, "{tables}");
    let taken = Command::new(BERTH)
        .env("BERTH_ROOT", &other)
        .args(["run", "-d", "--name", "thief", "-p", "18088:80", &id, "sleep", "600"])
        .output()
        .unwrap();
    assert!(!taken.status.success());
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(err.contains("18088/tcp is in use"), "{err}");
    assert!(std::net::TcpListener::bind(("0.0.0.0", 18088)).is_err(), "the port is not held");
    assert!(std::net::TcpListener::bind(("::", 18088)).is_err(), "the port is not held on IPv6");
    let fetch = |address: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got =
                Command::new("curl").args(["-sf", "--max-time", "5", address]).output().unwrap();
            if got.status.success() || Instant::now() > deadline {
                return String::from_utf8_lossy(&got.stdout).into_owned();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(fetch("http://127.0.0.1:18088/"), "served\n");
    if std::net::TcpListener::bind(("::1", 0)).is_ok() {
        assert_eq!(fetch("http://[::1]:18088/"), "served\n");
    }
    berth.ok(&["rm", "-f", "served"]);
    // Released with the container.
    assert!(std::net::TcpListener::bind(("0.0.0.0", 18088)).is_ok(), "the port is still held");
    other_berth(&["rm", "-f", "two", "thief"]);
    berth.ok(&["rm", "-f", "one"]);
    berth.ok(&["network", "rm", "mine"]);
    berth.assert_clean();
}

#[test]
fn root_formats_are_go_templates() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "fmt-web",
        "--label",
        "tier=front",
        "--label",
        "team=a",
        "-e",
        "MODE=x",
        IMAGE,
        "sleep",
        "600",
    ]);
    berth.ok(&["volume", "create", "fmt-data"]);
    // ps: fields, functions, table with Docker's headers and aligned columns.
    assert_eq!(
        berth.ok(&["ps", "--format", "{{.Names}} {{.State}} {{upper .Image}}"]),
        format!("fmt-web running {}\n", IMAGE.to_uppercase())
    );
    let table = berth.ok(&["ps", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.Labels}}"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CONTAINER ID   NAMES     LABELS"), "{table}");
    // The image's labels are the container's too, as in Docker.
    assert!(lines[1].contains("fmt-web   org.berth.fixture=yes,team=a,tier=front"), "{table}");
    let json_line = berth.ok(&["ps", "--format", "{{json .Names}}"]);
    assert_eq!(json_line, "\"fmt-web\"\n");
    // inspect -f: Go's printing of lists and maps, range, index, if.
    let inspect = |template: &str| berth.ok(&["inspect", "-f", template, "fmt-web"]);
    assert_eq!(inspect("{{.Config.Labels}}"), "map[org.berth.fixture:yes team:a tier:front]\n");
    assert_eq!(inspect("{{index .Config.Labels \"tier\"}}"), "front\n");
    let ip = inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}");
    assert!(ip.trim().starts_with("172."), "{ip}");
    assert_eq!(inspect("{{if .State.Running}}up{{else}}down{{end}}"), "up\n");
    assert_eq!(inspect("{{len .Config.Cmd}} {{join .Config.Cmd \",\"}}"), "2 sleep,600\n");
    let env = inspect("{{.Config.Env}}");
    assert!(env.starts_with('[') && env.contains("MODE=x") && !env.contains("String("), "{env}");
    // images, volume ls, network ls take templates too.
    let images = berth.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.lines().any(|l| l == IMAGE), "{images}");
    let volumes = berth.ok(&["volume", "ls", "--format", "table {{.Name}}\\t{{.Driver}}"]);
    assert!(
        volumes.starts_with("VOLUME NAME   DRIVER\n") && volumes.contains("fmt-data      local"),
        "{volumes}"
    );
    let networks = berth.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(networks, "bridge\nhost\nnone\n");
    // A bad template is an error that says where.
    let err = berth.fails(&["ps", "--format", "{{.Names"]);
    assert!(err.contains("template"), "{err}");
    berth.ok(&["rm", "-f", "fmt-web"]);
    berth.ok(&["volume", "rm", "fmt-data"]);
    berth.assert_clean();
}

#[test]
fn root_health_checks_run_and_show() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let status = |name: &str| {
        berth.ok(&["inspect", "-f", "{{.State.Health.Status}}", name]).trim().to_owned()
    };
    // Flags: starting, then unhealthy after the retries, then healthy once the check passes.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "checked",
        "--network",
        "none",
        "--health-cmd",
        "echo probing; test -e /tmp/ok",
        "--health-interval",
        "100ms",
        "--health-retries",
        "2",
        IMAGE,
        "sleep",
        "600",
    ]);
    assert_eq!(status("checked"), "starting");
    wait_for("unhealthy", Duration::from_secs(20), || status("checked") == "unhealthy");
    let ps = berth.ok(&["ps", "--format", "{{.Status}}", "--filter", "name=checked"]);
    assert!(ps.contains("(unhealthy)"), "{ps}");
    let output = berth.ok(&[
        "inspect",
        "-f",
        "{{range .State.Health.Log}}{{.ExitCode}}:{{.Output}}{{end}}",
        "checked",
    ]);
    assert!(output.contains("1:probing"), "{output}");
    berth.ok(&["exec", "checked", "touch", "/tmp/ok"]);
    wait_for("healthy", Duration::from_secs(20), || status("checked") == "healthy");
    assert_eq!(berth.ok(&["ps", "-q", "--filter", "health=healthy"]).lines().count(), 1);
    assert_eq!(berth.ok(&["ps", "-q", "--filter", "health=unhealthy"]).lines().count(), 0);
    // A check that outlives its timeout fails, saying so.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--network",
        "none",
        "--health-cmd",
        "sleep 5",
        "--health-interval",
        "100ms",
        "--health-timeout",
        "200ms",
        "--health-retries",
        "1",
        IMAGE,
        "sleep",
        "600",
    ]);
    wait_for("timed out", Duration::from_secs(20), || status("slow") == "unhealthy");
    let log = berth.ok(&["inspect", "-f", "{{(index .State.Health.Log 0).Output}}", "slow"]);
    assert!(log.contains("exceeded timeout"), "{log}");
    // The image's HEALTHCHECK applies (made with berth build), --no-healthcheck removes it.
    let mut build = berth
        .command()
        .args(["build", "-q", "-t", "with-check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    build
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("FROM {IMAGE}\nHEALTHCHECK --interval=100ms --retries=1 CMD true\n").as_bytes(),
        )
        .unwrap();
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "from-image",
        "--network",
        "none",
        "with-check",
        "sleep",
        "600",
    ]);
    wait_for("healthy from the image", Duration::from_secs(20), || {
        status("from-image") == "healthy"
    });
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "unchecked",
        "--network",
        "none",
        "--no-healthcheck",
        "with-check",
        "sleep",
        "600",
    ]);
    assert_eq!(berth.ok(&["inspect", "-f", "{{.State.Health}}", "unchecked"]).trim(), "<no value>");
    assert!(berth.ok(&["ps", "-q", "--filter", "health=none"]).lines().count() >= 1);
    berth.ok(&["rm", "-f", "checked", "slow", "from-image", "unchecked"]);
    berth.assert_clean();
}

#[test]
fn root_ps_filters_are_dockers() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["run", "-d", "--name", "web-1", "-p", "18080:80", IMAGE, "sleep", "600"]);
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "web-2",
        "--network",
        "none",
        "-v",
        "filtered:/data",
        IMAGE,
        "sleep",
        "600",
    ]);
    berth.ok(&["run", "-d", "--name", "db", "--network", "none", IMAGE, "sleep", "600"]);
    let names = |filters: &[&str]| {
        let mut args = vec!["ps", "--format", "{{.Names}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        let mut out: Vec<String> = berth.ok(&args).lines().map(str::to_owned).collect();
        out.sort();
        out
    };
    // name is a regular expression; the same key given twice is an OR, different keys AND.
    assert_eq!(names(&["name=^web-[0-9]$"]), ["web-1", "web-2"]);
    assert_eq!(names(&["name=^db$", "name=web-1"]), ["db", "web-1"]);
    assert_eq!(names(&["name=web", "network=none"]), ["web-2"]);
    assert_eq!(names(&["volume=filtered"]), ["web-2"]);
    assert_eq!(names(&["publish=18080"]), ["web-1"]);
    assert_eq!(names(&["expose=80/tcp"]), ["web-1"]);
    assert_eq!(names(&["before=db"]), ["web-1", "web-2"]);
    assert_eq!(names(&["since=web-1"]), ["db", "web-2"]);
    let err = berth.fails(&["ps", "--filter", "status=sleeping"]);
    assert!(err.contains("invalid filter"), "{err}");
    let err = berth.fails(&["ps", "--filter", "name=(["]);
    assert!(err.contains("not a regular expression"), "{err}");
    berth.ok(&["rm", "-f", "web-1", "web-2", "db"]);
    berth.ok(&["volume", "rm", "filtered"]);
    berth.assert_clean();
}

#[test]
fn root_housekeeping_commands_are_dockers() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&[
        "run",
        "--name",
        "done",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo exported > /marker",
    ]);
    berth.ok(&["run", "-d", "--name", "alive", "--network", "none", IMAGE, "sleep", "600"]);
    // export: the container's filesystem as a tar, its changes in it.
    let tar = berth.command().args(["export", "done"]).output().unwrap();
    assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));
    let mut list =
        Command::new("tar").arg("-t").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    list.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let names = String::from_utf8_lossy(&list.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        names.lines().any(|l| l == "marker") && names.lines().any(|l| l.starts_with("bin/")),
        "{names}"
    );
    // version and info, plain and through templates.
    assert_eq!(
        berth.ok(&["version", "--format", "{{.Client.Version}}"]).trim(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        berth.ok(&["info", "--format", "{{.ContainersRunning}}/{{.ContainersStopped}}"]).trim(),
        "1/1"
    );
    assert!(berth.ok(&["system", "info"]).contains("Storage Driver: overlay2"));
    let df = berth.ok(&["system", "df"]);
    for kind in ["Images", "Containers", "Local Volumes", "Build Cache"] {
        assert!(df.lines().any(|l| l.starts_with(kind)), "{df}");
    }
    // container prune removes stopped containers only.
    let pruned = berth.ok(&["container", "prune", "-f"]);
    assert!(pruned.starts_with("Deleted Containers:"), "{pruned}");
    assert_eq!(berth.ok(&["ps", "-a", "--format", "{{.Names}}"]), "alive\n");
    // system prune: stopped containers, unused networks, dangling images.
    berth.ok(&["network", "create", "unused-net"]);
    berth.ok(&["run", "--name", "done2", "--network", "none", IMAGE, "true"]);
    let out = berth.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Networks:") && out.contains("unused-net"), "{out}");
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert_eq!(berth.ok(&["ps", "-a", "--format", "{{.Names}}"]), "alive\n");
    assert!(!berth.ok(&["network", "ls", "--format", "{{.Name}}"]).contains("unused-net"));
    berth.ok(&["rm", "-f", "alive"]);
    berth.assert_clean();
}

#[test]
fn root_input_is_validated_as_docker_validates_it() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let err =
        berth.fails(&["run", "--rm", "--network", "none", "--dns", "not-an-ip", IMAGE, "true"]);
    assert!(err.contains("--dns \"not-an-ip\"") && err.contains("not an IP address"), "{err}");
    let err = berth.fails(&["run", "--rm", "--network", "none", "-v", ":/x", IMAGE, "true"]);
    assert!(err.contains("empty section between colons"), "{err}");
    let err =
        berth.fails(&["run", "--rm", "--network", "none", "--add-host", "nohost", IMAGE, "true"]);
    assert!(err.contains("--add-host"), "{err}");
    // 0 is no limit.
    berth.ok(&["run", "--rm", "--network", "none", "--memory", "0", "--cpus", "0", IMAGE, "true"]);
    // A relative bind source is a path from here.
    let here = berth.dir.path().join("here");
    std::fs::create_dir_all(here.join("rel")).unwrap();
    std::fs::write(here.join("rel/file"), "relative\n").unwrap();
    let output = berth
        .command()
        .current_dir(&here)
        .args(["run", "--rm", "--network", "none", "-v", "./rel:/x", IMAGE, "cat", "/x/file"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "relative\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // host-gateway is the container's way to the host; the host network has the host's name.
    let hosts = berth.ok(&[
        "run",
        "--rm",
        "--add-host",
        "gw:host-gateway",
        IMAGE,
        "sh",
        "-c",
        "grep gw /etc/hosts; ip route | grep default",
    ]);
    let gateway = hosts
        .lines()
        .find(|l| l.contains("default"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap()
        .to_owned();
    assert!(hosts.lines().any(|l| l.starts_with(&gateway) && l.ends_with("gw")), "{hosts}");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(berth.ok(&["run", "--rm", "--network", "host", IMAGE, "hostname"]), host_name);
    // -it without a terminal says so.
    let output = berth
        .command()
        .args(["run", "--rm", "-it", IMAGE, "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("the input device is not a TTY"));
    // commit keeps the container's labels.
    berth.ok(&[
        "run",
        "--name",
        "labelled",
        "--network",
        "none",
        "--label",
        "team=a",
        IMAGE,
        "true",
    ]);
    berth.ok(&["commit", "labelled", "labelled:v1"]);
    assert_eq!(
        berth.ok(&["inspect", "-f", "{{index .Config.Labels \"team\"}}", "labelled:v1"]),
        "a\n"
    );
    berth.ok(&["rm", "labelled"]);
    berth.assert_clean();
}

#[test]
fn root_unfinished_lines_reach_the_logs() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // A prompt without a newline, then a progress bar drawn with \r.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "prompt",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "printf 'password> '; printf '10%%\\r50%%\\r'; sleep 600",
    ]);
    wait_for("the prompt in the logs", Duration::from_secs(10), || {
        berth.ok(&["logs", "prompt"]).contains("password> ")
    });
    let logs = berth.ok(&["logs", "prompt"]);
    assert!(logs.contains("50%"), "{logs:?}");
    berth.ok(&["rm", "-f", "prompt"]);
    berth.assert_clean();
}

#[test]
fn root_limits_are_enforced_and_stats_are_real() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // Memory: a process that keeps allocating is killed by the kernel, and berth says OOM.
    let output = berth.run(&["run", "--name", "hog", "--memory", "16m", IMAGE, "sh", "-c", "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]);
    assert_eq!(output.status.code(), Some(137), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(berth.inspect("hog")["State"]["OOMKilled"], true);
    // pids: forking past the limit fails inside. (The limit leaves room for the pipeline's
    // own two forks even while the runtime's setup processes are still being counted; 30
    // sleeps then exceed it.)
    let text = berth.ok(&[
        "run",
        "--rm",
        "--pids-limit",
        "16",
        IMAGE,
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 5 & done 2>&1 | grep -c -i 'fork\\|resource' ; true",
    ]);
    assert!(text.trim().parse::<u32>().unwrap_or(0) >= 1, "no fork failed: {text}");
    // stats: a busy container shows CPU use and its memory limit.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        IMAGE,
        "sh",
        "-c",
        "while true; do :; done",
    ]);
    let stats = berth.ok(&["stats", "--no-stream", "--format", "json", "busy"]);
    let stats: Value = serde_json::from_str(stats.trim()).unwrap();
    // Docker's shape: "USAGE / LIMIT" in binary units, strings throughout.
    let memory = stats["MemUsage"].as_str().unwrap();
    assert!(memory.ends_with(" / 64.00MiB") && !memory.starts_with("0.00B"), "{memory}");
    let cpu: f64 = stats["CPUPerc"].as_str().unwrap().trim_end_matches('%').parse().unwrap();
    assert!(cpu > 10.0 && cpu < 70.0, "cpu {cpu}% with --cpus 0.5");
    assert_eq!(stats["PIDs"], "1");
    // NET I/O and BLOCK I/O in Docker's forms.
    for key in ["NetIO", "BlockIO"] {
        let value = stats[key].as_str().unwrap();
        assert!(
            value.contains(" / ") && value.chars().next().unwrap().is_ascii_digit(),
            "{key}: {value}"
        );
    }
    let table = berth.ok(&["stats", "--no-stream", "busy"]);
    assert!(
        table.starts_with("CONTAINER ID")
            && table.contains("NET I/O")
            && table.contains("BLOCK I/O"),
        "{table}"
    );
    berth.ok(&["rm", "-f", "busy", "hog"]);
    berth.assert_clean();
}

#[test]
fn root_a_killed_monitor_leaves_state_the_next_command_repairs() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let id = berth.ok(&["run", "-d", "--name", "orphan", IMAGE, "sleep", "600"]).trim().to_owned();
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(berth.root().join("containers").join(&id).join("container.json"))
            .unwrap(),
    )
    .unwrap();
    let monitor = record["state"]["monitor_pid"].as_i64().unwrap() as i32;
    let pid = record["state"]["pid"].as_i64().unwrap() as i32;
    use berth_sys::nix::sys::signal::{kill, Signal};
    use berth_sys::nix::unistd::Pid;
    kill(Pid::from_raw(monitor), Signal::SIGKILL).unwrap();
    wait_for("the monitor to die", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{monitor}")).exists()
    });
    // The container runs on; berth says so and can still stop and remove it.
    let inspect = berth.inspect("orphan");
    assert_eq!(inspect["State"]["Status"], "running");
    assert!(inspect["State"]["Error"].as_str().unwrap().contains("monitor died"));
    berth.ok(&["stop", "-t", "1", "orphan"]);
    assert_eq!(berth.inspect("orphan")["State"]["Status"], "exited");
    berth.ok(&["rm", "orphan"]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
    );
    // A monitor and its container both killed: the record says exited, rm cleans up.
    let id = berth.ok(&["run", "-d", "--name", "gone", IMAGE, "sleep", "600"]).trim().to_owned();
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(berth.root().join("containers").join(&id).join("container.json"))
            .unwrap(),
    )
    .unwrap();
    kill(Pid::from_raw(record["state"]["monitor_pid"].as_i64().unwrap() as i32), Signal::SIGKILL)
        .unwrap();
    kill(Pid::from_raw(record["state"]["pid"].as_i64().unwrap() as i32), Signal::SIGKILL).unwrap();
    wait_for("both to die", Duration::from_secs(5), || {
        let text = berth.ok(&["ps", "-a"]);
        text.contains("Exited (255)")
    });
    berth.ok(&["rm", "gone"]);
    berth.assert_clean();
}

#[test]
fn root_restart_policies_apply_while_the_monitor_lives() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        IMAGE,
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    wait_for("two restarts", Duration::from_secs(20), || {
        let inspect = berth.inspect("flaky");
        inspect["State"]["Status"] == "exited" && inspect["RestartCount"] == 2
    });
    assert_eq!(berth.ok(&["logs", "flaky"]), "run\nrun\nrun\n");
    berth.ok(&["rm", "flaky"]);
    berth.assert_clean();
}

#[test]
fn root_many_concurrent_runs_get_distinct_addresses() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let count = 50;
    let children: Vec<_> = (0..count)
        .map(|i| {
            berth
                .command()
                .args(["run", "-d", "--name", &format!("c{i}"), IMAGE, "sleep", "600"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut addresses: Vec<String> = (0..count)
        .map(|i| {
            berth
                .ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &format!("c{i}")])
                .trim()
                .to_owned()
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), count, "addresses: {addresses:?}");
    assert_eq!(berth.ok(&["ps", "-q"]).lines().count(), count);
    let removers: Vec<_> = (0..count)
        .map(|i| {
            berth
                .command()
                .args(["rm", "-f", &format!("c{i}")])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut remover in removers {
        assert!(remover.wait().unwrap().success());
    }
    berth.assert_clean();
}

#[test]
fn root_bad_input_is_explained_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--rm", "nosuch:image", "true"], "nosuch"),
        (&["run", "--rm", "-p", "80:http", IMAGE, "true"], "port spec"),
        (&["run", "--rm", "-p", "99999:80", IMAGE, "true"], "port spec"),
        (&["run", "--rm", "-v", "/does/not/exist:/x", IMAGE, "true"], "does not exist"),
        (&["run", "--rm", "-u", "nobody-here", IMAGE, "true"], "unable to find user"),
        (&["run", "--rm", "--network", "nonet", IMAGE, "true"], "nonet"),
        (&["run", "--rm", "--memory", "lots", IMAGE, "true"], "size"),
        (&["run", "--rm", "--cap-add", "CAP_FLY", IMAGE, "true"], "unknown capability"),
        (&["run", "--rm", IMAGE, "/no/such/program"], "no/such/program"),
        (&["exec", "nosuch", "true"], "no such container"),
        (&["logs", "nosuch"], "no such container"),
    ];
    for (args, needle) in cases {
        let output = berth.run(args);
        let err = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(err.contains(&needle.to_lowercase()), "{args:?}: {err}");
    }
    berth.ok(&["run", "-d", "--name", "taken", IMAGE, "sleep", "600"]);
    let err = berth.fails(&["run", "--name", "taken", IMAGE, "true"]);
    assert!(err.contains("already in use"), "{err}");
    berth.ok(&["rm", "-f", "taken"]);
    // A failed start leaves a created container (as Docker does) that rm removes cleanly.
    for leftover in berth.ok(&["ps", "-aq"]).lines() {
        berth.ok(&["rm", "-f", leftover]);
    }
    berth.assert_clean();
}

#[test]
fn root_proc_tells_the_container_its_limits() {
    if !root_or_skip() {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: lxcfs needs /dev/fuse, which this machine lacks");
        return;
    }
    let berth = Berth::new();
    let output = berth.run(&[
        "run", "--rm", "--memory", "64m", "--cpus", "1", IMAGE, "sh", "-c",
        "head -1 /proc/meminfo; top -bn1 | head -1; nproc; grep -c ^processor /proc/cpuinfo; cut -d' ' -f1 /proc/uptime; free | grep Mem:; uptime",
    ]);
    assert!(output.status.success(), "{output:?}");
    // What berth said (say, about lxcfs) comes with the output when an assertion fails.
    let text = format!(
        "{}\n(berth's stderr: {})",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    // busybox free and uptime ask the kernel (sysinfo(2)), answered by the monitor.
    let free: Vec<&str> = lines[5].split_whitespace().collect();
    assert_eq!(free[1], "65536", "free: {text}");
    assert!(lines[6].contains("up 0 min"), "uptime: {text}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("lxcfs") && !lines[0].contains(" 65536 ") {
        // berth said why: lxcfs cannot run here (FUSE refused, say). It is not faked.
        eprintln!("skipped the /proc files: {stderr}");
        return;
    }
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["MemTotal:", "65536", "kB"],
        "{text}"
    );
    // busybox top: "Mem: <used>K used, <free>K free, ...": together the limit.
    let numbers: Vec<u64> =
        lines[1].split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    assert_eq!(numbers[0] + numbers[1], 65536, "{text}");
    assert_eq!(lines[2], "1", "nproc: {text}");
    assert_eq!(lines[3], "1", "cpuinfo: {text}");
    let uptime: f64 = lines[4].parse().unwrap();
    assert!(uptime < 60.0, "the container's uptime, not the host's: {text}");
    // Without limits the host's view stays (nothing to hide).
    let host_total =
        std::fs::read_to_string("/proc/meminfo").unwrap().lines().next().unwrap().to_owned();
    assert_eq!(
        berth.ok(&["run", "--rm", IMAGE, "head", "-1", "/proc/meminfo"]).trim(),
        host_total.trim()
    );
}

#[test]
fn root_defaults_confine_and_options_loosen() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // Docker's capability set: no NET_ADMIN, so no new links; the seccomp profile refuses
    // mount and unshare even to processes that have the capability.
    let output = berth.run(&["run", "--rm", IMAGE, "ip", "link", "set", "lo", "mtu", "1400"]);
    assert!(!output.status.success(), "changed a link without NET_ADMIN");
    let caps = berth.ok(&["run", "--rm", IMAGE, "grep", "CapEff", "/proc/self/status"]);
    assert!(caps.contains("00000000a80425fb"), "docker's default set: {caps}");
    let output =
        berth.run(&["run", "--rm", "--cap-add", "SYS_ADMIN", IMAGE, "unshare", "-m", "true"]);
    assert!(!output.status.success(), "seccomp let unshare through");
    assert!(berth
        .run(&[
            "run",
            "--rm",
            "--cap-add",
            "NET_ADMIN",
            IMAGE,
            "ip",
            "link",
            "set",
            "lo",
            "mtu",
            "1400"
        ])
        .status
        .success());
    assert!(berth
        .run(&["run", "--rm", "--privileged", IMAGE, "unshare", "-m", "true"])
        .status
        .success());
    let caps = berth.ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        IMAGE,
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert!(caps.contains("0000000000000000"), "{caps}");
    // Masked and read-only paths, a read-only root with writable volumes, /dev/shm.
    let masked = ["/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/kcore"]
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|d| !d.is_empty()))
        .expect("a host /proc file that berth masks");
    assert_eq!(
        berth.ok(&["run", "--rm", IMAGE, "sh", "-c", &format!("wc -c < {masked}")]).trim(),
        "0"
    );
    let output = berth.run(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        IMAGE,
        "sh",
        "-c",
        "touch /tmp/ok && touch /nope",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Read-only file system"));
    let shm = berth.ok(&["run", "--rm", IMAGE, "sh", "-c", "grep /dev/shm /proc/mounts"]);
    assert!(shm.contains("tmpfs") && shm.contains("size=65536k"), "{shm}");
    // --init puts a real init (tini) at PID 1, which reaps and forwards signals.
    let text = berth.ok(&[
        "run",
        "--rm",
        "--init",
        IMAGE,
        "sh",
        "-c",
        "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("/sbin/berth-init -- sh"), "{text}");
    assert_ne!(lines[1], "1");
    // no-new-privileges is visible to the process.
    let text = berth.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "no-new-privileges",
        IMAGE,
        "grep",
        "NoNewPrivs",
        "/proc/self/status",
    ]);
    assert!(text.contains('1'), "{text}");
}

#[test]
fn root_logs_follow_rotate_and_attach() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["run", "-d", "--name", "chatty", "--log-opt", "max-size=2k", "--log-opt", "max-file=2", IMAGE, "sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done; sleep 1; echo last; sleep 600"]);
    wait_for("the last line", Duration::from_secs(10), || {
        berth.ok(&["logs", "chatty"]).contains("last")
    });
    let id = berth.ok(&["inspect", "-f", "{{.Id}}", "chatty"]).trim().to_owned();
    let dir = berth.root().join("containers").join(&id);
    assert!(std::fs::metadata(dir.join("container.log")).unwrap().len() <= 2048);
    assert!(dir.join("container.log.1").exists() && !dir.join("container.log.2").exists());
    let logs = berth.ok(&["logs", "chatty"]);
    assert!(!logs.contains("line 0\n"), "rotated away");
    assert!(logs.ends_with("line 299\nlast\n"), "{logs}");
    // logs -f follows until the container ends.
    let follower = berth
        .command()
        .args(["logs", "-f", "--tail", "1", "chatty"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    berth.ok(&["stop", "-t", "1", "chatty"]);
    let output = follower.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "last\n");
    // attach: input in, output out, and the exit code of the container.
    berth.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "echoer",
        IMAGE,
        "sh",
        "-c",
        "read line; echo got $line; exit 9",
    ]);
    let mut child = berth
        .command()
        .args(["attach", "echoer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "got hello\n");
    assert_eq!(output.status.code(), Some(9));
    // start -a -i replays nothing old: it attaches to the new run (stdin at its end here).
    let output = berth.run(&["start", "-a", "-i", "echoer"]);
    assert_eq!(output.status.code(), Some(9));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "got\n");
    berth.ok(&["rm", "-f", "chatty", "echoer"]);
    berth.assert_clean();
}

#[test]
fn root_network_modes_and_a_client_on_another_host() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // -P publishes the image's exposed ports; the fixture exposes none, so give one.
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "80",
        "--dns",
        "192.0.2.53",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/srv",
    ]);
    let port =
        berth.ok(&["port", "web", "80"]).trim().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    assert!(port > 0);
    assert_eq!(berth.ok(&["exec", "web", "cat", "/etc/resolv.conf"]), "nameserver 192.0.2.53\n");
    // Another host: a network namespace joined to this one by a veth pair, 192.168.77.0/24.
    let mut other = Command::new("unshare").args(["-n", "sleep", "600"]).spawn().unwrap();
    let pid = other.id().to_string();
    // Until unshare has made its namespace, the veth would stay here.
    let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().as_ref() == Some(&ours) {
        assert!(Instant::now() < deadline, "unshare never made its network namespace");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["link", "add", "hosta", "type", "veth", "peer", "name", "hostb"]);
    ip(&["link", "set", "hostb", "netns", &pid]);
    ip(&["addr", "add", "192.168.77.1/24", "dev", "hosta"]);
    ip(&["link", "set", "hosta", "up"]);
    let nsenter = |args: &[&str]| {
        let mut command = Command::new("nsenter");
        command.args(["-t", &pid, "-n"]).args(args);
        command.output().unwrap()
    };
    assert!(nsenter(&["ip", "addr", "add", "192.168.77.2/24", "dev", "hostb"]).status.success());
    assert!(nsenter(&["ip", "link", "set", "hostb", "up"]).status.success());
    assert!(nsenter(&["ip", "link", "set", "lo", "up"]).status.success());
    let mut fetched = String::new();
    for _ in 0..50 {
        let output = nsenter(&[
            berth_testkit::BUSYBOX,
            "wget",
            "-qO-",
            &format!("http://192.168.77.1:{port}/run.sh"),
        ]);
        fetched = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other host's namespace goes with its process, and the veth pair with it.
    let _ = other.kill();
    let _ = other.wait();
    assert!(fetched.contains("fixture says hi"), "from the other host: {fetched:?}");
    // container:NAME shares the network namespace: same address, and web's port on localhost.
    let text = berth.ok(&[
        "run",
        "--rm",
        "--network",
        "container:web",
        IMAGE,
        "sh",
        "-c",
        "ip -4 -o addr show eth0; wget -qO- http://127.0.0.1/run.sh",
    ]);
    let web_ip =
        berth.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]).trim().to_owned();
    assert!(text.contains(&web_ip) && text.contains("fixture says hi"), "{text}");
    // none: loopback only; host: this namespace's links, the bridge among them.
    assert_eq!(
        berth.ok(&["run", "--rm", "--network", "none", IMAGE, "ls", "/sys/class/net"]),
        "lo\n"
    );
    let links = berth.ok(&["run", "--rm", "--network", "host", IMAGE, "ls", "/sys/class/net"]);
    // A root other than /var/lib/berth has a bridge of its own.
    assert!(
        links.lines().any(|l| l.starts_with("berth") && l != "berth0") && links.contains("veth"),
        "{links}"
    );
    berth.ok(&["rm", "-f", "web"]);
    berth.assert_clean();
}

#[test]
fn root_a_killed_command_leaves_a_container_that_can_be_removed() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let mut child = berth
        .command()
        .args(["run", "--name", "fg", IMAGE, "sleep", "600"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("fg to run", Duration::from_secs(10), || berth.ok(&["ps", "-q"]).lines().count() == 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // The container is the monitor's, not the command's: it runs on.
    assert_eq!(berth.inspect("fg")["State"]["Status"], "running");
    let output = berth.run(&["exec", "-d", "fg", "sh", "-c", "echo detached > /tmp/mark"]);
    assert!(output.status.success());
    wait_for("the detached exec", Duration::from_secs(5), || {
        berth.run(&["exec", "fg", "cat", "/tmp/mark"]).status.success()
    });
    berth.ok(&["rm", "-f", "fg"]);
    berth.assert_clean();
}

#[test]
fn root_the_image_config_shapes_the_container() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["create", "--name", "base", IMAGE]);
    let changes: Vec<String> = [
        "EXPOSE 80",
        "VOLUME /data",
        "STOPSIGNAL SIGUSR1",
        "LABEL tier=web",
        "USER app",
        "WORKDIR /home/app",
        "ENV MODE=prod",
        "ENTRYPOINT [\"sh\", \"-c\"]",
        "CMD [\"id -un; pwd; echo $MODE; ls -d /data\"]",
    ]
    .iter()
    .flat_map(|c| ["-c".to_owned(), (*c).to_owned()])
    .collect();
    let mut args = vec!["commit"];
    args.extend(changes.iter().map(String::as_str));
    args.extend(["base", "configured:v1"]);
    berth.ok(&args);
    assert_eq!(berth.ok(&["run", "--rm", "configured:v1"]), "app\n/home/app\nprod\n/data\n");
    // Entrypoint kept, Cmd replaced; -u and -w win over the image.
    assert_eq!(
        berth.ok(&["run", "--rm", "-u", "root", "-w", "/", "configured:v1", "id -u; pwd"]),
        "0\n/\n"
    );
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "svc",
        "-P",
        "-l",
        "extra=1",
        "configured:v1",
        "trap 'echo usr1; exit 3' USR1; while true; do sleep 0.1; done",
    ]);
    let inspect = berth.inspect("svc");
    assert_eq!(inspect["Config"]["Labels"]["tier"], "web");
    assert_eq!(inspect["Config"]["Labels"]["extra"], "1");
    assert_eq!(inspect["Config"]["StopSignal"], "SIGUSR1");
    let mounts = inspect["Mounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["Destination"] == "/data" && m["Type"] == "volume"),
        "{mounts:?}"
    );
    let port =
        inspect["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"].as_str().unwrap().to_owned();
    assert!(port.parse::<u16>().unwrap() > 0, "-P published 80: {inspect}");
    // stop sends the image's stop signal.
    berth.ok(&["stop", "svc"]);
    assert_eq!(berth.inspect("svc")["State"]["ExitCode"], 3);
    assert_eq!(berth.ok(&["logs", "svc"]), "usr1\n");
    berth.ok(&["rm", "-v", "svc", "base"]);
    assert_eq!(
        berth.ok(&["volume", "ls", "-q"]),
        "",
        "the image's anonymous volume went with rm -v"
    );
    berth.assert_clean();
}

#[test]
fn root_the_remaining_flags_and_commands() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // --env-file and --mount (bind and volume).
    let env_file = berth.dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n\nOTHER=2\n").unwrap();
    let host = berth.dir.path().join("bound");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "bound file\n").unwrap();
    let text = berth.ok(&[
        "run",
        "--rm",
        "--env-file",
        env_file.to_str().unwrap(),
        "--mount",
        &format!("type=bind,source={},target=/b,readonly", host.display()),
        "--mount",
        "type=volume,source=named,target=/v",
        IMAGE,
        "sh",
        "-c",
        "echo $FROM_FILE $OTHER; cat /b/f; touch /b/x 2>/dev/null || echo ro; echo hi > /v/f",
    ]);
    assert_eq!(text, "yes 2\nbound file\nro\n");
    let volumes: Value = serde_json::from_str(&berth.ok(&["volume", "inspect", "named"])).unwrap();
    let mountpoint = volumes[0]["Mountpoint"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(Path::new(&mountpoint).join("f")).unwrap(), "hi\n");
    // volume prune: anonymous volumes by default, named ones with -a.
    berth.ok(&["volume", "create", "spare"]);
    berth.ok(&["volume", "prune"]);
    assert_eq!(berth.ok(&["volume", "ls", "-q"]).lines().count(), 2);
    berth.ok(&["volume", "prune", "-a"]);
    assert_eq!(berth.ok(&["volume", "ls", "-q"]), "");
    // restart: a new run of the same container, same name and id; logs --since sees it.
    berth.ok(&[
        "run",
        "-d",
        "--init",
        "--name",
        "again",
        IMAGE,
        "sh",
        "-c",
        "echo started; sleep 600",
    ]);
    wait_for("the first start", Duration::from_secs(5), || {
        berth.ok(&["logs", "again"]) == "started\n"
    });
    let pid_before = berth.inspect("again")["State"]["Pid"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let marker = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    berth.ok(&["restart", "-t", "1", "again"]);
    wait_for("the second start", Duration::from_secs(5), || {
        berth.ok(&["logs", "again"]) == "started\nstarted\n"
    });
    assert_ne!(berth.inspect("again")["State"]["Pid"].as_i64().unwrap(), pid_before);
    assert_eq!(berth.ok(&["logs", "--since", &marker, "again"]), "started\n");
    // UDP ports: a datagram to the published port reaches the container's namespace (busybox
    // has no UDP server: the container's kernel counts it as sent to a closed port).
    berth.ok(&["run", "-d", "--name", "udp", "-p", "5353:53/udp", IMAGE, "sleep", "600"]);
    let no_ports = || -> u64 {
        let snmp = berth.ok(&["exec", "udp", "cat", "/proc/net/snmp"]);
        let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let values: Vec<&str> = lines[1].split_whitespace().collect();
        let at = names.iter().position(|n| *n == "NoPorts").unwrap();
        values[at].parse().unwrap()
    };
    let before = no_ports();
    wait_for("a datagram through port 5353", Duration::from_secs(10), || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.send_to(b"ping\n", "127.0.0.1:5353").unwrap();
        no_ports() > before
    });
    berth.ok(&["rm", "-f", "again", "udp"]);
    berth.assert_clean();
}

#[test]
fn root_devices_are_given_with_device_or_privileged() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    // /dev/kmsg (1:11) is one no container gets by default; some hosts (containers
    // themselves) lack it.
    if Path::new("/dev/kmsg").exists() {
        kmsg_by_device(&berth);
    } else {
        eprintln!("skipped the --device checks on /dev/kmsg: this host has none");
    }
    // A directory brings every device under it.
    if Path::new("/dev/net/tun").exists() {
        let text = berth.ok(&["run", "--rm", "--device", "/dev/net", IMAGE, "ls", "/dev/net"]);
        assert!(text.contains("tun"), "{text}");
    }
    // Privileged: the host's devices, as Docker gives them.
    let text = berth.ok(&["run", "--rm", "--privileged", IMAGE, "ls", "/dev"]);
    for node in ["kmsg", "null", "tty0"] {
        if Path::new("/dev").join(node).exists() {
            assert!(text.lines().any(|l| l == node), "{node} missing: {text}");
        }
    }
    // Bad requests say what is wrong and create nothing.
    for (device, needle) in [
        ("/etc/passwd", "is not a device"),
        ("/dev/nosuch", "No such file"),
        ("/dev/null:/dev/x:rwz", "permissions"),
        ("/dev/null:/etc/x", "under /dev"),
    ] {
        let err = berth.fails(&["run", "--rm", "--device", device, IMAGE, "true"]);
        assert!(err.contains(needle), "{device}: {err}");
    }
    assert_eq!(berth.ok(&["ps", "-aq"]).trim(), "");
}

/// `--device` with /dev/kmsg: absent by default, present when asked for, and opened only
/// as the permissions say.
fn kmsg_by_device(berth: &Berth) {
    let absent = berth.run(&["run", "--rm", IMAGE, "ls", "/dev/kmsg"]);
    assert!(!absent.status.success(), "/dev/kmsg without --device");
    let listed =
        berth.ok(&["run", "--rm", "--device", "/dev/kmsg", IMAGE, "ls", "-l", "/dev/kmsg"]);
    assert!(listed.starts_with('c') && listed.contains("1,  11"), "{listed}");
    // Another name inside, and only the permissions asked for: opened for reading, not
    // for writing (nothing is written).
    let script = "(exec 3</dev/log) && echo read; (exec 3>/dev/log) 2>/dev/null && echo opened || echo refused";
    let text = berth.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "SYSLOG",
        "--device",
        "/dev/kmsg:/dev/log:r",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(text.lines().collect::<Vec<_>>(), ["read", "refused"], "{text}");
}

#[test]
fn root_restart_policies_bring_containers_back_after_a_reboot() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    for (name, policy) in [
        ("always", "always"),
        ("unless", "unless-stopped"),
        ("stopped", "unless-stopped"),
        ("plain", "no"),
    ] {
        berth.ok(&["run", "-d", "--name", name, "--restart", policy, IMAGE, "sleep", "600"]);
    }
    berth.ok(&["stop", "-t", "1", "stopped"]);
    // Created and never started: not something a daemon restart would start.
    berth.ok(&["create", "--name", "fresh", "--restart", "always", IMAGE, "sleep", "600"]);
    // A reboot, as far as berth can tell: every monitor and container killed at once.
    use berth_sys::nix::sys::signal::{kill, Signal};
    use berth_sys::nix::unistd::Pid;
    for name in ["always", "unless", "plain"] {
        let id = berth.ok(&["inspect", "-f", "{{.Id}}", name]).trim().to_owned();
        let record: Value = serde_json::from_str(
            &std::fs::read_to_string(
                berth.root().join("containers").join(&id).join("container.json"),
            )
            .unwrap(),
        )
        .unwrap();
        for pid in [&record["state"]["monitor_pid"], &record["state"]["pid"]] {
            kill(Pid::from_raw(pid.as_i64().unwrap() as i32), Signal::SIGKILL).unwrap();
        }
    }
    wait_for("all three to be seen exited", Duration::from_secs(10), || {
        berth.ok(&["ps", "-a"]).matches("Exited (255)").count() == 3
    });
    // What a boot service runs: the containers whose policy says so, and not the one the
    // user stopped.
    let started = berth.ok(&[
        "start",
        "--all",
        "--filter",
        "restart-policy=always",
        "--filter",
        "restart-policy=unless-stopped",
    ]);
    assert_eq!(started.lines().collect::<Vec<_>>(), ["always", "unless"], "{started}");
    for (name, status) in [
        ("always", "running"),
        ("unless", "running"),
        ("stopped", "exited"),
        ("plain", "exited"),
        ("fresh", "created"),
    ] {
        assert_eq!(berth.inspect(name)["State"]["Status"], status, "{name}");
    }
    let err = berth.fails(&["start", "--all", "--filter", "label=x"]);
    assert!(err.contains("restart-policy=NAME"), "{err}");
    // Without a filter, --all starts every stopped container.
    assert_eq!(berth.ok(&["start", "--all"]).lines().count(), 3);
    for name in ["always", "unless", "stopped", "plain", "fresh"] {
        berth.ok(&["rm", "-f", name]);
    }
    berth.assert_clean();
}

/// The namespace of kind `kind` (`/proc/self/ns/KIND`) as the test process sees it.
fn own_namespace(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

/// A block device of this machine, for the I/O throttles (the one under /).
fn some_block_device() -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let root_dev = std::fs::metadata("/").ok()?.dev();
    let wanted = (berth_sys::nix::sys::stat::major(root_dev), 0);
    let mut fallback = None;
    for entry in std::fs::read_dir("/dev").ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_block_device() {
            continue;
        }
        let path = entry.path().to_string_lossy().into_owned();
        let (major, minor) = (
            berth_sys::nix::sys::stat::major(meta.rdev()),
            berth_sys::nix::sys::stat::minor(meta.rdev()),
        );
        if (major, minor) == wanted {
            return Some(path);
        }
        if minor == 0 && !path.contains("loop") && !path.contains("ram") {
            fallback.get_or_insert(path);
        }
    }
    fallback
}

#[test]
fn root_run_flags_reach_the_kernel() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let sh = |flags: &[&str], script: &str| -> String {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        berth.ok(&args)
    };
    // --ulimit: soft and hard, and one value for both.
    assert_eq!(
        sh(
            &["--ulimit", "nofile=100:200", "--ulimit", "core=0"],
            "ulimit -n; ulimit -Hn; ulimit -c"
        ),
        "100\n200\n0\n"
    );
    let err = berth.fails(&["run", "--rm", "--ulimit", "nofile=2:1", IMAGE, "true"]);
    assert!(err.contains("above the hard limit"), "{err}");
    // --shm-size is the size of /dev/shm (Docker's 64 MiB without it).
    assert!(sh(&["--shm-size", "8m"], "grep ' /dev/shm ' /proc/mounts").contains("size=8192k"));
    assert!(sh(&[], "grep ' /dev/shm ' /proc/mounts").contains("size=65536k"));
    // --sysctl, in the container's own namespaces only.
    assert_eq!(
        sh(
            &[
                "--sysctl",
                "net.ipv4.ip_unprivileged_port_start=80",
                "--sysctl",
                "kernel.shmmax=1234567"
            ],
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmax"
        ),
        "80\n1234567\n"
    );
    let err = berth.fails(&["run", "--rm", "--sysctl", "kernel.hostname_max=1", IMAGE, "true"]);
    assert!(err.contains("sysctl"), "{err}");
    // The host's namespaces, each on demand.
    for (flag, kind) in
        [("--ipc", "ipc"), ("--pid", "pid"), ("--cgroupns", "cgroup"), ("--uts", "uts")]
    {
        let inside = sh(&[flag, "host"], &format!("readlink /proc/self/ns/{kind}"));
        assert_eq!(inside.trim(), own_namespace(kind), "{flag} host");
        let inside = sh(&[], &format!("readlink /proc/self/ns/{kind}"));
        assert_ne!(inside.trim(), own_namespace(kind), "without {flag}");
    }
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(sh(&["--uts", "host"], "hostname"), host_name);
    let err = berth.fails(&["run", "--rm", "--uts", "host", "-h", "x", IMAGE, "true"]);
    assert!(err.contains("conflicts with --uts host"), "{err}");
    assert!(sh(&["--ipc", "none"], "test -e /dev/shm || echo none").contains("none"));
    let err = berth.fails(&["run", "--rm", "--ipc", "sideways", IMAGE, "true"]);
    assert!(err.contains("container:NAME"), "{err}");
    // Joining another container: its IPC namespace and /dev/shm (when it is shareable, as
    // Docker asks), and its PID namespace.
    berth.ok(&["run", "-d", "--name", "donor", "--ipc", "shareable", IMAGE, "sleep", "300"]);
    berth.ok(&["exec", "donor", "sh", "-c", "echo shared > /dev/shm/note"]);
    let donor_ipc = berth.ok(&["exec", "donor", "readlink", "/proc/self/ns/ipc"]);
    let joined = sh(
        &["--ipc", "container:donor", "--pid", "container:donor"],
        "cat /dev/shm/note; readlink /proc/self/ns/ipc; ps -o args",
    );
    assert!(joined.starts_with(&format!("shared\n{donor_ipc}")), "{joined}");
    assert!(joined.contains("sleep 300"), "the donor's processes are seen: {joined}");
    berth.ok(&["run", "-d", "--name", "private", IMAGE, "sleep", "300"]);
    let err = berth.fails(&["run", "--rm", "--ipc", "container:private", IMAGE, "true"]);
    assert!(err.contains("not shareable"), "{err}");
    // --group-add: numbers and the container's group names.
    assert_eq!(
        sh(&["--user", "app", "--group-add", "tty", "--group-add", "4242"], "id -G"),
        "1000 5 4242\n"
    );
    let err = berth.fails(&["run", "--rm", "--group-add", "wheel", IMAGE, "true"]);
    assert!(err.contains("no such group"), "{err}");
    // CPU and memory: what the cgroup files say inside.
    let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.shares").exists();
    if v1 {
        let text = sh(
            &[
                "--cpu-shares", "512", "--cpuset-cpus", "0", "--cpu-quota", "20000", "--cpu-period", "50000",
                "--memory", "64m", "--memory-swap", "128m", "--memory-reservation", "32m",
            ],
            "cd /sys/fs/cgroup; cat cpu/cpu.shares cpuset/cpuset.cpus cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us \
             memory/memory.limit_in_bytes memory/memory.soft_limit_in_bytes; \
             cat memory/memory.memsw.limit_in_bytes 2>/dev/null || echo 134217728; nproc",
        );
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            ["512", "0", "20000", "50000", "67108864", "33554432", "134217728", "1"],
            "{text}"
        );
        let oom = sh(
            &["--memory", "64m", "--oom-kill-disable"],
            "grep oom_kill_disable /sys/fs/cgroup/memory/memory.oom_control",
        );
        assert_eq!(oom.trim(), "oom_kill_disable 1");
        if let Some(device) = some_block_device() {
            let text = sh(
                &["--device-read-bps", &format!("{device}:1mb"), "--device-write-iops", &format!("{device}:100")],
                "cat /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device /sys/fs/cgroup/blkio/blkio.throttle.write_iops_device",
            );
            let lines: Vec<&str> = text.lines().collect();
            assert!(
                lines.len() == 2 && lines[0].ends_with(" 1048576") && lines[1].ends_with(" 100"),
                "{text}"
            );
        }
    }
    for (flags, needle) in [
        (&["--memory-swap", "64m"][..], "needs --memory"),
        (&["--memory", "64m", "--memory-swap", "32m"][..], "cannot be below --memory"),
        (&["--memory", "64m", "--memory-reservation", "128m"][..], "must be below --memory"),
        (&["--cpus", "0.5", "--cpu-quota", "20000"][..], "conflicts with --cpu-quota"),
        (&["--cpuset-cpus", "one"][..], "a list like 0-3,5"),
        (&["--device-read-bps", "/dev/null:1mb"][..], "not a block device"),
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "true"]);
        let err = berth.fails(&args);
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    // --cidfile: the id, and a second run with the same file refused before anything runs.
    let cidfile = berth.dir.path().join("cid");
    let cid = cidfile.to_str().unwrap();
    berth.ok(&["run", "--name", "withcid", "--cidfile", cid, IMAGE, "true"]);
    assert_eq!(
        std::fs::read_to_string(&cidfile).unwrap(),
        berth.inspect("withcid")["Id"].as_str().unwrap()
    );
    let err = berth.fails(&["run", "--name", "again", "--cidfile", cid, IMAGE, "true"]);
    assert!(err.contains("container ID file found"), "{err}");
    assert!(berth.fails(&["inspect", "again"]).contains("No such object"));
    // --label-file, under the -l flags.
    let labels = berth.dir.path().join("labels");
    std::fs::write(&labels, "# team labels\ntier=back\nteam=a\n\n").unwrap();
    berth.ok(&[
        "create",
        "--name",
        "labelled",
        "--label-file",
        labels.to_str().unwrap(),
        "-l",
        "team=b",
        IMAGE,
    ]);
    assert_eq!(
        berth.ok(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"tier\"}} {{index .Config.Labels \"team\"}}",
            "labelled"
        ]),
        "back b\n"
    );
    // --log-driver none: nothing is kept, and logs says so.
    berth.ok(&["run", "--name", "quiet", "--log-driver", "none", IMAGE, "echo", "unseen"]);
    let err = berth.fails(&["logs", "quiet"]);
    assert!(err.contains("does not support reading"), "{err}");
    assert_eq!(berth.ok(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "quiet"]), "none\n");
    let err = berth.fails(&["run", "--rm", "--log-driver", "syslog", IMAGE, "true"]);
    assert!(err.contains("json-file or none"), "{err}");
    // --platform: the image's own is accepted, another one refused with the reason.
    berth.ok(&["run", "--rm", "--platform", "linux/amd64", "--pull", "never", IMAGE, "true"]);
    let err = berth.fails(&[
        "run",
        "--rm",
        "--platform",
        "linux/s390x",
        "--pull",
        "never",
        IMAGE,
        "true",
    ]);
    assert!(err.contains("does not match the specified platform"), "{err}");
    // inspect shows what was asked, under Docker's keys.
    berth.ok(&[
        "create",
        "--name",
        "shown",
        "--ulimit",
        "nproc=50",
        "--shm-size",
        "1m",
        "--sysctl",
        "net.core.somaxconn=99",
        "--ipc",
        "shareable",
        "--cpu-shares",
        "300",
        "--memory",
        "32m",
        "--memory-swap",
        "-1",
        "--group-add",
        "tty",
        "-v",
        "/tmp:/host-tmp:ro",
        "--tmpfs",
        "/scratch",
        "--dns",
        "10.0.0.1",
        "--add-host",
        "a:10.0.0.2",
        IMAGE,
    ]);
    let shown = berth.inspect("shown");
    let host = &shown["HostConfig"];
    assert_eq!(host["Ulimits"][0], serde_json::json!({"Name": "nproc", "Soft": 50, "Hard": 50}));
    assert_eq!(
        (host["ShmSize"].as_i64(), host["IpcMode"].as_str()),
        (Some(1 << 20), Some("shareable"))
    );
    assert_eq!(host["Sysctls"]["net.core.somaxconn"], "99");
    assert_eq!((host["CpuShares"].as_i64(), host["MemorySwap"].as_i64()), (Some(300), Some(-1)));
    assert_eq!(host["Binds"], serde_json::json!(["/tmp:/host-tmp:ro"]));
    assert_eq!(host["Tmpfs"]["/scratch"], "");
    assert_eq!(
        (host["Dns"][0].as_str(), host["ExtraHosts"][0].as_str()),
        (Some("10.0.0.1"), Some("a:10.0.0.2"))
    );
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    let dir = berth.root().join("containers").join(shown["Id"].as_str().unwrap());
    assert_eq!(shown["HostsPath"], dir.join("hosts").to_str().unwrap());
    assert_eq!(shown["ResolvConfPath"], dir.join("resolv.conf").to_str().unwrap());
    assert_eq!(shown["GraphDriver"]["Data"]["UpperDir"], dir.join("upper").to_str().unwrap());
    for name in ["donor", "private", "withcid", "labelled", "quiet", "shown"] {
        berth.ok(&["rm", "-f", name]);
    }
    berth.assert_clean();
}

#[test]
fn root_update_changes_a_running_containers_limits() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "live",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        IMAGE,
        "sleep",
        "300",
    ]);
    let memory_limit = || {
        berth.ok(&["exec", "live", "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"])
    };
    assert_eq!(memory_limit(), "67108864\n");
    assert_eq!(
        berth.ok(&[
            "update",
            "--memory",
            "128m",
            "--pids-limit",
            "20",
            "--restart",
            "on-failure:3",
            "live"
        ]),
        "live\n"
    );
    assert_eq!(memory_limit(), "134217728\n");
    let pids = berth.ok(&[
        "exec",
        "live",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    ]);
    assert_eq!(pids, "20\n");
    let shown = berth.inspect("live");
    assert_eq!(shown["HostConfig"]["Memory"], 128 << 20);
    assert_eq!(shown["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(shown["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 3);
    // Taking a limit away writes "unlimited", not "unchanged".
    berth.ok(&["update", "--pids-limit", "-1", "live"]);
    let pids = berth.ok(&[
        "exec",
        "live",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    ]);
    assert_eq!(pids, "max\n");
    // A bad value changes nothing; an unknown container is an error of its own.
    let output = berth.run(&["update", "--memory", "1k", "live", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("minimum memory") && err.contains("ghost"), "{err}");
    assert_eq!(memory_limit(), "134217728\n");
    // A stopped container keeps the new limits for its next start.
    berth.ok(&["stop", "-t", "0", "live"]);
    berth.ok(&["update", "--memory", "96m", "live"]);
    berth.ok(&["start", "live"]);
    assert_eq!(memory_limit(), "100663296\n");
    let err = berth.fails(&["update", "--restart", "always", &{
        berth.ok(&["create", "--rm", "--name", "temp", IMAGE]);
        "temp".to_owned()
    }]);
    assert!(err.contains("--rm"), "{err}");
    for name in ["live", "temp"] {
        berth.ok(&["rm", "-f", name]);
    }
    berth.assert_clean();
}

#[test]
fn root_user_networks_resolve_names_aliases_and_chosen_addresses() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    berth.ok(&["network", "create", "--subnet", "10.123.0.0/24", "appnet"]);
    berth.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "appnet",
        "--network-alias",
        "postgres",
        "--ip",
        "10.123.0.50",
        "--mac-address",
        "02:42:0a:7b:00:32",
        IMAGE,
        "sleep",
        "300",
    ]);
    let db = berth.inspect("db");
    let net = &db["NetworkSettings"]["Networks"]["appnet"];
    assert_eq!(
        (net["IPAddress"].as_str(), net["MacAddress"].as_str()),
        (Some("10.123.0.50"), Some("02:42:0a:7b:00:32"))
    );
    // The short ID is listed among the aliases, as Docker lists it.
    let short = &db["Id"].as_str().unwrap()[..12];
    assert_eq!(net["Aliases"], serde_json::json!(["postgres", short]));
    let link = berth.ok(&["exec", "db", "ip", "link", "show", "eth0"]);
    assert!(link.contains("02:42:0a:7b:00:32"), "{link}");
    // The embedded DNS at 127.0.0.11 answers names, aliases and short ids, over UDP and TCP.
    let id = db["Id"].as_str().unwrap()[..12].to_owned();
    let script = format!(
        "cat /etc/resolv.conf; for n in db postgres POSTGRES {id}; do nslookup $n | grep -A1 '^Name:' | tail -1; done; \
         nslookup -type=ptr 50.0.123.10.in-addr.arpa | grep -c 'name = db'"
    );
    let text = berth.ok(&["run", "--rm", "--network", "appnet", IMAGE, "sh", "-c", &script]);
    assert!(text.starts_with("nameserver 127.0.0.11\noptions ndots:0\n"), "{text}");
    assert_eq!(text.matches("Address: 10.123.0.50").count(), 4, "{text}");
    assert!(text.trim_end().ends_with('1'), "reverse lookup: {text}");
    // Over TCP too (a resolver retries there when an answer is truncated).
    let tcp = berth.ok(&["run", "--rm", "--network", "appnet", IMAGE, "sh", "-c", "printf '\\000\\032\\000\\001\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\010postgres\\000\\000\\001\\000\\001' | nc -w 2 127.0.0.11 53 | od -An -tu1 | tr -s ' \\n' ' '"]);
    assert!(tcp.trim_end().ends_with("10 123 0 50"), "{tcp}");
    // A name of no container is relayed upstream (none answers here): an answer, at once.
    let output = berth.run(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        IMAGE,
        "nslookup",
        "nothing-here.invalid",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("nothing-here.invalid"), "{text}");
    // network connect: a running container joins another network at once (a new
    // interface, no second default route), under its name and the aliases given there,
    // and again at its next start; disconnect takes it away.
    berth.ok(&["network", "create", "--subnet", "10.124.0.0/24", "front"]);
    berth.ok(&["run", "-d", "--name", "web", "--network", "front", IMAGE, "sleep", "300"]);
    berth.ok(&["network", "connect", "--alias", "api", "--ip", "10.123.0.60", "appnet", "web"]);
    let inside = berth.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "ip -4 -o addr show eth1; ip route | grep -c default; nslookup db | grep -A1 '^Name:' | tail -1",
    ]);
    assert!(inside.contains("10.123.0.60/24"), "{inside}");
    assert!(inside.contains("\n1\n") && inside.contains("Address: 10.123.0.50"), "{inside}");
    let from_db = berth.ok(&[
        "exec",
        "db",
        "sh",
        "-c",
        "nslookup api | grep -A1 '^Name:' | tail -1; grep -c api /etc/hosts",
    ]);
    assert!(
        from_db.contains("Address: 10.123.0.60") && from_db.trim_end().ends_with('1'),
        "{from_db}"
    );
    let shown = berth.ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        "web",
    ]);
    assert_eq!(shown, "appnet=10.123.0.60 front=10.124.0.2 \n");
    assert_eq!(
        berth.ok(&["ps", "--filter", "network=appnet", "--format", "{{.Names}}"]).lines().count(),
        2
    );
    let err = berth.fails(&["network", "rm", "appnet"]);
    assert!(err.contains("web"), "{err}");
    let err = berth.fails(&["network", "connect", "appnet", "web"]);
    assert!(err.contains("already connected"), "{err}");
    berth.ok(&["restart", "-t", "0", "web"]);
    let again = berth.ok(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth1"]);
    assert!(again.contains("10.123.0.60/24"), "{again}");
    berth.ok(&["network", "disconnect", "appnet", "web"]);
    let after = berth.run(&["exec", "web", "ip", "-o", "addr", "show", "eth1"]);
    assert!(!after.status.success(), "eth1 is still there");
    let from_db = berth.ok(&["exec", "db", "sh", "-c", "grep -c api /etc/hosts; true"]);
    assert_eq!(from_db.trim(), "0");
    // The first network can go too, with its published ports: the next network becomes
    // the first (its gateway the default route); a container left with no network keeps
    // its loopback and can join one again, at once and at its next start.
    berth.ok(&["network", "connect", "appnet", "web"]);
    berth.ok(&["network", "disconnect", "front", "web"]);
    let inside = berth.ok(&["exec", "web", "sh", "-c", "ip -o link | grep -c eth; ip route"]);
    assert!(inside.starts_with("1\n") && inside.contains("default via 10.123.0.1"), "{inside}");
    let from_db = berth.ok(&["exec", "db", "sh", "-c", "nslookup web | grep -c 10.123.0."]);
    assert_eq!(from_db.trim(), "1");
    // The port went with the network: another container can publish it.
    berth.ok(&["run", "-d", "--name", "taker", "-p", "127.0.0.1:38371:80", IMAGE, "sleep", "60"]);
    berth.ok(&["rm", "-f", "taker"]);
    berth.ok(&["network", "disconnect", "appnet", "web"]);
    let inside = berth.ok(&["exec", "web", "ip", "-o", "link"]);
    assert!(!inside.contains("eth") && inside.contains("lo"), "{inside}");
    berth.ok(&["network", "connect", "appnet", "web"]);
    let inside = berth.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "ip route | grep default; nslookup db | grep -A1 '^Name:' | tail -1",
    ]);
    assert!(inside.contains("via 10.123.0.1") && inside.contains("10.123.0.50"), "{inside}");
    berth.ok(&["restart", "-t", "0", "web"]);
    let again = berth.ok(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(again.contains("10.123.0."), "{again}");
    berth.ok(&["rm", "-f", "web"]);
    berth.ok(&["network", "rm", "front"]);
    // A container on the default bridge that joins a user network gets the embedded DNS
    // at once (as Docker's), which ends with the container.
    berth.ok(&["run", "-d", "--name", "late", IMAGE, "sleep", "300"]);
    let late = berth.inspect("late")["Id"].as_str().unwrap().to_owned();
    berth.ok(&["network", "connect", "appnet", "late"]);
    let text = berth.ok(&[
        "exec",
        "late",
        "sh",
        "-c",
        "cat /etc/resolv.conf; nslookup db | grep -A1 '^Name:' | tail -1",
    ]);
    assert!(text.contains("nameserver 127.0.0.11") && text.contains("10.123.0.50"), "{text}");
    berth.ok(&["rm", "-f", "late"]);
    let resolver_left = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            text.contains("__dns") && text.contains(&late)
        })
    };
    wait_for("late's resolver to end with it", Duration::from_secs(10), || !resolver_left());
    // A stopped container loses its first network too, and its next start has none (nothing
    // of its last run's address is kept); it can join the network again.
    berth.ok(&["run", "-d", "--name", "resting", "--network", "appnet", IMAGE, "sleep", "300"]);
    berth.ok(&["stop", "-t", "0", "resting"]);
    berth.ok(&["network", "disconnect", "appnet", "resting"]);
    berth.ok(&["start", "resting"]);
    let inside = berth.ok(&["exec", "resting", "sh", "-c", "ip -o link; cat /etc/resolv.conf"]);
    assert!(!inside.contains("eth") && !inside.contains("127.0.0.11"), "{inside}");
    berth.ok(&["network", "connect", "appnet", "resting"]);
    let inside = berth.ok(&["exec", "resting", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(inside.contains("10.123.0."), "{inside}");
    berth.ok(&["rm", "-f", "resting"]);
    // A container that stops is no longer named; the default bridge has no embedded DNS.
    berth.ok(&["stop", "-t", "0", "db"]);
    let gone = berth.run(&["run", "--rm", "--network", "appnet", IMAGE, "nslookup", "db"]);
    assert!(!String::from_utf8_lossy(&gone.stdout).contains("10.123.0.50"));
    let resolv = berth.ok(&["run", "--rm", IMAGE, "cat", "/etc/resolv.conf"]);
    assert!(!resolv.contains("127.0.0.11"), "{resolv}");
    // A chosen address is for user networks, inside their subnet, and not twice.
    berth.ok(&["start", "db"]);
    let err =
        berth.fails(&["run", "--rm", "--network", "appnet", "--ip", "10.123.0.50", IMAGE, "true"]);
    assert!(err.contains("already in use"), "{err}");
    let err =
        berth.fails(&["run", "--rm", "--network", "appnet", "--ip", "10.9.0.5", IMAGE, "true"]);
    assert!(err.contains("outside network appnet"), "{err}");
    let err = berth.fails(&["run", "--rm", "--ip", "172.17.0.99", IMAGE, "true"]);
    assert!(err.contains("user-defined networks only"), "{err}");
    let err = berth.fails(&["run", "--rm", "--network-alias", "x", IMAGE, "true"]);
    assert!(err.contains("user-defined networks only"), "{err}");
    let err = berth.fails(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "--mac-address",
        "01:00:5e:00:00:01",
        IMAGE,
        "true",
    ]);
    assert!(err.contains("multicast"), "{err}");
    berth.ok(&["rm", "-f", "db"]);
    berth.ok(&["network", "rm", "appnet"]);
    let left = Command::new("pgrep").args(["-f", "__dns"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .contains(berth.root().to_str().unwrap())),
        "a resolver outlived its container"
    );
    berth.assert_clean();
}

#[test]
fn root_events_record_what_happens() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let since = berth_stdx::time::unix_now().to_string();
    // A follower started now sees what comes, in order, as it comes.
    let mut follower = berth
        .command()
        .args(["events", "--since", &since, "--filter", "type=container", "--filter", "type=volume"])
        .args(["--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}{{with .Actor.Attributes.exitCode}} {{.}}{{end}}"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    berth.ok(&["volume", "create", "evvol"]);
    let output = berth.run(&["run", "--name", "ev1", "-l", "team=a", IMAGE, "sh", "-c", "exit 3"]);
    assert_eq!(output.status.code(), Some(3));
    berth.ok(&["run", "-d", "--name", "ev2", IMAGE, "sleep", "300"]);
    berth.ok(&["exec", "ev2", "true"]);
    berth.ok(&["pause", "ev2"]);
    berth.ok(&["unpause", "ev2"]);
    berth.ok(&["rename", "ev2", "ev3"]);
    berth.ok(&["stop", "-t", "0", "ev3"]);
    berth.ok(&["rm", "ev1", "ev3"]);
    berth.ok(&["volume", "rm", "evvol"]);
    let mut lines = Vec::new();
    let mut reader = std::io::BufReader::new(follower.stdout.take().unwrap());
    // A watchdog: a follower that never sees the last event is killed, and the test fails
    // on what it did see.
    let follower_pid = follower.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").arg(follower_pid.to_string()).status();
    });
    while !lines.iter().any(|l: &String| l.starts_with("volume destroy")) {
        let mut line = String::new();
        use std::io::BufRead;
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        lines.push(line.trim_end_matches('\n').to_owned());
    }
    let _ = follower.kill();
    let _ = follower.wait();
    // (A volume's events carry no name attribute, as Docker's: Go prints a missing key so.)
    let expected = [
        "volume create <no value>",
        "container create ev1",
        "container start ev1",
        "container die ev1 3",
        "container create ev2",
        "container start ev2",
        "container exec_create: true ev2",
        "container exec_start: true ev2",
        "container exec_die ev2 0",
        "container pause ev2",
        "container unpause ev2",
        "container rename ev3",
        "container kill ev3",
        "container die ev3 137",
        "container stop ev3",
        "container destroy ev1",
        "container destroy ev3",
        "volume destroy <no value>",
    ];
    // `kill` comes once with the stop signal and once with SIGKILL; both are Docker's.
    let mut seen: Vec<&str> = lines.iter().map(String::as_str).collect();
    seen.dedup();
    assert_eq!(seen, expected, "{lines:#?}");
    // The past, filtered: by label, by event, as JSON with Docker's legacy fields.
    let now = (berth_stdx::time::unix_now() + 1).to_string();
    let past = |filters: &[&str], format: &str| {
        let mut args = vec!["events", "--since", &since, "--until", &now, "--format", format];
        for f in filters {
            args.extend_from_slice(&["--filter", f]);
        }
        berth.ok(&args)
    };
    assert_eq!(
        past(
            &["label=team=a", "event=die"],
            "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}"
        ),
        "ev1 3\n"
    );
    let json = past(&["container=ev1", "event=start"], "json");
    let event: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!((event["status"].as_str(), event["from"].as_str()), (Some("start"), Some(IMAGE)));
    assert_eq!(event["Actor"]["ID"].as_str().unwrap().len(), 64);
    let plain = past(&["event=destroy", "container=ev3"], "");
    assert!(plain.contains(" container destroy ") && plain.contains("name=ev3"), "{plain}");
    // exec -d returns once the process runs (or with 126/127 when it cannot), and its
    // exit code is kept: an exec_die event once it ends.
    berth.ok(&["run", "-d", "--name", "ev4", IMAGE, "sleep", "300"]);
    let output = berth.run(&["exec", "-d", "ev4", "sh", "-c", "sleep 0.3; echo unseen; exit 7"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(output.stdout.is_empty(), "exec -d prints nothing");
    assert_eq!(berth.run(&["exec", "-d", "ev4", "nope"]).status.code(), Some(127));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let until = (berth_stdx::time::unix_now() + 1).to_string();
        let codes = berth.ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "container=ev4",
            "--filter",
            "event=exec_die",
            "--format",
            "{{.Actor.Attributes.exitCode}}",
        ]);
        if codes == "7\n" {
            break;
        }
        assert!(Instant::now() < deadline, "no exec_die with code 7: {codes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    berth.ok(&["rm", "-f", "ev4"]);
    // Images too: tag and untag, named as Docker names them.
    berth.ok(&["tag", IMAGE, "evimg:1"]);
    berth.ok(&["rmi", "evimg:1"]);
    let now = (berth_stdx::time::unix_now() + 1).to_string();
    let images = berth.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &now,
        "--filter",
        "type=image",
        "--filter",
        "image=evimg:1",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(images, "tag evimg:1\nuntag evimg:1\n");
    let err = berth.fails(&["events", "--filter", "colour=red"]);
    assert!(err.contains("invalid filter"), "{err}");
    berth.assert_clean();
}

#[test]
fn root_a_restarting_container_stops_and_goes_when_asked() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    for verb in ["stop", "rm"] {
        let name = format!("flapping-{verb}");
        berth.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--restart",
            "always",
            IMAGE,
            "sh",
            "-c",
            "exit 1",
        ]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while berth.inspect(&name)["RestartCount"].as_u64().unwrap_or(0) < 2 {
            assert!(Instant::now() < deadline, "it never restarted");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Between two runs (the monitor waits before each restart) or during one: either
        // way the user's word wins, and no new run starts after it.
        if verb == "stop" {
            berth.ok(&["stop", "-t", "1", &name]);
            let state = berth.inspect(&name)["State"].clone();
            assert_eq!(state["Status"], "exited", "{state}");
            let count = berth.inspect(&name)["RestartCount"].clone();
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(berth.inspect(&name)["RestartCount"], count, "it restarted after stop");
            berth.ok(&["rm", &name]);
        } else {
            berth.ok(&["rm", "-f", &name]);
        }
    }
    berth.assert_clean();
}
