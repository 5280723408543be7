//! The `berth` command line: a thin layer that parses arguments, sets up logging and calls
//! into the library crates. `berth runtime ...` and the `berth-runc` binary are one
//! runc-compatible front end over `berth-runtime`.

pub mod demo;
pub mod logging;
pub mod runc;

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
        Some("--version" | "-v" | "version") => {
            println!("berth version {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!(
                "usage: berth <command>\n\n\
                 commands:\n  \
                 demo       run a container from a bundle made of the host's busybox\n  \
                 runtime    the OCI runtime, with runc's commands and flags (also installed as berth-runc)\n  \
                 version    print the version"
            );
            2
        }
    }
}
