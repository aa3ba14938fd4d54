"""The files of a finished run: native MoSLoRA file, folded diffusers file, optional kohya file, loss curve.

For `--adapter lora` the adapter is written as the same plain LoRA files (diffusers, kohya); there is no
native file since there is no mixer. Both go through one code path: a plain LoRA is a MoSLoRA adapter
whose mixer is the identity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import formats as fmt
from ..durable import write_atomic, write_figure

logger = logging.getLogger(__name__)

LOSS_CURVE_NAME = "loss_curve.png"


def adapter_state_dicts(
    models: Mapping[str, nn.Module], with_identity_mixer: bool
) -> dict[str, dict[str, torch.Tensor]]:
    """Per component: `<module_path>.lora_{A,mixer,B}.weight` tensors (fp32, on CPU)."""
    from peft import get_peft_model_state_dict

    out = {}
    for component, model in models.items():
        sd = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model).items()}
        if with_identity_mixer:
            for key in [k for k in sd if k.endswith(".lora_A.weight")]:
                r = sd[key].shape[0]
                sd[key.replace(".lora_A.weight", ".lora_mixer.weight")] = torch.eye(r)
        out[component] = sd
    return out


def write_adapter_files(
    output_dir: str | Path,
    adapter: str,
    models: Mapping[str, nn.Module],
    configs: Mapping[str, Any],
    base_model: dict[str, Any],
    training: dict[str, Any],
    architecture: str,
    export_kohya: bool,
    unet_config: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the adapter files into `output_dir`; return {"moslora"|"diffusers"|"kohya": path}."""
    out = Path(output_dir)
    states = adapter_state_dicts(models, with_identity_mixer=adapter == "lora")
    file = fmt.MoSLoraFile.from_state_dicts(states, dict(configs), base_model, training)
    files: dict[str, Path] = {}
    if adapter == "moslora":
        files["moslora"] = Path(file.save(out))
    meta = {
        "format": "pt",
        "trained_with": f"moslora-diffusion DreamBooth ({adapter})",
        **fmt.provenance_metadata(file),
    }
    files["diffusers"] = Path(
        fmt.write_safetensors_atomic(
            out / fmt.DIFFUSERS_WEIGHTS_NAME, fmt.to_diffusers_state_dict(file), meta
        )
    )
    if export_kohya:
        # The run folder was checked to hold only this run's work: replace its own earlier export.
        files["kohya"] = Path(
            fmt.export_adapter(
                file, out, "kohya", architecture=architecture, unet_config=unet_config, overwrite=True
            )
        )
        gaps = fmt.kohya_unsupported_modules(file)
        if gaps:
            logger.warning(
                "%d time/add-embedding module(s) in the kohya export are ignored by kohya-ss/sd-scripts' "
                "loader (ComfyUI, AUTOMATIC1111 and diffusers apply them): %s",
                len(gaps),
                ", ".join(gaps[:4]),
            )
    return files


def plot_loss_curve(losses: list[float], path: str | Path) -> Path | None:
    """Save a PNG of the loss per step (with a moving average); None when matplotlib is missing."""
    if not losses:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = list(range(1, len(losses) + 1))
    window = max(1, len(losses) // 20)
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, alpha=0.35, label="loss")
    ax.plot(steps, smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return write_figure(path, fig)


QUALITY_NAME = "quality.json"
QUALITY_CURVE_NAME = "quality_curve.png"


def write_quality(quality: list[dict[str, float]], out: str | Path) -> dict[str, Path]:
    """`quality.json` (the scorer's scores per step) and `quality_curve.png`; atomic writes."""
    import json

    out = Path(out)
    path = out / QUALITY_NAME
    write_atomic(path, json.dumps(quality, indent=1) + "\n")
    files = {"quality": path}
    curve = plot_quality_curve(quality, out / QUALITY_CURVE_NAME)
    if curve is not None:
        files["quality_curve"] = curve
    return files


def plot_quality_curve(quality: list[dict[str, float]], path: str | Path) -> Path | None:
    """Save a PNG of each score (percent) against the step; None when matplotlib is missing."""
    if not quality:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [k for k in quality[0] if k != "step"]
    steps = [q["step"] for q in quality]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name in names:
        ax.plot(steps, [100 * q.get(name, float("nan")) for q in quality], marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("% of images")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return write_figure(path, fig)


def write_signals(
    history: list[dict[str, float]], out: str | Path, kept_step: int | None = None
) -> dict[str, Path]:
    """`signals.json` (the learning signals per validation, and the step whose adapter was kept when the
    run stopped by them) and `signals_curve.png`; atomic writes."""
    import json

    from .signals import SIGNALS_CURVE_NAME, SIGNALS_NAME

    out = Path(out)
    record: dict[str, Any] = {"signals": history}
    if kept_step is not None:
        record["kept_step"] = kept_step
    path = out / SIGNALS_NAME
    write_atomic(path, json.dumps(record, indent=1, allow_nan=True) + "\n")
    files = {"signals": path}
    curve = plot_signals_curve(history, out / SIGNALS_CURVE_NAME, kept_step)
    if curve is not None:
        files["signals_curve"] = curve
    return files


def plot_signals_curve(
    history: list[dict[str, float]], path: str | Path, kept_step: int | None = None
) -> Path | None:
    """Two panels: the subject fit (denoising loss on the instance probes), and binding / prior shifts."""
    import math

    if len(history) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [row["step"] for row in history]
    fig, (fit_ax, shift_ax) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    fit_ax.plot(steps, [row["subject_fit"] for row in history], marker="o", color="tab:blue")
    fit_ax.set_title("subject fit (loss on instance probes)", fontsize=9)
    labels = {"binding": "binding (identifier's effect)", "class_shift": "class-prompt shift",
              "prompt_shift": "ordinary-prompt shift"}  # fmt: skip
    for key, label in labels.items():
        values = [row.get(key, math.nan) for row in history]
        if any(math.isfinite(v) for v in values):
            shift_ax.plot(steps, values, marker="o", label=label)
    shift_ax.set_title("relative change of the prediction", fontsize=9)
    shift_ax.legend(fontsize=8)
    for ax in (fit_ax, shift_ax):
        ax.set_xlabel("step")
        if kept_step is not None:
            ax.axvline(kept_step, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    return write_figure(path, fig)
