//! The `berth` command line (everything but `berth runtime`, which is runc's CLI): global
//! options and the command tree, with Docker's command names and flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::images;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Containers and orchestration in one binary",
    disable_help_subcommand = true
)]
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
    /// Log level: error, warn, info, debug.
    #[arg(long = "log-level", global = true, default_value = "warn")]
    pub log_level: String,
    /// Same as --log-level debug.
    #[arg(short = 'D', long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download an image from a registry.
    Pull(images::PullArgs),
    /// Upload an image to a registry.
    Push(images::PushArgs),
    /// List images.
    Images(images::ListArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Show the configuration of images as JSON.
    Inspect(images::InspectArgs),
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
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let global = cli.global;
    match cli.command {
        Command::Pull(args) => images::pull(&global, args),
        Command::Push(args) => images::push(&global, args),
        Command::Images(args) => images::list(&global, args),
        Command::Image(command) => images::image(&global, command),
        Command::Inspect(args) => images::inspect(&global, args),
        Command::History(args) => images::history(&global, args),
        Command::Tag(args) => images::tag(&global, args),
        Command::Rmi(args) => images::remove(&global, args),
        Command::Login(args) => images::login(&global, args),
        Command::Logout(args) => images::logout(&global, args),
        Command::Save(args) => images::save(&global, args),
        Command::Load(args) => images::load(&global, args),
        Command::Import(args) => images::import(&global, args),
    }
}
