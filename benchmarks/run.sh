#!/usr/bin/env bash
# The benchmark suite in one command: builds the bench venv (mmpo from this checkout plus TRL, outside the
# repository), then runs `python -m benchmarks CASE` in it. Meant for a quiet machine.
#
#   bash benchmarks/run.sh                        # the `trl` case: mmpo against TRL 1.16, every mix, case and
#                                                 # setting; writes benchmarks/RESULTS.md and results.json
#   BENCH_MODEL=tiny BENCH_REPEATS=1 BENCH_WAIT_QUIET=0 BENCH_OUT=/tmp/smoke bash benchmarks/run.sh
#                                                 # a smoke run: every case end to end, numbers meaningless
#   bash benchmarks/run.sh memory --steps 40      # another case of the suite, its own arguments
#                                                 # (memory, layouts, report; see python -m benchmarks --help)
#
# Size of the `trl` case (the defaults take ~100 min on 2 quiet cores; RESULTS.md records what a run used):
#   BENCH_MIXES     "NAME:MAX_LENGTH:PAIRS_PER_STEP ..."  (default: synthetic:128:4 real:256:4 prompt-heavy:256:4)
#   BENCH_STEPS     timed steps per run (2)     BENCH_WARMUP  untimed steps before them (2)
#   BENCH_REPEATS   runs per case (3)           BENCH_SETTINGS  "defaults bf16 fp32" (also: defaults-fp32)
#   BENCH_MMPO      "KEY=VALUE ..." mmpo config keys for every mmpo run (e.g. "prefix_sharing=false")
#   BENCH_PROFILE=0 no profiled step         BENCH_WAIT_QUIET  wait for a 1-min load below this first (1.0; 0: don't)
#   BENCH_OUT       where RESULTS.md, results.json and profiles/ go (default benchmarks/)
#   BENCH_MODEL     a model directory, or "tiny" (2 random layers, SmolLM2's tokenizer: smoke runs only)
#   MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_  glibc's, for every run (e.g. TRL with the allocator settings mmpo
#                   applies to itself on CPUs, keep_host_memory; see mmpo.host_memory)
# Extra arguments go to the case (python -m benchmarks trl --help).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(bash benchmarks/setup.sh | tail -n 1)
# The bench venv installs mmpo from this checkout (editable), so the suite imports the package as a user has it.
"$VENV/bin/python" -m pip install -q --no-deps -e .

case ${1:-trl} in
  trl) [ $# -gt 0 ] && shift ;;
  memory|layouts|report) exec "$VENV/bin/python" -m benchmarks "$@" ;;
esac

invocation="bash benchmarks/run.sh"
args=(--wait-quiet "${BENCH_WAIT_QUIET:-1.0}" --repeats "${BENCH_REPEATS:-3}")
# Steps and warm-up default to bench.py's own (DEFAULT_STEPS, DEFAULT_WARMUP).
if [ -n "${BENCH_STEPS:-}" ]; then args+=(--steps "$BENCH_STEPS"); fi
if [ -n "${BENCH_WARMUP:-}" ]; then args+=(--warmup "$BENCH_WARMUP"); fi
# glibc's allocator settings reach every run (TRL's included) through the environment; recorded when set.
for v in BENCH_MIXES BENCH_STEPS BENCH_WARMUP BENCH_REPEATS BENCH_SETTINGS BENCH_MMPO BENCH_PROFILE BENCH_WAIT_QUIET \
         BENCH_MODEL BENCH_OUT MALLOC_MMAP_THRESHOLD_ MALLOC_TRIM_THRESHOLD_; do
  if [ -n "${!v:-}" ]; then invocation="$v=\"${!v}\" $invocation"; fi
done
for mix in ${BENCH_MIXES:-}; do args+=(--mix "$mix"); done
if [ -n "${BENCH_SETTINGS:-}" ]; then read -ra settings <<< "$BENCH_SETTINGS"; args+=(--settings "${settings[@]}"); fi
for kv in ${BENCH_MMPO:-}; do args+=(--mmpo-override "$kv"); done
if [ "${BENCH_PROFILE:-1}" = 0 ]; then args+=(--no-profile); fi
if [ -n "${BENCH_MODEL:-}" ]; then args+=(--model "$BENCH_MODEL"); fi
if [ -n "${BENCH_OUT:-}" ]; then args+=(--out-dir "$BENCH_OUT"); fi
if [ $# -gt 0 ]; then invocation="$invocation $*"; fi

"$VENV/bin/python" -m benchmarks trl "${args[@]}" --invocation "$invocation" "$@"
