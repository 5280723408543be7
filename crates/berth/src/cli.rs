//! The `berth` command line (everything but `berth runtime`, which is runc's CLI): global
//! options and the command tree, with Docker's command names and flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{containers, images, server};

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Containers and orchestration in one binary")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Where berth keeps images, containers and volumes.
    #[arg(long, global = true, env = "BERTH_ROOT", default_value = "/var/lib/berth")]
    pub root: PathBuf,
    /// Registries to reach over plain HTTP (loopback ones always are); repeat or comma-separate.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "BERTH_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Registry mirrors and per-host TLS and credentials, in k3s's registries.yaml shape
    /// (for pulls by berth, its CRI and its node agent); a missing file is none.
    #[arg(
        long = "registries-config",
        global = true,
        env = "BERTH_REGISTRIES_CONFIG",
        default_value = "/etc/berth/registries.yaml"
    )]
    pub registries_config: PathBuf,
    /// Log level: error, warn, info, debug.
    #[arg(long = "log-level", global = true, default_value = "warn")]
    pub log_level: String,
    /// Same as --log-level debug.
    #[arg(short = 'D', long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile.
    Build(crate::build::BuildArgs),
    /// Manage the build cache.
    #[command(subcommand)]
    Builder(crate::build::BuilderCommand),
    /// Download an image from a registry.
    Pull(images::PullArgs),
    /// Upload an image to a registry.
    Push(images::PushArgs),
    /// List images.
    Images(images::ListArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Show containers or images as JSON.
    Inspect(containers::InspectArgs),
    /// Show how an image was made, layer by layer.
    History(images::HistoryArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Remove images.
    Rmi(images::RemoveArgs),
    /// Store credentials for a registry.
    Login(images::LoginArgs),
    /// Forget the credentials for a registry.
    Logout(images::LogoutArgs),
    /// Write images to a tar archive (OCI layout and Docker archive in one).
    Save(images::SaveArgs),
    /// Read images from a tar archive (`docker save` or OCI layout).
    Load(images::LoadArgs),
    /// Make an image from a plain root filesystem tar.
    Import(images::ImportArgs),
    /// Create and start a container from an image.
    Run(containers::RunArgs),
    /// Create a container without starting it.
    Create(containers::CreateFlags),
    /// Start stopped containers.
    Start(containers::StartArgs),
    /// Stop containers: the stop signal, then SIGKILL after a timeout.
    Stop(containers::StopArgs),
    /// Stop and start containers.
    Restart(containers::StopArgs),
    /// Send a signal to containers.
    Kill(containers::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// List containers.
    Ps(containers::PsArgs),
    /// Show a container's output.
    Logs(containers::LogsArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Connect to a running container's input and output.
    Attach(containers::AttachArgs),
    /// Wait for containers to stop and print their exit codes.
    Wait(containers::OneOrMore),
    /// Show a container's processes.
    Top(containers::TopArgs),
    /// Show containers' resource usage.
    Stats(containers::StatsArgs),
    /// Change the limits and restart policy of containers, running or not.
    Update(containers::UpdateArgs),
    /// Freeze every process of containers.
    Pause(containers::OneOrMore),
    /// Thaw paused containers.
    Unpause(containers::OneOrMore),
    /// Copy files between a container and the host.
    Cp(containers::CpArgs),
    /// Show a container's filesystem changes.
    Diff(containers::One),
    /// Make an image from a container's changes.
    Commit(containers::CommitArgs),
    /// Manage containers.
    #[command(subcommand)]
    Container(crate::system::ContainerCommand),
    /// Write a container's filesystem as a tar archive.
    Export(crate::system::ExportArgs),
    /// Show berth's version.
    Version(crate::system::FormatArgs),
    /// What happens to containers, images, networks and volumes, as it happens.
    Events(crate::system::EventsArgs),
    /// System-wide information.
    Info(crate::system::FormatArgs),
    /// Manage berth: disk usage, pruning, information.
    #[command(subcommand)]
    System(crate::system::SystemCommand),
    /// Show a container's published ports.
    Port(containers::PortArgs),
    /// Rename a container.
    Rename(containers::RenameArgs),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(containers::VolumeCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(containers::NetworkCommand),
    /// Run the control plane: the Kubernetes API that kubectl drives.
    Server(server::ServerArgs),
    /// Run a node agent that joins a server with its node token (as k3s's `agent`).
    Agent(server::AgentArgs),
    /// Print the admin kubeconfig of a server.
    Kubeconfig(server::KubeconfigArgs),
    /// Serve the Kubernetes CRI (v1) for a kubelet or crictl on a unix socket.
    Cri(crate::cri::CriArgs),
    /// Serve the cluster DNS of a server's Services on its own (as CoreDNS does beside a
    /// cluster): for a server run without an agent, or in front of a benchmark.
    Dns(server::DnsArgs),
    /// Program a server's Services into this host's nftables on its own (as kube-proxy
    /// runs beside a kubelet): for a node whose agent runs without its proxy, or in front
    /// of a benchmark.
    Proxy(server::ProxyArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let global = cli.global;
    let service = matches!(
        cli.command,
        Command::Server(_)
            | Command::Agent(_)
            | Command::Cri(_)
            | Command::Dns(_)
            | Command::Proxy(_)
            | Command::System(crate::system::SystemCommand::Service(_))
    );
    if service {
        // Long-running: mimalloc's throughput is worth its slower start.
        berth_sys::alloc::use_service_allocator();
    }
    match cli.command {
        Command::Build(args) => crate::build::build(&global, args),
        Command::Container(command) => crate::system::container(&global, command),
        Command::Export(args) => crate::system::export(&global, args),
        Command::Version(args) => crate::system::version(&global, args),
        Command::Events(args) => crate::system::events(&global, args),
        Command::Info(args) => {
            crate::system::system(&global, crate::system::SystemCommand::Info(args))
        }
        Command::System(command) => crate::system::system(&global, command),
        Command::Builder(command) => crate::build::builder(&global, command),
        Command::Pull(args) => images::pull(&global, args),
        Command::Push(args) => images::push(&global, args),
        Command::Images(args) => images::list(&global, args),
        Command::Image(command) => images::image(&global, command),
        Command::Inspect(args) => containers::inspect(&global, args),
        Command::History(args) => images::history(&global, args),
        Command::Tag(args) => images::tag(&global, args),
        Command::Rmi(args) => images::remove(&global, args),
        Command::Login(args) => images::login(&global, args),
        Command::Logout(args) => images::logout(&global, args),
        Command::Save(args) => images::save(&global, args),
        Command::Load(args) => images::load(&global, args),
        Command::Import(args) => images::import(&global, args),
        Command::Run(args) => containers::run(&global, args),
        Command::Create(flags) => containers::create(&global, flags),
        Command::Start(args) => containers::start(&global, args),
        Command::Stop(args) => containers::stop(&global, args),
        Command::Restart(args) => containers::restart(&global, args),
        Command::Kill(args) => containers::kill(&global, args),
        Command::Rm(args) => containers::rm(&global, args),
        Command::Ps(args) => containers::ps(&global, args),
        Command::Logs(args) => containers::logs(&global, args),
        Command::Exec(args) => containers::exec(&global, args),
        Command::Attach(args) => containers::attach(&global, args),
        Command::Wait(args) => containers::wait(&global, args),
        Command::Top(args) => containers::top(&global, args),
        Command::Stats(args) => containers::stats(&global, args),
        Command::Update(args) => containers::update(&global, args),
        Command::Pause(args) => containers::pause(&global, args, true),
        Command::Unpause(args) => containers::pause(&global, args, false),
        Command::Cp(args) => containers::cp(&global, args),
        Command::Diff(args) => containers::diff(&global, args),
        Command::Commit(args) => containers::commit(&global, args),
        Command::Port(args) => containers::port(&global, args),
        Command::Rename(args) => containers::rename(&global, args),
        Command::Volume(command) => containers::volume(&global, command),
        Command::Network(command) => containers::network(&global, command),
        Command::Server(args) => server::server(&global, args),
        Command::Agent(args) => server::agent(&global, args),
        Command::Kubeconfig(args) => server::kubeconfig(args),
        Command::Cri(args) => crate::cri::cri(&global, args),
        Command::Dns(args) => server::dns(args),
        Command::Proxy(args) => server::proxy(args),
    }
}
