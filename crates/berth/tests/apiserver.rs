//! `berth server` driven by the real kubectl (/usr/bin/kubectl, v1.32), on the embedded
//! store and on a real etcd started by the test.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/etcd.rs"]
mod etcd;
use etcd::Etcd;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const KUBECTL: &str = "/usr/bin/kubectl";

struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl_present() -> bool {
    if Path::new(KUBECTL).exists() {
        return true;
    }
    if std::env::var_os("BERTH_SKIP_KUBECTL_TESTS").is_some() {
        eprintln!("skipped: no kubectl at {KUBECTL} (BERTH_SKIP_KUBECTL_TESTS is set)");
        return false;
    }
    panic!("these tests drive the real kubectl at {KUBECTL}");
}

impl Server {
    fn start(dir: &Path, datastore: Option<&str>) -> Server {
        let _ = std::fs::remove_file(dir.join("kubeconfig"));
        let mut command = Command::new(BERTH);
        command
            .args([
                "server",
                "--disable-agent",
                "--https-listen-port",
                "0",
                "--bind-address",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(dir);
        if let Some(endpoint) = datastore {
            command.args(["--datastore-endpoint", endpoint]);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let server = Server { child, dir: dir.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "the server did not come up");
            if dir.join("kubeconfig").exists()
                && server.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

    fn fails(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            !output.status.success(),
            "kubectl {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn apply(&self, manifest: &str) -> String {
        let path = self.dir.join("manifest.yaml");
        std::fs::write(&path, manifest).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()])
    }
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: team
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  namespace: team
  labels: {tier: web}
data:
  a: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: team
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        args: ["httpd", "-f"]
"#;

/// The kubectl session both stores must pass.
fn drive(server: &Server) {
    // Discovery: the bootstrap namespaces, resources with short names and groups.
    let namespaces = server.ok(&["get", "ns"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(ns), "{namespaces}");
    }
    assert!(
        namespaces.starts_with("NAME")
            && namespaces.contains("STATUS")
            && namespaces.contains("Active"),
        "{namespaces}"
    );
    let resources = server.ok(&["api-resources"]);
    assert!(
        resources.lines().any(|l| l.starts_with("deployments")
            && l.contains("deploy")
            && l.contains("apps/v1")
            && l.contains("Deployment")),
        "{resources}"
    );
    assert_eq!(server.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
    let versions = server.ok(&["api-versions"]);
    assert!(
        versions.contains("apps/v1") && versions.contains("rbac.authorization.k8s.io/v1"),
        "{versions}"
    );
    // apply, then apply an edit: created, then configured.
    let out = server.apply(MANIFEST);
    assert!(
        out.contains("namespace/team created")
            && out.contains("configmap/app created")
            && out.contains("deployment.apps/web created"),
        "{out}"
    );
    let edited = MANIFEST
        .replace("a: \"1\"", "a: \"2\"")
        .replace("image: busybox:1.36", "image: busybox:1.37");
    let out = server.apply(&edited);
    assert!(
        out.contains("namespace/team unchanged")
            && out.contains("configmap/app configured")
            && out.contains("deployment.apps/web configured"),
        "{out}"
    );
    assert_eq!(server.ok(&["get", "cm", "app", "-n", "team", "-o", "jsonpath={.data.a}"]), "2");
    let deploy = server.ok(&["get", "deploy", "web", "-n", "team", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].args[0]} {.metadata.generation}"]);
    assert_eq!(deploy, "busybox:1.37 httpd 2", "strategic merge kept args, bumped generation");
    // Tables, selectors, json.
    let table = server.ok(&["get", "cm", "-n", "team"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "DATA", "AGE"], "{table}");
    assert!(
        table.contains("app")
            && table.lines().nth(1).unwrap().split_whitespace().nth(1) == Some("1"),
        "{table}"
    );
    assert!(server
        .ok(&["get", "cm", "-n", "team", "-l", "tier=web", "-o", "name"])
        .contains("configmap/app"));
    assert_eq!(server.ok(&["get", "cm", "-n", "team", "-l", "tier in (db)", "-o", "name"]), "");
    assert_eq!(
        server
            .ok(&["get", "cm", "-A", "--field-selector", "metadata.name=app", "-o", "name"])
            .trim(),
        "configmap/app"
    );
    let json: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "deploy", "web", "-n", "team", "-o", "json"]))
            .unwrap();
    assert_eq!(json["kind"], "Deployment");
    assert!(json["metadata"]["uid"].as_str().unwrap().len() == 36);
    let all = server.ok(&["get", "all", "-n", "team"]);
    assert!(all.contains("deployment.apps/web"), "{all}");
    // label, annotate, the three patch types, scale.
    server.ok(&["label", "cm", "app", "-n", "team", "env=prod"]);
    server.ok(&["annotate", "cm", "app", "-n", "team", "note=hi"]);
    server.ok(&[
        "patch",
        "cm",
        "app",
        "-n",
        "team",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"b":"x"}}"#,
    ]);
    server.ok(&[
        "patch",
        "cm",
        "app",
        "-n",
        "team",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/data/b","value":"y"}]"#,
    ]);
    server.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "team",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.38"}]}}}}"#,
    ]);
    let cm = server.ok(&[
        "get",
        "cm",
        "app",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.labels.env} {.metadata.annotations.note} {.data.b}",
    ]);
    assert_eq!(cm, "prod hi y");
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "team",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "busybox:1.38"
    );
    assert!(server
        .ok(&["scale", "deploy", "web", "-n", "team", "--replicas=5"])
        .contains("scaled"));
    assert_eq!(
        server.ok(&["get", "deploy", "web", "-n", "team", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    // kubectl create sends protobuf for these kinds.
    server.ok(&["create", "namespace", "made"]);
    server.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "made",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    server.ok(&[
        "create",
        "secret",
        "generic",
        "pw",
        "-n",
        "made",
        "--from-literal=password=s3cret",
    ]);
    server.ok(&[
        "create",
        "deployment",
        "api",
        "-n",
        "made",
        "--image=busybox:1.36",
        "--replicas=2",
        "--port=8080",
    ]);
    server.ok(&["create", "service", "clusterip", "api", "-n", "made", "--tcp=80:8080"]);
    server.ok(&["create", "service", "nodeport", "edge", "-n", "made", "--tcp=81:8080"]);
    server.ok(&["create", "serviceaccount", "robot", "-n", "made"]);
    let described = server.ok(&["describe", "deploy", "api", "-n", "made"]);
    assert!(
        described.contains("StrategyType:           RollingUpdate")
            && described.contains("busybox:1.36"),
        "{described}"
    );
    // kubectl edit, with an editor that changes the replicas.
    let editor = server.dir.join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/replicas: 2/replicas: 4/' \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let edited = Command::new(KUBECTL)
        .env("KUBECONFIG", server.dir.join("kubeconfig"))
        .env("EDITOR", &editor)
        .args(["edit", "deploy", "api", "-n", "made"])
        .output()
        .unwrap();
    assert!(edited.status.success(), "{}", String::from_utf8_lossy(&edited.stderr));
    assert_eq!(
        server.ok(&["get", "deploy", "api", "-n", "made", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    assert_eq!(
        server.ok(&["get", "cm", "settings", "-n", "made", "-o", "jsonpath={.data.b}"]),
        "2"
    );
    assert_eq!(
        server.ok(&["get", "secret", "pw", "-n", "made", "-o", "jsonpath={.data.password}"]),
        "czNjcmV0"
    );
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "api",
            "-n",
            "made",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}"
        ]),
        "4 8080"
    );
    // Services get addresses from the range, node ports from 30000-32767.
    let ip = server.ok(&["get", "svc", "api", "-n", "made", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
    assert_eq!(
        server.ok(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"]),
        "10.43.0.1"
    );
    let edge = server.ok(&[
        "get",
        "svc",
        "edge",
        "-n",
        "made",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}",
    ]);
    let (edge_ip, node_port) = edge.split_once(' ').unwrap();
    assert!(
        edge_ip != ip && (30000..=32767).contains(&node_port.parse::<u16>().unwrap()),
        "{edge}"
    );
    let services = server.ok(&["get", "svc", "-n", "made"]);
    assert!(services.contains("NodePort") && services.contains("80/TCP"), "{services}");
    // Node ports follow the type through updates: kept while it has them, new when it
    // gains them (a health-check port for a Local load balancer), gone when it loses them.
    let ports = "jsonpath={.spec.type} {.spec.ports[0].nodePort} {.spec.healthCheckNodePort}";
    server.ok(&["label", "svc", "edge", "-n", "made", "tier=front"]);
    assert_eq!(
        server.ok(&["get", "svc", "edge", "-n", "made", "-o", ports]),
        format!("NodePort {node_port} ")
    );
    server.ok(&[
        "patch",
        "svc",
        "edge",
        "-n",
        "made",
        "-p",
        r#"{"spec":{"type":"LoadBalancer","externalTrafficPolicy":"Local"}}"#,
    ]);
    let balancer = server.ok(&["get", "svc", "edge", "-n", "made", "-o", ports]);
    let parts: Vec<&str> = balancer.split(' ').collect();
    assert_eq!(parts[..2], ["LoadBalancer", node_port], "{balancer}");
    assert!(
        parts[2]
            .parse::<u16>()
            .is_ok_and(|p| (30000..=32767).contains(&p) && p.to_string() != node_port),
        "{balancer}"
    );
    server.ok(&[
        "patch",
        "svc",
        "edge",
        "-n",
        "made",
        "-p",
        r#"{"spec":{"type":"ClusterIP","externalTrafficPolicy":null}}"#,
    ]);
    assert_eq!(server.ok(&["get", "svc", "edge", "-n", "made", "-o", ports]), "ClusterIP  ");
    server.ok(&["patch", "svc", "edge", "-n", "made", "-p", r#"{"spec":{"type":"NodePort"}}"#]);
    let again = server.ok(&["get", "svc", "edge", "-n", "made", "-o", ports]);
    assert!(again.starts_with("NodePort 3") && again.ends_with(' '), "{again}");
    // Errors as Kubernetes words them.
    let err = server.fails(&["get", "cm", "nope", "-n", "team"]);
    assert!(err.contains("configmaps \"nope\" not found"), "{err}");
    let path = server.dir.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: team\n",
    )
    .unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("is invalid") && err.contains("metadata.name"), "{err}");
    std::fs::write(&path, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad, namespace: team}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: busybox}]}\n").unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("selector does not match template labels"), "{err}");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: nowhere\n",
    )
    .unwrap();
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
    std::fs::write(&path, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: team\n  resourceVersion: \"1\"\n").unwrap();
    let err = server.fails(&["replace", "-f", path.to_str().unwrap()]);
    assert!(err.contains("the object has been modified"), "a stale update is a conflict: {err}");
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    // A watch sees a change; delete --wait removes a namespace with its content.
    let mut watch = Command::new(KUBECTL)
        .env("KUBECONFIG", server.dir.join("kubeconfig"))
        .args(["get", "cm", "-n", "team", "--watch-only", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.ok(&["label", "cm", "app", "-n", "team", "seen=yes"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let output = watch.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("configmap/app"),
        "the watch saw the change"
    );
    server.ok(&["delete", "ns", "team", "--wait=true", "--timeout=20s"]);
    assert!(!server.ok(&["get", "ns"]).contains("team"));
    let left = server.ok(&["get", "cm", "-A", "-o", "name"]);
    assert!(
        !left.contains("configmap/app") && left.contains("configmap/settings"),
        "the namespace's content went with it: {left}"
    );
    // Every kind has kubectl's columns.
    server.apply(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly, namespace: made}\nspec:\n  schedule: \"0 3 * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: c, image: busybox}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: read, namespace: made}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects: [{kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}]\n",
    );
    let header = |args: &[&str]| -> Vec<String> {
        server
            .ok(args)
            .lines()
            .next()
            .unwrap_or("")
            .split("  ")
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert_eq!(
        header(&["get", "cronjob", "-n", "made"]),
        ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"]
    );
    assert_eq!(
        header(&["get", "rolebinding", "-n", "made", "-o", "wide"]),
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    assert_eq!(
        header(&["get", "deploy", "-n", "made", "-o", "wide"]),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    );
    assert_eq!(
        header(&["get", "svc", "-n", "made"]),
        ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    );
    assert_eq!(header(&["get", "secret", "-n", "made"]), ["NAME", "TYPE", "DATA", "AGE"]);
    let wide = server.ok(&["get", "rolebinding", "read", "-n", "made", "-o", "wide"]);
    assert!(wide.contains("Role/reader") && wide.contains("jane"), "{wide}");
    // Server-side apply: create, update, conflicts with another manager, forced takeover.
    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: made}\ndata: {a: \"1\", b: \"x\"}\n";
    let path = server.dir.join("ssa.yaml");
    std::fs::write(&path, ssa).unwrap();
    assert!(server
        .ok(&["apply", "--server-side", "-f", path.to_str().unwrap()])
        .contains("serverside-applied"));
    std::fs::write(&path, ssa.replace("a: \"1\", b: \"x\"", "a: \"2\"")).unwrap();
    server.ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
    assert_eq!(
        server.ok(&["get", "cm", "ssa", "-n", "made", "-o", "jsonpath={.data}"]),
        r#"{"a":"2"}"#,
        "b, no longer applied, is gone"
    );
    std::fs::write(&path, ssa.replace("a: \"1\", b: \"x\"", "a: \"3\"")).unwrap();
    let err = server.fails(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        path.to_str().unwrap(),
    ]);
    assert!(err.contains("conflict with \"kubectl\": .data.a"), "{err}");
    server.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        path.to_str().unwrap(),
    ]);
    let owned = server.ok(&[
        "get",
        "cm",
        "ssa",
        "-n",
        "made",
        "-o",
        "jsonpath={.data.a} {.metadata.managedFields[*].manager}",
    ]);
    assert_eq!(owned, "3 other", "the forced apply took the field over: {owned}");
    // Pages: kubectl's chunked lists see everything.
    for i in 0..5 {
        server.ok(&["create", "configmap", &format!("page-{i}"), "-n", "made"]);
    }
    let paged = server.ok(&["get", "cm", "-n", "made", "--chunk-size=2", "-o", "name"]);
    assert_eq!(paged.lines().filter(|l| l.contains("page-")).count(), 5, "{paged}");
    // Bad input: malformed YAML and JSON, unknown kinds, oversized objects.
    let bad = server.dir.join("bad-input");
    std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n").unwrap();
    let err = server.fails(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("yaml") || err.contains("YAML"), "{err}");
    std::fs::write(&bad, "apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n").unwrap();
    // (Validation off: with no OpenAPI schemas for unknown kinds, kubectl would stop at
    // validating; the mapping error comes from discovery.)
    let err = server.fails(&["apply", "--validate=false", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("no matches for kind \"Gadget\""), "{err}");
    std::fs::write(&bad, "{\"kind\": \"ConfigMap\", \"metadata\": ").unwrap();
    let err = server.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/made/configmaps",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("not valid JSON") || err.contains("BadRequest"), "{err}");
    let big = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"huge\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(4 << 20));
    std::fs::write(&bad, big).unwrap();
    let err = server.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/made/configmaps",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(err.to_lowercase().contains("too large"), "{err}");
    assert!(
        server.fails(&["get", "cm", "huge", "-n", "made"]).contains("not found"),
        "nothing stored"
    );
    // Under the request limit but over what etcd stores: refused alike on both stores.
    let big = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"huge\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(2 << 20));
    std::fs::write(&bad, big).unwrap();
    let err = server.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/made/configmaps",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(
        err.contains("configmaps \"huge\" is too large to store: 2048 KiB, the limit is 1536 KiB"),
        "{err}"
    );
    assert!(server.fails(&["get", "cm", "huge", "-n", "made"]).contains("not found"));
    // Metrics count what happened.
    let metrics = server.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains(
            "apiserver_request_total{verb=\"create\",resource=\"configmaps\",code=\"201\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("apiserver_request_duration_seconds_bucket{verb=\"patch\",le=\"+Inf\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");
    // No credentials: 401.
    let output = Command::new(KUBECTL)
        .args([
            "--server",
            &server.ok(&["config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"]),
            "--insecure-skip-tls-verify",
            "--token",
            "wrong",
            "get",
            "ns",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn kubectl_drives_the_api_on_the_embedded_store() {
    if !kubectl_present() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("berth-server-").tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens.csv"),
        "jane-token,jane,1001\nops-token,olga,1002,\"ops,devs\"\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), None);
    drive(&server);
    // RBAC: jane may read pods in `made` only, through a Role and a RoleBinding.
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: made}\nrules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list, watch]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: jane-reads, namespace: made}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\nsubjects: [{kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}]\n");
    let as_jane = |args: &[&str]| {
        let mut all = vec!["--token", "jane-token"];
        all.extend_from_slice(args);
        server.kubectl(&all)
    };
    assert!(as_jane(&["get", "pods", "-n", "made"]).status.success());
    let denied = as_jane(&["get", "pods", "-n", "default"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""), "{err}");
    assert!(!as_jane(&["create", "configmap", "x", "-n", "made"]).status.success());
    assert_eq!(
        String::from_utf8_lossy(&as_jane(&["auth", "can-i", "list", "pods", "-n", "made"]).stdout)
            .trim(),
        "yes"
    );
    assert_eq!(
        String::from_utf8_lossy(
            &as_jane(&["auth", "can-i", "delete", "pods", "-n", "made"]).stdout
        )
        .trim(),
        "no"
    );
    // Non-resource URLs: /metrics is granted by a ClusterRole's nonResourceURLs.
    let metrics = as_jane(&["get", "--raw", "/metrics"]);
    assert!(String::from_utf8_lossy(&metrics.stderr).contains("Forbidden"), "{metrics:?}");
    assert_eq!(
        String::from_utf8_lossy(&as_jane(&["auth", "can-i", "get", "/metrics"]).stdout).trim(),
        "no"
    );
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: scraper}\nrules: [{nonResourceURLs: [/metrics], verbs: [get]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: jane-scrapes}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: scraper}\nsubjects: [{kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}]\n");
    assert_eq!(
        String::from_utf8_lossy(&as_jane(&["auth", "can-i", "get", "/metrics"]).stdout).trim(),
        "yes"
    );
    let metrics = as_jane(&["get", "--raw", "/metrics"]);
    assert!(String::from_utf8_lossy(&metrics.stdout).contains("apiserver_request_total"));
    // jane may not act as someone else.
    let err = String::from_utf8_lossy(
        &as_jane(&["get", "pods", "-n", "made", "--as=admin", "--as-group=system:masters"]).stderr,
    )
    .into_owned();
    assert!(
        err.contains(
            "users \"admin\" is forbidden: User \"jane\" cannot impersonate resource \"users\""
        ),
        "{err}"
    );
    // A token nobody issued: 401.
    let stranger = server.kubectl(&["--token", "made-up", "get", "ns"]);
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("Unauthorized"));
    // Secrets are encrypted at rest: the store's files never hold the value.
    for file in ["state.db", "state.db-wal"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
        assert!(!bytes.windows(6).any(|w| w == b"s3cret"), "{file} holds a secret in the clear");
    }
    assert_eq!(
        server.ok(&["get", "secret", "pw", "-n", "made", "-o", "jsonpath={.data.password}"]),
        "czNjcmV0"
    );
    // Every write is in the audit log.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let entries: Vec<serde_json::Value> =
        audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        entries.iter().any(|e| e["verb"] == "create"
            && e["resource"] == "secrets"
            && e["name"] == "pw"
            && e["code"] == 201),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["verb"] == "delete" && e["resource"] == "namespaces" && e["name"] == "team"),
        "{audit}"
    );
    // Writes are the admin's, or the control plane's loops' (service accounts, pods of
    // the Deployment, finalizers, the scheduler's status), each named.
    assert!(
        entries.iter().all(|e| e["verb"] != "get"
            && ["admin", "system:kube-controller-manager", "system:kube-scheduler"]
                .contains(&e["user"]["username"].as_str().unwrap_or(""))),
        "{audit}"
    );
    assert!(entries.iter().any(|e| e["user"]["username"] == "system:kube-controller-manager"
        && e["resource"] == "serviceaccounts"));
}

#[test]
fn acknowledged_writes_survive_a_killed_server_and_watches_resume() {
    if !kubectl_present() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("berth-server-").tempdir().unwrap();
    let mut server = Server::start(dir.path(), None);
    let start = server.ok(&["get", "ns", "default", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let mut created = Vec::new();
    for i in 0..20 {
        let name = format!("burst-{i}");
        let path = dir.path().join("cm.yaml");
        std::fs::write(&path, format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\n")).unwrap();
        server.ok(&["create", "-f", path.to_str().unwrap()]);
        created.push(name);
    }
    // SIGKILL, no warning: every acknowledged create is there after a restart.
    let _ = server.child.kill();
    let _ = server.child.wait();
    drop(server);
    let server = Server::start(dir.path(), None);
    let listed = server.ok(&["get", "cm", "-n", "default", "-o", "name"]);
    for name in &created {
        assert!(listed.contains(&format!("configmap/{name}")), "{name} lost: {listed}");
    }
    // A watch from before the burst replays it.
    let raw = server.ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}&timeoutSeconds=2")]);
    // (The root CA publisher's kube-root-ca.crt may be among them.)
    let events: Vec<serde_json::Value> = raw
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["object"]["metadata"]["name"] != "kube-root-ca.crt")
        .collect();
    assert_eq!(events.len(), created.len(), "{raw}");
    assert!(events.iter().all(|e| e["type"] == "ADDED"));
}

#[test]
fn kubectl_drives_the_api_on_etcd() {
    let Some((_dir, _etcd, server)) = etcd_server() else { return };
    drive(&server);
}

/// A server on a fresh etcd (Debian's etcd-server), when kubectl is there.
fn etcd_server() -> Option<(tempfile::TempDir, Etcd, Server)> {
    if !kubectl_present() {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("berth-server-etcd-").tempdir().unwrap();
    let (etcd, endpoint) = Etcd::start(dir.path());
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir).unwrap();
    let server = Server::start(&server_dir, Some(&endpoint));
    Some((dir, etcd, server))
}

/// A server on the embedded store in a fresh data directory, when kubectl is there.
fn embedded_server() -> Option<(tempfile::TempDir, Server)> {
    if !kubectl_present() {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("berth-server-").tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    Some((dir, server))
}

const MISSPELT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: typo
spec:
  replica: 2
  selector: {matchLabels: {app: typo}}
  template:
    metadata: {labels: {app: typo}}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        imagePullPolicyy: Always
"#;

#[test]
fn kubectl_explains_kinds_and_the_server_validates_fields() {
    let Some((dir, server)) = embedded_server() else { return };
    // explain reads the OpenAPI v3 schemas: kinds, fields, nested types and their types.
    let pods = server.ok(&["explain", "pods"]);
    assert!(pods.contains("KIND:       Pod\nVERSION:    v1"), "{pods}");
    assert!(pods.contains("spec\t<PodSpec>"), "{pods}");
    assert!(pods.contains("metadata\t<ObjectMeta>\n"), "metadata is not required: {pods}");
    let replicas = server.ok(&["explain", "deployment.spec.replicas"]);
    assert!(replicas.contains("GROUP:      apps"), "{replicas}");
    assert!(replicas.contains("FIELD: replicas <integer>"), "{replicas}");
    assert!(replicas.contains("Number of desired pods"), "{replicas}");
    let recursive = server.ok(&["explain", "cronjob.spec.jobTemplate", "--recursive"]);
    assert!(recursive.contains("backoffLimit\t<integer>"), "{recursive}");
    let hpa = server.ok(&["explain", "hpa", "--api-version=autoscaling/v1"]);
    assert!(hpa.contains("VERSION:    v1"), "{hpa}");
    let err = server.fails(&["explain", "pods.spec.nosuch"]);
    assert!(err.contains("field \"nosuch\" does not exist"), "{err}");

    // Unknown fields: kubectl's default (strict) is refused with every field named ...
    let path = dir.path().join("typo.yaml");
    std::fs::write(&path, MISSPELT).unwrap();
    let file = path.to_str().unwrap();
    let err = server.fails(&["apply", "-f", file]);
    assert!(
        err.contains("Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.replica\", unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""),
        "{err}"
    );
    assert!(server.fails(&["get", "deploy", "typo"]).contains("NotFound"));
    let err = server.fails(&["apply", "--server-side", "-f", file]);
    assert!(err.contains(".spec.replica: field not declared in schema"), "{err}");
    // ... warned about and dropped with --validate=warn, silently dropped with false.
    let output = server.kubectl(&["create", "-f", file, "--validate=warn"]);
    assert!(output.status.success());
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(warnings.contains("Warning: unknown field \"spec.replica\""), "{warnings}");
    let spec = server.ok(&["get", "deploy", "typo", "-o", "json"]);
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert!(spec["spec"].get("replica").is_none(), "{spec}");
    assert!(spec["spec"]["template"]["spec"]["containers"][0].get("imagePullPolicyy").is_none());
    assert_eq!(spec["spec"]["replicas"], 1);
    // Repeated keys (which kubectl's own decoding would merge; raw clients can send them).
    let dup = dir.path().join("dup.json");
    std::fs::write(&dup, r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup","name":"dup"},"data":{"a":"1","a":"2"}}"#).unwrap();
    let err = server.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
        "-f",
        dup.to_str().unwrap(),
    ]);
    assert!(
        err.contains(
            "strict decoding error: duplicate field \"metadata.name\", duplicate field \"data.a\""
        ),
        "{err}"
    );
    let output = server.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
        "-f",
        dup.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Warning: duplicate field \"data.a\""));
    assert_eq!(server.ok(&["get", "cm", "dup", "-o", "jsonpath={.data.a}"]), "2");
    // Patches are judged by what they produce; kubectl patch leaves the server's default
    // (Warn).
    let output = server.kubectl(&[
        "patch",
        "deploy",
        "typo",
        "-p",
        r#"{"spec":{"paused":true,"pasued":true}}"#,
    ]);
    assert!(output.status.success());
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(warnings.contains("Warning: unknown field \"spec.pasued\""), "{warnings}");
    assert_eq!(server.ok(&["get", "deploy", "typo", "-o", "jsonpath={.spec.paused}"]), "true");
    let output = server.kubectl(&["create", "-f", file, "--validate=false"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("AlreadyExists"));
    server.ok(&["delete", "-f", file]);
    server.ok(&["create", "-f", file, "--validate=false"]);
    assert_eq!(server.ok(&["get", "deploy", "typo", "-o", "jsonpath={.spec.replicas}"]), "1");
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn client_certificates_signed_by_the_ca_authenticate_users() {
    let Some((dir, server)) = embedded_server() else { return };
    // `berth kubeconfig --user` mints a certificate: the common name is the user, the
    // organization the group; RBAC decides the rest.
    let output = Command::new(BERTH)
        .args(["kubeconfig", "--data-dir"])
        .arg(dir.path())
        .args(["--user", "alice", "--group", "devs"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let alice_config = dir.path().join("alice.kubeconfig");
    std::fs::write(&alice_config, &output.stdout).unwrap();
    let as_alice = |args: &[&str]| {
        Command::new(KUBECTL).env("KUBECONFIG", &alice_config).args(args).output().unwrap()
    };
    let whoami = as_alice(&["auth", "whoami"]);
    let text = String::from_utf8_lossy(&whoami.stdout);
    assert!(
        text.contains("Username    alice"),
        "{text}{}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    assert!(text.contains("Groups      [devs system:authenticated]"), "{text}");
    let denied = as_alice(&["get", "pods"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains("pods is forbidden: User \"alice\" cannot list resource \"pods\""),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: pod-reader}\nrules: [{apiGroups: [\"\"], resources: [pods], verbs: [list]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: devs-read-pods}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pod-reader}\nsubjects: [{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}]\n");
    let allowed = as_alice(&["get", "pods", "-A"]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));

    // A certificate made elsewhere with the CA's key: several organizations, several groups.
    let tls = dir.path().join("tls");
    openssl(
        &tls,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "bob.key",
            "-subj",
            "/CN=bob/O=ops/O=audit",
            "-out",
            "bob.csr",
        ],
    );
    std::fs::write(tls.join("client.ext"), "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        &tls,
        &[
            "x509",
            "-req",
            "-in",
            "bob.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "client.ext",
            "-out",
            "bob.crt",
        ],
    );
    let server_url = server.ok(&["config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    let with_cert = |name: &str, args: &[&str]| {
        let mut command = Command::new(KUBECTL);
        command
            .args(["--kubeconfig", "/dev/null", "--server", &server_url])
            .arg(format!("--certificate-authority={}", tls.join("ca.crt").display()))
            .arg(format!("--client-certificate={}", tls.join(format!("{name}.crt")).display()))
            .arg(format!("--client-key={}", tls.join(format!("{name}.key")).display()))
            .args(args);
        command.output().unwrap()
    };
    let bob = with_cert("bob", &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"]);
    let text = String::from_utf8_lossy(&bob.stdout);
    assert!(
        text.contains("\"username\":\"bob\""),
        "{text}{}",
        String::from_utf8_lossy(&bob.stderr)
    );
    assert!(text.contains("\"groups\":[\"ops\",\"audit\",\"system:authenticated\"]"), "{text}");
    // Signed by another CA: the handshake fails, nobody is let in.
    openssl(
        &tls,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "mallory.key",
            "-subj",
            "/CN=admin/O=system:masters",
            "-days",
            "1",
            "-out",
            "mallory.crt",
        ],
    );
    let mallory = with_cert("mallory", &["get", "ns"]);
    assert!(!mallory.status.success());
    // (How the refusal reads depends on when TLS 1.3 reports it: a TLS alert or a closed
    // connection.)
    assert!(!String::from_utf8_lossy(&mallory.stdout).contains("default"));
    // Beside a token nobody knows, the certificate still names its user (either
    // credential suffices, as with Kubernetes' authenticators).
    let mixed = with_cert("bob", &["--token", "wrong", "get", "ns"]);
    let err = String::from_utf8_lossy(&mixed.stderr);
    assert!(err.contains("User \"bob\" cannot list resource \"namespaces\""), "{err}");
}

/// Workload defaults and validation, autoscalers across versions, pod subresources: on
/// both stores.
fn workloads(server: &Server) {
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&server.ok(&all)).unwrap()
    };
    // kubectl create sends these as protobuf; Jobs get their selector and Kubernetes' defaults.
    server.ok(&["create", "job", "once", "--image=busybox:1.36", "--", "echo", "hi"]);
    let job = json(&["job", "once"]);
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "once");
    assert_eq!(job["spec"]["backoffLimit"], 6);
    assert_eq!(job["spec"]["completions"], 1);
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    server.ok(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox:1.36",
        "--schedule=*/5 * * * *",
        "--",
        "date",
    ]);
    let cron = json(&["cronjob", "tick"]);
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cron["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(cron["spec"]["jobTemplate"]["spec"]["backoffLimit"], 6);
    server.ok(&["create", "job", "manual", "--from=cronjob/tick"]);
    assert_eq!(json(&["job", "manual"])["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let err =
        server.fails(&["create", "cronjob", "bad", "--image=busybox", "--schedule=61 * * * *"]);
    assert!(
        err.contains(
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59)"
        ),
        "{err}"
    );
    server.ok(&["create", "role", "reader", "--verb=get,list", "--resource=pods,configmaps"]);
    server.ok(&["create", "rolebinding", "reader", "--role=reader", "--user=bob", "--group=devs"]);
    server.ok(&["create", "clusterrole", "nodes", "--verb=get", "--resource=nodes"]);
    server.ok(&[
        "create",
        "clusterrolebinding",
        "nodes",
        "--clusterrole=nodes",
        "--serviceaccount=default:default",
    ]);
    let bindings = server.ok(&["get", "rolebinding", "reader", "-o", "wide"]);
    assert!(
        bindings.contains("Role/reader") && bindings.contains("bob") && bindings.contains("devs"),
        "{bindings}"
    );
    assert_eq!(json(&["clusterrolebinding", "nodes"])["subjects"][0]["namespace"], "default");

    // Workload specs: defaults on templates, Kubernetes' words for what is wrong.
    server.apply("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  selector: {matchExpressions: [{key: app, operator: In, values: [db]}]}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: busybox:1.36, ports: [{containerPort: 5432}]}]}\n");
    let set = json(&["statefulset", "db"]);
    assert_eq!(set["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(set["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);
    assert_eq!(set["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    let path = server.dir.join("bad.yaml");
    for (manifest, needle) in [
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {restartPolicy: Never, containers: [{name: d, image: busybox}]}\n",
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""),
        ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec: {containers: [{name: j, image: busybox}]}\n",
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""),
        ("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: ds}\nspec:\n  selector: {matchLabels: {app: ds}}\n  template:\n    metadata: {labels: {app: ds}}\n    spec: {containers: [{name: a, image: busybox}, {name: a, image: busybox}]}\n",
            "spec.template.spec.containers[1].name: Duplicate value: \"a\""),
        ("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 3\n  maxReplicas: 2\n",
            "spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"),
    ] {
        std::fs::write(&path, manifest).unwrap();
        let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
        assert!(err.contains(needle), "{err}");
    }
    server.apply("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 5\n");
    let hpa = json(&["hpa", "web"]);
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);

    // kubectl autoscale speaks autoscaling/v1 (in protobuf); v2 is what is stored, and a v1
    // client's read-modify-write keeps what only v2 can say.
    server.ok(&["create", "deployment", "api", "--image=busybox:1.36"]);
    server.ok(&["autoscale", "deployment", "api", "--min=2", "--max=4", "--cpu-percent=60"]);
    let v1 = "horizontalpodautoscalers.v1.autoscaling";
    let view = json(&[v1, "api"]);
    assert_eq!(view["apiVersion"], "autoscaling/v1");
    assert_eq!(view["spec"]["targetCPUUtilizationPercentage"], 60);
    assert_eq!(
        json(&["hpa", "api"])["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    server.ok(&["patch", "hpa", "api", "--type=merge", "-p", r#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":50}}},{"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"100Mi"}}}]}}"#]);
    std::fs::write(&path, server.ok(&["get", v1, "api", "-o", "json"])).unwrap();
    server.ok(&["replace", "-f", path.to_str().unwrap()]);
    let row = server.ok(&["get", "hpa", "api"]);
    assert!(row.contains("cpu: <unknown>/50%, memory: <unknown>/100Mi"), "{row}");
    server.ok(&["patch", v1, "api", "-p", r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#]);
    assert!(server.ok(&["get", "hpa", "api"]).contains("cpu: <unknown>/70%, memory"));

    // Pods: created Pending with their QoS class; logs, exec and attach name what is missing.
    server.ok(&["run", "solo", "--image=busybox:1.36", "--restart=Never", "--", "sleep", "9"]);
    server.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: duo}\nspec:\n  containers:\n  - {name: a, image: busybox, resources: {limits: {cpu: 100m, memory: 64Mi}}}\n  - {name: b, image: busybox, resources: {limits: {cpu: 100m, memory: 64Mi}}}\n");
    assert_eq!(json(&["pod", "solo"])["status"]["qosClass"], "BestEffort");
    let duo = json(&["pod", "duo"]);
    assert_eq!(duo["status"]["phase"], "Pending");
    assert_eq!(duo["status"]["qosClass"], "Guaranteed");
    assert_eq!(server.ok(&["logs", "solo"]), "", "an unscheduled pod has no log lines yet");
    // kubectl picks the first container itself; the server insists on a name.
    let output = server.kubectl(&["logs", "duo"]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Defaulted container \"a\" out of: a, b")
    );
    let err = server.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/duo/log"]);
    assert!(
        err.contains("a container name must be specified for pod duo, choose one of: [a b]"),
        "{err}"
    );
    let err = server.fails(&["logs", "duo", "-c", "c"]);
    assert!(err.contains("container c is not valid for pod duo"), "{err}");
    let err = server.fails(&["exec", "solo", "--", "true"]);
    assert!(err.contains("pod solo does not have a host assigned"), "{err}");
    // A Binding places a pod on a node, once; then the node's agent is what is missing.
    std::fs::write(&path, "apiVersion: v1\nkind: Binding\nmetadata: {name: solo}\ntarget: {kind: Node, name: node-a}\n").unwrap();
    server.ok(&["create", "-f", path.to_str().unwrap()]);
    let solo = json(&["pod", "solo"]);
    assert_eq!(solo["spec"]["nodeName"], "node-a");
    assert_eq!(solo["status"]["conditions"][0]["type"], "PodScheduled");
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(err.contains("pod solo is already assigned to node \"node-a\""), "{err}");
    let err = server.fails(&["logs", "solo"]);
    assert!(err.contains("ServiceUnavailable") && err.contains("node-a"), "{err}");
    // RBAC sees subresources: pods/log is not pods.
    // Impersonated (kubectl --as) by the admin, who may impersonate anyone.
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: pods-only}\nrules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: pods-only}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pods-only}\nsubjects: [{kind: User, name: nobody, apiGroup: rbac.authorization.k8s.io}]\n");
    let can =
        |args: &[&str]| String::from_utf8_lossy(&server.kubectl(args).stdout).trim().to_owned();
    assert_eq!(can(&["auth", "can-i", "get", "pods", "--as=nobody"]), "yes");
    assert_eq!(can(&["auth", "can-i", "get", "pods", "--subresource=log", "--as=nobody"]), "no");
    let err = server.fails(&["logs", "solo", "--as=nobody"]);
    assert!(err.contains("User \"nobody\" cannot get resource \"pods/log\""), "{err}");
    let whoami = server.ok(&["auth", "whoami", "--as=nobody", "--as-group=team"]);
    assert!(whoami.contains("Groups      [team system:authenticated]"), "{whoami}");
    // A service account is impersonated with its groups, as its token would have them.
    let whoami = server.ok(&["auth", "whoami", "--as=system:serviceaccount:default:robot"]);
    assert!(whoami.contains("system:serviceaccounts:default"), "{whoami}");
    // A pod on a node is deleted gracefully (its node agent finishes the job) unless forced;
    // one on no node goes at once.
    server.ok(&["delete", "pod", "solo", "--wait=false"]);
    let solo = json(&["pod", "solo"]);
    assert_eq!(solo["metadata"]["deletionGracePeriodSeconds"], 30);
    // Writes during the grace period (a node agent's status, a label) do not end it.
    server.ok(&["label", "pod", "solo", "seen=yes"]);
    assert_eq!(json(&["pod", "solo"])["metadata"]["labels"]["seen"], "yes");
    assert!(server.ok(&["get", "pod", "solo"]).contains("Terminating"));
    server.ok(&["delete", "pod", "solo", "--grace-period=0", "--force"]);
    assert!(server.fails(&["get", "pod", "solo"]).contains("NotFound"));
    server.ok(&["delete", "pod", "duo", "--wait=false"]);
    assert!(server.fails(&["get", "pod", "duo"]).contains("NotFound"));
}

#[test]
fn service_account_tokens_authenticate_until_revoked() {
    let Some((dir, server)) = embedded_server() else { return };
    server.ok(&["create", "namespace", "apps"]);
    server.ok(&["create", "serviceaccount", "robot", "-n", "apps"]);
    let token = server.ok(&["create", "token", "robot", "-n", "apps"]).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let with = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        server.kubectl(&all)
    };
    let whoami = String::from_utf8_lossy(&with(&token, &["auth", "whoami"]).stdout).into_owned();
    assert!(whoami.contains("Username    system:serviceaccount:apps:robot"), "{whoami}");
    assert!(whoami.contains("system:serviceaccounts:apps"), "{whoami}");
    // Issuer discovery: verifiers elsewhere find the key the token names.
    let discovery: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/.well-known/openid-configuration"]))
            .unwrap();
    assert_eq!(discovery["issuer"], "https://kubernetes.default.svc.cluster.local");
    assert!(discovery["jwks_uri"].as_str().unwrap().ends_with("/openid/v1/jwks"), "{discovery}");
    let jwks: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/openid/v1/jwks"])).unwrap();
    {
        use base64::Engine as _;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
        assert_eq!(jwks["keys"][0]["crv"], "P-256");
        // openssl, knowing only the published key, accepts the token's signature.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let coordinate = |c: &str| engine.decode(jwks["keys"][0][c].as_str().unwrap()).unwrap();
        // SubjectPublicKeyInfo of an uncompressed P-256 point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        spki.extend(coordinate("x"));
        spki.extend(coordinate("y"));
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        std::fs::write(dir.path().join("sa.pub"), pem).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        std::fs::write(dir.path().join("signed"), signed).unwrap();
        // JWS carries r||s; openssl wants DER: SEQUENCE of two positive INTEGERs.
        let raw = engine.decode(signature).unwrap();
        let integer = |half: &[u8]| {
            let mut bytes: Vec<u8> = half.iter().copied().skip_while(|b| *b == 0).collect();
            if bytes.first().is_none_or(|b| *b & 0x80 != 0) {
                bytes.insert(0, 0);
            }
            let mut out = vec![0x02, bytes.len() as u8];
            out.extend(bytes);
            out
        };
        let body = [integer(&raw[..32]), integer(&raw[32..])].concat();
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        std::fs::write(dir.path().join("sig.der"), der).unwrap();
        let verified = Command::new("openssl")
            .current_dir(dir.path())
            .args(["dgst", "-sha256", "-verify", "sa.pub", "-signature", "sig.der", "signed"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&verified.stdout).contains("Verified OK"), "{verified:?}");
    }
    // RBAC binds service accounts by namespace and name.
    let err = String::from_utf8_lossy(&with(&token, &["get", "configmaps", "-n", "apps"]).stderr)
        .into_owned();
    assert!(
        err.contains(
            "User \"system:serviceaccount:apps:robot\" cannot list resource \"configmaps\""
        ),
        "{err}"
    );
    server.ok(&[
        "create",
        "role",
        "cm-reader",
        "-n",
        "apps",
        "--verb=list",
        "--resource=configmaps",
    ]);
    server.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        "apps",
        "--role=cm-reader",
        "--serviceaccount=apps:robot",
    ]);
    assert!(with(&token, &["get", "configmaps", "-n", "apps"]).status.success());
    // Bounds: durations under ten minutes are refused; a token bound to a pod dies with it.
    let err = server.fails(&["create", "token", "robot", "-n", "apps", "--duration=5m"]);
    assert!(err.contains("may not specify a duration less than 10 minutes"), "{err}");
    // Only to a pod that runs as this account.
    server.ok(&["run", "stranger", "-n", "apps", "--image=busybox:1.36"]);
    let err = server.fails(&[
        "create",
        "token",
        "robot",
        "-n",
        "apps",
        "--bound-object-kind=Pod",
        "--bound-object-name=stranger",
    ]);
    assert!(err.contains("to pod running with different serviceaccount name"), "{err}");
    server.ok(&[
        "run",
        "holder",
        "-n",
        "apps",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"serviceAccountName":"robot"}}"#,
    ]);
    // Made for another audience: not a credential here.
    let elsewhere = server
        .ok(&["create", "token", "robot", "-n", "apps", "--audience=vault"])
        .trim()
        .to_owned();
    assert!(String::from_utf8_lossy(
        &with(&elsewhere, &["get", "configmaps", "-n", "apps"]).stderr
    )
    .contains("Unauthorized"));
    let bound = server
        .ok(&[
            "create",
            "token",
            "robot",
            "-n",
            "apps",
            "--bound-object-kind=Pod",
            "--bound-object-name=holder",
        ])
        .trim()
        .to_owned();
    assert!(with(&bound, &["get", "configmaps", "-n", "apps"]).status.success());
    server.ok(&["delete", "pod", "holder", "-n", "apps"]);
    assert!(String::from_utf8_lossy(&with(&bound, &["get", "configmaps", "-n", "apps"]).stderr)
        .contains("Unauthorized"));
    // A forged token (payload changed under the signature) and a deleted account: 401.
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload =
        String::from_utf8(engine.decode(parts[1]).unwrap()).unwrap().replace("robot", "admin");
    let forged = format!("{}.{}.{}", parts[0], engine.encode(payload), parts[2]);
    assert!(String::from_utf8_lossy(&with(&forged, &["get", "ns"]).stderr).contains("Unauthorized"));
    server.ok(&["delete", "serviceaccount", "robot", "-n", "apps"]);
    assert!(String::from_utf8_lossy(&with(&token, &["get", "configmaps", "-n", "apps"]).stderr)
        .contains("Unauthorized"));
}

/// A ConfigMap owned by the object of `uid` (kind, name).
fn owned_configmap(name: &str, owner: (&str, &str, &str)) -> String {
    let (kind, owner_name, uid) = owner;
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences: [{{apiVersion: v1, kind: {kind}, name: {owner_name}, uid: {uid}}}]\n")
}

/// Cascading deletes over ownerReferences: on both stores.
fn cascades(server: &Server) {
    let uid_of =
        |kind: &str, name: &str| server.ok(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"]);
    // A chain: root <- child <- grandchild (ConfigMaps may own each other like any kind).
    let chain = |prefix: &str| {
        server.ok(&["create", "configmap", &format!("{prefix}-root")]);
        let root = uid_of("cm", &format!("{prefix}-root"));
        server.apply(&owned_configmap(
            &format!("{prefix}-child"),
            ("ConfigMap", &format!("{prefix}-root"), &root),
        ));
        let child = uid_of("cm", &format!("{prefix}-child"));
        server.apply(&owned_configmap(
            &format!("{prefix}-grandchild"),
            ("ConfigMap", &format!("{prefix}-child"), &child),
        ));
    };
    let names = || server.ok(&["get", "cm", "-o", "jsonpath={.items[*].metadata.name}"]);
    chain("bg");
    server.ok(&["delete", "cm", "bg-root"]);
    assert!(!names().contains("bg-"), "background: {}", names());
    chain("fg");
    server.ok(&["delete", "cm", "fg-root", "--cascade=foreground"]);
    assert!(!names().contains("fg-"), "foreground: {}", names());
    chain("or");
    server.ok(&["delete", "cm", "or-root", "--cascade=orphan"]);
    let left = names();
    assert!(
        left.contains("or-child") && left.contains("or-grandchild") && !left.contains("or-root"),
        "{left}"
    );
    assert_eq!(
        server.ok(&["get", "cm", "or-child", "-o", "jsonpath={.metadata.ownerReferences}"]),
        ""
    );
    // The grandchild still names its own (living) owner.
    assert!(server
        .ok(&["get", "cm", "or-grandchild", "-o", "jsonpath={.metadata.ownerReferences[0].name}"])
        .contains("or-child"));
    // A dependent with a finalizer is marked for deletion and stays until it is released.
    chain("fin");
    server.ok(&[
        "patch",
        "cm",
        "fin-child",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    server.ok(&["delete", "cm", "fin-root"]);
    assert!(!server
        .ok(&["get", "cm", "fin-child", "-o", "jsonpath={.metadata.deletionTimestamp}"])
        .is_empty());
    server.ok(&[
        "patch",
        "cm",
        "fin-child",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(!names().contains("fin-child"), "{}", names());
    // An owner held by a finalizer cascades when the finalizer goes.
    chain("held");
    server.ok(&[
        "patch",
        "cm",
        "held-root",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    server.ok(&["delete", "cm", "held-root", "--wait=false"]);
    assert!(names().contains("held-child"), "{}", names());
    server.ok(&[
        "patch",
        "cm",
        "held-root",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert!(!names().contains("held-"), "{}", names());
    // A dependent another living owner holds only loses the deleted owner's reference.
    chain("sh");
    server.ok(&["create", "configmap", "keeper"]);
    let keeper = uid_of("cm", "keeper");
    let root = uid_of("cm", "sh-root");
    server.apply(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: sh-root, uid: {root}}}, {{apiVersion: v1, kind: ConfigMap, name: keeper, uid: {keeper}}}]\n"));
    server.ok(&["delete", "cm", "sh-root"]);
    let left = names();
    assert!(left.contains("shared") && !left.contains("sh-child"), "{left}");
    assert_eq!(
        server.ok(&["get", "cm", "shared", "-o", "jsonpath={.metadata.ownerReferences[*].name}"]),
        "keeper"
    );
    // deletecollection cascades too.
    chain("dc");
    server.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Ddc-root",
    ]);
    assert!(!names().contains("dc-"), "deletecollection: {}", names());
    let err = server.fails(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/or-child?propagationPolicy=Sideways",
    ]);
    assert!(err.contains("propagationPolicy: Unsupported value: \"Sideways\""), "{err}");
    assert!(names().contains("or-child"));
}

#[test]
fn workloads_get_kubernetes_defaults_validation_and_pod_subresources() {
    let Some((_dir, server)) = embedded_server() else { return };
    workloads(&server);
}

#[test]
fn workloads_get_kubernetes_defaults_validation_and_pod_subresources_on_etcd() {
    let Some((_dir, _etcd, server)) = etcd_server() else { return };
    workloads(&server);
}

#[test]
fn delete_cascades_to_dependents_or_orphans_them() {
    let Some((_dir, server)) = embedded_server() else { return };
    cascades(&server);
}

#[test]
fn delete_cascades_to_dependents_or_orphans_them_on_etcd() {
    let Some((_dir, _etcd, server)) = etcd_server() else { return };
    cascades(&server);
}

/// What used to fail silently is now an error or does what Kubernetes does: booleans in
/// Go's forms (`watch=True`, which the Python client sends), `stringData` merged into
/// `data`, malformed `DeleteOptions` refused, the audit log naming who wrote, and a data
/// directory only its owner can read.
#[test]
fn silent_failures_are_errors_and_clients_are_understood() {
    use std::os::unix::fs::PermissionsExt;
    let Some((dir, server)) = embedded_server() else { return };
    server.ok(&["create", "configmap", "watched", "--from-literal=a=1"]);
    let events = server.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=True&timeoutSeconds=1",
    ]);
    assert!(events.contains("\"ADDED\"") && events.contains("watched"), "{events}");
    let err = server.fails(&["get", "--raw", "/api/v1/configmaps?watch=yes"]);
    assert!(err.contains("invalid value"), "{err}");

    server.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {user: alice}\ndata: {old: b2xk}\n",
    );
    let secret: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "secret", "creds", "-o", "json"])).unwrap();
    assert_eq!(secret["data"]["user"], "YWxpY2U=", "{secret}");
    assert_eq!(secret["data"]["old"], "b2xk", "{secret}");
    assert!(secret.get("stringData").is_none(), "{secret}");

    let body = dir.path().join("bad-options.json");
    std::fs::write(&body, "{\"preconditions\": ").unwrap();
    let err = server.fails(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/watched",
        "-f",
        body.to_str().unwrap(),
    ]);
    assert!(err.contains("DeleteOptions"), "{err}");
    server.ok(&["get", "configmap", "watched"]);

    server.ok(&["create", "clusterrole", "writer", "--verb=*", "--resource=configmaps"]);
    server.ok(&[
        "create",
        "clusterrolebinding",
        "alice-writes",
        "--clusterrole=writer",
        "--user=alice",
    ]);
    server.ok(&["create", "configmap", "by-alice", "--as=alice"]);
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let line = audit.lines().find(|l| l.contains("by-alice")).expect("audit line");
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["user"]["username"], "alice", "{line}");
    assert_eq!(line["impersonatedBy"]["username"], "admin", "{line}");

    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    for file in ["state.db", "audit.log", "kubeconfig", "token"] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
}

const CRONTAB_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec:
                type: string
                description: When the job runs, in cron's five fields.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image: {type: string}
              replicas: {type: integer, minimum: 1, maximum: 10, default: 1}
              mode: {type: string, enum: [fast, slow]}
          status:
            type: object
            properties:
              replicas: {type: integer}
  - name: v1beta1
    served: true
    storage: false
    deprecated: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

/// CustomResourceDefinitions through kubectl: the definition establishes, its objects are
/// pruned, defaulted and validated by the schema with Kubernetes' messages, printed with
/// the printer columns, explained, scaled, given status through their subresource, read in
/// a second (deprecated) version, applied server-side, watched; deleting the definition
/// removes its objects, waits for their finalizers, and resumes after a kill -9.
#[test]
fn custom_resource_definitions_serve_their_resources() {
    let Some((dir, server)) = embedded_server() else { return };
    server.apply(CRONTAB_CRD);
    server.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=20s",
        "crd/crontabs.stable.example.com",
    ]);
    let crds = server.ok(&["get", "crd"]);
    assert!(crds.contains("crontabs.stable.example.com"), "{crds}");
    eventually(&server, &["get", "apiservices", "-o", "name"], |s| {
        s.contains("apiservice.apiregistration.k8s.io/v1.stable.example.com\n")
            && s.contains("/v1beta1.stable.example.com\n")
    });
    let crd: serde_json::Value = serde_json::from_str(&server.ok(&[
        "get",
        "crd",
        "crontabs.stable.example.com",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]), "{crd}");
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "CronTabList", "{crd}");

    // A field the schema does not declare: refused under kubectl's strict validation,
    // pruned without it; the default fills replicas.
    let cron = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: nightly}\nspec: {cronSpec: '0 3 * * *', image: busybox, extra: 1}\n";
    let path = dir.path().join("cron.yaml");
    std::fs::write(&path, cron).unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("unknown field \"spec.extra\""), "{err}");
    server.ok(&["apply", "--validate=false", "-f", path.to_str().unwrap()]);
    let object: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "crontab", "nightly", "-o", "json"])).unwrap();
    assert!(object["spec"].get("extra").is_none(), "pruned: {object}");
    assert_eq!(object["spec"]["replicas"], 1, "defaulted: {object}");
    assert_eq!(object["metadata"]["generation"], 1, "{object}");

    // The schema's checks, all reported at once, in Kubernetes' words.
    let bad = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: broken}\nspec: {cronSpec: '* * * *', replicas: 15, mode: medium}\n";
    std::fs::write(&path, bad).unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("The CronTab \"broken\" is invalid"), "{err}");
    assert!(
        err.contains("spec.replicas: Invalid value: 15: spec.replicas in body should be less than or equal to 10"),
        "{err}"
    );
    assert!(err.contains("spec.cronSpec in body should match"), "{err}");
    assert!(
        err.contains(
            "spec.mode: Unsupported value: \"medium\": supported values: \"fast\", \"slow\""
        ),
        "{err}"
    );
    std::fs::write(&path, "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: empty}\nspec: {image: x}\n").unwrap();
    let err = server.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("spec.cronSpec: Required value"), "{err}");

    // Printer columns, the short name, explain.
    let table = server.ok(&["get", "ct"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    assert!(table.lines().any(|l| l.starts_with("nightly") && l.contains("0 3 * * *")), "{table}");
    let explained = server.ok(&["explain", "crontab.spec.cronSpec"]);
    assert!(explained.contains("GROUP:      stable.example.com"), "{explained}");
    assert!(explained.contains("FIELD: cronSpec <string>"), "{explained}");
    assert!(explained.contains("When the job runs"), "{explained}");

    // Scale, status through its subresource (ignored through the main resource).
    server.ok(&["scale", "crontab", "nightly", "--replicas=3"]);
    server.ok(&[
        "patch",
        "crontab",
        "nightly",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":3}}"#,
    ]);
    server.ok(&[
        "patch",
        "crontab",
        "nightly",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ]);
    let object: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "crontab", "nightly", "-o", "json"])).unwrap();
    assert_eq!(object["spec"]["replicas"], 3, "{object}");
    assert_eq!(object["status"]["replicas"], 3, "{object}");
    assert_eq!(object["metadata"]["generation"], 2, "only the spec moves generation: {object}");
    let err = server.fails(&["scale", "crontab", "nightly", "--replicas=11"]);
    assert!(err.contains("should be less than or equal to 10"), "{err}");

    // The second version: the same object, its apiVersion converted, a deprecation warning.
    let output =
        server.kubectl(&["get", "crontabs.v1beta1.stable.example.com", "nightly", "-o", "json"]);
    assert!(output.status.success());
    let old: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(old["apiVersion"], "stable.example.com/v1beta1", "{old}");
    assert_eq!(old["spec"]["cronSpec"], "0 3 * * *", "{old}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stable.example.com/v1beta1 CronTab is deprecated"), "{stderr}");

    // The garbage collector follows custom kinds too: a ConfigMap owned by a CronTab
    // goes with it, and a CronTab owned by a ConfigMap with that.
    let uid = server.ok(&["get", "crontab", "nightly", "-o", "jsonpath={.metadata.uid}"]);
    server.apply(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned-by-cron\n  ownerReferences: [{{apiVersion: stable.example.com/v1, kind: CronTab, name: nightly, uid: {uid}}}]\n"));
    server.ok(&["create", "configmap", "owner-of-cron"]);
    let owner = server.ok(&["get", "configmap", "owner-of-cron", "-o", "jsonpath={.metadata.uid}"]);
    server.apply(&format!("apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: owned\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner-of-cron, uid: {owner}}}]\nspec: {{cronSpec: '* * * * *'}}\n"));
    server.ok(&["delete", "crontab", "nightly"]);
    server.ok(&["delete", "configmap", "owner-of-cron"]);
    eventually(&server, &["get", "configmaps,crontabs", "-o", "name"], |names| {
        !names.contains("owned-by-cron") && !names.contains("crontab.stable.example.com/owned")
    });

    // Server-side apply, and a watch.
    std::fs::write(&path, "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: hourly}\nspec: {cronSpec: '0 * * * *'}\n").unwrap();
    server.ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
    let managed = server.ok(&[
        "get",
        "crontab",
        "hourly",
        "-o",
        "jsonpath={.metadata.managedFields[0].manager}",
    ]);
    assert_eq!(managed, "kubectl");
    let events = server.ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v1/namespaces/default/crontabs?watch=1&timeoutSeconds=1",
    ]);
    assert!(events.contains("\"ADDED\"") && events.contains("hourly"), "{events}");

    // Deleting the definition: an object held by a finalizer holds it; nothing new may be
    // made meanwhile; a killed server resumes the cleanup.
    server.ok(&[
        "patch",
        "crontab",
        "hourly",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    server.ok(&["delete", "crd", "crontabs.stable.example.com", "--wait=false"]);
    // The unheld objects go; the held one stays.
    eventually(&server, &["get", "crontabs", "-o", "name"], |names| {
        names.trim() == "crontab.stable.example.com/hourly"
    });
    let crd = server.ok(&["get", "crd", "crontabs.stable.example.com", "-o", "json"]);
    assert!(crd.contains("InstanceDeletionInProgress"), "{crd}");
    std::fs::write(&path, "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: late}\nspec: {cronSpec: '0 * * * *'}\n").unwrap();
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(
        err.contains("create not allowed while custom resource definition is terminating"),
        "{err}"
    );
    let mut server = server;
    kill_and_restart(&mut server);
    server.ok(&[
        "patch",
        "crontab",
        "hourly",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    server.ok(&["wait", "--for=delete", "--timeout=20s", "crd/crontabs.stable.example.com"]);
    let err = server.fails(&["get", "--raw", "/apis/stable.example.com/v1/crontabs"]);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
    eventually(&server, &["get", "apiservices", "-o", "name"], |s| {
        !s.contains("stable.example.com")
    });
    // Defined again, it starts empty.
    server.apply(CRONTAB_CRD);
    server.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=20s",
        "crd/crontabs.stable.example.com",
    ]);
    let left = server.ok(&["get", "crontabs", "-A", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
    // Webhook conversion with an unreachable webhook: the stored version serves, the
    // other says why.
    server.apply("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.stable.example.com}\nspec:\n  group: stable.example.com\n  scope: Namespaced\n  names: {plural: widgets, kind: Widget}\n  conversion:\n    strategy: Webhook\n    webhook: {conversionReviewVersions: [v1], clientConfig: {url: \"https://127.0.0.1:1/convert\"}}\n  versions:\n  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n  - {name: v2, served: true, storage: false, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n");
    server.apply("apiVersion: stable.example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: \"1\"}\n");
    server.ok(&["get", "widgets.v1.stable.example.com"]);
    let err = server.fails(&["get", "widgets.v2.stable.example.com"]);
    assert!(
        err.contains("conversion webhook for stable.example.com/v1, Kind=Widget failed: Post \"https://127.0.0.1:1/convert\""),
        "{err}"
    );
}

/// Kills the server with SIGKILL and starts it again on the same data directory.
fn kill_and_restart(server: &mut Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let dir = server.dir.clone();
    let fresh = Server::start(&dir, None);
    *server = fresh;
}

/// Waits until `check` holds for kubectl's output of `args`, for up to 20 s.
fn eventually(server: &Server, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = server.ok(args);
        if check(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "kubectl {args:?} never gave what was wanted: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bootstrap RBAC Kubernetes creates (cluster-admin, admin/edit/view aggregated by
/// label, the roles every user holds), reconciled at start unless told not to; and the
/// reviews: `kubectl auth can-i --list`, TokenReview, SubjectAccessReview and
/// LocalSubjectAccessReview, which only those granted may ask.
#[test]
fn bootstrap_rbac_and_reviews_answer_as_kubernetes() {
    let Some((dir, server)) = embedded_server() else { return };
    let roles = server.ok(&["get", "clusterroles", "-o", "name"]);
    for role in ["cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user"]
    {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}\n")),
            "{role}: {roles}"
        );
    }
    let bound = server.ok(&[
        "get",
        "clusterrolebinding",
        "cluster-admin",
        "-o",
        "jsonpath={.subjects[0].name}",
    ]);
    assert_eq!(bound, "system:masters");
    // view collects the aggregate-to-view rules, and a role labelled so later.
    eventually(
        &server,
        &["get", "clusterrole", "view", "-o", "jsonpath={.rules[*].resources}"],
        |r| r.contains("deployments") && r.contains("pods/log"),
    );
    server.apply(CRONTAB_CRD);
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: crontab-reader\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- {apiGroups: [stable.example.com], resources: [crontabs], verbs: [get, list, watch]}\n");
    for role in ["view", "edit", "admin"] {
        eventually(
            &server,
            &["get", "clusterrole", role, "-o", "jsonpath={.rules[*].resources}"],
            |r| r.contains("crontabs"),
        );
    }
    server.ok(&[
        "create",
        "rolebinding",
        "alice-views",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "default",
    ]);
    let listed = server.ok(&["auth", "can-i", "--list", "--as=alice", "-n", "default"]);
    let line = |resource: &str| {
        listed.lines().find(|l| l.starts_with(&format!("{resource} "))).unwrap_or("")
    };
    assert!(line("crontabs.stable.example.com").contains("[get list watch]"), "{listed}");
    assert!(line("deployments.apps").contains("[get list watch]"), "{listed}");
    assert!(line("selfsubjectrulesreviews.authorization.k8s.io").contains("[create]"), "{listed}");
    assert!(!listed.contains("secrets "), "view does not read secrets: {listed}");
    assert_eq!(server.ok(&["auth", "can-i", "get", "crontabs", "--as=alice"]).trim(), "yes");

    // TokenReview: the admin's token, a service account's, a forged one.
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let review = |body: String| -> serde_json::Value {
        let path = dir.path().join("review.json");
        std::fs::write(&path, body).unwrap();
        serde_json::from_str(&server.ok(&["create", "-f", path.to_str().unwrap(), "-o", "json"]))
            .unwrap()
    };
    let answer = review(format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}"}}}}"#,
        token.trim()
    ));
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(answer["status"]["user"]["username"], "admin", "{answer}");
    let account = server.ok(&["create", "token", "default", "-n", "default"]);
    let answer = review(format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}"}}}}"#,
        account.trim()
    ));
    assert_eq!(
        answer["status"]["user"]["username"], "system:serviceaccount:default:default",
        "{answer}"
    );
    let answer = review(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"forged"}}"#.into());
    assert_eq!(answer["status"]["authenticated"], false, "{answer}");

    // SubjectAccessReview and the local one (its namespace is the URL's).
    let answer = review(r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"alice","resourceAttributes":{"verb":"list","group":"apps","resource":"deployments","namespace":"default"}}}"#.into());
    assert_eq!(answer["status"]["allowed"], true, "{answer}");
    let answer = review(r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"alice","resourceAttributes":{"verb":"delete","resource":"pods","namespace":"default"}}}"#.into());
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    let answer = review(r#"{"apiVersion":"authorization.k8s.io/v1","kind":"LocalSubjectAccessReview","metadata":{"namespace":"kube-system"},"spec":{"user":"alice","resourceAttributes":{"verb":"list","resource":"pods"}}}"#.into());
    assert_eq!(
        answer["status"]["allowed"], false,
        "a RoleBinding in default grants nothing in kube-system: {answer}"
    );
    // Asking about others is itself authorized.
    let path = dir.path().join("review.json");
    let err = server.fails(&["create", "-f", path.to_str().unwrap(), "--as=alice"]);
    assert!(err.contains("cannot create resource \"localsubjectaccessreviews\""), "{err}");

    // No escalation: bob may write Roles and RoleBindings in default (and read pods there),
    // but grants only what he holds.
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: role-writer, namespace: default}\nrules:\n- {apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], verbs: [create, get, update, patch]}\n- {apiGroups: [\"\"], resources: [pods], verbs: [get, list]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bob-writes-roles, namespace: default}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: role-writer}\nsubjects: [{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}]\n");
    server.ok(&["create", "role", "pod-peek", "--verb=get", "--resource=pods", "--as=bob"]);
    let err = server.fails(&[
        "create",
        "role",
        "secret-peek",
        "--verb=get",
        "--resource=secrets",
        "--as=bob",
    ]);
    assert!(err.contains("is attempting to grant RBAC permissions not currently held"), "{err}");
    let err = server.fails(&[
        "create",
        "rolebinding",
        "bob-admin",
        "--clusterrole=cluster-admin",
        "--user=bob",
        "--as=bob",
    ]);
    assert!(err.contains("not currently held"), "{err}");
    server.ok(&[
        "create",
        "rolebinding",
        "carol-peeks",
        "--role=pod-peek",
        "--user=carol",
        "--as=bob",
    ]);

    // Audiences: a token made for vault is vault's, not this API's.
    let vault = server.ok(&["create", "token", "default", "-n", "default", "--audience=vault"]);
    let for_vault = review(format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}","audiences":["vault"]}}}}"#,
        vault.trim()
    ));
    assert_eq!(for_vault["status"]["authenticated"], true, "{for_vault}");
    assert_eq!(for_vault["status"]["audiences"], serde_json::json!(["vault"]), "{for_vault}");
    let for_api = review(format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}"}}}}"#,
        vault.trim()
    ));
    assert_eq!(for_api["status"]["authenticated"], false, "{for_api}");
    let api_token_for_vault = review(format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{}","audiences":["vault"]}}}}"#,
        account.trim()
    ));
    assert_eq!(api_token_for_vault["status"]["authenticated"], false, "{api_token_for_vault}");

    // Reconciled at start: a rule taken from a default comes back, unless autoupdate is off.
    server.ok(&[
        "patch",
        "clusterrole",
        "system:basic-user",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/rules/1"}]"#,
    ]);
    server.ok(&["patch", "clusterrole", "system:discovery", "--type=merge", "-p", r#"{"metadata":{"annotations":{"rbac.authorization.kubernetes.io/autoupdate":"false"}},"rules":[]}"#]);
    let mut server = server;
    kill_and_restart(&mut server);
    let rules = server.ok(&[
        "get",
        "clusterrole",
        "system:basic-user",
        "-o",
        "jsonpath={.rules[*].resources}",
    ]);
    assert!(rules.contains("selfsubjectreviews"), "{rules}");
    let rules = server.ok(&["get", "clusterrole", "system:discovery", "-o", "jsonpath={.rules}"]);
    assert_eq!(rules.trim(), "[]", "autoupdate false is left alone");
}

/// A webhook server (tests/python/webhook.py) on a certificate of a CA made here; its
/// port and the CA's PEM.
fn webhook_server(dir: &Path) -> (Child, u16, String) {
    let certs = dir.join("webhook");
    std::fs::create_dir_all(&certs).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &certs,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=webhook-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &certs,
        &[&["req"][..], &ec, &["-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=webhook"]]
            .concat(),
    );
    std::fs::write(
        certs.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &certs,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/webhook.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&certs)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().expect("the webhook prints its port");
    (child, port, std::fs::read_to_string(certs.join("ca.crt")).unwrap())
}

/// Conversion webhooks as Kubernetes calls them: objects written in one version are
/// stored in the storage version and read, listed, watched and patched in another through
/// the webhook; only labels and annotations of the metadata may change; a webhook's
/// failure is the request's, with its message.
#[test]
fn conversion_webhooks_convert_between_versions() {
    use base64::Engine as _;
    let Some((dir, server)) = embedded_server() else { return };
    let (mut hook, port, ca) = webhook_server(dir.path());
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let definition = |plural: &str, kind: &str, path: &str| {
        format!("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.stable.example.com}}\nspec:\n  group: stable.example.com\n  scope: Namespaced\n  names: {{plural: {plural}, kind: {kind}}}\n  conversion:\n    strategy: Webhook\n    webhook: {{conversionReviewVersions: [v1], clientConfig: {{url: \"https://127.0.0.1:{port}{path}\", caBundle: {ca}}}}}\n  versions:\n  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, properties: {{spec: {{type: object, properties: {{size: {{type: string}}}}}}}}}}}}}}\n  - {{name: v2, served: true, storage: false, schema: {{openAPIV3Schema: {{type: object, properties: {{spec: {{type: object, properties: {{count: {{type: integer}}}}}}}}}}}}}}\n")
    };
    server.apply(&definition("widgets", "Widget", "/convert"));
    server.ok(&["wait", "--for=condition=Established", "crd/widgets.stable.example.com"]);
    // Written in v2: stored as v1 (the webhook converted it), read in either.
    server.apply(
        "apiVersion: stable.example.com/v2\nkind: Widget\nmetadata: {name: w}\nspec: {count: 3}\n",
    );
    assert_eq!(
        server.ok(&["get", "widgets.v1.stable.example.com", "w", "-o", "jsonpath={.spec.size}"]),
        "3"
    );
    let v2: serde_json::Value = serde_json::from_str(&server.ok(&[
        "get",
        "widgets.v2.stable.example.com",
        "w",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(v2["apiVersion"], "stable.example.com/v2");
    assert_eq!(v2["spec"]["count"], 3, "{v2}");
    assert_eq!(v2["metadata"]["name"], "w", "a webhook may not rename: {v2}");
    assert_eq!(v2["metadata"]["labels"]["converted-by"], "webhook", "labels may change: {v2}");
    // Lists and watches convert too.
    let listed: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "widgets.v2.stable.example.com", "-o", "json"]))
            .unwrap();
    assert_eq!(listed["items"][0]["spec"]["count"], 3, "{listed}");
    let watched = server.ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v2/namespaces/default/widgets?watch=1&timeoutSeconds=1",
    ]);
    let first: serde_json::Value = serde_json::from_str(watched.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["apiVersion"], "stable.example.com/v2");
    assert_eq!(first["object"]["spec"]["count"], 3, "{watched}");
    // A patch in v2 applies to the v2 view and is stored as v1.
    server.ok(&[
        "patch",
        "widgets.v2.stable.example.com",
        "w",
        "--type=merge",
        "-p",
        r#"{"spec":{"count":5}}"#,
    ]);
    assert_eq!(
        server.ok(&["get", "widgets.v1.stable.example.com", "w", "-o", "jsonpath={.spec.size}"]),
        "5"
    );
    let reviews = std::fs::read_to_string(dir.path().join("webhook/reviews.jsonl")).unwrap();
    assert!(reviews.contains("\"desiredAPIVersion\": \"stable.example.com/v1\""), "{reviews}");
    // The webhook's failure is the request's.
    server.apply(&definition("gadgets", "Gadget", "/convert-fail"));
    server.ok(&["wait", "--for=condition=Established", "crd/gadgets.stable.example.com"]);
    server.apply("apiVersion: stable.example.com/v1\nkind: Gadget\nmetadata: {name: g}\nspec: {size: \"1\"}\n");
    let err = server.fails(&["get", "gadgets.v2.stable.example.com", "g"]);
    assert!(
        err.contains("conversion webhook for stable.example.com/v1, Kind=Gadget failed: the webhook answered a failure: cannot convert widgets today"),
        "{err}"
    );
    let _ = hook.kill();
    let _ = hook.wait();
}

/// Admission webhooks as Kubernetes calls them: a mutating webhook's patch lands (only on
/// objects its selector picks), a validating webhook refuses with its message (only in
/// namespaces its selector picks) and warns, on create and update; an unreachable or slow
/// webhook fails the request unless its failurePolicy is Ignore; the reviews name the
/// operation, the user and the objects.
#[test]
fn admission_webhooks_mutate_and_validate() {
    use base64::Engine as _;
    let Some((dir, server)) = embedded_server() else { return };
    let (mut hook, port, ca) = webhook_server(dir.path());
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let webhook = |kind: &str, name: &str, path: &str, extra: &str, rules: &str| {
        format!("apiVersion: admissionregistration.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nwebhooks:\n- name: {name}.example.com\n  clientConfig: {{url: \"https://127.0.0.1:{port}{path}\", caBundle: {ca}}}\n  rules: [{rules}]\n  sideEffects: None\n  admissionReviewVersions: [v1]\n{extra}")
    };
    let configmaps = "{operations: [CREATE, UPDATE], apiGroups: [\"\"], apiVersions: [v1], resources: [configmaps]}, {operations: [CREATE], apiGroups: [rbac.authorization.k8s.io], apiVersions: [v1], resources: [clusterroles]}";
    server.apply(&webhook(
        "MutatingWebhookConfiguration",
        "labeler",
        "/mutate",
        "  objectSelector: {matchLabels: {webhook: \"on\"}}\n",
        configmaps,
    ));
    server.apply(&webhook("ValidatingWebhookConfiguration", "guard", "/validate", "  namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [default]}]}\n", configmaps));

    server.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: picked, labels: {webhook: \"on\"}}\ndata: {a: \"1\"}\n");
    assert_eq!(
        server.ok(&["get", "cm", "picked", "-o", "jsonpath={.metadata.labels.mutated}"]),
        "yes"
    );
    server.ok(&["create", "cm", "plain", "--from-literal=a=1"]);
    assert_eq!(
        server.ok(&["get", "cm", "plain", "-o", "jsonpath={.metadata.labels}"]),
        "",
        "not picked"
    );
    let err = server.fails(&["create", "cm", "bad", "--from-literal=forbidden=1"]);
    assert!(err.contains("admission webhook \"guard.example.com\" denied the request: the key forbidden is not allowed"), "{err}");
    server.ok(&["create", "cm", "bad", "--from-literal=forbidden=1", "-n", "kube-system"]);
    let err = server.fails(&[
        "patch",
        "cm",
        "plain",
        "--type=merge",
        "-p",
        r#"{"data":{"forbidden":"2"}}"#,
    ]);
    assert!(err.contains("denied the request"), "{err}");
    assert_eq!(server.ok(&["get", "cm", "plain", "-o", "jsonpath={.data}"]), r#"{"a":"1"}"#);
    let output = server.kubectl(&["create", "cm", "warned", "--from-literal=a=1"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("checked by the guard"), "{output:?}");
    server.ok(&["create", "cm", "dry", "--from-literal=a=1", "--dry-run=server"]);
    server.ok(&["create", "clusterrole", "sent-anyway", "--verb=get", "--resource=pods"]);

    // What the webhook was told.
    let reviews = std::fs::read_to_string(dir.path().join("webhook/reviews.jsonl")).unwrap();
    let reviews: Vec<serde_json::Value> =
        reviews.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let update =
        reviews.iter().find(|r| r["request"]["operation"] == "UPDATE").expect("an UPDATE review");
    assert_eq!(update["request"]["userInfo"]["username"], "admin", "{update}");
    assert_eq!(update["request"]["oldObject"]["data"]["a"], "1", "{update}");
    assert_eq!(update["request"]["object"]["data"]["forbidden"], "2", "{update}");
    assert_eq!(update["request"]["resource"]["resource"], "configmaps", "{update}");
    assert!(reviews.iter().any(|r| r["request"]["dryRun"] == true), "the dry run was said");
    assert!(
        reviews.iter().any(|r| r["path"] == "/validate" && r["request"]["name"] == "sent-anyway"),
        "a namespace selector does not hide cluster-scoped objects"
    );

    // A webhook nobody answers, or too slowly: Fail refuses, Ignore goes on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secrets =
        "{operations: [CREATE], apiGroups: [\"\"], apiVersions: [v1], resources: [secrets]}";
    let gone = webhook(
        "ValidatingWebhookConfiguration",
        "gone",
        "/validate",
        "  failurePolicy: Fail\n",
        secrets,
    )
    .replace(&port.to_string(), &closed.to_string());
    server.apply(&gone);
    let err = server.fails(&["create", "secret", "generic", "s1", "--from-literal=a=1"]);
    assert!(err.contains("failed calling webhook \"gone.example.com\""), "{err}");
    server.apply(&gone.replace("failurePolicy: Fail", "failurePolicy: Ignore"));
    server.ok(&["create", "secret", "generic", "s1", "--from-literal=a=1"]);
    server.ok(&["delete", "validatingwebhookconfiguration", "gone"]);
    server.apply(&webhook(
        "ValidatingWebhookConfiguration",
        "slow",
        "/slow",
        "  timeoutSeconds: 1\n",
        secrets,
    ));
    let err = server.fails(&["create", "secret", "generic", "s2", "--from-literal=a=1"]);
    assert!(err.contains("did not answer within 1s"), "{err}");
    let _ = hook.kill();
    let _ = hook.wait();
}

/// The shape of responses on the wire, byte for byte where Kubernetes' is fixed: key
/// order and the final newline, a Status of success for deletions of most kinds (the
/// object for Pods), no empty `group` in core errors, a Service's empty load-balancer
/// status and defaults, `generation` only on kinds that keep one, and an unset boolean
/// field selecting as false.
#[test]
fn responses_have_kubernetes_shape() {
    let Some((_dir, server)) = embedded_server() else { return };
    server.ok(&["create", "configmap", "shape", "--from-literal=a=1"]);
    let body = server.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps/shape"]);
    assert!(
        body.starts_with(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"shape","namespace":"default","uid":""#),
        "{body}"
    );
    assert!(body.ends_with("}\n"), "a final newline: {body:?}");
    let deleted = server.ok(&["delete", "--raw", "/api/v1/namespaces/default/configmaps/shape"]);
    let deleted: serde_json::Value = serde_json::from_str(&deleted).unwrap();
    assert_eq!(deleted["kind"], "Status", "{deleted}");
    assert_eq!(deleted["status"], "Success", "{deleted}");
    assert_eq!(deleted["details"]["name"], "shape", "{deleted}");
    assert_eq!(deleted["details"]["kind"], "configmaps", "{deleted}");
    assert!(deleted["details"].get("group").is_none(), "{deleted}");
    let missing = server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/configmaps/shape"]);
    let text = String::from_utf8_lossy(&missing.stderr);
    assert!(text.contains("NotFound"), "{text}");
    server.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: kept}\nspec: {containers: [{name: c, image: busybox}]}\n");
    let pod = server.ok(&["get", "pod", "kept", "-o", "json"]);
    assert!(!pod.contains("\"generation\""), "pods keep no generation: {pod}");
    server.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let service: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "service", "web", "-o", "json"])).unwrap();
    assert_eq!(service["status"], serde_json::json!({"loadBalancer": {}}), "{service}");
    assert_eq!(service["spec"]["internalTrafficPolicy"], "Cluster", "{service}");
    assert!(service["metadata"].get("generation").is_none(), "{service}");
    server.ok(&["create", "deployment", "web", "--image=busybox"]);
    assert_eq!(
        server.ok(&["get", "deployment", "web", "-o", "jsonpath={.metadata.generation}"]),
        "1"
    );
    // A node without a spec is schedulable.
    server.apply("apiVersion: v1\nkind: Node\nmetadata: {name: bare}\n");
    let nodes =
        server.ok(&["get", "--raw", "/api/v1/nodes?fieldSelector=spec.unschedulable%3D%3Dfalse"]);
    assert!(nodes.contains("\"name\":\"bare\""), "{nodes}");
}

/// events.k8s.io/v1 Events are core/v1 Events seen in the newer shape: written in one,
/// read in the other, selected by either's field names, watched.
#[test]
fn events_have_both_views() {
    let Some((_dir, server)) = embedded_server() else { return };
    server.apply("apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: new-style}\neventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingController: example.com/ctl\nreportingInstance: ctl-1\naction: Checked\nreason: Checked\ntype: Normal\nnote: the new shape\nregarding: {kind: Pod, name: web, namespace: default}\n");
    server.apply("apiVersion: v1\nkind: Event\nmetadata: {name: old-style}\nreason: Pulled\ntype: Normal\nmessage: the old shape\ncount: 3\ninvolvedObject: {kind: Pod, name: db, namespace: default}\nsource: {component: kubelet}\n");
    let core: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "events.v1.", "new-style", "-o", "json"]))
            .unwrap();
    assert_eq!(core["apiVersion"], "v1", "{core}");
    assert_eq!(core["message"], "the new shape", "{core}");
    assert_eq!(core["involvedObject"]["name"], "web", "{core}");
    assert_eq!(core["reportingComponent"], "example.com/ctl", "{core}");
    let new: serde_json::Value = serde_json::from_str(&server.ok(&[
        "get",
        "events.v1.events.k8s.io",
        "old-style",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(new["apiVersion"], "events.k8s.io/v1", "{new}");
    assert_eq!(new["note"], "the old shape", "{new}");
    assert_eq!(new["regarding"]["name"], "db", "{new}");
    assert_eq!(new["deprecatedCount"], 3, "{new}");
    assert_eq!(new["deprecatedSource"]["component"], "kubelet", "{new}");
    assert!(new.get("message").is_none(), "{new}");
    let selected = server.ok(&[
        "get",
        "--raw",
        "/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector=regarding.name%3Dweb",
    ]);
    let selected: serde_json::Value = serde_json::from_str(&selected).unwrap();
    let names: Vec<&str> = selected["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new-style"], "{selected}");
    let watched = server.ok(&[
        "get",
        "--raw",
        "/apis/events.k8s.io/v1/namespaces/default/events?watch=1&timeoutSeconds=1",
    ]);
    assert!(watched.contains("\"note\":\"the old shape\""), "{watched}");
    server.ok(&["delete", "events.v1.events.k8s.io", "new-style"]);
    let left = server.ok(&["get", "events.v1.", "-o", "name"]);
    assert!(!left.contains("new-style"), "one object, two views: {left}");
}

/// ResourceQuota and LimitRange admission with Kubernetes' messages, quota status as
/// `kubectl describe` reads it, and the other core kinds clients expect: PodTemplate,
/// ReplicationController (stored, scaled), ComponentStatus.
#[test]
fn quotas_limit_ranges_and_the_other_core_kinds() {
    let Some((dir, server)) = embedded_server() else { return };
    server.ok(&[
        "create",
        "quota",
        "q",
        "--hard=pods=2,requests.cpu=1,configmaps=2,count/deployments.apps=1",
    ]);
    let pod = |name: &str, cpu: Option<&str>| {
        let resources = cpu
            .map(|c| format!(", resources: {{requests: {{cpu: {c}}}, limits: {{cpu: {c}}}}}"))
            .unwrap_or_default();
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, image: busybox{resources}}}]}}\n")).unwrap();
        path
    };
    let err = server.fails(&["create", "-f", pod("bare", None).to_str().unwrap()]);
    assert!(
        err.contains("pods \"bare\" is forbidden: failed quota: q: must specify requests.cpu"),
        "{err}"
    );
    // A LimitRange gives containers what they leave out, and bounds them.
    server.apply("apiVersion: v1\nkind: LimitRange\nmetadata: {name: lr}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m}\n    defaultRequest: {cpu: 300m}\n    max: {cpu: \"1\"}\n");
    server.ok(&["create", "-f", pod("first", None).to_str().unwrap()]);
    let resources =
        server.ok(&["get", "pod", "first", "-o", "jsonpath={.spec.containers[0].resources}"]);
    assert_eq!(resources, r#"{"limits":{"cpu":"500m"},"requests":{"cpu":"300m"}}"#);
    let err = server.fails(&["create", "-f", pod("greedy", Some("800m")).to_str().unwrap()]);
    assert!(err.contains("exceeded quota: q, requested: requests.cpu=800m, used: requests.cpu=300m, limited: requests.cpu=1"), "{err}");
    server.ok(&["create", "-f", pod("second", Some("200m")).to_str().unwrap()]);
    let err = server.fails(&["create", "-f", pod("third", Some("100m")).to_str().unwrap()]);
    assert!(
        err.contains("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"),
        "{err}"
    );
    let path = dir.path().join("huge.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec: {containers: [{name: c, image: busybox, resources: {limits: {cpu: \"2\"}}}]}\n").unwrap();
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(err.contains("maximum cpu usage per Container is 1, but limit is 2"), "{err}");
    // Quantities are checked before any quota counts them.
    std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata: {name: negative}\nspec: {containers: [{name: c, image: busybox, resources: {requests: {cpu: \"-1\"}}}]}\n").unwrap();
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(err.contains("spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"), "{err}");
    server.ok(&["create", "deployment", "one", "--image=busybox", "--replicas=0"]);
    let err = server.fails(&["create", "deployment", "two", "--image=busybox", "--replicas=0"]);
    assert!(err.contains("exceeded quota: q, requested: count/deployments.apps=1"), "{err}");
    // Status as describe shows it; a deleted pod frees its share.
    let described = server.ok(&["describe", "quota", "q"]);
    assert!(
        described.lines().any(|l| l.split_whitespace().eq(["requests.cpu", "500m", "1"])),
        "{described}"
    );
    assert!(described.lines().any(|l| l.split_whitespace().eq(["pods", "2", "2"])), "{described}");
    server.ok(&["delete", "pod", "second", "--wait=false"]);
    server.ok(&["create", "-f", pod("third", Some("100m")).to_str().unwrap()]);
    // Other namespaces are not this quota's.
    server.ok(&[
        "create",
        "-f",
        pod("elsewhere", Some("900m")).to_str().unwrap(),
        "-n",
        "kube-system",
    ]);
    // Scoped quotas count only the pods in their scope; updates are checked for what they
    // add (a Service turned NodePort).
    server.ok(&["create", "namespace", "scoped"]);
    server.ok(&["create", "quota", "be", "--hard=pods=1", "--scopes=BestEffort", "-n", "scoped"]);
    server.ok(&["create", "quota", "np", "--hard=services.nodeports=1", "-n", "scoped"]);
    let err = server.fails(&[
        "create",
        "quota",
        "odd",
        "--hard=pods=1",
        "--scopes=Sometimes",
        "-n",
        "scoped",
    ]);
    assert!(err.contains("Unsupported value: \"Sometimes\""), "{err}");
    server.ok(&["create", "-f", pod("lazy", None).to_str().unwrap(), "-n", "scoped"]);
    let err =
        server.fails(&["create", "-f", pod("lazier", None).to_str().unwrap(), "-n", "scoped"]);
    assert!(
        err.contains("exceeded quota: be, requested: pods=1, used: pods=1, limited: pods=1"),
        "{err}"
    );
    server.ok(&["create", "-f", pod("busy", Some("100m")).to_str().unwrap(), "-n", "scoped"]);
    server.ok(&["create", "service", "clusterip", "web", "--tcp=80,443", "-n", "scoped"]);
    let err = server.fails(&[
        "patch",
        "service",
        "web",
        "-n",
        "scoped",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    assert!(
        err.contains("exceeded quota: np, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"),
        "{err}"
    );
    assert_eq!(
        server.ok(&["get", "service", "web", "-n", "scoped", "-o", "jsonpath={.spec.type}"]),
        "ClusterIP"
    );
    let described = server.ok(&["describe", "quota", "be", "-n", "scoped"]);
    assert!(
        described.lines().any(|l| l.split_whitespace().eq(["pods", "1", "1"])),
        "only the best-effort pod counts: {described}"
    );

    // PodTemplates and ReplicationControllers are stored and served; ComponentStatus
    // reports the parts.
    server.apply("apiVersion: v1\nkind: PodTemplate\nmetadata: {name: tpl}\ntemplate: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: busybox}]}}\n");
    assert_eq!(
        server.ok(&[
            "get",
            "podtemplate",
            "tpl",
            "-o",
            "jsonpath={.template.spec.containers[0].image}"
        ]),
        "busybox"
    );
    server.apply("apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec: {replicas: 1, selector: {a: b}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: busybox}]}}}\n");
    server.ok(&["scale", "rc", "rc", "--replicas=3"]);
    assert_eq!(server.ok(&["get", "rc", "rc", "-o", "jsonpath={.spec.replicas}"]), "3");
    // Its controller makes its pods (the quota holds the namespace's pods: kube-system).
    server.apply("apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc, namespace: kube-system}\nspec: {replicas: 2, selector: {a: b}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: busybox}]}}}\n");
    eventually(
        &server,
        &["get", "pods", "-n", "kube-system", "-l", "a=b", "-o", "name"],
        |names| names.lines().count() == 2,
    );
    let owner = server.ok(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "a=b",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "ReplicationController");
    eventually(
        &server,
        &["get", "rc", "rc", "-n", "kube-system", "-o", "jsonpath={.status.replicas}"],
        |r| r == "2",
    );
    let scale = server.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/kube-system/replicationcontrollers/rc/scale",
    ]);
    assert!(scale.contains("\"selector\":\"a=b\""), "{scale}");
    let services = server.ok(&["get", "apiservices"]);
    for name in ["v1.", "v1.apps", "v2.autoscaling", "v1.events.k8s.io"] {
        assert!(
            services.lines().any(|l| l.split_whitespace().eq([
                name,
                "Local",
                "True",
                l.split_whitespace().last().unwrap_or("")
            ])),
            "{name}: {services}"
        );
    }
    let statuses = server.ok(&["get", "componentstatuses"]);
    assert!(
        statuses.lines().any(|l| l.starts_with("etcd-0") && l.contains("Healthy")),
        "{statuses}"
    );
    assert!(statuses.contains("controller-manager"), "{statuses}");
}

/// CertificateSigningRequests: created from openssl's requests (who asked is recorded),
/// approved with `kubectl certificate approve` and issued by the built-in signer from
/// the cluster CA (the certificate then authenticates its subject), denied, or failed by
/// the signer when the request breaks its rules; a request whose signature is not its
/// key's is refused.
#[test]
fn certificate_signing_requests_are_approved_and_signed() {
    use base64::Engine as _;
    let Some((dir, server)) = embedded_server() else { return };
    let work = dir.path().join("csr");
    std::fs::create_dir_all(&work).unwrap();
    let request = |name: &str, subject: &str| -> String {
        openssl(
            &work,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-subj",
                subject,
                "-out",
                &format!("{name}.csr"),
            ],
        );
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(work.join(format!("{name}.csr"))).unwrap())
    };
    let submit = |name: &str, body: &str, signer: &str, usage: &str| {
        server.apply(&format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {body}\n  signerName: {signer}\n  expirationSeconds: 86400\n  usages: [digital signature, {usage}]\n"));
    };
    submit(
        "carol",
        &request("carol", "/CN=carol/O=dev"),
        "kubernetes.io/kube-apiserver-client",
        "client auth",
    );
    let listed = server.ok(&["get", "csr"]);
    let row = listed.lines().find(|l| l.starts_with("carol")).unwrap_or("");
    assert!(
        row.contains("kubernetes.io/kube-apiserver-client")
            && row.contains("admin")
            && row.contains("Pending"),
        "{listed}"
    );
    server.ok(&["certificate", "approve", "carol"]);
    let issued = eventually(
        &server,
        &["get", "csr", "carol", "-o", "jsonpath={.status.certificate}"],
        |c| !c.is_empty(),
    );
    let pem = base64::engine::general_purpose::STANDARD.decode(issued.trim()).unwrap();
    std::fs::write(work.join("carol.crt"), &pem).unwrap();
    assert!(server.ok(&["get", "csr", "carol"]).contains("Approved,Issued"));
    // The certificate authenticates carol, in her group.
    let config = std::fs::read_to_string(dir.path().join("kubeconfig")).unwrap();
    let token_line = config.lines().find(|l| l.trim_start().starts_with("token:")).unwrap();
    let carol = config.replace(
        token_line,
        &format!(
            "    client-certificate: {}\n    client-key: {}",
            work.join("carol.crt").display(),
            work.join("carol.key").display()
        ),
    );
    std::fs::write(work.join("carol.kubeconfig"), carol).unwrap();
    let whoami = Command::new(KUBECTL)
        .env("KUBECONFIG", work.join("carol.kubeconfig"))
        .args(["auth", "whoami"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&whoami.stdout);
    assert!(
        text.contains("Username    carol") && text.contains("dev"),
        "{text}{}",
        String::from_utf8_lossy(&whoami.stderr)
    );

    // Denied: no certificate. A kubelet-serving request that is not a node's: Failed.
    submit(
        "dave",
        &request("dave", "/CN=dave"),
        "kubernetes.io/kube-apiserver-client",
        "client auth",
    );
    server.ok(&["certificate", "deny", "dave"]);
    assert!(server.ok(&["get", "csr", "dave"]).contains("Denied"));
    submit("rogue", &request("rogue", "/CN=rogue"), "kubernetes.io/kubelet-serving", "server auth");
    server.ok(&["certificate", "approve", "rogue"]);
    let failed = eventually(&server, &["get", "csr", "rogue"], |t| t.contains("Failed"));
    assert!(failed.contains("Approved,Failed"), "{failed}");
    assert_eq!(server.ok(&["get", "csr", "dave", "-o", "jsonpath={.status.certificate}"]), "");

    // Who may do what: alice may create and patch requests but not approve them; a
    // status she writes keeps no approval; she cannot ask for system:masters.
    server.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-writer}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests, certificatesigningrequests/status, certificatesigningrequests/approval], verbs: [create, get, list, patch, update]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: alice-csr}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-writer}\nsubjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]\n");
    let body = request("erin", "/CN=erin/O=dev");
    let path = work.join("erin.yaml");
    std::fs::write(&path, format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: erin}}\nspec:\n  request: {body}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n  username: admin\n  groups: [system:masters]\nstatus:\n  conditions: [{{type: Approved, status: \"True\", reason: Self, message: self}}]\n")).unwrap();
    server.ok(&["apply", "--server-side", "-f", path.to_str().unwrap(), "--as=alice"]);
    let erin: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "csr", "erin", "-o", "json"])).unwrap();
    assert_eq!(
        erin["spec"]["username"], "alice",
        "who asked is recorded, whatever the body says: {erin}"
    );
    assert!(erin["status"].get("conditions").is_none(), "{erin}");
    let err = server.fails(&["certificate", "approve", "erin", "--as=alice"]);
    assert!(err.contains("not permitted to approve requests with signerName"), "{err}");
    server.ok(&["patch", "csr", "erin", "--subresource=status", "--type=merge", "-p", r#"{"status":{"conditions":[{"type":"Approved","status":"True","reason":"Self","message":"self"}]}}"#, "--as=alice"]);
    assert!(
        server.ok(&["get", "csr", "erin"]).contains("Pending"),
        "a status write approves nothing"
    );
    let masters = request("mallory", "/CN=mallory/O=system:masters");
    std::fs::write(&path, format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: mallory}}\nspec:\n  request: {masters}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n")).unwrap();
    let err = server.fails(&["create", "-f", path.to_str().unwrap(), "--as=alice"]);
    assert!(err.contains("system:masters group is not allowed"), "{err}");

    // Kubelets' client requests are approved without a person when their requester may
    // (a node renewing its own, a bootstrap identity), and wait for one otherwise.
    let node_request = |name: &str, node: &str, who: &[&str]| {
        let body = request(name, &format!("/CN=system:node:{node}/O=system:nodes"));
        let path = work.join(format!("{name}.yaml"));
        std::fs::write(&path, format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {body}\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, client auth]\n")).unwrap();
        let mut args = vec!["create", "-f", path.to_str().unwrap()];
        args.extend_from_slice(who);
        server.ok(&args);
    };
    node_request("renewal", "n1", &["--as=system:node:n1", "--as-group=system:nodes"]);
    node_request(
        "joining",
        "n2",
        &["--as=system:bootstrap:abc", "--as-group=system:bootstrappers"],
    );
    node_request("unasked", "n3", &["--as=alice"]);
    for name in ["renewal", "joining"] {
        let shown = eventually(&server, &["get", "csr", name], |t| t.contains("Approved,Issued"));
        assert!(shown.contains("kube-apiserver-client-kubelet"), "{shown}");
    }
    assert_eq!(
        server.ok(&["get", "csr", "renewal", "-o", "jsonpath={.status.conditions[0].reason}"]),
        "AutoApproved"
    );
    assert!(
        server.ok(&["get", "csr", "unasked"]).contains("Pending"),
        "alice may not have it approved"
    );

    // A request that is not one, or whose signature is not its key's.
    let mut tampered = std::fs::read_to_string(work.join("dave.csr")).unwrap().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let body = base64::engine::general_purpose::STANDARD.encode(&tampered);
    let path = work.join("bad.yaml");
    std::fs::write(&path, format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: bad}}\nspec:\n  request: {body}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n")).unwrap();
    let err = server.fails(&["create", "-f", path.to_str().unwrap()]);
    assert!(err.contains("spec.request"), "{err}");
}

/// ServiceAccount admission and the root CA publisher: a pod runs as `default` with a
/// projected `kube-api-access-*` volume (token, CA, namespace) mounted read-only in every
/// container, unless it or its account turns automounting off; every namespace, a new one
/// too, has `kube-root-ca.crt`, put back when deleted.
#[test]
fn pods_get_their_service_account_token_volume() {
    let Some((dir, server)) = embedded_server() else { return };
    let ca = std::fs::read_to_string(dir.path().join("tls/ca.crt")).unwrap();
    let published = |namespace: &str| {
        eventually(
            &server,
            &[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-n",
                namespace,
                "-o",
                "jsonpath={.data.ca\\.crt}",
                "--ignore-not-found",
            ],
            |text| !text.is_empty(),
        )
    };
    assert_eq!(published("default"), ca);
    server.ok(&["create", "namespace", "fresh"]);
    assert_eq!(published("fresh"), ca);
    server.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "fresh"]);
    assert_eq!(published("fresh"), ca, "made again");
    server.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: mounted}\nspec: {initContainers: [{name: init, image: busybox}], containers: [{name: c, image: busybox}]}\n");
    let pod: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "pod", "mounted", "-o", "json"])).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let volume = &pod["spec"]["volumes"][0];
    assert!(volume["name"].as_str().unwrap().starts_with("kube-api-access-"), "{pod}");
    let sources = volume["projected"]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    for field in ["containers", "initContainers"] {
        let mount = &pod["spec"][field][0]["volumeMounts"][0];
        assert_eq!(mount["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount");
        assert_eq!(mount["readOnly"], true);
    }
    server.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: quiet}\nautomountServiceAccountToken: false\n");
    server.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: unmounted}\nspec: {serviceAccountName: quiet, containers: [{name: c, image: busybox}]}\n");
    let pod: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "pod", "unmounted", "-o", "json"])).unwrap();
    assert!(pod["spec"].get("volumes").is_none(), "the account turns it off: {pod}");
    // A node may ask only for tokens bound to its own pods.
    let node = ["--as=system:node:n1", "--as-group=system:nodes"];
    let err = server.fails(&["create", "token", "default", node[0], node[1]]);
    assert!(err.contains("a node may only request tokens bound to a pod scheduled to it"), "{err}");
    let err = server.fails(&[
        "create",
        "token",
        "default",
        "--bound-object-kind=Pod",
        "--bound-object-name=mounted",
        node[0],
        node[1],
    ]);
    assert!(err.contains("a node may only request tokens bound to a pod scheduled to it"), "{err}");
    let admin = server.ok(&["create", "token", "default"]);
    assert!(admin.trim().split('.').count() == 3, "anyone else as before: {admin}");
}

/// The Node authorizer: a node's credentials read only the Secrets and ConfigMaps pods
/// bound to it use (by name; no listing them all), write no Secret, change only its own
/// Node, and only the status and deletion of its own pods.
#[test]
fn nodes_reach_only_what_their_pods_use() {
    let Some((dir, server)) = embedded_server() else { return };
    let output = Command::new(BERTH)
        .args(["kubeconfig", "--data-dir"])
        .arg(dir.path())
        .args(["--user", "system:node:n1", "--group", "system:nodes"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let node_config = dir.path().join("n1.kubeconfig");
    std::fs::write(&node_config, &output.stdout).unwrap();
    let as_node = |args: &[&str]| {
        Command::new(KUBECTL).env("KUBECONFIG", &node_config).args(args).output().unwrap()
    };
    let allowed = |args: &[&str]| {
        let out = as_node(args);
        assert!(out.status.success(), "as n1, {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let refused = |args: &[&str]| {
        let out = as_node(args);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && said.to_lowercase().contains("forbidden"),
            "as n1, {args:?}: {said}"
        );
    };
    server.apply(
        r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
---
apiVersion: v1
kind: Secret
metadata: {name: used}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: other}
stringData: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: mine}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox, envFrom: [{configMapRef: {name: settings}}]}]
  volumes: [{name: s, secret: {secretName: used}}]
---
apiVersion: v1
kind: Pod
metadata: {name: theirs}
spec:
  nodeName: n2
  containers: [{name: c, image: busybox}]
  volumes: [{name: s, secret: {secretName: other}}]
"#,
    );
    allowed(&["get", "secret", "used"]);
    allowed(&["get", "configmap", "settings"]);
    allowed(&["get", "secrets", "--field-selector", "metadata.name=used"]);
    refused(&["get", "secret", "other"]);
    refused(&["get", "secrets"]);
    refused(&["get", "secrets", "--field-selector", "metadata.name=other"]);
    refused(&["create", "secret", "generic", "mine", "--from-literal=a=b"]);
    // Pods are readable (the kubelet lists them); only its own pods' status is writable.
    allowed(&["get", "pods"]);
    allowed(&[
        "patch",
        "pod",
        "mine",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"message":"hi"}}"#,
    ]);
    refused(&[
        "patch",
        "pod",
        "theirs",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"message":"hi"}}"#,
    ]);
    refused(&["delete", "pod", "theirs"]);
    allowed(&["label", "node", "n1", "seen=yes"]);
    refused(&["label", "node", "n2", "seen=yes"]);
    // NodeRestriction: no taints changed (they keep pods away), no other Node made.
    refused(&["taint", "node", "n1", "mine=yes:NoSchedule"]);
    let other = dir.path().join("n3.yaml");
    std::fs::write(&other, "apiVersion: v1\nkind: Node\nmetadata: {name: n3}\n").unwrap();
    refused(&["create", "-f", other.to_str().unwrap()]);
    // Volume names name directories on the node: a path is refused.
    let escaping = dir.path().join("escape.yaml");
    std::fs::write(&escaping, "apiVersion: v1\nkind: Pod\nmetadata: {name: escape}\nspec:\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: ../../etc, emptyDir: {}}]\n").unwrap();
    let err = server.fails(&["create", "-f", escaping.to_str().unwrap()]);
    assert!(err.contains("spec.volumes[0].name"), "{err}");
    // Once the pod that used it is gone, so is the node's access.
    server.ok(&["delete", "pod", "mine", "--grace-period=0", "--force"]);
    refused(&["get", "secret", "used"]);
}
