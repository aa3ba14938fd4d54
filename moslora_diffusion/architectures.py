"""Configs of the real Stable Diffusion architectures, for building models with random weights.

Used by benchmarks and by tests that check target presets on the real layer layout (on the meta device
nothing is allocated). Values follow the published model_index/config files of SD 1.5, SD 2.1 and SDXL base.
"""

from __future__ import annotations

from typing import Any

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
