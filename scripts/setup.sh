#!/usr/bin/env bash
# Create .venv (if needed) and install headscope with the given extras (default: server).
# torch is installed first, alone and pinned, so pip takes the CPU build: on this kind of machine
# a local CPU wheel of 2.13.0 exists; elsewhere set HEADSCOPE_TORCH_INDEX_URL to PyTorch's CPU
# wheel index. The project's own install then finds torch satisfied and pulls nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-server}"
python_bin="${PYTHON:-python3}"
torch_version="2.13.0"

if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

if ! python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${HEADSCOPE_TORCH_INDEX_URL:-}" ]; then
    python -m pip install -q "torch==$torch_version" --index-url "$HEADSCOPE_TORCH_INDEX_URL"
  else
    python -m pip install -q "torch==$torch_version"
  fi
fi
python -m pip install -q -e ".[$extras]"

# The tests must never run on (or download) a CUDA build.
if [ "${HEADSCOPE_ALLOW_CUDA_TORCH:-0}" != "1" ] && python - <<'PY'
import sys, torch
sys.exit(0 if torch.version.cuda else 1)
PY
then
  echo "setup: torch $(python -c 'import torch; print(torch.__version__)') is a CUDA build;" \
       "set HEADSCOPE_TORCH_INDEX_URL to PyTorch's CPU index (or HEADSCOPE_ALLOW_CUDA_TORCH=1)." >&2
  exit 1
fi
