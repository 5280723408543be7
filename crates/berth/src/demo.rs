//! `berth demo`: the main job until berth has images. Builds a bundle from the host's
//! busybox in a temporary directory and runs a container from it in the foreground, so a
//! newcomer sees namespaces, a private rootfs and a cgroup at work with one command.

use std::path::PathBuf;

use anyhow::{Context, Result};
use berth_runtime::{CreateOptions, Runtime};

const SCRIPT: &str = r#"
echo "hello from a berth container"
echo "hostname:        $(hostname)"
echo "my pid:          $$ (pid 1 is $(cat /proc/1/comm))"
echo "processes seen:  $(ls -d /proc/[0-9]* | wc -l)"
echo "user:            $(id)"
echo "root filesystem: $(ls / | tr '\n' ' ')"
echo "network:         $(ls /sys/class/net | tr '\n' ' ')"
echo "cgroup:          $(grep -m1 memory /proc/self/cgroup)"
"#;

pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let keep = args.iter().any(|a| a == "--keep");
    match demo(keep) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth demo: {err:#}");
            1
        }
    }
}

fn demo(keep: bool) -> Result<i32> {
    if !berth_testkit::is_root() {
        anyhow::bail!("the demo creates namespaces and cgroups: run it as root (sudo)");
    }
    let work = std::env::temp_dir().join(format!("berth-demo-{}", std::process::id()));
    let bundle = berth_testkit::BusyboxBundle::create(&work.join("bundle"), &["sh", "-c", SCRIPT])
        .context("cannot build the busybox bundle")?;
    bundle.edit(|config| {
        config["hostname"] = "berth-demo".into();
    })?;
    let root = work.join("state");
    let runtime = Runtime::new(&root, false);
    let id = format!("demo-{}", std::process::id());
    println!("bundle: {} (rootfs from {})", bundle.dir.display(), berth_testkit::BUSYBOX);
    let options =
        CreateOptions { id: id.clone(), bundle: bundle.dir.clone(), ..CreateOptions::default() };
    let pid = runtime.create(&options)?;
    runtime.start(&id)?;
    let status = berth_runtime::foreground_wait(berth_sys::nix::unistd::Pid::from_raw(pid), None)?;
    runtime.delete(&id, true)?;
    println!("container exited with status {}", status.code());
    if keep {
        println!("kept {}", work.display());
    } else {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot remove {}", work.display()))?;
    }
    let _: PathBuf = work;
    Ok(status.code())
}
