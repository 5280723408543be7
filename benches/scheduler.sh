#!/usr/bin/env bash
# The scheduler under load, in the shape of kube-scheduler's scheduler_perf
# SchedulingBasic: NODES simulated nodes, PODS pods created through the API, pods/s from
# the first pod created to the last pod bound (observed through a watch), and the
# server's peak resident memory. No reference scheduler is packaged in Debian, so the
# figure is absolute (kube-scheduler's CI floor for this workload: 680-810 pods/s on much
# larger machines).
# Usage: sudo benches/scheduler.sh [nodes] [pods]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-5000}
pods=${2:-10000}
cargo build --release -q --bin berth --example schedload
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-sched-bench.XXXXXX)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
  true
}
trap cleanup EXIT
"$berth" server --disable-agent --data-dir "$work" --https-listen-port 0 --bind-address 127.0.0.1 \
  --simulate-nodes "$nodes" --simulated-lease-interval-seconds 300 --node-monitor-grace-period 20m \
  --simulated-node-capacity cpu=4,memory=32Gi,pods=110 2>/dev/null &
server_pid=$!
for _ in $(seq 300); do [ -f "$work/kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG=$work/kubeconfig
start=$(date +%s%N)
until [ "$(kubectl get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" -ge "$nodes" ]; do sleep 0.5; done
echo "## $nodes simulated nodes registered in $(( ($(date +%s%N) - start) / 1000000 )) ms"
# The nodes' Leases follow their registration: the load starts on a settled cluster.
until [ "$(kubectl get leases -n kube-node-lease --no-headers 2>/dev/null | wc -l)" -ge "$nodes" ]; do sleep 0.5; done
echo
./target/release/examples/schedload "$work/kubeconfig" "$pods"
echo
echo "server peak resident memory: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$server_pid/status)"

# A Deployment of 1,000 replicas on 100 simulated nodes: seconds from its creation to all
# replicas Available, as `kubectl rollout status` sees it.
kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
rm -rf "$work" && mkdir -p "$work"
"$berth" server --disable-agent --data-dir "$work" --https-listen-port 0 --bind-address 127.0.0.1 \
  --simulate-nodes 100 --simulated-node-capacity cpu=64,memory=256Gi,pods=110 2>/dev/null &
server_pid=$!
for _ in $(seq 300); do [ -f "$work/kubeconfig" ] && break; sleep 0.1; done
until [ "$(kubectl get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" -ge 100 ]; do sleep 0.2; done
start=$(date +%s%N)
kubectl create deployment big --image=busybox --replicas=1000 >/dev/null
kubectl rollout status deployment/big --timeout=600s >/dev/null
echo
echo "## a Deployment of 1,000 replicas on 100 nodes: all Available in $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo "server peak resident memory: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$server_pid/status)"
