"""The one error hierarchy of moslora-diffusion.

Every failure the toolkit detects on purpose is a :class:`MoSLoraError`, itself a ``ValueError``; the CLI,
the training script and the web UI catch this one class and show its message without a traceback.
"""

from __future__ import annotations

__all__ = [
    "MoSLoraError",
    "MoSLoraFormatError",
    "AdapterMismatchError",
    "AdapterNameError",
    "ConfigError",
    "TrainConfigError",
    "NonFiniteLossError",
    "BusyError",
    "OutputWriteError",
    "RequestError",
    "BaseModelError",
    "StudyError",
    "LibraryVersionError",
    "StoppedError",
    "EngineBusy",
    "JobBusy",
    "GenerationStopped",
]


class MoSLoraError(ValueError):
    """Base class of all moslora-diffusion errors."""


class MoSLoraFormatError(MoSLoraError):
    """A file or state dict is not a valid adapter file (missing, pickled, corrupt, untagged, inconsistent)."""


class AdapterMismatchError(MoSLoraError):
    """A valid adapter does not fit the model it is loaded into (unknown module, wrong shape, name in use)."""


class AdapterNameError(MoSLoraError):
    """An adapter name that is not a plain file name inside the adapters folder (or no such file)."""


class ConfigError(MoSLoraError):
    """A bad adapter setting (rank, mixer init, targets, incompatible options)."""


class TrainConfigError(ConfigError):
    """A bad training setting or input file, found before any model is loaded."""


class BaseModelError(MoSLoraError):
    """A base model that cannot be opened as asked: a pickle, not a Stable Diffusion checkpoint, no configs."""


class StudyError(MoSLoraError):
    """An eval-toyworld results file that cannot be read, or two studies that cannot be paired as asked."""


class LibraryVersionError(MoSLoraError):
    """An installed library lacks an API this version of moslora-diffusion relies on (see ``compat``)."""


class RequestError(MoSLoraError):
    """A request with a bad value: a command option, a generation or a web-UI training request."""


class OutputWriteError(MoSLoraError):
    """An output could not be written (disk full, read-only folder); what was there before is intact."""


class BusyError(MoSLoraError):
    """The generator or the trainer is busy with another request."""


class EngineBusy(BusyError):
    """Another generation holds the device for longer than the caller wanted to wait."""


class JobBusy(BusyError):
    """A training job is already running."""


class StoppedError(MoSLoraError):
    """The user stopped the work (a Stop button): not a fault, and nothing was left half-written."""


class GenerationStopped(StoppedError):
    """The user stopped a generation before its first image was done."""


class NonFiniteLossError(MoSLoraError):
    """The loss (or, after an optimizer step, an adapter weight) became NaN or infinite; training stopped and
    the last good checkpoint was kept."""

    def __init__(self, step: int, loss: float, last_checkpoint: str | None, what: str | None = None) -> None:
        kept = (
            f"; last good checkpoint: {last_checkpoint}" if last_checkpoint else "; no checkpoint was written"
        )
        super().__init__(
            f"{what or f'loss is {loss}'} at step {step}: stopped training{kept}. "
            "Try a lower --learning_rate, --mixed_precision bf16 instead of fp16, or --max_grad_norm."
        )
        self.step = step
        self.loss = loss
        self.last_checkpoint = last_checkpoint
