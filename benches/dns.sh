#!/usr/bin/env bash
# Cluster DNS under load, side by side with dnsmasq, in one run: dnsperf asks both the
# same A questions for SERVICES Services' names (`svc-N.default.svc.cluster.local`).
#   berth    `berth dns`, answering from the API's Services (a `berth server` with no
#            agent, so nothing needs root or touches host networking)
#   dnsmasq  Debian's dnsmasq, authoritative for cluster.local, answering the same names
#            from a hosts file (its cache; no upstream)
# Both listen on loopback ports the script picks; neither has an upstream it could
# reach, so no question leaves the machine. Queries per second and the ratio.
# Usage: benches/dns.sh [services] [seconds]   (BERTH_NO_BUILD=1: use the built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
services=${1:-1000}
seconds=${2:-10}
need=()
for pair in dnsperf:dnsperf dnsmasq:dnsmasq-base; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install ${need[*]} first (or run as root)" >&2; exit 1; }
  echo "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -n "${BERTH_NO_BUILD:-}" ] || cargo build --release -q --bin berth
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-dns-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  rm -rf "$work"
  true
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

. benches/common.sh
start_server "$berth" "$work/server"

# The Services, then the names and addresses the API gave them.
for i in $(seq 0 $((services - 1))); do
  printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: svc-%d}\nspec:\n  selector: {app: svc-%d}\n  ports: [{port: 80}]\n' "$i" "$i"
done > "$work/services.yaml"
kubectl apply -f "$work/services.yaml" >/dev/null
kubectl get services -o jsonpath='{range .items[*]}{.spec.clusterIP} {.metadata.name}.default.svc.cluster.local{"\n"}{end}' \
  | grep '^[0-9]' | grep ' svc-' > "$work/hosts"
[ "$(wc -l < "$work/hosts")" -eq "$services" ] || { echo "not every Service got an address" >&2; exit 1; }
awk '{print $2 " A"}' "$work/hosts" > "$work/queries"

berth_port=$(free_port)
"$berth" dns --kubeconfig "$KUBECONFIG" --listen "127.0.0.1:$berth_port" --upstream 127.0.0.1:9 2>/dev/null &
pids+=($!)
dnsmasq_port=$(free_port)
dnsmasq --keep-in-foreground --conf-file=/dev/null --port="$dnsmasq_port" --listen-address=127.0.0.1 \
  --bind-interfaces --no-resolv --no-hosts --addn-hosts="$work/hosts" --local=/cluster.local/ \
  --cache-size=10000 --pid-file="$work/dnsmasq.pid" --user=root 2>/dev/null &
pids+=($!)
first=$(head -1 "$work/queries" | cut -d' ' -f1)
for port in "$berth_port" "$dnsmasq_port"; do
  for _ in $(seq 100); do
    dnsperf -s 127.0.0.1 -p "$port" -d <(echo "$first A") -l 1 -q 1 2>/dev/null | grep -q 'Queries completed: *1 ' && break
    sleep 0.2
  done
done

run() { # name port
  local out
  out=$(dnsperf -s 127.0.0.1 -p "$2" -d "$work/queries" -l "$seconds" -c 4 -q 200 2>&1)
  local qps lost
  qps=$(awk '/Queries per second/ {print $4}' <<<"$out")
  lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
  echo "$1 $qps $lost"
}
echo "## $services Services, $seconds s of dnsperf (4 clients, 200 queries in flight) per server"
echo
echo "| server | queries/s | lost |"
echo "|---|---:|---:|"
berth_line=$(run berth "$berth_port")
dnsmasq_line=$(run dnsmasq "$dnsmasq_port")
for line in "$berth_line" "$dnsmasq_line"; do
  read -r name qps lost <<<"$line"
  echo "| $name | $qps | $lost |"
done
read -r _ berth_qps _ <<<"$berth_line"
read -r _ dnsmasq_qps _ <<<"$dnsmasq_line"
echo
python3 -c "print('berth answers %.2fx the queries per second dnsmasq does' % ($berth_qps / $dnsmasq_qps))"
echo "berth dns peak resident memory: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/${pids[1]}/status)"
