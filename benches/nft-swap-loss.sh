#!/usr/bin/env bash
# Does replacing a service's rules drop connections that arrive meanwhile? One service
# (10.43.0.5:80) with 10 local endpoints whose port flips between 80 (a listener) and 81
# (refused) 600 times, each flip one `nft -f` transaction, while a client connects as
# fast as it can (each connection from a fresh source address and port). A connection
# that gets no answer within 1 s was let through untranslated. Shapes (MODE):
#   rules    a rule per endpoint, `numgen random mod (n-i) 0` (berth's proxy)
#   map      one rule, `dnat ip to numgen random mod 10 map { i : addr . port }`
#   vmap     kube-proxy's: `numgen random mod 10 vmap { i : goto ep-i }`, rewritten with
#            the endpoint chains
#   swap     a new service chain each time, and the verdict map's element swapped to it
# Runs in a network namespace of its own. Usage: sudo benches/nft-swap-loss.sh [MODE] [seconds]
set -euo pipefail
mode=${1:-rules}
seconds=${2:-60}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
if [ -z "${INSIDE:-}" ]; then
  INSIDE=1 exec unshare --net "$0" "$@"
fi
work=$(mktemp -d /tmp/berth-nft-loss.XXXXXX)
trap 'rm -rf "$work"' EXIT
ip link set lo up
ip link add uplink type bridge && ip link set uplink up && ip route add default dev uplink
for k in $(seq 1 10); do ip addr add "10.201.0.$k/32" dev lo; done
for k in $(seq 1 20); do ip addr add "10.202.0.$k/32" dev lo; done

generation=0
# The transaction that sends the service to port $1.
rules() {
  local port=$1 k entries=""
  case $mode in
    rules)
      echo "flush chain ip t svc"
      for k in $(seq 0 8); do
        echo "add rule ip t svc numgen random mod $((10 - k)) 0 meta mark set meta mark | 0x4000 meta l4proto tcp dnat to 10.201.0.$((k + 1)):$port"
      done
      echo "add rule ip t svc meta mark set meta mark | 0x4000 meta l4proto tcp dnat to 10.201.0.10:$port" ;;
    map)
      for k in $(seq 0 9); do entries="$entries$k : 10.201.0.$((k + 1)) . $port, "; done
      echo "flush chain ip t svc"
      echo "add rule ip t svc meta mark set meta mark | 0x4000 meta l4proto tcp dnat ip to numgen random mod 10 map { ${entries%, } }" ;;
    vmap)
      for k in $(seq 0 9); do
        echo "flush chain ip t ep$k"
        echo "add rule ip t ep$k meta mark set meta mark | 0x4000 meta l4proto tcp dnat to 10.201.0.$((k + 1)):$port"
        entries="$entries$k : goto ep$k, "
      done
      echo "flush chain ip t svc"
      echo "add rule ip t svc numgen random mod 10 vmap { ${entries%, } }" ;;
    swap)
      for k in $(seq 0 9); do entries="$entries$k : 10.201.0.$((k + 1)) . $port, "; done
      local old=svc$generation
      generation=$((generation + 1))
      echo "add chain ip t svc$generation"
      echo "add rule ip t svc$generation meta mark set meta mark | 0x4000 meta l4proto tcp dnat ip to numgen random mod 10 map { ${entries%, } }"
      echo "delete element ip t ips { 10.43.0.5 . tcp . 80 }"
      echo "add element ip t ips { 10.43.0.5 . tcp . 80 : goto svc$generation }"
      echo "delete chain ip t $old" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
}
{
  echo "table ip t {"
  echo "  chain svc { }"
  echo "  chain svc0 { }"
  for k in $(seq 0 9); do echo "  chain ep$k { }"; done
  echo "  map ips { type ipv4_addr . inet_proto . inet_service : verdict; elements = { 10.43.0.5 . tcp . 80 : goto svc }; }"
  echo "  chain services { ip daddr . meta l4proto . th dport vmap @ips; }"
  echo "  chain out { type nat hook output priority -100; policy accept; jump services; }"
  echo "  chain post { type nat hook postrouting priority 100; policy accept; meta mark & 0x4000 == 0x4000 masquerade; }"
  echo "}"
} > "$work/table.nft"
nft -f "$work/table.nft"
rules 81 > "$work/change.nft" && nft -f "$work/change.nft"

python3 - "$mode" "$seconds" <<'PY' &
import itertools, socket, sys, threading, time
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 80))
listener.listen(4096)
def accept():
    while True:
        connection, _ = listener.accept()
        connection.close()
threading.Thread(target=accept, daemon=True).start()
sources = itertools.cycle(itertools.product(range(20000, 61000), [f"10.202.0.{k}" for k in range(1, 21)]))
lost = tried = 0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    s = socket.socket()
    port, address = next(sources)
    try:
        s.bind((address, port))
    except OSError:
        s.close()
        continue
    s.settimeout(1)
    tried += 1
    try:
        s.connect(("10.43.0.5", 80))
    except ConnectionRefusedError:
        pass
    except OSError:
        lost += 1
    finally:
        s.close()
print(f"{sys.argv[1]}: {lost} of {tried} connections lost")
PY
client=$!
flips=0
while kill -0 "$client" 2>/dev/null; do
  rules 80 > "$work/change.nft" && nft -f "$work/change.nft"
  sleep 0.05
  rules 81 > "$work/change.nft" && nft -f "$work/change.nft"
  sleep 0.05
  flips=$((flips + 2))
done
wait "$client"
echo "$flips transactions"
