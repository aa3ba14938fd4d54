"""JSON from files and file metadata, read defensively: bounded size and depth, strict numbers, named errors.

Python's ``json`` recurses once per nesting level (a deeply nested array raises ``RecursionError``) and
accepts ``NaN`` and ``Infinity``; every JSON the toolkit reads from a file goes through :func:`parse_json`,
which turns all of that into the caller's own :mod:`~moslora_diffusion.errors` class, naming the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import MoSLoraError

__all__ = ["MAX_JSON_CHARS", "MAX_JSON_DEPTH", "parse_json", "read_json_file", "text_safe"]

MAX_JSON_CHARS = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(text: str) -> int:
    """The deepest nesting of brackets outside strings, in one linear pass."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_strings(value: Any) -> None:
    """Raise UnicodeEncodeError for a string that is not text (a lone surrogate from a ``\\udXXX`` escape)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def parse_json(
    text: Any,
    where: str,
    error: type[MoSLoraError],
    max_chars: int = MAX_JSON_CHARS,
    max_depth: int = MAX_JSON_DEPTH,
    allow_nonfinite: bool = False,
) -> Any:
    """``json.loads`` within size and depth bounds, without NaN / Infinity (unless ``allow_nonfinite``: the
    caller checks its numbers and names the bad one); else ``error`` naming ``where``."""
    if not isinstance(text, str):
        raise error(f"{where}: expected JSON text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise error(f"{where}: {len(text):,} characters of JSON, more than the {max_chars:,} allowed")
    if _depth(text) > max_depth:
        raise error(f"{where}: JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(text, parse_constant=None if allow_nonfinite else _reject_constant)
        _check_strings(value)
        return value
    except UnicodeEncodeError:
        raise error(f"{where}: JSON text holds a lone surrogate escape (not a character)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON ({exc})") from None
    except ValueError as exc:  # NaN / Infinity, from _reject_constant
        raise error(f"{where}: {exc}") from None
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {max_depth} levels") from None


def read_json_file(
    path: str | os.PathLike,
    error: type[MoSLoraError],
    what: str | None = None,
    max_chars: int = MAX_JSON_CHARS,
) -> Any:
    """A UTF-8 JSON file's value, through :func:`parse_json`; problems are ``error`` naming the file (and
    ``what`` it should have been)."""
    path = Path(path)
    try:
        if path.stat().st_size > 4 * max_chars:
            raise error(f"{path}: {path.stat().st_size:,} bytes, too large for a JSON file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_json(text, f"{path}: {what}" if what else str(path), error, max_chars)


def text_safe(value: Any) -> Any:
    """``value`` with every string made writable as UTF-8: bytes of a non-UTF-8 file name (which Python
    keeps as lone surrogates) become ``\\xNN`` escapes. For what the toolkit writes into files and metadata."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {text_safe(k): text_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [text_safe(v) for v in value]
    return value
