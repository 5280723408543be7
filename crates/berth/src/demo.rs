//! `berth demo`: the main job on the embedded defaults. Builds a small image offline (the
//! host's static busybox in three layers), loads it into a private berth root, and drives
//! `berth` as a user would: a container that shows its isolation, a web server with a
//! published port answering an HTTP request, `ps`, `logs`, `exec`, `stop`, `rm`.
//!
//! The demo runs in a network namespace of its own, so its bridge and nftables rules never
//! touch the host's network; everything it made is removed at the end (`--keep` keeps the
//! root directory).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const SCRIPT: &str = r#"
echo "hello from a berth container"
echo "hostname:        $(hostname)"
echo "my pid:          $$ (pid 1 is $(cat /proc/1/comm))"
echo "processes seen:  $(ls -d /proc/[0-9]* | wc -l)"
echo "user:            $(id)"
echo "root filesystem: $(ls / | tr '\n' ' ')"
echo "network:         $(ip -4 -o addr show eth0 | awk '{print $4}')"
echo "memory limit:    $(head -1 /proc/meminfo)"
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

fn berth(root: &Path, args: &[&str]) -> Result<String> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| if a.contains('\n') { "'<the script above>'".to_owned() } else { (*a).to_owned() })
        .collect();
    println!("$ berth {}", shown.join(" "));
    let output = Command::new("/proc/self/exe")
        .env("BERTH_ROOT", root)
        .args(args)
        .output()
        .context("cannot run berth")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("berth {} failed ({})", args.join(" "), output.status);
    }
    Ok(stdout)
}

fn demo(keep: bool) -> Result<i32> {
    if !berth_testkit::is_root() {
        bail!("the demo creates namespaces, mounts and cgroups: run it as root (sudo)");
    }
    berth_sys::nix::sched::unshare(berth_sys::nix::sched::CloneFlags::CLONE_NEWNET)
        .context("cannot create a private network namespace for the demo")?;
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    if !up.is_ok_and(|s| s.success()) {
        bail!("cannot bring up loopback (is iproute2 installed?)");
    }
    let work = std::env::temp_dir().join(format!("berth-demo-{}", std::process::id()));
    let root = work.join("root");
    let result = run_demo(&work, &root);
    // Whatever happened, leave no container behind.
    if let Ok(ids) =
        Command::new("/proc/self/exe").env("BERTH_ROOT", &root).args(["ps", "-aq"]).output()
    {
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            let _ = Command::new("/proc/self/exe")
                .env("BERTH_ROOT", &root)
                .args(["rm", "-f", id])
                .output();
        }
    }
    if keep {
        println!("kept {}", work.display());
    } else {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot remove {}", work.display()))?;
    }
    result.map(|()| 0)
}

fn run_demo(work: &Path, root: &Path) -> Result<()> {
    println!("# an image built offline from {} (three layers)", berth_testkit::BUSYBOX);
    let layout: PathBuf = work.join("layout");
    berth_testkit::image::fixture_image(&layout, "v1").context("cannot build the demo image")?;
    let tar = work.join("demo.tar");
    let packed =
        Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".").status()?;
    if !packed.success() {
        bail!("tar failed");
    }
    let loaded = berth(root, &["load", "-i", &tar.to_string_lossy()])?;
    let id = loaded.trim().rsplit(' ').next().unwrap_or_default().to_owned();
    berth(root, &["tag", &id, "demo:v1"])?;
    berth(root, &["images"])?;
    println!("\n# a container: its own hostname, pids, filesystem, network and memory limit");
    println!("# the script:{SCRIPT}");
    berth(
        root,
        &[
            "run",
            "--rm",
            "--hostname",
            "berth-demo",
            "--memory",
            "64m",
            "demo:v1",
            "sh",
            "-c",
            SCRIPT,
        ],
    )?;
    println!("\n# a web server in the background, its port 80 published on 8080");
    berth(
        root,
        &[
            "run", "-d", "--init", "--name", "web", "-p", "8080:80", "demo:v1", "httpd", "-f",
            "-v", "-p", "80", "-h", "/srv",
        ],
    )?;
    berth(root, &["ps"])?;
    let mut response = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:8080") {
            write!(stream, "GET /run.sh HTTP/1.0\r\n\r\n")?;
            stream.read_to_string(&mut response)?;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("$ curl http://127.0.0.1:8080/run.sh");
    println!("{}", response.split("\r\n\r\n").nth(1).unwrap_or(&response).trim_end());
    berth(root, &["logs", "web"])?;
    berth(root, &["exec", "web", "ps"])?;
    berth(root, &["stop", "web"])?;
    berth(root, &["ps", "-a"])?;
    berth(root, &["rm", "web"])?;
    Ok(())
}
