//! A real registry (Debian's `docker-registry`, distribution 2.8) on a free loopback port,
//! with or without basic auth, and skopeo to put fixture images into it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None, None)
    }

    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user.to_owned(), password.to_owned())), None)
    }

    /// A registry serving HTTPS with this certificate and key (PEM files).
    pub fn start_with_tls(certificate: &Path, key: &Path) -> Registry {
        Registry::start_with(None, Some((certificate.to_owned(), key.to_owned())))
    }

    fn start_with(
        credentials: Option<(String, String)>,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "install docker-registry (scripts/deps does)"
        );
        let mut dir =
            tempfile::Builder::new().prefix("berth-registry-").tempdir().expect("tempdir");
        let mut auth = String::new();
        if let Some((user, password)) = &credentials {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(output.status.success());
            std::fs::write(dir.path().join("htpasswd"), output.stdout).expect("htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let tls_config = match &tls {
            Some((certificate, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certificate.display(),
                key.display()
            ),
            None => String::new(),
        };
        for attempt in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_config}{auth}",
                dir.path().join("data").display()
            );
            std::fs::write(dir.path().join("config.yml"), config).expect("config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let child = Command::new("docker-registry")
                .args(["serve", &dir.path().join("config.yml").to_string_lossy()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("docker-registry");
            let mut registry = Registry { dir, port, credentials: credentials.clone(), child };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                // Ours answers as a registry; something else that took the port meanwhile
                // (another test's server) does not, and ours has exited.
                if tls.is_some() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // HTTPS: listening, and still ours (alive) a moment later, is enough.
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(None) = registry.child.try_wait() {
                        return registry;
                    }
                }
                if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
                    use std::io::{Read, Write};
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut answer = String::new();
                    let asked = stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_ok();
                    let _ = stream.read_to_string(&mut answer);
                    if asked
                        && answer.to_ascii_lowercase().contains("docker-distribution-api-version")
                    {
                        return registry;
                    }
                    if let Ok(Some(_)) = registry.child.try_wait() {
                        break;
                    }
                }
                if let Ok(Some(_)) = registry.child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let log = std::fs::read_to_string(registry.dir.path().join("registry.log"))
                .unwrap_or_default();
            eprintln!("registry attempt {attempt} failed: {log}");
            let _ = registry.child.kill();
            let _ = registry.child.wait();
            dir = registry.take_dir();
        }
        panic!("docker-registry did not start");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let replacement = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, replacement)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes (to damage it on purpose).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    fn creds(&self) -> Vec<String> {
        match &self.credentials {
            Some((user, password)) => vec!["--creds".into(), format!("{user}:{password}")],
            None => Vec::new(),
        }
    }

    /// `skopeo copy` from `source` (any transport) to `repository:tag` in this registry.
    pub fn skopeo_put(&self, source: &str, repository_tag: &str) {
        let mut args: Vec<String> =
            vec!["copy".into(), "--insecure-policy".into(), "--dest-tls-verify=false".into()];
        if let Some((user, password)) = &self.credentials {
            args.extend(["--dest-creds".into(), format!("{user}:{password}")]);
        }
        args.extend([source.to_owned(), format!("docker://{}/{repository_tag}", self.host())]);
        let output = Command::new("skopeo").args(&args).output().expect("skopeo");
        assert!(
            output.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `skopeo copy` from this registry to `target` (any transport).
    pub fn skopeo_get(&self, repository_tag: &str, target: &str) {
        let mut args: Vec<String> =
            vec!["copy".into(), "--insecure-policy".into(), "--src-tls-verify=false".into()];
        if let Some((user, password)) = &self.credentials {
            args.extend(["--src-creds".into(), format!("{user}:{password}")]);
        }
        args.extend([format!("docker://{}/{repository_tag}", self.host()), target.to_owned()]);
        let output = Command::new("skopeo").args(&args).output().expect("skopeo");
        assert!(
            output.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The raw manifest as skopeo reads it from the registry.
    pub fn skopeo_raw_manifest(&self, repository_tag: &str) -> Vec<u8> {
        let mut args: Vec<String> =
            vec!["inspect".into(), "--raw".into(), "--tls-verify=false".into()];
        args.extend(self.creds());
        args.push(format!("docker://{}/{repository_tag}", self.host()));
        let output = Command::new("skopeo").args(&args).output().expect("skopeo");
        assert!(
            output.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
