"""Image grids, the one place for them: plain tiles (validation samples, toy-world reports) and labelled grids
(the web UI's compare grid, the quick start)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 128


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def text_card(lines: Sequence[str], side: int = 256) -> Image.Image:
    """A square grey card with ``lines`` of text (an adapter without a sample image, in the web UI)."""
    card = Image.new("RGB", (side, side), (72, 76, 86))
    draw = ImageDraw.Draw(card)
    font = _font(max(12, side // 14))
    y = side // 10
    for line in lines:
        while len(line) > 4 and draw.textlength(line, font=font) > side - side // 8:
            line = line[:-4] + "..."
        draw.text((side // 16, y), line, fill=(235, 235, 235), font=font)
        y += int(font.size * 1.4) if hasattr(font, "size") else 16
    return card


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
) -> Image.Image:
    """Paste images into a grid with column headers, row labels and an optional title line.

    Small images are scaled up (nearest neighbour) so that each cell is at least MIN_CELL pixels.
    """
    w, h = rows[0][0].size
    scale = max(1, math.ceil(MIN_CELL / min(w, h)))
    cw, ch = w * scale, h * scale
    font_size = max(12, min(28, cw // 9))
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        left, _, right, _ = measure.textbbox((0, 0), text, font=font)
        return right - left

    pad = max(4, font_size // 3)
    label_w = max(text_width(t) for t in row_labels) + 2 * pad
    head_h = font_size + 2 * pad
    title_h = head_h if title else 0
    ncols = len(col_labels)
    width = label_w + ncols * (cw + pad) + pad
    while title and text_width(title) > width - 2 * pad and len(title) > 4:
        title = title[:-4] + "..."
    height = title_h + head_h + len(rows) * (ch + pad) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for j, label in enumerate(col_labels):
        x = label_w + j * (cw + pad) + (cw - text_width(label)) // 2
        draw.text((x, title_h + pad), label, fill="black", font=font)
    for i, (row, label) in enumerate(zip(rows, row_labels)):
        y = title_h + head_h + i * (ch + pad)
        draw.text((pad, y + (ch - font_size) // 2), label, fill="black", font=font)
        for j, image in enumerate(row):
            cell = image.convert("RGB").resize((cw, ch), Image.NEAREST) if scale > 1 else image.convert("RGB")
            grid.paste(cell, (label_w + j * (cw + pad), y))
    return grid


def tile(
    images: Sequence[Image.Image], ncols: int | None = None, scale: int = 1, pad: int = 0
) -> Image.Image:
    """Images row-major in a grid on white, each enlarged ``scale`` times (nearest neighbour) with ``pad``
    pixels between and around them; ``ncols`` defaults to a near-square grid."""
    if not images:
        raise ValueError("a grid needs at least one image")
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    w, h = images[0].size[0] * scale, images[0].size[1] * scale
    nrows = math.ceil(len(images) / ncols)
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        cell = im.convert("RGB") if scale == 1 else im.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
        grid.paste(cell, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
