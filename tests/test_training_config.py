"""Training settings: flag parsing and every bad input, all rejected before a model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from moslora_diffusion.training import TrainConfig, TrainConfigError, parse_args, validate_config
from moslora_diffusion.training import checkpoint as ckpt


def _fake_model(path: Path) -> Path:
    """A folder that passes the pre-load checks (model_index.json only): loading it would fail."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 32), (40 * i, 100, 200)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def cfg(tmp_path) -> TrainConfig:
    return parse_args(
        [
            "--pretrained_model_name_or_path",
            str(_fake_model(tmp_path / "model")),
            "--instance_data_dir",
            str(_images(tmp_path / "inst")),
            "--instance_prompt",
            "a sks thing",
            "--output_dir",
            str(tmp_path / "out"),
            "--resolution",
            "32",
        ]
    )


def test_parse_args_uses_diffusers_flag_names():
    cfg = parse_args(
        [
            "--rank",
            "8",
            "--center_crop",
            "--adapter",
            "lora",
            "--unet_targets",
            "to_q,to_v",
            "--max_train_steps",
            "7",
            "--mixed_precision",
            "bf16",
            "--snr_gamma",
            "5",
        ]
    )
    assert (cfg.rank, cfg.center_crop, cfg.adapter, cfg.unet_targets) == (8, True, "lora", "to_q,to_v")
    assert (cfg.max_train_steps, cfg.mixed_precision, cfg.snr_gamma) == (7, "bf16", 5.0)
    assert cfg.random_flip is False and cfg.lora_alpha is None
    assert parse_args([]) == TrainConfig()
    with pytest.raises(SystemExit):
        parse_args(["--adapter", "dora"])


def test_valid_config_passes(cfg):
    validate_config(cfg)


def test_missing_instance_dir(cfg, tmp_path):
    cfg.instance_data_dir = str(tmp_path / "nope")
    with pytest.raises(TrainConfigError, match="nope does not exist"):
        validate_config(cfg)


def test_empty_instance_dir(cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no images here")
    cfg.instance_data_dir = str(tmp_path / "empty")
    with pytest.raises(TrainConfigError, match="holds no images"):
        validate_config(cfg)


def test_unreadable_images_are_listed_and_skipped(cfg, tmp_path, caplog):
    (Path(cfg.instance_data_dir) / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level("WARNING"):
        validate_config(cfg)
    assert "broken.jpg" in caplog.text


def test_no_readable_images(cfg, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG broken")
    (bad / "b.webp").write_bytes(b"")
    cfg.instance_data_dir = str(bad)
    with pytest.raises(TrainConfigError, match=r"no readable images.*a\.png.*b\.webp"):
        validate_config(cfg)


@pytest.mark.parametrize("resolution", [30, 0, -8])
def test_resolution_must_be_multiple_of_8(cfg, resolution):
    cfg.resolution = resolution
    with pytest.raises(TrainConfigError, match="--resolution"):
        validate_config(cfg)


@pytest.mark.parametrize("rank", [0, -4])
def test_rank_must_be_positive(cfg, rank):
    cfg.rank = rank
    with pytest.raises(TrainConfigError, match="--rank"):
        validate_config(cfg)


def test_prior_preservation_needs_class_prompt(cfg, tmp_path):
    cfg.with_prior_preservation = True
    cfg.class_data_dir = str(tmp_path / "class")
    with pytest.raises(TrainConfigError, match="--class_prompt"):
        validate_config(cfg)
    cfg.class_prompt = "a thing"
    cfg.class_data_dir = None
    with pytest.raises(TrainConfigError, match="--class_data_dir"):
        validate_config(cfg)


def test_instance_prompt_needed_without_captions(cfg):
    cfg.instance_prompt = None
    with pytest.raises(TrainConfigError, match="--instance_prompt is required"):
        validate_config(cfg)
    for p in Path(cfg.instance_data_dir).glob("*.png"):
        p.with_suffix(".txt").write_text("a caption")
    validate_config(cfg)


def test_missing_model_and_bad_targets_and_missing_optimizer(cfg, tmp_path, monkeypatch):
    good = cfg.pretrained_model_name_or_path
    cfg.pretrained_model_name_or_path = str(tmp_path / "no-model")
    with pytest.raises(TrainConfigError, match="no-model does not exist"):
        validate_config(cfg)
    cfg.pretrained_model_name_or_path = good
    cfg.unet_targets = "attn,to_q"
    with pytest.raises(TrainConfigError, match="--unet_targets"):
        validate_config(cfg)
    cfg.unet_targets = "attn"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prodigyopt" else real(name, *a)
    )
    cfg.optimizer = "prodigy"
    with pytest.raises(TrainConfigError, match="pip install prodigyopt"):
        validate_config(cfg)


def test_resume_from_missing_path(cfg, tmp_path):
    cfg.resume_from_checkpoint = str(tmp_path / "checkpoint-99")
    with pytest.raises(TrainConfigError, match="not a checkpoint folder"):
        validate_config(cfg)


def test_checkpoints_total_limit_keeps_newest(tmp_path):
    for step in (1, 2, 10, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-final-notes").mkdir()
    deleted = ckpt.prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in deleted) == ["checkpoint-1", "checkpoint-2"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-10"]
    assert (tmp_path / "checkpoint-final-notes").is_dir()
