//! The Linux boundary of berth.
//!
//! Every raw system call that the safe wrappers of `nix` do not cover, and every `unsafe`
//! block of the project, lives here behind a safe function. The crate also owns the `nix`
//! and `libc` dependencies: other crates reach them through [`nix`] and [`libc`] re-exports
//! so that one version is used everywhere.
//!
//! This crate knows nothing of containers, OCI documents or cgroups: it speaks in file
//! descriptors, pids, flags and paths.

pub mod alloc;
pub mod bpf;
pub mod exe;
pub mod fs;
pub mod link;
pub mod mount;
pub mod process;
pub mod tty;
pub mod xattr;

pub use libc;
pub use nix;

pub use nix::errno::Errno;

/// Result of every fallible call in this crate.
pub type Result<T, E = Errno> = std::result::Result<T, E>;

/// Turns the return value of a raw syscall into a `Result`, reading `errno` on failure.
fn check(ret: libc::c_long) -> Result<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}
