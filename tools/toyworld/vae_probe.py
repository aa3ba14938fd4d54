"""Can the toy VAE carry an outline? Encoder-mean -> decoder round trips, read back by the reader.

    python -m tools.toyworld.vae_probe [--pipeline DIR] [--n 128] [--grid PATH]

prints the share of round trips read right for world scenes (one- and two-colour) and each bundled subject's
instance-style renders (its own detector), and can save a picture: originals above, round trips below. No
adapter can draw what the decoder cannot output, so a subject's round-trip rate bounds its yardstick score.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from moslora_diffusion.toyworld.subject import SUBJECTS, Subject


def subject_renders(subject: Subject, n: int, seed: int = 5) -> np.ndarray:
    """``n`` renders of ``subject`` cycling through its backgrounds (random size and position)."""
    rng = np.random.default_rng(seed)
    bgs = subject.backgrounds
    return np.stack([np.asarray(subject.render(rng, bgs[i % len(bgs)])) for i in range(n)])


def round_trip_rates(vae, n: int = 128, seed: int = 5) -> dict[str, float]:
    """Share of round trips read right: ``world`` (one-colour scenes), ``world_two_colour`` and one entry
    per bundled subject key."""
    from tools.toyworld.pretrain import reconstruction_accuracy, round_trip

    rates = {
        "world": reconstruction_accuracy(vae, n=n, seed=seed, two_colour_p=0.0),
        "world_two_colour": reconstruction_accuracy(vae, n=n, seed=seed, two_colour_p=1.0),
    }
    for key, subject in SUBJECTS.items():
        rec = round_trip(vae, subject_renders(subject, n, seed))
        rates[key] = float(np.mean([subject.detect(r) for r in rec]))
    return rates


def round_trip_grid(vae, path: Path, per_subject: int = 8, seed: int = 5) -> None:
    """Save originals (top row) and their round trips (bottom row) for each subject, 4x enlarged."""
    from PIL import Image

    from tools.toyworld.pretrain import round_trip

    images = np.concatenate([subject_renders(s, per_subject, seed) for s in SUBJECTS.values()])
    grid = np.concatenate([np.concatenate(list(images), 1), np.concatenate(list(round_trip(vae, images)), 1)])
    h, w = grid.shape[:2]
    Image.fromarray(grid).resize((w * 4, h * 4), Image.Resampling.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import AutoencoderKL

    from moslora_diffusion.toyworld import base_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default=None, help="pipeline folder (default: the bundled base model)")
    p.add_argument("--n", type=int, default=128, help="images per row of the table")
    p.add_argument("--grid", type=Path, default=None, help="save originals and round trips here (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(Path(args.pipeline or base_model_path()) / "vae").eval()
    rates = round_trip_rates(vae, n=args.n)
    print("| images | round trips read right |\n|---|---|")
    for key, rate in rates.items():
        print(f"| {key} ({args.n}) | {100 * rate:.1f} % |")
    if args.grid:
        round_trip_grid(vae, args.grid)
        print(f"saved {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
