"""Describe an adapter file (native MoSLoRA, diffusers/PEFT LoRA or kohya LoRA) from its header."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .native import is_moslora_metadata, load_moslora_file, resolve_weights_path
from .safetensors_io import read_header

__all__ = ["describe_adapter_file", "format_description"]

_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_HEADER_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _describe_moslora(path: Path, size: int) -> dict[str, Any]:
    adapter = load_moslora_file(path)
    components = {}
    for component in adapter.components:
        mods = [m for m in adapter.modules() if m.component == component]
        cfg = adapter.config[component]
        components[component] = {
            "modules": len(mods),
            "parameters": sum(m.A.numel() + m.M.numel() + m.B.numel() for m in mods),
            "mixer_parameters": sum(m.M.numel() for m in mods),
            "conv_modules": sum(m.A.ndim == 4 for m in mods),
            **cfg.to_dict(),
        }
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in adapter.tensors.values())
    return {
        "file": str(path),
        "file_size": size,
        "format": "moslora",
        "version": "1",
        "architecture": adapter.architecture,
        "base_model": adapter.base_model,
        "components": components,
        "modules": adapter.num_modules,
        "parameters": adapter.num_parameters,
        "dtypes": dict(dtypes),
        "training": adapter.training,
    }


def _describe_plain(
    path: Path, size: int, metadata: dict[str, str], infos: dict[str, dict]
) -> dict[str, Any]:
    keys = list(infos)
    if keys and all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        kind = "kohya LoRA"
        downs = {k[: -len(".lora_down.weight")]: k for k in keys if k.endswith(".lora_down.weight")}
        component_of = {
            "lora_unet_": "unet",
            "lora_te_": "text_encoder",
            "lora_te1_": "text_encoder",
            "lora_te2_": "text_encoder_2",
        }
    else:
        kind = "diffusers/PEFT LoRA"
        downs = {}
        for k in keys:
            for marker in (".lora_A.weight", ".lora.down.weight", ".lora_down.weight"):
                if k.endswith(marker):
                    downs[k[: -len(marker)]] = k
        component_of = {}
    components: dict[str, dict[str, Any]] = {}
    for name, key in downs.items():
        comp = next((c for p, c in component_of.items() if name.startswith(p)), None) or name.split(".")[0]
        entry = components.setdefault(comp, {"modules": 0, "ranks": Counter()})
        entry["modules"] += 1
        entry["ranks"][infos[key]["shape"][0]] += 1
    for entry in components.values():
        entry["ranks"] = {str(r): n for r, n in sorted(entry["ranks"].items())}
    order = ["unet", "text_encoder", "text_encoder_2"]
    components = dict(sorted(components.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    has_mixer = any("lora_mixer" in k for k in keys)
    training = {k: v for k, v in sorted(metadata.items()) if k.startswith(("ss_", "modelspec.", "moslora_"))}
    return {
        "file": str(path),
        "file_size": size,
        "format": kind + (" (has lora_mixer keys but no MoSLoRA metadata)" if has_mixer else ""),
        "version": None,
        "architecture": metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture"),
        "components": components,
        "modules": len(downs),
        "parameters": sum(_numel(info["shape"]) for info in infos.values()),
        "dtypes": dict(Counter(_HEADER_DTYPES.get(info["dtype"], info["dtype"]) for info in infos.values())),
        "training": training or None,
    }


def describe_adapter_file(path: str | os.PathLike) -> dict[str, Any]:
    """Return a JSON-able summary of an adapter file; native files are fully validated on the way."""
    p = resolve_weights_path(path)
    metadata, infos = read_header(p)
    size = p.stat().st_size
    if is_moslora_metadata(metadata):
        return _describe_moslora(p, size)
    return _describe_plain(p, size, metadata, infos)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_description(info: dict[str, Any]) -> str:
    """Render :func:`describe_adapter_file`'s summary as readable text."""
    fmt = info["format"] + (f" v{info['version']}" if info.get("version") else "")
    lines = [
        f"file:         {info['file']}",
        f"file size:    {_human_size(info['file_size'])} ({info['file_size']} bytes)",
        f"format:       {fmt}",
        f"architecture: {info.get('architecture') or 'unknown'}",
    ]
    base = info.get("base_model") or {}
    extra = {k: v for k, v in base.items() if k not in ("architecture", "unet_config")}
    if extra:
        lines.append("base model:   " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    lines.append(f"modules:      {info['modules']}")
    lines.append(f"parameters:   {info['parameters']:,}")
    lines.append("dtypes:       " + ", ".join(f"{k} ({n})" for k, n in info["dtypes"].items()))
    lines.append("components:")
    for comp, entry in info["components"].items():
        if "r" in entry:
            desc = (
                f"r={entry['r']} alpha={entry['lora_alpha']:g} rslora={entry['use_rslora']} "
                f"mixer_init={entry['mixer_init']}, {entry['modules']} modules "
                f"({entry['conv_modules']} conv), {entry['parameters']:,} parameters "
                f"({entry['mixer_parameters']:,} in mixers)"
            )
            lines.append(f"  {comp}: {desc}")
            targets = entry["target_modules"]
            lines.append(f"    targets: {targets if isinstance(targets, str) else ', '.join(targets)}")
            for key in ("rank_pattern", "alpha_pattern"):
                if entry.get(key):
                    lines.append(f"    {key}: {json.dumps(entry[key])}")
        else:
            ranks = ", ".join(f"r={r}: {n}" for r, n in entry["ranks"].items())
            lines.append(f"  {comp}: {entry['modules']} modules ({ranks})")
    training = info.get("training")
    if training:
        lines.append("training:")
        for key, value in training.items():
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"  {key}: {text if len(text) <= 200 else text[:197] + '...'}")
    return "\n".join(lines)
