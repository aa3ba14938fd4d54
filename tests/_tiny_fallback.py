"""Temporary tiny-pipeline builder, used only until moslora_diffusion.tiny lands on main."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch


def _tokenizer(max_length: int = 16):
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + "!,.'-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    folder = Path(tempfile.mkdtemp(prefix="tinytok"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def make_tiny_pipeline(arch: str, seed: int = 0):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te_cfg = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=200,
        max_position_embeddings=16,
        projection_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        clip_sample=False, steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    if arch == "sd1":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        )
        return StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=CLIPTextModel(te_cfg),
            tokenizer=_tokenizer(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(te_cfg),
        text_encoder_2=CLIPTextModelWithProjection(te_cfg),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        scheduler=scheduler,
    )
