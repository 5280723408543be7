//! The CRI runtime end to end: `berth cri` on a private socket, driven by a client over the
//! generated CRI v1 types the way `crictl` drives a runtime (runp, create, start, ps, pods,
//! inspect, inspectp, logs, exec -s, stats, stop, rm, stopp, rmp, images, rmi,
//! imagefsinfo, info), as root, inside a network namespace of the test's own with a CNI
//! bridge configuration list of its own.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::root_or_skip;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::Code;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const IMAGE: &str = "fixture:v1";

struct Node {
    dir: tempfile::TempDir,
    server: Option<Child>,
    /// Environment the server starts with.
    env: Vec<(String, String)>,
}

impl Node {
    /// A berth root with the fixture image, a CNI bridge list, in a network namespace of
    /// this thread's own (every process it starts inherits it).
    fn new() -> Node {
        berth_sys::nix::sched::unshare(berth_sys::nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare the network namespace");
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        assert!(up.success());
        let dir = tempfile::Builder::new().prefix("berth-cri-").tempdir().expect("tempdir");
        let node = Node { dir, server: None, env: Vec::new() };
        let layout = node.path("layout");
        berth_testkit::image::fixture_image(&layout, "v1").expect("fixture image");
        let tar = node.path("fixture.tar");
        let packed =
            Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tar).arg(".").status();
        assert!(packed.expect("tar").success());
        let loaded = node.berth(&["load", "-i", tar.to_str().unwrap()]);
        let id = loaded.trim().rsplit(' ').next().unwrap().to_owned();
        node.berth(&["tag", &id, IMAGE]);
        let net = node.path("net.d");
        std::fs::create_dir_all(&net).unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "pods",
            "plugins": [
                {"type": "bridge", "bridge": "cri0", "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": node.path("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(net.join("10-pods.conflist"), conf.to_string()).unwrap();
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn socket(&self) -> PathBuf {
        self.path("cri.sock")
    }

    fn berth(&self, args: &[&str]) -> String {
        let output = Command::new(BERTH)
            .env("BERTH_ROOT", self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("berth");
        assert!(
            output.status.success(),
            "berth {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.path("cri.log")).unwrap();
        let child = Command::new(BERTH)
            .env("BERTH_ROOT", self.root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("cri")
            .arg("--listen")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--cni-conf-dir")
            .arg(self.path("net.d"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth cri");
        self.server = Some(child);
        // The socket's file appears at bind(2), before listen(2): wait for a connection.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "no socket: {}", self.server_log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.path("cri.log")).unwrap_or_default()
    }

    async fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        let socket = self.socket();
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect to the CRI socket");
        (RuntimeServiceClient::new(channel.clone()), ImageServiceClient::new(channel))
    }

    /// Mounts under the berth root (overlays, pinned namespaces).
    fn mounts_under_root(&self) -> Vec<String> {
        let root = self.root().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    fn entries(&self, sub: &str) -> Vec<String> {
        match std::fs::read_dir(self.root().join("cri").join(sub)) {
            Ok(entries) => {
                entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // Containers that a failed assertion left behind.
        // Containers a failed assertion left running: through the runtime, which knows
        // them all (their processes do not name the test's directory).
        let runtime = self.root().join("cri/runtime");
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
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path().to_string_lossy().as_ref())
            .status();
        // Pod process-namespace holders a failed assertion left.
        for sandbox in self.entries("sandboxes") {
            let record = self.root().join("cri/sandboxes").join(sandbox).join("sandbox.json");
            let Ok(text) = std::fs::read_to_string(record) else { continue };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = value["namespaces"]["pid"]["pid"].as_i64() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        for mount in self.mounts_under_root().into_iter().rev() {
            let _ = berth_sys::nix::mount::umount2(
                mount.as_str(),
                berth_sys::nix::mount::MntFlags::MNT_DETACH,
            );
        }
    }
}

fn sandbox_config(node: &Node, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: node.path("logs").join(name).to_string_lossy().into_owned(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/berth-cri-test/{name}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: [("container".to_owned(), name.to_owned())].into(),
        ..Default::default()
    }
}

async fn run_sandbox(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &cri::PodSandboxConfig,
) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(pod.clone()),
        runtime_handler: String::new(),
    })
    .await
    .expect("runp")
    .into_inner()
    .pod_sandbox_id
}

async fn run_container(
    rt: &mut RuntimeServiceClient<Channel>,
    sandbox: &str,
    sandbox_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .expect("start");
    id
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true })
        .await
        .expect("container status")
        .into_inner()
        .status
        .unwrap()
}

async fn exec(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    script: &str,
) -> (String, String, i32) {
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .expect("exec sync")
        .into_inner();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.exit_code,
    )
}

async fn wait_state(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    state: cri::ContainerState,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(rt, id).await;
        if s.state == state as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "container {id} never reached {state:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    // One thread: the network namespace of the test is this thread's.
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

#[test]
fn root_a_pod_lives_its_whole_life_through_cri() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    block_on(async {
        let (mut rt, mut images) = node.clients().await;
        // info, version
        let version =
            rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
        assert_eq!(
            (version.runtime_name.as_str(), version.runtime_api_version.as_str()),
            ("berth", "v1")
        );
        let info = rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
        let conditions = info.status.unwrap().conditions;
        assert!(conditions.iter().all(|c| c.status), "runtime and network ready: {conditions:?}");
        // images, imagefsinfo
        let listed = images
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        let fixture = listed
            .iter()
            .find(|i| i.repo_tags.iter().any(|t| t.contains("fixture:v1")))
            .expect("the fixture image is listed");
        assert!(fixture.id.starts_with("sha256:") && fixture.size > 0, "{fixture:?}");
        let missing = images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image: "nothere:v9".into(), ..Default::default() }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(missing.image.is_none(), "a missing image has no status, and no error");
        let fs = images.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap().into_inner();
        assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

        // runp
        let pod = sandbox_config(&node, "web");
        let sandbox = run_sandbox(&mut rt, &pod).await;
        let duplicate = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            duplicate.code(),
            Code::Unknown,
            "containerd answers Unknown for a name taken: {duplicate:?}"
        );
        let inspectp = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let pod_status = inspectp.status.unwrap();
        assert_eq!(pod_status.state, cri::PodSandboxState::SandboxReady as i32);
        let ip = pod_status.network.unwrap().ip;
        assert!(ip.starts_with("10.99.0."), "the CNI address: {ip:?}");
        assert!(
            pod_status.created_at > 1_600_000_000_000_000_000,
            "nanoseconds: {}",
            pod_status.created_at
        );

        // create + start two containers in the pod
        let web = run_container(
            &mut rt,
            &sandbox,
            &pod,
            container_config("web", "trap '' TERM; echo hello; echo oops >&2; sleep 1000"),
        )
        .await;
        let side =
            run_container(&mut rt, &sandbox, &pod, container_config("side", "sleep 1000")).await;
        let web_status = wait_state(&mut rt, &web, cri::ContainerState::ContainerRunning).await;
        assert!(web_status.started_at >= web_status.created_at && web_status.created_at > 0);
        // Every container's supervisor runs from a read-only copy of the binary, which no
        // container can write (CVE-2019-5736): writing its executable is EROFS.
        let mut supervisors = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if !cmdline.split(|b| *b == 0).any(|arg| arg == b"__task") {
                continue;
            }
            let written = std::fs::OpenOptions::new().append(true).open(entry.path().join("exe"));
            match written.as_ref().err().and_then(std::io::Error::raw_os_error) {
                Some(2 | 3) => continue, // gone meanwhile
                code => assert_eq!(code, Some(30), "{}: {written:?}", entry.path().display()),
            }
            supervisors += 1;
        }
        assert!(supervisors >= 2, "the two containers' supervisors: {supervisors}");
        assert_eq!(web_status.image.unwrap().image, IMAGE);
        assert!(web_status.image_ref.starts_with("sha256:"));
        let pods = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(pods.len(), 1);
        let ps = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(ps.len(), 2);
        assert!(ps.iter().all(|c| c.state == cri::ContainerState::ContainerRunning as i32
            && c.pod_sandbox_id == sandbox));
        let only_side = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: [("container".to_owned(), "side".to_owned())].into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(only_side.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![side.clone()]);

        // the pod's containers share network, IPC and UTS, and the PID namespace too: POD is
        // the CRI's zero value for it, and containerd shares the pause's then
        let ns = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done";
        let (web_ns, _, code) = exec(&mut rt, &web, ns).await;
        assert_eq!(code, 0);
        let (side_ns, _, _) = exec(&mut rt, &side, ns).await;
        let (web_ns, side_ns): (Vec<&str>, Vec<&str>) =
            (web_ns.lines().collect(), side_ns.lines().collect());
        assert_eq!(web_ns[..3], side_ns[..3], "net, ipc and uts are the pod's");
        assert_eq!(web_ns[3], side_ns[3], "the pid namespace is the pod's");
        let (hostname, _, _) = exec(&mut rt, &side, "hostname; cat /etc/hostname").await;
        assert_eq!(hostname, "web-host\nweb-host\n");
        let (ips, _, _) = exec(&mut rt, &web, "ip -4 -o addr show eth0 || ifconfig eth0").await;
        assert!(ips.contains(&ip), "eth0 has the pod's address {ip}: {ips}");
        // the host reaches the pod's address, and a pod's containers reach each other on
        // localhost
        let server = run_container(
            &mut rt,
            &sandbox,
            &pod,
            container_config("server", "while true; do echo pong | nc -l -p 8080; done"),
        )
        .await;
        let reply = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                use std::io::Read;
                let mut text = String::new();
                if let Ok(mut stream) = std::net::TcpStream::connect((ip.as_str(), 8080)) {
                    let _ = stream.read_to_string(&mut text);
                }
                if text.contains("pong") || Instant::now() > deadline {
                    break text;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert_eq!(reply, "pong\n", "the host reaches {ip}:8080");
        let (local, _, _) = exec(&mut rt, &side, "nc 127.0.0.1 8080 </dev/null").await;
        assert_eq!(local, "pong\n", "the side container reaches the server on localhost");
        rt.stop_container(cri::StopContainerRequest { container_id: server.clone(), timeout: 0 })
            .await
            .unwrap();

        // exec -s: exit codes and timeouts
        let (_, stderr, code) = exec(&mut rt, &web, "echo err >&2; exit 3").await;
        assert_eq!((stderr.as_str(), code), ("err\n", 3));
        let timeout = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: web.clone(),
                cmd: vec!["sleep".into(), "30".into()],
                timeout: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(timeout.code(), Code::DeadlineExceeded, "{timeout:?}");

        // logs: the CRI format, in the sandbox's log directory
        let log = Path::new(&pod.log_directory).join("web.log");
        assert_eq!(web_status.log_path, log.to_string_lossy());
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("oops") || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().any(|l| l.ends_with(" stdout F hello")), "{text}");
        assert!(lines.iter().any(|l| l.ends_with(" stderr F oops")), "{text}");
        // ReopenContainerLog: a rotated file is replaced by a new one
        std::fs::rename(&log, log.with_extension("log.1")).unwrap();
        rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: web.clone() })
            .await
            .unwrap();
        assert!(log.exists(), "the log file is reopened");

        // stats
        let stats = rt
            .container_stats(cri::ContainerStatsRequest { container_id: web.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(stats.memory.unwrap().usage_bytes.unwrap().value > 0);
        assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
        let all = rt
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .stats;
        assert_eq!(all.len(), 2, "the running ones: web and side");

        // a container that ends by itself
        let done = run_container(&mut rt, &sandbox, &pod, container_config("done", "exit 0")).await;
        let done_status = wait_state(&mut rt, &done, cri::ContainerState::ContainerExited).await;
        assert_eq!((done_status.exit_code, done_status.reason.as_str()), (0, "Completed"));
        assert!(done_status.finished_at >= done_status.started_at);
        let failed =
            run_container(&mut rt, &sandbox, &pod, container_config("failed", "exit 7")).await;
        let failed_status =
            wait_state(&mut rt, &failed, cri::ContainerState::ContainerExited).await;
        assert_eq!((failed_status.exit_code, failed_status.reason.as_str()), (7, "Error"));

        // stop: SIGTERM, which the script ignores, then SIGKILL after the timeout
        let begun = Instant::now();
        rt.stop_container(cri::StopContainerRequest { container_id: web.clone(), timeout: 1 })
            .await
            .expect("stop");
        assert!(begun.elapsed() >= Duration::from_millis(900));
        let stopped = status(&mut rt, &web).await;
        assert_eq!(
            (stopped.state, stopped.exit_code),
            (cri::ContainerState::ContainerExited as i32, 137)
        );
        rt.stop_container(cri::StopContainerRequest { container_id: web.clone(), timeout: 1 })
            .await
            .expect("stopping twice is fine");
        rt.remove_container(cri::RemoveContainerRequest { container_id: web.clone() })
            .await
            .expect("rm");
        rt.remove_container(cri::RemoveContainerRequest { container_id: web.clone() })
            .await
            .expect("removing twice is fine");
        let gone = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: web.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);

        // stopp, rmp: idempotent, and nothing is left
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .expect("stopp");
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .expect("stopp twice");
        let side_status = status(&mut rt, &side).await;
        assert_eq!(
            side_status.state,
            cri::ContainerState::ContainerExited as i32,
            "stopp stops the pod's containers"
        );
        let notready = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(notready.status.unwrap().state, cri::PodSandboxState::SandboxNotready as i32);
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .expect("rmp");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .expect("rmp twice");
        assert!(rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty());
        assert!(node.entries("sandboxes").is_empty() && node.entries("containers").is_empty());
        assert!(
            node.mounts_under_root().is_empty(),
            "left mounted: {:?}",
            node.mounts_under_root()
        );
        for hierarchy in [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let left = Path::new(hierarchy).join("berth-cri-test/web");
            assert!(!left.exists(), "the pod's cgroup is left: {}", left.display());
        }
        let ipam: Vec<_> = std::fs::read_dir(node.path("ipam").join("pods"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            ipam.iter().all(|n| n.to_string_lossy().starts_with("last_reserved") || n == "lock"),
            "the address is released: {ipam:?}"
        );

        // rmi of a missing image is fine
        images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec { image: "nothere:v9".into(), ..Default::default() }),
            })
            .await
            .expect("rmi of a missing image");
    });
}

#[test]
fn root_bad_requests_get_cri_codes_and_leave_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    block_on(async {
        let (mut rt, _) = node.clients().await;
        let pod = sandbox_config(&node, "bad");
        let sandbox = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let before_mounts = node.mounts_under_root();
        let create = |config: cri::ContainerConfig, sandbox: &str| cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        };
        let unknown = rt
            .create_container(create(container_config("a", "true"), "0123456789abcdef"))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
        let mut missing_image = container_config("b", "true");
        missing_image.image =
            Some(cri::ImageSpec { image: "nothere:v9".into(), ..Default::default() });
        let err = rt.create_container(create(missing_image, &sandbox)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let mut bad_mount = container_config("c", "true");
        bad_mount.mounts = vec![cri::Mount {
            container_path: "relative".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        }];
        let err = rt.create_container(create(bad_mount, &sandbox)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let mut inside_root = container_config("d", "true");
        inside_root.mounts = vec![cri::Mount {
            container_path: "/state".into(),
            host_path: node.root().to_string_lossy().into(),
            ..Default::default()
        }];
        let err = rt.create_container(create(inside_root, &sandbox)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let mut no_metadata = container_config("e", "true");
        no_metadata.metadata = None;
        let err = rt.create_container(create(no_metadata, &sandbox)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            node.entries("containers").is_empty(),
            "failed creates leave no state: {:?}",
            node.entries("containers")
        );
        assert_eq!(node.mounts_under_root(), before_mounts, "failed creates leave no mounts");
        // a duplicate name
        rt.create_container(create(container_config("f", "sleep 100"), &sandbox)).await.unwrap();
        let err = rt
            .create_container(create(container_config("f", "sleep 100"), &sandbox))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unknown,
            "containerd answers Unknown for a name taken: {err:?}"
        );
        let err = rt
            .start_container(cri::StartContainerRequest { container_id: "ffffffffffff".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cri::PodSandboxConfig::default()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // a created (never started) container is removed with its pod
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .unwrap();
        assert!(node.entries("sandboxes").is_empty() && node.entries("containers").is_empty());
        assert!(
            node.mounts_under_root().is_empty(),
            "left mounted: {:?}",
            node.mounts_under_root()
        );
    });
}

#[test]
fn root_cri_state_survives_kill_9_of_the_server() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    let pods = 10;
    let before = block_on(async {
        let (mut rt, _) = node.clients().await;
        let mut pids = Vec::new();
        for n in 0..pods {
            let pod = sandbox_config(&node, &format!("p{n}"));
            let sandbox = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(pod.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .pod_sandbox_id;
            let id =
                run_container(&mut rt, &sandbox, &pod, container_config("app", "sleep 1000")).await;
            let info = rt
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: true,
                })
                .await
                .unwrap()
                .into_inner()
                .info;
            let pid = serde_json::from_str::<serde_json::Value>(&info["info"]).unwrap()["pid"]
                .as_i64()
                .unwrap();
            pids.push((id, pid));
        }
        pids
    });
    node.kill9();
    node.start();
    block_on(async {
        let (mut rt, _) = node.clients().await;
        let ps = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(ps.len(), pods);
        assert!(
            ps.iter().all(|c| c.state == cri::ContainerState::ContainerRunning as i32),
            "{ps:?}"
        );
        let sandboxes = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(sandboxes.len(), pods);
        assert!(sandboxes.iter().all(|s| s.state == cri::PodSandboxState::SandboxReady as i32));
        for (id, pid) in &before {
            let s = status(&mut rt, id).await;
            assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
            let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(
                alive.starts_with("sleep"),
                "container {id}'s process {pid} runs on, not restarted"
            );
        }
        for sandbox in sandboxes {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.id.clone() })
                .await
                .unwrap();
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.id })
                .await
                .unwrap();
        }
        assert!(node.mounts_under_root().is_empty());
    });
}

async fn clients_at(socket: &Path) -> RuntimeServiceClient<Channel> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect");
    RuntimeServiceClient::new(channel)
}

/// What one runtime answered to the scenario, in the fields the CRI defines.
#[derive(Debug, PartialEq)]
struct Transcript {
    conditions: Vec<(String, bool)>,
    sandbox_state: i32,
    sandbox_metadata: Option<cri::PodSandboxMetadata>,
    sandbox_labels: Vec<(String, String)>,
    created_state: i32,
    exited: (i32, i32, String),
    log_lines: Vec<String>,
    exec: (String, String, i32),
    errors: Vec<(&'static str, Code)>,
    removed_twice: bool,
    stopped_sandbox_state: i32,
    listed_after_removal: usize,
}

async fn scenario(node: &Node, socket: &Path, image: &str, name: &str) -> Transcript {
    let mut rt = clients_at(socket).await;
    let code = |r: Result<tonic::Response<()>, tonic::Status>| {
        r.err().map(|s| s.code()).unwrap_or(Code::Ok)
    };
    let conditions = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions;
    let conditions = conditions.into_iter().map(|c| (c.r#type, c.status)).collect();
    let mut pod = sandbox_config(node, name);
    pod.hostname = "same-host".into();
    pod.metadata.as_mut().unwrap().name = "same".into();
    pod.metadata.as_mut().unwrap().uid = "uid-same".into();
    pod.labels = [("app".to_owned(), "same".to_owned())].into();
    pod.linux = None;
    let sandbox = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert!(status.created_at > 1_600_000_000_000_000_000, "nanoseconds");
    let mut sandbox_labels: Vec<(String, String)> = status.labels.into_iter().collect();
    sandbox_labels.sort();
    let mut config = container_config("job", "echo hello; echo oops >&2; exit 3");
    config.image = Some(cri::ImageSpec { image: image.into(), ..Default::default() });
    let job = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let created_state = status_of(&mut rt, &job).await.state;
    rt.start_container(cri::StartContainerRequest { container_id: job.clone() }).await.unwrap();
    let exited = wait_state(&mut rt, &job, cri::ContainerState::ContainerExited).await;
    // (containerd may record a short-lived container's start after its finish: only
    // berth's order is checked, in root_a_pod_lives_its_whole_life_through_cri.)
    assert!(exited.finished_at > 0 && exited.started_at > 0 && exited.created_at > 0);
    // Log lines without their timestamps (whose exact digits are each runtime's own).
    let log = std::fs::read_to_string(Path::new(&pod.log_directory).join("job.log")).unwrap();
    // Sorted: stdout and stderr are two pipes, their order is the scheduler's.
    let mut log_lines: Vec<String> = log
        .lines()
        .map(|l| {
            let (time, rest) = l.split_once(' ').unwrap();
            assert!(
                time.len() >= 20 && time.ends_with('Z') || time.contains('+'),
                "an RFC 3339 time: {time}"
            );
            rest.to_owned()
        })
        .collect();
    log_lines.sort();
    let mut config = container_config("server", "sleep 1000");
    config.image = Some(cri::ImageSpec { image: image.into(), ..Default::default() });
    let server = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: server.clone() }).await.unwrap();
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: server.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo out; echo err >&2; exit 2".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let exec = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.exit_code,
    );
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_owned();
    let mut errors = Vec::new();
    errors.push((
        "status of an unknown sandbox",
        code(
            rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: unknown.clone(),
                verbose: false,
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    errors.push((
        "status of an unknown container",
        code(
            rt.container_status(cri::ContainerStatusRequest {
                container_id: unknown.clone(),
                verbose: false,
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    errors.push((
        "start an unknown container",
        code(
            rt.start_container(cri::StartContainerRequest { container_id: unknown.clone() })
                .await
                .map(|_| tonic::Response::new(())),
        ),
    ));
    errors.push((
        "remove an unknown container",
        code(
            rt.remove_container(cri::RemoveContainerRequest { container_id: unknown.clone() })
                .await
                .map(|_| tonic::Response::new(())),
        ),
    ));
    errors.push((
        "remove an unknown sandbox",
        code(
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: unknown.clone() })
                .await
                .map(|_| tonic::Response::new(())),
        ),
    ));
    let mut config = container_config("job2", "true");
    config.image = Some(cri::ImageSpec { image: image.into(), ..Default::default() });
    errors.push((
        "create in an unknown sandbox",
        code(
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: unknown.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    errors.push((
        "exec in an exited container",
        code(
            rt.exec_sync(cri::ExecSyncRequest {
                container_id: job.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    errors.push((
        "a sandbox name taken",
        code(
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    let mut config = container_config("server", "sleep 1000");
    config.image = Some(cri::ImageSpec { image: image.into(), ..Default::default() });
    errors.push((
        "a container name taken",
        code(
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    let mut config = container_config("missing", "true");
    config.image = Some(cri::ImageSpec { image: "nothere:v9".into(), ..Default::default() });
    errors.push((
        "a missing image",
        code(
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(config),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .map(|_| tonic::Response::new(())),
        ),
    ));
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() })
        .await
        .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() })
        .await
        .unwrap();
    let stopped_sandbox_state = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .state;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() })
        .await
        .unwrap();
    let removed_twice = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.clone() })
        .await
        .is_ok();
    let listed_after_removal = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
        .len();
    Transcript {
        conditions,
        sandbox_state: status.state,
        sandbox_metadata: status.metadata,
        sandbox_labels,
        created_state,
        exited: (exited.state, exited.exit_code, exited.reason),
        log_lines,
        exec,
        errors,
        removed_twice,
        stopped_sandbox_state,
        listed_after_removal,
    }
}

async fn status_of(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    status(rt, id).await
}

#[test]
fn root_berth_answers_as_containerd_does() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    let containerd = common::containerd::Containerd::start(
        &node.path("containerd"),
        &node.path("net.d"),
        &node.path("fixture.tar"),
    );
    block_on(async {
        let berth = scenario(&node, &node.socket(), IMAGE, "b").await;
        let theirs = scenario(&node, &containerd.socket, "docker.io/library/fixture:v1", "c").await;
        assert_eq!(
            berth, theirs,
            "berth (left) and containerd (right) answer the same scenario differently"
        );
    });
}

/// An image `berth build` made is in the store the CRI serves: a pod runs it without a
/// pull (issue 12's "usable by the cluster's pods").
#[test]
fn root_a_built_image_runs_in_a_pod() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    let context = node.path("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("greeting"), "built for a pod\n").unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY greeting /greeting\nCMD [\"cat\", \"/greeting\"]\n"),
    )
    .unwrap();
    node.berth(&["build", "--progress", "plain", "-t", "local/built:1", context.to_str().unwrap()]);
    node.start();
    block_on(async {
        let (mut rt, mut images) = node.clients().await;
        let status = images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image: "local/built:1".into(), ..Default::default() }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        let image = status.image.expect("the built image is known to the CRI");
        assert!(image.repo_tags.iter().any(|t| t.contains("local/built:1")), "{image:?}");
        let pod = sandbox_config(&node, "built");
        let sandbox = run_sandbox(&mut rt, &pod).await;
        let mut config = container_config("app", "unused");
        config.image = Some(cri::ImageSpec { image: "local/built:1".into(), ..Default::default() });
        // The image's CMD runs: no command of the pod's own.
        config.command.clear();
        let id = run_container(&mut rt, &sandbox, &pod, config).await;
        let done = wait_state(&mut rt, &id, cri::ContainerState::ContainerExited).await;
        assert_eq!(done.exit_code, 0, "{done:?}");
        let log = std::fs::read_to_string(Path::new(&pod.log_directory).join("app.log")).unwrap();
        assert!(log.contains("stdout F built for a pod"), "{log}");
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() })
            .await
            .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox })
            .await
            .unwrap();
    });
}

fn in_pod_pid_namespace(mut config: cri::ContainerConfig) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The host directory of a cgroup for a v1 controller or the v2 tree.
fn cgroup_dir(controller: &str, path: &str) -> PathBuf {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let base = if v2 {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        Path::new("/sys/fs/cgroup").join(controller)
    };
    base.join(path.trim_start_matches('/'))
}

#[test]
fn root_pods_share_processes_when_asked_and_their_cgroup_limits_them() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    block_on(async {
        let (mut rt, _) = node.clients().await;
        let mut shared = sandbox_config(&node, "shared");
        let linux = shared.linux.get_or_insert_with(Default::default);
        linux.security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        linux.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        });
        let sandbox = run_sandbox(&mut rt, &shared).await;
        let a = run_container(
            &mut rt,
            &sandbox,
            &shared,
            in_pod_pid_namespace(container_config("a", "exec sleep 1000")),
        )
        .await;
        let b = run_container(
            &mut rt,
            &sandbox,
            &shared,
            in_pod_pid_namespace(container_config("b", "exec sleep 1001")),
        )
        .await;
        wait_state(&mut rt, &a, cri::ContainerState::ContainerRunning).await;
        let (ps, _, code) = exec(&mut rt, &b, "ps -o pid,args").await;
        assert_eq!(code, 0);
        assert!(ps.contains("sleep 1000") && ps.contains("sleep 1001"), "{ps}");
        // PID 1 is the namespace's holder, and it keeps berth's binary out of reach.
        let (exe, _, _) = exec(&mut rt, &b, "readlink /proc/1/exe || echo unreadable").await;
        assert_eq!(exe.trim(), "unreadable", "{exe}");
        // Even for a container with CAP_SYS_PTRACE (a debug sidecar's usual grant): its
        // root is an empty directory, it is nobody, with no capabilities.
        let mut tracer = in_pod_pid_namespace(container_config("tracer", "exec sleep 1005"));
        if let Some(security) = tracer.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            security.capabilities = Some(cri::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            });
        }
        let tracer = run_container(&mut rt, &sandbox, &shared, tracer).await;
        let (seen, _, _) = exec(
            &mut rt,
            &tracer,
            "ls -A /proc/1/root/ > /tmp/listed && echo listed $(wc -l < /tmp/listed); grep -E '^(Uid|CapEff)' /proc/1/status",
        )
        .await;
        let seen: Vec<&str> = seen.lines().map(str::trim).collect();
        assert_eq!(seen[0], "listed 0", "the holder's root is empty: {seen:?}");
        assert!(seen[1].starts_with("Uid:\t65535"), "{seen:?}");
        assert_eq!(seen[2], "CapEff:\t0000000000000000", "{seen:?}");
        // Containers of a pod that asks for a namespace each (the kubelet's default) see
        // only their own processes.
        let mut lone = sandbox_config(&node, "lone");
        lone.linux.get_or_insert_with(Default::default).security_context =
            Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
        let lone_id = run_sandbox(&mut rt, &lone).await;
        let c =
            run_container(&mut rt, &lone_id, &lone, container_config("c", "exec sleep 1002")).await;
        let d =
            run_container(&mut rt, &lone_id, &lone, container_config("d", "exec sleep 1003")).await;
        wait_state(&mut rt, &c, cri::ContainerState::ContainerRunning).await;
        let (ps, _, _) = exec(&mut rt, &d, "ps -o args").await;
        assert!(!ps.contains("sleep 1002") && ps.contains("sleep 1003"), "{ps}");
        // The pod's cgroup carries its limit, and a container with none of its own is
        // killed at it.
        let limit = std::fs::read_to_string(cgroup_dir("memory", "/berth-cri-test/shared").join(
            if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            },
        ))
        .expect("the pod's memory cgroup");
        assert_eq!(limit.trim(), (32u64 << 20).to_string());
        let hog = run_container(
            &mut rt,
            &sandbox,
            &shared,
            in_pod_pid_namespace(container_config(
                "hog",
                "exec awk 'BEGIN { s = sprintf(\"%80000000s\", \"\"); print length(s) }'",
            )),
        )
        .await;
        let ended = wait_state(&mut rt, &hog, cri::ContainerState::ContainerExited).await;
        assert_eq!(ended.exit_code, 137, "{ended:?}");
        drop(rt);
    });
    // The holder outlives a kill -9 of the server: a new container joins the same namespace.
    node.kill9();
    node.start();
    block_on(async {
        let (mut rt, _) = node.clients().await;
        let listed = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        let shared = listed
            .iter()
            .find(|s| s.metadata.as_ref().is_some_and(|m| m.name == "shared"))
            .expect("the shared sandbox")
            .id
            .clone();
        let config = sandbox_config(&node, "shared");
        let e = run_container(
            &mut rt,
            &shared,
            &config,
            in_pod_pid_namespace(container_config("e", "exec sleep 1004")),
        )
        .await;
        let (ps, _, _) = exec(&mut rt, &e, "ps -o args").await;
        assert!(ps.contains("sleep 1000") && ps.contains("sleep 1004"), "{ps}");
        let lone = listed
            .iter()
            .find(|s| s.metadata.as_ref().is_some_and(|m| m.name == "lone"))
            .expect("the lone sandbox")
            .id
            .clone();
        for id in [shared.clone(), lone] {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() })
                .await
                .expect("stopp");
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .expect("rmp");
        }
    });
    // Nothing of the shared pod is left: no holder, no cgroup.
    let holders = Command::new("pgrep").args(["-f", "__pidns"]).output().unwrap();
    let mine: Vec<String> = String::from_utf8_lossy(&holders.stdout)
        .lines()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains("/berth-cri-test/shared"))
        })
        .map(str::to_owned)
        .collect();
    assert!(mine.is_empty(), "holders left: {mine:?}");
    assert!(!cgroup_dir("memory", "/berth-cri-test/shared").exists());
    assert!(!cgroup_dir("memory", "/berth-cri-test/lone").exists());
}

/// A remote command over SPDY/3.1 as `crictl exec`/`attach` speak it by default
/// (`v4.channel.k8s.io`): opens `streams` (by their streamtype), sends `resize` then
/// `input` (and ends stdin), and collects stdout, stderr and the error stream's status
/// until that stream ends.
async fn spdy_command(
    url: &str,
    streams: &[&str],
    resize: Option<(u16, u16)>,
    input: &[u8],
) -> (String, String, String) {
    use berth_cri::spdy::{self, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap();
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    socket
        .write_all(
            format!(
                "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                 X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.expect("the upgrade answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
    let (reader, mut writer) = socket.into_split();
    let mut compress = spdy::Writer::default();
    let id = |kind: &str| 1 + 2 * streams.iter().position(|s| *s == kind).unwrap() as u32;
    for kind in streams {
        let frame = compress.syn_stream(id(kind), 0, &[("streamtype", kind)]);
        writer.write_all(&frame).await.unwrap();
    }
    if let Some((rows, cols)) = resize {
        let size = format!("{{\"Width\":{cols},\"Height\":{rows}}}");
        writer.write_all(&spdy::data(id("resize"), 0, size.as_bytes())).await.unwrap();
    }
    if streams.contains(&"stdin") {
        writer.write_all(&spdy::data(id("stdin"), 0, input)).await.unwrap();
        writer.write_all(&spdy::data(id("stdin"), spdy::FLAG_FIN, &[])).await.unwrap();
    }
    let mut reader = spdy::Reader::new(reader);
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let read = async {
        loop {
            match reader.next().await.expect("a frame") {
                Frame::Data { stream, flags, data } => {
                    let kind = streams[((stream - 1) / 2) as usize];
                    match kind {
                        "stdout" => stdout.extend_from_slice(&data),
                        "stderr" => stderr.extend_from_slice(&data),
                        "error" => {
                            status.extend_from_slice(&data);
                            if flags & spdy::FLAG_FIN != 0 {
                                return;
                            }
                        }
                        _ => {}
                    }
                }
                Frame::GoAway { .. } => panic!("the server went away"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the command's status");
    (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
        String::from_utf8_lossy(&status).into_owned(),
    )
}

#[test]
fn root_exec_and_attach_speak_spdy_as_crictl_does() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    block_on(async {
        let (mut rt, _) = node.clients().await;
        let pod = sandbox_config(&node, "spdy");
        let sandbox = run_sandbox(&mut rt, &pod).await;
        let mut echo = container_config("echo", "exec cat");
        echo.stdin = true;
        echo.stdin_once = true;
        let echo = run_container(&mut rt, &sandbox, &pod, echo).await;
        wait_state(&mut rt, &echo, cri::ContainerState::ContainerRunning).await;
        let url = |tty: bool, stdin: bool, cmd: &str| cri::ExecRequest {
            container_id: echo.clone(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        // exec on pipes: input, output, error output and the exit code in the status
        let exec = rt
            .exec(url(false, true, "cat; echo err >&2; exit 3"))
            .await
            .expect("exec")
            .into_inner()
            .url;
        let (out, err, status) =
            spdy_command(&exec, &["error", "stdin", "stdout", "stderr"], None, b"hello\n").await;
        assert_eq!((out.as_str(), err.as_str()), ("hello\n", "err\n"));
        let status: serde_json::Value = serde_json::from_str(&status).expect("a Status");
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
        // exec on a terminal: the size the client sends is the terminal's
        let exec = rt
            .exec(url(true, true, "read line; stty size"))
            .await
            .expect("exec -t")
            .into_inner()
            .url;
        let (out, _, status) =
            spdy_command(&exec, &["error", "stdin", "stdout", "resize"], Some((33, 101)), b"go\n")
                .await;
        assert!(out.contains("33 101"), "{out:?}");
        assert!(status.contains("\"Success\""), "{status}");
        // a URL is good once
        let again = spdy_command_refused(&exec).await;
        assert!(again.contains("404"), "{again}");
        // attach: the container's own stdin and stdout
        let attach = rt
            .attach(cri::AttachRequest {
                container_id: echo.clone(),
                stdin: true,
                tty: false,
                stdout: true,
                stderr: true,
            })
            .await
            .expect("attach")
            .into_inner()
            .url;
        let (out, _, status) = spdy_command(
            &attach,
            &["error", "stdin", "stdout", "stderr"],
            None,
            b"through attach\n",
        )
        .await;
        assert_eq!(out, "through attach\n");
        assert!(status.contains("\"Success\""), "{status}");
        // stdin_once: the end of the attached input ends the container
        let ended = wait_state(&mut rt, &echo, cri::ContainerState::ContainerExited).await;
        assert_eq!(ended.exit_code, 0);
    });
}

/// The answer to a second upgrade of a used URL (its status line).
async fn spdy_command_refused(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    socket
        .write_all(
            format!(
                "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = socket.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or("").to_owned()
}

#[test]
fn root_cri_pulls_go_to_mirrors_and_keep_the_asked_name() {
    if !root_or_skip() {
        return;
    }
    // The registry in the test's own network namespace, where the server will run.
    let mut node = Node::new();
    let registry = common::registry::Registry::start();
    let layout = node.path("layout");
    registry.skopeo_put(&format!("oci:{}:v1", layout.display()), "k8s/pause:3.10");
    let config = node.path("registries.yaml");
    std::fs::write(
        &config,
        format!(
            "mirrors:\n  registry.k8s.io:\n    endpoint: [\"http://{}\"]\n    rewrite: {{\"^(.*)$\": \"k8s/$1\"}}\n",
            registry.host()
        ),
    )
    .unwrap();
    node.env.push(("BERTH_REGISTRIES_CONFIG".into(), config.to_string_lossy().into_owned()));
    node.start();
    block_on(async {
        let (_, mut images) = node.clients().await;
        let name = "registry.k8s.io/pause:3.10";
        let pulled = images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: name.into(), ..Default::default() }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .expect("pull through the mirror")
            .into_inner();
        let status = images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image: name.into(), ..Default::default() }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .expect("the image is there by its asked name");
        assert_eq!(status.id, pulled.image_ref);
        assert!(status.repo_tags.contains(&name.to_owned()), "{:?}", status.repo_tags);
        let listed = images
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images;
        assert!(listed.iter().any(|i| i.repo_tags.contains(&name.to_owned())), "{listed:?}");
    });
}

/// A WebSocket client of the streaming server (RFC 6455 by hand: masked client frames),
/// speaking `v4.channel.k8s.io` as the Python client's port-forward does.
struct WsClient {
    socket: tokio::net::TcpStream,
}

impl WsClient {
    async fn connect(url: &str, query: &str) -> WsClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
        socket
            .write_all(
                format!(
                    "GET /{path}?{query} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("sec-websocket-protocol: v4.channel.k8s.io"), "{head}");
        WsClient { socket }
    }

    async fn send(&mut self, channel: u8, data: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut payload = vec![channel];
        payload.extend_from_slice(data);
        assert!(payload.len() < 126);
        let mask = [7u8, 21, 42, 99];
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).await.unwrap();
    }

    /// The next data message: (channel, bytes); `None` once the server closes.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).await.ok()?;
            let mut length = u64::from(head[1] & 0x7f);
            if length == 126 {
                let mut ext = [0u8; 2];
                self.socket.read_exact(&mut ext).await.ok()?;
                length = u64::from(u16::from_be_bytes(ext));
            } else if length == 127 {
                let mut ext = [0u8; 8];
                self.socket.read_exact(&mut ext).await.ok()?;
                length = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0u8; length as usize];
            self.socket.read_exact(&mut payload).await.ok()?;
            match head[0] & 0x0f {
                0x8 => return None,
                0x2 if !payload.is_empty() => return Some((payload[0], payload[1..].to_vec())),
                _ => {}
            }
        }
    }
}

#[test]
fn root_port_forward_speaks_websocket_channels_too() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new();
    node.start();
    block_on(async {
        let (mut rt, _) = node.clients().await;
        let pod = sandbox_config(&node, "wsforward");
        let sandbox = run_sandbox(&mut rt, &pod).await;
        let server = run_container(
            &mut rt,
            &sandbox,
            &pod,
            container_config("server", "while true; do echo pong | nc -l -p 8080; done"),
        )
        .await;
        wait_state(&mut rt, &server, cri::ContainerState::ContainerRunning).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = rt
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: sandbox.clone(),
                    port: vec![],
                })
                .await
                .expect("portforward")
                .into_inner()
                .url;
            let mut client = WsClient::connect(&url, "port=8080&port=9").await;
            // Every channel first says its port (little-endian).
            let mut firsts = Vec::new();
            for _ in 0..4 {
                firsts.push(client.next().await.expect("every channel says its port first"));
            }
            firsts.sort();
            assert_eq!(
                firsts,
                vec![
                    (0, 8080u16.to_le_bytes().to_vec()),
                    (1, 8080u16.to_le_bytes().to_vec()),
                    (2, 9u16.to_le_bytes().to_vec()),
                    (3, 9u16.to_le_bytes().to_vec())
                ]
            );
            client.send(0, b"ping\n").await;
            let mut got = Vec::new();
            let mut refused = String::new();
            // The session ends once every port's connection has; a server that did not
            // listen yet ends it early.
            let read = async {
                while !got.ends_with(b"pong\n") || refused.is_empty() {
                    let Some((channel, data)) = client.next().await else { return false };
                    match channel {
                        0 => got.extend_from_slice(&data),
                        3 => refused.push_str(&String::from_utf8_lossy(&data)),
                        _ => {}
                    }
                }
                true
            };
            if tokio::time::timeout(Duration::from_secs(5), read).await == Ok(true) {
                assert!(refused.contains("failed to connect to localhost:9"), "{refused}");
                break;
            }
            // The server may not listen yet: a new URL and another try.
            assert!(Instant::now() < deadline, "no pong through the WebSocket forward");
        }
    });
}
