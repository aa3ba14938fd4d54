"""The pieces a run is set up from: accelerator, shared seed, optimizer, schedule, images, file metadata."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainConfigError
from . import data, dataset_config, models, run_folder
from .args import TrainConfig
from .batches import Source, TrainingImages

logger = logging.getLogger(__name__)


def make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    project = ProjectConfiguration(
        project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / cfg.logging_dir)
    )
    # `accelerate launch --multi_gpu` on a machine without GPUs starts N processes (torchrun) but
    # accelerate only joins them into one gloo group when told to use the CPU.
    no_gpu = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=no_gpu and multi_process,
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard" if cfg.report_to == "tensorboard" else None,
        project_config=project,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train_text_encoder)],
    )


def shared_seed(cfg: TrainConfig, accelerator: Any, resume_state: dict | None) -> int:
    if cfg.seed is not None:
        return cfg.seed
    if resume_state and resume_state.get("seed") is not None:
        return int(resume_state["seed"])
    from accelerate.utils import broadcast_object_list

    chosen = [random.SystemRandom().randrange(2**31)]
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return int(chosen[0])


def check_distributed_support(cfg: TrainConfig, accelerator: Any) -> None:
    """DeepSpeed takes one model per engine and does its own accumulation: say so instead of failing deep inside."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if cfg.train_text_encoder:
        raise TrainConfigError(
            "--train_text_encoder is not supported under DeepSpeed; use DDP (multi_gpu_ddp.yaml)"
        )
    if cfg.gradient_accumulation_steps != 1:
        raise TrainConfigError(
            "under DeepSpeed set gradient_accumulation_steps in the DeepSpeed config, not the flag"
        )
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = cfg.train_batch_size


def make_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, max_steps: int) -> Any:
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=max_steps,
        num_cycles=cfg.lr_num_cycles,
        power=cfg.lr_power,
    )


def enable_gradient_checkpointing(cfg: TrainConfig, comps: models.Components) -> None:
    if not cfg.gradient_checkpointing:
        return
    comps.unet.enable_gradient_checkpointing()
    if cfg.train_text_encoder:
        for te in comps.text_encoders:
            kwargs = {"use_reentrant": False}
            if hasattr(te, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
                te.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_compile_support(cfg: TrainConfig, device: Any) -> None:
    """``--compile`` runs on CUDA only. On CPU, inductor's UNet was never faster here and its gradients
    differed from eager mode's by about 25 % (``benchmarks/bench_compile.py``, docs/benchmarks.md): refused
    before any model loads, rather than training a different adapter slowly."""
    if cfg.compile and getattr(device, "type", str(device)) != "cuda":
        raise TrainConfigError(
            f"--compile needs a CUDA device (this run is on {device}): on CPU torch.compile was slower to start, "
            "no faster per step, and its gradients differed from eager mode's (docs/benchmarks.md)"
        )


def compile_unet(cfg: TrainConfig, comps: models.Components) -> None:
    """``--compile``: compile the UNet's forward in place (``nn.Module.compile``: names and state dict keys
    stay as they are, so adapters, checkpoints and exports see the same model)."""
    if cfg.compile:
        comps.unet.compile()


def decode_image(path: Path, caption: str, subset: dataset_config.Subset | None = None) -> Source:
    """The one decode of a training image (preflight only checked its header)."""
    try:
        image = data.load_image(path)
    except Exception as exc:  # PIL raises many types for broken pixel data
        raise TrainConfigError(f"{path}: the image cannot be decoded ({type(exc).__name__}: {exc})") from None
    if subset is None:
        return Source(image, caption)
    return Source(image, caption, subset.flip, subset.center_crop, subset.captions)


def load_sources(cfg: TrainConfig) -> TrainingImages:
    """Every subset's images, decoded once, and the slots of an epoch (each image ``num_repeats`` times)."""
    plan = dataset_config.data_plan(cfg)
    out = TrainingImages([], [], [], [])
    for subset in plan.subsets:
        found = dataset_config.subset_images(plan, subset)
        sources = out.classes if subset.is_reg else out.instances
        slots = out.class_slots if subset.is_reg else out.instance_slots
        first = len(sources)
        sources.extend(decode_image(p, c, subset) for p, c in zip(found.paths, found.captions))
        # tiled, as the stream position modulo the image count always was: [a, b, c, a, b, c, ...]
        slots.extend(first + i for _ in range(subset.repeats) for i in range(len(found.paths)))
    return out


def training_metadata(cfg: TrainConfig, steps: int, final_loss: float | None, seed: int) -> dict[str, Any]:
    keep = {
        k: v for k, v in cfg.to_dict().items() if v is not None and k not in ("output_dir", "logging_dir")
    }
    return {
        **keep,
        "seed": seed,
        "steps_done": steps,
        "final_loss": final_loss,
        "script": "train_dreambooth_moslora",
    }


def base_model_metadata(cfg: TrainConfig, comps: models.Components) -> dict[str, Any]:
    """The native file's `base_model`: architecture, name, UNet layout (formats.base_model_info) and more."""
    from types import SimpleNamespace

    from .. import base_models
    from ..formats import base_model_info

    unet = getattr(comps.unet, "module", comps.unet)
    name = cfg.pretrained_model_name_or_path
    single_file = base_models.is_single_file(name)
    info = base_model_info(
        SimpleNamespace(unet=unet),
        name_or_path=Path(name).name if single_file else name,
        hash=f"sha256:{base_models.file_sha256(name)}" if single_file else None,
        architecture=comps.arch,
    )
    extra = {
        "revision": cfg.revision,
        "variant": cfg.variant,
        "vae": cfg.pretrained_vae_model_name_or_path,
        "prediction_type": comps.prediction_type,
        "resolved_path": run_folder.resolved_path(name),
        "single_file": single_file or None,
        "config": run_folder.resolved_path(cfg.config) if cfg.config else None,
    }
    return {**info, **{k: v for k, v in extra.items() if v is not None}}
