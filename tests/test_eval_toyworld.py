"""The toy-world DreamBooth yardstick: scoring on rendered ground truth, and a --quick run end to end."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from moslora_diffusion.toyworld import scoring
from moslora_diffusion.toyworld.render import Scene, render
from moslora_diffusion.toyworld.subject import render_subject
from moslora_diffusion.yardstick import config as study
from moslora_diffusion.yardstick import report, runs


def _truth_images(prompt_sets, subject_everywhere=False):
    """Perfect answers: the subject for subject prompts, exactly the requested scene otherwise."""
    rng = np.random.default_rng(0)
    out = {}
    for fam, items in prompt_sets.items():
        ims = []
        for _, exp, _ in items:
            if fam == "subject" or subject_everywhere:
                ims.append(render_subject(rng, exp[2] if exp[2] not in ("red", "yellow") else "blue"))
            else:
                ims.append(
                    render(Scene(shape=exp[0], color=exp[1], background=exp[2], size=18, cx=16, cy=16))
                )
        out[fam] = ims
    return out


def test_scores_on_rendered_ground_truth():
    sets = scoring.prompt_sets(images_per_prompt=2, quick=False)
    perfect = scoring.score_images(_truth_images(sets), sets)
    assert perfect == {m: 1.0 for m in scoring.METRICS}
    # An adapter that draws the subject for every prompt: subject fidelity stays, the prior is lost and
    # ordinary prompts fail.
    leaky = scoring.score_images(_truth_images(sets, subject_everywhere=True), sets)
    assert leaky["subject_fidelity"] == 1.0
    assert leaky["prior_preservation"] == 0.0
    assert leaky["base_drift_accuracy"] == 0.0


def test_summary_table_and_plot(tmp_path):
    runs = [
        {"method": m, "seed": s, **{k: 0.5 + 0.1 * s for k in scoring.METRICS}}
        for m in ("A", "B")
        for s in range(3)
    ]
    result = {
        "base": {k: 0.25 for k in scoring.METRICS},
        "runs": runs,
        "methods": ["A", "B"],
        "config": {"seeds": 3},
    }
    table = report.summary_table(result)
    assert "| base model (no adapter) | 25.0 | 25.0 | 25.0 | 25.0 |" in table
    # mean 0.6, sd 0.1, t(2) = 4.303 -> half-width 24.8 %
    assert "| A | 60.0 ± 24.8 |" in table
    png = report.plot(result, tmp_path / "p.png")
    assert png.stat().st_size > 5000


def test_paired_differences_come_from_per_seed_differences():
    a, b = [0.6, 0.7, 0.8], [0.5, 0.5, 0.7]  # per-seed differences 0.1, 0.2, 0.1
    runs = [{"method": "A", "seed": s, **{k: a[s] for k in scoring.METRICS}} for s in range(3)]
    runs += [{"method": "B", "seed": s, **{k: b[s] for k in scoring.METRICS}} for s in range(3)]
    runs.append({"method": "B", "seed": 7, **{k: 0.0 for k in scoring.METRICS}})  # unpaired: left out
    table = report.paired_table({"runs": runs, "methods": ["A", "B"]})
    # mean 0.1333, sd 0.0577, t(2) = 4.303 -> half-width 14.3 points
    assert "| A − B (3 seeds) | 13.3 ± 14.3 | 13.3 ± 14.3 |" in table
    # the same numbers compared as two separate intervals would overlap widely (A 70 ± 24.8, B 56.7 ± 28.7)


def test_train_args_pass_any_training_flag_but_the_ones_the_study_sets():
    got = study.parse_train_args(["max_train_steps=900", "--with_prior_preservation", "text_encoder_lr=3e-4"])
    assert got == {"max_train_steps": "900", "with_prior_preservation": True, "text_encoder_lr": "3e-4"}
    assert study.parse_train_args(["no-train_text_encoder"]) == {"train_text_encoder": False}
    with pytest.raises(ValueError, match="no training flag --max_steps"):
        study.parse_train_args(["max_steps=5"])
    with pytest.raises(ValueError, match="sets --seed itself"):
        study.parse_train_args(["seed=3"])


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    from moslora_diffusion.cli import main

    out = tmp_path / "eval"
    assert main(["eval-toyworld", "--smoke", "--output_dir", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 3 * 2
    assert {r["method"] for r in result["runs"]} == {"MoSLoRA r=8", "LoRA r=8", "LoRA r=16"}
    for run in result["runs"]:
        assert all(0.0 <= run[m] <= 1.0 for m in scoring.METRICS)
    assert (out / "eval_toyworld.png").is_file()
    # samples: base row + 3 methods x 2 seeds, the subject's 4 backgrounds x 2 sampling seeds, 3x enlarged
    with Image.open(out / "eval_toyworld_samples.png") as grid:
        assert grid.size == (8 * (96 + 2) + 2, 7 * (96 + 2) + 2)
    assert (out / "moslora_r8_s0" / "moslora_weights.safetensors").is_file()
    assert (out / "lora_r16_s1" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_workers_and_learning_curves_match_one_process(tmp_path):
    """Two worker processes give exactly the scores and curves of one process (each run is seeded alone)."""
    cfg = study.BenchConfig.smoke_config(method_names=("moslora", "lora"), curves=True, curve_every=2)
    one = runs.run_bench(dataclasses.replace(cfg, output_dir=str(tmp_path / "one")), log=lambda _: None)
    two = runs.run_bench(
        dataclasses.replace(cfg, output_dir=str(tmp_path / "two")), log=lambda _: None, workers=2
    )
    assert [(r["method"], r["seed"]) for r in one["runs"]] == [(r["method"], r["seed"]) for r in two["runs"]]
    for a, b in zip(one["runs"], two["runs"]):
        assert {m: a[m] for m in scoring.METRICS} == {m: b[m] for m in scoring.METRICS}
        assert [p["step"] for p in a["curve"]] == [2, 4] and a["curve"] == b["curve"]
    assert list((tmp_path / "two" / "logs").glob("worker-*.log"))  # the workers' own output went there
    png = report.plot_curves(one, tmp_path / "curves.png")
    assert png is not None and png.stat().st_size > 5000


def test_workers_end_when_the_study_is_killed(tmp_path):
    """A killed eval-toyworld must not leave its spawned workers training on (they watch their parent)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import multiprocessing as mp, sys, time\n"
        "from moslora_diffusion.yardstick import runs\n"
        "def child(parent):\n"
        "    runs._exit_with_parent(parent, every=0.1)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=child, args=(__import__('os').getpid(),))\n"
        "    p.start(); print(p.pid, flush=True); time.sleep(60)\n"
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:  # gone, or a zombie nobody reaped (the container's init may not)
            if open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the worker outlived its killed parent")
