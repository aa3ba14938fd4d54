"""Pure weight functions for MoSLoRA: scaling, rank/alpha patterns, delta weights and folding.

Everything here works on plain tensors and numbers, never on modules, so that file formats, exports
and tests can share the exact arithmetic the adapter layer performs.

Shapes (``r`` is the adapter rank):

- Linear: ``A`` [r, in], ``M`` [r, r], ``B`` [out, r]; delta [out, in].
- Conv2d (LoCon style): ``A`` [r, in, kh, kw], ``M`` [r, r], ``B`` [out, r, 1, 1]; delta [out, in, kh, kw].

The delta is ``s · B · M · A`` with ``s = alpha / r`` (or ``alpha / sqrt(r)`` with rank-stabilised
scaling). Folding returns ``B' = s · B · M`` so that ``B' · A`` is an ordinary LoRA with alpha = r.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch

from .errors import ConfigError, MoSLoraFormatError

__all__ = [
    "lora_scale",
    "match_pattern_key",
    "resolve_rank_alpha",
    "check_shapes",
    "delta_weight",
    "lora_delta_weight",
    "fold_mixer",
]


def lora_scale(r: int, alpha: float, use_rslora: bool = False) -> float:
    """Return the LoRA scaling factor ``alpha / r`` (``alpha / sqrt(r)`` when ``use_rslora``)."""
    if r <= 0:
        raise ConfigError(f"rank must be positive, got {r}")
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


def match_pattern_key(pattern_keys: Iterable[str], module_path: str) -> str | None:
    """Return the first pattern key that matches ``module_path``, or None.

    Follows PEFT's semantics for ``rank_pattern`` / ``alpha_pattern``: a key matches when it, read as a
    regular expression, matches the whole module path or a dot-separated suffix of it.
    """
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_path):
            return key
    return None


def resolve_rank_alpha(
    module_path: str,
    r: int,
    lora_alpha: float,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    alternative_paths: Iterable[str] = (),
) -> tuple[int, float]:
    """Return (rank, alpha) for one module, applying PEFT-style pattern overrides.

    ``alternative_paths`` are other spellings of the same module (e.g. a CLIP path with and without
    ``text_model.``); they are tried in order when ``module_path`` matches no pattern.
    """
    paths = [module_path, *alternative_paths]

    def pick(pattern: Mapping | None, default):
        if not pattern:
            return default
        for path in paths:
            key = match_pattern_key(pattern.keys(), path)
            if key is not None:
                return pattern[key]
        return default

    return int(pick(rank_pattern, r)), float(pick(alpha_pattern, lora_alpha))


def check_shapes(A: torch.Tensor, M: torch.Tensor, B: torch.Tensor) -> str | None:
    """Return a description of what is inconsistent in (A, M, B), or None when the shapes fit."""
    a, m, b = tuple(A.shape), tuple(M.shape), tuple(B.shape)
    if A.ndim not in (2, 4):
        return f"lora_A must have 2 (Linear) or 4 (Conv2d) dimensions, got shape {a}"
    r = a[0]
    if m != (r, r):
        return f"lora_mixer must be [{r}, {r}] to match lora_A {a}, got {m}"
    if A.ndim == 2 and (B.ndim != 2 or b[1] != r):
        return f"lora_B must be [out, {r}] to match lora_A {a}, got {b}"
    if A.ndim == 4 and (B.ndim != 4 or b[1] != r or b[2:] != (1, 1)):
        return f"lora_B must be [out, {r}, 1, 1] to match conv lora_A {a}, got {b}"
    return None


def _raise_on_bad_shapes(A: torch.Tensor, M: torch.Tensor | None, B: torch.Tensor) -> None:
    problem = check_shapes(A, M if M is not None else torch.empty(A.shape[0], A.shape[0]), B)
    if problem:
        raise MoSLoraFormatError(problem)


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (half precision is never used for the products)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _delta_fp32(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``B · A`` in float32 (or 64) for Linear ([out, r] @ [r, in]) or Conv2d ([out, r, 1, 1], [r, in, kh, kw])."""
    dtype = _work_dtype(A, B)
    A32, B32 = A.to(dtype), B.to(dtype).flatten(1)
    if A.ndim == 2:
        return B32 @ A32
    return torch.einsum("or,rikl->oikl", B32, A32)


def lora_delta_weight(A: torch.Tensor, B: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Return ``scale · B · A`` in the adapted layer's weight shape (computed in float32, returned in A's dtype)."""
    _raise_on_bad_shapes(A, None, B)
    return (_delta_fp32(A, B) * scale).to(A.dtype)


def delta_weight(A: torch.Tensor, M: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """Return the MoSLoRA weight delta ``scale · B · M · A`` (computed in float32, returned in A's dtype)."""
    _raise_on_bad_shapes(A, M, B)
    dtype = _work_dtype(A, M, B)
    BM = (B.to(dtype).flatten(1) @ M.to(dtype)).reshape(B.shape)
    return (_delta_fp32(A, BM) * scale).to(A.dtype)


def fold_mixer(M: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``B' = scale · B · M`` with B's shape and dtype, so that ``B' · A`` equals ``scale · B · M · A``."""
    r = M.shape[0]
    if tuple(M.shape) != (r, r) or B.shape[1] != r:
        raise MoSLoraFormatError(f"cannot fold mixer {tuple(M.shape)} into lora_B {tuple(B.shape)}")
    dtype = _work_dtype(M, B)
    folded = (B.to(dtype).flatten(1) @ M.to(dtype)) * scale
    return folded.reshape(B.shape).to(B.dtype)
