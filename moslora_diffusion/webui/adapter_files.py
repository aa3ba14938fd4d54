"""The adapters folder: safe name lookup, listing, and the UI's rendering of an adapter's description.

Adapters are chosen *by name* from one folder. Names with a path separator, ``..``, a leading dot or
a link that leads out of the folder are refused. What a file is comes from the one describer
(:func:`moslora_diffusion.formats.inspect.describe_adapter_file`, header only); whether it fits the
loaded model from the one fit check (:func:`moslora_diffusion.loading.check_file_fits`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import AdapterNameError, RequestError

__all__ = [
    "ADAPTER_SUFFIX",
    "PREVIEW_SUFFIXES",
    "safe_adapter_path",
    "list_adapters",
    "preview_path",
    "format_info",
]

ADAPTER_SUFFIX = ".safetensors"
# an adapter's sample image sits next to it: ``name.preview.png`` (AUTOMATIC1111's convention) or ``name.png``
PREVIEW_SUFFIXES = (".preview.png", ".png")
_KIND_LABELS = {
    "moslora": "MoSLoRA (native v{version})",
    "diffusers": "LoRA (diffusers/PEFT)",
    "kohya": "LoRA (kohya)",
}


def check_adapter_name(name: str) -> str:
    """``name`` when it is a plain ``.safetensors`` file name (no path parts, no leading dot); else refuse."""
    if not isinstance(name, str) or not name.strip():
        raise AdapterNameError("no adapter name given")
    if "/" in name or "\\" in name or ".." in name or name.startswith(".") or "\x00" in name:
        raise AdapterNameError(
            f"adapter name {name!r} refused: give a file name from the adapters folder, without path parts"
        )
    if not name.endswith(ADAPTER_SUFFIX):
        raise AdapterNameError(f"adapter name {name!r} refused: only {ADAPTER_SUFFIX} files are accepted")
    return name


def safe_adapter_path(adapters_dir: str | os.PathLike, name: str) -> Path:
    """Resolve ``name`` to a file directly inside ``adapters_dir``; refuse anything else."""
    check_adapter_name(name)
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


def preview_path(adapters_dir: str | os.PathLike, name: str) -> Path | None:
    """The sample image of adapter ``name`` (a checked name) in ``adapters_dir``, if one is there."""
    adapter = safe_adapter_path(adapters_dir, name)
    stem = adapter.name.removesuffix(ADAPTER_SUFFIX)
    for suffix in PREVIEW_SUFFIXES:
        candidate = adapter.parent / f"{stem}{suffix}"
        if candidate.is_file() and candidate.resolve().parent == adapter.parent:
            return candidate
    return None


def add_adapter_file(
    adapters_dir: str | os.PathLike, source: str | os.PathLike, name: str, max_bytes: int
) -> dict[str, Any]:
    """Check a file (an upload) and copy it into ``adapters_dir`` as ``name``; returns its description.

    Refused before anything is written: a name that is not a plain ``.safetensors`` file name or is taken, a
    file over ``max_bytes``, and a file that is not an adapter the toolkit reads (native files are validated
    in full, as the loader does)."""
    from ..durable import copy_atomic
    from ..formats.inspect import describe_adapter_file

    check_adapter_name(name)
    root = Path(adapters_dir)
    if (root / name).exists():
        raise AdapterNameError(
            f"an adapter named {name} is already in the adapters folder; rename the file first"
        )
    size = Path(source).stat().st_size
    if size > max_bytes:
        raise RequestError(
            f"{name}: {size / 2**20:.0f} MiB is more than the upload limit of {max_bytes // 2**20} MiB"
        )
    info = describe_adapter_file(source)  # MoSLoraFormatError for anything that is not an adapter file
    root.mkdir(parents=True, exist_ok=True)
    copy_atomic(source, root / name)
    return info


def format_info(info: dict[str, Any]) -> str:
    """One short Markdown block for the UI from :func:`~moslora_diffusion.formats.inspect.describe_adapter_file`."""
    rows = [
        ("format", _KIND_LABELS[info["kind"]].format(version=info.get("version") or "?")),
        ("architecture", info.get("architecture") or "unknown"),
        ("rank", info.get("rank")),
        ("alpha", info.get("alpha")),
        ("training prompt", info.get("prompt") or "—"),
        ("steps", info.get("steps") or "—"),
        ("adapted layers", info.get("modules")),
    ]
    return "  \n".join(f"**{k}:** {v}" for k, v in rows)
