#!/usr/bin/env python
"""DreamBooth with MoSLoRA (or LoRA) adapters for SD 1.x/2.x and SDXL.

    accelerate launch train_scripts/train_dreambooth_moslora.py \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \
        --instance_data_dir dog --instance_prompt "a photo of sks dog" --output_dir out

Run with no model / data flags to train on the bundled toy world. `--help` lists every flag.
"""

import logging
import os
import sys
from pathlib import Path

try:
    import moslora_diffusion  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moslora_diffusion.process_env import prepare_entry_point

prepare_entry_point()  # before anything below loads torch

from moslora_diffusion import toyworld  # noqa: E402
from moslora_diffusion.errors import MoSLoraError  # noqa: E402
from moslora_diffusion.quiet import quiet_entry_point  # noqa: E402
from moslora_diffusion.toyworld.quality import scorer_for  # noqa: E402
from moslora_diffusion.training import parse_args, run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    quiet_entry_point()
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv, defaults=toyworld.training_defaults(argv))
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if main_process else logging.WARNING,
    )
    try:
        # toy-world runs report subject / prompt scores at each validation (a learning curve, not only loss)
        run_training(cfg, scorer=scorer_for(cfg))
    except MoSLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
