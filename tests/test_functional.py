"""Pure weight functions against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft.utils.other import get_pattern_key

from moslora_diffusion.functional import (
    check_shapes,
    delta_weight,
    fold_mixer,
    lora_delta_weight,
    lora_scale,
    match_pattern_key,
    resolve_rank_alpha,
)


def _rand(*shape, seed=0):
    return torch.randn(
        *shape, generator=torch.Generator().manual_seed(seed + sum(shape)), dtype=torch.float64
    )


def test_scale_plain_and_rslora():
    assert lora_scale(4, 8) == 2.0
    assert lora_scale(16, 8, use_rslora=True) == 2.0
    assert lora_scale(8, 8, use_rslora=True) == pytest.approx(8 / math.sqrt(8))
    with pytest.raises(ValueError):
        lora_scale(0, 1)


def test_linear_delta_matches_elementwise_sum():
    r, n_in, n_out, s = 3, 5, 4, 0.7
    A, M, B = _rand(r, n_in), _rand(r, r, seed=1), _rand(n_out, r, seed=2)
    expected = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        for i in range(n_in):
            expected[o, i] = s * sum(B[o, p] * M[p, q] * A[q, i] for p in range(r) for q in range(r))
    torch.testing.assert_close(delta_weight(A, M, B, s), expected)
    # The layer view: W x + s B M A x equals (W + delta) x.
    x = _rand(7, n_in, seed=3)
    torch.testing.assert_close(x @ delta_weight(A, M, B, s).T, s * (((x @ A.T) @ M.T) @ B.T))


@pytest.mark.parametrize("kernel", [3, 1])
def test_conv_delta_matches_sequential_convs(kernel):
    r, c_in, c_out, s = 4, 3, 5, 1.3
    A, M, B = _rand(r, c_in, kernel, kernel), _rand(r, r, seed=1), _rand(c_out, r, 1, 1, seed=2)
    x = _rand(2, c_in, 6, 6, seed=4)
    pad = kernel // 2
    # LoCon forward: conv with A (kernel k), 1x1 mix by M, 1x1 conv with B.
    h = F.conv2d(x, A, padding=pad)
    h = F.conv2d(h, M[:, :, None, None])
    y_adapter = s * F.conv2d(h, B)
    delta = delta_weight(A, M, B, s)
    assert delta.shape == (c_out, c_in, kernel, kernel)
    torch.testing.assert_close(F.conv2d(x, delta, padding=pad), y_adapter)


def test_fold_gives_plain_lora_with_same_delta():
    A, M, B = _rand(4, 6), _rand(4, 4, seed=1), _rand(5, 4, seed=2)
    folded = fold_mixer(M, B, 0.25)
    assert folded.shape == B.shape
    torch.testing.assert_close(lora_delta_weight(A, folded), delta_weight(A, M, B, 0.25))
    torch.testing.assert_close(folded, 0.25 * B @ M)
    Ac, Bc = _rand(4, 3, 3, 3), _rand(6, 4, 1, 1, seed=5)
    torch.testing.assert_close(lora_delta_weight(Ac, fold_mixer(M, Bc, 2.0)), delta_weight(Ac, M, Bc, 2.0))


def test_low_precision_inputs_are_computed_in_fp32():
    A, M, B = (t.to(torch.float16) for t in (_rand(4, 64), _rand(4, 4, seed=1), _rand(64, 4, seed=2)))
    out = delta_weight(A, M, B, 0.5)
    assert out.dtype == torch.float16
    ref = 0.5 * B.double() @ M.double() @ A.double()
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize(
    "shapes, problem",
    [
        (((4, 6), (4, 4), (5, 4)), None),
        (((4, 6), (3, 3), (5, 4)), "lora_mixer"),
        (((4, 6), (4, 4), (5, 3)), "lora_B"),
        (((4, 3, 3, 3), (4, 4), (6, 4)), "lora_B"),
        (((4, 3, 3, 3), (4, 4), (6, 4, 3, 3)), "lora_B"),
        (((4,), (4, 4), (5, 4)), "lora_A"),
    ],
)
def test_check_shapes(shapes, problem):
    result = check_shapes(*(torch.zeros(s) for s in shapes))
    if problem is None:
        assert result is None
    else:
        assert problem in result
        with pytest.raises(ValueError):
            delta_weight(*(torch.zeros(s) for s in shapes), 1.0)


@pytest.mark.parametrize(
    "path",
    [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "encoder.layers.1.self_attn.q_proj",
        "encoder.layers.11.self_attn.q_proj",
        "xattn1.to_q",
    ],
)
def test_pattern_matching_agrees_with_peft(path):
    keys = ["attn1.to_q", "mid_block.*to_out.0", "layers.1.self_attn.q_proj", "nothing"]
    ours = match_pattern_key(keys, path)
    assert (ours or path) == get_pattern_key(keys, path)


def test_resolve_rank_alpha_patterns_and_alternative_spellings():
    rp = {"attn1.to_q": 8, "text_model.encoder.layers.0.self_attn.k_proj": 2}
    ap = {"to_q": 3.0}
    assert resolve_rank_alpha("a.attn1.to_q", 4, 4.0, rp, ap) == (8, 3.0)
    assert resolve_rank_alpha("a.attn2.to_q", 4, 4.0, rp, ap) == (4, 3.0)
    assert resolve_rank_alpha("a.attn2.to_k", 4, 4.0, rp, ap) == (4, 4.0)
    # A pattern written with the text_model. prefix still applies to the flattened spelling.
    flat = "encoder.layers.0.self_attn.k_proj"
    assert resolve_rank_alpha(flat, 4, 4.0, rp, ap) == (4, 4.0)
    assert resolve_rank_alpha(flat, 4, 4.0, rp, ap, ["text_model." + flat]) == (2, 4.0)
