#!/usr/bin/env bash
# Create .venv-tf4: a second virtualenv with transformers 4.57.x, used by tests/test_tf4_compat.py
# to check that checkpoints written by headscope (under transformers 5) load correctly under the
# previous major, which re-ties a decoder whenever config.json allows it (docs/rescale.md).
#
# Deliberately NOT --system-site-packages: that would let the venv see transformers 5.
# torch is pinned to the version the main environment uses (pip finds the local wheel/cache).
# Usage: bash scripts/tf4-venv.sh [PYTHON]   (re-running it is cheap: it exits if the venv works)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-${PYTHON:-python3}}"
VENV=.venv-tf4
TORCH_VERSION="${TF4_TORCH_VERSION:-2.13.0}"

check() {
  "$VENV/bin/python" - <<'PY'
import torch, transformers, safetensors
assert transformers.__version__.startswith("4.57."), transformers.__version__
print(f"{transformers.__version__} torch {torch.__version__} safetensors {safetensors.__version__}")
PY
}

if [ -x "$VENV/bin/python" ] && check >/dev/null 2>&1; then
  echo "$VENV ready: transformers $(check)"
  exit 0
fi

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==$TORCH_VERSION" 'transformers==4.57.*' safetensors numpy
echo "$VENV ready: transformers $(check)"
