"""Learning curves: `run_training(scorer=...)` scores at every validation, keeps the curve across a resume,
writes quality.json / quality_curve.png; the toy world's scorer and when entry points use it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from moslora_diffusion import toyworld
from moslora_diffusion.tiny import save_tiny_pipeline
from moslora_diffusion.toyworld import quality
from moslora_diffusion.training import parse_args, run_training


def _subject(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (32, 32), (60 * i, 200, 90)).save(folder / f"s{i}.png")
    return folder


def test_scorer_runs_at_each_validation_and_survives_a_resume(tmp_path):
    model = save_tiny_pipeline("sd1", tmp_path / "sd1")
    data = _subject(tmp_path / "data")
    calls = []

    def scorer(pipe):
        assert hasattr(pipe, "unet") and not torch.is_grad_enabled()
        calls.append(pipe)
        return {"subject fidelity": len(calls) / 10, "ordinary prompts": 1.0}

    argv = ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(data),
            "--instance_prompt", "a sks blob", "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--seed", "0", "--max_train_steps", "4", "--validation_steps", "2", "--checkpointing_steps", "2"]  # fmt: skip
    events = []
    stopped = run_training(parse_args(argv), callback=events.append, scorer=scorer,
                           should_stop=lambda: any(e.kind == "step" and e.step >= 2 for e in events))  # fmt: skip
    assert [e.step for e in events if e.kind == "scores"] == [2] and stopped.cancelled
    resumed = run_training(parse_args([*argv, "--resume_from_checkpoint", "latest"]), scorer=scorer)
    assert resumed.steps_done == 4
    curve = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert [q["step"] for q in curve] == [2, 4]  # the step-2 score came back from the checkpoint
    assert curve[0]["subject fidelity"] == pytest.approx(0.1) and curve[1]["ordinary prompts"] == 1.0
    assert (tmp_path / "out" / "quality_curve.png").stat().st_size > 2000
    assert "quality_curve" in resumed.files
    assert "![quality curve](quality_curve.png)" in (tmp_path / "out" / "README.md").read_text()


def test_toy_scorer_only_for_the_bundled_subject_on_the_bundled_model(tmp_path):
    toy = SimpleNamespace(
        pretrained_model_name_or_path=str(toyworld.base_model_path()),
        instance_data_dir=str(toyworld.subject_path()),
    )
    assert quality.scorer_for(toy) is not None
    assert quality.scorer_for(SimpleNamespace(**{**vars(toy), "instance_data_dir": str(tmp_path)})) is None
    assert quality.scorer_for(SimpleNamespace(**{**vars(toy), "pretrained_model_name_or_path": "x"})) is None


def test_toy_scorer_reads_the_base_model(tmp_path):
    from moslora_diffusion.toyworld.evaluate import load_toy_pipeline

    scores = quality.validation_scorer(1, 1)(load_toy_pipeline())
    assert set(scores) == {"subject fidelity", "prompt fidelity", "ordinary prompts"}
    assert scores["subject fidelity"] <= 0.25  # the base model has never seen the subject
    assert scores["ordinary prompts"] >= 0.5  # and draws ordinary held-out prompts well
