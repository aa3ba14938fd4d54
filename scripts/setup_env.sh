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

# pip's own notices (build-backend messages, local index settings) are kept in a log and shown only if
# an install fails, so that set-up prints what it does and nothing a user cannot act on.
PIP_LOG="$VENV/pip-install.log"
quiet_pip() {
  if ! python -m pip install --quiet "$@" >"$PIP_LOG" 2>&1; then
    cat "$PIP_LOG" >&2
    echo "[setup] pip install $* failed (log above, also in $PIP_LOG)" >&2
    return 1
  fi
}
quiet_pip --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    spec="torch"            # CUDA build from PyPI
  else
    spec="torch==2.13.0"    # CPU machines: this release installs as a CPU build here
  fi
  echo "[setup] installing $spec"
  quiet_pip "$spec"
fi
echo "[setup] installing moslora-diffusion[$EXTRAS]"
quiet_pip -e "$ROOT[$EXTRAS]"
