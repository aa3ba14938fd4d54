"""Imports cost what they use: the package, the CLI's parser and the toy world load no torch, PEFT or
diffusers; `pipe.load_moslora_weights` still appears whichever of diffusers and this package comes first."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "peft", "transformers", "gradio")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.parametrize(
    "module",
    ["moslora_diffusion", "moslora_diffusion.cli", "moslora_diffusion.toyworld", "moslora_diffusion.webui"],
)
def test_light_imports(module):
    loaded = _run(f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert loaded == "[]", f"{module} imported {loaded}"


def test_cli_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom moslora_diffusion import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "usage: moslora-diffusion" in proc.stdout and proc.stderr.strip().endswith("[]")


@pytest.mark.parametrize("order", ["package first", "diffusers first"])
def test_load_moslora_weights_installed_in_either_order(order):
    first, second = (
        "import moslora_diffusion",
        "from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline",
    )
    if order == "diffusers first":
        first, second = second, first
    out = _run(
        f"{first}\n{second}\nfrom diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline\n"
        "print(hasattr(StableDiffusionPipeline, 'load_moslora_weights'), "
        "hasattr(StableDiffusionXLImg2ImgPipeline, 'load_moslora_weights'))"
    )
    assert out == "True True"


def test_public_names_load_on_first_use():
    out = _run(
        "import sys, moslora_diffusion as m\nassert 'peft' not in sys.modules\n"
        "cfg = m.MoSLoraConfig(r=2, target_modules=['x'])\nprint(type(cfg).__name__, 'peft' in sys.modules, sorted(m.__all__)[:2])"
    )
    assert out.startswith("MoSLoraConfig True")
