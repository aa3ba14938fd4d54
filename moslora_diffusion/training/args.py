"""Training settings: the `TrainConfig` dataclass, its command line (diffusers' flag names) and checks.

Every field of `TrainConfig` is one `--flag` of `train_scripts/train_dreambooth_moslora.py`; booleans
are switches. `check_settings` checks the values; `preflight.validate_config` adds the file-system and
data checks, so bad input fails in seconds, before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..constants import ADAPTER_TYPES as ADAPTERS
from ..constants import ARCHITECTURES, DEFAULT_MIXER_INIT, MIXER_INITS, PREDICTION_TYPES
from ..errors import TrainConfigError
from ..targets import resolve_targets
from .stopping import DEFAULT_MAX_PROMPT_SHIFT, DEFAULT_MIN_IMPROVEMENT, DEFAULT_PATIENCE

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "lion", "adafactor", "adamw_schedulefree")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
REPORT_TO = ("none", "tensorboard")
# Optional optimizer packages: (module to import, pip name).
OPTIMIZER_PACKAGES = {
    "adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "prodigy": ("prodigyopt", "prodigyopt"),
    "lion": ("lion_pytorch", "lion-pytorch"),
    "adamw_schedulefree": ("schedulefree", "schedulefree"),
}


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """All settings of a DreamBooth run. Field names are the command-line flags (without `--`)."""

    # --- model
    pretrained_model_name_or_path: str | None = _f(
        None,
        "Base model: a local diffusers folder, a hub id, or a single-file .safetensors checkpoint (A1111 / "
        "model-site layout). Default: the bundled toy-world model.",
    )
    config: str | None = _f(
        None,
        "For a single-file checkpoint: a local diffusers-format folder of the same architecture whose configs "
        "and tokenizers to use (works offline; its weights are not read). Default: diffusers' own repository "
        "of the architecture, from the hub cache or the hub.",
    )
    architecture: str | None = _f(
        None, "Architecture of a single-file checkpoint, when its keys say otherwise.", ARCHITECTURES
    )
    prediction_type: str | None = _f(
        None,
        "What the base model predicts. Default: its scheduler config; for single files v_prediction for SD 2.x "
        "(use epsilon for SD 2.x base 512) and files marked v_pred, else epsilon.",
        PREDICTION_TYPES,
    )
    revision: str | None = _f(None, "Hub revision of the base model.")
    variant: str | None = _f(None, "Weight variant of the base model files, e.g. fp16.")
    pretrained_vae_model_name_or_path: str | None = _f(
        None, "A different VAE (e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16)."
    )
    # --- data
    dataset_config: str | None = _f(
        None,
        "A kohya-ss dataset TOML ([general], [[datasets]], [[datasets.subsets]]): several concepts, each with its "
        "class_tokens, num_repeats and regularisation subsets (is_reg), in one adapter. Replaces the data flags.",
    )
    instance_data_dir: str | None = _f(
        None, "Folder of subject images (png/jpg/webp). Default: the bundled toy-world subject."
    )
    instance_prompt: str | None = _f(
        None, "Prompt for the subject images, e.g. 'a photo of sks dog'. Captions beside images override it."
    )
    resolution: int | None = _f(
        None, "Training resolution (multiple of 8). Default: the UNet's native size (SD1 512, SDXL 1024)."
    )
    center_crop: bool = _f(False, "Crop the centre instead of a random crop.")
    random_flip: bool = _f(False, "Flip images horizontally at random.")
    repeats: int = _f(1, "How often each instance image appears per epoch.")
    bucket: bool = _f(
        False,
        "Aspect-ratio bucketing: each image keeps its aspect ratio in a bucket of about --resolution² pixels "
        "(sides multiples of --bucket_step); every batch comes from one bucket.",
    )
    bucket_step: int = _f(64, "Bucket sides are multiples of this (a multiple of 8).")
    min_bucket_side: int | None = _f(None, "Shortest bucket side. Default: half of --resolution.")
    max_bucket_side: int | None = _f(None, "Longest bucket side. Default: twice --resolution.")
    bucket_no_upscale: bool = _f(
        False, "With --bucket: never enlarge an image; small images get a bucket of their own size."
    )
    # --- prior preservation
    with_prior_preservation: bool = _f(False, "Add the prior-preservation loss on class images.")
    class_data_dir: str | None = _f(None, "Folder of class images; missing ones are generated there.")
    class_prompt: str | None = _f(None, "Prompt of the class images, e.g. 'a photo of a dog'.")
    class_prompts_file: str | None = _f(
        None,
        "A file of class prompts, one per line, used in turn to generate class images (a broad "
        "regularisation set); each image gets its prompt as a caption file. Overrides --class_prompt.",
    )
    num_class_images: int = _f(100, "How many class images to use (generated if fewer exist).")
    prior_loss_weight: float = _f(1.0, "Weight of the prior-preservation loss.")
    sample_batch_size: int = _f(4, "Batch size when generating class images.")
    class_inference_steps: int = _f(25, "Sampling steps when generating class images.")
    # --- adapter
    adapter: str = _f("moslora", "Adapter type: moslora (with mixer) or lora (plain PEFT LoRA).", ADAPTERS)
    rank: int = _f(4, "Adapter rank r.")
    lora_alpha: float | None = _f(None, "Adapter alpha (scale alpha/r). Default: equal to --rank.")
    lora_dropout: float = _f(0.0, "Dropout on the adapter input.")
    mixer_init: str = _f(
        DEFAULT_MIXER_INIT,
        "Initialisation of the MoSLoRA mixer: orthogonal (learns as fast as LoRA on the toy yardstick) or "
        "kaiming (the MoSLoRA reference code's; learns slower there).",
        MIXER_INITS,
    )
    use_rslora: bool = _f(False, "Rank-stabilised scale alpha/sqrt(r).")
    unet_targets: str = _f("attn", "UNet modules to adapt: attn, attn-mlp, all, or comma-separated names.")
    train_text_encoder: bool = _f(False, "Also adapt the text encoder(s) (both on SDXL).")
    text_encoder_targets: str = _f("attn", "Text-encoder modules to adapt: attn, attn-mlp, all or names.")
    text_encoder_lr: float | None = _f(
        None, "Learning rate of the text-encoder adapters. Default: --learning_rate."
    )
    loraplus_lr_ratio: float | None = _f(
        None,
        "LoRA+: the learning rate of the B (up) matrices over that of A, e.g. 16 (kohya's loraplus_lr_ratio). "
        "Default: 1 (off).",
    )
    loraplus_unet_lr_ratio: float | None = _f(
        None, "LoRA+ ratio of the UNet adapters. Default: --loraplus_lr_ratio."
    )
    loraplus_text_encoder_lr_ratio: float | None = _f(
        None, "LoRA+ ratio of the text-encoder adapters. Default: --loraplus_lr_ratio."
    )
    mixer_lr_ratio: float | None = _f(
        None, "The learning rate of MoSLoRA's mixers over that of A. Default: 1 (the same rate)."
    )
    # --- optimisation
    learning_rate: float = _f(1e-4, "Learning rate.")
    scale_lr: bool = _f(False, "Multiply the learning rate by batch size x accumulation x processes.")
    lr_scheduler: str = _f("constant", "Learning-rate schedule.", LR_SCHEDULERS)
    lr_warmup_steps: int = _f(0, "Warm-up steps of the schedule.")
    lr_num_cycles: int = _f(1, "Cycles of cosine_with_restarts.")
    lr_power: float = _f(1.0, "Power of the polynomial schedule.")
    train_batch_size: int = _f(1, "Batch size per process.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_train_steps: int | None = _f(None, "Optimizer steps; overrides --num_train_epochs.")
    num_train_epochs: int = _f(1, "Epochs, used when --max_train_steps is not given.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    optimizer: str = _f(
        "adamw",
        "Optimizer. adamw8bit needs bitsandbytes, prodigy prodigyopt, lion lion-pytorch, adamw_schedulefree "
        "schedulefree (with --lr_scheduler constant; --lr_warmup_steps becomes its own warm-up); adafactor is "
        "transformers' (fixed learning rate, no relative step).",
        OPTIMIZERS,
    )
    adam_beta1: float = _f(0.9, "Adam beta1.")
    adam_beta2: float = _f(0.999, "Adam beta2.")
    adam_weight_decay: float = _f(1e-4, "Weight decay.")
    adam_epsilon: float = _f(1e-8, "Adam epsilon.")
    snr_gamma: float | None = _f(None, "Min-SNR loss weighting gamma (5.0 is common); off by default.")
    noise_offset: float = _f(0.0, "Noise offset (0.05-0.1 helps very dark/bright images).")
    mixed_precision: str = _f(
        "no", "Precision of the frozen base model; adapter weights stay fp32.", MIXED_PRECISIONS
    )
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.")
    compile: bool = _f(
        False,
        "torch.compile the UNet (CUDA only; compiled on the first step; on CPU it is refused: docs/benchmarks.md).",
    )
    seed: int | None = _f(None, "Random seed (a run resumed with the same seed repeats exactly).")
    # --- checkpoints
    checkpointing_steps: int = _f(500, "Write a checkpoint every N steps (0 = only at the end).")
    checkpoints_total_limit: int | None = _f(None, "Keep at most this many checkpoints.")
    resume_from_checkpoint: str | None = _f(None, "'latest' or a checkpoint folder to resume from.")
    # --- validation
    validation_prompt: str | None = _f(None, "Prompt for sample images during training.")
    num_validation_images: int = _f(4, "Sample images per validation.")
    validation_steps: int = _f(100, "Validate every N steps (and at the end).")
    validation_inference_steps: int = _f(25, "Sampling steps of validation images.")
    validation_guidance_scale: float = _f(5.0, "Guidance scale of validation images.")
    merged_validation: bool = _f(
        True,
        "Sample validation images (and scores) with the adapters merged into the weights: faster, the same "
        "pictures up to rounding; the base weights are restored bit for bit after each validation.",
    )
    # --- learning signals and the stop (training/signals.py, training/stopping.py)
    signals: bool = _f(
        True,
        "At every --validation_steps, measure subject fit, binding and prior shift on fixed probes (a few "
        "UNet forwards, no sampling): signals.json, signals_curve.png, TensorBoard.",
    )
    signal_prompts: str | None = _f(
        None, "Ordinary prompts for the prior-shift signal, separated by '|'. Default: four generic prompts."
    )
    stop_when_learned: bool = _f(
        False,
        "Stop at the first validation where the subject fit has stopped improving (or the prior shift passes "
        "--stop_max_prompt_shift); moslora_weights.safetensors is then the best validation's adapter.",
    )
    stop_patience: int = _f(
        DEFAULT_PATIENCE, "With --stop_when_learned: validations without enough improvement before stopping."
    )
    stop_min_improvement: float = _f(
        DEFAULT_MIN_IMPROVEMENT,
        "With --stop_when_learned: the relative improvement of the subject fit that counts as progress.",
    )
    stop_max_prompt_shift: float = _f(
        DEFAULT_MAX_PROMPT_SHIFT,
        "With --stop_when_learned: stop once ordinary prompts' prediction moved this much (relative).",
    )
    # --- output
    output_dir: str = _f("moslora-dreambooth", "Where weights, checkpoints, samples and the model card go.")
    overwrite_output_dir: bool = _f(
        False, "Replace another run's checkpoints and adapter files in --output_dir (refused otherwise)."
    )
    export_kohya: bool = _f(False, "Also write a kohya-format file (A1111 / ComfyUI).")
    report_to: str = _f("none", "Logger for loss and images.", REPORT_TO)
    logging_dir: str = _f("logs", "TensorBoard folder, relative to --output_dir.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _field_type(f: dataclasses.Field) -> type:
    hint = _field_types()[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    return hint


def build_parser(defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The script's parser; ``defaults`` (field -> value) replace the generic defaults, flags still win.

    Abbreviated flags are refused, so that what a user typed is always the flag that takes effect.
    """
    parser = argparse.ArgumentParser(
        description="DreamBooth fine-tuning of Stable Diffusion 1.x/2.x and SDXL with MoSLoRA (or LoRA) adapters.",
        allow_abbrev=False,
    )
    for f in dataclasses.fields(TrainConfig):
        kind = _field_type(f)
        flag = "--" + f.name
        if kind is bool:  # --flag / --no-flag: a default set by an entry point can still be turned off
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"]
            )
        else:
            parser.add_argument(
                flag,
                type=kind,
                default=f.default,
                choices=f.metadata.get("choices"),
                help=f.metadata["help"],
            )
    if defaults:
        unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise TrainConfigError(f"unknown training defaults: {', '.join(unknown)}")
        parser.set_defaults(**defaults)
    return parser


def parse_args(argv: list[str] | None = None, defaults: Mapping[str, Any] | None = None) -> TrainConfig:
    """Parse flags (default: sys.argv[1:]) into a `TrainConfig`: flags over ``defaults`` over the generic ones.

    Entry points pass the toy world's defaults here (`moslora_diffusion.toyworld.training_defaults`);
    nothing later changes a parsed value. No checks beyond types: see `validate_config`.
    """
    ns = build_parser(defaults).parse_args(argv)
    return TrainConfig(**vars(ns))


# ----------------------------------------------------------------------------- setting checks (pure)


def _check_choices(cfg: TrainConfig) -> None:
    for f in dataclasses.fields(TrainConfig):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices and not (value is None and f.default is None):
            raise TrainConfigError(f"--{f.name} must be one of {', '.join(choices)}; got {value!r}")


# Allowed range of every numeric setting: (low, high, low excluded). Values outside, NaN and infinities are
# refused before any model loads; the upper bounds keep a typo from allocating tens of gigabytes.
NUMBER_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "resolution": (8, 8192, False),
    "repeats": (1, 10_000, False),
    "bucket_step": (8, 1024, False),
    "min_bucket_side": (8, 8192, False),
    "max_bucket_side": (8, 8192, False),
    "num_class_images": (1, 100_000, False),
    "prior_loss_weight": (0, 1e4, False),
    "sample_batch_size": (1, 256, False),
    "class_inference_steps": (1, 1000, False),
    "rank": (1, 4096, False),
    "lora_alpha": (0, 1e6, True),
    "lora_dropout": (0, 1, False),  # and below 1, checked apart
    "text_encoder_lr": (0, 10, True),
    "loraplus_lr_ratio": (0, 1e4, True),
    "loraplus_unet_lr_ratio": (0, 1e4, True),
    "loraplus_text_encoder_lr_ratio": (0, 1e4, True),
    "mixer_lr_ratio": (0, 1e4, True),
    "learning_rate": (0, 10, True),
    "lr_warmup_steps": (0, 10**8, False),
    "lr_num_cycles": (1, 1000, False),
    "lr_power": (0, 100, True),
    "train_batch_size": (1, 4096, False),
    "gradient_accumulation_steps": (1, 4096, False),
    "max_train_steps": (1, 10**8, False),
    "num_train_epochs": (1, 10**6, False),
    "max_grad_norm": (0, 1e6, False),
    "adam_beta1": (0, 1, False),  # and below 1
    "adam_beta2": (0, 1, False),  # and below 1
    "adam_weight_decay": (0, 10, False),
    "adam_epsilon": (0, 1, True),
    "snr_gamma": (0, 1e4, True),
    "noise_offset": (0, 10, False),
    "checkpointing_steps": (0, 10**8, False),
    "checkpoints_total_limit": (1, 10**6, False),
    "num_validation_images": (1, 64, False),
    "validation_steps": (1, 10**8, False),
    "validation_inference_steps": (1, 1000, False),
    "validation_guidance_scale": (0, 100, False),
    "stop_patience": (1, 10**6, False),
    "stop_min_improvement": (0, 1, False),
    "stop_max_prompt_shift": (0, 1e6, True),
}
_BELOW_ONE = ("lora_dropout", "adam_beta1", "adam_beta2")


def _check_numbers(cfg: TrainConfig) -> None:
    """Every numeric setting finite and inside `NUMBER_BOUNDS`."""
    for name, (low, high, low_open) in NUMBER_BOUNDS.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise TrainConfigError(f"--{name} must be a finite number; got {value}")
        too_low = value <= low if low_open else value < low
        too_high = value >= 1 if name in _BELOW_ONE else value > high
        if too_low or too_high:
            shown_high = "1 (excluded)" if name in _BELOW_ONE else f"{high:g}"
            shown_low = f"{low:g} (excluded)" if low_open else f"{low:g}"
            raise TrainConfigError(f"--{name} must be between {shown_low} and {shown_high}; got {value}")
    if cfg.resolution is not None and cfg.resolution % 8:
        raise TrainConfigError(f"--resolution must be a multiple of 8; got {cfg.resolution}")


def _check_buckets(cfg: TrainConfig) -> None:
    given = [f for f in ("min_bucket_side", "max_bucket_side") if getattr(cfg, f) is not None]
    if not cfg.bucket:
        if given or cfg.bucket_no_upscale:
            raise TrainConfigError(f"--{(given or ['bucket_no_upscale'])[0]} needs --bucket")
        return
    if cfg.bucket_step % 8:
        raise TrainConfigError(f"--bucket_step must be a multiple of 8; got {cfg.bucket_step}")
    for flag in given:
        if getattr(cfg, flag) % cfg.bucket_step:
            raise TrainConfigError(
                f"--{flag} must be a multiple of --bucket_step ({cfg.bucket_step}); got {getattr(cfg, flag)}"
            )
    if len(given) == 2 and cfg.min_bucket_side > cfg.max_bucket_side:
        raise TrainConfigError(
            f"--min_bucket_side ({cfg.min_bucket_side}) is larger than --max_bucket_side ({cfg.max_bucket_side})"
        )


def _check_targets(cfg: TrainConfig) -> None:
    try:
        resolve_targets(cfg.unet_targets, "unet")
        if cfg.train_text_encoder:
            resolve_targets(cfg.text_encoder_targets, "text_encoder")
    except ValueError as exc:
        raise TrainConfigError(f"--unet_targets / --text_encoder_targets: {exc}") from None


def _check_packages(cfg: TrainConfig) -> None:
    if cfg.optimizer in OPTIMIZER_PACKAGES:
        module, pip_name = OPTIMIZER_PACKAGES[cfg.optimizer]
        if importlib.util.find_spec(module) is None:
            raise TrainConfigError(
                f"--optimizer {cfg.optimizer} needs the package '{pip_name}': pip install {pip_name}"
            )
    if cfg.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise TrainConfigError(
            "--report_to tensorboard needs the package 'tensorboard': pip install tensorboard"
        )


def _check_optimizer_settings(cfg: TrainConfig) -> None:
    if cfg.optimizer == "adamw_schedulefree" and cfg.lr_scheduler != "constant":
        raise TrainConfigError(
            "--optimizer adamw_schedulefree replaces the schedule: use --lr_scheduler constant "
            f"(got {cfg.lr_scheduler}); --lr_warmup_steps sets its warm-up"
        )
    if cfg.mixer_lr_ratio is not None and cfg.adapter != "moslora":
        raise TrainConfigError(
            f"--mixer_lr_ratio needs --adapter moslora (a {cfg.adapter} adapter has no mixer)"
        )


def _check_signal_settings(cfg: TrainConfig) -> None:
    if cfg.stop_when_learned and not cfg.signals:
        raise TrainConfigError("--stop_when_learned needs the learning signals: drop --no-signals")
    if cfg.signal_prompts is not None and not [p for p in cfg.signal_prompts.split("|") if p.strip()]:
        raise TrainConfigError("--signal_prompts holds no prompt; separate prompts with '|'")


def _check_prior_settings(cfg: TrainConfig) -> None:
    if not cfg.with_prior_preservation:
        return
    if not cfg.class_prompt and not cfg.class_prompts_file:
        raise TrainConfigError("--with_prior_preservation needs --class_prompt or --class_prompts_file")
    if not cfg.class_data_dir:
        raise TrainConfigError("--with_prior_preservation needs --class_data_dir")


def check_settings(cfg: TrainConfig) -> None:
    """Every check on the settings themselves (no file is opened, nothing is changed)."""
    if not cfg.pretrained_model_name_or_path:
        raise TrainConfigError("--pretrained_model_name_or_path is required")
    _check_choices(cfg)
    _check_numbers(cfg)
    _check_targets(cfg)
    _check_packages(cfg)
    _check_optimizer_settings(cfg)
    _check_prior_settings(cfg)
    _check_signal_settings(cfg)
    _check_buckets(cfg)
