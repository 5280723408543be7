#!/usr/bin/env bash
# Two berth binaries, `run --rm --network none fixture:v1 true`, interleaved (A B B A ...)
# so that the machine's drift within a minute falls on both alike: medians and quartiles
# of each, and their ratio. Each binary gets a fresh root with the fixture image loaded
# by itself (the two may store images differently). Build an older commit with a target
# directory of its own (a worktree sharing target/ reuses the workspace's artifacts).
# Usage: sudo benches/ab-run.sh OLD_BINARY NEW_BINARY [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "$1") new=$(realpath "$2") runs=${3:-80}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x target/release/examples/write-image ] || cargo build --release -q -p berth-testkit --example write-image
work=$(mktemp -d /tmp/berth-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT
./target/release/examples/write-image "$work/layout" v1 fixture >/dev/null
tar -C "$work/layout" -cf "$work/fixture.tar" .
for side in old new; do
  binary=${!side}
  id=$(BERTH_ROOT=$work/$side "$binary" load -i "$work/fixture.tar" | awk '{print $NF}')
  BERTH_ROOT=$work/$side "$binary" tag "$id" fixture:v1
done
unshare -n python3 - "$old" "$new" "$work" "$runs" <<'PY'
import os, statistics, subprocess, sys, time
old, new, work, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
binaries = {"old": old, "new": new}
times = {"old": [], "new": []}
for i in range(runs + 3):
    for side in (["old", "new"] if i % 2 == 0 else ["new", "old"]):
        env = dict(os.environ, BERTH_ROOT=f"{work}/{side}")
        started = time.perf_counter()
        subprocess.run([binaries[side], "run", "--rm", "--network", "none", "fixture:v1", "true"],
                       env=env, check=True)
        if i >= 3:  # the first rounds warm the caches
            times[side].append((time.perf_counter() - started) * 1000)
for side, values in times.items():
    values.sort()
    print(f"{side} ({binaries[side]}): median {statistics.median(values):.1f} ms, "
          f"p25 {values[len(values) // 4]:.1f}, p75 {values[3 * len(values) // 4]:.1f}, n={len(values)}")
print(f"new/old: {statistics.median(times['new']) / statistics.median(times['old']):.2f}")
PY
