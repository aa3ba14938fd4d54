"""Same seed, same bytes: the process settings that make CPU training reproducible.

MKL, inside torch's CPU build, picks GEMM kernels by the memory alignment of the operands unless its
*conditional numerical reproducibility* (CNR) mode is set. Without it two runs of one training whose tensors
land at other addresses (another process, another import order, a single file instead of a folder) round
differently, and training amplifies the difference (on AMD / AVX2 machines, every time). MKL reads the mode
once, at its first call; after that it can no longer be changed.

So the package sets ``MKL_CBWR=AUTO`` in the environment when it is imported (:mod:`.process_env`; child
processes inherit it), and training checks through MKL's own API that the mode is in force before the first
step. ``AUTO`` keeps the fastest code path of the machine (no measurable cost); a mode the user set stays.

What is promised: the same command, seed, thread count and package versions give bit-identical adapters on
machines of one CPU kind. Not promised: across CPU families (AVX2 vs AVX-512), CPU vs GPU, thread counts.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache
from pathlib import Path
from typing import Any

from .process_env import MKL_MODE, MKL_MODE_VARIABLE

__all__ = ["MKL_MODE_VARIABLE", "math_settings", "mkl_mode", "require_reproducible_math"]

logger = logging.getLogger(__name__)

_DEFAULT_MODE = MKL_MODE
# mkl_service.h: MKL_CBWR_BRANCH asks for the branch; MKL_CBWR_BRANCH_OFF means no CNR mode; MKL_CBWR_AUTO.
_BRANCH, _OFF, _AUTO = 1, 1, 2
_MODE_NAMES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
               9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}  # fmt: skip


@cache
def _mkl_service() -> Any | None:
    """MKL's service functions inside torch's CPU library, or None where torch has no MKL."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = Path(torch.__file__).parent / "lib" / name
        if path.exists():
            try:
                lib = ctypes.CDLL(str(path))
                get, set_ = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
            except (OSError, AttributeError):
                return None
            get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
            set_.argtypes, set_.restype = [ctypes.c_int], ctypes.c_int
            return lib
    return None


def mkl_mode() -> str | None:
    """MKL's CNR mode in force in this process ("AUTO", "OFF", ...), or None when torch has no MKL."""
    lib = _mkl_service()
    if lib is None:
        return None
    value = lib.mkl_serv_cbwr_get(_BRANCH)
    return _MODE_NAMES.get(value, str(value))


def require_reproducible_math() -> bool:
    """Make sure MKL runs in a reproducible mode; True when it does (or there is no MKL).

    Sets ``AUTO`` through MKL's API when nothing is set yet. When MKL was already used in this process
    without a mode (the caller multiplied matrices before importing moslora_diffusion), the mode can no
    longer change: a warning says so and how to fix it, and the run is recorded as not reproducible.
    """
    lib = _mkl_service()
    if lib is None:
        return True
    if lib.mkl_serv_cbwr_get(_BRANCH) != _OFF:
        return True
    if lib.mkl_serv_cbwr_set(_AUTO) == 0:
        return True
    logger.warning(
        "MKL was used before its reproducible mode could be set: this run may not be bit-identical to "
        "another one with the same seed. Import moslora_diffusion before any torch computation, or set "
        "%s=%s in the environment.",
        MKL_MODE_VARIABLE,
        _DEFAULT_MODE,
    )
    return False


def math_settings() -> dict[str, Any]:
    """What a bit-identical rerun needs to match: torch version, threads, MKL mode (for run.json)."""
    import torch

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkl_mode": mkl_mode(),
        "reproducible": require_reproducible_math(),
    }
