#!/usr/bin/env bash
# Installs torch 2.13.0 into the given python's environment without ever pulling a CUDA build on a
# machine that has no NVIDIA GPU.
set -euo pipefail
PY=${1:?usage: install_torch.sh PYTHON}
VERSION=2.13.0
if "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$VERSION' else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$PY" -m pip install -q "torch==$VERSION"
fi
# No GPU: a local CPU wheel (pip's find-links) if this machine has one, else PyTorch's CPU index.
links=$("$PY" -m pip config get global.find-links 2>/dev/null || true)
for dir in $links; do
  if ls "$dir"/torch-"$VERSION"+cpu-*.whl >/dev/null 2>&1; then
    exec "$PY" -m pip install -q "torch==$VERSION"
  fi
done
exec "$PY" -m pip install -q "torch==$VERSION" --index-url https://download.pytorch.org/whl/cpu
