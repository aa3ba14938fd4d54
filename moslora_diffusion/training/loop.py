"""The DreamBooth training loop."""

from __future__ import annotations

from collections.abc import Callable

from .args import TrainConfig, validate_config
from .events import TrainEvent, TrainResult


def run_training(
    cfg: TrainConfig,
    callback: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train an adapter as `cfg` says and write the outputs to `cfg.output_dir`."""
    validate_config(cfg)
    raise NotImplementedError("run_training is being written")
