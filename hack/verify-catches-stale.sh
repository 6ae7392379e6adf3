#!/usr/bin/env bash
# Proves that `make verify` fails when a generated file is stale: in a throwaway clone of HEAD, a
# commit changes an API type's doc comment without regenerating, and `make verify` must then fail
# and name the stale CRD. Run by .ci/run after `make verify` passed on the real tree.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

git clone -q "$root" "$tmp/clone"
cd "$tmp/clone"
git -c user.name=ci -c user.email=ci@imageguard.invalid commit -q --allow-empty -m base
sed -i 's|// Image is the repository without tag or digest|// Image is the STALE repository without tag or digest|' api/v1alpha1/imagescanreport_types.go
git diff --quiet && { echo "verify-catches-stale: the edit did not apply"; exit 1; }
git -c user.name=ci -c user.email=ci@imageguard.invalid commit -q -am "change a type, forget make manifests"

# Reuse the tools already installed in the real tree's bin/.
if make verify LOCALBIN="$root/bin" >"$tmp/out" 2>&1; then
  cat "$tmp/out"
  echo "verify-catches-stale: make verify passed on a stale CRD"
  exit 1
fi
if ! grep -q 'config/crd/bases/security.imageguard.dev_imagescanreports.yaml' "$tmp/out"; then
  cat "$tmp/out"
  echo "verify-catches-stale: make verify failed, but not because of the stale CRD"
  exit 1
fi
echo "verify-catches-stale: make verify fails on a stale CRD, as it must"
