#!/usr/bin/env bash
# Online serving on one GPU (issue 13): `paged-flex serve` beside `transformers serve --continuous-batching`,
# one at a time on 127.0.0.1, on a random LLaMA-3.2-1B-shaped bf16 model with the SmolLM2 tokenizer; each
# measured by tools/serve_bench.py (64 streamed requests of ~512 words, 128 tokens out, at 4/s and all at once).
# usage: bash tools/gpu/serve_peer_bench.sh        writes $OUT/serve_bench_h200.json and the servers' logs
# Needs the gitignored .whl/ carried with the tree: ibm-fms and fastcore (.whl/*.whl), the serving wheels
# (.whl/serve/: FastAPI, uvicorn, openai, typer, ...) and the SmolLM2 tokenizer (.whl/tok/).
# SERVE_TINY=1 PY=.venv/bin/python NO_INSTALL=1: a tiny fp32 model on the CPU, 4 requests of 8 tokens.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-.}
mkdir -p "$OUT"
if [ -z "${NO_INSTALL:-}" ]; then  # into $SITE, only what this python lacks: its torch, transformers, numpy stay
  timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE
  picks=$(timeout 20 "$PY" tools/gpu/serve_peer_bench.py --pick-wheels "${WHEELS:-.whl/serve}") || exit 1
  echo "serving wheels to install into $SITE:" $(for w in $picks; do basename "$w"; done)
  if [ -n "$picks" ]; then
    timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" $picks || exit 1
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
name=serve_bench_h200.json
[ -n "${SERVE_TINY:-}" ] && name=serve_bench_tiny.json
timeout 460 "$PY" tools/gpu/serve_peer_bench.py --out "$OUT/$name" --work /tmp/serve_peer --budget 420
rc=$?
cp /tmp/serve_peer/*.log "$OUT/" 2>/dev/null
exit $rc
