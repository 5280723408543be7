//! The `berth` command line: a thin layer that parses arguments, sets up logging and calls
//! into the library crates. `berth runtime ...` and the `berth-runc` binary are one
//! runc-compatible front end over `berth-runtime`.

// serde_json's `json!` recurses once per token: Docker's `/info` object is longer than
// the default limit allows.
#![recursion_limit = "256"]

pub mod build;
pub mod cli;
pub mod containers;
pub mod cri;
pub mod demo;
pub mod dockerapi;
pub mod images;
pub mod logging;
pub mod runc;
pub mod server;
pub mod system;
pub mod template;

/// Entry point of the `berth` binary; dispatches on the name it was called by, so a
/// symlink named `berth-runc` behaves like the `berth-runc` binary.
pub fn main() -> i32 {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if called_as == "berth-runc" {
        return runc::main(args);
    }
    match args.get(1).and_then(|a| a.to_str()) {
        Some("runtime") => {
            args.remove(1);
            args[0] = "berth runtime".into();
            runc::main(args)
        }
        Some("demo") => demo::main(&args[2..]),
        Some("__monitor") if args.len() == 4 => {
            if let Err(err) = runc::protect_binary() {
                eprintln!("berth monitor: {err:#}");
                return 1;
            }
            let root = std::path::PathBuf::from(&args[2]);
            let id = args[3].to_string_lossy().into_owned();
            init_logging(&cli::Global {
                root: root.clone(),
                insecure_registries: Vec::new(),
                registries_config: Default::default(),
                log_level: "info".into(),
                debug: false,
            });
            berth_engine::monitor::main(&root, &id)
        }
        Some("__dns") if args.len() >= 5 => {
            let rest: Vec<String> =
                args[5..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let served = berth_engine::dns::main(
                std::path::Path::new(&args[2]),
                &args[3].to_string_lossy(),
                std::path::Path::new(&args[4]),
                &rest,
            );
            match served {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("Error: {err}");
                    1
                }
            }
        }
        Some("__ports") if args.len() >= 3 => {
            let specs: Vec<String> =
                args[3..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
            match berth_engine::ports::main(&args[2].to_string_lossy(), &specs) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("Error: {err}");
                    1
                }
            }
        }
        Some("__pidns") if args.len() == 3 => {
            // Its PID 1 is in every pod container's view: never the writable binary.
            if let Err(err) = runc::protect_binary() {
                eprintln!("berth pidns: {err:#}");
                return 1;
            }
            berth_cri::pidns::main()
        }
        Some("__task") if args.len() == 3 => {
            if let Err(err) = runc::protect_binary() {
                eprintln!("berth task: {err:#}");
                return 1;
            }
            berth_task::shim::main(std::path::Path::new(&args[2]))
        }
        Some("--version" | "-v") => {
            println!("berth version {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            use clap::Parser;
            let cli = match cli::Cli::try_parse_from(&args) {
                Ok(cli) => cli,
                Err(err) => {
                    let _ = err.print();
                    return match err.kind() {
                        clap::error::ErrorKind::DisplayHelp
                        | clap::error::ErrorKind::DisplayVersion => 0,
                        _ => 125,
                    };
                }
            };
            init_logging(&cli.global);
            let cli_root = cli.global.root.clone();
            match cli::run(cli) {
                Ok(code) => code,
                Err(err) => {
                    let message = error_text(&err, &cli_root);
                    eprintln!("Error: {message}");
                    // As Docker: 127/126 when the container's program cannot start, 125
                    // when berth itself failed.
                    berth_runtime::program_exit_code(&message).unwrap_or(125)
                }
            }
        }
    }
}

/// An error's chain as one line, each cause once (a cause often repeats its parent's
/// words), with what to do when the disk is full.
fn error_text(err: &anyhow::Error, root: &std::path::Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.contains(&text) || last.ends_with(&text)) {
            continue;
        }
        if let Some(last) = parts.last_mut() {
            if let Some(rest) = text.strip_prefix(last.as_str()) {
                *last = format!("{last}{rest}");
                continue;
            }
        }
        parts.push(text);
    }
    let mut message = parts.join(": ");
    let full = err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
    }) || message.contains("No space left on device")
        || message.contains("database or disk is full");
    if full {
        let free = berth_sys::fs::free_space(root)
            .map(|b| format!(" ({} free)", images::human_size(b)))
            .unwrap_or_default();
        message.push_str(&format!(
            "\nthe disk holding {}{free} is full: free space with `berth image prune -a`, `berth system prune` or `berth builder prune` (`berth system df` shows what uses it)",
            root.display()
        ));
    }
    message
}

/// Every crate of the workspace, by its name in log targets.
const CRATES: &[&str] = &[
    "berth",
    "berth_agent",
    "berth_api",
    "berth_apiserver",
    "berth_build",
    "berth_cgroups",
    "berth_client",
    "berth_controllers",
    "berth_cri",
    "berth_dns",
    "berth_engine",
    "berth_image",
    "berth_net",
    "berth_proxy",
    "berth_reconcile",
    "berth_runtime",
    "berth_scheduler",
    "berth_simnodes",
    "berth_store",
    "berth_sys",
    "berth_task",
];

fn init_logging(global: &cli::Global) {
    // RUST_LOG, when set, says everything (`RUST_LOG=berth_apiserver=debug,kube=info`);
    // otherwise --log-level (or --debug) applies to every berth crate.
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|err| {
                eprintln!("RUST_LOG={directives:?} is not understood ({err}); using warn");
                tracing_subscriber::EnvFilter::new("warn")
            })
        }
        _ => {
            let level = if global.debug { "debug" } else { global.log_level.as_str() };
            let crates = CRATES.iter().map(|c| format!(",{c}={level}")).collect::<String>();
            tracing_subscriber::EnvFilter::try_new(format!("warn{crates}"))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
