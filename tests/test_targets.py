"""Target presets on the real SD 1.5 / SD 2.1 / SDXL architectures (meta device), counted by hand."""

import pytest
import torch

from moslora_diffusion import MoSLoraConfig, add_moslora_adapter, resolve_targets
from moslora_diffusion.adapters import adapted_module_names, trainable_parameter_count
from moslora_diffusion.architectures import (
    CLIP_L_TEXT,
    OPENCLIP_BIGG_TEXT,
    OPENCLIP_H_TEXT,
    build_text_encoder,
    build_unet,
)

R = 4

# Transformer blocks per attention channel width, and transformer models (proj_in/proj_out pairs).
# SD 1.x/2.x: down 2+2+2 blocks, mid 1, up 3+3+3 (one block per model).
SD_BLOCKS = {320: 2 + 3, 640: 2 + 3, 1280: 2 + 1 + 3}
SD_MODELS = SD_BLOCKS
# SDXL: 640-wide models hold 2 blocks, 1280-wide hold 10; down 2+2 models, mid 1, up 3+3.
SDXL_BLOCKS = {640: 2 * 2 + 3 * 2, 1280: 2 * 10 + 10 + 3 * 10}
SDXL_MODELS = {640: 2 + 3, 1280: 2 + 1 + 3}


def lin(i, o, r=R):
    return r * (i + o) + r * r


def attn_params(blocks, cross):
    # attn1: q, k, v, out all c -> c; attn2: q c->c, k/v cross->c, out c->c.
    return sum(n * (4 * lin(c, c) + 2 * lin(c, c) + 2 * lin(cross, c)) for c, n in blocks.items())


def mlp_params(blocks, models):
    ff = sum(n * (lin(c, 8 * c) + lin(4 * c, c)) for c, n in blocks.items())  # GEGLU proj c -> 2*4c
    proj = sum(n * 2 * lin(c, c) for c, n in models.items())  # proj_in / proj_out (1x1 conv or Linear)
    return ff + proj


@pytest.mark.parametrize(
    "arch,blocks,models,cross",
    [
        ("sd1", SD_BLOCKS, SD_MODELS, 768),
        ("sd2", SD_BLOCKS, SD_MODELS, 1024),
        ("sdxl", SDXL_BLOCKS, SDXL_MODELS, 2048),
    ],
)
def test_unet_presets_exact_counts(arch, blocks, models, cross):
    n_blocks = sum(blocks.values())
    n_models = sum(models.values())
    for preset, n_modules, n_params in [
        ("attn", 8 * n_blocks, attn_params(blocks, cross)),
        (
            "attn-mlp",
            8 * n_blocks + 2 * n_blocks + 2 * n_models,
            attn_params(blocks, cross) + mlp_params(blocks, models),
        ),
    ]:
        unet = build_unet(arch, device="meta")
        add_moslora_adapter(unet, MoSLoraConfig(r=R, lora_alpha=R, target_modules=resolve_targets(preset)))
        assert len(adapted_module_names(unet)) == n_modules, preset
        assert trainable_parameter_count(unet) == n_params, preset


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_unet_all_preset_adds_resnets_and_time_embedding(arch):
    unet = build_unet(arch, device="meta")
    expected = 0
    n = 0
    for name, mod in unet.named_modules():
        is_resnet = ".resnets." in name and name.rsplit(".", 1)[-1] in (
            "conv1",
            "conv2",
            "conv_shortcut",
            "time_emb_proj",
        )
        is_time = name in (
            "time_embedding.linear_1",
            "time_embedding.linear_2",
            "add_embedding.linear_1",
            "add_embedding.linear_2",
        )
        is_attn_mlp = name.endswith(
            ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
        )
        if is_resnet or is_time or is_attn_mlp:
            w = mod.weight
            kernel = w[0, 0].numel() if w.dim() == 4 else 1
            expected += R * w.shape[1] * kernel + w.shape[0] * R + R * R
            n += 1
    add_moslora_adapter(unet, MoSLoraConfig(r=R, lora_alpha=R, target_modules=resolve_targets("all")))
    assert len(adapted_module_names(unet)) == n
    assert trainable_parameter_count(unet) == expected
    # SD1.5: 22 ResNets (conv1, conv2, time_emb_proj); conv_shortcut in 2 down + all 12 up ResNets;
    # 2 time-embedding linears.
    if arch == "sd1":
        assert n - 192 == 22 * 3 + 14 + 2


@pytest.mark.parametrize(
    "config,proj,prefix",
    [(CLIP_L_TEXT, False, ""), (OPENCLIP_H_TEXT, False, ""), (OPENCLIP_BIGG_TEXT, True, "text_model.")],
)
def test_text_encoder_presets(config, proj, prefix):
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    for preset, n_modules, n_params in [
        ("attn", 4 * layers, layers * 4 * lin(h, h)),
        ("attn-mlp", 6 * layers, layers * (4 * lin(h, h) + lin(h, i) + lin(i, h))),
    ]:
        te = build_text_encoder(config, with_projection=proj, device="meta")
        add_moslora_adapter(
            te, MoSLoraConfig(r=R, lora_alpha=R, target_modules=resolve_targets(preset, "text_encoder"))
        )
        names = adapted_module_names(te)
        assert len(names) == n_modules
        assert all(n.startswith(prefix + "encoder.layers.") for n in names)
        assert trainable_parameter_count(te) == n_params


def test_resolve_targets():
    assert resolve_targets("to_q, to_v") == ["to_q", "to_v"]
    assert resolve_targets(["ff.net.2"]) == ["ff.net.2"]
    assert resolve_targets("attn", "text_encoder_2") == ["q_proj", "k_proj", "v_proj", "out_proj"]
    with pytest.raises(ValueError, match="empty"):
        resolve_targets(" , ")
    with pytest.raises(ValueError, match="component"):
        resolve_targets("attn", "vae")


def test_unet_add_adapter_and_set_adapters_on_tiny_pipeline():
    from peft.tuners.lora.layer import LoraLayer

    from moslora_diffusion import moslora_state_dict
    from moslora_diffusion.tiny import make_tiny_pipeline

    pipe = make_tiny_pipeline("sd1")
    unet = pipe.unet
    unet.add_adapter(
        MoSLoraConfig(r=4, lora_alpha=4, target_modules=resolve_targets("attn")), adapter_name="a"
    )
    state = moslora_state_dict(unet, "a")
    assert sum(k.endswith("lora_mixer.weight") for k in state) == len(adapted_module_names(unet, "a")) > 0
    layer = next(m for m in unet.modules() if isinstance(m, LoraLayer))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_()
    sample = torch.randn(1, 4, 16, 16)
    ctx = torch.randn(1, 8, 32)
    full = unet(sample, 10, ctx).sample
    unet.set_adapters(["a"], weights=[0.0])
    assert layer.scaling["a"] == 0.0
    none = unet(sample, 10, ctx).sample
    unet.disable_adapters()
    base = unet(sample, 10, ctx).sample
    torch.testing.assert_close(none, base)
    assert (full - base).abs().max() > 1e-3
