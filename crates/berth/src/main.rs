/// glibc's malloc for short-lived commands, mimalloc once a long-running service asks
/// (see `berth_sys::alloc`).
#[global_allocator]
static ALLOCATOR: berth_sys::alloc::Allocator = berth_sys::alloc::Allocator;

fn main() {
    std::process::exit(berth::main());
}
