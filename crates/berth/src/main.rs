fn main() {
    std::process::exit(berth::main());
}
