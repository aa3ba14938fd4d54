"""Toy-world defaults reach the training settings only as parser defaults at entry points: flags always win."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from moslora_diffusion import toyworld
from moslora_diffusion.errors import TrainConfigError
from moslora_diffusion.training import TrainConfig, parse_args, validate_config

SUBJECT = json.loads((toyworld.subject_path() / "subject.json").read_text())["train_defaults"]


def _entry(argv: list[str]) -> TrainConfig:
    """What the training script does with ``argv``."""
    return parse_args(argv, defaults=toyworld.training_defaults(argv))


def test_no_flags_train_the_bundled_subject_with_its_defaults(tmp_path):
    cfg = _entry(["--output_dir", str(tmp_path / "out")])
    assert cfg.pretrained_model_name_or_path == str(toyworld.base_model_path())
    assert cfg.instance_data_dir == str(toyworld.subject_path())
    assert cfg.instance_prompt == "a sks circle" and cfg.validation_prompt == "a sks circle"
    for key, value in SUBJECT.items():
        assert getattr(cfg, key) == value, key


@pytest.mark.parametrize("with_data", [False, True])
def test_explicit_flags_win_even_when_equal_to_the_generic_default(tmp_path, with_data):
    generic = TrainConfig()
    assert generic.rank == 4 and generic.learning_rate == 1e-4  # the values typed below
    assert SUBJECT["rank"] != 4 and SUBJECT["learning_rate"] != 1e-4  # ... differ from the subject's
    argv = ["--rank", "4", "--learning_rate", "1e-4", "--output_dir", str(tmp_path / "out")]
    if with_data:  # the same images in the user's own folder (a bundled subject's folder brings its recipe)
        shutil.copytree(toyworld.subject_path(), tmp_path / "mine")
        argv += ["--instance_data_dir", str(tmp_path / "mine"), "--instance_prompt", "a sks circle"]
    cfg = _entry(argv)
    before = dataclasses.asdict(cfg)
    validate_config(cfg)
    assert dataclasses.asdict(cfg) == before  # validation never changes a setting
    assert (cfg.rank, cfg.learning_rate) == (4, 1e-4)
    if with_data:  # the user's own data: none of the subject's training defaults apply
        assert cfg.train_batch_size == generic.train_batch_size
        assert cfg.unet_targets == generic.unet_targets
    else:
        assert cfg.train_batch_size == SUBJECT["train_batch_size"]


def test_given_base_model_without_data_is_an_error_not_a_toy_run(tmp_path):
    argv = ["--pretrained_model_name_or_path", str(toyworld.base_model_path()), "--output_dir", str(tmp_path)]
    cfg = _entry(argv)
    assert cfg.instance_data_dir is None and cfg.rank == TrainConfig().rank
    with pytest.raises(TrainConfigError, match="--instance_data_dir is required"):
        validate_config(cfg)


def test_library_call_without_model_is_an_error():
    with pytest.raises(TrainConfigError, match="--pretrained_model_name_or_path is required"):
        validate_config(parse_args([]))


def test_abbreviated_flags_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--rank_pattern", "3"])
    with pytest.raises(SystemExit):
        parse_args(["--learning", "1e-3"])


def test_a_switch_the_subject_turns_on_can_be_turned_off(tmp_path):
    assert SUBJECT.get("train_text_encoder") is True  # the subject's recipe trains the text encoder
    assert _entry(["--output_dir", str(tmp_path)]).train_text_encoder is True
    assert _entry(["--no-train_text_encoder", "--output_dir", str(tmp_path)]).train_text_encoder is False
