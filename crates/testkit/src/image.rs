//! OCI image layouts for tests and benchmarks, built offline from the host's busybox.
//!
//! The fixture image has three layers in three encodings (gzip, plain, zstd) and exercises
//! what unpacking must get right: a deletion whiteout, an opaque directory, a hard link,
//! an absolute symlink, modes, owners and times. A skopeo copy puts it into a registry.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{io, Error, Result, BUSYBOX};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut text = String::from("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Builds one layer tar entry by entry.
#[derive(Default)]
pub struct LayerBuilder {
    builder: Option<tar::Builder<Vec<u8>>>,
}

impl std::fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerBuilder")
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder { builder: Some(tar::Builder::new(Vec::new())) }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header
    }

    fn tar(&mut self) -> &mut tar::Builder<Vec<u8>> {
        self.builder.get_or_insert_with(|| tar::Builder::new(Vec::new()))
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        let _ = self.tar().append_data(&mut header, path, std::io::empty());
        self
    }

    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        let _ = self.tar().append_data(&mut header, path, data);
        self
    }

    pub fn owned_file(mut self, path: &str, data: &[u8], uid: u64, gid: u64) -> Self {
        let mut header = Self::header(tar::EntryType::Regular, 0o640, data.len() as u64);
        header.set_uid(uid);
        header.set_gid(gid);
        let _ = self.tar().append_data(&mut header, path, data);
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        let _ = self.tar().append_link(&mut header, path, target);
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0);
        let _ = self.tar().append_link(&mut header, path, target);
        self
    }

    /// An entry whose name is written as is, `..` included (for hostile layers).
    pub fn raw_file(mut self, name: &str, data: &[u8]) -> Self {
        let mut header = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        let _ = self.tar().append(&header, data);
        self
    }

    /// The busybox root filesystem: the binary, a link per applet, `/etc` basics.
    pub fn busybox(self) -> Result<Self> {
        let path = Path::new(BUSYBOX);
        let binary =
            std::fs::read(path).map_err(|_| Error::NoBusybox { path: path.to_path_buf() })?;
        if crate::has_interpreter(&binary) {
            return Err(Error::DynamicBusybox { path: path.to_path_buf() });
        }
        let mut layer = self
            .dir("bin", 0o755)
            .file("bin/busybox", &binary, 0o755)
            .dir("etc", 0o755)
            .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n", 0o644)
            .file("etc/group", b"root:x:0:\ntty:x:5:\napp:x:1000:\nnogroup:x:65534:\n", 0o644)
            .dir("tmp", 0o1777)
            .dir("root", 0o700)
            .dir("home", 0o755)
            .dir("home/app", 0o755)
            .dir("proc", 0o555)
            .dir("sys", 0o555)
            .dir("dev", 0o755)
            .dir("var", 0o755)
            .dir("var/run", 0o755);
        for applet in crate::applets(&binary) {
            if applet != "busybox" {
                layer = layer.symlink(&format!("bin/{applet}"), "busybox");
            }
        }
        Ok(layer)
    }

    /// A program of the host and the shared libraries `ldd` lists for it, each at its host
    /// path with its parent directories (for images that need a real tool beside busybox:
    /// `openssl`, which busybox's wget runs for HTTPS with modern servers).
    pub fn host_program(mut self, path: &str) -> Result<Self> {
        let listed = std::process::Command::new("ldd")
            .arg(path)
            .output()
            .map_err(io("run ldd on", Path::new(path)))?;
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        let mut files = vec![path.to_owned()];
        for line in text.lines() {
            // "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
            let library = line.split("=>").last().unwrap_or("").split_whitespace().next();
            if let Some(library) = library.filter(|l| l.starts_with('/')) {
                files.push(library.to_owned());
            }
        }
        let mut made: Vec<String> = Vec::new();
        for file in files {
            let relative = file.trim_start_matches('/');
            let mut parent = String::new();
            for part in relative.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
                if !parent.is_empty() {
                    parent.push('/');
                }
                parent.push_str(part);
                if !made.contains(&parent) {
                    self = self.dir(&parent, 0o755);
                    made.push(parent.clone());
                }
            }
            let bytes = std::fs::read(&file).map_err(io("read", Path::new(&file)))?;
            self = self.file(relative, &bytes, 0o755);
        }
        Ok(self)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.tar().finish().ok();
        self.builder.take().map(|b| b.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// Deterministic bytes that do not compress (for size-realistic layers).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state =
        seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A layer ready for the layout: its tar and how to compress it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub compression: Compression,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// Writes an OCI image layout with one image tagged `tag` in `dir`.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Layer], cmd: &[&str]) -> Result<Written> {
    let (written, manifest_size) = write_image(dir, layers, cmd, "amd64")?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": written.manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write_index(dir, &index)?;
    Ok(written)
}

fn write_index(dir: &Path, index: &serde_json::Value) -> Result<()> {
    let index_path = dir.join("index.json");
    std::fs::write(&index_path, serde_json::to_vec(index).unwrap_or_default())
        .map_err(io("write", &index_path))?;
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("write", &layout))
}

/// A multi-platform image: the fixture for linux/amd64 and a smaller image for
/// linux/arm64/v8 (with an `/etc/platform` file saying so), under one index tagged `tag`.
/// Returns the two images and the index digest.
pub fn multi_platform_image(dir: &Path, tag: &str) -> Result<(Written, Written, String)> {
    let (amd64, amd64_size) = write_image(dir, &fixture_layers()?, &["sh"], "amd64")?;
    let arm = LayerBuilder::new().busybox()?.file("etc/platform", b"arm64\n", 0o644).finish();
    let (arm64, arm64_size) =
        write_image(dir, &[Layer { tar: arm, compression: Compression::Gzip }], &["sh"], "arm64")?;
    let inner = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64.manifest_digest, "size": arm64_size, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64.manifest_digest, "size": amd64_size, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let inner_bytes = serde_json::to_vec(&inner).unwrap_or_default();
    let inner_digest = sha256(&inner_bytes);
    let path = dir.join("blobs/sha256").join(&inner_digest[7..]);
    std::fs::write(&path, &inner_bytes).map_err(io("write", &path))?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": inner_digest,
            "size": inner_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write_index(dir, &index)?;
    Ok((amd64, arm64, inner_digest))
}

/// Writes the blobs of one image (layers, config, manifest); returns them and the
/// manifest's size.
fn write_image(
    dir: &Path,
    layers: &[Layer],
    cmd: &[&str],
    architecture: &str,
) -> Result<(Written, usize)> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io("create", &blobs))?;
    let put = |data: &[u8]| -> Result<String> {
        let digest = sha256(data);
        let path = blobs.join(&digest[7..]);
        std::fs::write(&path, data).map_err(io("write", &path))?;
        Ok(digest)
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    let mut history = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        diff_ids.push(sha256(&layer.tar));
        let (blob, media_type) = match layer.compression {
            Compression::None => (layer.tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&layer.tar).map_err(io("compress", dir))?;
                (
                    encoder.finish().map_err(io("compress", dir))?,
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::stream::encode_all(&layer.tar[..], 3).map_err(io("compress", dir))?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let digest = put(&blob)?;
        layer_digests.push(digest.clone());
        descriptors.push(json!({"mediaType": media_type, "digest": digest, "size": blob.len()}));
        history.push(json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("fixture layer {}", i + 1)}));
    }
    let config = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
            "Labels": {"org.berth.fixture": "yes"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
    let config_digest = put(&config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = put(&manifest_bytes)?;
    Ok((
        Written { dir: dir.to_path_buf(), manifest_digest, config_digest, layer_digests, diff_ids },
        manifest_bytes.len(),
    ))
}

/// The three layers of the fixture image.
pub fn fixture_layers() -> Result<Vec<Layer>> {
    let base = LayerBuilder::new()
        .busybox()?
        .file("etc/remove-me", b"deleted by layer 2\n", 0o644)
        .dir("var/cache", 0o755)
        .dir("var/cache/app", 0o755)
        .file("var/cache/app/old-1", b"hidden by the opaque directory\n", 0o644)
        .file("var/cache/app/old-2", b"hidden too\n", 0o644)
        .file("etc/motd", b"layer 1\n", 0o644)
        .finish();
    let middle = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/.wh.remove-me", b"", 0o644)
        .dir("var/cache/app", 0o755)
        .file("var/cache/app/.wh..wh..opq", b"", 0o644)
        .file("var/cache/app/new", b"after the opaque marker\n", 0o644)
        .dir("usr", 0o755)
        .dir("usr/share", 0o755)
        .file("usr/share/first", b"one inode, two names\n", 0o644)
        .hardlink("usr/share/second", "usr/share/first")
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .owned_file("home/app/secret", b"owned by app\n", 1000, 1000)
        .finish();
    let top = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", b"layer 3\n", 0o644)
        .dir("srv", 0o755)
        .file("srv/data", &noise(256 << 10, 7), 0o600)
        .file("srv/run.sh", b"#!/bin/sh\necho fixture says hi\n", 0o755)
        .finish();
    Ok(vec![
        Layer { tar: base, compression: Compression::Gzip },
        Layer { tar: middle, compression: Compression::None },
        Layer { tar: top, compression: Compression::Zstd },
    ])
}

/// The fixture image, as an OCI layout in `dir` tagged `tag`.
pub fn fixture_image(dir: &Path, tag: &str) -> Result<Written> {
    write_layout(dir, tag, &fixture_layers()?, &["sh"])
}

/// A bigger image for benchmarks: busybox plus `count` layers of `size` incompressible bytes
/// each (gzip, as registries mostly serve them).
pub fn bench_image(dir: &Path, tag: &str, count: usize, size: usize) -> Result<Written> {
    let mut layers = vec![Layer {
        tar: LayerBuilder::new().busybox()?.finish(),
        compression: Compression::Gzip,
    }];
    for i in 0..count {
        let mut layer = LayerBuilder::new().dir(&format!("data{i}"), 0o755);
        // Many files of mixed sizes, as real layers have.
        let mut written = 0;
        let mut n = 0;
        while written < size {
            let len = [512usize, 4096, 65_536, 1 << 20][n % 4].min(size - written);
            layer =
                layer.file(&format!("data{i}/f{n}"), &noise(len, (i * 100_000 + n) as u64), 0o644);
            written += len;
            n += 1;
        }
        layers.push(Layer { tar: layer.finish(), compression: Compression::Gzip });
    }
    write_layout(dir, tag, &layers, &["sh"])
}

/// A one-layer image whose layer tries to escape (`../`), for bad-input tests.
pub fn hostile_image(dir: &Path, tag: &str, entry: &str) -> Result<Written> {
    let layer = LayerBuilder::new().dir("etc", 0o755).raw_file(entry, b"escaped\n").finish();
    write_layout(dir, tag, &[Layer { tar: layer, compression: Compression::Gzip }], &["sh"])
}
