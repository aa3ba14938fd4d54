#!/usr/bin/env bash
# The GPU check, prepared for a machine with CUDA (it has not run on a GPU yet: see docs/benchmarks.md).
#
#   bash benchmarks/gpu_check.sh [--reference-dir DIR] [--quick]
#
# 1. Our trainer alone: SD 1.5 at 512 px and SDXL at 1024 px (real architectures, random weights, nothing
#    downloaded), bf16, MoSLoRA vs LoRA, caches on/off: s/step, peak RSS and peak CUDA memory
#    (benchmarks/bench_training.py --device cuda).
# 2. Side by side with diffusers' own scripts on the same job, in bf16 and in fp16: SD 1.5 512 px against
#    train_dreambooth_lora.py and SDXL 1024 px against train_dreambooth_lora_sdxl.py (their flags, the same
#    images, prompt, rank, steps and seed), printing s/step, first-step time and peak GPU memory, and the
#    ratios (benchmarks/bench_vs_diffusers.py --device cuda). Needs DIR = a diffusers checkout's
#    examples/dreambooth folder (never copied into this repository) and torchvision in this Python.
#    Without --reference-dir, step 2 is skipped and says so.
#
# Every table is appended to docs/benchmarks.md with command, machine and date. --quick: fewer steps.
set -euo pipefail
cd "$(dirname "$0")/.."

REF_DIR=""
QUICK=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reference-dir) REF_DIR="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch; this script is for a GPU machine")
name = torch.cuda.get_device_name(0)
free, total = torch.cuda.mem_get_info()
print(f"gpu_check: {name}, {total / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

STEPS=(--steps 5 --warmup 2)
VS_STEPS=()
if [[ $QUICK == 1 ]]; then
  STEPS=(--steps 2 --warmup 1)
  VS_STEPS=(--steps 3,8)
fi

echo "== 1/2 our trainer on CUDA (bf16): SD 1.5 512 px, SDXL 1024 px"
"$PY" benchmarks/bench_training.py --device cuda "${STEPS[@]}"

if [[ -z "$REF_DIR" ]]; then
  echo "== 2/2 skipped: no --reference-dir (diffusers' examples/dreambooth folder)"
  exit 0
fi
for script in train_dreambooth_lora.py train_dreambooth_lora_sdxl.py; do
  if [[ ! -f "$REF_DIR/$script" ]]; then
    echo "gpu_check: $REF_DIR/$script not found" >&2
    exit 2
  fi
done
"$PY" -c "import torchvision" 2>/dev/null || {
  echo "gpu_check: diffusers' scripts need torchvision in $PY (pip install torchvision matching torch)" >&2
  exit 2
}
for precision in bf16 fp16; do
  echo "== 2/2 side by side with diffusers' scripts, $precision"
  "$PY" benchmarks/bench_vs_diffusers.py --device cuda --jobs sd1,sdxl --mixed-precision "$precision" \
    --reference-script "$REF_DIR/train_dreambooth_lora.py" \
    --reference-script-sdxl "$REF_DIR/train_dreambooth_lora_sdxl.py" "${VS_STEPS[@]}"
done
