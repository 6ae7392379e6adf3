#!/usr/bin/env bash
# `make demo`: a local control plane, a local registry with sample images and an offline
# vulnerability DB, the controller, sample workloads and policies, then
# `kubectl get imagescanreports -A`; then a newer DB is published and the counts change without
# any image being pulled again. Everything runs in the background from .demo/ and stays up;
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
  stop_pid "$demo/registry.pid"
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

echo "demo: starting a local control plane (etcd, kube-apiserver, kube-controller-manager) with the ImageGuard CRDs"
go build -o bin/localcluster ./hack/localcluster
KUBEBUILDER_ASSETS=$assets nohup bin/localcluster --write-kubeconfig "$KUBECONFIG" >"$demo/localcluster.log" 2>&1 &
echo $! >"$demo/localcluster.pid"
for _ in $(seq 1 300); do
  [ -s "$KUBECONFIG" ] && break
  kill -0 "$(cat "$demo/localcluster.pid")" 2>/dev/null || { cat "$demo/localcluster.log"; exit 1; }
  sleep 0.5
done
[ -s "$KUBECONFIG" ] || { echo "demo: the control plane did not start"; cat "$demo/localcluster.log"; exit 1; }

registry=127.0.0.1:${DEMO_REGISTRY_PORT:-5001}
echo "demo: starting a local registry at $registry with sample images and the DB artifact"
go build -o bin/demoregistry ./hack/demoregistry
nohup bin/demoregistry serve --addr "$registry" >"$demo/registry.log" 2>&1 &
echo $! >"$demo/registry.pid"
for _ in $(seq 1 100); do curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
bin/demoregistry seed --registry "$registry" >"$demo/seed.log"
bin/demoregistry publish-db --registry "$registry" --advisories config/demo/advisories-v1.yaml >>"$demo/seed.log"

echo "demo: starting imageguard controller (log: $demo/controller.log)"
rm -rf "$demo/cache" "$demo/webhook-certs"
"$kubectl" create namespace imageguard-system --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
# The webhook configuration exists before the controller starts, as with the Helm chart: the
# controller injects its CA bundle at start.
sed "s|REGISTRY|$registry|g" config/demo/admission.yaml | "$kubectl" apply -f -
nohup bin/imageguard controller --kubeconfig "$KUBECONFIG" --cache-dir "$demo/cache" \
  --db-repository "$registry/aquasecurity/trivy-db:2" --insecure-registries "$registry" --db-check-interval 5s \
  --metrics-bind-address 127.0.0.1:18443 --health-probe-bind-address 127.0.0.1:18081 \
  --webhook-port 19443 --webhook-cert-dir "$demo/webhook-certs" --webhook-cert-secret imageguard-webhook-tls \
  --webhook-cert-namespace imageguard-system --webhook-cert-hosts 127.0.0.1 --webhook-configurations imageguard-demo \
  --receiver-bind-address 127.0.0.1:19292 \
  >"$demo/controller.log" 2>&1 &
echo $! >"$demo/controller.pid"
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:18081/readyz >/dev/null 2>&1 && break
  kill -0 "$(cat "$demo/controller.pid")" 2>/dev/null || { cat "$demo/controller.log"; exit 1; }
  sleep 0.5
done
curl -fsS http://127.0.0.1:18081/readyz >/dev/null || { echo "demo: the controller is not ready"; cat "$demo/controller.log"; exit 1; }

echo "demo: sample namespaces, workloads and policies"
for ns in demo-a demo-b; do
  "$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  "$kubectl" label namespace "$ns" imageguard.dev/policy=baseline --overwrite >/dev/null
done
sed "s|REGISTRY|$registry|g" config/demo/workloads.yaml | "$kubectl" apply -f -
"$kubectl" apply -k config/samples

echo "demo: waiting for the four reports (demo/web is shared by both namespaces: analysed once)"
for _ in $(seq 1 180); do
  [ "$("$kubectl" get imagescanreports -A --no-headers 2>/dev/null | wc -l)" -ge 4 ] && break
  sleep 1
done
"$kubectl" wait --for=condition=Ready imagescanreports --all -A --timeout=180s >/dev/null

echo
echo "\$ kubectl get imagescanreports -A"
"$kubectl" get imagescanreports -A
echo

reads=$(curl -fsS "http://$registry/blob-reads")
web_critical() { "$kubectl" get imagescanreports -n demo-a -o jsonpath='{range .items[?(@.spec.image=="'"$registry"'/demo/web")]}{.status.summary.critical}{end}'; }
before=$(web_critical)
echo "demo: publishing a newer DB with two more advisories (the controller checks every 5s)"
bin/demoregistry publish-db --registry "$registry" --advisories config/demo/advisories-v2.yaml >>"$demo/seed.log"
for _ in $(seq 1 120); do
  [ "$(web_critical)" != "$before" ] && break
  sleep 1
done
echo
echo "\$ kubectl get imagescanreports -A"
"$kubectl" get imagescanreports -A
echo
echo "demo: image blobs read from the registry since the DB update: $(( $(curl -fsS "http://$registry/blob-reads") - reads - 1 )) (the DB artifact itself: 1)"
echo
"$kubectl" wait --for=condition=Ready vulnerabilitydatabase/trivy-db --timeout=60s >/dev/null || true
echo "\$ kubectl get vulnerabilitydatabases -o wide"
"$kubectl" get vulnerabilitydatabases -o wide
echo
echo "demo: what the DB update changed in demo-a's web report (status.changes; a NewVulnerabilities Event went to it and to its workload):"
"$kubectl" get imagescanreports -n demo-a -o jsonpath='{range .items[?(@.spec.image=="'"$registry"'/demo/web")]}{.status.changes}{"\n"}{end}'
echo
echo "\$ kubectl get imageguard -A"
"$kubectl" get imageguard -A
echo

echo "demo: admission. demo-enforce's ImagePolicy enforces: images from $registry only, no critical finding"
echo "Its registries rule is also a generated ValidatingAdmissionPolicy, which the API server enforces itself, even while ImageGuard is down:"
for _ in $(seq 1 30); do
  [ -n "$("$kubectl" get validatingadmissionpolicies -l imageguard.dev/generated=true -o name 2>/dev/null)" ] && break
  sleep 1
done
echo "\$ kubectl get validatingadmissionpolicies -l imageguard.dev/generated=true"
"$kubectl" get validatingadmissionpolicies -l imageguard.dev/generated=true
deployment() {
  printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: %s, namespace: demo-enforce}\nspec:\n  selector: {matchLabels: {app: %s}}\n  template:\n    metadata: {labels: {app: %s}}\n    spec: {containers: [{name: app, image: "%s"}]}\n' "$1" "$1" "$1" "$2"
}
for d in "untrusted docker.io/library/nginx:1.27" "web $registry/demo/web:1.0" "api $registry/demo/api:1.0"; do
  set -- $d
  echo "\$ kubectl apply -n demo-enforce (Deployment $1, image $2)"
  deployment "$1" "$2" | "$kubectl" apply -f - 2>&1 | sed 's/^/  /' || true
done
echo
echo "demo: the controller manager makes the admitted Deployment's pods; scaling it is never refused"
"$kubectl" scale deployment/api -n demo-enforce --replicas=3 | sed 's/^/  /'
for _ in $(seq 1 60); do
  [ "$("$kubectl" get pods -n demo-enforce -l app=api --no-headers 2>/dev/null | wc -l)" -ge 3 ] && break
  sleep 1
done
echo "\$ kubectl get pods -n demo-enforce"
"$kubectl" get pods -n demo-enforce
echo
echo
echo "demo: a RegistryScan of the demo registry: its images are scanned before anything runs them"
sed "s|REGISTRY|$registry|g" config/demo/registryscan.yaml | "$kubectl" apply -f -
"$kubectl" wait --for=condition=Ready registryscan/demo -n demo-registry --timeout=120s >/dev/null || true
echo "\$ kubectl get registryscans -A"
"$kubectl" get registryscans -A
echo "\$ kubectl get imagescanreports -n demo-registry -l security.imageguard.dev/registry-scan=true"
"$kubectl" get imagescanreports -n demo-registry -l security.imageguard.dev/registry-scan=true
echo "(a registry notifies pushes at http://127.0.0.1:19292/hooks/registry/demo-registry/demo: docs/registry-scans.md)"
echo
echo "The cluster keeps running. To use it:"
echo "  export KUBECONFIG=$KUBECONFIG PATH=$assets:\$PATH"
echo "Stop everything with: make demo-down"
