"""Prior preservation: make sure `--num_class_images` class images exist, generating the missing ones."""

from __future__ import annotations

import gc
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..durable import write_atomic, write_image
from ..errors import TrainConfigError
from .args import TrainConfig
from .data import list_image_files, scan_images

logger = logging.getLogger(__name__)


def missing_class_images(cfg: TrainConfig) -> int:
    """How many class images to generate: unreadable files (empty, truncated) do not count, and are named."""
    folder = Path(cfg.class_data_dir)
    if not folder.is_dir() or not list_image_files(folder):
        return cfg.num_class_images
    found = scan_images(folder, cfg.class_prompt)
    if found.unreadable:
        listing = "; ".join(f"{path.name} ({why})" for path, why in found.unreadable[:5])
        logger.warning(
            "%d unreadable class image(s) in %s are not used (new ones are made in their place): %s",
            len(found.unreadable), folder, listing,
        )  # fmt: skip
    return max(0, cfg.num_class_images - len(found))


def _class_image_pipeline(cfg: TrainConfig, arch: str, dtype: torch.dtype, device: torch.device) -> Any:
    from diffusers import AutoencoderKL

    from ..base_models import load_pipeline

    kwargs: dict[str, Any] = dict(revision=cfg.revision, variant=cfg.variant)
    if arch != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if cfg.pretrained_vae_model_name_or_path:
        kwargs["vae"] = AutoencoderKL.from_pretrained(cfg.pretrained_vae_model_name_or_path, dtype=dtype)
    pipe = load_pipeline(
        cfg.pretrained_model_name_or_path,
        config=cfg.config,
        architecture=cfg.architecture,
        prediction_type=cfg.prediction_type,
        dtype=dtype,
        **kwargs,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def class_prompts(cfg: TrainConfig) -> list[str]:
    """The prompts class images are generated from: the lines of --class_prompts_file, else --class_prompt."""
    if cfg.class_prompts_file:
        return read_prompts_file(cfg.class_prompts_file)
    return [cfg.class_prompt]


def read_prompts_file(path: str | Path) -> list[str]:
    """Non-empty lines of a prompts file (``#`` starts a comment line)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"--class_prompts_file: cannot read {path} ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise TrainConfigError(f"--class_prompts_file: {path} holds no prompt")
    return prompts


def generate_class_images(
    cfg: TrainConfig, arch: str, resolution: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> list[Path]:
    """Generate the missing class images with the base pipeline (tqdm progress); return the new files.

    Files are named `<prompts hash>-<index>.png`, image `i` drawn for prompt `i mod n` of `class_prompts`;
    with --class_prompts_file each image gets its prompt as a caption file beside it (`.txt`). Names already
    taken are skipped, so a re-run after an interruption only makes what is still missing.
    """
    missing = missing_class_images(cfg)
    if missing == 0:
        return []
    prompts = class_prompts(cfg)
    with_captions = bool(cfg.class_prompts_file)
    folder = Path(cfg.class_data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:8]
    names: list[Path] = []
    index = 0
    while len(names) < missing:
        candidate = folder / f"{tag}-{index:05d}.png"
        if not candidate.exists():
            names.append(candidate)
        index += 1
    logger.info("generating %d class images for %d prompt(s) into %s", missing, len(prompts), folder)
    pipe = _class_image_pipeline(cfg, arch, dtype, device)
    written = []
    seed = cfg.seed if cfg.seed is not None else 0
    with tqdm(total=missing, desc="class images", unit="img") as bar:
        for start in range(0, missing, cfg.sample_batch_size):
            batch = names[start : start + cfg.sample_batch_size]
            numbers = [int(p.stem.rsplit("-", 1)[1]) for p in batch]
            texts = [prompts[n % len(prompts)] for n in numbers]
            generators = [torch.Generator(device="cpu").manual_seed(seed * 100_003 + n) for n in numbers]
            images = pipe(
                texts,
                num_inference_steps=cfg.class_inference_steps,
                height=resolution,
                width=resolution,
                generator=generators,
            ).images
            for path, image, text in zip(batch, images, texts):
                if with_captions:  # the caption first: an image is never there without its caption
                    write_atomic(path.with_suffix(".txt"), text + "\n")
                write_image(path, image)
                written.append(path)
            bar.update(len(batch))
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return written
