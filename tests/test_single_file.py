"""Single-file checkpoints (original LDM / SGM layout): detection, loading, training, adapters and the web UI.

The files are written by our own converter (`tests/ldm_layout.py`) from tiny diffusers pipelines and the
toy-world model; every check compares against the same model loaded from its diffusers folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moslora_diffusion import base_models, toyworld
from moslora_diffusion.errors import BaseModelError, TrainConfigError
from tests.ldm_layout import pipeline_to_single_file
from tests.pipeline_support import generate, load_tiny, random_adapter

ARCHES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    """arch -> (diffusers folder, single file) for tiny sd1 / sd2 / sdxl (SDXL's encoders of unequal widths)."""
    from diffusers import DiffusionPipeline

    from moslora_diffusion.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("single")
    out = {}
    for arch in ARCHES:
        folder = save_tiny_pipeline(arch, root / arch, text_width_2=48)
        pipe = DiffusionPipeline.from_pretrained(str(folder))
        out[arch] = (folder, pipeline_to_single_file(pipe, root / f"{arch}.safetensors"))
    return out


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(toyworld.base_model_path()))
    return pipeline_to_single_file(pipe, tmp_path_factory.mktemp("toy") / "toy-world.safetensors")


def _weights(pipe):
    return {
        (comp, k): v
        for comp in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(pipe, comp, None) is not None
        for k, v in getattr(pipe, comp).state_dict().items()
    }


@pytest.mark.parametrize("arch", ARCHES)
def test_single_file_loads_the_same_weights_and_schedule(single_files, arch):
    from diffusers import DiffusionPipeline

    folder, file = single_files[arch]
    found = base_models.inspect_checkpoint(file)
    assert found.architecture == arch
    assert found.prediction_type == ("v_prediction" if arch == "sd2" else "epsilon")
    ref = DiffusionPipeline.from_pretrained(str(folder))
    pipe = base_models.load_pipeline(file, config=folder)
    assert type(pipe) is type(ref)
    a, b = _weights(ref), _weights(pipe)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert pipe.scheduler.config.prediction_type == ref.scheduler.config.prediction_type
    assert not hasattr(pipe, "moslora_checkpoint")  # no side channel on a diffusers object


def test_prediction_type_marker_and_overrides(single_files, tmp_path):
    folder, file = single_files["sd1"]
    tensors = load_file(str(file))
    marked = tmp_path / "vpred.safetensors"
    save_file({**tensors, "v_pred": torch.zeros(0)}, str(marked))
    assert base_models.inspect_checkpoint(marked).prediction_type == "v_prediction"
    pipe = base_models.load_pipeline(marked, config=folder)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    sd2_folder, sd2_file = single_files["sd2"]
    pipe = base_models.load_pipeline(sd2_file, config=sd2_folder, prediction_type="epsilon")  # SD 2 base
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_config_folder_of_another_architecture_is_refused(single_files):
    _, file = single_files["sd1"]
    with pytest.raises(BaseModelError, match="sdxl model but sd1.safetensors is sd1"):
        base_models.load_pipeline(file, config=single_files["sdxl"][0])


def test_offline_without_config_names_the_flag(single_files, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(BaseModelError, match="Pass --config DIR"):
        base_models.load_pipeline(single_files["sd1"][1])


def test_pickles_adapters_and_other_files_are_refused_unopened(tmp_path, single_files):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04 never unpickled")
    with pytest.raises(BaseModelError, match="weights_only=True") as err:
        base_models.inspect_checkpoint(ckpt)
    assert "model.safetensors" in str(err.value)  # the conversion command names the output
    adapter = tmp_path / "adapter.safetensors"
    save_file(
        {"unet.x.lora_A.weight": torch.zeros(1, 2), "unet.x.lora_B.weight": torch.zeros(2, 1)}, str(adapter)
    )
    with pytest.raises(BaseModelError, match="adapter \\(LoRA\\) file"):
        base_models.inspect_checkpoint(adapter)
    inpaint = tmp_path / "inpaint.safetensors"
    tensors = load_file(str(single_files["sd1"][1]))
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    save_file(tensors, str(inpaint))
    with pytest.raises(BaseModelError, match="9 input channels"):
        base_models.inspect_checkpoint(inpaint)


def test_training_preflight_refuses_before_loading(tmp_path, single_files):
    from moslora_diffusion.training import parse_args, validate_config

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04")
    data = toyworld.subject_path()
    base = ["--instance_data_dir", str(data), "--instance_prompt", "x", "--output_dir", str(tmp_path / "o")]
    with pytest.raises(TrainConfigError, match="--pretrained_model_name_or_path: .*pickle"):
        validate_config(parse_args(base + ["--pretrained_model_name_or_path", str(ckpt)]))
    folder, file = single_files["sd1"]
    with pytest.raises(TrainConfigError, match="--config is for single-file checkpoints"):
        validate_config(
            parse_args(base + ["--pretrained_model_name_or_path", str(folder), "--config", str(folder)])
        )
    with pytest.raises(
        TrainConfigError, match="--variant is for diffusers folders"
    ):  # never silently dropped
        validate_config(parse_args(base + ["--pretrained_model_name_or_path", str(file), "--config", str(folder),
                                           "--variant", "fp16"]))  # fmt: skip
    with pytest.raises(TrainConfigError, match="--config .* is an sd2 model"):
        validate_config(
            parse_args(
                base + ["--pretrained_model_name_or_path", str(file), "--config", str(single_files["sd2"][0])]
            )
        )


def test_training_on_a_single_file_equals_training_on_the_folder(tmp_path, toy_file):
    from moslora_diffusion.formats.inspect import read_adapter_header
    from moslora_diffusion.training import parse_args, run_training

    folder = str(toyworld.base_model_path())
    common = ["--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks thing",
              "--max_train_steps", "2", "--seed", "3", "--checkpointing_steps", "0", "--resolution", "32",
              "--train_text_encoder"]  # fmt: skip
    runs = {"folder": ["--pretrained_model_name_or_path", folder],
            "file": ["--pretrained_model_name_or_path", str(toy_file), "--config", folder]}  # fmt: skip
    weights = {}
    for name, extra in runs.items():
        run_training(parse_args(common + extra + ["--output_dir", str(tmp_path / name)]))
        weights[name] = load_file(str(tmp_path / name / "moslora_weights.safetensors"))
    assert weights["folder"].keys() == weights["file"].keys()
    assert all(torch.equal(weights["folder"][k], weights["file"][k]) for k in weights["folder"])
    base = read_adapter_header(tmp_path / "file").base_model
    assert base["name"] == "toy-world.safetensors" and base["single_file"] is True
    assert base["hash"] == "sha256:" + base_models.file_sha256(toy_file)
    assert base["architecture"] == "sd1" and base["prediction_type"] == "epsilon"
    card = (tmp_path / "file" / "README.md").read_text()
    assert "StableDiffusionPipeline.from_single_file(" in card and "config=" in card
    record = json.loads((tmp_path / "file" / "run.json").read_text())
    assert record["fingerprint"]["base_model_bytes"] == toy_file.stat().st_size


def test_adapters_load_the_same_on_a_single_file_pipeline(tmp_path, tiny_dirs, single_files):
    import moslora_diffusion  # noqa: F401  (adds load_moslora_weights)

    folder, file = single_files["sd1"]
    from diffusers import DiffusionPipeline

    ref = DiffusionPipeline.from_pretrained(str(folder))
    ref.set_progress_bar_config(disable=True)
    pipe = base_models.load_pipeline(file, config=folder)
    pipe.set_progress_bar_config(disable=True)
    path = random_adapter(load_tiny(tiny_dirs, "sd1")).save(tmp_path / "a.safetensors")
    ref.load_moslora_weights(str(path), adapter_name="a")
    pipe.load_moslora_weights(str(path), adapter_name="a")
    np.testing.assert_allclose(generate(pipe), generate(ref), atol=1e-6)


def test_web_ui_offers_and_renders_single_files_like_folders(tmp_path, toy_file):
    from moslora_diffusion.webui.engine import Engine, GenerationRequest, list_models

    models = tmp_path / "models"
    models.mkdir()
    (models / toy_file.name).symlink_to(toy_file)
    save_file({"unet.x.lora_A.weight": torch.zeros(1, 2)}, str(models / "some-adapter.safetensors"))
    offered = list_models(models)
    assert offered[toy_file.name] == str(models / toy_file.name)
    assert "some-adapter.safetensors" not in offered
    folder = str(toyworld.base_model_path())
    engine = Engine.from_pretrained(
        folder, tmp_path / "adapters", tmp_path / "out", models=offered, configs={"sd1": folder}
    )
    req = GenerationRequest(prompt="a red circle on a blue background", steps=3, width=32, height=32, seed=5)
    want = np.asarray(engine.generate(req)[0].image)
    engine.switch_model(toy_file.name)
    assert engine.base_model == str(models / toy_file.name) and engine.architecture == "sd1"
    got = np.asarray(engine.generate(req)[0].image)
    np.testing.assert_array_equal(got, want)


def test_cli_inspect_names_a_base_checkpoint(single_files):
    from tests.cli_support import run_cli

    proc = run_cli("inspect", str(single_files["sdxl"][1]))
    assert proc.returncode == 0, proc.stderr
    assert "base model (single-file checkpoint)" in proc.stdout and "architecture: sdxl" in proc.stdout
