#!/usr/bin/env bash
# The GPU half of the checks in one command (about 5 minutes on one H200): the CUDA tests, then the GPU benchmarks of
# the distance and the losses. Run from anywhere, with the package's dependencies installed:
#
#     bash benchmarks/gpu_check.sh            # logs go to gpu_check/ (or to $OUT if set)
#
# Each step has its own time limit and the script goes on after a failure; the last lines summarise the exit codes.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/examples${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
summary=()

step() {  # step NAME SECONDS COMMAND...: run it, log to $out/NAME.log, remember the exit code
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local code=$?
    tail -n 60 "$out/$name.log"
    summary+=("$name: exit $code")
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
step tests 200 python -m pytest -q --maxfail=10 -p no:cacheprovider -k "cuda or graph" tests/test_poincare.py tests/backends \
    tests/losses tests/miners tests/distances tests/layers tests/regularizers
step distance 120 python benchmarks/bench_distance.py --device cuda
step softtriple 45 python benchmarks/bench_softtriple.py --device cuda
step chest 60 python benchmarks/bench_chest.py --device cuda
step hier 60 python benchmarks/bench_hier.py --device cuda
step lca 45 python benchmarks/bench_triton_lca.py --device cuda
step hyphc 45 python benchmarks/bench_hyphc.py --device cuda
step readme 90 python -m pytest -q -p no:cacheprovider tests/test_readme.py
printf '%s\n' "${summary[@]}"
