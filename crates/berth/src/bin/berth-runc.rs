//! `berth-runc`: berth's OCI runtime under a name tools that drive runc can be pointed at.

fn main() {
    std::process::exit(berth::runc::main(std::env::args_os().collect()));
}
