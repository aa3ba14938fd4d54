"""`MoSLoraConfig`: a PEFT `LoraConfig` whose adapters carry a trainable r x r mixer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from peft import LoraConfig

MIXER_INITS = ("kaiming", "orthogonal")

# LoRA variants that change the update rule; MoSLoRA does not combine with them.
_INCOMPATIBLE_FLAGS = (
    "use_dora",
    "use_bdlora",
    "arrow_config",
    "velora_config",
    "monteclora_config",
    "kasa_config",
)


@dataclass
class MoSLoraConfig(LoraConfig):
    """LoRA config for MoSLoRA: delta W = s * B @ M @ A with a trainable mixer M (r x r).

    Accepted wherever PEFT's `LoraConfig` is (`model.add_adapter`, `peft.inject_adapter_in_model`,
    `peft.get_peft_model`). A and B are initialised as in LoRA (B = 0), the mixer by `mixer_init`:
    "kaiming" (Kaiming-uniform, a = sqrt(5), the MoSLoRA default) or "orthogonal".
    Linear and Conv2d layers are supported (for Conv2d, A carries the kernel; M and B act 1x1).
    """

    mixer_init: Literal["kaiming", "orthogonal"] = field(
        default="kaiming", metadata={"help": "Initialisation of the r x r mixer: 'kaiming' or 'orthogonal'."}
    )
    # Declared as a LoRA variant flag so that a plain PEFT LoRA layer that meets this config fails loudly
    # ("unsupported variant") instead of silently training without a mixer.
    use_moslora: bool = field(default=True, metadata={"is_lora_variant": True, "help": "Always True."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixer_init not in MIXER_INITS:
            raise ValueError(f"mixer_init must be one of {MIXER_INITS}, got {self.mixer_init!r}")
        if not self.use_moslora:
            raise ValueError("MoSLoraConfig requires use_moslora=True; use peft.LoraConfig for plain LoRA")
        for flag in _INCOMPATIBLE_FLAGS:
            if getattr(self, flag, None):
                raise ValueError(f"MoSLoRA cannot be combined with the LoRA variant option {flag!r}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError(
                f"MoSLoRA supports init_lora_weights True, False or 'gaussian', got {self.init_lora_weights!r}"
            )
        # Imported here: layer.py imports this module.
        from torch import nn

        from .layer import MoSLoraConv2d, MoSLoraLinear

        self._register_custom_module({nn.Linear: MoSLoraLinear, nn.Conv2d: MoSLoraConv2d})

    def component_dict(self) -> dict[str, Any]:
        """The per-component entry of the native file's `moslora_config` metadata."""
        targets = self.target_modules
        if isinstance(targets, (set, frozenset, tuple)):
            targets = sorted(targets)
        out: dict[str, Any] = {
            "r": int(self.r),
            "lora_alpha": self.lora_alpha,
            "use_rslora": bool(self.use_rslora),
            "mixer_init": self.mixer_init,
            "target_modules": targets,
        }
        if self.rank_pattern:
            out["rank_pattern"] = dict(self.rank_pattern)
        if self.alpha_pattern:
            out["alpha_pattern"] = dict(self.alpha_pattern)
        return out

    @classmethod
    def from_component_dict(cls, entry: dict[str, Any], **overrides: Any) -> MoSLoraConfig:
        """Build a config from a native file's per-component metadata entry."""
        kwargs: dict[str, Any] = {
            "r": entry["r"],
            "lora_alpha": entry["lora_alpha"],
            "use_rslora": entry.get("use_rslora", False),
            "mixer_init": entry.get("mixer_init", "kaiming"),
            "target_modules": entry["target_modules"],
            "rank_pattern": entry.get("rank_pattern") or {},
            "alpha_pattern": entry.get("alpha_pattern") or {},
        }
        kwargs.update(overrides)
        return cls(**kwargs)
