#!/usr/bin/env bash
# The GPU table of docs/runner.md in one command (about 2 minutes on one H200 with 16 CPU cores, no network):
#
#   bash benchmarks/gpu_runner.sh            # 4,000 JPEGs 500x375; ViT-S/16 and ResNet-50; softtriple,
#                                            # hyperbolic_softtriple, proxy_anchor+hier, chest; float16, batch 128
#   TINY=1 bash benchmarks/gpu_runner.sh     # the same script in seconds on a CPU (tiny images and models)
#
# Extra arguments go to benchmarks/bench_runner.py (e.g. -- --augment-on device). Writes everything it prints to
# $OUT/gpu_runner.txt and the figures to $OUT/bench_runner.json when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
args=(--folder "$work/data" --output "$work/runs")
if [ "${TINY:-0}" = 1 ]; then
    args+=(--tiny)
fi
log="$work/gpu_runner.txt"
start=$SECONDS
PYTHONUNBUFFERED=1 python benchmarks/bench_runner.py "${args[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "gpu_runner.sh: $((SECONDS - start)) s, exit status $status" | tee -a "$log"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$log" "$OUT/gpu_runner.txt"
    cp "$work/runs/bench_runner.json" "$OUT/" 2>/dev/null || true
fi
exit "$status"
