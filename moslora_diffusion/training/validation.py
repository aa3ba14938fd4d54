"""Sample images during training: a pipeline around the models being trained, a grid PNG, TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import architectures
from ..durable import write_image
from ..imaging import tile
from .models import Components

VALIDATION_DIR = "validation"


def build_pipeline(comps: Components, unet: torch.nn.Module, text_encoders: list[torch.nn.Module]) -> Any:
    """A text-to-image pipeline sharing the (unwrapped) training models; loads nothing."""
    import diffusers

    row = architectures.spec(comps.arch)
    parts = dict(zip(row.text_encoders, text_encoders)) | dict(zip(row.tokenizers, comps.tokenizers))
    scheduler = type(comps.inference_scheduler).from_config(comps.inference_scheduler.config)
    if not row.is_sdxl:
        parts |= dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = getattr(diffusers, row.pipeline_class)(vae=comps.vae, unet=unet, scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_samples(
    pipe: Any,
    prompt: str,
    num_images: int,
    resolution: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    device: torch.device,
) -> list[Image.Image]:
    """`num_images` samples of `prompt`, the same seeds every time (so validations are comparable)."""
    generator = torch.Generator(device=device.type if device.type != "mps" else "cpu").manual_seed(seed)
    return pipe(
        prompt,
        num_images_per_prompt=num_images,
        height=resolution,
        width=resolution,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
    ).images


def save_grid(images: list[Image.Image], output_dir: str | Path, step: int) -> Path:
    """Write `output_dir/validation/step-<step>.png` atomically and return its path."""
    folder = Path(output_dir) / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    return write_image(path, tile(images))
