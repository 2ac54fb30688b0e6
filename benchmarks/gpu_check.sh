#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with an NVIDIA GPU (results under OUT_DIR):
#   1. the layout exactness tests on CUDA (shared / packed vs two rows, SDPA and FlexAttention, float32);
#   2. benchmarks/layouts.py: one training step per layout and attention kernel, bf16, SmolLM2-135M and -1.7B shapes;
#   3. benchmarks/bench.py against TRL (trainers end to end, each at its defaults) on a random SmolLM2-135M-shaped
#      model, then mmpo's trainers again with packing and FlexAttention.
#
#   bash benchmarks/gpu_check.sh OUT_DIR MODEL_FILES_DIR
# MODEL_FILES_DIR holds SmolLM2-135M's config.json and tokenizer files (the weights are initialised at random here:
# step times do not depend on them). Wheels for packages the machine lacks (trl, datasets, ...) may lie in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}; FILES=${2:?MODEL_FILES_DIR}; mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 MMPO_CACHE=/tmp/mmpo-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi -L; python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"; } 2>&1 | tee "$LOG"

echo "== 1. exactness on CUDA" | tee -a "$LOG"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_prefix_sharing.py -k "cuda or flex" 2>&1 | tail -n 30 | tee -a "$LOG"

echo "== 2. layouts" | tee -a "$LOG"
rm -f "$OUT/layouts.jsonl"
timeout 110 python3 benchmarks/layouts.py --shape smollm2-135m --out "$OUT/layouts.jsonl" 2>&1 | grep -v Warning | tee -a "$LOG"
timeout 90 python3 benchmarks/layouts.py --shape smollm2-1.7b --tasks dpo --out "$OUT/layouts.jsonl" 2>&1 | grep -v Warning | tee -a "$LOG"

echo "== 3. against TRL" | tee -a "$LOG"
python3 - "$FILES" /tmp/smollm2-135m-random <<'EOF' 2>&1 | tail -n 3 | tee -a "$LOG"
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
files, out = sys.argv[1:]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(files)).save_pretrained(out)
AutoTokenizer.from_pretrained(files).save_pretrained(out)
EOF
common=(--model /tmp/smollm2-135m-random --mix synthetic:512:8 --settings defaults --steps 5 --warmup 3 --repeats 1
        --no-profile --threads 8)
timeout 180 python3 benchmarks/bench.py "${common[@]}" --out-dir "$OUT/bench" --invocation \
  "bash benchmarks/gpu_check.sh (bench.py --model SmolLM2-135M-shaped random --mix synthetic:512:8 --settings defaults --steps 5 --warmup 3 --repeats 1)" 2>&1 | tee -a "$LOG"
timeout 90 python3 benchmarks/bench.py "${common[@]}" --only mmpo-dpo mmpo-rm --mmpo-override packing=true \
  --mmpo-override attn_implementation=flex_attention --out-dir "$OUT/bench-flex" 2>&1 | tee -a "$LOG"
tail -n 25 benchmarks/logs/*.log > "$OUT/child-logs.txt" 2>/dev/null; true
