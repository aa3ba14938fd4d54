"""Precise filters for library notices that a user of this toolkit cannot act on.

Each filter names the logger and the message it drops; nothing else is silenced. Our own causes are fixed
at the source instead (e.g. ``dtype=`` rather than the deprecated ``torch_dtype=``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = ["MessageFilter", "dropping", "quiet_entry_point", "adding_an_adapter"]

# transformers notes that the safety checker's image processors fall back to PIL without torchvision;
# Stable Diffusion pipelines never need torchvision for that.
_TORCHVISION_FALLBACK = (
    "transformers.utils.import_utils",
    "requires torchvision (not installed); falling back",
)


class MessageFilter(logging.Filter):
    """Drops records whose message contains one of ``fragments``."""

    def __init__(self, fragments: Iterable[str]) -> None:
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


@contextmanager
def dropping(logger_name: str, fragments: Iterable[str]) -> Iterator[None]:
    """While active, drop ``logger_name``'s records that contain one of ``fragments``."""
    fragments = tuple(fragments)
    if not fragments:
        yield
        return
    logger = logging.getLogger(logger_name)
    flt = MessageFilter(fragments)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


@contextmanager
def adding_an_adapter() -> Iterator[None]:
    """PEFT warns "Already found a `peft_config` attribute in the model ... multiple adapters" whenever a second
    adapter is added to a model: that is what adding one more adapter means, so drop exactly that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Already found a `peft_config` attribute", category=UserWarning
        )
        yield


def quiet_entry_point() -> None:
    """For command-line entry points: drop the library notices listed in this module (idempotent)."""
    name, fragment = _TORCHVISION_FALLBACK
    logger = logging.getLogger(name)
    if not any(isinstance(f, MessageFilter) and fragment in f.fragments for f in logger.filters):
        logger.addFilter(MessageFilter([fragment]))
