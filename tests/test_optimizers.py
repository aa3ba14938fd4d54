"""Optimizers (training/optimizers.py): LoRA+ and mixer learning-rate groups, lion / adafactor / schedule-free,
exact resume for each, and the refusals."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors import safe_open

from moslora_diffusion.training import TrainConfigError, parse_args, validate_config
from moslora_diffusion.training import models as train_models
from moslora_diffusion.training.optimizers import make_optimizer, param_groups, parameter_role
from tests.test_training_e2e import make_subject, read_tensors, train


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_subject(tmp_path_factory.mktemp("opt-subject"), n=3)


def _components(tiny_sd1, subject, tmp_path, *flags):
    cfg = parse_args(["--pretrained_model_name_or_path", str(tiny_sd1), "--instance_data_dir", str(subject),
                      "--instance_prompt", "a sks blob", "--output_dir", str(tmp_path / "o"), "--resolution", "32",
                      "--learning_rate", "1e-3", *flags])  # fmt: skip
    validate_config(cfg)
    comps = train_models.load_components(cfg, torch.float32, torch.device("cpu"))
    train_models.add_adapters(cfg, comps)
    return cfg, comps


def test_parameter_roles_follow_the_file_format_names():
    assert parameter_role("down_blocks.0.attn.to_q.lora_A.default.weight") == "A"
    assert parameter_role("down_blocks.0.attn.to_q.lora_B.default.weight") == "B"
    assert parameter_role("down_blocks.0.attn.to_q.lora_mixer.default.weight") == "mixer"
    assert parameter_role("something.else") == "A"


def test_loraplus_and_mixer_ratios_give_each_role_its_rate(tiny_sd1, subject, tmp_path):
    flags = ("--train_text_encoder", "--text_encoder_lr", "5e-4", "--loraplus_lr_ratio", "16",
             "--loraplus_text_encoder_lr_ratio", "4", "--mixer_lr_ratio", "2")  # fmt: skip
    cfg, comps = _components(tiny_sd1, subject, tmp_path, *flags)
    groups = {g["name"]: g for g in param_groups(cfg, comps, num_processes=1)}
    expected = {"unet.A": 1e-3, "unet.mixer": 2e-3, "unet.B": 16e-3,
                "text_encoder.A": 5e-4, "text_encoder.mixer": 1e-3, "text_encoder.B": 2e-3}  # fmt: skip
    assert {k: pytest.approx(g["lr"]) for k, g in groups.items()} == expected
    for component, model in comps.adapted_models().items():
        named = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        for role, part in (("A", "lora_A"), ("mixer", "lora_mixer"), ("B", "lora_B")):
            names = [named[id(p)] for p in groups[f"{component}.{role}"]["params"]]
            assert names and all(f".{part}." in n for n in names)
        assert sum(len(groups[f"{component}.{r}"]["params"]) for r in ("A", "mixer", "B")) == len(named)
    # AdamW's first step with gradient 1: p <- p (1 - lr wd) - lr, each group at its own rate
    opt = make_optimizer(cfg, comps, 1)
    before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    for g, old in zip(opt.param_groups, before):
        for p, p0 in zip(g["params"], old):
            torch.testing.assert_close(
                p.detach(), p0 * (1 - g["lr"] * g["weight_decay"]) - g["lr"], atol=1e-7, rtol=0
            )


def test_without_ratios_the_groups_are_one_per_component(tiny_sd1, subject, tmp_path):
    cfg, comps = _components(tiny_sd1, subject, tmp_path, "--train_text_encoder")
    groups = param_groups(cfg, comps, num_processes=1)
    assert [g["name"] for g in groups] == ["unet", "text_encoder"]  # earlier checkpoints keep resuming


def test_ratio_refusals(tiny_sd1, subject, tmp_path):
    with pytest.raises(TrainConfigError, match="--mixer_lr_ratio needs --adapter moslora"):
        train(tiny_sd1, tmp_path / "a", subject, "--adapter", "lora", "--mixer_lr_ratio", "4")
    with pytest.raises(TrainConfigError, match="--loraplus_lr_ratio must be between 0 .excluded."):
        train(tiny_sd1, tmp_path / "b", subject, "--loraplus_lr_ratio", "0")
    with pytest.raises(TrainConfigError, match="adamw_schedulefree replaces the schedule"):
        train(
            tiny_sd1, tmp_path / "c", subject, "--optimizer", "adamw_schedulefree", "--lr_scheduler", "cosine"
        )
    assert not any((tmp_path / x).exists() for x in "abc")


@pytest.mark.parametrize(("optimizer", "module", "pip_name"),
                         [("lion", "lion_pytorch", "lion-pytorch"), ("adamw_schedulefree", "schedulefree", "schedulefree")])  # fmt: skip
def test_a_missing_optimizer_package_names_the_pip_command(tiny_sd1, subject, tmp_path, monkeypatch, optimizer,
                                                           module, pip_name):  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(TrainConfigError, match=f"pip install {pip_name}"):
        train(tiny_sd1, tmp_path / "x", subject, "--optimizer", optimizer)


@pytest.mark.parametrize("optimizer", ["lion", "adafactor", "adamw_schedulefree"])
def test_each_optimizer_trains_and_resumes_exactly(tiny_sd1, subject, tmp_path, optimizer):
    flags = ("--optimizer", optimizer, "--max_train_steps", "4", "--checkpointing_steps", "2",
             "--loraplus_lr_ratio", "4", "--mixer_lr_ratio", "2", "--lr_warmup_steps", "1",
             "--validation_steps", "1")  # fmt: skip
    start = read_tensors(train(tiny_sd1, tmp_path / "start", subject, "--max_train_steps", "1", "--learning_rate",
                               "1e-12", "--no-signals").weights_path)  # fmt: skip
    whole = train(tiny_sd1, tmp_path / "whole", subject, *flags)
    half = tmp_path / "half"
    train(tiny_sd1, half, subject, *flags[:2], "--max_train_steps", "2", *flags[4:])
    resumed = train(tiny_sd1, half, subject, *flags, "--resume_from_checkpoint", "latest")
    a, b = read_tensors(whole.weights_path), read_tensors(resumed.weights_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sum(float((a[k] - start[k]).norm()) for k in a) > 0  # it trained
    with safe_open(str(whole.weights_path), "pt") as f:
        assert json.loads(f.metadata()["training"])["optimizer"] == optimizer
    if optimizer == "adamw_schedulefree":
        # the file holds the evaluation point, the checkpoint the training point; the validations after every
        # step (signals) do not change the training
        trained = read_tensors(tmp_path / "whole" / "checkpoint-4" / "adapter.safetensors")
        trained = {k.replace(".default.", "."): v for k, v in trained.items()}
        assert trained.keys() == a.keys()
        assert any(not torch.equal(a[k], trained[k]) for k in a)
        quiet = read_tensors(
            train(tiny_sd1, tmp_path / "quiet", subject, *flags[:-2], "--no-signals").weights_path
        )
        assert all(torch.equal(a[k], quiet[k]) for k in a)
