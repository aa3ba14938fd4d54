"""Stable Diffusion architectures: the one rule that tells sd1 / sd2 / sdxl apart, and the real configs.

Detection (:func:`detect`, :func:`detect_pipeline`, :func:`from_adapter_modules`, :func:`normalize`) is the
only place in the toolkit that decides which family a model or an adapter belongs to; training, the file
formats, the exports and the web UI all call it. The configs build the real SD 1.5, SD 2.1 and SDXL
layouts with random weights (benchmarks, and tests on the meta device, where nothing is allocated).
Values follow the published model_index/config files of SD 1.5, SD 2.1 and SDXL base.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .constants import ARCHITECTURES

# Width of the text conditioning (the UNet's cross_attention_dim) of each family's real models.
TEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class Architecture:
    """Every per-architecture fact the toolkit uses, in one row (see :data:`ARCHITECTURE_TABLE`)."""

    key: str  # sd1, sd2, sdxl
    display_name: str
    pipeline_class: str  # diffusers' text-to-image pipeline
    text_encoders: tuple[str, ...]  # pipeline components, in conditioning order
    tokenizers: tuple[str, ...]
    kohya_prefixes: dict[str, str]  # component -> kohya-ss module-name prefix
    kohya_base_version: str  # ss_base_model_version of kohya-written files
    modelspec_architecture: str  # modelspec.architecture of a LoRA for this base
    default_config_repo: str  # diffusers' repository of configs and tokenizers for single files
    single_file_text_prefixes: tuple[str, ...]  # text-encoder key prefixes of the original (LDM / SGM) layout
    single_file_clip_prefix: str | None  # the CLIP (transformers) text encoder's prefix there, if it has one

    @property
    def is_sdxl(self) -> bool:
        return self.key == "sdxl"


_SD1 = Architecture(
    key="sd1", display_name="Stable Diffusion 1.x", pipeline_class="StableDiffusionPipeline",
    text_encoders=("text_encoder",), tokenizers=("tokenizer",),
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_"}, kohya_base_version="sd_v1",
    modelspec_architecture="stable-diffusion-v1/lora", default_config_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
    single_file_text_prefixes=("cond_stage_model.transformer.",),
    single_file_clip_prefix="cond_stage_model.transformer.",
)  # fmt: skip
ARCHITECTURE_TABLE: dict[str, Architecture] = {
    "sd1": _SD1,
    # SD 2.x: the same pipeline and names, an OpenCLIP ViT-H text encoder (not a transformers CLIP in the file)
    "sd2": replace(
        _SD1, key="sd2", display_name="Stable Diffusion 2.x", kohya_base_version="sd_v2",
        modelspec_architecture="stable-diffusion-v2-768-v/lora", default_config_repo="stabilityai/stable-diffusion-2-1",
        single_file_text_prefixes=("cond_stage_model.model.",), single_file_clip_prefix=None,
    ),
    "sdxl": Architecture(
        key="sdxl", display_name="Stable Diffusion XL", pipeline_class="StableDiffusionXLPipeline",
        text_encoders=("text_encoder", "text_encoder_2"), tokenizers=("tokenizer", "tokenizer_2"),
        kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
        kohya_base_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base/lora",
        default_config_repo="stabilityai/stable-diffusion-xl-base-1.0",
        single_file_text_prefixes=("conditioner.embedders.1.model.", "conditioner.embedders.0.transformer."),
        single_file_clip_prefix="conditioner.embedders.0.transformer.",
    ),
}  # fmt: skip


def spec(arch: str) -> Architecture:
    """The table row of ``arch`` (sd1 / sd2 / sdxl)."""
    try:
        return ARCHITECTURE_TABLE[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}") from None


def from_text_width(width: Any) -> str | None:
    """The family whose real models condition on text of this width (768, 1024, 2048), else None."""
    return TEXT_WIDTHS.get(width) if isinstance(width, int) else None


def detect(unet_config: Mapping[str, Any] | None = None, model_index: Mapping[str, Any] | None = None) -> str:
    """``sdxl``, ``sd2`` or ``sd1`` for a base model, from its UNet config and/or its model_index.json.

    The rule, in order: SDXL when the pipeline has a second text encoder, its class name says XL or the
    UNet takes SDXL's size/text "time ids" (``addition_embed_type == "text_time"``); otherwise the width of
    the text conditioning decides (768 SD 1.x, 1024 SD 2.x, 2048 SDXL); a UNet of another width (a tiny
    or custom model) is ``sd2`` when it uses linear projections in its transformers, like SD 2.x, else ``sd1``.
    """
    index = model_index or {}
    unet = unet_config or {}
    second = index.get("text_encoder_2")
    if (isinstance(second, (list, tuple)) and second and second[0] is not None) or "XL" in str(
        index.get("_class_name", "")
    ):
        return "sdxl"
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    by_width = from_text_width(unet.get("cross_attention_dim"))
    if by_width is not None:
        return by_width
    return "sd2" if unet.get("use_linear_projection") else "sd1"


def detect_pipeline(pipe: Any) -> str:
    """:func:`detect` for a loaded diffusers pipeline (or anything with ``unet`` and optional ``text_encoder_2``)."""
    unet = getattr(pipe, "unet", None)
    unet = getattr(unet, "module", unet)  # DDP-wrapped during training
    index = {"_class_name": type(pipe).__name__}
    if getattr(pipe, "text_encoder_2", None) is not None:
        index["text_encoder_2"] = ["transformers", type(pipe.text_encoder_2).__name__]
    return detect(dict(getattr(unet, "config", None) or {}), index)


def from_adapter_modules(modules: Iterable[tuple[str, str, int]]) -> str | None:
    """Best guess for an adapter file without architecture metadata, or None when it cannot tell.

    ``modules``: (component, module path, input width) of each adapted module. A second text encoder means
    SDXL; otherwise the input width of the UNet's cross-attention key/value projections is the text width.
    """
    modules = list(modules)
    if any(component == "text_encoder_2" for component, _, _ in modules):
        return "sdxl"
    widths = {
        width
        for component, path, width in modules
        if component == "unet" and path.endswith(("attn2.to_k", "attn2.to_v"))
    }
    if len(widths) == 1:
        return from_text_width(next(iter(widths)))
    return None


def normalize(value: Any) -> str | None:
    """Map an architecture spelling (ours, kohya's ``ss_base_model_version``, modelspec's) to sd1/sd2/sdxl."""
    if not value:
        return None
    text = str(value).lower()
    if text in ARCHITECTURES:
        return text
    if "xl" in text:
        return "sdxl"
    if re.search(r"(sd_?v?2|v2|stable-diffusion-v2)", text):
        return "sd2"
    if re.search(r"(sd_?v?1|v1|stable-diffusion-v1)", text):
        return "sd1"
    return None


SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)

SD21_UNET: dict[str, Any] = dict(
    SD15_UNET,
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
)

SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

CLIP_L_TEXT: dict[str, Any] = dict(  # SD 1.x text encoder, SDXL text_encoder
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    hidden_act="quick_gelu",
)
OPENCLIP_H_TEXT: dict[str, Any] = dict(  # SD 2.x text encoder (penultimate layers kept: 23)
    hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, hidden_act="gelu"
)
OPENCLIP_BIGG_TEXT: dict[str, Any] = dict(  # SDXL text_encoder_2 (with projection)
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    hidden_act="gelu",
    projection_dim=1280,
)

SD_VAE: dict[str, Any] = dict(  # the KL-f8 VAE of SD 1.x / 2.x (83.7M parameters)
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SDXL_VAE: dict[str, Any] = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

UNET_CONFIGS = {"sd1": SD15_UNET, "sd2": SD21_UNET, "sdxl": SDXL_UNET}
VAE_CONFIGS = {"sd1": SD_VAE, "sd2": dict(SD_VAE, sample_size=768), "sdxl": SDXL_VAE}


def build_unet(arch: str, device: str = "cpu"):
    """A `UNet2DConditionModel` of the real architecture with random weights (device "meta" allocates nothing)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**UNET_CONFIGS[arch])


def build_vae(arch: str, device: str = "cpu"):
    """An `AutoencoderKL` of the architecture's VAE layout with random weights."""
    import torch
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**VAE_CONFIGS[arch])


def build_text_encoder(config: dict[str, Any], with_projection: bool = False, device: str = "cpu"):
    """A CLIP text encoder of the given config with random weights."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device(device):
        return cls(CLIPTextConfig(**config))
