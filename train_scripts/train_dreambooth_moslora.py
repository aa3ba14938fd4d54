#!/usr/bin/env python
"""DreamBooth with MoSLoRA (or LoRA) adapters for SD 1.x/2.x and SDXL.

    accelerate launch train_scripts/train_dreambooth_moslora.py \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \
        --instance_data_dir dog --instance_prompt "a photo of sks dog" --output_dir out

Run with no model / data flags to train on the bundled toy world. `--help` lists every flag.
"""

import sys

from moslora_diffusion.training import TrainConfigError, parse_args, run_training


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        run_training(cfg)
    except TrainConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
