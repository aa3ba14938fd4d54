"""pipe.load_moslora_weights() and the exports, checked by images against merging s·B·M·A by hand."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

import moslora_diffusion  # noqa: F401  (installs pipe.load_moslora_weights)
from moslora_diffusion.errors import AdapterMismatchError, MoSLoraFormatError
from moslora_diffusion.formats import export_adapter, load_moslora_file
from tests.pipeline_support import generate, load_tiny, merge_by_hand, random_adapter

ATOL = 2e-4  # images are in [0, 1]; float32 LoRA vs merged weights differ by ~1e-6


def _close(a: np.ndarray, b: np.ndarray, atol: float = ATOL, what: str = "") -> None:
    assert np.abs(a - b).max() <= atol, f"{what} max abs diff {np.abs(a - b).max():.2e} > {atol}"


def _differs(a: np.ndarray, b: np.ndarray, at_least: float = 1e-2) -> None:
    assert np.abs(a - b).max() >= at_least, "the adapter did not change the image"


def _reference(pipe, adapter, factor: float = 1.0) -> np.ndarray:
    ref = copy.deepcopy(pipe)
    merge_by_hand(ref, adapter, factor)
    return generate(ref)


@pytest.fixture(scope="module")
def saved(tiny_dirs, tmp_path_factory):
    """Per architecture: a random adapter file, its diffusers and kohya exports, base and reference images."""
    out = {}
    root = tmp_path_factory.mktemp("adapters")
    for arch in ("sd1", "sdxl"):
        pipe = load_tiny(tiny_dirs, arch)
        adapter = random_adapter(pipe)
        path = adapter.save(root / arch / "moslora_weights.safetensors")
        out[arch] = {
            "path": path,
            "adapter": load_moslora_file(path),
            "diffusers": export_adapter(path, root / arch / "diffusers", "diffusers").parent,
            "kohya": export_adapter(path, root / arch / "kohya.safetensors", "kohya"),
            "base": generate(pipe),
            "ref": _reference(pipe, adapter),
        }
        _differs(out[arch]["base"], out[arch]["ref"])
    return out


# ------------------------------------------------------------------------------ equal images


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_native_file_matches_hand_merge(tiny_dirs, saved, arch):
    pipe = load_tiny(tiny_dirs, arch)
    assert pipe.load_moslora_weights(saved[arch]["path"], adapter_name="mos") == "mos"
    _close(generate(pipe), saved[arch]["ref"])


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_text_encoder_only_adapter_matches_hand_merge(tiny_dirs, arch):
    pipe = load_tiny(tiny_dirs, arch)
    comps = ("text_encoder", "text_encoder_2")
    adapter = random_adapter(pipe, components=comps, seed=3, use_rslora=True)
    # Store text_encoder_2 with the text_model. spelling, text_encoder without: both must load.
    assert any(k.startswith("text_encoder.encoder.") for k in adapter.tensors)
    ref = _reference(pipe, adapter)
    _differs(ref, generate(pipe))
    pipe.load_moslora_weights(adapter)
    _close(generate(pipe), ref)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_exports_load_with_stock_diffusers(tiny_dirs, saved, arch, fmt):
    pipe = load_tiny(tiny_dirs, arch)
    pipe.load_lora_weights(str(saved[arch][fmt]))
    _close(generate(pipe), saved[arch]["ref"])


def test_exports_in_process_without_moslora(tiny_dirs, saved, tmp_path):
    """Stock diffusers in a fresh interpreter that never imports moslora_diffusion."""
    jobs = {
        f"{arch}-{fmt}": {"pipe": str(tiny_dirs[arch]), "lora": str(saved[arch][fmt])}
        for arch in ("sd1", "sdxl")
        for fmt in ("diffusers", "kohya")
    }
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads(2)
        jobs, out = json.loads(sys.argv[1]), sys.argv[2]
        for name, job in jobs.items():
            pipe = DiffusionPipeline.from_pretrained(job["pipe"])
            pipe.set_progress_bar_config(disable=True)
            pipe.load_lora_weights(job["lora"])
            img = pipe("a red square", num_inference_steps=2, guidance_scale=5.0, height=32, width=32,
                       output_type="np", generator=torch.Generator("cpu").manual_seed(0)).images[0]
            np.save(f"{out}/{name}.npy", img)
        assert not any(m.startswith("moslora_diffusion") for m in sys.modules), "moslora_diffusion was imported"
        """
    )
    env_cwd = tmp_path  # run outside the repository so that the package is not importable by accident
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(jobs), str(tmp_path)],
        cwd=env_cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in jobs:
        arch = name.split("-")[0]
        _close(np.load(tmp_path / f"{name}.npy").astype(np.float64), saved[arch]["ref"])


# ------------------------------------------------------------------------------ LoRA controls


def test_set_adapters_fuse_disable_unload(tiny_dirs, saved):
    s = saved["sd1"]
    pipe = load_tiny(tiny_dirs, "sd1")
    pipe.load_moslora_weights(s["path"].parent, adapter_name="mos")  # a directory
    _close(generate(pipe), s["ref"])

    pipe.set_adapters(["mos"], adapter_weights=[0.5])
    half = _reference(load_tiny(tiny_dirs, "sd1"), s["adapter"], 0.5)
    _close(generate(pipe), half)
    pipe.set_adapters(["mos"], adapter_weights=[1.0])

    pipe.disable_lora()
    _close(generate(pipe), s["base"])
    pipe.enable_lora()
    _close(generate(pipe), s["ref"])

    pipe.fuse_lora()
    _close(generate(pipe), s["ref"], atol=1e-3)
    pipe.unfuse_lora()
    _close(generate(pipe), s["ref"], atol=1e-3)

    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    _close(generate(pipe), s["base"], atol=1e-3)


def test_cross_attention_kwargs_scale(tiny_dirs, saved):
    s = saved["sd1"]
    pipe = load_tiny(tiny_dirs, "sd1")
    pipe.load_moslora_weights(s["path"])
    expected = _reference(load_tiny(tiny_dirs, "sd1"), s["adapter"], 0.5)  # UNet and text encoder scaled
    _close(generate(pipe, cross_attention_kwargs={"scale": 0.5}), expected)


def _plain_lora(pipe, seed=7):
    """A random diffusers-format LoRA on the UNet's attn2 to_k / to_v (rank 2, no alphas: scale 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in pipe.unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            sd[f"unet.{name}.lora_A.weight"] = (
                torch.randn(2, mod.in_features, generator=g) / mod.in_features**0.5
            )
            sd[f"unet.{name}.lora_B.weight"] = torch.randn(mod.out_features, 2, generator=g) * 0.3
    return sd


def test_mixing_with_plain_lora(tiny_dirs, saved, tmp_path):
    s = saved["sd1"]
    pipe = load_tiny(tiny_dirs, "sd1")
    plain = _plain_lora(pipe)
    plain_path = tmp_path / "plain.safetensors"
    save_file(plain, str(plain_path))

    ref = load_tiny(tiny_dirs, "sd1")
    with torch.no_grad():
        modules = dict(ref.unet.named_modules())
        for key, A in plain.items():
            if key.endswith("lora_A.weight"):
                path = key.removeprefix("unet.").removesuffix(".lora_A.weight")
                modules[path].weight += plain[key.replace("lora_A", "lora_B")] @ A
    merge_by_hand(ref, s["adapter"], 0.7)
    expected = generate(ref)

    # the plain file goes through load_moslora_weights too: it is handed to load_lora_weights
    pipe.load_moslora_weights(plain_path, adapter_name="plain")
    pipe.load_moslora_weights(s["path"], adapter_name="mos")
    pipe.set_adapters(["plain", "mos"], adapter_weights=[1.0, 0.7])
    _close(generate(pipe), expected)
    assert sorted(pipe.get_list_adapters()["unet"]) == ["mos", "plain"]


def test_other_inputs_and_pipelines(tiny_dirs, saved):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    s = saved["sd1"]
    pipe = load_tiny(tiny_dirs, "sd1")
    # a state dict in native spelling, with its config given separately
    cfg = {c: v.to_dict() for c, v in s["adapter"].config.items()}
    name = pipe.load_moslora_weights(dict(s["adapter"].tensors), moslora_config=cfg)
    assert name == "default_0"
    _close(generate(pipe), s["ref"])
    assert hasattr(StableDiffusionImg2ImgPipeline(**pipe.components), "load_moslora_weights")
    xl = load_tiny(tiny_dirs, "sdxl")
    assert hasattr(StableDiffusionXLInpaintPipeline(**xl.components), "load_moslora_weights")
    with pytest.raises(MoSLoraFormatError, match="moslora_config"):
        load_tiny(tiny_dirs, "sd1").load_moslora_weights(dict(s["adapter"].tensors))


# ------------------------------------------------------------------------------ bad input


def _snapshot(pipe):
    return {
        "adapters": pipe.get_list_adapters(),
        "tuner_layers": sum(
            isinstance(m, BaseTunerLayer)
            for c in ("unet", "text_encoder")
            for m in getattr(pipe, c).modules()
        ),
        "unet": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
    }


def _unchanged(before, after):
    assert after["adapters"] == before["adapters"]
    assert after["tuner_layers"] == before["tuner_layers"]
    assert after["unet"].keys() == before["unet"].keys()
    assert all(torch.equal(before["unet"][k], v) for k, v in after["unet"].items())


def _bad_sources(saved, tmp_path):
    good = saved["sd1"]["path"]
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"a": torch.zeros(1)}, tmp_path / "weights.bin")
    adapter = load_moslora_file(good)
    meta = adapter.metadata()
    save_file(adapter.tensors, str(tmp_path / "untagged.safetensors"))
    save_file(adapter.tensors, str(tmp_path / "v9.safetensors"), metadata={**meta, "moslora_version": "9"})
    bad = dict(adapter.tensors)
    key = next(k for k in bad if k.endswith("lora_mixer.weight"))
    bad[key] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "shapes.safetensors"), metadata=meta)
    return {
        "missing": (tmp_path / "nope.safetensors", MoSLoraFormatError, "no such file"),
        "pickle": (tmp_path / "weights.bin", MoSLoraFormatError, "pickle"),
        "truncated": (tmp_path / "cut.safetensors", MoSLoraFormatError, "truncated or corrupt"),
        "untagged": (
            tmp_path / "untagged.safetensors",
            MoSLoraFormatError,
            "lora_mixer tensors but no MoSLoRA",
        ),
        "version": (tmp_path / "v9.safetensors", MoSLoraFormatError, "moslora_version '9'"),
        "shapes": (tmp_path / "shapes.safetensors", MoSLoraFormatError, r"lora_mixer \(3, 3\)"),
        "sdxl-into-sd1": (
            saved["sdxl"]["path"],
            AdapterMismatchError,
            "made for sdxl, but the pipeline is sd1",
        ),
    }


def test_bad_input_raises_and_leaves_pipeline_unchanged(tiny_dirs, saved, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be called"))
    pipe = load_tiny(tiny_dirs, "sd1")
    pipe.load_moslora_weights(saved["sd1"]["path"], adapter_name="first")
    before = _snapshot(pipe)
    for case, (src, exc, message) in _bad_sources(saved, tmp_path).items():
        with pytest.raises(exc, match=message) as info:
            pipe.load_moslora_weights(src, adapter_name="second")
        assert str(src) in str(info.value) or case == "missing", case
        _unchanged(before, _snapshot(pipe))
    with pytest.raises(AdapterMismatchError, match="already in use"):
        pipe.load_moslora_weights(saved["sd1"]["path"], adapter_name="first")
    _unchanged(before, _snapshot(pipe))


def test_mismatch_message_names_file_key_and_both_shapes(tiny_dirs, saved):
    pipe = load_tiny(tiny_dirs, "sd1")
    src = saved["sdxl"]["adapter"]
    only_unet = copy.copy(src)
    only_unet.tensors = {k: v for k, v in src.tensors.items() if k.startswith("unet.") and "attn2.to_k" in k}
    only_unet.config = {"unet": src.config["unet"]}
    only_unet.base_model = None  # no architecture stated: the shape check must catch it
    with pytest.raises(AdapterMismatchError) as info:
        pipe.load_moslora_weights(only_unet)
    msg = str(info.value)
    assert str(src.path) in msg and "attn2.to_k.lora_A.weight" in msg
    assert "(4, 64)" in msg and "(4, 32)" in msg  # the file's shape and the pipeline's
    assert pipe.get_list_adapters() == {}


# ------------------------------------------------------------------------------ patterns, real layer


def test_rank_and_alpha_patterns_survive_native_and_exports(tiny_dirs, tmp_path):
    """Mixed ranks / alphas: the exports keep scale 1 per module (alpha = r) in stock diffusers too."""
    pipe = load_tiny(tiny_dirs, "sd1")
    adapter = random_adapter(
        pipe,
        rank=4,
        alpha=4.0,
        seed=5,
        rank_pattern={"attn1.to_q": 2, "conv1": 6},
        alpha_pattern={"to_v": 12.0},
    )
    ranks = {m.module_path: m.A.shape[0] for m in adapter.modules()}
    assert {2, 4, 6} <= set(ranks.values())
    ref = _reference(pipe, adapter)
    path = adapter.save(tmp_path / "p.safetensors")
    for loader, src in (
        ("load_moslora_weights", path),
        ("load_lora_weights", export_adapter(path, tmp_path / "d.safetensors", "diffusers")),
        ("load_lora_weights", export_adapter(path, tmp_path / "k.safetensors", "kohya")),
    ):
        fresh = load_tiny(tiny_dirs, "sd1")
        getattr(fresh, loader)(str(src))
        _close(generate(fresh), ref, what=str(src))


def test_file_from_real_moslora_layers_matches_injected_model(tiny_dirs, tmp_path):
    """Train-side path: inject MoSLoRA layers, save their state dicts natively, load into a fresh pipeline."""
    from moslora_diffusion import MoSLoraConfig, add_moslora_adapter, moslora_state_dict
    from moslora_diffusion.formats import save_moslora_file

    pipe = load_tiny(tiny_dirs, "sd1")
    configs = {
        "unet": MoSLoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"],
            rank_pattern={"to_k": 2},
        ),
        "text_encoder": MoSLoraConfig(
            r=4, lora_alpha=8, use_rslora=True, mixer_init="orthogonal", target_modules=["q_proj", "v_proj"]
        ),
    }
    g = torch.Generator().manual_seed(11)
    for comp, cfg in configs.items():
        model = getattr(pipe, comp)
        add_moslora_adapter(model, cfg, adapter_name="trained")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "lora_mixer" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    injected = generate(pipe)
    path = save_moslora_file(
        tmp_path / "trained.safetensors",
        {c: moslora_state_dict(getattr(pipe, c), "trained") for c in configs},
        configs,
        base_model={"architecture": "sd1"},
    )
    fresh = load_tiny(tiny_dirs, "sd1")
    _differs(injected, generate(fresh))
    fresh.load_moslora_weights(path)
    _close(generate(fresh), injected)


def test_sd2_native_and_kohya(tiny_dirs, tmp_path):
    pipe = load_tiny(tiny_dirs, "sd2")
    adapter = random_adapter(pipe, seed=2)
    assert adapter.architecture == "sd2"
    ref = _reference(pipe, adapter)
    _differs(ref, generate(pipe))
    path = adapter.save(tmp_path / "sd2.safetensors")
    kohya = export_adapter(path, tmp_path / "k.safetensors", "kohya")
    assert any(k.startswith("lora_te_text_model_") for k in load_file(kohya))
    for loader, src in (("load_moslora_weights", path), ("load_lora_weights", kohya)):
        fresh = load_tiny(tiny_dirs, "sd2")
        getattr(fresh, loader)(str(src))
        _close(generate(fresh), ref, what=loader)
