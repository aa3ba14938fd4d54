"""Comparison grid: one adapter at several strengths x several seeds, with the no-adapter baseline,
rendered as one labelled PNG."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from ..errors import RequestError
from ..imaging import labelled_grid
from .engine import Engine
from .pngmeta import format_parameters, save_png
from .requests import MAX_SEED, STRENGTH_RANGE, GenerationRequest, validate_request

__all__ = ["parse_number_list", "parse_strengths", "parse_seeds", "labelled_grid", "CompareResult", "compare"]


def parse_number_list(text: str, what: str) -> list[float]:
    """Numbers separated by commas or spaces; raise ValueError naming the bad item."""
    items = [t for t in str(text).replace(",", " ").split() if t]
    if not items:
        raise RequestError(f"give at least one {what}")
    out = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise RequestError(f"{what} {item!r} is not a number") from None
        if not math.isfinite(value):
            raise RequestError(f"{what} {item!r} is not a finite number")
        out.append(value)
    return out


def parse_strengths(text: str) -> list[float]:
    """Adapter strengths, deduplicated in order, without 0 (the baseline column covers it)."""
    out: list[float] = []
    for value in parse_number_list(text, "strength"):
        if not STRENGTH_RANGE[0] <= value <= STRENGTH_RANGE[1]:
            raise RequestError(f"strength {value:g} is outside {STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g}")
        if value != 0.0 and value not in out:
            out.append(value)
    return out


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for value in parse_number_list(text, "seed"):
        if value != int(value) or not 0 <= value <= MAX_SEED:
            raise RequestError(f"seed {value:g} must be a whole number from 0 to {MAX_SEED}")
        if int(value) not in out:
            out.append(int(value))
    return out


@dataclass
class CompareResult:
    path: Path
    grid: Image.Image
    parameters: str
    strengths: list[float]
    seeds: list[int]
    stopped: str | None = None  # "stopped after n of m images" when Stop ended it early


def compare(
    engine: Engine,
    req: GenerationRequest,
    adapter: str,
    strengths: Sequence[float],
    seeds: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> CompareResult:
    """Render baseline + each strength of ``adapter`` for each seed; save one labelled PNG grid."""
    req = validate_request(replace(req, num_images=1, adapters=[]), engine.model_limits)
    engine.adapter_info(adapter)  # name check + fit check before any rendering
    strengths = [s for s in dict.fromkeys(strengths) if s != 0.0]
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise RequestError("give at least one seed")
    columns: list[list[tuple[str, float]]] = [[]] + [[(adapter, s)] for s in strengths]
    cells = len(columns) * len(seeds)
    if cells > engine.limits.max_grid_cells:
        raise RequestError(f"the grid would have {cells} images; the limit is {engine.limits.max_grid_cells}")
    jobs = [(adapters, seed) for seed in seeds for adapters in columns]
    images = engine.render_many(req, jobs, progress)
    stopped = None
    if len(images) < len(jobs):  # Stop: keep what was finished, grey cells for the rest
        stopped = f"stopped after {len(images)} of {len(jobs)} images"
        images = images + [Image.new("RGB", images[0].size, (128, 128, 128))] * (len(jobs) - len(images))
    rows = [images[i * len(columns) : (i + 1) * len(columns)] for i in range(len(seeds))]
    col_labels = ["no adapter"] + [f"strength {s:g}" for s in strengths]
    title = f"{adapter}: {req.prompt}" + (f" ({stopped})" if stopped else "")
    grid = labelled_grid(rows, [f"seed {s}" for s in seeds], col_labels, title=title)
    fields = {
        "Steps": req.steps,
        "Sampler": req.scheduler,
        "CFG scale": f"{req.guidance_scale:g}",
        "Seeds": " ".join(str(s) for s in seeds),
        "Size": f"{req.width}x{req.height}",
        "Model": engine.model_name,
        "Adapter": adapter,
        "Strengths": " ".join(["0"] + [f"{s:g}" for s in strengths]),
    }
    text = format_parameters(req.prompt, req.negative_prompt, fields)
    stem = f"grid-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path = save_png(grid, engine.output_dir / "grids", stem, text)
    return CompareResult(path, grid, text, [0.0, *strengths], seeds, stopped)
