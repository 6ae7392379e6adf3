#!/usr/bin/env bash
# Writes the Helm chart's CRD templates from the CRDs controller-gen generated, so the chart never
# carries a hand-edited copy. Each CRD is wrapped in `crds.install` and kept on uninstall
# (helm.sh/resource-policy: keep), so deleting the release never deletes users' reports and policies.
#
# Usage: hack/chart-crds.sh SRC_DIR DEST_DIR [VALUE]   (VALUE defaults to crds.install)
set -euo pipefail
src=${1:?source folder}
dest=${2:?destination folder}
value=${3:-crds.install}

mkdir -p "$dest"
rm -f "$dest"/*.yaml
for f in "$src"/*.yaml; do
  if grep -q '{{' "$f"; then
    echo "chart-crds: $f contains '{{', which Helm would read as a template" >&2
    exit 1
  fi
  out="$dest/$(basename "$f")"
  {
    echo "{{- if .Values.$value }}"
    awk '
      /^---$/ { next }
      /^  annotations:$/ && !done {
        print
        print "    helm.sh/resource-policy: keep"
        done = 1
        next
      }
      { print }
      END { if (!done) { print "chart-crds: no metadata.annotations in " FILENAME > "/dev/stderr"; exit 1 } }
    ' "$f"
    echo "{{- end }}"
  } >"$out"
done
