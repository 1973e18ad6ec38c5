#!/usr/bin/env bash
# The engine's speed checks on a GPU in one call: W1 through the engine beside its peers in one process
# (tools/gpu/e2e_bench.py), then decode and prefill attention beside SDPA (decode_graphs.py, prefill_bench.py).
# usage: bash tools/gpu/speed_check.sh [e2e|attention|all]    results and logs under $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ -d .whl ]; then   # pure-Python wheels the GPU machine lacks (ibm-fms, fastcore), carried with the tree
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OUT=${OUT:-.}
which=${1:-all}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv,noheader
if [ "$which" = all ] || [ "$which" = e2e ] || [ "$which" = before ]; then
  timeout 400 python3 tools/gpu/e2e_bench.py all 2>&1 | tee "$OUT/e2e.log"
fi
if [ "$which" = all ] || [ "$which" = attention ]; then
  timeout 180 python3 tools/gpu/decode_graphs.py 2>&1 | tee "$OUT/decode.log"
  timeout 300 python3 tools/gpu/prefill_bench.py 2>&1 | tee "$OUT/prefill.log"
fi
if [ "$which" = before ] && [ -d .old ]; then   # the code before a change, exported to .old (git archive REV paged_flex tools)
  (cd .old && PYTHONPATH=$PWD:/tmp/site timeout 200 python3 tools/gpu/e2e_bench.py ours ours_paged_flex) 2>&1 | tee "$OUT/before.log"
fi
