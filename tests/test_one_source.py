"""One fact, one place: every public entry point gives the same architecture and the same fit verdict."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from moslora_diffusion import architectures, constants, errors
from moslora_diffusion.architectures import SD15_UNET, SD21_UNET, SDXL_UNET
from moslora_diffusion.errors import AdapterMismatchError, MoSLoraError
from moslora_diffusion.formats import base_model_info, export_adapter
from moslora_diffusion.formats.inspect import describe_adapter_file, read_adapter_header
from moslora_diffusion.loading import check_file_fits
from tests.pipeline_support import load_tiny, random_adapter

# (UNet config, model_index, expected): the real configs, and mixes that the old copies disagreed on.
CASES = [
    (SD15_UNET, {"_class_name": "StableDiffusionPipeline"}, "sd1"),
    (SD21_UNET, {"_class_name": "StableDiffusionPipeline"}, "sd2"),
    (SDXL_UNET, {"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["t", "C"]}, "sdxl"),
    (SDXL_UNET, None, "sdxl"),  # the UNet alone says SDXL (text_time conditioning)
    ({"cross_attention_dim": 768, "use_linear_projection": True}, None, "sd1"),  # CLIP-L width wins
    ({"cross_attention_dim": 1024, "use_linear_projection": False}, None, "sd2"),
    ({"cross_attention_dim": 32, "use_linear_projection": True}, None, "sd2"),  # tiny SD2-like
    ({"cross_attention_dim": 64}, None, "sd1"),  # the toy model
    ({"cross_attention_dim": 768}, {"_class_name": "X", "text_encoder_2": [None, None]}, "sd1"),
]


class _AttrDict(dict):
    """A diffusers-style config: a mapping whose entries are attributes too."""

    __getattr__ = dict.__getitem__


def _pipe_like(unet_config, model_index):
    """A stand-in pipeline with this UNet config (and a second text encoder when the index has one)."""
    layout = {"layers_per_block": 1, "down_block_types": [], "up_block_types": []}
    pipe = SimpleNamespace(
        unet=SimpleNamespace(config=_AttrDict({**layout, **unet_config})),
        config=SimpleNamespace(_name_or_path=None),
    )
    second = (model_index or {}).get("text_encoder_2")
    if second and second[0] is not None:
        pipe.text_encoder_2 = torch.nn.Linear(1, 1)
    return pipe


@pytest.mark.parametrize(("unet_config", "model_index", "expected"), CASES)
def test_every_entry_point_names_the_same_architecture(unet_config, model_index, expected):
    pipe = _pipe_like(unet_config, model_index)
    ddp = _pipe_like(unet_config, model_index)
    ddp.unet = SimpleNamespace(module=ddp.unet)  # training's DDP-wrapped UNet
    verdicts = {
        "detect": architectures.detect(dict(unet_config), model_index),
        "detect_pipeline": architectures.detect_pipeline(pipe),
        "detect_pipeline(ddp)": architectures.detect_pipeline(ddp),
        "base_model_info": base_model_info(pipe)["architecture"],
    }
    assert verdicts == dict.fromkeys(verdicts, expected)


def test_real_architectures_built_on_meta_device_are_detected():
    for arch in constants.ARCHITECTURES:
        unet = architectures.build_unet(arch, device="meta")
        assert architectures.detect(dict(unet.config)) == arch


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("sd1", "sd1"),
        ("sdxl_base_v1-0", "sdxl"),
        ("sd_v2", "sd2"),
        ("stable-diffusion-v1/lora", "sd1"),
        ("?", None),
    ],
)
def test_architecture_spellings_of_other_tools(spelling, expected):
    assert architectures.normalize(spelling) == expected


def test_one_error_hierarchy():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, MoSLoraError) and issubclass(cls, ValueError), name


# ---------------------------------------------------------------------------------------------- fit verdicts


def _files(tiny_dirs, root):
    """Adapter files of every kind, fitting and not, for the tiny SD1 pipeline."""
    sd1 = load_tiny(tiny_dirs, "sd1")
    native = random_adapter(sd1, components=["unet"]).save(root / "native.safetensors")
    files = {
        "native": (native, True),
        "diffusers": (export_adapter(native, root / "plain.safetensors", "diffusers"), True),
        "kohya": (export_adapter(native, root / "kohya.safetensors", "kohya"), True),
        "native-sdxl": (random_adapter(load_tiny(tiny_dirs, "sdxl")).save(root / "xl.safetensors"), False),
    }
    # plain and kohya files whose up weights have the wrong width: header shapes must catch them
    for kind, up in (("diffusers", ".lora_B.weight"), ("kohya", ".lora_up.weight")):
        src = files[kind][0]
        from safetensors import safe_open

        with safe_open(str(src), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
        key = next(k for k in tensors if k.endswith(up) and "to_q" in k)
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
        bad = root / f"{kind}-bad.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        files[f"{kind}-bad-shape"] = (bad, False)
    return files


def test_fit_verdicts_agree_between_header_check_loader_and_web_ui(tiny_dirs, tmp_path):
    from moslora_diffusion.webui.engine import Engine

    files = _files(tiny_dirs, tmp_path)
    engine = Engine(load_tiny(tiny_dirs, "sd1"), tiny_dirs["sd1"], tmp_path, tmp_path / "out")
    for label, (path, fits) in files.items():
        verdicts = {}
        for entry, call in (
            ("check_file_fits", lambda p: check_file_fits(load_tiny(tiny_dirs, "sd1"), p)),
            ("load_moslora_weights", lambda p: load_tiny(tiny_dirs, "sd1").load_moslora_weights(str(p))),
            ("engine.adapter_info", lambda p: engine.adapter_info(p.name)),
        ):
            try:
                call(path)
                verdicts[entry] = True
            except AdapterMismatchError:
                verdicts[entry] = False
        assert verdicts == dict.fromkeys(verdicts, fits), label


def test_one_describer_for_every_file_kind(tiny_dirs, tmp_path):
    files = _files(tiny_dirs, tmp_path)
    kinds = {label: read_adapter_header(path).kind for label, (path, _) in files.items()}
    assert kinds["native"] == "moslora" and kinds["diffusers"] == "diffusers" and kinds["kohya"] == "kohya"
    for label in ("native", "diffusers", "kohya"):
        info = describe_adapter_file(files[label][0])
        assert info["architecture"] == "sd1", label  # the exports carry the base model's description
        assert info["rank"] == 4 and info["modules"] == describe_adapter_file(files["native"][0])["modules"]
        assert info["steps"] == 1, label  # training metadata survives the export
        json.dumps(info)


def test_architecture_of_an_adapter_without_metadata():
    to_k = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    guess = architectures.from_adapter_modules
    assert guess([("unet", to_k, 768)]) == "sd1" and guess([("unet", to_k, 1024)]) == "sd2"
    assert guess([("text_encoder_2", "encoder.layers.0.self_attn.q_proj", 1280)]) == "sdxl"
    assert guess([("unet", "down_blocks.1.attentions.0.proj_in", 320)]) is None  # no evidence: no guess
    assert guess([("unet", to_k, 768), ("unet", to_k.replace("blocks.1", "blocks.2"), 1024)]) is None
