"""The example DreamBooth subjects and their detectors.

Two subjects ship, each a folder of six instance images with per-image captions and a subject.json:

- **circle** (``assets/subject``, the default): a circle whose top half is red and bottom half yellow, "a sks
  circle". The base model draws circles and two-colour objects, but never saw a circle in red and yellow
  (:data:`data.SUBJECT_DESIGN_COLOURS`), so no prompt draws it: DreamBooth must *bind* it to the rare token,
  as real DreamBooth binds one dog to "sks dog".
- **star** (``assets/subject_star``): a five-pointed star, top half green and bottom half white, "a sks
  shape". No pretraining image is a star and "star" is not a word the model knows: the adapter must learn
  a new *outline*, which tests capacity rather than binding.

A subject is a :class:`Subject`; everything else (yardstick, scorer, assets) takes one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..durable import write_atomic
from .reader import matches_two_colour
from .render import COLORS, SHAPES, compose, jitter_geometry, shape_mask, split_fill
from .tokenizer import RARE_TOKEN

_ASSETS = Path(__file__).resolve().parent / "assets"

_RECIPE: dict[str, Any] = {
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


@dataclasses.dataclass(frozen=True)
class Subject:
    """A two-colour toy-world object: ``outline`` with ``top`` above its centre line and ``bottom`` below,
    called "a sks ``class_noun``"."""

    key: str
    outline: str
    top: str
    bottom: str
    class_noun: str
    description: str
    folder: str
    image_backgrounds: tuple[str, ...] = ("blue", "green", "purple", "white", "blue", "green")
    seed: int = 1234
    min_size: float = 14.0
    validation_backgrounds: tuple[str, ...] = ("blue", "green", "white", "purple")
    train_defaults: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(_RECIPE))

    @property
    def instance_prompt(self) -> str:
        return f"a {RARE_TOKEN} {self.class_noun}"

    @property
    def class_prompt(self) -> str:
        return f"a {self.class_noun}"

    @property
    def class_shape(self) -> str | None:
        """The class noun as a shape the reader knows ("circle"), or None for the generic "shape"."""
        return self.class_noun if self.class_noun in SHAPES else None

    @property
    def backgrounds(self) -> tuple[str, ...]:
        """Palette colours the subject stays visible on (every colour but its own two)."""
        return tuple(c for c in COLORS if c not in (self.top, self.bottom))

    @property
    def outlines(self) -> tuple[str, ...]:
        """The outlines the detector chooses between: the world's shapes plus the subject's own."""
        return SHAPES if self.outline in SHAPES else (*SHAPES, self.outline)

    @property
    def path(self) -> Path:
        """The bundled folder of instance images, metadata.jsonl and subject.json."""
        return _ASSETS / self.folder

    def render(
        self, rng: np.random.Generator | int, background: str = "blue", size: float | None = None
    ) -> Image.Image:
        """One 32 x 32 image of the subject on ``background`` with random size and position."""
        if background not in self.backgrounds:
            raise ValueError(f"background {background!r} must be one of {self.backgrounds}")
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        s, cx, cy = jitter_geometry(rng)
        s = size if size is not None else max(s, self.min_size)
        bbox = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        cov = shape_mask(self.outline, bbox)
        return Image.fromarray(compose(cov, split_fill(cy, self.top, self.bottom), COLORS[background]), "RGB")

    def detect(self, image: Image.Image | np.ndarray, min_purity: float = 0.6) -> bool:
        """Does the image show the subject? The object (pixels far from the border's median colour, largest
        connected part) must match the subject's outline best of :attr:`outlines`, its upper half must read
        ``top`` and its lower half ``bottom``, each with at least ``min_purity`` of that half's pixels
        nearest to that colour."""
        return matches_two_colour(
            image, self.outline, self.top, self.bottom, min_purity=min_purity, shapes=self.outlines
        )

    def images(self, n: int | None = None) -> list[tuple[Image.Image, str]]:
        """The instance images with their per-image captions (deterministic)."""
        rng = np.random.default_rng(self.seed)
        bgs = self.image_backgrounds
        return [
            (
                self.render(rng, bgs[i % len(bgs)]),
                f"{self.instance_prompt} on a {bgs[i % len(bgs)]} background",
            )
            for i in range(len(bgs) if n is None else n)
        ]

    def validation_prompts(self) -> list[str]:
        return [f"{self.instance_prompt} on a {bg} background" for bg in self.validation_backgrounds]

    def write_assets(self, directory: str | os.PathLike | None = None) -> Path:
        """Write the instance PNGs, metadata.jsonl and subject.json into ``directory`` (default: the bundled
        folder; what ships in assets/)."""
        directory = Path(directory) if directory is not None else self.path
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for i, (im, cap) in enumerate(self.images()):
            name = f"subject_{i}.png"
            im.save(directory / name)
            files.append({"file": name, "caption": cap})
        info = {
            "instance_prompt": self.instance_prompt,
            "class_prompt": self.class_prompt,
            "rare_token": RARE_TOKEN,
            "class_noun": self.class_noun,
            "description": self.description,
            "images": files,
            "validation_prompts": self.validation_prompts(),
            # Flags the training script takes for this subject when they are left at their defaults.
            "train_defaults": self.train_defaults,
        }
        with open(
            directory / "metadata.jsonl", "w", encoding="utf-8"
        ) as fh:  # the training script's captions
            for item in files:
                fh.write(json.dumps({"file_name": item["file"], "text": item["caption"]}) + "\n")
        write_atomic(directory / "subject.json", json.dumps(info, indent=2) + "\n")
        return directory

    def info(self) -> dict[str, Any]:
        """The bundled subject.json, with ``images`` resolved to absolute paths."""
        info = json.loads((self.path / "subject.json").read_text())
        for item in info["images"]:
            item["path"] = str(self.path / item["file"])
        return info


CIRCLE = Subject(
    key="circle",
    outline="circle",
    top="red",
    bottom="yellow",
    class_noun="circle",
    description="a circle whose top half is red and bottom half is yellow (split horizontally through its centre)",
    folder="subject",
    # On the two-colour base model every seed draws the subject by step 300 and drift grows after it
    # (docs/quality.md: 600 steps kept 97.5 % of the class prior and 96.9 % of ordinary prompts, 300 steps
    # 98.8 % and 99.8 %).
    train_defaults={**_RECIPE, "max_train_steps": 300, "validation_steps": 50},
)
STAR = Subject(
    key="star",
    outline="star",
    top="green",
    bottom="white",
    class_noun="shape",
    description="a five-pointed star, point up, whose top half is green and bottom half white",
    folder="subject_star",
    image_backgrounds=("red", "blue", "purple", "yellow", "red", "blue"),
    seed=4321,
    min_size=20.0,  # at 14-18 px a blurred star reads as a circle or a cross
    validation_backgrounds=("red", "blue", "yellow", "purple"),
)
SUBJECTS: dict[str, Subject] = {s.key: s for s in (CIRCLE, STAR)}
"""The bundled subjects by key; ``circle`` is the default everywhere."""


def get_subject(key: str | Subject | None = None) -> Subject:
    """The bundled subject called ``key`` (default: the circle); a :class:`Subject` is returned as is."""
    if isinstance(key, Subject):
        return key
    if key is None:
        return CIRCLE
    if key not in SUBJECTS:
        raise ValueError(f"unknown toy-world subject {key!r}; choose from {sorted(SUBJECTS)}")
    return SUBJECTS[key]


def subject_for_folder(folder: str | os.PathLike | None) -> Subject | None:
    """The bundled subject whose folder ``folder`` is (by resolved path), else None."""
    if folder is None:
        return None
    resolved = Path(folder).expanduser().resolve()
    return next((s for s in SUBJECTS.values() if s.path.resolve() == resolved), None)


# The default subject's facts and helpers under their historical names.
INSTANCE_PROMPT, CLASS_PROMPT = CIRCLE.instance_prompt, CIRCLE.class_prompt


def render_subject(
    rng: np.random.Generator | int, background: str = "blue", size: float | None = None
) -> Image.Image:
    """One image of the default subject (:meth:`Subject.render`)."""
    return CIRCLE.render(rng, background, size)


def detect_subject(image: Image.Image | np.ndarray, min_purity: float = 0.6) -> bool:
    """Does the image show the default subject (a circle, top half red, bottom half yellow)?"""
    return CIRCLE.detect(image, min_purity)


def subject_info(key: str | None = None) -> dict[str, Any]:
    """A bundled subject's subject.json (default: the circle), with ``images`` resolved to absolute paths."""
    return get_subject(key).info()
