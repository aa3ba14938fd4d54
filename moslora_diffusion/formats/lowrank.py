"""Any adapter file as plain low-rank modules ``delta = up · down`` (scale folded in), and back to a file.

The common ground of the adapter tools (:mod:`moslora_diffusion.adapter_tools`): native MoSLoRA files
(mixer and scale folded, as in the exact exports), diffusers/PEFT files and kohya-ss files all read into a
:class:`LowRankAdapter`; one is written as a diffusers or kohya file. Native and diffusers files name modules
by their model path (``"path"`` naming), kohya files by kohya names (``"kohya"``); path names turn into kohya
names (the architecture decides), never back (that needs the model's module list): a kohya input is written
as kohya, which diffusers, ComfyUI and AUTOMATIC1111 all load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import MoSLoraFormatError, RequestError
from .export import (
    DIFFUSERS_WEIGHTS_NAME,
    KOHYA_WEIGHTS_NAME,
    check_export_target,
    detect_architecture,
    folded_modules,
    kohya_metadata,
    kohya_name,
    kohya_tensors,
    output_file,
    provenance_metadata,
)
from .inspect import DIFFUSERS_PAIRS, read_adapter_header
from .naming import is_text_encoder, strip_text_model, with_text_model
from .native import load_moslora_file
from .safetensors_io import read_safetensors, write_safetensors_atomic

__all__ = [
    "PLAIN_FORMATS",
    "LowRankAdapter",
    "LowRankModule",
    "read_low_rank",
    "to_state_dict",
    "write_low_rank",
]

PLAIN_FORMATS = ("diffusers", "kohya")
_PROVENANCE_KEYS = ("moslora_base_model", "moslora_training")


@dataclass
class LowRankModule:
    """One adapted module: ``delta = up · down`` (conv modules keep their 4-d shapes)."""

    component: str
    name: str  # the model path ("path" naming) or the kohya name ("kohya" naming)
    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    up: torch.Tensor  # [out, r] or [out, r, 1, 1]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """The weight change as a matrix [out, in · kh · kw] (float64)."""
        up = self.up.reshape(self.up.shape[0], self.rank).to(torch.float64)
        return up @ self.down.reshape(self.rank, -1).to(torch.float64)


@dataclass
class LowRankAdapter:
    """A plain LoRA in memory: its modules, their naming, and what is known of its base model."""

    modules: list[LowRankModule]
    naming: str  # "path" or "kohya"
    architecture: str | None = None
    unet_config: Mapping[str, Any] | None = None
    provenance: dict[str, str] = field(default_factory=dict)  # moslora_base_model / moslora_training
    source: str | None = None

    def with_modules(self, modules: list[LowRankModule], **changes: Any) -> LowRankAdapter:
        return replace(self, modules=modules, **changes)

    def in_kohya_naming(self) -> LowRankAdapter:
        """The same adapter with kohya names (needs the architecture for the UNet's block names)."""
        if self.naming == "kohya":
            return self
        if self.architecture is None:
            raise MoSLoraFormatError(
                f"{self.source or '<adapter>'}: cannot tell the base architecture, which kohya names need"
            )
        named = [
            replace(m, name=kohya_name(self.architecture, m.component, m.name, self.unet_config, self.source))
            for m in self.modules
        ]
        return replace(self, modules=named, naming="kohya")


# ----------------------------------------------------------------------------------------------- reading


def read_low_rank(path: str | os.PathLike) -> LowRankAdapter:
    """Read a native, diffusers or kohya adapter file as plain low-rank modules.

    Every tensor of the file must belong to a module this reader understands: DoRA magnitudes, LoCon/LoHa
    tensors or loose keys are refused by name rather than dropped."""
    header = read_adapter_header(path)
    source = str(header.path or path)
    if header.kind == "moslora":
        adapter = load_moslora_file(header.path)
        try:
            arch = detect_architecture(adapter)
        except MoSLoraFormatError:
            arch = None
        modules = [LowRankModule(c, p, A, B) for c, p, A, B in folded_modules(adapter)]
        unet_config = (adapter.base_model or {}).get("unet_config")
        return LowRankAdapter(modules, "path", arch, unet_config, provenance_metadata(adapter), source)
    tensors, metadata = read_safetensors(header.path)
    provenance = {k: metadata[k] for k in _PROVENANCE_KEYS if k in metadata}
    unet_config = (header.base_model or {}).get("unet_config")
    used: set[str] = set()
    modules = []
    for m in header.modules:
        if header.kind == "kohya":
            down_key, up_key = f"{m.module_path}.lora_down.weight", f"{m.module_path}.lora_up.weight"
            alpha_key = f"{m.module_path}.alpha"
            down, up = tensors[down_key], tensors[up_key]
            scale = float(tensors[alpha_key]) / down.shape[0] if alpha_key in tensors else 1.0
            used |= {down_key, up_key, alpha_key}
            name = m.module_path
        else:
            down_key, up_key = _diffusers_keys(tensors, m.component, m.module_path)
            down, up, scale = tensors[down_key], tensors[up_key], 1.0
            used |= {down_key, up_key}
            name = strip_text_model(m.module_path) if is_text_encoder(m.component) else m.module_path
        if scale != 1.0:
            up = (up.to(torch.float64) * scale).to(up.dtype)
        modules.append(LowRankModule(m.component, name, down, up))
    leftover = sorted(set(tensors) - used)
    if leftover:
        raise MoSLoraFormatError(
            f"{source}: {len(leftover)} tensor(s) are not plain LoRA down/up/alpha weights (e.g. {leftover[0]!r}: "
            "DoRA, LoCon/LoHa or another layout); refusing rather than dropping them"
        )
    naming = "kohya" if header.kind == "kohya" else "path"
    return LowRankAdapter(modules, naming, header.architecture, unet_config, provenance, source)


def _diffusers_keys(tensors: Mapping[str, torch.Tensor], component: str, path: str) -> tuple[str, str]:
    for down, up in DIFFUSERS_PAIRS:
        if f"{component}.{path}{down}" in tensors:
            return f"{component}.{path}{down}", f"{component}.{path}{up}"
    raise MoSLoraFormatError(f"{component}.{path}: no down/up pair")  # the header listed it: cannot happen


# ----------------------------------------------------------------------------------------------- writing


def write_low_rank(
    adapter: LowRankAdapter,
    output: str | os.PathLike,
    format: str,
    *,
    sources: list[str] | None = None,
    note: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``adapter`` as a diffusers or kohya file (a directory gets the usual file name) and return its path.

    ``note`` (what the tool did: operation, settings, sources' provenance) goes into the metadata as
    ``moslora_tool`` JSON. Never over one of ``sources``; an existing file only with ``overwrite``."""
    if format not in PLAIN_FORMATS:
        raise RequestError(f"unknown format {format!r}; choose one of {PLAIN_FORMATS}")
    target = output_file(output, DIFFUSERS_WEIGHTS_NAME if format == "diffusers" else KOHYA_WEIGHTS_NAME)
    for src in sources or []:
        check_export_target(target, src, overwrite)
    check_export_target(target, None, overwrite)
    extra = {**adapter.provenance}
    if note:
        extra["moslora_tool"] = json.dumps(dict(note), sort_keys=True, default=str)
    tensors = to_state_dict(adapter, format)
    if format == "diffusers":
        return write_safetensors_atomic(target, tensors, {"format": "pt", **extra})
    if adapter.architecture is None:
        raise RequestError(
            f"{adapter.source or 'the adapter'}: unknown base architecture; kohya metadata needs it"
        )
    meta = kohya_metadata(
        [m.rank for m in adapter.modules], adapter.architecture, "moslora adapter tools", extra
    )
    return write_safetensors_atomic(target, tensors, meta)


def to_state_dict(adapter: LowRankAdapter, format: str) -> dict[str, torch.Tensor]:
    """The tensors of a diffusers file (``{component}.{path}.lora_A/B.weight``, text encoders with
    ``text_model.``) or a kohya file (one alpha for all modules, :func:`export.kohya_tensors`)."""
    if format == "kohya":
        named = adapter.in_kohya_naming()
        return kohya_tensors(
            ((m.component, m.name, m.down, m.up) for m in named.modules),
            None,
            None,
            adapter.source,
            named=True,
        )
    if adapter.naming == "kohya":
        raise RequestError(
            f"{adapter.source or 'the adapter'} uses kohya names, which cannot be turned back into model paths "
            "without the model: write it as kohya (diffusers, ComfyUI and AUTOMATIC1111 load kohya files)"
        )
    tensors = {}
    for m in adapter.modules:
        path = with_text_model(m.name) if is_text_encoder(m.component) else m.name
        tensors[f"{m.component}.{path}.lora_A.weight"] = m.down
        tensors[f"{m.component}.{path}.lora_B.weight"] = m.up
    return tensors
