"""What `run_training` reports while it runs (`TrainEvent`) and what it returns (`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

EventKind = Literal["step", "validation", "scores", "signals", "checkpoint", "done"]


@dataclass
class TrainEvent:
    """One progress report, passed to `run_training(callback=...)` on the main process.

    kind: "step" after every optimizer step, "validation" with the sample images, "scores" with the
    scorer's quality scores (see `run_training`), "checkpoint" after a checkpoint is written (message = its
    path), "signals" at every validation with the learning signals in ``scores`` (`training.signals`), "done"
    once at the end (message = the summary line).
    """

    kind: EventKind
    step: int
    max_steps: int
    loss: float | None = None
    lr: float | None = None
    images: list[Image.Image] | None = None
    message: str | None = None
    scores: dict[str, float] | None = None


@dataclass
class TrainResult:
    """The outcome of `run_training`.

    weights_path: the native `moslora_weights.safetensors` (or, for `--adapter lora`, the diffusers
    `pytorch_lora_weights.safetensors`); None when no step was done.
    """

    output_dir: Path
    weights_path: Path | None
    steps_done: int
    cancelled: bool
    final_loss: float | None
    files: dict[str, Path] = field(default_factory=dict)
    learned: str | None = None  # why --stop_when_learned ended the run early, if it did
    kept_step: int | None = None  # the step whose adapter the weights files hold
    validation_s: float = 0.0  # wall seconds spent validating (signals, scorer, samples), included in the run
