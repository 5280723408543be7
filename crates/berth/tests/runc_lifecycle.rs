//! Lifecycle of containers through the runc-compatible CLI: create, start, state, list, ps,
//! exec, kill, pause, resume, events, update, delete, and the foreground `run`.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::{read, root_or_skip, World};
use serde_json::Value;

#[test]
fn root_run_returns_the_exit_status_and_128_plus_signal() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sh", "-c", "exit 3"]);
    let id = world.id("exit");
    assert_eq!(world.run(&id).0, 3);
    world.assert_no_leftovers(&id);
    // A signal death is 128 + the signal. (The init of a pid namespace cannot be killed from
    // inside it, so the signal comes from outside, through `kill`.)
    world.set_args(&["sleep", "1000"]);
    let id = world.id("signal");
    let code = std::thread::scope(|scope| {
        let run = scope.spawn(|| world.run(&id).0);
        for _ in 0..500 {
            if world.runc(&["state", &id]).status.success() && world.status(&id) == "running" {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        world.ok(&["kill", &id, "KILL"]);
        run.join().expect("run thread")
    });
    assert_eq!(code, 128 + 9);
    world.assert_no_leftovers(&id);
    world.set_args(&["true"]);
    assert_eq!(world.run(&world.id("true")).0, 0);
}

#[test]
fn root_create_start_kill_delete_walks_through_every_state() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let id = world.id("life");
    let pid_file = world.dir.path().join("pid");
    world.ok(&["create", &id, "--pid-file", pid_file.to_str().expect("utf-8")]);
    let state = world.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["ociVersion"], "1.2.0");
    let pid = state["pid"].as_i64().expect("pid");
    assert!(pid > 0);
    assert_eq!(read(&pid_file).trim(), pid.to_string());
    assert_eq!(
        state["bundle"].as_str(),
        Some(world.bundle.dir.canonicalize().expect("bundle").to_str().expect("utf-8"))
    );
    // The init waits for start and has not executed the program yet.
    assert_ne!(read(format!("/proc/{pid}/comm")).trim(), "sleep");

    world.ok(&["start", &id]);
    assert_eq!(world.status(&id), "running");
    assert_eq!(read(format!("/proc/{pid}/comm")).trim(), "sleep");
    // Starting twice is refused.
    assert!(world.fails(&["start", &id]).contains("running"));

    world.ok(&["kill", &id, "KILL"]);
    world.wait_status(&id, "stopped");
    assert_eq!(world.state(&id)["pid"], 0);
    world.ok(&["delete", &id]);
    assert!(world.fails(&["state", &id]).contains("does not exist"));
    world.assert_no_leftovers(&id);
}

#[test]
fn root_list_and_ps_show_containers_and_their_processes() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let id = world.id("list");
    world.ok(&["run", "-d", &id]);
    let table = world.ok(&["list"]);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("ID ")
            && header.contains("PID")
            && header.contains("STATUS")
            && header.ends_with("OWNER"),
        "{header}"
    );
    let row = lines.find(|line| line.starts_with(&id)).expect("row");
    assert!(row.contains("running") && row.ends_with("root"), "{row}");
    assert_eq!(world.ok(&["list", "-q"]).trim(), id);
    let json: Value = serde_json::from_str(&world.ok(&["list", "--format", "json"])).expect("json");
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(json[0]["status"], "running");

    let pids: Vec<i64> =
        serde_json::from_str(&world.ok(&["ps", "--format", "json", &id])).expect("ps json");
    let init = world.state(&id)["pid"].as_i64().expect("pid");
    assert_eq!(pids, vec![init]);
    let ps = world.ok(&["ps", &id]);
    assert!(ps.lines().next().is_some_and(|h| h.contains("PID")), "{ps}");
    assert!(ps.lines().any(|line| line.contains("sleep 1000")), "{ps}");
    world.ok(&["delete", "--force", &id]);
    world.assert_no_leftovers(&id);
    let empty = world.ok(&["list", "--format", "json"]);
    assert_eq!(empty.trim(), "null");
}

#[test]
fn root_exec_joins_the_running_container() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    world.edit(|config| config["hostname"] = "exec-box".into());
    let id = world.id("exec");
    world.ok(&["run", "-d", &id]);
    let hostname = world.ok(&["exec", &id, "hostname"]);
    assert_eq!(hostname.trim(), "exec-box");
    // Same pid namespace: pid 1 is the container's sleep.
    let comm = world.ok(&["exec", &id, "cat", "/proc/1/comm"]);
    assert_eq!(comm.trim(), "sleep");
    // Exit status, environment, working directory and user.
    let output = world.runc(&["exec", &id, "sh", "-c", "exit 42"]);
    assert_eq!(output.status.code(), Some(42));
    let env = world.ok(&["exec", "--env", "GREETING=hello", &id, "sh", "-c", "echo $GREETING"]);
    assert_eq!(env.trim(), "hello");
    let cwd = world.ok(&["exec", "--cwd", "/tmp", &id, "pwd"]);
    assert_eq!(cwd.trim(), "/tmp");
    let user = world.ok(&["exec", "--user", "1000:1000", &id, "id"]);
    assert!(user.starts_with("uid=1000 gid=1000"), "{user}");
    // Same cgroup.
    let cgroup = world.ok(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert!(cgroup.lines().any(|l| l.contains(":memory:")), "{cgroup}");
    // A process.json instead of flags.
    let process = world.dir.path().join("process.json");
    std::fs::write(&process, r#"{"args":["sh","-c","echo from-json"],"cwd":"/","user":{"uid":0,"gid":0},"env":["PATH=/bin"]}"#).expect("write");
    assert_eq!(
        world.ok(&["exec", "--process", process.to_str().expect("utf-8"), &id]).trim(),
        "from-json"
    );
    // Detached exec writes its pid and the process runs inside.
    let pid_file = world.dir.path().join("exec.pid");
    world.ok(&["exec", "-d", "--pid-file", pid_file.to_str().expect("utf-8"), &id, "sleep", "500"]);
    let pid: i64 = read(&pid_file).trim().parse().expect("pid");
    let pids: Vec<i64> =
        serde_json::from_str(&world.ok(&["ps", "--format", "json", &id])).expect("ps json");
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    // A program that does not exist is a clear error.
    assert!(world.fails(&["exec", &id, "no-such-program"]).contains("executable file not found"));
    world.ok(&["delete", "--force", &id]);
    world.assert_no_leftovers(&id);
    assert!(world.fails(&["exec", &id, "true"]).contains("does not exist"));
}

#[test]
fn root_exec_into_a_stopped_container_is_refused() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let id = world.id("stopped");
    world.ok(&["run", "-d", &id]);
    world.wait_status(&id, "stopped");
    let error = world.fails(&["exec", &id, "true"]);
    assert!(error.contains("stopped"), "{error}");
    world.ok(&["delete", &id]);
}

#[test]
fn root_pause_stops_a_counter_and_resume_restarts_it() {
    if !root_or_skip() {
        return;
    }
    // Written through a rename, so the file always holds a whole number, even when the
    // container is frozen halfway through an iteration.
    let world = World::new(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; done",
    ]);
    let id = world.id("pause");
    world.ok(&["run", "-d", &id]);
    let counter = world.rootfs().join("tmp/counter");
    let value = || read(&counter).trim().parse::<u64>().expect("a number");
    std::thread::sleep(Duration::from_millis(100));
    world.ok(&["pause", &id]);
    assert_eq!(world.status(&id), "paused");
    let frozen = value();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(value(), frozen, "the counter moved while paused");
    assert!(world.fails(&["exec", &id, "true"]).contains("paused"));
    world.ok(&["resume", &id]);
    assert_eq!(world.status(&id), "running");
    std::thread::sleep(Duration::from_millis(200));
    assert!(value() > frozen, "the counter did not move after resume");
    // A paused container can be force-deleted.
    world.ok(&["pause", &id]);
    assert!(world.fails(&["delete", &id]).contains("paused"));
    world.ok(&["delete", "--force", &id]);
    world.assert_no_leftovers(&id);
}

#[test]
fn root_kill_all_reaches_every_process() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait"]);
    let id = world.id("killall");
    world.ok(&["run", "-d", &id]);
    for _ in 0..100 {
        let pids: Vec<i64> =
            serde_json::from_str(&world.ok(&["ps", "-f", "json", &id])).expect("ps");
        if pids.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM to the init alone is ignored (it traps it, and pid 1 has no default action).
    world.ok(&["kill", &id, "TERM"]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(world.status(&id), "running");
    world.ok(&["kill", "--all", &id, "9"]);
    world.wait_status(&id, "stopped");
    world.ok(&["delete", &id]);
    world.assert_no_leftovers(&id);
}

#[test]
fn root_delete_refuses_running_containers_without_force() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let id = world.id("delete");
    world.ok(&["run", "-d", &id]);
    let error = world.fails(&["delete", &id]);
    assert!(error.contains("running") && error.contains("--force"), "{error}");
    assert_eq!(world.status(&id), "running");
    world.ok(&["delete", "-f", &id]);
    world.assert_no_leftovers(&id);
    // A created container (never started) is deleted without --force, as runc does.
    let created = world.id("created");
    world.ok(&["create", &created]);
    world.ok(&["delete", &created]);
    world.assert_no_leftovers(&created);
}

#[test]
fn root_events_stats_and_update_change_live_limits() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let id = world.id("update");
    world.edit(|config| {
        config["linux"]["resources"]["memory"] = serde_json::json!({"limit": 64 << 20})
    });
    world.ok(&["run", "-d", &id]);
    let event: Value =
        serde_json::from_str(world.ok(&["events", "--stats", &id]).trim()).expect("event");
    assert_eq!(event["type"], "stats");
    assert_eq!(event["id"], id.as_str());
    let memory = &event["data"]["memory"]["usage"];
    assert!(memory["usage"].as_u64().unwrap_or(0) > 0, "{event}");
    assert_eq!(memory["limit"].as_u64(), Some(64 << 20));
    assert_eq!(event["data"]["pids"]["current"].as_u64(), Some(1));

    world.ok(&["update", "--memory", "32m", "--pids-limit", "20", &id]);
    let limits = world.ok(&[
        "exec",
        &id,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
    ]);
    assert_eq!(
        limits.split_whitespace().collect::<Vec<_>>(),
        vec![(32u64 << 20).to_string().as_str(), "20"]
    );
    // -r takes runc's resources JSON, from a file or stdin.
    let resources = world.dir.path().join("resources.json");
    std::fs::write(&resources, r#"{"pids":{"limit":30}}"#).expect("write");
    world.ok(&["update", "-r", resources.to_str().expect("utf-8"), &id]);
    assert_eq!(world.ok(&["exec", &id, "cat", "/sys/fs/cgroup/pids/pids.max"]).trim(), "30");
    let error = world.fails(&["update", "--memory", "lots", &id]);
    assert!(error.contains("invalid size"), "{error}");
    world.ok(&["delete", "-f", &id]);
}

#[test]
fn root_concurrent_commands_on_many_containers() {
    if !root_or_skip() {
        return;
    }
    let world = std::sync::Arc::new(World::new(&["sleep", "1000"]));
    let ids: Vec<String> = (0..12).map(|i| world.id(&format!("many{i}"))).collect();
    std::thread::scope(|scope| {
        for id in &ids {
            let world = world.clone();
            scope.spawn(move || world.ok(&["run", "-d", id]));
        }
    });
    let list: Vec<Value> = serde_json::from_str(&world.ok(&["list", "-f", "json"])).expect("list");
    assert_eq!(list.len(), ids.len());
    assert!(list.iter().all(|c| c["status"] == "running"), "{list:?}");
    // Racing forced deletes of one container: as with runc, each succeeds (those that find
    // it gone too), nothing breaks, and it is gone.
    let target = &ids[0];
    let results: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| world.runc(&["delete", "-f", target]).status.success()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(results.iter().all(|ok| *ok), "{results:?}");
    world.assert_no_leftovers(target);
    std::thread::scope(|scope| {
        for id in &ids[1..] {
            let world = world.clone();
            scope.spawn(move || world.ok(&["delete", "-f", id]));
        }
    });
    for id in &ids {
        world.assert_no_leftovers(id);
    }
}

#[test]
fn root_repeated_runs_leave_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    for round in 0..30 {
        let id = world.id(&format!("r{round}"));
        assert_eq!(world.run(&id).0, 0, "round {round}");
        world.assert_no_leftovers(&id);
    }
}

#[test]
fn root_foreground_run_forwards_signals() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&[
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo ready > /tmp/ready; while true; do sleep 0.05; done",
    ]);
    let id = world.id("forward");
    let mut child =
        world.command().args(["run", &id]).current_dir(&world.bundle.dir).spawn().expect("spawn");
    let ready = world.rootfs().join("tmp/ready");
    for _ in 0..500 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ready.exists(), "the container never started");
    berth_sys::nix::sys::signal::kill(
        berth_sys::nix::unistd::Pid::from_raw(child.id() as i32),
        berth_sys::nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(7),
        "SIGTERM must reach the container's process, whose trap exits 7"
    );
    world.assert_no_leftovers(&id);
}

#[test]
fn root_a_killed_create_leaves_a_container_delete_can_remove() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    // The createRuntime hook holds `create` long enough to kill it mid-way.
    world.edit(|config| config["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"]}]}));
    let id = world.id("killed");
    let mut child = world
        .command()
        .args(["create", &id])
        .current_dir(&world.bundle.dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    for _ in 0..500 {
        if world.root.join(&id).join("state.json").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill create");
    child.wait().expect("wait");
    // The init dies with the command that was creating it; the state says so.
    world.wait_status(&id, "stopped");
    world.ok(&["delete", &id]);
    world.assert_no_leftovers(&id);
    // A directory left before the state was written: only --force removes it.
    let half = world.id("half");
    std::fs::create_dir_all(world.root.join(&half)).expect("mkdir");
    std::fs::write(world.root.join(&half).join(".lock"), "").expect("lock");
    let listed = world.ok(&["list", "-q"]);
    assert!(!listed.contains(&half), "{listed}");
    assert!(world.fails(&["delete", &half]).contains("--force"));
    world.ok(&["delete", "--force", &half]);
    assert!(!world.root.join(&half).exists());
}

#[test]
fn root_exec_into_a_user_namespace() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["sleep", "1000"]);
    let status = std::process::Command::new("chown")
        .args(["-R", "200000:200000"])
        .arg(world.rootfs())
        .status()
        .expect("chown");
    assert!(status.success());
    world.edit(|config| {
        config["linux"]["namespaces"]
            .as_array_mut()
            .expect("ns")
            .push(serde_json::json!({"type": "user"}));
        config["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        config["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    });
    let id = world.id("userns-exec");
    world.ok(&["run", "-d", &id]);
    let output =
        world.ok(&["exec", &id, "sh", "-c", "id -u; cat /proc/self/uid_map; cat /proc/1/comm"]);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), vec!["0", "200000", "65536"]);
    assert_eq!(lines[2], "sleep");
    let output = world.ok(&["exec", "--user", "1000", &id, "id", "-u"]);
    assert_eq!(output.trim(), "1000");
    world.ok(&["delete", "-f", &id]);
    world.assert_no_leftovers(&id);
}

#[test]
fn root_run_keep_leaves_a_stopped_container() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let id = world.id("keep");
    world.ok(&["run", "--keep", &id]);
    assert_eq!(world.status(&id), "stopped");
    world.ok(&["delete", &id]);
    world.assert_no_leftovers(&id);
}

#[test]
fn root_json_logs_and_features() {
    if !root_or_skip() {
        return;
    }
    let world = World::new(&["true"]);
    let log = world.dir.path().join("runtime.log");
    let output = world.runc(&[
        "--log",
        log.to_str().expect("utf-8"),
        "--log-format",
        "json",
        "state",
        "ghost",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let line: Value = serde_json::from_str(read(&log).lines().last().expect("a log line"))
        .expect("json log line");
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().is_some_and(|m| m.contains("does not exist")), "{line}");
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    // With a log file, the error still reaches stderr for a human.
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));

    let features: Value = serde_json::from_str(&world.ok(&["features"])).expect("features");
    assert_eq!(features["ociVersionMax"], "1.2.0");
    let namespaces = features["linux"]["namespaces"].as_array().expect("namespaces");
    assert_eq!(namespaces.len(), 8);
    assert!(features["linux"]["capabilities"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c == "CAP_SYS_ADMIN")));
    assert!(features["linux"]["seccomp"]["actions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a == "SCMP_ACT_NOTIFY")));
    assert!(features["mountOptions"].as_array().is_some_and(|m| m.iter().any(|o| o == "rro")));
}
