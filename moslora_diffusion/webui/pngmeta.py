"""A1111-style generation parameters ("infotext") in a PNG ``parameters`` text chunk.

The text has the layout that AUTOMATIC1111's web UI, ComfyUI's importers and most image viewers read::

    a red circle
    Negative prompt: blurry
    Steps: 25, Sampler: DDIM, CFG scale: 5.0, Seed: 42, Size: 32x32, Model: base_model, ...

Values holding a comma, colon or newline are written JSON-quoted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..durable import write_image
from ..errors import RequestError

__all__ = [
    "format_parameters",
    "parse_parameters",
    "save_png",
    "read_parameters",
    "format_adapters",
    "parse_adapters",
    "generation_settings",
]

_KEY_RE = re.compile(r"[\w ]+")
# An infotext longer than this is not one this app or AUTOMATIC1111 wrote (theirs are a few hundred
# characters); it is refused before parsing, so that an upload cannot hold the server.
MAX_PARAMETERS_CHARS = 64 * 1024


def _quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',:\n"'):
        return json.dumps(text)
    return text


def format_adapters(adapters: list[tuple[str, float]]) -> str:
    """``name: strength`` pairs joined with commas (the value of the ``Adapters`` field)."""
    return ", ".join(f"{name}: {strength:g}" for name, strength in adapters)


def parse_adapters(text: str) -> list[tuple[str, float]]:
    """The ``Adapters`` field back into (name, strength) pairs; malformed items are skipped."""
    pairs = []
    for item in (text or "").split(","):
        name, sep, strength = item.strip().rpartition(":")
        try:
            value = float(strength)
        except ValueError:
            continue
        if sep and name.strip():
            pairs.append((name.strip(), value))
    return pairs


def _number(fields: Mapping[str, Any], key: str, kind: type) -> Any:
    try:
        return kind(float(fields[key])) if key in fields else None
    except (TypeError, ValueError):
        return None


def generation_settings(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What a parsed infotext (ours or AUTOMATIC1111's) says about generating the image again.

    Keys present only when the infotext has them: prompt, negative_prompt, seed, steps, guidance_scale,
    sampler, width, height, adapters ([(name, strength)]).
    """
    out: dict[str, Any] = {
        "prompt": fields.get("Prompt", ""),
        "negative_prompt": fields.get("Negative prompt", ""),
    }
    for key, field, kind in (
        ("seed", "Seed", int),
        ("steps", "Steps", int),
        ("guidance_scale", "CFG scale", float),
    ):
        value = _number(fields, field, kind)
        if value is not None:
            out[key] = value
    if fields.get("Sampler"):
        out["sampler"] = str(fields["Sampler"])
    width, _, height = str(fields.get("Size", "")).partition("x")
    if width.isdigit() and height.isdigit():
        out["width"], out["height"] = int(width), int(height)
    if fields.get("Adapters"):
        out["adapters"] = parse_adapters(str(fields["Adapters"]))
    return out


def format_parameters(prompt: str, negative_prompt: str, fields: Mapping[str, Any]) -> str:
    """Render prompt, negative prompt and ``key: value`` fields (in order; None values skipped)."""
    lines = [prompt.strip()]
    if negative_prompt.strip():
        lines.append(f"Negative prompt: {negative_prompt.strip()}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None and v != ""))
    return "\n".join(lines)


def _split_items(line: str) -> list[str]:
    """``line`` cut at the commas outside double quotes (a backslash escapes inside quotes); linear time."""
    items, start, quoted, escaped = [], 0, False, False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append(line[start:i])
            start = i + 1
    items.append(line[start:])
    return items


def _fields(line: str) -> list[tuple[str, str]]:
    """The ``key: value`` items of an infotext's last line; items without a plain key are skipped."""
    out = []
    for item in _split_items(line):
        key, sep, value = item.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY_RE.fullmatch(key):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = str(json.loads(value))
            except json.JSONDecodeError:
                value = value[1:-1]  # a bad escape: keep the text between the quotes as it is
        out.append((key, value))
    return out


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an infotext back into ``{"Prompt": ..., "Negative prompt": ..., field: value}`` (strings).

    Raises :class:`RequestError` for a text over :data:`MAX_PARAMETERS_CHARS`.
    """
    if len(text) > MAX_PARAMETERS_CHARS:
        raise RequestError(
            f"the image's parameters text has {len(text):,} characters, more than the {MAX_PARAMETERS_CHARS:,} "
            "an infotext can have; not read"
        )
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    fields: dict[str, Any] = {}
    found = _fields(last)
    if len(found) >= 3:
        fields.update(found)
        lines = lines[:-1]
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines), **fields}


def save_png(image: Image.Image, directory: str | os.PathLike, stem: str, parameters: str) -> Path:
    """Write ``image`` as ``directory/stem.png`` with a ``parameters`` text chunk, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", parameters)
    return write_image(directory / f"{stem}.png", image, pnginfo=info)


def read_parameters(path: str | os.PathLike) -> str | None:
    """The ``parameters`` text chunk of a PNG file, or None."""
    with Image.open(path) as im:
        return im.info.get("parameters") if im.format == "PNG" else None
