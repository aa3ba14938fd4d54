"""The README.md model card written next to the adapter files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import architectures
from ..durable import write_atomic
from ..jsonio import text_safe
from .args import TrainConfig


def _rel(path: Path | None, root: Path) -> str | None:
    return None if path is None else Path(os.path.relpath(path, root)).as_posix()


def _load_base_lines(cfg: TrainConfig, arch: str) -> list[str]:
    """Python lines that open the base model the way it was given (folder / hub id, or single file)."""
    base = cfg.pretrained_model_name_or_path
    if Path(base).is_file():
        cls = architectures.spec(arch).pipeline_class
        config = f", config={cfg.config!r}" if cfg.config else ""
        return [
            f"from diffusers import {cls}",
            "",
            f'pipe = {cls}.from_single_file("{base}"{config}, dtype=torch.float16).to("cuda")',
        ]
    return [
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{base}", dtype=torch.float16).to("cuda")',
    ]


def _header_lines(cfg: TrainConfig, arch: str, steps_done: int, final_loss: float | None) -> list[str]:
    base = cfg.pretrained_model_name_or_path
    method = "MoSLoRA (LoRA with a trainable r×r mixer)" if cfg.adapter == "moslora" else "LoRA"
    return [
        "---",
        f"base_model: {base}",
        "library_name: diffusers",
        "tags: [stable-diffusion, text-to-image, dreambooth, lora"
        + (", moslora" if cfg.adapter == "moslora" else "")
        + "]",
        f"instance_prompt: {cfg.instance_prompt!r}" if cfg.instance_prompt else "instance_prompt: null",
        "---",
        "",
        f"# DreamBooth {cfg.adapter.upper() if cfg.adapter == 'lora' else 'MoSLoRA'} adapter",
        "",
        f"A {method} adapter of rank {cfg.rank} for `{base}` ({architectures.spec(arch).display_name}), trained with "
        f"moslora-diffusion for {steps_done} steps"
        + (f" (final loss {final_loss:.4f})." if final_loss is not None else "."),
        "",
    ]


def _figure_lines(cfg: TrainConfig, root: Path, sample_grid: Path | None, loss_curve: Path | None,
                  quality_curve: Path | None, signals_curve: Path | None = None) -> list[str]:  # fmt: skip
    lines: list[str] = []
    if sample_grid is not None:
        lines += [f"Samples for `{cfg.validation_prompt}`:", "", f"![samples]({_rel(sample_grid, root)})", ""]
    if loss_curve is not None:
        lines += [f"![loss curve]({_rel(loss_curve, root)})", ""]
    if quality_curve is not None:
        lines += [
            "Quality during training (% of images):",
            "",
            f"![quality curve]({_rel(quality_curve, root)})",
            "",
        ]
    if signals_curve is not None:
        lines += [
            "Learning signals during training (subject fit, binding, prior shift; see docs/training.md):",
            "",
            f"![learning signals]({_rel(signals_curve, root)})",
            "",
        ]
    return lines


def _settings_lines(cfg: TrainConfig, steps_done: int) -> list[str]:
    settings: list[tuple[str, Any]] = [
        ("instance prompt", cfg.instance_prompt),
        ("class prompt (prior preservation)", cfg.class_prompt if cfg.with_prior_preservation else None),
        ("resolution", cfg.resolution),
        ("adapter / rank / alpha", f"{cfg.adapter} / {cfg.rank} / {cfg.lora_alpha}"),
        ("mixer init", cfg.mixer_init if cfg.adapter == "moslora" else None),
        ("UNet targets", cfg.unet_targets),
        ("text encoder targets", cfg.text_encoder_targets if cfg.train_text_encoder else None),
        ("learning rate / schedule", f"{cfg.learning_rate} / {cfg.lr_scheduler}"),
        ("batch size x accumulation", f"{cfg.train_batch_size} x {cfg.gradient_accumulation_steps}"),
        ("steps", steps_done),
        ("mixed precision", cfg.mixed_precision),
        ("seed", cfg.seed),
    ]
    lines = ["## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in settings if v is not None]
    return lines + _subset_lines(cfg)


def _first_concept(cfg: TrainConfig) -> str | None:
    if not cfg.dataset_config:
        return None
    from .dataset_config import read_dataset_config

    return next(
        (s.caption for s in read_dataset_config(cfg.dataset_config).instance_subsets if s.caption), None
    )


def _subset_lines(cfg: TrainConfig) -> list[str]:
    """The dataset file's subsets (concepts and regularisation images), when the run had one."""
    if not cfg.dataset_config:
        return []
    from .dataset_config import read_dataset_config

    plan = read_dataset_config(cfg.dataset_config)
    lines = ["", f"Data from `{Path(cfg.dataset_config).name}`:", "", "| images | class tokens | repeats | kind |",
             "|---|---|---|---|"]  # fmt: skip
    for s in plan.subsets:
        kind = "regularisation" if s.is_reg else "concept"
        lines.append(f"| `{Path(s.image_dir).name}` | `{s.caption or ''}` | {s.repeats} | {kind} |")
    return lines


_FILE_DESCRIPTIONS = {
    "moslora": "native MoSLoRA file (A, mixer, B and metadata); resume, analyse or re-export it",
    "diffusers": "plain LoRA with the mixer folded in (B' = s·B·M); loads with stock diffusers",
    "kohya": "kohya-ss naming for AUTOMATIC1111 / ComfyUI",
}


def _usage_lines(cfg: TrainConfig, arch: str, files: dict[str, Path], root: Path) -> list[str]:
    prompt = cfg.validation_prompt or cfg.instance_prompt or _first_concept(cfg) or "<your prompt>"
    lines = ["", "## Files", ""]
    lines += [f"- `{_rel(path, root)}`: {_FILE_DESCRIPTIONS.get(kind, kind)}" for kind, path in files.items()]
    lines += ["", "## Use with diffusers", "", "```python", "import torch", *_load_base_lines(cfg, arch),
              f'pipe.load_lora_weights("{root.as_posix()}")  # pytorch_lora_weights.safetensors',
              f'image = pipe("{prompt}").images[0]', "```", ""]  # fmt: skip
    if "moslora" in files:
        lines += ["With moslora-diffusion installed, the native file loads the same way:", "", "```python",
                  "import moslora_diffusion  # adds pipe.load_moslora_weights", "",
                  f'pipe.load_moslora_weights("{root.as_posix()}")', "```", ""]  # fmt: skip
    kohya = files.get("kohya")
    lines += ["## Use with AUTOMATIC1111 / ComfyUI", ""]
    if kohya is not None:
        lines.append(
            f"Copy `{_rel(kohya, root)}` into `models/Lora` and add `<lora:{kohya.stem}:1>` to the prompt "
            "(A1111), or load it with a LoraLoader node (ComfyUI)."
        )
    else:
        lines.append(
            "Export a kohya-format file first: `moslora-diffusion export "
            f"{root.as_posix()} --format kohya --output lora_kohya.safetensors` (or train with `--export_kohya`), "
            "then copy it into `models/Lora`."
            if cfg.adapter == "moslora"
            else "Train with `--export_kohya` to get a kohya-format file, then copy it into `models/Lora`."
        )
    return [*lines, ""]


def render_model_card(
    cfg: TrainConfig,
    arch: str,
    files: dict[str, Path],
    steps_done: int,
    final_loss: float | None,
    sample_grid: Path | None,
    loss_curve: Path | None,
    quality_curve: Path | None = None,
    signals_curve: Path | None = None,
    stop_note: str | None = None,
) -> str:
    """The run's README.md: what was trained and how, its pictures, its files and how to use them."""
    root = Path(cfg.output_dir)
    lines = _header_lines(cfg, arch, steps_done, final_loss)
    if stop_note:
        lines += [stop_note, ""]
    lines += _figure_lines(cfg, root, sample_grid, loss_curve, quality_curve, signals_curve)
    lines += _settings_lines(cfg, steps_done)
    lines += _usage_lines(cfg, arch, files, root)
    return "\n".join(lines)


def write_model_card(text: str, output_dir: str | Path) -> Path:
    """Write the card as ``README.md`` (atomically; a non-UTF-8 file name in it is shown escaped)."""
    return write_atomic(Path(output_dir) / "README.md", text_safe(text))
