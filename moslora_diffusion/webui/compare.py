"""Comparison grids: an X/Y plot over any two of adapter strength, seed, steps, CFG scale, sampler and
prompt search/replace, rendered as one labelled PNG; the strength x seed grid with its no-adapter baseline is
the common case (:func:`compare`)."""

from __future__ import annotations

import csv
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import RequestError
from ..imaging import labelled_grid
from .engine import Engine
from .pngmeta import format_parameters, save_png
from .requests import MAX_SEED, SCHEDULERS, STRENGTH_RANGE, GenerationRequest, validate_request

__all__ = ["AXES", "Axis", "parse_axis", "parse_number_list", "parse_strengths", "parse_seeds", "labelled_grid",
           "GridResult", "CompareResult", "xy_plot", "compare"]  # fmt: skip

# the axis kinds an X/Y plot offers, in menu order
AXES = ("Strength", "Seed", "Steps", "CFG scale", "Sampler", "Prompt S/R")


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


def _strengths(text: str) -> list[float]:
    out: list[float] = []
    for value in parse_number_list(text, "strength"):
        if not STRENGTH_RANGE[0] <= value <= STRENGTH_RANGE[1]:
            raise RequestError(f"strength {value:g} is outside {STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g}")
        if value not in out:
            out.append(value)
    return out


def parse_strengths(text: str) -> list[float]:
    """Adapter strengths, deduplicated in order, without 0 (the baseline column covers it)."""
    return [s for s in _strengths(text) if s != 0.0]


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for value in parse_number_list(text, "seed"):
        if value != int(value) or not 0 <= value <= MAX_SEED:
            raise RequestError(f"seed {value:g} must be a whole number from 0 to {MAX_SEED}")
        if int(value) not in out:
            out.append(int(value))
    return out


def _whole_numbers(text: str, what: str) -> list[int]:
    out: list[int] = []
    for value in parse_number_list(text, what):
        if value != int(value):
            raise RequestError(f"{what} {value:g} must be a whole number")
        if int(value) not in out:
            out.append(int(value))
    return out


def _texts(text: str) -> list[str]:
    """Comma-separated items; double quotes keep a comma inside one ("a, b", c)."""
    rows = list(csv.reader([str(text)], skipinitialspace=True))
    return [item.strip() for item in (rows[0] if rows else []) if item.strip()]


def _samplers(text: str) -> list[str]:
    out: list[str] = []
    for name in _texts(text):
        if name not in SCHEDULERS:
            raise RequestError(f"unknown sampler {name!r}; choose from {', '.join(SCHEDULERS)}")
        if name not in out:
            out.append(name)
    return out


_PARSERS: dict[str, Callable[[str], list[Any]]] = {
    "Strength": _strengths,
    "Seed": parse_seeds,
    "Steps": lambda text: _whole_numbers(text, "steps"),
    "CFG scale": lambda text: list(dict.fromkeys(parse_number_list(text, "CFG scale"))),
    "Sampler": _samplers,
    "Prompt S/R": lambda text: list(dict.fromkeys(_texts(text))),
}


@dataclass(frozen=True)
class Axis:
    """One axis of an X/Y plot: its kind (one of :data:`AXES`) and its values in order."""

    kind: str
    values: tuple[Any, ...]

    def label(self, value: Any) -> str:
        if self.kind == "Strength":
            return "no adapter" if value == 0 else f"strength {value:g}"
        if self.kind in ("Seed", "Steps"):
            return f"{self.kind.lower()} {value}"
        if self.kind == "CFG scale":
            return f"CFG {value:g}"
        return str(value)

    def apply(self, req: GenerationRequest, value: Any, adapter: str | None) -> GenerationRequest:
        """``req`` with this axis set to ``value``."""
        if self.kind == "Strength":
            return replace(req, adapters=[(adapter, value)] if value != 0 and adapter else [])
        if self.kind == "Seed":
            return replace(req, seed=value)
        if self.kind == "Steps":
            return replace(req, steps=value)
        if self.kind == "CFG scale":
            return replace(req, guidance_scale=value)
        if self.kind == "Sampler":
            return replace(req, scheduler=value)
        search = self.values[0]  # Prompt S/R, as in AUTOMATIC1111: in the prompt and the negative prompt
        return replace(req, prompt=req.prompt.replace(search, value),
                       negative_prompt=(req.negative_prompt or "").replace(search, value))  # fmt: skip

    def text(self) -> str:
        """The values as the PNG's parameters write them."""
        if self.kind in ("Sampler", "Prompt S/R"):
            return ", ".join(f'"{v}"' if "," in v else v for v in self.values)
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.values)


def parse_axis(kind: str, text: str) -> Axis:
    """An axis from its kind and the values typed for it; raise `RequestError` naming a bad value."""
    if kind not in _PARSERS:
        raise RequestError(f"unknown axis {kind!r}; choose one of {', '.join(AXES)}")
    values = _PARSERS[kind](text)
    if not values:
        raise RequestError(f"give at least one value for the {kind} axis")
    return Axis(kind, tuple(values))


@dataclass
class GridResult:
    path: Path
    grid: Image.Image
    parameters: str
    x: Axis
    y: Axis | None
    images: list[Image.Image]  # the cells row by row (grey where Stop left them unrendered)
    stopped: str | None = None  # "stopped after n of m images" when Stop ended it early


@dataclass
class CompareResult(GridResult):
    """A strength x seed grid; ``strengths`` starts with the 0 baseline."""

    @property
    def strengths(self) -> list[float]:
        return list(self.x.values)

    @property
    def seeds(self) -> list[int]:
        return list(self.y.values) if self.y else []


def _cell_requests(
    engine: Engine, req: GenerationRequest, x: Axis, y: Axis | None, adapter: str | None, strength: float
) -> list[GenerationRequest]:
    """Every cell's request, row by row, each checked against the model's limits (nothing rendered yet)."""
    axes = [a for a in (x, y) if a is not None]
    if y is not None and x.kind == y.kind:
        raise RequestError(f"X and Y are both {x.kind}: choose two different axes")
    uses_strength = any(a.kind == "Strength" for a in axes)
    if uses_strength and not adapter:
        raise RequestError("the Strength axis needs an adapter: pick one")
    for axis in axes:
        if axis.kind == "Prompt S/R" and axis.values[0] not in f"{req.prompt}\n{req.negative_prompt or ''}":
            raise RequestError(
                f"Prompt S/R: the first value {axis.values[0]!r} is what gets replaced, and neither prompt "
                "contains it"
            )
    cells = len(x.values) * (len(y.values) if y else 1)
    if cells > engine.limits.max_grid_cells:
        raise RequestError(f"the grid would have {cells} images; the limit is {engine.limits.max_grid_cells}")
    if adapter:
        engine.adapter_info(adapter)  # name check + fit check before any rendering
    base = replace(req, num_images=1, adapters=[(adapter, strength)] if adapter and strength else [])
    if int(base.seed) == -1:  # one random seed for the whole grid, so that cells differ only by the axes
        base = replace(base, seed=random.randint(0, MAX_SEED))
    out = []
    for y_value in y.values if y else (None,):
        row = base if y is None else y.apply(base, y_value, adapter)
        for x_value in x.values:
            out.append(validate_request(x.apply(row, x_value, adapter), engine.model_limits))
    return out


def xy_plot(
    engine: Engine,
    req: GenerationRequest,
    x: Axis,
    y: Axis | None = None,
    adapter: str | None = None,
    strength: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> GridResult:
    """Render one image per (x, y) cell from ``req`` and save one labelled PNG grid (rows: y, columns: x).

    ``adapter`` is applied at ``strength`` in every cell unless an axis is Strength. Every cell is checked
    before the first is rendered; after Stop, the finished cells are kept and the rest are grey."""
    reqs = _cell_requests(engine, req, x, y, adapter, strength)
    images = engine.render_requests(reqs, progress)
    stopped = None
    if len(images) < len(reqs):  # Stop: keep what was finished, grey cells for the rest
        stopped = f"stopped after {len(images)} of {len(reqs)} images"
        images = images + [Image.new("RGB", images[0].size, (128, 128, 128))] * (len(reqs) - len(images))
    n = len(x.values)
    rows = [images[i * n : (i + 1) * n] for i in range(len(images) // n)]
    row_labels = [y.label(v) for v in y.values] if y else [""]
    first = reqs[0]
    title = (f"{adapter}: " if adapter else "") + first.prompt + (f" ({stopped})" if stopped else "")
    grid = labelled_grid(rows, row_labels, [x.label(v) for v in x.values], title=title)
    fields: dict[str, Any] = {
        "Steps": first.steps,
        "Sampler": first.scheduler,
        "CFG scale": f"{first.guidance_scale:g}",
        "Seed": first.seed,
        "Size": f"{first.width}x{first.height}",
        "Model": engine.model_name,
        "Adapter": adapter,
        "X": f"{x.kind}: {x.text()}",
        "Y": f"{y.kind}: {y.text()}" if y else None,
    }
    if x.kind == "Strength" and y is not None and y.kind == "Seed":  # the strength x seed grid's own fields
        fields.update({"Seed": None, "Seeds": y.text(), "Strengths": x.text(), "X": None, "Y": None})
    # the first cell has the prompt as typed (Prompt S/R's first value replaces itself), tags taken out
    text = format_parameters(
        first.prompt, first.negative_prompt, {k: v for k, v in fields.items() if v is not None}
    )
    stem = f"grid-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path = save_png(grid, engine.output_dir / "grids", stem, text)
    return GridResult(path, grid, text, x, y, images, stopped)


def compare(
    engine: Engine,
    req: GenerationRequest,
    adapter: str,
    strengths: Sequence[float],
    seeds: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> CompareResult:
    """Render baseline + each strength of ``adapter`` for each seed; save one labelled PNG grid."""
    strengths = [s for s in dict.fromkeys(strengths) if s != 0.0]
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise RequestError("give at least one seed")
    x, y = Axis("Strength", (0.0, *strengths)), Axis("Seed", tuple(seeds))
    result = xy_plot(engine, replace(req, adapters=[]), x, y, adapter, progress=progress)
    return CompareResult(result.path, result.grid, result.parameters, x, y, result.images, result.stopped)
