"""Shared helpers for the web UI tests: a tiny base model on disk and plain LoRA files for it."""

from __future__ import annotations

import socket
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_plain_lora(arch: str, path: Path, seed: int = 0, rank: int = 4, text_encoder: bool = False) -> Path:
    """A stock diffusers LoRA file for the tiny `arch` pipeline: PEFT LoRA on the UNet, non-zero B."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from moslora_diffusion.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline(arch)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.unet.add_adapter(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    kwargs = {"unet_lora_layers": get_peft_model_state_dict(pipe.unet)}
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    cls.save_lora_weights(str(path.parent), weight_name=path.name, **kwargs)
    return path


def make_tiny_setup(root: Path) -> dict[str, Path]:
    """A tiny SD1 base model folder plus an adapters folder with an SD1 LoRA and an SDXL one."""
    from moslora_diffusion.tiny import save_tiny_pipeline

    base = save_tiny_pipeline("sd1", root / "base")
    adapters = root / "adapters"
    write_plain_lora("sd1", adapters / "plain.safetensors", seed=0)
    write_plain_lora("sd1", adapters / "other.safetensors", seed=1)
    write_plain_lora("sdxl", adapters / "xl_only.safetensors", seed=2)
    return {"base": base, "adapters": adapters, "outputs": root / "outputs", "root": root}
