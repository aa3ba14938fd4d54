"""Sample images during training: a pipeline around the models being trained, a grid PNG, TensorBoard."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import architectures
from ..durable import write_image
from ..imaging import tile
from .models import Components

VALIDATION_DIR = "validation"


@contextlib.contextmanager
def adapters_merged(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Sample with every active adapter merged into its base weight (one matmul per layer instead of three:
    about 15 % faster on the toy model), then give the base weights back bit for bit — restored from a copy,
    not by subtracting the update again, so a validation never changes what the training goes on with."""
    from ..compat import adapter_layers

    layers = [
        layer
        for m in modules
        for layer in adapter_layers(m)
        if not layer.disable_adapters and not layer.merged and hasattr(layer, "merge")
    ]
    saved: list[tuple[Any, dict[str, torch.Tensor]]] = []
    try:
        for layer in layers:
            base = layer.get_base_layer()
            kept = {"weight": base.weight.detach().to("cpu", copy=True)}
            if getattr(base, "bias", None) is not None:
                kept["bias"] = base.bias.detach().to("cpu", copy=True)
            saved.append((layer, kept))
            layer.merge()
        yield
    finally:
        for layer, kept in reversed(saved):
            base = layer.get_base_layer()
            with torch.no_grad():
                for name, value in kept.items():
                    getattr(base, name).copy_(value)  # in place: the parameters keep their storage
            layer.merged_adapters.clear()  # PEFT's record of what is merged (its unmerge would subtract)


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


def save_grid(images: list[Image.Image], output_dir: str | Path, step: int) -> Path:
    """Write `output_dir/validation/step-<step>.png` atomically and return its path."""
    folder = Path(output_dir) / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    return write_image(path, tile(images))
