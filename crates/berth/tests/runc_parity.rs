//! Where real callers of runc (podman, containerd) and the runtime spec found berth-runc
//! different from runc and crun: each case runs the same bundle under berth-runc and under
//! runc where runc behaves as the spec says, and through podman (`--runtime`) and
//! containerd (`ctr run --runc-binary`) where they were the ones to notice.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{capture, root_or_skip, World, BIN};
use serde_json::json;

fn runc(world: &World, args: &[&str]) -> Output {
    let mut command = Command::new("runc");
    command.arg("--root").arg(world.dir.path().join("runc-root")).args(args);
    command.current_dir(&world.bundle.dir);
    capture(&mut command)
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `command` with the status and the whole output.
fn sh(command: &str) -> Output {
    capture(Command::new("sh").arg("-c").arg(command))
}

fn mount_points(prefix: &Path) -> Vec<String> {
    let prefix = prefix.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_owned))
        .filter(|point| point.starts_with(&prefix))
        .collect()
}

/// The test's directory as a shared mount of its own (removed on drop), so that the
/// bundle sits under a shared parent as it does under containerd and podman.
struct SharedDir(PathBuf);

impl SharedDir {
    fn new(path: &Path) -> SharedDir {
        let done = sh(&format!("mount --bind {0} {0} && mount --make-shared {0}", path.display()));
        assert!(done.status.success(), "{}", text(&done));
        SharedDir(path.to_path_buf())
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        for point in mount_points(&self.0).into_iter().rev() {
            let _ = sh(&format!("umount -l '{point}'"));
        }
    }
}

/// A private containerd (its own root, state and socket) with the CRI plugin off.
struct Containerd {
    child: std::process::Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                dir.display(),
                socket.display()
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("containerd is needed for these tests: apt-get install containerd");
        let containerd = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.socket).args(args);
        capture(&mut command)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// podman with private storage, no network and the limits this machine allows.
fn podman(dir: &Path, runtime: &str, args: &[&str]) -> Output {
    let mut command = Command::new("podman");
    command
        .arg("--root")
        .arg(dir.join("podman-root"))
        .arg("--runroot")
        .arg(dir.join("podman-run"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", runtime])
        .args(["run", "--rm", "--network", "none"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"])
        .args(args);
    capture(&mut command)
}

/// Item 1: a bind mount with `rshared` propagation stays in the host's peer group, so what
/// the container mounts under it reaches the host (Kubernetes' Bidirectional), and the
/// rootfs's own bind never appears on the host.
#[test]
fn root_rshared_mounts_reach_the_host() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // As under containerd and podman: the rootfs is a mount of its own, under a shared
    // parent that also holds the volume's source.
    let shared = SharedDir::new(world.dir.path());
    let rootfs_mount = sh(&format!("mount --bind {0} {0}", world.rootfs().display()));
    assert!(rootfs_mount.status.success(), "{}", text(&rootfs_mount));
    let source = world.dir.path().join("shared-src");
    std::fs::create_dir_all(source.join("inner")).expect("mkdir");
    let inner = source.join("inner");
    let script = "mount -t tmpfs inner /p/inner && echo mounted";
    world.edit(|config| {
        config["linux"]["rootfsPropagation"] = "rshared".into();
        config["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/p", "type": "bind", "source": source, "options": ["rbind", "rshared"]
        }));
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set] = json!(["CAP_SYS_ADMIN"]);
        }
        config["process"]["args"] = json!(["sh", "-c", script]);
    });
    let rootfs = world.rootfs();
    let check = |who: &str, output: Output| {
        assert!(stdout(&output).contains("mounted"), "{who}: {}", text(&output));
        let seen = mount_points(&inner);
        assert_eq!(seen.len(), 1, "{who}: the container's mount must reach the host: {seen:?}");
        assert!(sh(&format!("umount '{}'", inner.display())).status.success());
        let leaked = mount_points(&rootfs);
        assert_eq!(leaked.len(), 1, "{who}: mounts of the container left on the host: {leaked:?}");
    };
    let id = world.id("rshared");
    check("runc", runc(&world, &["run", &id]));
    check("berth-runc", world.runc(&["run", &id]));

    // The callers that found it: podman's `:rshared` and containerd's --rootfs-propagation.
    let rootfs_arg = rootfs.to_string_lossy().into_owned();
    let volume = format!("{}:/p:rshared", source.display());
    let output = podman(
        world.dir.path(),
        BIN,
        &[
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "-v",
            &volume,
            "--rootfs",
            &rootfs_arg,
            "sh",
            "-c",
            script,
        ],
    );
    check("podman --runtime berth-runc", output);
    let containerd = Containerd::start(&world.dir.path().join("containerd"));
    let mount = format!("type=bind,src={},dst=/p,options=rbind:rshared", source.display());
    let output = containerd.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        BIN,
        "--privileged",
        "--rootfs-propagation",
        "rshared",
        "--mount",
        &mount,
        "--rootfs",
        &rootfs_arg,
        &world.id("ctr"),
        "/bin/sh",
        "-c",
        script,
    ]);
    check("ctr run --runc-binary berth-runc", output);
    drop(shared);
}

/// Item 2: with CAP_MKNOD a container can make `c 5:1`, but not open the host's console.
#[test]
fn root_the_host_console_cannot_be_opened() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set] = json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE"]);
        }
        config["process"]["args"] = json!([
            "sh",
            "-c",
            "mknod /dev/hostconsole c 5 1 && echo made; \
             (: > /dev/hostconsole) 2>/dev/null && echo opened || echo refused"
        ]);
    });
    let id = world.id("console");
    let under_runc = stdout(&runc(&world, &["run", &id]));
    let under_berth = stdout(&world.runc(&["run", &id]));
    assert_eq!(under_runc, "made\nrefused\n", "runc");
    assert_eq!(under_berth, under_runc, "berth-runc must refuse what runc refuses");
}

/// Item 3: without no_new_privs the filter goes in before the capabilities drop; a profile
/// that refuses getcwd must still let the container start (crun does; runc fails), and the
/// working directory is still checked.
#[test]
fn root_a_profile_refusing_getcwd_does_not_stop_the_container() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["echo", "ran"]);
    world.edit(|config| {
        config["process"]["noNewPrivileges"] = false.into();
        config["process"]["cwd"] = "/tmp".into();
        config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]
        });
    });
    let (code, out, err) = world.run(&world.id("getcwd"));
    assert_eq!((code, out.as_str()), (0, "ran\n"), "{err}");
    // With no_new_privs the same profile works too.
    world.edit(|config| config["process"]["noNewPrivileges"] = true.into());
    let (code, out, err) = world.run(&world.id("getcwd-nnp"));
    assert_eq!((code, out.as_str()), (0, "ran\n"), "{err}");
    // And the program runs under the filter.
    world.edit(|config| {
        config["process"]["args"] = json!(["grep", "^Seccomp:", "/proc/self/status"])
    });
    let (_, out, _) = world.run(&world.id("getcwd-inside"));
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["Seccomp:", "2"], "{out}");
}

/// Item 4: a config without a mount namespace runs, sharing the host's mount table; what
/// it mounted is gone after `delete`; what cannot be done without one is refused with the
/// reason, as runc refuses it.
#[test]
fn root_runs_without_a_mount_namespace() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        let namespaces = config["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "mount");
        config["mounts"] = json!([{"destination": "/proc", "type": "proc", "source": "proc"}]);
        config["linux"]["maskedPaths"] = json!([]);
        config["linux"]["readonlyPaths"] = json!([]);
        config["process"]["args"] =
            json!(["sh", "-c", "readlink /proc/self/ns/mnt; ls /bin/busybox"]);
    });
    let host = std::fs::read_link("/proc/self/ns/mnt").expect("host mnt ns");
    let id = world.id("nomntns");
    let output = world.ok(&["run", &id]);
    assert_eq!(output, format!("{}\n/bin/busybox\n", host.to_string_lossy()));
    world.assert_no_leftovers(&id);

    // A created container's mounts are on the host until it is deleted.
    let id = world.id("nomntns-created");
    world.set_args(&["sleep", "100"]);
    world.ok(&["create", &id]);
    assert_eq!(mount_points(&world.rootfs()).len(), 1, "its /proc");
    world.ok(&["delete", "--force", &id]);
    world.assert_no_leftovers(&id);

    // Masking needs a mount namespace of the container's own: both runtimes refuse it.
    world.edit(|config| config["linux"]["maskedPaths"] = json!(["/proc/kcore"]));
    let id = world.id("nomntns-masked");
    let under_runc = runc(&world, &["run", &id]);
    assert!(!under_runc.status.success(), "runc: {}", text(&under_runc));
    let err = world.fails(&["run", &id]);
    assert!(err.contains("linux.maskedPaths") && err.contains("mount namespace"), "{err}");
    world.assert_no_leftovers(&id);
}

/// Item 6: `delete --force` of a container that does not exist succeeds silently, as
/// runc's does, so callers cleaning up after a failed create report one error only.
#[test]
fn root_forced_delete_of_a_missing_container_succeeds() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let under_runc = runc(&world, &["delete", "--force", "nosuch"]);
    let under_berth = world.runc(&["delete", "--force", "nosuch"]);
    for (who, output) in [("runc", &under_runc), ("berth-runc", &under_berth)] {
        assert!(output.status.success(), "{who}: {}", text(output));
        assert!(output.stderr.is_empty(), "{who}: {}", text(output));
    }
    // Without --force it is still an error.
    let err = world.fails(&["delete", "nosuch"]);
    assert!(err.contains("does not exist"), "{err}");
}

/// Items 6 and 7: a program that cannot be executed fails `create` (not `start`), so podman
/// reports "permission denied" with 126 and one error, as with runc; containerd too.
#[test]
fn root_a_program_that_cannot_run_fails_create() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["/notexec"]);
    std::fs::write(world.rootfs().join("notexec"), "#!/bin/sh\necho never\n").expect("write");
    for (program, needle) in [("/notexec", "permission denied"), ("/bin", "is a directory")] {
        world.set_args(&[program]);
        let id = world.id("notexec");
        let under_runc = runc(&world, &["create", &id]);
        assert!(!under_runc.status.success(), "runc: {}", text(&under_runc));
        let _ = runc(&world, &["delete", "--force", &id]);
        let err = world.fails(&["create", &id]);
        assert!(err.contains(needle), "{program}: {err}");
        world.assert_no_leftovers(&id);
    }
    let rootfs = world.rootfs().to_string_lossy().into_owned();
    let mut outputs = Vec::new();
    for runtime in ["runc", BIN] {
        let output = podman(world.dir.path(), runtime, &["--rootfs", &rootfs, "/notexec"]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(126), "{runtime}: {}", text(&output));
        assert!(stderr.contains("permission denied"), "{runtime}: {stderr}");
        outputs.push(stderr.lines().filter(|l| !l.trim().is_empty()).count());
    }
    assert_eq!(outputs[1], outputs[0], "podman prints as many error lines as with runc");
    let containerd = Containerd::start(&world.dir.path().join("containerd"));
    let output = containerd.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        BIN,
        "--rootfs",
        &rootfs,
        &world.id("ctr"),
        "/notexec",
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("permission denied"), "{}", text(&output));
}

/// Item 5 is in runc_isolation's hook test (prestart sees "created"). Item 8: the cgroup
/// mount looks as runc's: the same mount points, the tmpfs holding v1 hierarchies
/// writable, the hierarchies as the spec says, and no cgroup2 tree on a hybrid host.
#[test]
fn root_cgroup_mounts_match_runc() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // Mount point, options and filesystem type (after the optional fields and `-`).
    let script = "grep ' /sys/fs/cgroup' /proc/self/mountinfo | \
        while read -r _ _ _ _ point options rest; do echo \"$point $options ${rest#*- }\"; done";
    for own_namespace in [true, false] {
        world.edit(|config| {
            let namespaces = config["linux"]["namespaces"].as_array_mut().expect("namespaces");
            namespaces.retain(|ns| ns["type"] != "cgroup");
            if own_namespace {
                namespaces.push(json!({"type": "cgroup"}));
            }
            config["process"]["args"] = json!(["sh", "-c", script]);
        });
        let id = world.id("cgmounts");
        let normalize = |text: String| {
            let mut lines: Vec<String> = text
                .lines()
                .map(|line| {
                    // Mount point, the per-mount flags that matter, and the filesystem type.
                    let fields: Vec<&str> = line.split(' ').collect();
                    let flags: Vec<&str> = fields[1]
                        .split(',')
                        .filter(|f| ["ro", "rw", "nosuid", "nodev", "noexec"].contains(f))
                        .collect();
                    format!("{} {} {}", fields[0], flags.join(","), fields.get(2).unwrap_or(&""))
                })
                .collect();
            lines.sort();
            lines
        };
        let under_runc = normalize(stdout(&runc(&world, &["run", &id])));
        let under_berth = normalize(world.ok(&["run", &id]));
        assert!(!under_runc.is_empty());
        assert_eq!(under_berth, under_runc, "cgroup namespace: {own_namespace}");
        assert!(!under_berth.iter().any(|l| l.starts_with("/sys/fs/cgroup/unified ")));
    }
}
