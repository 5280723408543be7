#!/usr/bin/env bash
# `docker run --rm --network none IMAGE true` through the Docker Engine API, side by side in
# one hyperfine run:
#   berth    the docker client against `berth system service` (release build)
#   dockerd  the same client against Debian's dockerd (with the containerd it starts
#            itself, runc), started privately: its own --data-root, --exec-root and socket,
#            no bridge and no iptables rules
# The same image (busybox on scratch) built in both through the API. The whole run happens
# in a private network namespace. Usage: sudo benches/docker-api.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if [ -z "${BERTH_BENCH_NETNS:-}" ]; then
  command -v hyperfine >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null
  ./scripts/deps
  cargo build --release --bins -q
  exec env BERTH_BENCH_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up
berth=$PWD/target/release/berth
docker=/usr/bin/docker
work=$(mktemp -d /tmp/berth-docker-api-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
  umount -R "$work/docker" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

BERTH_ROOT=$work/berth "$berth" system service --listen "unix://$work/berth.sock" 2>"$work/berth.log" &
pids+=($!)
dockerd --data-root "$work/docker/data" --exec-root "$work/docker/exec" --pidfile "$work/docker/pid" \
  -H "unix://$work/docker.sock" --iptables=false --ip6tables=false --bridge=none >"$work/dockerd.log" 2>&1 &
pids+=($!)
for sock in berth docker; do
  for _ in $(seq 100); do
    DOCKER_HOST=unix://$work/$sock.sock $docker version >/dev/null 2>&1 && break
    sleep 0.1
  done
done
# The same image built in both, through the API: busybox from Debian's busybox-static.
mkdir -p "$work/context/bin"
cp /bin/busybox "$work/context/bin/busybox"
ln -s busybox "$work/context/bin/true"
ln -s busybox "$work/context/bin/sh"
printf 'FROM scratch\nCOPY bin /bin\nCMD ["true"]\n' > "$work/context/Dockerfile"
for sock in berth docker; do
  DOCKER_HOST=unix://$work/$sock.sock DOCKER_BUILDKIT=0 $docker build -q -t fixture:v1 "$work/context" >/dev/null
done
for sock in berth docker; do
  # A first run, so that both have their caches warm.
  DOCKER_HOST=unix://$work/$sock.sock $docker run --rm --network none fixture:v1 true
done
hyperfine --warmup 3 --runs "$runs" --export-markdown "$work/result.md" \
  -n berth "DOCKER_HOST=unix://$work/berth.sock $docker run --rm --network none fixture:v1 true" \
  -n dockerd "DOCKER_HOST=unix://$work/docker.sock $docker run --rm --network none fixture:v1 true"
cat "$work/result.md"
