# Helpers the benchmarks share (sourced, not run).

# start_server BERTH DATA_DIR: `berth server` with no agent and one simulated node on
# loopback, its pid appended to the caller's `pids`; returns once the API answers, with
# KUBECONFIG exported.
start_server() {
  "$1" server --disable-agent --simulate-nodes 1 --data-dir "$2" \
    --https-listen-port 0 --bind-address 127.0.0.1 2>/dev/null &
  pids+=($!)
  for _ in $(seq 300); do [ -f "$2/kubeconfig" ] && break; sleep 0.1; done
  export KUBECONFIG=$2/kubeconfig
  until kubectl get --raw /readyz >/dev/null 2>&1; do sleep 0.2; done
}
