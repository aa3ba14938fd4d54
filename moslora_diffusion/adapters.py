"""Adding MoSLoRA adapters to diffusers / transformers models and reading them back out."""

from __future__ import annotations

import re

import torch
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from .config import MoSLoraConfig
from .errors import AdapterMismatchError
from .layer import MoSLoraConv2d, MoSLoraLinear
from .quiet import adding_an_adapter


def _target_matches(name: str, targets: str | list[str] | set[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def matched_modules(model: nn.Module, targets: str | list[str] | set[str]) -> dict[str, nn.Module]:
    """The Linear / Conv2d modules of ``model`` that PEFT would adapt for ``targets`` (name -> module)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and _target_matches(name, targets)
    }


def add_moslora_adapter(model: nn.Module, config: MoSLoraConfig, adapter_name: str = "default") -> nn.Module:
    """Inject a MoSLoRA adapter into `model` in place (a UNet or a CLIP text encoder) and return it.

    Uses PEFT's `inject_adapter_in_model` for every model type: this sidesteps transformers'
    `add_adapter` version check, and keeps diffusers' bookkeeping when the model has `add_adapter`.
    Raises if a targeted module already holds plain (non-MoSLoRA) PEFT LoRA layers.
    """
    if not isinstance(config, MoSLoraConfig):
        raise TypeError(f"expected a MoSLoraConfig, got {type(config).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not isinstance(module, (MoSLoraLinear, MoSLoraConv2d)):
            if _target_matches(name, config.target_modules):
                raise AdapterMismatchError(
                    f"module {name!r} already holds plain LoRA adapters {sorted(module.lora_A)}; "
                    "add the MoSLoRA adapter first, or remove the LoRA adapters"
                )
    # diffusers' ModelMixin.add_adapter wraps this same call and records the config for set_adapters.
    with adding_an_adapter():
        if hasattr(model, "add_adapter") and type(model).__module__.startswith("diffusers"):
            model.add_adapter(config, adapter_name=adapter_name)
        else:
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
    return model


def moslora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed `<module_path>.lora_{A,mixer,B}.weight` (no adapter name)."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach() for k, v in state.items()}


def load_moslora_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str = "default"
) -> None:
    """Copy tensors from `moslora_state_dict` output back into an injected adapter; strict on keys."""
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}." in k]
    if missing or result.unexpected_keys:
        raise AdapterMismatchError(
            f"adapter state does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def adapted_module_names(model: nn.Module, adapter_name: str = "default") -> list[str]:
    """Names of the modules that hold `adapter_name`."""
    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
