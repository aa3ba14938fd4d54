"""Native file round-trip and validation; export key naming checked against diffusers' own conversion."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from moslora_diffusion.errors import MoSLoraFormatError, RequestError
from moslora_diffusion.formats import (
    MOSLORA_WEIGHTS_NAME,
    ComponentConfig,
    MoSLoraFile,
    export_adapter,
    kohya_module_name,
    load_moslora_file,
    read_header,
    save_moslora_file,
    to_diffusers_state_dict,
    to_kohya_state_dict,
)
from moslora_diffusion.functional import delta_weight, lora_delta_weight

UNET_Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
UNET_CONV = "down_blocks.0.resnets.0.conv1"
TE_Q = "encoder.layers.0.self_attn.q_proj"


def _small_adapter(rank=4, te_spelling="", **unet_cfg) -> MoSLoraFile:
    g = torch.Generator().manual_seed(0)
    unet = {
        f"{UNET_Q}.lora_A.weight": torch.randn(rank, 32, generator=g),
        f"{UNET_Q}.lora_mixer.weight": torch.randn(rank, rank, generator=g),
        f"{UNET_Q}.lora_B.weight": torch.randn(32, rank, generator=g),
        f"{UNET_CONV}.lora_A.weight": torch.randn(rank, 32, 3, 3, generator=g),
        f"{UNET_CONV}.lora_mixer.weight": torch.randn(rank, rank, generator=g),
        f"{UNET_CONV}.lora_B.weight": torch.randn(32, rank, 1, 1, generator=g),
    }
    te = {
        f"{te_spelling}{TE_Q}.lora_A.weight": torch.randn(rank, 16, generator=g),
        f"{te_spelling}{TE_Q}.lora_mixer.weight": torch.randn(rank, rank, generator=g),
        f"{te_spelling}{TE_Q}.lora_B.weight": torch.randn(16, rank, generator=g),
    }
    cfgs = {
        "unet": ComponentConfig(r=rank, lora_alpha=2 * rank, target_modules=["to_q", "conv1"], **unet_cfg),
        "text_encoder": {"r": rank, "lora_alpha": rank, "use_rslora": True, "target_modules": ["q_proj"]},
    }
    return MoSLoraFile.from_state_dicts(
        {"unet": unet, "text_encoder": te}, cfgs, base_model={"architecture": "sd1", "name": "x"}
    )


# ----------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    adapter = _small_adapter()
    path = adapter.save(tmp_path / "a.safetensors")
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temporary file left behind
    loaded = load_moslora_file(path)
    assert loaded.tensors.keys() == adapter.tensors.keys()
    for k, v in adapter.tensors.items():
        torch.testing.assert_close(loaded.tensors[k], v)
    assert loaded.config == adapter.config
    assert loaded.base_model == {"architecture": "sd1", "name": "x"}
    meta, _ = read_header(path)
    assert meta["format"] == "moslora" and meta["moslora_version"] == "1"
    cfg = json.loads(meta["moslora_config"])
    assert cfg["unet"] == {
        "r": 4,
        "lora_alpha": 8.0,
        "use_rslora": False,
        "mixer_init": "orthogonal",  # the default for new adapters
        "target_modules": ["to_q", "conv1"],
    }
    assert cfg["text_encoder"]["use_rslora"] is True
    mods = {(m.component, m.module_path): m for m in loaded.modules()}
    assert mods[("unet", UNET_Q)].scale == 2.0
    assert mods[("text_encoder", TE_Q)].scale == pytest.approx(4 / 2)  # alpha / sqrt(r) = 4 / 2
    assert loaded.num_modules == 3


def test_save_into_directory_and_load_directory(tmp_path):
    written = _small_adapter().save(tmp_path)
    assert written == tmp_path / MOSLORA_WEIGHTS_NAME
    assert load_moslora_file(tmp_path).num_modules == 3


def test_save_from_peft_config_and_training_metadata(tmp_path):
    from peft import LoraConfig

    adapter = _small_adapter()
    sds = {"unet": {k.removeprefix("unet."): v for k, v in adapter.tensors.items() if k.startswith("unet.")}}
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "conv1"], rank_pattern={"conv1": 4})
    path = save_moslora_file(
        tmp_path / "p.safetensors", sds, {"unet": cfg}, training={"lr": 1e-4, "steps": 500}
    )
    loaded = load_moslora_file(path)
    assert loaded.config["unet"].rank_pattern == {"conv1": 4}
    assert loaded.config["unet"].mixer_init == "kaiming"
    assert loaded.training == {"lr": 0.0001, "steps": 500}


def test_both_clip_spellings_accepted(tmp_path):
    flat, prefixed = _small_adapter(), _small_adapter(te_spelling="text_model.")
    for adapter in (flat, prefixed):
        loaded = load_moslora_file(adapter.save(tmp_path / "x.safetensors"))
        a = to_diffusers_state_dict(loaded)
        assert f"text_encoder.text_model.{TE_Q}.lora_A.weight" in a
        k = to_kohya_state_dict(loaded)
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in k


def test_rank_pattern_written_with_other_clip_spelling_applies(tmp_path):
    adapter = _small_adapter(te_spelling="text_model.")
    adapter.config["text_encoder"].alpha_pattern = {TE_Q: 8.0}  # pattern without text_model.
    mod = next(m for m in adapter.modules() if m.component == "text_encoder")
    assert mod.scale == pytest.approx(8.0 / 2.0)


# ----------------------------------------------------------------------------- exports


def test_exports_fold_exactly(tmp_path):
    adapter = _small_adapter()
    src = adapter.save(tmp_path / "a.safetensors")
    d = load_file(export_adapter(src, tmp_path / "d", "diffusers"))
    k = load_file(export_adapter(src, tmp_path / "k.safetensors", "kohya"))
    assert (tmp_path / "d" / "pytorch_lora_weights.safetensors").exists()
    for mod in adapter.modules():
        expected = delta_weight(mod.A, mod.M, mod.B, mod.scale)
        path = ("text_model." if mod.component == "text_encoder" else "") + mod.module_path
        got_d = lora_delta_weight(
            d[f"{mod.component}.{path}.lora_A.weight"], d[f"{mod.component}.{path}.lora_B.weight"]
        )
        torch.testing.assert_close(got_d, expected)
        name = kohya_module_name("sd1", mod.component, mod.module_path)
        assert k[f"{name}.alpha"].item() == mod.A.shape[0]  # alpha = r: scale 1
        torch.testing.assert_close(
            lora_delta_weight(k[f"{name}.lora_down.weight"], k[f"{name}.lora_up.weight"]), expected
        )
    assert not any("mixer" in key or "lora_mid" in key for key in [*d, *k])
    assert read_header(tmp_path / "k.safetensors")[0]["ss_network_module"] == "networks.lora"
    assert "moslora" != read_header(tmp_path / "k.safetensors")[0].get("format")


def test_export_dtype_and_errors(tmp_path):
    src = _small_adapter().save(tmp_path / "a.safetensors")
    out = load_file(export_adapter(src, tmp_path / "h.safetensors", "diffusers", dtype="fp16"))
    assert {v.dtype for v in out.values()} == {torch.float16}
    with pytest.raises(ValueError, match="unknown export format"):
        export_adapter(src, tmp_path / "x.safetensors", "a1111")
    with pytest.raises(RequestError, match=r"\.safetensors"):
        export_adapter(src, tmp_path / "x.bin", "kohya")


def test_kohya_needs_architecture_when_unknown(tmp_path):
    adapter = _small_adapter()
    adapter.base_model = None
    adapter.config.pop("text_encoder")
    adapter.tensors = {k: v for k, v in adapter.tensors.items() if k.startswith("unet.")}
    with pytest.raises(MoSLoraFormatError, match="architecture"):
        to_kohya_state_dict(adapter)
    assert "lora_unet_down_blocks_0_resnets_0_conv1.alpha" in to_kohya_state_dict(adapter, "sd1")


SDXL_NAMES = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
    "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0": "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0",
    "down_blocks.1.attentions.0.proj_in": "lora_unet_input_blocks_4_1_proj_in",
    "down_blocks.0.resnets.1.conv1": "lora_unet_input_blocks_2_0_in_layers_2",
    "down_blocks.1.resnets.0.conv_shortcut": "lora_unet_input_blocks_4_0_skip_connection",
    "down_blocks.1.resnets.0.time_emb_proj": "lora_unet_input_blocks_4_0_emb_layers_1",
    "down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_3_0_op",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": "lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj",
    "mid_block.resnets.1.conv2": "lora_unet_middle_block_2_out_layers_3",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_k": "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_k",
    "up_blocks.0.upsamplers.0.conv": "lora_unet_output_blocks_2_2_conv",
    "up_blocks.1.resnets.0.conv1": "lora_unet_output_blocks_3_0_in_layers_2",
    "up_blocks.2.resnets.2.conv2": "lora_unet_output_blocks_8_0_out_layers_3",
    "conv_in": "lora_unet_input_blocks_0_0",
    "time_embedding.linear_1": "lora_unet_time_embed_0",
    "add_embedding.linear_2": "lora_unet_label_emb_0_2",
}


@pytest.mark.parametrize("path", sorted(SDXL_NAMES))
def test_sdxl_kohya_names_use_sgm_blocks(path):
    assert kohya_module_name("sdxl", "unet", path) == SDXL_NAMES[path]


def test_text_encoder_kohya_names():
    assert (
        kohya_module_name("sd1", "text_encoder", TE_Q)
        == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert kohya_module_name("sd2", "text_encoder", "text_model." + TE_Q).startswith(
        "lora_te_text_model_encoder"
    )
    assert kohya_module_name("sdxl", "text_encoder", TE_Q).startswith("lora_te1_text_model_")
    assert kohya_module_name("sdxl", "text_encoder_2", "text_model." + TE_Q).startswith(
        "lora_te2_text_model_"
    )


def _real_unet(arch):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    cfg = {"cross_attention_dim": 768}
    if arch == "sdxl":
        cfg = dict(
            cross_attention_dim=2048,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    with init_empty_weights():
        return UNet2DConditionModel(**cfg)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_kohya_unet_names_round_trip_through_diffusers_conversion(arch):
    """Every Linear/Conv2d of the real SD1.5 / SDXL UNet layout maps back to itself in diffusers' converter."""
    from diffusers.loaders.lora_pipeline import (
        StableDiffusionLoraLoaderMixin,
        StableDiffusionXLLoraLoaderMixin,
    )
    from diffusers.utils import convert_unet_state_dict_to_peft

    unet = _real_unet(arch)
    paths = [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(paths) > 250
    sd = {}
    for path in paths:
        name = kohya_module_name(arch, "unet", path, unet.config)
        sd.update(
            {f"{name}.lora_down.weight": torch.zeros(1, 1), f"{name}.lora_up.weight": torch.zeros(1, 1)}
        )
        sd[f"{name}.alpha"] = torch.tensor(1.0)
    if arch == "sdxl":
        out, _ = StableDiffusionXLLoraLoaderMixin.lora_state_dict(sd, unet_config=unet.config)
    else:
        out, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(sd)
    peft_sd = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in out.items()})
    got = sorted(k.removesuffix(".lora_A.weight") for k in peft_sd if k.endswith(".lora_A.weight"))
    assert got == sorted(paths)


# ----------------------------------------------------------------------------- validation


def _write(tmp_path, tensors, metadata, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def _native(tmp_path):
    adapter = _small_adapter()
    return dict(adapter.tensors), adapter.metadata()


def test_missing_file(tmp_path):
    with pytest.raises(MoSLoraFormatError, match="no such file"):
        load_moslora_file(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".safetensors"])
def test_pickle_is_refused_without_unpickling(tmp_path, monkeypatch, suffix):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as fh:
        pickle.dump({"x": Boom()}, fh)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load must not be called"))
    with pytest.raises(MoSLoraFormatError, match="pickle"):
        load_moslora_file(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_corrupt_files(tmp_path):
    good = _small_adapter().save(tmp_path / "good.safetensors")
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(MoSLoraFormatError, match="truncated or corrupt"):
        load_moslora_file(cut)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(data[:5])
    with pytest.raises(MoSLoraFormatError, match="truncated"):
        load_moslora_file(tiny)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 64)
    with pytest.raises(MoSLoraFormatError, match="corrupt safetensors header"):
        load_moslora_file(garbage)


def test_untagged_plain_lora_and_unknown_version(tmp_path):
    plain = _write(
        tmp_path, {"unet.a.lora_A.weight": torch.zeros(2, 3), "unet.a.lora_B.weight": torch.zeros(3, 2)}, {}
    )
    with pytest.raises(MoSLoraFormatError, match="not a MoSLoRA file.*plain LoRA"):
        load_moslora_file(plain)
    tensors, meta = _native(tmp_path)
    with pytest.raises(MoSLoraFormatError, match="unsupported moslora_version '2'"):
        load_moslora_file(_write(tmp_path, tensors, {**meta, "moslora_version": "2"}))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda t, m: t.update({f"unet.{UNET_Q}.lora_mixer.weight": torch.zeros(3, 3)}),
            r"lora_mixer \(3, 3\)",
        ),
        (lambda t, m: t.update({f"unet.{UNET_Q}.lora_B.weight": torch.zeros(32, 3)}), r"lora_B \(32, 3\)"),
        (
            lambda t, m: t.update({f"unet.{UNET_CONV}.lora_B.weight": torch.zeros(32, 4, 3, 3)}),
            r"\[out, 4, 1, 1\]",
        ),
        (lambda t, m: t.pop(f"unet.{UNET_Q}.lora_mixer.weight"), "lacks lora_mixer.weight"),
        (lambda t, m: t.update({"unet.x.weight": torch.zeros(1)}), "unexpected key 'unet.x.weight'"),
        (
            lambda t, m: t.update({f"vae.{UNET_Q}.lora_A.weight": torch.zeros(4, 32)}),
            "unknown component 'vae'",
        ),
        (lambda t, m: t.update({f"unet.{UNET_Q}.lora_A.weight": torch.full((4, 32), float("nan"))}), "NaN"),
        (lambda t, m: m.update({"moslora_config": "{not json"}), "not valid JSON"),
        (
            lambda t, m: m.update(
                {
                    "moslora_config": json.dumps(
                        {"unet": {"r": 8, "lora_alpha": 8}, "text_encoder": {"r": 4, "lora_alpha": 4}}
                    )
                }
            ),
            "does not match rank 8",
        ),
        (
            lambda t, m: m.update(
                {"moslora_config": json.dumps({"unet": {"r": 4, "lora_alpha": 4, "mixer_init": "zeros"}})}
            ),
            "mixer_init",
        ),
        (lambda t, m: m.update({"base_model": json.dumps({"architecture": "sd3"})}), "architecture 'sd3'"),
        (lambda t, m: m.pop("moslora_config"), "lacks 'moslora_config'"),
        (
            lambda t, m: m.update({"moslora_config": json.dumps({"unet": {"r": 4, "lora_alpha": 4}})}),
            "no entry in",
        ),
    ],
)
def test_validator_catches_bad_content(tmp_path, mutate, message):
    tensors, meta = _native(tmp_path)
    mutate(tensors, meta)
    path = _write(tmp_path, tensors, meta)
    with pytest.raises(MoSLoraFormatError, match=message) as info:
        load_moslora_file(path)
    assert str(path) in str(info.value)


def test_kohya_export_with_mixed_ranks_uses_one_alpha():
    adapter = _small_adapter(rank_pattern={"conv1": 4})
    adapter.config["unet"].rank_pattern = {}
    # rebuild with a rank-2 conv module so that ranks differ (4, 4, 2)
    g = torch.Generator().manual_seed(1)
    adapter.tensors[f"unet.{UNET_CONV}.lora_A.weight"] = torch.randn(2, 32, 3, 3, generator=g)
    adapter.tensors[f"unet.{UNET_CONV}.lora_mixer.weight"] = torch.randn(2, 2, generator=g)
    adapter.tensors[f"unet.{UNET_CONV}.lora_B.weight"] = torch.randn(32, 2, 1, 1, generator=g)
    adapter.config["unet"].rank_pattern = {"conv1": 2}
    adapter.validate()
    k = to_kohya_state_dict(adapter)
    assert {v.item() for key, v in k.items() if key.endswith(".alpha")} == {4.0}
    for mod in adapter.modules():
        name = kohya_module_name("sd1", mod.component, mod.module_path)
        down, up = k[f"{name}.lora_down.weight"], k[f"{name}.lora_up.weight"]
        got = lora_delta_weight(down, up, k[f"{name}.alpha"].item() / down.shape[0])
        torch.testing.assert_close(got, delta_weight(mod.A, mod.M, mod.B, mod.scale))


def test_mixer_init_default_is_orthogonal_and_old_files_stay_kaiming():
    """Issue "What a kohya-ss user would miss", wanted 1: the measured default for new adapters; a file written
    without the field (before it existed) reads as the Kaiming mixer it was trained with."""
    from moslora_diffusion import MoSLoraConfig
    from moslora_diffusion.formats import ComponentConfig
    from moslora_diffusion.training import parse_args

    assert MoSLoraConfig(r=2, target_modules=["q"]).mixer_init == "orthogonal"
    assert parse_args(["--instance_prompt", "x"]).mixer_init == "orthogonal"
    assert ComponentConfig.from_dict({"r": 2, "lora_alpha": 2}).mixer_init == "kaiming"
    assert (
        ComponentConfig.from_dict({"r": 2, "lora_alpha": 2, "mixer_init": "orthogonal"}).mixer_init
        == "orthogonal"
    )
