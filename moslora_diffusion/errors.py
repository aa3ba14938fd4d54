"""Exceptions raised by moslora-diffusion for bad files and mismatched adapters."""

from __future__ import annotations


class MoSLoraError(Exception):
    """Base class of all moslora-diffusion errors."""


class MoSLoraFormatError(MoSLoraError, ValueError):
    """A file or state dict is not a valid adapter file (missing, pickled, corrupt, untagged, inconsistent)."""


class AdapterMismatchError(MoSLoraError, ValueError):
    """A valid adapter does not fit the model it is loaded into (unknown module, wrong shape, name in use)."""
