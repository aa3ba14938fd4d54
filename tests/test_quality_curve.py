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
    from moslora_diffusion.sampling import draw
    from moslora_diffusion.toyworld.evaluate import load_toy_pipeline

    pipe = load_toy_pipeline()
    scorer = quality.validation_scorer(1, 1)
    scores = scorer(pipe)
    assert set(scores) == {"subject fidelity", "prompt fidelity", "ordinary prompts"}
    assert scores["subject fidelity"] <= 0.25  # the base model has never seen the subject
    assert scores["ordinary prompts"] >= 0.5  # and draws ordinary held-out prompts well
    # the two-phase form the trainer uses: its request's images, scored, give the same scores
    assert len(scorer.request.prompts) == 4 + 12
    assert scorer.score(draw(pipe, [scorer.request])[0]) == scores
    with pytest.raises(ValueError, match="15 images for 16 prompts"):
        scorer.score(draw(pipe, [scorer.request])[0][:15])


def test_a_scorer_with_a_request_shares_the_validation_call(tmp_path, monkeypatch):
    """The scorer's panel and the validation prompt's images are drawn in one pipeline call per validation;
    the scorer gets its own images, the grid the others."""
    from diffusers import StableDiffusionPipeline

    from moslora_diffusion.sampling import SampleRequest

    model = save_tiny_pipeline("sd1", tmp_path / "sd1")
    data = _subject(tmp_path / "data")
    batches = []
    real_call = StableDiffusionPipeline.__call__

    def counting_call(self, *args, **kwargs):
        batches.append(len(kwargs["prompt"]))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting_call)

    class PanelLike:
        request = SampleRequest(("a photo of a blob",) * 3, (7, 8, 9), 2, 5.0, 32, 32)
        received: list = []

        def score(self, images):
            self.received.append(images)
            return {"subject fidelity": 0.5}

        def __call__(self, pipe):  # not used when the trainer can draw the request itself
            raise AssertionError("the trainer should draw the request")

    scorer = PanelLike()
    argv = ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(data),
            "--instance_prompt", "a sks blob", "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--seed", "0", "--max_train_steps", "4", "--validation_steps", "2", "--validation_prompt",
            "a sks blob", "--num_validation_images", "2", "--validation_inference_steps", "2"]  # fmt: skip
    result = run_training(parse_args(argv), scorer=scorer)
    assert result.steps_done == 4
    assert batches == [5, 5]  # steps 2 and 4: 3 panel images + 2 samples, one call each
    assert [len(images) for images in scorer.received] == [3, 3]
    assert all(im.size == (32, 32) for images in scorer.received for im in images)
    assert (tmp_path / "out" / "validation" / "step-000004.png").is_file()
    # a different sampler setting cannot share the call: two calls per validation
    batches.clear()
    scorer.received.clear()
    run_training(parse_args([*argv, "--output_dir", str(tmp_path / "out2"), "--validation_inference_steps", "3"]),
                 scorer=scorer)  # fmt: skip
    assert sorted(batches) == [2, 2, 3, 3] and len(scorer.received) == 2
