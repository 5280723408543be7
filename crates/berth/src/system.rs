//! Docker's housekeeping commands: `container prune`, `export`, `version`, `info`,
//! `system df` and `system prune`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_engine::container::Status;
use berth_engine::Engine;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cli::Global;
use crate::images::{human_size, open_store, table};

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Remove every stopped container.
    Prune {
        /// Do not ask (berth never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub container: String,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// A Go template over the JSON shown (`{{.Client.Version}}`), or json.
    #[arg(short, long)]
    pub format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show the space images, containers, volumes and the build cache use.
    Df,
    /// Remove stopped containers, unused networks, dangling images and the build cache.
    Prune {
        /// Every image no container uses, not only dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Also volumes no container uses.
        #[arg(long)]
        volumes: bool,
        /// Do not ask (berth never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
    /// System-wide information.
    Info(FormatArgs),
    /// What happens to containers, images, networks and volumes, as it happens.
    Events(EventsArgs),
    /// Serve the Docker Engine API (for the docker CLI, Compose, docker-py).
    Service(crate::dockerapi::ServiceArgs),
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Show events from this time on (RFC 3339, Unix seconds, or a duration ago: 10m).
    #[arg(long)]
    pub since: Option<String>,
    /// Stop at this time (same forms); without it, follow until interrupted.
    #[arg(long)]
    pub until: Option<String>,
    /// KEY=VALUE: type, event, container, image, network, volume, label, scope. Values
    /// of one key are ORed, keys ANDed.
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// `json`, or a Go template over each event (`{{.Action}} {{.Actor.Attributes.name}}`).
    #[arg(long)]
    pub format: Option<String>,
}

/// `berth events`: recorded events since `--since`, then new ones as they are recorded,
/// until `--until` (or forever).
pub fn events(global: &Global, args: EventsArgs) -> Result<i32> {
    use berth_engine::events::{self, Event};
    let mut filters: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for filter in &args.filter {
        let (key, value) = filter
            .split_once('=')
            .with_context(|| format!("bad filter {filter:?}: use KEY=VALUE"))?;
        if !matches!(
            key,
            "type" | "event" | "container" | "image" | "network" | "volume" | "label" | "scope"
        ) {
            bail!("invalid filter {key:?}: use type, event, container, image, network, volume, label or scope");
        }
        filters.entry(key.to_owned()).or_default().push(value.to_owned());
    }
    let since = args.since.as_deref().map(crate::containers::parse_time).transpose()?;
    let until = args.until.as_deref().map(crate::containers::parse_time).transpose()?;
    let template = match args.format.as_deref() {
        None | Some("" | "json") => None,
        Some(text) => Some(crate::template::Template::parse(text)?),
    };
    let json = args.format.as_deref() == Some("json");
    let nanos = |seconds: f64| (seconds * 1e9) as i64;
    let show = |event: &Event| -> Result<()> {
        if !event.matches(&filters) {
            return Ok(());
        }
        let line = if json || template.is_some() {
            let mut value = serde_json::to_value(event)?;
            // The legacy fields Docker still sends beside the new ones.
            if event.kind == "container" {
                value["status"] = json!(event.action);
                value["id"] = json!(event.actor.id);
                if let Some(image) = event.actor.attributes.get("image") {
                    value["from"] = json!(image);
                }
            }
            match &template {
                Some(template) => template.render(&value)?,
                None => value.to_string(),
            }
        } else {
            event.line()
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };
    let (past, mut position) = events::history(&global.root);
    if let Some(since) = since {
        for event in past.iter().filter(|e| e.time_nano >= nanos(since)) {
            if until.is_some_and(|u| event.time_nano > nanos(u)) {
                break;
            }
            show(event)?;
        }
    }
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let (new, next) = events::read_from(&global.root, &position);
        position = next;
        for event in &new {
            if until.is_some_and(|u| event.time_nano > nanos(u)) {
                return Ok(0);
            }
            if since.is_none_or(|s| event.time_nano >= nanos(s)) {
                show(event)?;
            }
        }
        if until.is_some_and(|u| now > u) {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn engine(global: &Global) -> Result<Engine> {
    Engine::open(&global.root)
        .with_context(|| format!("cannot open the berth root {}", global.root.display()))
}

/// Removes stopped containers; returns their ids and the bytes freed.
fn prune_containers(engine: &Engine) -> Result<(Vec<String>, u64)> {
    let mut removed = Vec::new();
    let mut freed = 0;
    for record in engine.list()? {
        if matches!(record.state.status, Status::Exited | Status::Created | Status::Dead) {
            let size = berth_stdx::fs::disk_usage(&engine.container_dir(&record.id).join("upper"));
            engine.remove(&record.id, false, false)?;
            freed += size;
            removed.push(record.id);
        }
    }
    Ok((removed, freed))
}

pub fn container(global: &Global, command: ContainerCommand) -> Result<i32> {
    match command {
        ContainerCommand::Prune { force: _ } => {
            let (removed, freed) = prune_containers(&engine(global)?)?;
            println!("Deleted Containers:");
            removed.iter().for_each(|id| println!("{id}"));
            println!();
            println!("Total reclaimed space: {}", human_size(freed));
            Ok(0)
        }
    }
}

/// `export`: the container's filesystem as one tar (volumes and the files berth mounts
/// over /etc are not part of it, as in Docker).
pub fn export(global: &Global, args: ExportArgs) -> Result<i32> {
    let engine = engine(global)?;
    let access = engine.rootfs_for_copy(&args.container)?;
    let write = |out: &mut dyn Write| -> Result<()> {
        let mut builder = tar::Builder::new(out);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &access.path).context("cannot write the archive")?;
        builder.finish().context("cannot write the archive")?;
        Ok(())
    };
    match &args.output {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let temporary = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let mut writer = std::io::BufWriter::new(temporary);
            write(&mut writer)?;
            let temporary = writer.into_inner().map_err(|e| e.into_error())?;
            temporary.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            if std::io::IsTerminal::is_terminal(&stdout) {
                bail!("refusing to write a tar archive to a terminal: use -o FILE or redirect the output");
            }
            let mut out = std::io::BufWriter::new(stdout.lock());
            write(&mut out)?;
            out.flush()?;
        }
    }
    Ok(0)
}

/// The running kernel's release ("" when /proc cannot tell).
fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}

/// This machine's architecture in OCI's names (`amd64`).
fn architecture() -> String {
    berth_image::manifest::Platform::host().architecture
}

fn print_formatted(format: Option<&str>, value: &Value, plain: impl FnOnce()) -> Result<()> {
    match format {
        Some("json") => println!("{value}"),
        Some(template) => {
            println!("{}", crate::template::Template::parse(template)?.render(value)?)
        }
        None => plain(),
    }
    Ok(())
}

pub fn version(_global: &Global, args: FormatArgs) -> Result<i32> {
    let kernel = kernel_version();
    let value = json!({
        "Client": {
            "Platform": {"Name": "berth"},
            "Version": env!("CARGO_PKG_VERSION"),
            "Os": "linux",
            "Arch": architecture(),
        },
        "Server": {
            "Platform": {"Name": "berth (no daemon: every command works on the root directly)"},
            "Version": env!("CARGO_PKG_VERSION"),
            "Os": "linux",
            "Arch": architecture(),
            "KernelVersion": kernel,
        },
    });
    print_formatted(args.format.as_deref(), &value, || {
        println!(
            "Client: berth\n Version:           {}\n OS/Arch:           linux/{}",
            env!("CARGO_PKG_VERSION"),
            architecture()
        );
        println!("\nServer: berth (no daemon)\n Engine:\n  Version:          {}\n  OS/Arch:          linux/{}\n  Kernel Version:   {kernel}", env!("CARGO_PKG_VERSION"), architecture());
    })?;
    Ok(0)
}

fn info(global: &Global, args: FormatArgs) -> Result<i32> {
    let engine = engine(global)?;
    let records = engine.list()?;
    let count = |s: Status| records.iter().filter(|r| r.state.status == s).count();
    let images = open_store(global)?.list()?.len();
    let cgroup_version =
        if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "2" } else { "1" };
    let memory = crate::containers::host_memory();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "Linux".into());
    let value = json!({
        "Containers": records.len(),
        "ContainersRunning": count(Status::Running),
        "ContainersPaused": count(Status::Paused),
        "ContainersStopped": count(Status::Exited) + count(Status::Created) + count(Status::Dead),
        "Images": images,
        "Driver": "overlay2",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version,
        "KernelVersion": kernel_version(),
        "OperatingSystem": os,
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": memory,
        "DockerRootDir": global.root,
        "Name": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "DefaultRuntime": "berth-runc",
    });
    print_formatted(args.format.as_deref(), &value, || {
        let v = &value;
        println!(
            "Containers: {}\n Running: {}\n Paused: {}\n Stopped: {}",
            v["Containers"], v["ContainersRunning"], v["ContainersPaused"], v["ContainersStopped"]
        );
        println!("Images: {}\nServer Version: {}\nStorage Driver: overlay2\nCgroup Driver: cgroupfs\nCgroup Version: {}", v["Images"], env!("CARGO_PKG_VERSION"), cgroup_version);
        println!("Default Runtime: berth-runc\nKernel Version: {}\nOperating System: {os}\nOSType: linux\nArchitecture: {}", v["KernelVersion"].as_str().unwrap_or(""), std::env::consts::ARCH);
        println!(
            "CPUs: {}\nTotal Memory: {}\nName: {}\nDocker Root Dir: {}",
            v["NCPU"],
            human_size(memory),
            v["Name"].as_str().unwrap_or(""),
            global.root.display()
        );
    })?;
    Ok(0)
}

pub fn system(global: &Global, command: SystemCommand) -> Result<i32> {
    match command {
        SystemCommand::Info(args) => info(global, args),
        SystemCommand::Events(args) => events(global, args),
        SystemCommand::Service(args) => crate::dockerapi::service(global, args),
        SystemCommand::Df => {
            let engine = engine(global)?;
            let store = open_store(global)?;
            let records = engine.list()?;
            let images = store.list()?;
            let used: std::collections::HashSet<String> =
                records.iter().map(|r| r.image_id.clone()).collect();
            let image_size: u64 = images.iter().map(|i| store.size(i)).sum();
            let reclaimable_images: u64 = images
                .iter()
                .filter(|i| !used.contains(&i.record.id.to_string()))
                .map(|i| store.size(i))
                .sum();
            let active_images =
                images.iter().filter(|i| used.contains(&i.record.id.to_string())).count();
            let container_sizes: Vec<(bool, u64)> = records
                .iter()
                .map(|r| {
                    (
                        r.state.status == Status::Running,
                        berth_stdx::fs::disk_usage(&engine.container_dir(&r.id).join("upper")),
                    )
                })
                .collect();
            let volumes = engine.volume_list()?;
            let mut volume_sizes: Vec<(bool, u64)> = Vec::with_capacity(volumes.len());
            for v in &volumes {
                let used = !engine.volume_users(&v.name)?.is_empty();
                volume_sizes.push((used, berth_stdx::fs::disk_usage(&v.mountpoint)));
            }
            let cache = berth_stdx::fs::disk_usage(&global.root.join("build/cache-mounts"));
            let percent = |part: u64, whole: u64| (part * 100).checked_div(whole).unwrap_or(0);
            let row = |kind: &str, total: usize, active: usize, size: u64, reclaimable: u64| {
                vec![
                    kind.to_owned(),
                    total.to_string(),
                    active.to_string(),
                    human_size(size),
                    format!("{} ({}%)", human_size(reclaimable), percent(reclaimable, size)),
                ]
            };
            let containers_size: u64 = container_sizes.iter().map(|(_, s)| s).sum();
            let containers_reclaimable: u64 =
                container_sizes.iter().filter(|(running, _)| !running).map(|(_, s)| s).sum();
            let volumes_size: u64 = volume_sizes.iter().map(|(_, s)| s).sum();
            let volumes_reclaimable: u64 =
                volume_sizes.iter().filter(|(used, _)| !used).map(|(_, s)| s).sum();
            let rows = vec![
                ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"].map(String::from).to_vec(),
                row("Images", images.len(), active_images, image_size, reclaimable_images),
                row(
                    "Containers",
                    records.len(),
                    container_sizes.iter().filter(|(r, _)| *r).count(),
                    containers_size,
                    containers_reclaimable,
                ),
                row(
                    "Local Volumes",
                    volumes.len(),
                    volume_sizes.iter().filter(|(u, _)| *u).count(),
                    volumes_size,
                    volumes_reclaimable,
                ),
                row("Build Cache", 0, 0, cache, cache),
            ];
            print!("{}", table(&rows));
            Ok(0)
        }
        SystemCommand::Prune { all, volumes, force: _ } => {
            let engine = engine(global)?;
            let (containers, container_bytes) = prune_containers(&engine)?;
            if !containers.is_empty() {
                println!("Deleted Containers:");
                containers.iter().for_each(|id| println!("{id}"));
                println!();
            }
            let mut networks = Vec::new();
            for network in engine.network_list()?.into_iter().filter(|n| n.name != "bridge") {
                if engine.network_remove(&network.name).is_ok() {
                    networks.push(network.name);
                }
            }
            if !networks.is_empty() {
                println!("Deleted Networks:");
                networks.iter().for_each(|n| println!("{n}"));
                println!();
            }
            if volumes {
                let removed = engine.volume_prune(true)?;
                if !removed.is_empty() {
                    println!("Deleted Volumes:");
                    removed.iter().for_each(|n| println!("{n}"));
                    println!();
                }
            }
            let store = open_store(global)?;
            let (images, image_bytes) = store.prune(all)?;
            if !images.is_empty() {
                println!("Deleted Images:");
                images.iter().for_each(|id| println!("deleted: {id}"));
                println!();
            }
            let (_, cache_bytes) = store.prune_build_cache()?;
            println!(
                "Total reclaimed space: {}",
                human_size(container_bytes + image_bytes + cache_bytes)
            );
            Ok(0)
        }
    }
}
