"""What a run trains on: subsets of images with their captions and augmentations, from kohya-ss's dataset TOML
(``--dataset_config``) or from the command-line flags (the one-dataset case of the same structure).

The TOML schema is kohya-ss/sd-scripts' (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``), with
the precedence general < dataset < subset. Every key is either supported as kohya defines it or refused by
name with the file: never ignored. Subsets with ``is_reg = true`` are the regularisation (class) images of
prior preservation; the others are the concepts, each with its own ``class_tokens`` (the caption of images
without a caption file) and ``num_repeats``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from ..errors import TrainConfigError
from .args import TrainConfig

__all__ = [
    "CaptionAugment",
    "DataPlan",
    "Subset",
    "data_plan",
    "read_dataset_config",
    "with_dataset_settings",
]

# command-line data flags a dataset file replaces (given together, they are refused)
_REPLACED_FLAGS = ("instance_data_dir", "instance_prompt", "class_data_dir", "class_prompt", "class_prompts_file",
                   "with_prior_preservation", "repeats", "random_flip", "center_crop")  # fmt: skip

# subset keys: key -> (type check, TOML type name)
_SUBSET_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "image_dir": (str, "a string"),
    "class_tokens": (str, "a string"),
    "num_repeats": (int, "an integer"),
    "is_reg": (bool, "true or false"),
    "caption_extension": (str, "a string"),
    "shuffle_caption": (bool, "true or false"),
    "keep_tokens": (int, "an integer"),
    "caption_dropout_rate": ((int, float), "a number"),
    "flip_aug": (bool, "true or false"),
    "color_aug": (bool, "true or false"),
    "random_crop": (bool, "true or false"),
}
# dataset keys and the training flag each one sets
_DATASET_KEYS: dict[str, str] = {
    "resolution": "resolution",
    "batch_size": "train_batch_size",
    "enable_bucket": "bucket",
    "min_bucket_reso": "min_bucket_side",
    "max_bucket_reso": "max_bucket_side",
    "bucket_reso_steps": "bucket_step",
    "bucket_no_upscale": "bucket_no_upscale",
}
KOHYA_CAPTION_EXTENSION = ".caption"  # kohya-ss's default for dataset files
CLI_CAPTION_EXTENSION = ".txt"


@dataclass(frozen=True)
class CaptionAugment:
    """kohya-ss's caption augmentations: shuffle the comma-separated tags after the first ``keep_tokens``;
    drop the whole caption with probability ``dropout_rate``."""

    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0

    @property
    def active(self) -> bool:
        return self.shuffle or self.dropout_rate > 0

    def apply(self, caption: str, generator: Any) -> str:
        """The caption as one training step sees it (``generator``: seeded by the step's position)."""
        import torch

        if self.dropout_rate > 0 and float(torch.rand((), generator=generator)) < self.dropout_rate:
            return ""
        if not self.shuffle:
            return caption
        tags = [t.strip() for t in caption.split(",")]
        kept, rest = tags[: self.keep_tokens], tags[self.keep_tokens :]
        order = torch.randperm(len(rest), generator=generator).tolist()
        return ", ".join(kept + [rest[i] for i in order])


@dataclass(frozen=True)
class Subset:
    """A folder of images trained with one caption default, repeat count and augmentation."""

    image_dir: str
    caption: str | None  # for images without a caption file (class_tokens / --instance_prompt)
    repeats: int = 1
    is_reg: bool = False
    caption_extension: str = CLI_CAPTION_EXTENSION
    flip: bool = False
    center_crop: bool = False
    captions: CaptionAugment = CaptionAugment()
    max_images: int | None = None  # --num_class_images for the command line's class folder


@dataclass(frozen=True)
class DataPlan:
    """The subsets of a run and the training flags its dataset file sets (``{flag: value}``)."""

    subsets: tuple[Subset, ...]
    settings: dict[str, Any]
    source: str | None  # the dataset file, or None for the command line

    @property
    def instance_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if not s.is_reg]

    @property
    def reg_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if s.is_reg]

    def describe(self) -> str:
        """A digest of the subsets' settings (file contents are digested apart, in run_folder)."""
        text = json.dumps([dataclasses.asdict(s) for s in self.subsets], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def data_plan(cfg: TrainConfig) -> DataPlan:
    """The run's data: the dataset file's, or the command line's (instance folder, and the class folder with
    --with_prior_preservation)."""
    if cfg.dataset_config:
        return read_dataset_config(cfg.dataset_config)
    subsets = [Subset(cfg.instance_data_dir or "", cfg.instance_prompt, cfg.repeats, flip=cfg.random_flip,
                      center_crop=cfg.center_crop)]  # fmt: skip
    if cfg.with_prior_preservation:
        subsets.append(Subset(cfg.class_data_dir or "", cfg.class_prompt, 1, True, flip=cfg.random_flip,
                              center_crop=cfg.center_crop, max_images=cfg.num_class_images))  # fmt: skip
    return DataPlan(tuple(subsets), {}, None)


def with_dataset_settings(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the dataset file's dataset-level settings (resolution, batch size, buckets) filled in; the
    command line's data flags next to a dataset file, or a flag that disagrees with the file, are refused."""
    if not cfg.dataset_config:
        return cfg
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for flag in _REPLACED_FLAGS:
        if getattr(cfg, flag) != defaults[flag]:
            raise TrainConfigError(
                f"--{flag} and --dataset_config both describe the data: drop --{flag} (the dataset file's subsets "
                "set images, captions, repeats, augmentation and regularisation images)"
            )
    plan = read_dataset_config(cfg.dataset_config)
    for flag, value in plan.settings.items():
        given = getattr(cfg, flag)
        if given != defaults[flag] and given != value:
            raise TrainConfigError(
                f"--{flag} {given} disagrees with --dataset_config {cfg.dataset_config} ({value})"
            )
    return dataclasses.replace(cfg, **plan.settings)


def subset_images(plan: DataPlan, subset: Subset) -> Any:
    """A subset's readable images and their captions (`data.ImageSet`); `TrainConfigError` when a concept has
    none usable. The command line's class folder keeps its first ``--num_class_images`` (generated before)."""
    from . import data

    if plan.source is None and subset.is_reg:
        found = data.scan_images(subset.image_dir, subset.caption)
        kept = list(zip(found.paths, found.captions))[: subset.max_images]
        uncaptioned = [p.name for p, c in kept if not c]
        if uncaptioned:
            raise TrainConfigError(
                f"--class_data_dir: no caption for {', '.join(uncaptioned[:5])} (no .txt beside it and no "
                "--class_prompt)"
            )
        if not kept:
            raise TrainConfigError(f"no readable class images in {subset.image_dir}")
        return data.ImageSet([p for p, _ in kept], [c for _, c in kept])
    if plan.source is None:
        return data.check_instance_data(subset.image_dir, subset.caption)
    n = plan.subsets.index(subset) + 1
    where = f"--dataset_config {plan.source}: subset #{n} image_dir"
    return data.check_instance_data(
        subset.image_dir, subset.caption, caption_extension=subset.caption_extension, where=where,
        no_caption=f"{where}: no {subset.caption_extension} caption file and no class_tokens",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- the file


def read_dataset_config(path: str | Path) -> DataPlan:
    """Parse and check a kohya-ss dataset TOML; raise `TrainConfigError` naming the file, the table and the key."""
    path = Path(path)
    where = f"--dataset_config {path}"
    if not path.is_file():
        raise TrainConfigError(f"{where}: no such file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - {"general", "datasets"})
    if unknown:
        raise TrainConfigError(
            f"{where}: top-level key '{unknown[0]}' is not supported (only [general], [[datasets]])"
        )
    general = _table(doc.get("general", {}), where, "[general]")
    _check_keys(general, set(_SUBSET_KEYS) | set(_DATASET_KEYS), where, "[general]")
    datasets = doc.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise TrainConfigError(f"{where}: no [[datasets]] table")
    subsets: list[Subset] = []
    settings: dict[str, Any] | None = None
    for n, raw in enumerate(datasets, start=1):
        dataset = _table(raw, where, f"[[datasets]] #{n}")
        _check_keys(
            dataset, set(_SUBSET_KEYS) | set(_DATASET_KEYS) | {"subsets"}, where, f"[[datasets]] #{n}"
        )
        merged = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}}
        these = _dataset_settings(merged, where, f"[[datasets]] #{n}")
        if settings is not None and these != settings:
            differing = sorted(k for k in set(these) | set(settings) if these.get(k) != settings.get(k))
            raise TrainConfigError(
                f"{where}: [[datasets]] #{n} differs from #1 in {differing[0]!r}; one run trains at one resolution, "
                "batch size and bucket setting here: put the subsets into one dataset (enable_bucket mixes sizes)"
            )
        settings = these
        raw_subsets = dataset.get("subsets")
        if not isinstance(raw_subsets, list) or not raw_subsets:
            raise TrainConfigError(f"{where}: [[datasets]] #{n} has no [[datasets.subsets]]")
        for m, sub in enumerate(raw_subsets, start=1):
            label = f"[[datasets]] #{n}, [[datasets.subsets]] #{m}"
            sub = _table(sub, where, label)
            _check_keys(sub, set(_SUBSET_KEYS), where, label)
            values = {k: v for k, v in merged.items() if k in _SUBSET_KEYS} | sub
            subsets.append(_subset(values, where, label))
    if not any(not s.is_reg for s in subsets):
        raise TrainConfigError(
            f"{where}: every subset is is_reg = true; at least one must hold the concept's images"
        )
    return DataPlan(tuple(subsets), settings or {}, str(path))


def _table(value: Any, where: str, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TrainConfigError(f"{where}: {label} must be a table")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, label: str) -> None:
    for key in table:
        if key not in allowed:
            raise TrainConfigError(f"{where}: {label}: key '{key}' is not supported")


def _typed(values: dict[str, Any], key: str, where: str, label: str) -> Any:
    value = values[key]
    kind, name = _SUBSET_KEYS[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise TrainConfigError(f"{where}: {label}: '{key}' must be {name}; got {value!r}")
    return value


def _subset(values: dict[str, Any], where: str, label: str) -> Subset:
    for key in values:
        _typed(values, key, where, label)
    if "image_dir" not in values:
        raise TrainConfigError(f"{where}: {label}: 'image_dir' is required")
    if values.get("color_aug"):
        raise TrainConfigError(
            f"{where}: {label}: 'color_aug = true' is not supported (it changes the subject's colours)"
        )
    repeats = values.get("num_repeats", 1)
    keep = values.get("keep_tokens", 0)
    rate = float(values.get("caption_dropout_rate", 0.0))
    if not 1 <= repeats <= 10_000:
        raise TrainConfigError(f"{where}: {label}: 'num_repeats' must be between 1 and 10000; got {repeats}")
    if keep < 0:
        raise TrainConfigError(f"{where}: {label}: 'keep_tokens' must be 0 or more; got {keep}")
    if not 0.0 <= rate <= 1.0:
        raise TrainConfigError(
            f"{where}: {label}: 'caption_dropout_rate' must be between 0 and 1; got {rate}"
        )
    folder = Path(values["image_dir"]).expanduser()
    folder = folder if folder.is_absolute() else (Path.cwd() / folder)  # as kohya: from where the run starts
    extension = values.get("caption_extension", KOHYA_CAPTION_EXTENSION)
    if not extension.startswith("."):
        extension = "." + extension
    return Subset(
        str(folder),
        values.get("class_tokens"),
        repeats,
        values.get("is_reg", False),
        extension,
        flip=values.get("flip_aug", False),
        center_crop=not values.get("random_crop", False),
        captions=CaptionAugment(values.get("shuffle_caption", False), keep, rate),
    )


def _dataset_settings(values: dict[str, Any], where: str, label: str) -> dict[str, Any]:
    """The training flags a dataset's keys set: ``{flag: value}``."""
    out: dict[str, Any] = {}
    for key, flag in _DATASET_KEYS.items():
        if key not in values:
            continue
        value = values[key]
        if key == "resolution":
            if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
                value = value[0]
            if isinstance(value, str) and "," in value:
                parts = [p.strip() for p in value.split(",")]
                value = (
                    int(parts[0])
                    if len(parts) == 2 and parts[0] == parts[1] and parts[0].isdigit()
                    else value
                )
            if isinstance(value, bool) or not isinstance(value, int):
                raise TrainConfigError(
                    f"{where}: {label}: 'resolution' must be one side or a square [side, side] (non-square "
                    f"training sizes come from enable_bucket); got {value!r}"
                )
        elif key in ("enable_bucket", "bucket_no_upscale"):
            if not isinstance(value, bool):
                raise TrainConfigError(f"{where}: {label}: '{key}' must be true or false; got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where}: {label}: '{key}' must be an integer; got {value!r}")
        out[flag] = value
    return out
