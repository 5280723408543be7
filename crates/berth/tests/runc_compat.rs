//! The same bundle under berth-runc and under runc (Debian's): outputs of `state`, `list`,
//! `ps`, `spec` and error exits must have the same shape, so tools written for runc work.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::{root_or_skip, World};
use serde_json::Value;

fn runc(world: &World, args: &[&str]) -> Output {
    let root = world.dir.path().join("runc-root");
    assert!(which_runc(), "runc is needed for the comparison tests: apt-get install runc");
    let mut command = Command::new("runc");
    command.arg("--root").arg(&root).args(args).current_dir(&world.bundle.dir);
    common::capture(&mut command)
}

fn which_runc() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("runc").is_file()))
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn world() -> World {
    let world = World::new(&["sleep", "1000"]);
    // The version runc 1.1 knows; both runtimes accept it.
    world.edit(|config| config["ociVersion"] = "1.0.2".into());
    world
}

#[test]
fn root_state_list_and_ps_have_runcs_shape() {
    if !root_or_skip() {
        return;
    }
    let world = world();
    let ours = world.id("ours");
    let theirs = world.id("theirs");
    world.ok(&["create", &ours]);
    let output = runc(&world, &["create", &theirs]);
    assert!(output.status.success(), "runc create: {}", String::from_utf8_lossy(&output.stderr));

    let our_state: Value = serde_json::from_str(&world.ok(&["state", &ours])).expect("ours");
    let their_state: Value =
        serde_json::from_slice(&runc(&world, &["state", &theirs]).stdout).expect("theirs");
    assert_eq!(keys(&our_state), keys(&their_state));
    assert_eq!(our_state["status"], their_state["status"]);
    assert_eq!(our_state["bundle"], their_state["bundle"]);
    assert_eq!(our_state["rootfs"], their_state["rootfs"]);

    let our_list: Value = serde_json::from_str(&world.ok(&["list", "-f", "json"])).expect("ours");
    let their_list: Value =
        serde_json::from_slice(&runc(&world, &["list", "-f", "json"]).stdout).expect("theirs");
    assert_eq!(keys(&our_list[0]), keys(&their_list[0]));
    assert_eq!(our_list[0]["owner"], their_list[0]["owner"]);
    let our_header = world
        .ok(&["list"])
        .lines()
        .next()
        .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "));
    let their_header = String::from_utf8_lossy(&runc(&world, &["list"]).stdout)
        .lines()
        .next()
        .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "));
    assert_eq!(our_header, their_header);

    let our_ps: Vec<i64> =
        serde_json::from_str(&world.ok(&["ps", "-f", "json", &ours])).expect("ours");
    let their_ps: Vec<i64> =
        serde_json::from_slice(&runc(&world, &["ps", "-f", "json", &theirs]).stdout)
            .expect("theirs");
    assert_eq!(our_ps.len(), their_ps.len());

    world.ok(&["start", &ours]);
    assert!(runc(&world, &["start", &theirs]).status.success());
    assert_eq!(world.status(&ours), "running");
    world.ok(&["kill", &ours, "KILL"]);
    assert!(runc(&world, &["kill", &theirs, "KILL"]).status.success());
    world.wait_status(&ours, "stopped");
    world.ok(&["delete", &ours]);
    for _ in 0..200 {
        if runc(&world, &["delete", &theirs]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn root_errors_exit_like_runc() {
    if !root_or_skip() {
        return;
    }
    let world = world();
    for args in [
        vec!["state", "ghost"],
        vec!["delete", "ghost"],
        vec!["kill", "ghost"],
        vec!["start", "ghost"],
    ] {
        let ours = world.runc(&args).status.code();
        let theirs = runc(&world, &args).status.code();
        assert_eq!(ours, theirs, "{args:?}");
    }
    let id = world.id("dup");
    world.ok(&["create", &id]);
    assert_eq!(world.runc(&["create", &id]).status.code(), Some(1));
    world.ok(&["delete", &id]);
    // Unknown commands and flags are usage errors.
    assert_ne!(world.runc(&["frobnicate"]).status.code(), Some(0));
    assert_ne!(world.runc(&["create", "--no-such-flag", "x"]).status.code(), Some(0));
}

#[test]
fn spec_matches_runcs_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours =
        Command::new(common::BIN).arg("spec").current_dir(dir.path()).output().expect("spec");
    assert!(ours.status.success());
    let ours: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("read"))
            .expect("json");
    // A second spec refuses to overwrite.
    let again =
        Command::new(common::BIN).arg("spec").current_dir(dir.path()).output().expect("spec");
    assert!(!again.status.success());
    std::fs::create_dir_all(dir.path().join("runc")).expect("mkdir");
    let output = Command::new("runc")
        .arg("spec")
        .current_dir(dir.path().join("runc"))
        .output()
        .expect("runc is needed for the comparison tests: apt-get install runc");
    assert!(output.status.success());
    let theirs: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("runc/config.json")).expect("read"))
            .expect("json");
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(ours["process"]["capabilities"], theirs["process"]["capabilities"]);
    assert_eq!(ours["linux"]["maskedPaths"], theirs["linux"]["maskedPaths"]);
    assert_eq!(ours["linux"]["readonlyPaths"], theirs["linux"]["readonlyPaths"]);
    let destinations = |v: &Value| {
        v["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| m["destination"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(destinations(&ours), destinations(&theirs));
}
