//! Image commands: pull, push, images, inspect, history, tag, rmi, prune, login, logout,
//! save, load, import. Output follows Docker's.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use berth_image::config::RunConfig;
use berth_image::credentials::{self, Credentials};
use berth_image::manifest::Platform;
use berth_image::progress::{Progress, Silent};
use berth_image::pull::PullOptions;
use berth_image::registry::{ClientOptions, RegistryClient};
use berth_image::{Digest, Image, ImageStore, Reference, Removed};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull: NAME[:TAG] or NAME@DIGEST.
    pub name: String,
    /// Platform of a multi-platform image, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Print only the image name at the end.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Local image to push; its name says where, unless DESTINATION is given.
    pub name: String,
    /// Where to push it instead: REGISTRY/REPOSITORY[:TAG].
    pub destination: Option<String>,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only images of this repository (and tag).
    pub repository: Option<String>,
    /// Only image ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show repository digests.
    #[arg(long)]
    pub digests: bool,
    /// Show whole ids.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format: table (default), json, or a Go template (`table {{.Repository}}\t{{.Tag}}`).
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Accepted for Docker compatibility: berth has no intermediate images to hide.
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Download an image.
    Pull(PullArgs),
    /// Upload an image.
    Push(PushArgs),
    /// Show images as JSON.
    Inspect(InspectArgs),
    /// Show how an image was made.
    History(HistoryArgs),
    /// Remove images.
    #[command(alias = "remove")]
    Rm(RemoveArgs),
    /// Name an image.
    Tag(TagArgs),
    /// Remove unused images and what only they used.
    Prune(PruneArgs),
    /// Write images to an archive.
    Save(SaveArgs),
    /// Read images from an archive.
    Load(LoadArgs),
    /// Make an image from a root filesystem tar.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub name: String,
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Remove even when containers use the image, or it has several names.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Every image no container uses, not only the nameless ones.
    #[arg(short, long)]
    pub all: bool,
    /// Do not ask (berth never asks; accepted for Docker compatibility).
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host[:port] (default: Docker Hub).
    pub registry: Option<String>,
    #[arg(short, long)]
    pub username: Option<String>,
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    pub registry: Option<String>,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this file instead of standard input.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    #[arg(short, long)]
    pub quiet: bool,
    /// Platform to pick from multi-platform archives.
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tar file (gzip and zstd are recognized), or - for standard input.
    pub file: String,
    /// Name for the image: REPOSITORY[:TAG].
    pub reference: Option<String>,
    /// Dockerfile instructions for the config: CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, STOPSIGNAL, VOLUME.
    #[arg(short, long = "change")]
    pub changes: Vec<String>,
    /// A comment for the history.
    #[arg(short, long)]
    pub message: Option<String>,
}

/// Records an image event (`berth events`): Docker names the image by reference, or by
/// id when it has no name.
pub fn image_event(global: &Global, action: &str, id: &str, name: &str) {
    let attributes = std::iter::once(("name".to_owned(), name.to_owned())).collect();
    berth_engine::events::record(
        &global.root,
        &berth_engine::events::Event::new("image", action, id, attributes),
    );
}

pub fn open_store(global: &Global) -> Result<ImageStore> {
    ImageStore::open(&global.root)
        .with_context(|| format!("cannot open the image store under {}", global.root.display()))
}

/// The mirrors and per-host settings of `--registries-config` (none when the file is
/// missing; an unreadable or malformed one is an error naming it).
pub fn mirrors(
    global: &Global,
) -> Result<Option<std::sync::Arc<berth_image::mirrors::Registries>>> {
    let registries = berth_image::mirrors::Registries::load(&global.registries_config)?;
    Ok((!registries.is_empty()).then(|| std::sync::Arc::new(registries)))
}

pub fn client_options(global: &Global, registry: &str) -> Result<ClientOptions> {
    let credentials = credentials::lookup(&credentials::default_path(), registry)?;
    Ok(ClientOptions { insecure: global.insecure_registries.clone(), credentials })
}

/// Bars on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    fn bar(&self, digest: &Digest) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bars.entry(digest.clone())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix}: {msg:<16} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(digest.short().to_owned());
                bar
            })
            .clone()
    }
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, total: u64, done: u64) {
        let bar = self.bar(digest);
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message("Downloading");
    }
    fn advance(&self, digest: &Digest, bytes: u64) {
        self.bar(digest).inc(bytes);
    }
    fn status(&self, digest: &Digest, status: &str) {
        let bar = self.bar(digest);
        bar.set_message(status.to_owned());
        if status != "Retrying" {
            bar.finish();
        }
    }
}

/// Plain lines elsewhere (logs, pipes, CI).
struct Lines;

impl Progress for Lines {
    fn start(&self, _: &Digest, _: u64, _: u64) {}
    fn advance(&self, _: &Digest, _: u64) {}
    fn status(&self, digest: &Digest, status: &str) {
        println!("{}: {status}", digest.short());
    }
}

fn progress(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars { multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()) })
    } else {
        Box::new(Lines)
    }
}

fn parse_platform(platform: Option<&str>) -> Result<Option<Platform>> {
    Ok(platform.map(Platform::parse).transpose()?)
}

/// Pulls `name`, printing what Docker prints; returns the image id.
pub fn pull_image(
    global: &Global,
    store: &ImageStore,
    name: &str,
    platform: Option<&str>,
    quiet: bool,
) -> Result<Digest> {
    let reference: Reference = name.parse()?;
    let options = PullOptions {
        platform: parse_platform(platform)?,
        client: client_options(global, &reference.registry)?,
        mirrors: mirrors(global)?,
        ..PullOptions::default()
    };
    if !quiet {
        println!(
            "{}: Pulling from {}",
            reference
                .tag
                .as_deref()
                .unwrap_or_else(|| reference.digest.as_ref().map_or("latest", |_| "digest")),
            reference.repository
        );
    }
    let before = store.resolve(&reference.to_string()).ok().map(|i| i.record.id);
    let reporter = progress(quiet);
    let pulled = berth_image::pull::pull(store, &reference, &options, reporter.as_ref())?;
    if quiet {
        println!("{}", reference);
    } else {
        println!("Digest: {}", pulled.digest);
        let status = if before.as_ref() == Some(&pulled.id) {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        println!("Status: {status} {}", reference.familiar());
        println!("{reference}");
    }
    image_event(global, "pull", &reference.to_string(), &reference.familiar());
    Ok(pulled.id)
}

pub fn pull(global: &Global, args: PullArgs) -> Result<i32> {
    let store = open_store(global)?;
    pull_image(global, &store, &args.name, args.platform.as_deref(), args.quiet)?;
    Ok(0)
}

pub fn push(global: &Global, args: PushArgs) -> Result<i32> {
    let store = open_store(global)?;
    let target: Reference = args.destination.as_deref().unwrap_or(&args.name).parse()?;
    if target.digest.is_some() {
        bail!("cannot push to a digest; give a tag");
    }
    if !args.quiet {
        println!("The push refers to repository [{}]", target.name());
    }
    let reporter = progress(args.quiet);
    let pushed = berth_image::push::push(
        &store,
        &args.name,
        &target,
        &client_options(global, &target.registry)?,
        reporter.as_ref(),
    )?;
    if args.quiet {
        println!("{}", pushed.reference);
    } else {
        println!(
            "{}: digest: {} size: {}",
            target.tag.as_deref().unwrap_or("latest"),
            pushed.digest,
            pushed.size
        );
    }
    image_event(global, "push", &target.to_string(), &target.familiar());
    Ok(0)
}

/// `4.26MB`, `123kB`: three significant digits, decimal units, as Docker prints sizes.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}{}", units[unit])
}

/// `2 hours ago`, as Docker says it.
pub fn ago(seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let delta = (now - seconds).max(0);
    let (value, unit) = match delta {
        0 => return "Less than a second ago".into(),
        d if d < 60 => (d, "second"),
        d if d < 3600 => (d / 60, "minute"),
        d if d < 86_400 * 2 => (d / 3600, "hour"),
        d if d < 86_400 * 14 => (d / 86_400, "day"),
        d if d < 86_400 * 60 => (d / (86_400 * 7), "week"),
        d if d < 86_400 * 365 * 2 => (d / (86_400 * 30), "month"),
        d => (d / (86_400 * 365), "year"),
    };
    match (value, unit) {
        (1, "hour") => "About an hour ago".into(),
        (1, "minute") => "About a minute ago".into(),
        (1, unit) => format!("1 {unit} ago"),
        (n, unit) => format!("{n} {unit}s ago"),
    }
}

fn created_seconds(image: &Image) -> i64 {
    image
        .config
        .created
        .as_deref()
        .and_then(berth_image::config::parse_rfc3339)
        .unwrap_or(image.record.created)
}

pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn list(global: &Global, args: ListArgs) -> Result<i32> {
    let store = open_store(global)?;
    let filter: Option<Reference> = args.repository.as_deref().map(str::parse).transpose()?;
    let explicit_tag = args
        .repository
        .as_deref()
        .is_some_and(|r| r.rsplit('/').next().is_some_and(|last| last.contains(':')));
    let mut rows = vec![if args.digests {
        vec![
            "REPOSITORY".into(),
            "TAG".into(),
            "DIGEST".into(),
            "IMAGE ID".into(),
            "CREATED".into(),
            "SIZE".into(),
        ]
    } else {
        vec!["REPOSITORY".into(), "TAG".into(), "IMAGE ID".into(), "CREATED".into(), "SIZE".into()]
    }];
    let mut json_rows = Vec::new();
    let mut ids = Vec::new();
    for image in store.list()? {
        let size = store.size(&image);
        let id = if args.no_trunc {
            image.record.id.to_string()
        } else {
            image.record.id.short().to_owned()
        };
        let created = created_seconds(&image);
        let repo_digests = store.db().repo_digests(&image.record.id)?;
        let mut names: Vec<(String, String)> = image
            .record
            .names
            .iter()
            .filter_map(|n| n.parse::<Reference>().ok())
            .filter(|r| {
                filter
                    .as_ref()
                    .is_none_or(|f| f.name() == r.name() && (!explicit_tag || f.tag == r.tag))
            })
            .map(|r| (r.familiar_name(), r.tag.unwrap_or_default()))
            .collect();
        if names.is_empty() {
            if filter.is_some() {
                continue;
            }
            names.push(("<none>".into(), "<none>".into()));
        }
        for (repository, tag) in names {
            let digest = repo_digests
                .iter()
                .find_map(|d| d.split_once('@').map(|(_, d)| d.to_owned()))
                .unwrap_or_else(|| "<none>".into());
            json_rows.push(json!({"Containers": "N/A", "CreatedAt": crate::containers::docker_time(created), "CreatedSince": ago(created), "Digest": digest, "ID": id, "Repository": repository, "SharedSize": "N/A", "Size": human_size(size), "Tag": tag, "UniqueSize": "N/A", "VirtualSize": human_size(size)}));
            let mut row = vec![repository, tag];
            if args.digests {
                row.push(digest);
            }
            row.extend([id.clone(), ago(created), human_size(size)]);
            rows.push(row);
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let listing = crate::template::Listing::parse(
        &args.format,
        &[("ID", "IMAGE ID"), ("CreatedSince", "CREATED"), ("CreatedAt", "CREATED AT")],
    )?;
    if args.quiet {
        for id in ids {
            println!("{id}");
        }
    } else if matches!(listing, crate::template::Listing::Table) {
        print!("{}", table(&rows));
    } else {
        print!("{}", listing.render(&json_rows)?);
    }
    Ok(0)
}

/// An image's run config with every field Docker's shows, defaults where the image says
/// nothing (clients read them without checking).
fn full_run_config(config: Option<&Value>) -> Value {
    let mut full = json!({
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false,
        "AttachStderr": false, "Tty": false, "OpenStdin": false, "StdinOnce": false, "Env": null,
        "Cmd": null, "Image": "", "Volumes": null, "WorkingDir": "", "Entrypoint": null,
        "OnBuild": null, "Labels": null,
    });
    if let (Some(all), Some(Value::Object(given))) = (full.as_object_mut(), config) {
        for (key, value) in given {
            all.insert(key.clone(), value.clone());
        }
    }
    full
}

pub fn image_json(store: &ImageStore, image: &Image) -> Result<Value> {
    let config: Value = serde_json::from_slice(&image.config_bytes)?;
    let size = store.size(image);
    // Every layer is a read-only lower (top first, as overlayfs's lowerdir wants them);
    // an image has no upper, merged or work directory of its own, so those are empty.
    let lower = store
        .lower_dirs(image)
        .map(|dirs| dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"))
        .unwrap_or_default();
    let graph = json!({"LowerDir": lower, "UpperDir": "", "MergedDir": "", "WorkDir": ""});
    Ok(json!({
        "Parent": "",
        // The config's own comment (a commit's message), as Docker shows it.
        "Comment": config.get("comment").and_then(Value::as_str).unwrap_or(""),
        "Container": "",
        "ContainerConfig": full_run_config(None),
        "DockerVersion": "",
        "VirtualSize": size,
        "Id": image.record.id.to_string(),
        "RepoTags": image.familiar_names(),
        "RepoDigests": store.db().repo_digests(&image.record.id)?.iter().map(|d| d.parse::<Reference>().map(|r| r.familiar()).unwrap_or_else(|_| d.clone())).collect::<Vec<_>>(),
        "Created": image.config.created,
        "Author": image.config.author.clone().unwrap_or_default(),
        "Config": full_run_config(config.get("config")),
        "Architecture": image.config.architecture,
        "Variant": image.config.variant,
        "Os": image.config.os,
        "Size": size,
        "RootFS": {"Type": "layers", "Layers": image.config.rootfs.diff_ids},
        "Metadata": {"LastTagTime": berth_image::config::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(image.record.created.max(0) as u64))},
        "GraphDriver": {"Name": "overlay2", "Data": graph},
        "Descriptor": {"mediaType": image.record.media_type, "digest": image.record.manifest.to_string(), "size": store.content.size(&image.record.manifest).unwrap_or(0)},
    }))
}

pub fn inspect(global: &Global, args: InspectArgs) -> Result<i32> {
    let store = open_store(global)?;
    let mut out = Vec::new();
    let mut status = 0;
    for name in &args.names {
        match store.resolve(name) {
            Ok(image) => out.push(image_json(&store, &image)?),
            Err(err) => {
                eprintln!("Error: {err}");
                status = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(status)
}

pub fn history(global: &Global, args: HistoryArgs) -> Result<i32> {
    let store = open_store(global)?;
    let image = store.resolve(&args.name)?;
    let mut rows = vec![vec![
        "IMAGE".to_owned(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    let mut layer = image.chain_ids.len();
    let entries: Vec<_> = image.config.history.iter().rev().collect();
    for (i, entry) in entries.iter().enumerate() {
        let size = if entry.empty_layer || layer == 0 {
            0
        } else {
            layer -= 1;
            store.snapshot(&image.chain_ids[layer])?.map_or(0, |s| s.size)
        };
        let mut created_by = entry.created_by.clone().unwrap_or_default();
        if !args.no_trunc && created_by.chars().count() > 45 {
            created_by = format!("{}…", created_by.chars().take(44).collect::<String>());
        }
        let created = entry
            .created
            .as_deref()
            .and_then(berth_image::config::parse_rfc3339)
            .map(ago)
            .unwrap_or_default();
        let id = if i == 0 { image.record.id.short().to_owned() } else { "<missing>".into() };
        rows.push(vec![
            id,
            created,
            created_by,
            human_size(size),
            entry.comment.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

pub fn tag(global: &Global, args: TagArgs) -> Result<i32> {
    let store = open_store(global)?;
    store.tag(&args.source, &args.target)?;
    let id = store.resolve(&args.target).map(|i| i.record.id.to_string()).unwrap_or_default();
    let target = args.target.parse::<Reference>().map(|r| r.familiar()).unwrap_or(args.target);
    image_event(global, "tag", &id, &target);
    Ok(0)
}

pub fn remove(global: &Global, args: RemoveArgs) -> Result<i32> {
    let store = open_store(global)?;
    let mut status = 0;
    for name in &args.names {
        let id = store.resolve(name).map(|i| i.record.id.to_string()).unwrap_or_default();
        match store.remove(name, args.force) {
            Ok(removed) => {
                for line in removed {
                    match line {
                        Removed::Untagged(name) => {
                            println!("Untagged: {name}");
                            image_event(global, "untag", &id, &name);
                        }
                        Removed::Deleted(id) => {
                            println!("Deleted: {id}");
                            image_event(global, "delete", &id.to_string(), &id.to_string());
                        }
                    }
                }
            }
            Err(err) => {
                eprintln!("Error: {err}");
                status = 1;
            }
        }
    }
    Ok(status)
}

pub fn image(global: &Global, command: ImageCommand) -> Result<i32> {
    match command {
        ImageCommand::Ls(args) => list(global, args),
        ImageCommand::Pull(args) => pull(global, args),
        ImageCommand::Push(args) => push(global, args),
        ImageCommand::Inspect(args) => inspect(global, args),
        ImageCommand::History(args) => history(global, args),
        ImageCommand::Rm(args) => remove(global, args),
        ImageCommand::Tag(args) => tag(global, args),
        ImageCommand::Save(args) => save(global, args),
        ImageCommand::Load(args) => load(global, args),
        ImageCommand::Import(args) => import(global, args),
        ImageCommand::Prune(args) => {
            let store = open_store(global)?;
            let (removed, freed) = store.prune(args.all)?;
            if !removed.is_empty() {
                println!("Deleted Images:");
                for id in removed {
                    println!("deleted: {id}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", human_size(freed));
            Ok(0)
        }
    }
}

fn registry_of(argument: Option<&str>) -> String {
    match argument {
        None => berth_image::reference::DOCKER_HUB.to_owned(),
        Some(text) => {
            let text = text.trim_start_matches("https://").trim_start_matches("http://");
            let host = text.split('/').next().unwrap_or(text);
            match host {
                "index.docker.io" | "registry-1.docker.io" => {
                    berth_image::reference::DOCKER_HUB.to_owned()
                }
                other => other.to_owned(),
            }
        }
    }
}

/// Asks for a password on the terminal with echo off, as `docker login` does; one line.
fn read_password() -> Result<String> {
    use berth_sys::nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("cannot ask for a password without a terminal: pass it with --password-stdin");
    }
    let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    // Echo goes off before the prompt shows, so nothing typed after it is echoed.
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("cannot turn the terminal's echo off")?;
    eprint!("Password: ");
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Err(err) = tcsetattr(&stdin, SetArg::TCSANOW, &saved) {
        eprintln!("cannot turn the terminal's echo back on ({err}): run `stty echo`");
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn login(global: &Global, args: LoginArgs) -> Result<i32> {
    let registry = registry_of(args.registry.as_deref());
    let username = match args.username {
        Some(username) => username,
        None => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    let password = match (args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(password), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            password
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => read_password()?,
    };
    if username.is_empty() || password.is_empty() {
        bail!("a username and a password are needed");
    }
    let credentials = Credentials { username, password };
    let client = RegistryClient::new(
        &registry,
        &ClientOptions {
            insecure: global.insecure_registries.clone(),
            credentials: Some(credentials.clone()),
        },
    );
    client.ping().with_context(|| format!("login to {registry} failed"))?;
    let path = credentials::default_path();
    credentials::store(&path, &registry, &credentials)?;
    println!("Login Succeeded (credentials saved in {})", path.display());
    Ok(0)
}

pub fn logout(_global: &Global, args: LogoutArgs) -> Result<i32> {
    let registry = registry_of(args.registry.as_deref());
    let path = credentials::default_path();
    if credentials::remove(&path, &registry)? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(0)
}

pub fn save(global: &Global, args: SaveArgs) -> Result<i32> {
    let store = open_store(global)?;
    match &args.output {
        Some(path) => {
            // Write beside the target and rename, so a failed save leaves no half archive.
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let temporary = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let writer = std::io::BufWriter::with_capacity(1 << 20, temporary);
            let writer = berth_image::archive::save(&store, &args.names, writer)?;
            let temporary = writer.into_inner().map_err(|e| e.into_error())?;
            temporary.as_file().sync_all()?;
            temporary.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write an archive to a terminal: use -o FILE or redirect the output");
            }
            let mut writer = berth_image::archive::save(
                &store,
                &args.names,
                std::io::BufWriter::new(stdout.lock()),
            )?;
            writer.flush()?;
        }
    }
    Ok(0)
}

pub fn load(global: &Global, args: LoadArgs) -> Result<i32> {
    let store = open_store(global)?;
    let platform = parse_platform(args.platform.as_deref())?;
    let loaded = match &args.input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            berth_image::archive::load(&store, file, path, platform.as_ref())?
        }
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no archive on standard input: use -i FILE or redirect a file in");
            }
            berth_image::archive::load(
                &store,
                std::io::stdin().lock(),
                Path::new("standard input"),
                platform.as_ref(),
            )?
        }
    };
    for image in loaded {
        image_event(
            global,
            "load",
            &image.id.to_string(),
            image.names.first().map_or(&image.id.to_string(), |n| n),
        );
        if image.names.is_empty() {
            println!("Loaded image ID: {}", image.id);
        }
        for name in image.names {
            let shown = name.parse::<Reference>().map(|r| r.familiar()).unwrap_or(name);
            println!("Loaded image: {shown}");
        }
    }
    Ok(0)
}

/// Applies `docker import --change` instructions to a run config.
pub fn apply_changes(run: &mut RunConfig, changes: &[String]) -> Result<()> {
    fn words(rest: &str) -> Vec<String> {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(list) => list,
            Err(_) => vec!["/bin/sh".into(), "-c".into(), rest.to_owned()],
        }
    }
    for change in changes {
        let (instruction, rest) =
            change.trim().split_once(char::is_whitespace).unwrap_or((change.trim(), ""));
        let rest = rest.trim();
        match instruction.to_ascii_uppercase().as_str() {
            "CMD" => run.cmd = Some(words(rest)),
            "ENTRYPOINT" => run.entrypoint = Some(words(rest)),
            "WORKDIR" => run.working_dir = Some(rest.to_owned()),
            "USER" => run.user = Some(rest.to_owned()),
            "STOPSIGNAL" => run.stop_signal = Some(rest.to_owned()),
            "ENV" => {
                let (key, value) = rest.split_once(['=', ' ']).with_context(|| format!("ENV needs KEY=VALUE: {change:?}"))?;
                let env = run.env.get_or_insert_with(Vec::new);
                env.retain(|e| e.split('=').next() != Some(key));
                env.push(format!("{key}={}", value.trim()));
            }
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    let port = if port.contains('/') { port.to_owned() } else { format!("{port}/tcp") };
                    run.exposed_ports.get_or_insert_with(Default::default).insert(port, json!({}));
                }
            }
            "VOLUME" => {
                for volume in words(rest).into_iter().filter(|v| v != "/bin/sh" && v != "-c") {
                    for path in volume.split_whitespace() {
                        run.volumes.get_or_insert_with(Default::default).insert(path.to_owned(), json!({}));
                    }
                }
            }
            "LABEL" => {
                let (key, value) = rest.split_once('=').with_context(|| format!("LABEL needs KEY=VALUE: {change:?}"))?;
                run.labels.get_or_insert_with(Default::default).insert(key.trim().to_owned(), value.trim().trim_matches('"').to_owned());
            }
            other => bail!("{other} cannot be used with --change: use CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME or WORKDIR"),
        }
    }
    Ok(())
}

pub fn import(global: &Global, args: ImportArgs) -> Result<i32> {
    let store = open_store(global)?;
    let reference: Option<Reference> = args.reference.as_deref().map(str::parse).transpose()?;
    let mut run = RunConfig::default();
    apply_changes(&mut run, &args.changes)?;
    let shown = args.message.clone().unwrap_or_else(|| args.file.clone());
    let id = if args.file == "-" {
        berth_image::archive::import(
            &store,
            std::io::stdin().lock(),
            &shown,
            Some(run),
            reference.as_ref(),
        )?
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file))?;
        berth_image::archive::import(&store, file, &shown, Some(run), reference.as_ref())?
    };
    image_event(global, "import", &id.to_string(), &id.to_string());
    println!("{id}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(77_800_000), "77.8MB");
        assert_eq!(human_size(123_000_000), "123MB");
        assert_eq!(human_size(1_000), "1kB");
    }

    #[test]
    fn changes_become_config() {
        let mut run = RunConfig::default();
        apply_changes(
            &mut run,
            &[
                "CMD [\"sh\",\"-c\",\"echo hi\"]".into(),
                "ENV A=1".into(),
                "EXPOSE 80".into(),
                "WORKDIR /srv".into(),
            ],
        )
        .expect("changes");
        assert_eq!(run.cmd, Some(vec!["sh".to_owned(), "-c".into(), "echo hi".into()]));
        assert_eq!(run.env, Some(vec!["A=1".to_owned()]));
        assert!(run.exposed_ports.expect("ports").contains_key("80/tcp"));
        assert_eq!(run.working_dir.as_deref(), Some("/srv"));
        assert!(apply_changes(&mut RunConfig::default(), &["RUN rm -rf /".into()]).is_err());
    }
}
