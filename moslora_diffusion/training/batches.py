"""A run's state in memory and the loss of one micro-batch: data order, augmentation, caches, conditioning."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.profiler import record_function

from . import buckets, data, losses, models
from .args import TrainConfig
from .dataset_config import CaptionAugment

logger = logging.getLogger(__name__)

# The phases of a training step, as `torch.profiler` sees them (benchmarks/bench_profile.py reads these).
PHASE_DATA, PHASE_FORWARD, PHASE_LOSS = "step: data", "step: UNet forward", "step: loss"
PHASE_BACKWARD, PHASE_OPTIMIZER, PHASE_CHECKS = "step: backward", "step: optimizer", "step: checks"
PHASES = (PHASE_DATA, PHASE_FORWARD, PHASE_LOSS, PHASE_BACKWARD, PHASE_OPTIMIZER, PHASE_CHECKS)

Item = tuple[str, int, int, tuple[int, int]]  # (kind, source index, stream position, (w, h) trained at)


@dataclass
class Source:
    """One training image (instance or class) in memory, with its caption and its subset's augmentation
    (`None`: the run's `--random_flip` / `--center_crop`)."""

    image: Image.Image
    caption: str
    flip: bool | None = None
    center_crop: bool | None = None
    captions: CaptionAugment = field(default_factory=CaptionAugment)


@dataclass
class TrainingImages:
    """The decoded images of a run and an epoch's slots: indices into them, each image ``num_repeats`` times."""

    instances: list[Source]
    instance_slots: list[int]
    classes: list[Source]
    class_slots: list[int]


@dataclass
class RunState:
    """Everything the step function needs; built once by `run_training`."""

    cfg: TrainConfig
    accelerator: Any
    comps: models.Components
    resolution: int
    seed: int
    instances: list[Source]
    classes: list[Source]
    order: data.SampleOrder | buckets.BucketOrder
    noise_generator: torch.Generator
    unet: torch.nn.Module  # possibly DDP-wrapped
    text_encoders: list[torch.nn.Module]  # wrapped where trained
    bucket_of: list[tuple[int, int]] | None = None  # with --bucket: (w, h) of each instance image
    instance_slots: list[int] | None = None  # an epoch: indices into `instances` (default: each once)
    class_slots: list[int] | None = None  # likewise into `classes`
    latent_cache: (
        dict[tuple[str, int, tuple[int, int]], tuple[torch.Tensor, torch.Tensor, data.Example]] | None
    ) = None
    text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def _source(run: RunState, kind: str, index: int) -> Source:
    return (run.instances if kind == "instance" else run.classes)[index]


def flips(run: RunState, src: Source) -> bool:
    return run.cfg.random_flip if src.flip is None else src.flip


def crops_centre(run: RunState, src: Source) -> bool:
    return run.cfg.center_crop if src.center_crop is None else src.center_crop


def _example(run: RunState, kind: str, index: int, position: int, size: tuple[int, int]) -> data.Example:
    src = _source(run, kind, index)
    gen = data.augmentation_generator(run.seed, position, salt=0 if kind == "instance" else 1)
    return data.preprocess(src.image, src.caption, size, crops_centre(run, src), flips(run, src), gen)


def _captions(run: RunState, items: list[Item], examples: list[data.Example]) -> list[str]:
    """The captions as this step sees them: a subset's caption shuffle / dropout drawn from (seed, position)."""
    out = []
    for (kind, idx, pos, _), example in zip(items, examples):
        augment = _source(run, kind, idx).captions
        if augment.active:
            gen = data.augmentation_generator(run.seed, pos, salt=2 if kind == "instance" else 3)
            out.append(augment.apply(example.caption, gen))
        else:
            out.append(example.caption)
    return out


def latent_stats(run: RunState, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vae = run.comps.vae
    with torch.no_grad():
        dist = vae.encode(pixels.to(run.device, dtype=vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def _batch_items(run: RunState, micro_batch: int) -> list[Item]:
    """This process's examples of a micro-batch: instances first, then classes (at the instances' size:
    with buckets, class images are cropped to the bucket of the batch)."""
    drawn = run.order.items(micro_batch, run.accelerator.process_index)
    slots = run.instance_slots or range(len(run.instances))
    indices = [slots[i % len(slots)] for i, _ in drawn]
    sizes = [run.bucket_of[i] if run.bucket_of else (run.resolution, run.resolution) for i in indices]
    items: list[Item] = [("instance", i, p, size) for i, (_, p), size in zip(indices, drawn, sizes)]
    if run.classes:
        class_slots = run.class_slots or range(len(run.classes))
        items += [("class", class_slots[p % len(class_slots)], p, sizes[0]) for _, p in drawn]
    return items


def _latents_and_meta(run: RunState, items: list[Item]) -> tuple[torch.Tensor, list[data.Example]]:
    """Sampled, scaled VAE latents of the items (from the cache when there is one)."""
    if run.latent_cache is not None:
        entries = [_cached_latent(run, kind, idx, size) for kind, idx, _, size in items]
        mean = torch.cat([e[0] for e in entries])
        std = torch.cat([e[1] for e in entries])
        examples = [e[2] for e in entries]
    else:
        examples = [_example(run, kind, idx, pos, size) for kind, idx, pos, size in items]
        mean, std = latent_stats(run, torch.stack([e.pixels for e in examples]))
    eps = torch.randn(mean.shape, generator=run.noise_generator, device=run.noise_generator.device)
    latents = mean + std * eps.to(mean)
    vae_cfg = run.comps.vae.config
    if getattr(vae_cfg, "shift_factor", None) is not None:
        latents = latents - vae_cfg.shift_factor
    return latents * vae_cfg.scaling_factor, examples


def _cached_latent(
    run: RunState, kind: str, idx: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, data.Example]:
    """An image's latent distribution at a size, encoded on first use (one image at a time, outside
    autocast) and kept."""
    key = (kind, idx, size)
    if key not in run.latent_cache:
        ex = _example(run, kind, idx, 0, size)
        with torch.autocast(device_type=run.device.type, enabled=False):
            mean, std = latent_stats(run, ex.pixels[None])
        run.latent_cache[key] = (mean, std, ex)
    return run.latent_cache[key]


def _cached_text(run: RunState, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A caption's embeddings, encoded on first use with the frozen text encoders and kept."""
    if caption not in run.text_cache:
        ids = models.tokenize(run.comps.tokenizers, [caption])
        with torch.no_grad():
            run.text_cache[caption] = models.encode_tokens(run.comps.arch, run.comps.text_encoders, ids)
    return run.text_cache[caption]


def _conditioning(run: RunState, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if run.text_cache is not None:
        entries = [_cached_text(run, c) for c in captions]
        embeds = torch.cat([e[0] for e in entries])
        pooled = [e[1] for e in entries]
        return embeds, (torch.cat(pooled) if pooled[0] is not None else None)
    ids = models.tokenize(run.comps.tokenizers, captions)
    return models.encode_tokens(run.comps.arch, run.text_encoders, ids)


def micro_batch_loss(run: RunState, micro_batch: int) -> torch.Tensor:
    """The DreamBooth loss of one micro-batch on this process (phases labelled for `torch.profiler`)."""
    cfg, comps = run.cfg, run.comps
    with record_function(PHASE_DATA):
        items = _batch_items(run, micro_batch)
        latents, examples = _latents_and_meta(run, items)
        sched = comps.noise_scheduler
        noise = losses.sample_noise(latents, run.noise_generator, cfg.noise_offset)
        timesteps = losses.sample_timesteps(
            latents.shape[0], sched.config.num_train_timesteps, run.noise_generator
        )
        timesteps = timesteps.to(latents.device)
        noisy = sched.add_noise(latents, noise, timesteps)
        embeds, pooled = _conditioning(run, _captions(run, items, examples))
        added = None
        if comps.is_sdxl:
            time_ids = models.sdxl_time_ids(
                [e.original_size for e in examples],
                [e.crop_top_left for e in examples],
                [e.target_size for e in examples],
            )
            added = {"text_embeds": pooled, "time_ids": time_ids.to(run.device, dtype=pooled.dtype)}
    with record_function(PHASE_FORWARD):
        pred = run.unet(
            noisy, timesteps, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False
        )[0]
    with record_function(PHASE_LOSS):
        target = losses.prediction_target(sched, comps.prediction_type, latents, noise, timesteps)
        per_example = losses.per_example_mse(pred, target)
        if cfg.snr_gamma:
            per_example = per_example * losses.min_snr_weights(
                sched.alphas_cumprod, timesteps, cfg.snr_gamma, comps.prediction_type
            ).to(per_example)
        n_inst = sum(1 for kind, *_ in items if kind == "instance")
        loss, _ = losses.dreambooth_loss(per_example, n_inst, cfg.prior_loss_weight)
    return loss


def enable_caches(run: RunState) -> None:
    """Turn on the latent cache (no random augmentation) and the text cache (frozen text encoders).

    Both fill lazily, on first use, so nothing is encoded before the first step needs it; the values are the
    same whenever they are computed, so a resumed run sees exactly what an uninterrupted one saw.
    """
    cfg = run.cfg
    square = (run.resolution, run.resolution)
    sizes = sorted(set(run.bucket_of)) if run.bucket_of else [square]
    augment = (
        any(flips(run, s) for s in [*run.instances, *run.classes])
        or any(
            data.crop_is_random(
                s.image.size, crops_centre(run, s), run.bucket_of[i] if run.bucket_of else square
            )
            for i, s in enumerate(run.instances)
        )
        or any(
            data.crop_is_random(s.image.size, crops_centre(run, s), size)
            for s in run.classes
            for size in sizes
        )
    )
    shuffled = any(s.captions.shuffle for s in [*run.instances, *run.classes])  # captions without end
    run.latent_cache = None if augment else {}
    run.text_cache = None if (cfg.train_text_encoder or shuffled) else {}
    logger.info(
        "caches: VAE latents %s, text embeddings %s",
        "off (random augmentation)" if augment else "on (filled on first use)",
        "off (text encoder trained or captions shuffled)"
        if run.text_cache is None
        else "on (filled on first use)",
    )
