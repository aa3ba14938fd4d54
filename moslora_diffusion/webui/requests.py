"""What a generation request may ask for: its fields, the bounds of every number, the samplers (the table
lives in :mod:`moslora_diffusion.sampling`), and the check
that turns a request into one the engine can run (``<lora:name:weight>`` tags taken out of the prompt)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import RequestError
from ..sampling import SCHEDULERS
from .adapter_files import ADAPTER_SUFFIX

__all__ = ["MAX_SEED", "MAX_ADAPTER_SLOTS", "STRENGTH_RANGE", "SCHEDULERS", "Limits", "GenerationRequest",
           "GeneratedImage", "parse_lora_tags", "validate_request"]  # fmt: skip


MAX_SEED = 2**32 - 1


MAX_ADAPTER_SLOTS = 4


STRENGTH_RANGE = (-2.0, 2.0)


MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the largest image file accepted (training images, img2img start image)


@dataclass(frozen=True)
class Limits:
    """Bounds for every numeric input; requests outside them are refused, never clamped silently."""

    max_steps: int = 150
    min_size: int = 32
    max_size: int = 2048
    max_images: int = 8
    max_guidance: float = 30.0
    max_prompt_chars: int = 2000
    max_grid_cells: int = 64
    busy_timeout_s: float = 900.0


def model_limits(limits: Limits, native: int) -> Limits:
    """``limits`` for a model whose native size is ``native`` px: widths and heights from ¼× to 4× of it
    (multiples of 8, within the server's own limits). The web page and the API check against the same."""
    low = max(limits.min_size, (native // 4) // 8 * 8 or 8)
    return replace(limits, min_size=low, max_size=min(limits.max_size, native * 4))


@dataclass
class GenerationRequest:
    """One request. ``seed`` -1 means random; ``adapters`` are (file name, strength).

    With ``init_image`` (a PIL image) it is img2img: the image, resized to width x height, is noised to
    ``strength`` (0 keeps it, 1 replaces it) and denoised with the prompt.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    guidance_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    scheduler: str = "DDIM"
    num_images: int = 1
    adapters: list[tuple[str, float]] = field(default_factory=list)
    init_image: Any = None
    strength: float = 0.75


@dataclass
class GeneratedImage:
    path: Path
    seed: int
    parameters: str
    image: Any  # PIL.Image.Image


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    return number


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}, got {value:g}")


_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^<>]*))?>", re.IGNORECASE)


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """AUTOMATIC1111's ``<lora:name:weight>`` prompt syntax: (prompt without the tags, [(file name, weight)]).

    ``name`` is a file stem in the adapters folder (``.safetensors`` is added); the weight defaults to 1.
    """
    adapters = []
    for match in _LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        if not name.endswith(ADAPTER_SUFFIX):
            name += ADAPTER_SUFFIX
        value = _as_float(f"weight in {match.group(0)}", weight if weight not in (None, "") else 1.0)
        adapters.append((name, value))
    return strip_lora_tags(prompt), adapters


def strip_lora_tags(prompt: str) -> str:
    """The prompt as it is encoded: ``<lora:…>`` tags taken out (whatever their weights say)."""
    return re.sub(r"\s{2,}", " ", _LORA_TAG.sub(" ", prompt)).strip()


def open_start_image(path: str | os.PathLike) -> Any:
    """The img2img start image at ``path``, decoded; `RequestError` naming the file when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    name = os.path.basename(os.fspath(path))
    if os.path.isfile(path) and os.path.getsize(path) > MAX_IMAGE_BYTES:
        raise RequestError(f"the start image {name!r} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        kind = (
            "not an image file"
            if isinstance(exc, UnidentifiedImageError)
            else "not there"
            if isinstance(exc, FileNotFoundError)
            else f"unreadable ({type(exc).__name__})"
        )
        raise RequestError(f"the start image {name!r} is {kind}") from None


def validate_request(req: GenerationRequest, limits: Limits) -> GenerationRequest:
    """Check and normalise a request; raise ValueError naming the offending input.

    ``<lora:name:weight>`` tags are taken out of the prompt and added to ``adapters``.
    """
    if not isinstance(req.prompt, str):
        raise RequestError("prompt must be text")
    prompt, tagged = parse_lora_tags(req.prompt)
    if not prompt:
        raise RequestError("prompt is empty")
    negative = req.negative_prompt or ""
    if not isinstance(negative, str):
        raise RequestError("negative prompt must be text")
    for name, text in (("prompt", req.prompt), ("negative prompt", negative)):
        if len(text) > limits.max_prompt_chars:
            raise RequestError(f"{name} is longer than {limits.max_prompt_chars} characters")
    steps = _as_int("steps", req.steps)
    _in_range("steps", steps, 1, limits.max_steps)
    guidance = _as_float("CFG scale", req.guidance_scale)
    _in_range("CFG scale", guidance, 0.0, limits.max_guidance)
    seed = _as_int("seed", req.seed)
    if seed != -1:
        _in_range("seed", seed, 0, MAX_SEED)
    sizes = {}
    for name in ("width", "height"):
        value = _as_int(name, getattr(req, name))
        _in_range(name, value, limits.min_size, limits.max_size)
        if value % 8:
            raise RequestError(f"{name} must be a multiple of 8, got {value}")
        sizes[name] = value
    n = _as_int("number of images", req.num_images)
    _in_range("number of images", n, 1, limits.max_images)
    if req.scheduler not in SCHEDULERS:
        raise RequestError(f"unknown scheduler {req.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    denoise = req.strength
    init_image = req.init_image
    if isinstance(
        init_image, (str, os.PathLike)
    ):  # an upload: opened here, so a bad file is named, not a crash
        init_image = open_start_image(init_image)
    if init_image is not None:
        if not hasattr(init_image, "convert"):
            raise RequestError("the img2img input must be an image")
        denoise = _as_float("denoising strength", req.strength)
        if not 0.0 < denoise <= 1.0:
            raise RequestError(f"denoising strength must be above 0 and at most 1, got {denoise:g}")
    requested = [*req.adapters, *tagged]
    if len(requested) > MAX_ADAPTER_SLOTS:
        raise RequestError(f"at most {MAX_ADAPTER_SLOTS} adapters at once (slots and <lora:…> tags together)")
    adapters = []
    for name, strength in requested:
        strength = _as_float(f"strength of {name}", strength)
        _in_range(f"strength of {name}", strength, *STRENGTH_RANGE)
        adapters.append((name, strength))
    for name in {n for n, _ in adapters}:  # one adapter given several times applies the sum of its strengths
        given = [s for n, s in adapters if n == name]
        if len(given) > 1:
            _in_range(f"the strengths of {name} (given {len(given)} times) add up to a total that", sum(given),
                      *STRENGTH_RANGE)  # fmt: skip
    return replace(
        req,
        prompt=prompt,
        negative_prompt=negative.strip(),
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        num_images=n,
        adapters=adapters,
        strength=denoise,
        init_image=init_image,
        **sizes,
    )
