#!/usr/bin/env bash
# Container start latency, side by side: berth-runc against runc and crun on one busybox
# bundle, in one hyperfine run.
#   1. `run` of /bin/true (create, start, wait, delete in one command)
#   2. create + start + delete -f as three commands, as containerd drives a runtime
# Usage: sudo benches/runtime.sh [runs]   (needs hyperfine, runc, crun, busybox-static)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for tool in hyperfine runc crun busybox; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install hyperfine runc crun busybox-static" >&2; exit 1; }
done
cargo build --release --bins -q
berth=$PWD/target/release/berth-runc

# crun 1.8 refuses a hybrid host whose hugetlb controller sits on the cgroup2 tree; for the
# comparison only, give hugetlb a v1 hierarchy (as the issue suggests).
if [ -d /sys/fs/cgroup/unified ] && ! grep -q ' /sys/fs/cgroup/hugetlb ' /proc/self/mountinfo; then
  mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb || true
fi

work=$(mktemp -d /tmp/berth-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/"
ln -s busybox "$work/bundle/rootfs/bin/true"
(cd "$work/bundle" && "$berth" spec)
# The same config for all three: no terminal, /bin/true, and a version crun 1.8 accepts.
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["ociVersion"] = "1.0.2"
config["process"]["terminal"] = False
config["process"]["args"] = ["true"]
json.dump(config, open(path, "w"), indent=2)
PY

for runtime in berth runc crun; do
  case $runtime in berth) bin=$berth ;; *) bin=$runtime ;; esac
  cat > "$work/$runtime-cycle" <<SH
#!/bin/sh
id=cycle-\$\$
$bin --root $work/root-$runtime create --bundle $work/bundle \$id >/dev/null
$bin --root $work/root-$runtime start \$id
$bin --root $work/root-$runtime delete -f \$id
SH
  chmod +x "$work/$runtime-cycle"
done

cd "$work/bundle"
counter=0
# crun 1.8 cannot run at all on some hybrid hosts (hugetlb on the cgroup2 tree, no v1
# hierarchy to move it to): compare with runc alone there, and say so.
crun_run=() crun_cycle=()
if crun --root "$work/root-crun" run probe-crun >/dev/null 2>&1; then
  crun_run=(-n crun "crun --root $work/root-crun run bench-crun")
  crun_cycle=(-n crun "$work/crun-cycle")
else
  echo "note: crun cannot run on this host's cgroup layout; comparing with runc only"
fi
hyperfine -N --warmup 10 --runs "$runs" --export-markdown "$work/run.md" \
  -n berth-runc "$berth --root $work/root-berth run bench-berth" \
  "${crun_run[@]}" \
  -n runc "runc --root $work/root-runc run bench-runc"
hyperfine -N --warmup 10 --runs "$runs" --export-markdown "$work/cycle.md" \
  -n berth-runc "$work/berth-cycle" "${crun_cycle[@]}" -n runc "$work/runc-cycle"
echo
echo "## run /bin/true"; cat "$work/run.md"
echo "## create + start + delete"; cat "$work/cycle.md"
