#!/usr/bin/env bash
# Copy the generated CRDs (crds/*.yaml, from `exfm crds --out crds`) into the Helm chart's crds/ folder,
# byte for byte, removing chart copies whose source is gone. `--check` only reports a difference (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds
dst=helm/exfm/crds
check=0
[ "${1:-}" = "--check" ] && check=1
shopt -s nullglob
sources=("$src"/*.yaml)
if [ ${#sources[@]} -eq 0 ]; then
  echo "sync-chart-crds: no CRDs in $src/ (generate them first: make crds)" >&2
  exit 1
fi
mkdir -p "$dst"
status=0
for f in "${sources[@]}"; do
  target="$dst/$(basename "$f")"
  if ! cmp -s "$f" "$target"; then
    if [ $check -eq 1 ]; then echo "differs: $target (from $f)"; status=1; else cp "$f" "$target"; echo "synced: $target"; fi
  fi
done
for t in "$dst"/*.yaml; do
  if [ ! -e "$src/$(basename "$t")" ]; then
    if [ $check -eq 1 ]; then echo "stale: $t (no $src/$(basename "$t"))"; status=1; else rm "$t"; echo "removed: $t"; fi
  fi
done
[ $check -eq 1 ] && [ $status -ne 0 ] && echo "run scripts/sync-chart-crds.sh to update the chart" >&2
exit $status
