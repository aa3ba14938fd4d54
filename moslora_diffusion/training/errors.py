"""Errors raised by the training package."""

from __future__ import annotations


class TrainConfigError(ValueError):
    """A bad training setting or input file, found before any model is loaded."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""

    def __init__(self, step: int, loss: float, last_checkpoint: str | None) -> None:
        kept = (
            f"; last good checkpoint: {last_checkpoint}" if last_checkpoint else "; no checkpoint was written"
        )
        super().__init__(
            f"loss is {loss} at step {step}: stopped training{kept}. "
            "Try a lower --learning_rate, --mixed_precision bf16 instead of fp16, or --max_grad_norm."
        )
        self.step = step
        self.loss = loss
        self.last_checkpoint = last_checkpoint
