"""Adapter tools (moslora_diffusion/adapter_tools.py): resize by SVD, merge into one LoRA, merge into a model;
checked against hand computations, stock diffusers loading and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from moslora_diffusion.adapter_tools import merge_files, merge_into_model, resize_file, truncate_module
from moslora_diffusion.errors import MoSLoraFormatError, RequestError
from moslora_diffusion.formats import export_adapter
from moslora_diffusion.formats.lowrank import LowRankModule, read_low_rank
from tests.cli_support import run_cli
from tests.pipeline_support import generate, load_tiny, random_adapter


def _module(out=12, inn=10, rank=6, conv=False, seed=0, true_rank=None):
    g = torch.Generator().manual_seed(seed)
    down = torch.randn((rank, inn, 3, 3) if conv else (rank, inn), generator=g)
    up = torch.randn((out, rank, 1, 1) if conv else (out, rank), generator=g)
    if true_rank is not None:  # a delta of lower rank than the module's: repeated columns
        down[true_rank:] = down[:true_rank].sum(0, keepdim=True)
    return LowRankModule("unet", "blocks.0.proj", down, up)


@pytest.mark.parametrize("conv", [False, True])
def test_truncation_error_is_the_dropped_singular_values(conv):
    module = _module(conv=conv)
    delta = module.delta()
    s = torch.linalg.svdvals(delta)
    resized, report = truncate_module(module, 3)
    assert resized.rank == 3 and resized.down.shape[1:] == module.down.shape[1:]
    assert resized.up.shape == (module.up.shape[0], 3, *module.up.shape[2:])
    dropped = math.sqrt(float((s[3:] ** 2).sum()))
    assert float(torch.linalg.norm(delta - resized.delta())) == pytest.approx(dropped, rel=1e-5)
    assert report.error == pytest.approx(dropped, rel=1e-9)
    assert report.share_kept == pytest.approx(math.sqrt(float((s[:3] ** 2).sum() / (s**2).sum())), rel=1e-9)
    # and it is the best rank-3 approximation: the top singular values survive unchanged
    torch.testing.assert_close(torch.linalg.svdvals(resized.delta())[:3], s[:3], rtol=1e-5, atol=0)


def test_resizing_at_or_above_the_deltas_rank_is_exact():
    module = _module(rank=6, true_rank=4)
    for rank in (4, 6, 9):
        resized, report = truncate_module(module, rank)
        assert resized.rank == min(rank, 6)
        torch.testing.assert_close(
            resized.delta(), module.delta(), rtol=0, atol=1e-5 * float(module.delta().abs().max())
        )
        assert report.share_kept == pytest.approx(1.0, abs=1e-9)


def test_dynamic_rank_keeps_the_smallest_rank_reaching_the_share():
    module = _module(rank=8, out=20, inn=16)
    s = torch.linalg.svdvals(module.delta())
    share = torch.sqrt(torch.cumsum(s**2, 0) / (s**2).sum())
    for target in (0.5, 0.9, 0.99):
        expected = int((share >= target).nonzero()[0]) + 1
        resized, report = truncate_module(module, 8, share=target)
        assert resized.rank == expected and report.share_kept >= target
        capped, _ = truncate_module(module, 2, share=target)
        assert capped.rank == min(2, expected)


@pytest.fixture
def sd1(tiny_dirs):
    return load_tiny(tiny_dirs, "sd1")


def test_resized_files_load_in_stock_diffusers_and_match(sd1, tiny_dirs, tmp_path):
    adapter = random_adapter(sd1, rank=4, seed=3)
    native = adapter.save(tmp_path / "a.safetensors")
    reference = load_tiny(tiny_dirs, "sd1")
    reference.load_moslora_weights(str(native))
    expected = generate(reference)
    # rank 4 -> 4: exact, loaded by stock load_lora_weights
    out, report = resize_file(native, tmp_path / "same", 4)
    assert out.name == "pytorch_lora_weights.safetensors" and report.share_kept == pytest.approx(1.0)
    sd1.load_lora_weights(str(out.parent))
    np.testing.assert_allclose(generate(sd1), expected, atol=2e-5)
    # rank 2 from a kohya export: a kohya file, with the adapter's provenance and what was done
    kohya = export_adapter(native, tmp_path / "k.safetensors", "kohya")
    small, report = resize_file(kohya, tmp_path / "small.safetensors", 2)
    tensors = load_file(small)
    assert {v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")} == {2}
    with safe_open(str(small), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["moslora_tool"])["tool"] == "resize" and "moslora_base_model" in meta
    assert 0.0 < report.share_kept < 1.0
    other = load_tiny(tiny_dirs, "sd1")
    other.load_lora_weights(str(small))  # kohya names load in stock diffusers
    assert not np.allclose(generate(other), expected, atol=1e-6)  # rank 2 of a random rank-4 delta differs


def test_merged_adapter_equals_the_adapters_applied_together(sd1, tiny_dirs, tmp_path):
    a = random_adapter(sd1, rank=4, seed=1).save(tmp_path / "a.safetensors")
    b = random_adapter(sd1, rank=2, seed=2, components=("unet",)).save(tmp_path / "b.safetensors")
    together = load_tiny(tiny_dirs, "sd1")
    na = together.load_moslora_weights(str(a))
    nb = together.load_moslora_weights(str(b))
    together.set_adapters([na, nb], [1.0, -0.5])
    expected = generate(together)
    merged, report = merge_files([a, b], [1.0, -0.5], tmp_path / "m.safetensors")
    assert report is None
    tensors = load_file(merged)
    both = next(k for k in tensors if k.startswith("unet.") and k.endswith("lora_A.weight"))
    assert tensors[both].shape[0] == 6  # ranks add where both adapt the module
    sd1.load_lora_weights(str(merged))
    np.testing.assert_allclose(generate(sd1), expected, atol=2e-5)
    # a kohya input: the merge is kohya and equal too
    kb = export_adapter(b, tmp_path / "kb.safetensors", "kohya")
    kmerged, _ = merge_files([a, kb], [1.0, -0.5], tmp_path / "km.safetensors")
    assert all(k.startswith("lora_") for k in load_file(kmerged))
    third = load_tiny(tiny_dirs, "sd1")
    third.load_lora_weights(str(kmerged))
    np.testing.assert_allclose(generate(third), expected, atol=2e-5)


def test_merge_into_the_model_equals_the_adapters_applied(sd1, tiny_dirs, tmp_path):
    from diffusers import DiffusionPipeline

    a = random_adapter(sd1, rank=4, seed=5).save(tmp_path / "a.safetensors")
    b = export_adapter(random_adapter(sd1, rank=2, seed=6).save(tmp_path / "b.safetensors"),
                       tmp_path / "b_kohya.safetensors", "kohya")  # fmt: skip
    na, nb = sd1.load_moslora_weights(str(a)), sd1.load_moslora_weights(str(b))
    sd1.set_adapters([na, nb], [0.7, 1.3])
    expected = generate(sd1)
    out = merge_into_model(tiny_dirs["sd1"], [a, b], [0.7, 1.3], tmp_path / "merged-model")
    merged = DiffusionPipeline.from_pretrained(str(out))
    merged.set_progress_bar_config(disable=True)
    assert not merged.get_list_adapters()  # the deltas are in the weights, no adapter left
    np.testing.assert_allclose(generate(merged), expected, atol=5e-5)
    with pytest.raises(RequestError, match="exists"):
        merge_into_model(tiny_dirs["sd1"], [a], None, out)
    with pytest.raises(RequestError, match="the base model itself"):
        merge_into_model(tiny_dirs["sd1"], [a], None, tiny_dirs["sd1"], overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_refusals_before_anything_is_written(sd1, tmp_path):
    native = random_adapter(sd1, rank=4, seed=3).save(tmp_path / "a.safetensors")
    kohya = export_adapter(native, tmp_path / "k.safetensors", "kohya")
    with pytest.raises(RequestError, match="the source file itself"):
        resize_file(kohya, kohya, 2, overwrite=True)
    with pytest.raises(RequestError, match="kohya names, which cannot be turned back"):
        resize_file(kohya, tmp_path / "d.safetensors", 2, format="diffusers")
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    with pytest.raises(RequestError, match="exists"):
        resize_file(native, tmp_path / "taken.safetensors", 2)
    with pytest.raises(RequestError, match="positive integer"):
        resize_file(native, tmp_path / "r0.safetensors", 0)
    with pytest.raises(RequestError, match="2 adapters but 1 weights"):
        merge_files([native, kohya], [1.0], tmp_path / "m.safetensors")
    tensors = load_file(kohya)
    name = next(k for k in tensors if k.endswith(".lora_down.weight")).removesuffix(".lora_down.weight")
    save_file({**tensors, f"{name}.dora_scale": torch.ones(3)}, str(tmp_path / "dora.safetensors"))
    with pytest.raises(MoSLoraFormatError, match="dora_scale.*refusing rather than dropping"):
        read_low_rank(tmp_path / "dora.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "dora.safetensors", "k.safetensors",
                                                          "taken.safetensors"]  # fmt: skip


def test_cli_resize_prints_the_share_and_merge_writes(sd1, tmp_path):
    native = random_adapter(sd1, rank=4, seed=3).save(tmp_path / "a.safetensors")
    done = run_cli("resize", str(native), "--rank", "2", "-o", str(tmp_path / "r.safetensors"))
    assert done.returncode == 0, done.stderr
    assert "all modules" in done.stdout and "%" in done.stdout and "wrote" in done.stdout
    done = run_cli("merge", str(native), str(tmp_path / "r.safetensors"), "--weights", "1", "0.5", "--rank", "3",
                   "-o", str(tmp_path / "m.safetensors"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {
        v.shape[0] for k, v in load_file(tmp_path / "m.safetensors").items() if k.endswith("lora_A.weight")
    } == {3}
    bad = run_cli("merge", str(native), "--dynamic", "0.9", "-o", str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "--dynamic needs --rank" in bad.stderr


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_merge_into_a_single_file_checkpoint_equals_the_adapters_applied(arch, tmp_path):
    """The merged original-layout file (loaded back with diffusers' from_single_file) draws what the base file
    with the adapters draws; OpenCLIP's fused q/k/v (SD2, SDXL's second encoder) included."""
    from diffusers import DiffusionPipeline

    from moslora_diffusion import base_models
    from moslora_diffusion.tiny import save_tiny_pipeline
    from tests.ldm_layout import pipeline_to_single_file

    folder = save_tiny_pipeline(arch, tmp_path / arch, text_width_2=48)
    base = pipeline_to_single_file(
        DiffusionPipeline.from_pretrained(str(folder)), tmp_path / f"{arch}.safetensors"
    )
    pipe = base_models.load_pipeline(base, config=folder)
    pipe.set_progress_bar_config(disable=True)
    a = random_adapter(pipe, rank=4, seed=11).save(tmp_path / "a.safetensors")
    b = export_adapter(random_adapter(pipe, rank=2, seed=12, components=("unet",)).save(tmp_path / "b.safetensors"),
                       tmp_path / "b_kohya.safetensors", "kohya")  # fmt: skip
    na, nb = pipe.load_moslora_weights(str(a)), pipe.load_moslora_weights(str(b))
    pipe.set_adapters([na, nb], [0.6, 1.0])
    expected = generate(pipe)
    out = merge_into_model(base, [a, b], [0.6, 1.0], tmp_path / "merged.safetensors", config=folder)
    merged = base_models.load_pipeline(out, config=folder)
    merged.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(generate(merged), expected, atol=5e-5)
    plain = base_models.load_pipeline(base, config=folder)
    plain.set_progress_bar_config(disable=True)
    assert np.abs(generate(plain) - expected).max() > 1e-3  # the adapters do change the images
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["moslora_merged"])["weights"] == [0.6, 1.0]
    assert set(load_file(out)) == set(load_file(base))  # the same keys: only values changed
    with pytest.raises(RequestError, match="a single-file output needs a single-file base"):
        merge_into_model(folder, [a], None, tmp_path / "x.safetensors")
