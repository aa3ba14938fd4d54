"""Shared fixtures: offline tiny SD1 / SD2 / SDXL pipelines (helpers: tests/pipeline_support.py)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models run faster on one thread, especially on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def _make_tiny(arch: str):
    from moslora_diffusion.tiny import make_tiny_pipeline

    return make_tiny_pipeline(arch, seed=0)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    """A tiny SD1 pipeline folder for training tests."""
    from moslora_diffusion.tiny import save_tiny_pipeline

    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("tiny-sd1") / "sd1")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD1 and SDXL pipelines saved with save_pretrained (so stock from_pretrained works)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ("sd1", "sd2", "sdxl"):
        pipe = _make_tiny(arch)
        pipe.save_pretrained(root / arch)
        out[arch] = root / arch
    return out
