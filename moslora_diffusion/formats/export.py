"""Exact exports of a MoSLoRA adapter as a plain rank-r LoRA (mixer and scale folded into B, alpha = r).

- ``diffusers``: PEFT-style keys ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` (text encoders with
  ``text_model.``), which stock ``pipe.load_lora_weights(file_or_dir)`` reads.
- ``kohya``: kohya-ss names (``lora_unet_…``, ``lora_te_…`` or ``lora_te1_…``/``lora_te2_…``, SGM
  block names for the SDXL UNet) with ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``. One
  alpha (the common rank) for all modules; see :func:`kohya_alpha`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .. import architectures
from ..constants import ARCHITECTURES, DIFFUSERS_WEIGHTS_NAME, KOHYA_WEIGHTS_NAME
from ..errors import MoSLoraFormatError, RequestError
from ..functional import fold_mixer
from .naming import is_text_encoder, kohya_module_name, with_text_model
from .native import FORMAT_VERSION, MoSLoraFile, load_moslora_file
from .safetensors_io import write_safetensors_atomic

EXPORT_FORMATS = ("diffusers", "kohya")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = [
    "EXPORT_FORMATS",
    "DIFFUSERS_WEIGHTS_NAME",
    "KOHYA_WEIGHTS_NAME",
    "folded_modules",
    "kohya_alpha",
    "detect_architecture",
    "to_diffusers_state_dict",
    "to_kohya_state_dict",
    "export_adapter",
    "provenance_metadata",
    "check_export_target",
    "kohya_unsupported_modules",
]


def folded_modules(adapter: MoSLoraFile) -> Iterator[tuple[str, str, torch.Tensor, torch.Tensor]]:
    """Yield (component, module_path, A, B') with ``B' = s · B · M``: a plain LoRA with alpha = r."""
    for mod in adapter.modules():
        yield mod.component, mod.module_path, mod.A, fold_mixer(mod.M, mod.B, mod.scale)


def detect_architecture(adapter: MoSLoraFile, architecture: str | None = None) -> str:
    """Return the base architecture: the argument, else ``base_model``, else inferred from the modules.

    The inference is :func:`moslora_diffusion.architectures.from_adapter_modules`.
    """
    arch = architecture or adapter.architecture
    if arch is None:
        arch = architectures.from_adapter_modules(
            (m.component, m.module_path, int(m.A.shape[1])) for m in adapter.modules()
        )
    if arch not in ARCHITECTURES:
        raise MoSLoraFormatError(
            f"{adapter.path or '<adapter>'}: cannot tell the base architecture ({arch!r}); "
            f"pass one of {ARCHITECTURES} (CLI: --architecture)"
        )
    return arch


def _cast(t: torch.Tensor, dtype: torch.dtype | None, source: str | None, where: str) -> torch.Tensor:
    """Cast for export; a value the target dtype cannot hold is an error, not an inf in the file."""
    out = t.to(dtype) if dtype is not None else t
    if not torch.isfinite(out).all():
        raise MoSLoraFormatError(
            f"{source or '<adapter>'}: module '{where}' does not fit in {out.dtype} "
            "(values overflow); export in fp32 or bf16"
        )
    return out


def to_diffusers_state_dict(
    adapter: MoSLoraFile, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Folded adapter with diffusers/PEFT keys; text-encoder paths carry ``text_model.``."""
    out: dict[str, torch.Tensor] = {}
    for component, path, A, B in folded_modules(adapter):
        if is_text_encoder(component):
            path = with_text_model(path)
        out[f"{component}.{path}.lora_A.weight"] = _cast(A, dtype, adapter.path, f"{component}.{path}")
        out[f"{component}.{path}.lora_B.weight"] = _cast(B, dtype, adapter.path, f"{component}.{path}")
    return out


def kohya_alpha(adapter: MoSLoraFile) -> float:
    """The single ``.alpha`` written for every module of a kohya export: see :func:`common_rank_alpha`."""
    return common_rank_alpha(int(m.A.shape[0]) for m in adapter.modules())


def common_rank_alpha(ranks: Iterable[int]) -> float:
    """The one alpha of a kohya file: the most common rank (the smallest of equally common ones).

    With one alpha for all modules the scale ``alpha / r`` is 1 wherever ``r`` is the common rank; the
    few modules of another rank get ``lora_up`` multiplied by ``r / alpha`` instead. A uniform alpha
    matters because diffusers 0.42 builds unusable ``alpha_pattern`` keys from per-module kohya alphas
    (``...processor.to_q_lora.down.weight``), silently giving those modules the wrong scale.
    """
    counts = Counter(ranks)
    return float(max(sorted(counts), key=lambda r: counts[r]))


def to_kohya_state_dict(
    adapter: MoSLoraFile,
    architecture: str | None = None,
    unet_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Folded adapter with kohya-ss names; ``alpha / r · lora_up · lora_down`` equals ``s · B · M · A``."""
    arch = detect_architecture(adapter, architecture)
    if unet_config is None:
        unet_config = (adapter.base_model or {}).get("unet_config")
    return kohya_tensors(folded_modules(adapter), arch, unet_config, adapter.path, dtype=dtype)


def kohya_tensors(
    modules: Iterable[tuple[str, str, torch.Tensor, torch.Tensor]],
    arch: str | None,
    unet_config: Mapping[str, Any] | None,
    source: str | None,
    *,
    named: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """kohya-ss tensors of plain modules ``(component, path, down, up)`` with ``delta = up · down``: names from
    the model paths (or, with ``named``, the second entry is the kohya name already), one alpha for all."""
    modules = list(modules)
    alpha = common_rank_alpha(int(A.shape[0]) for _, _, A, _ in modules)
    out: dict[str, torch.Tensor] = {}
    for component, path, A, B in modules:
        name = path if named else kohya_name(arch, component, path, unet_config, source)
        if f"{name}.lora_down.weight" in out:
            raise MoSLoraFormatError(f"{source or '<adapter>'}: two modules map to kohya name '{name}'")
        r = A.shape[0]
        if r != alpha:
            B = (B.to(torch.float64) * (r / alpha)).to(B.dtype)
        out[f"{name}.lora_down.weight"] = _cast(A, dtype, source, f"{component}.{path}")
        out[f"{name}.lora_up.weight"] = _cast(B, dtype, source, f"{component}.{path}")
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def kohya_name(
    arch: str | None, component: str, path: str, unet_config: Mapping[str, Any] | None, source: str | None
) -> str:
    """The kohya-ss name of a module path (:func:`naming.kohya_module_name`), errors naming the file."""
    try:
        return kohya_module_name(arch, component, path, unet_config)
    except ValueError as exc:
        raise MoSLoraFormatError(f"{source or '<adapter>'}: module '{component}.{path}': {exc}") from None


def kohya_metadata(
    ranks: Iterable[int], arch: str, exported_from: str, provenance: Mapping[str, str]
) -> dict[str, str]:
    """The metadata of a kohya file we write: network settings, model spec, where it came from."""
    ranks = list(ranks)  # one entry per module: the alpha is the most common
    meta = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": f"{common_rank_alpha(ranks):g}",
        "ss_base_model_version": architectures.spec(arch).kohya_base_version,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architectures.spec(arch).modelspec_architecture,
        "moslora_exported_from": exported_from,
    }
    return {**meta, **provenance}


def provenance_metadata(adapter: MoSLoraFile) -> dict[str, str]:
    """``moslora_base_model`` / ``moslora_training``: what the native file says about its origin, kept in
    every export so that ``inspect`` and the web UI can still name the base model and training prompt."""
    meta = {}
    if adapter.base_model:
        meta["moslora_base_model"] = json.dumps(adapter.base_model, sort_keys=True)
    if adapter.training:
        meta["moslora_training"] = json.dumps(adapter.training, sort_keys=True, default=str)
    return meta


def output_file(dst: str | os.PathLike, default_name: str) -> Path:
    """``dst`` itself when it names a ``.safetensors`` file, else ``dst/default_name``."""
    p = Path(dst)
    if p.suffix == ".safetensors":
        return p
    if p.suffix and not p.is_dir():
        raise RequestError(f"{dst}: exports are written as .safetensors (or into a directory)")
    return p / default_name


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_export_target(target: Path, source: str | None, overwrite: bool) -> None:
    """Never write an export over its own source (same path, or the same file through a link), nor over an
    existing file unless ``overwrite``."""
    if source is not None and _same_file(target, Path(source)):
        raise RequestError(
            f"{target} is the source file itself; exporting there would destroy its mixer and metadata"
        )
    if target.exists() and not overwrite:
        raise RequestError(f"{target} exists; choose another output or allow replacing it (CLI: --force)")


# UNet modules outside the blocks kohya-ss/sd-scripts creates LoRA modules in (Transformer2DModel,
# ResnetBlock2D, Down/Upsample2D): its loader has nothing to apply them to.
_OUTSIDE_KOHYA_BLOCKS = ("time_embedding.", "add_embedding.")


def kohya_unsupported_modules(adapter: MoSLoraFile) -> list[str]:
    """UNet modules of ``adapter`` that kohya-ss/sd-scripts ignores on load (ComfyUI, A1111, diffusers apply them)."""
    return [
        f"{m.component}.{m.module_path}"
        for m in adapter.modules()
        if m.component == "unet" and m.module_path.startswith(_OUTSIDE_KOHYA_BLOCKS)
    ]


def export_adapter(
    src: str | os.PathLike | MoSLoraFile,
    dst: str | os.PathLike,
    format: str,
    *,
    architecture: str | None = None,
    unet_config: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a native MoSLoRA file as an exact plain LoRA file and return the written path.

    ``dst`` is a ``.safetensors`` file or a directory (then ``pytorch_lora_weights.safetensors`` for
    ``diffusers``, ``lora_kohya.safetensors`` for ``kohya``). ``architecture`` and ``unet_config``
    (SDXL block layout) override what the file's ``base_model`` says; ``dtype`` is fp32/fp16/bf16.
    An existing file is replaced only with ``overwrite``; the source file never is.
    """
    if format not in EXPORT_FORMATS:
        raise RequestError(f"unknown export format {format!r}; choose one of {EXPORT_FORMATS}")
    adapter = src if isinstance(src, MoSLoraFile) else load_moslora_file(src)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise RequestError(f"unknown dtype {dtype!r}; choose one of {tuple(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if format == "diffusers":
        tensors = to_diffusers_state_dict(adapter, dtype)
        meta = {
            "format": "pt",
            "moslora_exported_from": f"moslora v{FORMAT_VERSION} (mixer folded into lora_B)",
            **provenance_metadata(adapter),
        }
        target = output_file(dst, DIFFUSERS_WEIGHTS_NAME)
        check_export_target(target, adapter.path, overwrite)
        return write_safetensors_atomic(target, tensors, meta)
    arch = detect_architecture(adapter, architecture)
    tensors = to_kohya_state_dict(adapter, arch, unet_config, dtype)
    target = output_file(dst, KOHYA_WEIGHTS_NAME)
    check_export_target(target, adapter.path, overwrite)
    meta = kohya_metadata(
        [int(m.A.shape[0]) for m in adapter.modules()],
        arch,
        f"moslora v{FORMAT_VERSION} (mixer and scale folded into lora_up)",
        provenance_metadata(adapter),
    )
    return write_safetensors_atomic(target, tensors, meta)
