//! An implementation of the OCI runtime specification (v1.2, Linux).
//!
//! Input is an OCI bundle (a `config.json` and a root filesystem); output is an isolated
//! process: namespaces, mounts, devices, capabilities, seccomp, rlimits, a cgroup, hooks,
//! with the lifecycle of `create`, `start`, `kill`, `delete` and friends as runc has it.
//! The `berth-runc` command is a thin layer over [`Runtime`].
//!
//! This crate knows nothing of images, registries or pods: its input is a bundle. Cgroups
//! are reached only through the `berth_cgroups::Manager` seam, and the kernel only through
//! `berth-sys`; all decisions are taken by the pure planning code in [`plan`] first.

mod container;
mod error;
mod exec;
mod features;
mod hooks;
mod init;
pub mod plan;
mod seccomp;
pub mod spec;
pub mod state;
mod sync;
mod template;
mod tty;

pub use container::{CreateOptions, Runtime, Watcher};
pub use error::{program_exit_code, Error, Result};
pub use exec::{ExecOptions, ExecOutcome, ProcessOverrides};
pub use features::features;
pub use state::{OciState, Status};
pub use template::example_spec;
pub use tty::{foreground_wait, receive_fd, receive_master, ExitStatus};
