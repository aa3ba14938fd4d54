"""Scoring toy-world images: the prompt panel of each metric family and the four metrics read from images.

The training loop's toy scorer (:mod:`.quality`) and the yardstick (:mod:`moslora_diffusion.yardstick`) both
score with these: subject fidelity, prompt fidelity, prior preservation and ordinary-prompt accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..sampling import SampleRequest
from .data import HELD_OUT_COMBOS
from .render import COLORS, caption
from .subject import Subject, get_subject

__all__ = [
    "METRICS",
    "prompt_sets",
    "score_images",
    "families_request",
    "split_families",
    "generate_families",
]

METRICS = ("subject_fidelity", "prompt_fidelity", "prior_preservation", "base_drift_accuracy")


def prompt_sets(
    images_per_prompt: int, quick: bool, subject: Subject | str | None = None
) -> dict[str, list[tuple[str, tuple[str | None, str, str], int]]]:
    """(prompt, expected (shape, colour, background), sampling seed) for each metric family; a class shape of
    None (class noun "shape") accepts any of the world's shapes."""
    subj = get_subject(subject)
    backgrounds = subj.backgrounds[:2] if quick else subj.backgrounds
    subject_items = [
        (f"{subj.instance_prompt} on a {bg} background", (subj.outline, "", bg), 1000 + k)
        for bg in backgrounds
        for k in range(images_per_prompt)
    ]
    palette = list(COLORS)
    class_items = []
    for i, colour in enumerate(palette[: 2 if quick else None]):
        bg = palette[(i + 2) % len(palette)]  # every colour once as object, on a different background
        for k in range(images_per_prompt):
            class_items.append(
                (caption(subj.class_shape, colour, bg), (subj.class_shape, colour, bg), 2000 + 10 * i + k)
            )
    ordinary_combos = list(HELD_OUT_COMBOS)[: 2 if quick else None]  # every shape, every colour
    ordinary = [
        (caption(*c), c, 3000 + 10 * i + k)
        for i, c in enumerate(ordinary_combos)
        for k in range(images_per_prompt)
    ]
    return {"subject": subject_items, "class": class_items, "ordinary": ordinary}


def score_images(
    family_images: dict[str, list], prompt_sets: dict[str, list], subject: Subject | str | None = None
) -> dict[str, float]:
    """The four metrics from generated images (lists aligned with `prompt_sets`; an empty family gives nan)."""
    from .reader import read_attributes

    detect = get_subject(subject).detect
    items = prompt_sets["subject"]
    subject_hits = [detect(im) for im in family_images["subject"]]
    bg_hits = [
        read_attributes(im).background == exp[2] for im, (_, exp, _) in zip(family_images["subject"], items)
    ]
    prior_hits = []
    for im, ((shape, colour, bg)) in zip(family_images["class"], (exp for _, exp, _ in prompt_sets["class"])):
        r = read_attributes(im)
        drawn = r.shape is not None and (shape is None or r.shape == shape)
        prior_hits.append(drawn and (r.color, r.background) == (colour, bg) and not detect(im))
    ordinary_hits = [
        read_attributes(im).matches(*exp)
        for im, (_, exp, _) in zip(family_images["ordinary"], prompt_sets["ordinary"])
    ]

    def mean(x: Sequence[bool]) -> float:
        return sum(x) / len(x) if x else float("nan")

    return {
        "subject_fidelity": mean(subject_hits),
        "prompt_fidelity": mean(bg_hits),
        "prior_preservation": mean(prior_hits),
        "base_drift_accuracy": mean(ordinary_hits),
    }


def families_request(sets: dict[str, list], settings: dict[str, Any] | None = None) -> SampleRequest:
    """One :class:`~moslora_diffusion.sampling.SampleRequest` for every item of ``sets``, family after family,
    each with its sampling seed; ``settings`` override the toy model's sampler settings."""
    from .models import sample_request

    items = [item for family in sets.values() for item in family]
    return sample_request([p for p, _, _ in items], [s for _, _, s in items], settings)


def split_families(sets: dict[str, list], images: Sequence[Any]) -> dict[str, list]:
    """The images of :func:`families_request`, back in their families."""
    if len(images) != sum(map(len, sets.values())):
        raise ValueError(f"{len(images)} images for {sum(map(len, sets.values()))} prompts")
    rest = iter(images)
    return {fam: [next(rest) for _ in items] for fam, items in sets.items()}


def generate_families(
    pipe: Any, sets: dict[str, list], settings: dict[str, Any] | None = None
) -> dict[str, list]:
    """The images of every family of ``sets`` (one request, each with its sampling seed); ``settings``
    override the toy model's sampler settings (e.g. ``num_inference_steps``)."""
    from ..sampling import draw

    return split_families(sets, draw(pipe, [families_request(sets, settings)])[0])
