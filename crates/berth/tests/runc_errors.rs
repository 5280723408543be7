//! Bad input and hostile images: each mistake is a clear error with a non-zero exit and
//! leaves nothing behind; nothing in a rootfs can make the runtime write outside it.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use common::{read, root_or_skip, World};
use serde_json::json;

#[test]
fn root_unknown_fields_are_ignored_with_a_warning() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    world.edit(|config| {
        config["someFutureField"] = json!({"x": 1});
        config["process"]["alsoNew"] = true.into();
    });
    let output = world.runc(&["run", &world.id("unknown")]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown property someFutureField") && stderr.contains("process.alsoNew"),
        "{stderr}"
    );
}

#[test]
fn root_malformed_configs_are_clear_errors_without_leftovers() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c["process"]["user"]["uid"] = "zero".into()), "process.user.uid"),
        (
            Box::new(|c| c["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "bogus"}])),
            "linux.namespaces[1].type",
        ),
        (Box::new(|c| c["root"]["path"] = "no-such-rootfs".into()), "create it or fix root.path"),
        (Box::new(|c| c["process"]["args"] = json!([])), "process.args"),
        (Box::new(|c| c["process"]["cwd"] = "relative".into()), "process.cwd"),
        (Box::new(|c| c["process"]["cwd"] = "/no/such/dir".into()), "/no/such/dir"),
        (
            Box::new(|c| c["process"]["args"] = json!(["no-such-program"])),
            "executable file not found",
        ),
        (Box::new(|c| c["process"]["terminal"] = true.into()), "--console-socket"),
        (
            Box::new(|c| c["linux"]["cgroupsPath"] = "../../escape".into()),
            "leaves the cgroup hierarchy",
        ),
        (Box::new(|c| c["linux"]["resources"]["memory"] = json!({"limit": -5})), "memory.limit"),
        (
            Box::new(|c| {
                c["linux"]["resources"]["devices"] =
                    json!([{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwx"}])
            }),
            "rwx",
        ),
        (Box::new(|c| c["linux"]["sysctl"] = json!({"kernel.panic": "1"})), "not namespaced"),
        (
            Box::new(|c| {
                c["mounts"] =
                    json!([{"destination": "relative", "type": "tmpfs", "source": "tmpfs"}])
            }),
            "mounts[0].destination",
        ),
        (
            Box::new(|c| c["hooks"] = json!({"prestart": [{"path": "relative/hook"}]})),
            "not absolute",
        ),
        (
            Box::new(|c| {
                c["linux"]["seccomp"] =
                    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]})
            }),
            "linux.seccomp.architectures",
        ),
        (
            Box::new(|c| c["linux"]["intelRdt"] = json!({"closID": "x"})),
            "Intel RDT is not supported",
        ),
        (
            Box::new(|c| {
                c["mounts"] = json!([{"destination": "/m", "type": "bind", "source": "/tmp", "options": ["bind"],
                    "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
                    "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}])
            }),
            "id-mapped mounts",
        ),
    ];
    let original = world.bundle.config().expect("config");
    for (change, expected) in cases {
        let mut config = original.clone();
        change(&mut config);
        world.bundle.write_config(&config).expect("write");
        let id = world.id("bad");
        let output = world.runc(&["create", &id]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "expected failure mentioning {expected:?}, got {stderr}"
        );
        assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
        world.assert_no_leftovers(&id);
    }
    world.bundle.write_config(&original).expect("restore");
    std::fs::write(world.bundle.config_path(), "{ not json").expect("write");
    let error = world.fails(&["create", &world.id("json")]);
    assert!(error.contains("config.json") && error.contains("line 1"), "{error}");
}

#[test]
fn root_commands_on_missing_containers_and_bad_ids() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    for args in [
        vec!["state", "ghost"],
        vec!["start", "ghost"],
        vec!["kill", "ghost"],
        vec!["delete", "ghost"],
        vec!["exec", "ghost", "true"],
        vec!["pause", "ghost"],
        vec!["resume", "ghost"],
        vec!["ps", "ghost"],
        vec!["events", "--stats", "ghost"],
        vec!["update", "--pids-limit", "3", "ghost"],
    ] {
        let output = world.runc(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("\\\"ghost\\\" does not exist"),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for bad in ["../escape", "a/b", ""] {
        let error = world.fails(&["create", bad]);
        assert!(error.contains("invalid container id"), "{bad}: {error}");
    }
    assert!(!world.dir.path().join("escape").exists());
    let error = world.fails(&["kill", "ghost", "NOSUCHSIGNAL"]);
    assert!(error.contains("unknown signal"), "{error}");
}

#[test]
fn root_duplicate_ids_are_refused() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let id = world.id("dup");
    world.ok(&["create", &id]);
    let error = world.fails(&["create", &id]);
    assert!(error.contains("already exists"), "{error}");
    assert_eq!(world.status(&id), "created", "the first container must be unharmed");
    world.ok(&["delete", &id]);
    world.assert_no_leftovers(&id);
}

#[test]
fn root_negative_oom_score_is_explained() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["cat", "/proc/self/oom_score_adj"]);
    world.edit(|config| config["process"]["oomScoreAdj"] = json!(-500));
    let id = world.id("oom");
    let output = world.runc(&["run", &id]);
    if output.status.success() {
        // This host grants CAP_SYS_RESOURCE: the value must then really be applied.
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "-500");
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("oomScoreAdj to -500") && stderr.contains("CAP_SYS_RESOURCE"),
            "{stderr}"
        );
    }
    world.assert_no_leftovers(&id);
}

#[test]
fn root_symlinks_in_the_rootfs_cannot_redirect_mounts_or_devices() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let outside = world.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let rootfs = world.rootfs();
    // /escape -> the host directory; /dev -> an absolute host path.
    std::os::unix::fs::symlink(&outside, rootfs.join("escape")).expect("symlink");
    std::fs::remove_dir(rootfs.join("dev")).expect("rmdir");
    let host_dev = world.dir.path().join("host-dev");
    std::os::unix::fs::symlink(&host_dev, rootfs.join("dev")).expect("symlink");
    world.edit(|config| {
        config["mounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"destination": "/escape/mnt", "type": "tmpfs", "source": "tmpfs"}));
        config["mounts"].as_array_mut().expect("mounts").push(
            json!({"destination": "/../../../../escape2", "type": "tmpfs", "source": "tmpfs"}),
        );
    });
    world.set_args(&["sh", "-c", "ls /dev/null && grep -c tmpfs /proc/self/mounts"]);
    let id = world.id("symlink");
    let output = world.ok(&["run", &id]);
    assert!(output.starts_with("/dev/null"), "{output}");
    assert!(!outside.join("mnt").exists(), "a mount target was created outside the rootfs");
    assert!(!host_dev.exists(), "/dev was followed out of the rootfs");
    assert!(!world.dir.path().join("escape2").exists());
    // What was created landed inside the rootfs, where the links resolve when rooted there.
    let inside = rootfs.join(outside.strip_prefix("/").expect("absolute")).join("mnt");
    assert!(inside.is_dir(), "{} missing", inside.display());
    // The /dev tmpfs was mounted there, inside the rootfs, and the devices created in it.
    assert!(rootfs.join(host_dev.strip_prefix("/").expect("absolute")).is_dir());
    world.assert_no_leftovers(&id);
}

#[test]
fn root_a_fake_dev_null_is_not_used_to_mask_paths() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // /dev is bind-mounted from a directory whose "null" is a regular file: masking must
    // refuse rather than bind that file over /proc paths.
    let fake_dev = world.dir.path().join("fake-dev");
    std::fs::create_dir_all(&fake_dev).expect("mkdir");
    std::fs::write(fake_dev.join("null"), "not the null device").expect("write");
    world.edit(|config| {
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        mounts.retain(|m| !m["destination"].as_str().unwrap_or("").starts_with("/dev"));
        mounts.push(json!({"destination": "/dev", "type": "bind", "source": fake_dev, "options": ["rbind"]}));
    });
    let id = world.id("fakenull");
    let error = world.fails(&["run", &id]);
    assert!(error.contains("not the null device"), "{error}");
    world.assert_no_leftovers(&id);
}

#[test]
fn root_no_descriptor_leaks_into_the_container() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let script = "ls /proc/self/fd | tr '\\n' ' '";
    world.set_args(&["sh", "-c", script]);
    let id = world.id("fds");
    // The caller holds extra descriptors (5 and 7) that must not reach the container; 3 is
    // passed on on purpose with --preserve-fds 1.
    let command = format!(
        "exec 3</etc/hostname 5</etc/hostname 7</etc/passwd; {} --root {} run --preserve-fds 1 {id}",
        common::BIN,
        world.root.display()
    );
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(&world.bundle.dir)
        .output()
        .expect("sh");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let fds: Vec<u32> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    // 0-2, the preserved 3, and ls's own handle on /proc/self/fd.
    assert!(
        fds.len() == 5 && fds[..4] == [0, 1, 2, 3],
        "unexpected descriptors in the container: {fds:?}"
    );
    // exec too.
    world.set_args(&["sleep", "1000"]);
    let running = world.id("fdexec");
    world.ok(&["run", "-d", &running]);
    let command = format!(
        "exec 5</etc/hostname; {} --root {} exec {running} sh -c \"{script}\"",
        common::BIN,
        world.root.display()
    );
    let output = std::process::Command::new("sh").arg("-c").arg(&command).output().expect("sh");
    let fds: Vec<u32> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(fds.len() == 4 && fds[..3] == [0, 1, 2], "unexpected descriptors in exec: {fds:?}");
    world.ok(&["delete", "-f", &running]);
    // Asking to preserve a descriptor that is not open is refused before anything starts.
    let error = world.fails(&["run", "--preserve-fds", "40", &world.id("nofd")]);
    assert!(error.contains("not open"), "{error}");
}

#[test]
fn root_the_runtime_binary_cannot_be_written_from_the_container() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // A createContainer hook runs in the container's namespaces as a child of the init,
    // which at that point runs the runtime's code: try to open the init's executable for
    // writing, as the CVE-2019-5736 exploit does.
    let report = world.dir.path().join("exe-report");
    // The shell reads its own status (no subshell) to get its parent's pid as the host sees it.
    let script = format!(
        "while read key value; do [ \"$key\" = PPid: ] && ppid=$value; done < /proc/self/status; \
         readlink /proc/$ppid/exe > {report}; (echo x >> /proc/$ppid/exe) 2>> {report}; echo end >> {report}",
        report = report.display()
    );
    world.edit(|config| {
        config["hooks"] =
            json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]})
    });
    world.ok(&["run", &world.id("exe")]);
    let text = read(&report);
    assert!(
        text.contains("Read-only file system"),
        "the init's executable must live on a read-only mount: {text}"
    );
    let binary = std::fs::read(common::BIN).expect("binary");
    assert!(!binary.ends_with(b"x\n"), "the runtime binary was modified");
}
