#!/usr/bin/env bash
# `berth server` under load, on the embedded store and on etcd (Debian's etcd-server):
# creates at a fixed rate (p50/p99), gets, lists, watch delivery, a fill to OBJECTS
# objects, creates by a non-admin before and after 1,000 RoleBindings exist, and the
# server's resident memory idle and full.
# Usage: sudo benches/apiserver.sh [rate] [seconds] [objects]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-200}
seconds=${2:-10}
objects=${3:-10000}
./scripts/deps
cargo build --release -q --bin berth --example apiload
berth=$PWD/target/release/berth
load=$PWD/target/release/examples/apiload
work=$(mktemp -d /tmp/berth-api-bench.XXXXXX)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "${etcd_pid:-}" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  rm -rf "$work"
  true
}
trap cleanup EXIT
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$1/status"; }

run() {
  local name=$1; shift
  local dir=$work/$name
  # A non-admin caller for the RBAC figures (see apiload's last phase).
  mkdir -p "$dir" && echo 'bench-user-token,bench,1000,"bench"' > "$dir/tokens.csv"
  "$berth" server --disable-agent --data-dir "$dir" --https-listen-port 0 --bind-address 127.0.0.1 "$@" 2>/dev/null &
  server_pid=$!
  for _ in $(seq 100); do [ -f "$dir/kubeconfig" ] && break; sleep 0.1; done
  sleep 2
  echo "## $name: idle resident memory $(rss $server_pid)"
  echo
  "$load" "$dir" "$rate" "$seconds" "$objects"
  echo
  echo "resident memory with $objects configmaps stored: $(rss $server_pid)"
  [ -f "$dir/state.db" ] && echo "store file: $(du -sh "$dir"/state.db* | awk '{s=s $1 " "} END {print s}')"
  echo
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  server_pid=
}

run sqlite
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
etcd --data-dir "$work/etcd" --name bench --listen-client-urls "http://127.0.0.1:$port" \
  --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "bench=http://127.0.0.1:$peer" \
  >/dev/null 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
run etcd --datastore-endpoint "http://127.0.0.1:$port"
