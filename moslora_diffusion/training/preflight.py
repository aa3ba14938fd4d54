"""Preflight: the checks on files, folders and data that run before any model is loaded.

`validate_config(cfg)` is the one call: the settings (`args.check_settings`), the base model's location,
the instance / class data and the output folder. It never changes `cfg`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import base_models
from ..errors import BaseModelError, TrainConfigError
from .args import TrainConfig, check_settings
from .dataset_config import data_plan, subset_images, with_dataset_settings
from .run_folder import check_output_dir

__all__ = ["validate_config", "check_model_source", "check_single_file"]


def _looks_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or name.count("/") != 1


def check_model_source(cfg: TrainConfig) -> None:
    """A local base model (or VAE) must exist: a diffusers pipeline folder or a single-file checkpoint.

    A single file's header is read (architecture, prediction type, pickles refused) and its config folder
    checked; `--config` and `--architecture` are refused for anything else.
    """
    for flag in ("pretrained_model_name_or_path", "pretrained_vae_model_name_or_path"):
        name = getattr(cfg, flag)
        if not name or not _looks_local(name):
            continue
        p = Path(name).expanduser()
        if flag == "pretrained_model_name_or_path" and base_models.is_single_file(name):
            check_single_file(cfg)
            continue
        if not p.exists():
            raise TrainConfigError(f"--{flag}: {name} does not exist")
        if flag == "pretrained_model_name_or_path" and not (p / "model_index.json").is_file():
            raise TrainConfigError(
                f"--{flag}: {name} has no model_index.json (neither a diffusers pipeline folder nor a "
                "single-file .safetensors checkpoint)"
            )
    if not base_models.is_single_file(cfg.pretrained_model_name_or_path):
        for flag in ("config", "architecture"):
            if getattr(cfg, flag) is not None:
                raise TrainConfigError(
                    f"--{flag} is for single-file checkpoints; {cfg.pretrained_model_name_or_path} is a "
                    "diffusers model, whose configs say everything"
                )


def check_single_file(cfg: TrainConfig) -> base_models.Checkpoint:
    """The single-file base model's header and config folder, as `TrainConfigError`s naming the flag."""
    for flag in ("variant", "revision"):  # hub-folder options: a single file has neither
        if getattr(cfg, flag) is not None:
            raise TrainConfigError(
                f"--{flag} is for diffusers folders and hub ids; {cfg.pretrained_model_name_or_path} is a "
                "single file"
            )
    try:
        found = base_models.inspect_checkpoint(
            cfg.pretrained_model_name_or_path, cfg.architecture, cfg.prediction_type
        )
    except BaseModelError as exc:
        raise TrainConfigError(f"--pretrained_model_name_or_path: {exc}") from None
    try:
        base_models.check_config_folder(found, cfg.config)
    except BaseModelError as exc:
        raise TrainConfigError(str(exc)) from None
    return found


def check_class_data_dir(cfg: TrainConfig) -> None:
    if (
        cfg.with_prior_preservation
        and Path(cfg.class_data_dir).exists()
        and not Path(cfg.class_data_dir).is_dir()
    ):
        raise TrainConfigError(f"--class_data_dir: {cfg.class_data_dir} is not a folder")
    if cfg.with_prior_preservation and cfg.class_prompts_file:
        from .prior import read_prompts_file

        read_prompts_file(cfg.class_prompts_file)


def validate_config(cfg: TrainConfig) -> None:
    """Check every setting and input that can be checked without loading a model; never changes `cfg`.

    Raises `TrainConfigError` naming the offending flag, file or value. Unreadable images are reported as
    warnings and skipped; no image left is an error.
    """
    cfg = with_dataset_settings(cfg)  # a copy with the dataset file's settings; refuses conflicting flags
    check_settings(cfg)
    check_model_source(cfg)
    plan = data_plan(cfg)
    for subset in plan.subsets:
        if not (subset.is_reg and plan.source is None):  # the command line's class images may be generated
            subset_images(plan, subset)
    check_class_data_dir(cfg)
    if cfg.bucket and cfg.resolution:
        from .buckets import buckets_for

        buckets_for(cfg, [], cfg.resolution)
    check_output_dir(cfg)
