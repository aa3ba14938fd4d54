"""Training data for the toy-world base model: held-out combinations and caption sampling."""

from __future__ import annotations

import numpy as np

from .render import Scene, all_combos, caption

HELD_OUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("circle", "red", "blue"),
    ("circle", "green", "yellow"),
    ("circle", "white", "purple"),
    ("square", "blue", "green"),
    ("square", "yellow", "white"),
    ("square", "purple", "red"),
    ("triangle", "green", "white"),
    ("triangle", "red", "purple"),
    ("triangle", "yellow", "blue"),
    ("cross", "white", "red"),
    ("cross", "purple", "green"),
    ("cross", "blue", "yellow"),
)
"""(shape, colour, background) triples never shown in pretraining, under any caption: 3 per shape, each
colour twice as object and twice as background, so every single attribute and most pairs are still
seen in training, but these exact combinations are not."""


def train_combos() -> list[tuple[str, str, str]]:
    """The 108 combinations pretraining sees (all 120 minus :data:`HELD_OUT_COMBOS`)."""
    held = set(HELD_OUT_COMBOS)
    return [c for c in all_combos() if c not in held]


EMPTY_CAPTION_P = 0.10
PARTIAL_CAPTION_P = 0.15


def training_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Full caption mostly; 10% empty (for classifier-free guidance); 15% with one or two attributes left
    out ("a circle", "a red circle", "a shape on a blue background"), so short prompts such as a
    DreamBooth class prompt are in-distribution."""
    u = rng.random()
    if u < EMPTY_CAPTION_P:
        return ""
    if u < EMPTY_CAPTION_P + PARTIAL_CAPTION_P:
        keep = rng.random(3) < 0.5
        while keep.all() or not keep.any():
            keep = rng.random(3) < 0.5
        return caption(
            scene.shape if keep[0] else None,
            scene.color if keep[1] else None,
            scene.background if keep[2] else None,
        )
    return caption(scene.shape, scene.color, scene.background)
