#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) from the Go module proxy and prints
# the folder that holds them, for envtest's KUBEBUILDER_ASSETS.
#
# No download site for prebuilt binaries is needed: everything comes from the Go module proxy.
# The binaries are cached per user, outside the clone, keyed by version, so a fresh clone on the
# same machine (which is what CI is) reuses them. The script is idempotent: when the binaries
# are present and report the expected versions it does nothing.
#
# Environment:
#   IMAGEGUARD_K8S_VERSION   kube-apiserver, kube-controller-manager and kubectl version (default 1.37.2)
#   IMAGEGUARD_ETCD_VERSION  etcd version (default 3.6.16)
#   IMAGEGUARD_CACHE         cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/imageguard)
set -euo pipefail

k8s_version=${IMAGEGUARD_K8S_VERSION:-1.37.2}
etcd_version=${IMAGEGUARD_ETCD_VERSION:-3.6.16}
cache_root=${IMAGEGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imageguard}
dest="$cache_root/k8s/${k8s_version}-etcd${etcd_version}"

log() { echo "control-plane: $*" >&2; }

have() {
  # Capture, then match: `cmd | grep -q` under pipefail fails at random when grep exits before
  # the command finished writing (SIGPIPE), which would trigger a needless 15-minute rebuild.
  local apiserver kcm etcd
  [ -x "$dest/kube-apiserver" ] && [ -x "$dest/kube-controller-manager" ] && [ -x "$dest/etcd" ] &&
    [ -x "$dest/kubectl" ] || return 1
  apiserver=$("$dest/kube-apiserver" --version 2>/dev/null) || return 1
  kcm=$("$dest/kube-controller-manager" --version 2>/dev/null) || return 1
  etcd=$("$dest/etcd" --version 2>/dev/null) || return 1
  [[ "$apiserver" == *"v${k8s_version}" ]] && [[ "$kcm" == *"v${k8s_version}" ]] &&
    [[ "$etcd" == *"etcd Version: ${etcd_version}"* ]]
}

if have; then
  echo "$dest"
  exit 0
fi

mkdir -p "$dest"
# One build at a time: a second caller (a parallel test run) waits for the first.
exec 9>"$dest.lock"
flock 9
if have; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0

build_etcd() {
  log "building etcd v${etcd_version} (about 2 minutes on a cold cache)"
  mkdir -p "$work/etcd"
  cd "$work/etcd"
  cat >go.mod <<MOD
module imageguard.local/etcd

go 1.26
MOD
  cat >main.go <<'GO'
// Command etcd is etcd's server, built from its released modules.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get "go.etcd.io/etcd/server/v3@v${etcd_version}" >&2
  go mod tidy >&2
  go build -trimpath -o "$work/etcd.bin" \
    -ldflags "-s -w" . >&2
  # etcd reports its version from go.etcd.io/etcd/api/v3/version, set by the module itself.
  mv "$work/etcd.bin" "$dest/etcd"
}

build_kube() {
  log "building kube-apiserver, kube-controller-manager and kubectl v${k8s_version} (about 15 minutes and 3 GB of memory on a cold cache)"
  mkdir -p "$work/kube"
  cd "$work/kube"
  local minor=${k8s_version#*.}
  minor=${minor%%.*}
  local staging_version="v0.${k8s_version#*.}"
  go mod download -json "k8s.io/kubernetes@v${k8s_version}" >"$work/kubernetes.json"
  local kgomod
  kgomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' "$work/kubernetes.json")
  {
    echo "module imageguard.local/kube"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes v${k8s_version}"
    echo
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local folders,
    # which a dependent module cannot see: pin each to its released v0.x twin.
    sed -n 's#^[[:space:]]*\(replace[[:space:]]\+\)\?\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\2#p' "$kgomod" |
      sort -u | while read -r mod; do
        echo "replace $mod => $mod $staging_version"
      done
  } >go.mod
  cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy >&2
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=v${k8s_version} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=v${k8s_version}"
  go build -p 2 -trimpath -ldflags "$ldflags" -o "$work/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl >&2
  mv "$work/bin/kube-apiserver" "$work/bin/kube-controller-manager" "$work/bin/kubectl" "$dest/"
}

start=$(date +%s)
( build_etcd )
( build_kube )
have || { log "built binaries do not report the expected versions"; exit 1; }
log "built in $(( $(date +%s) - start ))s into $dest"
echo "$dest"
