"""The private APIs of PEFT and accelerate that the toolkit relies on, each behind one function here.

A library upgrade that removes or changes one of them fails in this module, with a `LibraryVersionError`
naming the library, its version and the missing piece — never somewhere deep in training or loading.
`tests/test_compat.py` checks every one against the installed versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import LibraryVersionError

__all__ = [
    "adapter_layers",
    "register_custom_lora_layers",
    "reset_accelerate_state",
    "set_adapter_layer_disabled",
]


def _private(owner: Any, name: str, library: str) -> Any:
    found = getattr(owner, name, None)
    if not callable(found):
        import importlib.metadata as md

        raise LibraryVersionError(
            f"{library} {md.version(library)} has no {getattr(owner, '__name__', type(owner).__name__)}.{name}, "
            f"which moslora-diffusion relies on; install the {library} version pyproject.toml pins"
        )
    return found


def register_custom_lora_layers(config: Any, mapping: Mapping[type, type]) -> None:
    """Make a PEFT ``LoraConfig`` build ``mapping[type(layer)]`` for the layers it targets
    (PEFT's experimental ``LoraConfig._register_custom_module``)."""
    _private(config, "_register_custom_module", "peft")(dict(mapping))


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state, so that the next ``Accelerator`` in this process starts fresh
    (``AcceleratorState._reset_state`` and ``GradientState._reset_state``): the web UI trains many times."""
    from accelerate.state import AcceleratorState, GradientState

    for state in (AcceleratorState, GradientState):
        _private(state, "_reset_state", "accelerate")()


def adapter_layers(model: Any) -> list[Any]:
    """Every PEFT adapter layer (``BaseTunerLayer``) inside ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def set_adapter_layer_disabled(layer: Any, disabled: bool) -> None:
    """Switch one adapter layer off or on *without* touching ``requires_grad`` (PEFT's public
    ``enable_adapters`` freezes the adapter when disabling; a measurement in the middle of training must not).
    Sets PEFT's private ``_disable_adapters`` flag, which its ``disable_adapters`` property reads."""
    if not hasattr(layer, "_disable_adapters") or not isinstance(
        getattr(type(layer), "disable_adapters", None), property
    ):
        import importlib.metadata as md

        raise LibraryVersionError(
            f"peft {md.version('peft')} has no BaseTunerLayer._disable_adapters flag, which moslora-diffusion "
            "relies on; install the peft version pyproject.toml pins"
        )
    layer._disable_adapters = bool(disabled)
