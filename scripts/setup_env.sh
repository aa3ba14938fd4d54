#!/usr/bin/env bash
# Create (or reuse) a virtual environment in .venv and install moslora-diffusion into it.
# Usage: source scripts/setup_env.sh [extras]   (extras default: app,train)
# PyTorch: a machine with an NVIDIA driver gets pip's default (CUDA) build; any other machine gets the
# pinned CPU release below. Set TORCH_SPEC to choose yourself (e.g. TORCH_SPEC="torch==2.13.0").
set -euo pipefail
EXTRAS="${1:-app,train}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOSLORA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    spec="torch"            # CUDA build from PyPI
  else
    spec="torch==2.13.0"    # CPU machines: this release installs as a CPU build here
  fi
  echo "[setup] installing $spec"
  python -m pip install --quiet "$spec"
fi
echo "[setup] installing moslora-diffusion[$EXTRAS]"
python -m pip install --quiet -e "$ROOT[$EXTRAS]"
