"""What an adapter file is: the one sniffer and describer for native MoSLoRA, diffusers/PEFT and kohya files.

:func:`read_adapter_header` reads the safetensors header only (never tensors, never pickle) and tells the
file's kind, its adapted modules with their shapes and its metadata; the fit check
(:mod:`moslora_diffusion.loading`), ``pipe.load_moslora_weights``, the CLI's ``inspect`` and the web UI's
adapter picker all start from it. :func:`describe_adapter_file` turns it into a JSON-able summary.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .. import architectures
from ..constants import COMPONENTS
from ..errors import MoSLoraFormatError
from ..jsonio import parse_json
from .native import (
    is_moslora_metadata,
    load_moslora_file,
    parse_native_metadata,
    resolve_weights_path,
    split_key,
)
from .safetensors_io import read_header, tensor_digest

__all__ = [
    "ModuleShape",
    "AdapterHeader",
    "sniff",
    "read_adapter_header",
    "header_of_state_dict",
    "describe_adapter_file",
    "format_description",
]

# kohya-ss module-name prefixes and the component each one adapts.
KOHYA_COMPONENTS = {
    prefix: component
    for arch in architectures.ARCHITECTURE_TABLE.values()
    for component, prefix in arch.kohya_prefixes.items()
    if component != "unet"
} | {"lora_unet_": "unet"}
_KIND_LABELS = {"moslora": "moslora", "diffusers": "diffusers/PEFT LoRA", "kohya": "kohya LoRA"}
_HEADER_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# (down suffix, up suffix) of the plain-LoRA key spellings diffusers reads with a component prefix.
DIFFUSERS_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"))


class ModuleShape(NamedTuple):
    """One adapted module as a header describes it.

    ``module_path`` is the model's spelling for native and diffusers files and the kohya name
    (``lora_unet_down_blocks_0_…``) for kohya files; ``a_shape`` / ``b_shape`` are the down / up shapes.
    """

    component: str
    module_path: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]


@dataclass
class AdapterHeader:
    """An adapter file's header: its kind, modules (with shapes), metadata and tensor layout."""

    path: Path | None  # None for a state dict in memory
    kind: str  # "moslora", "diffusers" or "kohya"
    metadata: dict[str, str]
    tensors: dict[str, dict]  # key -> {"dtype", "shape", ...} as in the safetensors header
    modules: list[ModuleShape]

    def json_metadata(self, key: str) -> Any:
        """A JSON metadata entry, or None when absent or unreadable (descriptions never fail on it)."""
        if key not in self.metadata:
            return None
        try:
            return parse_json(self.metadata[key], key, MoSLoraFormatError)
        except MoSLoraFormatError:
            return None

    @property
    def base_model(self) -> dict[str, Any] | None:
        """``base_model`` of native files; ``moslora_base_model`` of our own exports."""
        value = self.json_metadata("base_model" if self.kind == "moslora" else "moslora_base_model")
        return value if isinstance(value, dict) else None

    @property
    def training(self) -> dict[str, Any] | None:
        """``training`` of native files; ``moslora_training`` of our own exports."""
        value = self.json_metadata("training" if self.kind == "moslora" else "moslora_training")
        return value if isinstance(value, dict) else None

    @property
    def architecture(self) -> str | None:
        """sd1 / sd2 / sdxl as the file states it (ours, kohya's or modelspec's spelling), else a guess."""
        stated = (
            (self.base_model or {}).get("architecture")
            or self.metadata.get("ss_base_model_version")
            or self.metadata.get("modelspec.architecture")
        )
        if stated:
            return architectures.normalize(stated)
        # kohya names are not module paths, so only the second text encoder tells there
        return architectures.from_adapter_modules(
            (m.component, m.module_path, m.a_shape[1]) for m in self.modules
        )

    @property
    def ranks(self) -> list[int]:
        return sorted({m.a_shape[0] for m in self.modules})


def _native_modules(tensors: Mapping[str, dict]) -> list[ModuleShape]:
    parts: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for key, info in tensors.items():
        split = split_key(key)
        if split is not None:
            parts.setdefault(split[:2], {})[split[2]] = tuple(info["shape"])
    return [
        ModuleShape(component, path, found["lora_A"], found["lora_B"])
        for (component, path), found in parts.items()
        if "lora_A" in found and "lora_B" in found
    ]


def _kohya_modules(tensors: Mapping[str, dict]) -> list[ModuleShape]:
    modules = []
    for key, info in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = tensors.get(f"{name}.lora_up.weight")
        prefix = max((p for p in KOHYA_COMPONENTS if name.startswith(p)), key=len, default=None)
        if up is not None and prefix is not None:
            modules.append(
                ModuleShape(KOHYA_COMPONENTS[prefix], name, tuple(info["shape"]), tuple(up["shape"]))
            )
    return modules


def _diffusers_modules(tensors: Mapping[str, dict]) -> list[ModuleShape]:
    modules = []
    for key, info in tensors.items():
        for down, up in DIFFUSERS_PAIRS:
            if not key.endswith(down):
                continue
            stem = key[: -len(down)]
            component, _, path = stem.partition(".")
            partner = tensors.get(stem + up)
            if component in COMPONENTS and path and partner is not None:
                modules.append(ModuleShape(component, path, tuple(info["shape"]), tuple(partner["shape"])))
    return modules


def sniff(
    metadata: Mapping[str, str], tensors: Mapping[str, dict], source: str
) -> tuple[str, list[ModuleShape]]:
    """(kind, modules) of an adapter from its metadata and tensor layout (``{key: {"shape": [...]}}``)."""
    if is_moslora_metadata(metadata):
        return "moslora", _native_modules(tensors)
    if any("lora_mixer" in k for k in tensors):
        raise MoSLoraFormatError(
            f"{source}: has lora_mixer tensors but no MoSLoRA metadata (format={metadata.get('format')!r}); "
            "without its config the mixer cannot be folded"
        )
    if tensors and all(k.startswith(tuple(KOHYA_COMPONENTS)) for k in tensors):
        return "kohya", _kohya_modules(tensors)
    modules = _diffusers_modules(tensors)
    if not modules and not any(k.endswith((".lora_A.weight", ".lora.down.weight")) for k in tensors):
        raise MoSLoraFormatError(f"{source}: holds no LoRA weights (no lora_A / lora_down keys)")
    return "diffusers", modules


def read_adapter_header(path: str | os.PathLike) -> AdapterHeader:
    """Sniff an adapter file from its header alone; raise :class:`MoSLoraFormatError` for non-adapters.

    A directory means ``moslora_weights.safetensors`` inside it. Files with ``lora_mixer`` tensors but no
    MoSLoRA metadata are refused: without the config their mixer cannot be folded.
    """
    p = resolve_weights_path(path)
    metadata, tensors = read_header(p)
    odd = sorted({info["dtype"] for info in tensors.values()} - set(_HEADER_DTYPES))
    if odd:
        raise MoSLoraFormatError(
            f"{p}: holds {', '.join(odd)} tensors; adapter weights must be float16, bfloat16, float32 or float64"
        )
    kind, modules = sniff(metadata, tensors, str(p))
    if kind == "moslora":
        parse_native_metadata(metadata, str(p))  # what the loader will read: refused here already
    empty = [m for m in modules if not m.a_shape or m.a_shape[0] == 0]
    if empty:
        raise MoSLoraFormatError(
            f"{p}: module '{empty[0].component}.{empty[0].module_path}' has rank 0 (no weights)"
        )
    return AdapterHeader(p, kind, metadata, tensors, modules)


def header_of_state_dict(state_dict: Mapping[str, Any], source: str = "<state dict>") -> AdapterHeader:
    """:func:`read_adapter_header` for a plain-LoRA state dict in memory (shapes from the tensors)."""
    tensors = {k: {"shape": list(getattr(v, "shape", ())), "dtype": "?"} for k, v in state_dict.items()}
    kind, modules = sniff({}, tensors, source)
    return AdapterHeader(None, kind, {}, tensors, modules)


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _prompt_and_steps(header: AdapterHeader) -> tuple[str | None, Any]:
    training = header.training or {}
    prompt = training.get("instance_prompt") or training.get("prompt")
    steps = training.get("steps_done") or training.get("max_train_steps") or training.get("steps")
    if header.kind == "kohya":
        steps = steps or header.metadata.get("ss_max_train_steps") or header.metadata.get("ss_steps")
    return prompt, steps


def _one_or_list(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else (values or None)


def _native_components(header: AdapterHeader, validated: Any) -> dict[str, dict[str, Any]]:
    config = header.json_metadata("moslora_config") or {}
    components: dict[str, dict[str, Any]] = {}
    for component in [c for c in COMPONENTS if c in config]:
        mods = [m for m in header.modules if m.component == component]
        mixers = [header.tensors.get(f"{component}.{m.module_path}.lora_mixer.weight") for m in mods]
        entry = config[component] if isinstance(config[component], dict) else {}
        if validated is not None:
            entry = validated.config[component].to_dict()
        components[component] = {
            "modules": len(mods),
            "parameters": sum(_numel(list(m.a_shape)) + _numel(list(m.b_shape)) for m in mods)
            + sum(_numel(x["shape"]) for x in mixers if x),
            "mixer_parameters": sum(_numel(x["shape"]) for x in mixers if x),
            "conv_modules": sum(len(m.a_shape) == 4 for m in mods),
            **entry,
        }
    return components


def _plain_components(header: AdapterHeader) -> dict[str, dict[str, Any]]:
    components: dict[str, dict[str, Any]] = {}
    for m in header.modules:
        entry = components.setdefault(m.component, {"modules": 0, "ranks": Counter()})
        entry["modules"] += 1
        entry["ranks"][m.a_shape[0]] += 1
    for entry in components.values():
        entry["ranks"] = {str(r): n for r, n in sorted(entry["ranks"].items())}
    return {c: components[c] for c in COMPONENTS if c in components}


def _alpha(header: AdapterHeader, components: dict[str, dict[str, Any]]) -> Any:
    if header.kind == "moslora":
        return _one_or_list(sorted({c["lora_alpha"] for c in components.values() if "lora_alpha" in c}))
    if header.kind == "kohya":
        try:
            return float(header.metadata["ss_network_alpha"])
        except (KeyError, ValueError):
            return None
    return _one_or_list(header.ranks)  # PEFT / diffusers files without alphas mean alpha = r


def describe_adapter_file(
    path: str | os.PathLike | AdapterHeader, header_only: bool = False
) -> dict[str, Any]:
    """A JSON-able summary of any adapter file the toolkit reads (or of a header already read).

    Keys: file, file_size, kind (moslora / diffusers / kohya), format (readable kind), version,
    architecture (sd1 / sd2 / sdxl or None), base_model, rank, alpha, prompt, steps, components, modules,
    parameters, dtypes, weights_digest (see :func:`tensor_digest`; None with ``header_only``), training.
    Native files are fully validated unless ``header_only`` (then only
    the header is read, as the web UI's picker does for large files).
    """
    header = path if isinstance(path, AdapterHeader) else read_adapter_header(path)
    validated = None
    if header.kind == "moslora" and not header_only:
        validated = load_moslora_file(header.path)
    components = (
        _native_components(header, validated) if header.kind == "moslora" else _plain_components(header)
    )
    prompt, steps = _prompt_and_steps(header)
    training = header.training
    if header.kind != "moslora":
        extra = {k: v for k, v in sorted(header.metadata.items()) if k.startswith(("ss_", "modelspec."))}
        training = {**extra, **(training or {})} or None
    return {
        "file": str(header.path),
        "file_size": header.path.stat().st_size,
        "kind": header.kind,
        "format": _KIND_LABELS[header.kind],
        "version": header.metadata.get("moslora_version") if header.kind == "moslora" else None,
        "architecture": header.architecture,
        "base_model": header.base_model,
        "rank": _one_or_list(header.ranks),
        "alpha": _alpha(header, components),
        "prompt": prompt,
        "steps": steps,
        "components": components,
        "modules": len(header.modules),
        "parameters": sum(_numel(info["shape"]) for info in header.tensors.values()),
        "dtypes": dict(
            Counter(_HEADER_DTYPES.get(info["dtype"], info["dtype"]) for info in header.tensors.values())
        ),
        "weights_digest": None if header_only else tensor_digest(header.path),
        "training": training,
    }


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, newlines, NUL) shown as escapes, not obeyed."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text
    )


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
    if info.get("weights_digest"):
        lines.append(f"weights:      {info['weights_digest']}")
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
    return "\n".join(_printable(line) for line in lines)
