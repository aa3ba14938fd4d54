"""Training data for the toy-world base model: held-out combinations and caption sampling."""

from __future__ import annotations

import numpy as np

from .render import Scene, all_combos, all_two_colour_combos, caption, random_scene
from .subject import CIRCLE

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


HELD_OUT_TWO_COLOUR: tuple[tuple[str, str, str, str], ...] = (
    ("circle", "blue", "white", "green"),
    ("circle", "purple", "green", "yellow"),
    ("square", "green", "purple", "yellow"),
    ("square", "white", "red", "blue"),
    ("triangle", "yellow", "blue", "red"),
    ("triangle", "red", "green", "white"),
    ("cross", "white", "yellow", "purple"),
    ("cross", "blue", "red", "green"),
)
"""(shape, top colour, bottom colour, background) two-colour objects never shown in pretraining: two per
shape, every colour at least once on top, once below and once as background."""

SUBJECT_DESIGN_COLOURS = frozenset({CIRCLE.top, CIRCLE.bottom})
"""The bundled subject is a red-over-yellow circle: no circle with exactly these two colours (in either
order, on any background) is ever shown in pretraining, so the base model has never seen it."""


def train_two_colour_combos() -> list[tuple[str, str, str, str]]:
    """The two-colour combinations pretraining sees: all 480 minus :data:`HELD_OUT_TWO_COLOUR` and minus
    the subject's design (circles in red and yellow, 8 combinations)."""
    held = set(HELD_OUT_TWO_COLOUR)
    return [
        c
        for c in all_two_colour_combos()
        if c not in held and not (c[0] == CIRCLE.outline and {c[1], c[2]} == SUBJECT_DESIGN_COLOURS)
    ]


def training_scene(rng: np.random.Generator, two_colour_p: float) -> Scene:
    """A random pretraining scene: two-colour with probability ``two_colour_p``, else one-colour (held-out
    combinations and the subject's design excluded)."""
    if two_colour_p > 0 and rng.random() < two_colour_p:
        return random_scene(rng, _TWO_COLOUR_TRAIN)
    return random_scene(rng, _ONE_COLOUR_TRAIN)


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
            scene.color2 if keep[1] else None,
        )
    return caption(scene.shape, scene.color, scene.background, scene.color2)


_ONE_COLOUR_TRAIN = train_combos()
_TWO_COLOUR_TRAIN = train_two_colour_combos()
