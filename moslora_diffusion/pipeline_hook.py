"""Give diffusers' SD / SDXL pipelines ``load_moslora_weights`` without importing diffusers up front.

``import moslora_diffusion`` calls :func:`install_when_imported`: if diffusers' LoRA loader module is
already loaded, the method is attached at once; otherwise a one-shot import hook attaches it right after
that module is first imported (by ``from diffusers import StableDiffusionPipeline`` or any other route).
So the package import stays cheap, and ``pipe.load_moslora_weights(...)`` works whichever is imported first.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

LOADER_MODULE = "diffusers.loaders.lora_pipeline"


def _install(_module: ModuleType | None = None) -> None:
    from .loading import install_pipeline_methods

    install_pipeline_methods()


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds nothing itself; wraps the real loader of LOADER_MODULE to install the method after it runs."""

    def __init__(self) -> None:
        self._real: Any = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname != LOADER_MODULE or self._real is not None:
            return None
        sys.meta_path.remove(self)  # one shot: let the normal finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._real = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._real.exec_module(module)
        _install(module)


def install_when_imported() -> None:
    """Attach ``load_moslora_weights`` now if diffusers' loader is loaded, else right after it loads."""
    if LOADER_MODULE in sys.modules:
        _install()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
