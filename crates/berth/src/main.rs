/// mimalloc rather than glibc's malloc: the API server's JSON trees are many small
/// allocations freed from other threads, where glibc's arenas spent a fifth of the
/// server's CPU under `benches/scheduler.sh` (see ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(berth::main());
}
