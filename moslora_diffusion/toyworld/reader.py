"""Attribute reader: recovers (shape, object colour, background colour) from a toy-world image.

How it decides (no learning, only the palette and the shape templates of :mod:`render`):

1. **Background.** The median RGB of the 2-pixel border ring is the measured background colour; its
   nearest palette colour is the background's name. (The object never covers more than a small part
   of the ring, so the median ignores it.)
2. **Object colour.** Pixels farther than ``CANDIDATE_DIST`` from the measured background are object
   candidates; the median RGB of the most distinct quarter of them (the object's interior, away from
   blurred edges) is the measured object colour, named by its nearest palette colour other than the
   background's.
3. **Object mask.** Each pixel is projected onto the line from the measured background colour to the
   measured object colour; pixels more than half-way toward the object colour form the mask, of which
   the largest 4-connected component is kept (isolated noise specks are dropped).
4. **Shape.** Each shape's ideal outline is drawn into the mask's bounding box; the shape whose outline
   overlaps the soft mask best (intersection over union) wins.

Because every step uses medians, a half-way threshold and a best-overlap vote, moderate blur and noise
(as in decoded / generated images) move the measurements but rarely the decisions.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import numpy as np
from PIL import Image

from .render import COLORS, SHAPES, shape_mask

CANDIDATE_DIST = 60.0
"""RGB distance from the background beyond which a pixel may belong to the object (the closest two
palette colours are ~140 apart)."""

MIN_OBJECT_PIXELS = 6

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[n] for n in _PALETTE_NAMES], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What the reader saw. ``shape``/``color`` are None when no object was found."""

    shape: str | None
    color: str | None
    background: str
    shape_scores: dict[str, float]
    mask: np.ndarray  # bool (H, W), the object's pixels

    def matches(self, shape: str, color: str, background: str) -> bool:
        return (self.shape, self.color, self.background) == (shape, color, background)


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in 0..255 from a PIL image or a uint8 / float array (floats in 0..1 or 0..255)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if arr.max() <= 1.0 + 1e-6 and np.issubdtype(np.asarray(image).dtype, np.floating):
        arr = arr * 255.0
    return arr


def nearest_color(rgb: np.ndarray, exclude: str | None = None) -> str:
    """Name of the palette colour nearest to ``rgb``, optionally never ``exclude``."""
    d = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float32), axis=1)
    if exclude is not None:
        d[_PALETTE_NAMES.index(exclude)] = np.inf
    return _PALETTE_NAMES[int(np.argmin(d))]


def border_pixels(arr: np.ndarray, width: int = 2) -> np.ndarray:
    h, w = arr.shape[:2]
    ring = np.ones((h, w), bool)
    ring[width : h - width, width : w - width] = False
    return arr[ring]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (pure Python; images are tiny)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    best_label, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = current, size
    return labels == best_label if best_size else np.zeros_like(mask)


def background_rgb(arr: np.ndarray) -> np.ndarray:
    return np.median(border_pixels(arr), axis=0)


def object_candidates(arr: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance-from-background map, candidate mask)."""
    dist = np.linalg.norm(arr - bg, axis=-1)
    return dist, dist > CANDIDATE_DIST


def shape_scores(soft: np.ndarray, mask: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> dict[str, float]:
    """Soft IoU between the object's coverage ``soft`` and each of ``shapes`` drawn to fill the mask's
    bounding box."""
    ys, xs = np.nonzero(mask)
    bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    scores = {}
    for shape in shapes:
        tmpl = shape_mask(shape, bbox, resolution=soft.shape[0], fit=True)
        inter = np.minimum(tmpl, soft).sum()
        union = np.maximum(tmpl, soft).sum()
        scores[shape] = float(inter / max(union, 1e-6))
    return scores


def read_attributes(image: Image.Image | np.ndarray) -> Reading:
    """Shape, object colour and background colour of a toy-world image (see the module docstring)."""
    arr = to_array(image)
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"expected a square image, got {arr.shape[1]}x{arr.shape[0]}")
    bg = background_rgb(arr)
    background = nearest_color(bg)
    dist, cand = object_candidates(arr, bg)
    empty = np.zeros(arr.shape[:2], bool)
    if cand.sum() < MIN_OBJECT_PIXELS:
        return Reading(None, None, background, {}, empty)
    d = dist[cand]
    core = cand & (dist >= np.quantile(d, 0.75))
    obj = np.median(arr[core], axis=0)
    color = nearest_color(obj, exclude=background)
    axis = obj - bg
    t = ((arr - bg) @ axis) / max(float(axis @ axis), 1e-6)
    mask = largest_component(t > 0.5)
    if mask.sum() < MIN_OBJECT_PIXELS:
        return Reading(None, color, background, {}, empty)
    soft = np.clip(t, 0.0, 1.0) * _dilate(mask)
    scores = shape_scores(soft, mask)
    shape = max(scores, key=scores.get)
    return Reading(shape, color, background, scores, mask)


def read_halves(
    image: Image.Image | np.ndarray, min_pixels: int = 20, shapes: tuple[str, ...] = SHAPES
) -> dict[str, Any]:
    """Shape and the colours of the top and bottom halves of a (possibly two-colour) object.

    The object is every pixel far from the border's median colour (largest connected part), so two
    object colours need no colour axis. Returns ``background`` and ``pixels`` always, and when the object
    has at least ``min_pixels`` pixels also ``shape``, ``shape_scores``, ``top``/``bottom`` (the nearest
    palette colour to the median of each half, rows above / below the mask's middle row; ``shapes`` are
    the outlines to choose from) and
    ``top_purity``/``bottom_purity`` (the share of that half's pixels nearest to that colour).
    """
    arr = to_array(image)
    bg = background_rgb(arr)
    _, cand = object_candidates(arr, bg)
    # Components are found on the mask grown by one pixel: where the blend of the two halves is near the
    # background colour (red and blue on purple) the boundary row is no candidate and would cut the object
    # in two.
    mask = largest_component(_dilate(cand)) & cand
    out: dict[str, Any] = {"background": nearest_color(bg), "pixels": int(mask.sum())}
    if mask.sum() < min_pixels:
        return out
    ys, xs = np.nonzero(mask)
    mid = (ys.min() + ys.max() + 1) / 2.0
    halves, medians = {}, {}
    for name, sel in (("top", ys + 0.5 < mid - 0.5), ("bottom", ys + 0.5 > mid + 0.5)):
        px = arr[ys[sel], xs[sel]]
        if len(px) == 0:
            return out
        names = [nearest_color(p) for p in px]
        medians[name] = np.median(px, axis=0)
        colour = nearest_color(medians[name])
        halves[name] = (colour, float(np.mean([n == colour for n in names])))
    # The outline, as read_attributes does for one colour: each pixel is written as a mix of the background
    # and some blend of the two halves' measured colours (least squares on the plane they span); an object
    # share over one half is object. Blur fills the hard mask's concave corners, the half-way mask keeps
    # them, and the row where the halves blend stays object.
    basis = np.stack([medians["top"] - bg, medians["bottom"] - bg], axis=1)  # (3, 2)
    t = ((arr - bg) @ np.linalg.pinv(basis, rcond=1e-2).T).sum(-1)
    shape_mask_ = largest_component(t > 0.5) & _dilate(mask)
    if shape_mask_.sum() < MIN_OBJECT_PIXELS:
        shape_mask_ = mask
    scores = shape_scores(np.clip(t, 0.0, 1.0) * _dilate(shape_mask_), shape_mask_, shapes)
    out.update(
        shape=max(scores, key=scores.get),
        shape_scores=scores,
        top=halves["top"][0],
        top_purity=halves["top"][1],
        bottom=halves["bottom"][0],
        bottom_purity=halves["bottom"][1],
    )
    return out


def matches_two_colour(
    image: Image.Image | np.ndarray,
    shape: str,
    top: str,
    bottom: str,
    background: str | None = None,
    min_purity: float = 0.6,
    shapes: tuple[str, ...] = SHAPES,
) -> bool:
    """Whether ``image`` shows ``shape`` (the best of ``shapes``) with ``top`` over ``bottom`` (each half
    at least ``min_purity`` pure), on ``background`` when given."""
    r = read_halves(image, shapes=shapes)
    return (
        r.get("shape") == shape
        and background in (None, r["background"])
        and halves_match(r, top, bottom, min_purity)
    )


def halves_match(reading: dict[str, Any], top: str, bottom: str, min_purity: float = 0.6) -> bool:
    """Whether a :func:`read_halves` reading has ``top`` over ``bottom``, each half at least ``min_purity`` pure."""
    return (
        (reading.get("top"), reading.get("bottom")) == (top, bottom)
        and reading["top_purity"] >= min_purity
        and reading["bottom_purity"] >= min_purity
    )


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-pixel 4-neighbour dilation (keeps the anti-aliased rim of the kept component)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out
