//! `berth demo`: the main job on the embedded defaults. Builds a small image offline (the
//! host's static busybox in three layers), loads it into a private berth root, and drives
//! `berth` as a user would: a container that shows its isolation, a web server with a
//! published port answering an HTTP request, `ps`, `logs`, `exec`, `stop`, `rm`. Then,
//! when kubectl is on the PATH, the cluster on this machine: `berth server` with its agent,
//! a Deployment of 3 replicas behind a NodePort Service with a ConfigMap and a Secret
//! mounted, requests to the ClusterIP and the node port, a DNS lookup from a pod, scale,
//! a rolling update, logs, and deletion.
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
    let mut result = run_demo(&work, &root);
    if result.is_ok() {
        match kubectl_path() {
            Some(kubectl) => {
                let mut server = None;
                result = run_cluster(&work, &root, &kubectl, &mut server);
                if let Some(mut child) = server {
                    // SIGTERM: the server drains; the pods were deleted above.
                    let _ = berth_sys::nix::sys::signal::kill(
                        berth_sys::nix::unistd::Pid::from_raw(child.id() as i32),
                        berth_sys::nix::sys::signal::Signal::SIGTERM,
                    );
                    let _ = child.wait();
                }
                // Whatever is left of the pods' supervisors and mounts goes.
                let _ =
                    Command::new("pkill").arg("-f").arg(work.to_string_lossy().as_ref()).status();
                unmount_under(&work);
            }
            None => println!("\n# (the cluster part needs kubectl on the PATH; skipped)"),
        }
    }
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

fn kubectl_path() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join("kubectl"))
        .find(|p| p.exists())
}

fn unmount_under(dir: &Path) {
    for mount in berth_sys::mount::mounts_under(dir) {
        let _ = berth_sys::nix::mount::umount2(
            mount.as_path(),
            berth_sys::nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

const MANIFEST: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: greeting}
data: {text: "hello from a berth pod"}
---
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {value: s3cr3t}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: demo:v1
        command: ["sh", "-c", "mkdir -p /www; echo \"$(cat /etc/greeting/text), I am $(hostname) (secret: $(wc -c < /etc/token/value) bytes)\" > /www/index.html; exec httpd -f -v -p 8080 -h /www"]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
        volumeMounts:
        - {name: greeting, mountPath: /etc/greeting}
        - {name: token, mountPath: /etc/token, readOnly: true}
      volumes:
      - {name: greeting, configMap: {name: greeting}}
      - {name: token, secret: {secretName: token}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
"#;

fn kubectl(kubectl: &Path, config: &Path, args: &[&str]) -> Result<String> {
    println!("$ kubectl {}", args.join(" "));
    let output = Command::new(kubectl)
        .env("KUBECONFIG", config)
        .args(args)
        .output()
        .context("cannot run kubectl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("kubectl {} failed ({})", args.join(" "), output.status);
    }
    Ok(stdout)
}

fn http_get(address: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect_timeout(
        &address.parse().ok()?,
        std::time::Duration::from_secs(2),
    )
    .ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    write!(stream, "GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.split("\r\n\r\n").nth(1).unwrap_or("").trim_end().to_owned())
}

/// The cluster on one machine: `berth server` (API, scheduler, controllers, node agent with
/// berth's CRI, service proxy, DNS) and kubectl.
fn run_cluster(
    work: &Path,
    root: &Path,
    kubectl_bin: &Path,
    server: &mut Option<std::process::Child>,
) -> Result<()> {
    println!("\n# the cluster: `berth server` runs the API, scheduler, controllers, a node agent");
    println!("# with berth's CRI, the service proxy and cluster DNS, in one process");
    // This namespace's "machine": an address on a link, and a default route through it.
    for args in [
        &["link", "add", "node0", "type", "veth", "peer", "name", "node1"][..],
        &["addr", "add", "192.168.77.1/24", "dev", "node0"],
        &["link", "set", "node0", "up"],
        &["link", "set", "node1", "up"],
        &["route", "add", "default", "via", "192.168.77.2", "dev", "node0"],
    ] {
        let status = Command::new("ip").args(args).status()?;
        if !status.success() {
            bail!("ip {} failed", args.join(" "));
        }
    }
    let data = work.join("server");
    let log = std::fs::File::create(work.join("server.log"))?;
    println!("$ berth server --node-name demo-node --node-ip 192.168.77.1 ... &");
    *server = Some(
        Command::new("/proc/self/exe")
            .env("BERTH_ROOT", root)
            .args([
                "server",
                "--https-listen-port",
                "0",
                "--bind-address",
                "127.0.0.1",
                "--kubelet-port",
                "0",
            ])
            .args(["--node-name", "demo-node", "--node-ip", "192.168.77.1"])
            // The demo runs on whatever disk the machine has: only memory pressure evicts.
            .args(["--eviction-hard", "memory.available<100Mi", "--data-dir"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start berth server")?,
    );
    let config = data.join("kubeconfig");
    let ready = || -> bool {
        config.exists()
            && Command::new(kubectl_bin)
                .env("KUBECONFIG", &config)
                .args([
                    "get",
                    "node",
                    "demo-node",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                ])
                .output()
                .is_ok_and(|o| o.stdout == b"True")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready() {
        if std::time::Instant::now() > deadline {
            bail!("the node did not become Ready; see {}", work.join("server.log").display());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let k = |args: &[&str]| kubectl(kubectl_bin, &config, args);
    k(&["get", "nodes", "-o", "wide"])?;
    let manifest = work.join("app.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    println!(
        "\n# a Deployment of 3 replicas behind a Service, with a ConfigMap and a Secret as volumes"
    );
    k(&["apply", "-f", &manifest.to_string_lossy()])?;
    k(&["rollout", "status", "deployment/web", "--timeout", "90s"])?;
    k(&["get", "pods", "-o", "wide"])?;
    let vip = k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    println!();
    println!("\n# the Service's ClusterIP spreads requests over the replicas");
    for _ in 0..6 {
        println!("$ curl http://{vip}/");
        println!("{}", http_get(&format!("{vip}:80")).unwrap_or_else(|| "(no answer)".into()));
    }
    println!("$ curl http://192.168.77.1:30080/   # the NodePort");
    println!("{}", http_get("192.168.77.1:30080").unwrap_or_else(|| "(no answer)".into()));
    println!("\n# cluster DNS, from inside a pod");
    k(&["exec", "deployment/web", "--", "nslookup", "web.default.svc.cluster.local"])?;
    println!("\n# scale, then a rolling update to a new image");
    k(&["scale", "deployment/web", "--replicas", "4"])?;
    k(&["rollout", "status", "deployment/web", "--timeout", "90s"])?;
    berth(root, &["tag", "demo:v1", "demo:v2"])?;
    k(&["set", "image", "deployment/web", "web=demo:v2"])?;
    k(&["rollout", "status", "deployment/web", "--timeout", "120s"])?;
    k(&["get", "pods", "-o", "wide"])?;
    k(&["logs", "deployment/web", "--tail", "3"])?;
    println!("\n# and everything goes");
    k(&["delete", "-f", &manifest.to_string_lossy()])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = Command::new(kubectl_bin)
            .env("KUBECONFIG", &config)
            .args(["get", "pods", "-o", "name"])
            .output()?;
        if left.stdout.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("pods were left: {}", String::from_utf8_lossy(&left.stdout));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    k(&["get", "pods"])?;
    Ok(())
}
