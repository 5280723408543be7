//! `berth build` end to end, as root: a corpus of Dockerfiles (tests/build/*) built by berth
//! and by `buildah bud` from the same context and compared (files with modes, owners and
//! contents listed from inside a container of each, the image config, the layers); the
//! cache; here-documents and parallel stages, which buildah 1.28 lacks; bad input; a build
//! killed in the middle.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::root_or_skip;
use serde_json::{json, Value};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/build");

/// A berth root and a buildah store, both holding the same busybox image.
struct Builders {
    dir: tempfile::TempDir,
}

impl Builders {
    fn new(with_buildah: bool) -> Builders {
        let dir = tempfile::Builder::new().prefix("berth-build-").tempdir().expect("tempdir");
        let builders = Builders { dir };
        // busybox (Debian's static one) with passwd and group files, as `busybox:latest`.
        let rootfs = builders.path("busybox-rootfs");
        for sub in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("Debian's busybox-static");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let tar = builders.path("busybox.tar");
        let packed = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(packed.success());
        builders.ok(&[
            "import",
            "--change",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            "busybox:latest",
        ]);
        if with_buildah {
            let archive = builders.path("busybox-save.tar");
            builders.ok(&["save", "-o", archive.to_str().unwrap(), "busybox:latest"]);
            let pulled =
                builders.buildah(&["pull", "-q", &format!("docker-archive:{}", archive.display())]);
            assert!(
                pulled.status.success(),
                "buildah pull: {}",
                String::from_utf8_lossy(&pulled.stderr)
            );
            let tagged = builders.buildah(&[
                "tag",
                String::from_utf8_lossy(&pulled.stdout).trim(),
                "busybox:latest",
            ]);
            assert!(
                tagged.status.success(),
                "buildah tag: {}",
                String::from_utf8_lossy(&tagged.stderr)
            );
        }
        builders
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BERTH);
        command.env("BERTH_ROOT", self.root()).stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("berth")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "berth {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Builds; returns (image id, progress output).
    fn build(&self, context: &Path, args: &[&str]) -> (String, String) {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        all.push(context.to_str().unwrap());
        let output = self.run(&all);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "berth {all:?} failed ({}):\n{stderr}", output.status);
        (String::from_utf8_lossy(&output.stdout).trim().to_owned(), stderr)
    }

    fn buildah(&self, args: &[&str]) -> Output {
        Command::new("buildah")
            .arg("--root")
            .arg(self.path("buildah/root"))
            .arg("--runroot")
            .arg(self.path("buildah/run"))
            .args(["--storage-driver", "overlay"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("buildah (Debian's buildah package)")
    }

    /// Builds with buildah and loads the result into berth's store as `name`.
    fn buildah_build(&self, context: &Path, name: &str, extra: &[&str]) {
        let mut args =
            vec!["bud", "--runtime", "runc", "--format", "docker", "--layers", "-q", "-t", name];
        args.extend_from_slice(extra);
        args.push(context.to_str().unwrap());
        let built = self.buildah(&args);
        assert!(
            built.status.success(),
            "buildah bud failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let archive = self.path(&format!("{name}.tar"));
        let _ = std::fs::remove_file(&archive);
        let pushed = self.buildah(&[
            "push",
            "-q",
            name,
            &format!("docker-archive:{}:{name}:latest", archive.display()),
        ]);
        assert!(
            pushed.status.success(),
            "buildah push failed:\n{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        self.ok(&["load", "-i", archive.to_str().unwrap()]);
    }

    /// Every file of the image with its mode, owner, type, content digest and link target,
    /// as a container of it sees them.
    fn listing(&self, image: &str) -> Vec<String> {
        let script = r#"find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -print | sort | while read f; do if [ -f "$f" ] && [ ! -L "$f" ]; then s=$(md5sum "$f" | cut -c1-12); else s=-; fi; echo "$f $(stat -c '%a %u %g %F' "$f") $s $(readlink "$f")"; done"#;
        let out = self.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            script,
        ]);
        out.lines()
            // Every container gets its own; they are bind mounts, not the image's files.
            .filter(|l| {
                !["/etc/hosts ", "/etc/hostname ", "/etc/resolv.conf "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(str::to_owned)
            .collect()
    }

    fn inspect(&self, image: &str) -> Value {
        serde_json::from_str::<Value>(&self.ok(&["inspect", image])).expect("json")[0].clone()
    }

    /// The parts of the config a Dockerfile sets, with empty values left out (buildah
    /// writes `[]` and `{}` where berth and BuildKit leave the key out).
    fn config(&self, image: &str) -> BTreeMap<String, Value> {
        let inspected = self.inspect(image);
        let config = &inspected["Config"];
        let mut out = BTreeMap::new();
        for key in [
            "Env",
            "Cmd",
            "Entrypoint",
            "User",
            "WorkingDir",
            "ExposedPorts",
            "Volumes",
            "Labels",
            "Healthcheck",
            "StopSignal",
            "Shell",
            "OnBuild",
        ] {
            let mut value = config[key].clone();
            if key == "Labels" {
                if let Some(map) = value.as_object_mut() {
                    map.remove("io.buildah.version");
                }
            }
            if key == "ExposedPorts" {
                // Docker's builders expand 9000-9001/tcp into each port; buildah keeps it.
                if let Some(map) = value.as_object() {
                    let mut expanded = serde_json::Map::new();
                    for port in map.keys() {
                        let (range, proto) = port.split_once('/').unwrap_or((port, "tcp"));
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        for p in lo.parse::<u16>().unwrap()..=hi.parse::<u16>().unwrap() {
                            expanded.insert(format!("{p}/{proto}"), json!({}));
                        }
                    }
                    value = Value::Object(expanded);
                }
            }
            let empty = value.is_null()
                || value.as_array().is_some_and(|a| a.is_empty())
                || value.as_object().is_some_and(|o| o.is_empty())
                || value.as_str().is_some_and(str::is_empty);
            if !empty {
                out.insert(key.to_owned(), value);
            }
        }
        out
    }

    fn layers(&self, image: &str) -> usize {
        self.inspect(image)["RootFS"]["Layers"].as_array().map_or(0, Vec::len)
    }

    /// Nothing of a build left behind: no work directory, mount or step container.
    fn assert_no_leftovers(&self) {
        let work = self.root().join("build/work");
        let left: Vec<_> = std::fs::read_dir(&work)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "work directories left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root();
        assert!(
            !mounts.contains(root.to_str().unwrap()),
            "mounts left under {}:\n{mounts}",
            root.display()
        );
        let containers = self.ok(&[
            "runtime",
            "--root",
            self.root().join("build/runtime").to_str().unwrap(),
            "list",
            "-q",
        ]);
        assert!(containers.trim().is_empty(), "step containers left: {containers}");
    }
}

/// Copies a corpus case into a fresh context directory.
fn context(builders: &Builders, case: &str) -> PathBuf {
    let to = builders.path(&format!("context-{case}"));
    let copied =
        Command::new("cp").arg("-a").arg(Path::new(CORPUS).join(case)).arg(&to).status().unwrap();
    assert!(copied.success());
    to
}

#[test]
fn root_the_corpus_builds_as_buildah_builds_it() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(true);
    let secret = builders.path("token");
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let secret_flag = format!("id=token,src={}", secret.display());
    for (case, extra) in [
        ("basics", vec![]),
        ("multistage", vec![]),
        ("mounts", vec!["--secret", secret_flag.as_str()]),
    ] {
        let dir = context(&builders, case);
        let ours = format!("berth-{case}");
        let mut args = vec!["-t", ours.as_str()];
        args.extend(extra.iter().copied());
        builders.build(&dir, &args);
        let theirs = format!("buildah-{case}");
        builders.buildah_build(&dir, &theirs, &extra);
        let mut their_files = builders.listing(&theirs);
        // buildah leaves the mount point of its own /run behind in some builds; BuildKit
        // and berth do not.
        if !builders.listing(&ours).iter().any(|l| l.starts_with("/run ")) {
            their_files.retain(|l| l != "/run 755 0 0 directory - ");
        }
        let our_files = builders.listing(&ours);
        let missing: Vec<_> = their_files.iter().filter(|l| !our_files.contains(l)).collect();
        let extra_files: Vec<_> = our_files.iter().filter(|l| !their_files.contains(l)).collect();
        assert!(
            missing.is_empty() && extra_files.is_empty(),
            "{case}: files differ\nonly buildah's: {missing:#?}\nonly berth's: {extra_files:#?}"
        );
        assert_eq!(builders.config(&ours), builders.config(&theirs), "{case}: configs differ");
        assert_eq!(builders.layers(&ours), builders.layers(&theirs), "{case}: layer counts differ");
    }
    // The secret was readable during the step and is in no layer.
    let length =
        builders.ok(&["run", "--rm", "--network", "none", "berth-mounts", "cat", "/secret-length"]);
    assert_eq!(length.trim(), "13");
    let archive = builders.path("mounts-save.tar");
    builders.ok(&["save", "-o", archive.to_str().unwrap(), "berth-mounts"]);
    let listed = Command::new("sh").arg("-c").arg(format!("cd {} && mkdir -p x && tar -xf {} -C x && for f in $(find x -type f); do (gzip -dc $f 2>/dev/null || cat $f) ; done | grep -c s3cr3t || true", builders.dir.path().display(), archive.display())).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "0", "the secret is in the image");
    // The stage nothing needed was never built (it would have failed).
    let (_, progress) = builders.build(&context(&builders, "multistage"), &["--no-cache"]);
    assert!(!progress.contains("exit 3"), "{progress}");
    // The images run as built.
    let ls = builders.ok(&["run", "--rm", "--network", "none", "berth-multistage"]);
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        ["base.txt", "by-index.txt", "left.txt", "passwd-from-an-image", "right.txt"]
    );
    let basics = builders.ok(&["run", "--rm", "--network", "none", "berth-basics", "a", "b"]);
    assert_eq!(basics.trim(), "running a b", "ENTRYPOINT with arguments");
    builders.assert_no_leftovers();
}

#[test]
fn root_the_cache_follows_content() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nRUN echo first > /first\nCOPY a.txt /a.txt\nRUN echo \"$(cat /a.txt)-built\" > /b.txt\nENV DONE=1\n").unwrap();
    std::fs::write(dir.join("a.txt"), "one").unwrap();
    let (first, progress) = builders.build(&dir, &["-t", "cached:1"]);
    assert_eq!(progress.matches("CACHED").count(), 0, "{progress}");
    // Nothing changed: no step runs, and the image is the same.
    let (again, progress) = builders.build(&dir, &["-t", "cached:1"]);
    assert_eq!(again, first);
    assert_eq!(
        progress.matches("CACHED").count(),
        4,
        "every step after FROM is cached:\n{progress}"
    );
    // Touched, not changed: still cached.
    let file = std::fs::File::options().write(true).open(dir.join("a.txt")).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(7200)).unwrap();
    drop(file);
    let (touched, progress) = builders.build(&dir, &["-t", "cached:1"]);
    assert_eq!(touched, first, "{progress}");
    // One byte changed: the steps from the COPY on run, the one before it does not.
    std::fs::write(dir.join("a.txt"), "One").unwrap();
    let (changed, progress) = builders.build(&dir, &["-t", "cached:2"]);
    assert_ne!(changed, first);
    let cached: Vec<&str> = progress.lines().filter(|l| l.ends_with(" CACHED")).collect();
    assert_eq!(cached.len(), 1, "{progress}");
    assert!(progress.contains("#2 CACHED"), "RUN echo first is reused:\n{progress}");
    assert_eq!(
        builders.ok(&["run", "--rm", "--network", "none", "cached:2", "cat", "/b.txt"]).trim(),
        "One-built"
    );
    // --no-cache runs every step.
    let (_, progress) = builders.build(&dir, &["--no-cache", "-t", "cached:3"]);
    assert_eq!(progress.matches("CACHED").count(), 0, "{progress}");
    // Build args are part of a RUN's key; unused ones are pointed out.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nARG WHO=world\nRUN echo hello $WHO > /hello\n",
    )
    .unwrap();
    builders.build(&dir, &["-t", "args:1"]);
    let (_, progress) = builders
        .build(&dir, &["-t", "args:2", "--build-arg", "WHO=berth", "--build-arg", "NOBODY=1"]);
    assert!(!progress.contains("CACHED"), "{progress}");
    assert!(progress.contains("not consumed: NOBODY"), "{progress}");
    assert_eq!(
        builders.ok(&["run", "--rm", "--network", "none", "args:2", "cat", "/hello"]).trim(),
        "hello berth"
    );
    // The cache can be dropped; images survive it.
    let pruned = builders.ok(&["builder", "prune", "-f"]);
    assert!(pruned.contains("Deleted build cache entries"), "{pruned}");
    let (_, progress) = builders.build(&dir, &["-t", "args:1"]);
    assert!(!progress.contains("CACHED"), "{progress}");
    builders.ok(&["run", "--rm", "--network", "none", "cached:2", "true"]);
    builders.assert_no_leftovers();
}

#[test]
fn root_heredocs_stdin_ignore_files_and_parallel_stages() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nARG NAME=berth\nRUN <<EOF\necho one > /one\necho two >> /one\nEOF\nCOPY <<EOF /etc/app.conf\nname=$NAME\nEOF\nCOPY <<'EOF' /etc/literal.conf\nname=$NAME\nEOF\nRUN <<-EOT\n\techo tabbed > /tabbed\n\tEOT\n",
    )
    .unwrap();
    builders.build(&dir, &["-t", "heredoc"]);
    let run =
        |cmd: &str| builders.ok(&["run", "--rm", "--network", "none", "heredoc", "sh", "-c", cmd]);
    assert_eq!(run("cat /one"), "one\ntwo\n");
    assert_eq!(run("cat /etc/app.conf"), "name=berth\n");
    assert_eq!(run("cat /etc/literal.conf"), "name=$NAME\n");
    assert_eq!(run("cat /tabbed"), "tabbed\n");

    // A Dockerfile on stdin, without a context.
    let mut child = builders
        .command()
        .args(["build", "-q", "-t", "stdin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"FROM busybox\nRUN echo from-stdin > /x\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).trim().starts_with("sha256:"));

    // .dockerignore: excluded files are neither copied nor part of the cache key.
    std::fs::write(dir.join(".dockerignore"), "*.log\n!keep.log\n").unwrap();
    std::fs::write(dir.join("app.log"), "noise").unwrap();
    std::fs::write(dir.join("keep.log"), "kept").unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nCOPY . /ctx/\n").unwrap();
    let (first, _) = builders.build(&dir, &["-t", "ignored"]);
    let files = builders.ok(&["run", "--rm", "--network", "none", "ignored", "ls", "-a", "/ctx"]);
    assert!(files.contains("keep.log") && !files.contains("app.log"), "{files}");
    std::fs::write(dir.join("app.log"), "more noise").unwrap();
    let (second, _) = builders.build(&dir, &["-t", "ignored"]);
    assert_eq!(first, second, "an ignored file does not bust the cache");
    // A Dockerfile's own ignore file (NAME.dockerignore beside it) replaces the context's.
    let named = dir.join("app.Dockerfile");
    std::fs::write(&named, "FROM busybox\nCOPY . /ctx/\n").unwrap();
    std::fs::write(dir.join("app.Dockerfile.dockerignore"), "keep.log\n").unwrap();
    builders.build(&dir, &["-f", named.to_str().unwrap(), "-t", "named-ignore"]);
    let files =
        builders.ok(&["run", "--rm", "--network", "none", "named-ignore", "ls", "-a", "/ctx"]);
    assert!(files.contains("app.log") && !files.contains("keep.log"), "{files}");
    std::fs::remove_file(&named).unwrap();
    std::fs::remove_file(dir.join("app.Dockerfile.dockerignore")).unwrap();

    // Stages that do not depend on each other run at the same time: each of these two
    // waits for the other's mark in a shared cache mount, so built one after the other
    // they would both time out.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS left\nRUN --mount=type=cache,target=/sync,id=rendezvous touch /sync/left && for i in $(seq 300); do [ -e /sync/right ] && exit 0; sleep 0.1; done; exit 1\n\
         FROM busybox AS right\nRUN --mount=type=cache,target=/sync,id=rendezvous touch /sync/right && for i in $(seq 300); do [ -e /sync/left ] && exit 0; sleep 0.1; done; exit 1\n\
         FROM busybox\nCOPY --from=left /etc/passwd /left\nCOPY --from=right /etc/passwd /right\n",
    )
    .unwrap();
    builders.build(&dir, &["--no-cache", "-t", "parallel"]);
    // ADD of a URL (a server on loopback): the file is 0600, dated by Last-Modified, and
    // a change of content at the same URL is a change of the step.
    let served = std::sync::Arc::new(std::sync::Mutex::new(b"first body\n".to_vec()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let body = served.clone();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = body.lock().unwrap().clone();
            let mut stream = stream;
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }
    });
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM busybox\nADD http://{address}/files/data.txt?v=1 /fetched/\n"),
    )
    .unwrap();
    let (first, _) = builders.build(&dir, &["-t", "fetched"]);
    let shown = builders.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "fetched",
        "sh",
        "-c",
        "stat -c '%a %Y' /fetched/data.txt && cat /fetched/data.txt",
    ]);
    assert_eq!(shown, "600 1700000000\nfirst body\n");
    *served.lock().unwrap() = b"second body\n".to_vec();
    let (second, progress) = builders.build(&dir, &["-t", "fetched"]);
    assert_ne!(first, second, "new content at the same URL rebuilds:\n{progress}");
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM busybox\nADD --checksum=sha256:{} http://{address}/x /x\n", "0".repeat(64)),
    )
    .unwrap();
    let output = builders.run(&["build", dir.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not sha256:0000"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // --target builds a stage and what it needs only.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS one\nRUN echo one > /stage\nFROM busybox AS two\nRUN exit 7\n",
    )
    .unwrap();
    builders.build(&dir, &["--target", "one", "-t", "target"]);
    assert_eq!(
        builders.ok(&["run", "--rm", "--network", "none", "target", "cat", "/stage"]).trim(),
        "one"
    );
    // --iidfile and --output.
    let iid = builders.path("iid");
    let archive = builders.path("out.tar");
    let (id, _) = builders.build(
        &dir,
        &[
            "--target",
            "one",
            "--iidfile",
            iid.to_str().unwrap(),
            "--output",
            &format!("type=docker,dest={}", archive.display()),
        ],
    );
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), id);
    let listed = Command::new("tar").arg("-tf").arg(&archive).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("manifest.json"));
    builders.assert_no_leftovers();
}

#[test]
fn root_the_edges_a_review_found() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("ctx");
    std::fs::create_dir_all(dir.join("target")).unwrap();
    std::fs::create_dir_all(dir.join("foo:/etc")).unwrap();
    std::fs::write(dir.join("foo:/etc/marker"), "from the context").unwrap();
    std::fs::write(dir.join("target/app-1.0.jar"), "jar").unwrap();
    std::fs::write(dir.join(".env"), "SECRET=1").unwrap();
    std::fs::write(dir.join("visible"), "yes").unwrap();
    std::fs::write(dir.join(".dockerignore"), ".env\n").unwrap();
    std::os::unix::fs::symlink(".env", dir.join("env-link")).unwrap();
    let (a, b) = (builders.path("a"), builders.path("b"));
    std::fs::write(&a, "secret-a").unwrap();
    std::fs::write(&b, "secret-b").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS build\nRUN echo built > /out\n\
         FROM busybox AS base\nONBUILD RUN echo triggered > /triggered\n\
         FROM base\nARG SRC=build\n\
         COPY --from=$SRC /out /from-variable\n\
         COPY target/*.jar app.jar\n\
         WORKDIR /.venv\n\
         RUN pwd > /workdir\n\
         RUN --mount=type=secret,id=a --mount=type=secret,id=b cat /run/secrets/a /run/secrets/b > /secrets && stat -c %a /run/secrets/a > /secret-mode\n\
         RUN --mount=type=bind,source=foo:/etc,target=/m,rw ls /m > /bound && touch /m/written\n\
         RUN --mount=type=bind,target=/ctx ls -a /ctx > /context-listing\n\
         RUN <<EOF\n#!/bin/awk -f\nBEGIN { print \"from awk\" > \"/awk-out\" }\nEOF\n",
    )
    .unwrap();
    let a_flag = format!("id=a,src={}", a.display());
    let b_flag = format!("id=b,src={}", b.display());
    builders.build(&dir, &["-t", "edges", "--secret", &a_flag, "--secret", &b_flag]);
    let run =
        |cmd: &str| builders.ok(&["run", "--rm", "--network", "none", "edges", "sh", "-c", cmd]);
    assert_eq!(run("cat /from-variable"), "built\n", "COPY --from=$VAR builds the stage it names");
    assert_eq!(run("cat /app.jar"), "jar", "one match of a wildcard may name a file");
    assert_eq!(run("cat /workdir"), "/.venv\n");
    assert_eq!(run("cat /triggered"), "triggered\n", "the base's ONBUILD ran");
    assert_eq!(run("cat /secrets"), "secret-asecret-b", "two secrets are two files");
    assert_eq!(run("cat /secret-mode"), "400\n");
    assert_eq!(
        run("cat /bound"),
        "marker\n",
        "a ':' in a bind source is a name, not an overlay layer"
    );
    assert!(!dir.join("foo:/etc/written").exists(), "a rw bind does not write to the context");
    let listing = run("cat /context-listing");
    assert!(
        listing.contains("visible") && !listing.lines().any(|l| l == ".env"),
        "the context mount honours .dockerignore: {listing}"
    );
    assert_eq!(run("cat /awk-out"), "from awk\n", "a #! here-document runs with its interpreter");
    let config = builders.inspect("edges");
    assert!(
        config["Config"]["OnBuild"].as_array().is_none_or(|a| a.is_empty()),
        "the child does not carry the parent's triggers: {}",
        config["Config"]
    );
    // A symlink to an ignored file does not bring it in.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nCOPY env-link /x\n").unwrap();
    let output = builders.run(&["build", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(".dockerignore excludes"), "{stderr}");
    // A HEALTHCHECK's flags are part of its key.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nHEALTHCHECK --interval=30s CMD true\n")
        .unwrap();
    builders.build(&dir, &["-t", "health:1"]);
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nHEALTHCHECK --interval=5s CMD true\n")
        .unwrap();
    builders.build(&dir, &["-t", "health:2"]);
    assert_eq!(builders.inspect("health:2")["Config"]["Healthcheck"]["Interval"], 5_000_000_000u64);
    // MAINTAINER is cached like the rest: a rebuild gives the same id.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nMAINTAINER someone\n").unwrap();
    let (first, _) = builders.build(&dir, &[]);
    let (second, _) = builders.build(&dir, &[]);
    assert_eq!(first, second);
    assert_eq!(builders.inspect(&first)["Author"], "someone");
    builders.assert_no_leftovers();
}

#[test]
fn root_bad_input_is_explained_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("inside.txt"), "x").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.join("leak")).unwrap();
    let images_before = builders.ok(&["images", "-q"]);
    let cases: &[(&str, &str)] = &[
        (
            "FROM busybox\nRUN true\nFROBNICATE now\n",
            "Dockerfile:3: unknown instruction: FROBNICATE",
        ),
        // (Not a valid image name either, so nothing is pulled.)
        (
            "FROM busybox AS base\nCOPY --from=Missing_Stage /x /x\n",
            "no stage is named \"Missing_Stage\" (the stages are: base)",
        ),
        ("FROM busybox\nCOPY ../outside.txt /x\n", "outside the build context"),
        ("FROM busybox\nCOPY leak /x\n", "leaves the build context"),
        (
            "FROM busybox\nRUN echo partial > /p && echo failing-now && exit 42\n",
            "exited with code 42",
        ),
        ("FROM busybox\nWORKDIR /$DIR\nARG DIR=x\n", "used before it is declared"),
        ("FROM busybox AS a\nFROM busybox AS a\n", "used twice"),
        ("RUN true\n", "must start with FROM"),
        ("FROM busybox\nCOPY missing.txt /x\n", "not found in the build context"),
        ("FROM 127.0.0.1:9/nothing/here\n", "Dockerfile:1"),
        ("FROM busybox\nRUN <<EOF\nnever closed\n", "not closed"),
        (
            "FROM busybox\nRUN --mount=type=secret,id=absent,required=true true\n",
            "--secret id=absent",
        ),
        // A device node or a fifo made in a stage is never read by the builder.
        ("FROM busybox AS a\nRUN mknod /disk b 7 0\nFROM busybox\nCOPY --from=a /disk /disk.img\n", "not a regular file"),
        ("FROM busybox AS a\nRUN mkfifo /pipe\nFROM busybox\nCOPY --from=a /pipe /pipe\n", "not a regular file"),
        ("FROM busybox AS a\nRUN mknod /disk b 7 0\nFROM busybox\nRUN --mount=type=bind,from=a,source=disk,target=/d true\n", "is not a file or directory"),
    ];
    for (text, expected) in cases {
        std::fs::write(dir.join("Dockerfile"), text).unwrap();
        let output = builders.run(&["build", "-t", "never:tagged", dir.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text:?} built");
        assert!(stderr.contains(expected), "{text:?}: expected {expected:?} in:\n{stderr}");
        if text.contains("exit 42") {
            assert!(
                stderr.contains("failing-now"),
                "the failing command's last lines are shown:\n{stderr}"
            );
        }
        let images = builders.run(&["images", "-q", "never"]);
        assert!(
            String::from_utf8_lossy(&images.stdout).trim().is_empty(),
            "{text:?} tagged an image"
        );
        builders.assert_no_leftovers();
    }
    assert_eq!(builders.ok(&["images", "-q"]), images_before, "no image was added");
    // An unknown flag and an unknown target are refused before anything runs.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\n").unwrap();
    let output = builders.run(&["build", "--target", "nope", dir.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("target stage \"nope\" could not be found"));
}

#[test]
fn root_a_killed_build_is_cleaned_up_by_the_next() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = builders.path("marker");
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nRUN --mount=type=bind,source=.,target=/ctx touch /started-here && sleep 600\n").unwrap();
    let mut child = builders
        .command()
        .args(["build", "-t", "killed", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step's container is running (its process is a sleep 600).
    let deadline = Instant::now() + Duration::from_secs(60);
    let runtime_root = builders.root().join("build/runtime");
    loop {
        let list =
            builders.ok(&["runtime", "--root", runtime_root.to_str().unwrap(), "list", "-q"]);
        if !list.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::write(&marker, "");
    berth_sys::nix::sys::signal::kill(
        berth_sys::nix::unistd::Pid::from_raw(child.id() as i32),
        berth_sys::nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    // The next build removes what the killed one left, and builds.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nRUN echo fine > /fine\n").unwrap();
    builders.build(&dir, &["-t", "after"]);
    builders.assert_no_leftovers();
    assert_eq!(
        builders.ok(&["run", "--rm", "--network", "none", "after", "cat", "/fine"]).trim(),
        "fine"
    );
}

/// On a terminal the progress is a live view (spinners redrawn in place, with the latest
/// output line); each step that ends leaves a line with CACHED or its time, a failed one
/// an ERROR line. Run under `script`, which gives the build a pty.
#[test]
fn root_a_terminal_gets_a_live_view() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("live");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN for i in 1 2 3; do echo tick-$i; sleep 0.3; done\nENV A=1\n",
    )
    .unwrap();
    let on_terminal = |args: &str| -> String {
        let output = Command::new("script")
            .args(["-qefc", &format!("{BERTH} build {args} {}", dir.display()), "/dev/null"])
            .env("BERTH_ROOT", builders.root())
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(output.status.success(), !args.contains("fail"), "{text}");
        text
    };
    let first = on_terminal("--progress tty -t live:1");
    // Redrawn in place (cursor movements and line clears), and the steps' end lines.
    assert!(first.contains("\u{1b}["), "no live drawing:\n{first}");
    assert!(first.contains("=> [stage-0 2/3] RUN for i in 1 2 3"), "{first}");
    assert!(first.lines().any(|l| l.contains("=> [stage-0 3/3] ENV A=1")), "{first}");
    // The plain form's "#N" lines are not there.
    assert!(!first.contains("#2 DONE"), "{first}");
    let again = on_terminal("-t live:1");
    assert!(again.contains("=> CACHED [stage-0 2/3] RUN"), "auto on a terminal is live:\n{again}");
    // Plain lines when asked for, even on a terminal.
    let plain = on_terminal("--progress plain -t live:1");
    assert!(plain.contains("#2 CACHED"), "{plain}");
    // A failing step is marked as such, and the error says why.
    std::fs::write(dir.join("Dockerfile"), "FROM busybox\nRUN echo about to fail; exit 9\n")
        .unwrap();
    let failed = on_terminal("--progress tty -t fail:1");
    assert!(failed.contains("=> ERROR [stage-0 2/2] RUN echo about to fail"), "{failed}");
    assert!(failed.contains("9"), "{failed}");
}

/// ADD unpacks tars compressed with gzip, bzip2, xz or zstd (by their first bytes, not
/// their names); a compressed file that holds no tar is copied as it is.
#[test]
fn root_add_unpacks_compressed_tars() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("compressed");
    let payload = builders.path("payload");
    std::fs::create_dir_all(payload.join("sub")).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(payload.join("sub/hello.txt"), "packed\n").unwrap();
    let mut dockerfile = String::from("FROM busybox\n");
    for (flag, name) in [("-z", "a.tgz"), ("-j", "b.tar.bz2"), ("-J", "c.txz"), ("--zstd", "d.bin")]
    {
        let made = Command::new("tar")
            .arg("-C")
            .arg(&payload)
            .arg(flag)
            .arg("-cf")
            .arg(dir.join(name))
            .arg(".")
            .status()
            .expect("tar");
        assert!(made.success(), "tar {flag}");
        dockerfile.push_str(&format!("ADD {name} /x/{name}/\n"));
    }
    std::fs::write(dir.join("plain.txt"), "not a tar\n").unwrap();
    let xz = Command::new("xz").arg("-k").arg(dir.join("plain.txt")).status().expect("xz");
    assert!(xz.success());
    dockerfile.push_str("ADD plain.txt.xz /x/\n");
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    builders.build(&dir, &["-t", "compressed:1"]);
    let listed = builders.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "compressed:1",
        "sh",
        "-c",
        "cat /x/*/sub/hello.txt; ls /x/plain.txt.xz",
    ]);
    assert_eq!(listed, "packed\npacked\npacked\npacked\n/x/plain.txt.xz\n");
}

/// A bare repository served by `git daemon` on a loopback port of its own, ended on drop.
struct GitServer {
    daemon: std::process::Child,
    port: u16,
    work: PathBuf,
}

impl GitServer {
    fn start(builders: &Builders) -> GitServer {
        let base = builders.path("git");
        let work = base.join("work");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .current_dir(&work)
                .output()
                .expect("git");
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        git(&["init", "-q", "-b", "main", "."]);
        std::fs::write(work.join("sub/a.txt"), "first\n").unwrap();
        std::fs::write(work.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
        std::fs::set_permissions(
            work.join("run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/a.txt", work.join("link")).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "one"]);
        git(&["tag", "-a", "v1", "-m", "v1"]);
        std::fs::write(work.join("sub/a.txt"), "second\n").unwrap();
        git(&["commit", "-q", "-am", "two"]);
        let bare = base.join("repo.git");
        let cloned = Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&bare)
            .status()
            .unwrap();
        assert!(cloned.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let daemon = Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon (Debian's git)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon does not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        GitServer { daemon, port, work }
    }

    fn url(&self) -> String {
        format!("git://127.0.0.1:{}/repo.git", self.port)
    }

    /// Commits a change on main and pushes it to the served repository.
    fn push_change(&self, content: &str) -> String {
        std::fs::write(self.work.join("sub/a.txt"), content).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .current_dir(&self.work)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        run(&["commit", "-q", "-am", "change"]);
        run(&["push", "-q", "../repo.git", "main"]);
        run(&["rev-parse", "HEAD"])
    }

    fn commit_of(&self, reference: &str) -> String {
        let out = Command::new("git")
            .args(["rev-parse", &format!("{reference}^{{commit}}")])
            .current_dir(&self.work)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[test]
fn root_add_takes_git_repositories_by_their_commit() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let server = GitServer::start(&builders);
    let url = server.url();
    let v1 = server.commit_of("v1");
    let dir = builders.path("git-context");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM busybox\n\
             ADD {url}#v1:sub /v1sub\n\
             ADD --checksum={v1} {url}#v1 /checked\n\
             ADD --keep-git-dir=true {url}#main /kept\n\
             ADD {url} /whole\n"
        ),
    )
    .unwrap();
    builders.build(&dir, &["-t", "git:1"]);
    let shown = |image: &str| {
        builders.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            "cat /v1sub/a.txt /checked/sub/a.txt /whole/sub/a.txt; ls -A /whole /v1sub | tr '\\n' ' '; echo; \
             stat -c '%a %u %F' /whole/run.sh /whole/link; readlink /whole/link; test -d /kept/.git && echo kept",
        ])
    };
    assert_eq!(
        shown("git:1"),
        "first\nfirst\nsecond\n/v1sub: a.txt  /whole: link run.sh sub \n\
         755 0 regular file\n777 0 symbolic link\nsub/a.txt\nkept\n"
    );
    // Keyed by the commit: nothing changed runs nothing; a new commit on main reruns only
    // the steps that follow main.
    let (_, again) = builders.build(&dir, &["--progress", "plain", "-t", "git:2"]);
    assert_eq!(again.matches("CACHED").count(), 4, "{again}");
    server.push_change("third\n");
    let (_, moved) = builders.build(&dir, &["--progress", "plain", "-t", "git:3"]);
    assert_eq!(moved.matches("CACHED").count(), 2, "{moved}");
    assert!(shown("git:3").starts_with("first\nfirst\nthird\n"));
    // Bad sources say what is wrong and build nothing.
    for (line, expected) in [
        (format!("ADD --checksum={} {url}#v1 /x", "0".repeat(40)), format!("the commit is {v1}")),
        (
            format!("ADD {url}#no-such-branch /x"),
            "has no branch or tag \"no-such-branch\"".to_owned(),
        ),
        (format!("ADD {url}#v1:nothing /x"), "has no directory \"nothing\"".to_owned()),
        ("ADD git://127.0.0.1:1/none.git /x".to_owned(), "does this machine reach it".to_owned()),
        (format!("COPY {url} /x"), "use ADD for a git repository".to_owned()),
    ] {
        std::fs::write(dir.join("Dockerfile"), format!("FROM busybox\n{line}\n")).unwrap();
        let out = builders.run(&["build", "-t", "bad:1", dir.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line} built");
        assert!(stderr.contains("Dockerfile:2") && stderr.contains(&expected), "{line}: {stderr}");
    }
    assert!(!builders.ok(&["images"]).contains("bad "));
    builders.assert_no_leftovers();
}

#[test]
fn root_ssh_agents_reach_run_steps_and_no_layer() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("ssh-context");
    // ssh-add and the libraries it loads, so a step can ask the agent what it holds.
    let tools = dir.join("tools");
    let ldd = Command::new("ldd").arg("/usr/bin/ssh-add").output().expect("ldd");
    let mut files = vec![PathBuf::from("/usr/bin/ssh-add")];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for file in &files {
        let to = tools.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file, &to).unwrap();
    }
    let keygen = |name: &str, comment: &str| {
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(builders.path(name))
            .status()
            .expect("ssh-keygen (Debian's openssh-client)");
        assert!(made.success());
    };
    keygen("key-default", "berth-default-key");
    keygen("key-other", "berth-other-key");
    // The other agent is the user's own, given by its socket.
    let socket = builders.path("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(agent.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let added = Command::new("ssh-add")
        .arg(builders.path("key-other"))
        .env("SSH_AUTH_SOCK", &socket)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(added.success());
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\n\
         COPY tools/ /\n\
         RUN chmod 1777 /tmp\n\
         RUN --mount=type=ssh ssh-add -l > /default.txt; echo \"$SSH_AUTH_SOCK\" > /sock.txt\n\
         USER nobody\n\
         RUN --mount=type=ssh,id=other,target=/tmp/agent,uid=65534 SSH_AUTH_SOCK=/tmp/agent ssh-add -l > /tmp/other.txt\n\
         RUN --mount=type=ssh,id=absent test -z \"$SSH_AUTH_SOCK\" && test ! -e /run/buildkit/ssh_agent.0\n\
         USER root\n",
    )
    .unwrap();
    let key = builders.path("key-default");
    let out = builders
        .command()
        .args(["build", "-t", "ssh:1", "--ssh"])
        .arg(format!("default={}", key.display()))
        .arg("--ssh")
        .arg(format!("other={}", socket.display()))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = builders.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "ssh:1",
        "sh",
        "-c",
        "cat /default.txt /sock.txt /tmp/other.txt; ls -A /run/buildkit /tmp",
    ]);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines[0].ends_with("berth-default-key (ED25519)"), "{shown}");
    assert_eq!(lines[1], "/run/buildkit/ssh_agent.0", "{shown}");
    assert!(lines[2].ends_with("berth-other-key (ED25519)"), "{shown}");
    // The agent's socket is in no layer (the directory made for it stays, as buildah
    // leaves such directories).
    assert_eq!(lines[3..], ["/run/buildkit:", "", "/tmp:", "other.txt"], "{shown}");
    // A required agent that was not given stops the build at its line.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=ssh,required=true true\n",
    )
    .unwrap();
    let out = builders.run(&["build", "-t", "bad:1", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("Dockerfile:2")
            && stderr.contains("--ssh default"),
        "{stderr}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
    // The agent berth started for the key file ended with the build.
    let agents =
        Command::new("pgrep").args(["-f", "ssh-agent -D -a .*/build/ssh/"]).output().unwrap();
    assert!(String::from_utf8_lossy(&agents.stdout).trim().is_empty(), "an ssh-agent is left");
    builders.assert_no_leftovers();
}

#[test]
fn root_copy_parents_keeps_the_source_paths_and_from_excludes() {
    if !root_or_skip() {
        return;
    }
    let builders = Builders::new(false);
    let dir = builders.path("parents-context");
    for (path, content) in [
        ("packages/a/package.json", "a"),
        ("packages/b/package.json", "b"),
        ("packages/b/index.js", "skip"),
        ("apps/c/package.json", "c"),
        ("x/y/z/deep.txt", "deep"),
        ("src/lib/one.rs", "one"),
        ("src/lib/inner/two.rs", "two"),
    ] {
        let at = dir.join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, content).unwrap();
    }
    std::fs::set_permissions(
        dir.join("packages"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox AS made\n\
         RUN mkdir -p /data/sub && echo k > /data/keep.txt && echo n > /data/drop.log && echo n > /data/sub/also.log && echo k > /data/sub/k.txt\n\
         FROM busybox\n\
         COPY --from=made --exclude=**/*.log /data /fromstage/\n\
         COPY --parents packages/*/package.json apps/*/package.json /app/\n\
         COPY --parents ./x/./y/z/deep.txt /pivot/\n\
         COPY --parents src/lib /tree/\n",
    )
    .unwrap();
    builders.build(&dir, &["-t", "parents:1"]);
    let shown = builders.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "parents:1",
        "sh",
        "-c",
        "cd / && find app pivot tree fromstage -type f | sort; stat -c %a /app/packages",
    ]);
    assert_eq!(
        shown,
        "app/apps/c/package.json\napp/packages/a/package.json\napp/packages/b/package.json\n\
         fromstage/keep.txt\nfromstage/sub/k.txt\n\
         pivot/y/z/deep.txt\ntree/src/lib/inner/two.rs\ntree/src/lib/one.rs\n750\n"
    );
}
