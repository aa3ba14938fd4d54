"""Pretrain the toy-world base model from scratch on the CPU (see tools/toyworld/pretrain.py). From the
repository's root:

    nice -n 5 python -m tools.toyworld.pretrain_toyworld --output-dir outputs/toyworld_pretrain

writes OUTPUT/pipeline (a stock StableDiffusionPipeline), OUTPUT/loss_curve.png and OUTPUT/train_log.json.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tools.toyworld.pretrain import PretrainConfig, pretrain


def main() -> None:
    p = argparse.ArgumentParser(description="Pretrain the toy-world text-to-image base model on the CPU.")
    p.add_argument("--output-dir", type=Path, required=True)
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "output_dir":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=f"default {f.default}")
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(flag, type=kind, default=f.default, help=f"default {f.default}")
    args = vars(p.parse_args())
    cfg = PretrainConfig(**args)
    path = pretrain(cfg)
    print(f"saved pipeline to {path}")


if __name__ == "__main__":
    main()
