"""Test helper: write a diffusers pipeline as one single-file checkpoint in the original key layout.

The layout is the one Stability's LDM / SGM code writes and model sites distribute (``model.diffusion_model.*``
UNet, ``first_stage_model.*`` VAE, ``cond_stage_model.*`` / ``conditioner.embedders.*`` text encoders). The
mapping is our own (the UNet's from the library's SGM naming, the rest written here from the layouts),
independent of diffusers' converter, so that loading the file back with ``from_single_file`` checks both
directions against each other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _resnet(rest: str, names: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{names.get(head, head)}.{tail}"


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's weights under ``model.diffusion_model.`` in the LDM / SGM layout.

    Module names come from the library's own SGM naming (`formats.naming.diffusers_to_sgm_unet_path`, which
    the kohya export uses for SDXL), so loading the file with diffusers' converter also checks that naming.
    """
    from moslora_diffusion.formats.naming import diffusers_to_sgm_unet_path

    config = dict(unet.config)
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        out[f"model.diffusion_model.{diffusers_to_sgm_unet_path(module, config)}.{param}"] = value
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under ``first_stage_model.`` in the LDM layout."""
    n_up = len(vae.config.up_block_types)
    resnet = {"conv_shortcut": "nin_shortcut"}
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        name = key
        if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i = int(m[3]) if m[2] == "down" else n_up - 1 - int(m[3])
            name = f"{m[1]}.{m[2]}.{i}.block.{m[4]}.{_resnet(m[5], resnet)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            name = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet(m[3], resnet)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            name = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + name] = value
    return out


def _hf_text_keys(model: Any) -> dict[str, torch.Tensor]:
    """The text model's weights named ``text_model.*`` whatever the transformers version's nesting."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("text_projection"):
            out[key] = value
            continue
        out["text_model." + key.removeprefix("text_model.")] = value
    return out


def clip_to_ldm(model: Any, prefix: str) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP text encoder (SD 1.x, SDXL's first) in the Hugging Face layout under ``prefix``."""
    return {prefix + k: v for k, v in _hf_text_keys(model).items() if not k.startswith("text_projection")}


def open_clip_to_ldm(model: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A text encoder in OpenCLIP's layout (SD 2.x, SDXL's second) under ``prefix``: fused q/k/v."""
    hf = _hf_text_keys(model)
    out: dict[str, torch.Tensor] = {}
    simple = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for key, value in hf.items():
        if key in simple:
            out[prefix + simple[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            if m[2].startswith("self_attn.") and m[2][-6:] in ("q_proj", "k_proj", "v_proj"):
                continue  # fused below
            out[f"{prefix}transformer.resblocks.{m[1]}.{layer_names[m[2]]}.{m[3]}"] = value
    n_layers = model.config.num_hidden_layers
    for i in range(n_layers):
        for kind in ("weight", "bias"):
            parts = [hf[f"text_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts)
    return out


def pipeline_to_single_file(pipe: Any, path: str | Path, open_clip_text: bool | None = None) -> Path:
    """Write ``pipe`` (SD 1.x/2.x or SDXL) as one original-layout ``.safetensors`` file at ``path``.

    SD pipelines put their text encoder in the OpenAI-CLIP layout (SD 1.x) or, with ``open_clip_text``
    (default: when the UNet uses linear projections, like SD 2.x), in OpenCLIP's.
    """
    tensors = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        tensors.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        tensors.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        if open_clip_text is None:
            open_clip_text = bool(pipe.unet.config.use_linear_projection)
        if open_clip_text:
            tensors.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model."))
        else:
            tensors.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    path = Path(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    return path
