"""Helpers for tests on tiny pipelines: cached loading, deterministic generation, random adapters, hand merge.

Imported one way everywhere: ``from tests.pipeline_support import ...`` (fixtures stay in conftest.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

PROMPT = "a red square"

_cache: dict[str, object] = {}


def load_tiny(tiny_dirs, arch: str):
    """A fresh copy of the tiny pipeline for ``arch`` (deep-copied from a cached load)."""
    if arch not in _cache:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(tiny_dirs[arch]))
        pipe.set_progress_bar_config(disable=True)
        _cache[arch] = pipe
    return copy.deepcopy(_cache[arch])


def generate(pipe, seed: int = 0, **kwargs) -> np.ndarray:
    """Two-step deterministic generation at the tiny size, as a float numpy array."""
    size = 32
    out = pipe(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=5.0,
        height=size,
        width=size,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(seed),
        **kwargs,
    )
    return np.asarray(out.images[0], dtype=np.float64)


def default_targets(pipe) -> dict[str, list[str]]:
    """Attention projections of the UNet, q/k/v/out of each CLIP encoder, and one 3x3 and one 1x1 conv."""
    targets: dict[str, list[str]] = {}
    unet_names = [n for n, _ in pipe.unet.named_modules()]
    attn = [n for n in unet_names if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    conv3 = [n for n in unet_names if n.endswith("resnets.0.conv1")][:1]
    conv1 = [n for n in unet_names if n.endswith("conv_shortcut")][:1]
    targets["unet"] = attn + conv3 + conv1
    for comp in ("text_encoder", "text_encoder_2"):
        model = getattr(pipe, comp, None)
        if model is not None:
            targets[comp] = [
                n for n, _ in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))
            ]
    return targets


def random_adapter(
    pipe, rank: int = 4, alpha: float = 8.0, seed: int = 0, use_rslora: bool = False, components=None, **cfg
):
    """A MoSLoraFile with random A, M and non-zero B for ``default_targets(pipe)`` (optionally some components)."""
    from moslora_diffusion.formats import ComponentConfig, MoSLoraFile

    g = torch.Generator().manual_seed(seed)
    targets = {c: p for c, p in default_targets(pipe).items() if components is None or c in components}
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    configs = {}
    for comp, paths in targets.items():
        config = ComponentConfig(
            r=rank,
            lora_alpha=alpha,
            use_rslora=use_rslora,
            target_modules=sorted({p.split(".")[-1] for p in paths}),
            **cfg,
        )
        modules = dict(getattr(pipe, comp).named_modules())
        sd = {}
        for path in paths:
            layer = modules[path]
            r, _ = config.rank_alpha(comp, path)
            if isinstance(layer, torch.nn.Conv2d):
                a_shape = (r, layer.in_channels, *layer.kernel_size)
                b_shape = (layer.out_channels, r, 1, 1)
                fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            else:
                a_shape, b_shape = (r, layer.in_features), (layer.out_features, r)
                fan_in = layer.in_features
            sd[f"{path}.lora_A.weight"] = torch.randn(a_shape, generator=g) / fan_in**0.5
            sd[f"{path}.lora_mixer.weight"] = torch.randn(r, r, generator=g) / r**0.5
            sd[f"{path}.lora_B.weight"] = torch.randn(b_shape, generator=g) * 0.3 / r**0.5
        state_dicts[comp] = sd
        configs[comp] = config
    from moslora_diffusion.formats import base_model_info

    base = base_model_info(pipe, "tiny-test")
    return MoSLoraFile.from_state_dicts(state_dicts, configs, base_model=base, training={"steps": 1})


def merge_by_hand(pipe, adapter, factor: float = 1.0) -> None:
    """Add factor·s·B·M·A to each adapted weight in place: the reference every loading path must match."""
    from moslora_diffusion.formats import path_variants

    with torch.no_grad():
        for mod in adapter.modules():
            model = getattr(pipe, mod.component)
            table = dict(model.named_modules())
            path = next(p for p in path_variants(mod.component, mod.module_path) if p in table)
            weight = table[path].weight
            r = mod.A.shape[0]
            BM = (mod.B.double().flatten(1) @ mod.M.double()).reshape(mod.B.shape)
            if mod.A.ndim == 2:
                delta = BM @ mod.A.double()
            else:  # conv: sum over rank of B[:, k] (x) A[k]
                delta = sum(BM[:, k, 0, 0][:, None, None, None] * mod.A.double()[k][None] for k in range(r))
            weight += (factor * mod.scale * delta).to(weight.dtype)
