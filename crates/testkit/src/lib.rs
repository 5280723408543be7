//! Fixtures: minimal OCI bundles made from the host's statically linked busybox.
//!
//! No network and no image: a root filesystem with `/bin/busybox`, a symlink for every applet,
//! `/etc/passwd` and `/etc/group`, and a `config.json` from the runtime's example spec with
//! the terminal turned off. Tests and `berth demo` both use it.
//!
//! `image` writes OCI image layouts of a busybox image with several layers, whiteouts and
//! an opaque directory, written independently of `berth-image` so tests can compare.
//!
//! This crate knows nothing of how containers run: it only writes files.

pub mod image;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where Debian's `busybox-static` installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} not found: install the busybox-static package (apt-get install busybox-static)"
    )]
    NoBusybox { path: PathBuf },
    #[error(
        "{path} is dynamically linked and cannot run inside a bare rootfs: install busybox-static"
    )]
    DynamicBusybox { path: PathBuf },
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

/// A bundle directory: `config.json` plus `rootfs/`.
#[derive(Debug, Clone)]
pub struct BusyboxBundle {
    pub dir: PathBuf,
}

impl BusyboxBundle {
    /// Builds a bundle in `dir` (created if missing) whose process runs `args`.
    pub fn create(dir: &Path, args: &[&str]) -> Result<BusyboxBundle> {
        let busybox = Path::new(BUSYBOX);
        let binary =
            std::fs::read(busybox).map_err(|_| Error::NoBusybox { path: busybox.to_path_buf() })?;
        if has_interpreter(&binary) {
            return Err(Error::DynamicBusybox { path: busybox.to_path_buf() });
        }
        let rootfs = dir.join("rootfs");
        for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "var/run"] {
            let path = rootfs.join(sub);
            std::fs::create_dir_all(&path).map_err(io("create", &path))?;
        }
        let target = rootfs.join("bin/busybox");
        std::fs::write(&target, &binary).map_err(io("write", &target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &target))?;
        for applet in applets(&binary) {
            let link = rootfs.join("bin").join(&applet);
            if !link.exists() {
                symlink("busybox", &link).map_err(io("link", &link))?;
            }
        }
        let tmp = rootfs.join("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
            .map_err(io("chmod", &tmp))?;
        let files = [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
            ("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
            ("etc/hostname", "busybox\n"),
        ];
        for (name, content) in files {
            let path = rootfs.join(name);
            std::fs::write(&path, content).map_err(io("write", &path))?;
        }
        let bundle = BusyboxBundle { dir: dir.to_path_buf() };
        let mut config = berth_runtime::example_spec(false, 0, 0);
        config["process"]["terminal"] = Value::Bool(false);
        config["process"]["args"] = args.iter().map(|a| Value::String((*a).to_owned())).collect();
        config["root"]["readonly"] = Value::Bool(false);
        bundle.write_config(&config)?;
        Ok(bundle)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn config(&self) -> Result<Value> {
        let path = self.config_path();
        let text = std::fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&text).map_err(|err| Error::Io {
            op: "parse",
            path,
            source: err.into(),
        })
    }

    pub fn write_config(&self, config: &Value) -> Result<()> {
        let path = self.config_path();
        let text = serde_json::to_vec_pretty(config).map_err(|err| Error::Io {
            op: "serialize",
            path: path.clone(),
            source: err.into(),
        })?;
        std::fs::write(&path, text).map_err(io("write", &path))
    }

    /// Changes the config through a closure.
    pub fn edit(&self, change: impl FnOnce(&mut Value)) -> Result<()> {
        let mut config = self.config()?;
        change(&mut config);
        self.write_config(&config)
    }
}

/// True when an ELF64 file asks for a dynamic loader (has a `PT_INTERP` program header).
pub(crate) fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read_u16 =
        |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let read_u64 = |at: usize| {
        elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(|b| u64::from_le_bytes(b) as usize)
    };
    let (Some(offset), Some(size), Some(count)) = (read_u64(32), read_u16(54), read_u16(56)) else {
        return false;
    };
    (0..count).any(|index| {
        let at = offset + index * size;
        elf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) == Some(PT_INTERP)
    })
}

/// Applet names busybox lists with `--list`, read from its binary without running it: the
/// list is the NUL-separated run of names that starts with `[`.
pub(crate) fn applets(binary: &[u8]) -> Vec<String> {
    // Running busybox would be simpler, but reading keeps the fixture free of processes.
    let start = binary.windows(4).position(|w| w == b"[\0[[");
    let Some(start) = start else { return default_applets() };
    let mut names = Vec::new();
    for raw in binary[start..].split(|b| *b == 0) {
        if raw.is_empty() {
            break;
        }
        match std::str::from_utf8(raw) {
            Ok(name) if name.len() < 32 && name.chars().all(|c| c.is_ascii_graphic()) => {
                names.push(name.to_owned())
            }
            _ => break,
        }
    }
    if names.len() < 20 {
        return default_applets();
    }
    names
}

fn default_applets() -> Vec<String> {
    [
        "sh", "ls", "cat", "echo", "true", "false", "sleep", "ps", "id", "hostname", "mount",
        "grep", "wc", "head", "tail", "env", "test", "stat", "touch", "mkdir", "rm", "readlink",
        "ulimit", "kill", "nproc",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// True when tests that need root can run here.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
