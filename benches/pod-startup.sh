#!/usr/bin/env bash
# Pod startup latency as Kubernetes' SLO defines it (a pod's creation to Running and
# Ready, observed through a watch; the image already in the store), through `berth server`
# with its node agent on this machine: SINGLES pods one at a time, then a Deployment of
# BURST replicas (crates/berth/examples/podstart.rs). Also the idle resident memory of
# the server with its agent and no pod. Kubernetes' SLO is p99 <= 5 s; berth's aims are
# p99 <= 1 s for one pod, a burst of 100 Ready in under 10 s, and under 60 MB idle. No
# kubelet is packaged in Debian to run beside it, so the figures are absolute.
# Runs in a network namespace of its own. Usage: sudo benches/pod-startup.sh [singles] [burst]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BERTH_BENCH_NETNS:-}" ]; then
  exec env BERTH_BENCH_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up
singles=${1:-20}
burst=${2:-100}
cargo build --release -q --bin berth --example podstart
cargo build --release -q -p berth-testkit --example write-image
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-podstart.XXXXXX)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  pkill -f "$work" 2>/dev/null || true
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
  true
}
trap cleanup EXIT
export BERTH_ROOT=$work/root
./target/release/examples/write-image "$work/fixture" v1 fixture >/dev/null
tar -C "$work/fixture" -cf "$work/fixture.tar" .
id=$("$berth" load -i "$work/fixture.tar" | awk '{print $NF}')
"$berth" tag "$id" fixture:v1 >/dev/null
"$berth" server --data-dir "$work/server" --https-listen-port 0 --bind-address 127.0.0.1 \
  --node-name bench --kubelet-port 0 --disable-kube-proxy 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 300); do [ -f "$work/server/kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG=$work/server/kubeconfig
until kubectl get node bench 2>/dev/null | grep -q ' Ready '; do sleep 0.2; done
# Settled: the controllers' first passes are done.
sleep 5
echo "## idle resident memory of berth server with its agent, no pods: $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$server_pid/status)"
echo "## pod startup: $singles pods one at a time, then a Deployment of $burst"
./target/release/examples/podstart "$KUBECONFIG" "$singles" "$burst"
echo "server peak resident memory: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$server_pid/status)"
