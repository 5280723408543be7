#!/usr/bin/env bash
# `build` of one multi-stage Dockerfile (benches/build-context: 3 stages that do not depend
# on each other, then a final one; about 20 steps), side by side in one hyperfine run:
#   berth    berth build
#   buildah  buildah bud --layers (Debian buildah 1.28, runc)
#   docker   Docker's classic builder (DOCKER_BUILDKIT=0) on Debian's docker.io 20.10
#            daemon, run privately (own data root and socket, no bridge, no iptables)
# three ways each: cold (cache and images removed before each run), a rebuild with nothing
# changed, and a rebuild after a one-line source change (a new line each run).
# The base image (busybox from Debian's busybox-static) is the same for all three. The
# whole run happens in a private network namespace. Usage: sudo benches/build.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
./scripts/deps
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v dockerd >/dev/null || need+=(docker.io)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
cargo build --release --bins -q
berth=$PWD/target/release/berth
context=$PWD/benches/build-context

work=$(mktemp -d /tmp/berth-build-bench.XXXXXX)
cleanup() {
  [ -f "$work/dockerd.pid" ] && kill "$(cat "$work/dockerd.pid")" 2>/dev/null && sleep 2 || true
  umount -R "$work/buildah/root" 2>/dev/null || true
  umount -R "$work/buildah/run" 2>/dev/null || true
  grep -o "$work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp -a "$context" "$work/context"

# The base image: busybox with passwd and group files.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$work/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
export BERTH_ROOT=$work/berth
"$berth" import --change 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
"$berth" save -o "$work/busybox-save.tar" busybox:latest
buildah="buildah --root $work/buildah/root --runroot $work/buildah/run --storage-driver overlay"
$buildah pull -q "docker-archive:$work/busybox-save.tar" >/dev/null
$buildah tag "$($buildah images -q | head -1)" busybox:latest

cat > "$work/bench.sh" <<SH
#!/bin/bash
set -e
ip link set lo up
dockerd --data-root $work/docker --exec-root $work/docker-exec --pidfile $work/dockerd.pid \\
  -H unix://$work/docker.sock --bridge=none --iptables=false --ip6tables=false \\
  --storage-driver overlay2 >$work/dockerd.log 2>&1 &
for i in \$(seq 100); do [ -S $work/docker.sock ] && docker -H unix://$work/docker.sock info >/dev/null 2>&1 && break; sleep 0.2; done
docker="docker -H unix://$work/docker.sock"
\$docker load -q -i $work/busybox-save.tar >/dev/null
export DOCKER_BUILDKIT=0
berth_build="$berth build -q -t bench:latest $work/context"
buildah_build="$buildah bud --runtime runc --layers -q -t bench:latest $work/context"
docker_build="\$docker build -q --network none -t bench:latest $work/context"
hyperfine -N --runs $runs --export-markdown $work/cold.md \\
  --prepare "sh -c '$berth rmi -f bench:latest >/dev/null 2>&1; $berth builder prune -f >/dev/null'" -n "berth build (cold)" "\$berth_build" \\
  --prepare "sh -c '$buildah rmi -a -f >/dev/null 2>&1; $buildah pull -q docker-archive:$work/busybox-save.tar >/dev/null; $buildah tag \\\$($buildah images -q | head -1) busybox:latest'" -n "buildah bud (cold)" "\$buildah_build" \\
  --prepare "sh -c '\$docker rmi -f bench:latest >/dev/null 2>&1; \$docker image prune -f >/dev/null; \$docker builder prune -af >/dev/null'" -n "docker build, classic (cold)" "\$docker_build"
hyperfine -N --warmup 1 --runs $runs --export-markdown $work/warm.md \\
  -n "berth build (no change)" "\$berth_build" \\
  -n "buildah bud (no change)" "\$buildah_build" \\
  -n "docker build, classic (no change)" "\$docker_build"
hyperfine -N --warmup 1 --runs $runs --export-markdown $work/change.md \\
  --prepare "sh -c 'echo // \\\$(date +%s%N) >> $work/context/src/file-07.c'" -n "berth build (one-line change)" "\$berth_build" \\
  --prepare "sh -c 'echo // \\\$(date +%s%N) >> $work/context/src/file-07.c'" -n "buildah bud (one-line change)" "\$buildah_build" \\
  --prepare "sh -c 'echo // \\\$(date +%s%N) >> $work/context/src/file-07.c'" -n "docker build, classic (one-line change)" "\$docker_build"
SH
chmod +x "$work/bench.sh"
unshare -n "$work/bench.sh"
cat "$work/cold.md" "$work/warm.md" "$work/change.md"
