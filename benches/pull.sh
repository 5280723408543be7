#!/usr/bin/env bash
# Pull and unpack of a multi-layer image from a local registry, side by side in one
# hyperfine run:
#   berth       berth pull (parallel layers; download, verify, decompress, unpack streamed)
#   skopeo+tar  skopeo copy to an OCI directory, then tar -x of each layer
#   containerd  ctr images pull into containerd's overlayfs snapshotter (Debian containerd)
# Each run starts from an empty store. The image: busybox plus COUNT layers of MIB MiB of
# incompressible files (gzip), written by `berth-testkit`'s write-image example.
# Usage: sudo benches/pull.sh [runs] [count] [mib]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
count=${2:-5}
mib=${3:-10}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
need=()
for pair in hyperfine:hyperfine skopeo:skopeo docker-registry:docker-registry containerd:containerd ctr:containerd; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bins -q
cargo build --release -q -p berth-testkit --example write-image
berth=$PWD/target/release/berth

work=$(mktemp -d /tmp/berth-pull-bench.XXXXXX)
cleanup() {
  [ -n "${containerd_pid:-}" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
  [ -n "${registry_pid:-}" ] && kill "$registry_pid" 2>/dev/null
  umount -R "$work/containerd/root" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" 2>"$work/registry.log" &
registry_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

./target/release/examples/write-image "$work/layout" v1 bench "$count" "$mib" >/dev/null
skopeo copy -q --insecure-policy --dest-tls-verify=false "oci:$work/layout:v1" "docker://127.0.0.1:$port/bench:v1"
image=127.0.0.1:$port/bench:v1
echo "image: busybox + $count x $mib MiB layers, $(du -sh "$work/registry" | cut -f1) in the registry"

# containerd on its own root and socket, without its CRI plugin.
mkdir -p "$work/containerd"
cat > "$work/containerd/config.toml" <<TOML
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd/sock"
TOML
containerd --config "$work/containerd/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 50); do [ -S "$work/containerd/sock" ] && break; sleep 0.1; done
ctr="ctr --address $work/containerd/sock"

cat > "$work/skopeo-tar" <<SH
#!/bin/sh
set -e
rm -rf $work/oci $work/rootfs && mkdir -p $work/rootfs
skopeo copy -q --insecure-policy --src-tls-verify=false docker://$image oci:$work/oci:v1
for layer in \$(python3 -c 'import json,sys; i=json.load(open("$work/oci/index.json")); m=json.load(open("$work/oci/blobs/sha256/"+i["manifests"][0]["digest"][7:])); print(" ".join(l["digest"][7:] for l in m["layers"]))'); do
  tar -xzf $work/oci/blobs/sha256/\$layer -C $work/rootfs
done
SH
chmod +x "$work/skopeo-tar"

hyperfine --warmup 1 --runs "$runs" --export-markdown "$work/result.md" \
  --prepare "rm -rf $work/berth-root" \
  -n berth "$berth --root $work/berth-root pull -q $image" \
  --prepare "rm -rf $work/oci $work/rootfs" \
  -n skopeo+tar "$work/skopeo-tar" \
  --prepare "$ctr images rm --sync $image >/dev/null 2>&1 || true; $ctr content prune references >/dev/null 2>&1 || true" \
  -n containerd "$ctr images pull --plain-http $image >/dev/null"
cat "$work/result.md"
