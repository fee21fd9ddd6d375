#!/usr/bin/env bash
# The GPU check, one command for a machine with a GPU (see README.md beside this file):
#   bash benchmarks/gpu/run.sh                          on the GPU machine: install the carried wheels, run every step
#   bash benchmarks/gpu/run.sh --cpu-dry-run [--wheels] here: the same steps on CPU, tiny, kernels interpreted
#                                                       (--wheels: from .whl/ too, as on the device)
# Other arguments go to run.py (--budget S, --only STEP...). Results go to $OUT (gpu_results.md, gpu_run.log,
# figures.json, the latency table and its validation).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
dry=0 wheels=1 args=()
for a in "$@"; do
    case "$a" in
        --cpu-dry-run) dry=1; args+=("$a") ;;
        --wheels) wheels=2 ;;
        *) args+=("$a") ;;
    esac
done
[ "$dry" = 1 ] && [ "$wheels" = 1 ] && wheels=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$wheels" != 0 ]; then
    if compgen -G ".whl/*.whl" > /dev/null; then
        # the wheels the image lacks (benchmarks/gpu/wheels.txt) into a folder of their own: the image's torch,
        # numpy and triton stay in charge
        if ! timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" .whl/*.whl >> "$OUT/gpu_run.log" 2>&1; then
            echo "run.sh: installing .whl/*.whl into $SITE failed (see $OUT/gpu_run.log); going on" | tee -a "$OUT/gpu_run.log"
        fi
        export PYTHONPATH="$SITE:$PYTHONPATH"
    else
        echo "run.sh: no .whl/*.whl here: run benchmarks/gpu/fetch_wheels.sh and carry .whl; going on" | tee -a "$OUT/gpu_run.log"
    fi
fi
{ nvidia-smi 2>&1 || true; } | head -20 >> "$OUT/gpu_run.log"
exec "$PY" benchmarks/gpu/run.py --out "$OUT" ${args[@]+"${args[@]}"}
