//! Writes a fixture image as an OCI layout, for benchmarks and manual testing:
//! `write-image DIR TAG [fixture | pause | bench COUNT MIB]` (`pause`: the fixture with a
//! command that waits forever and ends on SIGTERM, for a CRI's sandbox image).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: write-image DIR TAG [fixture | pause | bench COUNT MIB]");
        std::process::exit(2);
    }
    let dir = std::path::Path::new(&args[1]);
    let tag = &args[2];
    let result = match args.get(3).map(String::as_str) {
        None | Some("fixture") => berth_testkit::image::fixture_image(dir, tag),
        Some("pause") => berth_testkit::image::fixture_layers().and_then(|layers| {
            berth_testkit::image::write_layout(
                dir,
                tag,
                &layers,
                &["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"],
            )
        }),
        Some("bench") => {
            let count = args.get(4).and_then(|c| c.parse().ok()).unwrap_or(5);
            let mib: usize = args.get(5).and_then(|c| c.parse().ok()).unwrap_or(10);
            berth_testkit::image::bench_image(dir, tag, count, mib << 20)
        }
        Some(other) => {
            eprintln!("unknown kind {other}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(written) => println!("{}", written.manifest_digest),
        Err(err) => {
            eprintln!("write-image: {err}");
            std::process::exit(1);
        }
    }
}
