//! `berth server` with its node agent and in-process CRI: pods from the API really run on
//! this machine. Driven by the real kubectl, as root, in a network namespace of the test's
//! own (the pod bridge and its addresses never touch the host's network).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::root_or_skip;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const KUBECTL: &str = "/usr/bin/kubectl";
const NODE: &str = "test-node";

struct Cluster {
    dir: tempfile::TempDir,
    server: Option<Child>,
    extra: Vec<String>,
    /// The server's --bind-address.
    bind: String,
    /// The server's --https-listen-port ("0": any).
    port: String,
}

impl Cluster {
    fn new() -> Cluster {
        berth_sys::nix::sched::unshare(berth_sys::nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare the network namespace");
        assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
        let dir = tempfile::Builder::new().prefix("berth-agent-").tempdir().unwrap();
        let cluster = Cluster {
            dir,
            server: None,
            extra: Vec::new(),
            bind: "127.0.0.1".to_owned(),
            port: "0".to_owned(),
        };
        let layout = cluster.path("layout");
        berth_testkit::image::fixture_image(&layout, "v1").unwrap();
        cluster.load_layout(&layout, "fixture.tar", "fixture:v1");
        cluster
    }

    /// Loads the OCI layout at `layout` into the server's image store as `name` (through
    /// a tar at `tar` in the test's directory, which the containerd test reuses).
    fn load_layout(&self, layout: &Path, tar: &str, name: &str) {
        let tar = self.path(tar);
        let packed =
            Command::new("tar").arg("-C").arg(layout).arg("-cf").arg(&tar).arg(".").status();
        assert!(packed.unwrap().success());
        let loaded = self.berth(&["load", "-i", tar.to_str().unwrap()]);
        let id = loaded.trim().rsplit(' ').next().unwrap().to_owned();
        self.berth(&["tag", &id, name]);
    }

    /// Gives this network namespace a node address `IP/24` on a veth and a default route
    /// through the next address, as a machine has: traffic to a ClusterIP is routed before
    /// it is translated, and node ports and the API's endpoint need an address.
    fn node_address(&self, ip: &str) {
        let gateway = format!("{}.2", ip.rsplit_once('.').unwrap().0);
        for args in [
            &["link", "add", "node0", "type", "veth", "peer", "name", "node1"][..],
            &["addr", "add", &format!("{ip}/24"), "dev", "node0"],
            &["link", "set", "node0", "up"],
            &["link", "set", "node1", "up"],
            &["route", "add", "default", "via", &gateway, "dev", "node0"],
        ] {
            assert!(Command::new("ip").args(args).status().unwrap().success());
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn data(&self) -> PathBuf {
        self.path("server")
    }

    fn berth(&self, args: &[&str]) -> String {
        let output =
            Command::new(BERTH).env("BERTH_ROOT", self.path("root")).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn start(&mut self) {
        self.spawn_server();
        self.until("the node is Ready", &["get", "node", NODE, "-o", "json"], |node| {
            node["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
    }

    fn spawn_server(&mut self) {
        let _ = std::fs::remove_file(self.data().join("kubeconfig"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.path("server.log"))
            .unwrap();
        let child = Command::new(BERTH)
            .env("BERTH_ROOT", self.path("root"))
            .args([
                "server",
                "--https-listen-port",
                &self.port,
                "--bind-address",
                &self.bind,
                "--node-name",
                NODE,
            ])
            .args(["--container-restart-backoff-ms", "200", "--kubelet-port", "0"])
            .args(["--metric-resolution", "1s", "--data-dir"])
            .arg(self.data())
            // Tests run on whatever disk the machine has: no disk-pressure eviction unless
            // a test asks for it.
            .args(if self.extra.iter().any(|a| a == "--eviction-hard") {
                Vec::new()
            } else {
                vec!["--eviction-hard", "memory.available<100Mi"]
            })
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(KUBECTL)
            .env("KUBECONFIG", self.data().join("kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.server_log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The last lines of the server's log and, when there is one, a separate agent's.
    fn server_log(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let agent = tail("agent.log");
        if agent.is_empty() {
            tail("server.log")
        } else {
            format!("{}\nagent log:\n{agent}", tail("server.log"))
        }
    }

    fn apply(&self, manifest: &str) {
        let path = self.path("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// Waits (at most 60 s) until `check` holds for the JSON kubectl prints.
    fn until(&self, what: &str, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        loop {
            if self.data().join("kubeconfig").exists() {
                let output = self.kubectl(args);
                if output.status.success() {
                    last = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
                    if check(&last) {
                        return last;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never happened; last:\n{last:#}\nserver log:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ok_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", "pod", name, "-o", "json"])).unwrap()
    }

    /// The CRI log of a pod's container (first attempt), as the agent lays them out.
    fn log_of(&self, pod: &Value, container: &str) -> String {
        let dir = self.data().join("agent/logs").join(format!(
            "{}_{}_{}",
            pod["metadata"]["namespace"].as_str().unwrap(),
            pod["metadata"]["name"].as_str().unwrap(),
            pod["metadata"]["uid"].as_str().unwrap()
        ));
        std::fs::read_to_string(dir.join(container).join("0.log")).unwrap_or_default()
    }

    fn wait_log(&self, pod_name: &str, container: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pod = self.pod(pod_name);
            let text = self.log_of(&pod, container);
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "log of {pod_name}/{container}:\n{text}\nserver log:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client certificate and key (files) for `user`, from `berth kubeconfig --user`.
    fn berth_server_kubeconfig_user(&self, user: &str) -> (PathBuf, PathBuf) {
        let output = Command::new(BERTH)
            .args(["kubeconfig", "--user", user, "--data-dir"])
            .arg(self.data())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let config = String::from_utf8_lossy(&output.stdout).into_owned();
        let field = |name: &str| -> Vec<u8> {
            let line = config.lines().find(|l| l.trim_start().starts_with(name)).unwrap();
            let data = line.split_once(':').unwrap().1.trim();
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(data).unwrap()
        };
        let (cert, key) = (self.path(&format!("{user}.crt")), self.path(&format!("{user}.key")));
        std::fs::write(&cert, field("client-certificate-data")).unwrap();
        std::fs::write(&key, field("client-key-data")).unwrap();
        (cert, key)
    }

    fn mounts_under(&self, path: &Path) -> Vec<String> {
        let root = path.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    fn sandboxes(&self) -> usize {
        std::fs::read_dir(self.path("root/cri/sandboxes")).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill9();
        // Containers a failed assertion left running: through the runtime, which knows
        // them all (their processes do not name the test's directory).
        // (root-b: a second node's, in the tests that join one.)
        for root in ["root", "root-b"] {
            let runtime = self.path(root).join("cri/runtime");
            if !runtime.exists() {
                continue;
            }
            if let Ok(listed) = Command::new(BERTH)
                .args(["runtime", "--root"])
                .arg(&runtime)
                .args(["list", "-q"])
                .output()
            {
                for id in String::from_utf8_lossy(&listed.stdout).lines() {
                    let _ = Command::new(BERTH)
                        .args(["runtime", "--root"])
                        .arg(&runtime)
                        .args(["delete", "--force", id])
                        .output();
                }
            }
        }
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path().to_string_lossy().as_ref())
            .status();
        for mount in self.mounts_under(self.dir.path()).into_iter().rev() {
            let _ = berth_sys::nix::mount::umount2(
                mount.as_str(),
                berth_sys::nix::mount::MntFlags::MNT_DETACH,
            );
        }
    }
}

/// Two idle pods of the lowest and highest QoS class, for the eviction tests.
const BESTEFFORT_AND_GUARANTEED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: besteffort}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: fixture:v1, command: ["sleep", "1000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: guaranteed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: fixture:v1
    command: ["sleep", "1000"]
    resources: {limits: {cpu: 100m, memory: 32Mi}}
"#;

fn running_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// `berth agent --server URL --token TOKEN`: an agent in a process of its own joins a
/// server that runs none (its CA checked against the token's hash, its client and serving
/// certificates asked for and approved without a person), runs the pods scheduled to it,
/// serves their logs and exec through the API server, and after a kill -9 rejoins with the
/// credentials it kept. A token for another CA is refused with the reason.
#[test]
fn root_an_agent_joins_with_the_node_token() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.extra = vec!["--disable-agent".into()];
    // A port of its own, the same after the server restarts (the agent's kubeconfig
    // names it). (The test's own network namespace: nothing else holds it.)
    cluster.port = "16443".into();
    cluster.spawn_server();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(cluster.data().join("kubeconfig").exists()
        && cluster.data().join("node-token").exists())
    {
        assert!(Instant::now() < deadline, "the server never wrote its kubeconfig and node token");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kubeconfig = std::fs::read_to_string(cluster.data().join("kubeconfig")).unwrap();
    let url =
        kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_owned();
    let token = std::fs::read_to_string(cluster.data().join("node-token")).unwrap();
    assert!(token.starts_with("K10"), "{token}");
    let agent = |token: &str| {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(cluster.path("agent.log"))
            .unwrap();
        Command::new(BERTH)
            .env("BERTH_ROOT", cluster.path("root"))
            .args(["agent", "--server", &url, "--token", token.trim(), "--data-dir"])
            .arg(cluster.path("agent"))
            .args([
                "--node-name",
                NODE,
                "--kubelet-port",
                "0",
                "--container-restart-backoff-ms",
                "200",
            ])
            // As the cluster's own agent: no disk-pressure eviction on the machine's disk
            // (a disk 85% full tainted the joined node and nothing was scheduled on it).
            .args(["--eviction-hard", "memory.available<100Mi"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    // A token whose hash is not this server's CA: refused, nothing joined.
    let wrong = format!("K10{}::{}", "0".repeat(64), token.trim().rsplit_once("::").unwrap().1);
    let refused = agent(&wrong).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let said = std::fs::read_to_string(cluster.path("agent.log")).unwrap();
    assert!(said.contains("a wrong server or a wrong token"), "{said}");
    let mut joined = agent(&token);
    let ready = |node: &Value| {
        node["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    cluster.until("the joined node is Ready", &["get", "node", NODE, "-o", "json"], ready);
    let csrs = cluster.until("two certificates issued", &["get", "csr", "-o", "json"], |list| {
        list["items"].as_array().is_some_and(|items| {
            items.len() == 2
                && items
                    .iter()
                    .all(|i| i["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()))
        })
    });
    let requesters: Vec<&str> = csrs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["username"].as_str().unwrap())
        .collect();
    assert!(requesters.iter().any(|u| u.starts_with("system:bootstrap:")), "{requesters:?}");
    assert!(requesters.contains(&"system:node:test-node"), "{requesters:?}");
    cluster.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: away}\nspec: {terminationGracePeriodSeconds: 1, containers: [{name: main, image: \"fixture:v1\", command: [sh, -c, \"echo from-the-joined-node; sleep 600\"]}]}\n");
    cluster.until("away Running", &["get", "pod", "away", "-o", "json"], running_ready);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = cluster.kubectl(&["logs", "away"]);
        if String::from_utf8_lossy(&logs.stdout).contains("from-the-joined-node") {
            break;
        }
        assert!(Instant::now() < deadline, "kubectl logs through the joined agent: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster.ok(&["exec", "away", "--", "hostname"]).trim(), "away");
    // kill -9 and start again: the kept credentials, no new request; the pod still runs.
    let _ = joined.kill();
    let _ = joined.wait();
    let mut rejoined = agent(&token);
    std::thread::sleep(Duration::from_millis(500));
    cluster.until("the node is Ready again", &["get", "node", NODE, "-o", "json"], ready);
    assert_eq!(cluster.ok(&["exec", "away", "--", "echo", "still"]).trim(), "still");
    let listed: Value = serde_json::from_str(&cluster.ok(&["get", "csr", "-o", "json"])).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "no new certificate request");
    // The server goes (kill -9): the agent keeps its pod running, and catches up when the
    // server is back on its address: the same container, and a pod made since runs.
    let before = cluster.pod("away");
    cluster.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let id = before["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.split("://").nth(1))
        .unwrap()
        .to_owned();
    let state = Command::new(BERTH)
        .args(["runtime", "--root"])
        .arg(cluster.path("root").join("cri/runtime"))
        .args(["state", &id])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&state.stdout).unwrap_or(Value::Null);
    assert_eq!(state["status"], "running", "the pod's container went with the server: {state}");
    cluster.spawn_server();
    cluster.until(
        "the node is Ready after the server's return",
        &["get", "node", NODE, "-o", "json"],
        ready,
    );
    assert_eq!(cluster.ok(&["exec", "away", "--", "echo", "back"]).trim(), "back");
    let after = cluster.pod("away");
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"],
        "the same container: {after:#}"
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0, "{after:#}");
    cluster.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: later}\nspec: {terminationGracePeriodSeconds: 1, containers: [{name: main, image: \"fixture:v1\", command: [sleep, \"600\"]}]}\n");
    cluster.until(
        "a pod made after the return runs",
        &["get", "pod", "later", "-o", "json"],
        running_ready,
    );
    cluster.ok(&["delete", "pod", "away", "later", "--wait=false"]);
    let _ = rejoined.kill();
    let _ = rejoined.wait();
}

#[test]
fn root_pods_from_the_api_run_on_this_machine() {
    if !root_or_skip() {
        return;
    }
    // The Python client first: its install reaches PyPI, which the cluster's network
    // namespace (made next, for this thread) cannot.
    let python = common::python::python_with_client();
    let mut cluster = Cluster::new();
    cluster.start();
    let node: Value =
        serde_json::from_str(&cluster.ok(&["get", "node", NODE, "-o", "json"])).unwrap();
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], NODE);
    assert!(node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("berth://"));
    assert!(node["status"]["capacity"]["cpu"].as_str().is_some());

    cluster.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {key: first}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: fixture:v1
        command: ["sh", "-c", "while true; do echo pong | nc -l -p 8080; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: reader
    image: fixture:v1
    command: ["sh", "-c", "while true; do echo \"key=$(cat /etc/s/key) greeting=$(cat /etc/c/greeting) env=$FROM_SECRET ip=$POD_IP both=$BOTH\"; sleep 0.2; done"]
    env:
    - {name: FROM_SECRET, valueFrom: {secretKeyRef: {name: creds, key: key}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: BOTH, value: "$(FROM_SECRET)-$(POD_IP)"}
    volumeMounts:
    - {name: s, mountPath: /etc/s, readOnly: true}
    - {name: c, mountPath: /etc/c}
  volumes:
  - {name: s, secret: {secretName: creds}}
  - {name: c, configMap: {name: settings}}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: crash, image: fixture:v1, command: ["sh", "-c", "echo dying; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: together}
spec:
  terminationGracePeriodSeconds: 1
  shareProcessNamespace: true
  containers:
  - {name: a, image: fixture:v1, command: ["sleep", "1234"], resources: {limits: {memory: 48Mi}}}
  - {name: b, image: fixture:v1, command: ["sleep", "4321"], resources: {limits: {memory: 16Mi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: slow
    image: fixture:v1
    command: ["sh", "-c", "sleep 2; touch /tmp/ready; touch /tmp/alive; sleep 2; rm /tmp/alive; sleep 1000"]
    readinessProbe: {exec: {command: ["cat", "/tmp/ready"]}, periodSeconds: 1}
    livenessProbe: {exec: {command: ["test", "-f", "/tmp/alive"]}, initialDelaySeconds: 3, periodSeconds: 1, failureThreshold: 2}
  - name: http
    image: fixture:v1
    command: ["sh", "-c", "echo ok > /tmp/index.html; exec httpd -f -p 8081 -h /tmp"]
    ports: [{name: web, containerPort: 8081}]
    readinessProbe: {httpGet: {path: /index.html, port: web}, periodSeconds: 1}
    startupProbe: {tcpSocket: {port: 8081}, periodSeconds: 1}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      initContainers:
      - {name: prepare, image: fixture:v1, command: ["sh", "-c", "echo ready > /work/flag"], volumeMounts: [{name: w, mountPath: /work}]}
      containers:
      - {name: check, image: fixture:v1, command: ["sh", "-c", "test \"$(cat /work/flag)\" = ready"], volumeMounts: [{name: w, mountPath: /work}]}
      volumes:
      - {name: w, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: scratch}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: fixture:v1, command: ["sleep", "1000"], volumeMounts: [{name: m, mountPath: /scratch}]}
  volumes:
  - {name: m, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
"#,
    );
    // A memory-backed emptyDir is a tmpfs of the volume's size, unmounted with its pod.
    let scratch =
        cluster.until("scratch Running", &["get", "pod", "scratch", "-o", "json"], running_ready);
    let uid = scratch["metadata"]["uid"].as_str().unwrap().to_owned();
    let mounts = cluster.ok(&["exec", "scratch", "--", "grep", " /scratch ", "/proc/mounts"]);
    assert!(mounts.contains("tmpfs") && mounts.contains("size=8192k"), "{mounts}");
    cluster.ok(&["exec", "scratch", "--", "sh", "-c", "echo kept > /scratch/f && cat /scratch/f"]);
    cluster.ok(&["delete", "pod", "scratch", "--wait=true"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&uid) {
        assert!(Instant::now() < deadline, "the pod's tmpfs stayed mounted");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The Deployment's pods run, are Ready, have addresses of the pod network, and answer.
    let pods = cluster.until(
        "2 web pods Running and Ready",
        &["get", "pods", "-l", "app=web", "-o", "json"],
        |list| {
            list["items"]
                .as_array()
                .is_some_and(|items| items.len() == 2 && items.iter().all(running_ready))
        },
    );
    for pod in pods["items"].as_array().unwrap() {
        let ip = pod["status"]["podIP"].as_str().unwrap();
        assert!(ip.starts_with("10.42.0."), "pod address {ip}");
        assert_eq!(pod["spec"]["nodeName"], NODE);
        let status = &pod["status"]["containerStatuses"][0];
        assert!(status["containerID"].as_str().unwrap().starts_with("berth://"));
        assert!(status["imageID"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(status["restartCount"], 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            use std::io::Read;
            let mut text = String::new();
            if let Ok(mut stream) = std::net::TcpStream::connect((ip, 8080)) {
                let _ = stream.read_to_string(&mut text);
            }
            if text == "pong\n" || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(reply, "pong\n", "the pod at {ip} answers");
    }
    // The metrics API reads the agent: the pods' usage (a CPU rate needs two readings)
    // and the node's, as `kubectl top` shows them.
    cluster.until(
        "usage of both web pods",
        &[
            "get",
            "--raw",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb",
        ],
        |list| {
            list["items"].as_array().is_some_and(|items| {
                items.len() == 2
                    && items.iter().all(|i| {
                        i["containers"][0]["name"] == "web"
                            && i["containers"][0]["usage"]["memory"]
                                .as_str()
                                .is_some_and(|m| m != "0Ki")
                    })
            })
        },
    );
    let top = cluster.ok(&["top", "pod", "-l", "app=web", "--no-headers"]);
    assert_eq!(top.lines().count(), 2, "{top}");
    assert!(
        top.lines().all(|l| l.split_whitespace().nth(2).is_some_and(|m| m.ends_with("Mi"))),
        "{top}"
    );
    cluster.until(
        "the node's usage",
        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"],
        |list| {
            list["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["metadata"]["name"] == NODE))
        },
    );
    let top = cluster.ok(&["top", "node", NODE, "--no-headers"]);
    assert!(top.starts_with(NODE) && top.contains('%'), "{top}");
    // The kubelet's Summary API, through the API server's node proxy.
    let path = format!("/api/v1/nodes/{NODE}/proxy/stats/summary");
    let summary = cluster.ok_json(&["get", "--raw", &path]);
    assert_eq!(summary["node"]["nodeName"], NODE, "{summary:#}");
    assert!(
        summary["node"]["memory"]["workingSetBytes"].as_u64().is_some_and(|b| b > 0),
        "{summary:#}"
    );
    assert!(summary["node"]["fs"]["capacityBytes"].as_u64().is_some_and(|b| b > 0), "{summary:#}");
    let webs: Vec<&Value> = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["podRef"]["name"].as_str().is_some_and(|n| n.starts_with("web-")))
        .collect();
    assert!(!webs.is_empty(), "{summary:#}");
    assert!(
        webs.iter().all(|p| p["containers"][0]["name"] == "web"
            && p["memory"]["workingSetBytes"].as_u64().is_some_and(|b| b > 0)
            && p["cpu"]["usageCoreNanoSeconds"].as_u64().is_some()),
        "{summary:#}"
    );
    // Secrets, ConfigMaps and the downward API reach the container, and edits reach it
    // while it runs.
    cluster.until("reader Running", &["get", "pod", "reader", "-o", "json"], running_ready);
    let reader = cluster.pod("reader");
    let ip = reader["status"]["podIP"].as_str().unwrap().to_owned();
    let text = cluster.wait_log("reader", "reader", |t| t.contains("key=first"));
    let line = text.lines().find(|l| l.contains("key=first")).unwrap();
    assert!(
        line.contains(&format!("key=first greeting=hello env=first ip={ip} both=first-{ip}")),
        "{line}"
    );
    cluster.ok(&["patch", "secret", "creds", "-p", r#"{"stringData":{"key":"second"}}"#]);
    cluster.wait_log("reader", "reader", |t| t.contains("key=second greeting=hello env=first"));
    // kubectl debug: an ephemeral container joins the running pod (its network: it reaches
    // the pod's address), once, with its own status; an existing one cannot be changed.
    cluster.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: debugged}\nspec: {terminationGracePeriodSeconds: 1, containers: [{name: main, image: \"fixture:v1\", command: [sleep, \"600\"]}]}\n");
    cluster.until("debugged Running", &["get", "pod", "debugged", "-o", "json"], running_ready);
    // The service account's token volume: a bound token the API accepts as the pod's
    // account, the cluster CA, the namespace; the API's Service in the environment.
    let read = |file: &str| {
        cluster.ok(&[
            "exec",
            "debugged",
            "-c",
            "main",
            "--",
            "cat",
            &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
        ])
    };
    assert_eq!(read("namespace"), "default");
    assert_eq!(read("ca.crt"), std::fs::read_to_string(cluster.data().join("tls/ca.crt")).unwrap());
    let token = read("token");
    let review = cluster.path("review.yaml");
    std::fs::write(
        &review,
        format!(
            "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {token}}}\n"
        ),
    )
    .unwrap();
    let reviewed: Value = serde_json::from_str(&cluster.ok(&[
        "create",
        "-f",
        review.to_str().unwrap(),
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(reviewed["status"]["user"]["username"], "system:serviceaccount:default:default");
    // kubectl cp both ways (tar through exec).
    let local = cluster.path("copied.txt");
    std::fs::write(&local, "through kubectl cp\n").unwrap();
    cluster.ok(&["cp", local.to_str().unwrap(), "debugged:/tmp/copied.txt", "-c", "main"]);
    assert_eq!(
        cluster.ok(&["exec", "debugged", "-c", "main", "--", "cat", "/tmp/copied.txt"]),
        "through kubectl cp\n"
    );
    let back = cluster.path("back.txt");
    cluster.ok(&["cp", "debugged:/tmp/copied.txt", back.to_str().unwrap(), "-c", "main"]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "through kubectl cp\n");
    let api_ip = cluster.ok(&["get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(
        cluster
            .ok(&[
                "exec",
                "debugged",
                "-c",
                "main",
                "--",
                "sh",
                "-c",
                "echo $KUBERNETES_SERVICE_HOST"
            ])
            .trim(),
        api_ip
    );
    cluster.ok(&[
        "debug",
        "debugged",
        "--image=fixture:v1",
        "--container=dbg",
        "--",
        "sh",
        "-c",
        "echo debug-here $(hostname); sleep 600",
    ]);
    cluster.until(
        "the ephemeral container runs",
        &["get", "pod", "debugged", "-o", "json"],
        |pod| pod["status"]["ephemeralContainerStatuses"][0]["state"]["running"].is_object(),
    );
    let text = cluster.wait_log("debugged", "dbg", |t| t.contains("debug-here"));
    assert!(text.contains("debug-here debugged"), "the pod's hostname: {text}");
    // kubectl debug -it --target: the ephemeral container's terminal is attached (through
    // CRI Attach and its supervisor), typed lines reach its shell and its output comes
    // back; it sees the target container's processes.
    let kubeconfig = cluster.data().join("kubeconfig");
    let mut typed = Command::new("script")
        .args([
            "-qec",
            &format!(
                "KUBECONFIG={} {KUBECTL} debug -it debugged --image=fixture:v1 --container=dbg2 --target=main -- sh",
                kubeconfig.display()
            ),
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = typed.stdin.take().unwrap();
        stdin.write_all(b"echo $((6*7))-answered; ps -o args\nexit\n").unwrap();
        // script ends its session when its input ends: keep it open until the shell exits.
        std::mem::forget(stdin);
    }
    let typed = typed.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&typed.stdout).into_owned();
    assert!(shown.contains("42-answered"), "the attached shell answered: {shown:?} {typed:?}");
    assert!(shown.contains("sleep 600"), "the target's processes are seen: {shown:?}");
    cluster.until(
        "the attached ephemeral container ended",
        &["get", "pod", "debugged", "-o", "json"],
        |pod| {
            pod["status"]["ephemeralContainerStatuses"].as_array().is_some_and(|list| {
                list.iter().any(|c| c["name"] == "dbg2" && c["state"]["terminated"].is_object())
            })
        },
    );
    // kubectl run -i --rm: stdin reaches the container once (stdinOnce), its output comes
    // back, and the pod is gone after.
    let mut run = Command::new(KUBECTL)
        .env("KUBECONFIG", &kubeconfig)
        .args(["run", "attached", "-i", "--rm", "--restart=Never", "--image=fixture:v1"])
        .args([
            "--command",
            "--",
            "sh",
            "-c",
            "while read line; do echo got:$line; done; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = run.stdin.take().unwrap();
        stdin.write_all(b"one\ntwo\n").unwrap();
    }
    let run = run.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(shown.contains("got:one\ngot:two\ndone\n"), "kubectl run -i: {shown:?} {run:?}");
    assert!(run.status.success(), "{run:?}");
    cluster.until("the run -i --rm pod is deleted", &["get", "pods", "-o", "json"], |list| {
        list["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|p| p["metadata"]["name"] != "attached"))
    });
    let err = cluster.kubectl(&[
        "patch",
        "pod",
        "debugged",
        "--subresource=ephemeralcontainers",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ephemeralContainers/0/image","value":"other"}]"#,
    ]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr)
        .contains("existing ephemeral containers may not be changed"));
    cluster.ok(&["delete", "pod", "debugged", "--wait=false"]);
    // Probes: readiness gates Ready, a failing liveness probe restarts the container.
    let probed = cluster.until(
        "probed: http ready, slow not yet",
        &["get", "pod", "probed", "-o", "json"],
        |pod| {
            let statuses =
                pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let get = |name: &str| {
                statuses.iter().find(|c| c["name"] == name).cloned().unwrap_or_default()
            };
            get("http")["ready"] == true
                && get("http")["started"] == true
                && get("slow")["state"]["running"].is_object()
                && get("slow")["ready"] == false
        },
    );
    assert_ne!(
        probed["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["status"],
        "True"
    );
    cluster.until(
        "probed Ready once the file is there",
        &["get", "pod", "probed", "-o", "json"],
        running_ready,
    );
    // kubectl port-forward through the API server, the agent and the CRI streaming
    // server, both ways kubectl 1.32 speaks: SPDY/3.1 tunnelled in a WebSocket (what it
    // asks first; at -v=4 it says when it falls back) and plain SPDY/3.1 (with the
    // tunnel turned off): several connections to the pod's port, requests and answers
    // both ways; a port nothing listens on is reported.
    let kubeconfig = cluster.data().join("kubeconfig");
    for tunnel in [true, false] {
        let mut forward = Command::new(KUBECTL)
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", if tunnel { "true" } else { "false" })
            .args(["port-forward", "-v=4", "pod/probed", ":8081", ":9"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(forward.stdout.take().unwrap()));
        let mut local = HashMap::new();
        while local.len() < 2 {
            let line = lines.next().expect("kubectl port-forward says where it listens").unwrap();
            // "Forwarding from 127.0.0.1:PORT -> 8081" (and a line for [::1])
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let (port, remote) = rest.split_once(" -> ").unwrap();
                local.insert(remote.to_owned(), port.parse::<u16>().unwrap());
            }
        }
        for _ in 0..3 {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", local["8081"])).unwrap();
            stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.") && answer.ends_with("ok\n"), "{answer:?}");
        }
        {
            use std::io::Read;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", local["9"])).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            assert!(answer.is_empty(), "nothing listens on 9");
        }
        let _ = forward.kill();
        let forwarded = forward.wait_with_output().unwrap();
        let errors = String::from_utf8_lossy(&forwarded.stderr);
        assert!(errors.contains("error forwarding port 9 to pod"), "{errors}");
        assert!(!errors.contains("fallback"), "tunnel {tunnel}: kubectl fell back: {errors}");
    }
    // The Python client's port-forward: a WebSocket (v4.channel.k8s.io) through the API
    // server and the agent to the runtime's streaming server.
    let script = format!(
        "from kubernetes import client, config\n\
         from kubernetes.stream import portforward\n\
         config.load_kube_config({kubeconfig:?})\n\
         api = client.CoreV1Api()\n\
         pf = portforward(api.connect_get_namespaced_pod_portforward, 'probed', 'default', ports='8081')\n\
         sock = pf.socket(8081)\n\
         sock.setblocking(True)\n\
         sock.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n\
         data = b''\n\
         while not data.endswith(b'ok\\n'):\n\
         \x20   chunk = sock.recv(4096)\n\
         \x20   if not chunk: break\n\
         \x20   data += chunk\n\
         print(data.decode())\n\
         pf.close()\n",
        kubeconfig = kubeconfig.to_string_lossy()
    );
    let ran = Command::new(&python).args(["-c", &script]).output().unwrap();
    let said = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success() && said.starts_with("HTTP/1.") && said.trim_end().ends_with("ok"),
        "python port-forward: {said}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let restarted = cluster.until(
        "the liveness probe restarts slow",
        &["get", "pod", "probed", "-o", "json"],
        |pod| {
            pod["status"]["containerStatuses"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["name"] == "slow" && c["restartCount"].as_i64().unwrap_or(0) >= 1)
            })
        },
    );
    let slow = restarted["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(slow["lastState"]["terminated"]["exitCode"], 137, "{slow}");
    // What describe shows of it: each failed probe as an Unhealthy event (repeats
    // counted on one), and the kill.
    let events = cluster.until(
        "probed's events",
        &["get", "events", "--field-selector", "involvedObject.name=probed", "-o", "json"],
        |list| {
            list["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["reason"] == "Killing"
                        && e["message"].as_str().is_some_and(|m| m.contains("failed a probe"))
                })
            })
        },
    );
    let unhealthy = |prefix: &str| {
        events["items"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "Unhealthy"
                && e["type"] == "Warning"
                && e["message"].as_str().is_some_and(|m| m.starts_with(prefix))
        })
    };
    assert!(unhealthy("Readiness probe failed: "), "{events:#}");
    assert!(unhealthy("Liveness probe failed: "), "{events:#}");
    // kubectl logs, through the API server and the agent's kubelet API.
    let logs = cluster.ok(&["logs", "reader", "--tail", "2"]);
    assert_eq!(logs.lines().count(), 2, "{logs}");
    assert!(logs.lines().all(|l| l.starts_with("key=")), "{logs}");
    let stamped = cluster.ok(&["logs", "reader", "--tail", "1", "--timestamps"]);
    assert!(stamped.starts_with("20") && stamped.contains(" key="), "{stamped}");
    let mut follow = Command::new(KUBECTL)
        .env("KUBECONFIG", cluster.data().join("kubeconfig"))
        .args(["logs", "-f", "reader", "--tail", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut followed = String::new();
    {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            followed.push_str(&line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        followed.lines().filter(|l| l.starts_with("key=")).count(),
        3,
        "logs -f follows new lines: {followed}"
    );
    // shareProcessNamespace: one container sees the other's processes; the pod's cgroup
    // holds the sum of its containers' limits, as the kubelet sizes it.
    let together =
        cluster.until("the together pod runs", &["get", "pod", "together", "-o", "json"], |p| {
            p["status"]["phase"] == "Running"
        });
    let ps = cluster.ok(&["exec", "together", "-c", "b", "--", "ps", "-o", "args"]);
    assert!(ps.contains("sleep 1234") && ps.contains("sleep 4321"), "{ps}");
    let ps = cluster.ok(&["exec", "reader", "--", "ps", "-o", "args"]);
    assert!(!ps.contains("sleep 1234"), "{ps}");
    let uid = together["metadata"]["uid"].as_str().unwrap();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let limit_file = if v2 {
        format!("/sys/fs/cgroup/kubepods/burstable/pod{uid}/memory.max")
    } else {
        format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{uid}/memory.limit_in_bytes")
    };
    let limit = std::fs::read_to_string(&limit_file).expect("the pod's memory cgroup");
    assert_eq!(limit.trim(), (64u64 << 20).to_string(), "{limit_file}");
    // kubectl exec (WebSocket v5 through the API server, the agent and the runtime's
    // streaming server): output, exit codes, stdin, and a terminal.
    let exec = cluster.kubectl(&[
        "exec",
        "reader",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; cat /etc/s/key; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "out\nsecond", "{exec:?}");
    assert!(String::from_utf8_lossy(&exec.stderr).starts_with("err\n"), "{exec:?}");
    assert_eq!(exec.status.code(), Some(3), "kubectl exec gives the command's exit code: {exec:?}");
    let mut piped = Command::new(KUBECTL)
        .env("KUBECONFIG", cluster.data().join("kubeconfig"))
        .args(["exec", "-i", "reader", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = piped.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").unwrap();
    }
    let piped = piped.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "THROUGH STDIN\n", "{piped:?}");
    let kubeconfig = cluster.data().join("kubeconfig");
    let terminal = Command::new("script")
        .args([
            "-qec",
            &format!(
                "KUBECONFIG={} {KUBECTL} exec -it reader -- sh -c 'tty; stty size'",
                kubeconfig.display()
            ),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&terminal.stdout).into_owned();
    assert!(shown.contains("/dev/pts/"), "a terminal inside: {shown:?} {terminal:?}");
    // The kubelet API admits the API server only.
    let node: Value =
        serde_json::from_str(&cluster.ok(&["get", "node", NODE, "-o", "json"])).unwrap();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap();
    assert!(port > 0);
    let alice = cluster.berth_server_kubeconfig_user("alice");
    // Its serving certificate chains to the kubelet CA, which only the API server
    // trusts: a client of the cluster CA does not take it for anything.
    let wrong_ca = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(cluster.data().join("tls/ca.crt"))
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert_eq!(wrong_ca.status.code(), Some(60), "not verified by the cluster CA: {wrong_ca:?}");
    let refused = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(cluster.data().join("tls/kubelet-ca.crt"))
        .arg("--cert")
        .arg(&alice.0)
        .arg("--key")
        .arg(&alice.1)
        .arg(format!("https://127.0.0.1:{port}/containerLogs/default/reader/reader"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stdout).contains("Forbidden"), "{refused:?}");
    let anonymous = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(cluster.data().join("tls/kubelet-ca.crt"))
        .arg(format!("https://127.0.0.1:{port}/containerLogs/default/reader/reader"))
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success() && anonymous.stdout.is_empty(),
        "no client certificate, no answer"
    );
    // A crashing container is restarted with growing delays; the pod shows why.
    let crash =
        cluster.until("crash restarted twice", &["get", "pod", "crash", "-o", "json"], |pod| {
            pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0) >= 2
        });
    let status = &crash["status"]["containerStatuses"][0];
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 1, "{status}");
    assert_eq!(status["lastState"]["terminated"]["reason"], "Error", "{status}");
    // Events, where kubectl describe shows them.
    let events: Value = serde_json::from_str(&cluster.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
        "-o",
        "json",
    ]))
    .unwrap();
    let reasons: Vec<&str> =
        events["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    for wanted in ["Created", "Started", "BackOff"] {
        assert!(reasons.contains(&wanted), "{wanted} in {reasons:?}");
    }
    let previous = cluster.ok(&["logs", "crash", "--previous"]);
    assert_eq!(previous, "dying\n");
    cluster.until("crash in CrashLoopBackOff", &["get", "pod", "crash", "-o", "json"], |pod| {
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    // A Job's pod runs its init container, then its container, and succeeds.
    cluster.until("the Job completes", &["get", "job", "once", "-o", "json"], |job| {
        job["status"]["succeeded"] == 1
    });
    let job_pods: Value =
        serde_json::from_str(&cluster.ok(&["get", "pods", "-l", "job-name=once", "-o", "json"]))
            .unwrap();
    let job_pod = &job_pods["items"][0];
    assert_eq!(job_pod["status"]["phase"], "Succeeded");
    assert_eq!(job_pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0);

    // Kill -9 of the server (agent and CRI with it): the pods run on, and the restarted
    // agent adopts them without restarting anything.
    let before: Vec<(String, String)> =
        cluster.until("web pods", &["get", "pods", "-l", "app=web", "-o", "json"], |l| {
            l["items"].as_array().is_some_and(|i| i.len() == 2)
        })["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["status"]["containerStatuses"][0]["containerID"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    cluster.kill9();
    cluster.start();
    std::thread::sleep(Duration::from_secs(2));
    for (name, id) in &before {
        let pod = cluster.until(
            "web pod still running",
            &["get", "pod", name, "-o", "json"],
            running_ready,
        );
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["containerID"].as_str().unwrap(), id, "{name} was not restarted");
        assert_eq!(status["restartCount"], 0);
    }

    // Lifecycle hooks: postStart runs before the container counts as started, preStop
    // before it is stopped (seen through a hostPath the hooks write to).
    let hooks_dir = cluster.path("hooks");
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hooks\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: fixture:v1\n    command: [sh, -c, 'sleep 1000']\n    lifecycle:\n      postStart:\n        exec:\n          command: [sh, -c, 'echo started > /hooks/post-start']\n      preStop:\n        exec:\n          command: [sh, -c, 'echo stopping > /hooks/pre-stop']\n    volumeMounts:\n    - name: hooks\n      mountPath: /hooks\n  volumes:\n  - name: hooks\n    hostPath:\n      path: {}\n      type: DirectoryOrCreate\n",
        hooks_dir.display()
    ));
    cluster.until("hooks Running", &["get", "pod", "hooks", "-o", "json"], running_ready);
    assert_eq!(std::fs::read_to_string(hooks_dir.join("post-start")).unwrap(), "started\n");
    cluster.ok(&["delete", "pod", "hooks"]);
    assert_eq!(
        std::fs::read_to_string(hooks_dir.join("pre-stop")).unwrap(),
        "stopping\n",
        "preStop ran before the stop"
    );
    // Deleting everything leaves nothing behind: no sandbox, no mount (network namespaces
    // are pinned by mounts), no cgroup, no volume directory.
    let uids: Vec<String> = cluster.ok_json(&["get", "pods", "-o", "json"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["uid"].as_str().map(|u| format!("pod{u}")))
        .collect();
    assert!(!uids.is_empty());
    cluster.ok(&["delete", "deployment", "web"]);
    cluster.ok(&["delete", "job", "once"]);
    cluster.ok(&["delete", "pod", "reader", "crash", "probed", "together", "--grace-period", "1"]);
    cluster.until("no pods left", &["get", "pods", "-o", "json"], |l| {
        l["items"].as_array().is_some_and(|i| i.is_empty())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.sandboxes() > 0 {
        assert!(Instant::now() < deadline, "sandboxes left: {}", cluster.sandboxes());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cluster.mounts_under(&cluster.path("root")).is_empty(),
        "{:?}",
        cluster.mounts_under(&cluster.path("root"))
    );
    // The agent removes a pod's directory after its sandbox, on its next pass.
    let pods_dir = cluster.data().join("agent/pods");
    let left = || -> Vec<_> {
        std::fs::read_dir(&pods_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "pod directories left: {:?}", left());
        std::thread::sleep(Duration::from_millis(100));
    }
    // No pod cgroup of theirs in any hierarchy (v1 controllers and the v2 tree).
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if uids.contains(&name) {
                found.push(entry.path());
            } else if dir == Path::new("/sys/fs/cgroup")
                || name.starts_with("kubepods")
                || ["burstable", "besteffort", "guaranteed"].contains(&name.as_str())
                || dir.parent() == Some(Path::new("/sys/fs/cgroup"))
            {
                stack.push(entry.path());
            }
        }
    }
    assert!(found.is_empty(), "pod cgroups left: {found:?}");
}

/// One HTTP GET of `/` at `address`: the body.
/// The whole answer (status line, headers, body) to `GET /`, or "" when none came.
fn raw_http(address: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return String::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

fn http_get(address: &str) -> std::io::Result<String> {
    http_get_path(address, "/")
}

fn http_get_path(address: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    // The body: after the first blank line (a CGI script's end of headers may be a bare \n).
    let body = ["\r\n\r\n", "\r\n\n", "\n\n"]
        .iter()
        .filter_map(|end| text.find(end).map(|at| at + end.len()))
        .min()
        .map_or("", |at| &text[at..]);
    Ok(body.trim().to_owned())
}

/// The bodies of `count` requests.
fn answers(address: &str, count: usize) -> std::collections::BTreeSet<String> {
    (0..count).filter_map(|_| http_get(address).ok()).filter(|b| !b.is_empty()).collect()
}

#[test]
fn root_services_answer_on_their_cluster_ip_and_node_port() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    // An address for the node, so that node ports have somewhere to be.
    cluster.node_address("192.168.77.1");
    cluster.extra = vec!["--node-ip".into(), "192.168.77.1".into(), "--nodeport-localhost".into()];
    cluster.start();
    cluster.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 3
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: fixture:v1
        command: ["sh", "-c", "mkdir -p /www/cgi-bin; hostname > /www/index.html; printf '#!/bin/sh\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer; chmod +x /www/cgi-bin/peer; touch /tmp/ready; exec httpd -f -p 8080 -h /www"]
        readinessProbe: {exec: {command: ["test", "-f", "/tmp/ready"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  type: NodePort
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nobody}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let pods = cluster.until(
        "3 hello pods Ready",
        &["get", "pods", "-l", "app=hello", "-o", "json"],
        |l| l["items"].as_array().is_some_and(|i| i.len() == 3 && i.iter().all(running_ready)),
    );
    let names: std::collections::BTreeSet<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let service: Value =
        serde_json::from_str(&cluster.ok(&["get", "service", "hello", "-o", "json"])).unwrap();
    let vip = format!("{}:80", service["spec"]["clusterIP"].as_str().unwrap());
    // Every ready endpoint answers on the ClusterIP within 50 requests.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = answers(&vip, 50);
    while seen != names {
        assert!(
            Instant::now() < deadline,
            "the ClusterIP {vip} answered from {seen:?}, not from all of {names:?}\n{}",
            cluster.server_log()
        );
        std::thread::sleep(Duration::from_millis(200));
        seen = answers(&vip, 50);
    }
    // sessionAffinity: ClientIP sends this client to one endpoint every time; turned off,
    // the choice is random again.
    cluster.ok(&["patch", "service", "hello", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = answers(&vip, 20);
        if seen.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "ClientIP affinity: answers from {seen:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.ok(&["patch", "service", "hello", "-p", r#"{"spec":{"sessionAffinity":"None"}}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers(&vip, 50) != names {
        assert!(Instant::now() < deadline, "affinity never went away");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node port on the node's address, and (--nodeport-localhost) on 127.0.0.1.
    let node_port = http_get("192.168.77.1:30080").unwrap();
    assert!(names.contains(&node_port), "{node_port}");
    let loopback = http_get("127.0.0.1:30080").unwrap();
    assert!(names.contains(&loopback), "{loopback}");
    // externalTrafficPolicy: Local keeps the client's address (no masquerade) and sends
    // node-port traffic to this node's endpoints only (all of them, on one node).
    let masqueraded = http_get_path("192.168.77.1:30080", "/cgi-bin/peer").unwrap();
    // (httpd listens on IPv6 too: addresses come as [::ffff:a.b.c.d].)
    assert_eq!(masqueraded, "[::ffff:10.42.0.1]", "Cluster policy: the node's bridge address");
    cluster.ok(&[
        "patch",
        "service",
        "hello",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let peer = http_get_path("192.168.77.1:30080", "/cgi-bin/peer").unwrap_or_default();
        if peer == "[::ffff:192.168.77.1]" {
            break;
        }
        assert!(Instant::now() < deadline, "Local policy: the pod saw {peer:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A LoadBalancer gets the node's address as its ingress and answers there.
    cluster.apply("apiVersion: v1\nkind: Service\nmetadata:\n  name: lb\nspec:\n  type: LoadBalancer\n  selector:\n    app: hello\n  ports:\n  - port: 8000\n    targetPort: 8080\n");
    cluster.until("the balancer's address", &["get", "service", "lb", "-o", "json"], |svc| {
        svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.168.77.1"
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let balanced = loop {
        match http_get("192.168.77.1:8000") {
            Ok(body) if !body.is_empty() => break body,
            other => {
                assert!(Instant::now() < deadline, "the load balancer never answered: {other:?}")
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(names.contains(&balanced), "{balanced}");
    // A Local load balancer has a health-check node port: 200 with this node's ready
    // endpoints counted, 503 for one whose pods are all elsewhere (none here: no
    // selector matches).
    cluster.apply("apiVersion: v1\nkind: Service\nmetadata:\n  name: local\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector:\n    app: hello\n  ports:\n  - port: 8001\n    targetPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: elsewhere\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector:\n    app: nothing\n  ports:\n  - port: 8002\n");
    let port_of = |name: &str| {
        cluster.ok(&["get", "service", name, "-o", "jsonpath={.spec.healthCheckNodePort}"])
    };
    let (healthy, empty) = (port_of("local"), port_of("elsewhere"));
    assert!(
        healthy.parse::<u16>().is_ok_and(|p| p >= 30000) && healthy != empty,
        "{healthy} {empty}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = raw_http(&format!("192.168.77.1:{healthy}"));
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(Instant::now() < deadline, "the health check never said 200: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.contains(&format!("\"localEndpoints\":{}", names.len())), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = raw_http(&format!("192.168.77.1:{empty}"));
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("\"localEndpoints\":0"), "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "the empty balancer's check: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // From a pod, through the Service (a pod may reach itself: hairpin).
    let first = names.iter().next().unwrap().clone();
    let inside = cluster.ok(&[
        "exec",
        &first,
        "--",
        "sh",
        "-c",
        &format!("for i in 1 2 3 4 5 6; do wget -qO- http://{vip}/; done"),
    ]);
    assert!(inside.lines().count() == 6 && inside.lines().all(|l| names.contains(l)), "{inside}");
    // Cluster DNS: from a pod (its resolv.conf names the cluster DNS and its search path)
    // and from the host, through the kube-dns Service.
    let resolv = cluster.ok(&["exec", &first, "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.43.0.10")
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    let cluster_ip = vip.trim_end_matches(":80").to_owned();
    let lookup = cluster.ok(&["exec", &first, "--", "nslookup", "hello.default.svc.cluster.local"]);
    assert!(lookup.contains(&format!("Address: {cluster_ip}")), "{lookup}");
    // And back: the ClusterIP's PTR record names the Service.
    let reverse = cluster.ok(&["exec", &first, "--", "nslookup", &cluster_ip]);
    assert!(reverse.contains("hello.default.svc.cluster.local"), "{reverse}");
    let srv = cluster.ok(&[
        "exec",
        &first,
        "--",
        "nslookup",
        "-type=srv",
        "_http._tcp.hello.default.svc.cluster.local",
    ]);
    assert!(srv.contains("80 hello.default.svc.cluster.local"), "{srv}");
    let pod_ip = pods["items"][0]["status"]["podIP"].as_str().unwrap().to_owned();
    let pod_name = format!("{}.default.pod.cluster.local", pod_ip.replace('.', "-"));
    let pod_record = cluster.ok(&["exec", &first, "--", "nslookup", &pod_name]);
    assert!(pod_record.contains(&format!("Address: {pod_ip}")), "{pod_record}");
    let missing =
        cluster.kubectl(&["exec", &first, "--", "nslookup", "nothere.default.svc.cluster.local"]);
    assert!(
        !missing.status.success() && String::from_utf8_lossy(&missing.stdout).contains("NXDOMAIN"),
        "{missing:?}"
    );
    let from_host = Command::new("busybox")
        .args(["nslookup", "hello.default.svc.cluster.local", "10.43.0.10"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&from_host.stdout).contains(&format!("Address: {cluster_ip}")),
        "{from_host:?}"
    );
    // A Service without endpoints refuses at once.
    let empty: Value =
        serde_json::from_str(&cluster.ok(&["get", "service", "empty", "-o", "json"])).unwrap();
    let empty_vip = format!("{}:80", empty["spec"]["clusterIP"].as_str().unwrap());
    let began = Instant::now();
    let refused = http_get(&empty_vip).unwrap_err();
    assert!(began.elapsed() < Duration::from_secs(2), "refused, not timed out: {refused:?}");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused:?}");
    // A pod that turns unready leaves the rotation, and comes back.
    cluster.ok(&["exec", &first, "--", "rm", "/tmp/ready"]);
    cluster.until("the pod unready", &["get", "pod", &first, "-o", "json"], |p| !running_ready(p));
    std::thread::sleep(Duration::from_millis(500));
    let without: std::collections::BTreeSet<String> = answers(&vip, 40);
    assert!(!without.contains(&first) && without.len() == 2, "{first} must be out: {without:?}");
    cluster.ok(&["exec", &first, "--", "touch", "/tmp/ready"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(&vip, 40).contains(&first) {
        assert!(Instant::now() < deadline, "{first} never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A scaled Deployment's new pod joins.
    cluster.ok(&["scale", "deployment", "hello", "--replicas", "4"]);
    let pods = cluster.until(
        "4 hello pods Ready",
        &["get", "pods", "-l", "app=hello", "-o", "json"],
        |l| l["items"].as_array().is_some_and(|i| i.len() == 4 && i.iter().all(running_ready)),
    );
    let names: std::collections::BTreeSet<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers(&vip, 60) != names {
        assert!(Instant::now() < deadline, "the new pod never joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Bad Services are refused by the API with the reason, and program nothing.
    for (manifest, wanted) in [
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: badport\nspec:\n  selector:\n    app: hello\n  ports:\n  - port: 70000\n", "must be between 1 and 65535"),
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: dupport\nspec:\n  type: NodePort\n  selector:\n    app: hello\n  ports:\n  - port: 81\n    targetPort: 8080\n    nodePort: 30080\n", "already allocated"),
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: badname\nspec:\n  type: ExternalName\n  externalName: Not A Name!\n", "RFC 1123"),
    ] {
        let path = cluster.path("bad.yaml");
        std::fs::write(&path, manifest).unwrap();
        let refused = cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(!refused.status.success() && text.contains(wanted), "{wanted}: {text}");
    }
    let rules =
        Command::new("nft").args(["list", "table", "ip", "berth-services"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains(". 81 "),
        "no rule for a refused Service"
    );
    // kill -9 of the server: the rules stay in the kernel (the Service answers while no
    // API runs), and the restarted proxy makes the table match the API again, with what
    // changed meanwhile (one Service deleted and another made as it starts).
    let lb_ip = cluster.ok(&["get", "service", "lb", "-o", "jsonpath={.spec.clusterIP}"]);
    cluster.kill9();
    let answer = http_get(&vip).unwrap();
    assert!(names.contains(&answer), "while the server is down: {answer:?}");
    cluster.start();
    cluster.ok(&["delete", "service", "lb"]);
    cluster.apply("apiVersion: v1\nkind: Service\nmetadata:\n  name: late\nspec:\n  selector:\n    app: hello\n  ports:\n  - port: 80\n    targetPort: 8080\n");
    let late_ip = cluster.ok(&["get", "service", "late", "-o", "jsonpath={.spec.clusterIP}"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let map = Command::new("nft")
            .args(["list", "map", "ip", "berth-services", "service-ips"])
            .output()
            .unwrap();
        let map = String::from_utf8_lossy(&map.stdout).into_owned();
        let late = http_get(&format!("{late_ip}:80")).unwrap_or_default();
        // (late may reuse lb's freed address; lb's port 8000 must be gone.)
        if names.contains(&late) && !map.contains(&format!("{lb_ip} . tcp . 8000 ")) {
            break;
        }
        assert!(Instant::now() < deadline, "after the restart: late answered {late:?}; {map}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(names.contains(&http_get(&vip).unwrap()), "hello still answers");
    // Deleting the Service takes its rules away.
    cluster.ok(&["delete", "service", "hello"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = Command::new("nft")
            .args(["list", "map", "ip", "berth-services", "service-ips"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&rules.stdout).into_owned();
        if !text.contains(&vip.replace(":80", "")) {
            break;
        }
        assert!(Instant::now() < deadline, "the Service's rules stayed: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.ok(&["delete", "deployment", "hello"]);
    cluster.until("no pods left", &["get", "pods", "-o", "json"], |l| {
        l["items"].as_array().is_some_and(|i| i.is_empty())
    });
}

/// A pod's image from a registry that wants a login: pulled with the credentials of the
/// pod's `imagePullSecrets` (`kubectl create secret docker-registry`); without them the
/// pull fails and says why.
#[test]
fn root_private_images_are_pulled_with_the_pods_pull_secrets() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    // In the cluster's network namespace, as the server is.
    let registry = common::registry::Registry::start_with_auth("alice", "wonderland");
    registry.skopeo_put(&format!("oci:{}:v1", cluster.path("layout").display()), "private:v1");
    registry.skopeo_put(&format!("oci:{}:v1", cluster.path("layout").display()), "private:v2");
    let host = registry.host();
    cluster.start();
    cluster.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", registry.host()),
        "--docker-username=alice",
        "--docker-password=wonderland",
    ]);
    // (Each pod its own tag: an image already pulled would not be pulled again.)
    let pod = |name: &str, tag: &str, secrets: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{secrets}  containers:\n  - {{name: c, image: \"{host}/private:{tag}\", command: [sleep, \"1000\"]}}\n")
    };
    cluster.apply(&pod("private", "v1", "  imagePullSecrets: [{name: regcred}]\n"));
    cluster.apply(&pod("nocreds", "v2", "  imagePullSecrets: [{name: absent}]\n"));
    cluster.until("private Running", &["get", "pod", "private", "-o", "json"], running_ready);
    let refused =
        cluster.until("nocreds cannot pull", &["get", "pod", "nocreds", "-o", "json"], |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                .as_str()
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        });
    let message = refused["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("authentication"), "{message}");
    let events = cluster.ok(&["get", "events", "--field-selector=involvedObject.name=nocreds"]);
    assert!(
        events.contains("FailedToRetrieveImagePullSecret") && events.contains("(absent)"),
        "{events}"
    );
    // `imagePullPolicy: Always` pulls at every start, so the copy "private" pulled is not
    // a way around the credentials (as the kubelet: AlwaysPullImages relies on it).
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: always}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: \"{host}/private:v1\", imagePullPolicy: Always, command: [sleep, \"1000\"]}}\n"
    ));
    cluster.until("always cannot pull", &["get", "pod", "always", "-o", "json"], |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            .as_str()
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
}

#[test]
fn root_the_service_proxy_runs_on_its_own() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.extra = vec!["--disable-agent".into()];
    cluster.spawn_server();
    cluster.until("the API answers", &["get", "namespace", "default", "-o", "json"], |_| true);
    // An endpoint on this namespace's loopback, and a default route (a node has one: a
    // cluster IP is routed before the proxy's rules translate it).
    for args in [
        &["addr", "add", "10.250.0.1/32", "dev", "lo"][..],
        &["link", "add", "uplink", "type", "bridge"],
        &["link", "set", "uplink", "up"],
        &["route", "add", "default", "dev", "uplink"],
    ] {
        assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    }
    let listener = std::net::TcpListener::bind("10.250.0.1:8080").unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in listener.incoming().flatten() {
            // The request is read first: closing with it unread would reset the connection.
            let _ = stream.read(&mut [0u8; 1024]);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-the-endpoint\n");
        }
    });
    let objects = cluster.path("web.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80, targetPort: 8080}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: \"\", port: 8080, protocol: TCP}]\n\
         endpoints: [{addresses: [10.250.0.1], conditions: {ready: true}}]\n",
    )
    .unwrap();
    cluster.ok(&["apply", "-f", objects.to_str().unwrap()]);
    let ip = cluster.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let address = format!("{}:80", ip.trim());
    assert!(http_get(&address).is_err(), "the cluster IP answered before any proxy ran");

    let kubeconfig = cluster.data().join("kubeconfig");
    let log = cluster.path("proxy.log");
    let spawn_proxy = || {
        std::fs::write(&log, "").unwrap();
        Command::new(BERTH)
            .args(["--log-level", "debug", "proxy", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap()
    };
    // The table's and chains' kernel handles: new ones if the table was rebuilt.
    let handles = || {
        let output =
            Command::new("nft").args(["-a", "list", "table", "ip", "berth-services"]).output();
        let text = String::from_utf8(output.unwrap().stdout).unwrap();
        let handles: Vec<String> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("table") || l.trim_start().starts_with("chain"))
            .map(|l| l.trim().to_owned())
            .collect();
        assert!(handles.iter().any(|l| l.starts_with("chain svc-")), "{text}");
        handles
    };
    let wait_answer = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = http_get(&address) {
                assert_eq!(body, "from-the-endpoint");
                return;
            }
            assert!(Instant::now() < deadline, "{what}: the cluster IP never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut proxy = spawn_proxy();
    wait_answer("berth proxy");
    // Killed, its rules stay in the kernel and traffic flows on.
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    assert_eq!(http_get(&address).unwrap(), "from-the-endpoint");
    let before = handles();
    // Started again, it reconciles what it finds (nothing to change: the same table and
    // chains, not a rebuild), then follows the API: a Service left with no endpoint
    // refuses at once.
    let mut proxy = spawn_proxy();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains("service rules applied") {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("reconciling the service rules left in the kernel"), "{said}");
    assert_eq!(handles(), before, "the table was rebuilt, not reconciled");
    cluster.ok(&[
        "patch",
        "endpointslice",
        "web-1",
        "--type",
        "merge",
        "-p",
        r#"{"endpoints":[]}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http_get(&address) {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "still answered after the endpoint went: {other:?}"
                )
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    // A kubeconfig that reaches no server is said at once.
    let bad = cluster.path("nowhere.kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let port = text
        .split("https://127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(&bad, text.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:9")).unwrap();
    let output = Command::new(BERTH).arg("proxy").arg("--kubeconfig").arg(&bad).output().unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("cannot list EndpointSlices"), "{said}");
}

/// A device plugin written for the tests: `example.com/dev` devices by id, each given to a
/// container as `/dev/example-ID` (the host's /dev/null) and in `EXAMPLE_DEVICES`.
mod fake_plugin {
    use std::convert::Infallible;
    use std::future::Future;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use berth_agent::devices::api;

    type Http = tonic::codegen::http::Request<tonic::body::Body>;
    type Answer = tonic::codegen::http::Response<tonic::body::Body>;
    type Boxed<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send>>;

    type Watcher = tokio::sync::mpsc::Sender<Result<api::ListAndWatchResponse, tonic::Status>>;

    #[derive(Clone)]
    pub struct Plugin {
        pub devices: Arc<Mutex<Vec<api::Device>>>,
        /// Every ListAndWatch stream open now, to send changes to.
        watchers: Arc<Mutex<Vec<Watcher>>>,
        pub allocated: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl tonic::server::NamedService for Plugin {
        const NAME: &'static str = "v1beta1.DevicePlugin";
    }

    struct Options;
    impl tonic::server::UnaryService<api::Empty> for Options {
        type Response = api::DevicePluginOptions;
        type Future = Boxed<api::DevicePluginOptions>;
        fn call(&mut self, _: tonic::Request<api::Empty>) -> Self::Future {
            Box::pin(async { Ok(tonic::Response::new(api::DevicePluginOptions::default())) })
        }
    }

    struct Watch(Plugin);
    impl tonic::server::ServerStreamingService<api::Empty> for Watch {
        type Response = api::ListAndWatchResponse;
        type ResponseStream = tokio_stream::wrappers::ReceiverStream<
            Result<api::ListAndWatchResponse, tonic::Status>,
        >;
        type Future = Pin<
            Box<
                dyn Future<Output = Result<tonic::Response<Self::ResponseStream>, tonic::Status>>
                    + Send,
            >,
        >;
        fn call(&mut self, _: tonic::Request<api::Empty>) -> Self::Future {
            let plugin = self.0.clone();
            Box::pin(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let devices = plugin.devices.lock().unwrap().clone();
                let _ = tx.send(Ok(api::ListAndWatchResponse { devices })).await;
                plugin.watchers.lock().unwrap().push(tx);
                Ok(tonic::Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
            })
        }
    }

    struct Allocate(Plugin);
    impl tonic::server::UnaryService<api::AllocateRequest> for Allocate {
        type Response = api::AllocateResponse;
        type Future = Boxed<api::AllocateResponse>;
        fn call(&mut self, request: tonic::Request<api::AllocateRequest>) -> Self::Future {
            let plugin = self.0.clone();
            Box::pin(async move {
                let mut container_responses = Vec::new();
                for asked in request.into_inner().container_requests {
                    plugin.allocated.lock().unwrap().push(asked.devices_ids.clone());
                    container_responses.push(api::ContainerAllocateResponse {
                        envs: [("EXAMPLE_DEVICES".to_owned(), asked.devices_ids.join(","))].into(),
                        devices: asked
                            .devices_ids
                            .iter()
                            .map(|id| api::DeviceSpec {
                                container_path: format!("/dev/example-{id}"),
                                host_path: "/dev/null".into(),
                                permissions: "rw".into(),
                            })
                            .collect(),
                        ..Default::default()
                    });
                }
                Ok(tonic::Response::new(api::AllocateResponse { container_responses }))
            })
        }
    }

    impl tower::Service<Http> for Plugin {
        type Response = Answer;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: Http) -> Self::Future {
            let plugin = self.clone();
            Box::pin(async move {
                Ok(match request.uri().path() {
                    "/v1beta1.DevicePlugin/GetDevicePluginOptions" => {
                        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                            api::DevicePluginOptions,
                            api::Empty,
                        >::default(
                        ));
                        grpc.unary(Options, request).await
                    }
                    "/v1beta1.DevicePlugin/ListAndWatch" => {
                        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                            api::ListAndWatchResponse,
                            api::Empty,
                        >::default(
                        ));
                        grpc.server_streaming(Watch(plugin), request).await
                    }
                    "/v1beta1.DevicePlugin/Allocate" => {
                        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                            api::AllocateResponse,
                            api::AllocateRequest,
                        >::default(
                        ));
                        grpc.unary(Allocate(plugin), request).await
                    }
                    other => tonic::Status::unimplemented(other.to_owned()).into_http(),
                })
            })
        }
    }

    impl Plugin {
        pub fn new(ids: &[&str]) -> Plugin {
            Plugin {
                devices: Arc::new(Mutex::new(
                    ids.iter()
                        .map(|id| api::Device {
                            id: (*id).to_owned(),
                            health: api::HEALTHY.into(),
                            topology: None,
                        })
                        .collect(),
                )),
                watchers: Arc::default(),
                allocated: Arc::default(),
            }
        }

        /// Serves at `dir/NAME.sock` and registers with the agent's `dir/kubelet.sock`;
        /// the returned token stops it (the socket goes, as a plugin that exits).
        pub async fn run(&self, dir: &Path, name: &str) -> tokio_util::sync::CancellationToken {
            let socket: PathBuf = dir.join(format!("{name}.sock"));
            let _ = std::fs::remove_file(&socket);
            let listener = tokio::net::UnixListener::bind(&socket).unwrap();
            let stop = tokio_util::sync::CancellationToken::new();
            let (plugin, until) = (self.clone(), stop.clone());
            let watchers = self.watchers.clone();
            {
                // Its streams end when it stops (a graceful shutdown waits for them).
                let (watchers, stopped) = (watchers.clone(), stop.clone());
                tokio::spawn(async move {
                    stopped.cancelled().await;
                    watchers.lock().unwrap().clear();
                });
            }
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(plugin)
                    .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
                    .await;
                // Its streams end with it.
                watchers.lock().unwrap().clear();
                let _ = std::fs::remove_file(socket);
            });
            let channel =
                berth_agent::devices::unix_channel(&dir.join(api::KUBELET_SOCKET)).await.unwrap();
            let _: api::Empty = berth_agent::devices::unary(
                &channel,
                "/v1beta1.Registration/Register",
                api::RegisterRequest {
                    version: api::VERSION.into(),
                    endpoint: format!("{name}.sock"),
                    resource_name: "example.com/dev".into(),
                    options: None,
                },
            )
            .await
            .expect("registered");
            stop
        }

        /// Marks a device unhealthy and tells the agent.
        pub async fn sicken(&self, id: &str) {
            let devices = {
                let mut devices = self.devices.lock().unwrap();
                for d in devices.iter_mut().filter(|d| d.id == id) {
                    d.health = api::UNHEALTHY.into();
                }
                devices.clone()
            };
            let watchers = self.watchers.lock().unwrap().clone();
            for watcher in watchers {
                let _ =
                    watcher.send(Ok(api::ListAndWatchResponse { devices: devices.clone() })).await;
            }
        }
    }
}

#[test]
fn root_device_plugins_give_pods_distinct_devices() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.start();
    let dir = cluster.data().join("agent/device-plugins");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let plugin = fake_plugin::Plugin::new(&["a", "b"]);
    let stop = runtime.block_on(plugin.run(&dir, "example"));
    let devices = |node: &Value, field: &str| {
        node["status"][field]["example.com/dev"].as_str().unwrap_or("").to_owned()
    };
    cluster.until(
        "the devices in the node's capacity",
        &["get", "node", NODE, "-o", "json"],
        |node| devices(node, "capacity") == "2" && devices(node, "allocatable") == "2",
    );
    let pod = |name: &str, count: u32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: fixture:v1\n    command: [\"sh\", \"-c\", \"echo devices=$EXAMPLE_DEVICES; ls /dev | grep example; sleep 1000\"]\n    resources: {{limits: {{example.com/dev: \"{count}\"}}}}\n"
        )
    };
    cluster.apply(&format!("{}---\n{}---\n{}", pod("one", 1), pod("two", 1), pod("greedy", 3)));
    let mut given = Vec::new();
    for name in ["one", "two"] {
        cluster.until(&format!("{name} runs"), &["get", "pod", name, "-o", "json"], |p| {
            p["status"]["phase"] == "Running"
        });
        let log = cluster.wait_log(name, "main", |l| l.contains("devices="));
        let id = log.lines().find_map(|l| l.split("devices=").nth(1)).unwrap().trim().to_owned();
        assert!(log.contains(&format!("example-{id}")), "the device node is there: {log}");
        given.push(id);
    }
    // one's device, then two's.
    let (ones, twos) = (given[0].clone(), given[1].clone());
    let mut both = given.clone();
    both.sort();
    assert_eq!(both, ["a", "b"], "each pod its own device");
    // More than exist: Pending, with the scheduler's reason.
    cluster.until(
        "greedy stays Pending with the reason",
        &["get", "events", "-o", "json"],
        |events| {
            events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["involvedObject"]["name"] == "greedy"
                        && e["reason"] == "FailedScheduling"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("Insufficient example.com/dev"))
                })
            })
        },
    );
    // Bound by hand past the scheduler, more than the node has free: rejected at
    // admission as the kubelet does (Failed, UnexpectedAdmissionError), not left waiting.
    cluster.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: bypass}\nspec:\n  nodeName: test-node\n  containers:\n  - {name: main, image: fixture:v1, command: [sleep, \"1000\"], resources: {limits: {example.com/dev: \"1\"}}}\n");
    let rejected = cluster.until("bypass rejected", &["get", "pod", "bypass", "-o", "json"], |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(rejected["status"]["reason"], "UnexpectedAdmissionError", "{rejected:#}");
    let message = rejected["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("requested number of devices unavailable for example.com/dev. Requested: 1, Available: 0"),
        "{message}"
    );
    cluster.ok(&["delete", "pod", "bypass", "--grace-period", "1"]);
    // An unhealthy device leaves allocatable; a plugin that goes takes all of them out.
    runtime.block_on(plugin.sicken("a"));
    cluster.until("one device unhealthy", &["get", "node", NODE, "-o", "json"], |node| {
        devices(node, "capacity") == "2" && devices(node, "allocatable") == "1"
    });
    stop.cancel();
    cluster.until("the plugin gone", &["get", "node", NODE, "-o", "json"], |node| {
        devices(node, "allocatable") == "0"
    });
    // Registered again (a restarted plugin): back, and a freed device goes to a new pod.
    let plugin = fake_plugin::Plugin::new(&["a", "b"]);
    let _stop = runtime.block_on(plugin.run(&dir, "example"));
    cluster.until("the plugin back", &["get", "node", NODE, "-o", "json"], |node| {
        devices(node, "allocatable") == "2"
    });
    cluster.ok(&["delete", "pod", "one", "greedy", "--grace-period", "1"]);
    cluster.apply(&pod("three", 1));
    cluster.until("three runs", &["get", "pod", "three", "-o", "json"], |p| {
        p["status"]["phase"] == "Running"
    });
    let log = cluster.wait_log("three", "main", |l| l.contains("devices="));
    assert!(
        log.contains(&format!("devices={ones}\n")) && !log.contains(&format!("devices={twos}")),
        "three got the device one gave back, not two's ({twos}): {log}"
    );
    cluster.ok(&["delete", "pod", "two", "three", "--grace-period", "1"]);
}

/// The pod scenario with the agent driving containerd 1.6's CRI instead of berth's: a
/// Deployment's pods Ready on containerd's network, logs, exec (exit code, stdin), a
/// Secret, a ConfigMap that follows its edits and a subPath of it, cp both ways,
/// port-forward, a liveness restart, OOMKilled, a preStop hook, and nothing left in
/// containerd once the pods are gone.
#[test]
fn root_the_agent_drives_containerd_through_cri_too() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    // containerd with a CNI list of its own; the fixture in its store.
    let net = cluster.path("containerd-net.d");
    std::fs::create_dir_all(&net).unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "ctrd-pods",
        "plugins": [
            {"type": "bridge", "bridge": "ctrd0", "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.96.200.0/24"}]],
                      "dataDir": cluster.path("ctrd-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(net.join("10-pods.conflist"), conf.to_string()).unwrap();
    let containerd = common::containerd::Containerd::start(
        &cluster.path("containerd"),
        &net,
        &cluster.path("fixture.tar"),
    );
    cluster.extra = vec![
        "--container-runtime-endpoint".into(),
        format!("unix://{}", containerd.socket.display()),
    ];
    cluster.start();
    let node: Value =
        serde_json::from_str(&cluster.ok(&["get", "node", NODE, "-o", "json"])).unwrap();
    let runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap_or("");
    assert!(runtime.starts_with("containerd://"), "{runtime}");
    cluster.ok(&["create", "secret", "generic", "word", "--from-literal=key=sesame"]);
    cluster.ok(&["create", "configmap", "settings", "--from-literal=greeting=first"]);
    let hooks = cluster.path("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    cluster.apply(
        &r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: fixture:v1
        command: ["sh", "-c", "echo hello from $HOSTNAME; touch /tmp/ready; echo ok > /tmp/index.html; exec httpd -f -p 8081 -h /tmp"]
        readinessProbe: {exec: {command: ["cat", "/tmp/ready"]}, periodSeconds: 1}
        volumeMounts: [{name: s, mountPath: /secret}, {name: c, mountPath: /settings}, {name: c, mountPath: /one/greeting, subPath: greeting}]
      volumes:
      - {name: s, secret: {secretName: word}}
      - {name: c, configMap: {name: settings}}
---
apiVersion: v1
kind: Pod
metadata: {name: lively}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: c
    image: fixture:v1
    command: ["sh", "-c", "touch /tmp/alive; exec sleep 1000"]
    livenessProbe: {exec: {command: ["test", "-f", "/tmp/alive"]}, periodSeconds: 1, failureThreshold: 1}
    lifecycle: {preStop: {exec: {command: [sh, -c, "echo stopping > /hooks/pre-stop"]}}}
    volumeMounts: [{name: hooks, mountPath: /hooks}]
  volumes: [{name: hooks, hostPath: {path: HOOKS, type: Directory}}]
---
apiVersion: v1
kind: Pod
metadata: {name: greedy}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: c
    image: fixture:v1
    command: ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 1000"]
    resources: {limits: {memory: 32Mi}}
"#
        .replace("HOOKS", hooks.to_str().unwrap()),
    );
    let listed = cluster.until(
        "two Ready pods on containerd",
        &["get", "pods", "-l", "app=web", "-o", "json"],
        |list| {
            list["items"].as_array().is_some_and(|items| {
                items.len() == 2
                    && items.iter().all(|p| {
                        p["status"]["podIP"].as_str().is_some_and(|ip| ip.starts_with("10.96.200."))
                            && p["status"]["conditions"].as_array().is_some_and(|c| {
                                c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
                            })
                    })
            })
        },
    );
    let name = listed["items"][0]["metadata"]["name"].as_str().unwrap().to_owned();
    let log = cluster.wait_log(&name, "web", |l| l.contains("hello from"));
    assert!(log.contains(&format!("hello from {name}")), "{log}");
    // kubectl logs reaches containerd's log file through the agent.
    let logs = cluster.ok(&["logs", &name]);
    assert!(logs.contains("hello from"), "{logs}");
    // exec through containerd's streaming server: output, exit code, stdin; the volumes
    // the agent made (a Secret, a ConfigMap and a subPath of it) are in the container, and
    // an edit of the ConfigMap reaches it.
    let exec = cluster.kubectl(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "cat /secret/key /one/greeting; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "sesamefirst", "{exec:?}");
    assert_eq!(exec.status.code(), Some(3), "{exec:?}");
    let mut piped = Command::new(KUBECTL)
        .env("KUBECONFIG", cluster.data().join("kubeconfig"))
        .args(["exec", "-i", &name, "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        piped.stdin.take().unwrap().write_all(b"through stdin\n").unwrap();
    }
    let piped = piped.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "THROUGH STDIN\n", "{piped:?}");
    cluster.ok(&["patch", "configmap", "settings", "-p", r#"{"data":{"greeting":"second"}}"#]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.ok(&["exec", &name, "--", "cat", "/settings/greeting"]) != "second" {
        assert!(Instant::now() < deadline, "the ConfigMap edit never reached the container");
        std::thread::sleep(Duration::from_millis(250));
    }
    // kubectl cp both ways.
    let local = cluster.path("copied.txt");
    std::fs::write(&local, "through kubectl cp\n").unwrap();
    cluster.ok(&["cp", local.to_str().unwrap(), &format!("{name}:/tmp/copied.txt")]);
    let back = cluster.path("back.txt");
    cluster.ok(&["cp", &format!("{name}:/tmp/copied.txt"), back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "through kubectl cp\n");
    // port-forward through the API server, the agent and containerd.
    let mut forward = Command::new(KUBECTL)
        .env("KUBECONFIG", cluster.data().join("kubeconfig"))
        .args(["port-forward", &format!("pod/{name}"), ":8081"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its output stays open while it runs: it says each connection it handles.
    let mut said = std::io::BufRead::lines(std::io::BufReader::new(forward.stdout.take().unwrap()));
    let port = {
        let lines = &mut said;
        loop {
            let line = lines.next().expect("kubectl port-forward says where it listens").unwrap();
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                break rest.split_once(" -> ").unwrap().0.parse::<u16>().unwrap();
            }
        }
    };
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.") && answer.ends_with("ok\n"), "{answer:?}");
    }
    let _ = forward.kill();
    let _ = forward.wait();
    drop(said);
    // A failing liveness probe restarts the container; an OOM shows OOMKilled; deleting a
    // pod runs its preStop hook.
    cluster.until("lively Running", &["get", "pod", "lively", "-o", "json"], running_ready);
    cluster.ok(&["exec", "lively", "--", "rm", "/tmp/alive"]);
    cluster.until("lively restarted", &["get", "pod", "lively", "-o", "json"], |p| {
        p["status"]["containerStatuses"][0]["restartCount"].as_i64().is_some_and(|n| n >= 1)
    });
    let greedy = cluster.until("greedy OOMKilled", &["get", "pod", "greedy", "-o", "json"], |p| {
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });
    assert_eq!(greedy["status"]["phase"], "Failed", "{greedy:#}");
    cluster.ok(&["delete", "pod", "lively", "greedy"]);
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-stop")).unwrap_or_default(),
        "stopping\n",
        "the preStop hook ran"
    );
    cluster.ok(&["delete", "deployment", "web"]);
    cluster.until("no pods left", &["get", "pods", "-o", "json"], |l| {
        l["items"].as_array().is_some_and(|i| i.is_empty())
    });
    // containerd holds no sandbox or container of them any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = Command::new("ctr")
            .arg("--address")
            .arg(&containerd.socket)
            .args(["-n", "k8s.io", "containers", "ls", "-q"])
            .output()
            .unwrap();
        let left = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "containerd still holds: {left}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn root_disk_pressure_evicts_the_least_important_pod_first() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    // The server's data (and so the agent's nodefs) on a small filesystem of the test's.
    std::fs::create_dir_all(cluster.data()).unwrap();
    berth_sys::nix::mount::mount(
        Some("tmpfs"),
        &cluster.data(),
        Some("tmpfs"),
        berth_sys::nix::mount::MsFlags::empty(),
        Some("size=96m"),
    )
    .expect("a tmpfs for the data directory");
    cluster.extra = vec!["--eviction-hard".into(), "nodefs.available<40%".into()];
    cluster.extra.extend(["--kube-reserved".into(), "cpu=250m,memory=64Mi".into()]);
    cluster.extra.extend(["--system-reserved".into(), "ephemeral-storage=8Mi".into()]);
    cluster.start();
    // Capacity and allocatable as the kubelet's: the filesystem's size, less the
    // reservations and the hard eviction threshold.
    let node = cluster.ok_json(&["get", "node", NODE, "-o", "json"]);
    let (capacity, allocatable) = (&node["status"]["capacity"], &node["status"]["allocatable"]);
    assert_eq!(capacity["ephemeral-storage"], "98304Ki", "the 96m tmpfs: {node:#}");
    let storage = 96u64 << 20;
    let expected = storage - (8 << 20) - storage * 40 / 100;
    assert_eq!(allocatable["ephemeral-storage"], expected.to_string(), "{node:#}");
    let cpus: u64 = capacity["cpu"].as_str().unwrap().parse().unwrap();
    assert_eq!(allocatable["cpu"], format!("{}m", cpus * 1000 - 250), "{node:#}");
    let kib = |v: &Value| v.as_str().unwrap().trim_end_matches("Ki").parse::<u64>().unwrap();
    assert_eq!(kib(&capacity["memory"]) - kib(&allocatable["memory"]), 64 * 1024, "{node:#}");
    cluster.apply(BESTEFFORT_AND_GUARANTEED);
    for name in ["besteffort", "guaranteed"] {
        cluster.until(&format!("{name} runs"), &["get", "pod", name, "-o", "json"], |p| {
            p["status"]["phase"] == "Running"
        });
    }
    // Fill the filesystem past the threshold.
    let stat = berth_sys::nix::sys::statvfs::statvfs(&cluster.data()).unwrap();
    let unit = stat.fragment_size() as u64;
    let (total, available) = (stat.blocks() as u64 * unit, stat.blocks_available() as u64 * unit);
    let fill = available.saturating_sub(total * 3 / 10);
    let filler = cluster.data().join("filler");
    let made = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .expect("fallocate");
    assert!(made.success());
    let condition = |node: &Value, kind: &str| {
        node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == kind))
            .and_then(|c| c["status"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    let tainted = |node: &Value| {
        node["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter().any(|t| {
                t["key"] == "node.kubernetes.io/disk-pressure" && t["effect"] == "NoSchedule"
            })
        })
    };
    cluster.until("DiskPressure and its taint", &["get", "node", NODE, "-o", "json"], |node| {
        condition(node, "DiskPressure") == "True" && tainted(node)
    });
    let evicted = cluster.until(
        "the BestEffort pod evicted",
        &["get", "pod", "besteffort", "-o", "json"],
        |p| p["status"]["phase"] == "Failed",
    );
    assert_eq!(evicted["status"]["reason"], "Evicted", "{evicted:#}");
    assert!(
        evicted["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("low on resource: ephemeral-storage")),
        "{evicted:#}"
    );
    // The Guaranteed pod was still running when the BestEffort one went.
    let guaranteed = cluster.pod("guaranteed");
    let events = cluster.ok(&["get", "events", "--field-selector", "reason=Evicted", "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    let first = events["items"].as_array().and_then(|items| {
        items.iter().min_by_key(|e| e["lastTimestamp"].as_str().unwrap_or("").to_owned()).cloned()
    });
    assert_eq!(
        first.as_ref().map(|e| e["involvedObject"]["name"].clone()),
        Some(serde_json::json!("besteffort"))
    );
    assert!(
        guaranteed["status"]["phase"] == "Running" || guaranteed["status"]["reason"] == "Evicted",
        "{guaranteed:#}"
    );
    // Space again: the condition and the taint go.
    std::fs::remove_file(&filler).unwrap();
    cluster.until("no more pressure", &["get", "node", NODE, "-o", "json"], |node| {
        condition(node, "DiskPressure") == "False" && !tainted(node)
    });
    cluster.ok(&["delete", "pod", "besteffort", "guaranteed", "--grace-period", "1"]);
}

/// Memory pressure, with a threshold set just under what the machine has available when
/// the test starts: a Burstable pod that fills a memory-backed emptyDir far beyond its
/// request is evicted first, before a BestEffort pod that uses little (the kubelet ranks
/// by use above requests, not by QoS class alone); its memory comes back with its
/// volume, and MemoryPressure and its taint go while the other pods keep running.
#[test]
fn root_memory_pressure_evicts_the_pod_furthest_over_its_request_first() {
    if !root_or_skip() {
        return;
    }
    let available = || -> u64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kib << 10
    };
    const GIB: u64 = 1 << 30;
    let before = available();
    assert!(
        before > 4 * GIB,
        "this test fills 2.5 GiB of memory and needs 4 GiB available; the machine has {} MiB",
        before >> 20
    );
    let mut cluster = Cluster::new();
    // Pressure once about a GiB of what is available now is used.
    let threshold = (before - GIB) >> 20;
    cluster.extra = vec!["--eviction-hard".into(), format!("memory.available<{threshold}Mi")];
    cluster.start();
    cluster.apply(
        &(r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: fixture:v1
    command: ["sh", "-c", "while [ ! -e /fill/go ]; do sleep 0.1; done; dd if=/dev/zero of=/fill/data bs=1M count=2560 && echo filled; sleep 1000"]
    resources: {requests: {memory: 16Mi}}
    volumeMounts: [{name: fill, mountPath: /fill}]
  volumes: [{name: fill, emptyDir: {medium: Memory}}]
---
"#
        .to_owned()
            + BESTEFFORT_AND_GUARANTEED),
    );
    for name in ["hog", "besteffort", "guaranteed"] {
        cluster.until(&format!("{name} runs"), &["get", "pod", name, "-o", "json"], |p| {
            p["status"]["phase"] == "Running"
        });
    }
    let condition = |node: &Value| {
        node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "MemoryPressure"))
            .and_then(|c| c["status"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    let tainted = |node: &Value| {
        node["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter().any(|t| {
                t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule"
            })
        })
    };
    assert_eq!(condition(&cluster.ok_json(&["get", "node", NODE, "-o", "json"])), "False");
    // All three run: now the hog fills its memory-backed volume.
    cluster.ok(&["exec", "hog", "--", "touch", "/fill/go"]);
    let evicted = cluster.until("the hog evicted", &["get", "pod", "hog", "-o", "json"], |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(evicted["status"]["reason"], "Evicted", "{evicted:#}");
    assert!(
        evicted["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("The node was low on resource: memory.")),
        "{evicted:#}"
    );
    // Its volume's memory is given back: the pressure goes, the other two still run.
    cluster.until("no more memory pressure", &["get", "node", NODE, "-o", "json"], |node| {
        condition(node) == "False" && !tainted(node)
    });
    for name in ["besteffort", "guaranteed"] {
        let pod = cluster.pod(name);
        assert_eq!(pod["status"]["phase"], "Running", "{name} was not evicted: {pod:#}");
    }
    let events =
        cluster.ok_json(&["get", "events", "--field-selector", "reason=Evicted", "-o", "json"]);
    let evicted: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["involvedObject"]["name"].as_str())
        .collect();
    assert_eq!(evicted, ["hog"], "only the hog went");
    cluster.ok(&["delete", "pod", "hog", "besteffort", "guaranteed", "--grace-period", "1"]);
}

/// Two nodes, each in a network namespace of its own joined by a veth pair as two machines
/// on one network: the server (with its agent) and a `berth agent` that joins it. The
/// server gives each Node a pod range of its own, each node's pods take their addresses
/// from it, and each node routes the other's range through the other's address: a pod
/// reaches a pod on the other node at its own address, and is seen there at its own
/// (no translation). A Node that goes takes its route with it.
#[test]
fn root_pods_on_two_nodes_reach_each_other() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    // The second machine: a network namespace held by a sleeping process.
    struct Holder(Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(Command::new("unshare").args(["--net", "sleep", "600"]).spawn().unwrap());
    let holder = &holder.0;
    // (This thread's namespace: Cluster::new made it, the process's first thread has another.)
    let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let netns = format!("/proc/{}/ns/net", holder.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&netns).ok().is_none_or(|ns| ns == own) {
        assert!(Instant::now() < deadline, "the second namespace never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = |args: &[&str]| {
        let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?}");
    };
    let pid = holder.id().to_string();
    let nsenter = format!("--net={netns}");
    run(&["ip", "link", "add", "node-a", "type", "veth", "peer", "name", "node-b", "netns", &pid]);
    run(&["ip", "addr", "add", "192.168.240.1/24", "dev", "node-a"]);
    run(&["ip", "link", "set", "node-a", "up"]);
    run(&["nsenter", &nsenter, "ip", "link", "set", "lo", "up"]);
    run(&["nsenter", &nsenter, "ip", "addr", "add", "192.168.240.2/24", "dev", "node-b"]);
    run(&["nsenter", &nsenter, "ip", "link", "set", "node-b", "up"]);
    cluster.bind = "192.168.240.1".into();
    cluster.extra = vec!["--node-ip".into(), "192.168.240.1".into()];
    cluster.start();
    // The second node's own image store.
    let loaded = Command::new(BERTH)
        .env("BERTH_ROOT", cluster.path("root-b"))
        .args(["load", "-i"])
        .arg(cluster.path("fixture.tar"))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{loaded:?}");
    let id = String::from_utf8_lossy(&loaded.stdout).trim().rsplit(' ').next().unwrap().to_owned();
    let tagged = Command::new(BERTH)
        .env("BERTH_ROOT", cluster.path("root-b"))
        .args(["tag", &id, "fixture:v1"])
        .status()
        .unwrap();
    assert!(tagged.success());
    let kubeconfig = std::fs::read_to_string(cluster.data().join("kubeconfig")).unwrap();
    let url =
        kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_owned();
    assert!(url.contains("192.168.240.1"), "{url}");
    let token = std::fs::read_to_string(cluster.data().join("node-token")).unwrap();
    let log = std::fs::File::create(cluster.path("agent.log")).unwrap();
    let mut agent = Command::new("nsenter")
        .arg(&nsenter)
        .arg(BERTH)
        .env("BERTH_ROOT", cluster.path("root-b"))
        .args(["agent", "--server", &url, "--token", token.trim(), "--data-dir"])
        .arg(cluster.path("agent-b"))
        .args(["--node-name", "node-b", "--node-ip", "192.168.240.2", "--kubelet-port", "0"])
        // No disk-pressure eviction on the machine's disk (see the joining test).
        .args(["--eviction-hard", "memory.available<100Mi"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = |node: &Value| {
        node["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    cluster.until("node-b Ready", &["get", "node", "node-b", "-o", "json"], ready);
    let nodes = cluster.ok_json(&["get", "nodes", "-o", "json"]);
    let range_of = |name: &str| -> String {
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .and_then(|n| n["spec"]["podCIDR"].as_str())
            .unwrap_or_else(|| panic!("{name} has no pod range: {nodes:#}"))
            .to_owned()
    };
    let (range_a, range_b) = (range_of(NODE), range_of("node-b"));
    assert_ne!(range_a, range_b);
    assert!(range_a.starts_with("10.42.") && range_b.starts_with("10.42."), "{range_a} {range_b}");
    let pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: fixture:v1\n    command: [\"sh\", \"-c\", \"mkdir -p /www/cgi-bin; hostname > /www/index.html; printf '#!/bin/sh\\\\necho\\\\necho $REMOTE_ADDR\\\\n' > /www/cgi-bin/peer; chmod +x /www/cgi-bin/peer; exec httpd -f -p 8080 -h /www\"]\n    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n"
        )
    };
    cluster.apply(&format!("{}---\n{}", pod("web-a", NODE), pod("web-b", "node-b")));
    let mut ips = HashMap::new();
    for (name, range) in [("web-a", &range_a), ("web-b", &range_b)] {
        let pod = cluster.until(
            &format!("{name} Ready"),
            &["get", "pod", name, "-o", "json"],
            running_ready,
        );
        let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
        let prefix = range.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "{name}'s address {ip} is in its node's range {range}");
        ips.insert(name, ip);
    }
    // Each node routes the other's range through the other's address.
    let routes = |enter: Option<&str>| -> String {
        let mut command = match enter {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(ns).arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        let output = command.args(["route", "show", "proto", "66"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let on_a = routes(None);
    assert!(on_a.contains(&format!("{range_b} via 192.168.240.2")), "{on_a}");
    let on_b = routes(Some(&nsenter));
    assert!(on_b.contains(&format!("{range_a} via 192.168.240.1")), "{on_b}");
    // Pod to pod across the nodes, both ways, seen at its own address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetch = |from: &str, url: &str| -> Output {
        cluster.kubectl(&["exec", from, "--", "timeout", "5", "wget", "-qO-", url])
    };
    let peer = format!("http://{}:8080/cgi-bin/peer", ips["web-b"]);
    loop {
        let got = fetch("web-a", &peer);
        let text = String::from_utf8_lossy(&got.stdout);
        if got.status.success() {
            assert!(
                text.contains(&ips["web-a"]),
                "web-b saw web-a as {text:?}, not {}",
                ips["web-a"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "web-a cannot reach web-b: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = fetch("web-b", &format!("http://{}:8080/", ips["web-a"]));
    assert_eq!(String::from_utf8_lossy(&back.stdout).trim(), "web-a", "{back:?}");
    // The second node goes: its pod first (its agent stops it), then the agent and the
    // Node; the route to its range goes with the Node.
    cluster.ok(&["delete", "pod", "web-b", "--grace-period", "1"]);
    let _ = agent.kill();
    let _ = agent.wait();
    cluster.ok(&["delete", "node", "node-b"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while routes(None).contains(&range_b) {
        assert!(
            Instant::now() < deadline,
            "the route to the gone node's pods stayed: {}",
            routes(None)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.ok(&["delete", "pod", "web-a", "--grace-period", "1"]);
}

/// Bad input, reported as the kubelet reports it (where `kubectl describe` shows it) while
/// the agent goes on with the other pods: an image the registry does not have
/// (ErrImagePull, then ImagePullBackOff, with the registry's answer), a volume naming a
/// Secret that does not exist yet (FailedMount, ContainerCreating, then running once the
/// Secret is made), a command that does not exist (the runtime's reason), and a host port
/// an earlier pod holds on the node (rejected: NodePorts).
#[test]
fn root_bad_input_is_reported_and_the_agent_goes_on() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    let registry = common::registry::Registry::start();
    let host = registry.host();
    cluster.start();
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: noimage}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: "{host}/nothing:v1", command: [sleep, "1000"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: neverpull}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: "{host}/nothing:v2", imagePullPolicy: Never, command: [sleep, "1000"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nosecret}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: fixture:v1
    command: ["sh", "-c", "cat /secret/word; sleep 1000"]
    volumeMounts: [{{name: s, mountPath: /secret}}]
  volumes: [{{name: s, secret: {{secretName: later}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: nocommand}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: fixture:v1, command: ["/no/such/binary"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: port1}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: fixture:v1, command: [sleep, "1000"], ports: [{{containerPort: 80, hostPort: 18080}}]}}
"#
    ));
    cluster.until("port1 Running", &["get", "pod", "port1", "-o", "json"], running_ready);
    cluster.apply(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: port2}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - {{name: c, image: fixture:v1, command: [sleep, \"1000\"], ports: [{{containerPort: 81, hostPort: 18080}}]}}\n"));
    let waiting = |p: &Value, reason: &str| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == reason
    };
    // The image: the registry's answer, then the back-off.
    let pulled = cluster.until(
        "noimage in ImagePullBackOff",
        &["get", "pod", "noimage", "-o", "json"],
        |p| waiting(p, "ImagePullBackOff"),
    );
    let message = pulled["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("nothing"), "the message names the image: {pulled:#}");
    // Never pulled, and not here: ErrImageNeverPull.
    cluster.until("neverpull refused", &["get", "pod", "neverpull", "-o", "json"], |p| {
        waiting(p, "ErrImageNeverPull")
    });
    // The Secret: FailedMount, waiting in ContainerCreating.
    let mounting = cluster.until(
        "nosecret waits for its Secret",
        &["get", "pod", "nosecret", "-o", "json"],
        |p| waiting(p, "ContainerCreating"),
    );
    assert_eq!(mounting["status"]["phase"], "Pending", "{mounting:#}");
    // The command: the runtime's reason, naming it.
    let failed = cluster.until(
        "nocommand fails to start",
        &["get", "pod", "nocommand", "-o", "json"],
        |p| {
            let status = &p["status"]["containerStatuses"][0];
            status.to_string().contains("/no/such/binary")
        },
    );
    let status = &failed["status"]["containerStatuses"][0];
    assert!(
        ["RunContainerError", "CrashLoopBackOff", "StartError", "CreateContainerError"]
            .iter()
            .any(|r| status.to_string().contains(r)),
        "{status:#}"
    );
    // The host port: rejected at admission.
    let rejected = cluster.until("port2 rejected", &["get", "pod", "port2", "-o", "json"], |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(rejected["status"]["reason"], "NodePorts", "{rejected:#}");
    assert!(
        rejected["status"]["message"].as_str().unwrap_or("").contains("didn't have free ports"),
        "{rejected:#}"
    );
    // What describe shows: the events.
    let events = cluster.ok_json(&["get", "events", "-o", "json"]);
    let has = |pod: &str, reason: &str, text: &str| {
        events["items"].as_array().unwrap().iter().any(|e| {
            e["involvedObject"]["name"] == pod
                && e["reason"] == reason
                && e["message"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    assert!(has("nosecret", "FailedMount", "later"), "{events:#}");
    assert!(has("noimage", "Pulling", "nothing"), "{events:#}");
    assert!(has("noimage", "BackOff", "nothing"), "{events:#}");
    assert!(has("port2", "NodePorts", "free ports"), "{events:#}");
    let described = cluster.ok(&["describe", "pod", "nosecret"]);
    assert!(described.contains("FailedMount"), "{described}");
    // The Secret made: the waiting pod starts and reads it.
    cluster.ok(&["create", "secret", "generic", "later", "--from-literal=word=arrived"]);
    cluster.until("nosecret runs", &["get", "pod", "nosecret", "-o", "json"], running_ready);
    let log = cluster.wait_log("nosecret", "c", |l| l.contains("arrived"));
    assert!(log.contains("arrived"), "{log}");
    // Still running through all of it.
    assert!(running_ready(&cluster.pod("port1")));
    cluster.ok(&["delete", "pod", "--all", "--grace-period", "1"]);
}

/// What a pod's identity and names look like inside it, as the kubelet makes them:
/// fsGroup owns the pod's volumes (a 0400 Secret readable by a non-root user through the
/// group; an emptyDir passing the group to new files) and is a supplemental group; the
/// hosts file has the pod's FQDN with its subdomain and its hostAliases; runAsNonRoot
/// stops an image that would run as root; a subPath that a symlink leads out of its
/// volume is refused.
#[test]
fn root_identity_names_and_volume_ownership_are_the_kubelets() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.start();
    cluster.ok(&["create", "secret", "generic", "word", "--from-literal=word=guarded"]);
    // What a subPath through the symlink would make on the host, were it followed.
    let probe = format!("berth-subpath-escape-{}", std::process::id());
    cluster.apply(
        &r#"
apiVersion: v1
kind: Pod
metadata: {name: who}
spec:
  terminationGracePeriodSeconds: 1
  hostname: db-0
  subdomain: db
  hostAliases: [{ip: 10.1.2.3, hostnames: [foo.local, bar.local]}]
  securityContext: {runAsUser: 1000, fsGroup: 2000}
  containers:
  - name: c
    image: fixture:v1
    command: ["sh", "-c", "id; echo word=$(cat /secret/word); stat -c 'scratch %g %a' /scratch; touch /scratch/f; stat -c 'file %g' /scratch/f; cat /etc/hosts; echo done; sleep 1000"]
    volumeMounts: [{name: s, mountPath: /secret}, {name: scratch, mountPath: /scratch}]
  volumes:
  - {name: s, secret: {secretName: word, defaultMode: 0400}}
  - {name: scratch, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: rootly}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: c, image: fixture:v1, command: [sleep, "1000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: escape}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - {name: link, image: fixture:v1, command: [ln, -s, /, /vol/out], volumeMounts: [{name: v, mountPath: /vol}]}
  containers:
  - {name: c, image: fixture:v1, command: [sleep, "1000"], volumeMounts: [{name: v, mountPath: /host, subPath: out}]}
  - {name: d, image: fixture:v1, command: [sleep, "1000"], volumeMounts: [{name: v, mountPath: /made, subPath: out/tmp/SUBPATH_PROBE}]}
  - {name: e, image: fixture:v1, command: [sh, -c, "echo pinned > /deep/x; sleep 1000"], volumeMounts: [{name: v, mountPath: /deep, subPath: in/deep}, {name: v, mountPath: /all}]}
  volumes: [{name: v, emptyDir: {}}]
"#
        .replace("SUBPATH_PROBE", &probe),
    );
    let log = cluster.wait_log("who", "c", |l| l.contains("done"));
    assert!(
        log.contains("uid=1000") && log.contains("2000"),
        "fsGroup is a group of the process: {log}"
    );
    assert!(log.contains("word=guarded"), "the 0400 Secret is readable through fsGroup: {log}");
    assert!(log.contains("scratch 2000 2777"), "the emptyDir is the group's, setgid: {log}");
    assert!(log.contains("file 2000"), "a new file takes the group: {log}");
    assert!(log.contains("\tdb-0.db.default.svc.cluster.local\tdb-0\n"), "the FQDN: {log}");
    assert!(log.contains("10.1.2.3\tfoo.local\tbar.local\n"), "the aliases: {log}");
    let waiting = |p: &Value| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    };
    let rootly = cluster.until("rootly refused", &["get", "pod", "rootly", "-o", "json"], waiting);
    let message = rootly["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("container has runAsNonRoot and image will run as root"), "{message}");
    let escape = cluster.until("escape refused", &["get", "pod", "escape", "-o", "json"], waiting);
    let message = escape["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("leads outside the volume"), "{message}");
    let second = &escape["status"]["containerStatuses"][1];
    assert_eq!(second["state"]["waiting"]["reason"], "CreateContainerConfigError", "{escape:#}");
    assert!(
        !Path::new("/tmp").join(&probe).exists(),
        "a directory was made on the host through the symlink"
    );
    // A subPath inside the volume is made there and is the volume's.
    cluster.until("e runs", &["get", "pod", "escape", "-o", "json"], |p| {
        p["status"]["containerStatuses"][2]["state"]["running"].is_object()
    });
    let mut seen = String::new();
    for _ in 0..100 {
        seen = cluster.ok(&[
            "exec",
            "escape",
            "-c",
            "e",
            "--",
            "sh",
            "-c",
            "cat /all/in/deep/x 2>/dev/null; true",
        ]);
        if !seen.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, "pinned\n");
    // The pin is a mount of the agent's while the pod runs, and goes with the pod.
    let data = std::fs::canonicalize(cluster.data()).unwrap();
    let pinned = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(data.to_str().unwrap()) && l.contains("volume-subpaths"))
            .count()
    };
    assert!(pinned() >= 1, "no subPath pin under the agent's directory");
    cluster.ok(&["delete", "pod", "who", "rootly", "escape", "--grace-period", "1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pinned() > 0 {
        assert!(Instant::now() < deadline, "subPath pins left mounted after the pod went");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A container that goes past its memory limit is killed by the kernel, and its status
/// says so as the kubelet's does: terminated with reason OOMKilled (exit code 137), then
/// restarted as its policy says.
#[test]
fn root_a_container_past_its_memory_limit_shows_oomkilled() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: greedy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: fixture:v1
    command: ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 1000"]
    resources: {limits: {memory: 32Mi}}
"#,
    );
    let pod = cluster.until("greedy OOMKilled", &["get", "pod", "greedy", "-o", "json"], |p| {
        let status = &p["status"]["containerStatuses"][0];
        status["lastState"]["terminated"]["reason"] == "OOMKilled"
            || status["state"]["terminated"]["reason"] == "OOMKilled"
    });
    let status = &pod["status"]["containerStatuses"][0];
    let terminated = if status["lastState"]["terminated"].is_object() {
        &status["lastState"]["terminated"]
    } else {
        &status["state"]["terminated"]
    };
    assert_eq!(terminated["exitCode"], 137, "{pod:#}");
    let described = cluster.ok(&["describe", "pod", "greedy"]);
    assert!(described.contains("OOMKilled"), "{described}");
    cluster.ok(&["delete", "pod", "greedy", "--grace-period", "1"]);
}

/// What a pod is given reaches its containers as the kubelet gives it: a variable from a
/// ConfigMap key, envFrom a ConfigMap and a Secret with prefixes, resourceFieldRef with
/// divisors, a downwardAPI volume that follows the pod's labels, a ConfigMap volume that
/// follows its edits, a subPath file, a read-only mount, a sidecar (an init container
/// with restartPolicy Always) running beside the main container; deleting the pod sends
/// SIGTERM first; a key that does not exist stops the container with the reason.
#[test]
fn root_what_a_pod_is_given_reaches_its_containers() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.start();
    let out = cluster.path("out");
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: inputs}}
data: {{mode: fast, size: "3"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: pw}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: inputs, labels: {{tier: one}}}}
spec:
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: side
    image: fixture:v1
    restartPolicy: Always
    command: ["sh", "-c", "sleep 2; echo from-the-sidecar > /shared/flag; sleep 1000"]
    startupProbe: {{exec: {{command: [test, -f, /shared/flag]}}, periodSeconds: 1, failureThreshold: 30}}
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: fixture:v1
    command: ["sh", "-c", "trap 'echo got-TERM > /out/term; exit 0' TERM; echo mode=$MODE cfg_size=$CFG_size pw=$SEC_password mem=$MEM_MI cpu=$CPU_M; echo flag=$(cat /shared/flag); echo one=$(cat /one/size); touch /ro/x 2>/dev/null || echo ro-refused; while true; do echo labels=$(cat /info/labels | tr '\n' ' ') cm=$(cat /cm/mode); sleep 0.2; done"]
    env:
    - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: inputs, key: mode}}}}}}
    - {{name: MEM_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: CPU_M, valueFrom: {{resourceFieldRef: {{resource: requests.cpu, divisor: 1m}}}}}}
    envFrom:
    - {{prefix: CFG_, configMapRef: {{name: inputs}}}}
    - {{prefix: SEC_, secretRef: {{name: pw}}}}
    resources: {{requests: {{cpu: 250m, memory: 32Mi}}, limits: {{memory: 64Mi}}}}
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: info, mountPath: /info}}
    - {{name: cm, mountPath: /cm}}
    - {{name: cm, mountPath: /one/size, subPath: size}}
    - {{name: out, mountPath: /out}}
    - {{name: ro, mountPath: /ro, readOnly: true}}
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: info, downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}}}
  - {{name: cm, configMap: {{name: inputs}}}}
  - {{name: out, hostPath: {{path: "{}", type: DirectoryOrCreate}}}}
  - {{name: ro, emptyDir: {{}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: missingkey}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: fixture:v1
    command: [sleep, "1000"]
    env: [{{name: X, valueFrom: {{configMapKeyRef: {{name: inputs, key: nope}}}}}}]
"#,
        out.display()
    ));
    let log = cluster.wait_log("inputs", "main", |l| l.contains("cm=fast"));
    assert!(log.contains("mode=fast cfg_size=3 pw=hunter2 mem=64 cpu=250\n"), "{log}");
    assert!(
        log.contains("flag=from-the-sidecar\n"),
        "the sidecar started (its startup probe passed) before the main container: {log}"
    );
    assert!(log.contains("one=3\n"), "the subPath file: {log}");
    assert!(log.contains("ro-refused\n"), "the read-only mount: {log}");
    assert!(log.contains("labels=tier=\"one\""), "the downward API: {log}");
    let pod = cluster.until("inputs Ready", &["get", "pod", "inputs", "-o", "json"], running_ready);
    let side = &pod["status"]["initContainerStatuses"][0];
    assert!(side["name"] == "side" && side["state"]["running"].is_object(), "{pod:#}");
    // Edits reach the running container: the pod's labels and the ConfigMap.
    cluster.ok(&["label", "pod", "inputs", "tier=two", "--overwrite"]);
    cluster.ok(&["patch", "configmap", "inputs", "-p", r#"{"data":{"mode":"slow"}}"#]);
    cluster.wait_log("inputs", "main", |l| {
        l.lines().any(|line| line.contains("tier=\"two\"") && line.contains("cm=slow"))
    });
    // A missing key: CreateContainerConfigError, with the kubelet's words.
    let missing =
        cluster.until("missingkey refused", &["get", "pod", "missingkey", "-o", "json"], |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        });
    let message = missing["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert_eq!(message, "couldn't find key nope in ConfigMap default/inputs", "{missing:#}");
    // Deleted: SIGTERM first (the trap writes), within the grace period.
    cluster.ok(&["delete", "pod", "inputs", "missingkey"]);
    assert_eq!(std::fs::read_to_string(out.join("term")).unwrap_or_default(), "got-TERM\n");
}

/// The host's namespaces, DNS settings and a container's security context, as the kubelet
/// asks the runtime for them and as the container sees them: hostNetwork, hostPID and
/// hostIPC share the node's; dnsPolicy None takes dnsConfig alone; runAsUser/runAsGroup,
/// dropped capabilities, no privilege escalation, a read-only root filesystem and a
/// namespaced sysctl.
#[test]
fn root_host_namespaces_dns_and_security_context_reach_the_container() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hosted}
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  hostPID: true
  hostIPC: true
  containers:
  - {name: c, image: fixture:v1, command: ["sh", "-c", "echo net=$(readlink /proc/self/ns/net) pid=$(readlink /proc/self/ns/pid) ipc=$(readlink /proc/self/ns/ipc); sleep 1000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: resolver}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: None
  dnsConfig: {nameservers: [192.0.2.53], searches: [a.example], options: [{name: ndots, value: "2"}]}
  containers:
  - {name: c, image: fixture:v1, command: ["sh", "-c", "cat /etc/resolv.conf; echo done; sleep 1000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: defaulted}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: Default
  dnsConfig: {searches: [b.example]}
  containers:
  - {name: c, image: fixture:v1, command: ["sh", "-c", "cat /etc/resolv.conf; echo done; sleep 1000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: secure}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "80"}]
  containers:
  - name: c
    image: fixture:v1
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); grep -E 'CapEff|NoNewPrivs' /proc/self/status; touch /x 2>/dev/null || echo rofs; echo port=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); sleep 1000"]
    securityContext:
      runAsUser: 1000
      runAsGroup: 3000
      capabilities: {drop: [ALL]}
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
"#,
    );
    let ns = |kind: &str, path: &str| -> String {
        let link = std::fs::read_link(path).unwrap();
        format!("{kind}={}", link.display())
    };
    let log = cluster.wait_log("hosted", "c", |l| l.contains("net="));
    assert!(log.contains(&ns("net", "/proc/thread-self/ns/net")), "the node's network: {log}");
    assert!(log.contains(&ns("pid", "/proc/self/ns/pid")), "the node's processes: {log}");
    assert!(log.contains(&ns("ipc", "/proc/self/ns/ipc")), "the node's IPC: {log}");
    let hosted = cluster.pod("hosted");
    assert_eq!(hosted["status"]["podIP"], hosted["status"]["hostIP"], "{hosted:#}");
    let log = cluster.wait_log("resolver", "c", |l| l.contains("done"));
    assert!(log.contains("nameserver 192.0.2.53\n"), "{log}");
    assert!(log.contains("search a.example\n"), "{log}");
    assert!(log.contains("options ndots:2\n"), "{log}");
    assert!(!log.contains("10.43.0.10"), "dnsPolicy None leaves the cluster's out: {log}");
    // Default: the node's resolv.conf, and the pod's dnsConfig added to it.
    let log = cluster.wait_log("defaulted", "c", |l| l.contains("done"));
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for server in host.lines().filter(|l| l.starts_with("nameserver ")) {
        assert!(log.contains(server), "the node's {server:?}: {log}");
    }
    assert!(log.lines().any(|l| l.contains(" search ") && l.ends_with(" b.example")), "{log}");
    let log = cluster.wait_log("secure", "c", |l| l.contains("port="));
    assert!(log.contains("uid=1000 gid=3000\n"), "{log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("rofs\n"), "{log}");
    assert!(log.contains("port=80\n"), "{log}");
    cluster.ok(&[
        "delete",
        "pod",
        "hosted",
        "resolver",
        "defaulted",
        "secure",
        "--grace-period",
        "1",
    ]);
}

/// A reboot, as far as one machine can play it: the server killed, every process of the
/// pods killed and their namespaces' pins gone. The restarted agent finds the sandboxes
/// not ready and brings the pods back as their restart policy says: the Always pod runs
/// again in a new sandbox (one restart more), the Never pod is not run again and ends
/// Failed.
#[test]
fn root_a_reboot_brings_pods_back_as_their_restart_policy_says() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    cluster.start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: always}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: fixture:v1, command: [sleep, "1000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - {name: c, image: fixture:v1, command: [sleep, "1000"]}
"#,
    );
    let mut before = HashMap::new();
    for name in ["always", "never"] {
        let pod = cluster.until(
            &format!("{name} runs"),
            &["get", "pod", name, "-o", "json"],
            running_ready,
        );
        before.insert(name, pod["status"]["containerStatuses"][0]["containerID"].clone());
    }
    // The "reboot": the server, every container process and what holds the namespaces.
    cluster.kill9();
    let runtime = cluster.path("root").join("cri/runtime");
    let listed = Command::new(BERTH)
        .args(["runtime", "--root"])
        .arg(&runtime)
        .args(["list", "-q"])
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&listed.stdout).lines() {
        let state = Command::new(BERTH)
            .args(["runtime", "--root"])
            .arg(&runtime)
            .args(["state", id])
            .output()
            .unwrap();
        let state: Value = serde_json::from_slice(&state.stdout).unwrap_or(Value::Null);
        if let Some(pid) = state["pid"].as_i64().filter(|p| *p > 0) {
            let _ = berth_sys::nix::sys::signal::kill(
                berth_sys::nix::unistd::Pid::from_raw(pid as i32),
                berth_sys::nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = Command::new("pkill").args(["-9", "-f"]).arg(cluster.dir.path()).status();
    std::thread::sleep(Duration::from_millis(300));
    for mount in cluster.mounts_under(&cluster.path("root")).into_iter().rev() {
        let _ = berth_sys::nix::mount::umount2(
            mount.as_str(),
            berth_sys::nix::mount::MntFlags::MNT_DETACH,
        );
    }
    cluster.start();
    let always = cluster.until("always back", &["get", "pod", "always", "-o", "json"], |p| {
        running_ready(p) && p["status"]["containerStatuses"][0]["containerID"] != before["always"]
    });
    assert!(
        always["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0) >= 1,
        "{always:#}"
    );
    let never = cluster.until("never ends", &["get", "pod", "never", "-o", "json"], |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(
        never["status"]["containerStatuses"][0]["containerID"], before["never"],
        "not run again: {never:#}"
    );
    cluster.ok(&["delete", "pod", "always", "never", "--grace-period", "1"]);
}

/// A projected service-account token as the kubelet keeps one: for the audience the pod
/// names, bound to the pod, living as long as the API gave (a server capping lifetimes at
/// 12 s, the pod asking for an hour), and replaced in the running container before it
/// expires; the API accepts each for that audience only.
#[test]
fn root_projected_tokens_carry_their_audience_and_are_renewed_before_they_expire() {
    if !root_or_skip() {
        return;
    }
    let mut cluster = Cluster::new();
    // A node address pods can reach the API at (the server listens on every address and
    // advertises this one as the `kubernetes` Service's endpoint).
    cluster.node_address("192.168.78.1");
    cluster.bind = "0.0.0.0".into();
    cluster.extra = vec![
        "--service-account-max-token-expiration".into(),
        "12s".into(),
        "--node-ip".into(),
        "192.168.78.1".into(),
    ];
    cluster.start();
    // busybox's own TLS client offers no ECDSA signatures: with openssl in the image, its
    // wget speaks HTTPS through `openssl s_client`, as on a full distribution.
    let layout = cluster.path("tls-layout");
    let mut layers = berth_testkit::image::fixture_layers().unwrap();
    layers.push(berth_testkit::image::Layer {
        tar: berth_testkit::image::LayerBuilder::new()
            .host_program("/usr/bin/openssl")
            .unwrap()
            .finish(),
        compression: berth_testkit::image::Compression::Gzip,
    });
    berth_testkit::image::write_layout(&layout, "tls", &layers, &["sh"]).unwrap();
    cluster.load_layout(&layout, "tls.tar", "fixture:tls");
    let slice = cluster.until(
        "the kubernetes Service's endpoint",
        &["get", "endpointslice", "kubernetes", "-o", "json"],
        |s| s["endpoints"][0]["addresses"][0] == "192.168.78.1",
    );
    let port = cluster.data().join("kubeconfig");
    let port = std::fs::read_to_string(port).unwrap();
    let port = port.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap();
    assert_eq!(
        slice["ports"][0]["port"].as_u64().map(|p| p.to_string()),
        port.rsplit(':').next().map(str::to_owned),
        "{slice}"
    );
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: vaulted}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: fixture:tls
    imagePullPolicy: Never
    command: [sleep, "1000"]
    volumeMounts: [{name: t, mountPath: /var/run/secrets/tokens}]
  volumes:
  - name: t
    projected:
      sources:
      - serviceAccountToken: {audience: vault, expirationSeconds: 3600, path: vault-token}
"#,
    );
    cluster.until("vaulted Running", &["get", "pod", "vaulted", "-o", "json"], running_ready);
    let uid = cluster.pod("vaulted")["metadata"]["uid"].as_str().unwrap().to_owned();
    let read =
        || cluster.ok(&["exec", "vaulted", "--", "cat", "/var/run/secrets/tokens/vault-token"]);
    let claims = |token: &str| -> Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).expect("a JWT");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let review = |token: &str, audiences: &str| -> Value {
        let file = cluster.path("review.yaml");
        std::fs::write(
            &file,
            format!("apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: {token}, audiences: {audiences}}}\n"),
        )
        .unwrap();
        serde_json::from_str(&cluster.ok(&["create", "-f", file.to_str().unwrap(), "-o", "json"]))
            .unwrap()
    };
    // The pod's own token (the kube-api-access volume) authenticates it to the API from
    // inside, through the `kubernetes` Service: allowed what its account may do, and
    // refused what it may not.
    cluster.ok(&[
        "create",
        "rolebinding",
        "default-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    let from_inside = |path: &str| {
        cluster.ok(&[
            "exec",
            "vaulted",
            "--",
            "sh",
            "-c",
            &format!(
                "wget --no-check-certificate -q -O- --header \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT{path} 2>&1; echo rc=$?"
            ),
        ])
    };
    let seen = from_inside("/api/v1/namespaces/default/pods/vaulted");
    assert!(seen.ends_with("rc=0\n"), "{seen}");
    let own: Value = serde_json::from_str(seen.trim_end().trim_end_matches("rc=0")).unwrap();
    assert_eq!(own["metadata"]["uid"], uid.as_str(), "{own}");
    let refused = from_inside("/api/v1/namespaces/default/secrets");
    assert!(refused.contains("403") && refused.ends_with("rc=1\n"), "{refused}");
    // The server's certificate is good for the names in-cluster clients dial, by the CA
    // the pod is given.
    for name in ["kubernetes.default.svc", "kubernetes.default.svc.cluster.local"] {
        let checked = cluster.ok(&[
            "exec",
            "vaulted",
            "--",
            "sh",
            "-c",
            &format!("openssl s_client -connect $KUBERNETES_SERVICE_HOST:443 -CAfile /var/run/secrets/kubernetes.io/serviceaccount/ca.crt -verify_hostname {name} -verify_return_error </dev/null 2>&1; echo rc=$?"),
        ]);
        assert!(
            checked.contains("Verify return code: 0 (ok)") && checked.ends_with("rc=0\n"),
            "{name}: {checked}"
        );
    }
    let checked = cluster.ok(&[
        "exec",
        "vaulted",
        "--",
        "sh",
        "-c",
        "openssl s_client -connect $KUBERNETES_SERVICE_HOST:443 -CAfile /var/run/secrets/kubernetes.io/serviceaccount/ca.crt -verify_ip $KUBERNETES_SERVICE_HOST -verify_return_error </dev/null 2>&1; echo rc=$?",
    ]);
    assert!(checked.contains("Verify return code: 0 (ok)"), "the Service address: {checked}");
    let first = read();
    let said = claims(&first);
    assert_eq!(said["aud"], serde_json::json!(["vault"]), "{said}");
    assert_eq!(said["exp"].as_i64().unwrap() - said["iat"].as_i64().unwrap(), 12, "{said}");
    assert_eq!(said["kubernetes.io"]["pod"]["uid"], uid.as_str(), "{said}");
    assert_eq!(said["sub"], "system:serviceaccount:default:default", "{said}");
    let accepted = review(&first, "[vault]");
    assert_eq!(accepted["status"]["authenticated"], true, "{accepted}");
    let other = review(&first, "[\"https://kubernetes.default.svc.cluster.local\"]");
    assert_ne!(other["status"]["authenticated"], true, "another audience: {other}");
    // Renewed at 80% of its 12 s, in place: the container reads a newer token that the
    // API accepts, before the first one expires.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let now = read();
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "the token was never renewed");
        std::thread::sleep(Duration::from_millis(250));
    };
    let renewed = claims(&second);
    assert!(renewed["iat"].as_i64() > said["iat"].as_i64(), "{renewed}");
    assert!(
        renewed["iat"].as_i64().unwrap() < said["exp"].as_i64().unwrap(),
        "renewed only after the first expired: {said} {renewed}"
    );
    assert_eq!(renewed["aud"], serde_json::json!(["vault"]), "{renewed}");
    let accepted = review(&second, "[vault]");
    assert_eq!(accepted["status"]["authenticated"], true, "{accepted}");
    // Past its expiry the first token is refused.
    let expiry = said["exp"].as_u64().unwrap();
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        <= expiry
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let expired = review(&first, "[vault]");
    assert_ne!(expired["status"]["authenticated"], true, "an expired token: {expired}");
    cluster.ok(&["delete", "pod", "vaulted", "--grace-period", "1"]);
}
