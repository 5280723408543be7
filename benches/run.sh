#!/usr/bin/env bash
# `run --rm IMAGE true`, side by side in one hyperfine run:
#   berth   berth run --rm (daemonless; its monitor creates the container in-process)
#   podman  podman run --rm (Debian podman 4.3 with conmon and runc: Debian's crun cannot
#           drive this machine's hybrid cgroups; no default ulimits, as root here lacks
#           CAP_SYS_RESOURCE and podman's defaults would fail)
# Both on a private root with the same image (the fixture: busybox in three layers),
# each in two network modes: none, and the default bridge (CNI/netavark for podman).
# The whole run happens in a private network namespace, so no bridge or rule touches
# the host. Usage: sudo benches/run.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
need=()
for pair in hyperfine:hyperfine podman:podman; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
./scripts/deps
cargo build --release --bins -q
cargo build --release -q -p berth-testkit --example write-image
berth=$PWD/target/release/berth

work=$(mktemp -d /tmp/berth-run-bench.XXXXXX)
cleanup() {
  podman --root "$work/podman/root" --runroot "$work/podman/run" rm -af >/dev/null 2>&1 || true
  umount -R "$work/podman/root" 2>/dev/null || true
  umount -R "$work/podman/run" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

./target/release/examples/write-image "$work/layout" v1 fixture >/dev/null
tar -C "$work/layout" -cf "$work/fixture.tar" .
export BERTH_ROOT=$work/berth
id=$("$berth" load -i "$work/fixture.tar" | awk '{print $NF}')
"$berth" tag "$id" fixture:v1
printf '[containers]\ndefault_ulimits = []\n' > "$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
podman="podman --root $work/podman/root --runroot $work/podman/run --storage-driver overlay --cgroup-manager cgroupfs --events-backend none --runtime runc"
$podman load -q -i "$work/fixture.tar" >/dev/null
pid=$($podman images -q | head -1)
$podman tag "$pid" localhost/fixture:v1

cat > "$work/bench.sh" <<SH
#!/bin/sh
set -e
ip link set lo up
hyperfine -N --warmup 3 --runs $runs --export-markdown $work/result.md \\
  -n "berth run --rm --network none" "$berth run --rm --network none fixture:v1 true" \\
  -n "podman run --rm --network none" "$podman run --rm --network none --ulimit host localhost/fixture:v1 true" \\
  -n "berth run --rm (bridge)" "$berth run --rm fixture:v1 true" \\
  -n "podman run --rm (bridge)" "$podman run --rm --ulimit host localhost/fixture:v1 true"
# Log throughput: 2,000,000 lines through the container's log (berth's CRI format,
# podman's k8s-file) and out to the caller.
hyperfine -N --warmup 1 --runs 5 --export-markdown $work/logs.md \\
  -n "berth run (2M log lines)" "$berth run --rm --network none fixture:v1 seq 2000000" \\
  -n "podman run (2M log lines, k8s-file)" "$podman run --rm --network none --ulimit host --log-driver k8s-file localhost/fixture:v1 seq 2000000"
SH
chmod +x "$work/bench.sh"
BERTH_ROOT=$work/berth unshare -n "$work/bench.sh"
cat "$work/result.md" "$work/logs.md"
