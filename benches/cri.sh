#!/usr/bin/env bash
# berth's CRI against containerd 1.6's CRI plugin (Debian's containerd with runc), side by
# side on this machine, driven by the same client (crates/berth/examples/criload.rs):
# PODS pods one after another (RunPodSandbox + CreateContainer + StartContainer from a
# pre-pulled image), then each StopPodSandbox + RemovePodSandbox; with the pod network
# from the same CNI bridge list, and with host networking. Also each server's idle RSS.
# Runs in a network namespace of its own. Usage: sudo benches/cri.sh [pods]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BERTH_BENCH_NETNS:-}" ]; then
  exec env BERTH_BENCH_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up
pods=${1:-50}
cargo build --release -q --bin berth --example criload
cargo build --release -q -p berth-testkit --example write-image
berth=$PWD/target/release/berth
load=$PWD/target/release/examples/criload
work=$(mktemp -d /tmp/berth-cri-bench.XXXXXX)
cleanup() {
  for pid in ${berth_pid:-} ${containerd_pid:-}; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  pkill -f "$work" 2>/dev/null || true
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
./target/release/examples/write-image "$work/fixture" v1 fixture >/dev/null
./target/release/examples/write-image "$work/pause" v1 pause >/dev/null
tar -C "$work/fixture" -cf "$work/fixture.tar" .
tar -C "$work/pause" -cf "$work/pause.tar" .
mkdir -p "$work/net.d"
cat > "$work/net.d/10-pods.conflist" <<CONF
{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "bench0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.97.0.0/24"}]], "dataDir": "$work/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CONF
# berth's CRI, with the image loaded into its store.
export BERTH_ROOT=$work/berth
id=$("$berth" load -i "$work/fixture.tar" | awk '{print $NF}')
"$berth" tag "$id" fixture:v1
"$berth" cri --listen "unix://$work/berth.sock" --cni-conf-dir "$work/net.d" 2>"$work/berth.log" &
berth_pid=$!
# containerd's CRI, private root, state, socket and streaming server.
cat > "$work/containerd.toml" <<CONF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
[grpc]
  address = "$work/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/pause:v1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # root here lacks CAP_SYS_RESOURCE: no negative oom_score_adj for the sandbox
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$work/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
CONF
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" &
containerd_pid=$!
for _ in $(seq 300); do [ -S "$work/containerd.sock" ] && [ -S "$work/berth.sock" ] && break; sleep 0.1; done
ctr --address "$work/containerd.sock" -n k8s.io images import --base-name docker.io/library/fixture "$work/fixture.tar" >/dev/null
ctr --address "$work/containerd.sock" -n k8s.io images import --base-name docker.io/library/pause "$work/pause.tar" >/dev/null
sleep 1
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
echo "## idle resident memory: berth cri $(rss $berth_pid) MB, containerd $(rss $containerd_pid) MB"
echo
field() { sed -E "s/.*\"$2\": ([0-9.]+).*/\1/" <<<"$1"; }
for mode in cni host; do
  flag=""; [ "$mode" = host ] && flag="--host-network"
  b=$("$load" "$work/berth.sock" fixture:v1 "$pods" $flag)
  c=$("$load" "$work/containerd.sock" docker.io/library/fixture:v1 "$pods" $flag)
  echo "## $pods pods, network: $mode"
  echo "berth:      $b"
  echo "containerd: $c"
  awk -v b="$(field "$b" start_total_s)" -v c="$(field "$c" start_total_s)" \
      -v bs="$(field "$b" stop_total_s)" -v cs="$(field "$c" stop_total_s)" \
      'BEGIN { printf "ratio (containerd / berth): start %.1fx, stop %.1fx\n\n", c / b, cs / bs }'
done
