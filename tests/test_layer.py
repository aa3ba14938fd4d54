"""The MoSLoRA layer against hand computations: y = W0 x + s * B M A x."""

import copy
import math

import peft
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from torch import nn

from moslora_diffusion import MoSLoraConfig, add_moslora_adapter, moslora_state_dict
from moslora_diffusion.layer import MoSLoraConv2d, MoSLoraLinear, init_mixer_
from moslora_diffusion.quiet import adding_an_adapter


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 10)
        self.conv3 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 5, 1)

    def forward(self, x, img):
        return self.lin(x), self.conv1(self.conv3(img))


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _factors(layer, name="default"):
    return (
        layer.lora_A[name].weight.detach(),
        layer.lora_mixer[name].weight.detach(),
        layer.lora_B[name].weight.detach(),
    )


@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_matches_hand_computation(use_rslora):
    torch.manual_seed(0)
    net = Net()
    r, alpha = 4, 6.0
    add_moslora_adapter(
        net,
        MoSLoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora, target_modules=["lin", "conv3", "conv1"]),
    )
    _randomise(net)
    s = alpha / math.sqrt(r) if use_rslora else alpha / r
    x = torch.randn(7, 12)
    img = torch.randn(2, 3, 8, 8)
    y_lin, y_img = net(x, img)

    a, m, b = _factors(net.lin)
    base = net.lin.base_layer
    expected_lin = x @ base.weight.T + base.bias + s * (x @ a.T @ m.T @ b.T)
    torch.testing.assert_close(y_lin, expected_lin, rtol=1e-5, atol=1e-5)

    # conv3: A carries the 3x3 kernel; mixer and B act per pixel (1x1).
    a3, m3, b3 = _factors(net.conv3)
    h = F.conv2d(img, a3, padding=1)
    h = torch.einsum("ij,njhw->nihw", m3, h)
    h = torch.einsum("oi,nihw->nohw", b3[:, :, 0, 0], h)
    mid = net.conv3.base_layer(img) + s * h
    a1, m1, b1 = _factors(net.conv1)
    h1 = torch.einsum("oi,nihw->nohw", b1[:, :, 0, 0] @ m1 @ a1[:, :, 0, 0], mid)
    expected_img = net.conv1.base_layer(mid) + s * h1
    torch.testing.assert_close(y_img, expected_img, rtol=1e-4, atol=1e-5)


def test_initialisation():
    torch.manual_seed(0)
    net = Net()
    x, img = torch.randn(3, 12), torch.randn(1, 3, 8, 8)
    ref = [t.clone() for t in net(x, img)]
    add_moslora_adapter(
        net, MoSLoraConfig(r=8, lora_alpha=8, mixer_init="kaiming", target_modules=["lin", "conv3"])
    )
    for got, want in zip(net(x, img), ref):  # B = 0: the adapter starts as a no-op
        torch.testing.assert_close(got, want)
    m = net.lin.lora_mixer["default"].weight
    assert m.abs().max() <= 1 / math.sqrt(8) + 1e-6  # Kaiming-uniform with a = sqrt(5): bound 1/sqrt(fan_in)
    assert m.std() > 0.05
    assert torch.count_nonzero(net.lin.lora_B["default"].weight) == 0

    net2 = Net()
    add_moslora_adapter(
        net2, MoSLoraConfig(r=8, lora_alpha=8, mixer_init="orthogonal", target_modules=["lin"])
    )
    q = net2.lin.lora_mixer["default"].weight
    torch.testing.assert_close(q @ q.T, torch.eye(8), atol=1e-5, rtol=0)
    assert MoSLoraConfig(r=8, target_modules=["lin"]).mixer_init == "orthogonal"  # the default
    for dtype in (torch.bfloat16, torch.float16):  # QR has no half-precision kernels on CPU
        w = torch.empty(8, 8, dtype=dtype)
        init_mixer_(w, "orthogonal")
        torch.testing.assert_close((w.float() @ w.float().T), torch.eye(8), atol=3e-2, rtol=0)


def test_merge_unmerge_round_trip():
    torch.manual_seed(0)
    net = Net()
    add_moslora_adapter(net, MoSLoraConfig(r=4, lora_alpha=8, target_modules=["lin", "conv3", "conv1"]))
    _randomise(net)
    x, img = torch.randn(3, 12), torch.randn(2, 3, 8, 8)
    w0 = net.lin.base_layer.weight.detach().clone()
    c0 = net.conv3.base_layer.weight.detach().clone()
    y = [t.detach() for t in net(x, img)]
    for layer in (net.lin, net.conv3, net.conv1):
        layer.merge(safe_merge=True)
    a, m, b = _factors(net.lin)
    torch.testing.assert_close(net.lin.base_layer.weight, w0 + 2.0 * b @ m @ a, rtol=1e-5, atol=1e-6)
    merged = net(x, img)
    for got, want in zip(merged, y):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for layer in (net.lin, net.conv3, net.conv1):
        layer.unmerge()
    torch.testing.assert_close(net.lin.base_layer.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.conv3.base_layer.weight, c0, rtol=0, atol=1e-6)


def test_mixer_is_trainable_and_gets_gradients():
    torch.manual_seed(0)
    net = Net()
    add_moslora_adapter(net, MoSLoraConfig(r=4, lora_alpha=4, target_modules=["lin", "conv3"]))
    _randomise(net)
    y1, y2 = net(torch.randn(3, 12), torch.randn(1, 3, 8, 8))
    (y1.square().sum() + y2.square().sum()).backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert set(grads) == {
        f"{mod}.lora_{part}.default.weight" for mod in ("lin", "conv3") for part in ("A", "B", "mixer")
    }
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert net.lin.base_layer.weight.grad is None


def test_state_dict_holds_mixer_and_round_trips():
    torch.manual_seed(0)
    net = Net()
    other = copy.deepcopy(net)
    add_moslora_adapter(net, MoSLoraConfig(r=4, lora_alpha=4, target_modules=["lin", "conv3"]))
    _randomise(net)
    state = moslora_state_dict(net)
    assert state["lin.lora_mixer.weight"].shape == (4, 4)
    assert state["conv3.lora_A.weight"].shape == (4, 3, 3, 3)
    assert state["conv3.lora_B.weight"].shape == (6, 4, 1, 1)

    add_moslora_adapter(other, MoSLoraConfig(r=4, lora_alpha=4, target_modules=["lin", "conv3"]))
    from moslora_diffusion import load_moslora_state_dict

    load_moslora_state_dict(other, state)
    x, img = torch.randn(3, 12), torch.randn(1, 3, 8, 8)
    for got, want in zip(other(x, img), net(x, img)):
        torch.testing.assert_close(got, want)


def test_multiple_adapters_and_plain_lora_side_by_side():
    torch.manual_seed(0)
    net = Net()
    add_moslora_adapter(net, MoSLoraConfig(r=4, lora_alpha=4, target_modules=["lin"]), adapter_name="mos")
    with adding_an_adapter():
        peft.inject_adapter_in_model(
            LoraConfig(r=2, lora_alpha=2, target_modules=["lin"]), net, adapter_name="plain"
        )
    assert isinstance(net.lin, MoSLoraLinear)
    assert "mos" in net.lin.lora_mixer and "plain" not in net.lin.lora_mixer
    assert "plain" not in net.lin.lora_variant
    _randomise(net)
    x = torch.randn(3, 12)
    base = net.lin.base_layer(x)
    a, m, b = _factors(net.lin, "mos")
    net.lin.set_adapter("mos")
    torch.testing.assert_close(net.lin(x), base + x @ a.T @ m.T @ b.T, rtol=1e-5, atol=1e-5)
    net.lin.set_adapter("plain")
    pa, pb = net.lin.lora_A["plain"].weight, net.lin.lora_B["plain"].weight
    torch.testing.assert_close(net.lin(x), base + x @ pa.T @ pb.T, rtol=1e-5, atol=1e-5)
    # set_adapter moves trainability with the active adapter, the mixer included
    assert not net.lin.lora_mixer["mos"].weight.requires_grad
    net.lin.set_adapter("mos")
    assert net.lin.lora_mixer["mos"].weight.requires_grad


def test_moslora_on_plain_lora_layer_fails_loudly():
    net = Net()
    peft.inject_adapter_in_model(LoraConfig(r=2, target_modules=["lin"]), net)
    with pytest.raises(ValueError, match="plain LoRA"):
        add_moslora_adapter(net, MoSLoraConfig(r=4, target_modules=["lin"]), adapter_name="mos")
    # Even through PEFT directly, the mixer is never silently dropped.
    with (
        pytest.raises(ValueError, match="use_moslora"),
        adding_an_adapter(),
    ):  # PEFT's "second adapter" notice
        peft.inject_adapter_in_model(MoSLoraConfig(r=4, target_modules=["lin"]), net, adapter_name="mos2")


def test_get_peft_model_and_bad_configs():
    net = Net()
    model = peft.get_peft_model(net, MoSLoraConfig(r=4, lora_alpha=4, target_modules=["lin", "conv3"]))
    assert isinstance(model.base_model.model.lin, MoSLoraLinear)
    assert isinstance(model.base_model.model.conv3, MoSLoraConv2d)
    n_trainable, _ = model.get_nb_trainable_parameters()
    assert n_trainable == 4 * (12 + 10) + 16 + (4 * 3 * 9 + 6 * 4) + 16
    with pytest.raises(ValueError, match="mixer_init"):
        MoSLoraConfig(r=4, mixer_init="zeros")
    with pytest.raises(ValueError, match="use_dora"):
        MoSLoraConfig(r=4, use_dora=True)


def test_grouped_conv_is_refused():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups"):
        add_moslora_adapter(net, MoSLoraConfig(r=4, target_modules=["0"]))
