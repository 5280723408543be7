//! The same scripted day through berth and through podman (Debian's 4.3, which follows
//! Docker's CLI): run, exec, ps and inspect with templates and filters, volumes filled
//! from the image, read-only mounts, `cp` to a tar stream, exit codes. Where Docker
//! documents the result (exit codes 125/126/127 and the container's own, template
//! output), the two must agree. The whole day runs in a private network namespace, each
//! tool on a private root with the same fixture image.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::root_or_skip;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// What of a step's result both tools must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Same {
    /// The exit code.
    Code,
    /// The exit code and stdout.
    Both,
    /// Only success (true) or failure (false), as given (the messages differ by design).
    Outcome(bool),
    /// Success or failure, and the names in the tar stdout holds.
    TarNames,
}

struct Tool {
    name: &'static str,
    argv: Vec<String>,
    image: String,
    envs: Vec<(String, String)>,
}

impl Tool {
    fn run(&self, args: &[&str], dir: &Path) -> Output {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{IMG}", &self.image)
                    .replace("{DIR}", dir.join("shared").to_str().unwrap())
                    .replace("{FILE}", dir.join("file.txt").to_str().unwrap())
            })
            .collect();
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).args(&args).stdin(Stdio::null());
        for (k, v) in &self.envs {
            command.env(k, v);
        }
        command.output().expect(self.name)
    }
}

fn tar_names(data: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(data);
    let mut names: Vec<String> = archive
        .entries()
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.path().ok().map(|p| p.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn root_berth_and_podman_agree_on_a_scripted_day() {
    if !root_or_skip() {
        return;
    }
    assert!(
        Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success()),
        "podman is needed for the comparison: scripts/deps installs it"
    );
    berth_sys::nix::sched::unshare(berth_sys::nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare the network namespace");
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
    let dir = tempfile::Builder::new().prefix("berth-parity-").tempdir().unwrap();
    let work = dir.path();
    std::fs::create_dir(work.join("shared")).unwrap();
    std::fs::write(work.join("shared/kept"), "host data\n").unwrap();
    std::fs::write(work.join("file.txt"), "from the host\n").unwrap();
    let archive = common::fixture_archive(work);
    let berth = Tool {
        name: "berth",
        argv: vec![BERTH.into()],
        image: "fixture:v1".into(),
        envs: vec![("BERTH_ROOT".into(), work.join("berth").to_string_lossy().into_owned())],
    };
    // Podman as the engine benchmark runs it: a private root, cgroupfs, runc, and no
    // default ulimits (root here lacks CAP_SYS_RESOURCE).
    std::fs::write(work.join("containers.conf"), "[containers]\ndefault_ulimits = []\n").unwrap();
    let podman_root = work.join("podman");
    let podman = Tool {
        name: "podman",
        argv: [
            "podman",
            "--root",
            podman_root.join("root").to_str().unwrap(),
            "--runroot",
            podman_root.join("run").to_str().unwrap(),
            "--storage-driver",
            "overlay",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            "--runtime",
            "runc",
        ]
        .map(String::from)
        .to_vec(),
        image: "localhost/fixture:v1".into(),
        envs: vec![(
            "CONTAINERS_CONF".into(),
            work.join("containers.conf").to_string_lossy().into_owned(),
        )],
    };
    common::load_fixture(&work.join("berth"), &archive, "fixture:v1");
    assert!(podman.run(&["load", "-q", "-i", archive.to_str().unwrap()], work).status.success());
    let images = podman.run(&["images", "-q"], work);
    let podman_id = String::from_utf8_lossy(&images.stdout).lines().next().unwrap().to_owned();
    assert!(podman.run(&["tag", &podman_id, "localhost/fixture:v1"], work).status.success());

    let steps: &[(&[&str], Same)] = &[
        // Exit codes: the container's own, 127 for a missing program, 126 for one that
        // cannot run, for run and exec alike.
        (&["run", "--rm", "{IMG}", "sh", "-c", "exit 3"], Same::Both),
        (&["run", "--rm", "{IMG}", "nope"], Same::Code),
        (&["run", "--rm", "{IMG}", "/etc/passwd"], Same::Code),
        (&["run", "--rm", "--read-only", "{IMG}", "touch", "/x"], Same::Code),
        (&["run", "--rm", "-u", "nosuchuser", "{IMG}", "true"], Same::Code),
        (&["run", "--rm", "--network", "none", "{IMG}", "cat", "/sys/class/net/lo/operstate"], Same::Both),
        (&["run", "--rm", "-e", "A=1", "-w", "/tmp", "-u", "app", "{IMG}", "sh", "-c", "echo $A $(pwd) $(id -un)"], Same::Both),
        (&["run", "-d", "--name", "web", "-l", "tier=front", "-e", "X=1", "{IMG}", "sleep", "300"], Same::Outcome(true)),
        (&["exec", "web", "sh", "-c", "exit 5"], Same::Code),
        (&["exec", "web", "nope"], Same::Code),
        (&["exec", "-u", "app", "-w", "/tmp", "web", "sh", "-c", "echo $X $(id -un) $(pwd)"], Same::Both),
        // Templates and filters. (`{{.Name}}` is left out: Docker says `/web`, as berth
        // does, and podman `web`.)
        (&["ps", "--filter", "label=tier=front", "--format", "{{.Names}}"], Same::Both),
        (&["ps", "-a", "--filter", "name=we", "--filter", "name=nothing", "--format", "{{.Names}}"], Same::Both),
        (&["ps", "--filter", "label=tier=back", "--format", "{{.Names}}"], Same::Both),
        (&["inspect", "-f", "{{.State.Status}} {{.State.Running}} {{.Config.Labels.tier}} {{.HostConfig.ReadonlyRootfs}}", "web"], Same::Both),
        (&["inspect", "-f", "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}} {{index .Config.Labels \"tier\"}}", "web"], Same::Both),
        (&["inspect", "-f", "{{json .Config.Cmd}} {{len .Config.Cmd}} {{upper .State.Status}}", "web"], Same::Both),
        // Volumes: a new one starts with the image's content; a read-only bind stays so.
        (&["run", "--rm", "-v", "newvol:/home", "{IMG}", "ls", "/home"], Same::Both),
        (&["run", "--rm", "-v", "{DIR}:/data:ro", "{IMG}", "cat", "/data/kept"], Same::Both),
        (&["run", "--rm", "-v", "{DIR}:/data:ro", "{IMG}", "touch", "/data/x"], Same::Code),
        (&["run", "-d", "--name", "ro", "-v", "{DIR}:/data:ro", "{IMG}", "sleep", "300"], Same::Outcome(true)),
        // cp: into a read-only mount refused; out to a tar stream.
        (&["cp", "{FILE}", "ro:/data/x"], Same::Outcome(false)),
        (&["cp", "{FILE}", "web:/tmp/in.txt"], Same::Outcome(true)),
        (&["exec", "web", "cat", "/tmp/in.txt"], Same::Both),
        (&["cp", "web:/tmp/in.txt", "-"], Same::TarNames),
        // The end of a container: stop's SIGKILL after the timeout (sleep as PID 1
        // ignores SIGTERM), wait's code, removal.
        (&["stop", "-t", "1", "web"], Same::Outcome(true)),
        (&["wait", "web"], Same::Both),
        (&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "web"], Same::Both),
        (&["rm", "web"], Same::Outcome(true)),
        (&["rm", "-f", "ro"], Same::Outcome(true)),
        (&["rm", "web"], Same::Outcome(false)),
    ];
    let mut differences = Vec::new();
    for (args, same) in steps {
        let ours = berth.run(args, work);
        let theirs = podman.run(args, work);
        let (a, b) = (&ours, &theirs);
        let agree = match same {
            Same::Code => a.status.code() == b.status.code(),
            Same::Both => a.status.code() == b.status.code() && a.stdout == b.stdout,
            Same::Outcome(expected) => {
                a.status.success() == *expected && b.status.success() == *expected
            }
            Same::TarNames => {
                a.status.success() == b.status.success()
                    && tar_names(&a.stdout) == tar_names(&b.stdout)
                    && !tar_names(&a.stdout).is_empty()
            }
        };
        if !agree {
            differences.push(format!(
                "{args:?} ({same:?}):\n  berth  {:?} {:?} {:?}\n  podman {:?} {:?} {:?}",
                a.status.code(),
                String::from_utf8_lossy(&a.stdout),
                String::from_utf8_lossy(&a.stderr).lines().last().unwrap_or(""),
                b.status.code(),
                String::from_utf8_lossy(&b.stdout),
                String::from_utf8_lossy(&b.stderr).lines().last().unwrap_or(""),
            ));
        }
    }
    let _ = podman.run(&["rm", "-af"], work);
    let _ = podman.run(&["volume", "prune", "-f"], work);
    for sub in ["root/overlay", "root", "run"] {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(podman_root.join(sub))
            .stderr(Stdio::null())
            .status();
    }
    assert!(differences.is_empty(), "berth and podman differ:\n{}", differences.join("\n"));
}
