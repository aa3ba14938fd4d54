"""The example DreamBooth subject and its detector.

The subject is a two-colour design on a known shape: a circle whose top half is red and bottom half
yellow. The base model knows "circle", "red" and "yellow" but has only ever seen one-colour objects, so
no prompt in its vocabulary draws this; DreamBooth must bind it to the rare token ("a sks circle").
A new design on a known outline is far easier for a small adapter to learn than a new outline (see
docs/toyworld.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .reader import (
    background_rgb,
    largest_component,
    nearest_color,
    object_candidates,
    shape_scores,
    to_array,
)
from .render import COLORS, RESOLUTION, compose, jitter_geometry, shape_mask
from .tokenizer import RARE_TOKEN

SUBJECT_SHAPE = "circle"
SUBJECT_TOP, SUBJECT_BOTTOM = "red", "yellow"
SUBJECT_BACKGROUNDS = ("blue", "green", "purple", "white", "blue", "green")
INSTANCE_PROMPT = f"a {RARE_TOKEN} circle"
CLASS_PROMPT = "a circle"
DESCRIPTION = (
    "a circle whose top half is red and bottom half is yellow (split horizontally through its centre)"
)
SUBJECT_SEED = 1234


def render_subject(
    rng: np.random.Generator | int, background: str = "blue", size: float | None = None
) -> Image.Image:
    """One 32 x 32 image of the subject on ``background`` with random size and position."""
    if background in (SUBJECT_TOP, SUBJECT_BOTTOM) or background not in COLORS:
        raise ValueError(f"background {background!r} must be a palette colour other than red and yellow")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    s, cx, cy = jitter_geometry(rng)
    s = size if size is not None else max(s, 14.0)
    bbox = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    cov = shape_mask(SUBJECT_SHAPE, bbox)
    rows = np.arange(RESOLUTION, dtype=np.float32)[:, None] + 0.5
    # Fraction of each pixel row above the split line, for an anti-aliased boundary.
    top_frac = np.clip(cy - (rows - 0.5), 0.0, 1.0)
    fg = top_frac[..., None] * np.asarray(COLORS[SUBJECT_TOP], np.float32) + (
        1 - top_frac[..., None]
    ) * np.asarray(COLORS[SUBJECT_BOTTOM], np.float32)
    fg = np.broadcast_to(fg, (RESOLUTION, RESOLUTION, 3))
    return Image.fromarray(compose(cov, fg, COLORS[background]), "RGB")


def subject_score(image: Image.Image | np.ndarray) -> dict[str, Any]:
    """Measurements behind :func:`detect_subject`: shape scores and the colours of the two halves."""
    arr = to_array(image)
    bg = background_rgb(arr)
    _, cand = object_candidates(arr, bg)
    mask = largest_component(cand)
    out: dict[str, Any] = {"background": nearest_color(bg), "pixels": int(mask.sum())}
    if mask.sum() < 20:
        return out
    scores = shape_scores(mask.astype(np.float32), mask)
    ys, xs = np.nonzero(mask)
    mid = (ys.min() + ys.max() + 1) / 2.0
    halves = {}
    for name, sel in (("top", ys + 0.5 < mid - 0.5), ("bottom", ys + 0.5 > mid + 0.5)):
        px = arr[ys[sel], xs[sel]]
        if len(px) == 0:
            return out
        names = [nearest_color(p) for p in px]
        colour = nearest_color(np.median(px, axis=0))
        halves[name] = (colour, float(np.mean([n == colour for n in names])))
    out.update(
        shape=max(scores, key=scores.get),
        shape_scores=scores,
        top=halves["top"][0],
        top_purity=halves["top"][1],
        bottom=halves["bottom"][0],
        bottom_purity=halves["bottom"][1],
    )
    return out


def detect_subject(image: Image.Image | np.ndarray, min_purity: float = 0.6) -> bool:
    """Does the image show the subject (a circle, top half red, bottom half yellow)?

    The object (pixels far from the border's median colour, largest connected part) must be best
    matched by the circle template, its upper half must read red and its lower half yellow, each with at
    least ``min_purity`` of that half's pixels nearest to that colour.
    """
    s = subject_score(image)
    return (
        s.get("shape") == SUBJECT_SHAPE
        and s.get("top") == SUBJECT_TOP
        and s.get("bottom") == SUBJECT_BOTTOM
        and s["top_purity"] >= min_purity
        and s["bottom_purity"] >= min_purity
    )


def subject_images(
    n: int = len(SUBJECT_BACKGROUNDS), seed: int = SUBJECT_SEED
) -> list[tuple[Image.Image, str]]:
    """The subject's instance images with their per-image captions (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bg = SUBJECT_BACKGROUNDS[i % len(SUBJECT_BACKGROUNDS)]
        out.append((render_subject(rng, bg), f"{INSTANCE_PROMPT} on a {bg} background"))
    return out


TRAIN_DEFAULTS: dict[str, Any] = {
    # From the recipe search (docs/quality.md): adapters on layers the text does not condition (ResNet convs,
    # proj_in/out, self-attention) made every shape a circle on ordinary prompts; cross-attention +
    # feed-forward adapters with a text-encoder adapter ("sks" gets its own direction) learn the subject about
    # as often and keep ordinary prompts far better.
    "unet_targets": "attn2.to_q,attn2.to_k,attn2.to_v,attn2.to_out.0,ff.net.0.proj,ff.net.2",
    "train_text_encoder": True,
    "rank": 8,
    "learning_rate": 1e-3,
    "train_batch_size": 6,
    "max_train_steps": 600,
    "resolution": 32,
}


def write_subject_assets(directory: str | os.PathLike) -> Path:
    """Write the instance PNGs and subject.json into ``directory`` (what ships in assets/subject/)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (im, cap) in enumerate(subject_images()):
        name = f"subject_{i}.png"
        im.save(directory / name)
        files.append({"file": name, "caption": cap})
    info = {
        "instance_prompt": INSTANCE_PROMPT,
        "class_prompt": CLASS_PROMPT,
        "rare_token": RARE_TOKEN,
        "class_noun": SUBJECT_SHAPE,
        "description": DESCRIPTION,
        "images": files,
        "validation_prompts": [
            f"{INSTANCE_PROMPT} on a {bg} background" for bg in ("blue", "green", "white", "purple")
        ],
        # Flags the training script takes for this subject when they are left at their defaults.
        "train_defaults": TRAIN_DEFAULTS,
    }
    # Per-image captions in the form the training script reads.
    with open(directory / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for item in files:
            fh.write(json.dumps({"file_name": item["file"], "text": item["caption"]}) + "\n")
    tmp = directory / "subject.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, directory / "subject.json")
    return directory


def subject_info() -> dict[str, Any]:
    """The bundled subject.json, with ``images`` resolved to absolute paths."""
    from . import subject_path

    info = json.loads((subject_path() / "subject.json").read_text())
    for item in info["images"]:
        item["path"] = str(subject_path() / item["file"])
    return info
