"""`MoSLoraConfig`: a PEFT `LoraConfig` whose adapters carry a trainable r x r mixer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from peft import LoraConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from .constants import DEFAULT_MIXER_INIT, MIXER_INITS
from .errors import ConfigError

# The `peft_type` written into adapter_config.json by `save_pretrained`. PEFT picks the config class by
# this value, so `PeftModel.from_pretrained` rebuilds a MoSLoraConfig (mixer and all) once this package is
# imported, and fails with a KeyError that names the fix when it is not -- never a silent plain LoRA.
SAVED_PEFT_TYPE = "MOSLORA (import moslora_diffusion to load this adapter)"

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
    `peft.get_peft_model`, `PeftModel.save_pretrained` / `from_pretrained`). A and B are initialised as in
    LoRA (B = 0), the mixer by `mixer_init`: "orthogonal" (the default: it learns as fast
    as LoRA on our yardstick) or "kaiming" (Kaiming-uniform, a = sqrt(5), as in the MoSLoRA reference code). Linear and Conv2d layers are supported (for Conv2d, A carries the kernel; M and B act 1x1).
    """

    mixer_init: Literal["kaiming", "orthogonal"] = field(
        default=DEFAULT_MIXER_INIT,
        metadata={
            "help": "Initialisation of the r x r mixer: 'orthogonal' (default) or 'kaiming' (the paper's)."
        },
    )
    # A LoRA variant flag, declared the way PEFT declares its own (DoRA, ...): the layers' `lora_variants`
    # table maps it to the MoSLoRA variant, and a plain PEFT LoRA layer that meets it fails loudly
    # ("unsupported variant") instead of silently training without a mixer.
    use_moslora: bool = field(default=True, metadata={"is_lora_variant": True, "help": "Always True."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixer_init not in MIXER_INITS:
            raise ConfigError(f"mixer_init must be one of {MIXER_INITS}, got {self.mixer_init!r}")
        if not self.use_moslora:
            raise ConfigError("MoSLoraConfig requires use_moslora=True; use peft.LoraConfig for plain LoRA")
        for flag in _INCOMPATIBLE_FLAGS:
            if getattr(self, flag, None):
                raise ConfigError(f"MoSLoRA cannot be combined with the LoRA variant option {flag!r}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ConfigError(
                f"MoSLoRA supports init_lora_weights True, False or 'gaussian', got {self.init_lora_weights!r}"
            )
        from torch import nn

        from .compat import register_custom_lora_layers
        from .layer import MoSLoraConv2d, MoSLoraLinear

        register_custom_lora_layers(self, {nn.Linear: MoSLoraLinear, nn.Conv2d: MoSLoraConv2d})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form PEFT saves; its `peft_type` routes `from_pretrained` back to this class."""
        data = super().to_dict()
        data["peft_type"] = SAVED_PEFT_TYPE
        return data


PEFT_TYPE_TO_CONFIG_MAPPING.setdefault(SAVED_PEFT_TYPE, MoSLoraConfig)
