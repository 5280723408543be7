//! Link flags for the `berth` binary.
//!
//! Relative relocations packed as RELR (`-z pack-relative-relocs`, binutils 2.38 and
//! glibc 2.36, both in Debian 12): the binary is position-independent and has some 57,000
//! of them, which as RELA entries are a 1.3 MB table the dynamic loader reads and walks at
//! every start; RELR says the same in a few kilobytes. berth executes itself for every
//! container it starts (the monitor, the CRI's task supervisor), so its start-up is on the
//! run path.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if linux && gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
