"""Process settings made before torch starts its math libraries (this module never imports torch).

At package import, for everyone: ``MKL_CBWR=AUTO``, MKL's reproducible mode, so that the same seed gives
the same bytes (:mod:`moslora_diffusion.reproducible` checks it before training). MKL reads it at its first
call, so it acts on the entry points and on any code that imports ``moslora_diffusion`` before its first
matrix product.

At our entry points only (training script, CLI, web UI): ``GOMP_SPINCOUNT=2000``, so that an OpenMP
thread waiting at the end of a parallel region spins briefly (tens of microseconds) and then sleeps.
libgomp's default spin (300,000 pauses: milliseconds) holds the core; with a second CPU-heavy process on
the same cores (another training, the web UI generating, a test) the processes' spinning threads take the
cores from each other's working ones and a training step can get 100× slower. ``OMP_WAIT_POLICY=PASSIVE``
(no spin) and shorter spins fix that too but cost up to a quarter of a toy step on a quiet machine, as
regions then wake sleeping threads; 2,000 costs 4–6 % of a toy step and nothing measurable on the SD 1.5
architecture (`benchmarks/bench_contention.py`, `benchmarks/bench_quickstart.py`, docs/benchmarks.md). A
pause takes fewer cycles on some CPUs, so the same count is a shorter spin there. libgomp (torch's OpenMP on Linux) reads it when torch loads, so entry points
call :func:`prepare_entry_point` before anything imports torch; other OpenMP runtimes ignore it.

A value the user set for any of these is kept.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "MKL_MODE_VARIABLE",
    "OPENMP_SPIN",
    "OPENMP_WAIT_VARIABLES",
    "prepare_entry_point",
    "prepare_environment",
]

MKL_MODE_VARIABLE = "MKL_CBWR"
MKL_MODE = "AUTO"
# Any of these set by the user means they chose how OpenMP threads wait (libgomp, LLVM / Intel OpenMP).
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
OPENMP_SPIN = ("GOMP_SPINCOUNT", "2000")


def prepare_environment() -> None:
    """Set the package-wide defaults above in ``os.environ`` where the user has not chosen."""
    os.environ.setdefault(MKL_MODE_VARIABLE, MKL_MODE)


def prepare_entry_point() -> None:
    """Entry points: a short OpenMP spin where the user has not chosen how threads wait.

    Does nothing once torch is imported (libgomp has read its settings: the process is someone else's
    program calling ours, e.g. a test, and its children keep its environment).
    """
    if any(name in os.environ for name in OPENMP_WAIT_VARIABLES) or "torch" in sys.modules:
        return
    name, value = OPENMP_SPIN
    os.environ[name] = value
