"""Configurations of the toy-world base model (all stock diffusers / transformers classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..sampling import SampleRequest
from .render import RESOLUTION
from .tokenizer import MAX_LENGTH

LATENT_SIZE = RESOLUTION // 4
"""The VAE downsamples by 4 (three levels): 32 px images <-> 8 x 8 x 4 latents."""

TEXT_HIDDEN = 64

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=TEXT_HIDDEN,
    attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
    norm_num_groups=32,
)

VAE_CONFIG: dict[str, Any] = dict(
    sample_size=RESOLUTION,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=32,
)

SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


def text_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def build_text_encoder(tokenizer):
    from transformers import CLIPTextModel

    cfg = text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return CLIPTextModel(cfg)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae(scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG, scaling_factor=scaling_factor)


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def build_sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG, set_alpha_to_one=False)


def default_sampler_settings() -> dict[str, Any]:
    """The sampler everyone uses with the toy-world base model (evaluation, DreamBooth, the web UI).

    ``scheduler`` names the diffusers class saved in the bundled pipeline's ``scheduler/`` folder.
    """
    return {
        "num_inference_steps": 25,
        "guidance_scale": 5.0,
        "scheduler": "DDIMScheduler",
        "height": RESOLUTION,
        "width": RESOLUTION,
    }


def sample_request(
    prompts: Sequence[str], seeds: Sequence[int], settings: dict[str, Any] | None = None
) -> SampleRequest:
    """A :class:`~moslora_diffusion.sampling.SampleRequest` with the toy model's sampler settings (each
    overridable by ``settings``)."""
    s = default_sampler_settings() | (settings or {})
    return SampleRequest(
        tuple(prompts), tuple(int(x) for x in seeds),
        s["num_inference_steps"], float(s["guidance_scale"]), s["height"], s["width"],
    )  # fmt: skip
