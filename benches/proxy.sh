#!/usr/bin/env bash
# Service programming latency: the time from a change of a Service's endpoints (the API
# request that makes it) to the change being in effect for traffic, with SERVICES
# Services of 10 endpoints each programmed, as kube-proxy's
# network_programming_duration measures it (its CI target: p99 under a few seconds in
# iptables mode; the issue's: under 100 ms at 1,000 Services).
#   `berth server` (no agent) holds the Services and EndpointSlices (selector-less
#   Services, slices made by this script); `berth proxy` programs them into nftables.
#   One probed Service's 10 endpoints are local addresses; each change moves them
#   between port 81 (nothing listens: refused at once) and port 80 (a listener), and the
#   probe connects to the Service's cluster IP until the answer changes.
# Everything runs in a network namespace of its own (its rules and addresses vanish with
# it). p50/p90/p99/max over CHANGES changes. Usage: sudo benches/proxy.sh [services] [changes]
# (BERTH_NO_BUILD=1: use the built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
services=${1:-1000}
changes=${2:-200}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
./scripts/deps
[ -n "${BERTH_NO_BUILD:-}" ] || cargo build --release -q --bin berth
berth=$PWD/target/release/berth
work=$(mktemp -d /tmp/berth-proxy-bench.XXXXXX)
ns_pid=
cleanup() {
  # The sleeping process holds the namespace (unshare ignores SIGTERM while it waits for
  # it, and ends with it): the namespace, its rules and addresses go with it.
  [ -n "$ns_pid" ] && kill "$ns_pid" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$work"
  true
}
trap cleanup EXIT

# The namespace: held by a sleeping process, entered with nsenter (keeps /sys and cgroups).
unshare --net --fork sleep infinity &
echo $! > "$work/holder.pid"
for _ in $(seq 100); do
  ns_pid=$(pgrep -P "$(cat "$work/holder.pid")" sleep || true)
  [ -n "$ns_pid" ] && break
  sleep 0.05
done
cat > "$work/inside.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
berth=$1 work=$2 services=$3 changes=$4 repo=$5
ip link set lo up
# A default route (a node has one: a cluster IP is routed before the rules translate it).
ip link add uplink type bridge && ip link set uplink up && ip route add default dev uplink
for k in $(seq 1 10); do ip addr add "10.201.0.$k/32" dev lo; done
# The probes' source addresses.
for k in $(seq 1 20); do ip addr add "10.202.0.$k/32" dev lo; done
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done' EXIT
. "$repo/benches/common.sh"
start_server "$berth" "$work/server"
python3 - "$services" > "$work/objects.yaml" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    name = "svc-probe" if i == 0 else f"svc-{i}"
    print(f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  labels: {{kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: bench}}
addressType: IPv4
ports: [{{name: "", port: 81, protocol: TCP}}]
endpoints:""")
    for k in range(10):
        e = i * 10 + k
        ip = f"10.201.0.{k + 1}" if i == 0 else f"10.{210 + e // 62500}.{e // 250 % 250}.{e % 250 + 1}"
        print(f"- addresses: [{ip}]\n  conditions: {{ready: true}}")
PY
kubectl apply -f "$work/objects.yaml" >/dev/null
kubectl config view --raw -o jsonpath='{.users[0].user.token}' > "$work/token"
kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$work/ca.crt"
server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
cluster_ip=$(kubectl get service svc-probe -o jsonpath='{.spec.clusterIP}')
started=$(date +%s.%N)
"$berth" --log-level debug proxy --kubeconfig "$KUBECONFIG" 2>"$work/proxy.log" &
pids+=($!)
python3 - "$server" "$work" "$cluster_ip" "$changes" "$started" "$services" <<'PY'
import http.client, json, socket, ssl, statistics, sys, threading, time
from urllib.parse import urlparse
server, work, cluster_ip, changes, started, services = sys.argv[1:7]
changes, started = int(changes), float(started)
# A listener on port 80 of every address here: the endpoints at port 80 answer.
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 80))
listener.listen(4096)
def accept():
    while True:
        conn, _ = listener.accept()
        conn.close()
threading.Thread(target=accept, daemon=True).start()
# Each probe from the next source address and port of 20 x 41,000: a pair used again
# while conntrack still remembers its earlier connection (TIME_WAIT: 120 s) would meet
# that connection's translation, not the new rules, and a probe loop sends hundreds of
# connections a second.
import itertools
sources = itertools.cycle(itertools.product(range(20000, 61000), [f"10.202.0.{k}" for k in range(1, 21)]))
def probe_socket():
    while True:
        s = socket.socket()
        port, address = next(sources)
        try:
            s.bind((address, port))
            return s
        except OSError:
            s.close()
def probe(timeout):
    """What the probed Service's cluster IP does now: "accepted", "refused", or None
    (no answer within the timeout: no rule leads anywhere yet)."""
    s = probe_socket()
    s.settimeout(timeout)
    try:
        s.connect((cluster_ip, 80))
        return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return None
    finally:
        s.close()
# The first full programming: until the probed Service is refused (port 81) at once.
deadline = time.time() + 120
while probe(0.2) is None and time.time() < deadline:
    time.sleep(0.01)
first = time.time() - started
url = urlparse(server)
context = ssl.create_default_context(cafile=f"{work}/ca.crt")
token = open(f"{work}/token").read().strip()
api = http.client.HTTPSConnection(url.hostname, url.port, context=context)
path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/svc-probe-1"
samples = []
for i in range(changes):
    port = 80 if i % 2 == 0 else 81
    body = json.dumps({"ports": [{"name": "", "port": port, "protocol": "TCP"}]})
    t0 = time.perf_counter()
    api.request("PATCH", path, body, {"Content-Type": "application/merge-patch+json",
                                      "Authorization": f"Bearer {token}"})
    response = api.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"PATCH: {response.status}")
    want = "accepted" if port == 80 else "refused"
    silent = 0
    while (seen := probe(1)) != want:
        silent += seen is None
        if time.perf_counter() - t0 > 30:
            sys.exit(f"change {i} not in effect after 30 s")
    samples.append((time.perf_counter() - t0) * 1000)
    if silent:
        print(f"change {i} ({want}): {silent} probe(s) unanswered for 1 s, "
              f"{samples[-1]:.0f} ms in all", file=sys.stderr)
samples.sort()
def q(p):
    return samples[min(len(samples) - 1, int(p * len(samples)))]
print(f"## {services} Services of 10 endpoints, {changes} endpoint changes, one at a time")
print()
print(f"first full programming (from the proxy's start): {first * 1000:.0f} ms")
print()
print("| p50 | p90 | p99 | max | mean |")
print("|---:|---:|---:|---:|---:|")
print(f"| {q(0.5):.1f} ms | {q(0.9):.1f} ms | {q(0.99):.1f} ms | {samples[-1]:.1f} ms | {statistics.mean(samples):.1f} ms |")
PY
echo
echo "berth proxy peak resident memory: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/${pids[1]}/status)"
echo "rules: $(nft list table ip berth-services | wc -l) lines"
[ -z "${KEEP:-}" ] || { nstat -az > "$work/nstat.txt"; cat /proc/net/stat/nf_conntrack > "$work/conntrack-stat.txt" 2>/dev/null || true; }
SH
chmod +x "$work/inside.sh"
nsenter --net="/proc/$ns_pid/ns/net" "$work/inside.sh" "$berth" "$work" "$services" "$changes" "$PWD"
