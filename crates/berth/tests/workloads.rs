//! The scheduler and the workload controllers, driven by the real kubectl against
//! `berth server --simulate-nodes 3` (no containers: the simulated nodes play the
//! kubelet's part): Deployments create, scale, roll, pause, undo; Jobs complete and fail;
//! an unschedulable pod says why; node selectors and taints are honoured.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/etcd.rs"]
mod etcd;
use etcd::Etcd;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const KUBECTL: &str = "/usr/bin/kubectl";

struct Server {
    child: Child,
    dir: PathBuf,
    _temp: tempfile::TempDir,
    /// The etcd the server stores in, when not its embedded store (killed after it).
    _etcd: Option<Etcd>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Option<Server> {
        if !Path::new(KUBECTL).exists() {
            assert!(
                std::env::var_os("BERTH_SKIP_KUBECTL_TESTS").is_some(),
                "these tests drive the real kubectl at {KUBECTL}"
            );
            return None;
        }
        let temp = tempfile::Builder::new().prefix("berth-workloads-").tempdir().unwrap();
        Some(Server::start_in(temp, extra))
    }

    /// As [`Server::start`], storing in a real etcd started for it.
    fn start_on_etcd(extra: &[&str]) -> Option<Server> {
        if !Path::new(KUBECTL).exists() {
            return Server::start(extra);
        }
        let etcd_dir = tempfile::Builder::new().prefix("berth-workloads-etcd-").tempdir().unwrap();
        let (etcd, endpoint) = Etcd::start(etcd_dir.path());
        let mut args: Vec<&str> = vec!["--datastore-endpoint", &endpoint];
        args.extend_from_slice(extra);
        let mut server = Server::start_in(etcd_dir, &args);
        server._etcd = Some(etcd);
        // What follows must run on etcd, not quietly on the embedded store.
        assert!(
            !server.dir.join("state.db").exists(),
            "the server made its embedded store though given --datastore-endpoint"
        );
        Some(server)
    }

    /// Starts (again) on the data directory of `temp`.
    fn start_in(temp: tempfile::TempDir, extra: &[&str]) -> Server {
        let dir = temp.path().to_owned();
        let _ = std::fs::remove_file(dir.join("kubeconfig"));
        let child = Command::new(BERTH)
            .args([
                "server",
                "--disable-agent",
                "--https-listen-port",
                "0",
                "--bind-address",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(&dir)
            .args(["--simulate-nodes", "3", "--simulated-pod-start-delay-ms", "50"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { child, dir, _temp: temp, _etcd: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the server did not come up with its nodes");
            if server.dir.join("kubeconfig").exists()
                && server
                    .kubectl(&["get", "nodes", "--no-headers"])
                    .stdout
                    .split(|b| *b == b'\n')
                    .filter(|l| l.windows(5).any(|w| w == b"Ready"))
                    .count()
                    == 3
            {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, keeping the data directory.
    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._temp, tempfile::tempdir().unwrap())
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(KUBECTL)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let path = self.dir.join("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// Waits (polling kubectl, at most 60 s) until `check` holds for the output of `args`.
    fn until(&self, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.kubectl(args);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "never: {what}; last:\n{text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn deployments_create_scale_roll_pause_and_undo() {
    let Some(server) = Server::start(&[]) else { return };
    deployment_story(&server);
}

/// The same on etcd: the controllers' and scheduler's watches, conflicts and binds go
/// through etcd's revisions rather than the embedded store's.
#[test]
fn deployments_on_etcd() {
    let Some(server) = Server::start_on_etcd(&[]) else { return };
    deployment_story(&server);
}

#[test]
fn jobs_on_etcd() {
    let Some(server) =
        Server::start_on_etcd(&["--simulated-node-capacity", "cpu=2,memory=4Gi,pods=20"])
    else {
        return;
    };
    job_story(&server);
}

#[test]
fn statefulsets_on_etcd() {
    let Some(server) = Server::start_on_etcd(&[]) else { return };
    statefulset_story(&server);
}

fn deployment_story(server: &Server) {
    server.ok(&["create", "deployment", "web", "--image=busybox:1.35", "--replicas=3"]);
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let pods = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    assert_eq!(pods.lines().filter(|l| l.ends_with("Running")).count(), 3, "{pods}");
    // Spread by least allocation: three nodes, one each.
    let mut nodes: Vec<&str> = pods.lines().map(|l| l.split(' ').next().unwrap()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "{pods}");

    server.ok(&["scale", "deploy/web", "--replicas=5"]);
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(
        server.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}"]),
        "5"
    );

    // A new template rolls out as a second revision; undo brings the first back.
    server.ok(&["set", "image", "deploy/web", "busybox=busybox:1.36"]);
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let sets = server.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}={.spec.replicas} {end}"]);
    assert!(sets.contains("1=0") && sets.contains("2=5"), "{sets}");
    let history = server.ok(&["rollout", "history", "deploy/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    server.ok(&["rollout", "undo", "deploy/web"]);
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let image = server.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox:1.35");
    let sets = server.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}={.spec.replicas} {end}"]);
    assert!(sets.contains("3=5") && sets.contains("2=0"), "the old set is revision 3 now: {sets}");

    // Paused, a new template does not roll; resumed, it does.
    server.ok(&["rollout", "pause", "deploy/web"]);
    server.ok(&["set", "image", "deploy/web", "busybox=busybox:1.37"]);
    std::thread::sleep(Duration::from_millis(500));
    let sets = server.ok(&["get", "rs", "-l", "app=web", "--no-headers"]);
    assert_eq!(sets.lines().count(), 2, "no new set while paused: {sets}");
    server.ok(&["rollout", "resume", "deploy/web"]);
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let events = server.ok(&["describe", "deploy", "web"]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");
    // Deleting it takes its sets and pods (the garbage collector).
    server.ok(&["delete", "deploy", "web"]);
    server.until("the pods gone", &["get", "pods", "-l", "app=web", "--no-headers"], |t| {
        t.trim().is_empty()
    });
}

#[test]
fn jobs_complete_and_fail_and_unschedulable_pods_say_why() {
    let Some(server) = Server::start(&["--simulated-node-capacity", "cpu=2,memory=4Gi,pods=20"])
    else {
        return;
    };
    job_story(&server);
}

fn job_story(server: &Server) {
    server.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: works}
spec:
  completions: 3
  parallelism: 2
  template:
    metadata:
      annotations: {sim.berth.dev/exit-after: "0.2"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["true"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 1
  template:
    metadata:
      annotations: {sim.berth.dev/exit-after: "0.1", sim.berth.dev/exit-code: "1"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["false"]}]
"#,
    );
    server.ok(&["wait", "--for=condition=complete", "job/works", "--timeout=60s"]);
    assert_eq!(server.ok(&["get", "job", "works", "-o", "jsonpath={.status.succeeded}"]), "3");
    // A failed pod is replaced only after the back-off (10 s for the first failure).
    server.until(
        "the first failure",
        &["get", "job", "fails", "-o", "jsonpath={.status.failed}"],
        |t| t == "1",
    );
    assert_eq!(
        server.ok(&["get", "pods", "-l", "job-name=fails", "-o", "name"]).lines().count(),
        1,
        "replaced before the back-off"
    );
    server.ok(&["wait", "--for=condition=failed", "job/fails", "--timeout=60s"]);
    let failed = server.ok(&[
        "get",
        "job",
        "fails",
        "-o",
        "jsonpath={.status.failed} {.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(failed, "2 BackoffLimitExceeded");

    // Too big for any node: PodScheduled=False and the message kubectl users know.
    server.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: big}
spec:
  containers: [{name: c, image: busybox, resources: {requests: {cpu: "3"}}}]
"#,
    );
    let described = server.until("a FailedScheduling event", &["describe", "pod", "big"], |t| {
        t.contains("FailedScheduling")
    });
    assert!(described.contains("0/3 nodes are available: 3 Insufficient cpu."), "{described}");
    let condition = server.ok(&[
        "get",
        "pod",
        "big",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
    ]);
    assert_eq!(condition, "Unschedulable");
    // A node label and a taint: the selector picks the node, the taint keeps others off.
    server.ok(&["label", "node", "sim-1", "disk=ssd"]);
    server.ok(&["taint", "node", "sim-2", "dedicated=db:NoSchedule"]);
    server.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: on-ssd}
spec:
  nodeSelector: {disk: ssd}
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: tolerant}
spec:
  nodeSelector: {kubernetes.io/hostname: sim-2}
  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: intolerant}
spec:
  nodeSelector: {kubernetes.io/hostname: sim-2}
  containers: [{name: c, image: busybox}]
"#,
    );
    server.until(
        "on-ssd runs on sim-1",
        &["get", "pod", "on-ssd", "-o", "jsonpath={.spec.nodeName} {.status.phase}"],
        |t| t == "sim-1 Running",
    );
    server.until(
        "tolerant runs on sim-2",
        &["get", "pod", "tolerant", "-o", "jsonpath={.spec.nodeName} {.status.phase}"],
        |t| t == "sim-2 Running",
    );
    let described =
        server.until("intolerant is refused", &["describe", "pod", "intolerant"], |t| {
            t.contains("FailedScheduling")
        });
    assert!(
        described.contains("1 node(s) had untolerated taint {dedicated: db}")
            && described.contains("2 node(s) didn't match Pod's node affinity/selector"),
        "{described}"
    );
    // The big pod fits once a node is big enough? No: but removing the taint lets the
    // intolerant pod schedule (the cluster changed, it is tried again).
    server.ok(&["taint", "node", "sim-2", "dedicated=db:NoSchedule-"]);
    server.until(
        "intolerant runs once the taint goes",
        &["get", "pod", "intolerant", "-o", "jsonpath={.spec.nodeName}"],
        |t| t == "sim-2",
    );
}

/// A rolling update of 50 replicas (maxSurge 5, maxUnavailable 0) with the server
/// SIGKILLed in the middle: after the restart the rollout finishes, and at no moment seen
/// are there more than 55 pods or fewer than 50 ready.
#[test]
fn a_rollout_survives_a_sigkill_within_its_surge_and_availability() {
    let Some(server) = Server::start(&[]) else { return };
    server.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: big}
spec:
  replicas: 50
  selector: {matchLabels: {app: big}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 5, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: big}}
    spec:
      containers: [{name: c, image: "busybox:1.35"}]
"#,
    );
    server.ok(&["rollout", "status", "deploy/big", "--timeout=120s"]);
    let kubeconfig = server.dir.join("kubeconfig");
    // The monitor: pods not being deleted, and how many of them are ready, every 50 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (stop, kubeconfig) = (stop.clone(), kubeconfig.clone());
        std::thread::spawn(move || {
            let (mut most, mut fewest_ready, mut samples) = (0usize, usize::MAX, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let output = Command::new(KUBECTL)
                    .env("KUBECONFIG", &kubeconfig)
                    .args(["get", "pods", "-l", "app=big", "-o", "json", "--request-timeout=2s"])
                    .output()
                    .unwrap();
                // On an error (the server restarting, its kubeconfig rewritten), kubectl
                // prints an empty List and fails: not a sample.
                let parsed = serde_json::from_slice::<serde_json::Value>(&output.stdout);
                if let (true, Ok(list)) = (output.status.success(), parsed) {
                    let pods: Vec<&serde_json::Value> = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                        .collect();
                    let ready = pods
                        .iter()
                        .filter(|p| {
                            p["status"]["conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                        .count();
                    most = most.max(pods.len());
                    fewest_ready = fewest_ready.min(ready);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (most, fewest_ready, samples)
        })
    };
    server.ok(&["set", "image", "deploy/big", "c=busybox:1.36"]);
    let images = [
        "get",
        "rs",
        "-l",
        "app=big",
        "-o",
        "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}={.status.replicas} {end}",
    ];
    server.until("the new set has grown", &images, |text| {
        text.split(' ').any(|entry| {
            entry
                .strip_prefix("busybox:1.36=")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 10)
        })
    });
    let temp = server.kill();
    let server = Server::start_in(temp, &[]);
    server.ok(&["rollout", "status", "deploy/big", "--timeout=120s"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most, fewest_ready, samples) = monitor.join().unwrap();
    assert!(samples > 10, "the monitor saw too little ({samples} samples)");
    assert!(most <= 55, "{most} pods at once: more than replicas + maxSurge");
    assert!(fewest_ready >= 50, "{fewest_ready} ready at once: fewer than maxUnavailable 0 allows");
    let running = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=big",
        "-o",
        "jsonpath={range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}",
    ]);
    assert_eq!(running.lines().filter(|l| *l == "busybox:1.36").count(), 50, "{running}");
}

/// A Service's Endpoints and EndpointSlice follow the ready pods it selects (named target
/// ports resolved per pod), and go with it.
#[test]
fn services_get_endpoints_from_the_pods_they_select() {
    let Some(server) = Server::start(&[]) else { return };
    server.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#,
    );
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let addresses = "jsonpath={range .subsets[*].addresses[*]}{.ip}{\"\\n\"}{end}";
    server.until("two ready addresses", &["get", "endpoints", "web", "-o", addresses], |t| {
        t.lines().count() == 2
    });
    assert_eq!(
        server.ok(&["get", "endpoints", "web", "-o", "jsonpath={.subsets[0].ports[0].port}"]),
        "8080"
    );
    let slice = server.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[0].ports[0].port} {.items[0].endpoints[*].conditions.ready}",
    ]);
    assert_eq!(slice, "8080 true true");
    server.ok(&["scale", "deploy/web", "--replicas=3"]);
    server.until("three addresses", &["get", "endpoints", "web", "-o", addresses], |t| {
        t.lines().count() == 3
    });
    // A pod whose labels leave the selector leaves the endpoints.
    let pod =
        server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    server.ok(&["label", "pod", &pod, "app=elsewhere", "--overwrite"]);
    server.until(
        "the relabelled pod gone from them (its replacement in)",
        &[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={range .subsets[*].addresses[*]}{.targetRef.name}{\"\\n\"}{end}",
        ],
        |t| t.lines().count() == 3 && !t.lines().any(|l| l == pod),
    );
    server.ok(&["delete", "service", "web"]);
    server.until(
        "endpoints gone with the service",
        &["get", "endpoints,endpointslices", "--no-headers"],
        |t| t.trim().is_empty(),
    );
}

/// A CronJob whose last run was minutes ago (as after a restart) runs once at once, for
/// the latest missed time, and its Job completes on a simulated node; suspended, it does
/// not run.
#[test]
fn cronjobs_run_missed_schedules_once() {
    let Some(server) = Server::start(&[]) else { return };
    // Not near the end of a minute: a minute that starts during the test would rightly
    // make a second job, for itself.
    while berth_stdx::time::unix_now() % 60 >= 40 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    server.apply(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations: {sim.berth.dev/exit-after: "0.1"}
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox, command: ["date"]}]
"#,
    );
    let long_ago = berth_stdx::time::format_rfc3339(berth_stdx::time::unix_now() - 180);
    let patch = format!("{{\"status\":{{\"lastScheduleTime\":\"{long_ago}\"}}}}");
    server.ok(&["patch", "cronjob", "tick", "--subresource=status", "--type=merge", "-p", &patch]);
    let jobs = server.until("one job for the missed runs", &["get", "jobs", "--no-headers"], |t| {
        !t.trim().is_empty()
    });
    let job = jobs.split_whitespace().next().unwrap().to_owned();
    assert!(job.starts_with("tick-"), "{jobs}");
    server.ok(&["wait", "--for=condition=complete", &format!("job/{job}"), "--timeout=60s"]);
    let last = server.ok(&["get", "cronjob", "tick", "-o", "jsonpath={.status.lastScheduleTime}"]);
    assert!(
        berth_stdx::time::parse_rfc3339(&last).unwrap() > berth_stdx::time::unix_now() - 61,
        "{last}"
    );
    assert_eq!(
        server.ok(&["get", "jobs", "--no-headers"]).lines().count(),
        1,
        "missed runs make one job"
    );
    // Suspended: a long-missed schedule makes nothing.
    server.ok(&["patch", "cronjob", "tick", "--type=merge", "-p", "{\"spec\":{\"suspend\":true}}"]);
    server.ok(&["patch", "cronjob", "tick", "--subresource=status", "--type=merge", "-p", &patch]);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(server.ok(&["get", "jobs", "--no-headers"]).lines().count(), 1);
}

/// A DaemonSet runs one pod per node its selector admits, follows labels and taints as
/// they change, and rolls a new template.
#[test]
fn daemonsets_follow_nodes() {
    let Some(server) = Server::start(&[]) else { return };
    server.ok(&["label", "node", "sim-0", "sim-1", "role=edge"]);
    server.apply(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {role: edge}
      containers: [{name: c, image: "busybox:1.35"}]
"#,
    );
    let placed = "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}";
    let nodes = |text: &str| {
        let mut list: Vec<String> = text.lines().map(str::to_owned).collect();
        list.sort();
        list
    };
    server.until(
        "pods on sim-0 and sim-1",
        &["get", "pods", "-l", "app=agent", "-o", placed],
        |t| nodes(t) == ["sim-0", "sim-1"],
    );
    server.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    // A node labelled in gets one; a node labelled out loses its pod.
    server.ok(&["label", "node", "sim-2", "role=edge"]);
    server.until("a pod on sim-2", &["get", "pods", "-l", "app=agent", "-o", placed], |t| {
        nodes(t) == ["sim-0", "sim-1", "sim-2"]
    });
    server.ok(&["label", "node", "sim-0", "role-"]);
    server.until(
        "none on sim-0",
        &[
            "get",
            "pods",
            "-l",
            "app=agent",
            "--field-selector=status.phase!=Succeeded",
            "-o",
            placed,
        ],
        |t| nodes(t) == ["sim-1", "sim-2"],
    );
    // A NoExecute taint it does not tolerate removes it from that node; NoSchedule on
    // unschedulable nodes is tolerated (a cordon keeps daemons).
    server.ok(&["cordon", "sim-1"]);
    server.ok(&["taint", "node", "sim-2", "evict=yes:NoExecute"]);
    server.until(
        "only sim-1 (cordoned) keeps one",
        &["get", "pods", "-l", "app=agent", "-o", placed],
        |t| nodes(t) == ["sim-1"],
    );
    // A new template rolls.
    server.ok(&["set", "image", "ds/agent", "c=busybox:1.36"]);
    server.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let images = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(images, "busybox:1.36");
}

/// PriorityClasses (`scheduling.k8s.io/v1`): a pod's class becomes its priority; a class
/// that does not exist is refused at creation with Kubernetes' message; the system classes
/// exist from the start.
#[test]
fn priority_classes_are_served_and_admitted() {
    let Some(server) = Server::start(&[]) else { return };
    let classes = server.ok(&["get", "priorityclasses", "-o", "name"]);
    assert!(
        classes.contains("system-node-critical") && classes.contains("system-cluster-critical"),
        "{classes}"
    );
    server.ok(&["create", "priorityclass", "high", "--value=1000", "--description=important"]);
    server.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: urgent}
spec:
  priorityClassName: high
  containers: [{name: c, image: busybox}]
"#,
    );
    let priority = server.ok(&[
        "get",
        "pod",
        "urgent",
        "-o",
        "jsonpath={.spec.priority} {.spec.preemptionPolicy}",
    ]);
    assert_eq!(priority, "1000 PreemptLowerPriority");
    server.until(
        "the urgent pod runs",
        &["get", "pod", "urgent", "-o", "jsonpath={.status.phase}"],
        |t| t == "Running",
    );
    let path = server.dir.join("missing.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\nspec:\n  priorityClassName: nosuch\n  containers: [{name: c, image: busybox}]\n").unwrap();
    let output = server.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("no PriorityClass with name nosuch was found"), "{err}");
}

/// A StatefulSet makes `NAME-ORDINAL` pods in order (the next only once the one before is
/// ready), each with its claim from the templates; scales down from the highest ordinal;
/// rolls a new template down to its partition; `rollout history` and `undo` go through
/// its ControllerRevisions.
#[test]
fn statefulsets_make_pods_in_order_with_their_claims() {
    let Some(server) = Server::start(&[]) else { return };
    statefulset_story(&server);
}

fn statefulset_story(server: &Server) {
    // With every node cordoned the first pod cannot be scheduled: OrderedReady makes no
    // second one until it runs.
    server.ok(&["cordon", "sim-0", "sim-1", "sim-2"]);
    server.apply(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: "busybox:1.35", volumeMounts: [{name: data, mountPath: /data}]}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#,
    );
    server.until(
        "db-0 is found unschedulable",
        &[
            "get",
            "pod",
            "db-0",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
        ],
        |t| t == "False",
    );
    let pods = server.ok(&["get", "pods", "-l", "app=db", "-o", "name"]);
    assert_eq!(pods.trim(), "pod/db-0", "OrderedReady made more than the first pod");
    server.ok(&["uncordon", "sim-0", "sim-1", "sim-2"]);
    let status = server.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    // (kubectl says "partitioned" whenever rollingUpdate is set, and the API defaults it.)
    assert!(status.contains("roll out complete: 3 new pods"), "{status}");
    let names = "jsonpath={range .items[*]}{.metadata.name} {.spec.hostname} {.spec.subdomain} {.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName} {.metadata.labels.apps\\.kubernetes\\.io/pod-index}{\"\\n\"}{end}";
    let pods = server.ok(&["get", "pods", "-l", "app=db", "-o", names]);
    assert_eq!(
        pods.lines().collect::<Vec<_>>(),
        ["db-0 db-0 db data-db-0 0", "db-1 db-1 db data-db-1 1", "db-2 db-2 db data-db-2 2"],
    );
    let claims = server.ok(&["get", "pvc", "-o", "name"]);
    assert_eq!(
        claims.lines().collect::<Vec<_>>(),
        [
            "persistentvolumeclaim/data-db-0",
            "persistentvolumeclaim/data-db-1",
            "persistentvolumeclaim/data-db-2"
        ]
    );
    // Scaling down removes the highest ordinals; the claims stay (Retain).
    server.ok(&["scale", "sts/db", "--replicas=1"]);
    server.until("only db-0", &["get", "pods", "-l", "app=db", "-o", "name"], |t| {
        t.trim() == "pod/db-0"
    });
    assert_eq!(server.ok(&["get", "pvc", "-o", "name"]).lines().count(), 3);
    server.ok(&["scale", "sts/db", "--replicas=3"]);
    server.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    // A new template rolls over every pod; history has both revisions; undo brings the
    // first back.
    let image =
        "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image}{\" \"}{end}";
    server.ok(&["set", "image", "sts/db", "c=busybox:1.36"]);
    server.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    server.until("all at 1.36", &["get", "pods", "-l", "app=db", "-o", image], |t| {
        t.trim() == "db-0=busybox:1.36 db-1=busybox:1.36 db-2=busybox:1.36"
    });
    let history = server.ok(&["rollout", "history", "sts/db"]);
    assert!(history.contains("\n1 ") && history.contains("\n2 "), "{history}");
    assert_eq!(server.ok(&["get", "controllerrevisions", "-o", "name"]).lines().count(), 2);
    server.ok(&["rollout", "undo", "sts/db"]);
    server.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    server.until("all back at 1.35", &["get", "pods", "-l", "app=db", "-o", image], |t| {
        t.trim() == "db-0=busybox:1.35 db-1=busybox:1.35 db-2=busybox:1.35"
    });
    // A partition keeps the lower ordinals at the old template.
    server.ok(&[
        "patch",
        "sts/db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#,
    ]);
    server.ok(&["set", "image", "sts/db", "c=busybox:1.37"]);
    let status = server.ok(&["rollout", "status", "sts/db", "--timeout=60s"]);
    assert!(status.contains("partitioned roll out complete: 1 new pods"), "{status}");
    server.until("only db-2 at 1.37", &["get", "pods", "-l", "app=db", "-o", image], |t| {
        t.trim() == "db-0=busybox:1.35 db-1=busybox:1.35 db-2=busybox:1.37"
    });
    // Deleting the set removes its pods (the garbage collector) and keeps the claims.
    server.ok(&["delete", "sts/db"]);
    server
        .until("no pods", &["get", "pods", "-l", "app=db", "-o", "name"], |t| t.trim().is_empty());
    assert_eq!(server.ok(&["get", "pvc", "-o", "name"]).lines().count(), 3);
}

/// A node that stops renewing its Lease becomes NotReady (conditions Unknown) and tainted
/// unreachable; its pods are marked not ready and, after the toleration seconds the API
/// server gave them, evicted, so their Deployment makes them again elsewhere; a pod that
/// tolerates the taint for ever stays. The node back, the taints go. A NoExecute taint
/// added by hand evicts what does not tolerate it at once.
#[test]
fn a_silent_node_is_tainted_and_its_pods_move() {
    let Some(server) = Server::start(&[
        "--simulated-lease-interval-seconds",
        "1",
        "--node-monitor-grace-period",
        "3s",
        "--default-unreachable-toleration-seconds",
        "2",
    ]) else {
        return;
    };
    server.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: sim-0}
      containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: stays}
spec:
  nodeName: sim-0
  tolerations: [{operator: Exists}]
  containers: [{name: c, image: busybox}]
"#,
    );
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let tolerations = server.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].spec.tolerations[?(@.key==\"node.kubernetes.io/unreachable\")].tolerationSeconds}",
    ]);
    assert_eq!(tolerations, "2", "the default toleration is added at creation");
    // The pods may go anywhere once sim-0 is gone.
    server.ok(&[
        "patch",
        "deploy/web",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#,
    ]);
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let on_sim0 = |text: &str| text.lines().filter(|l| l.ends_with(" sim-0")).count();
    let placed = "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}";
    // Spread the new pods over the nodes by putting them all on sim-0 first, if the
    // scheduler did not: the point is that some run there.
    let before = server.ok(&["get", "pods", "-l", "app=web", "-o", placed]);
    if on_sim0(&before) == 0 {
        server.ok(&["cordon", "sim-1", "sim-2"]);
        server.ok(&["delete", "pods", "-l", "app=web", "--wait=false"]);
        server.until("web pods on sim-0", &["get", "pods", "-l", "app=web", "-o", placed], |t| {
            on_sim0(t) == 3
        });
        server.ok(&["uncordon", "sim-1", "sim-2"]);
    }
    server.ok(&["annotate", "node", "sim-0", "sim.berth.dev/stopped=true"]);
    server.until(
        "sim-0 NotReady",
        &[
            "get",
            "node",
            "sim-0",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ],
        |t| t == "Unknown",
    );
    server.until(
        "sim-0 tainted unreachable",
        &["get", "node", "sim-0", "-o", "jsonpath={.spec.taints[*].key}"],
        |t| t.contains("node.kubernetes.io/unreachable"),
    );
    // Three web pods ready elsewhere; those on sim-0 terminating (its kubelet is dead,
    // so they stay so); the tolerating pod untouched.
    server.until(
        "web ready on other nodes",
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}gone {end}{range .items[*]}{.spec.nodeName}/{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{end}",
        ],
        |t| {
            t.split_whitespace().filter(|p| p.ends_with("/True") && !p.starts_with("sim-0")).count()
                == 3
        },
    );
    let stays = server.ok(&[
        "get",
        "pod",
        "stays",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}|{.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(stays, "|False", "kept, and not ready on an unreachable node");
    let events = server.ok(&["get", "events", "--field-selector=reason=TaintManagerEviction"]);
    assert!(events.contains("Marking for deletion Pod default/web-"), "{events}");
    // Back: Ready again, untainted.
    server.ok(&["annotate", "node", "sim-0", "sim.berth.dev/stopped-"]);
    server.until(
        "sim-0 Ready without taints",
        &[
            "get",
            "node",
            "sim-0",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}",
        ],
        |t| t.trim() == "True" || t.trim() == "True []",
    );
    // A NoExecute taint by hand: the pod that does not tolerate it goes at once.
    server.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: fragile}
spec:
  nodeName: sim-1
  containers: [{name: c, image: busybox}]
"#,
    );
    server.until(
        "fragile runs",
        &["get", "pod", "fragile", "-o", "jsonpath={.status.phase}"],
        |t| t == "Running",
    );
    server.ok(&["taint", "node", "sim-1", "drain=now:NoExecute"]);
    server.until(
        "fragile evicted",
        &["get", "pods", "--field-selector=metadata.name=fragile", "-o", "name"],
        |t| t.trim().is_empty(),
    );
}

/// A PodDisruptionBudget is honoured by evictions: `kubectl drain` cannot take a pod the
/// budget needs (the API answers 429, kubectl says why), and drains once the Deployment
/// has a pod to spare, one eviction per disruption allowed.
#[test]
fn disruption_budgets_hold_drains_back() {
    let Some(server) = Server::start(&[]) else { return };
    server.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#,
    );
    server.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let budget =
        "jsonpath={.status.currentHealthy}/{.status.desiredHealthy}/{.status.disruptionsAllowed}";
    server.until("the budget counts 2 healthy", &["get", "pdb", "web", "-o", budget], |t| {
        t == "2/2/0"
    });
    let node =
        server.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].spec.nodeName}"]);
    let held = server.kubectl(&["drain", &node, "--timeout=3s"]);
    assert!(!held.status.success(), "the drain went through the budget");
    let said = String::from_utf8_lossy(&held.stderr);
    assert!(
        said.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{said}"
    );
    assert_eq!(
        server.ok(&["get", "pods", "-l", "app=web", "-o", "name"]).lines().count(),
        2,
        "no pod went"
    );
    // One to spare: the drain evicts, the Deployment makes the pod again elsewhere.
    server.ok(&["scale", "deploy/web", "--replicas=3"]);
    server.until("one disruption allowed", &["get", "pdb", "web", "-o", budget], |t| t == "3/2/1");
    let table = server.ok(&["get", "pdb", "web"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert!(
        table.starts_with("NAME   MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS"),
        "{table}"
    );
    assert_eq!(row[..4], ["web", "2", "N/A", "1"], "{table}");
    // A dry run checks and deletes nothing.
    server.ok(&["drain", &node, "--dry-run=server"]);
    server.ok(&["uncordon", &node]);
    assert_eq!(server.ok(&["get", "pods", "-l", "app=web", "-o", "name"]).lines().count(), 3);
    assert_eq!(server.ok(&["get", "pdb", "web", "-o", budget]), "3/2/1");
    server.ok(&["drain", &node, "--timeout=60s"]);
    server.until(
        "three ready pods, none on the drained node",
        &["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.spec.nodeName}/{.status.conditions[?(@.type==\"Ready\")].status} {end}"],
        |t| {
            let pods: Vec<&str> = t.split_whitespace().collect();
            pods.len() == 3 && pods.iter().all(|p| p.ends_with("/True") && !p.starts_with(&format!("{node}/")))
        },
    );
    // Both bounds at once are refused by the server (a manifest, so kubectl's own check
    // of `create pdb` flags is not what answers).
    let path = server.dir.join("both.yaml");
    std::fs::write(&path, "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: both}\nspec:\n  minAvailable: 1\n  maxUnavailable: 1\n  selector: {matchLabels: {app: web}}\n").unwrap();
    let both = server.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&both.stderr);
    assert!(
        !both.status.success()
            && said.contains("minAvailable and maxUnavailable cannot be both set"),
        "{said}"
    );
}

/// A pod of higher priority that fits nowhere preempts pods of lower priority: one is
/// deleted (with a `Preempted` event), the node is nominated, the pod runs there; the
/// preempted Deployment's replacement then waits, unschedulable.
#[test]
fn higher_priority_pods_preempt_lower_ones() {
    let Some(server) = Server::start(&["--simulated-node-capacity", "cpu=2,memory=4Gi,pods=110"])
    else {
        return;
    };
    server.ok(&["create", "priorityclass", "high", "--value=1000"]);
    server.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: filler}
spec:
  replicas: 3
  selector: {matchLabels: {app: filler}}
  template:
    metadata: {labels: {app: filler}}
    spec:
      containers: [{name: c, image: busybox, resources: {requests: {cpu: 1500m}}}]
"#,
    );
    server.ok(&["rollout", "status", "deploy/filler", "--timeout=60s"]);
    server.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: urgent}
spec:
  priorityClassName: high
  containers: [{name: c, image: busybox, resources: {requests: {cpu: 1500m}}}]
"#,
    );
    let placed = server.until(
        "urgent runs on its nominated node",
        &[
            "get",
            "pod",
            "urgent",
            "-o",
            "jsonpath={.status.phase} {.spec.nodeName} {.status.nominatedNodeName}",
        ],
        |t| {
            let parts: Vec<&str> = t.split_whitespace().collect();
            parts.len() == 3 && parts[0] == "Running" && parts[1] == parts[2]
        },
    );
    let events = server.ok(&[
        "get",
        "events",
        "--field-selector=reason=Preempted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    let node = placed.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        events.contains("Preempted by pod") && events.contains(&format!("on node {node}")),
        "{events}"
    );
    // The filler pod made again has nowhere to go.
    server.until(
        "a filler pod pending",
        &[
            "get",
            "pods",
            "-l",
            "app=filler",
            "--field-selector=status.phase=Pending",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        |t| t.contains("0/3 nodes are available: 3 Insufficient cpu"),
    );
    assert_eq!(
        server
            .ok(&[
                "get",
                "pods",
                "-l",
                "app=filler",
                "--field-selector=status.phase=Running",
                "-o",
                "name"
            ])
            .lines()
            .count(),
        2
    );
}

/// `kubectl top` and a HorizontalPodAutoscaler on simulated usage: pods reporting twice
/// their CPU request against a 50% target are scaled up to the maximum (ScalingLimited),
/// and down to the minimum once they report little; an autoscaler whose target does not
/// exist says so in its conditions.
#[test]
fn autoscalers_scale_on_reported_usage() {
    let Some(server) = Server::start(&[
        "--metric-resolution",
        "300ms",
        "--horizontal-pod-autoscaler-sync-period",
        "300ms",
    ]) else {
        return;
    };
    server.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {sim.berth.dev/cpu-usage: 200m, sim.berth.dev/memory-usage: 64Mi}
    spec:
      containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m}}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 0}
"#,
    );
    let top = server.until(
        "kubectl top shows the pod",
        &["top", "pod", "-l", "app=web", "--no-headers"],
        |t| t.lines().count() == 1,
    );
    let columns: Vec<&str> = top.split_whitespace().collect();
    assert_eq!(columns[1..], ["200m", "64Mi"], "{top}");
    let nodes = server.ok(&["top", "node", "--no-headers"]);
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    // 200% of requests against 50%: up, at most to 5.
    server.until(
        "scaled to the maximum",
        &["get", "hpa", "web", "-o", "jsonpath={.status.desiredReplicas} {.status.conditions[?(@.type==\"ScalingLimited\")].reason}"],
        |t| t == "5 TooManyReplicas",
    );
    server.until("5 replicas", &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"], |t| {
        t == "5"
    });
    let table = server.until("TARGETS filled", &["get", "hpa", "web", "--no-headers"], |t| {
        t.contains("cpu: 200%/50%")
    });
    assert!(table.contains(" 1 ") && table.contains(" 5 "), "{table}");
    let events = server.ok(&[
        "get",
        "events",
        "--field-selector=reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    // Little usage: down to the minimum.
    server.ok(&[
        "patch",
        "deploy/web",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"sim.berth.dev/cpu-usage":"5m"}}}}}"#,
    ]);
    server.until(
        "scaled to the minimum",
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
        |t| t == "1",
    );
    // A target that does not exist.
    server.apply(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: ghost}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ghost}
  maxReplicas: 3
"#,
    );
    server.until(
        "ghost cannot get its scale",
        &[
            "get",
            "hpa",
            "ghost",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"AbleToScale\")].reason}",
        ],
        |t| t == "FailedGetScale",
    );
}

/// Indexed Jobs give each pod its index until every index succeeds; a pod failure policy
/// fails a Job on the exit code it names; a finished Job with `ttlSecondsAfterFinished`
/// goes away with its pods.
#[test]
fn indexed_jobs_failure_policies_and_ttl() {
    let Some(server) = Server::start(&[]) else { return };
    server.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: shards}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 2
  ttlSecondsAfterFinished: 2
  template:
    metadata:
      annotations: {sim.berth.dev/exit-after: "0.2"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: picky}
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: c, operator: In, values: [42]}
  template:
    metadata:
      annotations: {sim.berth.dev/exit-after: "0.2", sim.berth.dev/exit-code: "42"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
"#,
    );
    let pods = "jsonpath={range .items[*]}{.metadata.annotations.batch\\.kubernetes\\.io/job-completion-index}:{.spec.hostname}:{.spec.containers[0].env[?(@.name==\"JOB_COMPLETION_INDEX\")].value}{\" \"}{end}";
    let seen = server.until(
        "shards complete",
        &["get", "job", "shards", "-o", "jsonpath={.status.completedIndexes} {.status.conditions[?(@.type==\"Complete\")].status}"],
        |t| t == "0-2 True",
    );
    assert_eq!(seen, "0-2 True");
    let mut shards: Vec<String> = server
        .ok(&["get", "pods", "-l", "job-name=shards", "-o", pods])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    shards.sort();
    assert_eq!(shards, ["0:shards-0:0", "1:shards-1:1", "2:shards-2:2"]);
    server.until(
        "picky fails by its policy",
        &[
            "get",
            "job",
            "picky",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
        ],
        |t| t == "PodFailurePolicy",
    );
    assert_eq!(
        server.ok(&["get", "pods", "-l", "job-name=picky", "-o", "name"]).lines().count(),
        1,
        "no retry after a FailJob rule"
    );
    // Two seconds after it finished, shards and its pods are gone.
    server.until("shards gone", &["get", "jobs", "-o", "name"], |t| t.trim() == "job.batch/picky");
    server.until("its pods gone", &["get", "pods", "-l", "job-name=shards", "-o", "name"], |t| {
        t.trim().is_empty()
    });
}

/// `backoffLimitPerIndex`: each index of an Indexed Job has its own failure budget and
/// back-off; a `FailIndex` rule fails an index at once; the other indexes run on, and the
/// Job fails at the end with the failed indexes listed, or as soon as more than
/// `maxFailedIndexes` have failed. The API refuses the fields on a Job that is not
/// Indexed, as Kubernetes does.
#[test]
fn indexed_jobs_limit_failures_per_index() {
    let Some(server) = Server::start(&[]) else { return };
    server.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: suites}
spec:
  completionMode: Indexed
  completions: 4
  parallelism: 4
  backoffLimitPerIndex: 1
  podFailurePolicy:
    rules:
    - action: FailIndex
      onExitCodes: {operator: In, values: [42]}
  template:
    metadata:
      annotations: {sim.berth.dev/exit-after: "0.2", sim.berth.dev/exit-code-by-index: "0=1,1=42"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: strict}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 1
  backoffLimitPerIndex: 0
  maxFailedIndexes: 0
  template:
    metadata:
      annotations: {sim.berth.dev/exit-after: "0.2", sim.berth.dev/exit-code-by-index: "0=3"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
"#,
    );
    // strict: its first index fails, which is one more than it allows; nothing else runs.
    let reason = "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}";
    server.until("strict fails", &["get", "job", "strict", "-o", reason], |t| {
        t == "MaxFailedIndexesExceeded"
    });
    assert_eq!(server.ok(&["get", "job", "strict", "-o", "jsonpath={.status.failedIndexes}"]), "0");
    assert_eq!(
        server.ok(&["get", "pods", "-l", "job-name=strict", "-o", "name"]).lines().count(),
        1,
        "no pod after the Job failed"
    );
    // suites: index 1 fails by its rule, index 0 after one retry (10 s of back-off).
    server.until("suites fails", &["get", "job", "suites", "-o", reason], |t| t == "FailedIndexes");
    let status = server.ok(&[
        "get",
        "job",
        "suites",
        "-o",
        "jsonpath={.status.failedIndexes} {.status.completedIndexes} {.status.failed} {.status.succeeded}",
    ]);
    assert_eq!(status, "0,1 2,3 3 2");
    let tries = |index: &str| -> Vec<String> {
        let mut counts: Vec<String> = server
            .ok(&[
                "get",
                "pods",
                "-l",
                &format!("job-name=suites,batch.kubernetes.io/job-completion-index={index}"),
                "-o",
                "jsonpath={range .items[*]}{.metadata.annotations.batch\\.kubernetes\\.io/job-index-failure-count}{\" \"}{end}",
            ])
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        counts.sort();
        counts
    };
    assert_eq!(tries("0"), ["0", "1"], "index 0 is retried once, its pod told of one failure");
    assert_eq!(tries("1"), ["0"], "index 1 is not retried after FailIndex");
    let events = server.ok(&["get", "events", "--field-selector=involvedObject.name=suites"]);
    assert!(events.contains("Job has failed indexes"), "{events}");
    // Refused where Kubernetes refuses them.
    let path = server.dir.join("bad.yaml");
    for (extra, message) in [
        ("backoffLimitPerIndex: 1", "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode"),
        ("podFailurePolicy: {rules: [{action: FailIndex, onExitCodes: {operator: In, values: [1]}}]}", "spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set"),
    ] {
        std::fs::write(
            &path,
            format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: bad}}\nspec:\n  {extra}\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: busybox}}]\n"),
        )
        .unwrap();
        let output = server.kubectl(&["create", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(message), "{stderr}");
    }
}

/// Inter-pod affinity puts pods beside the ones they name, anti-affinity keeps them apart
/// (the pod that fits nowhere says why), and topology spread constraints balance zones.
#[test]
fn pods_follow_affinity_anti_affinity_and_spread() {
    let Some(server) = Server::start(&[]) else { return };
    server.ok(&["label", "node", "sim-0", "sim-1", "zone=a"]);
    server.ok(&["label", "node", "sim-2", "zone=b"]);
    let deployment = |name: &str, replicas: u32, extra: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: busybox}}]\n{extra}"
        )
    };
    let placed = |app: &str| -> Vec<String> {
        let text = server.ok(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let mut nodes: Vec<String> =
            text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        nodes.sort();
        nodes
    };
    server.apply(&deployment("db", 1, ""));
    server.ok(&["rollout", "status", "deploy/db", "--timeout=60s"]);
    let db = placed("db");
    // Beside db, on its node.
    server.apply(&deployment(
        "cache",
        2,
        "      affinity:\n        podAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: db}}\n            topologyKey: kubernetes.io/hostname\n",
    ));
    server.ok(&["rollout", "status", "deploy/cache", "--timeout=60s"]);
    assert_eq!(placed("cache"), [db[0].clone(), db[0].clone()]);
    // One per node; a fourth has nowhere to go.
    server.apply(&deployment(
        "solo",
        3,
        "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: solo}}\n            topologyKey: kubernetes.io/hostname\n",
    ));
    server.ok(&["rollout", "status", "deploy/solo", "--timeout=60s"]);
    assert_eq!(placed("solo"), ["sim-0", "sim-1", "sim-2"]);
    server.ok(&["scale", "deploy/solo", "--replicas=4"]);
    server.until(
        "the fourth is unschedulable",
        &[
            "get",
            "pods",
            "-l",
            "app=solo",
            "--field-selector=status.phase=Pending",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"PodScheduled\")].message}",
        ],
        |t| t.contains("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."),
    );
    // Balanced over the two zones: two in a, two in b.
    server.apply(&deployment(
        "even",
        4,
        "      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: zone\n        whenUnsatisfiable: DoNotSchedule\n        labelSelector: {matchLabels: {app: even}}\n",
    ));
    server.ok(&["rollout", "status", "deploy/even", "--timeout=60s"]);
    let even = placed("even");
    assert_eq!(even.iter().filter(|n| *n == "sim-2").count(), 2, "{even:?}");
}

/// A DNS question for `name`'s A record, sent over UDP to `server`; the answer's code and
/// addresses (`None` when no answer comes within 2 s).
fn ask_a(
    server: std::net::SocketAddr,
    name: &str,
) -> Option<(ResponseCode, Vec<std::net::Ipv4Addr>)> {
    let mut message = Message::new(42, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    socket.send_to(&message.to_vec().unwrap(), server).unwrap();
    let mut buffer = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buffer).ok()?;
    let answer = Message::from_vec(&buffer[..n]).unwrap();
    let addresses = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Some((answer.metadata.response_code, addresses))
}

/// `berth dns` alone, beside a server that runs no agent: it answers Services' names
/// from the API (and follows changes), says NXDOMAIN for names the cluster does not
/// have, and refuses a listen address it cannot take with an error naming it.
#[test]
fn the_cluster_dns_runs_on_its_own() {
    let Some(server) = Server::start(&[]) else { return };
    server.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = server.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let ip: std::net::Ipv4Addr = ip.trim().parse().unwrap();

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let refused = Command::new(BERTH)
        .args(["dns", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--kubeconfig")
        .arg(server.dir.join("kubeconfig"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains(&format!("cannot listen on udp 127.0.0.1:{port}")), "{said}");
    drop(taken);

    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // No upstream is reachable: nothing leaves loopback, and only cluster names are asked.
    let _dns = Killed(
        Command::new(BERTH)
            .args(["dns", "--listen", &listen.to_string(), "--upstream", "127.0.0.1:9"])
            .arg("--kubeconfig")
            .arg(server.dir.join("kubeconfig"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // Until it has read the API and listens, questions go unanswered.
    let ask = |name: &str| loop {
        if let Some(answer) = ask_a(listen, name) {
            return answer;
        }
        assert!(Instant::now() < deadline, "berth dns never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ask("web.default.svc.cluster.local."), (ResponseCode::NoError, vec![ip]));
    assert_eq!(ask("db.default.svc.cluster.local.").0, ResponseCode::NXDomain);
    // A Service made later is answered too (the caches follow the API).
    server.ok(&["create", "service", "clusterip", "db", "--tcp=5432:5432"]);
    let db: std::net::Ipv4Addr = server
        .ok(&["get", "service", "db", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = ask("db.default.svc.cluster.local.");
        if answer == (ResponseCode::NoError, vec![db]) {
            break;
        }
        assert!(Instant::now() < deadline, "the new Service is never answered: {answer:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
