"""Measure the toy-world base model with the attribute reader.

    python -m moslora_diffusion.toyworld.evaluate [--model DIR] [--per-combo 20] [--json out.json] [--grid grid.png]

draws every held-out (shape, colour, background) combination ``per_combo`` times (seeds 0..per_combo-1)
with :func:`default_sampler_settings` and reports how often the reader finds each attribute.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..durable import write_atomic, write_image
from ..imaging import tile
from .data import HELD_OUT_COMBOS, HELD_OUT_TWO_COLOUR
from .reader import halves_match, read_attributes, read_halves
from .render import caption


def load_toy_pipeline(model: str | os.PathLike | None = None):
    """The bundled base model (or ``model``) as a float32 StableDiffusionPipeline on the CPU."""
    import torch
    from diffusers import StableDiffusionPipeline

    from . import base_model_path

    path = Path(model) if model is not None else base_model_path()
    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: dict[str, Any] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Image.Image]:
    """One image per (prompt, seed) with the default sampler settings (overridable by ``settings``)."""
    from tqdm.auto import tqdm

    from ..sampling import draw
    from .models import sample_request

    request = sample_request(prompts, seeds, settings)
    with tqdm(total=len(prompts), desc="sampling", unit="image", disable=not progress) as bar:
        return draw(pipe, [request], max_batch=batch_size, progress=bar.update)[0]


def combo_caption(combo: tuple[str, ...]) -> str:
    """Caption of a (shape, colour, background) or (shape, top, bottom, background) combination."""
    if len(combo) == 4:
        shape, top, bottom, background = combo
        return caption(shape, top, background, bottom)
    return caption(*combo)


def eval_set(
    per_combo: int = 20, combos: Sequence[tuple[str, ...]] = HELD_OUT_COMBOS
) -> list[tuple[tuple[str, ...], str, int]]:
    """(combo, prompt, seed) for every combo and seeds 0..per_combo-1."""
    return [(c, combo_caption(c), seed) for c in combos for seed in range(per_combo)]


def score(images: Sequence[Image.Image], combos: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """Per-attribute and all-three accuracy of the reader's readings against the requested combos. For a
    two-colour combination "color" means both halves right (:func:`reader.read_halves`)."""
    hits = np.zeros((len(images), 3), bool)
    per_combo: dict[str, list[bool]] = {}
    for k, (im, combo) in enumerate(zip(images, combos)):
        if len(combo) == 4:
            shape, top, bottom, background = combo
            h = read_halves(im)
            colour_ok = "shape" in h and halves_match(h, top, bottom)
            hits[k] = [h.get("shape") == shape, colour_ok, h["background"] == background]
        else:
            r = read_attributes(im)
            hits[k] = [r.shape == combo[0], r.color == combo[1], r.background == combo[2]]
        per_combo.setdefault(combo_caption(combo), []).append(bool(hits[k].all()))
    return {
        "n": len(images),
        "shape": float(hits[:, 0].mean()),
        "color": float(hits[:, 1].mean()),
        "background": float(hits[:, 2].mean()),
        "all_three": float(hits.all(1).mean()),
        "per_combo": {k: float(np.mean(v)) for k, v in per_combo.items()},
    }


def evaluate_base(
    model: str | os.PathLike | None = None,
    per_combo: int = 20,
    combos: Sequence[tuple[str, ...]] = HELD_OUT_COMBOS,
    grid_path: str | os.PathLike | None = None,
    pipe=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Reader-measured quality of the base model on the held-out combinations (see module docstring).

    Returns ``{"n", "shape", "color", "background", "all_three", "per_combo", "settings"}``; with
    ``grid_path`` also writes a PNG grid (one row per combo, up to 10 seeds per row).
    """
    import torch

    from .models import default_sampler_settings

    torch.set_num_threads(min(2, torch.get_num_threads()))
    if pipe is None:
        pipe = load_toy_pipeline(model)
    items = eval_set(per_combo, combos)
    images = generate(pipe, [p for _, p, _ in items], [s for _, _, s in items], progress=progress)
    result = score(images, [c for c, _, _ in items])
    result["settings"] = default_sampler_settings()
    if grid_path is not None:
        ncols = min(per_combo, 10)
        rows = [images[i * per_combo : i * per_combo + ncols] for i in range(len(combos))]
        write_image(grid_path, tile([im for row in rows for im in row], ncols=ncols, scale=2, pad=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline directory (default: the bundled base model)")
    p.add_argument("--per-combo", type=int, default=20, help="seeds per held-out combination (default 20)")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.add_argument("--grid", default=None, help="write a sample grid PNG here")
    p.add_argument(
        "--two-colour",
        action="store_true",
        help="the held-out two-colour panel instead of the one-colour one",
    )
    args = p.parse_args(argv)
    combos = HELD_OUT_TWO_COLOUR if args.two_colour else HELD_OUT_COMBOS
    res = evaluate_base(args.model, per_combo=args.per_combo, combos=combos, grid_path=args.grid)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        write_atomic(Path(args.json), text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
