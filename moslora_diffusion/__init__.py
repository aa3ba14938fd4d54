"""moslora-diffusion: MoSLoRA adapters for Stable Diffusion (SD 1.x/2.x, SDXL).

Importing the package is cheap: the public names below load their modules (torch, PEFT, diffusers) on
first use, and diffusers' Stable Diffusion pipelines get ``load_moslora_weights`` as soon as diffusers'
LoRA loader is imported (see :mod:`moslora_diffusion.pipeline_hook`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .pipeline_hook import install_when_imported
from .process_env import prepare_environment

__version__ = "0.1.0"

_LAZY = {
    "MoSLoraConfig": "config",
    "PRESET_NAMES": "targets",
    "resolve_targets": "targets",
    "add_moslora_adapter": "adapters",
    "load_moslora_state_dict": "adapters",
    "moslora_state_dict": "adapters",
    "install_pipeline_methods": "loading",
}

__all__ = sorted(_LAZY)

prepare_environment()  # before torch starts MKL: reproducible math
install_when_imported()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
