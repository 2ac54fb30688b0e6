#!/usr/bin/env bash
# The full side-by-side matrix, then profiles of the length-512 cases, in one command on a quiet machine.
#   bash benchmarks/run_all.sh        (builds the bench venv first if needed; ~25-30 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash benchmarks/setup.sh | tail -n 1)
PY="$VENV/bin/python"
"$PY" benchmarks/bench.py --wait-quiet 1.0 \
  --lengths 128 512 1024 --batch 128:2,512:1,1024:1 --steps 128:3,512:2,1024:1 --warmup 1 --repeats 1 "$@"
for case in mmpo-dpo trl-dpo-precompute mmpo-rm; do
  "$PY" benchmarks/profile_case.py "$case" 512 --batch 1 --steps 1 --profile "benchmarks/profiles/$case-L512.txt"
done
