//! `berth build`: flags as Docker's, progress as BuildKit's (plain lines, or on a terminal
//! a live view: each running step with its time and its latest output line, finished
//! steps printed above it), base images from the store or pulled.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use berth_build::{Event, Host, Network, Options};
use berth_image::progress::Silent;
use berth_image::pull::PullOptions;
use berth_image::{Image, ImageStore, Reference};
use clap::Args;

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name the image NAME[:TAG] (repeatable).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads it from stdin).
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
    /// A build argument: KEY=VALUE, or KEY to take it from the environment.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build this stage and what it needs, not the last one.
    #[arg(long)]
    pub target: Option<String>,
    /// Run every step, ignoring the cache.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// Pull base images even when they are in the store.
    #[arg(long)]
    pub pull: bool,
    /// A label for the image, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Write the image id to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE (repeatable).
    #[arg(long)]
    pub secret: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh and ADD of git@ repositories:
    /// default|ID[=SOCKET|KEY[,KEY...]] (repeatable; a bare id is your SSH_AUTH_SOCK).
    #[arg(long)]
    pub ssh: Vec<String>,
    /// The network RUN steps have: default (the host's), host, or none.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// The platform to build for (this machine's only: linux/amd64 here).
    #[arg(long)]
    pub platform: Option<String>,
    /// Also write the image as an archive: type=oci|docker,dest=FILE.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// How to show progress: auto, plain or tty.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Print only the image id.
    #[arg(short, long)]
    pub quiet: bool,
    /// The build context: a directory, or `-` for a Dockerfile on stdin without a context.
    pub context: String,
}

struct Display<'a> {
    global: &'a Global,
    store: ImageStore,
    quiet: bool,
    started: Mutex<HashMap<usize, Instant>>,
    out: Mutex<std::io::Stderr>,
    live: Option<Live>,
}

/// The terminal view: a spinner line per running step (its title, time and latest output
/// line), and a line above them for each step that ended.
struct Live {
    multi: indicatif::MultiProgress,
    steps: Mutex<HashMap<usize, (indicatif::ProgressBar, String)>>,
}

impl Live {
    fn new() -> Live {
        Live { multi: indicatif::MultiProgress::new(), steps: Mutex::new(HashMap::new()) }
    }

    fn start(&self, number: usize, title: String) {
        let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner:.blue} {prefix} {elapsed:.dim} {wide_msg:.dim}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(title.clone());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        self.steps.lock().unwrap_or_else(|p| p.into_inner()).insert(number, (bar, title));
    }

    fn output(&self, number: usize, line: &str) {
        if let Some((bar, _)) = self.steps.lock().unwrap_or_else(|p| p.into_inner()).get(&number) {
            bar.set_message(line.trim_end().to_owned());
        }
    }

    /// The step ended: its spinner goes, a line says how.
    fn end(&self, number: usize, how: impl FnOnce(&str) -> String) {
        let step = self.steps.lock().unwrap_or_else(|p| p.into_inner()).remove(&number);
        if let Some((bar, title)) = step {
            bar.finish_and_clear();
            self.multi.remove(&bar);
            let _ = self.multi.println(how(&title));
        }
    }
}

impl Display<'_> {
    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if let Some(live) = &self.live {
            let _ = live.multi.println(text);
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{text}");
    }
}

impl Host for Display<'_> {
    fn image(&self, name: &str, pull: bool) -> Result<Image, String> {
        if !pull {
            match self.store.resolve(name) {
                Ok(image) => return Ok(image),
                Err(berth_image::Error::ImageNotFound { .. }) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
        let reference: Reference = name.parse().map_err(|e: berth_image::Error| e.to_string())?;
        self.line(&format!("pulling {}", reference.familiar()));
        let options = PullOptions {
            client: crate::images::client_options(self.global, &reference.registry)
                .map_err(|e| format!("{e:#}"))?,
            mirrors: crate::images::mirrors(self.global).map_err(|e| format!("{e:#}"))?,
            ..PullOptions::default()
        };
        let pulled = berth_image::pull::pull(&self.store, &reference, &options, &Silent)
            .map_err(|e| format!("{name} is not in the store and cannot be pulled: {e}"))?;
        self.store.resolve(&pulled.id.to_string()).map_err(|e| e.to_string())
    }

    fn event(&self, event: Event<'_>) {
        if let (Some(live), false) = (&self.live, self.quiet) {
            match event {
                Event::Step { number, stage, index, total, text } => {
                    live.start(number, format!("[{stage} {index}/{total}] {text}"))
                }
                Event::Cached { number } => live.end(number, |title| format!("=> CACHED {title}")),
                Event::Output { number, line } => live.output(number, line),
                Event::Done { number, elapsed } => {
                    live.end(number, |title| format!("=> {title} {:.1}s", elapsed.as_secs_f64()))
                }
                Event::Warning { message } => {
                    let _ = live.multi.println(format!("WARNING: {message}"));
                }
            }
            return;
        }
        match event {
            Event::Step { number, stage, index, total, text } => {
                self.started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(number, Instant::now());
                self.line(&format!("#{number} [{stage} {index}/{total}] {text}"));
            }
            Event::Cached { number } => self.line(&format!("#{number} CACHED")),
            Event::Output { number, line } => {
                let elapsed = self
                    .started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&number)
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                self.line(&format!("#{number} {elapsed:.3} {line}"));
            }
            Event::Done { number, elapsed } => {
                self.line(&format!("#{number} DONE {:.1}s", elapsed.as_secs_f64()))
            }
            Event::Warning { message } => {
                let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(out, "WARNING: {message}");
            }
        }
    }
}

fn key_values(list: &[String], flag: &str, from_env: bool) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for item in list {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                map.insert(k.to_owned(), v.to_owned());
            }
            None if from_env && !item.is_empty() => {
                // Docker: `--build-arg NAME` takes the value from the environment, if set.
                if let Ok(value) = std::env::var(item) {
                    map.insert(item.clone(), value);
                }
            }
            _ => bail!("{flag} {item:?}: use KEY=VALUE"),
        }
    }
    Ok(map)
}

pub fn build(global: &Global, args: BuildArgs) -> Result<i32> {
    // The Dockerfile's own ignore file, beside it (used when it exists).
    let mut ignore_file: Option<PathBuf> = None;
    let (context, dockerfile, dockerfile_name) = if args.context == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the Dockerfile from stdin")?;
        (None, text, "Dockerfile".to_owned())
    } else {
        let dir = PathBuf::from(&args.context);
        if !dir.is_dir() {
            bail!("the build context {:?} is not a directory: give a directory, or - to read a Dockerfile from stdin", args.context);
        }
        match args.file.as_deref() {
            Some("-") => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the Dockerfile from stdin")?;
                (Some(dir), text, "Dockerfile".to_owned())
            }
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the Dockerfile {file}"))?;
                ignore_file = Some(PathBuf::from(format!("{file}.dockerignore")));
                (Some(dir), text, file.to_owned())
            }
            None => {
                let path = dir.join("Dockerfile");
                let path = if path.exists() || !dir.join("dockerfile").exists() {
                    path
                } else {
                    dir.join("dockerfile")
                };
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("cannot read {}: give the Dockerfile with -f", path.display())
                })?;
                ignore_file = Some(PathBuf::from(format!("{}.dockerignore", path.display())));
                (Some(dir), text, "Dockerfile".to_owned())
            }
        }
    };
    let host = berth_image::manifest::Platform::host();
    let architecture = host.architecture.clone();
    if let Some(platform) = &args.platform {
        let wanted = format!("linux/{architecture}");
        if !platform
            .split(',')
            .all(|p| p.trim() == wanted || p.trim().starts_with(&format!("{wanted}/")))
        {
            bail!("--platform {platform}: this machine builds {wanted} images only (no emulation)");
        }
    }
    let network: Network = args.network.parse().map_err(anyhow::Error::msg).context("--network")?;
    if !matches!(args.progress.as_str(), "auto" | "plain" | "tty") {
        bail!("--progress {:?}: use auto, plain or tty", args.progress);
    }
    let mut secrets = BTreeMap::new();
    let mut env_secrets = Vec::new();
    for secret in &args.secret {
        let mut id = None;
        let mut src = None;
        for part in secret.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_owned()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("type", "file")) => {}
                Some(("env", v)) => {
                    let value = std::env::var(v).with_context(|| {
                        format!("--secret {secret}: the environment has no {v}")
                    })?;
                    let dir = global.root.join("build");
                    std::fs::create_dir_all(&dir)?;
                    // Removed when the build ends (the guard lives until then).
                    let file = tempfile::NamedTempFile::new_in(&dir)?;
                    std::fs::write(file.path(), value)?;
                    src = Some(file.path().to_path_buf());
                    env_secrets.push(file);
                }
                _ => bail!("--secret {secret:?}: use id=ID,src=FILE"),
            }
        }
        let id = id.or_else(|| {
            src.as_ref().and_then(|s| s.file_name()).map(|n| n.to_string_lossy().into_owned())
        });
        let (Some(id), Some(src)) = (id, src) else {
            bail!("--secret {secret:?}: use id=ID,src=FILE")
        };
        if !src.is_file() {
            bail!("--secret {secret:?}: {} is not a file", src.display());
        }
        secrets.insert(id, src);
    }
    let mut ssh = BTreeMap::new();
    for value in &args.ssh {
        let (id, paths) = match value.split_once('=') {
            Some((id, list)) => {
                (id, list.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect())
            }
            None => (
                value.as_str(),
                std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from).into_iter().collect(),
            ),
        };
        if id.is_empty() || id.contains([',', '/']) {
            bail!("--ssh {value:?}: use default or ID, then =SOCKET or =KEYFILE[,KEYFILE]");
        }
        if ssh.insert(id.to_owned(), paths).is_some() {
            bail!("--ssh {id} is given twice");
        }
    }
    let output = match &args.output {
        Some(text) => {
            let mut kind = "docker".to_owned();
            let mut dest = None;
            for part in text.split(',') {
                match part.split_once('=') {
                    Some(("type", v)) => kind = v.to_owned(),
                    Some(("dest", v)) => dest = Some(PathBuf::from(v)),
                    None if !part.contains('=') => dest = Some(PathBuf::from(part)),
                    _ => bail!("--output {text:?}: use type=oci|docker,dest=FILE"),
                }
            }
            if !matches!(kind.as_str(), "oci" | "docker" | "tar") {
                bail!("--output type={kind}: use oci or docker");
            }
            Some(dest.context("--output needs dest=FILE")?)
        }
        None => None,
    };
    let mut names = Vec::new();
    for tag in &args.tags {
        let reference: Reference = tag.parse().with_context(|| format!("-t {tag}"))?;
        names.push(reference.to_string());
    }
    let options = Options {
        root: global.root.clone(),
        exe: std::env::current_exe().context("cannot find the berth binary")?,
        context,
        dockerfile,
        dockerfile_name,
        ignore_file: ignore_file.filter(|path| path.is_file()),
        build_args: key_values(&args.build_args, "--build-arg", true)?,
        target: args.target.clone(),
        no_cache: args.no_cache,
        pull: args.pull,
        labels: key_values(&args.labels, "--label", false)?,
        secrets,
        ssh,
        network,
        os: "linux".into(),
        architecture,
        variant: host.variant.clone(),
    };
    let display = Display {
        global,
        store: crate::images::open_store(global)?,
        quiet: args.quiet,
        started: Mutex::new(HashMap::new()),
        out: Mutex::new(std::io::stderr()),
        // The live view needs a terminal (indicatif draws nothing elsewhere): `auto` and
        // `tty` take it on one, plain lines otherwise.
        live: (args.progress != "plain" && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .then(Live::new),
    };
    let started = Instant::now();
    let id = berth_build::build(&options, &display, names.clone());
    if let Some(live) = &display.live {
        // Steps still shown when the build stopped are the ones that failed (or were
        // cut short by the failure).
        let running: Vec<usize> =
            live.steps.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        for number in running {
            live.end(number, |title| format!("=> ERROR {title}"));
        }
    }
    drop(env_secrets);
    let id = id?;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, id.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dest) = &output {
        let file = std::fs::File::create(dest)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        let target = if names.is_empty() { vec![id.to_string()] } else { names.clone() };
        let mut writer =
            berth_image::archive::save(&display.store, &target, std::io::BufWriter::new(file))?;
        writer.flush()?;
    }
    if args.quiet {
        println!("{id}");
    } else {
        display.line(&format!("built {} in {:.1}s", id, started.elapsed().as_secs_f64()));
        for name in &names {
            let familiar =
                name.parse::<Reference>().map(|r| r.familiar()).unwrap_or_else(|_| name.clone());
            display.line(&format!("tagged {familiar}"));
        }
        println!("{id}");
    }
    Ok(0)
}

#[derive(Debug, clap::Subcommand)]
pub enum BuilderCommand {
    /// Remove the build cache (what no image uses is freed).
    Prune {
        /// Do not ask (berth never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
        /// Also remove cache mounts (RUN --mount=type=cache).
        #[arg(short, long)]
        all: bool,
    },
}

pub fn builder(global: &Global, command: BuilderCommand) -> Result<i32> {
    match command {
        BuilderCommand::Prune { force: _, all } => {
            let store = crate::images::open_store(global)?;
            let (entries, freed) = store.prune_build_cache()?;
            if all {
                let dir = global.root.join("build/cache-mounts");
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("cannot remove {}", dir.display()))?;
                }
            }
            println!("Deleted build cache entries: {entries}");
            println!("Total reclaimed space: {}", crate::images::human_size(freed));
            Ok(0)
        }
    }
}
