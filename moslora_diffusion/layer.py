"""MoSLoRA layers: PEFT LoRA layers plus an r x r mixer, implemented as a PEFT LoRA variant.

PEFT keeps doing injection, multiple adapters, scaling, merge/unmerge and state dicts; this module adds
only the mixer: its parameters (`lora_mixer.<adapter>.weight`, shape [r, r]), its initialisation, the
forward pass B(M(A(x))) and the merged delta s * B @ M @ A.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Conv2d as LoraConv2d
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from peft.utils.other import transpose
from torch import nn

from .config import MoSLoraConfig


def init_mixer_(weight: torch.Tensor, how: str) -> None:
    """Initialise a mixer in place: 'kaiming' (uniform, a = sqrt(5)) or 'orthogonal'."""
    with torch.no_grad():
        if how == "kaiming":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        elif how == "orthogonal":
            nn.init.orthogonal_(weight)
        else:
            raise ValueError(f"unknown mixer_init {how!r}")


def _fp32_if_cpu_half(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


class _MoSLoraVariantBase(LoraVariant):
    """Shared pieces of the Linear and Conv2d variants."""

    @staticmethod
    def init(
        module: LoraLayer, adapter_name: str, config: MoSLoraConfig | None = None, **kwargs: Any
    ) -> None:
        r = module.r[adapter_name]
        ref = module.lora_A[adapter_name].weight
        mixer = nn.Linear(r, r, bias=False, device=ref.device, dtype=ref.dtype)
        init_mixer_(mixer.weight, getattr(config, "mixer_init", "kaiming"))
        module.lora_mixer[adapter_name] = mixer

    @classmethod
    def delta_weight(cls, module: LoraLayer, adapter: str) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def merge_safe(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def merge_unsafe(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += cls.delta_weight(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def unmerge(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - cls.delta_weight(module, active_adapter).to(orig_weight.dtype)


class MoSLoraLinearVariant(_MoSLoraVariantBase):
    """y = W0 x + s * B M A x for nn.Linear."""

    @staticmethod
    def forward(
        module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        h = module.lora_mixer[active_adapter](h)
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]

    @classmethod
    def delta_weight(cls, module: LoraLinear, adapter: str) -> torch.Tensor:
        a = _fp32_if_cpu_half(module.lora_A[adapter].weight)
        m = _fp32_if_cpu_half(module.lora_mixer[adapter].weight)
        b = _fp32_if_cpu_half(module.lora_B[adapter].weight)
        delta = transpose(b @ m @ a, module.fan_in_fan_out) * module.scaling[adapter]
        return delta.to(module.lora_B[adapter].weight.dtype)


class MoSLoraConv2dVariant(_MoSLoraVariantBase):
    """LoCon-style MoSLoRA for nn.Conv2d: A carries the kernel, the mixer and B act as 1x1 convs."""

    @staticmethod
    def forward(
        module: LoraConv2d, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        mixer = module.lora_mixer[active_adapter].weight
        h = F.conv2d(h, mixer[:, :, None, None])
        return result + module.lora_B[active_adapter](h) * module.scaling[active_adapter]

    @classmethod
    def delta_weight(cls, module: LoraConv2d, adapter: str) -> torch.Tensor:
        a = _fp32_if_cpu_half(module.lora_A[adapter].weight)  # [r, in, kh, kw]
        m = _fp32_if_cpu_half(module.lora_mixer[adapter].weight)  # [r, r]
        b = _fp32_if_cpu_half(module.lora_B[adapter].weight)  # [out, r, 1, 1]
        up = b.flatten(1) @ m  # [out, r]
        delta = torch.einsum("or,rikl->oikl", up, a) * module.scaling[adapter]
        return delta.to(module.lora_B[adapter].weight.dtype)


class _MoSLoraLayerMixin:
    """Adds the mixer ModuleDict and picks the MoSLoRA variant for MoSLoraConfig adapters.

    Adapters added to the same layer with a plain `LoraConfig` stay plain LoRA.
    """

    adapter_layer_names = LoraLayer.adapter_layer_names + ("lora_mixer",)
    _moslora_variant: type[_MoSLoraVariantBase]

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: Any, **kwargs: Any) -> None:
        if "lora_mixer" not in self._modules:
            self.lora_mixer = nn.ModuleDict({})
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: Any, **kwargs: Any) -> LoraVariant | None:
        if isinstance(config, MoSLoraConfig):
            return self._moslora_variant()
        return super().resolve_lora_variant(config=config, **kwargs)


class MoSLoraLinear(_MoSLoraLayerMixin, LoraLinear):
    """PEFT LoRA Linear layer that can hold MoSLoRA adapters."""

    _moslora_variant = MoSLoraLinearVariant


class MoSLoraConv2d(_MoSLoraLayerMixin, LoraConv2d):
    """PEFT LoRA Conv2d layer that can hold MoSLoRA adapters (groups == 1)."""

    _moslora_variant = MoSLoraConv2dVariant

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> None:
        if getattr(base_layer, "groups", 1) != 1:
            raise ValueError("MoSLoRA supports Conv2d layers with groups == 1 only")
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
