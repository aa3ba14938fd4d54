"""MoSLoRA layers: PEFT LoRA layers plus an r x r mixer, implemented as a PEFT LoRA variant.

PEFT keeps doing injection, multiple adapters, scaling, merge/unmerge and state dicts; this module adds
only the mixer: its parameters (`lora_mixer.<adapter>.weight`, shape [r, r]), its initialisation, the
forward pass B(M(A(x))) and the merged delta, which `functional.delta_weight` computes. The variant is
registered in the layers' `lora_variants` table under the config flag `use_moslora`, as PEFT registers
DoRA and its other variants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Conv2d as LoraConv2d
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from peft.utils.other import transpose
from torch import nn

from . import functional
from .errors import ConfigError

VARIANT_FLAG = "use_moslora"


def init_mixer_(weight: torch.Tensor, how: str) -> None:
    """Initialise a mixer in place: 'kaiming' (uniform, a = sqrt(5)) or 'orthogonal'."""
    with torch.no_grad():
        if how == "kaiming":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        elif how == "orthogonal":  # QR has no half-precision kernels: draw in float32, then cast
            q = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
            weight.copy_(nn.init.orthogonal_(q))
        else:
            raise ConfigError(f"unknown mixer_init {how!r}")


class MoSLoraVariant(LoraVariant):
    """The MoSLoRA update s * B M A for Linear and (LoCon-style) Conv2d layers."""

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, config: Any = None, **kwargs: Any) -> None:
        r = module.r[adapter_name]
        ref = module.lora_A[adapter_name].weight
        mixer = nn.Linear(r, r, bias=False, device=ref.device, dtype=ref.dtype)
        init_mixer_(mixer.weight, config.mixer_init)
        module.lora_mixer[adapter_name] = mixer

    @staticmethod
    def delta_weight(module: LoraLayer, adapter: str) -> torch.Tensor:
        """s * B @ M @ A in the base weight's layout, computed by `functional.delta_weight`."""
        delta = functional.delta_weight(
            module.lora_A[adapter].weight,
            module.lora_mixer[adapter].weight,
            module.lora_B[adapter].weight,
            module.scaling[adapter],
        )
        return transpose(delta, module.fan_in_fan_out) if delta.ndim == 2 else delta

    @classmethod
    def merge_safe(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def merge_unsafe(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def unmerge(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(
        module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        mixer = module.lora_mixer[active_adapter].weight
        h = F.conv2d(h, mixer[:, :, None, None]) if isinstance(module, LoraConv2d) else F.linear(h, mixer)
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]


def _declares_moslora(config: Any) -> bool:
    return dataclasses.is_dataclass(config) and any(
        f.name == VARIANT_FLAG for f in dataclasses.fields(config)
    )


class _MoSLoraLayerMixin:
    """Adds the mixer ModuleDict, and resolves a config that asks for MoSLoRA to its variant.

    Adapters added to the same layer with a plain `LoraConfig` (which has no `use_moslora` field) are
    resolved against PEFT's own table and stay plain LoRA.
    """

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_mixer",)

    def resolve_lora_variant(self, *, config: Any, **kwargs: Any) -> LoraVariant | None:
        if _declares_moslora(config) and getattr(config, VARIANT_FLAG):
            return MoSLoraVariant()  # MoSLoraConfig refuses every other variant option, so none combines
        return super().resolve_lora_variant(config=config, **kwargs)  # a plain LoraConfig: PEFT's own table

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: Any, **kwargs: Any) -> None:
        if "lora_mixer" not in self._modules:
            self.lora_mixer = nn.ModuleDict({})
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """PEFT's public delta (used by merge-and-convert utilities): s * B @ M @ A for MoSLoRA adapters."""
        variant = self.lora_variant.get(adapter)
        if isinstance(variant, MoSLoraVariant):
            return variant.delta_weight(self, adapter)
        return super().get_delta_weight(adapter)


class MoSLoraLinear(_MoSLoraLayerMixin, LoraLinear):
    """PEFT LoRA Linear layer that can hold MoSLoRA adapters."""


class MoSLoraConv2d(_MoSLoraLayerMixin, LoraConv2d):
    """PEFT LoRA Conv2d layer that can hold MoSLoRA adapters (groups == 1)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        if getattr(base_layer, "groups", 1) != 1:
            raise ConfigError("MoSLoRA supports Conv2d layers with groups == 1 only")
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
