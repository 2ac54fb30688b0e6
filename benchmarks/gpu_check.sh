#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU (results under OUT_DIR). Stages, in the order given by STAGES
# (default: exactness layouts trl flex like):
#   exactness  the layout exactness tests on CUDA (shared / packed vs two rows, SDPA and FlexAttention, float32);
#   layouts    benchmarks/layouts.py: one training step per layout and attention kernel, bf16, SmolLM2-135M and -1.7B;
#   trl        benchmarks/bench.py against TRL, each at its defaults (both checkpoint), on a random SmolLM2-135M-shaped model;
#   flex       mmpo's trainers with packing and FlexAttention, torch.compile's recompiles logged (TORCH_LOGS);
#   like       bench.py against TRL like for like (bf16, no gradient checkpointing for either);
#   baseline   the flex stage again on the mmpo source in BASELINE_SRC (an older checkout's src/), for a before/after;
#   like-baseline  mmpo's runs of the like stage on BASELINE_SRC;
#   exactness-sdpa the CUDA layout tests under SDPA only (Llama, Qwen2: no FlexAttention compiles, seconds).
#
#   [STAGES="exactness flex"] [BASELINE_SRC=DIR] bash benchmarks/gpu_check.sh OUT_DIR MODEL_FILES_DIR
# MODEL_FILES_DIR holds SmolLM2-135M's config.json and tokenizer files (the weights are initialised at random here:
# step times do not depend on them). Wheels for packages the machine lacks (trl, datasets, ...) may lie in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}; FILES=${2:?MODEL_FILES_DIR}; mkdir -p "$OUT"
STAGES=${STAGES:-exactness layouts trl flex like}
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 MMPO_CACHE=/tmp/mmpo-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
DEPS=${PYTHONPATH:-}
export PYTHONPATH="$PWD/src${DEPS:+:$DEPS}"
{ nvidia-smi -L; python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"; } 2>&1 | tee "$LOG"

model=/tmp/smollm2-135m-random
random_model() {
  [ -d "$model" ] && return
  python3 - "$FILES" "$model" <<'EOF' 2>&1 | tail -n 1
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
files, out = sys.argv[1:]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(files)).save_pretrained(out)
AutoTokenizer.from_pretrained(files).save_pretrained(out)
EOF
}
# Synthetic pairs, max length 512, 8 pairs a step (~820 tokens a pair); 3 warm-up steps, 5 timed, one repeat.
common=(--mix synthetic:512:8 --steps 5 --warmup 3 --repeats 1 --no-profile --threads 8)
bench() {  # bench NAME TIMEOUT ARGS...: one bench.py run, its report and child logs under OUT/NAME
  local name=$1 limit=$2; shift 2
  random_model
  rm -rf benchmarks/logs "$MMPO_CACHE/reference_logps"  # each run computes (and compiles for) its own reference
  timeout "$limit" python3 benchmarks/bench.py --model "$model" "${common[@]}" --out-dir "$OUT/$name" "$@" \
    --invocation "bash benchmarks/gpu_check.sh (stage $name: bench.py --model SmolLM2-135M-shaped random ${common[*]} $*)" \
    2>&1 | tee -a "$LOG"
  mkdir -p "$OUT/$name" && cp benchmarks/logs/*.log "$OUT/$name/" 2>/dev/null
  grep -c "Recompiling\|recompil" benchmarks/logs/*.log 2>/dev/null | tee -a "$LOG"
}
flex=(--only mmpo-dpo mmpo-rm --settings defaults --mmpo-override packing=true --mmpo-override attn_implementation=flex_attention)

for stage in $STAGES; do
  echo "== $stage $(date -u +%T)" | tee -a "$LOG"
  case $stage in
    exactness)
      timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_prefix_sharing.py -k "cuda or flex" 2>&1 | tail -n 30 | tee -a "$LOG" ;;
    exactness-sdpa)  # the CUDA layout tests under SDPA only (no FlexAttention compiles), Llama and Qwen2
      timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_prefix_sharing.py -k "cuda and sdpa and (llama or qwen2)" 2>&1 | tail -n 8 | tee -a "$LOG" ;;
    layouts)
      rm -f "$OUT/layouts.jsonl"
      timeout 110 python3 benchmarks/layouts.py --shape smollm2-135m --out "$OUT/layouts.jsonl" 2>&1 | grep -v Warning | tee -a "$LOG"
      timeout 90 python3 benchmarks/layouts.py --shape smollm2-1.7b --tasks dpo --out "$OUT/layouts.jsonl" 2>&1 | grep -v Warning | tee -a "$LOG" ;;
    trl) bench trl 180 --settings defaults ;;
    flex) TORCH_LOGS=recompiles bench flex 130 "${flex[@]}" ;;
    like) bench like 170 --settings bf16 ;;
    like-baseline)  # mmpo's runs of the like stage on BASELINE_SRC
      PYTHONPATH="${BASELINE_SRC:?BASELINE_SRC}${DEPS:+:$DEPS}" bench like-baseline 70 --only mmpo-dpo mmpo-rm --settings bf16 ;;
    baseline)
      PYTHONPATH="${BASELINE_SRC:?BASELINE_SRC}${DEPS:+:$DEPS}" TORCH_LOGS=recompiles bench baseline 100 "${flex[@]}" ;;
    *) echo "unknown stage $stage" | tee -a "$LOG" ;;
  esac
done
echo "== done $(date -u +%T)" | tee -a "$LOG"
