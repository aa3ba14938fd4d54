"""Process settings the package makes at import, before torch starts its math libraries (no torch import).

``MKL_CBWR=AUTO``: MKL's reproducible mode, so that the same seed gives the same bytes
(:mod:`moslora_diffusion.reproducible` checks it before training).
A value the user set is kept. MKL reads it at its first call, so it acts on the entry points (training
script, CLI, web UI) and on any code that imports ``moslora_diffusion`` before its first matrix product.

OpenMP's waiting (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is left alone: `benchmarks/bench_contention.py`
measured no setting that helps two trainings on the same cores without costing a lone one (docs/benchmarks.md).
"""

from __future__ import annotations

import os

__all__ = ["MKL_MODE_VARIABLE", "prepare_environment"]

MKL_MODE_VARIABLE = "MKL_CBWR"
MKL_MODE = "AUTO"


def prepare_environment() -> None:
    """Set the defaults above in ``os.environ`` where the user has not chosen."""
    os.environ.setdefault(MKL_MODE_VARIABLE, MKL_MODE)
