"""Module-path spellings: CLIP ``text_model.`` prefixes, kohya-ss names and SDXL's original (SGM) UNet names.

Facts used here (checked against diffusers' kohya -> diffusers conversion and ComfyUI's key maps):

- kohya-ss / A1111 / ComfyUI name a module ``lora_unet_<path>`` / ``lora_te_<path>`` (SD1/2) or
  ``lora_te1_`` / ``lora_te2_`` (SDXL) with every ``.`` of the path replaced by ``_``. Text-encoder
  paths always carry ``text_model.`` (the transformers 4 spelling of ``CLIPTextModel``).
- SD1/2 UNet paths use the diffusers names; SDXL UNet paths use the SGM names of the original
  ``UNetModel``: ``input_blocks.N.{0 resnet | 1 attention}``, ``middle_block.{0,1,2}``,
  ``output_blocks.N.{0 resnet | 1 attention | 1 or 2 upsampler}``, with the ResNet layers renamed
  (``conv1`` -> ``in_layers.2``, ``conv2`` -> ``out_layers.3``, ``time_emb_proj`` -> ``emb_layers.1``,
  ``conv_shortcut`` -> ``skip_connection``) and ``downsamplers.0.conv`` -> ``op``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .. import architectures
from ..constants import TEXT_ENCODERS
from ..errors import MoSLoraFormatError

TEXT_MODEL_PREFIX = "text_model."

KOHYA_PREFIXES = {
    (arch.key, component): prefix
    for arch in architectures.ARCHITECTURE_TABLE.values()
    for component, prefix in arch.kohya_prefixes.items()
}

# The SDXL base UNet's block layout (architectures.SDXL_UNET), used when no UNet config is given.
SDXL_DEFAULT_UNET_LAYOUT: dict[str, Any] = {
    key: (list(value) if isinstance(value, tuple) else value)
    for key, value in architectures.SDXL_UNET.items()
    if key in ("layers_per_block", "down_block_types", "up_block_types")
}

_RESNET_TO_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_TOP_LEVEL_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def is_text_encoder(component: str) -> bool:
    return component in TEXT_ENCODERS


def strip_text_model(path: str) -> str:
    """Return a CLIP module path without the ``text_model.`` prefix."""
    return path.removeprefix(TEXT_MODEL_PREFIX)


def with_text_model(path: str) -> str:
    """Return a CLIP module path with the ``text_model.`` prefix (``text_projection`` sits outside it)."""
    if path.startswith(TEXT_MODEL_PREFIX) or path.startswith("text_projection"):
        return path
    return TEXT_MODEL_PREFIX + path


def path_variants(component: str, path: str) -> list[str]:
    """All spellings under which a module path may appear (the path itself first)."""
    if not is_text_encoder(component):
        return [path]
    variants = [path, strip_text_model(path), with_text_model(path)]
    return list(dict.fromkeys(variants))


def _as_list(value: int | Sequence[int], n: int) -> list[int]:
    return [int(value)] * n if isinstance(value, int) else [int(v) for v in value]


def _layout(unet_config: Mapping[str, Any] | None) -> tuple[list[int], list[int], list[bool]]:
    cfg = dict(SDXL_DEFAULT_UNET_LAYOUT)
    if unet_config is not None:
        cfg.update({k: unet_config[k] for k in SDXL_DEFAULT_UNET_LAYOUT if k in unet_config})
    n = len(cfg["down_block_types"])
    down_layers = _as_list(cfg["layers_per_block"], n)
    up_layers = list(reversed(down_layers))
    up_has_attention = ["CrossAttn" in t for t in cfg["up_block_types"]]
    return down_layers, up_layers, up_has_attention


def diffusers_to_sgm_unet_path(path: str, unet_config: Mapping[str, Any] | None = None) -> str:
    """Map a diffusers SDXL UNet module path to the original SGM name (dots kept).

    ``unet_config`` supplies ``layers_per_block``, ``down_block_types`` and ``up_block_types``;
    without it the layout of SDXL base 1.0 is assumed.
    """
    down_layers, up_layers, up_has_attention = _layout(unet_config)

    for name, sgm in _TOP_LEVEL_TO_SGM.items():
        if path == name:
            return sgm

    def inner(kind: str, rest: str) -> str:
        if kind != "resnets":
            return rest
        head, _, tail = rest.partition(".")
        if head not in _RESNET_TO_SGM:
            raise MoSLoraFormatError(f"no SGM name known for ResNet layer '{head}' in '{path}'")
        return _RESNET_TO_SGM[head] + (f".{tail}" if tail else "")

    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        if block >= len(down_layers) or layer >= down_layers[block]:
            raise MoSLoraFormatError(f"'{path}' does not fit a UNet with layers_per_block={down_layers}")
        index = 1 + sum(n + 1 for n in down_layers[:block]) + layer
        return f"input_blocks.{index}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"

    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path)
    if m:
        block = int(m[1])
        index = sum(n + 1 for n in down_layers[: block + 1])
        return f"input_blocks.{index}.0.op"

    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        kind, layer, rest = m[1], int(m[2]), m[3]
        index = 1 if kind == "attentions" else 2 * layer
        return f"middle_block.{index}.{inner(kind, rest)}"

    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        if block >= len(up_layers) or layer > up_layers[block]:
            raise MoSLoraFormatError(f"'{path}' does not fit a UNet with layers_per_block={down_layers}")
        index = sum(n + 1 for n in up_layers[:block]) + layer
        return f"output_blocks.{index}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"

    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", path)
    if m:
        block = int(m[1])
        index = sum(n + 1 for n in up_layers[: block + 1]) - 1
        return f"output_blocks.{index}.{2 if up_has_attention[block] else 1}.conv"

    raise MoSLoraFormatError(f"no SGM name known for UNet module '{path}'")


def kohya_module_name(
    architecture: str, component: str, path: str, unet_config: Mapping[str, Any] | None = None
) -> str:
    """Return the kohya-ss module name (e.g. ``lora_unet_input_blocks_4_1_..._to_q``) of a module."""
    try:
        prefix = KOHYA_PREFIXES[(architecture, component)]
    except KeyError:
        raise MoSLoraFormatError(
            f"no kohya name for component '{component}' of architecture '{architecture}'"
        ) from None
    if component == "unet":
        if architecture == "sdxl":
            path = diffusers_to_sgm_unet_path(path, unet_config)
    else:
        path = with_text_model(path)
    return prefix + path.replace(".", "_")
