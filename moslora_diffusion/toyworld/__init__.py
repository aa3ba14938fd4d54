"""Toy world: a procedurally drawn world and a tiny text-to-image base model bundled with the package.

Importing this package is cheap (no torch / diffusers); the submodules that need them import lazily.

    from moslora_diffusion import toyworld
    pipe = StableDiffusionPipeline.from_pretrained(toyworld.base_model_path())
    pipe("a red circle on a blue background", **toyworld.pipeline_kwargs())
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_ASSETS = Path(__file__).resolve().parent / "assets"

_LAZY = {
    "Scene": "render",
    "random_scene": "render",
    "caption": "render",
    "COLORS": "render",
    "SHAPES": "render",
    "RESOLUTION": "render",
    "read_attributes": "reader",
    "Reading": "reader",
    "HELD_OUT_COMBOS": "data",
    "HELD_OUT_TWO_COLOUR": "data",
    "read_halves": "reader",
    "Subject": "subject",
    "SUBJECTS": "subject",
    "get_subject": "subject",
    "evaluate_base": "evaluate",
    "default_sampler_settings": "models",
    "MAX_LENGTH": "tokenizer",
    "RARE_TOKEN": "tokenizer",
    "render_subject": "subject",
    "detect_subject": "subject",
    "subject_info": "subject",
    "training_defaults": "defaults",
    "subject_training_defaults": "defaults",
}

__all__ = ["base_model_path", "is_toy_base", "subject_path", "pipeline_kwargs", *_LAZY]


def base_model_path() -> Path:
    """Directory of the bundled toy-world base model (a stock diffusers StableDiffusionPipeline)."""
    return _ASSETS / "base_model"


def is_toy_base(path: str | Path | None) -> bool:
    """Whether ``path`` is the bundled base model (the folder, by its resolved path)."""
    return path is not None and Path(path).expanduser().resolve() == base_model_path().resolve()


def subject_path() -> Path:
    """Directory of the bundled example DreamBooth subject (images + subject.json)."""
    return _ASSETS / "subject"


def pipeline_kwargs() -> dict[str, Any]:
    """:func:`default_sampler_settings` minus the scheduler name: keyword arguments for ``pipe(...)``."""
    from .models import default_sampler_settings

    s = default_sampler_settings()
    s.pop("scheduler")
    return s


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
