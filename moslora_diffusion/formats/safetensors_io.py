"""Careful safetensors input/output: refuse pickles, diagnose truncated files, write atomically."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..durable import temporary_beside
from ..errors import MoSLoraFormatError
from ..jsonio import parse_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MAX_HEADER_BYTES = 100_000_000
# Bits per element of each dtype the safetensors format names.
DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4,
              "F6_E2M3": 6, "F6_E3M2": 6, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64, "U32": 32,
              "U16": 16, "U8": 8, "BOOL": 8, "C64": 64}  # fmt: skip

__all__ = [
    "PICKLE_SUFFIXES",
    "check_not_pickle",
    "read_header",
    "read_safetensors",
    "tensor_digest",
    "write_safetensors_atomic",
]


def check_not_pickle(path: str | os.PathLike) -> None:
    """Raise when ``path`` names a pickle-based checkpoint; such files are never opened."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise MoSLoraFormatError(
            f"{path}: refusing to load a pickle-based checkpoint ({Path(path).suffix}); unpickling can run "
            "arbitrary code. Convert it to .safetensors with a trusted tool first."
        )


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, dict]]:
    """Return ``(metadata, tensor_infos)`` from a safetensors header without loading any tensor.

    ``tensor_infos`` maps each tensor name to its ``{"dtype", "shape", "data_offsets"}`` entry.
    Raises :class:`MoSLoraFormatError` for a missing, pickled, truncated or corrupt file.
    """
    path = Path(path)
    check_not_pickle(path)
    if not path.exists():
        raise MoSLoraFormatError(f"{path}: no such file")
    if path.is_dir():
        raise MoSLoraFormatError(f"{path}: is a directory, expected a .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        looks_pickled = head[:1] == b"\x80" or head[:2] == b"PK"
        if len(head) < 8:
            raise MoSLoraFormatError(f"{path}: truncated file ({size} bytes), not a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 0 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            if looks_pickled:
                raise MoSLoraFormatError(
                    f"{path}: looks like a pickle/zip (torch.save) checkpoint; refusing to open it"
                )
            raise MoSLoraFormatError(
                f"{path}: not a valid safetensors file (header length {header_len} for a {size}-byte file; "
                "truncated or corrupt)"
            )
        raw = fh.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MoSLoraFormatError(f"{path}: corrupt safetensors header ({exc})") from None
    header = parse_json(
        text, f"{path}: corrupt safetensors header", MoSLoraFormatError, max_chars=_MAX_HEADER_BYTES
    )
    if not isinstance(header, dict):
        raise MoSLoraFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise MoSLoraFormatError(f"{path}: corrupt safetensors header ('__metadata__' must map text to text)")
    data_len = size - 8 - header_len
    for name, info in header.items():
        problem = _entry_problem(info, data_len)
        if problem:
            raise MoSLoraFormatError(f"{path}: tensor '{name}' {problem} (truncated or corrupt)")
    return dict(metadata), header


def _entry_problem(info: Any, data_len: int) -> str | None:
    """What is wrong with one tensor entry of a safetensors header, or None."""
    if not isinstance(info, dict):
        return "has no dtype, shape and data_offsets"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        return f"has an invalid shape {shape!r}"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"has invalid data_offsets {offsets!r}"
    if offsets[1] > data_len:
        return "lies beyond the end of the file"
    bits = DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
    if bits is None:
        return f"has an unknown dtype {dtype!r}"
    if math.prod(shape) * bits != (offsets[1] - offsets[0]) * 8:
        return f"holds {offsets[1] - offsets[0]} bytes, not the {math.prod(shape) * bits // 8} its {dtype} shape {shape} needs"
    return None


def tensor_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a safetensors file's tensors (name, dtype, shape and bytes, by name), metadata left out.

    Two adapters with equal digests hold bit-identical weights, whatever their metadata or tensor order.
    """
    _, tensors = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        for name in sorted(tensors):
            info = tensors[name]
            start, end = info["data_offsets"]
            fh.seek(8 + header_len + start)
            digest.update(json.dumps([name, info.get("dtype"), info.get("shape")]).encode())
            digest.update(fh.read(end - start))
    return "sha256:" + digest.hexdigest()


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and the metadata of a safetensors file (CPU), with clear errors for bad files."""
    metadata, _ = read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise MoSLoraFormatError(f"{path}: cannot read safetensors data ({exc})") from None
    return tensors, metadata


def write_safetensors_atomic(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` durably (:func:`moslora_diffusion.durable.temporary_beside`)."""
    path = Path(path)
    prepared = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with temporary_beside(path) as tmp:
        save_file(prepared, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path
