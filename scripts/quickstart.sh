#!/usr/bin/env bash
# The main job in one command: set up, train a MoSLoRA adapter on the bundled toy-world base model and
# example subject, and write a PNG grid comparing images with and without the adapter.
#   bash scripts/quickstart.sh [--output_dir DIR] [other train_dreambooth_moslora.py flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/setup_env.sh "app,train"
export HF_HUB_OFFLINE=1
moslora-diffusion quickstart "$@"
