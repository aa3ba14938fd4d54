"""MoSLoRA through PEFT's own API: the delta PEFT sees, merge / unmerge / safe merge / fp16 merge, mixed
adapter batches, state dicts, and save_pretrained -> PeftModel.from_pretrained (exact, or loud)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from moslora_diffusion import MoSLoraConfig
from moslora_diffusion.layer import MoSLoraConv2d, MoSLoraLinear


class LinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


NETS = {"linear": (LinearNet, (5, 12)), "conv": (ConvNet, (2, 3, 6, 6))}


def _peft(kind: str, seed: int = 0, **config):
    torch.manual_seed(seed)
    net_cls, shape = NETS[kind]
    cfg = MoSLoraConfig(r=4, lora_alpha=6, target_modules=["a", "b"], **config)
    model = get_peft_model(net_cls(), cfg)
    _randomise(model, seed)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(99))


def _randomise(model: nn.Module, seed: int, adapter: str = "default") -> None:
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." in name and ("lora_B" in name or "lora_mixer" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (MoSLoraLinear, MoSLoraConv2d))]


@pytest.mark.parametrize("kind", NETS)
def test_get_delta_weight_is_the_hand_computed_moslora_delta(kind):
    model, _ = _peft(kind)
    for layer in _layers(model):
        A = layer.lora_A["default"].weight.detach().double()
        M = layer.lora_mixer["default"].weight.detach().double()
        B = layer.lora_B["default"].weight.detach().double()
        s = 6 / 4
        if A.ndim == 2:
            expected = s * B @ M @ A
        else:  # [out, r, 1, 1] x [r, r] x [r, in, kh, kw]
            expected = s * torch.einsum("or,rikl->oikl", B.flatten(1) @ M, A)
        got = layer.get_delta_weight("default").double()
        assert torch.allclose(got, expected, atol=1e-6)
        without_mixer = s * (B.flatten(1) @ A.flatten(1)).reshape(expected.shape)
        assert not torch.allclose(got, without_mixer, atol=1e-3)  # the mixer really is in it


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("safe", [False, True])
def test_merge_unmerge_and_safe_merge(kind, safe):
    model, x = _peft(kind)
    with model.disable_adapter():
        base = model(x).detach()
    adapted = model(x).detach()
    assert not torch.allclose(adapted, base, atol=1e-3)
    for layer in _layers(model):
        layer.merge(safe_merge=safe)
    assert torch.allclose(model(x), adapted, atol=1e-5)
    for layer in _layers(model):
        layer.unmerge()
    assert torch.allclose(model(x), adapted, atol=1e-5)
    with model.disable_adapter():
        assert torch.allclose(model(x), base, atol=1e-5)
    merged = model.merge_and_unload(safe_merge=safe)
    assert not any(isinstance(m, (MoSLoraLinear, MoSLoraConv2d)) for m in merged.modules())
    assert torch.allclose(merged(x), adapted, atol=1e-5)


@pytest.mark.parametrize("kind", NETS)
def test_fp16_merge_matches_fp32_delta(kind):
    model, x = _peft(kind)
    reference = {id(layer): layer.get_delta_weight("default").detach() for layer in _layers(model)}
    before = {id(layer): layer.get_base_layer().weight.detach().clone() for layer in _layers(model)}
    model = model.half()
    for layer in _layers(model):
        base16 = layer.get_base_layer().weight.detach().clone()
        layer.merge()
        merged = layer.get_base_layer().weight.detach()
        assert merged.dtype == torch.float16
        delta = merged.float() - base16.float()
        assert torch.allclose(delta, reference[id(layer)], atol=2e-2, rtol=1e-2)
        assert not torch.allclose(merged.float(), before[id(layer)], atol=1e-3)


@pytest.mark.parametrize("kind", NETS)
def test_mixed_adapter_batch_matches_single_adapter_runs(kind):
    model, x = _peft(kind)
    model.add_adapter(
        "other", MoSLoraConfig(r=2, lora_alpha=2, target_modules=["a", "b"], mixer_init="orthogonal")
    )
    _randomise(model, 7, adapter="other")
    model.eval()  # PEFT takes adapter_names at inference only
    names = ["default", "other"] + ["__base__"] * (x.shape[0] - 2)
    mixed = model(x, adapter_names=names).detach()
    singles = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        singles[name] = model(x).detach()
    with model.disable_adapter():
        singles["__base__"] = model(x).detach()
    for row, name in enumerate(names):
        assert torch.allclose(mixed[row], singles[name][row], atol=1e-5), (row, name)


@pytest.mark.parametrize("kind", NETS)
def test_state_dict_round_trip_keeps_the_mixer(kind):
    model, x = _peft(kind, mixer_init="orthogonal")
    state = get_peft_model_state_dict(model)
    assert any("lora_mixer" in k for k in state)
    fresh, _ = _peft(kind, mixer_init="orthogonal")  # same base weights ...
    _randomise(fresh, 42)  # ... other adapter values
    assert not torch.allclose(fresh(x), model(x))
    result = set_peft_model_state_dict(fresh, state)
    assert not result.unexpected_keys
    assert torch.allclose(fresh(x), model(x), atol=1e-6)


@pytest.mark.parametrize("kind", NETS)
def test_save_pretrained_then_from_pretrained_is_exact(kind, tmp_path):
    model, x = _peft(kind, mixer_init="orthogonal", use_rslora=True)
    expected = model(x).detach()
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)  # the same base weights as the saved model's (seed-0 initialisation)
    base = NETS[kind][0]()
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    config = loaded.peft_config["default"]
    assert type(config) is MoSLoraConfig and config.mixer_init == "orthogonal" and config.use_rslora
    assert all(isinstance(layer, (MoSLoraLinear, MoSLoraConv2d)) for layer in _layers(loaded))
    assert len(_layers(loaded)) == 2
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    assert math.isclose(_layers(loaded)[0].scaling["default"], 6 / math.sqrt(4))


def test_loading_without_this_package_fails_loudly(tmp_path):
    model, _ = _peft("linear")
    model.save_pretrained(tmp_path / "adapter")
    script = textwrap.dedent(
        f"""
        import torch
        from torch import nn
        from peft import PeftModel

        class LinearNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(12, 16)
                self.b = nn.Linear(16, 10)

        PeftModel.from_pretrained(LinearNet(), {str(tmp_path / "adapter")!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "import moslora_diffusion" in proc.stderr  # the error names the fix
