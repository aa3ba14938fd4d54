"""Same seed, same adapter: MKL's reproducible mode is in force however the caller started, and two training
processes with different heap layouts write bit-identical adapters (the digest `inspect` prints shows it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moslora_diffusion import reproducible, toyworld
from moslora_diffusion.formats.inspect import describe_adapter_file, format_description
from moslora_diffusion.formats.safetensors_io import tensor_digest

ROOT = Path(__file__).resolve().parents[1]
needs_mkl = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL")


def _python(code: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """(words printed, stderr) of ``code`` in a fresh interpreter without MKL_CBWR (plus ``env``)."""
    clean = {k: v for k, v in os.environ.items() if k != reproducible.MKL_MODE_VARIABLE}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**clean, **(env or {})})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split(), proc.stderr


@needs_mkl
def test_this_test_process_runs_mkl_in_a_reproducible_mode():
    assert reproducible.mkl_mode() == "AUTO"


@needs_mkl
def test_importing_after_torch_and_allocations_still_sets_the_mode():
    code = (
        "import torch\nx = [torch.randn(n) for n in (7, 4099, 123457)]\n"
        "import moslora_diffusion\nfrom moslora_diffusion import reproducible as r\n"
        "y = x[2][:1000].view(10, 100) @ torch.randn(100, 3)\n"
        "print(r.mkl_mode(), r.require_reproducible_math())"
    )
    assert _python(code)[0] == ["AUTO", "True"]


@needs_mkl
def test_a_user_choice_is_kept():
    code = "import moslora_diffusion.reproducible as r; print(r.mkl_mode())"
    assert _python(code, {"MKL_CBWR": "COMPATIBLE"})[0] == ["COMPATIBLE"]


@needs_mkl
def test_mkl_used_before_import_is_said_and_recorded():
    code = (
        "import torch\ny = torch.randn(64, 64) @ torch.randn(64, 64)\n"
        "import os; os.environ.pop('MKL_CBWR', None)\n"
        "from moslora_diffusion import reproducible as r\n"
        "print(r.mkl_mode(), r.math_settings()['reproducible'])"
    )
    words, stderr = _python(code)
    assert words == ["OFF", "False"]
    assert "MKL was used before its reproducible mode could be set" in stderr and "MKL_CBWR=AUTO" in stderr


_TRAIN = """
import sys, torch
{prelude}
from moslora_diffusion.training import parse_args, run_training
run_training(parse_args(sys.argv[1:]))
"""
# Odd-sized blocks kept alive move every later allocation to other addresses.
_SHIFT_HEAP = "keep = [torch.empty(n) for n in (3, 1021, 65537, 7, 262147)]\nimport gc; gc.disable()"


def test_two_processes_with_different_heaps_train_the_same_bytes(tmp_path):
    args = ["--pretrained_model_name_or_path", str(toyworld.base_model_path()),
            "--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks circle",
            "--max_train_steps", "4", "--seed", "11", "--checkpointing_steps", "0", "--resolution", "32",
            "--rank", "4", "--train_text_encoder"]  # fmt: skip
    digests, weights = {}, {}
    for name, prelude in (("plain", ""), ("shifted", _SHIFT_HEAP)):
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-c", _TRAIN.format(prelude=prelude), *args, "--output_dir", str(out)],
            capture_output=True, text=True, timeout=900, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != reproducible.MKL_MODE_VARIABLE},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        path = out / "moslora_weights.safetensors"
        digests[name], weights[name] = tensor_digest(path), load_file(str(path))
        record = json.loads((out / "run.json").read_text())["math"]
        assert record["reproducible"] is True and record["threads"] >= 1
        assert record["mkl_mode"] == ("AUTO" if torch.backends.mkl.is_available() else None)
    different = [k for k in weights["plain"] if not torch.equal(weights["plain"][k], weights["shifted"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert digests["plain"] == digests["shifted"]
    assert any(v.abs().max() > 0 for k, v in weights["plain"].items() if "lora_B" in k)  # it did train


def test_weights_digest_sees_every_byte_and_ignores_metadata(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.ones(4)}
    save_file(tensors, str(tmp_path / "one.safetensors"), metadata={"note": "one"})
    save_file(dict(reversed(tensors.items())), str(tmp_path / "two.safetensors"), metadata={"note": "two"})
    assert tensor_digest(tmp_path / "one.safetensors") == tensor_digest(tmp_path / "two.safetensors")
    nudged = {**tensors, "a": torch.nextafter(torch.ones(4), torch.full((4,), 2.0))}
    save_file(nudged, str(tmp_path / "three.safetensors"))
    assert tensor_digest(tmp_path / "three.safetensors") != tensor_digest(tmp_path / "one.safetensors")
    reshaped = {**tensors, "b": tensors["b"].view(3, 2)}
    save_file(reshaped, str(tmp_path / "four.safetensors"))
    assert tensor_digest(tmp_path / "four.safetensors") != tensor_digest(tmp_path / "one.safetensors")


def test_inspect_shows_the_weights_digest(tiny_dirs, tmp_path):
    from tests.pipeline_support import load_tiny, random_adapter

    path = random_adapter(load_tiny(tiny_dirs, "sd1")).save(tmp_path / "a.safetensors")
    info = describe_adapter_file(path)
    assert info["weights_digest"] == tensor_digest(path)
    assert f"weights:      {info['weights_digest']}" in format_description(info)
    assert describe_adapter_file(path, header_only=True)["weights_digest"] is None
