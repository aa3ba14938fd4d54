"""Procedural toy world: one flat-coloured shape on a plain background, 32 x 32 pixels.

Everything here is deterministic from a seed and needs only numpy and Pillow. Shapes are drawn at
4x the output size and box-filtered down, so edges are anti-aliased like a real (if tiny) photo.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 32
"""Output size in pixels. 32 px keeps the latent grid at 8 x 8 (VAE factor 4), which is what makes
from-scratch training on two CPU cores fit in an hour; every shape is still 12-22 px wide."""

SUPERSAMPLE = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "white": (240, 240, 240),
}
"""The palette: six colours far apart in RGB (closest pair, blue-purple, is about 140 apart)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

SUBJECT_OUTLINES: tuple[str, ...] = ("star",)
"""Outlines only DreamBooth subjects have: never in pretraining, never a word in the vocabulary."""

STAR_INNER = 0.5
"""Inner radius of the five-pointed star as a share of its outer radius (0.38 would be a regular
pentagram; fatter arms survive the 8 x 8 latent grid)."""

MIN_SIZE, MAX_SIZE = 12, 22
"""Object size (side of its square bounding box) in output pixels, drawn uniformly."""

MARGIN = 2
"""Minimum gap in pixels between the object's bounding box and the image border."""


@dataclasses.dataclass(frozen=True)
class Scene:
    """One toy-world image: a shape of one colour on a background of another colour; with ``color2`` the
    object is two-coloured, ``color`` above its horizontal centre line and ``color2`` below."""

    shape: str
    color: str
    background: str
    size: float = 16.0
    cx: float = RESOLUTION / 2
    cy: float = RESOLUTION / 2
    color2: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        for field in ("color", "background", "color2"):
            value = getattr(self, field)
            if value is None and field == "color2":
                continue
            if value not in COLORS:
                raise ValueError(f"unknown {field} {value!r}; expected one of {tuple(COLORS)}")
        if self.background in (self.color, self.color2) or self.color == self.color2:
            raise ValueError(f"object and background colours must differ: {self}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


def caption(shape: str | None, color: str | None, background: str | None, color2: str | None = None) -> str:
    """Plain-English caption; any attribute may be left out ("a red circle", "a circle on a blue
    background", "" when all three are None). A two-colour object reads "a red and yellow circle"
    (top colour first)."""
    if shape is None and color is None and background is None:
        return ""
    noun = shape if shape is not None else "shape"
    colours = [] if color is None else [color] if color2 is None else [color, "and", color2]
    words = ["a"] + colours + [noun]
    if background is not None:
        words += ["on", "a", background, "background"]
    return " ".join(words)


def scene_caption(scene: Scene) -> str:
    """The full caption of a scene, e.g. "a red circle on a blue background"."""
    return caption(scene.shape, scene.color, scene.background, scene.color2)


def jitter_geometry(rng: np.random.Generator) -> tuple[float, float, float]:
    """Random (size, cx, cy) with the object fully inside the image and MARGIN px clear of the border."""
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    lo = MARGIN + size / 2
    hi = RESOLUTION - MARGIN - size / 2
    return size, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def random_scene(
    rng: np.random.Generator | int,
    combos: list[tuple[str, str, str]] | None = None,
) -> Scene:
    """A random scene. With ``combos`` the (shape, colour, background) triple — or (shape, top colour,
    bottom colour, background) for a two-colour object — is drawn from that list; otherwise uniformly
    from all one-colour triples whose object and background colours differ."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    color2 = None
    if combos is not None:
        combo = combos[int(rng.integers(len(combos)))]
        if len(combo) == 4:
            shape, color, color2, background = combo
        else:
            shape, color, background = combo
    else:
        names = list(COLORS)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = names[int(rng.integers(len(names)))]
        background = color
        while background == color:
            background = names[int(rng.integers(len(names)))]
    size, cx, cy = jitter_geometry(rng)
    return Scene(shape, color, background, size, cx, cy, color2)


def shape_polygon(shape: str, bbox: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """Outline of a polygonal shape inside ``bbox`` (x0, y0, x1, y1); None for the circle."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1, y1), (x0, y1)]
    if shape == "cross":
        # Arms 40% of the size thick: a plus sign that fills 64% of its box.
        a0, a1 = 0.3, 0.7
        xs = [x0 + w * t for t in (0.0, a0, a1, 1.0)]
        ys = [y0 + h * t for t in (0.0, a0, a1, 1.0)]
        return [
            (xs[1], ys[0]), (xs[2], ys[0]), (xs[2], ys[1]), (xs[3], ys[1]), (xs[3], ys[2]), (xs[2], ys[2]),
            (xs[2], ys[3]), (xs[1], ys[3]), (xs[1], ys[2]), (xs[0], ys[2]), (xs[0], ys[1]), (xs[1], ys[1]),
        ]  # fmt: skip
    if shape == "star":
        # Five points, the first straight up; the outer radius fills the box's width, centred in the box.
        cx, cy, r = x0 + w / 2, y0 + h / 2, w / 2
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * STAR_INNER
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def fit_to_box(
    poly: list[tuple[float, float]], bbox: tuple[float, float, float, float]
) -> list[tuple[float, float]]:
    """``poly`` stretched and shifted so its own extent is exactly ``bbox``."""
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    px0, py0, px1, py1 = min(xs), min(ys), max(xs), max(ys)
    x0, y0, x1, y1 = bbox
    sx, sy = (x1 - x0) / max(px1 - px0, 1e-9), (y1 - y0) / max(py1 - py0, 1e-9)
    return [(x0 + (x - px0) * sx, y0 + (y - py0) * sy) for x, y in poly]


def shape_mask(
    shape: str, bbox: tuple[float, float, float, float], resolution: int = RESOLUTION, fit: bool = False
) -> np.ndarray:
    """Coverage (0..1 float32, anti-aliased) of ``shape`` drawn in ``bbox`` on a resolution^2 grid. With
    ``fit`` the outline's own extent fills ``bbox`` (a template for an object's measured bounding box; only
    the star differs, whose points do not reach the box's bottom and sides)."""
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in bbox)

    def draw(canvas: ImageDraw.ImageDraw) -> None:
        if shape == "circle":
            canvas.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
        else:
            poly = shape_polygon(shape, (x0, y0, x1, y1))
            canvas.polygon(fit_to_box(poly, (x0, y0, x1, y1)) if fit else poly, fill=255)

    return supersampled_coverage(draw, resolution)


def supersampled_coverage(draw, resolution: int = RESOLUTION) -> np.ndarray:
    """Coverage (0..1 float32) of what ``draw(canvas)`` paints in 255 on a canvas :data:`SUPERSAMPLE` times
    the size (coordinates scaled to match), box-filtered down to resolution^2: the anti-aliasing of every
    outline."""
    ss = SUPERSAMPLE
    big = Image.new("L", (resolution * ss, resolution * ss), 0)
    draw(ImageDraw.Draw(big))
    small = big.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def compose(coverage: np.ndarray, fg: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
    """Blend a foreground (H, W, 3 array or an RGB triple) over a flat background by ``coverage``."""
    fg = np.broadcast_to(np.asarray(fg, dtype=np.float32), coverage.shape + (3,))
    out = coverage[..., None] * fg + (1.0 - coverage[..., None]) * np.asarray(bg, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def split_fill(cy: float, top: str, bottom: str, resolution: int = RESOLUTION) -> np.ndarray:
    """(H, W, 3) float32 fill: ``top`` above the horizontal line y = ``cy``, ``bottom`` below, with an
    anti-aliased boundary row (each row weighted by the fraction of it above the line)."""
    rows = np.arange(resolution, dtype=np.float32)[:, None] + 0.5
    top_frac = np.clip(cy - (rows - 0.5), 0.0, 1.0)
    fg = top_frac[..., None] * np.asarray(COLORS[top], np.float32) + (1 - top_frac[..., None]) * np.asarray(
        COLORS[bottom], np.float32
    )
    return np.broadcast_to(fg, (resolution, resolution, 3))


OUTLINE_POINTS: tuple[int, ...] = (3, 4, 6, 7, 8)
"""Point counts of the spiky stars among the random outlines: every small count but five, so the
five-pointed subject stays an outline no training image shows."""


def random_outline_polygon(
    rng: np.random.Generator, bbox: tuple[float, float, float, float]
) -> list[tuple[float, float]]:
    """A random outline inside ``bbox``, half of the time a blob (3-9 vertices at sorted random angles
    around the centre, each at a random 35-100 % of the half-width), half of the time a spiky star with
    :data:`OUTLINE_POINTS` points, inner radius 35-70 % of the outer, at a random rotation. Neither can be
    the five-pointed star subject (a blob has at most 9 vertices), so a VAE trained on them has learnt
    outlines in general, not the subject."""
    x0, y0, x1, y1 = bbox
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    turn = rng.uniform(0.0, 2 * math.pi)
    if rng.random() < 0.5:
        k = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0.0, 2 * math.pi, size=k)) + turn
        radii = r * rng.uniform(0.35, 1.0, size=k)
    else:
        points = OUTLINE_POINTS[int(rng.integers(len(OUTLINE_POINTS)))]
        inner = rng.uniform(0.35, 0.7)
        angles = turn + np.arange(2 * points) * math.pi / points
        radii = r * np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for rad, a in zip(radii, angles)]


def random_outline_array(rng: np.random.Generator, two_colour_p: float = 0.5) -> np.ndarray:
    """A (32, 32, 3) uint8 image of a :func:`random_outline_polygon` in palette colours (two-coloured, top
    over bottom, with probability ``two_colour_p``) on a palette background: VAE training data for outlines
    beyond the world's four shapes. Never captioned, never shown to the UNet."""
    names = list(COLORS)
    picks = rng.permutation(len(names))[:3]
    color, color2, background = (names[int(i)] for i in picks)
    size, cx, cy = jitter_geometry(rng)
    bbox = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    poly = random_outline_polygon(rng, tuple(v * SUPERSAMPLE for v in bbox))
    cov = supersampled_coverage(lambda canvas: canvas.polygon(poly, fill=255))
    fg = split_fill(cy, color, color2) if rng.random() < two_colour_p else np.asarray(COLORS[color])
    return compose(cov, fg, COLORS[background])


def render_array(scene: Scene) -> np.ndarray:
    """The scene as a (32, 32, 3) uint8 array."""
    cov = shape_mask(scene.shape, scene.bbox)
    fg = (
        np.asarray(COLORS[scene.color])
        if scene.color2 is None
        else split_fill(scene.cy, scene.color, scene.color2)
    )
    return compose(cov, fg, COLORS[scene.background])


def render(scene: Scene) -> Image.Image:
    """The scene as a 32 x 32 RGB PIL image."""
    return Image.fromarray(render_array(scene), "RGB")


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Stack of rendered scenes, (N, 32, 32, 3) uint8."""
    return (
        np.stack([render_array(s) for s in scenes])
        if scenes
        else np.zeros((0, RESOLUTION, RESOLUTION, 3), np.uint8)
    )


def all_combos() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) triple with different object and background colours."""
    return [(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if c != b]


def all_two_colour_combos() -> list[tuple[str, str, str, str]]:
    """Every (shape, top colour, bottom colour, background) with three different colours."""
    return [
        (s, c, c2, b) for s in SHAPES for c in COLORS for c2 in COLORS for b in COLORS if len({c, c2, b}) == 3
    ]
