//! containerd 1.6 (Debian's `containerd`, with its CRI plugin and runc), private to a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// containerd 1.6 (Debian's, with its CRI plugin and runc), private to a test: its root,
/// state, socket and streaming server in the node's directory, the same CNI list, and the
/// fixture and a sandbox image imported.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
}

impl Containerd {
    /// Starts it with its state in `dir`, the CNI lists of `net`, and `fixture` (an OCI
    /// layout tar) imported as docker.io/library/fixture:v1.
    pub fn start(dir: &Path, net: &Path, fixture: &Path) -> Containerd {
        let dir = dir.to_owned();
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/pause:v1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{net}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"#,
            dir = dir.display(),
            socket = socket.display(),
            net = net.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The fixture (as docker.io/library/fixture:v1) and a sandbox image that waits.
        let layout = dir.join("pause-layout");
        let layers = berth_testkit::image::fixture_layers().unwrap();
        berth_testkit::image::write_layout(
            &layout,
            "v1",
            &layers,
            &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"],
        )
        .unwrap();
        let pause = dir.join("pause.tar");
        assert!(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&pause)
            .arg(".")
            .status()
            .unwrap()
            .success());
        for (base, tar) in
            [("docker.io/library/fixture", fixture.to_owned()), ("docker.io/library/pause", pause)]
        {
            let imported = Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args(["-n", "k8s.io", "images", "import", "--base-name", base])
                .arg(&tar)
                .output()
                .unwrap();
            assert!(
                imported.status.success(),
                "ctr import: {}",
                String::from_utf8_lossy(&imported.stderr)
            );
        }
        Containerd { child, socket }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
