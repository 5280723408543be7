//! Running a Dockerfile: stages on threads, steps through the cache, RUN as containers,
//! COPY/ADD into overlays, a layer per changing step.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use berth_image::config::{History, ImageConfig, RunConfig};
use berth_image::diff::LayerBlob;
use berth_image::{Image, ImageStore};
use berth_sys::nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::copy::{self, Attributes, SourceRoot, Target};
use crate::dockerfile::{self, Args, Dockerfile, Instruction, ParseError};
use crate::ignore::Ignore;
use crate::spec::{self, Network, StepMount};
use crate::words::{raw_words, Lexer};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a build is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The berth root (`--root`): the image store, the build cache and work directories.
    pub root: PathBuf,
    /// The berth binary, which runs RUN steps as `berth runtime run`.
    pub exe: PathBuf,
    /// The context directory; `None` for a Dockerfile read from stdin without one.
    pub context: Option<PathBuf>,
    pub dockerfile: String,
    /// How errors name the Dockerfile (`Dockerfile`, `build/Dockerfile.dev`).
    pub dockerfile_name: String,
    /// The Dockerfile's own ignore file (`<Dockerfile>.dockerignore` beside it), which
    /// replaces the context's `.dockerignore` when it exists, as BuildKit reads them.
    pub ignore_file: Option<PathBuf>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub pull: bool,
    pub labels: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, PathBuf>,
    /// `--ssh ID[=SOCKET|KEY,...]`: an agent socket, or key files to load into an agent
    /// the build starts, per id (the caller resolves a bare `--ssh default` to
    /// `$SSH_AUTH_SOCK`).
    pub ssh: BTreeMap<String, Vec<PathBuf>>,
    pub network: Network,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// The ignore patterns of a build: the Dockerfile's own ignore file when it has one,
/// else the context's `.dockerignore`, else none.
fn ignore_text(options: &Options, context: &Path) -> String {
    options
        .ignore_file
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::fs::read_to_string(context.join(".dockerignore")).ok())
        .unwrap_or_default()
}

/// What the caller provides: base images, and a display of the build's progress.
pub trait Host: Sync {
    /// The image `name`, from the store or pulled (always pulled when `pull`).
    fn image(&self, name: &str, pull: bool) -> Result<Image, String>;
    fn event(&self, event: Event<'_>);
}

/// Progress of a build, step by step.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Step `number` starts: `[stage index/total] INSTRUCTION`.
    Step {
        number: usize,
        stage: &'a str,
        index: usize,
        total: usize,
        text: &'a str,
    },
    Cached {
        number: usize,
    },
    Output {
        number: usize,
        line: &'a str,
    },
    Done {
        number: usize,
        elapsed: Duration,
    },
    Warning {
        message: &'a str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Parse(#[from] ParseError),
    /// An instruction that cannot be carried out.
    #[error("{file}:{line}: {instruction}: {message}")]
    Step { file: String, line: usize, instruction: String, message: String },
    #[error(transparent)]
    Image(#[from] berth_image::Error),
    #[error("{0}")]
    Setup(String),
}

type Result<T, E = BuildError> = std::result::Result<T, E>;

fn setup(what: impl std::fmt::Display, err: impl std::fmt::Display) -> BuildError {
    BuildError::Setup(format!("{what}: {err}"))
}

/// A stage as the Dockerfile writes it.
#[derive(Debug, Clone)]
struct Stage {
    name: Option<String>,
    from: Instruction,
    body: Vec<Instruction>,
}

/// The state a stage reached: its image (stored, unnamed) and the key that made it.
#[derive(Debug)]
struct Done {
    image: Option<Image>,
    config: ImageConfig,
    key: String,
}

impl Done {
    /// What readers of the stage key on: its image id (its content), not the key that
    /// made it, so a stage rebuilt differently (`--no-cache`, another `--target`) is seen.
    fn identity(&self) -> String {
        match &self.image {
            Some(image) => format!("stage:{}", image.record.id),
            None => format!("stage:{}", self.key),
        }
    }
}

/// Where a stage is in its build.
struct State {
    image: Option<Image>,
    config: ImageConfig,
    key: String,
    /// ARGs in scope: name → value.
    args: Vec<(String, Option<String>)>,
    /// Whether this stage set CMD (an ENTRYPOINT then keeps it).
    cmd_set: bool,
    name: String,
}

impl State {
    fn env(&self) -> Vec<String> {
        self.config.config.as_ref().and_then(|c| c.env.clone()).unwrap_or_default()
    }

    fn lookup(&self, name: &str) -> Option<String> {
        for entry in self.env().iter().rev() {
            if let Some((k, v)) = entry.split_once('=') {
                if k == name {
                    return Some(v.to_owned());
                }
            }
        }
        self.args.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.clone())
    }

    fn workdir(&self) -> String {
        self.config
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

struct Build<'a> {
    options: &'a Options,
    host: &'a dyn Host,
    store: &'a ImageStore,
    file: Dockerfile,
    stages: Vec<Stage>,
    global_args: Vec<(String, Option<String>)>,
    context: Option<SourceRoot>,
    steps: AtomicUsize,
    work: PathBuf,
    consumed: Mutex<HashSet<String>>,
    results: Mutex<HashMap<usize, Result<Arc<Done>, String>>>,
    finished: Condvar,
    warned: Mutex<HashSet<String>>,
    /// The stages the target needs, once planned.
    needed: std::sync::OnceLock<HashSet<usize>>,
    /// The SSH agents `RUN --mount=type=ssh` and `ADD git@...` reach.
    ssh: crate::ssh::Agents,
}

/// Builds the Dockerfile; returns the image (recorded under `names`).
pub fn build(
    options: &Options,
    host: &dyn Host,
    names: Vec<String>,
) -> Result<berth_image::Digest> {
    let store = ImageStore::open(&options.root)?;
    let file = dockerfile::parse(&options.dockerfile)?;
    let name =
        if options.dockerfile_name.is_empty() { "Dockerfile" } else { &options.dockerfile_name };
    let at = |line: usize, instruction: &str, message: String| BuildError::Step {
        file: name.to_owned(),
        line,
        instruction: instruction.to_owned(),
        message,
    };
    // Global ARGs, then stages.
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in &file.instructions {
        match (instruction.keyword.as_str(), stages.last_mut()) {
            ("FROM", _) => {
                let words: Vec<String> =
                    instruction.args.shell_text().split_whitespace().map(str::to_owned).collect();
                let name = match words.as_slice() {
                    [_] => None,
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => {
                        return Err(at(instruction.line, "FROM", "use FROM IMAGE [AS NAME]".into()))
                    }
                };
                if let Some(name) = &name {
                    if stages.iter().any(|s| s.name.as_ref() == Some(name)) {
                        return Err(at(
                            instruction.line,
                            "FROM",
                            format!("the stage name {name:?} is used twice"),
                        ));
                    }
                }
                stages.push(Stage { name, from: instruction.clone(), body: Vec::new() });
            }
            ("ARG", None) => global_args.extend(
                parse_arg_names(instruction, file.escape)
                    .map_err(|m| at(instruction.line, "ARG", m))?,
            ),
            (keyword, None) => {
                return Err(at(
                    instruction.line,
                    keyword,
                    "the Dockerfile must start with FROM (only ARG may come before it)".into(),
                ))
            }
            (_, Some(stage)) => stage.body.push(instruction.clone()),
        }
    }
    if stages.is_empty() {
        return Err(BuildError::Setup(format!("{name} has no FROM: there is nothing to build")));
    }
    let target = match &options.target {
        Some(target) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&target.to_ascii_lowercase()))
            .ok_or_else(|| {
                let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
                BuildError::Setup(format!(
                    "target stage {target:?} could not be found: the stages are {}",
                    names.join(", ")
                ))
            })?,
        None => stages.len() - 1,
    };
    let context = match &options.context {
        Some(dir) => {
            let ignore = Ignore::parse(&ignore_text(options, dir)).map_err(BuildError::Setup)?;
            Some(SourceRoot::context(dir, ignore).map_err(|e| BuildError::Setup(e.to_string()))?)
        }
        None => None,
    };
    let work = options.root.join("build");
    for dir in ["work", "runtime", "cache-mounts"] {
        std::fs::create_dir_all(work.join(dir))
            .map_err(|e| setup(format!("create {}", work.join(dir).display()), e))?;
    }
    clean_stale_work(&work, &options.exe);
    let ssh = if options.ssh.is_empty() {
        crate::ssh::Agents::default()
    } else {
        let dir = work.join("ssh");
        std::fs::create_dir_all(&dir).map_err(|e| setup(format!("create {}", dir.display()), e))?;
        crate::ssh::Agents::start(&options.ssh, &dir).map_err(BuildError::Setup)?
    };
    let _writing = store.writing()?;
    let build = Build {
        options,
        host,
        store: &store,
        file,
        stages,
        global_args,
        context,
        steps: AtomicUsize::new(0),
        work,
        consumed: Mutex::new(HashSet::new()),
        results: Mutex::new(HashMap::new()),
        finished: Condvar::new(),
        warned: Mutex::new(HashSet::new()),
        needed: std::sync::OnceLock::new(),
        ssh,
    };
    let needed = build.needed(target)?;
    let _ = build.needed.set(needed.iter().copied().collect());
    let result = std::thread::scope(|scope| {
        for &index in &needed {
            let build = &build;
            scope.spawn(move || {
                // A stage whose thread panics still answers its readers, with an error.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    build.run_stage(index).map(Arc::new).map_err(|e| e.to_string())
                }))
                .unwrap_or_else(|_| Err(format!("building stage {index} failed unexpectedly")));
                build.results.lock().unwrap_or_else(|p| p.into_inner()).insert(index, result);
                build.finished.notify_all();
            });
        }
        build.wait_for(target)
    });
    let done = result.map_err(BuildError::Setup)?;
    let unused: Vec<String> = {
        let consumed = build.consumed.lock().unwrap_or_else(|p| p.into_inner());
        options
            .build_args
            .keys()
            .filter(|k| !consumed.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .cloned()
            .collect()
    };
    if !unused.is_empty() {
        host.event(Event::Warning {
            message: &format!("one or more build args were not consumed: {}", unused.join(", ")),
        });
    }
    // CLI labels are the last step.
    let mut state = State {
        image: done.image.clone(),
        config: done.config.clone(),
        key: done.key.clone(),
        args: Vec::new(),
        cmd_set: true,
        name: String::new(),
    };
    if !options.labels.is_empty() {
        let material = format!(
            "LABEL (--label) {}",
            serde_json::to_string(&options.labels).unwrap_or_default()
        );
        let labels = options.labels.clone();
        build.metadata_step(
            &mut state,
            None,
            &material,
            "LABEL (from --label)",
            None,
            move |config| {
                config.labels.get_or_insert_with(BTreeMap::new).extend(labels);
                Ok(())
            },
        )?;
    }
    let image = match state.image {
        Some(image) => image,
        None => {
            // `FROM scratch` and nothing else: an image without layers.
            let record = berth_image::diff::store_image(&store, None, state.config, Vec::new())?;
            store.load(record)?
        }
    };
    let mut record = image.record.clone();
    record.names = names;
    record.created = berth_stdx::time::unix_now();
    store.record(&record, None, &[])?;
    Ok(record.id)
}

/// Build arguments Docker accepts without an ARG (proxies and the platform).
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

fn parse_arg_names(
    instruction: &Instruction,
    escape: char,
) -> Result<Vec<(String, Option<String>)>, String> {
    let words = raw_words(&instruction.args.shell_text(), escape).map_err(|e| e.to_string())?;
    if words.is_empty() {
        return Err("ARG needs a name: ARG NAME[=default]".into());
    }
    let mut out = Vec::new();
    for word in words {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (word.clone(), None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{name:?} is not a valid ARG name"));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Unmounts everything under `dir` and removes it; leaves it if anything stays mounted,
/// so a removal never reaches into a mounted directory.
fn remove_workspace(dir: &Path) {
    for point in berth_sys::mount::mounts_under(dir) {
        if let Err(err) = umount2(&point, MntFlags::MNT_DETACH) {
            tracing::warn!("cannot unmount {}: {err}", point.display());
        }
    }
    if berth_sys::mount::mounts_under(dir).is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        tracing::warn!("{} still has mounts; it is left for the next build", dir.display());
    }
}

/// Removes what builds killed before their end left: mounts, containers, directories.
fn clean_stale_work(work: &Path, exe: &Path) {
    let Ok(entries) = std::fs::read_dir(work.join("work")) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(lock) = std::fs::File::open(dir.join("lock")) else {
            // A workspace is made with its lock; one without is someone's first instant
            // or a crash's remains: only an old one is removed.
            let old = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old {
                remove_workspace(&dir);
            }
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // a live build
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let _ = std::process::Command::new(exe)
            .args(["runtime", "--root"])
            .arg(work.join("runtime"))
            .args(["delete", "--force", &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        remove_workspace(&dir);
    }
}

/// A scratch directory for one step, locked while it lives, its mounts undone on drop.
struct Workspace {
    dir: PathBuf,
    id: String,
    mounts: RefCell<Vec<PathBuf>>,
    /// Names files and mount points made for one step apart.
    counter: std::cell::Cell<usize>,
    _lock: std::fs::File,
}

impl Workspace {
    fn new(work: &Path) -> Result<Workspace> {
        let id = format!(
            "build-{}",
            berth_stdx::random::hex(8).map_err(|e| setup("make a random name", e))?
        );
        let dir = work.join("work").join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| setup(format!("create {}", dir.display()), e))?;
        // The step's sockets (an SSH agent's) and copies (secrets) are nobody else's.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| setup(format!("chmod {}", dir.display()), e))?;
        let lock =
            std::fs::File::create(dir.join("lock")).map_err(|e| setup("create a lock", e))?;
        lock.lock().map_err(|e| setup("lock a work directory", e))?;
        Ok(Workspace {
            dir,
            id,
            mounts: RefCell::new(Vec::new()),
            counter: std::cell::Cell::new(0),
            _lock: lock,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh name in the workspace: `PREFIX-N`.
    fn fresh(&self, prefix: &str) -> PathBuf {
        let n = self.counter.get();
        self.counter.set(n + 1);
        self.dir.join(format!("{prefix}-{n}"))
    }

    fn mkdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| setup(format!("create {}", path.display()), e))?;
        Ok(path)
    }

    /// Mounts an overlay of `lowers` (top first) at `target`, writable when `upper` is given.
    fn overlay(
        &self,
        target: &Path,
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
    ) -> Result<()> {
        std::fs::create_dir_all(target)
            .map_err(|e| setup(format!("create {}", target.display()), e))?;
        let mut lowers: Vec<PathBuf> = lowers.to_vec();
        let empty = self.mkdir("empty")?;
        // Without an upper layer overlayfs wants two lower ones; without layers, one empty.
        while lowers.len() < if upper.is_some() { 1 } else { 2 } {
            lowers.push(empty.clone());
        }
        // overlayfs splits its options at ',' and its layers at ':': a path holding one
        // would be read as other options or other layers.
        let all: Vec<&Path> = lowers
            .iter()
            .map(PathBuf::as_path)
            .chain(upper.iter().flat_map(|(u, w)| [*u, *w]))
            .collect();
        if let Some(bad) = all.iter().find(|p| p.to_string_lossy().contains([',', ':', '\\'])) {
            return Err(BuildError::Setup(format!(
                "{} holds ',', ':' or '\\', which an overlay mount cannot take: use another --root",
                bad.display()
            )));
        }
        let lower =
            lowers.iter().map(|l| l.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":");
        let mut options = format!("lowerdir={lower}");
        if let Some((upper, work)) = upper {
            options.push_str(&format!(",upperdir={},workdir={}", upper.display(), work.display()));
        }
        if options.len() >= 4000 {
            return Err(BuildError::Setup(format!(
                "the image has too many layers ({}) for one overlay mount: use a shorter --root or fewer steps",
                lowers.len()
            )));
        }
        // Read-only views are sources the builder reads as root: no device nodes or set-id
        // bits work through them.
        let flags = if upper.is_some() {
            MsFlags::empty()
        } else {
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID
        };
        mount(Some("overlay"), target, Some("overlay"), flags, Some(options.as_str()))
            .map_err(|e| setup(format!("mount an overlay at {}", target.display()), e))?;
        self.mounts.borrow_mut().push(target.to_owned());
        Ok(())
    }

    /// Binds `source` (a path or a `/proc/self/fd/N` link) read-only at `target`.
    fn bind_readonly(&self, source: &Path, target: &Path) -> Result<()> {
        std::fs::create_dir_all(target)
            .map_err(|e| setup(format!("create {}", target.display()), e))?;
        mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| setup(format!("bind {} at {}", source.display(), target.display()), e))?;
        self.mounts.borrow_mut().push(target.to_owned());
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOSUID;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            .map_err(|e| setup(format!("make {} read-only", target.display()), e))?;
        Ok(())
    }

    fn unmount_all(&self) {
        for target in self.mounts.borrow_mut().drain(..).rev() {
            if let Err(err) = umount2(&target, MntFlags::MNT_DETACH) {
                tracing::warn!("cannot unmount {}: {err}", target.display());
            }
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        self.unmount_all();
        remove_workspace(&self.dir);
    }
}

fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

fn chain(parent: &str, material: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(parent.as_bytes());
    hasher.update(b"\n");
    hasher.update(material.as_bytes());
    hex(hasher)
}

impl Build<'_> {
    fn dockerfile_name(&self) -> String {
        if self.options.dockerfile_name.is_empty() {
            "Dockerfile".into()
        } else {
            self.options.dockerfile_name.clone()
        }
    }

    fn error(&self, instruction: &Instruction, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            file: self.dockerfile_name(),
            line: instruction.line,
            instruction: instruction.keyword.clone(),
            message: message.into(),
        }
    }

    fn warn(&self, message: String) {
        if self.warned.lock().unwrap_or_else(|p| p.into_inner()).insert(message.clone()) {
            self.host.event(Event::Warning { message: &message });
        }
    }

    fn platform_args(&self) -> Vec<(String, Option<String>)> {
        let os = self.options.os.clone();
        let arch = self.options.architecture.clone();
        let variant = self.options.variant.clone().unwrap_or_default();
        let platform = if variant.is_empty() {
            format!("{os}/{arch}")
        } else {
            format!("{os}/{arch}/{variant}")
        };
        [
            ("TARGETPLATFORM", platform.clone()),
            ("TARGETOS", os.clone()),
            ("TARGETARCH", arch.clone()),
            ("TARGETVARIANT", variant.clone()),
            ("BUILDPLATFORM", platform),
            ("BUILDOS", os),
            ("BUILDARCH", arch),
            ("BUILDVARIANT", variant),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v)))
        .collect()
    }

    /// Global ARGs with their values (build args first, then defaults).
    fn global_values(&self) -> Vec<(String, Option<String>)> {
        let mut values = self.platform_args();
        for (name, default) in &self.global_args {
            let lookup =
                |n: &str| values.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone());
            let value = match self.options.build_args.get(name) {
                Some(v) => {
                    self.consumed.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
                    Some(v.clone())
                }
                None => default.as_ref().map(|d| {
                    Lexer { escape: self.file.escape, vars: &lookup, seen: None }
                        .word(d)
                        .unwrap_or_else(|_| d.clone())
                }),
            };
            values.push((name.clone(), value));
        }
        values
    }

    fn stage_by_name(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(index) = self.stages.iter().position(|s| s.name.as_deref() == Some(&lower)) {
            return Some(index);
        }
        name.parse::<usize>().ok().filter(|&i| i < self.stages.len())
    }

    fn base_name(&self, stage: &Stage) -> Result<String> {
        let globals = self.global_values();
        let lookup =
            |n: &str| globals.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone());
        let word =
            stage.from.args.shell_text().split_whitespace().next().unwrap_or_default().to_owned();
        let name = Lexer { escape: self.file.escape, vars: &lookup, seen: None }
            .word(&word)
            .map_err(|e| self.error(&stage.from, e.to_string()))?;
        if name.is_empty() {
            return Err(self.error(
                &stage.from,
                format!("{word:?} expands to nothing: give the ARG a default or pass --build-arg"),
            ));
        }
        Ok(name)
    }

    /// The stages `index` reads (FROM, COPY --from, RUN --mount from=).
    fn dependencies(&self, index: usize) -> Result<Vec<usize>> {
        let stage = &self.stages[index];
        let mut deps = Vec::new();
        let base = self.base_name(stage)?;
        if let Some(dep) =
            self.stage_by_name(&base).filter(|&d| d < index && base.parse::<usize>().is_err())
        {
            deps.push(dep);
        }
        // Flags may use variables: expand them as the stage will (global ARGs, then the
        // stage's ARGs with build args or defaults), or a stage read through `$VAR` would
        // never be built and its reader would wait for it forever.
        let mut vars = self.global_values();
        for instruction in &stage.body {
            if instruction.keyword == "ARG" {
                for (name, default) in
                    parse_arg_names(instruction, self.file.escape).unwrap_or_default()
                {
                    let lookup = |n: &str| {
                        vars.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone())
                    };
                    let value = self
                        .options
                        .build_args
                        .get(&name)
                        .cloned()
                        .or_else(|| {
                            default.map(|d| {
                                Lexer { escape: self.file.escape, vars: &lookup, seen: None }
                                    .word(&d)
                                    .unwrap_or(d)
                            })
                        })
                        .or_else(|| lookup(&name));
                    vars.push((name, value));
                }
                continue;
            }
            let lookup =
                |n: &str| vars.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone());
            let expand = |text: &str| {
                Lexer { escape: self.file.escape, vars: &lookup, seen: None }
                    .word(text)
                    .unwrap_or_else(|_| text.to_owned())
            };
            let mut refs: Vec<String> =
                instruction.flag_values("from").into_iter().map(expand).collect();
            for mount in instruction.flag_values("mount") {
                for part in expand(mount).split(',') {
                    if let Some(from) = part.strip_prefix("from=") {
                        refs.push(from.to_owned());
                    }
                }
            }
            for name in refs {
                match self.stage_by_name(&name) {
                    Some(dep) if dep >= index => {
                        return Err(self.error(instruction, format!("stage {name:?} is not defined before this one: a stage can only read earlier stages")))
                    }
                    Some(dep) => deps.push(dep),
                    None => {}
                }
            }
        }
        Ok(deps)
    }

    fn needed(&self, target: usize) -> Result<Vec<usize>> {
        let mut needed = HashSet::new();
        let mut queue = vec![target];
        while let Some(index) = queue.pop() {
            if needed.insert(index) {
                queue.extend(self.dependencies(index)?);
            }
        }
        let mut needed: Vec<usize> = needed.into_iter().collect();
        needed.sort_unstable();
        Ok(needed)
    }

    fn wait_for(&self, index: usize) -> Result<Arc<Done>, String> {
        if !self.needed.get().is_some_and(|n| n.contains(&index)) {
            return Err(format!("stage {index} was not planned before the build started: name the stage in --from (or from=) directly, or through an ARG with a default"));
        }
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = results.get(&index) {
                return result.clone();
            }
            results = self.finished.wait(results).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stage_label(&self, index: usize) -> String {
        self.stages[index].name.clone().unwrap_or_else(|| format!("stage-{index}"))
    }

    fn run_stage(&self, index: usize) -> Result<Done> {
        let stage = &self.stages[index];
        let base = self.base_name(stage)?;
        let platform = stage.from.flag("platform");
        if let Some(platform) = platform {
            let wanted = format!("{}/{}", self.options.os, self.options.architecture);
            let expanded = self.global_word(platform);
            if !expanded.is_empty() && !expanded.starts_with(&wanted) && !expanded.contains('$') {
                return Err(self.error(
                    &stage.from,
                    format!("--platform={expanded}: this builder makes {wanted} images only"),
                ));
            }
        }
        let total = stage.body.len() + 1;
        let label = self.stage_label(index);
        let number = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
        self.host.event(Event::Step {
            number,
            stage: &label,
            index: 1,
            total,
            text: &stage.from.text,
        });
        let started = Instant::now();
        let mut state = if base.eq_ignore_ascii_case("scratch") {
            State {
                image: None,
                config: ImageConfig {
                    architecture: self.options.architecture.clone(),
                    os: self.options.os.clone(),
                    variant: self.options.variant.clone(),
                    config: Some(RunConfig {
                        env: Some(vec![DEFAULT_PATH.to_owned()]),
                        ..RunConfig::default()
                    }),
                    rootfs: berth_image::config::RootFs {
                        kind: "layers".into(),
                        diff_ids: Vec::new(),
                    },
                    ..ImageConfig::default()
                },
                key: "scratch".into(),
                args: Vec::new(),
                cmd_set: false,
                name: label.clone(),
            }
        } else if let Some(dep) =
            self.stage_by_name(&base).filter(|&d| d < index && base.parse::<usize>().is_err())
        {
            let done = self
                .wait_for(dep)
                .map_err(|e| self.error(&stage.from, format!("stage {base:?} failed: {e}")))?;
            State {
                image: done.image.clone(),
                config: done.config.clone(),
                key: done.identity(),
                args: Vec::new(),
                cmd_set: false,
                name: label.clone(),
            }
        } else {
            let image = self
                .host
                .image(&base, self.options.pull)
                .map_err(|e| self.error(&stage.from, e))?;
            let key = format!("image:{}", image.record.id);
            State {
                config: image.config.clone(),
                image: Some(image),
                key,
                args: Vec::new(),
                cmd_set: false,
                name: label.clone(),
            }
        };
        self.host.event(Event::Done { number, elapsed: started.elapsed() });
        // As BuildKit: a base image without PATH gets the default one.
        let run = state.config.config.get_or_insert_with(RunConfig::default);
        let env = run.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_owned());
        }
        // Triggers the base image left for its children run first.
        let triggers: Vec<String> = state
            .config
            .config
            .as_ref()
            .and_then(|c| c.extra.get("OnBuild"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if !triggers.is_empty() {
            let text = triggers.join("\n");
            let parsed = dockerfile::parse(&text).map_err(|e| {
                self.error(&stage.from, format!("the base image's ONBUILD triggers: {}", e.message))
            })?;
            // The triggers are the parent's: the child image does not carry them on.
            if let Some(run) = state.config.config.as_mut() {
                run.extra.remove("OnBuild");
            }
            for mut instruction in parsed.instructions {
                instruction.line = stage.from.line;
                self.instruction(&mut state, &instruction, (1, total), stage)?;
            }
        }
        for (i, instruction) in stage.body.iter().enumerate() {
            self.instruction(&mut state, instruction, (i + 2, total), stage)?;
        }
        Ok(Done { image: state.image, config: state.config, key: state.key })
    }

    fn global_word(&self, text: &str) -> String {
        let globals = self.global_values();
        let lookup =
            |n: &str| globals.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone());
        Lexer { escape: self.file.escape, vars: &lookup, seen: None }
            .word(text)
            .unwrap_or_else(|_| text.to_owned())
    }

    /// Expands `text` with the stage's variables; a name that a later ARG declares is an
    /// error (used before it is declared), an unknown one a warning.
    fn expand(
        &self,
        state: &State,
        instruction: &Instruction,
        stage: &Stage,
        text: &str,
        split: bool,
    ) -> Result<Vec<String>> {
        let seen = RefCell::new(Vec::new());
        let lookup = |n: &str| state.lookup(n);
        let lexer = Lexer { escape: self.file.escape, vars: &lookup, seen: Some(&seen) };
        let words = if split { lexer.words(text) } else { lexer.word(text).map(|w| vec![w]) };
        let words = words.map_err(|e| self.error(instruction, e.to_string()))?;
        for name in seen.into_inner() {
            if state.lookup(&name).is_some() || state.args.iter().any(|(k, _)| *k == name) {
                continue;
            }
            let later = stage.body.iter().find(|i| {
                i.line > instruction.line
                    && i.keyword == "ARG"
                    && parse_arg_names(i, self.file.escape)
                        .map(|names| names.iter().any(|(n, _)| *n == name))
                        .unwrap_or(false)
            });
            if let Some(later) = later {
                return Err(self.error(
                    instruction,
                    format!("${name} is used before it is declared: the ARG on line {} declares it; move that ARG above this line", later.line),
                ));
            }
            self.warn(format!(
                "{}:{}: ${name} is not set (no ARG or ENV declares it); it expands to nothing",
                self.dockerfile_name(),
                instruction.line
            ));
        }
        Ok(words)
    }

    fn instruction(
        &self,
        state: &mut State,
        instruction: &Instruction,
        (index, total): (usize, usize),
        stage: &Stage,
    ) -> Result<()> {
        let number = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
        let label = state.name.clone();
        let step = StepInfo { number, label: &label, index, total };
        let keyword = instruction.keyword.as_str();
        match keyword {
            "ARG" => {
                self.host.event(Event::Step {
                    number,
                    stage: &label,
                    index,
                    total,
                    text: &instruction.text,
                });
                let names = parse_arg_names(instruction, self.file.escape)
                    .map_err(|m| self.error(instruction, m))?;
                let globals = self.global_values();
                let platform = self.platform_args();
                for (name, default) in names {
                    let value = if let Some(v) = self.options.build_args.get(&name) {
                        self.consumed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(name.clone());
                        Some(v.clone())
                    } else if let Some(default) = default {
                        Some(self.expand(state, instruction, stage, &default, false)?.remove(0))
                    } else if let Some((_, v)) = globals.iter().rev().find(|(k, _)| *k == name) {
                        v.clone()
                    } else {
                        platform.iter().find(|(k, _)| *k == name).and_then(|(_, v)| v.clone())
                    };
                    state.args.retain(|(k, _)| *k != name);
                    state.args.push((name, value));
                }
                self.host.event(Event::Done { number, elapsed: Duration::ZERO });
                Ok(())
            }
            "RUN" => self.run(state, instruction, stage, &step),
            "COPY" | "ADD" => self.copy(state, instruction, stage, &step),
            _ => self.metadata(state, instruction, stage, &step),
        }
    }

    /// A step that changes only the image config: cached like any other, so a rebuild
    /// gives the same image id.
    fn metadata_step(
        &self,
        state: &mut State,
        step: Option<&StepInfo<'_>>,
        material: &str,
        created_by: &str,
        author: Option<String>,
        apply: impl FnOnce(&mut RunConfig) -> Result<()>,
    ) -> Result<()> {
        let key = chain(&state.key, material);
        if let Some(step) = step {
            self.host.event(Event::Step {
                number: step.number,
                stage: step.label,
                index: step.index,
                total: step.total,
                text: created_by,
            });
        }
        if self.cached(state, &key, step)? {
            return Ok(());
        }
        let mut config = state.config.clone();
        apply(config.config.get_or_insert_with(RunConfig::default))?;
        if let Some(author) = author {
            config.author = Some(author);
        }
        config.history.push(History {
            created: Some(berth_stdx::time::format_rfc3339(berth_stdx::time::unix_now())),
            created_by: Some(created_by.to_owned()),
            comment: Some("berth build".into()),
            empty_layer: true,
            ..History::default()
        });
        self.commit(state, config, None, key)?;
        if let Some(step) = step {
            self.host.event(Event::Done { number: step.number, elapsed: Duration::ZERO });
        }
        Ok(())
    }

    fn commit(
        &self,
        state: &mut State,
        mut config: ImageConfig,
        layer: Option<(LayerBlob, History)>,
        key: String,
    ) -> Result<()> {
        config.created = Some(berth_stdx::time::format_rfc3339(berth_stdx::time::unix_now()));
        let layers = layer.into_iter().collect();
        let record =
            berth_image::diff::store_image(self.store, state.image.as_ref(), config, layers)?;
        self.store.put_build_cache(&key, &record)?;
        let image = self.store.load(record)?;
        state.config = image.config.clone();
        state.image = Some(image);
        state.key = key;
        Ok(())
    }

    fn metadata(
        &self,
        state: &mut State,
        instruction: &Instruction,
        stage: &Stage,
        step: &StepInfo<'_>,
    ) -> Result<()> {
        let text = instruction.args.shell_text();
        let keyword = instruction.keyword.as_str();
        let shell: Vec<String> = state
            .config
            .config
            .as_ref()
            .and_then(|c| c.extra.get("Shell"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        let command = |args: &Args| -> Vec<String> {
            match args {
                Args::Exec(words) => words.clone(),
                Args::Shell(text) => shell.iter().cloned().chain([text.clone()]).collect(),
            }
        };
        // What the key takes beyond the shown text, where the text is ambiguous.
        let mut key_extra = String::new();
        let (created_by, change): (String, ConfigChange) = match keyword {
            "ENV" | "LABEL" => {
                let pairs = self.pairs(state, instruction, stage, keyword == "ENV")?;
                key_extra = serde_json::to_string(&pairs).unwrap_or_default();
                let shown =
                    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                let env = keyword == "ENV";
                (
                    format!("{keyword} {shown}"),
                    Box::new(move |run: &mut RunConfig| {
                        for (k, v) in pairs {
                            if env {
                                let list = run.env.get_or_insert_with(Vec::new);
                                list.retain(|e| e.split('=').next() != Some(k.as_str()));
                                list.push(format!("{k}={v}"));
                            } else {
                                run.labels.get_or_insert_with(BTreeMap::new).insert(k, v);
                            }
                        }
                        Ok(())
                    }),
                )
            }
            "MAINTAINER" => {
                // The author itself is set by metadata_step.
                (format!("MAINTAINER {}", text.trim()), Box::new(|_run: &mut RunConfig| Ok(())))
            }
            "CMD" => {
                let cmd = command(&instruction.args);
                state.cmd_set = true;
                (
                    format!("CMD {}", json!(cmd)),
                    Box::new(move |run: &mut RunConfig| {
                        run.cmd = Some(cmd);
                        Ok(())
                    }),
                )
            }
            "ENTRYPOINT" => {
                let entry = command(&instruction.args);
                let keep_cmd = state.cmd_set;
                key_extra = format!("keep-cmd={keep_cmd}");
                (
                    format!("ENTRYPOINT {}", json!(entry)),
                    Box::new(move |run: &mut RunConfig| {
                        run.entrypoint = Some(entry);
                        if !keep_cmd {
                            run.cmd = None;
                        }
                        Ok(())
                    }),
                )
            }
            "EXPOSE" => {
                // Expanded, then split: `EXPOSE $PORTS` with PORTS="80 443" is two ports.
                let words: Vec<String> = self
                    .expand(state, instruction, stage, &text, true)?
                    .iter()
                    .flat_map(|w| w.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .collect();
                let mut ports = Vec::new();
                for word in &words {
                    let (range, proto) = word.split_once('/').unwrap_or((word, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                        return Err(self.error(
                            instruction,
                            format!("{word:?}: the protocol must be tcp, udp or sctp"),
                        ));
                    }
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
                        return Err(self.error(
                            instruction,
                            format!(
                                "{word:?} is not a port: use PORT[/PROTOCOL] or FROM-TO[/PROTOCOL]"
                            ),
                        ));
                    };
                    if lo == 0 || hi < lo {
                        return Err(
                            self.error(instruction, format!("{word:?} is not a valid port range"))
                        );
                    }
                    for port in lo..=hi {
                        ports.push(format!("{port}/{proto}"));
                    }
                }
                (
                    format!("EXPOSE {}", words.join(" ")),
                    Box::new(move |run: &mut RunConfig| {
                        let map = run.exposed_ports.get_or_insert_with(BTreeMap::new);
                        for port in ports {
                            map.insert(port, json!({}));
                        }
                        Ok(())
                    }),
                )
            }
            "VOLUME" => {
                let paths = match &instruction.args {
                    Args::Exec(words) => {
                        let mut out = Vec::new();
                        for w in words {
                            out.extend(self.expand(state, instruction, stage, w, false)?);
                        }
                        out
                    }
                    Args::Shell(text) => {
                        let quoted = text.contains(['"', '\'']);
                        let words = self.expand(state, instruction, stage, text, true)?;
                        if quoted {
                            words
                        } else {
                            words
                                .iter()
                                .flat_map(|w| {
                                    w.split_whitespace().map(str::to_owned).collect::<Vec<_>>()
                                })
                                .collect()
                        }
                    }
                };
                if paths.iter().any(|p| p.trim().is_empty()) || paths.is_empty() {
                    return Err(self.error(instruction, "VOLUME needs a path"));
                }
                (
                    format!("VOLUME {}", json!(paths)),
                    Box::new(move |run: &mut RunConfig| {
                        let map = run.volumes.get_or_insert_with(BTreeMap::new);
                        for path in paths {
                            map.insert(path, json!({}));
                        }
                        Ok(())
                    }),
                )
            }
            "USER" => {
                let user = self.expand(state, instruction, stage, text.trim(), false)?.remove(0);
                if user.is_empty() {
                    return Err(self
                        .error(instruction, "USER needs a user: USER NAME[:GROUP] or UID[:GID]"));
                }
                (
                    format!("USER {user}"),
                    Box::new(move |run: &mut RunConfig| {
                        run.user = Some(user);
                        Ok(())
                    }),
                )
            }
            "WORKDIR" => {
                let dir = self.expand(state, instruction, stage, text.trim(), false)?.remove(0);
                if dir.is_empty() {
                    return Err(self.error(instruction, "WORKDIR needs a path"));
                }
                let joined =
                    if dir.starts_with('/') { dir } else { format!("{}/{dir}", state.workdir()) };
                let cleaned = match crate::ignore::clean(&joined).as_str() {
                    "." => "/".to_owned(),
                    other => format!("/{other}"),
                };
                let cleaned =
                    if cleaned == "/" { cleaned } else { cleaned.trim_end_matches('/').to_owned() };
                (
                    format!("WORKDIR {cleaned}"),
                    Box::new(move |run: &mut RunConfig| {
                        run.working_dir = Some(cleaned);
                        Ok(())
                    }),
                )
            }
            "STOPSIGNAL" => {
                let signal = self.expand(state, instruction, stage, text.trim(), false)?.remove(0);
                let valid = signal.parse::<u8>().is_ok_and(|n| n > 0 && n < 65)
                    || signal.trim_start_matches("SIG").chars().all(|c| {
                        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-'
                    }) && !signal.is_empty();
                if !valid {
                    return Err(self.error(
                        instruction,
                        format!("{signal:?} is not a signal: use a name (SIGTERM) or a number"),
                    ));
                }
                (
                    format!("STOPSIGNAL {signal}"),
                    Box::new(move |run: &mut RunConfig| {
                        run.stop_signal = Some(signal);
                        Ok(())
                    }),
                )
            }
            "SHELL" => {
                let Args::Exec(words) = &instruction.args else {
                    return Err(self.error(instruction, "SHELL takes the JSON form"));
                };
                if words.is_empty() {
                    return Err(self.error(instruction, "SHELL needs at least the shell's path"));
                }
                let words = words.clone();
                (
                    format!("SHELL {}", json!(words)),
                    Box::new(move |run: &mut RunConfig| {
                        run.extra.insert("Shell".into(), json!(words));
                        Ok(())
                    }),
                )
            }
            "HEALTHCHECK" => {
                let value = self.healthcheck(instruction)?;
                key_extra = value.to_string();
                (
                    format!("HEALTHCHECK {}", instruction.args.shell_text().trim()),
                    Box::new(move |run: &mut RunConfig| {
                        run.extra.insert("Healthcheck".into(), value);
                        Ok(())
                    }),
                )
            }
            "ONBUILD" => {
                let trigger = text.trim().to_owned();
                let first =
                    trigger.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
                if matches!(first.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") || first.is_empty() {
                    return Err(self.error(instruction, format!("ONBUILD cannot trigger {first}")));
                }
                dockerfile::parse(&trigger).map_err(|e| self.error(instruction, e.message))?;
                (
                    format!("ONBUILD {trigger}"),
                    Box::new(move |run: &mut RunConfig| {
                        let mut list: Vec<String> = run
                            .extra
                            .get("OnBuild")
                            .and_then(|v| serde_json::from_value(v.clone()).ok())
                            .unwrap_or_default();
                        list.push(trigger);
                        run.extra.insert("OnBuild".into(), json!(list));
                        Ok(())
                    }),
                )
            }
            other => return Err(self.error(instruction, format!("{other} is not supported here"))),
        };
        let author = (keyword == "MAINTAINER").then(|| text.trim().to_owned());
        let material = format!("{keyword}\n{created_by}\n{key_extra}");
        self.metadata_step(state, Some(step), &material, &created_by, author, change)
    }

    fn healthcheck(&self, instruction: &Instruction) -> Result<Value> {
        let text = instruction.args.shell_text();
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("NONE") {
            return Ok(json!({"Test": ["NONE"]}));
        }
        let Some(rest) = trimmed.strip_prefix("CMD").or_else(|| trimmed.strip_prefix("cmd")) else {
            return Err(self
                .error(instruction, "use HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE"));
        };
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(self.error(instruction, "HEALTHCHECK CMD needs a command"));
        }
        let test: Vec<String> = match serde_json::from_str::<Vec<String>>(rest) {
            Ok(words) if rest.starts_with('[') => {
                std::iter::once("CMD".to_owned()).chain(words).collect()
            }
            _ => vec!["CMD-SHELL".into(), rest.to_owned()],
        };
        let mut value = json!({"Test": test});
        for (flag, key) in [
            ("interval", "Interval"),
            ("timeout", "Timeout"),
            ("start-period", "StartPeriod"),
            ("start-interval", "StartInterval"),
        ] {
            if let Some(text) = instruction.flag(flag) {
                let nanos = berth_stdx::time::parse_go_duration(text).ok_or_else(|| {
                    self.error(
                        instruction,
                        format!("--{flag}={text} is not a duration (30s, 1m30s, 500ms)"),
                    )
                })?;
                value[key] = json!(nanos);
            }
        }
        if let Some(retries) = instruction.flag("retries") {
            let n: i64 = retries.parse().map_err(|_| {
                self.error(instruction, format!("--retries={retries} is not a number"))
            })?;
            value["Retries"] = json!(n);
        }
        Ok(value)
    }

    /// ENV and LABEL `k=v` pairs (or the old `ENV k v` form), expanded.
    fn pairs(
        &self,
        state: &State,
        instruction: &Instruction,
        stage: &Stage,
        env: bool,
    ) -> Result<Vec<(String, String)>> {
        let text = instruction.args.shell_text();
        let words = raw_words(&text, self.file.escape)
            .map_err(|e| self.error(instruction, e.to_string()))?;
        if words.is_empty() {
            return Err(self.error(instruction, format!("{} needs KEY=VALUE", instruction.keyword)));
        }
        if env && !words[0].contains('=') {
            // ENV key value: the rest of the line is the value.
            let key = words[0].clone();
            let rest = text.trim_start()[key.len()..].trim().to_owned();
            if rest.is_empty() {
                return Err(
                    self.error(instruction, format!("ENV {key} needs a value: ENV {key}=VALUE"))
                );
            }
            let value = self.expand(state, instruction, stage, &rest, false)?.remove(0);
            return Ok(vec![(key, value)]);
        }
        let mut pairs = Vec::new();
        for word in words {
            let processed = self.expand(state, instruction, stage, &word, false)?.remove(0);
            let Some((k, v)) = processed.split_once('=') else {
                return Err(self.error(instruction, format!("{word:?} is not KEY=VALUE")));
            };
            if k.is_empty() {
                return Err(self.error(instruction, format!("{word:?} has no key")));
            }
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(pairs)
    }

    fn lowers(&self, state: &State) -> Result<Vec<PathBuf>> {
        match &state.image {
            Some(image) => Ok(self.store.lower_dirs(image)?),
            None => Ok(Vec::new()),
        }
    }

    /// Mounts the stage's root filesystem with a fresh upper directory, lets `work` change
    /// it, and turns what changed into a layer (none when nothing did).
    fn in_rootfs(
        &self,
        state: &State,
        work: impl FnOnce(&Workspace, &Path) -> Result<Vec<PathBuf>>,
    ) -> Result<Option<LayerBlob>> {
        let space = Workspace::new(&self.work)?;
        let upper = space.mkdir("upper")?;
        let workdir = space.mkdir("overlay-work")?;
        let merged = space.path("merged");
        space.overlay(&merged, &self.lowers(state)?, Some((&upper, &workdir)))?;
        let excluded = work(&space, &merged)?;
        space.unmount_all();
        let empty = std::fs::read_dir(&upper).map(|mut d| d.next().is_none()).unwrap_or(true);
        if empty {
            return Ok(None);
        }
        let excluded: Vec<PathBuf> = excluded.iter().map(|p| berth_sys::fs::relative(p)).collect();
        // Mount points a step made (and nothing put in them) are not part of its layer.
        // The directories made to hold them stay, as buildah leaves them.
        let excluded: Vec<PathBuf> = excluded
            .into_iter()
            .filter(|p| {
                let path = upper.join(p);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {
                        std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false)
                    }
                    Ok(m) => (m.is_file() && m.len() == 0) || m.file_type().is_socket(),
                    Err(_) => false,
                }
            })
            .collect();
        let left = count_entries(&upper, &excluded);
        if left == 0 {
            return Ok(None);
        }
        let layer = berth_image::diff::store_layer(self.store, |out| {
            berth_image::diff::write_layer(&upper, out, &|p| excluded.iter().any(|e| e == p))
                .map(drop)
        })?;
        Ok(Some(layer))
    }

    fn finish_layer_step(
        &self,
        state: &mut State,
        key: String,
        created_by: &str,
        layer: Option<LayerBlob>,
    ) -> Result<()> {
        let history = History {
            created: Some(berth_stdx::time::format_rfc3339(berth_stdx::time::unix_now())),
            created_by: Some(created_by.to_owned()),
            comment: Some("berth build".into()),
            empty_layer: layer.is_none(),
            ..History::default()
        };
        let mut config = state.config.clone();
        match layer {
            Some(layer) => self.commit(state, config, Some((layer, history)), key),
            None => {
                config.history.push(history);
                self.commit(state, config, None, key)
            }
        }
    }

    /// Takes the step's result from the cache when it is there (and --no-cache is not).
    fn cached(&self, state: &mut State, key: &str, step: Option<&StepInfo<'_>>) -> Result<bool> {
        if self.options.no_cache {
            return Ok(false);
        }
        let Some(image) = self.store.build_cache(key)? else { return Ok(false) };
        state.config = image.config.clone();
        state.image = Some(image);
        state.key = key.to_owned();
        if let Some(step) = step {
            self.host.event(Event::Cached { number: step.number });
        }
        Ok(true)
    }

    fn user_identity(
        &self,
        state: &State,
        root: &Path,
        instruction: &Instruction,
    ) -> Result<berth_task::user::Identity> {
        let user = state.config.config.as_ref().and_then(|c| c.user.clone()).unwrap_or_default();
        let layers = [root.to_path_buf()];
        let passwd = berth_task::user::read_from_layers(&layers, Path::new("/etc/passwd"));
        let group = berth_task::user::read_from_layers(&layers, Path::new("/etc/group"));
        berth_task::user::resolve(&user, passwd.as_deref(), group.as_deref())
            .map_err(|e| self.error(instruction, format!("USER {user}: {e}")))
    }

    fn run(
        &self,
        state: &mut State,
        instruction: &Instruction,
        stage: &Stage,
        step: &StepInfo<'_>,
    ) -> Result<()> {
        let shell: Vec<String> = state
            .config
            .config
            .as_ref()
            .and_then(|c| c.extra.get("Shell"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        let mut args = match &instruction.args {
            Args::Exec(words) => words.clone(),
            Args::Shell(text) => {
                let mut script = text.clone();
                if !instruction.heredocs.is_empty() {
                    let only = instruction.heredocs.len() == 1
                        && text
                            .trim()
                            .trim_start_matches("<<")
                            .trim_start_matches('-')
                            .trim_matches(['"', '\''])
                            == instruction.heredocs[0].name;
                    if only {
                        script = instruction.heredocs[0].content.clone();
                    } else {
                        for doc in &instruction.heredocs {
                            script.push('\n');
                            script.push_str(&doc.content);
                            script.push_str(&doc.name);
                        }
                    }
                }
                shell.iter().cloned().chain([script]).collect()
            }
        };
        if args.is_empty() || args[0].is_empty() {
            return Err(self.error(instruction, "RUN needs a command"));
        }
        // A here-document that starts with #! is a script for that interpreter: it is
        // mounted as an executable file and run, as BuildKit does.
        let mut script = None;
        if let (Args::Shell(_), [doc]) = (&instruction.args, instruction.heredocs.as_slice()) {
            if doc.content.starts_with("#!") && args.last() == Some(&doc.content) {
                let target = "/dev/.berth-heredoc".to_owned();
                args = vec![target.clone()];
                script = Some(RunMount {
                    key: format!("script:{}", chain("", &doc.content)),
                    kind: MountKind::Script { content: doc.content.clone() },
                    target,
                });
            }
        }
        let network = match instruction.flag("network") {
            None | Some("default") => self.options.network,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(self
                    .error(instruction, format!("--network={other}: use default, none or host")))
            }
        };
        let mut mounts = self.parse_mounts(state, instruction, stage)?;
        mounts.extend(script);
        // As BuildKit: the first agent mount is the step's SSH_AUTH_SOCK.
        let agent_socket = mounts
            .iter()
            .find(|m| matches!(m.kind, MountKind::Ssh { .. }))
            .map(|m| format!("SSH_AUTH_SOCK={}", m.target));
        // Build args are in the step's environment but not in the image.
        let mut env = state.env();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_owned());
        }
        let mut arg_env = Vec::new();
        for (name, value) in &state.args {
            if let Some(value) = value {
                if !env.iter().any(|e| e.split('=').next() == Some(name.as_str())) {
                    arg_env.push(format!("{name}={value}"));
                }
            }
        }
        for name in PREDEFINED_ARGS {
            if let Some(value) = self.options.build_args.get(*name) {
                arg_env.push(format!("{name}={value}"));
            }
        }
        let mount_keys: Vec<String> = mounts.iter().map(|m| m.key.clone()).collect();
        let material = format!(
            "RUN\n{}\n{}\n{}\n{:?}\n{}",
            json!(args),
            json!(arg_env
                .iter()
                .filter(|e| !PREDEFINED_ARGS.iter().any(|p| e.starts_with(&format!("{p}="))))
                .collect::<Vec<_>>()),
            json!(mount_keys),
            network,
            state.workdir()
        );
        let key = chain(&state.key, &material);
        let created_by = format!("RUN {}", instruction.args.shell_text().trim());
        self.host.event(Event::Step {
            number: step.number,
            stage: step.label,
            index: step.index,
            total: step.total,
            text: &instruction.text,
        });
        if self.cached(state, &key, Some(step))? {
            return Ok(());
        }
        let started = Instant::now();
        env.extend(arg_env);
        if let Some(socket) = agent_socket {
            env.retain(|e| !e.starts_with("SSH_AUTH_SOCK="));
            env.push(socket);
        }
        let cwd = state.workdir();
        let layer = self.in_rootfs(state, |space, merged| {
            let root = std::fs::File::open(merged).map_err(|e| setup("open the build root", e))?;
            let existed = |path: &str| {
                berth_sys::fs::open_in_root(
                    root.as_fd(),
                    Path::new(path),
                    berth_sys::nix::fcntl::OFlag::O_PATH,
                )
                .is_ok()
            };
            let mut made: Vec<PathBuf> = Vec::new();
            for target in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
                .iter()
                .map(|s| s.to_string())
                .chain(mounts.iter().map(|m| m.target.clone()))
            {
                // Every missing component of a mount point is the step's, not the image's.
                let mut prefix = PathBuf::from("/");
                for component in Path::new(&target).components().skip(1) {
                    prefix.push(component);
                    if !existed(&prefix.to_string_lossy()) {
                        made.push(prefix.clone());
                    }
                }
            }
            Target { root: root.as_fd(), attributes: Attributes::default() }
                .make_dir(Path::new(&cwd))
                .map_err(|e| self.error(instruction, format!("WORKDIR {cwd}: {e}")))?;
            let identity = self.user_identity(state, merged, instruction)?;
            let etc = space.mkdir("etc")?;
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let files = [
                (
                    "hosts",
                    "127.0.0.1\tlocalhost berth-build\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                        .to_owned(),
                ),
                ("hostname", "berth-build\n".to_owned()),
                ("resolv.conf", if network == Network::None { String::new() } else { resolv }),
            ];
            for (name, content) in files {
                std::fs::write(etc.join(name), content)
                    .map_err(|e| setup(format!("write {}", etc.join(name).display()), e))?;
            }
            let mut step_mounts = Vec::new();
            // Agent forwards live until the step's container has ended.
            let mut forwards = Vec::new();
            for mount in &mounts {
                step_mounts.push(self.prepare_mount(space, mount, instruction, &mut forwards)?);
            }
            let bundle = space.mkdir("bundle")?;
            let spec = spec::run_spec(&spec::RunStep {
                args: args.clone(),
                env: env.clone(),
                cwd: cwd.clone(),
                uid: identity.uid,
                gid: identity.gid,
                // As Docker: the primary group is also a supplementary one.
                additional_gids: if identity.additional_gids.is_empty() {
                    vec![identity.gid]
                } else {
                    identity.additional_gids.clone()
                },
                rootfs: merged,
                etc_dir: &etc,
                network,
                mounts: step_mounts,
                cgroup: format!("/berth-build/{}", space.id),
            });
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec_pretty(&spec).unwrap_or_default(),
            )
            .map_err(|e| setup("write the step's config.json", e))?;
            self.execute(space, &bundle, instruction, step)?;
            drop(forwards);
            Ok(made)
        })?;
        self.finish_layer_step(state, key, &created_by, layer)?;
        self.host.event(Event::Done { number: step.number, elapsed: started.elapsed() });
        Ok(())
    }

    /// Runs the step's container in the foreground, relaying its output line by line.
    fn execute(
        &self,
        space: &Workspace,
        bundle: &Path,
        instruction: &Instruction,
        step: &StepInfo<'_>,
    ) -> Result<()> {
        let mut child = std::process::Command::new(&self.options.exe)
            .args(["runtime", "--root"])
            .arg(self.work.join("runtime"))
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&space.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| setup(format!("run {}", self.options.exe.display()), e))?;
        let (sender, receiver) = std::sync::mpsc::channel::<String>();
        let mut readers = Vec::new();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sender = sender.clone();
            readers.push(std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            let text = text.trim_end_matches(['\n', '\r']);
                            // A progress bar's \r-separated updates: show the last.
                            let text = text.rsplit('\r').next().unwrap_or(text);
                            if sender.send(text.to_owned()).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        drop(sender);
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        for line in receiver {
            self.host.event(Event::Output { number: step.number, line: &line });
            tail.push_back(line);
            if tail.len() > 10 {
                tail.pop_front();
            }
        }
        for reader in readers {
            let _ = reader.join();
        }
        let status = child.wait().map_err(|e| setup("wait for the step", e))?;
        if status.success() {
            return Ok(());
        }
        let shown: Vec<String> = tail.into_iter().map(|l| format!("    {l}")).collect();
        let mut message =
            match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                (Some(code), _) => format!("the command exited with code {code}"),
                (None, Some(signal)) => format!("the step was killed by signal {signal}"),
                (None, None) => "the step ended without an exit code".to_owned(),
            };
        if !shown.is_empty() {
            message.push_str(&format!("; its last lines:\n{}", shown.join("\n")));
        }
        Err(self.error(instruction, message))
    }

    fn parse_mounts(
        &self,
        state: &State,
        instruction: &Instruction,
        stage: &Stage,
    ) -> Result<Vec<RunMount>> {
        let mut out = Vec::new();
        for text in instruction.flag_values("mount") {
            let text = self.expand(state, instruction, stage, text, false)?.remove(0);
            let mut fields: HashMap<String, String> = HashMap::new();
            for part in text.split(',') {
                let (k, v) = part.split_once('=').unwrap_or((part, "true"));
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
            let kind = fields.get("type").cloned().unwrap_or_else(|| "bind".into());
            let target =
                ["target", "dst", "destination"].iter().find_map(|k| fields.get(*k)).cloned();
            let readonly =
                fields.get("readonly").or(fields.get("ro")).is_some_and(|v| v != "false")
                    || (kind == "bind"
                        && fields.get("rw").is_none_or(|v| v == "false")
                        && fields.get("readwrite").is_none_or(|v| v == "false"));
            let mount = match kind.as_str() {
                "bind" => {
                    let target = target.ok_or_else(|| {
                        self.error(instruction, "--mount=type=bind needs target=")
                    })?;
                    let source = fields
                        .get("source")
                        .or(fields.get("src"))
                        .cloned()
                        .unwrap_or_else(|| ".".into());
                    let from = fields.get("from").cloned();
                    RunMount {
                        key: format!(
                            "bind:{}:{}:{}:{readonly}",
                            self.source_key(from.as_deref(), &source, instruction)?,
                            source,
                            target
                        ),
                        kind: MountKind::Bind { source, from, readonly },
                        target,
                    }
                }
                "cache" => {
                    let target = target.ok_or_else(|| {
                        self.error(instruction, "--mount=type=cache needs target=")
                    })?;
                    let id = fields.get("id").cloned().unwrap_or_else(|| target.clone());
                    let (uid, gid, mode) = ownership(&fields, 0o755);
                    // A cache's content is not part of the key: that is what makes it a cache.
                    RunMount {
                        key: format!("cache:{id}:{target}:{uid}:{gid}:{mode:o}"),
                        kind: MountKind::Cache { id, uid, gid, mode },
                        target,
                    }
                }
                "tmpfs" => {
                    let target = target.ok_or_else(|| {
                        self.error(instruction, "--mount=type=tmpfs needs target=")
                    })?;
                    RunMount { key: format!("tmpfs:{target}"), kind: MountKind::Tmpfs, target }
                }
                "secret" => {
                    let id = fields.get("id").cloned().or_else(|| {
                        target.as_ref().and_then(|t| {
                            Path::new(t).file_name().map(|n| n.to_string_lossy().into_owned())
                        })
                    });
                    let Some(id) = id else {
                        return Err(
                            self.error(instruction, "--mount=type=secret needs id= or target=")
                        );
                    };
                    let target = target.unwrap_or_else(|| format!("/run/secrets/{id}"));
                    let required = fields.get("required").is_some_and(|v| v != "false");
                    let source = self.options.secrets.get(&id).cloned();
                    if source.is_none() && required {
                        return Err(self.error(instruction, format!("the secret {id:?} is required: pass it with --secret id={id},src=FILE")));
                    }
                    let (uid, gid, mode) = ownership(&fields, 0o400);
                    // The secret's content is not part of the key: it never reaches the image.
                    RunMount {
                        key: format!("secret:{id}:{target}:{uid}:{gid}:{mode:o}"),
                        kind: MountKind::Secret { source, uid, gid, mode },
                        target,
                    }
                }
                "ssh" => {
                    let id = fields.get("id").cloned().unwrap_or_else(|| "default".into());
                    let required = fields.get("required").is_some_and(|v| v != "false");
                    if self.ssh.socket(&id).is_none() {
                        if required {
                            return Err(self.error(instruction, format!("the SSH agent {id:?} is required: pass it with --ssh {id} (your SSH_AUTH_SOCK) or --ssh {id}=KEYFILE")));
                        }
                        // As BuildKit: an optional agent that was not given is no mount.
                        continue;
                    }
                    let number = out
                        .iter()
                        .filter(|m: &&RunMount| matches!(m.kind, MountKind::Ssh { .. }))
                        .count();
                    let target =
                        target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{number}"));
                    let (uid, gid, mode) = ownership(&fields, 0o600);
                    // The agent's keys are not part of the key: they never reach the image.
                    RunMount {
                        key: format!("ssh:{id}:{target}:{uid}:{gid}:{mode:o}"),
                        kind: MountKind::Ssh { id, uid, gid, mode },
                        target,
                    }
                }
                other => {
                    return Err(self.error(
                        instruction,
                        format!(
                            "unknown mount type {other:?}: use bind, cache, tmpfs, secret or ssh"
                        ),
                    ))
                }
            };
            if !mount.target.starts_with('/') {
                let target = format!("{}/{}", state.workdir().trim_end_matches('/'), mount.target);
                out.push(RunMount { target, ..mount });
            } else {
                out.push(mount);
            }
        }
        Ok(out)
    }

    /// What a bind mount's source is, for the cache key: the content it shows.
    fn source_key(
        &self,
        from: Option<&str>,
        source: &str,
        instruction: &Instruction,
    ) -> Result<String> {
        match from {
            Some(from) => match self.stage_by_name(from) {
                Some(index) => Ok(self
                    .wait_for(index)
                    .map_err(|e| self.error(instruction, format!("stage {from:?} failed: {e}")))?
                    .identity()),
                None => {
                    let image =
                        self.host.image(from, false).map_err(|e| self.error(instruction, e))?;
                    Ok(image.record.id.to_string())
                }
            },
            None => {
                let context = self.context.as_ref().ok_or_else(|| {
                    self.error(
                        instruction,
                        "there is no build context to mount (the Dockerfile came from stdin)",
                    )
                })?;
                let mut hasher = Sha256::new();
                for source in
                    context.expand(source).map_err(|e| self.error(instruction, e.to_string()))?
                {
                    context
                        .hash(&source, &mut hasher)
                        .map_err(|e| self.error(instruction, e.to_string()))?;
                }
                Ok(hex(hasher))
            }
        }
    }

    fn prepare_mount(
        &self,
        space: &Workspace,
        mount: &RunMount,
        instruction: &Instruction,
        forwards: &mut Vec<crate::ssh::Forward>,
    ) -> Result<StepMount> {
        let target = mount.target.clone();
        Ok(match &mount.kind {
            MountKind::Tmpfs => StepMount::Tmpfs { target },
            MountKind::Ssh { id, uid, gid, mode } => {
                let agent = self.ssh.socket(id).ok_or_else(|| {
                    self.error(instruction, format!("no SSH agent {id:?}: pass --ssh {id}"))
                })?;
                let socket = space.fresh("ssh");
                forwards.push(
                    crate::ssh::Forward::start(&socket, agent, *uid, *gid, *mode)
                        .map_err(|e| setup("forward the SSH agent", e))?,
                );
                StepMount::Bind { source: socket, target, readonly: false }
            }
            MountKind::Script { content } => {
                let path = space.fresh("script");
                std::fs::write(&path, content)
                    .map_err(|e| setup(format!("write {}", path.display()), e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| setup(format!("chmod {}", path.display()), e))?;
                StepMount::Bind { source: path, target, readonly: true }
            }
            MountKind::Cache { id, uid, gid, mode } => {
                let name: String = id
                    .chars()
                    .map(
                        |c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' },
                    )
                    .collect();
                let digest = chain("", id);
                let dir = self.work.join("cache-mounts").join(format!(
                    "{}-{}",
                    name.trim_matches('_'),
                    &digest[..12]
                ));
                if !dir.exists() {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| setup(format!("create {}", dir.display()), e))?;
                    let _ = std::os::unix::fs::chown(&dir, Some(*uid), Some(*gid));
                    let _ = std::fs::set_permissions(
                        &dir,
                        std::os::unix::fs::PermissionsExt::from_mode(*mode),
                    );
                }
                StepMount::Bind { source: dir, target, readonly: false }
            }
            MountKind::Secret { source, uid, gid, mode } => match source {
                Some(source) => {
                    // A private copy with the mount's owner and mode (BuildKit's 0:0 0400 by
                    // default), so no other user of the host reads it meanwhile.
                    let copy = space.fresh("secret");
                    let mut from = std::fs::File::open(source).map_err(|e| {
                        self.error(
                            instruction,
                            format!("read the secret {}: {e}", source.display()),
                        )
                    })?;
                    let mut to = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o400)
                        .open(&copy)
                        .map_err(|e| setup(format!("write {}", copy.display()), e))?;
                    std::io::copy(&mut from, &mut to)
                        .map_err(|e| setup(format!("write {}", copy.display()), e))?;
                    std::os::unix::fs::fchown(&to, Some(*uid), Some(*gid))
                        .map_err(|e| setup(format!("chown {}", copy.display()), e))?;
                    to.set_permissions(std::fs::Permissions::from_mode(*mode))
                        .map_err(|e| setup(format!("chmod {}", copy.display()), e))?;
                    StepMount::Bind { source: copy, target, readonly: true }
                }
                None => StepMount::Tmpfs { target },
            },
            MountKind::Bind { source, from, readonly } => {
                let root = match from {
                    Some(from) => {
                        let state_image = match self.stage_by_name(from) {
                            Some(index) => self
                                .wait_for(index)
                                .map_err(|e| self.error(instruction, e))?
                                .image
                                .clone(),
                            None => Some(
                                self.host
                                    .image(from, false)
                                    .map_err(|e| self.error(instruction, e))?,
                            ),
                        };
                        let lowers = match &state_image {
                            Some(image) => self.store.lower_dirs(image)?,
                            None => Vec::new(),
                        };
                        let at = space.fresh("from");
                        space.overlay(&at, &lowers, None)?;
                        SourceRoot::filesystem(&at)
                            .map_err(|e| self.error(instruction, e.to_string()))?
                    }
                    None => {
                        let context = self.context.as_ref().ok_or_else(|| {
                            self.error(instruction, "there is no build context to mount")
                        })?;
                        if context.has_ignores() {
                            // What .dockerignore leaves out is not in the mount either: the
                            // step sees a copy of what the context sends.
                            let filtered = space.fresh("context");
                            std::fs::create_dir_all(&filtered)
                                .map_err(|e| setup(format!("create {}", filtered.display()), e))?;
                            let handle = std::fs::File::open(&filtered)
                                .map_err(|e| setup(format!("open {}", filtered.display()), e))?;
                            let target =
                                Target { root: handle.as_fd(), attributes: Attributes::default() };
                            let mut single_file = None;
                            for found in context
                                .expand(source)
                                .map_err(|e| self.error(instruction, e.to_string()))?
                            {
                                let meta = std::fs::metadata(found.path()).map_err(|e| {
                                    self.error(instruction, format!("{}: {e}", found.name))
                                })?;
                                if !meta.is_dir() {
                                    single_file = Path::new(&found.name)
                                        .file_name()
                                        .map(|n| n.to_string_lossy().into_owned());
                                }
                                let dest = if meta.is_dir() {
                                    PathBuf::from("/")
                                } else {
                                    Path::new("/").join(
                                        Path::new(&found.name).file_name().unwrap_or_default(),
                                    )
                                };
                                target
                                    .copy(context, &found, &dest)
                                    .map_err(|e| self.error(instruction, e.to_string()))?;
                            }
                            let root = SourceRoot::filesystem(&filtered)
                                .map_err(|e| self.error(instruction, e.to_string()))?;
                            let pattern = single_file.as_deref().unwrap_or(".");
                            return self.bind_source(
                                space,
                                root,
                                pattern,
                                mount,
                                instruction,
                                *readonly,
                            );
                        }
                        SourceRoot::context(&context.dir, Ignore::default())
                            .map_err(|e| self.error(instruction, e.to_string()))?
                    }
                };
                self.bind_source(space, root, source, mount, instruction, *readonly)?
            }
        })
    }

    /// A bind mount of `source` inside `root`: read-only binds show it through its
    /// descriptor, read-write ones through an overlay whose writes are the step's only.
    fn bind_source(
        &self,
        space: &Workspace,
        root: SourceRoot,
        source: &str,
        mount: &RunMount,
        instruction: &Instruction,
        readonly: bool,
    ) -> Result<StepMount> {
        let target = mount.target.clone();
        let found = root.expand(source).map_err(|e| self.error(instruction, e.to_string()))?;
        let first = found
            .into_iter()
            .next()
            .ok_or_else(|| self.error(instruction, format!("{source:?} not found")))?;
        let meta = std::fs::metadata(first.path())
            .map_err(|e| self.error(instruction, format!("{source:?}: {e}")))?;
        if !meta.is_dir() && !meta.is_file() {
            return Err(self.error(instruction, format!("{source:?} is not a file or directory")));
        }
        if meta.is_file() {
            if !readonly {
                return Err(self.error(
                    instruction,
                    format!("{source:?}: a read-write bind mount must be a directory"),
                ));
            }
            // A file: a private copy, so nothing the step does reaches the source.
            let copy = space.fresh("file");
            let mut from = std::fs::File::open(first.path())
                .map_err(|e| self.error(instruction, e.to_string()))?;
            let mut to = std::fs::File::create(&copy)
                .map_err(|e| setup(format!("write {}", copy.display()), e))?;
            std::io::copy(&mut from, &mut to)
                .map_err(|e| setup(format!("write {}", copy.display()), e))?;
            return Ok(StepMount::Bind { source: copy, target, readonly: true });
        }
        // Bound through its descriptor: no path string the context or image chose ever
        // reaches mount(2)'s options.
        let view = space.fresh("bound");
        space.bind_readonly(&first.path(), &view)?;
        if readonly {
            return Ok(StepMount::Bind { source: view, target, readonly: true });
        }
        let upper = space.fresh("mount-upper");
        let work = space.fresh("mount-work");
        for dir in [&upper, &work] {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("create {}", dir.display()), e))?;
        }
        let at = space.fresh("mount");
        space.overlay(&at, &[view], Some((&upper, &work)))?;
        Ok(StepMount::Bind { source: at, target, readonly: false })
    }

    fn copy(
        &self,
        state: &mut State,
        instruction: &Instruction,
        stage: &Stage,
        step: &StepInfo<'_>,
    ) -> Result<()> {
        let add = instruction.keyword == "ADD";
        let mut words = match &instruction.args {
            Args::Exec(words) => {
                let mut out = Vec::new();
                for word in words {
                    out.push(self.expand(state, instruction, stage, word, false)?.remove(0));
                }
                out
            }
            Args::Shell(text) => {
                let mut out = Vec::new();
                for word in text.split_whitespace() {
                    if word.starts_with("<<") && !instruction.heredocs.is_empty() {
                        out.push(word.to_owned());
                    } else {
                        out.push(self.expand(state, instruction, stage, word, false)?.remove(0));
                    }
                }
                out
            }
        };
        if words.len() < 2 {
            return Err(self.error(
                instruction,
                format!("{} needs a source and a destination", instruction.keyword),
            ));
        }
        let dest_written = words.pop().unwrap_or_default();
        let workdir = state.workdir();
        let dest = if dest_written.starts_with('/') {
            dest_written.clone()
        } else {
            format!("{}/{}", workdir.trim_end_matches('/'), dest_written)
        };
        let dest_is_dir =
            dest_written.ends_with('/') || dest_written == "." || dest_written.ends_with("/.");
        let from = match instruction.flag("from") {
            Some(from) => Some(self.expand(state, instruction, stage, from, false)?.remove(0)),
            None => None,
        };
        if add && from.is_some() {
            return Err(self.error(instruction, "ADD has no --from: use COPY --from"));
        }
        let chown = match instruction.flag("chown") {
            Some(c) => Some(self.expand(state, instruction, stage, c, false)?.remove(0)),
            None => None,
        };
        let chmod = match instruction.flag("chmod") {
            Some(text) => {
                let text = self.expand(state, instruction, stage, text, false)?.remove(0);
                Some(u32::from_str_radix(&text, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(
                    || {
                        self.error(
                            instruction,
                            format!("--chmod={text}: use an octal mode such as 0755"),
                        )
                    },
                )?)
            }
            None => None,
        };
        let parents = match instruction.flag("parents") {
            None | Some("false") => false,
            Some("" | "true") => true,
            Some(other) => {
                return Err(self.error(instruction, format!("--parents={other}: use true or false")))
            }
        };
        let mut excludes: Vec<String> = Vec::new();
        for pattern in instruction.flag_values("exclude") {
            excludes.push(self.expand(state, instruction, stage, pattern, false)?.remove(0));
        }
        // For --from sources the patterns are all there is to leave out.
        let from_excludes =
            Ignore::parse(&excludes.join("\n")).map_err(|e| self.error(instruction, e))?;
        // What the sources are, for the key and for the copy.
        enum Origin {
            Context,
            Stage(usize),
            Image(Box<Image>),
        }
        let origin = match &from {
            None => Origin::Context,
            Some(name) => match self.stage_by_name(name) {
                Some(index) => Origin::Stage(index),
                None => Origin::Image(Box::new(
                    self.host
                        .image(name, false)
                        .map_err(|e| {
                            let stages: Vec<&str> =
                                self.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                            self.error(
                                instruction,
                                format!(
                                    "--from={name}: no stage is named {name:?} (the stages are: {}), and as an image: {e}",
                                    stages.join(", ")
                                ),
                            )
                        })?,
                )),
            },
        };
        let mut urls = Vec::new();
        let mut git_sources = Vec::new();
        let mut heredocs = Vec::new();
        let mut sources = Vec::new();
        for word in &words {
            if let Some(name) =
                word.strip_prefix("<<").map(|n| n.trim_start_matches('-').trim_matches(['"', '\'']))
            {
                if let Some(doc) = instruction.heredocs.iter().find(|d| d.name == name) {
                    let content = if doc.expand {
                        self.expand(state, instruction, stage, &doc.content, false)?.remove(0)
                    } else {
                        doc.content.clone()
                    };
                    heredocs.push((name.to_owned(), content));
                    continue;
                }
            }
            if crate::git::is_git(word) {
                if !add {
                    return Err(self.error(
                        instruction,
                        format!("{word}: COPY takes files from the context; use ADD for a git repository"),
                    ));
                }
                let parsed = crate::git::parse(word)
                    .map_err(|e| self.error(instruction, format!("{word}: {e}")))?;
                git_sources.push(parsed);
                continue;
            }
            if word.starts_with("http://") || word.starts_with("https://") {
                if !add {
                    return Err(self.error(
                        instruction,
                        format!("{word}: COPY takes files from the context; use ADD for URLs"),
                    ));
                }
                urls.push(word.clone());
                continue;
            }
            sources.push(word.clone());
        }
        // With --parents each source keeps its path below the context (or below a `/./`
        // in it); without, only its own name.
        let patterns: Vec<(String, String)> =
            sources
                .iter()
                .map(|written| {
                    if parents {
                        parents_pivot(written)
                    } else {
                        (written.clone(), String::new())
                    }
                })
                .collect();
        let checksum = instruction.flag("checksum").map(str::to_owned);
        if checksum.is_some() && urls.len() + git_sources.len() != 1 {
            return Err(self.error(instruction, "--checksum needs exactly one URL source"));
        }
        let keep_git_dir = match instruction.flag("keep-git-dir") {
            None => false,
            Some(text) => {
                match self.expand(state, instruction, stage, text, false)?.remove(0).as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(self.error(
                            instruction,
                            format!("--keep-git-dir={other}: use true or false"),
                        ))
                    }
                }
            }
        };
        if keep_git_dir && git_sources.is_empty() {
            return Err(self.error(instruction, "--keep-git-dir is for a git repository source"));
        }
        let downloads_space = if urls.is_empty() && git_sources.is_empty() {
            None
        } else {
            Some(Workspace::new(&self.work)?)
        };
        let mut checkouts = Vec::new();
        for (index, git) in git_sources.iter().enumerate() {
            let dir = downloads_space
                .as_ref()
                .map(|s| s.path(&format!("git-{index}")))
                .unwrap_or_default();
            let checkout = crate::git::checkout(git, &dir, self.ssh.socket("default"))
                .map_err(|e| self.error(instruction, format!("{}: {e}", git.remote)))?;
            if let Some(expected) = &checksum {
                let wanted = expected.strip_prefix("sha1:").unwrap_or(expected);
                if wanted.len() < 7 || !checkout.commit.starts_with(wanted) {
                    return Err(self.error(
                        instruction,
                        format!(
                            "{}: the commit is {}, not {expected} as --checksum says",
                            git.remote, checkout.commit
                        ),
                    ));
                }
            }
            let mut root = checkout.dir.clone();
            if let Some(subdir) = &git.subdir {
                root = root.join(subdir);
                let real = std::fs::canonicalize(&root).map_err(|_| {
                    self.error(
                        instruction,
                        format!("{}: the repository has no directory {subdir:?}", git.remote),
                    )
                })?;
                let top = std::fs::canonicalize(&checkout.dir)
                    .map_err(|e| setup("read a checkout", e))?;
                if !real.starts_with(&top) || !real.is_dir() {
                    return Err(self.error(
                        instruction,
                        format!(
                            "{}: {subdir:?} is not a directory inside the repository",
                            git.remote
                        ),
                    ));
                }
            }
            checkouts.push((root, checkout.commit));
        }
        let mut downloads = Vec::new();
        for (index, url) in urls.iter().enumerate() {
            let dir = downloads_space.as_ref().map(|s| s.dir.clone()).unwrap_or_default();
            let fetched = crate::fetch::fetch(url, &dir, index)
                .map_err(|e| self.error(instruction, format!("{url}: {e}")))?;
            if let Some(expected) = &checksum {
                if *expected != fetched.digest {
                    return Err(self.error(
                        instruction,
                        format!(
                            "{url}: the content's digest is {}, not {expected} as --checksum says",
                            fetched.digest
                        ),
                    ));
                }
            }
            downloads.push(fetched);
        }
        let mut hasher = Sha256::new();
        hasher.update(
            format!(
                "{}\n{dest}\n{dest_is_dir}\n{chown:?}\n{chmod:?}\n{excludes:?}\n{}",
                instruction.keyword,
                if parents { "parents\n" } else { "" }
            )
            .as_bytes(),
        );
        for fetched in &downloads {
            hasher.update(
                format!("download:{}:{}:{:?}\n", fetched.name, fetched.digest, fetched.mtime)
                    .as_bytes(),
            );
        }
        // A repository's content is its commit.
        for (git, (_, commit)) in git_sources.iter().zip(&checkouts) {
            hasher.update(
                format!(
                    "git:{}:{:?}:{:?}:{commit}:{keep_git_dir}\n",
                    git.remote, git.reference, git.subdir
                )
                .as_bytes(),
            );
        }
        for (name, content) in &heredocs {
            hasher.update(format!("heredoc:{name}:{}\n", content.len()).as_bytes());
            hasher.update(content.as_bytes());
        }
        let context_root;
        let root: Option<&SourceRoot> = match &origin {
            Origin::Context if !sources.is_empty() => {
                let context = self.context.as_ref().ok_or_else(|| self.error(instruction, "there is no build context (the Dockerfile came from stdin): COPY has nothing to copy from"))?;
                if excludes.is_empty() {
                    Some(context)
                } else {
                    let mut text = ignore_text(self.options, &context.dir);
                    for pattern in &excludes {
                        text.push('\n');
                        text.push_str(pattern);
                    }
                    context_root = SourceRoot::context(
                        &context.dir,
                        Ignore::parse(&text).map_err(|e| self.error(instruction, e))?,
                    )
                    .map_err(|e| self.error(instruction, e.to_string()))?;
                    Some(&context_root)
                }
            }
            _ => None,
        };
        if let Some(root) = root {
            let mut count = 0;
            for (pattern, _) in &patterns {
                for source in
                    root.expand(pattern).map_err(|e| self.error(instruction, e.to_string()))?
                {
                    root.hash(&source, &mut hasher)
                        .map_err(|e| self.error(instruction, e.to_string()))?;
                    count += 1;
                }
            }
            hasher.update(format!("count:{count}").as_bytes());
        }
        let origin_key = match &origin {
            Origin::Context => "context".to_owned(),
            Origin::Stage(index) => self
                .wait_for(*index)
                .map_err(|e| {
                    self.error(
                        instruction,
                        format!("stage {:?} failed: {e}", from.as_deref().unwrap_or_default()),
                    )
                })?
                .identity(),
            Origin::Image(image) => image.record.id.to_string(),
        };
        hasher.update(format!("origin:{origin_key}\nsources:{sources:?}").as_bytes());
        let key = chain(&state.key, &hex(hasher));
        let created_by =
            format!("{} {}", instruction.keyword, instruction.args.shell_text().trim());
        self.host.event(Event::Step {
            number: step.number,
            stage: step.label,
            index: step.index,
            total: step.total,
            text: &instruction.text,
        });
        if self.cached(state, &key, Some(step))? {
            return Ok(());
        }
        let started = Instant::now();
        let layer = self.in_rootfs(state, |space, merged| {
            let root_dir = std::fs::File::open(merged).map_err(|e| setup("open the build root", e))?;
            let owner = match &chown {
                Some(spec) => {
                    let layers = [merged.to_path_buf()];
                    let passwd = berth_task::user::read_from_layers(&layers, Path::new("/etc/passwd"));
                    let group = berth_task::user::read_from_layers(&layers, Path::new("/etc/group"));
                    let spec = if spec.contains(':') || spec.parse::<u32>().is_err() { spec.clone() } else { format!("{spec}:{spec}") };
                    let identity = berth_task::user::resolve(&spec, passwd.as_deref(), group.as_deref())
                        .map_err(|e| self.error(instruction, format!("--chown={spec}: {e}")))?;
                    Some((identity.uid, identity.gid))
                }
                None => None,
            };
            let target = Target { root: root_dir.as_fd(), attributes: Attributes { owner, mode: chmod } };
            let fail = |e: copy::CopyError| self.error(instruction, e.to_string());
            let stage_root;
            let from_root: Option<&SourceRoot> = match &origin {
                Origin::Context => root,
                Origin::Stage(index) => {
                    let done = self.wait_for(*index).map_err(|e| self.error(instruction, e))?;
                    let lowers = match &done.image {
                        Some(image) => self.store.lower_dirs(image)?,
                        None => Vec::new(),
                    };
                    let at = space.path("from");
                    space.overlay(&at, &lowers, None)?;
                    stage_root = SourceRoot::filesystem(&at).map_err(fail)?.with_ignore(from_excludes.clone());
                    Some(&stage_root)
                }
                Origin::Image(image) => {
                    let at = space.path("from");
                    space.overlay(&at, &self.store.lower_dirs(image)?, None)?;
                    stage_root = SourceRoot::filesystem(&at).map_err(fail)?.with_ignore(from_excludes.clone());
                    Some(&stage_root)
                }
            };
            let mut resolved = Vec::new();
            if let Some(from_root) = from_root {
                for (pattern, pivot) in &patterns {
                    for source in from_root.expand(pattern).map_err(fail)? {
                        let kept = parents.then(|| {
                            let name = source.name.as_str();
                            if pivot.is_empty() { name.to_owned() } else {
                                name.strip_prefix(pivot.as_str()).map(|r| r.trim_start_matches('/').to_owned()).unwrap_or_else(|| name.to_owned())
                            }
                        });
                        resolved.push((source, kept));
                    }
                }
            }
            if parents && !resolved.is_empty() && !dest_is_dir && !target.is_dir(Path::new(&dest)) {
                return Err(self.error(instruction, format!("with --parents the destination is a directory and ends with a /: {dest_written}/")));
            }
            let many = resolved.len() + heredocs.len() + downloads.len() + checkouts.len() > 1;
            if many && !dest_is_dir && !target.is_dir(Path::new(&dest)) {
                return Err(self.error(instruction, format!(
                    "with more than one source the destination must be a directory and end with a /: {dest_written}/"
                )));
            }
            for fetched in &downloads {
                let path = if dest_is_dir || target.is_dir(Path::new(&dest)) {
                    Path::new(&dest).join(&fetched.name)
                } else {
                    PathBuf::from(&dest)
                };
                let mut file = std::fs::File::open(&fetched.path).map_err(|e| setup("read a download", e))?;
                // Docker: downloads are 0600 and dated by the server's Last-Modified.
                target.write_file(&path, &mut file, 0o600, (0, 0), fetched.mtime).map_err(fail)?;
            }
            for (dir, _) in &checkouts {
                // The repository's content (without .git unless kept) into the directory.
                let ignore = if keep_git_dir { Ignore::default() } else {
                    Ignore::parse(".git\n**/.git").map_err(|e| self.error(instruction, e))?
                };
                let repo = SourceRoot::context(dir, ignore).map_err(fail)?;
                for found in repo.expand(".").map_err(fail)? {
                    target.copy(&repo, &found, Path::new(&dest)).map_err(fail)?;
                }
            }
            for (name, content) in &heredocs {
                let path = if dest_is_dir || target.is_dir(Path::new(&dest)) { Path::new(&dest).join(name) } else { PathBuf::from(&dest) };
                target.write_file(&path, &mut content.as_bytes(), 0o644, (0, 0), None).map_err(fail)?;
            }
            for (source, kept) in &resolved {
                let from_root = from_root.ok_or_else(|| self.error(instruction, "no source to copy from"))?;
                let meta = std::fs::metadata(source.path()).map_err(|e| self.error(instruction, format!("{}: {e}", source.name)))?;
                if let Some(kept) = kept.as_deref().filter(|k| !k.is_empty() && *k != ".") {
                    // The kept parents are made as the source has them (mode and time).
                    let at = Path::new(&dest).join(kept);
                    let base = &source.name[..source.name.len() - kept.len()];
                    let mut walked = String::new();
                    for part in kept.split('/') {
                        if !walked.is_empty() { walked.push('/'); }
                        walked.push_str(part);
                        if walked.len() == kept.len() && !meta.is_dir() { break; }
                        // The parent as it is named, not as a pattern (a directory may be called `[x]`).
                        let dir_meta = from_root.metadata(&format!("{base}{walked}")).ok();
                        use std::os::unix::fs::MetadataExt;
                        let (mode, mtime) = dir_meta.map(|m| (m.mode(), Some(m.mtime()))).unwrap_or((0o755, None));
                        target.write_dir(&Path::new(&dest).join(&walked), mode, (0, 0), mtime).map_err(fail)?;
                    }
                    if meta.is_dir() {
                        target.copy(from_root, source, &at).map_err(fail)?;
                    } else if meta.is_file() {
                        let mut file = std::fs::File::open(source.path()).map_err(|e| self.error(instruction, format!("{}: {e}", source.name)))?;
                        use std::os::unix::fs::MetadataExt;
                        target.write_file(&at, &mut file, meta.permissions().mode(), (0, 0), Some(meta.mtime())).map_err(fail)?;
                    } else {
                        return Err(self.error(instruction, format!("{} is not a regular file, a directory or a symlink: devices, fifos and sockets are not copied", source.name)));
                    }
                    continue;
                }
                if meta.is_dir() {
                    target.copy(from_root, source, Path::new(&dest)).map_err(fail)?;
                    continue;
                }
                if !meta.is_file() {
                    // Never read a device or a fifo as root: it would copy a host disk or hang.
                    return Err(self.error(instruction, format!("{} is not a regular file, a directory or a symlink: devices, fifos and sockets are not copied", source.name)));
                }
                let base = Path::new(&source.name).file_name().map(|n| n.to_owned()).unwrap_or_default();
                let path = if dest_is_dir || target.is_dir(Path::new(&dest)) { Path::new(&dest).join(&base) } else { PathBuf::from(&dest) };
                if add && matches!(&origin, Origin::Context) {
                    let mut head = vec![0u8; 512];
                    let mut file = std::fs::File::open(source.path()).map_err(|e| self.error(instruction, e.to_string()))?;
                    let n = read_up_to(&mut file, &mut head);
                    head.truncate(n);
                    let dir = Path::new(&dest);
                    let open = || std::fs::File::open(source.path()).map_err(|e| self.error(instruction, e.to_string()));
                    match copy::archive_kind(&head) {
                        Some(copy::Archive::Tar) => {
                            copy::extract(&target, open()?, dir).map_err(fail)?;
                            continue;
                        }
                        Some(kind) => {
                            // Only a compressed tar is unpacked; other compressed files are
                            // copied as they are, as Docker does.
                            let mut inner = vec![0u8; 512];
                            let mut decoder = copy::decompress(kind, open()?).map_err(|e| self.error(instruction, format!("{}: {e}", source.name)))?;
                            let mut filled = 0;
                            while filled < inner.len() {
                                match decoder.read(&mut inner[filled..]) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => filled += n,
                                }
                            }
                            drop(decoder);
                            inner.truncate(filled);
                            if copy::archive_kind(&inner) == Some(copy::Archive::Tar) {
                                let reader = copy::decompress(kind, open()?).map_err(|e| self.error(instruction, format!("{}: {e}", source.name)))?;
                                copy::extract(&target, reader, dir).map_err(fail)?;
                                continue;
                            }
                        }
                        None => {}
                    }
                }
                let mut file = std::fs::File::open(source.path()).map_err(|e| self.error(instruction, format!("{}: {e}", source.name)))?;
                use std::os::unix::fs::MetadataExt;
                target.write_file(&path, &mut file, meta.permissions().mode(), (0, 0), Some(meta.mtime())).map_err(fail)?;
            }
            Ok(Vec::new())
        })?;
        self.finish_layer_step(state, key, &created_by, layer)?;
        self.host.event(Event::Done { number: step.number, elapsed: started.elapsed() });
        Ok(())
    }
}

/// `COPY --parents`: the pattern to match and the leading part not kept. A `/./` in a
/// source marks where the kept path begins (`./a/./b/*.txt` keeps `b/...`), as BuildKit
/// reads it; without one the whole path below the context is kept.
fn parents_pivot(written: &str) -> (String, String) {
    match written.find("/./") {
        Some(at) => {
            let before = crate::ignore::clean(&written[..at]);
            let pattern = format!("{}/{}", &written[..at], &written[at + 3..]);
            (pattern, if before == "." { String::new() } else { before })
        }
        None => (written.to_owned(), String::new()),
    }
}

fn read_up_to(file: &mut std::fs::File, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

fn count_entries(upper: &Path, excluded: &[PathBuf]) -> usize {
    fn walk(dir: &Path, rel: &Path, excluded: &[PathBuf]) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        let mut count = 0;
        for entry in entries.flatten() {
            let rel = rel.join(entry.file_name());
            if !excluded.contains(&rel) {
                count += 1;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                count += walk(&entry.path(), &rel, excluded);
            }
        }
        count
    }
    walk(upper, Path::new(""), excluded)
}

/// `uid=`, `gid=` and `mode=` (octal) of a `--mount`, root's and `mode` by default.
fn ownership(fields: &HashMap<String, String>, mode: u32) -> (u32, u32, u32) {
    let number = |key: &str| fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mode = fields
        .get("mode")
        .and_then(|v| u32::from_str_radix(v.trim_start_matches("0o"), 8).ok())
        .unwrap_or(mode);
    (number("uid"), number("gid"), mode)
}

/// A change a metadata instruction makes to the image config.
type ConfigChange = Box<dyn FnOnce(&mut RunConfig) -> Result<()>>;

struct StepInfo<'a> {
    number: usize,
    label: &'a str,
    index: usize,
    total: usize,
}

#[derive(Debug, Clone)]
struct RunMount {
    key: String,
    kind: MountKind,
    target: String,
}

#[derive(Debug, Clone)]
enum MountKind {
    Bind {
        source: String,
        from: Option<String>,
        readonly: bool,
    },
    Cache {
        id: String,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    Tmpfs,
    Secret {
        source: Option<PathBuf>,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// A socket forwarding to the build's SSH agent `id`.
    Ssh {
        id: String,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// A here-document run as a script (`#!...`).
    Script {
        content: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_ownership() {
        let fields: HashMap<String, String> =
            [("uid".to_owned(), "1000".to_owned()), ("mode".to_owned(), "0750".to_owned())].into();
        assert_eq!(ownership(&fields, 0o400), (1000, 0, 0o750));
        assert_eq!(ownership(&HashMap::new(), 0o400), (0, 0, 0o400));
    }

    #[test]
    fn parents_keep_what_follows_a_pivot() {
        assert_eq!(
            parents_pivot("packages/*/package.json"),
            ("packages/*/package.json".into(), String::new())
        );
        assert_eq!(parents_pivot("./x/./y/*.txt"), ("./x/y/*.txt".into(), "x".into()));
        assert_eq!(parents_pivot("a/b/./c"), ("a/b/c".into(), "a/b".into()));
        assert_eq!(parents_pivot("./a"), ("./a".into(), String::new()));
    }

    #[test]
    fn keys_chain() {
        assert_ne!(chain("a", "RUN x"), chain("b", "RUN x"));
        assert_eq!(chain("a", "RUN x"), chain("a", "RUN x"));
    }
}
