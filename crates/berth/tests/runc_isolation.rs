//! What a container sees from inside: namespaces, mounts, devices, capabilities, rlimits,
//! seccomp, user namespaces, sysctls, time offsets, hooks and terminals.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::{read, root_or_skip, World};
use serde_json::{json, Value};

#[test]
fn root_namespaces_are_private() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["hostname"] = "isolated".into();
        config["domainname"] = "example.test".into();
    });
    let output = world.sh("hostname; cat /proc/sys/kernel/domainname; echo $$; ls /sys/class/net; for ns in mnt uts ipc net pid cgroup; do readlink /proc/self/ns/$ns; done");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "isolated");
    assert_eq!(lines[1], "example.test");
    assert_eq!(lines[2], "1", "the process is pid 1 of its own pid namespace");
    assert_eq!(lines[3], "lo", "a new network namespace has only lo");
    for (index, ns) in ["mnt", "uts", "ipc", "net", "pid", "cgroup"].iter().enumerate() {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("host ns");
        assert_ne!(lines[4 + index], host.to_string_lossy(), "{ns} namespace is the host's");
    }
    // The cgroup namespace makes the container's cgroup its root.
    let cgroup = world.sh("cat /proc/self/cgroup");
    assert!(cgroup.lines().all(|line| line.ends_with(":/")), "{cgroup}");
}

#[test]
fn root_joins_namespaces_by_path() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let first = world.id("first");
    world.ok(&["run", "-d", &first]);
    let pid = world.state(&first)["pid"].as_i64().expect("pid");
    // A second container sharing the first one's network and uts namespaces.
    world.edit(|config| {
        config["hostname"] = Value::Null;
        let namespaces = config["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "network" && ns["type"] != "uts");
        namespaces.push(json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}));
        namespaces.push(json!({"type": "uts", "path": format!("/proc/{pid}/ns/uts")}));
    });
    let output = world.sh("readlink /proc/self/ns/net; hostname");
    let expected = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns");
    assert_eq!(output.lines().next(), Some(expected.to_string_lossy().as_ref()));
    assert_eq!(output.lines().nth(1), Some("berth"));
    world.ok(&["delete", "-f", &first]);
}

#[test]
fn root_mounts_follow_the_spec() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let shared = world.dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::write(shared.join("hello"), "from the host").expect("write");
    let file = world.dir.path().join("single-file");
    std::fs::write(&file, "one file").expect("write");
    world.edit(|config| {
        config["root"]["readonly"] = true.into();
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        mounts.push(json!({"destination": "/data", "type": "bind", "source": shared, "options": ["rbind", "ro"]}));
        mounts.push(json!({"destination": "/etc/one", "type": "bind", "source": file, "options": ["bind"]}));
        mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=700"]}));
    });
    let output = world.sh(
        "cat /data/hello; echo; cat /etc/one; echo; \
         touch /data/x 2>/dev/null && echo data-writable || echo data-readonly; \
         touch /rootfile 2>/dev/null && echo root-writable || echo root-readonly; \
         touch /scratch/x && echo scratch-writable; stat -c %a /scratch; \
         grep ' /scratch ' /proc/self/mounts; grep ' /proc ' /proc/self/mounts | cut -d' ' -f3; \
         grep ' /dev/pts ' /proc/self/mounts | cut -d' ' -f3; grep ' /dev/shm ' /proc/self/mounts | cut -d' ' -f3",
    );
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "from the host");
    assert_eq!(lines[1], "one file");
    assert_eq!(lines[2], "data-readonly");
    assert_eq!(lines[3], "root-readonly");
    assert_eq!(lines[4], "scratch-writable");
    assert_eq!(lines[5], "700");
    assert!(
        lines[6].contains("tmpfs")
            && lines[6].contains("nosuid")
            && lines[6].contains("size=1024k"),
        "{}",
        lines[6]
    );
    assert_eq!(lines[7], "proc");
    assert_eq!(lines[8], "devpts");
    assert_eq!(lines[9], "tmpfs");
    assert!(!world.rootfs().join("rootfile").exists());
    assert!(!shared.join("x").exists());
}

#[test]
fn root_masked_and_readonly_paths() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // Kernels differ in which of the default masked paths they have; use present ones.
    let file = ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a maskable file");
    let dir = ["/proc/acpi", "/sys/firmware"]
        .into_iter()
        .find(|p| std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false));
    let dir = dir.unwrap_or("/proc/acpi");
    let output = world.sh(&format!(
        "wc -c < {file}; ls -A {dir} | wc -l; stat -c %t,%T {file}; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sys-writable || echo sys-readonly; \
         echo 1 > /proc/sysrq-trigger 2>/dev/null && echo trigger-writable || echo trigger-readonly"
    ));
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0].trim(), "0", "{file} is masked by /dev/null");
    assert_eq!(lines[1].trim(), "0", "{dir} is masked by an empty directory");
    assert_eq!(lines[2], "1,3", "the mask is the null device");
    assert_eq!(lines[3], "sys-readonly");
    assert_eq!(lines[4], "trigger-readonly");
}

#[test]
fn root_devices_and_device_cgroup() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["linux"]["devices"] = json!([
            {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600, "uid": 0, "gid": 0},
            {"path": "/dev/mykmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o600, "uid": 0, "gid": 0},
        ]);
        // mknod needs the capability; opening is then up to the device cgroup.
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set].as_array_mut().expect(set).push("CAP_MKNOD".into());
        }
    });
    let output = world.sh(
        "for d in null zero full random urandom tty mynull; do stat -c '%n %F %t,%T %a' /dev/$d; done; \
         for l in fd stdin ptmx; do readlink /dev/$l; done; head -c 4 /dev/zero | wc -c; echo x > /dev/mynull && echo mynull-ok; \
         mknod /dev/disk b 8 0 && (head -c 1 /dev/disk 2>/dev/null && echo disk-open || echo disk-denied); \
         (exec 3>/dev/mykmsg) 2>/dev/null && echo kmsg-open || echo kmsg-denied",
    );
    let lines: Vec<&str> = output.lines().collect();
    for (line, expected) in lines.iter().zip([
        "/dev/null character special file 1,3 666",
        "/dev/zero character special file 1,5 666",
        "/dev/full character special file 1,7 666",
        "/dev/random character special file 1,8 666",
        "/dev/urandom character special file 1,9 666",
        "/dev/tty character special file 5,0 666",
        "/dev/mynull character special file 1,3 600",
    ]) {
        assert_eq!(*line, expected);
    }
    assert_eq!(&lines[7..10], &["/proc/self/fd", "/proc/self/fd/0", "pts/ptmx"]);
    assert_eq!(lines[10].trim(), "4");
    assert_eq!(lines[11], "mynull-ok");
    assert_eq!(
        lines[12], "disk-denied",
        "the device cgroup must deny a block device the spec does not allow"
    );
    // As with runc, creating a node does not allow opening it: the spec's rules decide.
    assert_eq!(lines[13], "kmsg-denied", "a spec device its rules do not allow");
}

#[test]
fn root_capabilities_follow_the_spec() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // The example spec: CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    let expected = format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10));
    let output = world.sh(
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; grep NoNewPrivs /proc/self/status",
    );
    let field = |name: &str| {
        output
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("CapBnd:"), expected);
    assert_eq!(field("CapEff:"), expected);
    assert_eq!(field("CapPrm:"), expected);
    assert_eq!(field("CapInh:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    // Without CAP_SYS_ADMIN mounting is refused; with it, allowed.
    let denied = world.sh("mount -t tmpfs tmpfs /tmp 2>/dev/null && echo mounted || echo refused");
    assert_eq!(denied.trim(), "refused");
    world.edit(|config| {
        for set in ["bounding", "effective", "permitted"] {
            config["process"]["capabilities"][set]
                .as_array_mut()
                .expect(set)
                .push("CAP_SYS_ADMIN".into());
        }
    });
    let allowed = world.sh("mount -t tmpfs tmpfs /tmp && echo mounted");
    assert_eq!(allowed.trim(), "mounted");
    // Ambient capabilities reach a non-root user when inheritable too.
    world.edit(|config| {
        config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        config["process"]["capabilities"]["inheritable"] = json!(["CAP_NET_BIND_SERVICE"]);
        config["process"]["capabilities"]["ambient"] = json!(["CAP_NET_BIND_SERVICE"]);
    });
    let output = world.sh("grep CapAmb /proc/self/status; id -u");
    assert!(output.contains(&format!("{:016x}", 1u64 << 10)), "{output}");
    assert!(output.ends_with("1000\n"), "{output}");
}

#[test]
fn root_user_groups_umask_rlimits_and_oom_score() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["process"]["user"] = json!({"uid": 1000, "gid": 100, "additionalGids": [5, 65534], "umask": 0o077});
        config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 600}, {"type": "RLIMIT_NPROC", "soft": 300, "hard": 300}]);
        config["process"]["oomScoreAdj"] = json!(300);
        config["process"]["cwd"] = "/tmp".into();
    });
    let output = world.sh("id -u; id -g; id -G; umask; ulimit -n; ulimit -Hn; ulimit -u; cat /proc/self/oom_score_adj; pwd");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "100");
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), vec!["100", "5", "65534"]);
    assert_eq!(lines[3], "0077");
    assert_eq!(lines[4], "512");
    assert_eq!(lines[5], "600");
    assert_eq!(lines[6], "300");
    assert_eq!(lines[7], "300");
    assert_eq!(lines[8], "/tmp");
}

#[test]
fn root_seccomp_filters_syscalls_and_arguments() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                // chmod to mode 0777 exactly is refused; other modes pass.
                {"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_syscall_in_any_kernel"], "action": "SCMP_ACT_KILL"}
            ]
        });
    });
    let output = world.sh(
        "mkdir /tmp/d 2>&1 || true; touch /tmp/f && echo touched; \
         chmod 644 /tmp/f && echo chmod-644-ok; chmod 777 /tmp/f 2>&1 || true; grep Seccomp: /proc/self/status",
    );
    assert!(output.contains("Operation not permitted"), "mkdir must fail with EPERM:\n{output}");
    assert!(output.contains("touched"));
    assert!(output.contains("chmod-644-ok"));
    assert!(output.contains("Permission denied"), "chmod 777 must fail with EACCES:\n{output}");
    assert!(output.contains("Seccomp:\t2"), "{output}");
    // A killing default action stops the process with SIGSYS.
    world.edit(|config| {
        config["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]});
        config["process"]["args"] = json!(["sh", "-c", "echo $PPID; true"]);
    });
    // busybox sh reads its ppid at start-up: it dies by SIGSYS (31).
    assert_eq!(world.run(&world.id("sigsys")).0, 128 + 31);
}

#[test]
fn root_user_namespace_maps_ids() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let shared = world.dir.path().join("owned");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    // The rootfs must be reachable by the mapped root: hand it to host uid 100000.
    let status = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(world.rootfs())
        .status()
        .expect("chown");
    assert!(status.success());
    world.edit(|config| {
        config["linux"]["namespaces"].as_array_mut().expect("ns").push(json!({"type": "user"}));
        config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        config["mounts"].as_array_mut().expect("mounts").push(json!({"destination": "/owned", "type": "bind", "source": shared, "options": ["rbind"]}));
    });
    let output =
        world.sh("id -u; cat /proc/self/uid_map; touch /owned/file; ls /dev/null && echo dev-ok");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), vec!["0", "100000", "65536"]);
    assert_eq!(lines.last(), Some(&"dev-ok"));
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(shared.join("file")).expect("file"));
    assert_eq!(owner, 100000, "container root writes as host uid 100000");
}

#[test]
fn root_sysctls_and_time_offsets() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["linux"]["sysctl"] =
            json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789"});
        config["linux"]["namespaces"].as_array_mut().expect("ns").push(json!({"type": "time"}));
        config["linux"]["timeOffsets"] =
            json!({"boottime": {"secs": 864000}, "monotonic": {"secs": 864000}});
    });
    let output = world
        .sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax; cut -d. -f1 /proc/uptime");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "1");
    assert_eq!(lines[1], "123456789");
    let host_uptime: u64 =
        read("/proc/uptime").split('.').next().and_then(|s| s.parse().ok()).expect("uptime");
    let uptime: u64 = lines[2].parse().expect("uptime");
    assert!(
        uptime >= host_uptime + 864000,
        "boottime offset not applied: {uptime} vs host {host_uptime}"
    );
    assert_eq!(
        read("/proc/sys/net/ipv4/ip_forward").trim(),
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read").trim()
    );
}

#[test]
fn root_no_pivot_and_rootfs_propagation() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| config["linux"]["rootfsPropagation"] = "private".into());
    let output = world.sh("ls /bin/busybox && grep -c . /proc/self/mountinfo");
    assert!(output.starts_with("/bin/busybox"));
    world.set_args(&["sh", "-c", "cat /proc/self/mountinfo | head -1"]);
    let id = world.id("nopivot");
    let output = world.ok(&["run", "--no-pivot", &id]);
    assert!(output.contains(" / "), "{output}");
}

#[test]
fn root_hooks_run_with_state_on_stdin() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let log = world.dir.path().join("hooks");
    std::fs::create_dir_all(&log).expect("mkdir");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}", log.display())], "env": ["PATH=/bin:/usr/bin"]});
    world.edit(|config| {
        config["hooks"] = json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "createContainer": [hook("createContainer")],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/startContainer"]}],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let id = world.id("hooks");
    world.ok(&["run", &id]);
    for (name, status) in [
        // The runtime spec's lifecycle (and crun): prestart runs on a created environment.
        ("prestart", "created"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let state: Value =
            serde_json::from_str(&read(log.join(name))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(state["id"], id.as_str(), "{name}");
        assert_eq!(state["status"], status, "{name}");
        assert_eq!(state["ociVersion"], "1.2.0", "{name}");
    }
    // startContainer runs inside the container: its path is resolved in the container.
    let inside: Value =
        serde_json::from_str(&read(world.rootfs().join("tmp/startContainer"))).expect("state");
    assert_eq!(inside["status"], "created");
    assert!(inside["pid"].as_i64().unwrap_or(0) > 0);
}

#[test]
fn root_failing_or_slow_hooks_fail_create_and_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| config["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]}));
    let id = world.id("badhook");
    let error = world.fails(&["create", &id]);
    assert!(
        error.contains("createRuntime hook")
            && error.contains("exit status 3")
            && error.contains("nope"),
        "{error}"
    );
    world.assert_no_leftovers(&id);
    world.edit(|config| {
        config["hooks"] =
            json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]})
    });
    let started = std::time::Instant::now();
    let error = world.fails(&["create", &id]);
    assert!(error.contains("timed out after 1s"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(20));
    world.assert_no_leftovers(&id);
    // A failing poststart hook is only a warning.
    world.edit(|config| config["hooks"] = json!({"poststart": [{"path": "/bin/false"}]}));
    let output = world.runc(&["run", &id]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr).contains("poststart hook"));
}

/// Receives one descriptor over a unix socket connection.
fn receive_fd(listener: &UnixListener) -> OwnedFd {
    use berth_sys::nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (stream, _) = listener.accept().expect("accept");
    let mut buffer = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
    let mut space = berth_sys::nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
        .expect("recvmsg");
    for control in message.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = control {
            return berth_sys::process::own_fd(fds[0]).expect("fd");
        }
    }
    panic!("no descriptor received");
}

#[test]
fn root_terminal_through_console_socket() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sh", "-c", "tty; stty size; echo ready; read line; echo got:$line"]);
    world.edit(|config| {
        config["process"]["terminal"] = true.into();
        config["process"]["consoleSize"] = json!({"height": 33, "width": 101});
    });
    let socket = world.dir.path().join("console.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let id = world.id("tty");
    let receiver = std::thread::spawn(move || receive_fd(&listener));
    world.ok(&["create", "--console-socket", socket.to_str().expect("utf-8"), &id]);
    let master = std::fs::File::from(receiver.join().expect("receiver"));
    world.ok(&["start", &id]);
    let mut output = String::new();
    let mut reader = std::io::BufReader::new(master.try_clone().expect("clone"));
    while !output.contains("ready") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        output.push_str(&line);
    }
    std::io::Write::write_all(&mut &master, b"hello\n").expect("write");
    let mut line = String::new();
    while !line.contains("got:") {
        line.clear();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
    }
    assert!(output.contains("/dev/pts/0"), "{output}");
    assert!(output.contains("33 101"), "{output}");
    assert!(line.contains("got:hello"), "{line}");
    world.wait_status(&id, "stopped");
    world.ok(&["delete", &id]);
}

#[test]
fn root_foreground_run_with_a_terminal_relays_the_pty() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&[
        "sh",
        "-c",
        "tty; echo cols=$(stty size | cut -d' ' -f2); read x; echo read:$x; exit 5",
    ]);
    world.edit(|config| config["process"]["terminal"] = true.into());
    // Drive berth-runc through a pty of our own, as a user's terminal would.
    let pty = berth_sys::nix::pty::openpty(None, None).expect("openpty");
    berth_sys::tty::set_window_size(
        std::os::fd::AsFd::as_fd(&pty.slave),
        berth_sys::tty::WindowSize { rows: 20, cols: 77 },
    )
    .expect("winsize");
    let slave = std::fs::File::from(pty.slave);
    let id = world.id("fgtty");
    let mut child = world
        .command()
        .args(["run", &id])
        .current_dir(&world.bundle.dir)
        .stdin(slave.try_clone().expect("clone"))
        .stdout(slave.try_clone().expect("clone"))
        .stderr(slave)
        .spawn()
        .expect("spawn");
    let master = std::fs::File::from(pty.master);
    let mut reader = std::io::BufReader::new(master.try_clone().expect("clone"));
    let mut seen = String::new();
    while !seen.contains("cols=") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        seen.push_str(&line);
    }
    std::io::Write::write_all(&mut &master, b"typed\r").expect("write");
    while !seen.contains("read:typed") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).expect("read") == 0 {
            break;
        }
        seen.push_str(&line);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(5), "{seen}");
    assert!(seen.contains("/dev/pts/0"), "{seen}");
    assert!(
        seen.contains("cols=77"),
        "the window size must be copied from the caller's terminal: {seen}"
    );
    assert!(seen.contains("read:typed"), "{seen}");
    world.assert_no_leftovers(&id);
}

#[test]
fn root_cgroup_path_and_limits_apply() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let id = world.id("cg");
    let path = format!("/berth-test/{id}");
    world.edit(|config| {
        config["linux"]["cgroupsPath"] = path.clone().into();
        config["linux"]["resources"]["memory"] = json!({"limit": 50 << 20});
        config["linux"]["resources"]["pids"] = json!({"limit": 42});
    });
    world.set_args(&["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; grep memory /proc/self/cgroup"]);
    let output = world.ok(&["run", &id]);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], (50u64 << 20).to_string());
    assert_eq!(lines[1], "42");
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).exists(),
        "the cgroup must be removed"
    );
    let _ = std::fs::remove_dir("/sys/fs/cgroup/memory/berth-test");
}

/// Receives the seccomp notify descriptor and the container process state from a listener
/// socket connection.
fn receive_listener_message(listener: &UnixListener) -> (OwnedFd, Value) {
    use berth_sys::nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (stream, _) = listener.accept().expect("accept");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
    let mut space = berth_sys::nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
        .expect("recvmsg");
    let length = message.bytes;
    let mut fd = None;
    for control in message.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = control {
            fd = Some(berth_sys::process::own_fd(fds[0]).expect("fd"));
        }
    }
    let state = serde_json::from_slice(&buffer[..length]).expect("state json");
    (fd.expect("a notify descriptor"), state)
}

#[test]
fn root_seccomp_notify_hands_the_descriptor_to_the_listener() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sh", "-c", "mkdir /tmp/notified 2>&1; echo done"]);
    let socket = world.dir.path().join("seccomp.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    world.edit(|config| {
        config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": socket,
            "listenerMetadata": "from-the-test",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    let id = world.id("notify");
    let receiver = std::thread::spawn(move || {
        let (fd, state) = receive_listener_message(&listener);
        // Closing the descriptor without answering makes the pending and later notified
        // syscalls fail with ENOSYS: the container goes on.
        drop(fd);
        state
    });
    let output = world.ok(&["run", &id]);
    let state = receiver.join().expect("receiver");
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["metadata"], "from-the-test");
    assert_eq!(state["state"]["id"], id.as_str());
    assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{state}");
    assert!(output.contains("Function not implemented") && output.contains("done"), "{output}");
    assert!(!world.rootfs().join("tmp/notified").exists());
}

#[test]
fn root_personality_and_scheduler() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["linux"]["personality"] = json!({"domain": "LINUX32"});
        config["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "nice": 7});
    });
    // Field 19 of /proc/<pid>/stat is the nice value.
    let output = world.sh("uname -m; cut -d' ' -f19 /proc/self/stat");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "i686", "LINUX32 personality reports a 32-bit machine");
    assert_eq!(lines[1], "7");
}

#[test]
fn root_exec_with_a_terminal_in_the_foreground() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let id = world.id("exectty");
    world.ok(&["run", "-d", &id]);
    let pty = berth_sys::nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = world
        .command()
        .args(["exec", "-t", &id, "sh", "-c", "tty; read x; echo got-$x; exit 4"])
        .stdin(slave.try_clone().expect("clone"))
        .stdout(slave.try_clone().expect("clone"))
        .stderr(slave)
        .spawn()
        .expect("spawn");
    let master = std::fs::File::from(pty.master);
    let mut reader = std::io::BufReader::new(master.try_clone().expect("clone"));
    let mut seen = String::new();
    while !seen.contains("/dev/pts/") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        seen.push_str(&line);
    }
    std::io::Write::write_all(&mut &master, b"abc\r").expect("write");
    while !seen.contains("got-abc") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).expect("read") == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert_eq!(child.wait().expect("wait").code(), Some(4), "{seen}");
    assert!(seen.contains("got-abc"), "{seen}");
    world.ok(&["delete", "-f", &id]);
}
