"""The adapters folder: safe name lookup, listing, header-only metadata, and a fit check against a pipeline.

Adapters are chosen *by name* from one folder. Names with a path separator, ``..``, a leading dot or
a link that leads out of the folder are refused. Reading metadata opens only the safetensors header
(never pickle), so listing a folder of large files stays cheap.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTER_SUFFIX",
    "AdapterNameError",
    "AdapterMismatch",
    "safe_adapter_path",
    "list_adapters",
    "adapter_info",
    "format_info",
    "normalize_architecture",
    "pipeline_architecture",
    "check_fits",
]

ADAPTER_SUFFIX = ".safetensors"
_TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


class AdapterNameError(ValueError):
    """An adapter name that is not a plain file name inside the adapters folder."""


class AdapterMismatch(ValueError):
    """An adapter file that does not fit the loaded base model (other architecture, missing layers)."""


def safe_adapter_path(adapters_dir: str | os.PathLike, name: str) -> Path:
    """Resolve ``name`` to a file directly inside ``adapters_dir``; refuse anything else."""
    if not isinstance(name, str) or not name.strip():
        raise AdapterNameError("no adapter name given")
    if "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\x00" in name:
        raise AdapterNameError(
            f"adapter name {name!r} refused: give a file name from the adapters folder, without path parts"
        )
    if not name.endswith(ADAPTER_SUFFIX):
        raise AdapterNameError(f"adapter name {name!r} refused: only {ADAPTER_SUFFIX} files are accepted")
    root = Path(adapters_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise AdapterNameError(f"adapter name {name!r} refused: it leads outside the adapters folder")
    if not path.is_file():
        raise AdapterNameError(f"no adapter named {name!r} in the adapters folder (press refresh?)")
    return path


def list_adapters(adapters_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the ``.safetensors`` files directly inside ``adapters_dir`` (none if it is missing)."""
    root = Path(adapters_dir)
    if not root.is_dir():
        return []
    names = []
    for entry in root.iterdir():
        if entry.name.endswith(ADAPTER_SUFFIX) and not entry.name.startswith("."):
            try:
                safe_adapter_path(root, entry.name)
            except AdapterNameError:
                continue
            names.append(entry.name)
    return sorted(names, key=str.lower)


def normalize_architecture(value: Any) -> str | None:
    """Map architecture spellings (ours, kohya's ``ss_base_model_version``, modelspec) to sd1/sd2/sdxl."""
    if not value:
        return None
    text = str(value).lower()
    if "xl" in text:
        return "sdxl"
    if text in ("sd1", "sd2"):
        return text
    if re.search(r"(sd_?v?2|v2|stable-diffusion-v2)", text):
        return "sd2"
    if re.search(r"(sd_?v?1|v1|stable-diffusion-v1)", text):
        return "sd1"
    return None


def _json(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except (TypeError, ValueError):
        return None


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Metadata and tensor shapes from the header alone (formats.read_header refuses pickles)."""
    from ..errors import MoSLoraFormatError
    from ..formats.safetensors_io import read_header

    try:
        metadata, infos = read_header(path)
    except MoSLoraFormatError as exc:
        raise AdapterMismatch(f"{path.name}: not a readable safetensors file ({exc})") from exc
    return metadata, {k: tuple(v["shape"]) for k, v in infos.items()}


def adapter_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise an adapter file from its header: format, architecture, rank, alpha, training prompt, steps."""
    path = Path(path)
    metadata, shapes = _read_header(path)
    info: dict[str, Any] = {
        "name": path.name,
        "format": None,
        "architecture": None,
        "rank": None,
        "alpha": None,
        "prompt": None,
        "steps": None,
        "components": [],
        "modules": 0,
        "size_bytes": path.stat().st_size,
    }
    if metadata.get("format") == "moslora":
        info["format"] = "MoSLoRA (native v{})".format(metadata.get("moslora_version", "?"))
        config = _json(metadata, "moslora_config") or {}
        ranks = sorted({c.get("r") for c in config.values() if isinstance(c, dict) and c.get("r")})
        alphas = sorted({c.get("lora_alpha") for c in config.values() if isinstance(c, dict)} - {None})
        info["rank"] = ranks[0] if len(ranks) == 1 else (ranks or None)
        info["alpha"] = alphas[0] if len(alphas) == 1 else (alphas or None)
        base = _json(metadata, "base_model") or {}
        info["architecture"] = normalize_architecture(
            base.get("architecture") if isinstance(base, dict) else None
        )
        training = _json(metadata, "training") or {}
        if isinstance(training, dict):
            info["prompt"] = training.get("instance_prompt") or training.get("prompt")
            info["steps"] = (
                training.get("steps_done") or training.get("max_train_steps") or training.get("steps")
            )
        down_marker = ".lora_A.weight"
    elif any(k.startswith(("lora_unet_", "lora_te")) for k in shapes):
        info["format"] = "LoRA (kohya)"
        info["architecture"] = normalize_architecture(
            metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture")
        )
        info["rank"] = (
            int(metadata["ss_network_dim"]) if metadata.get("ss_network_dim", "").isdigit() else None
        )
        try:
            info["alpha"] = float(metadata["ss_network_alpha"]) if "ss_network_alpha" in metadata else None
        except ValueError:
            pass
        info["steps"] = metadata.get("ss_max_train_steps") or metadata.get("ss_steps")
        down_marker = ".lora_down.weight"
    else:
        info["format"] = "LoRA (diffusers/PEFT)"
        info["architecture"] = normalize_architecture(metadata.get("modelspec.architecture"))
        down_marker = ".lora_A.weight"
        if not any(k.endswith((".lora_A.weight", ".lora.down.weight")) for k in shapes):
            raise AdapterMismatch(f"{path.name}: holds no LoRA weights (no lora_A / lora_down keys)")
    downs = {k: s for k, s in shapes.items() if k.endswith(down_marker)}
    info["modules"] = len(downs)
    if info["rank"] is None and downs:
        ranks = sorted({s[0] for s in downs.values()})
        info["rank"] = ranks[0] if len(ranks) == 1 else ranks
    if info["alpha"] is None and info["format"].startswith("LoRA (diffusers"):
        info["alpha"] = info["rank"] if isinstance(info["rank"], int) else None
    if "lora_mixer" in "".join(shapes) and not info["format"].startswith("MoSLoRA"):
        raise AdapterMismatch(
            f"{path.name}: has lora_mixer tensors but no MoSLoRA metadata; the mixer cannot be folded"
        )
    comps = sorted({k.split(".", 1)[0] for k in downs if "." in k})
    info["components"] = comps
    info["_shapes"] = downs if not info["format"].startswith("LoRA (kohya") else {}
    return info


def format_info(info: dict[str, Any]) -> str:
    """One short Markdown block for the UI."""
    rows = [
        ("format", info.get("format")),
        ("architecture", info.get("architecture") or "unknown"),
        ("rank", info.get("rank")),
        ("alpha", info.get("alpha")),
        ("training prompt", info.get("prompt") or "—"),
        ("steps", info.get("steps") or "—"),
        ("adapted layers", info.get("modules")),
    ]
    return "  \n".join(f"**{k}:** {v}" for k, v in rows)


def pipeline_architecture(pipe: Any) -> str:
    """sd1, sd2 or sdxl for a loaded pipeline (SDXL by class; SD1 vs SD2 by text width or prediction type)."""
    if hasattr(pipe, "text_encoder_2"):
        return "sdxl"
    width = getattr(getattr(pipe, "unet", None), "config", {}).get("cross_attention_dim")
    if width == 1024:
        return "sd2"
    if width == 768:
        return "sd1"
    prediction = getattr(getattr(pipe, "scheduler", None), "config", {}).get("prediction_type")
    return "sd2" if prediction == "v_prediction" else "sd1"


def _linear_in_out(module: Any) -> tuple[int, int] | None:
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if hasattr(base, "in_features"):
        return base.in_features, base.out_features
    if hasattr(base, "in_channels"):
        return base.in_channels, base.out_channels
    return None


def check_fits(pipe: Any, info: dict[str, Any], base_architecture: str) -> None:
    """Refuse (AdapterMismatch) an adapter for another architecture or whose layers the pipeline lacks.

    The architecture recorded in the file is compared when present; for diffusers-style and native keys
    every ``lora_A`` is checked against the pipeline's module of that name (input width too).
    """
    name = info["name"]
    arch = info.get("architecture")
    if arch and arch != base_architecture:
        raise AdapterMismatch(
            f"{name} was made for {arch}, but the loaded base model is {base_architecture}; "
            "pick an adapter trained on this base model"
        )
    tables: dict[str, dict[str, Any]] = {}
    for key, shape in info.get("_shapes", {}).items():
        component, _, rest = key.partition(".")
        module_path = rest.rsplit(".lora_A.weight", 1)[0].rsplit(".lora.down.weight", 1)[0]
        model = getattr(pipe, component, None)
        if model is None or not hasattr(model, "named_modules"):
            raise AdapterMismatch(
                f"{name} adapts '{component}', which the loaded base model ({base_architecture}) does not have"
            )
        if component not in tables:
            tables[component] = dict(model.named_modules())
        table = tables[component]
        candidates = [module_path]
        if component in _TEXT_COMPONENTS:
            candidates += [module_path.removeprefix("text_model."), "text_model." + module_path]
        found = next((table[c] for c in candidates if c in table), None)
        if found is None:
            raise AdapterMismatch(
                f"{name} does not fit the loaded base model ({base_architecture}): it has no layer "
                f"'{component}.{module_path}'; the adapter was probably trained on another base model"
            )
        dims = _linear_in_out(found)
        if dims is not None and len(shape) >= 2 and shape[1] != dims[0]:
            raise AdapterMismatch(
                f"{name} does not fit the loaded base model ({base_architecture}): layer "
                f"'{component}.{module_path}' takes {dims[0]} inputs, the adapter expects {shape[1]}"
            )
