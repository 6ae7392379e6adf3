#!/usr/bin/env bash
# `make demo`: a local control plane, the controller, sample namespaces and policies, then
# `kubectl get imagescanreports -A`. Everything runs in the background from .demo/ and stays up;
# `make demo-down` (hack/demo.sh down) stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=$PWD/.demo
mkdir -p "$demo"

stop_pid() {
  local file=$1
  if [ -f "$file" ]; then
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
  fi
}

if [ "${1:-up}" = down ]; then
  stop_pid "$demo/controller.pid"
  stop_pid "$demo/localcluster.pid"
  echo "demo: stopped"
  exit 0
fi

if [ -f "$demo/localcluster.pid" ] && kill -0 "$(cat "$demo/localcluster.pid")" 2>/dev/null; then
  echo "demo: already running (make demo-down stops it); restarting"
  "$0" down
fi

assets=$(hack/control-plane.sh)
kubectl="$assets/kubectl"
export KUBECONFIG=$demo/kubeconfig
rm -f "$KUBECONFIG"

echo "demo: starting a local control plane (etcd, kube-apiserver) with the ImageGuard CRDs"
go build -o bin/localcluster ./hack/localcluster
KUBEBUILDER_ASSETS=$assets nohup bin/localcluster --write-kubeconfig "$KUBECONFIG" >"$demo/localcluster.log" 2>&1 &
echo $! >"$demo/localcluster.pid"
for _ in $(seq 1 300); do
  [ -s "$KUBECONFIG" ] && break
  kill -0 "$(cat "$demo/localcluster.pid")" 2>/dev/null || { cat "$demo/localcluster.log"; exit 1; }
  sleep 0.5
done
[ -s "$KUBECONFIG" ] || { echo "demo: the control plane did not start"; cat "$demo/localcluster.log"; exit 1; }

echo "demo: starting imageguard controller (log: $demo/controller.log)"
nohup bin/imageguard controller --kubeconfig "$KUBECONFIG" --cache-dir "$demo/cache" \
  --metrics-bind-address 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18081 \
  >"$demo/controller.log" 2>&1 &
echo $! >"$demo/controller.pid"
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1 && break
  kill -0 "$(cat "$demo/controller.pid")" 2>/dev/null || { cat "$demo/controller.log"; exit 1; }
  sleep 0.5
done
curl -fsS http://127.0.0.1:18081/readyz >/dev/null || { echo "demo: the controller is not ready"; cat "$demo/controller.log"; exit 1; }

echo "demo: sample namespaces and policies"
for ns in demo-a demo-b; do
  "$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  "$kubectl" label namespace "$ns" imageguard.dev/policy=baseline --overwrite >/dev/null
done
"$kubectl" apply -k config/samples

echo
echo "\$ kubectl get imagescanreports -A"
"$kubectl" get imagescanreports -A
echo
echo "\$ kubectl get imageguard -A"
"$kubectl" get imageguard -A
echo
echo "The cluster keeps running. To use it:"
echo "  export KUBECONFIG=$KUBECONFIG PATH=$assets:\$PATH"
echo "Stop everything with: make demo-down"
