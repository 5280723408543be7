//! Images against a real registry (Debian's docker-registry) and an independent client
//! (skopeo): pull, push, save/load round trips, auth, garbage collection, and bad input.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fake_registry::{Behavior, FakeRegistry};
use common::registry::Registry;
use common::root_or_skip;
use serde_json::Value;
use sha2::Digest as _;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A private berth root and credentials file.
struct Berth {
    dir: tempfile::TempDir,
}

impl Berth {
    fn new() -> Berth {
        Berth { dir: tempfile::Builder::new().prefix("berth-images-").tempdir().expect("tempdir") }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BERTH);
        command
            .env("BERTH_ROOT", self.root())
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env_remove("BERTH_INSECURE_REGISTRIES");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("berth")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "berth {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "berth {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn inspect(&self, name: &str) -> Value {
        let text = self.ok(&["inspect", name]);
        serde_json::from_str::<Value>(&text).expect("inspect json")[0].clone()
    }

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.root().join("images").join(sub)).map(|d| d.count()).unwrap_or(0)
    }

    fn blob_count(&self) -> usize {
        self.count("blobs/sha256")
    }
}

fn fixture(dir: &Path) -> berth_testkit::image::Written {
    berth_testkit::image::fixture_image(&dir.join("fixture-layout"), "v1").expect("fixture")
}

/// The digest of a manifest as the registry holds it (skopeo compresses the fixture's
/// uncompressed layer on the way in, so it differs from the layout's).
fn served_digest(registry: &Registry, repository_tag: &str) -> String {
    format!("sha256:{}", sha(&registry.skopeo_raw_manifest(repository_tag)))
}

/// What a file system tree holds, path by path: kind, mode, owner and content.
type Tree = BTreeMap<String, String>;

fn describe(kind: &str, mode: u32, uid: u32, gid: u32, content: &str) -> String {
    format!("{kind} {:o} {uid}:{gid} {content}", mode & 0o7777)
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// Walks a mounted root file system.
fn walk(root: &Path, relative: &Path, out: &mut Tree) {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(relative)).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = relative.join(entry.file_name());
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let kind = meta.file_type();
        let description = if kind.is_dir() {
            describe("dir", meta.mode(), meta.uid(), meta.gid(), "")
        } else if kind.is_symlink() {
            describe(
                "link",
                0o777,
                meta.uid(),
                meta.gid(),
                &std::fs::read_link(entry.path()).unwrap().display().to_string(),
            )
        } else if kind.is_file() {
            describe(
                "file",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                &sha(&std::fs::read(entry.path()).unwrap()),
            )
        } else {
            describe("other", meta.mode(), meta.uid(), meta.gid(), "")
        };
        out.insert(path.display().to_string(), description);
        if kind.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Applies the layers of an OCI layout (as skopeo wrote it) the way the image spec says,
/// in memory: an independent account of what the image's root file system holds.
fn expected_tree(layout: &Path) -> Tree {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob =
        |digest: &str| std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    let manifest: Value = serde_json::from_slice(&blob(digest)).unwrap();
    let mut tree = Tree::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let data = blob(layer["digest"].as_str().unwrap());
        let media_type = layer["mediaType"].as_str().unwrap();
        let mut tar_bytes = Vec::new();
        if media_type.ends_with("gzip") {
            flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut tar_bytes).unwrap();
        } else if media_type.ends_with("zstd") {
            tar_bytes = zstd::stream::decode_all(&data[..]).unwrap();
        } else {
            tar_bytes = data;
        }
        let mut entries = Vec::new();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry
                .path()
                .unwrap()
                .display()
                .to_string()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let header = entry.header().clone();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            entries.push((name, header, content, link));
        }
        // Whiteouts hide what the lower layers had; then this layer's entries are added.
        for (name, _, _, _) in &entries {
            let (parent, base) = name.rsplit_once('/').map_or(("", name.as_str()), |(p, b)| (p, b));
            let prefix = if parent.is_empty() { String::new() } else { format!("{parent}/") };
            if base == ".wh..wh..opq" {
                tree.retain(|path, _| !(path.starts_with(&prefix) && path.len() > prefix.len()));
            } else if let Some(hidden) = base.strip_prefix(".wh.") {
                let target = format!("{prefix}{hidden}");
                tree.retain(|path, _| path != &target && !path.starts_with(&format!("{target}/")));
            }
        }
        for (name, header, content, link) in entries {
            let base = name.rsplit('/').next().unwrap_or(&name);
            if base.starts_with(".wh.") || name.is_empty() {
                continue;
            }
            let (uid, gid, mode) = (
                header.uid().unwrap() as u32,
                header.gid().unwrap() as u32,
                header.mode().unwrap(),
            );
            let description = match header.entry_type() {
                tar::EntryType::Directory => describe("dir", mode, uid, gid, ""),
                tar::EntryType::Symlink => describe("link", 0o777, uid, gid, &link.unwrap()),
                tar::EntryType::Link => tree.get(&link.unwrap()).cloned().unwrap(),
                _ => describe("file", mode, uid, gid, &sha(&content)),
            };
            tree.insert(name, description);
        }
    }
    tree
}

/// Mounts the image's layers read-only with overlayfs, as a container would see them.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(berth: &Berth, image: &str) -> Overlay {
        let lower =
            berth.inspect(image)["GraphDriver"]["Data"]["LowerDir"].as_str().unwrap().to_owned();
        let target = berth.dir.path().join(format!("mnt-{}", image.replace([':', '/'], "-")));
        std::fs::create_dir_all(&target).unwrap();
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &format!("ro,lowerdir={lower}")])
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success(), "overlay mount of {lower}");
        Overlay(target)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn root_pull_gives_the_file_system_skopeo_and_the_spec_describe() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start();
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    registry.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "fixture:v1");
    let name = format!("{}/fixture:v1", registry.host());
    let served = served_digest(&registry, "fixture:v1");
    let out = berth.ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert!(out.contains(&format!("Digest: {served}")), "{out}");
    assert_eq!(out.matches("Pull complete").count(), 3, "{out}");
    // Into a root on a full disk: one message that says so, what the image needs and how
    // to free space, and a store that still works.
    let small = Berth::new();
    std::fs::create_dir_all(small.root()).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1200k", "tmpfs"])
        .arg(small.root())
        .status()
        .unwrap();
    assert!(mounted.success());
    // Unmounted however the test ends.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.root());
    small.ok(&["images"]);
    let err = small.fails(&["pull", &name]);
    // The disk fills either while a layer is written (the message then says what the
    // image needs) or while the metadata database grows (SQLite's own "database or disk
    // is full"): which one comes first depends on timing; both say it once, name the
    // disk and how to free it.
    assert!(
        err.matches("No space left on device").count()
            + err.matches("database or disk is full").count()
            == 1,
        "{err}"
    );
    assert!(err.contains("the image needs") || err.contains("database or disk is full"), "{err}");
    assert!(err.contains("is full") && err.contains("berth image prune"), "{err}");
    assert!(small.ok(&["images", "-q"]).trim().is_empty());
    // What the registry serves, read by skopeo and laid out by the spec's rules...
    let copy = berth.dir.path().join("skopeo-copy");
    registry.skopeo_get("fixture:v1", &format!("oci:{}:v1", copy.display()));
    let expected = expected_tree(&copy);
    // ...is what overlayfs shows of berth's snapshots.
    let mount = Overlay::mount(&berth, &name);
    let mut actual = Tree::new();
    walk(&mount.0, Path::new(""), &mut actual);
    let differences: Vec<String> = expected
        .iter()
        .filter(|(path, description)| actual.get(*path) != Some(description))
        .map(|(path, description)| {
            format!("{path}: expected {description}, got {:?}", actual.get(path))
        })
        .chain(
            actual
                .keys()
                .filter(|p| !expected.contains_key(*p))
                .map(|p| format!("{p}: unexpected")),
        )
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(!mount.0.join("etc/remove-me").exists(), "the whiteout hides the file");
    assert_eq!(
        std::fs::read_dir(mount.0.join("var/cache/app")).unwrap().count(),
        1,
        "the opaque directory hides the old entries"
    );
    let first = std::fs::metadata(mount.0.join("usr/share/first")).unwrap();
    let second = std::fs::metadata(mount.0.join("usr/share/second")).unwrap();
    assert_eq!(first.ino(), second.ino(), "hard links share an inode");
    drop(mount);
    // The listing and the inspect output.
    let images = berth.ok(&["images"]);
    assert!(
        images.contains(&format!("{}/fixture", registry.host())) && images.contains("v1"),
        "{images}"
    );
    let inspect = berth.inspect(&name);
    assert_eq!(inspect["Id"], written.config_digest.as_str());
    assert_eq!(inspect["Config"]["Cmd"][0], "sh");
    assert_eq!(inspect["RepoDigests"][0], format!("{}/fixture@{served}", registry.host()).as_str());
    // A second pull transfers nothing.
    let again = berth.ok(&["pull", &name]);
    assert!(again.contains("Image is up to date"), "{again}");
    assert_eq!(again.matches("Already exists").count(), 3, "{again}");
    // By digest too, and the short id resolves.
    berth.ok(&["pull", &format!("{}/fixture@{served}", registry.host())]);
    berth.ok(&["inspect", &written.config_digest[7..19]]);
}

#[test]
fn root_push_is_read_back_by_skopeo_with_the_same_digests() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start();
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    registry.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "fixture:v1");
    let source = format!("{}/fixture:v1", registry.host());
    let served = served_digest(&registry, "fixture:v1");
    berth.ok(&["pull", &source]);
    // To another repository of the same registry: the layers are mounted, not uploaded.
    let target = format!("{}/copies/fixture:pushed", registry.host());
    berth.ok(&["tag", &source, &target]);
    let out = berth.ok(&["push", &target]);
    // Three layers are shown; the config is mounted too but, as in Docker, not listed.
    assert_eq!(out.matches("Mounted from fixture").count(), 3, "layers mount: {out}");
    let raw = registry.skopeo_raw_manifest("copies/fixture:pushed");
    assert_eq!(format!("sha256:{}", sha(&raw)), served, "the registry holds the same manifest");
    assert!(out.contains(&served), "{out}");
    // To a fresh registry: every blob is uploaded, and skopeo can copy it all back out.
    let other = Registry::start();
    let elsewhere = format!("{}/fresh:v1", other.host());
    let out = berth.ok(&["push", &source, &elsewhere]);
    assert_eq!(out.matches("Pushed").count(), 3, "{out}");
    let back = berth.dir.path().join("back");
    other.skopeo_get("fresh:v1", &format!("oci:{}:v1", back.display()));
    assert_eq!(expected_tree(&back), expected_tree(&written.dir));
    assert_eq!(served_digest(&other, "fresh:v1"), served);
    // Pushing again uploads nothing.
    let out = berth.ok(&["push", &source, &elsewhere]);
    assert_eq!(out.matches("Layer already exists").count(), 3, "{out}");
}

#[test]
fn root_pull_save_load_push_keeps_every_digest() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start();
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    registry.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "fixture:v1");
    let name = format!("{}/fixture:v1", registry.host());
    let served = served_digest(&registry, "fixture:v1");
    berth.ok(&["pull", &name]);
    let archive = berth.dir.path().join("saved.tar");
    berth.ok(&["save", "-o", archive.to_str().unwrap(), &name]);
    // Both kinds of tool read the archive: as an OCI layout and as a Docker archive.
    for transport in [
        format!("oci-archive:{}", archive.display()),
        format!("docker-archive:{}", archive.display()),
    ] {
        let output =
            Command::new("skopeo").args(["inspect", "--raw", &transport]).output().unwrap();
        assert!(
            output.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let docker_config = Command::new("skopeo")
        .args(["inspect", "--config", &format!("docker-archive:{}", archive.display())])
        .output()
        .unwrap();
    let config: Value = serde_json::from_slice(&docker_config.stdout).unwrap();
    assert_eq!(config["config"]["Cmd"][0], "sh");
    // Remove everything, load it back, push it: the registry sees the same manifest.
    let out = berth.ok(&["rmi", &name]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(berth.blob_count(), 0, "rmi collected every blob");
    assert_eq!(berth.count("snapshots"), 0, "and every snapshot");
    let out = berth.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains(&format!("Loaded image: {name}")), "{out}");
    let target = format!("{}/roundtrip:v1", registry.host());
    let out = berth.ok(&["push", &name, &target]);
    assert!(out.contains(&served), "{out}");
    assert_eq!(served_digest(&registry, "roundtrip:v1"), served);
    // A Docker archive written by skopeo (uncompressed layers, as `docker save` writes
    // them; Docker archives cannot hold zstd, so this image has gzip and plain layers).
    let layers = berth_testkit::image::fixture_layers().unwrap();
    let plain = berth_testkit::image::write_layout(
        &berth.dir.path().join("plain"),
        "v2",
        &layers[..2],
        &["sh"],
    )
    .unwrap();
    let docker_archive = berth.dir.path().join("docker.tar");
    let output = Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            &format!("oci:{}:v2", plain.dir.display()),
            &format!("docker-archive:{}:other/fixture:v2", docker_archive.display()),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = berth.ok(&["load", "-i", docker_archive.to_str().unwrap()]);
    assert!(out.contains("Loaded image: other/fixture:v2"), "{out}");
    let loaded = berth.inspect("other/fixture:v2");
    assert_eq!(loaded["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(loaded["RootFS"]["Layers"][1], plain.diff_ids[1].as_str());
}

#[test]
fn root_import_makes_a_one_layer_image() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let rootfs = berth.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let tarball = berth.dir.path().join("rootfs.tar.gz");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-czf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let id = berth.ok(&[
        "import",
        "-c",
        "CMD [\"sh\"]",
        "-c",
        "ENV GREETING=hi",
        tarball.to_str().unwrap(),
        "imported:v1",
    ]);
    let inspect = berth.inspect("imported:v1");
    assert_eq!(inspect["Id"], id.trim());
    assert_eq!(inspect["Config"]["Env"][0], "GREETING=hi");
    assert_eq!(inspect["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    let mount_lower = inspect["GraphDriver"]["Data"]["LowerDir"].as_str().unwrap().to_owned();
    assert!(Path::new(&mount_lower).join("bin/busybox").is_file());
    let history = berth.ok(&["history", "imported:v1"]);
    assert!(history.contains("berth import"), "{history}");
    // Not a tar: refused, and nothing named.
    let junk = berth.dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all, not even close................")
        .unwrap();
    let err = berth.fails(&["import", junk.to_str().unwrap(), "junk:v1"]);
    assert!(!err.is_empty());
    assert!(!berth.ok(&["images"]).contains("junk"));
}

#[test]
fn root_basic_auth_needs_login() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start_with_auth("alice", "wonderland");
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    registry.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "private:v1");
    let name = format!("{}/private:v1", registry.host());
    let err = berth.fails(&["pull", &name]);
    assert!(err.contains("authentication failed") && err.contains("berth login"), "{err}");
    let err = berth.fails(&["login", "-u", "alice", "-p", "wrong", &registry.host()]);
    assert!(err.contains("wrong username or password"), "{err}");
    let mut login = berth
        .command()
        .args(["login", "-u", "alice", "--password-stdin", &registry.host()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    login.stdin.take().unwrap().write_all(b"wonderland\n").unwrap();
    let output = login.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let saved = std::fs::read_to_string(berth.dir.path().join("docker/config.json")).unwrap();
    assert!(saved.contains(&registry.host()), "{saved}");
    berth.ok(&["pull", &name]);
    berth.ok(&["push", &name, &format!("{}/private:copy", registry.host())]);
    berth.ok(&["logout", &registry.host()]);
    berth.fails(&["pull", &format!("{}/private:copy", registry.host())]);
    // On a terminal without -p or --password-stdin: a prompt, the password not echoed, and
    // one line read (the command does not wait for the end of input).
    let mut script = Command::new("script")
        .args(["-qec", &format!("{BERTH} login -u alice {}", registry.host()), "/dev/null"])
        .env("BERTH_ROOT", berth.root())
        .env("DOCKER_CONFIG", berth.dir.path().join("docker"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = script.stdin.take().unwrap();
    let mut out = script.stdout.take().unwrap();
    // Typed once the prompt is up, as a person would.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("Password:") {
        use std::io::Read;
        assert_eq!(
            out.read(&mut byte).unwrap(),
            1,
            "no prompt: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    input.write_all(b"wonderland\n").unwrap();
    use std::io::Read;
    out.read_to_end(&mut seen).unwrap();
    let output = script.wait_with_output().unwrap();
    drop(input);
    let shown = String::from_utf8_lossy(&seen);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("Password:"), "{shown}");
    assert!(!shown.contains("wonderland"), "the password was echoed: {shown}");
    assert!(shown.contains("Login Succeeded"), "{shown}");
    berth.ok(&["pull", &format!("{}/private:copy", registry.host())]);
    // Without a terminal it says how to pass the password instead of waiting.
    let err = berth.fails(&["login", "-u", "alice", &registry.host()]);
    assert!(err.contains("--password-stdin"), "{err}");
}

#[test]
fn root_rmi_prune_and_shared_layers() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start();
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    registry.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "fixture:v1");
    let name = format!("{}/fixture:v1", registry.host());
    berth.ok(&["pull", &name]);
    berth.ok(&["tag", &name, "second:v1"]);
    // Two names: removing one only untags.
    let out = berth.ok(&["rmi", "second:v1"]);
    assert_eq!(out.trim(), "Untagged: second:v1");
    assert_eq!(berth.count("snapshots"), 3);
    // An image with several names refuses removal by id without force.
    berth.ok(&["tag", &name, "third:v1"]);
    let err = berth.fails(&["rmi", &written.config_digest[7..19]]);
    assert!(err.contains("several names"), "{err}");
    berth.ok(&["rmi", "-f", &written.config_digest[7..19]]);
    assert_eq!(berth.count("snapshots"), 0);
    // Prune removes nameless images only, unless --all.
    berth.ok(&["pull", &name]);
    berth.ok(&[
        "pull",
        &format!("{}/fixture@{}", registry.host(), served_digest(&registry, "fixture:v1")),
    ]);
    let out = berth.ok(&["image", "prune"]);
    assert!(out.contains("Total reclaimed space: 0B"), "the image is named: {out}");
    let out = berth.ok(&["image", "prune", "-a"]);
    assert!(out.contains(&written.config_digest), "{out}");
    assert_eq!(berth.blob_count(), 0);
    let err = berth.fails(&["rmi", "nothing-here:v1"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn root_a_broken_download_resumes_and_bad_servers_are_reported() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    let fake = FakeRegistry::start();
    fake.serve_layout(&written.dir, "fixture", "v1");
    // The biggest layer is cut off halfway, twice; the 500s come and go.
    let big = written.layer_digests[0].clone();
    let path = format!("/v2/fixture/blobs/{big}");
    let body = std::fs::read(written.dir.join("blobs/sha256").join(&big[7..])).unwrap();
    fake.route(
        &path,
        Behavior::CutOff {
            content_type: "application/octet-stream".into(),
            body: body.clone(),
            cut: body.len() / 2,
            times: 1,
        },
    );
    let config_path = format!("/v2/fixture/blobs/{}", written.config_digest);
    let config =
        std::fs::read(written.dir.join("blobs/sha256").join(&written.config_digest[7..])).unwrap();
    fake.route(
        &config_path,
        Behavior::Fail { times: 2, content_type: "application/octet-stream".into(), body: config },
    );
    let name = format!("{}/fixture:v1", fake.host());
    let out = berth.ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    let requests = fake.requests(&path);
    assert!(
        requests.iter().any(|r| r.range.as_deref() == Some(&format!("bytes={}-", body.len() / 2))),
        "the second request resumes: {requests:?}"
    );
    assert_eq!(fake.requests(&config_path).len(), 3, "two 500s were retried");

    // A layer whose bytes do not match its digest: refused, and no image or layer is left.
    let berth = Berth::new();
    let fake = FakeRegistry::start();
    fake.serve_layout(&written.dir, "fixture", "v1");
    let mut tampered = body.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    fake.route(
        &path,
        Behavior::Serve { content_type: "application/octet-stream".into(), body: tampered },
    );
    let err = berth.fails(&["pull", &format!("{}/fixture:v1", fake.host())]);
    assert!(
        err.contains("failed verification") || err.contains("corrupt") || err.contains("invalid"),
        "{err}"
    );
    assert!(!berth.ok(&["images"]).contains("fixture"), "no image appears");
    assert_eq!(berth.count("tmp"), 0, "no half-unpacked layer is left");
    assert!(
        !berth.root().join("images/blobs/sha256").join(&big[7..]).exists(),
        "the bad blob was discarded"
    );
    // Layers that did arrive whole stay for the next attempt, until a prune.
    berth.ok(&["image", "prune"]);
    assert_eq!(berth.count("snapshots"), 0);
    assert_eq!(berth.blob_count(), 0);

    // A manifest of a media type berth does not know.
    fake.route(
        "/v2/weird/manifests/v1",
        Behavior::Serve {
            content_type: "application/vnd.example.thing+json".into(),
            body: b"{}".to_vec(),
        },
    );
    let err = berth.fails(&["pull", &format!("{}/weird:v1", fake.host())]);
    assert!(err.contains("unsupported media type") && err.contains("vnd.example.thing"), "{err}");
    // A registry that keeps failing.
    fake.route(
        "/v2/down/manifests/v1",
        Behavior::Fail { times: 100, content_type: "x".into(), body: Vec::new() },
    );
    let err = berth.fails(&["pull", &format!("{}/down:v1", fake.host())]);
    assert!(err.contains("500"), "{err}");
    // A tag the registry does not have.
    let err = berth.fails(&["pull", &format!("{}/fixture:nope", fake.host())]);
    assert!(err.contains("not found"), "{err}");
    // Nothing listening at all.
    let err = berth.fails(&["pull", "127.0.0.1:1/nothing:v1"]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn root_hostile_layers_are_refused_without_writing_outside() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let fake = FakeRegistry::start();
    let layout = berth.dir.path().join("hostile");
    berth_testkit::image::hostile_image(&layout, "v1", "../../../../../../tmp/berth-escaped")
        .unwrap();
    fake.serve_layout(&layout, "hostile", "v1");
    let _ = std::fs::remove_file("/tmp/berth-escaped");
    let err = berth.fails(&["pull", &format!("{}/hostile:v1", fake.host())]);
    assert!(err.contains("unsafe layer entry") && err.contains(".."), "{err}");
    assert!(!Path::new("/tmp/berth-escaped").exists(), "the entry escaped the layer");
    assert!(!berth.ok(&["images"]).contains("hostile"));
    assert_eq!(berth.count("tmp"), 0);
    // The same as an archive to load.
    let archive = berth.dir.path().join("hostile.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let err = berth.fails(&["load", "-i", archive.to_str().unwrap()]);
    assert!(err.contains("unsafe layer entry"), "{err}");
    assert!(!Path::new("/tmp/berth-escaped").exists());
    // Garbage instead of an archive.
    let junk = berth.dir.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = berth.fails(&["load", "-i", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");
}

#[test]
fn bad_names_are_explained() {
    let berth = Berth::new();
    let err = berth.fails(&["pull", "UPPER/case"]);
    assert!(err.contains("lowercase"), "{err}");
    let err = berth.fails(&["tag", "missing:v1", "x:y"]);
    assert!(err.contains("not found locally"), "{err}");
    let err = berth.fails(&["pull", "--platform", "linux", "busybox"]);
    assert!(err.contains("os/arch"), "{err}");
}

#[test]
fn root_bearer_tokens_are_fetched_with_the_stored_credentials() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    let fake = FakeRegistry::start();
    fake.serve_layout(&written.dir, "team/app", "v1");
    let b64 = base64_basic;
    fake.require_token(&b64("bob:builder"));
    let name = format!("{}/team/app:v1", fake.host());
    let err = berth.fails(&["pull", &name]);
    assert!(err.contains("authentication failed") && err.contains("berth login"), "{err}");
    // Docker's config.json, as `docker login` leaves it.
    std::fs::create_dir_all(berth.dir.path().join("docker")).unwrap();
    let auths = serde_json::json!({"auths": {fake.host(): {"auth": b64("bob:builder")}}});
    std::fs::write(berth.dir.path().join("docker/config.json"), auths.to_string()).unwrap();
    berth.ok(&["pull", &name]);
    let tokens: Vec<_> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path.starts_with("/token"))
        .cloned()
        .collect();
    assert!(
        tokens.iter().any(|t| t.path.contains("scope=repository%3Ateam%2Fapp%3Apull")
            || t.path.contains("scope=repository:team/app:pull")),
        "{tokens:?}"
    );
    assert!(tokens.iter().any(|t| t.path.contains("service=fake-registry")), "{tokens:?}");
}

/// Base64 of `text`, for basic auth values.
fn base64_basic(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn root_multi_platform_images_pick_the_platform() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start();
    let berth = Berth::new();
    let layout = berth.dir.path().join("multi");
    let (amd64, arm64, _) = berth_testkit::image::multi_platform_image(&layout, "v1").unwrap();
    let output = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--insecure-policy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{}/multi:v1", registry.host()),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let name = format!("{}/multi:v1", registry.host());
    let index = served_digest(&registry, "multi:v1");
    let out = berth.ok(&["pull", &name]);
    assert!(
        out.contains(&format!("Digest: {index}")),
        "the index digest is what was pulled: {out}"
    );
    assert_eq!(berth.inspect(&name)["Id"], amd64.config_digest.as_str(), "this machine's platform");
    berth.ok(&["pull", "--platform", "linux/arm64/v8", &name]);
    let inspect = berth.inspect(&name);
    assert_eq!(inspect["Id"], arm64.config_digest.as_str());
    assert_eq!(inspect["Architecture"], "arm64");
    let err = berth.fails(&["pull", "--platform", "linux/s390x", &name]);
    assert!(err.contains("linux/s390x") && err.contains("linux/arm64/v8, linux/amd64"), "{err}");
}

#[test]
fn root_run_and_create_pull_what_is_missing() {
    if !root_or_skip() {
        return;
    }
    let registry = Registry::start();
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    registry.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "fixture:v1");
    let image = format!("{}/fixture:v1", registry.host());
    // --pull never: a missing image is an error, and nothing is pulled.
    let output = berth
        .command()
        .args(["run", "--rm", "--network", "none", "--pull", "never", &image, "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // By default a missing image is pulled, said on stderr, before the container runs.
    let output = berth
        .command()
        .args(["run", "--rm", "--network", "none", &image, "echo", "ran"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("Unable to find image '{image}' locally")), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ran\n");
    // Present now: no pull.
    let output =
        berth.command().args(["create", "--network", "none", &image, "true"]).output().unwrap();
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("Unable to find"));
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    berth.ok(&["rm", &id]);
    // --pull always asks the registry again.
    let output = berth
        .command()
        .args(["run", "--rm", "--network", "none", "--pull", "always", &image, "true"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Digest: sha256:"));
    let output = berth
        .command()
        .args(["run", "--rm", "--pull", "sometimes", &image, "true"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("use missing, always or never"));
}

#[test]
fn root_registries_yaml_sends_pulls_to_mirrors_and_keeps_names() {
    if !root_or_skip() {
        return;
    }
    let mirror = Registry::start_with_auth("mirror", "secret");
    let berth = Berth::new();
    let written = fixture(berth.dir.path());
    let source = format!("oci:{}:v1", written.dir.display());
    mirror.skopeo_put(&source, "library/fixture:v1");
    mirror.skopeo_put(&source, "k8s/pause:3.10");
    let config = berth.dir.path().join("registries.yaml");
    // The first docker.io mirror is down: the next one serves. Nothing here reaches a
    // registry off this machine (the mirror answers before the upstream is tried).
    std::fs::write(
        &config,
        format!(
            "mirrors:\n  docker.io:\n    endpoint:\n      - \"http://127.0.0.1:1\"\n      - \"http://{host}\"\n  \
             registry.k8s.io:\n    endpoint: [\"http://{host}\"]\n    rewrite:\n      \"^(.*)$\": \"k8s/$1\"\n  \
             \"127.0.0.1:9\":\n    endpoint: [\"http://{host}\"]\nconfigs:\n  \"{host}\":\n    auth: {{username: mirror, password: secret}}\n",
            host = mirror.host()
        ),
    )
    .unwrap();
    let with_mirrors = |args: &[&str]| {
        let mut all = vec!["--registries-config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        berth.run(&all)
    };
    for name in ["docker.io/library/fixture:v1", "registry.k8s.io/pause:3.10"] {
        let pulled = with_mirrors(&["pull", name]);
        assert!(pulled.status.success(), "{name}: {}", String::from_utf8_lossy(&pulled.stderr));
    }
    // The images keep the names they were asked by.
    let listed = berth.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(listed.contains("registry.k8s.io/pause:3.10"), "{listed}");
    assert!(
        listed.lines().any(|l| l == "fixture:v1" || l == "docker.io/library/fixture:v1"),
        "{listed}"
    );
    // Without the file the same names are not pulled from the mirror.
    let err = berth.fails(&["pull", "127.0.0.1:9/k8s/pause:3.10"]);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    // A repository the mirror lacks: the mirror's answer and the registry's both told.
    let out = with_mirrors(&["pull", "127.0.0.1:9/missing:v1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mirrors failed first"), "{err}");
    // A malformed file is named, with what is wrong.
    std::fs::write(&config, "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n").unwrap();
    let out = with_mirrors(&["pull", "docker.io/library/fixture:v1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("registries.yaml") && err.contains("http://"),
        "{err}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn root_registries_yaml_trusts_a_mirrors_certificate_authority() {
    if !root_or_skip() {
        return;
    }
    let berth = Berth::new();
    let pki = berth.dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    openssl(
        &pki,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=berth-test-ca",
        ],
    );
    openssl(
        &pki,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(pki.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &pki,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let mirror = Registry::start_with_tls(&pki.join("server.pem"), &pki.join("server.key"));
    let written = fixture(berth.dir.path());
    mirror.skopeo_put(&format!("oci:{}:v1", written.dir.display()), "mirrored/app:v1");
    // The image names a loopback registry nothing serves, so no pull leaves this machine.
    let config = berth.dir.path().join("registries.yaml");
    let write = |configs: &str| {
        std::fs::write(
            &config,
            format!(
                "mirrors:\n  \"127.0.0.1:9\":\n    endpoint: [\"https://{}\"]\n{configs}",
                mirror.host()
            ),
        )
        .unwrap()
    };
    let pull = || {
        berth.run(&[
            "--registries-config",
            config.to_str().unwrap(),
            "pull",
            "127.0.0.1:9/mirrored/app:v1",
        ])
    };
    // Unknown authority: refused, and said so.
    write("");
    let out = pull();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.to_lowercase().contains("certificate"), "{err}");
    // Its CA given: pulled over HTTPS.
    write(&format!(
        "configs:\n  \"{}\":\n    tls: {{ca_file: {}}}\n",
        mirror.host(),
        pki.join("ca.pem").display()
    ));
    let out = pull();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    berth.ok(&["rmi", "127.0.0.1:9/mirrored/app:v1"]);
    // Or verification switched off for that host.
    write(&format!(
        "configs:\n  \"{}\":\n    tls: {{insecure_skip_verify: true}}\n",
        mirror.host()
    ));
    let out = pull();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
