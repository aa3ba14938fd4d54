"""Named target-module presets for Stable Diffusion UNets and CLIP text encoders.

Presets are lists of module-name suffixes in PEFT's `target_modules` sense (a module is adapted when its
name equals an entry or ends with "." + entry), so one list serves SD 1.x, SD 2.x and SDXL.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ConfigError

UNET_ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_MLP = ["ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
UNET_RESNET = ["conv1", "conv2", "conv_shortcut", "time_emb_proj"]
UNET_TIME = [
    "time_embedding.linear_1",
    "time_embedding.linear_2",
    "add_embedding.linear_1",
    "add_embedding.linear_2",
]

TEXT_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_MLP = ["fc1", "fc2"]

PRESETS: dict[str, dict[str, list[str]]] = {
    "unet": {
        "attn": UNET_ATTN,
        "attn-mlp": UNET_ATTN + UNET_MLP,
        "all": UNET_ATTN + UNET_MLP + UNET_RESNET + UNET_TIME,
    },
    "text_encoder": {
        "attn": TEXT_ATTN,
        "attn-mlp": TEXT_ATTN + TEXT_MLP,
        "all": TEXT_ATTN + TEXT_MLP,
    },
}
PRESET_NAMES = ("attn", "attn-mlp", "all")


def resolve_targets(spec: str | Sequence[str], component: str = "unet") -> list[str]:
    """Turn a preset name, a comma-separated string or a list of module names into a target list.

    `component` is "unet", "text_encoder" or "text_encoder_2" (both text encoders share presets).
    """
    kind = "unet" if component == "unet" else "text_encoder"
    if component not in ("unet", "text_encoder", "text_encoder_2"):
        raise ConfigError(f"unknown component {component!r}; expected unet, text_encoder or text_encoder_2")
    if isinstance(spec, str):
        if spec in PRESETS[kind]:
            return list(PRESETS[kind][spec])
        names = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in spec if str(s).strip()]
    if not names:
        raise ConfigError(
            f"empty target list for {component}: {spec!r}; use one of {PRESET_NAMES} or module names"
        )
    for name in names:
        if name in PRESET_NAMES:
            raise ConfigError(f"preset name {name!r} cannot be mixed with module names in {spec!r}")
    return names
