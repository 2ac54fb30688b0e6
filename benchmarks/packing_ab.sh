#!/usr/bin/env bash
# Packing on the CPU, before and after, alternating: mmpo's trainers at their defaults with `packing: false`
# (A) and `packing: true` (B, what `auto` picks on a CPU), real texts, 4 pairs a step, bf16, three rounds.
#   bash benchmarks/packing_ab.sh [OUT_DIR]   (default benchmarks/packing; the table goes to OUT_DIR/log.txt)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/packing}; mkdir -p "$OUT"
PY=${BENCH_PYTHON:-$HOME/.cache/mmpo/bench-venv/bin/python}
{ echo "# bash benchmarks/packing_ab.sh $OUT at $(git rev-parse --short HEAD)$(git diff --quiet -- src || echo ' (+ uncommitted src)'), $(date -u +%FT%TZ)"
  for round in 1 2 3; do
    for v in A B; do
      setting=false; [ $v = B ] && setting=true
      PYTHONPATH="$PWD/src" "$PY" benchmarks/bench.py --mix real:256:4 --settings bf16 --only mmpo-dpo mmpo-rm --steps 3 \
        --warmup 1 --repeats 1 --no-profile --mmpo-override packing=$setting --out-dir "/tmp/packing-ab/$v$round" 2>&1 \
        | grep "s/step" | sed "s/^/packing=$setting round $round /"
    done
  done; } | tee "$OUT/log.txt"
