"""Tiny Stable Diffusion pipelines built from configs, for tests and quick experiments.

Nothing is downloaded: the CLIP tokenizer is written locally (a character-level BPE vocabulary with no
merges), and every model gets random weights from a fixed seed. `arch` is "sd1", "sd2" or "sdxl".
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

ARCHES = ("sd1", "sd2", "sdxl")
TINY_MAX_LENGTH = 77


def write_char_clip_tokenizer(directory: str | Path) -> Path:
    """Write vocab.json / merges.txt for a character-level CLIP tokenizer into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]  # pad = "!" (id 2), as in diffusers' tests
    for ch in string.ascii_lowercase + string.digits + ".,'-:;()[]{}<>/_?+=*&%$#@":
        for tok in (ch, ch + "</w>"):
            if tok not in tokens:
                tokens.append(tok)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return directory


def load_tokenizer(directory: str | Path, model_max_length: int = TINY_MAX_LENGTH):
    from transformers import CLIPTokenizer

    directory = Path(directory)
    vocab = json.loads((directory / "vocab.json").read_text())
    merges = [
        tuple(line.split())
        for line in (directory / "merges.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token="!")


def _text_config(projection_dim: int | None = None, hidden_size: int = 32):
    from transformers import CLIPTextConfig

    kwargs = dict(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=128,
        max_position_embeddings=TINY_MAX_LENGTH,
        hidden_act="gelu",
    )
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    return CLIPTextConfig(**kwargs)


def build_tiny_components(arch: str = "sd1", seed: int = 0, text_width_2: int = 32) -> dict:
    """Return the components dict of a tiny pipeline of the given architecture.

    ``text_width_2``: hidden size of SDXL's second text encoder (real SDXL: 768 and 1280 differ; diffusers'
    single-file loader tells the two encoders apart by that width).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    tok_dir = Path(tempfile.mkdtemp(prefix="moslora-tok-"))
    write_char_clip_tokenizer(tok_dir)
    torch.manual_seed(seed)
    common = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    if arch == "sdxl":
        unet = UNet2DConditionModel(
            **common,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
            cross_attention_dim=32 + text_width_2,
        )
    else:
        unet = UNet2DConditionModel(
            **common,
            attention_head_dim=(2, 4) if arch == "sd2" else 8,
            use_linear_projection=arch == "sd2",
            cross_attention_dim=32,
        )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="v_prediction" if arch == "sd2" else "epsilon",
    )
    torch.manual_seed(seed + 2)
    components = {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "tokenizer": load_tokenizer(tok_dir),
    }
    if arch == "sdxl":
        components["text_encoder"] = CLIPTextModel(_text_config())
        torch.manual_seed(seed + 3)
        components["text_encoder_2"] = CLIPTextModelWithProjection(
            _text_config(projection_dim=32, hidden_size=text_width_2)
        )
        components["tokenizer_2"] = load_tokenizer(tok_dir)
    else:
        components["text_encoder"] = CLIPTextModel(_text_config())
        components["safety_checker"] = None
        components["feature_extractor"] = None
    return components


def make_tiny_pipeline(arch: str = "sd1", seed: int = 0, pipeline_cls=None, text_width_2: int = 32):
    """A tiny text-to-image pipeline (or `pipeline_cls`) with random weights; 32 px images."""
    import diffusers

    from .architectures import spec

    components = build_tiny_components(arch, seed, text_width_2)
    if pipeline_cls is None:
        pipeline_cls = getattr(diffusers, spec(arch).pipeline_class)
    if arch != "sdxl":
        components["requires_safety_checker"] = False
    pipe = pipeline_cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(arch: str, path: str | Path, seed: int = 0, text_width_2: int = 32) -> Path:
    """Save a tiny pipeline with `save_pretrained`, so that `from_pretrained(path)` loads it offline."""
    path = Path(path)
    make_tiny_pipeline(arch, seed, text_width_2=text_width_2).save_pretrained(path)
    return path
